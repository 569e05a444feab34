#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The `cairn` binary on an S3 repository (`s3:http://127.0.0.1:PORT/bucket/repo`), against
//! a real S3-compatible server on loopback: init, backup, restore, check, prune beside a
//! running backup, what a user sees when the credentials are wrong, and a mount.

mod common;
#[path = "../../repo-core/store/tests/s3_server/mod.rs"]
mod s3_server;

use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{restored, Env};
use s3_server::{S3Server, ACCESS_KEY, SECRET_KEY};
use serde_json::Value;

/// A test's isolated home and password, and a repository in a fresh S3 server.
struct S3Env {
    env: Env,
    server: S3Server,
    url: String,
}

impl S3Env {
    fn new() -> S3Env {
        let server = S3Server::start();
        let url = server.url("repo");
        S3Env {
            env: Env::new(),
            server,
            url,
        }
    }

    /// The environment of every command: the test's home, password and repository, and the
    /// server's credentials.
    fn vars(&self, secret: &str) -> Vec<(OsString, OsString)> {
        let mut v = self.env.cmd_vars();
        v.retain(|(k, _)| k != "CAIRN_REPOSITORY");
        v.push(("CAIRN_REPOSITORY".into(), self.url.clone().into()));
        v.push(("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()));
        v.push(("AWS_SECRET_ACCESS_KEY".into(), secret.into()));
        v
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env_clear().envs(self.vars(SECRET_KEY));
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "cairn {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// `cairn init` with the location given by `-r`, as a user types it.
    fn init(&self) {
        let out = self
            .cmd()
            .env_remove("CAIRN_REPOSITORY")
            .args(["-r", &self.url, "init"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn backup_restore_and_check_on_s3() {
    let s = S3Env::new();
    s.init();
    // The repository is laid out in the bucket as in a local folder.
    let top = s.server.folder("repo");
    assert!(top.join("cairn-repository").is_file());
    assert!(top.join("default/config").is_file());
    assert_eq!(
        s.json(&["tenant", "list"]),
        serde_json::json!(["default"]),
        "tenants"
    );

    let src = s.env.source();
    let data = cairn_repo::testing::Rng::new(7).bytes(3_000_000);
    std::fs::write(src.join("big.bin"), &data).unwrap();
    s.ok(&["backup", src.to_str().unwrap()]);
    // A second backup of the same tree stores no new data.
    std::fs::write(src.join("a.txt"), "alpha, changed\n").unwrap();
    s.ok(&["backup", src.to_str().unwrap()]);
    assert_eq!(s.json(&["snapshots"]).as_array().unwrap().len(), 2);

    let target = s.env.path("restore");
    s.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let back = restored(&target, &src);
    assert_eq!(std::fs::read(back.join("big.bin")).unwrap(), data);
    assert_eq!(
        std::fs::read_to_string(back.join("a.txt")).unwrap(),
        "alpha, changed\n"
    );
    assert_eq!(
        std::fs::read(back.join("sub/c.txt")).unwrap(),
        vec![b'c'; 200_000]
    );
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap(),
        std::path::Path::new("a.txt")
    );
    s.ok(&["check", "--read-data"]);

    // A second `init` of the same tenant is refused; the repository is untouched.
    let out = s.cmd().arg("init").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.ok(&["check"]);
}

/// A prune while a backup runs waits for it (its lease is listed from S3), and sweeps once
/// the backup committed; nothing the backup wrote is lost.
#[test]
fn prune_beside_a_running_backup_on_s3() {
    let s = S3Env::new();
    s.init();
    let src = s.env.source();
    for m in 1..=3u64 {
        let data = cairn_repo::testing::Rng::new(m).bytes(1_000_000);
        std::fs::write(src.join("big.bin"), data).unwrap();
        s.ok(&[
            "backup",
            src.to_str().unwrap(),
            "--time",
            &format!("2026-0{m}-15 12:00:00"),
        ]);
    }
    s.ok(&["forget", "--keep-last", "1"]);
    // A backup reading from a pipe holds its lease until its input ends.
    let mut backup = s
        .cmd()
        .args(["backup", "--stdin", "--stdin-filename", "slow.sql"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut pipe = backup.stdin.take().unwrap();
    pipe.write_all(b"first rows\n").unwrap();
    let start = Instant::now();
    while s.json(&["leases"]).as_array().unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the backup took no lease"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = s.json(&["prune"]);
    assert!(r["pending_record"].is_string(), "{r}");
    assert_eq!(r["swept"]["packs_deleted"], 0);
    pipe.write_all(b"last rows\n").unwrap();
    drop(pipe);
    assert!(backup.wait().unwrap().success());
    let r = s.json(&["prune"]);
    assert!(r["pending_record"].is_null(), "{r}");
    assert!(r["swept"]["packs_deleted"].as_u64().unwrap() > 0, "{r}");
    s.ok(&["check", "--read-data"]);
    assert_eq!(
        s.ok(&["dump", "latest", "/slow.sql"]),
        "first rows\nlast rows\n"
    );
    assert!(s.json(&["leases"]).as_array().unwrap().is_empty());
}

/// Wrong or missing credentials fail with exit code 1 and a message that says what to
/// check, at once: a refusal is not retried.
#[test]
fn wrong_credentials_are_reported_clearly_and_at_once() {
    let s = S3Env::new();
    s.init();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .env_clear()
        .envs(s.vars("not-the-secret"))
        .arg("snapshots")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(err.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    assert!(!err.contains("retry"), "a refusal was retried: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .env_clear()
        .envs(
            s.vars(SECRET_KEY)
                .into_iter()
                .filter(|(k, _)| k != "AWS_SECRET_ACCESS_KEY"),
        )
        .arg("snapshots")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("credentials are missing"), "{err}");

    // A location without a bucket is a usage error of the location itself.
    let out = s
        .cmd()
        .args(["-r", &format!("s3:{}/", s.server.endpoint()), "snapshots"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("bucket is missing"), "{err}");
}

#[test]
fn a_snapshot_on_s3_is_mounted_and_read() {
    if !common::mount::fuse_available() {
        return;
    }
    let s3 = S3Env::new();
    s3.init();
    let src = s3.env.source();
    s3.ok(&["backup", src.to_str().unwrap()]);
    let point = s3.env.path("mnt");
    let mut m =
        common::mount::Mounted::start_with(s3.vars(SECRET_KEY), s3.env.dir.path(), &point, &[]);
    let shown = point
        .join("snapshots/latest")
        .join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(shown.join("a.txt")).unwrap(), b"alpha\n");
    assert_eq!(
        std::fs::read(shown.join("sub/c.txt")).unwrap(),
        std::fs::read(src.join("sub/c.txt")).unwrap()
    );
    m.unmount_from_outside();
}
