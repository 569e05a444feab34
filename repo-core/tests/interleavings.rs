#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A backup and a prune interleaved at every step, checked against a model.
//!
//! Each actor runs on a backend that can stop it just before its k-th write or delete (the
//! protocol's steps are its mutations: the writer uploads packs, writes index files, commits
//! a snapshot and removes its lease; the prune takes its lease, repacks, writes the
//! compacted index and its condemned record, sweeps). For every pair (i, j) the backup is
//! stopped before its i-th mutation, the prune runs until just before its j-th, the backup
//! then finishes, a reader with a new cache restores and checks everything, the prune
//! finishes, and a last prune sweeps what is ready. The model: the backup always commits;
//! every committed snapshot restores byte for byte at every point; check finds no problem
//! whenever restore works; in the end only the kept snapshots' data remains.

mod common;
use common::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use cairn_repo::archiver::{backup_stream, BackupOptions};
use cairn_repo::check::{check, Subset};
use cairn_repo::crypto::MasterKey;
use cairn_repo::progress::NoProgress;
use cairn_repo::prune::prune;
use cairn_repo::snapshot_edit::forget;
use cairn_repo::testing::{copy_tree, Rng};
use cairn_repo::{Id, Repository};

/// An actor's handle: its repository, how to wait for its pause, and how to release it.
struct Actor {
    reached: mpsc::Receiver<()>,
    resume: mpsc::Sender<()>,
    mutations: Arc<AtomicU64>,
}

/// The repository through a backend that stops its caller just before the `pause_at`-th
/// write or delete until released (`pause_at` 0: never).
fn stepped(
    dir: &std::path::Path,
    key: &MasterKey,
    cache: &str,
    pause_at: u64,
) -> (Repository, Actor) {
    let (reached_tx, reached) = mpsc::sync_channel(1);
    let (resume, resume_rx) = mpsc::channel::<()>();
    let mutations = Arc::new(AtomicU64::new(0));
    let counter = mutations.clone();
    let resume_rx = Mutex::new(resume_rx);
    let repo = open_wrapped(dir, key, cache, move |inner| {
        Arc::new(Hooked {
            inner,
            read_only: false,
            after_list: Box::new(|_, _| {}),
            before_mutation: Box::new(move || {
                if counter.fetch_add(1, Ordering::SeqCst) + 1 == pause_at {
                    let _ = reached_tx.send(());
                    if let Ok(r) = resume_rx.lock() {
                        let _ = r.recv_timeout(Duration::from_secs(120));
                    }
                }
            }),
        })
    });
    let actor = Actor {
        reached,
        resume,
        mutations,
    };
    (repo, actor)
}

