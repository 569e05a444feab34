#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Misconfigurations and slips that must end in a clear error, never in a hang, a wrong
//! diagnosis or lost snapshots: password commands, empty passwords, zero retention rules,
//! and the credential of a new tenant.

mod common;

use std::time::Duration;

use common::Env;
use predicates::str::contains;

/// A bound for the test itself, far above the command's own: a cairn that hangs is killed and
/// the test fails instead of hanging.
const HANG: Duration = Duration::from_secs(120);

#[test]
fn a_password_command_that_never_exits_is_stopped_at_its_bound() {
    let env = Env::new();
    env.init();
    // The command prints the right password and then never exits. `exec` makes the shell the
    // sleeping process, so that stopping the command leaves nothing behind.
    let out = env
        .bare()
        .env("CAIRN_REPOSITORY", env.repo())
        .env(
            "CAIRN_PASSWORD_COMMAND",
            "echo 'correct horse'; exec sleep 1000",
        )
        .env("CAIRN_PASSWORD_COMMAND_TIMEOUT", "1")
        .arg("snapshots")
        .timeout(HANG)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        err.contains("did not exit within 1 s and was stopped"),
        "{err}"
    );
    // The option form of the bound, and a command that does exit, still work.
    env.bare()
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_PASSWORD_COMMAND", "echo 'correct horse'")
        .args(["--password-command-timeout", "30", "snapshots"])
        .timeout(HANG)
        .assert()
        .success();
}

#[test]
fn a_password_command_that_prints_much_does_not_block() {
    let env = Env::new();
    env.init();
    // Far more than a pipe holds: a reader that waited for the exit first would deadlock.
    env.bare()
        .env("CAIRN_REPOSITORY", env.repo())
        .env(
            "CAIRN_PASSWORD_COMMAND",
            "echo 'correct horse'; head -c 4000000 /dev/zero | tr '\\0' x",
        )
        .arg("snapshots")
        .timeout(HANG)
        .assert()
        .success();
}

#[test]
fn an_empty_password_is_reported_as_empty_not_as_wrong() {
    let env = Env::new();
    env.init();
    std::fs::write(env.path("empty"), "").unwrap();
    std::fs::write(env.path("blank-line"), "\nsecond line\n").unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "CAIRN_PASSWORD_FILE",
            env.path("empty").to_str().unwrap().into(),
        ),
        (
            "CAIRN_PASSWORD_FILE",
            env.path("blank-line").to_str().unwrap().into(),
        ),
        ("CAIRN_PASSWORD_COMMAND", "true".into()),
        ("CAIRN_PASSWORD_COMMAND", "printf '\\n'".into()),
        ("CAIRN_PASSWORD", String::new()),
    ];
    for (var, value) in cases {
        let out = env
            .bare()
            .env("CAIRN_REPOSITORY", env.repo())
            .env(var, &value)
            .arg("snapshots")
            .timeout(HANG)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}={value:?}: {err}");
        assert!(
            err.starts_with("error: empty password"),
            "{var}={value:?}: {err}"
        );
        assert!(!err.contains("wrong password"), "{var}={value:?}: {err}");
    }
}

fn snapshot_count(env: &Env) -> usize {
    env.json(&["snapshots"]).as_array().unwrap().len()
}

#[test]
fn forget_refuses_a_policy_of_zeros_instead_of_removing_every_snapshot() {
    let env = Env::new();
    env.init();
    let src = env.source();
    for _ in 0..3 {
        env.ok(&["backup", "--force", src.to_str().unwrap()]);
    }
    for policy in [
        vec!["--keep-last", "0"],
        vec!["--keep-daily", "0"],
        vec![
            "--keep-last",
            "0",
            "--keep-daily",
            "0",
            "--keep-yearly",
            "0",
        ],
        vec!["--keep-within", "0h"],
    ] {
        for dry_run in [true, false] {
            let mut args = vec!["forget"];
            args.extend(&policy);
            if dry_run {
                args.push("--dry-run");
            }
            let err = env.fails(&args, 1);
            assert!(err.contains("keeps nothing"), "{args:?}: {err}");
            assert_eq!(snapshot_count(&env), 3, "{args:?}");
        }
    }
    // Beside a rule that keeps something, a zero keeps nothing of its kind.
    env.ok(&["forget", "--keep-last", "1", "--keep-daily", "0"]);
    assert_eq!(snapshot_count(&env), 1);
}

#[test]
fn a_new_tenant_never_gets_the_current_tenants_password() {
    let env = Env::new();
    env.init();
    // The current tenant's password is configured (CAIRN_PASSWORD_FILE) and there is no
    // terminal: without an option naming the new tenant's credential, nothing is created.
    env.cmd()
        .args(["tenant", "add", "acme"])
        .timeout(HANG)
        .assert()
        .code(1)
        .stderr(contains("--new-password-file"));
    assert_eq!(
        env.json(&["tenant", "list"]),
        serde_json::json!(["default"])
    );

    std::fs::write(env.path("acme-pw"), "acme only\n").unwrap();
    let acme_pw = env.path("acme-pw");
    env.ok(&[
        "tenant",
        "add",
        "acme",
        "--new-password-file",
        acme_pw.to_str().unwrap(),
    ]);
    env.fails(&["--tenant", "acme", "snapshots"], 12);
    env.cmd()
        .env("CAIRN_PASSWORD_FILE", &acme_pw)
        .args(["--tenant", "acme", "snapshots"])
        .assert()
        .success();

    // A new key file: only that key opens the tenant.
    let kf = env.path("robot.key");
    env.ok(&[
        "tenant",
        "add",
        "robot",
        "--new-key-file",
        kf.to_str().unwrap(),
    ]);
    // The tenant has no password slot at all: the current password opens nothing.
    env.cmd()
        .args(["--tenant", "robot", "snapshots"])
        .assert()
        .failure();
    env.bare()
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_KEY_FILE", &kf)
        .arg("snapshots")
        .assert()
        .success();
    // An existing key file is never overwritten.
    env.fails(
        &[
            "tenant",
            "add",
            "other",
            "--new-key-file",
            kf.to_str().unwrap(),
        ],
        1,
    );
}

/// A bad option value is a command line error wherever it is found: exit 2, with the option
/// named, and nothing changed.
#[test]
fn bad_option_values_exit_2() {
    let env = common::Env::new();
    env.init();
    let src = env.source();
    let s = src.to_str().unwrap();
    for (args, option) in [
        (vec!["forget", "--keep-within", "soon"], "--keep-within"),
        (
            vec!["forget", "--keep-last", "1", "--group-by", "colour"],
            "--group-by",
        ),
        (
            vec!["prune", "--max-repack-size", "huge"],
            "--max-repack-size",
        ),
        (vec!["prune", "--max-unused=-3%"], "--max-unused"),
        (vec!["backup", s, "--compression", "zip"], "--compression"),
        (
            vec!["backup", s, "--exclude-larger-than", "1Q"],
            "--exclude-larger-than",
        ),
        (vec!["backup", s, "--time", "tomorrow"], "--time"),
    ] {
        let err = env.fails(&args, 2);
        assert!(err.contains(option), "{args:?}: {err}");
    }
    assert!(env.snapshot_ids().is_empty(), "a backup was made");
}
