#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Garbage collection alongside running backups: prune never blocks a writer and never
//! loses what a writer needs; space comes back once the writers seen at the mark have ended.

mod common;
use common::*;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn_repo::archiver::{backup_stream, BackupOptions};
use cairn_repo::progress::NoProgress;
use cairn_repo::prune::{prune, PruneOptions};
use cairn_repo::snapshot_edit::forget;
use cairn_repo::testing::Rng;
use cairn_repo::{Credentials, Id, Location, OpenOptions, Repository};

/// Runs a backup that stops mid-stream; while it waits, forgets old data and prunes.
fn prune_while_a_backup_waits(succeed: bool) {
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
    let keep = Rng::new(2).bytes(1_000_000);
    let s2 = backup_stream(
        &repo,
        &mut &keep[..],
        "keep",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
    .id;
    forget(&repo, &[s1]).unwrap();

    // The waiting backup re-uses some of the forgotten data (it must survive) and adds new.
    let mut first = old[..1_500_000].to_vec();
    first.extend(Rng::new(3).bytes(9_000_000));
    let rest = Rng::new(4).bytes(2_000_000);
    let expected: Vec<u8> = first.iter().chain(rest.iter()).copied().collect();
    let (tx, rx) = mpsc::channel();
    let packs_before = count_packs(dir.path());
    let dirp = dir.path().to_path_buf();
    let key2 = key.clone();
    let writer = std::thread::spawn(move || {
        let repo = open(&dirp, &key2, "cache-writer");
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
    });
    // Wait until the writer has uploaded packs (bounded).
    let start = Instant::now();
    while count_packs(dir.path()) < packs_before + 10 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the writer uploaded nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = prune(
        &repo,
        &PruneOptions {
            max_unused: 0.0,
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert!(
        r.pending_record.is_some(),
        "the sweep must wait for the running backup"
    );
    assert_eq!(r.waiting_for.len(), 1);
    assert_eq!(r.waiting_for[0].kind, "backup");
    assert_eq!(
        r.swept.packs_deleted, 0,
        "nothing may be deleted while the writer runs"
    );
    assert_clean(&repo);

    tx.send(succeed).unwrap();
    let result = writer.join().unwrap();
    let r2 = prune(
        &repo,
        &PruneOptions {
            max_unused: 0.0,
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert!(r2.pending_record.is_none());
    assert!(
        r2.swept.records >= 1 && r2.swept.packs_deleted > 0,
        "{r2:?}"
    );
    assert_clean(&repo);
    assert_eq!(stream_content(&repo, &s2, b"/keep"), keep);
    match result {
        Ok(b) => {
            assert!(succeed);
            assert!(
                r2.swept.packs_rescued > 0,
                "the writer's packs must be rescued: {r2:?}"
            );
            assert_eq!(stream_content(&repo, &b.id, b"/new"), expected);
        }
        Err(e) => {
            assert!(!succeed, "{e}");
            // A new backup of the same data must not trust the failed writer's leftovers.
            let again = backup_stream(
                &repo,
                &mut &expected[..],
                "new",
                &BackupOptions::default(),
                &NoProgress,
            )
            .unwrap();
            assert_clean(&repo);
            assert_eq!(stream_content(&repo, &again.id, b"/new"), expected);
        }
    }
    // The forgotten data's space came back: only "keep" and "new" remain.
    let stored = repo.pack_stats().unwrap().bytes;
    // Either way "new" is stored once: by the writer, or by the backup run after it failed.
    let live = keep.len() + expected.len();
    assert!(
        stored < (live as u64) * 11 / 10 + 200_000,
        "stored {stored} for {live} live bytes"
    );
}

#[test]
fn prune_waits_for_a_running_backup_and_keeps_its_data() {
    prune_while_a_backup_waits(true);
}

#[test]
fn prune_cleans_up_after_a_backup_that_failed_while_it_ran() {
    prune_while_a_backup_waits(false);
}

#[test]
fn backups_of_changing_data_alongside_a_prune_loop() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let (dirp, key) = (dir.path().to_path_buf(), key.clone());
        writers.push(std::thread::spawn(move || {
            let repo = open(&dirp, &key, &format!("cache-w{w}"));
            let src = dirp.join(format!("src{w}"));
            let mut expected = Vec::new();
            for round in 0..6u64 {
                std::fs::create_dir_all(&src).unwrap();
                // Some files stay, one changes, one is replaced each round.
                std::fs::write(src.join("stable"), Rng::new(w * 1000).bytes(400_000)).unwrap();
                std::fs::write(
                    src.join("changing"),
                    Rng::new(w * 1000 + round).bytes(300_000),
                )
                .unwrap();
                let _ = std::fs::remove_file(src.join(format!("gone{}", round.wrapping_sub(1))));
                std::fs::write(
                    src.join(format!("gone{round}")),
                    Rng::new(w * 7 + round * 13).bytes(200_000),
                )
                .unwrap();
                let copy = dirp.join(format!("expected-{w}-{round}"));
                cairn_repo::testing::copy_tree(&src, &copy).unwrap();
                let r = common::backup(&repo, &src);
                expected.push((r.id, copy));
            }
            expected
        }));
    }
    let pruner = {
        let (dirp, key, stop) = (dir.path().to_path_buf(), key.clone(), stop.clone());
        std::thread::spawn(move || {
            let repo = open(&dirp, &key, "cache-pruner");
            let mut runs = 0;
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && start.elapsed() < Duration::from_secs(120)
            {
                // Keep the newest two snapshots of each source.
                let snaps = repo.snapshots().unwrap();
                let mut by_path: std::collections::HashMap<String, Vec<Id>> = Default::default();
                for (id, s) in snaps {
                    by_path.entry(s.paths[0].clone()).or_default().push(id);
                }
                let old: Vec<Id> = by_path
                    .values()
                    .flat_map(|ids| ids.iter().rev().skip(2).copied())
                    .collect();
                forget(&repo, &old).unwrap();
                prune(
                    &repo,
                    &PruneOptions {
                        max_unused: 0.0,
                        ..Default::default()
                    },
                    &NoProgress,
                )
                .unwrap();
                runs += 1;
            }
            runs
        })
    };
    let mut expected = Vec::new();
    for w in writers {
        expected.extend(w.join().unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = pruner.join().unwrap();
    assert!(runs >= 2, "prune ran only {runs} times");
    let repo = open(dir.path(), &key, "cache-main");
    let r = prune(&repo, &PruneOptions::default(), &NoProgress).unwrap();
    assert!(r.pending_record.is_none());
    assert_clean(&repo);
    let present: std::collections::HashSet<Id> = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let mut restored = 0;
    for (id, copy) in expected {
        if !present.contains(&id) {
            continue; // forgotten by the prune loop
        }
        let out = dir.path().join(format!("out-{}", id.short()));
        cairn_repo::restorer::restore(&repo, &id, &out, &Default::default(), &NoProgress).unwrap();
        let snap = repo.read_snapshot(&id).unwrap();
        let restored_src = out.join(snap.paths[0].trim_start_matches('/'));
        for name in std::fs::read_dir(&copy).unwrap() {
            let name = name.unwrap().file_name();
            assert_eq!(
                std::fs::read(copy.join(&name)).unwrap(),
                std::fs::read(restored_src.join(&name)).unwrap(),
                "snapshot {id}: {name:?}"
            );
        }
        restored += 1;
    }
    assert!(restored >= 4);
}

/// A backup whose lease lapsed (it could not refresh it) deduplicates against data that a
/// prune then condemns. Before committing it must notice: if the condemned pack still exists
/// (the sweep waits for another writer) it copies what it needs and commits; if the sweep
/// already deleted it, it fails and commits nothing.
fn lapsed_lease(sweep_already_ran: bool) {
    use cairn_repo::backend::{new_runtime, Backend, BackendOptions, OpendalRoot, Root, Store};
    use cairn_repo::lease::{self, LeaseGuard};
    use cairn_repo::testing::NoLeaseRefresh;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    let old = Rng::new(21).bytes(2_000_000);
    let s1 = backup_stream(
        &repo,
        &mut &old[..],
        "old",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
    .id;

    let (tx, rx) = mpsc::channel();
    let rest = Rng::new(22).bytes(300_000);
    let expected: Vec<u8> = old.iter().chain(rest.iter()).copied().collect();
    let (dirp, key2, first, rest2) = (
        dir.path().to_path_buf(),
        key.clone(),
        old.clone(),
        rest.clone(),
    );
    let writer = std::thread::spawn(move || {
        let rt = new_runtime().unwrap();
        let inner: Arc<dyn Backend> = rt
            .block_on(async { OpendalRoot::local(&dirp.join("repo"), &BackendOptions::none()) })
            .unwrap()
            .tenant("default")
            .unwrap();
        let store = Store::new(Arc::new(NoLeaseRefresh::new(inner)), rt);
        let opts = OpenOptions {
            cache_dir: Some(dirp.join("cache-writer")),
            lease_ttl: Some(Duration::from_secs(1)),
        };
        let repo = Repository::open_store(
            store,
            "sleepy".into(),
            "default",
            &Credentials::Key(key2),
            &opts,
        )
        .unwrap();
        let mut gate = Gate {
            first,
            rest: rest2,
            pos: 0,
            gate: Some(rx),
            passed: false,
        };
        let r = backup_stream(
            &repo,
            &mut gate,
            "new",
            &BackupOptions::default(),
            &NoProgress,
        );
        r.map(|b| b.id)
    });
    // Wait for the writer's lease to appear and then to lapse (bounded).
    let start = Instant::now();
    while lease::list(&repo).unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    while !lease::live(&repo).unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the lease never lapsed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let other = if sweep_already_ran {
        None
    } else {
        Some(LeaseGuard::acquire(&repo, "backup").unwrap())
    };
    forget(&repo, &[s1]).unwrap();
    let r = prune(
        &repo,
        &PruneOptions {
            max_unused: 0.0,
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert_eq!(r.pending_record.is_none(), sweep_already_ran, "{r:?}");
    tx.send(true).unwrap();
    let result = writer.join().unwrap();
    drop(other);
    if sweep_already_ran {
        // The writer either deduplicated against the old data before the sweep deleted it
        // (then it must fail and commit nothing), or found those packs gone when it looked
        // and stored the data again (then its snapshot must restore).
        match result {
            Err(e) => {
                assert_eq!(e.kind(), cairn_repo::ErrorKind::Conflict, "{e}");
                assert!(e.to_string().contains("nothing was committed"), "{e}");
                assert!(
                    repo.snapshots().unwrap().is_empty(),
                    "nothing may be committed"
                );
            }
            Ok(id) => assert_eq!(stream_content(&repo, &id, b"/new"), expected),
        }
        assert_clean(&repo);
    } else {
        let id = result.unwrap();
        let r = prune(&repo, &PruneOptions::default(), &NoProgress).unwrap();
        assert!(r.pending_record.is_none() && r.swept.records >= 1, "{r:?}");
        assert_clean(&repo);
        assert_eq!(stream_content(&repo, &id, b"/new"), expected);
    }
}

#[test]
fn a_backup_whose_lease_lapsed_copies_condemned_data_it_needs() {
    lapsed_lease(false);
}

#[test]
fn a_backup_whose_lease_lapsed_fails_when_its_data_was_swept() {
    lapsed_lease(true);
}

#[test]
fn a_held_lease_is_refreshed_past_its_time_to_live_and_removed_when_released() {
    use cairn_repo::lease::{self, LeaseGuard};
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = Repository::open(
        &Location::Local(dir.path().join("repo")),
        "default",
        &Credentials::Key(key),
        &OpenOptions {
            cache_dir: Some(dir.path().join("cache")),
            lease_ttl: Some(Duration::from_secs(2)),
        },
    )
    .unwrap();
    let guard = LeaseGuard::acquire(&repo, "backup").unwrap();
    let first = guard.name();
    // Two and a half times the time to live: only refreshing keeps it live.
    std::thread::sleep(Duration::from_millis(5000));
    assert!(guard.held());
    // A refresh writes the new lease before it removes the old one, so a look that falls
    // between the two sees both; look again (a bounded number of times) until it does not.
    let mut seen = Vec::new();
    for _ in 0..50 {
        let listed = lease::list(&repo).unwrap();
        let live = lease::live(&repo).unwrap();
        if listed.len() == 1 && live.len() == 1 {
            assert_eq!(live[0].1.holder, guard.holder());
            assert_ne!(live[0].0, first, "a refresh writes a new lease object");
            seen.clear();
            break;
        }
        seen.push((listed.len(), live.len()));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        seen.is_empty(),
        "exactly one lease object, the refreshed one, and old ones removed: saw (listed, live) {seen:?}"
    );
    guard.release().unwrap();
    assert!(lease::list(&repo).unwrap().is_empty());
}
