#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The server killed with SIGKILL in the middle of uploads: after a restart on the same
//! storage, every object it lists (and every file in the tenant's folder) hashes to its
//! name, and every upload that was answered 200 before the kill is there. Uploads are
//! staged outside the tenant and renamed into place, so a killed upload leaves nothing
//! under its final name. The same storage, opened by cairn-store as a Cairn client opens a
//! local repository, lists the same objects, and a fresh tenant in it passes the storage
//! conformance suite.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{blake3_hex, sha256_hex, Server};

const TYPES: [&str; 5] = ["keys", "data", "index", "snapshots", "locks"];

fn body(seed: u64) -> Vec<u8> {
    // Sizes from a few bytes to 3 MiB, so some uploads are in flight when the kill comes.
    let len = match seed % 4 {
        0 => 100,
        1 => 64 * 1024,
        2 => 1024 * 1024,
        _ => 3 * 1024 * 1024,
    } + (seed % 97) as usize;
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn matches_name(bytes: &[u8], name: &str) -> bool {
    sha256_hex(bytes) == name || blake3_hex(bytes) == name
}

/// Every object the server lists hashes to its name, with the listed size; returns the
/// paths listed.
fn check_listed(s: &Server, tenant: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for ty in TYPES {
        let r = s
            .req("GET", &format!("/{tenant}/{ty}/"))
            .header("Accept", "application/vnd.x.restic.rest.v2")
            .send();
        assert_eq!(r.status, 200);
        let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        for o in list.as_array().unwrap() {
            let name = o["name"].as_str().unwrap();
            let path = format!("/{tenant}/{ty}/{name}");
            let got = s.req("GET", &path).send();
            assert_eq!(got.status, 200, "{path}");
            assert_eq!(got.body.len() as u64, o["size"].as_u64().unwrap(), "{path}");
            assert!(
                matches_name(&got.body, name),
                "{path} does not hash to its name"
            );
            all.insert(path);
        }
    }
    all
}

/// Every file in the tenant's folder, read straight from disk, hashes to its name.
fn check_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            assert!(
                matches_name(&std::fs::read(&p).unwrap(), &name),
                "{} does not hash to its name",
                p.display()
            );
            n += 1;
        }
    }
    n
}

#[test]
fn a_killed_server_leaves_only_complete_objects() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let counter = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    for round in 0..3u64 {
        let mut s = Server::start(&storage, &["--no-auth"]);
        let addr = s.addr.clone();
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let counter = Arc::clone(&counter);
                let acked = Arc::clone(&acked);
                let probe = Server::req_to(&addr);
                std::thread::spawn(move || {
                    // Bounded: stops when the server is gone, or after 10 000 uploads.
                    for _ in 0..10_000 {
                        let seed = counter.fetch_add(1, Ordering::SeqCst);
                        let bytes = body(seed);
                        let name = if seed.is_multiple_of(2) {
                            sha256_hex(&bytes)
                        } else {
                            blake3_hex(&bytes)
                        };
                        let path = format!("/crash/{}/{name}", TYPES[(seed % 5) as usize]);
                        match probe("POST", &path, &bytes) {
                            Some(200) => acked.lock().unwrap().push(path),
                            Some(status) => panic!("{path}: {status}"),
                            None => return,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300 + 200 * round));
        // SIGKILL: no chance to finish anything in flight.
        s.child.kill().unwrap();
        s.child.wait().unwrap();
        for c in clients {
            c.join().unwrap();
        }
        let s = Server::start(&storage, &["--no-auth"]);
        let listed = check_listed(&s, "crash");
        for path in acked.lock().unwrap().iter() {
            assert!(listed.contains(path), "{path} was answered 200 but is gone");
        }
        let files = check_files(&storage.join("crash"));
        assert_eq!(files, listed.len());
        assert!(!listed.is_empty());
        eprintln!(
            "round {round}: {} uploads sent, {} answered 200, {} objects listed, {} staged files left",
            counter.load(Ordering::SeqCst),
            acked.lock().unwrap().len(),
            listed.len(),
            std::fs::read_dir(storage.join("tmp")).map(|d| d.count()).unwrap_or(0)
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let location = cairn_store::Location::Local(storage.clone());
        let root = cairn_store::backend::open(
            &location,
            &cairn_store::backend::BackendOptions::for_location(&location),
        )
        .unwrap();
        let crash = root.tenant("crash").unwrap();
        let mut direct = 0;
        for ft in cairn_store::layout::FileType::ALL {
            for o in crash.list(ft).await.unwrap() {
                let bytes = crash.read(ft, &o.name).await.unwrap();
                assert!(matches_name(&bytes, &o.name), "{}/{}", ft.dir(), o.name);
                direct += 1;
            }
        }
        assert_eq!(direct, check_files(&storage.join("crash")));
        cairn_store::backend::conformance::run(&*root.tenant("fresh").unwrap())
            .await
            .unwrap();
    });
}
