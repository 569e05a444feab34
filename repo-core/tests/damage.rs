#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Damage and hostile conditions around the repository: unreadable snapshots, damaged or
//! unusable caches, read-only storage, leftovers of failed uploads, concurrent key removal.
//! Each test names what it protects.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime};

use cairn_repo::archiver::{backup_stream, BackupOptions};
use cairn_repo::check::check;
use cairn_repo::keys::KdfParams;
use cairn_repo::progress::NoProgress;
use cairn_repo::prune::{prune, PruneOptions};
use cairn_repo::repair::repair_snapshots;
use cairn_repo::testing::Rng;
use cairn_repo::{Credentials, ErrorKind, Id, Location, OpenOptions, Repository};

fn backup(repo: &Repository, seed: u64, len: usize) -> (Id, Vec<u8>) {
    let data = Rng::new(seed).bytes(len);
    let id = backup_stream(
        repo,
        &mut &data[..],
        "a",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
    .id;
    (id, data)
}

/// Rewrites the rows of the cache's blob table through redb itself (so only the rows, not
/// redb's pages, are damaged): `edit` changes or removes rows; removed ones are deleted.
fn edit_cached_blobs(
    cache_file: &std::path::Path,
    edit: impl FnOnce(&mut Vec<(Vec<u8>, Vec<u8>)>),
) {
    use redb::ReadableTable;
    let db = redb::Database::create(cache_file).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let table: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("blobs");
        let mut t = tx.open_table(table).unwrap();
        let before: Vec<(Vec<u8>, Vec<u8>)> = t
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value().to_vec(), v.value().to_vec())
            })
            .collect();
        let mut rows = before.clone();
        edit(&mut rows);
        for (k, _) in &before {
            t.remove(k.as_slice()).unwrap();
        }
        for (k, v) in &rows {
            t.insert(k.as_slice(), v.as_slice()).unwrap();
        }
    }
    tx.commit().unwrap();
}

fn flip_byte(path: &std::path::Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// One flipped bit in a snapshot object: prune must not free the data only that snapshot
/// uses, whether or not the cache holds a good copy of its manifest, until the user says the
/// snapshot is to be dropped.
#[test]
fn prune_refuses_while_a_snapshot_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    let (s1, _) = backup(&repo, 1, 1_000_000);
    let (s2, data2) = backup(&repo, 2, 1_000_000);
    assert_eq!(
        repo.snapshots().unwrap().len(),
        2,
        "the cache now holds both"
    );
    flip_byte(
        &dir.path().join("repo/default/snapshots").join(s1.to_hex()),
        40,
    );
    let packs = count_packs(dir.path());
    for cache in ["cache-main", "cache-cold"] {
        let r = open(dir.path(), &key, cache);
        let e = prune(&r, &PruneOptions::default(), &NoProgress).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert!(e.to_string().contains(&s1.short()), "{e}");
        assert!(e.to_string().contains("repair snapshots"), "{e}");
        assert_eq!(count_packs(dir.path()), packs, "nothing was deleted");
        let listed = r
            .list_snapshots(cairn_repo::repository::SnapshotRead::Verified)
            .unwrap();
        assert_eq!(listed.unreadable.len(), 1, "a warm cache does not hide it");
    }
    let r = prune(
        &repo,
        &PruneOptions {
            drop_unreadable: true,
            max_unused: 0.0,
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert!(r.swept.packs_deleted > 0, "{r:?}");
    assert_eq!(stream_content(&repo, &s2, b"/a"), data2);
    assert_eq!(repo.snapshots().unwrap().len(), 1);
}

/// A row missing from the cache (a flipped key byte) looks like a blob in no index. Check
/// must not report it and repair must not drop the file: both verify against the repository.
#[test]
fn a_damaged_cache_is_never_reported_or_repaired_as_repository_damage() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    let (s1, data) = backup(&repo, 3, 1_000_000);
    let cache_file = repo.cache_path().to_path_buf();
    drop(repo);
    // As a flipped key byte would: the row of one blob is gone.
    edit_cached_blobs(&cache_file, |rows| {
        rows.remove(0);
    });
    let repo = open(dir.path(), &key, "cache-main");
    let report = check(&repo, None, &NoProgress).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let repaired = repair_snapshots(&repo, true, false).unwrap();
    assert!(repaired.is_empty(), "{repaired:?}");
    assert_eq!(repo.snapshots().unwrap().len(), 1);
    assert_eq!(stream_content(&repo, &s1, b"/a"), data);
}

/// Random damage to the cache file: no command may panic, give wrong bytes, or blame the
/// repository. A damaged cache is rebuilt (at once, or by the next command after a clear
/// error of kind `Cache`).
#[test]
fn random_damage_to_the_cache_never_panics_or_misleads() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-pristine");
    let (s1, data) = backup(&repo, 4, 2_000_000);
    let pristine = repo.cache_path().to_path_buf();
    drop(repo);
    for seed in 0..8u64 {
        let cache_dir = dir.path().join(format!("cache-{seed}"));
        std::fs::create_dir_all(&cache_dir).unwrap();
        let damaged = cache_dir.join(pristine.file_name().unwrap());
        std::fs::copy(&pristine, &damaged).unwrap();
        let mut bytes = std::fs::read(&damaged).unwrap();
        let mut rng = Rng::new(seed);
        for _ in 0..50 {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
        }
        std::fs::write(&damaged, bytes).unwrap();
        // Each attempt either works or says the cache is damaged; the second always works.
        let name = format!("cache-{seed}");
        for attempt in 0..2 {
            let repo = open(dir.path(), &key, &name);
            let outcome = (|| -> cairn_repo::Result<()> {
                let s = repo.read_snapshot(&s1)?;
                let node = repo.resolve_path(&s.tree, b"/a")?.unwrap();
                let mut out = Vec::new();
                std::io::Read::read_to_end(
                    &mut cairn_repo::content::ContentReader::new(&repo, &node)?,
                    &mut out,
                )
                .map_err(|e| cairn_repo::Error::io("reading", e))?;
                assert_eq!(out, data, "seed {seed}: wrong bytes");
                let more = Rng::new(100 + seed).bytes(100_000);
                backup_stream(
                    &repo,
                    &mut &more[..],
                    "b",
                    &BackupOptions::default(),
                    &NoProgress,
                )?;
                let report = check(&repo, None, &NoProgress)?;
                assert!(
                    report.problems.is_empty(),
                    "seed {seed}: {:?}",
                    report.problems
                );
                Ok(())
            })();
            match outcome {
                Ok(()) => break,
                Err(e) if attempt == 0 && e.kind() == ErrorKind::Cache => continue,
                Err(e) => panic!("seed {seed}, attempt {attempt}: {e}"),
            }
        }
    }
}

