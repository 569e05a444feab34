#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The protocol over HTTP, with the built binary on 127.0.0.1:0: create-only uploads checked
//! against their names, lengths, deletes, methods, ranged reads, v1 and v2 listings,
//! quotas and the upload memory budget.

mod common;

use common::{blake3_hex, sha256_hex, Server};

const V1: &str = "application/vnd.x.restic.rest.v1";
const V2: &str = "application/vnd.x.restic.rest.v2";

#[test]
fn uploads_are_create_only_and_checked_against_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("st"),
        &["--no-auth", "--max-object-size", "4KiB"],
    );
    let body = b"first bytes".to_vec();
    let name = sha256_hex(&body);
    let path = format!("/t/snapshots/{name}");
    assert_eq!(s.req("POST", &path).body(&body).send().status, 200);
    assert_eq!(s.req("POST", &path).body(&body).send().status, 403);
    assert_eq!(s.req("POST", &path).body(b"other bytes").send().status, 403);
    assert_eq!(s.req("GET", &path).send().body, body);

    // The config is named by role: not checked, but never replaced.
    assert_eq!(s.req("POST", "/t/config").body(b"one").send().status, 200);
    assert_eq!(s.req("POST", "/t/config").body(b"two").send().status, 403);
    assert_eq!(s.req("GET", "/t/config").send().body, b"one");

    // A body that does not hash to its name is refused and nothing is stored.
    let wrong = format!("/t/data/{}", sha256_hex(b"something else"));
    let r = s.req("POST", &wrong).body(b"these bytes").send();
    assert_eq!(r.status, 400);
    assert_eq!(s.req("HEAD", &wrong).send().status, 404);
    // BLAKE3 names (Cairn clients) are accepted as well as SHA-256 ones (restic).
    let b3 = format!("/t/data/{}", blake3_hex(b"cairn pack"));
    assert_eq!(s.req("POST", &b3).body(b"cairn pack").send().status, 200);
    assert_eq!(
        s.req("HEAD", &b3).send().header("content-length"),
        Some("10")
    );

    // Lengths: required, and bounded.
    let fresh = b"no length";
    let r = s
        .req("POST", &format!("/t/data/{}", sha256_hex(fresh)))
        .body(fresh)
        .without_content_length()
        .send();
    assert_eq!(r.status, 411);
    let big = vec![7u8; 5000];
    let r = s
        .req("POST", &format!("/t/data/{}", sha256_hex(&big)))
        .body(&big)
        .send();
    assert_eq!(r.status, 413);

    // Deletes are idempotent.
    assert_eq!(s.req("DELETE", &path).send().status, 200);
    assert_eq!(s.req("DELETE", &path).send().status, 200);
    assert_eq!(s.req("HEAD", &path).send().status, 404);
    assert_eq!(s.req("GET", &path).send().status, 404);
    assert_eq!(s.req("DELETE", "/t/config").send().status, 200);
    assert_eq!(s.req("DELETE", "/t/config").send().status, 200);
    assert_eq!(s.req("HEAD", "/t/config").send().status, 404);

    // Methods and queries the protocol does not have.
    let r = s.req("PUT", "/t/config").body(b"x").send();
    assert_eq!(r.status, 405);
    assert!(r.header("allow").is_some());
    assert_eq!(s.req("DELETE", "/t/").send().status, 405);
    assert_eq!(s.req("POST", "/t/?create=false").send().status, 400);
    assert_eq!(s.req("POST", "/t/data/").send().status, 405);
    assert_eq!(s.req("GET", "/healthz").send().status, 200);

    // A server pinned to SHA-256 names refuses BLAKE3 ones.
    drop(s);
    let s = Server::start(
        &dir.path().join("st"),
        &["--no-auth", "--name-hash", "sha256"],
    );
    let b3 = format!("/t/data/{}", blake3_hex(b"another pack"));
    assert_eq!(s.req("POST", &b3).body(b"another pack").send().status, 400);
}

#[test]
fn ranged_reads_and_listings() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("st"), &["--no-auth"]);
    let body: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let name = sha256_hex(&body);
    let path = format!("/t/data/{name}");
    assert_eq!(s.req("POST", &path).body(&body).send().status, 200);

    let r = s.req("GET", &path).send();
    assert_eq!((r.status, &r.body), (200, &body));
    let r = s.req("HEAD", &path).send();
    assert_eq!((r.status, r.header("content-length")), (200, Some("1000")));
    let range = |spec: &str| s.req("GET", &path).header("Range", spec).send();
    let r = range("bytes=0-");
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some("bytes 0-999/1000"))
    );
    assert_eq!(r.body, body);
    let r = range("bytes=10-19");
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some("bytes 10-19/1000"))
    );
    assert_eq!(r.body, &body[10..20]);
    let r = range("bytes=990-");
    assert_eq!(r.body, &body[990..]);
    // An end past the object is cut to it; a start past it is unsatisfiable.
    let r = range("bytes=995-5000");
    assert_eq!(
        (r.status, r.header("content-range")),
        (206, Some("bytes 995-999/1000"))
    );
    assert_eq!(r.body, &body[995..]);
    let r = range("bytes=1000-");
    assert_eq!(
        (r.status, r.header("content-range")),
        (416, Some("bytes */1000"))
    );
    let r = range("bytes=18446744073709551615-");
    assert_eq!(r.status, 416);
    let r = range("bytes=-4");
    assert_eq!((r.status, &r.body[..]), (206, &body[996..]));
    let r = range("bytes=0-99999999999999999999999");
    assert_eq!((r.status, &r.body), (200, &body));
    let r = s
        .req("GET", &format!("/t/data/{}", sha256_hex(b"missing")))
        .header("Range", "bytes=0-")
        .send();
    assert_eq!(r.status, 404);

    // Listings: v2 (exact content type, sizes) or v1 (names) by Accept; a type with no
    // objects is an empty list.
    let small = b"lock bytes";
    assert_eq!(
        s.req("POST", &format!("/t/locks/{}", sha256_hex(small)))
            .body(small)
            .send()
            .status,
        200
    );
    let r = s.req("GET", "/t/data/").header("Accept", V2).send();
    assert_eq!((r.status, r.header("content-type")), (200, Some(V2)));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, serde_json::json!([{ "name": name, "size": 1000 }]));
    for accept in [Some(V1), None] {
        let mut q = s.req("GET", "/t/data/");
        if let Some(a) = accept {
            q = q.header("Accept", a);
        }
        let r = q.send();
        assert_eq!((r.status, r.header("content-type")), (200, Some(V1)));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v, serde_json::json!([name]));
    }
    let r = s.req("GET", "/t/locks/").header("Accept", V2).send();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{ "name": sha256_hex(small), "size": small.len() }])
    );
    for ty in ["keys", "index", "snapshots"] {
        let r = s
            .req("GET", &format!("/t/{ty}/"))
            .header("Accept", V2)
            .send();
        assert_eq!((r.status, &r.body[..]), (200, &b"[]"[..]), "{ty}");
        let r = s
            .req("GET", &format!("/empty/{ty}/"))
            .header("Accept", V2)
            .send();
        assert_eq!((r.status, &r.body[..]), (200, &b"[]"[..]), "{ty}");
    }
}

