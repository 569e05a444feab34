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
use cairn_repo::pg::wal::{fetch, push, Fetched, Pushed};
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