/// A value changed inside a cache that redb still reads as sound fails its row checksum:
/// the command stops with a `Cache` error and the next one rebuilds the cache.
#[test]
fn a_changed_cache_row_is_caught_by_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    let (s1, data) = backup(&repo, 5, 1_000_000);
    let cache_file = repo.cache_path().to_path_buf();
    drop(repo);
    // Every blob's offset changed, with redb's own page checksums kept valid.
    edit_cached_blobs(&cache_file, |rows| {
        for (_, v) in rows.iter_mut() {
            v[35] ^= 1;
        }
    });
    let repo = open(dir.path(), &key, "cache-main");
    let s = repo.read_snapshot(&s1).unwrap();
    let e = repo.resolve_path(&s.tree, b"/a").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cache, "{e}");
    assert!(!cache_file.exists(), "the damaged cache is removed");
    drop(repo);
    let repo = open(dir.path(), &key, "cache-main");
    assert_eq!(stream_content(&repo, &s1, b"/a"), data);
}

/// A cache that cannot be created or written is only a cache: the command goes on with a
/// temporary one.
#[test]
fn an_unusable_cache_gives_way_to_a_temporary_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    std::fs::write(dir.path().join("not-a-folder"), b"x").unwrap();
    let repo = open(dir.path(), &key, "not-a-folder/cache");
    let (s1, data) = backup(&repo, 6, 200_000);
    assert!(repo.cache_is_temporary());
    assert_eq!(stream_content(&repo, &s1, b"/a"), data);
}

/// `prune --dry-run` writes nothing, not even a lease: it works on a read-only repository.
#[test]
fn a_dry_run_prune_works_on_a_read_only_repository() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    backup(&repo, 7, 500_000);
    let read_only = open_wrapped(dir.path(), &key, "cache-ro", |inner| {
        Arc::new(Hooked {
            inner,
            read_only: true,
            before_mutation: Box::new(|| {}),
            after_list: Box::new(|_, _| {}),
        })
    });
    let r = prune(
        &read_only,
        &PruneOptions {
            dry_run: true,
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert!(r.dry_run);
}

/// A staging file left by an upload that failed (a full disk, a killed process) is removed
/// by the next writer or prune once it is old enough to belong to no running upload.
#[test]
fn staging_files_left_by_failed_uploads_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    let tmp = dir.path().join("repo/tmp");
    let stale = |name: &str| {
        let p = tmp.join(name);
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let old = SystemTime::now() - Duration::from_secs(2 * 3600);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        p
    };
    let left = stale("0a.upload-1");
    let fresh = tmp.join("0b.upload-2");
    std::fs::write(&fresh, b"being written").unwrap();
    prune(&repo, &PruneOptions::default(), &NoProgress).unwrap();
    assert!(!left.exists(), "prune removes a stale staging file");
    assert!(
        fresh.exists(),
        "a recent one may belong to a running upload"
    );
    let left = stale("0c.upload-3");
    backup(&repo, 8, 10_000);
    assert!(!left.exists(), "the next backup removes it too");
}

