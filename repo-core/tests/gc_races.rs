#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Garbage collection beside writers in the situations the design names but the other suites
//! do not reach: a writer whose lease lapsed while it worked. A snapshot a writer commits
//! must restore, or the writer must fail and commit nothing.

mod common;
use common::*;

use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_repo::backend::{
    new_runtime, Backend, BackendOptions, FileType, OpendalRoot, Root, Store,
};
use cairn_repo::lease;
use cairn_repo::pg::wal::{fetch, push, Fetched};
use cairn_repo::pg::Segment;
use cairn_repo::progress::NoProgress;
use cairn_repo::prune::prune;
use cairn_repo::testing::NoLeaseRefresh;
use cairn_repo::{Credentials, OpenOptions, Repository};

const SEG: u32 = 1 << 20;
const SYSID: u64 = 7_300_000_000_000_000_078;

/// A backend that, before its first snapshot write (or with `after_index`, after its first
/// index file write), tells `reached` and waits for a go, and notes the names of the leases
/// it writes.
#[derive(Debug)]
struct PauseBeforeSnapshot {
    inner: Arc<dyn Backend>,
    after_index: bool,
    /// While set, lease writes fail (the machine sleeps; refreshes do not get through).
    asleep: Arc<std::sync::atomic::AtomicBool>,
    reached: Mutex<Option<mpsc::Sender<()>>>,
    go: Mutex<Option<mpsc::Receiver<()>>>,
    leases: Arc<Mutex<Vec<String>>>,
}

impl PauseBeforeSnapshot {
    fn pause(&self) {
        if let Some(tx) = self.reached.lock().unwrap().take() {
            tx.send(()).unwrap();
            let rx = self.go.lock().unwrap().take().unwrap();
            rx.recv_timeout(Duration::from_secs(60)).unwrap();
        }
    }
}

#[async_trait::async_trait]
impl Backend for PauseBeforeSnapshot {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn create(&self, ft: FileType, name: &str, data: bytes::Bytes) -> cairn_repo::Result<()> {
        if ft == FileType::Lock {
            if self.asleep.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(cairn_repo::Error::new(
                    cairn_repo::ErrorKind::Io,
                    "simulated: the machine is asleep",
                ));
            }
            self.leases.lock().unwrap().push(name.to_string());
        }
        if ft == FileType::Snapshot && !self.after_index {
            self.pause();
        }
        self.inner.create(ft, name, data).await?;
        if ft == FileType::Index && self.after_index {
            self.pause();
        }
        Ok(())
    }
    async fn read(&self, ft: FileType, name: &str) -> cairn_repo::Result<bytes::Bytes> {
        self.inner.read(ft, name).await
    }
    async fn read_range(
        &self,
        ft: FileType,
        name: &str,
        offset: u64,
        len: u64,
    ) -> cairn_repo::Result<bytes::Bytes> {
        self.inner.read_range(ft, name, offset, len).await
    }
    async fn stat(&self, ft: FileType, name: &str) -> cairn_repo::Result<u64> {
        self.inner.stat(ft, name).await
    }
    async fn list(&self, ft: FileType) -> cairn_repo::Result<Vec<cairn_repo::backend::ObjectInfo>> {
        self.inner.list(ft).await
    }
    async fn remove(&self, ft: FileType, name: &str) -> cairn_repo::Result<()> {
        self.inner.remove(ft, name).await
    }
}

/// A writer's repository handle, its first snapshot write paused until `go`.
struct PausedHandle {
    repo: Repository,
    reached: mpsc::Receiver<()>,
    go: mpsc::Sender<()>,
    /// The names of the lease objects it wrote.
    leases: Arc<Mutex<Vec<String>>>,
    /// While set, its lease writes fail.
    asleep: Arc<std::sync::atomic::AtomicBool>,
}

/// How the writer of [`paused_handle`] keeps its lease.
#[derive(Clone, Copy, PartialEq)]
enum Lease {
    /// Never refreshed (it lapses after a second); the writer pauses after its first index
    /// file is stored.
    NeverRefreshed,
    /// Refreshed every third of a second; the writer pauses before its first snapshot.
    Refreshed,
    /// Refreshed except while [`PausedHandle::asleep`] is set; the writer pauses after its
    /// first index file is stored.
    RefreshedWhenAwake,
}

