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
