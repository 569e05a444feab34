#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Writers and garbage collection at once, and writers after storage lost data: a committed
//! snapshot always restores, at once, and check agrees with restore; a writer whose data was
//! removed under it commits nothing.

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use cairn_repo::archiver::{backup_stream, BackupOptions};
use cairn_repo::backend::FileType;
use cairn_repo::check::{check, Subset};
use cairn_repo::lease;
use cairn_repo::progress::NoProgress;
use cairn_repo::prune::prune;
use cairn_repo::snapshot_edit::forget;
use cairn_repo::testing::Rng;
use cairn_repo::{ErrorKind, Id, Repository};

/// Starts a stream backup of `first` + `rest` named "new" in its own repository handle,
/// paused after `first` until the returned sender says go. Returns once the writer has
/// uploaded packs (`first` must span more than two 4 MiB read batches for that).
fn paused_writer(
    dir: &std::path::Path,
    key: &cairn_repo::crypto::MasterKey,
    first: Vec<u8>,
    rest: Vec<u8>,
) -> (
    mpsc::Sender<bool>,
    std::thread::JoinHandle<cairn_repo::Result<Id>>,
) {
    let packs_before = count_packs(dir);
    let (tx, rx) = mpsc::channel();
    let (d, k) = (dir.to_path_buf(), key.clone());
    let writer = std::thread::spawn(move || {
        let repo = open(&d, &k, "cache-writer");
        let mut gate = Gate {
            first,
            rest,
            pos: 0,
            gate: Some(rx),
            passed: false,
        };
        backup_stream(
            &repo,
            &mut gate,
            "new",
            &BackupOptions::default(),
            &NoProgress,
        )
        .map(|b| b.id)
    });
    let start = Instant::now();
    while count_packs(dir) < packs_before + 3 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the writer uploaded nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (tx, writer)
}

/// A backup that commits while a prune's record waits for it: its packs were condemned as
/// "in no index" at the mark, and the old data it deduplicated against as unused. Readers
/// must find all of it at once (with a new cache and with a warm one), and check must say
/// what restore does.
#[test]
fn a_snapshot_committed_while_a_prune_waits_restores_at_once_and_check_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    let old = Rng::new(1).bytes(3_000_000);
    let s1 = backup_stream(
        &repo,
        &mut &old[..],
        "old",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
    .id;
    let first = [&old[..1_500_000], &Rng::new(2).bytes(9_000_000)[..]].concat();
    let rest = Rng::new(3).bytes(1_000_000);
    let expected = [&first[..], &rest[..]].concat();
    let (go, writer) = paused_writer(dir.path(), &key, first, rest);

    forget(&repo, &[s1]).unwrap();
    let r = prune(&repo, &aggressive(), &NoProgress).unwrap();
    assert!(r.pending_record.is_some(), "the sweep must wait: {r:?}");
    go.send(true).unwrap();
    let id = writer.join().unwrap().unwrap();

    let fresh = open(dir.path(), &key, "cache-fresh");
    assert_eq!(stream_content(&fresh, &id, b"/new"), expected);
    assert_eq!(stream_content(&repo, &id, b"/new"), expected);
    let report = check(&fresh, Some(Subset::All), &NoProgress).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // The next prune, with the writer gone, sweeps and keeps what the snapshot needs.
    let r = prune(&repo, &aggressive(), &NoProgress).unwrap();
    assert!(r.pending_record.is_none() && r.swept.records >= 1, "{r:?}");
    assert_clean(&repo);
    assert_eq!(stream_content(&repo, &id, b"/new"), expected);
}

