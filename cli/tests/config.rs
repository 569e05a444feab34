//! The configuration file and its profiles (docs/user-guide.md, "Configuration file and
//! profiles"), and `cairn info`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::Env;
use predicates::prelude::PredicateBooleanExt as _;
use predicates::str::contains;
use serde_json::Value;

/// A repository at `env.path(name)` opened by a key file of its own; returns both paths.
fn keyed_repo(env: &Env, name: &str) -> (PathBuf, PathBuf) {
    let repo = env.path(name);
    let key = env.path(&format!("{name}.key"));
    env.bare()
        .args(["-r", repo.to_str().unwrap(), "--key-file"])
        .arg(&key)
        .arg("init")
        .assert()
        .success();
    (repo, key)
}

fn user_file(env: &Env) -> PathBuf {
    env.path("home/.config/cairn/config.toml")
}

fn system_file(env: &Env) -> PathBuf {
    env.path("etc/cairn/config.toml")
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn profile(name: &str, repo: &Path, key: &Path) -> String {
    format!(
        "[profiles.{name}]\nrepo = {:?}\nkey_file = {:?}\n",
        repo.display().to_string(),
        key.display().to_string()
    )
}

/// `cairn ARGS --json` run bare (only the configuration says where the repository is).
fn json_lines(env: &Env, args: &[&str]) -> Vec<Value> {
    let out = env.bare().arg("--json").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn backup(env: &Env, args: &[&str]) -> String {
    let out = env
        .bare()
        .arg("--json")
        .arg("backup")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshot_id"].as_str().unwrap().to_string()
}

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
    // default_profile stands in for --profile.
    write(
        &user_file(&env),
        &format!("default_profile = \"p\"\n{}", profile("p", &repo, &key)),
    );
    assert_eq!(ids(&json_lines(&env, &["snapshots"])[0]), [id]);
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

#[test]
fn info_reports_every_profile_and_goes_on_past_failures() {
    let env = Env::new();
    let (repo, key) = keyed_repo(&env, "a");
    let (_, other_key) = keyed_repo(&env, "b");
    let src = env.source();
    write(
        &user_file(&env),
        &format!(
            "{}{}[profiles.nowhere]\nrepo = {:?}\nkey_file = {:?}\n{}",
            profile("good", &repo, &key),
            profile("badkey", &repo, &other_key),
            env.path("no-such-repo").display().to_string(),
            key.display().to_string(),
            "[profiles.down]\nrepo = \"rest:http://127.0.0.1:1/\"\npassword_command = \"echo x\"\n",
        ),
    );
    backup(
        &env,
        &[
            "--profile",
            "good",
            "--time",
            "2026-11-01 10:00:00",
            src.to_str().unwrap(),
        ],
    );
    let files = backup(
        &env,
        &[
            "--profile",
            "good",
            "--time",
            "2026-11-02 10:00:00",
            src.to_str().unwrap(),
        ],
    );
    let out = env
        .bare()
        .args([
            "--profile",
            "good",
            "--json",
            "backup",
            "--stdin",
            "--stdin-filename",
            "dump.sql",
        ])
        .write_stdin("select 1;\n")
        .output()
        .unwrap();
    assert!(out.status.success());
    // Oldest first: the stream, saved now, is the newest.
    let all = ids(&json_lines(&env, &["--profile", "good", "snapshots"])[0]);
    assert_eq!(all.len(), 3);
    assert_eq!(all[1], files);
    let stream = all[2].clone();

    let out = env.bare().args(["info", "--json"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_name = |n: &str| {
        reports
            .iter()
            .find(|r| r["profile"] == n)
            .unwrap_or_else(|| panic!("no report for {n}: {reports:?}"))
    };
    assert_eq!(reports.len(), 4, "{reports:?}");
    let good = by_name("good");
    assert_eq!(good["status"], "ok", "{good}");
    assert_eq!(good["snapshots"], 3);
    assert_eq!(good["newest"]["files"]["id"], files.as_str());
    assert_eq!(good["newest"]["stream"]["id"], stream.as_str());
    assert!(good["newest"]["files"]["time"]
        .as_str()
        .unwrap()
        .starts_with("2026-11-02T10:00:00"));
    assert!(
        good["newest"]["files"]["host"].is_string() && good["newest"]["files"]["user"].is_string()
    );
    assert!(good["newest"].get("pg-basebackup").is_none());
    assert!(good["stored_bytes"].as_u64().unwrap() > 0);
    assert_eq!(good["leases"], 0);
    assert_eq!(by_name("badkey")["status"], "wrong credentials");
    assert_eq!(by_name("nowhere")["status"], "no repository");
    assert_eq!(
        by_name("down")["status"],
        "unreachable",
        "{}",
        by_name("down")
    );

    // For people: a block per profile, local times to the second.
    let out = env.bare().arg("info").output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "profile good",
        "profile down",
        "unreachable",
        "wrong credentials",
        &files[..8],
        &stream[..8],
        "2026-11-02 10:00:00",
    ] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
    // One profile: only that one, and 0 when it is fine.
    let one = json_lines(&env, &["--profile", "good", "info"]);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["newest"]["files"]["id"], files.as_str());
}

/// A synthetic 1 MiB WAL segment of timeline 1 that `wal push` accepts.
fn wal_segment(dir: &Path, number: u64) -> PathBuf {
    use cairn_repo::pg::Segment;
    const SEG: u32 = 1 << 20;
    let seg = Segment::from_number(1, number, SEG).unwrap();
    let mut b = vec![0u8; SEG as usize];
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&2u16.to_le_bytes());
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    b[8..16].copy_from_slice(&seg.start(SEG).0.to_le_bytes());
    b[24..32].copy_from_slice(&7_300_000_000_000_000_011u64.to_le_bytes());
    b[32..36].copy_from_slice(&SEG.to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    for (i, x) in b.iter_mut().enumerate().skip(40).step_by(97) {
        *x = (i as u64 ^ number) as u8;
    }
    let p = dir.join(seg.name(SEG));
    std::fs::write(&p, &b).unwrap();
    p
}

#[test]
fn info_shows_the_newest_wal_segment_and_missing_ones() {
    let env = Env::new();
    let (repo, key) = keyed_repo(&env, "a");
    write(
        &user_file(&env),
        &format!(
            "{}[profiles.db.pg]\nwal_spool = {:?}\n",
            profile("db", &repo, &key),
            env.path("spool").display().to_string()
        ),
    );
    let pg_wal = env.path("pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    for n in [1, 2, 3, 5] {
        env.bare()
            .args(["--profile", "db", "wal", "push"])
            .arg(wal_segment(&pg_wal, n))
            .assert()
            .success();
    }
    // The profile's spool is the one used.
    assert!(env.path("spool").exists());
    let r = &json_lines(&env, &["info"])[0];
    assert_eq!(r["profile"], "db");
    assert_eq!(
        r["wal"]["newest_segment"], "000000010000000000000005",
        "{r}"
    );
    assert_eq!(r["wal"]["missing_segments"], 1, "{r}");
    assert!(r["newest"]["wal"]["id"].is_string(), "{r}");
    let out = env.bare().arg("info").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("newest segment 000000010000000000000005")
            && text.contains("1 segments missing"),
        "{text}"
    );
}
