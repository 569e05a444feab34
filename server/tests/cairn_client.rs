#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Cairn's own client against the server: the REST client passes the storage conformance
//! suite through it, and the `cairn` binary backs up, restores, checks, judges snapshots by
//! the server's receive times and prunes beside a running backup through it; an append-only
//! user backs up but can delete nothing.

mod common;
#[path = "../../repo-core/store/tests/s3_server/mod.rs"]
mod s3_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_store::backend::rest::{RestRoot, RestTarget};
use cairn_store::backend::{conformance, BackendOptions, Root};
use common::{add_user, Server};

/// The `cairn` binary built beside this one (`cargo nextest run --workspace` builds every
/// binary first): `None`, loudly, when it was not built, and a failure under CI.
fn cairn_binary() -> Option<PathBuf> {
    let path = Path::new(common::BIN).with_file_name("cairn");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} was not built (scripts/test builds the whole workspace)",
        path.display()
    );
    eprintln!("SKIPPED: {} was not built", path.display());
    None
}

#[tokio::test]
async fn the_rest_client_conforms_against_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("storage"), &["--no-auth"]);
    let target = RestTarget::parse(&format!("http://{}/", server.addr)).unwrap();
    let root = RestRoot::new(&target, &BackendOptions::remote()).unwrap();
    conformance::run(&*root.tenant("t1").unwrap())
        .await
        .unwrap();
}

/// `cairn` with a repository on the server as `user`.
struct Client {
    bin: PathBuf,
    dir: PathBuf,
    url: String,
    user: String,
}

impl Client {
    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// `cairn` with this client's repository, user and key.
    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("CAIRN_REPOSITORY", &self.url)
            .env("CAIRN_REST_USERNAME", &self.user)
            .env("CAIRN_REST_PASSWORD", "secret")
            .env("CAIRN_TENANT", "team")
            .env("CAIRN_KEY_FILE", self.dir.join("team.key"))
            .env(
                "CAIRN_CACHE_DIR",
                self.dir.join(format!("cache-{}", self.user)),
            );
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        // A backup that runs a while streams status lines first; its summary is the last.
        let out = self.ok(&all);
        serde_json::from_str(
            out.lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or_default(),
        )
        .unwrap()
    }
}

/// A server of one tenant `team` with users `admin` (full access) and `user` with `access`,
/// storing in `dir`; and a maker of clients as one of them.
fn team_server(
    bin: &Path,
    dir: &Path,
    user: &str,
    access: &str,
) -> (Server, impl Fn(&str) -> Client) {
    let users = dir.join("users");
    add_user(&users, "admin", "full", Some("team"), "secret");
    add_user(&users, user, access, Some("team"), "secret");
    let server = Server::start(&dir.join("storage"), &["--users", users.to_str().unwrap()]);
    let url = format!("rest:http://{}/", server.addr);
    let (bin, dir) = (bin.to_path_buf(), dir.to_path_buf());
    let client = move |user: &str| Client {
        bin: bin.clone(),
        dir: dir.clone(),
        url: url.clone(),
        user: user.to_string(),
    };
    (server, client)
}

fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn cairn_works_through_the_server_and_an_append_only_user_deletes_nothing() {
    let Some(bin) = cairn_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = team_server(&bin, dir.path(), "host", "append");
    let (admin, host) = (client("admin"), client("host"));

    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), "alpha\n").unwrap();
    std::fs::write(src.join("sub/big"), vec![7u8; 3_000_000]).unwrap();
    admin.ok(&["init"]);
    let s = src.to_str().unwrap();
    admin.ok(&["backup", s]);
    host.ok(&["backup", s, "--tag", "from-host"]);

    // Restore what the append-only host stored, and read every byte back.
    let target = dir.path().join("out");
    host.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(
        tree(&target.join(src.strip_prefix("/").unwrap())),
        tree(&src)
    );
    admin.ok(&["check", "--read-data"]);

    // The append-only user may not forget or prune, and nothing changes.
    for args in [&["forget", "--keep-last", "1"][..], &["prune"][..]] {
        let out = host.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("nothing was changed"), "{args:?}: {err}");
    }
    assert_eq!(admin.json(&["snapshots"]).as_array().unwrap().len(), 2);

    // Retention by the server's receive times: the first snapshot claims to be the newest.
    admin.ok(&["backup", s, "--time", "2030-01-01 00:00:00"]);
    let plan = admin.json(&[
        "forget",
        "--keep-last",
        "1",
        "--by-received-time",
        "--dry-run",
    ]);
    let kept = &plan["groups"][0]["keep"];
    assert_eq!(kept.as_array().unwrap().len(), 1, "{plan}");
    assert!(
        !kept[0]["time"].as_str().unwrap().starts_with("2030"),
        "{plan}"
    );

    // Prune beside a backup that is still running (its command sleeps halfway).
    std::fs::write(dir.path().join("part1"), vec![1u8; 2_000_000]).unwrap();
    std::fs::write(dir.path().join("part2"), vec![2u8; 2_000_000]).unwrap();
    let script = format!(
        "cat {0}/part1; sleep 2; cat {0}/part2",
        dir.path().display()
    );
    let running = {
        let mut cmd = host.command();
        cmd.env("CAIRN_CACHE_DIR", dir.path().join("cache-running"))
            .args([
                "--json",
                "backup",
                "--stdin-from-command",
                "--stdin-filename",
                "stream",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdout(std::process::Stdio::piped());
        cmd.spawn().unwrap()
    };
    admin.ok(&["forget", "--keep-last", "1", "--prune"]);
    let status = running.wait_with_output().unwrap();
    assert!(status.status.success());
    let stdout = String::from_utf8(status.stdout).unwrap();
    let last = stdout
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let saved: serde_json::Value = serde_json::from_str(last).unwrap();
    let stream_snapshot = saved["snapshot"].as_str().unwrap().to_string();
    admin.ok(&["check", "--read-data"]);
    let mut both = vec![1u8; 2_000_000];
    both.extend(vec![2u8; 2_000_000]);
    let out = admin.run(&["dump", &format!("{stream_snapshot}:/stream")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == both,
        "the stream backed up beside the prune reads back whole"
    );
}

/// The server keeping its objects in S3 (a real S3-compatible server on loopback): the REST
/// client passes the conformance suite through it, and `cairn` backs up, restores and
/// checks through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_objects_in_s3() {
    let s3 = s3_server::S3Server::start();
    // The server reads the S3 credentials from its environment (one process per test).
    std::env::set_var("AWS_ACCESS_KEY_ID", s3_server::ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", s3_server::SECRET_KEY);
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "admin", "full", Some("team"), "secret");
    add_user(&users, "probe", "full", Some("t1"), "secret");
    let storage = s3.url("served");
    let server = Server::start(Path::new(&storage), &["--users", users.to_str().unwrap()]);

    let target = RestTarget::parse(&format!("http://probe:secret@{}/", server.addr)).unwrap();
    let root = RestRoot::new(&target, &BackendOptions::remote()).unwrap();
    conformance::run(&*root.tenant("t1").unwrap())
        .await
        .unwrap();
    assert!(
        s3.folder("served").join("t1").is_dir(),
        "nothing reached S3"
    );

    let Some(bin) = cairn_binary() else { return };
    let admin = Client {
        bin,
        dir: dir.path().to_path_buf(),
        url: format!("rest:http://{}/", server.addr),
        user: "admin".to_string(),
    };
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), vec![9u8; 1_500_000]).unwrap();
    tokio::task::block_in_place(|| {
        admin.ok(&["init"]);
        admin.ok(&["backup", src.to_str().unwrap()]);
        admin.ok(&["check", "--read-data"]);
        let target = dir.path().join("out");
        admin.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
        assert_eq!(
            tree(&target.join(src.strip_prefix("/").unwrap())),
            tree(&src)
        );
    });
    assert!(s3.folder("served").join("team").join("snapshots").is_dir());
}