#[test]
fn quotas_refuse_what_does_not_fit_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("st");
    let args = ["--no-auth", "--quota", "q=4KiB"];
    let s = Server::start(&st, &args);
    let a = vec![1u8; 3000];
    let b = vec![2u8; 2000];
    let path = |body: &[u8]| format!("/q/data/{}", sha256_hex(body));
    assert_eq!(s.req("POST", &path(&a)).body(&a).send().status, 200);
    assert_eq!(s.req("POST", &path(&b)).body(&b).send().status, 507);
    assert_eq!(s.req("HEAD", &path(&b)).send().status, 404);
    // Other tenants are not limited.
    assert_eq!(s.req("POST", "/free/data/x").body(&b).send().status, 404);
    let free = format!("/free/data/{}", sha256_hex(&b));
    assert_eq!(s.req("POST", &free).body(&b).send().status, 200);
    // A refused create (the name exists) gives its reservation back.
    assert_eq!(s.req("POST", &path(&a)).body(&a).send().status, 403);
    let small = vec![3u8; 1000];
    assert_eq!(s.req("POST", &path(&small)).body(&small).send().status, 200);
    // The figure in use is read from storage at start: still full after a restart.
    drop(s);
    let s = Server::start(&st, &args);
    let c = vec![4u8; 200];
    assert_eq!(s.req("POST", &path(&c)).body(&c).send().status, 507);
    // Deletes give space back, once each.
    assert_eq!(s.req("DELETE", &path(&a)).send().status, 200);
    assert_eq!(s.req("DELETE", &path(&a)).send().status, 200);
    assert_eq!(s.req("POST", &path(&b)).body(&b).send().status, 200);
    assert_eq!(s.req("POST", &path(&c)).body(&c).send().status, 200);
    let d = vec![5u8; 1000];
    assert_eq!(s.req("POST", &path(&d)).body(&d).send().status, 507);
}

#[test]
fn uploads_beyond_the_memory_budget_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("st");
    let s = Server::start(
        &st,
        &[
            "--no-auth",
            "--max-object-size",
            "64KiB",
            "--max-upload-memory",
            "100KiB",
        ],
    );
    let handles: Vec<_> = (0..6u8)
        .map(|i| {
            let send = Server::req_to(&s.addr);
            std::thread::spawn(move || {
                let body = vec![i; 60 * 1024];
                send("POST", &format!("/t/data/{}", sha256_hex(&body)), &body)
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Some(200));
    }
    drop(s);
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--no-auth", "--storage"])
        .arg(&st)
        .args(["--max-object-size", "2MiB", "--max-upload-memory", "1MiB"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// Eight clients upload at once into a tenant with a quota: what was accepted fits in the
/// quota, every accepted object is stored whole, every refused one (507) is absent.
#[test]
fn a_quota_holds_under_eight_concurrent_clients() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("st");
    let s = Server::start(&st, &["--no-auth", "--quota", "q=100KiB"]);
    let handles: Vec<_> = (0..8u8)
        .map(|client| {
            let send = Server::req_to(&s.addr);
            std::thread::spawn(move || {
                (0..20u8)
                    .map(|i| {
                        let body = vec![client.wrapping_mul(31) ^ i; 4096 + usize::from(i)];
                        let name = sha256_hex(&body);
                        let status = send("POST", &format!("/q/data/{name}"), &body);
                        (name, body.len() as u64, status)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let accepted: u64 = results
        .iter()
        .filter(|r| r.2 == Some(200))
        .map(|r| r.1)
        .sum();
    assert!(accepted <= 100 * 1024, "{accepted} bytes accepted");
    assert!(
        accepted > 50 * 1024,
        "the quota refused too much: {accepted}"
    );
    assert!(results.iter().any(|r| r.2 == Some(507)));
    for (name, size, status) in &results {
        let head = s.req("HEAD", &format!("/q/data/{name}")).send();
        match status {
            Some(200) => {
                assert_eq!(head.status, 200, "{name}");
                assert_eq!(
                    head.header("content-length"),
                    Some(size.to_string().as_str())
                );
            }
            Some(507) => assert_eq!(head.status, 404, "{name} was refused but stored"),
            other => panic!("{name}: {other:?}"),
        }
    }
}
