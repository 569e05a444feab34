//! `cairn wal list`, `cairn pg status` / `cairn wal verify` (exit codes, `--json`) and
//! `cairn forget --keep-within-pitr` followed by `prune` and `check`, on an archive of
//! synthetic 1 MiB segments pushed by the library and base backups saved directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/crafted.rs"]
mod crafted;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cairn_repo::format::snapshot::{PgInfo, Snapshot, SnapshotKind, Summary};
use cairn_repo::pg::wal::push;
use cairn_repo::pg::{Lsn, Segment};
use cairn_repo::Repository;
use common::Env;
use serde_json::Value;

const SEG: u32 = 1 << 20;
const SYSID: u64 = 7_300_000_000_000_000_003;

fn segment(dir: &Path, number: u64, mtime: u64) -> PathBuf {
    let seg = Segment::from_number(1, number, SEG).unwrap();
    let mut b = vec![0u8; SEG as usize];
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&2u16.to_le_bytes());
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    b[8..16].copy_from_slice(&seg.start(SEG).0.to_le_bytes());
    b[24..32].copy_from_slice(&SYSID.to_le_bytes());
    b[32..36].copy_from_slice(&SEG.to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    for (i, x) in b.iter_mut().enumerate().skip(40).step_by(89) {
        *x = (i as u64 ^ number).wrapping_mul(17) as u8;
    }
    let p = dir.join(seg.name(SEG));
    std::fs::write(&p, &b).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
    p
}

fn rfc(secs: u64) -> String {
    jiff::Timestamp::from_second(secs as i64)
        .unwrap()
        .to_string()
}

fn base_backup(repo: &Repository, (start, stop): (u64, u64), stop_time: u64) -> String {
    let tree = repo.snapshots().unwrap()[0].1.tree;
    let name = |n: u64| Segment::from_number(1, n, SEG).unwrap().name(SEG);
    let snap = Snapshot {
        version: 1,
        time: rfc(stop_time),
        host: "db".into(),
        user: "postgres".into(),
        tenant: "default".into(),
        kind: SnapshotKind::PgBasebackup,
        paths: vec!["/var/lib/postgresql/data".into()],
        tags: Vec::new(),
        parent: None,
        tree,
        summary: Summary::default(),
        program_version: "test".into(),
        incomplete: false,
        command: Vec::new(),
        pg: Some(PgInfo {
            system_identifier: SYSID.to_string(),
            timeline: 1,
            start_lsn: Some(Lsn(start * u64::from(SEG) + 0x28).to_string()),
            stop_lsn: Some(Lsn(stop * u64::from(SEG) + 0x100).to_string()),
            wal_first: Some(name(start)),
            wal_last: Some(name(stop)),
            start_time: Some(rfc(stop_time - 60)),
            stop_time: Some(rfc(stop_time)),
            dictionary: None,
            dictionary_basis: None,
        }),
        original: None,
    };
    repo.save_snapshot(&snap).unwrap().to_hex()
}

fn wal_snapshots(repo: &Repository) -> Vec<String> {
    repo.snapshots()
        .unwrap()
        .into_iter()
        .filter(|(_, s)| s.kind == SnapshotKind::Wal)
        .map(|(id, _)| id.to_hex())
        .collect()
}

