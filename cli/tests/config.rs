//! The configuration file and its profiles (docs/user-guide.md, "Configuration file and
//! profiles"): where it is read from, precedence, validation, and what a profile gives each
//! command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::profiles::{
    backup, ids, json_lines, keyed_repo, profile, system_file, user_file, write,
};
use common::Env;
use predicates::prelude::PredicateBooleanExt as _;
use predicates::str::contains;
use serde_json::Value;

#[test]
fn a_profile_gives_the_repository_and_key() {
    let env = Env::new();
    let (repo, key) = keyed_repo(&env, "a");
    write(&user_file(&env), &profile("p", &repo, &key));
    let src = env.source();
    let id = backup(&env, &["--profile", "p", src.to_str().unwrap()]);
    // Without the profile nothing says where the repository is.
    env.bare().arg("snapshots").assert().code(10);
    assert_eq!(
        ids(&json_lines(&env, &["--profile", "p", "snapshots"])[0]),
        [id.as_str()]
    );
    env.bare()
        .env("CAIRN_PROFILE", "p")
        .args(["snapshots"])
        .assert()
        .success()
        .stdout(contains(&id[..8]));
    // default_profile stands in for --profile (and an empty CAIRN_PROFILE is none).
    write(
        &user_file(&env),
        &format!("default_profile = \"p\"\n{}", profile("p", &repo, &key)),
    );
    assert_eq!(ids(&json_lines(&env, &["snapshots"])[0]), [id.as_str()]);
    env.bare()
        .env("CAIRN_PROFILE", "")
        .args(["snapshots"])
        .assert()
        .success()
        .stdout(contains(&id[..8]));
}

