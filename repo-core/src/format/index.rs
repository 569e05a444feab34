//! Index files: which blob lives where. Written after the packs they describe and before any
//! snapshot that needs them. An index file may name older index files it supersedes (written
//! by compaction); readers then ignore the superseded ones once the new one is present.

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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexPack {
    pub id: Id,
    /// Stored size of the pack, checked by `check`.
    pub size: u64,
    pub blobs: Vec<PackEntry>,
}

impl IndexFile {
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }
}
