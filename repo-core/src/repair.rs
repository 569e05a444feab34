//! Repairs for damaged repositories, so that everything still there can be restored.
//!
//! - [`repair_index`] rebuilds the index from the pack headers (a pack alone describes its
//!   blobs): new index files are written, the last superseding all old ones, which are then
//!   removed. Packs whose header cannot be read are reported and left unindexed.
//! - [`repair_snapshots`] rewrites snapshots that reference missing data: files with missing
//!   content are left out, unreadable directories become empty. Each repaired snapshot is
//!   saved as a new one tagged `repaired` (recording the original); the originals are kept
//!   unless asked otherwise.

use std::collections::HashMap;

use serde::Serialize;

use crate::backend::FileType;
use crate::error::{Error, ErrorKind, Result};
use crate::format::index::IndexPack;
use crate::format::snapshot::Snapshot;
use crate::format::to_cbor;
use crate::format::tree::{Node, NodeKind, Tree};
use crate::id::{BlobKind, Id};
use crate::lease::LeaseGuard;
use crate::repository::{IndexFileWriter, Repository, SnapshotRead};
use crate::writer::BlobWriter;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairIndexReport {
    pub packs_indexed: u64,
    pub blobs: u64,
    pub index_files_written: u64,
    pub index_files_removed: u64,
    /// Packs whose header could not be read, with the reason.
    pub damaged_packs: Vec<(Id, String)>,
}

pub fn repair_index(repo: &Repository) -> Result<RepairIndexReport> {
    let _lease = LeaseGuard::acquire(repo, "prune")?;
    let mut report = RepairIndexReport::default();
    let old: Vec<Id> = repo
        .index_file_ids()?
        .into_iter()
        .filter(|id| {
            repo.read_index_file(id)
                .map(|f| f.condemned.is_none())
                .unwrap_or(true)
        })
        .collect();
    let mut out = IndexFileWriter::new(repo);
    for info in repo.store().list(FileType::Pack)? {
        let pack = Id::from_hex(&info.name)?;
        match repo.read_pack_header(&pack) {
            Ok((size, blobs)) => {
                report.packs_indexed += 1;
                report.blobs += blobs.len() as u64;
                out.push(IndexPack {
                    id: pack,
                    size,
                    blobs,
                })?;
            }
            Err(e) if e.kind() == ErrorKind::Corrupt => {
                report.damaged_packs.push((pack, e.to_string()))
            }
            Err(e) => return Err(e),
        }
    }
    report.index_files_written = out.finish(old.clone())?;
    for id in old {
        repo.store().remove(FileType::Index, &id.to_hex())?;
        report.index_files_removed += 1;
    }
    repo.sync_index()?;
    Ok(report)
}

#[derive(Debug, Clone, Serialize)]
pub struct RepairedSnapshot {
    pub original: Id,
    pub repaired: Option<Id>,
    /// Paths left out of the repaired snapshot.
    pub lost: Vec<String>,
    /// The snapshot object itself cannot be read: it cannot be repaired, only removed.
    pub unreadable: bool,
}

/// A folder being repaired.
struct Frame {
    id: Id,
    path: String,
    nodes: std::vec::IntoIter<Node>,
    out: Tree,
    lost: Vec<String>,
    /// The folder node whose subtree is being repaired on the frame above.
    waiting: Option<Node>,
}

enum Opened {
    Done((Id, Vec<String>)),
    Frame(Box<Frame>),
}

struct Fixer<'a> {
    repo: &'a Repository,
    writer: Option<BlobWriter>,
    /// Tree id -> (replacement id, paths lost below it).
    memo: HashMap<Id, (Id, Vec<String>)>,
}

