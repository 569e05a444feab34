#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Backups of trees deeper than any path can name, and of files that change while they are
//! read.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_repo::archiver::{backup_paths, BackupOptions};
use cairn_repo::check::check;
use cairn_repo::crypto::MasterKey;
use cairn_repo::format::tree::{Node, NodeKind};
use cairn_repo::id::Id;
use cairn_repo::progress::{NoProgress, Progress};
use cairn_repo::restorer::{restore, RestoreOptions};
use cairn_repo::testing::{compare_trees, nested_folders, random_tree, remove_nested};
use cairn_repo::{Credentials, InitOptions, Location, OpenOptions, Repository};

const DEPTH: usize = 10_000;

fn repo(dir: &Path) -> Repository {
    Repository::init(
        &Location::Local(dir.join("repo")),
        "default",
        &Credentials::Key(MasterKey::generate().unwrap()),
        &InitOptions::default(),
        &OpenOptions {
            cache_dir: Some(dir.join("cache")),
            ..Default::default()
        },
    )
    .unwrap()
}

/// The node `path` (absolute) of a snapshot's root tree.
fn node_at(repo: &Repository, root: &Id, path: &Path) -> Node {
    repo.resolve_path(root, path.as_os_str().as_bytes())
        .unwrap()
        .unwrap()
}

/// A tree nested 10,000 folders deep (20,000 bytes of path, five times `PATH_MAX`) is
/// backed up whole, level by level, with the file at its bottom; a tree beside it is saved
/// exactly as when it is backed up alone; and check walks the snapshot.
#[test]
fn a_tree_nested_10000_folders_deep_is_backed_up_whole() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let _cleanup = Nested(src.clone());
    nested_folders(&src, "d", DEPTH, b"at the bottom\n").unwrap();
    let normal = src.join("normal");
    random_tree(&normal, 9, 60).unwrap();
    let repo = repo(dir.path());

    let r = common::backup(&repo, &src);
    assert!(!r.snapshot.incomplete, "{:?}", r.warnings);
    assert_eq!(
        r.snapshot.summary.dirs as usize,
        DEPTH + 2 + count_dirs(&normal)
    );

    // Level by level, without recursion.
    let top = node_at(&repo, &r.snapshot.tree, &src.join("d"));
    let mut tree = repo.load_tree(&top.subtree.unwrap()).unwrap();
    for level in 1..DEPTH {
        assert_eq!(tree.nodes.len(), 1, "level {level}");
        let node = &tree.nodes[0];
        assert_eq!(
            (node.name.as_slice(), node.kind),
            (&b"d"[..], NodeKind::Dir)
        );
        tree = repo.load_tree(&node.subtree.unwrap()).unwrap();
    }
    assert_eq!(tree.nodes.len(), 1);
    let bottom = &tree.nodes[0];
    assert_eq!((bottom.name.as_slice(), bottom.size), (&b"bottom"[..], 14));
    let content: Vec<u8> = repo
        .file_content(bottom)
        .unwrap()
        .iter()
        .flat_map(|id| repo.read_blob(cairn_repo::id::BlobKind::Data, id).unwrap())
        .collect();
    assert_eq!(content, b"at the bottom\n");

    // The tree beside it: the same subtree as a backup of it alone, which restores exactly.
    let alone = common::backup(&repo, &normal);
    assert_eq!(
        node_at(&repo, &r.snapshot.tree, &normal).subtree,
        node_at(&repo, &alone.snapshot.tree, &normal).subtree
    );
    let out = dir.path().join("out");
    restore(
        &repo,
        &alone.id,
        &out,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    compare_trees(&normal, &out.join(normal.strip_prefix("/").unwrap())).unwrap();

    let report = check(&repo, None, &NoProgress).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.trees as usize > DEPTH);
}

/// Removes a deep tree before its temporary folder is (`remove_dir_all` recurses).
struct Nested(std::path::PathBuf);

impl Drop for Nested {
    fn drop(&mut self) {
        let _ = remove_nested(&self.0);
    }
}

fn count_dirs(dir: &Path) -> usize {
    let mut n = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                n += 1;
                todo.push(e.path());
            }
        }
    }
    n
}

/// Makes the file it watches grow by `by` bytes (sparse) the first time the backup reports
/// bytes saved: the file is then open and its first batches read, the rest not yet.
struct GrowWhileRead<'a> {
    file: &'a Path,
    by: u64,
    grown: AtomicBool,
}