#[test]
fn the_command_line_and_the_environment_win_over_the_profile() {
    let env = Env::new();
    let (a, key_a) = keyed_repo(&env, "a");
    let (b, key_b) = keyed_repo(&env, "b");
    write(&user_file(&env), &profile("p", &a, &key_a));
    let src = env.source();
    let in_a = backup(&env, &["--profile", "p", src.to_str().unwrap()]);
    let in_b = backup(
        &env,
        &[
            "-r",
            b.to_str().unwrap(),
            "--key-file",
            key_b.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    let flags = json_lines(
        &env,
        &[
            "--profile",
            "p",
            "-r",
            b.to_str().unwrap(),
            "--key-file",
            key_b.to_str().unwrap(),
            "snapshots",
        ],
    );
    assert_eq!(ids(&flags[0]), [in_b.as_str()]);
    let out = env
        .bare()
        .env("CAIRN_REPOSITORY", &b)
        .env("CAIRN_KEY_FILE", &key_b)
        .args(["--json", "--profile", "p", "snapshots"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids(&v), [in_b]);
    // The credentials are one group: a password given on the command line is not beaten
    // by the profile's key file.
    env.init();
    env.bare()
        .args(["--profile", "p", "-r", env.repo().to_str().unwrap()])
        .arg("--password-file")
        .arg(env.path("password"))
        .arg("snapshots")
        .assert()
        .success();
    // The profile still applies where nothing else is given.
    assert_eq!(
        ids(&json_lines(&env, &["--profile", "p", "snapshots"])[0]),
        [in_a]
    );
}

#[test]
fn unknown_keys_and_bad_toml_are_refused_naming_file_and_line() {
    let env = Env::new();
    let file = user_file(&env);
    let file_name = file.display().to_string();
    write(&file, "[profiles.p]\nrepo = \"/x\"\nrepository = \"/y\"\n");
    env.bare()
        .args(["--profile", "p", "snapshots"])
        .assert()
        .code(2)
        .stderr(
            contains("repository")
                .and(contains(file_name.as_str()))
                .and(contains("line 3")),
        );
    write(&file, "[profiles.p.retention]\nkeep_dayly = 3\n");
    env.bare()
        .args(["snapshots"])
        .assert()
        .code(2)
        .stderr(contains("keep_dayly").and(contains(file_name.as_str())));
    write(&file, "[profiles.p\nrepo = 1\n");
    env.bare()
        .args(["snapshots"])
        .assert()
        .code(2)
        .stderr(contains("line 1").and(contains(file_name.as_str())));
    // Commands that use no repository do not read it.
    env.bare().arg("version").assert().success();
}

#[test]
fn a_missing_profile_lists_the_profiles_and_files() {
    let env = Env::new();
    env.bare()
        .args(["--profile", "nope", "snapshots"])
        .assert()
        .code(2)
        .stderr(contains("no configuration file found"));
    let (repo, key) = keyed_repo(&env, "a");
    write(
        &user_file(&env),
        &format!(
            "{}{}",
            profile("web", &repo, &key),
            profile("db", &repo, &key)
        ),
    );
    env.bare()
        .args(["--profile", "nope", "snapshots"])
        .assert()
        .code(2)
        .stderr(
            contains("\"nope\"")
                .and(contains("db, web"))
                .and(contains(user_file(&env).display().to_string())),
        );
    write(
        &user_file(&env),
        &format!(
            "default_profile = \"gone\"\n{}",
            profile("web", &repo, &key)
        ),
    );
    env.bare()
        .args(["snapshots"])
        .assert()
        .code(2)
        .stderr(contains("default_profile \"gone\"").and(contains("web")));
}

#[test]
fn an_explicit_file_replaces_the_usual_ones() {
    let env = Env::new();
    let (a, key_a) = keyed_repo(&env, "a");
    let (b, key_b) = keyed_repo(&env, "b");
    let src = env.source();
    let in_b = backup(
        &env,
        &[
            "-r",
            b.to_str().unwrap(),
            "--key-file",
            key_b.to_str().unwrap(),
            src.to_str().unwrap(),
        ],
    );
    write(&user_file(&env), &profile("p", &a, &key_a));
    let explicit = env.path("elsewhere.toml");
    write(&explicit, &profile("p", &b, &key_b));
    let by_flag = json_lines(
        &env,
        &[
            "--config",
            explicit.to_str().unwrap(),
            "--profile",
            "p",
            "snapshots",
        ],
    );
    assert_eq!(ids(&by_flag[0]), [in_b.as_str()]);
    let out = env
        .bare()
        .env("CAIRN_CONFIG", &explicit)
        .args(["--json", "--profile", "p", "snapshots"])
        .output()
        .unwrap();
    assert_eq!(ids(&serde_json::from_slice(&out.stdout).unwrap()), [in_b]);
    // The user file is not read at all then.
    write(&explicit, &profile("other", &b, &key_b));
    env.bare()
        .args([
            "--config",
            explicit.to_str().unwrap(),
            "--profile",
            "p",
            "snapshots",
        ])
        .assert()
        .code(2);
    // A file given but missing is an error, not an empty configuration.
    env.bare()
        .env("CAIRN_CONFIG", env.path("missing.toml"))
        .args(["--profile", "p", "snapshots"])
        .assert()
        .code(2)
        .stderr(contains("missing.toml").and(contains("does not exist")));
}

#[test]
fn user_profiles_replace_system_profiles_whole() {
    let env = Env::new();
    let (repo, key) = keyed_repo(&env, "a");
    let src = env.source();
    write(
        &system_file(&env),
        &format!(
            "default_profile = \"sys\"\n{}[profiles.p.backup]\nexclude = [\"*.log\"]\n{}",
            profile("p", &repo, &key),
            profile("sys", &repo, &key)
        ),
    );
    // The system file alone: its exclude applies.
    let first = backup(&env, &["--profile", "p", src.to_str().unwrap()]);
    let listing = env
        .bare()
        .args(["--profile", "p", "ls", &first])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert!(
        listing.contains("a.txt") && !listing.contains("b.log"),
        "{listing}"
    );
    // The user's profile of the same name replaces it as a whole: no exclude any more.
    write(&user_file(&env), &profile("p", &repo, &key));
    let second = backup(&env, &["--profile", "p", src.to_str().unwrap()]);
    let listing = env
        .bare()
        .args(["--profile", "p", "ls", &second])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).contains("b.log"));
    // The system file's other profile and default_profile still count.
    assert_eq!(ids(&json_lines(&env, &["snapshots"])[0]).len(), 2);
}

#[test]
fn profile_excludes_apply_to_backup() {
    let env = Env::new();
    let (repo, key) = keyed_repo(&env, "a");
    let src = env.source();
    write(
        &user_file(&env),
        &format!(
            "{}[profiles.p.backup]\nexclude = [\"*.log\"]\nexclude_larger_than = \"100K\"\n",
            profile("p", &repo, &key)
        ),
    );
    // The command line's excludes are added to the profile's.
    let id = backup(
        &env,
        &["--profile", "p", "--exclude", "link", src.to_str().unwrap()],
    );
    let out = env
        .bare()
        .args(["--profile", "p", "ls", &id])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("a.txt"), "{listing}");
    for left_out in ["b.log", "c.txt", "link"] {
        assert!(!listing.contains(left_out), "{left_out} in {listing}");
    }
}

