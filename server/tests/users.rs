#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The users file and the server's process: starting needs a private users file (or
//! --no-auth), `user add/list/remove`, reloading on SIGHUP, stopping on SIGTERM, and the
//! receipts of snapshots.

mod common;

use common::{add_user, sha256_hex, Server};

#[test]
fn starting_needs_a_private_users_file_unless_auth_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("st");
    let run = |args: &[&str]| {
        std::process::Command::new(common::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--storage"])
            .arg(&st)
            .args(args)
            .env_remove("CAIRN_SERVER_USERS")
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-auth"));
    let users = dir.path().join("users");
    add_user(&users, "u", "full", Some("t"), "pw");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["--users", users.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    let out = run(&["--users", users.to_str().unwrap(), "--no-auth"]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["--listen"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn users_are_managed_by_the_cli_and_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "ann", "full", Some("t"), "pw-ann");
    let s = Server::start(
        &dir.path().join("st"),
        &["--users", users.to_str().unwrap()],
    );
    assert_eq!(
        s.req("GET", "/t/keys/").auth("ann", "pw-ann").send().status,
        200
    );
    assert_eq!(
        s.req("GET", "/t/keys/").auth("bob", "pw-bob").send().status,
        401
    );

    add_user(&users, "bob", "read", Some("t"), "pw-bob");
    let list = std::process::Command::new(common::BIN)
        .args(["user", "list", "--users"])
        .arg(&users)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&list.stdout),
        "ann\tfull\tt\nbob\tread\tt\n"
    );
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(
        !text.contains("pw-bob") && text.contains("$argon2id$"),
        "{text}"
    );
    // Not before the reload...
    assert_eq!(
        s.req("GET", "/t/keys/").auth("bob", "pw-bob").send().status,
        401
    );
    s.signal(nix::sys::signal::Signal::SIGHUP);
    let mut status = 0;
    for _ in 0..100 {
        status = s.req("GET", "/t/keys/").auth("bob", "pw-bob").send().status;
        if status == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(status, 200);

    // A removed user is refused after the reload, even with a verification cached.
    let out = std::process::Command::new(common::BIN)
        .args(["user", "remove", "ann", "--users"])
        .arg(&users)
        .output()
        .unwrap();
    assert!(out.status.success());
    s.signal(nix::sys::signal::Signal::SIGHUP);
    for _ in 0..100 {
        status = s.req("GET", "/t/keys/").auth("ann", "pw-ann").send().status;
        if status == 401 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(status, 401);
    // A duplicate add is refused and leaves the file as it was.
    let pwf = dir.path().join("pw");
    std::fs::write(&pwf, "x\n").unwrap();
    let out = std::process::Command::new(common::BIN)
        .args([
            "user", "add", "bob", "--access", "full", "--tenant", "t", "--users",
        ])
        .arg(&users)
        .arg("--password-file")
        .arg(&pwf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(std::fs::read_to_string(&users)
        .unwrap()
        .contains("bob:read:t:"));

    // SIGTERM stops the server cleanly.
    let mut s = s;
    s.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(s.wait_exit(), Some(0));
}

#[test]
fn stored_snapshots_get_a_receipt_with_the_server_time() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    add_user(&users, "ann", "append", Some("t"), "pw-ann");
    let receipts = dir.path().join("receipts");
    let s = Server::start(
        &dir.path().join("st"),
        &[
            "--users",
            users.to_str().unwrap(),
            "--receipts",
            receipts.to_str().unwrap(),
        ],
    );
    let snap = b"sealed snapshot";
    let name = sha256_hex(snap);
    let path = format!("/t/snapshots/{name}");
    assert_eq!(
        s.req("POST", &path)
            .auth("ann", "pw-ann")
            .body(snap)
            .send()
            .status,
        200
    );
    // Refused and non-snapshot uploads leave no receipt.
    assert_eq!(
        s.req("POST", &path)
            .auth("ann", "pw-ann")
            .body(snap)
            .send()
            .status,
        403
    );
    let pack = b"pack";
    let r = s
        .req("POST", &format!("/t/data/{}", sha256_hex(pack)))
        .auth("ann", "pw-ann")
        .body(pack)
        .send();
    assert_eq!(r.status, 200);
    let text = std::fs::read_to_string(&receipts).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["tenant"], "t");
    assert_eq!(lines[0]["snapshot"], name.as_str());
    assert_eq!(lines[0]["size"], snap.len());
    assert_eq!(lines[0]["user"], "ann");
    let received: jiff::Timestamp = lines[0]["received"].as_str().unwrap().parse().unwrap();
    let age = jiff::Timestamp::now().duration_since(received);
    assert!(age.as_secs() < 60, "{age:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&receipts).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
