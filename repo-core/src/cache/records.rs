//! What the cache stores about blobs and files, and how a location is encoded.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::format::index::IndexFile;
use crate::format::pack::PackEntry;
use crate::id::{BlobKind, Id};

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub kind: BlobKind,
    pub pack: Id,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
}

/// Bytes of an encoded [`BlobLocation`].
pub const LOCATION_LEN: usize = 49;

impl BlobLocation {
    /// Memory a reader holds for the blob at its peak: its sealed bytes while reading, its
    /// plaintext after, whichever is larger.
    pub fn held(&self) -> u64 {
        u64::from(self.length.max(self.raw_length))
    }

    pub(crate) fn encode(&self) -> [u8; LOCATION_LEN] {
        let mut b = [0u8; LOCATION_LEN];
        b[0] = self.kind.as_u8();
        b[1..33].copy_from_slice(&self.pack.0);
        b[33..41].copy_from_slice(&self.offset.to_le_bytes());
        b[41..45].copy_from_slice(&self.length.to_le_bytes());
        b[45..49].copy_from_slice(&self.raw_length.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != LOCATION_LEN {
            return Err(Error::new(ErrorKind::Cache, "cache: bad blob record"));
        }
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[33..41]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&b[41..45]);
        let mut raw = [0u8; 4];
        raw.copy_from_slice(&b[45..49]);
        Ok(BlobLocation {
            kind: BlobKind::from_u8(b[0])?,
            pack: Id::from_slice(&b[1..33])?,
            offset: u64::from_le_bytes(off),
            length: u32::from_le_bytes(len),
            raw_length: u32::from_le_bytes(raw),
        })
    }

    pub fn from_entry(pack: Id, e: &PackEntry) -> Self {
        BlobLocation {
            kind: e.kind,
            pack,
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        }
    }
}

/// Which blob table an entry of a bulk load goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobTable {
    /// Blobs that writers may deduplicate against: listed by an index file in force, in a
    /// pack that no present condemned record names.
    Index,
    /// Blobs that readers may still read but writers must not reuse: in condemned packs, or
    /// listed only by superseded index files (see `Repository::load_index`).
    ReadableOnly,
}

/// Every blob an index file lists, with its location.
pub fn index_locations(index: &IndexFile) -> Vec<(Id, BlobLocation)> {
    index
        .packs
        .iter()
        .flat_map(|p| {
            p.blobs
                .iter()
                .map(move |e| (e.id, BlobLocation::from_entry(p.id, e)))
        })
        .collect()
}

/// What the files cache remembers of a file it saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub inode: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub size: u64,
    #[serde(default)]
    pub content: Vec<Id>,
    #[serde(default)]
    pub content_lists: Vec<Id>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobTotals {
    pub blobs: u64,
    pub data_blobs: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}