#[test]
fn profile_retention_applies_to_forget() {
    let env = Env::new();
    let (repo, key) = keyed_repo(&env, "a");
    let src = env.source();
    write(&user_file(&env), &profile("bare", &repo, &key));
    let mut made = Vec::new();
    for day in 1..=4 {
        let time = format!("2026-11-0{day} 12:00:00");
        made.push(backup(
            &env,
            &["--profile", "bare", "--time", &time, src.to_str().unwrap()],
        ));
    }
    // A profile without retention: forget has nothing to go by.
    env.bare()
        .args(["--profile", "bare", "forget"])
        .assert()
        .code(1)
        .stderr(contains("nothing to forget"));
    write(
        &user_file(&env),
        &format!(
            "{}[profiles.p.retention]\nkeep_last = 2\n",
            profile("p", &repo, &key)
        ),
    );
    // Rules on the command line replace the profile's.
    env.bare()
        .args(["--profile", "p", "forget", "--keep-last", "3"])
        .assert()
        .success();
    assert_eq!(
        ids(&json_lines(&env, &["--profile", "p", "snapshots"])[0]),
        made[1..]
    );
    env.bare()
        .args(["--profile", "p", "forget"])
        .assert()
        .success();
    assert_eq!(
        ids(&json_lines(&env, &["--profile", "p", "snapshots"])[0]),
        made[2..]
    );
}

#[test]
fn a_file_with_secrets_must_be_private() {
    let env = Env::new();
    let (repo, key) = keyed_repo(&env, "a");
    let file = user_file(&env);
    write(
        &file,
        &format!("{}rest_password = \"hunter2\"\n", profile("p", &repo, &key)),
    );
    env.bare()
        .args(["--profile", "p", "snapshots"])
        .assert()
        .success();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.bare()
        .args(["--profile", "p", "snapshots"])
        .assert()
        .code(2)
        .stderr(contains("rest_password").and(contains("chmod 600")));
    // Without secrets a readable file is fine.
    write(&file, &profile("p", &repo, &key));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    env.bare()
        .args(["--profile", "p", "snapshots"])
        .assert()
        .success();
}

#[test]
fn wal_commands_answer_postgresql_even_when_the_configuration_is_wrong() {
    let env = Env::new();
    let wal = env.path("000000010000000000000001");
    std::fs::write(&wal, b"x").unwrap();
    // wal fetch: "cannot tell" (PostgreSQL takes 2 for "no such file").
    env.bare()
        .args([
            "--profile",
            "nope",
            "wal",
            "fetch",
            "000000010000000000000001",
        ])
        .arg(env.path("out"))
        .assert()
        .code(128);
    // wal push: 1 on every failure.
    env.bare()
        .args(["--profile", "nope", "wal", "push"])
        .arg(&wal)
        .assert()
        .code(1);
}

#[test]
fn pg_settings_reach_pg_basebackup() {
    let env = Env::new();
    let (repo, key) = keyed_repo(&env, "a");
    let bin = env.path("pgbin");
    std::fs::create_dir_all(&bin).unwrap();
    let record = env.path("args");
    let fake = bin.join("pg_basebackup");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\necho \"$@\" > '{}'\nexit 1\n", record.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(
        &user_file(&env),
        &format!(
            "{}[profiles.p.pg]\nhost = \"db.example\"\nport = 5433\nuser = \"backup\"\nbin = {:?}\n",
            profile("p", &repo, &key),
            bin.display().to_string()
        ),
    );
    env.bare()
        .args(["--profile", "p", "pg", "basebackup", "-p", "6543"])
        .assert()
        .failure();
    let args = std::fs::read_to_string(&record).unwrap();
    assert!(args.contains("-h db.example"), "{args}");
    assert!(args.contains("-U backup"), "{args}");
    assert!(args.contains("-p 6543") && !args.contains("5433"), "{args}");
}