/// Waits until the actor stops at its pause point or its thread ends.
fn wait_paused<T>(actor: &Actor, thread: &std::thread::JoinHandle<T>) -> bool {
    for _ in 0..6000 {
        if actor.reached.try_recv().is_ok() {
            return true;
        }
        if thread.is_finished() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the actor neither paused nor finished");
}

struct Template {
    dir: tempfile::TempDir,
    key: MasterKey,
    kept: (Id, Vec<u8>),
    new: Vec<u8>,
}

/// A repository with a kept snapshot and the data of a forgotten one, which the backup
/// under test shares half of (so the prune condemns packs the backup deduplicates against).
fn template() -> Template {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache");
    let kept = Rng::new(1).bytes(100_000);
    let old = Rng::new(2).bytes(300_000);
    let s0 = backup_stream(
        &repo,
        &mut &kept[..],
        "kept",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
    .id;
    let s1 = backup_stream(
        &repo,
        &mut &old[..],
        "old",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
    .id;
    forget(&repo, &[s1]).unwrap();
    let new = [&old[..150_000], &Rng::new(3).bytes(300_000)[..]].concat();
    drop(repo);
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    Template {
        dir,
        key,
        kept: (s0, kept),
        new,
    }
}

/// Everything committed restores, and check (with a new cache) agrees; `read_data` also
/// reads and authenticates every pack.
fn assert_model(
    dir: &std::path::Path,
    t: &Template,
    committed: &[(Id, &[u8], &[u8])],
    read_data: bool,
    what: &str,
) {
    let cache = dir.join("cache-reader");
    let _ = std::fs::remove_dir_all(&cache);
    let reader = open(dir, &t.key, "cache-reader");
    for (id, name, data) in committed {
        assert_eq!(
            &stream_content(&reader, id, name)[..],
            *data,
            "{what}: snapshot {id}"
        );
    }
    let subset = read_data.then_some(Subset::All);
    let r = check(&reader, subset, &NoProgress).unwrap();
    assert!(r.problems.is_empty(), "{what}: {:?}", r.problems);
    drop(reader);
    let _ = std::fs::remove_dir_all(&cache);
}

/// Runs one schedule; returns the mutations the backup and the prune made, and whether the
/// prune reached its pause point (if not, larger pause points give the same schedule).
fn schedule(t: &Template, i: u64, j: u64) -> (u64, u64, bool) {
    let run = tempfile::tempdir().unwrap();
    copy_tree(&t.dir.path().join("repo"), &run.path().join("repo")).unwrap();
    let what = format!("backup paused before mutation {i}, prune before {j}");
    let dir = run.path().to_path_buf();

    let (wrepo, writer) = stepped(&dir, &t.key, "cache-writer", i);
    let new = t.new.clone();
    let wthread = std::thread::spawn(move || {
        backup_stream(
            &wrepo,
            &mut &new[..],
            "new",
            &BackupOptions::default(),
            &NoProgress,
        )
        .map(|b| b.id)
    });
    let writer_paused = wait_paused(&writer, &wthread);

    let (prepo, pruner) = stepped(&dir, &t.key, "cache-prune", j);
    let pthread = std::thread::spawn(move || prune(&prepo, &aggressive(), &NoProgress));
    let prune_paused = wait_paused(&pruner, &pthread);

    if writer_paused {
        writer.resume.send(()).unwrap();
    }
    let id = wthread
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: the backup failed: {e}"));
    let kept = (t.kept.0, &b"/kept"[..], &t.kept.1[..]);
    let committed = [kept, (id, &b"/new"[..], &t.new[..])];
    assert_model(
        &dir,
        t,
        &committed,
        false,
        &format!("{what}, backup committed"),
    );

    if prune_paused {
        pruner.resume.send(()).unwrap();
    }
    pthread
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: the prune failed: {e}"));
    assert_model(&dir, t, &committed, false, &format!("{what}, prune done"));

    // With both done, a last prune sweeps everything that waited.
    let last = open(&dir, &t.key, "cache-last");
    let r = prune(&last, &aggressive(), &NoProgress).unwrap();
    assert!(r.pending_record.is_none(), "{what}: {r:?}");
    assert_model(
        &dir,
        t,
        &committed,
        true,
        &format!("{what}, after the last prune"),
    );
    let snaps: Vec<Id> = last
        .snapshots()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(snaps.len(), 2, "{what}: {snaps:?}");
    (
        writer.mutations.load(Ordering::SeqCst),
        pruner.mutations.load(Ordering::SeqCst),
        prune_paused,
    )
}

#[test]
fn a_backup_and_a_prune_interleaved_at_every_step_lose_nothing() {
    let t = template();
    // How many mutations each makes when running alone, the prune after the backup (it then
    // sweeps at once) and the backup after a prune.
    let (writer_steps, _, _) = schedule(&t, 0, 0);
    let (_, prune_steps, _) = schedule(&t, 1, u64::MAX);
    assert!(
        writer_steps >= 4 && prune_steps >= 4,
        "{writer_steps} {prune_steps}"
    );
    let mut runs = 0;
    for i in 1..=writer_steps {
        for j in 1..=prune_steps {
            runs += 1;
            if !schedule(&t, i, j).2 {
                break;
            }
        }
    }
    eprintln!("{runs} schedules: backup {writer_steps} mutations, prune up to {prune_steps}");
}
