#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real restic client against the server: init, backup, check --read-data, forget
//! --prune, restore, key add and copy between tenants with full credentials; then what
//! append-only and read-only credentials can and cannot do. Needs `restic` on PATH (under
//! CI its absence fails the test).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{add_user, Server};

struct Restic {
    bin: PathBuf,
    addr: String,
    cache: PathBuf,
}

impl Restic {
    fn repo(&self, user: &str, tenant: &str) -> String {
        format!("rest:http://{user}:pw-{user}@{}/{tenant}/", self.addr)
    }

    /// Runs restic as `user` on `tenant`, killed after two minutes (a hang is a failure).
    fn run(&self, user: &str, tenant: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-r")
            .arg(self.repo(user, tenant))
            .args(args)
            .env("RESTIC_PASSWORD", "repository password")
            .env("RESTIC_CACHE_DIR", &self.cache)
            .env_remove("RESTIC_REPOSITORY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting restic");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "restic {args:?} as {user} hung: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ok(&self, user: &str, tenant: &str, args: &[&str], envs: &[(&str, &str)]) -> String {
        let out = self.run(user, tenant, args, envs);
        assert!(
            out.status.success(),
            "restic {args:?} as {user} on {tenant} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, user: &str, tenant: &str, args: &[&str]) -> String {
        let out = self.run(user, tenant, args, &[]);
        assert!(
            !out.status.success(),
            "restic {args:?} as {user} on {tenant} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn snapshot_count(&self, user: &str, tenant: &str) -> usize {
        let out = self.ok(user, tenant, &["--no-lock", "snapshots", "--json"], &[]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array().unwrap().len()
    }
}

/// A small tree: text files, an empty one, a subfolder and a 3 MiB file of varied bytes
/// (several chunks, so data packs and ranged reads of them are exercised).
fn make_tree(dir: &Path, generation: u32) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("a.txt"), format!("generation {generation}\n")).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(dir.join("sub/b.txt"), b"b\n".repeat(1000)).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15 ^ u64::from(generation);
    let big: Vec<u8> = (0..3 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.join("sub/deeper/big.bin"), big).unwrap();
}

fn same_tree(a: &Path, b: &Path) {
    for rel in ["a.txt", "empty", "sub/b.txt", "sub/deeper/big.bin"] {
        assert_eq!(
            std::fs::read(a.join(rel)).unwrap(),
            std::fs::read(b.join(rel)).unwrap(),
            "{rel}"
        );
    }
}

/// restic restores a backed-up absolute path below the target.
fn restored(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap())
}

#[test]
fn restic_against_the_server() {
    let Some(bin) = common::need_program("restic") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "owner", "full", Some("repo"), "pw-owner");
    add_user(&users, "writer", "append", Some("repo"), "pw-writer");
    add_user(&users, "reader", "read", Some("repo"), "pw-reader");
    add_user(&users, "owner2", "full", Some("copy"), "pw-owner2");
    add_user(&users, "reader2", "read", Some("copy"), "pw-reader2");
    let s = Server::start(
        &dir.path().join("storage"),
        &["--users", users.to_str().unwrap()],
    );
    let r = Restic {
        bin,
        addr: s.addr.clone(),
        cache: dir.path().join("cache"),
    };
    let src = dir.path().join("src");
    make_tree(&src, 1);
    let src_arg = src.to_str().unwrap();

    // Full credentials: the whole life of a repository.
    r.ok("owner", "repo", &["init"], &[]);
    r.ok("owner", "repo", &["backup", src_arg], &[]);
    make_tree(&src, 2);
    r.ok("owner", "repo", &["backup", src_arg], &[]);
    assert_eq!(r.snapshot_count("owner", "repo"), 2);
    r.ok("owner", "repo", &["check", "--read-data"], &[]);
    r.ok(
        "owner",
        "repo",
        &["forget", "--keep-last", "1", "--prune"],
        &[],
    );
    assert_eq!(r.snapshot_count("owner", "repo"), 1);
    r.ok("owner", "repo", &["check", "--read-data"], &[]);
    let target = dir.path().join("restore1");
    r.ok(
        "owner",
        "repo",
        &["restore", "latest", "--target", target.to_str().unwrap()],
        &[],
    );
    same_tree(&src, &restored(&target, &src));
    let new_pw = dir.path().join("new-password");
    std::fs::write(&new_pw, "second password\n").unwrap();
    r.ok(
        "owner",
        "repo",
        &[
            "key",
            "add",
            "--new-password-file",
            new_pw.to_str().unwrap(),
        ],
        &[],
    );
    let keys = r.ok("owner", "repo", &["key", "list", "--json"], &[]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&keys)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    r.ok(
        "owner",
        "repo",
        &["snapshots"],
        &[("RESTIC_PASSWORD", "second password")],
    );

    // Copy to a second tenant with its own user.
    let from = r.repo("owner", "repo");
    let from_env = [("RESTIC_FROM_PASSWORD", "repository password")];
    r.ok(
        "owner2",
        "copy",
        &["init", "--from-repo", &from, "--copy-chunker-params"],
        &from_env,
    );
    r.ok("owner2", "copy", &["copy", "--from-repo", &from], &from_env);
    assert_eq!(r.snapshot_count("owner2", "copy"), 1);
    r.ok("owner2", "copy", &["check", "--read-data"], &[]);
    // The second tenant's user cannot read the first tenant, and the reverse.
    r.fails("owner2", "repo", &["--no-lock", "snapshots"]);
    r.fails("owner", "copy", &["--no-lock", "snapshots"]);

    // Append-only: backups work, forgetting and pruning do not. Read-only: listing and
    // restoring work without locks; backups do not. restic before 0.16 retries a refused
    // request for about 45 s before it gives up, so the two refusals run side by side, in
    // two tenants (a failing forget holds its exclusive lock in its own).
    make_tree(&src, 3);
    r.ok("writer", "repo", &["backup", src_arg], &[]);
    assert_eq!(r.snapshot_count("writer", "repo"), 2);
    std::thread::scope(|scope| {
        let forget =
            scope.spawn(|| r.fails("writer", "repo", &["forget", "--keep-last", "1", "--prune"]));
        let backup = scope.spawn(|| r.fails("reader2", "copy", &["backup", src_arg]));
        assert_eq!(r.snapshot_count("reader", "repo"), 2);
        let target = dir.path().join("restore2");
        r.ok(
            "reader",
            "repo",
            &[
                "--no-lock",
                "restore",
                "latest",
                "--target",
                target.to_str().unwrap(),
            ],
            &[],
        );
        same_tree(&src, &restored(&target, &src));
        for refused in [forget.join().unwrap(), backup.join().unwrap()] {
            assert!(refused.contains("403"), "{refused}");
        }
    });
    assert_eq!(r.snapshot_count("owner", "repo"), 2);
    assert_eq!(r.snapshot_count("owner2", "copy"), 1);
    r.ok("owner", "repo", &["check"], &[]);

    // Every stored object of both tenants hashes to its name (config is named by role).
    for tenant in ["repo", "copy"] {
        let mut stack = vec![dir.path().join("storage").join(tenant)];
        let mut seen = 0;
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.file_name().unwrap() != "config" {
                    let name = p.file_name().unwrap().to_str().unwrap().to_string();
                    assert_eq!(common::sha256_hex(&std::fs::read(&p).unwrap()), name);
                    seen += 1;
                }
            }
        }
        assert!(seen >= 4, "{tenant}: {seen}");
    }
}
