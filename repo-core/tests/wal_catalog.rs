#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The WAL archive's catalog as a push and a fetch see it: segments found by name however
//! many were archived, the same bytes accepted again without an upload, other bytes refused,
//! and the number of `wal` snapshots bounded by merging (docs/design.md, section 16).
//! Segments here are made by the test (1 MiB, with a valid long page header); real
//! PostgreSQL is exercised by the CLI's tests.

mod common;

use std::path::{Path, PathBuf};

use cairn_repo::format::snapshot::SnapshotKind;
use cairn_repo::pg::consolidate::CONSOLIDATE_AT;
use cairn_repo::pg::wal::{fetch, push, push_with_ahead, Fetched, Pushed};
use cairn_repo::pg::Segment;
use cairn_repo::{ErrorKind, Repository};

const SEG: u32 = 1 << 20;
const SYSID: u64 = 7_300_000_000_000_000_001;

/// A 1 MiB segment `number` on timeline 1 whose bytes depend on `salt`.
fn segment(dir: &Path, number: u64, salt: u8) -> PathBuf {
    let seg = Segment::from_number(1, number, SEG).unwrap();
    let name = seg.name(SEG);
    let mut b = vec![0u8; SEG as usize];
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&2u16.to_le_bytes());
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    b[8..16].copy_from_slice(&seg.start(SEG).0.to_le_bytes());
    b[24..32].copy_from_slice(&SYSID.to_le_bytes());
    b[32..36].copy_from_slice(&SEG.to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    for (i, x) in b.iter_mut().enumerate().skip(40).step_by(97) {
        *x = (i as u64 ^ number).wrapping_mul(31) as u8 ^ salt;
    }
    let p = dir.join(&name);
    std::fs::write(&p, &b).unwrap();
    p
}

fn wal_snapshots(repo: &Repository) -> usize {
    repo.snapshots()
        .unwrap()
        .iter()
        .filter(|(_, s)| s.kind == SnapshotKind::Wal)
        .count()
}

#[test]
fn a_long_archive_stays_a_bounded_number_of_snapshots_and_every_segment_fetches() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    let src = dir.path().join("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    let total = CONSOLIDATE_AT as u64 + 6;
    for n in 1..=total {
        let p = segment(&src, n, 0);
        assert!(matches!(push(&repo, &p).unwrap(), Pushed::Stored { .. }));
        assert!(wal_snapshots(&repo) <= CONSOLIDATE_AT, "after segment {n}");
    }
    // Every segment comes back byte for byte, from the merged snapshot or a later one.
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for n in 1..=total {
        let name = Segment::from_number(1, n, SEG).unwrap().name(SEG);
        let dest = out.join("RECOVERYXLOG");
        assert_eq!(
            fetch(&repo, &name, &dest).unwrap(),
            Fetched::Written { bytes: SEG as u64 }
        );
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            std::fs::read(src.join(&name)).unwrap(),
            "{name}"
        );
    }
    let next = Segment::from_number(1, total + 1, SEG).unwrap().name(SEG);
    assert_eq!(
        fetch(&repo, &next, &out.join("x")).unwrap(),
        Fetched::Absent
    );
    assert!(!out.join("x").exists());
    // A merged segment pushed again: the same bytes are accepted without an upload, other
    // bytes are refused.
    assert!(matches!(
        push(
            &repo,
            &src.join(Segment::from_number(1, 3, SEG).unwrap().name(SEG))
        )
        .unwrap(),
        Pushed::AlreadyArchived { .. }
    ));
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let changed = segment(&other, 3, 1);
    assert_eq!(
        push(&repo, &changed).unwrap_err().kind(),
        ErrorKind::Conflict
    );
    common::assert_clean(&repo);
}

#[test]
fn a_segment_of_another_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    let src = dir.path().join("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    push(&repo, &segment(&src, 1, 0)).unwrap();
    let p = segment(&src, 2, 0);
    let mut b = std::fs::read(&p).unwrap();
    b[24..32].copy_from_slice(&(SYSID + 1).to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let e = push(&repo, &p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("tenant of its own"), "{e}");
}

#[test]
fn segments_pushed_ahead_share_a_snapshot_and_survive_merging() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    let src = dir.path().join("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    // 4096 segments of 1 MiB make a log: these cross from log 0 to log 1.
    let first = 4094u64;
    let main = segment(&src, first, 0);
    let already = segment(&src, first + 1, 0);
    push(&repo, &already).unwrap();
    let mut ahead = vec![already];
    for n in first + 2..first + 5 {
        ahead.push(segment(&src, n, 0));
    }
    // A damaged file and a missing one are left out without failing the push.
    let damaged = src.join(Segment::from_number(1, first + 5, SEG).unwrap().name(SEG));
    std::fs::write(&damaged, b"not a segment").unwrap();
    ahead.push(damaged);
    ahead.push(src.join(Segment::from_number(1, first + 6, SEG).unwrap().name(SEG)));

    let report = push_with_ahead(&repo, &main, &ahead).unwrap();
    let Pushed::Stored { snapshot, .. } = report.pushed else {
        panic!("{report:?}")
    };
    let names: Vec<String> = report.ahead.iter().map(|a| a.name.clone()).collect();
    let expected: Vec<String> = (first + 2..first + 5)
        .map(|n| Segment::from_number(1, n, SEG).unwrap().name(SEG))
        .collect();
    assert_eq!(names, expected, "pushed ahead");
    assert!(report.ahead.iter().all(|a| a.snapshot == snapshot));
    for a in &report.ahead {
        let bytes = std::fs::read(src.join(&a.name)).unwrap();
        assert_eq!(a.digest, *blake3::hash(&bytes).as_bytes());
        assert_eq!(a.size, bytes.len() as u64);
    }
    assert_eq!(
        wal_snapshots(&repo),
        2,
        "one snapshot for the push and its extras"
    );

    // Enough further pushes to merge, then every segment still fetches.
    for n in 0..CONSOLIDATE_AT as u64 {
        push(&repo, &segment(&src, 100 + n, 0)).unwrap();
    }
    assert!(wal_snapshots(&repo) <= CONSOLIDATE_AT);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for n in (first..first + 5).chain(100..100 + CONSOLIDATE_AT as u64) {
        let name = Segment::from_number(1, n, SEG).unwrap().name(SEG);
        let dest = out.join("RECOVERYXLOG");
        assert_eq!(
            fetch(&repo, &name, &dest).unwrap(),
            Fetched::Written { bytes: SEG as u64 },
            "{name}"
        );
        assert!(std::fs::read(&dest).unwrap() == std::fs::read(src.join(&name)).unwrap());
    }
    let gone = Segment::from_number(1, first + 5, SEG).unwrap().name(SEG);
    assert_eq!(
        fetch(&repo, &gone, &out.join("x")).unwrap(),
        Fetched::Absent
    );
}