impl Fixer<'_> {
    /// Whether the repository holds the blob. The index was reloaded from the repository
    /// when the repair started, and a miss is verified again there: a repair never drops
    /// a file because of a cache's belief.
    fn blob_ok(&self, id: &Id) -> Result<bool> {
        Ok(self.repo.locate_verified(id)?.is_some())
    }

    fn file_ok(&self, content: &[Id], lists: &[Id]) -> Result<bool> {
        for id in content {
            if !self.blob_ok(id)? {
                return Ok(false);
            }
        }
        for list in lists {
            let l = match self.repo.load_content_list(list) {
                Ok(l) => l,
                Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound) => {
                    return Ok(false)
                }
                Err(e) => return Err(e),
            };
            for id in &l.ids {
                if !self.blob_ok(id)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// The id of a repaired copy of `tree` (the same id when nothing is missing) and the
    /// paths lost below it. Folders are walked with an explicit stack, so a tree of any depth
    /// is repaired without recursion.
    fn fix(&mut self, root: &Id, path: &str) -> Result<(Id, Vec<String>)> {
        let mut stack = match self.open(root, path)? {
            Opened::Done(r) => return Ok(r),
            Opened::Frame(f) => vec![f],
        };
        // The result of the folder that was finished last, for its parent.
        let mut finished: Option<(Id, Vec<String>)> = None;
        loop {
            let top = stack
                .last_mut()
                .ok_or_else(|| Error::new(ErrorKind::Other, "repair: empty folder stack"))?;
            if let Some(mut node) = top.waiting.take() {
                let (id, lost) = finished.take().ok_or_else(|| {
                    Error::new(ErrorKind::Other, "repair: lost a folder's result")
                })?;
                node.subtree = Some(id);
                top.lost.extend(lost);
                top.out.nodes.push(node);
            }
            let Some(node) = top.nodes.next() else {
                let frame = stack
                    .pop()
                    .ok_or_else(|| Error::new(ErrorKind::Other, "repair: empty folder stack"))?;
                let result = self.close(frame)?;
                if stack.is_empty() {
                    return Ok(result);
                }
                finished = Some(result);
                continue;
            };
            let p = format!("{}/{}", top.path, node.name_lossy());
            match (node.kind, node.subtree) {
                (NodeKind::Dir, Some(sub)) => match self.open(&sub, &p)? {
                    Opened::Done((id, lost)) => {
                        let top = stack.last_mut().ok_or_else(|| {
                            Error::new(ErrorKind::Other, "repair: empty folder stack")
                        })?;
                        let mut node = node;
                        node.subtree = Some(id);
                        top.lost.extend(lost);
                        top.out.nodes.push(node);
                    }
                    Opened::Frame(child) => {
                        if let Some(top) = stack.last_mut() {
                            top.waiting = Some(node);
                        }
                        stack.push(child);
                    }
                },
                (NodeKind::File, _) if !self.file_ok(&node.content, &node.content_lists)? => {
                    top.lost.push(p);
                }
                _ => top.out.nodes.push(node),
            }
        }
    }

    /// Starts on a folder: its answer when it was repaired before or cannot be read, else a
    /// frame to walk.
    fn open(&mut self, tree_id: &Id, path: &str) -> Result<Opened> {
        if let Some(done) = self.memo.get(tree_id) {
            return Ok(Opened::Done(done.clone()));
        }
        // A tree that does not validate is unreadable as one that does not decode: every
        // reader refuses it (`Tree::decode`).
        match self.repo.load_tree(tree_id) {
            Ok(t) => Ok(Opened::Frame(Box::new(Frame {
                id: *tree_id,
                path: path.to_string(),
                nodes: t.nodes.into_iter(),
                out: Tree::default(),
                lost: Vec::new(),
                waiting: None,
            }))),
            Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound) => {
                let empty = self.save(Tree::default())?;
                Ok(Opened::Done((
                    empty,
                    vec![format!("{path}/ (contents unreadable)")],
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Finishes a folder: the same id when nothing below it was lost, else a new tree.
    fn close(&mut self, frame: Box<Frame>) -> Result<(Id, Vec<String>)> {
        let id = if frame.lost.is_empty() {
            frame.id
        } else {
            self.save(frame.out)?
        };
        self.memo.insert(frame.id, (id, frame.lost.clone()));
        Ok((id, frame.lost))
    }

    fn save(&mut self, mut tree: Tree) -> Result<Id> {
        tree.canonicalize()?;
        let bytes = to_cbor(&tree)?;
        match &mut self.writer {
            Some(w) => w.add_plain(BlobKind::Tree, &bytes),
            None => Ok(self.repo.keys().blob_id(&bytes)),
        }
    }
}

/// Repairs every snapshot that references missing data. With `dry_run` nothing is written.
pub fn repair_snapshots(
    repo: &Repository,
    forget_originals: bool,
    dry_run: bool,
) -> Result<Vec<RepairedSnapshot>> {
    let lease = LeaseGuard::acquire(repo, "backup")?;
    repo.reload_index()?;
    let list = repo.list_snapshots(SnapshotRead::Verified)?;
    let snapshots = list.snapshots;
    let writer = if dry_run {
        None
    } else {
        Some(BlobWriter::new(repo, repo.config().compression))
    };
    let mut fixer = Fixer {
        repo,
        writer,
        memo: HashMap::new(),
    };
    let mut changed: Vec<(Id, Snapshot, Id, Vec<String>)> = Vec::new();
    for (id, snap) in &snapshots {
        let (tree, lost) = fixer.fix(&snap.tree, "")?;
        if !lost.is_empty() {
            changed.push((*id, snap.clone(), tree, lost));
        }
    }
    if let Some(w) = fixer.writer.take() {
        w.finish()?;
    }
    let mut out = Vec::new();
    // A snapshot that cannot be read cannot be repaired; `forget_originals` removes it.
    for (id, e) in list.unreadable {
        if forget_originals && !dry_run {
            repo.store().remove(FileType::Snapshot, &id.to_hex())?;
        }
        out.push(RepairedSnapshot {
            original: id,
            repaired: None,
            lost: vec![format!("the snapshot itself cannot be read ({e})")],
            unreadable: true,
        });
    }
    for (id, snap, tree, lost) in changed {
        let repaired = if dry_run {
            None
        } else {
            let mut tags = snap.tags.clone();
            if !tags.iter().any(|t| t == "repaired") {
                tags.push("repaired".into());
            }
            let new = Snapshot {
                tree,
                tags,
                original: Some(snap.original.unwrap_or(id)),
                incomplete: true,
                ..snap
            };
            let new_id = repo.save_snapshot(&new)?;
            if forget_originals {
                repo.store().remove(FileType::Snapshot, &id.to_hex())?;
                repo.cache().update_snapshots(&[], &[id])?;
            }
            Some(new_id)
        };
        out.push(RepairedSnapshot {
            original: id,
            repaired,
            lost,
            unreadable: false,
        });
    }
    lease.release()?;
    Ok(out)
}
