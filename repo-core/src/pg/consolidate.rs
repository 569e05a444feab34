//! Consolidating `wal` snapshots, so that the number of snapshot objects stays bounded
//! however long a cluster is archived (docs/design.md, section 16).
//!
//! Each push writes one small `wal` snapshot. Once a tenant holds more than
//! [`CONSOLIDATE_AT`] of them, a push merges them all into one snapshot whose tree holds
//! every archived file, then removes the snapshots it merged. A log folder that only one of
//! the merged snapshots holds is taken over as it is (its tree blob is reused; no segment
//! data and no unchanged metadata is written again), so a merge writes little more than the
//! folders that changed.
//!
//! Safety: the merged snapshot is saved before any merged one is removed, and it refers only
//! to blobs that the merged snapshots refer to, which exist until they are removed; a prune
//! marks against whichever of them it lists. Two pushes that merge at once write two
//! snapshots holding the same files, which is harmless (readers take the newest holder).

use std::collections::BTreeMap;

use super::wal::{dir_node, wal_snapshot, Catalog};
use crate::backend::FileType;
use crate::commit::ensure_complete;
use crate::error::{Error, Result};
use crate::format::snapshot::Summary;
use crate::format::to_cbor;
use crate::format::tree::{Node, NodeKind, Tree};
use crate::id::{BlobKind, Id};
use crate::lease::LeaseGuard;
use crate::repository::Repository;
use crate::writer::BlobWriter;

/// `wal` snapshots a tenant may hold before a push merges them.
pub const CONSOLIDATE_AT: usize = 64;

/// One timeline folder being merged: its log folders and its `.history` files.
#[derive(Default)]
struct Timeline {
    /// Log folder name -> the folder nodes found for it (one: reused as it is).
    logs: BTreeMap<Vec<u8>, Vec<Node>>,
    history: BTreeMap<Vec<u8>, Node>,
}

/// Merges the tenant's `wal` snapshots into one when there are more than
/// [`CONSOLIDATE_AT`]; returns the new snapshot's id, or `None` when there was nothing to
/// do.
pub fn consolidate_if_due(repo: &Repository) -> Result<Option<Id>> {
    if Catalog::load(repo)?.snapshots().len() <= CONSOLIDATE_AT {
        return Ok(None);
    }
    // A push with a credential that may not delete (append-only, as archiving hosts should
    // have) cannot remove what it merged; merging anyway would add a snapshot holding
    // everything on every push. Its snapshots are merged by `cairn wal merge` (or a push)
    // with a credential that may delete.
    if let Err(e) = repo.require_deletes(FileType::Snapshot, "merging wal snapshots") {
        if e.kind() == crate::error::ErrorKind::PermissionDenied {
            tracing::info!("not merging wal snapshots: this credential may not delete");
            return Ok(None);
        }
        return Err(e);
    }
    consolidate(repo).map(Some)
}