/// Runs `cairn --json ARGS`, expects `code`, returns the parsed document.
fn json_with_code(env: &Env, args: &[&str], code: i32) -> Value {
    let out = env.cmd().arg("--json").args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn status_exit_codes_list_and_retention_by_recovery_window() {
    let env = Env::new();
    env.init();
    let repo = crafted::open(&env);
    let src = env.path("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    let now = jiff::Timestamp::now().as_second() as u64;
    let written = |n: u64| now - 10 * 86_400 + n * 3600;
    for n in [1u64, 2, 3, 5, 6] {
        push(&repo, &segment(&src, n, written(n))).unwrap();
    }
    let b0 = base_backup(&repo, (1, 1), now - 9 * 86_400 - 43_200);
    let b1 = base_backup(&repo, (2, 3), now - 9 * 86_400);

    // Segment 4 is missing and 5, 6 lie beyond it: the newest moments cannot be restored.
    let st = json_with_code(&env, &["pg", "status"], 1);
    assert_eq!(st["ok"], false);
    assert!(st["problems"][0]
        .as_str()
        .unwrap()
        .contains("000000010000000000000004"));
    env.fails(&["wal", "verify"], 1);
    let human = env.cmd().args(["pg", "status"]).output().unwrap();
    assert_eq!(human.status.code(), Some(1));
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("problems:") && human.contains("then a gap at 000000010000000000000004"),
        "{human}"
    );
    let list = env.json(&["wal", "list"]);
    let tl = &list["timelines"][0];
    assert_eq!(tl["timeline"], 1);
    assert_eq!(tl["ranges"].as_array().unwrap().len(), 2);
    assert_eq!(tl["gaps"][0]["first"], "000000010000000000000004");
    assert_eq!(tl["gaps"][0]["count"], 1);
    let text = env.ok(&["wal", "list", "--timeline", "1"]);
    assert!(text.contains("gaps: 000000010000000000000004"), "{text}");

    // The segment arrives: exit 0.
    push(&repo, &segment(&src, 4, written(4))).unwrap();
    for n in 7..=8 {
        push(&repo, &segment(&src, n, written(n))).unwrap();
    }
    let b2 = base_backup(&repo, (7, 8), now - 86_400);
    let st = json_with_code(&env, &["pg", "status"], 0);
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["base_backups"].as_array().unwrap().len(), 3);
    let w = &st["base_backups"][1]["windows"][0];
    assert_eq!(w["last_segment"], "000000010000000000000008");
    assert_eq!(w["to"], rfc(written(8)));
    env.ok(&["wal", "verify"]);
    assert!(env.ok(&["pg", "status"]).contains("ok"));

    // Plain rules never touch WAL: every wal snapshot survives a --keep-last that would
    // have judged them with the base backups' host.
    let wal_before = wal_snapshots(&repo);
    assert_eq!(wal_before.len(), 8);
    env.ok(&["forget", "--keep-last", "3"]);
    assert_eq!(wal_snapshots(&repo), wal_before);
    // Nor can a wal snapshot be forgotten by id.
    let err = env.fails(&["forget", &wal_before[0]], 1);
    assert!(err.contains("--keep-within-pitr"), "{err}");

    // A dry run changes nothing and says what would go.
    let dry = env.ok(&["forget", "--keep-within-pitr", "7d", "--dry-run"]);
    assert!(dry.contains("would drop"), "{dry}");
    assert_eq!(wal_snapshots(&repo), wal_before);

    // The 7-day window keeps b1 (newest before it) and b2, and WAL from b1's start.
    let out = env.json(&["forget", "--keep-within-pitr", "7d"]);
    let removed: Vec<&str> = out["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(removed, vec![b0.as_str()]);
    assert_eq!(
        out["wal"]["dropped_segments"]["1"][0][0],
        "000000010000000000000001"
    );
    assert_eq!(out["wal"]["dropped_segments"]["1"][0][2], 1);
    let ids = env.snapshot_ids();
    assert!(ids.contains(&b1) && ids.contains(&b2));
    env.ok(&["prune"]);
    env.ok(&["check", "--read-data"]);
    let st = json_with_code(&env, &["pg", "status"], 0);
    assert_eq!(
        st["timelines"][0]["ranges"][0]["first"],
        "000000010000000000000002"
    );
    assert_eq!(st["timelines"][0]["segments"], 7);
}

/// `cairn wal merge` merges every wal snapshot into one that serves the same segments.
#[test]
fn wal_merge_merges_every_wal_snapshot_into_one() {
    let env = Env::new();
    env.init();
    let repo = crafted::open(&env);
    let src = env.path("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    let now = jiff::Timestamp::now().as_second() as u64;
    for n in 1..=4u64 {
        push(&repo, &segment(&src, n, now - 3600 + n)).unwrap();
    }
    assert_eq!(wal_snapshots(&repo).len(), 4);
    let out = env.json(&["wal", "merge"]);
    assert_eq!(out["merged"], 4, "{out}");
    let after = wal_snapshots(&repo);
    assert_eq!(after, vec![out["snapshot"].as_str().unwrap().to_string()]);
    let list = env.json(&["wal", "list"]);
    assert_eq!(list["timelines"][0]["ranges"][0]["count"], 4, "{list}");
    assert!(env.ok(&["wal", "merge"]).contains("nothing to merge"));
    // Archived WAL is never `latest`.
    let err = env.fails(&["ls", "latest"], 1);
    assert!(err.contains("no snapshots"), "{err}");
}