impl Progress for GrowWhileRead<'_> {
    fn bytes(&self, _n: u64) {
        if !self.grown.swap(true, Ordering::SeqCst) {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(self.file)
                .unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len + self.by).unwrap();
        }
    }
}

/// A file that grows while it is read is saved up to the size it had when opened (a file
/// growing faster than it is read would otherwise keep the backup reading), with a warning
/// naming it; the snapshot is not marked incomplete, and the files cache does not record it,
/// so the next backup reads it again.
#[test]
fn a_file_growing_while_it_is_read_is_saved_at_its_size_when_opened() {
    const SIZE: u64 = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let file = src.join("growing.log");
    std::fs::File::create(&file).unwrap().set_len(SIZE).unwrap();
    let repo = repo(dir.path());

    let progress = GrowWhileRead {
        file: &file,
        by: 8 << 20,
        grown: AtomicBool::new(false),
    };
    let r = backup_paths(
        &repo,
        std::slice::from_ref(&src),
        &BackupOptions::default(),
        &progress,
    )
    .unwrap();
    assert!(progress.grown.load(Ordering::SeqCst));
    assert_eq!(std::fs::metadata(&file).unwrap().len(), SIZE + (8 << 20));
    let node = node_at(&repo, &r.snapshot.tree, &file);
    assert_eq!(node.size, SIZE);
    assert_eq!(r.snapshot.summary.bytes_read, SIZE);
    let warned: Vec<_> = r
        .warnings
        .iter()
        .filter(|w| w.contains("growing.log") && w.contains("grew"))
        .collect();
    assert_eq!(warned.len(), 1, "{:?}", r.warnings);
    assert!(!r.snapshot.incomplete);

    // Not recorded as unchanged: the next backup reads it again, whole this time.
    let again = common::backup(&repo, &src);
    assert_eq!(again.snapshot.summary.files_unmodified, 0);
    assert_eq!(
        node_at(&repo, &again.snapshot.tree, &file).size,
        SIZE + (8 << 20)
    );
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
}

/// Moves folders of the source the first time a file named `bottom` is about to be read:
/// `from` to `to` for each pair, in order; then makes a folder `decoy` (with a file in it).
struct MoveAtBottom {
    moves: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    decoy: Option<std::path::PathBuf>,
    done: AtomicBool,
}

impl Progress for MoveAtBottom {
    fn file(&self, path: &Path) {
        if path.ends_with("bottom") && !self.done.swap(true, Ordering::SeqCst) {
            for (from, to) in &self.moves {
                std::fs::rename(from, to).unwrap();
            }
            if let Some(d) = &self.decoy {
                std::fs::create_dir(d).unwrap();
                std::fs::write(d.join("decoy"), b"not part of the walk").unwrap();
            }
        }
    }
}

/// A folder whose descriptor was let go (more than the held window above the walk) is
/// reopened when the walk returns to it, and only if it is the folder the walk entered: one
/// reached again by name is used; one that was moved away is not replaced by whatever now
/// has its name, and what was not yet saved of it is left out with a warning.
#[test]
fn folders_reopened_on_the_way_back_up_are_the_folders_the_walk_entered() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    for move_parent in [false, true] {
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let _cleanup = Nested(src.clone());
        let c = src.join("c");
        std::fs::create_dir(&c).unwrap();
        nested_folders(&c, "d", 100, b"bottom\n").unwrap();
        std::fs::write(c.join("z.txt"), b"after the deep folder\n").unwrap();
        // The chain leaves `c` while the walk is at its bottom, so the way back up cannot
        // reach `c` through `..`; `c` itself moves away too in the second run, and a decoy
        // takes its name.
        let mut moves = vec![(c.join("d"), src.join("moved"))];
        if move_parent {
            moves.push((c.clone(), src.join("c-moved")));
        }
        let progress = MoveAtBottom {
            moves,
            decoy: move_parent.then(|| c.clone()),
            done: AtomicBool::new(false),
        };
        let r = backup_paths(
            &repo,
            std::slice::from_ref(&src),
            &BackupOptions::default(),
            &progress,
        )
        .unwrap();
        assert!(progress.done.load(Ordering::SeqCst));
        let c_tree = repo
            .load_tree(&node_at(&repo, &r.snapshot.tree, &c).subtree.unwrap())
            .unwrap();
        let names: Vec<&[u8]> = c_tree.nodes.iter().map(|n| n.name.as_slice()).collect();
        // The deep folder was read whole either way, through descriptors that moved with it.
        let mut tree = repo.load_tree(&c_tree.nodes[0].subtree.unwrap()).unwrap();
        for _ in 1..100 {
            tree = repo.load_tree(&tree.nodes[0].subtree.unwrap()).unwrap();
        }
        assert_eq!(tree.nodes[0].name, b"bottom");
        if move_parent {
            assert_eq!(names, [&b"d"[..]]);
            assert!(r.snapshot.incomplete);
            assert!(
                r.warnings
                    .iter()
                    .any(|w| w.contains("moved while it was backed up")),
                "{:?}",
                r.warnings
            );
        } else {
            assert_eq!(names, [&b"d"[..], &b"z.txt"[..]]);
            assert!(!r.snapshot.incomplete, "{:?}", r.warnings);
        }
    }
}