/// A prune that wrongly judged a running backup ended (its lease objects are removed here,
/// as a mistaken liveness rule would have done) sweeps the backup's packs. The backup must
/// notice at commit and fail, saving no snapshot, rather than commit one that does not
/// restore.
#[test]
fn a_backup_whose_data_was_swept_while_it_ran_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    let old = Rng::new(4).bytes(2_000_000);
    let s1 = backup_stream(
        &repo,
        &mut &old[..],
        "old",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
    .id;
    let (go, writer) = paused_writer(
        dir.path(),
        &key,
        Rng::new(5).bytes(9_000_000),
        Rng::new(6).bytes(500_000),
    );
    for (name, _) in lease::list(&repo).unwrap() {
        repo.store_for_tests()
            .remove(FileType::Lock, &name)
            .unwrap();
    }
    forget(&repo, &[s1]).unwrap();
    let r = prune(&repo, &aggressive(), &NoProgress).unwrap();
    assert!(r.pending_record.is_none(), "the sweep ran at once: {r:?}");
    assert!(r.swept.packs_deleted > 0, "{r:?}");
    go.send(true).unwrap();
    let result = writer.join().unwrap();
    let e = result.expect_err("a backup whose packs were deleted must not commit");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("nothing was committed"), "{e}");
    assert!(repo.snapshots().unwrap().is_empty());
}

/// A pack lost from storage: the next backup of the same data must not deduplicate
/// against it. Its snapshot restores, and so does the old one again (the blobs exist once
/// more), with a warm cache and with a new one.
#[test]
fn a_backup_after_a_pack_was_lost_stores_its_blobs_again() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    let data = Rng::new(7).bytes(2_000_000);
    let s1 = backup_stream(
        &repo,
        &mut &data[..],
        "a",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
    .id;
    // The largest pack is a data pack (the only tree pack holds one small tree).
    let packs = files_below(&dir.path().join("repo/default/data"));
    let lost = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    std::fs::remove_file(lost).unwrap();
    let s2 = backup_stream(
        &repo,
        &mut &data[..],
        "a",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(
        s2.snapshot.summary.blobs_added > 0,
        "the lost blobs are stored again"
    );
    assert_eq!(stream_content(&repo, &s2.id, b"/a"), data);
    let fresh = open(dir.path(), &key, "cache-fresh");
    assert_eq!(stream_content(&fresh, &s2.id, b"/a"), data);
    assert_eq!(stream_content(&fresh, &s1, b"/a"), data);
}

/// A snapshot that a concurrent `forget` removes between the listing and the read is left
/// out, everywhere snapshots are listed: the listing itself and a backup's commit.
#[test]
fn a_snapshot_removed_while_it_is_listed_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    for seed in 0..3 {
        let data = Rng::new(seed).bytes(10_000);
        backup_stream(
            &repo,
            &mut &data[..],
            "a",
            &BackupOptions::default(),
            &NoProgress,
        )
        .unwrap();
    }
    let armed = Arc::new(AtomicBool::new(true));
    let repo_dir = dir.path().join("repo/default/snapshots");
    let trigger = armed.clone();
    let racing = open_wrapped(dir.path(), &key, "cache-racing", move |inner| {
        Arc::new(Hooked {
            inner,
            read_only: false,
            before_mutation: Box::new(|| {}),
            after_list: Box::new(move |ft, listed| {
                if ft == FileType::Snapshot && trigger.swap(false, Ordering::SeqCst) {
                    let _ = std::fs::remove_file(repo_dir.join(&listed[0].name));
                }
            }),
        })
    });
    assert_eq!(racing.snapshots().unwrap().len(), 2);
    armed.store(true, Ordering::SeqCst);
    let data = Rng::new(9).bytes(10_000);
    backup_stream(
        &racing,
        &mut &data[..],
        "a",
        &BackupOptions::default(),
        &NoProgress,
    )
    .expect("a snapshot forgotten during the commit's listing must not fail the backup");
    let r: &Repository = &racing;
    assert_eq!(r.snapshots().unwrap().len(), 2);
}

