//! Changing which snapshots exist: forgetting them and editing their tags.
//!
//! Snapshots are immutable objects named by their hash, so an edit writes a new snapshot
//! (recording the one it replaces in `original`) and then removes the old one. A crash in
//! between leaves both, never neither.

use crate::backend::FileType;
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::Snapshot;
use crate::id::Id;
use crate::repository::Repository;
use crate::retention::HOLD_TAG;

/// Removes snapshots; protected ones (tag `hold`) are refused. Their data stays until the
/// next prune.
pub fn forget(repo: &Repository, ids: &[Id]) -> Result<()> {
    if !ids.is_empty() {
        repo.require_deletes(FileType::Snapshot, "forget")?;
    }
    for id in ids {
        let snap = repo.read_snapshot(id)?;
        if snap.tags.iter().any(|t| t == HOLD_TAG) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "snapshot {} is protected (tag {HOLD_TAG:?}); remove the tag first",
                    id.short()
                ),
            ));
        }
    }
    for id in ids {
        repo.store().remove(FileType::Snapshot, &id.to_hex())?;
    }
    repo.cache().update_snapshots(&[], ids)?;
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct TagEdit {
    pub add: Vec<String>,
    pub remove: Vec<String>,
    /// Replaces all tags when `Some`.
    pub set: Option<Vec<String>>,
}

impl TagEdit {
    fn apply(&self, tags: &[String]) -> Vec<String> {
        let mut out: Vec<String> = match &self.set {
            Some(s) => s.clone(),
            None => tags.to_vec(),
        };
        for t in &self.add {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out.retain(|t| !self.remove.contains(t));
        out
    }
}

/// Applies a tag edit to snapshots; returns (old id, new id) for the ones that changed.
pub fn retag(repo: &Repository, ids: &[Id], edit: &TagEdit) -> Result<Vec<(Id, Id)>> {
    let mut changed = Vec::new();
    for id in ids {
        let snap = repo.read_snapshot(id)?;
        let tags = edit.apply(&snap.tags);
        if tags == snap.tags {
            continue;
        }
        let new = Snapshot {
            tags,
            original: Some(snap.original.unwrap_or(*id)),
            ..snap
        };
        let new_id = repo.save_snapshot(&new)?;
        repo.store().remove(FileType::Snapshot, &id.to_hex())?;
        repo.cache().update_snapshots(&[], &[*id])?;
        changed.push((*id, new_id));
    }
    Ok(changed)
}
