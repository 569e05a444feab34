#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! WAL retention and garbage collection beside a running archive: while one process pushes
//! segments (and merges `wal` snapshots past the bound), another trims WAL older than a base
//! backup and prunes, again and again. Every segment the base backup needs stays fetchable
//! with its bytes, and the repository checks clean.

mod common;

use std::path::{Path, PathBuf};

use cairn_repo::format::snapshot::{PgInfo, Snapshot, SnapshotKind, Summary};
use cairn_repo::pg::archive_map::{ArchiveMap, Scope};
use cairn_repo::pg::pitr_retention::{trim_wal, WalKeep};
use cairn_repo::pg::wal::{fetch, push, Catalog, Fetched};
use cairn_repo::pg::{Lsn, Segment};
use cairn_repo::progress::NoProgress;
use cairn_repo::Repository;

const SEG: u32 = 1 << 20;
const SYSID: u64 = 7_300_000_000_000_000_077;

/// A 1 MiB segment of timeline 1.
fn segment(dir: &Path, number: u64) -> PathBuf {
    common::wal_segment(dir, 1, number, SEG, SYSID, 0)
}

/// A complete base backup starting and stopping in segment `n`.
fn base_backup(repo: &Repository, n: u64) -> PgInfo {
    let tree = repo.snapshots().unwrap()[0].1.tree;
    let name = Segment::from_number(1, n, SEG).unwrap().name(SEG);
    let now = jiff::Timestamp::now().to_string();
    let pg = PgInfo {
        system_identifier: SYSID.to_string(),
        timeline: 1,
        start_lsn: Some(Lsn(n * u64::from(SEG) + 0x28).to_string()),
        stop_lsn: Some(Lsn(n * u64::from(SEG) + 0x100).to_string()),
        wal_first: Some(name.clone()),
        wal_last: Some(name),
        start_time: Some(now.clone()),
        stop_time: Some(now.clone()),
        ..PgInfo::default()
    };
    let snap = Snapshot {
        version: 1,
        time: now,
        host: "db".into(),
        user: "postgres".into(),
        tenant: "default".into(),
        kind: SnapshotKind::PgBasebackup,
        paths: vec!["/pgdata".into()],
        tags: Vec::new(),
        parent: None,
        tree,
        summary: Summary::default(),
        program_version: "test".into(),
        incomplete: false,
        command: Vec::new(),
        pg: Some(pg.clone()),
        original: None,
    };
    repo.save_snapshot(&snap).unwrap();
    pg
}

/// Before compacted index files kept listing the packs of records still waiting, this failed
/// in most runs: a round's prune swept its own record while an earlier one waited for a push
/// that ended meanwhile, and a segment pushed between the two marks could not be read.
#[test]
fn trimming_and_pruning_beside_pushes_keeps_every_needed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let src = dir.path().join("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    let repo = common::open(dir.path(), &key, "cache-gc");
    for n in 1..=10 {
        push(&repo, &segment(&src, n)).unwrap();
    }
    let base = base_backup(&repo, 8);
    // Past the merge bound, so pushes also consolidate while the trims run.
    let last = 90u64;
    std::thread::scope(|s| {
        let pusher = s.spawn(|| {
            let repo = common::open(dir.path(), &key, "cache-push");
            for n in 11..=last {
                push(&repo, &segment(&src, n)).unwrap();
            }
        });
        for round in 0..6 {
            // Each round is a process of its own, as `cairn forget --prune` is.
            let repo = common::open(dir.path(), &key, &format!("cache-gc-{round}"));
            let map = ArchiveMap::load(&repo, &Catalog::load(&repo).unwrap(), &Scope::All).unwrap();
            let keep = WalKeep::compute(&map, &[&base], &[], None).unwrap();
            trim_wal(&repo, &keep, false).unwrap();
            cairn_repo::prune::prune(&repo, &common::aggressive(), &NoProgress).unwrap();
        }
        pusher.join().unwrap();
    });
    // One more round with the archive quiet, then everything from the backup's start on
    // fetches byte for byte, and what was dropped is absent or (merged back by a
    // concurrent consolidation) still whole.
    let map = ArchiveMap::load(&repo, &Catalog::load(&repo).unwrap(), &Scope::All).unwrap();
    trim_wal(
        &repo,
        &WalKeep::compute(&map, &[&base], &[], None).unwrap(),
        false,
    )
    .unwrap();
    cairn_repo::prune::prune(&repo, &common::aggressive(), &NoProgress).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for n in 1..=last {
        let name = Segment::from_number(1, n, SEG).unwrap().name(SEG);
        match fetch(&repo, &name, &out.join(&name)) {
            Ok(Fetched::Written { .. }) => assert_eq!(
                std::fs::read(out.join(&name)).unwrap(),
                std::fs::read(src.join(&name)).unwrap(),
                "{name}"
            ),
            Ok(Fetched::Absent) => assert!(n < 8, "{name}, which the base backup needs, is gone"),
            Err(e) => panic!("{name}: {e}"),
        }
    }
    common::assert_clean(&repo);
}