/// Opens the test repository as another process with a one-second lease, kept as `lease`
/// says, whose writes pause at the point `lease` names until a go.
fn paused_handle(
    dir: &std::path::Path,
    key: &cairn_repo::crypto::MasterKey,
    lease: Lease,
) -> PausedHandle {
    let asleep = lease == Lease::NeverRefreshed;
    let rt = new_runtime().unwrap();
    let inner: Arc<dyn Backend> = rt
        .block_on(async { OpendalRoot::local(&dir.join("repo"), &BackendOptions::none()) })
        .unwrap()
        .tenant("default")
        .unwrap();
    let (reached_tx, reached_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let inner: Arc<dyn Backend> = if asleep {
        Arc::new(NoLeaseRefresh::new(inner))
    } else {
        inner
    };
    let leases = Arc::new(Mutex::new(Vec::new()));
    let sleeping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let backend = PauseBeforeSnapshot {
        inner,
        after_index: lease != Lease::Refreshed,
        asleep: sleeping.clone(),
        reached: Mutex::new(Some(reached_tx)),
        go: Mutex::new(Some(go_rx)),
        leases: leases.clone(),
    };
    let repo = Repository::open_store(
        Store::new(Arc::new(backend), rt),
        "sleepy".into(),
        "default",
        &Credentials::Key(key.clone()),
        &OpenOptions {
            cache_dir: Some(dir.join("cache-writer")),
            lease_ttl: Some(Duration::from_secs(1)),
        },
    )
    .unwrap();
    PausedHandle {
        repo,
        reached: reached_rx,
        go: go_tx,
        leases,
        asleep: sleeping,
    }
}

/// Waits (bounded) until no lease is live.
fn until_no_live_lease(repo: &Repository) {
    let start = Instant::now();
    while !lease::live(repo).unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the lease never lapsed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A WAL push whose lease lapsed (the machine slept) after it stored and indexed its segment
/// and before it wrote its snapshot. A prune meanwhile finds the push's packs used by no snapshot and,
/// with no live lease to wait for, deletes them at once. The push must then fail and commit
/// nothing (PostgreSQL pushes the segment again), never commit a snapshot whose segment
/// cannot be fetched.
#[test]
fn a_wal_push_whose_lease_lapsed_never_commits_a_segment_a_prune_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let src = dir.path().join("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    let seg = wal_segment(&src, 1, 5, SEG, SYSID, 0);
    let name = Segment::from_number(1, 5, SEG).unwrap().name(SEG);
    let PausedHandle {
        repo: sleepy,
        reached,
        go,
        ..
    } = paused_handle(dir.path(), &key, Lease::NeverRefreshed);
    let pusher = std::thread::spawn(move || push(&sleepy, &seg));
    reached
        .recv_timeout(Duration::from_secs(60))
        .expect("the push indexed its segment");

    let repo = open(dir.path(), &key, "cache-gc");
    until_no_live_lease(&repo);
    let r = prune(&repo, &aggressive(), &NoProgress).unwrap();
    assert!(r.pending_record.is_none(), "{r:?}");
    assert!(
        r.swept.packs_deleted > 0,
        "the prune deleted the push's packs: {r:?}"
    );

    go.send(()).unwrap();
    let pushed = pusher.join().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let fresh = open(dir.path(), &key, "cache-fresh");
    match pushed {
        Err(e) => {
            assert!(
                fresh.snapshots().unwrap().is_empty(),
                "a failed push committed a snapshot ({e})"
            );
        }
        Ok(p) => match fetch(&fresh, &name, &out.join(&name)) {
            Ok(Fetched::Written { .. }) => assert_eq!(
                std::fs::read(out.join(&name)).unwrap(),
                std::fs::read(src.join(&name)).unwrap()
            ),
            other => panic!("the push reported {p:?}, but fetching {name} gives {other:?}"),
        },
    }
    assert_clean(&fresh);
}

/// A tag edit writes the edited snapshot and then removes the original; it holds no lease. A
/// prune whose listing of snapshots falls across an edit lists the original, then finds it
/// gone when it reads it, and never sees the edited one. When that happens at the mark and
/// again at the sweep (two edits in a row), the sweep re-marks without the snapshot and
/// deletes its data: the edited snapshot, committed all along, must still restore.
#[test]
fn a_tag_edit_during_the_prunes_snapshot_listings_loses_nothing() {
    use cairn_repo::archiver::{backup_stream, BackupOptions};
    use cairn_repo::snapshot_edit::{retag, TagEdit};
    use cairn_repo::testing::Rng;
    use cairn_repo::Id;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    let data = Rng::new(41).bytes(600_000);
    backup_stream(
        &repo,
        &mut &data[..],
        "a",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();

    let edits = Arc::new(AtomicUsize::new(0));
    let (d, k, count) = (dir.path().to_path_buf(), key.clone(), edits.clone());
    let racing = open_wrapped(dir.path(), &key, "cache-prune", move |inner| {
        Arc::new(Hooked {
            inner,
            read_only: false,
            before_mutation: Box::new(|| {}),
            after_list: Box::new(move |ft, listed| {
                if ft != FileType::Snapshot || listed.is_empty() {
                    return;
                }
                let n = count.load(Ordering::SeqCst);
                if n >= 2 {
                    return;
                }
                count.store(n + 1, Ordering::SeqCst);
                // Another process edits the tags of the listed snapshot.
                let (d, k) = (d.clone(), k.clone());
                let id = Id::from_hex(&listed[0].name).unwrap();
                std::thread::spawn(move || {
                    let tagger = open(&d, &k, "cache-tagger");
                    let edit = TagEdit {
                        add: vec![format!("edit-{n}")],
                        ..Default::default()
                    };
                    assert_eq!(retag(&tagger, &[id], &edit).unwrap().len(), 1);
                })
                .join()
                .unwrap();
            }),
        })
    });
    prune(&racing, &aggressive(), &NoProgress).unwrap();
    assert_eq!(
        edits.load(Ordering::SeqCst),
        2,
        "the prune listed snapshots twice"
    );

    let fresh = open(dir.path(), &key, "cache-fresh");
    let snaps = fresh.snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(
        snaps[0].1.tags,
        vec!["edit-0".to_string(), "edit-1".to_string()]
    );
    assert_clean(&fresh);
    assert_eq!(stream_content(&fresh, &snaps[0].0, b"/a"), data);
}

/// A lease is refreshed by writing a new lease object and then removing the old one. A prune
/// that lists the leases just before a refresh and reads them just after finds the old
/// object gone and the new one not listed: the writer looks ended although it is running.
/// Here that happens to every look the prune takes while a WAL push waits to write its
/// snapshot, so the prune sweeps the push's packs as unused at once; the push, whose lease
/// held throughout, then commits. Its segment must fetch.
#[test]
fn a_lease_refreshed_while_a_prune_lists_the_leases_still_holds_the_sweep_back() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let src = dir.path().join("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    let seg = wal_segment(&src, 1, 5, SEG, SYSID, 0);
    let name = Segment::from_number(1, 5, SEG).unwrap().name(SEG);
    let PausedHandle {
        repo: writer,
        reached,
        go,
        leases,
        ..
    } = paused_handle(dir.path(), &key, Lease::Refreshed);
    let pusher = std::thread::spawn(move || push(&writer, &seg));
    reached
        .recv_timeout(Duration::from_secs(60))
        .expect("the push reached its snapshot");

    // The prune's first three lease listings that show the push's lease are each followed,
    // before the prune reads what they list, by a refresh of that lease.
    let refreshes = Arc::new(AtomicUsize::new(0));
    let locks = dir.path().join("repo/default/locks");
    let count = refreshes.clone();
    let racing = open_wrapped(dir.path(), &key, "cache-prune", move |inner| {
        Arc::new(Hooked {
            inner,
            read_only: false,
            before_mutation: Box::new(|| {}),
            after_list: Box::new(move |ft, listed| {
                if ft != FileType::Lock || count.load(Ordering::SeqCst) >= 3 {
                    return;
                }
                let ours: Vec<String> = {
                    let names = leases.lock().unwrap();
                    listed
                        .iter()
                        .filter(|o| names.contains(&o.name))
                        .map(|o| o.name.clone())
                        .collect()
                };
                if ours.is_empty() {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let start = Instant::now();
                loop {
                    let present: Vec<String> = files_below(&locks)
                        .iter()
                        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                        .collect();
                    if !ours.iter().any(|n| present.contains(n)) {
                        break;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "the push's lease was not refreshed"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }),
        })
    });
    let r = prune(&racing, &aggressive(), &NoProgress).unwrap();
    assert!(refreshes.load(Ordering::SeqCst) >= 1);

    go.send(()).unwrap();
    let pushed = pusher.join().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let fresh = open(dir.path(), &key, "cache-fresh");
    let fetched = fetch(&fresh, &name, &out.join(&name));
    assert!(
        matches!(fetched, Ok(Fetched::Written { .. })),
        "the push reported {pushed:?}, but fetching {name} gives {fetched:?} (prune: {r:?})"
    );
    assert_eq!(
        std::fs::read(out.join(&name)).unwrap(),
        std::fs::read(src.join(&name)).unwrap()
    );
    // The push has ended: the next prune sweeps, and the segment still fetches.
    prune(&fresh, &aggressive(), &NoProgress).unwrap();
    let fresh = open(dir.path(), &key, "cache-fresh-2");
    assert!(matches!(
        fetch(&fresh, &name, &out.join(&name)),
        Ok(Fetched::Written { .. })
    ));
    assert_clean(&fresh);
}

/// A writer's lease lapses while the machine sleeps and is refreshed again when it wakes. In
/// between, a prune swept what the writer had stored (nothing used it yet). The writer must
/// notice the gap, though its lease holds again: a WAL push must then fail and commit
/// nothing, never a snapshot whose segment cannot be fetched.
#[test]
fn a_lease_refreshed_after_it_lapsed_still_counts_as_lapsed() {
    use std::sync::atomic::Ordering;

    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let src = dir.path().join("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    let seg = wal_segment(&src, 1, 5, SEG, SYSID, 0);
    let name = Segment::from_number(1, 5, SEG).unwrap().name(SEG);
    let PausedHandle {
        repo: writer,
        reached,
        go,
        asleep,
        ..
    } = paused_handle(dir.path(), &key, Lease::RefreshedWhenAwake);
    let pusher = std::thread::spawn(move || push(&writer, &seg));
    reached
        .recv_timeout(Duration::from_secs(60))
        .expect("the push indexed its segment");

    asleep.store(true, Ordering::SeqCst);
    let repo = open(dir.path(), &key, "cache-gc");
    until_no_live_lease(&repo);
    let r = prune(&repo, &aggressive(), &NoProgress).unwrap();
    assert!(
        r.swept.packs_deleted > 0,
        "the prune deleted the push's packs: {r:?}"
    );
    asleep.store(false, Ordering::SeqCst);
    let start = Instant::now();
    while lease::live(&repo).unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the lease was never refreshed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    go.send(()).unwrap();
    let pushed = pusher.join().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let fresh = open(dir.path(), &key, "cache-fresh");
    match pushed {
        Err(e) => assert!(
            fresh.snapshots().unwrap().is_empty(),
            "a failed push committed a snapshot ({e})"
        ),
        Ok(p) => {
            let fetched = fetch(&fresh, &name, &out.join(&name));
            assert!(
                matches!(fetched, Ok(Fetched::Written { .. })),
                "the push reported {p:?}, but fetching {name} gives {fetched:?}"
            );
        }
    }
    assert_clean(&fresh);
}

fn open_at(
    repo_dir: &std::path::Path,
    key: &cairn_repo::crypto::MasterKey,
    cache: &std::path::Path,
) -> Repository {
    Repository::open(
        &cairn_repo::Location::Local(repo_dir.to_path_buf()),
        "default",
        &Credentials::Key(key.clone()),
        &OpenOptions {
            cache_dir: Some(cache.to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Removes the given lease objects of the repository at `repo_dir` when the prune repacks
/// its first pack: a writer that ends while the prune runs.
struct EndLeasesDuringRepack {
    locks: std::path::PathBuf,
    names: Vec<String>,
    done: std::sync::atomic::AtomicBool,
}

impl cairn_repo::progress::Progress for EndLeasesDuringRepack {
    fn pack(&self, _pack: &cairn_repo::Id, event: cairn_repo::progress::PackEvent) {
        if let cairn_repo::progress::PackEvent::Repacked { .. } = event {
            if !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
                for n in &self.names {
                    let _ = std::fs::remove_file(self.locks.join(n));
                }
            }
        }
    }
}

/// A prune that crashes at any of its writes or deletes while an earlier record waits, and
/// whose own record is swept meanwhile (the lease that held both back ends while it runs), is
/// run again: a snapshot committed after the earlier record's mark, whose data that record
/// condemned, restores after the crash, after the rerun, and after the last prune, and check
/// agrees every time.
#[test]
fn a_crash_at_every_mutation_of_a_prune_beside_a_waiting_record_loses_nothing() {
    use cairn_repo::archiver::{backup_stream, BackupOptions};
    use cairn_repo::snapshot_edit::forget;
    use cairn_repo::testing::{copy_tree, CrashingBackend, Rng};

    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let template = dir.path().join("repo");
    let repo = open(dir.path(), &key, "cache-main");
    let backup = |data: &[u8], name: &str| {
        backup_stream(
            &repo,
            &mut &data[..],
            name,
            &BackupOptions::default(),
            &NoProgress,
        )
        .unwrap()
        .id
    };
    let old = Rng::new(1).bytes(3_000_000);
    let s1 = backup(&old, "old");
    // Another writer, live through the first prune; it ends during the second.
    let other = lease::LeaseGuard::acquire(&repo, "backup").unwrap();
    let other_names: Vec<String> = files_below(&template.join("default/locks"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // A writer that read the index before the first prune and commits after it: it reuses
    // old data that the prune condemns.
    let first = [&old[..1_500_000], &Rng::new(2).bytes(2_000_000)[..]].concat();
    let rest = Rng::new(3).bytes(500_000);
    let expected = [&first[..], &rest[..]].concat();
    let (go, gate) = mpsc::channel();
    let (d, k) = (dir.path().to_path_buf(), key.clone());
    let writer = std::thread::spawn(move || {
        let repo = open(&d, &k, "cache-writer");
        let mut gate = Gate {
            first,
            rest,
            pos: 0,
            gate: Some(gate),
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
    while lease::live(&repo).unwrap().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the writer never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    forget(&repo, &[s1]).unwrap();
    let r = prune(&repo, &aggressive(), &NoProgress).unwrap();
    assert!(r.pending_record.is_some(), "the first record waits: {r:?}");
    go.send(true).unwrap();
    let new = writer.join().unwrap().unwrap();
    // Work for the second prune: packs mixing kept and forgotten blobs.
    let mut mixed = Vec::new();
    let mut kept = Vec::new();
    for i in 0..12u64 {
        let piece = Rng::new(100 + i).bytes(100_000);
        if i % 2 == 0 {
            kept.extend_from_slice(&piece);
        }
        mixed.extend_from_slice(&piece);
    }
    let gone = backup(&mixed, "mixed");
    let kept_id = backup(&kept, "kept");
    forget(&repo, &[gone]).unwrap();
    drop(repo);

    let verify = |work: &std::path::Path, context: &str| {
        let cache = dir.path().join("cache-verify");
        let _ = std::fs::remove_dir_all(&cache);
        let r = open_at(work, &key, &cache);
        let report =
            cairn_repo::check::check(&r, Some(cairn_repo::check::Subset::All), &NoProgress)
                .unwrap();
        assert!(
            report.problems.is_empty(),
            "{context}: {:?}",
            report.problems
        );
        assert_eq!(stream_content(&r, &new, b"/new"), expected, "{context}");
        assert_eq!(stream_content(&r, &kept_id, b"/kept"), kept, "{context}");
    };
    let mut n = 1;
    loop {
        let work = dir.path().join(format!("work-{n}"));
        copy_tree(&template, &work).unwrap();
        let cache = dir.path().join("cache-crash");
        let _ = std::fs::remove_dir_all(&cache);
        let rt = new_runtime().unwrap();
        let inner: Arc<dyn Backend> = rt
            .block_on(async { OpendalRoot::local(&work, &BackendOptions::none()) })
            .unwrap()
            .tenant("default")
            .unwrap();
        let crashing = Arc::new(CrashingBackend::new(inner, n));
        let crashing_repo = Repository::open_store(
            Store::new(crashing.clone(), rt),
            "crash".into(),
            "default",
            &Credentials::Key(key.clone()),
            &OpenOptions {
                cache_dir: Some(cache.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        let progress = EndLeasesDuringRepack {
            locks: work.join("default/locks"),
            names: other_names.clone(),
            done: Default::default(),
        };
        let result = prune(&crashing_repo, &aggressive(), &progress);
        let crashed = crashing.crashed();
        drop(crashing_repo);
        verify(&work, &format!("crash at mutation {n}"));
        // Whatever lease is left is the crashed prune's: it has ended.
        for f in files_below(&work.join("default/locks")) {
            std::fs::remove_file(f).unwrap();
        }
        if !crashed {
            let r = result.unwrap();
            assert!(
                r.swept.records >= 1,
                "the prune swept its own record: {r:?}"
            );
        }
        let again = open_at(&work, &key, &dir.path().join("cache-again"));
        let r = prune(&again, &aggressive(), &NoProgress).unwrap();
        assert!(r.pending_record.is_none(), "crash at {n}: {r:?}");
        drop(again);
        let _ = std::fs::remove_dir_all(dir.path().join("cache-again"));
        verify(&work, &format!("rerun after crash at mutation {n}"));
        std::fs::remove_dir_all(&work).unwrap();
        if !crashed {
            break;
        }
        n += 1;
        assert!(n < 400, "bounded loop");
    }
    assert!(n > 5, "the prune made only {n} mutations");
    drop(other);
}
