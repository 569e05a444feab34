#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The one progress interface: backup, restore, check and prune each report through it, and
//! what they report agrees with what their results say they did.

mod common;
use common::*;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use cairn_repo::archiver::{backup_stream, BackupOptions};
use cairn_repo::check::{check, Subset};
use cairn_repo::progress::{PackEvent, Progress};
use cairn_repo::prune::prune;
use cairn_repo::restorer::{restore, RestoreOptions};
use cairn_repo::snapshot_edit::forget;
use cairn_repo::testing::Rng;
use cairn_repo::Id;

/// Records every event it hears.
#[derive(Default)]
struct Recorder {
    files: AtomicU64,
    bytes: AtomicU64,
    packs: Mutex<Vec<(Id, PackEvent)>>,
}

impl Progress for Recorder {
    fn file(&self, _path: &Path) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }
    fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    fn pack(&self, pack: &Id, event: PackEvent) {
        self.packs.lock().unwrap().push((*pack, event));
    }
}

impl Recorder {
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[test]
fn every_operation_reports_through_one_progress_and_agrees_with_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");

    let old = Rng::new(1).bytes(2_000_000);
    let seen = Recorder::default();
    let s1 = backup_stream(
        &repo,
        &mut &old[..],
        "old",
        &BackupOptions::default(),
        &seen,
    )
    .unwrap();
    assert_eq!(seen.bytes(), old.len() as u64);
    assert_eq!(seen.bytes(), s1.snapshot.summary.bytes_read);

    // Half of it again, and new data: the forgotten half's packs go, the boundary may be
    // repacked.
    let mut keep = old[..1_000_000].to_vec();
    keep.extend(Rng::new(2).bytes(500_000));
    let s2 = backup_stream(
        &repo,
        &mut &keep[..],
        "keep",
        &BackupOptions::default(),
        &Recorder::default(),
    )
    .unwrap();

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let seen = Recorder::default();
    let restored = restore(&repo, &s2.id, &out, &RestoreOptions::default(), &seen).unwrap();
    assert_eq!(seen.files.load(Ordering::Relaxed), 1);
    assert_eq!(seen.bytes(), keep.len() as u64);
    assert_eq!(seen.bytes(), restored.bytes_written);

    let seen = Recorder::default();
    let report = check(&repo, Some(Subset::All), &seen).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(seen.bytes(), report.bytes_read);

    forget(&repo, &[s1.id]).unwrap();
    let seen = Recorder::default();
    let r = prune(&repo, &aggressive(), &seen).unwrap();
    assert!(r.pending_record.is_none(), "{r:?}");
    let packs = seen.packs.lock().unwrap();
    let deleted: Vec<u64> = packs
        .iter()
        .filter_map(|(_, e)| match e {
            PackEvent::Deleted { bytes } => Some(*bytes),
            PackEvent::Repacked { .. } => None,
        })
        .collect();
    let repacked: Vec<Id> = packs
        .iter()
        .filter(|(_, e)| matches!(e, PackEvent::Repacked { .. }))
        .map(|(p, _)| *p)
        .collect();
    assert!(r.swept.packs_deleted > 0, "{r:?}");
    assert_eq!(deleted.len() as u64, r.swept.packs_deleted);
    assert_eq!(deleted.iter().sum::<u64>(), r.swept.bytes_freed);
    assert_eq!(repacked, r.plan.repack_packs);
    assert_eq!(seen.bytes(), r.plan.repack_bytes);
    assert_clean(&repo);
}

/// Keeps the totals of a backup's walk ahead.
#[derive(Default)]
struct Totals {
    wants: bool,
    reports: AtomicU64,
    last: Mutex<Option<(u64, u64, bool)>>,
    files_done: AtomicU64,
}

impl Progress for Totals {
    fn wants_totals(&self) -> bool {
        self.wants
    }
    fn total(&self, files: u64, bytes: u64, done: bool) {
        self.reports.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap();
        assert!(!last.is_some_and(|(_, _, d)| d), "a report after the last");
        *last = Some((files, bytes, done));
    }
    fn file_done(&self, _path: &Path, _status: cairn_repo::progress::FileStatus) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        // The backup waits (a while at most) for the walk ahead to end, so that the test
        // does not depend on which thread is faster.
        for _ in 0..1000 {
            if !self.wants || self.last.lock().unwrap().is_some_and(|(_, _, d)| d) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

#[test]
fn a_backups_walk_ahead_counts_what_the_backup_saves_with_its_excludes() {
    use cairn_repo::archiver::backup_paths;
    use cairn_repo::walk::Excludes;
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    let src = dir.path().join("src");
    cairn_repo::testing::random_tree(&src.join("random"), 7, 300).unwrap();
    // Deeper than the folders whose descriptors are held: the walk ahead reopens them too.
    cairn_repo::testing::nested_folders(&src, "deep", 100, b"at the bottom\n").unwrap();
    std::fs::create_dir_all(src.join("marked")).unwrap();
    std::fs::write(src.join("marked/.nobackup"), b"").unwrap();
    std::fs::write(src.join("marked/left-out"), b"12345").unwrap();
    std::fs::write(src.join("big.iso"), vec![1u8; 5000]).unwrap();
    std::fs::write(src.join("skip.tmp"), b"tmp").unwrap();
    std::fs::write(src.join("large"), vec![2u8; 300_000]).unwrap();
    let mut excludes = Excludes::new(&["*.tmp".to_string()], &[".nobackup".to_string()]).unwrap();
    excludes.larger_than = Some(200_000);
    let opts = BackupOptions {
        excludes,
        ..Default::default()
    };
    let seen = Totals {
        wants: true,
        ..Default::default()
    };
    let r = backup_paths(&repo, std::slice::from_ref(&src), &opts, &seen).unwrap();
    let s = &r.snapshot.summary;
    assert_eq!(r.warnings, Vec::<String>::new());
    assert!(seen.reports.load(Ordering::Relaxed) >= 1);
    let (files, bytes, done) = seen.last.lock().unwrap().unwrap();
    assert!(done);
    assert_eq!((files, bytes), (s.files, s.total_bytes));
    assert_eq!(files, seen.files_done.load(Ordering::Relaxed));

    // Nothing shows totals: no walk ahead.
    let quiet = Totals::default();
    backup_paths(&repo, std::slice::from_ref(&src), &opts, &quiet).unwrap();
    assert_eq!(quiet.reports.load(Ordering::Relaxed), 0);
}