/// The folders above a backed-up path are recorded as the folders the path leads through,
/// attributes included, even where the path goes through a symlink.
#[test]
fn folders_above_a_backed_up_path_are_the_folders_it_leads_through() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir_all(real.join("sub")).unwrap();
    std::fs::write(real.join("sub/file"), b"data\n").unwrap();
    std::fs::write(real.join("left-out"), b"not below the backed-up path\n").unwrap();
    let xattrs = xattr::set(&real, "user.note", b"kept").is_ok();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let repo = repo(dir.path());

    let r = backup_paths(
        &repo,
        &[link.join("sub")],
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(!r.snapshot.incomplete, "{:?}", r.warnings);
    let node = node_at(&repo, &r.snapshot.tree, &link);
    assert_eq!(node.kind, NodeKind::Dir);
    if xattrs {
        assert_eq!(node.xattrs.len(), 1);
        assert_eq!(node.xattrs[0].value, b"kept");
    }
    let below: Vec<Vec<u8>> = repo
        .load_tree(&node.subtree.unwrap())
        .unwrap()
        .nodes
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(below, [b"sub".to_vec()]);
    assert_eq!(
        node_at(&repo, &r.snapshot.tree, &link.join("sub/file")).size,
        5
    );
}

/// Swaps the folder `folder` for a symlink to `to` when the file `trigger` is about to be
/// read.
struct SwapForSymlink<'a> {
    trigger: &'a Path,
    folder: &'a Path,
    to: &'a Path,
    done: AtomicBool,
}

impl Progress for SwapForSymlink<'_> {
    fn file(&self, path: &Path) {
        if path == self.trigger && !self.done.swap(true, Ordering::SeqCst) {
            std::fs::rename(self.folder, self.folder.with_extension("moved")).unwrap();
            std::os::unix::fs::symlink(self.to, self.folder).unwrap();
        }
    }
}

/// A folder swapped for a symlink while the backup is inside it is not followed: the rest
/// of it is read through the descriptor the walk opened, never from where the symlink
/// points (a user who can rename in a shared tree cannot make a backup read other files).
#[test]
fn a_folder_swapped_for_a_symlink_mid_walk_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let b = src.join("b");
    std::fs::create_dir_all(&b).unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    for name in ["f1", "f2", "f3"] {
        std::fs::write(b.join(name), b"ordinary\n").unwrap();
        std::fs::write(secret.join(name), b"not yours\n").unwrap();
    }
    let repo = repo(dir.path());
    let progress = SwapForSymlink {
        trigger: &b.join("f1"),
        folder: &b,
        to: &secret,
        done: AtomicBool::new(false),
    };
    let r = backup_paths(
        &repo,
        std::slice::from_ref(&src),
        &BackupOptions::default(),
        &progress,
    )
    .unwrap();
    assert!(progress.done.load(Ordering::SeqCst));
    assert!(std::fs::symlink_metadata(&b).unwrap().is_symlink());
    assert!(!r.snapshot.incomplete, "{:?}", r.warnings);
    for name in ["f1", "f2", "f3"] {
        let node = node_at(&repo, &r.snapshot.tree, &b.join(name));
        let content: Vec<u8> = repo
            .file_content(&node)
            .unwrap()
            .iter()
            .flat_map(|id| repo.read_blob(cairn_repo::id::BlobKind::Data, id).unwrap())
            .collect();
        assert_eq!(content, b"ordinary\n", "{name}");
    }
}
