//! `cairn info`: an overview per profile of the configuration file, or of one repository.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};

use common::profiles::{backup, ids, json_lines, keyed_repo, profile, user_file, write};
use common::Env;
use serde_json::Value;

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
