#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A backup in another pid namespace on the same host (a container that shares the host
//! name) holds a lease whose pid means nothing here: a prune on the host must wait for it,
//! and its snapshot must restore.

mod common;
use common::Env;

use std::time::{Duration, Instant};

#[test]
fn a_backup_in_another_pid_namespace_is_not_judged_ended_by_a_prune() {
    let unshare = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if !unshare.is_ok_and(|s| s.success()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to create pid namespaces (unshare, as root)"
        );
        eprintln!("skipped: cannot create a pid namespace here");
        return;
    }
    let env = Env::new();
    env.init();
    let old = env.path("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(
        old.join("f"),
        cairn_repo::testing::Rng::new(1).bytes(3_000_000),
    )
    .unwrap();
    env.ok(&["backup", old.to_str().unwrap()]);
    let first = env.snapshot_ids().remove(0);
    env.ok(&["forget", &first]);

    // The backup runs in a new pid namespace, as a child of the namespace's first process
    // (which is pid 1) with a pid near the namespace's pid_max, which names no process on
    // the host. Its input pauses in the middle, so the
    // prune below runs while it holds data the prune has not seen indexed.
    let mut backup = std::process::Command::new("unshare");
    backup
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c"])
        .arg(concat!(
            "echo $(( $(cat /proc/sys/kernel/pid_max) - 100 )) > /proc/sys/kernel/ns_last_pid; ",
            "\"$0\" backup --stdin-filename new.bin --stdin-from-command -- ",
            "sh -c 'head -c 12000000 /dev/urandom; sleep 4; head -c 100000 /dev/urandom'"
        ))
        .arg(env!("CARGO_BIN_EXE_cairn"));
    backup
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.path("home"))
        .env("XDG_CACHE_HOME", env.path("home/.cache"))
        .env("TMPDIR", env.path("tmp"))
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_PASSWORD_FILE", env.path("password"));
    let child = backup
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let leases = env.json(&["leases"]);
        if leases.as_array().is_some_and(|l| !l.is_empty()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no lease appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let prune = env.json(&["prune", "--max-unused", "0"]);
    assert!(
        !prune["pending_record"].is_null(),
        "the sweep must wait for the backup in the other namespace: {prune}"
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let target = env.path("restored");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(
        std::fs::metadata(target.join("new.bin")).unwrap().len(),
        12_100_000
    );
    env.ok(&["check", "--read-data"]);
}