/// A writer that must not rely on the index (a WAL push, which never syncs it) stores a blob
/// again even when the cache lists it, so what it commits never rests on the cache's belief;
/// an ordinary writer deduplicates against the same entry.
#[test]
fn an_unindexed_writer_stores_what_the_index_already_lists() {
    use cairn_repo::writer::BlobWriter;
    use cairn_repo::BlobKind;
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache");
    let plain = b"a blob that both writers are given".to_vec();
    let mut first = BlobWriter::new(&repo, 1);
    first.add_plain(BlobKind::Data, &plain).unwrap();
    assert_eq!(first.finish().unwrap().blobs_added, 1);
    repo.sync_index().unwrap();
    let mut indexed = BlobWriter::new(&repo, 1);
    indexed.add_plain(BlobKind::Data, &plain).unwrap();
    assert_eq!(indexed.finish().unwrap().blobs_added, 0);
    let mut unindexed = BlobWriter::unindexed(&repo, 1);
    unindexed.add_plain(BlobKind::Data, &plain).unwrap();
    unindexed.add_plain(BlobKind::Data, &plain).unwrap();
    assert_eq!(unindexed.finish().unwrap().blobs_added, 1);
}

/// Releases a lease when a prune repacks its first pack: a writer that ends while a prune
/// runs, after the prune found an earlier record blocked by it.
struct EndsDuringRepack(std::sync::Mutex<Option<lease::LeaseGuard>>);

impl cairn_repo::progress::Progress for EndsDuringRepack {
    fn pack(&self, _pack: &Id, event: cairn_repo::progress::PackEvent) {
        if let cairn_repo::progress::PackEvent::Repacked { .. } = event {
            if let Some(guard) = self.0.lock().unwrap().take() {
                guard.release().unwrap();
            }
        }
    }
}

/// A prune whose own record is swept while an earlier record still waits (the lease that held
/// the earlier one back ended during this prune) replaces every index file, also the only
/// ones listing the packs the earlier record condemned. A snapshot committed in between uses
/// those packs: it must restore at once and after the next prune, and check must agree.
#[test]
fn sweeping_one_record_keeps_the_packs_of_a_waiting_record_readable() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    let old = Rng::new(1).bytes(3_000_000);
    let s1 = backup_stream(
        &repo,
        &mut &old[..],
        "old",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
    .id;
    // Another writer, live through the first prune and ending during the second.
    let other = lease::LeaseGuard::acquire(&repo, "backup").unwrap();
    let first = [&old[..1_500_000], &Rng::new(2).bytes(9_000_000)[..]].concat();
    let rest = Rng::new(3).bytes(1_000_000);
    let expected = [&first[..], &rest[..]].concat();
    let (go, writer) = paused_writer(dir.path(), &key, first, rest);
    forget(&repo, &[s1]).unwrap();
    let r = prune(&repo, &aggressive(), &NoProgress).unwrap();
    let waiting = r
        .pending_record
        .expect("the first record waits for the writers");
    go.send(true).unwrap();
    let id = writer.join().unwrap().unwrap();

    // Work for the second prune: packs that mix blobs a kept snapshot uses with blobs only
    // a forgotten one used, so it repacks.
    let mut mixed = Vec::new();
    let mut kept = Vec::new();
    for i in 0..20u64 {
        let piece = Rng::new(100 + i).bytes(100_000);
        if i % 2 == 0 {
            kept.extend_from_slice(&piece);
        }
        mixed.extend_from_slice(&piece);
    }
    let gone = backup_stream(
        &repo,
        &mut &mixed[..],
        "mixed",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
    .id;
    backup_stream(
        &repo,
        &mut &kept[..],
        "kept",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    forget(&repo, &[gone]).unwrap();
    let progress = EndsDuringRepack(std::sync::Mutex::new(Some(other)));
    let r = prune(&repo, &aggressive(), &progress).unwrap();
    assert!(
        progress.0.lock().unwrap().is_none(),
        "the second prune repacked nothing"
    );
    assert!(
        r.swept.records >= 1,
        "the second prune swept its own record: {r:?}"
    );

    let fresh = open(dir.path(), &key, "cache-fresh");
    assert_eq!(stream_content(&fresh, &id, b"/new"), expected);
    assert_clean(&fresh);
    let r = prune(&repo, &aggressive(), &NoProgress).unwrap();
    assert!(r.pending_record.is_none(), "{r:?}");
    let listed = repo.index_file_ids().unwrap();
    assert!(!listed.contains(&waiting), "the first record was swept");
    let fresh = open(dir.path(), &key, "cache-fresh-2");
    assert_eq!(stream_content(&fresh, &id, b"/new"), expected);
    assert_clean(&fresh);
}
