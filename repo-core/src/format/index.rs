//! Index files: which blob lives where. Written after the packs they describe and before any
//! snapshot that needs them.
//!
//! Two kinds of records share this object type:
//! - ordinary index files list packs (`packs`); a compacted one also names the index files
//!   whose entries it carries (`supersedes`), and readers then ignore those;
//! - condemned records (`condemned`, with no packs) are written by prune's mark phase: they
//!   name packs that the next sweep deletes once the writers that were running have ended.
//!   Readers treat blobs in condemned packs as absent, so no writer deduplicates against them.

use serde::{Deserialize, Serialize};

use crate::id::Id;

use super::pack::PackEntry;

pub const AAD: &[u8] = b"cairn:index";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexFile {
    pub version: u32,
    pub packs: Vec<IndexPack>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condemned: Option<Condemned>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexPack {
    pub id: Id,
    /// Stored size of the pack, checked by `check`.
    pub size: u64,
    pub blobs: Vec<PackEntry>,
}

/// What a prune's mark phase decided to delete, and whom the sweep must wait for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Condemned {
    /// When the mark phase ran (RFC 3339).
    pub time: String,
    /// Packs to delete unless a snapshot references them again at sweep time.
    pub packs: Vec<Id>,
    /// Index files superseded by the compacted index, deleted after the packs.
    pub index_files: Vec<Id>,
    /// Names of the leases that were live when the record was written.
    pub leases: Vec<String>,
}

impl IndexFile {
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }

    /// Whether reading this file can change the meaning of other index files.
    pub fn is_structural(&self) -> bool {
        !self.supersedes.is_empty() || self.condemned.is_some()
    }
}