/// `/metrics` says when each tenant's newest snapshot arrived, also after a restart (from
/// the storage), so that "no backup for 26 hours" can alert without any key.
#[test]
fn metrics_give_the_newest_snapshot_receive_time() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "admin", "full", Some("acme"), "secret");
    add_user(&users, "prom", "metrics", None, "scrape");
    let storage = dir.path().join("storage");
    let gauge = |server: &Server| -> Option<u64> {
        let resp = server.req("GET", "/metrics").auth("prom", "scrape").send();
        assert_eq!(resp.status, 200);
        String::from_utf8_lossy(&resp.body)
            .lines()
            .find(|l| {
                l.starts_with("cairn_server_newest_snapshot_received_seconds{tenant=\"acme\"}")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
    };
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = {
        let server = Server::start(&storage, &["--users", users.to_str().unwrap()]);
        assert_eq!(gauge(&server), None);
        let body = b"a sealed snapshot";
        let name = common::blake3_hex(body);
        assert_eq!(
            server
                .req("POST", "/acme/?create=true")
                .auth("admin", "secret")
                .send()
                .status,
            200
        );
        assert_eq!(
            server
                .req("POST", "/acme/config")
                .auth("admin", "secret")
                .body(b"config")
                .send()
                .status,
            200
        );
        let resp = server
            .req("POST", &format!("/acme/snapshots/{name}"))
            .auth("admin", "secret")
            .body(body)
            .send();
        assert_eq!(resp.status, 200);
        let at = gauge(&server).expect("the gauge after a snapshot upload");
        assert!(at >= started && at <= started + 60, "{at} vs {started}");
        at
    };
    let server = Server::start(&storage, &["--users", users.to_str().unwrap()]);
    let again = gauge(&server).expect("the gauge read from storage after a restart");
    assert!(again.abs_diff(at) <= 1, "{again} vs {at}");
}

/// Whether real FUSE mounts can be tested here (root, /dev/fuse, fusermount3); a failure
/// under CI, where scripts/test installs fuse3 and runs as root.
fn fuse_available() -> bool {
    let ok = nix::unistd::geteuid().is_root()
        && Path::new("/dev/fuse").exists()
        && Command::new("fusermount3")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "the mount test needs root, /dev/fuse and fusermount3 under CI"
    );
    ok
}

#[test]
fn a_user_with_read_access_mounts_the_snapshots_through_the_server() {
    let Some(bin) = cairn_binary() else { return };
    if !fuse_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_server, client) = team_server(&bin, dir.path(), "auditor", "read");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("report.txt"), "quarterly\n").unwrap();
    std::fs::write(src.join("big"), vec![9u8; 3_000_000]).unwrap();
    client("admin").ok(&["init"]);
    client("admin").ok(&["backup", src.to_str().unwrap()]);

    let point = dir.path().join("mnt");
    std::fs::create_dir_all(&point).unwrap();
    let log = dir.path().join("mount.err");
    let mut child = client("auditor")
        .command()
        .arg("mount")
        .arg(&point)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = std::time::Instant::now();
    while !stderr().contains(" mounted on ") {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the mount ended: {}",
            stderr()
        );
        assert!(start.elapsed().as_secs() < 60, "no mount: {}", stderr());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let shown = point
        .join("snapshots/latest")
        .join(src.strip_prefix("/").unwrap());
    let read = (
        std::fs::read(shown.join("report.txt")),
        std::fs::read(shown.join("big")),
    );
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&point)
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert_eq!(read.0.unwrap(), b"quarterly\n");
    assert_eq!(read.1.unwrap(), vec![9u8; 3_000_000]);
    assert_eq!(status.code(), Some(0), "{}", stderr());
}
