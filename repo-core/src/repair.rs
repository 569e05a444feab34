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
use crate::error::{ErrorKind, Result};
use crate::format::from_cbor;
use crate::format::index::IndexPack;
use crate::format::snapshot::Snapshot;
use crate::format::to_cbor;
use crate::format::tree::{ContentList, NodeKind, Tree};
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
            let l = match self
                .repo
                .read_blob(BlobKind::Tree, list)
                .and_then(|p| from_cbor::<ContentList>(&p, "content list"))
            {
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
    /// paths lost below it.
    fn fix(&mut self, tree_id: &Id, path: &str) -> Result<(Id, Vec<String>)> {
        if let Some(done) = self.memo.get(tree_id) {
            return Ok(done.clone());
        }
        let tree = match self
            .repo
            .read_blob(BlobKind::Tree, tree_id)
            .and_then(|p| from_cbor::<Tree>(&p, "tree"))
        {
            Ok(t) => t,
            Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound) => {
                let empty = self.save(Tree::default())?;
                return Ok((empty, vec![format!("{path}/ (contents unreadable)")]));
            }
            Err(e) => return Err(e),
        };
        let mut lost = Vec::new();
        let mut out = Tree::default();
        for mut node in tree.nodes {
            let p = format!("{path}/{}", node.name_lossy());
            match node.kind {
                NodeKind::Dir => {
                    if let Some(sub) = node.subtree {
                        let (new, l) = self.fix(&sub, &p)?;
                        node.subtree = Some(new);
                        lost.extend(l);
                    }
                }
                NodeKind::File if !self.file_ok(&node.content, &node.content_lists)? => {
                    lost.push(p);
                    continue;
                }
                _ => {}
            }
            out.nodes.push(node);
        }
        let id = if lost.is_empty() {
            *tree_id
        } else {
            self.save(out)?
        };
        self.memo.insert(*tree_id, (id, lost.clone()));
        Ok((id, lost))
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
