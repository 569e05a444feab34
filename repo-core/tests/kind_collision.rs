#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A blob's id is the keyed hash of its plaintext alone, so a file chunk and a tree with the
//! same bytes share one blob, stored as whichever kind came first. Anyone who can put a file
//! in a backed-up folder can make one: the tree of an empty folder is 8 fixed bytes. Every
//! snapshot must still restore, check clean and survive a prune, in both orders.

mod common;

use std::path::Path;

use cairn_repo::archiver::{backup_paths, BackupOptions};
use cairn_repo::format::tree::Tree;
use cairn_repo::progress::NoProgress;
use cairn_repo::prune::prune;
use cairn_repo::restorer::{restore, RestoreOptions};
use cairn_repo::testing::compare_trees;
use cairn_repo::{Id, Repository};

fn empty_tree_bytes() -> Vec<u8> {
    cairn_repo::format::to_cbor(&Tree { nodes: vec![] }).unwrap()
}

fn backup(repo: &Repository, src: &Path) -> Id {
    let r = backup_paths(
        repo,
        &[src.to_path_buf()],
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(!r.snapshot.incomplete, "{:?}", r.warnings);
    r.id
}

fn restores(repo: &Repository, snap: &Id, src: &Path, out: &Path) {
    restore(repo, snap, out, &RestoreOptions::default(), &NoProgress)
        .unwrap_or_else(|e| panic!("restoring {snap}: {e}"));
    compare_trees(src, &out.join(src.strip_prefix("/").unwrap())).unwrap();
    std::fs::remove_dir_all(out).unwrap();
}

/// The folder's tree is stored first; the file's chunk is then the same blob, stored as a
/// tree.
#[test]
fn a_file_holding_the_bytes_of_a_tree_stored_before_it_restores() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("b_empty")).unwrap();
    std::fs::write(src.join("a_file"), empty_tree_bytes()).unwrap();
    let snap = backup(&repo, &src);
    restores(&repo, &snap, &src, &dir.path().join("out"));
    common::assert_clean(&repo);
    prune(&repo, &common::aggressive(), &NoProgress).unwrap();
    restores(&repo, &snap, &src, &dir.path().join("out"));
    common::assert_clean(&repo);
}

/// The file's chunk is stored first (an earlier backup); the folder's tree is then the same
/// blob, stored as data.
#[test]
fn a_tree_whose_bytes_a_file_already_stored_restores() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    let first = dir.path().join("first");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::write(first.join("a_file"), empty_tree_bytes()).unwrap();
    let snap1 = backup(&repo, &first);
    let second = dir.path().join("second");
    std::fs::create_dir_all(second.join("empty")).unwrap();
    std::fs::write(second.join("other"), b"other content").unwrap();
    let snap2 = backup(&repo, &second);
    for (snap, src) in [(&snap1, &first), (&snap2, &second)] {
        restores(&repo, snap, src, &dir.path().join("out"));
    }
    common::assert_clean(&repo);
    // Forgetting the first snapshot leaves the shared blob used by the second one only, as
    // a tree; a prune must keep it (and a repack copy it) under the kind it is stored as.
    cairn_repo::snapshot_edit::forget(&repo, &[snap1]).unwrap();
    prune(&repo, &common::aggressive(), &NoProgress).unwrap();
    restores(&repo, &snap2, &second, &dir.path().join("out"));
    common::assert_clean(&repo);
}