/// The cache names every backed-up path: its folder is the user's alone and tagged as a
/// cache, whatever the umask.
#[test]
fn the_cache_folder_is_private_and_tagged() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    backup(&repo, 9, 10_000);
    let folder = dir.path().join("cache-main");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&folder), 0o700);
    assert_eq!(mode(repo.cache_path()), 0o600);
    let tag = std::fs::read_to_string(folder.join("CACHEDIR.TAG")).unwrap();
    assert!(tag.starts_with("Signature: 8a477f597d28d172789f06886806bc55"));

    // An existing folder given as the cache folder (say `--cache-dir /tmp`) keeps its mode
    // and gets no tag (that would hide it from backups); the cache file is still private.
    drop(repo);
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let repo = open(dir.path(), &key, "shared");
    assert_eq!(
        std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
    assert!(!shared.join("CACHEDIR.TAG").exists());
    assert_eq!(mode(repo.cache_path()), 0o600);
}

/// Two administrators remove two different key slots at the same moment: the tenant must
/// keep at least one slot, whatever the interleaving.
#[test]
fn concurrent_key_removals_never_leave_a_tenant_without_a_slot() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let location = Location::Local(dir.path().join("repo"));
    let cheap = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let opts = OpenOptions::default();
    let repo =
        Repository::open(&location, "default", &Credentials::Key(key.clone()), &opts).unwrap();
    for round in 0..12 {
        let threads = 4;
        let slots: Vec<String> = (0..threads)
            .map(|i| {
                repo.add_key(&key, format!("pw-{round}-{i}").as_bytes(), cheap)
                    .unwrap()
            })
            .collect();
        // Only the new slots are present: every earlier round removed all but one, which
        // is removed here first so that the race is between exactly these.
        for (name, _) in repo.key_slots().unwrap() {
            if !slots.contains(&name) {
                repo.store_for_tests()
                    .remove(cairn_repo::backend::FileType::Key, &name)
                    .unwrap();
            }
        }
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = slots
            .iter()
            .cloned()
            .map(|slot| {
                let (barrier, location, key) = (barrier.clone(), location.clone(), key.clone());
                std::thread::spawn(move || {
                    let r = Repository::open(
                        &location,
                        "default",
                        &Credentials::Key(key),
                        &OpenOptions::default(),
                    )
                    .unwrap();
                    barrier.wait();
                    r.remove_key(&slot)
                })
            })
            .collect();
        for h in handles {
            let _ = h.join().unwrap();
        }
        let left = repo.key_slots().unwrap();
        assert!(!left.is_empty(), "round {round}: no key slot left");
    }
}

/// A damaged key slot does not stop listing the others or its own removal, and never counts
/// as the slot that keeps a tenant open.
#[test]
fn a_damaged_key_slot_can_be_removed_and_never_counts_as_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open(dir.path(), &key, "cache-main");
    let cheap = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let good = repo.add_key(&key, b"good", cheap).unwrap();
    let bad = repo.add_key(&key, b"bad", cheap).unwrap();
    flip_byte(&dir.path().join("repo/default/keys").join(&bad), 10);
    let listed = repo.key_slots().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, good);
    let e = repo.remove_key(&good).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(repo.remove_key(&bad).unwrap(), bad);
    assert_eq!(repo.key_slots().unwrap().len(), 1);
}

/// A snapshot whose upload was stored but whose answer was lost is retried; the retry finds
/// the snapshot in place, and the backup succeeds with exactly one snapshot.
#[test]
fn a_backup_whose_snapshot_answer_was_lost_succeeds_once_retried() {
    use cairn_repo::backend::{Backend, FileType, RetryBackend};
    let dir = tempfile::tempdir().unwrap();
    let key = init(dir.path());
    let repo = open_wrapped(dir.path(), &key, "cache", |inner| {
        let lossy: Arc<dyn Backend> = Arc::new(LostAnswer::new(inner, FileType::Snapshot));
        Arc::new(RetryBackend::new(lossy, &quick_retries(3)))
    });
    let r = backup_stream(
        &repo,
        &mut &b"hello"[..],
        "s",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(repo.snapshots().unwrap().len(), 1);
    assert_eq!(stream_content(&repo, &r.id, b"s"), b"hello");
}