/// Merges every `wal` snapshot into one, then removes them.
///
/// The lease comes before the catalog is read: the merged snapshot reuses the tree blobs of
/// the snapshots it reads, and a prune protects the blobs a writer may use only when the
/// writer's lease existed before it read them (see lease.rs). Read first, a snapshot that
/// WAL retention removed meanwhile could lend the merge trees a prune then deletes.
pub fn consolidate(repo: &Repository) -> Result<Id> {
    let lease = LeaseGuard::acquire(repo, "wal")?;
    let catalog = &Catalog::load(repo)?;
    let system_id = catalog.system_id()?;
    let mut timelines: BTreeMap<Vec<u8>, Timeline> = BTreeMap::new();
    let (mut first, mut last): (Option<String>, Option<String>) = (None, None);
    // Oldest first, so that a name held twice ends with the newest holder's node.
    for (id, snap) in catalog.snapshots() {
        if let Some(pg) = &snap.pg {
            for name in pg.wal_first.iter().chain(pg.wal_last.iter()) {
                if first.as_ref().is_none_or(|f| name < f) {
                    first = Some(name.clone());
                }
                if last.as_ref().is_none_or(|l| name > l) {
                    last = Some(name.clone());
                }
            }
        }
        let root = repo
            .load_tree(&snap.tree)
            .map_err(|e| e.context(format!("wal snapshot {}", id.short())))?;
        for tl in root.nodes {
            let (Some(sub), NodeKind::Dir) = (tl.subtree, tl.kind) else {
                continue;
            };
            let entry = timelines.entry(tl.name.clone()).or_default();
            for node in repo.load_tree(&sub)?.nodes {
                match node.kind {
                    NodeKind::Dir => entry.logs.entry(node.name.clone()).or_default().push(node),
                    _ => {
                        entry.history.insert(node.name.clone(), node);
                    }
                }
            }
        }
    }

    let mut writer = BlobWriter::unindexed(repo, repo.config().compression);
    let mut summary = Summary::default();
    let mut root_nodes = Vec::new();
    for (tl_name, tl) in timelines {
        let mut nodes: Vec<Node> = tl.history.into_values().collect();
        summary.files += nodes.len() as u64;
        summary.total_bytes += nodes.iter().map(|n| n.size).sum::<u64>();
        for (log_name, mut holders) in tl.logs {
            let folder = if holders.len() == 1 {
                // Held by one snapshot only: its tree is reused as it is.
                let only = holders
                    .pop()
                    .ok_or_else(|| Error::corrupt("empty log folder"))?;
                let sub = only
                    .subtree
                    .ok_or_else(|| Error::corrupt("log folder without a tree"))?;
                let files = repo.load_tree(&sub)?.nodes;
                summary.files += files.len() as u64;
                summary.total_bytes += files.iter().map(|n| n.size).sum::<u64>();
                only
            } else {
                let mut files: BTreeMap<Vec<u8>, Node> = BTreeMap::new();
                for holder in holders {
                    let sub = holder
                        .subtree
                        .ok_or_else(|| Error::corrupt("log folder without a tree"))?;
                    for f in repo.load_tree(&sub)?.nodes {
                        files.insert(f.name.clone(), f);
                    }
                }
                summary.files += files.len() as u64;
                summary.total_bytes += files.values().map(|n| n.size).sum::<u64>();
                let tree = Tree {
                    nodes: files.into_values().collect(),
                };
                let id = writer.add_plain(BlobKind::Tree, &to_cbor(&tree)?)?;
                dir_node(&String::from_utf8_lossy(&log_name), id)
            };
            summary.dirs += 1;
            nodes.push(folder);
        }
        let mut tree = Tree { nodes };
        tree.canonicalize()?;
        let id = writer.add_plain(BlobKind::Tree, &to_cbor(&tree)?)?;
        summary.dirs += 1;
        root_nodes.push(dir_node(&String::from_utf8_lossy(&tl_name), id));
    }
    let root = writer.add_plain(BlobKind::Tree, &to_cbor(&Tree { nodes: root_nodes })?)?;
    let stats = writer.finish()?;
    summary.blobs_added = stats.blobs_added;
    summary.bytes_added = stats.bytes_added;
    summary.bytes_stored = stats.bytes_stored;

    let timeline = last
        .as_deref()
        .and_then(|n| n.get(0..8))
        .and_then(|t| u32::from_str_radix(t, 16).ok())
        .unwrap_or(0);
    let snapshot = wal_snapshot(repo, root, summary, system_id, timeline, (first, last));
    // The merge reuses tree blobs a prune may have condemned since they were written (a
    // snapshot that retention rewrote held them): they are copied out of condemned packs,
    // or the merge fails, before the snapshot that needs them exists (commit.rs).
    let copied = ensure_complete(repo, &root, repo.config().compression)?;
    if copied > 0 {
        tracing::info!("copied {copied} blobs out of packs a prune had condemned");
    }
    let id = repo.save_snapshot(&snapshot)?;
    // Removal is idempotent: another push merging at the same moment may have removed some.
    let merged: Vec<Id> = catalog.snapshots().iter().map(|(id, _)| *id).collect();
    for old in &merged {
        repo.store()
            .remove(crate::backend::FileType::Snapshot, &old.to_hex())?;
    }
    repo.cache().update_snapshots(&[], &merged)?;
    if let Err(e) = lease.release() {
        tracing::warn!("cannot remove the lease (it expires by itself): {e}");
    }
    tracing::info!("merged {} wal snapshots into {}", merged.len(), id.short());
    Ok(id)
}
