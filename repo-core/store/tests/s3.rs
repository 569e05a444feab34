#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! S3 roots against a real S3-compatible server on loopback (`s3s-fs`, see `s3_server`):
//! the conformance suite, listings longer than one page, the layout of objects in the
//! bucket, and what each failure is reported as.

mod s3_server;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_store::backend::{conformance, BackendOptions, FileType, OpendalRoot, Root, S3Settings};
use cairn_store::location::{Location, S3Location};
use cairn_store::{ErrorKind, Id};
use s3_server::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};

fn settings(endpoint: &str, bucket: &str, prefix: &str, secret: &str) -> S3Settings {
    S3Settings {
        location: S3Location {
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        },
        region: "us-east-1".to_string(),
        access_key_id: ACCESS_KEY.to_string(),
        secret_access_key: secret.to_string(),
        session_token: None,
    }
}

/// A root over `prefix` with the layers every S3 root gets.
fn root(server: &S3Server, prefix: &str) -> OpendalRoot {
    OpendalRoot::s3(
        &settings(&server.endpoint(), BUCKET, prefix, SECRET_KEY),
        &BackendOptions::remote(),
    )
    .unwrap()
}

#[tokio::test]
async fn s3_root_conforms_and_keeps_the_local_layout() {
    let server = S3Server::start();
    conformance::run_root(&root(&server, "repo/one"))
        .await
        .unwrap();
    // Tenants are folders below the prefix, laid out as in a local root.
    let top = server.folder("repo/one");
    assert!(top.join("cairn-repository").is_file());
    assert!(top.join("alpha/config").is_file());
    assert!(top.join("gamma/snapshots").is_dir());
    let pack = Id::of_bytes(b"pack of alpha").to_hex();
    assert!(top
        .join("alpha/data")
        .join(&pack[..2])
        .join(&pack)
        .is_file());
    // A root at the top of the bucket works the same.
    conformance::run_root(&root(&server, "")).await.unwrap();
}

#[tokio::test]
async fn s3_namespace_conforms() {
    let server = S3Server::start();
    let root = root(&server, "ns");
    conformance::run(&*root.tenant("t1").unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_root_opened_through_an_s3_location_conforms() {
    let server = S3Server::start();
    let location = Location::parse(&server.url("opened")).unwrap();
    let options = BackendOptions::for_location(&location);
    assert_eq!(options, BackendOptions::remote());
    // `open` takes credentials from the environment; without them it says which to set.
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        let e = cairn_store::backend::open(&location, &options).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.message().contains("AWS_ACCESS_KEY_ID"), "{e}");
    }
    let Location::S3(s3) = &location else {
        panic!("{location:?}")
    };
    let root = OpendalRoot::s3(
        &S3Settings {
            location: s3.clone(),
            ..settings("", "", "", SECRET_KEY)
        },
        &options,
    )
    .unwrap();
    assert_eq!(root.description(), server.url("opened"));
    conformance::run_root(&root).await.unwrap();
}

/// S3 returns at most 1,000 keys per answer: a listing follows the continuation tokens.
#[tokio::test]
async fn listings_page_through_more_than_a_thousand_objects() {
    let server = S3Server::start();
    let root = root(&server, "many");
    let tenant = root.tenant("t").unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    let mut names = Vec::new();
    for i in 0..1_234u32 {
        let data = Bytes::from(i.to_le_bytes().to_vec());
        let name = Id::of_bytes(&data).to_hex();
        names.push(name.clone());
        let tenant = tenant.clone();
        tasks.spawn(async move { tenant.create(FileType::Index, &name, data).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let mut listed: Vec<String> = tenant
        .list(FileType::Index)
        .await
        .unwrap()
        .into_iter()
        .map(|o| {
            assert_eq!(o.size, 4);
            o.name
        })
        .collect();
    listed.sort();
    names.sort();
    assert_eq!(listed.len(), 1_234);
    assert_eq!(listed, names);
}

/// Wrong credentials are a refusal (`PermissionDenied`) that says what to check, reported
/// at once: a refusal is never retried.
#[tokio::test]
async fn wrong_credentials_are_refused_at_once() {
    let server = S3Server::start();
    let good = root(&server, "creds");
    good.write_marker(Bytes::from_static(b"{}")).await.unwrap();
    let bad = OpendalRoot::s3(
        &settings(&server.endpoint(), BUCKET, "creds", "not-the-secret"),
        &BackendOptions::remote(),
    )
    .unwrap();
    let started = Instant::now();
    let e = bad.has_marker().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(!e.is_transient());
    let tenant = bad.tenant("t").unwrap();
    let e = tenant
        .create(FileType::Lock, &Id::of_bytes(b"x").to_hex(), Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.message().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
    let e = tenant.list(FileType::Pack).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    // Five retries would pause at least 0.2+0.4+0.8+1.6+3.2 s per call.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A service that cannot be reached is a transient failure that names the cause.
#[tokio::test]
async fn an_unreachable_service_is_transient_and_says_why() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = OpendalRoot::s3(
        &settings(&format!("http://127.0.0.1:{port}"), BUCKET, "r", SECRET_KEY),
        &BackendOptions::none(),
    )
    .unwrap();
    let e = root.has_marker().await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.message().contains("could not be reached"), "{e}");
    assert!(e.message().contains("refused"), "{e}");
}

/// A stand-in for an S3 service that ignores `If-None-Match`: it answers every request
/// with 200 and an empty body. Returns once it has served `requests` requests.
fn careless_service(requests: usize) -> (u16, std::thread::JoinHandle<usize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut served = 0;
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            // One connection may carry several requests (keep-alive).
            loop {
                let mut length = 0usize;
                let mut line = String::new();
                let mut any = false;
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    any = true;
                    let l = line.trim_end().to_ascii_lowercase();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                if !any {
                    break;
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    break;
                }
                served += 1;
                let answer = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                if reader.get_mut().write_all(answer.as_bytes()).is_err() || served >= requests {
                    break;
                }
            }
            if served >= requests {
                break;
            }
        }
        served
    });
    (port, handle)
}

/// Writing through a service that would let a create replace an existing object is
/// refused before anything of the repository is stored.
#[tokio::test]
async fn a_service_that_ignores_conditional_writes_is_refused() {
    let (port, served) = careless_service(4);
    let root = OpendalRoot::s3(
        &settings(&format!("http://127.0.0.1:{port}"), BUCKET, "r", SECRET_KEY),
        &BackendOptions::none(),
    )
    .unwrap();
    let e = root
        .write_marker(Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    assert!(e.message().contains("If-None-Match"), "{e}");
    let e = root
        .tenant("t")
        .unwrap()
        .create(FileType::Pack, &Id::of_bytes(b"p").to_hex(), Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    drop(root);
    // Two probes per attempt, and nothing else was written.
    assert_eq!(
        tokio::task::spawn_blocking(move || served.join().unwrap())
            .await
            .unwrap(),
        4
    );
}
