#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Repositories, tenants, passwords and key files from the command line.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{restored, Env};
use predicates::str::contains;

#[test]
fn default_repository_is_created_on_first_backup() {
    let env = Env::new();
    let src = env.source();
    let out = env
        .bare()
        .args(["backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let repo = env.path("home/.local/share/cairn/repository");
    let key = env.path("home/.config/cairn/default-repository.key");
    assert!(stderr.contains(repo.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains(key.to_str().unwrap()), "{stderr}");
    assert!(stderr.contains("safe"), "{stderr}");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Later commands find the default repository and key without configuration.
    env.bare()
        .args(["backup", src.to_str().unwrap()])
        .assert()
        .success()
        .stderr(predicates::str::contains("Created").not());
    let target = env.path("out");
    env.bare()
        .args(["restore", "latest", "--target", target.to_str().unwrap()])
        .assert()
        .success();
    assert_eq!(
        std::fs::read(restored(&target, &src).join("a.txt")).unwrap(),
        b"alpha\n"
    );
    env.bare()
        .args(["snapshots"])
        .assert()
        .success()
        .stdout(contains("2 snapshots"));
}

use predicates::prelude::PredicateBooleanExt;

/// The README's first command backs up the home folder, which holds the default repository,
/// its key and the cache: the repository and the cache are left out, so a second backup adds
/// next to nothing instead of storing the first one's packs again.
#[test]
fn a_backup_of_the_home_folder_leaves_out_the_repository_and_the_cache() {
    let env = Env::new();
    let home = env.path("home");
    std::fs::create_dir_all(home.join("docs")).unwrap();
    std::fs::write(home.join("docs/notes.txt"), "notes\n").unwrap();
    let h = home.to_str().unwrap();
    env.bare().args(["backup", h]).assert().success();
    let out = env.bare().args(["--json", "backup", h]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = common::last_json(&out.stdout);
    // At most the trees of the folders above the home folder, whose times other tests
    // change; the repository's packs and the cache file would be far more.
    assert!(
        summary["summary"]["bytes_added"].as_u64().unwrap() < 2048,
        "{summary}"
    );
    let listing = env.bare().args(["ls", "latest"]).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("docs/notes.txt"), "{listing}");
    for own in [".local/share/cairn/repository", ".cache/cairn/"] {
        assert!(!listing.contains(own), "{own} was backed up:\n{listing}");
    }
}

#[test]
fn commands_other_than_backup_do_not_create_the_default_repository() {
    let env = Env::new();
    env.bare()
        .arg("snapshots")
        .assert()
        .code(10)
        .stderr(contains("does not exist yet"));
    assert!(!env.path("home/.local/share/cairn/repository").exists());
}

#[test]
fn init_tenants_and_isolation() {
    let env = Env::new();
    env.init();
    env.fails(&["init"], 1);
    let password = env.path("password");
    env.ok(&[
        "tenant",
        "add",
        "acme",
        "--new-password-file",
        password.to_str().unwrap(),
    ]);
    assert_eq!(
        env.json(&["tenant", "list"]),
        serde_json::json!(["acme", "default"])
    );
    env.fails(&["--tenant", "../x", "init"], 1);
    env.fails(&["--tenant", "nobody", "snapshots"], 1);

    let src = env.source();
    env.ok(&["--tenant", "acme", "backup", src.to_str().unwrap()]);
    assert_eq!(
        env.json(&["--tenant", "acme", "snapshots"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        env.json(&["snapshots"]).as_array().unwrap().len(),
        0,
        "tenants see only their own snapshots"
    );
    // Another password for acme does not open default, and vice versa.
    std::fs::write(env.path("acme-pw"), "acme only\n").unwrap();
    env.cmd()
        .args([
            "--tenant",
            "acme",
            "key",
            "add",
            "--new-password-file",
            env.path("acme-pw").to_str().unwrap(),
        ])
        .assert()
        .success();
    env.cmd()
        .env("CAIRN_PASSWORD_FILE", env.path("acme-pw"))
        .arg("snapshots")
        .assert()
        .code(12)
        .stderr(contains("wrong password"));
}

#[test]
fn passwords_can_be_added_listed_changed_and_removed() {
    let env = Env::new();
    env.init();
    std::fs::write(env.path("pw2"), "second\n").unwrap();
    env.ok(&[
        "key",
        "add",
        "--new-password-file",
        env.path("pw2").to_str().unwrap(),
    ]);
    let keys = env.json(&["key", "list"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.iter().filter(|k| k["current"] == true).count(), 1);
    // One naming across commands: `host` and `user`, as in snapshots and leases.
    assert!(
        keys[0]["host"].is_string() && keys[0]["user"].is_string(),
        "{keys:?}"
    );
    assert!(keys[0].get("hostname").is_none(), "{keys:?}");
    let with_pw2 = || {
        let mut c = env.cmd();
        c.env("CAIRN_PASSWORD_FILE", env.path("pw2"));
        c
    };
    with_pw2().arg("snapshots").assert().success();

    // passwd replaces the password used to open.
    std::fs::write(env.path("pw3"), "third\n").unwrap();
    with_pw2()
        .args([
            "key",
            "passwd",
            "--new-password-file",
            env.path("pw3").to_str().unwrap(),
        ])
        .assert()
        .success();
    with_pw2().arg("snapshots").assert().code(12);
    env.cmd()
        .env("CAIRN_PASSWORD_FILE", env.path("pw3"))
        .arg("snapshots")
        .assert()
        .success();

    // Remove the original password; the last one cannot be removed.
    let with_pw3 = || {
        let mut c = env.cmd();
        c.env("CAIRN_PASSWORD_FILE", env.path("pw3"));
        c
    };
    let out = with_pw3().args(["--json", "key", "list"]).output().unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let current = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let other = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    with_pw3()
        .args(["key", "remove", &other[..10]])
        .assert()
        .success();
    env.fails(&["key", "list"], 12);
    with_pw3()
        .args(["key", "remove", &current[..10]])
        .assert()
        .code(1)
        .stderr(contains("last usable key slot"));
    with_pw3().arg("snapshots").assert().success();
}

#[test]
fn password_command_and_key_files() {
    let env = Env::new();
    env.init();
    env.bare()
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_PASSWORD_COMMAND", "printf 'correct horse\\n'")
        .arg("snapshots")
        .assert()
        .success();
    env.bare()
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_PASSWORD_COMMAND", "exit 3")
        .arg("snapshots")
        .assert()
        .code(1)
        .stderr(contains("password command"));
    // No password source and no terminal: a clear error, not a hang.
    env.bare()
        .env("CAIRN_REPOSITORY", env.repo())
        .arg("snapshots")
        .assert()
        .code(1)
        .stderr(contains("no password given"));

    // A tenant created with a key file works with it alone.
    let kf = env.path("tenant.key");
    env.bare()
        .env("CAIRN_REPOSITORY", env.repo())
        .args([
            "--tenant",
            "robot",
            "--key-file",
            kf.to_str().unwrap(),
            "init",
        ])
        .assert()
        .success();
    assert_eq!(
        std::fs::metadata(&kf).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let src = env.source();
    env.bare()
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_KEY_FILE", &kf)
        .args(["backup", src.to_str().unwrap()])
        .assert()
        .success();
    // The key file names its tenant; another tenant is refused.
    env.bare()
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_KEY_FILE", &kf)
        .args(["--tenant", "default", "snapshots"])
        .assert()
        .code(12);
    // Loose permissions are refused with a clear message.
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.bare()
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_KEY_FILE", &kf)
        .arg("snapshots")
        .assert()
        .code(1)
        .stderr(contains("chmod 600"));
}

#[test]
fn not_a_repository_and_wrong_password() {
    let env = Env::new();
    env.cmd()
        .env("CAIRN_REPOSITORY", env.path("missing"))
        .arg("snapshots")
        .assert()
        .code(10)
        .stderr(contains("does not exist"));
    assert!(
        !env.path("missing").exists(),
        "opening must not create anything"
    );
    std::fs::create_dir(env.path("plain")).unwrap();
    std::fs::write(env.path("plain/file"), "x").unwrap();
    env.cmd()
        .env("CAIRN_REPOSITORY", env.path("plain"))
        .arg("snapshots")
        .assert()
        .code(10)
        .stderr(contains("not a Cairn repository"));
    env.init();
    std::fs::write(env.path("bad"), "wrong\n").unwrap();
    env.cmd()
        .env("CAIRN_PASSWORD_FILE", env.path("bad"))
        .arg("snapshots")
        .assert()
        .code(12)
        .stderr(contains("wrong password"));
}

/// A restic repository is named as one, and `init` does not write into it.
#[test]
fn a_restic_repository_is_recognised_and_left_alone() {
    let env = Env::new();
    let restic = env.path("restic-repo");
    let out = std::process::Command::new("restic")
        .args([
            "init",
            "-r",
            restic.to_str().unwrap(),
            "--insecure-no-password",
        ])
        .env("RESTIC_CACHE_DIR", env.path("tmp"))
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        _ => {
            // Older restic has no --insecure-no-password: lay out what restic writes.
            std::fs::create_dir_all(&restic).unwrap();
            std::fs::write(restic.join("config"), b"sealed").unwrap();
            for d in ["keys", "data", "snapshots", "index", "locks"] {
                std::fs::create_dir_all(restic.join(d)).unwrap();
            }
        }
    }
    let before = tree_of(&restic);
    let r = restic.to_str().unwrap();
    let err = env.fails(&["-r", r, "snapshots"], 10);
    assert!(err.contains("is a restic repository"), "{err}");
    let err = env.fails(&["-r", r, "init"], 10);
    assert!(err.contains("is a restic repository"), "{err}");
    assert_eq!(
        tree_of(&restic),
        before,
        "the restic repository was changed"
    );
}

/// Every path below `dir`, sorted.
fn tree_of(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// `--repository-file` names the repository by the first line of a file; `cairn version`
/// says which format it writes.
#[test]
fn repository_file_and_version() {
    let env = Env::new();
    env.init();
    let file = env.path("repo-location");
    std::fs::write(&file, format!("{}\n# comment\n", env.repo().display())).unwrap();
    let out = env
        .bare()
        .args(["--repository-file", file.to_str().unwrap(), "snapshots"])
        .env("CAIRN_PASSWORD_FILE", env.path("password"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 snapshots"));
    std::fs::write(&file, "\n").unwrap();
    let out = env
        .bare()
        .args(["--repository-file", file.to_str().unwrap(), "snapshots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is empty"));
    let v = env.json(&["version"]);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["format_version"], 1);
    assert!(env.ok(&["version"]).starts_with("cairn "));
}

/// `-p FILE` is the password file, as restic's, before or after the command, and wins over
/// CAIRN_PASSWORD_FILE; in `pg basebackup` `-p` stays the PostgreSQL port.
#[test]
fn dash_p_is_the_password_file_except_in_pg_commands() {
    let env = Env::new();
    env.init();
    let repo = env.repo();
    let out = env
        .bare()
        .args(["-r", repo.to_str().unwrap(), "-p"])
        .arg(env.path("password"))
        .args(["snapshots"])
        .env("CAIRN_PASSWORD_FILE", env.path("no-such-file"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // After the command too, as restic users write it.
    let out = env
        .bare()
        .args(["-r", repo.to_str().unwrap(), "snapshots", "-p"])
        .arg(env.path("password"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(env.path("wrong"), "wrong horse\n").unwrap();
    let out = env
        .bare()
        .args(["-r", repo.to_str().unwrap(), "-p"])
        .arg(env.path("wrong"))
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12));
    // In pg basebackup -p is the port.
    let out = env
        .bare()
        .args(["pg", "basebackup", "-p", "not-a-port"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-a-port"));
}

/// `cairn list` names the objects of each type; `list blobs` gives id, kind and pack.
#[test]
fn list_names_objects_by_type() {
    let env = Env::new();
    env.init();
    let src = env.source();
    env.ok(&["backup", src.to_str().unwrap()]);
    let snaps = env.ok(&["list", "snapshots"]);
    assert_eq!(snaps.lines().collect::<Vec<_>>(), env.snapshot_ids());
    let packs = env.ok(&["list", "packs"]);
    assert_eq!(packs.lines().count(), common::packs(&env.repo()).len());
    let blobs = env.ok(&["list", "blobs"]);
    assert!(blobs.lines().any(|l| l.starts_with("tree ")), "{blobs}");
    assert!(blobs.lines().any(|l| l.starts_with("data ")), "{blobs}");
    for line in blobs.lines() {
        let pack = line.split(' ').nth(2).unwrap();
        assert!(packs.contains(pack), "{line}");
    }
    let json = env
        .cmd()
        .args(["--json", "list", "index"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&json.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["size"].as_u64().unwrap() > 0);
    }
    env.fails(&["list", "nonsense"], 2);
}

/// A password given for the default repository, which starts with a key file only: the
/// message names the key file and how to add a password (exit 12).
#[test]
fn a_password_for_the_default_repository_points_to_its_key_file() {
    let env = Env::new();
    let src = env.source();
    env.bare()
        .args(["backup", src.to_str().unwrap()])
        .assert()
        .success();
    let out = env
        .bare()
        .args([
            "--password-file",
            env.path("password").to_str().unwrap(),
            "snapshots",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("default-repository.key") && err.contains("cairn key add"),
        "{err}"
    );
}
