#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Crash injection: a backend that dies at its Nth write or delete, for every N through a
//! backup and through a prune with repacking. After each crash the repository must pass
//! `check --read-data`, and every snapshot committed before the crash must restore byte
//! for byte; a second prune must then complete and leave the same guarantees.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_repo::archiver::{backup_paths, BackupOptions};
use cairn_repo::backend::{new_runtime, Backend, BackendOptions, OpendalRoot, Root, Store};
use cairn_repo::check::{check, Subset};
use cairn_repo::crypto::MasterKey;
use cairn_repo::format::config::ChunkerConfig;
use cairn_repo::progress::NoProgress;
use cairn_repo::prune::{prune, PruneOptions};
use cairn_repo::restorer::{restore, RestoreOptions};
use cairn_repo::snapshot_edit::forget;
use cairn_repo::testing::{compare_trees, copy_tree, CrashingBackend, Rng};
use cairn_repo::{Credentials, Id, InitOptions, Location, OpenOptions, Repository};

struct Fixture {
    dir: tempfile::TempDir,
    key: MasterKey,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate().unwrap();
        let opts = InitOptions {
            chunker: ChunkerConfig {
                min: 4096,
                avg: 16384,
                max: 65536,
            },
            pack_size: 96 * 1024,
            ..Default::default()
        };
        Repository::init(
            &Location::Local(dir.path().join("repo")),
            "default",
            &Credentials::Key(key.clone()),
            &opts,
            &OpenOptions::default(),
        )
        .unwrap();
        Fixture { dir, key }
    }

    fn open(&self, repo_dir: &Path) -> Repository {
        Repository::open(
            &Location::Local(repo_dir.to_path_buf()),
            "default",
            &Credentials::Key(self.key.clone()),
            &OpenOptions {
                cache_dir: Some(self.dir.path().join("cache")),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn open_crashing(&self, repo_dir: &Path, crash_at: u64) -> (Repository, Arc<CrashingBackend>) {
        let rt = new_runtime().unwrap();
        let inner: Arc<dyn Backend> = rt
            .block_on(async { OpendalRoot::local(repo_dir, &BackendOptions::none()) })
            .unwrap()
            .tenant("default")
            .unwrap();
        let crashing = Arc::new(CrashingBackend::new(inner, crash_at));
        let store = Store::new(crashing.clone(), rt);
        let repo = Repository::open_store(
            store,
            "crash test".into(),
            "default",
            &Credentials::Key(self.key.clone()),
            &OpenOptions {
                cache_dir: Some(self.dir.path().join("cache")),
                ..Default::default()
            },
        )
        .unwrap();
        (repo, crashing)
    }

    /// Writes version `v` of the source tree into a folder of its own and returns it.
    fn source(&self, v: u64) -> PathBuf {
        let src = self.dir.path().join(format!("v{v}"));
        std::fs::create_dir_all(src.join("d")).unwrap();
        let mut rng = Rng::new(v);
        for i in 0..6 {
            // Some files change between versions, some stay.
            let seed = if i < 3 { 1000 + i } else { v * 100 + i };
            std::fs::write(
                src.join(format!("d/f{i}")),
                Rng::new(seed).bytes(60_000 + (i as usize) * 20_000),
            )
            .unwrap();
        }
        std::fs::write(src.join("small"), rng.bytes(100)).unwrap();
        src
    }
}

/// Check passes, and every snapshot restores to the source it was taken of.
fn verify(fx: &Fixture, repo_dir: &Path, sources: &HashMap<String, PathBuf>, context: &str) {
    let repo = fx.open(repo_dir);
    let report = check(&repo, Some(Subset::All), &NoProgress).unwrap();
    assert!(
        report.problems.is_empty(),
        "{context}: check found {:?}",
        report.problems
    );
    for (id, snap) in repo.snapshots().unwrap() {
        let src = sources
            .get(&snap.paths[0])
            .unwrap_or_else(|| panic!("{context}: unknown snapshot path {:?}", snap.paths));
        let out = fx.dir.path().join(format!("restore-{}", id.short()));
        let _ = std::fs::remove_dir_all(&out);
        restore(&repo, &id, &out, &RestoreOptions::default(), &NoProgress)
            .unwrap_or_else(|e| panic!("{context}: restore {id}: {e}"));
        compare_trees(src, &out.join(src.strip_prefix("/").unwrap()))
            .unwrap_or_else(|e| panic!("{context}: snapshot {id}: {e}"));
        std::fs::remove_dir_all(&out).unwrap();
    }
}

fn end_leases(repo_dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(repo_dir.join("default/locks")) {
        for e in rd {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
    }
}

#[test]
fn a_crash_at_every_write_of_a_backup_loses_nothing() {
    let fx = Fixture::new();
    let repo_dir = fx.dir.path().join("repo");
    let v1 = fx.source(1);
    let v2 = fx.source(2);
    let mut sources = HashMap::new();
    sources.insert(v1.to_string_lossy().into_owned(), v1.clone());
    sources.insert(v2.to_string_lossy().into_owned(), v2.clone());
    backup_paths(
        &fx.open(&repo_dir),
        std::slice::from_ref(&v1),
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let mut n = 1;
    loop {
        let (repo, crashing) = fx.open_crashing(&repo_dir, n);
        let result = backup_paths(
            &repo,
            std::slice::from_ref(&v2),
            &BackupOptions::default(),
            &NoProgress,
        );
        let crashed = crashing.crashed();
        drop(repo);
        verify(
            &fx,
            &repo_dir,
            &sources,
            &format!("backup crash at write {n}"),
        );
        if !crashed {
            result.unwrap();
            break;
        }
        n += 1;
        assert!(n < 200, "bounded loop");
    }
    assert!(
        n > 5,
        "the backup made only {n} writes: the test covers too little"
    );
}

#[test]
fn a_crash_at_every_write_or_delete_of_a_prune_loses_nothing() {
    let fx = Fixture::new();
    let template = fx.dir.path().join("repo");
    let mut sources = HashMap::new();
    let mut ids: Vec<Id> = Vec::new();
    {
        let repo = fx.open(&template);
        for v in 1..=4 {
            let src = fx.source(v);
            sources.insert(src.to_string_lossy().into_owned(), src.clone());
            ids.push(
                backup_paths(&repo, &[src], &BackupOptions::default(), &NoProgress)
                    .unwrap()
                    .id,
            );
        }
        // Forget two: their unique files become garbage, some packs partly used.
        forget(&repo, &[ids[0], ids[2]]).unwrap();
    }
    let opts = PruneOptions {
        max_unused: 0.0,
        ..Default::default()
    };
    let mut n = 1;
    loop {
        let work = fx.dir.path().join(format!("work-{n}"));
        copy_tree(&template, &work).unwrap();
        let _ = std::fs::remove_dir_all(fx.dir.path().join("cache"));
        let (repo, crashing) = fx.open_crashing(&work, n);
        let result = prune(&repo, &opts, &NoProgress);
        let crashed = crashing.crashed();
        drop(repo);
        verify(
            &fx,
            &work,
            &sources,
            &format!("prune crash at mutation {n}"),
        );
        if !crashed {
            let r = result.unwrap();
            assert!(
                r.plan.repack_packs.len() + r.plan.delete_packs.len() > 0,
                "the prune had nothing to do: {r:?}"
            );
            std::fs::remove_dir_all(&work).unwrap();
            break;
        }
        // The crashed process is gone, and so is its lease (a dead pid on this host ends a
        // lease at once; in this test the "process" is a thread of ours, so remove it).
        end_leases(&work);
        // Running prune again finishes the job.
        let repo = fx.open(&work);
        let again = prune(&repo, &opts, &NoProgress).unwrap();
        assert!(
            again.pending_record.is_none(),
            "crash at {n}: sweep still waits: {:?}",
            again.waiting_for
        );
        drop(repo);
        verify(
            &fx,
            &work,
            &sources,
            &format!("prune rerun after crash at mutation {n}"),
        );
        std::fs::remove_dir_all(&work).unwrap();
        n += 1;
        assert!(n < 300, "bounded loop");
    }
    assert!(n > 5, "the prune made only {n} mutations");
}
