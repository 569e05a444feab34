#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Restore never follows a symlink it did not create: a restored folder swapped for a
//! symlink to an outside folder mid-restore (as another user who can write to the target
//! could) sends nothing outside and changes nothing there.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_repo::crypto::MasterKey;
use cairn_repo::progress::{NoProgress, Progress};
use cairn_repo::restorer::{restore, Overwrite, RestoreOptions};
use cairn_repo::testing::Rng;
use cairn_repo::{Credentials, InitOptions, Location, OpenOptions, Repository};

fn small_repo(dir: &Path) -> Repository {
    let opts = InitOptions {
        chunker: cairn_repo::format::config::ChunkerConfig {
            min: 4096,
            avg: 16384,
            max: 65536,
        },
        ..Default::default()
    };
    Repository::init(
        &Location::Local(dir.join("repo")),
        "default",
        &Credentials::Key(MasterKey::generate().unwrap()),
        &opts,
        &OpenOptions {
            cache_dir: Some(dir.join("cache")),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Swaps `folder` for a symlink to `outside` when the first file below it is about to be
/// written: the folder exists (the restore created it) and is still empty.
struct SwapOnFirstFile {
    folder: PathBuf,
    outside: PathBuf,
    swapped: AtomicBool,
}

impl Progress for SwapOnFirstFile {
    fn file(&self, path: &Path) {
        if path.starts_with(&self.folder) && !self.swapped.swap(true, Ordering::SeqCst) {
            let moved = self.folder.with_extension("moved");
            std::fs::rename(&self.folder, moved).unwrap();
            std::os::unix::fs::symlink(&self.outside, &self.folder).unwrap();
        }
    }
}

fn outside_folder(dir: &Path) -> PathBuf {
    let outside = dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    outside
}

fn assert_untouched(outside: &Path) {
    let entries: Vec<_> = std::fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        entries.is_empty(),
        "restore wrote outside its target: {entries:?}"
    );
    let mode = std::fs::metadata(outside).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        mode, 0o755,
        "restore changed the mode of a folder outside its target"
    );
}

#[test]
fn restore_never_follows_a_folder_swapped_for_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let folder = src.join("d");
    std::fs::create_dir_all(&folder).unwrap();
    // A file of many chunks (written on its own, announced before it is created) and a
    // small one, in a folder whose mode differs from the outside folder's.
    std::fs::write(folder.join("big"), Rng::new(7).bytes(1 << 20)).unwrap();
    std::fs::write(folder.join("small"), b"small\n").unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700)).unwrap();
    let repo = small_repo(dir.path());
    let r = common::backup(&repo, &src);

    let outside = outside_folder(dir.path());
    let target = dir.path().join("target");
    let restored = target.join(folder.strip_prefix("/").unwrap());
    let swap = SwapOnFirstFile {
        folder: restored.clone(),
        outside: outside.clone(),
        swapped: AtomicBool::new(false),
    };
    let result = restore(&repo, &r.id, &target, &RestoreOptions::default(), &swap);
    assert!(
        swap.swapped.load(Ordering::SeqCst),
        "the swap did not happen"
    );
    assert_untouched(&outside);
    // The restore went on in the folder it created, wherever that folder now is.
    if result.is_ok() {
        let moved = restored.with_extension("moved");
        assert_eq!(std::fs::read(moved.join("small")).unwrap(), b"small\n");
        assert_eq!(std::fs::read(moved.join("big")).unwrap().len(), 1 << 20);
    }
}

#[test]
fn restore_replaces_a_planted_symlink_instead_of_following_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"f\n").unwrap();
    std::fs::set_permissions(src.join("d"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let repo = small_repo(dir.path());
    let r = common::backup(&repo, &src);

    let outside = outside_folder(dir.path());
    let target = dir.path().join("target");
    let restored = target.join(src.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&restored).unwrap();
    std::os::unix::fs::symlink(&outside, restored.join("d")).unwrap();
    restore(
        &repo,
        &r.id,
        &target,
        &RestoreOptions {
            overwrite: Overwrite::Always,
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    assert_untouched(&outside);
    assert!(std::fs::symlink_metadata(restored.join("d"))
        .unwrap()
        .is_dir());
    assert_eq!(std::fs::read(restored.join("d/f")).unwrap(), b"f\n");
}
