//! Snapshots written directly with the library's tree-writing API, for shapes a backup of a
//! real folder cannot (or need not) produce: trees nested thousands of levels deep, and tree
//! graphs that share subtrees level after level.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cairn_repo::format::snapshot::{Snapshot, SnapshotKind, Summary};
use cairn_repo::format::to_cbor;
use cairn_repo::format::tree::{Node, NodeKind, Time, Tree};
use cairn_repo::writer::BlobWriter;
use cairn_repo::{BlobKind, Credentials, Id, Location, OpenOptions, Repository};

use super::Env;

/// The test repository, opened by the library with the test's password.
pub fn open(env: &Env) -> Repository {
    Repository::open(
        &Location::Local(env.repo()),
        "default",
        &Credentials::Password(b"correct horse".to_vec()),
        &OpenOptions {
            cache_dir: Some(env.path("crafted-cache")),
            ..Default::default()
        },
    )
    .unwrap()
}

fn node(name: &[u8], kind: NodeKind, mode: u32) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        user: None,
        group: None,
        mtime: Time(1_600_000_000, 0),
        atime: None,
        ctime: Time(1_600_000_000, 0),
        size: 0,
        inode: 0,
        device: 0,
        links: 1,
        rdev: 0,
        link_target: None,
        xattrs: Vec::new(),
        content: Vec::new(),
        content_lists: Vec::new(),
        subtree: None,
    }
}

pub fn dir(name: &[u8], subtree: Id) -> Node {
    Node {
        subtree: Some(subtree),
        ..node(name, NodeKind::Dir, 0o755)
    }
}

/// A file with the given content (one data blob).
pub fn file(w: &mut BlobWriter, name: &[u8], content: &[u8]) -> Node {
    let id = w.add_plain(BlobKind::Data, content).unwrap();
    Node {
        size: content.len() as u64,
        content: vec![id],
        ..node(name, NodeKind::File, 0o644)
    }
}

pub fn save_tree(w: &mut BlobWriter, mut nodes: Vec<Node>) -> Id {
    let mut tree = Tree {
        nodes: std::mem::take(&mut nodes),
    };
    tree.canonicalize().unwrap();
    w.add_plain(BlobKind::Tree, &to_cbor(&tree).unwrap())
        .unwrap()
}

/// Commits a snapshot of `tree` with the given counts (as a backup records them).
pub fn commit(repo: &Repository, tree: Id, files: u64, dirs: u64) -> Id {
    let snap = Snapshot {
        version: 1,
        time: "2026-01-01T00:00:00Z".into(),
        host: "crafted".into(),
        user: "root".into(),
        tenant: "default".into(),
        kind: SnapshotKind::Files,
        paths: vec!["/".into()],
        tags: Vec::new(),
        parent: None,
        tree,
        summary: Summary {
            files,
            dirs,
            ..Default::default()
        },
        program_version: "test".into(),
        incomplete: false,
        command: Vec::new(),
        pg: None,
        original: None,
    };
    repo.save_snapshot(&snap).unwrap()
}

/// A snapshot of one chain of `depth` folders named `d`, with a file `f` (content
/// `deepest`) in the deepest one and a file `f` (content `top`) in the first.
pub fn deep_snapshot(env: &Env, depth: usize) -> Id {
    let repo = open(env);
    repo.sync_index().unwrap();
    let mut w = BlobWriter::new(&repo, 3);
    let mut tree = {
        let f = file(&mut w, b"f", b"deepest\n");
        save_tree(&mut w, vec![f])
    };
    for level in (1..depth).rev() {
        let mut nodes = vec![dir(b"d", tree)];
        if level == 1 {
            nodes.push(file(&mut w, b"f", b"top\n"));
        }
        tree = save_tree(&mut w, nodes);
    }
    let root = save_tree(&mut w, vec![dir(b"d", tree)]);
    w.finish().unwrap();
    commit(&repo, root, 2, depth as u64)
}

/// A snapshot whose tree graph shares subtrees `levels` deep: every folder holds two
/// folders `a` and `b` with the same tree, so `levels` stored trees expand to 2^levels
/// paths. With `honest` its summary counts every path (as a backup of such a folder
/// would); otherwise it counts what the stored trees hold.
pub fn dag_snapshot(env: &Env, levels: usize, honest: bool) -> Id {
    let repo = open(env);
    repo.sync_index().unwrap();
    let mut w = BlobWriter::new(&repo, 3);
    let mut tree = {
        let f = file(&mut w, b"f", b"leaf\n");
        save_tree(&mut w, vec![f])
    };
    for _ in 0..levels {
        tree = save_tree(&mut w, vec![dir(b"a", tree), dir(b"b", tree)]);
    }
    w.finish().unwrap();
    if honest {
        commit(&repo, tree, 1 << levels, (2 << levels) - 2)
    } else {
        commit(&repo, tree, 1, 2 * levels as u64)
    }
}
