//! Filling packs: the one pack-writing policy, shared by [`crate::writer::BlobWriter`] and
//! prune's repack, and the one way a finished pack is stored.
//!
//! Policy (docs/design.md, "Packs"): a pack holds blobs of one kind; a data pack is closed
//! once it holds `pack_size` bytes (the config's), a tree pack once it holds a quarter of
//! that, so tree packs stay small enough to be cached and read without touching data.
//! Dictionary packs (rare: one dictionary per PostgreSQL cluster) follow the tree rule.

use bytes::Bytes;

use crate::backend::{FileType, Store};
use crate::crypto::Keys;
use crate::error::Result;
use crate::format::blob::SealedBlob;
use crate::format::index::IndexPack;
use crate::format::pack::{FinishedPack, PackBuilder};
use crate::id::BlobKind;

/// Blobs being gathered into packs, one open pack per kind.
pub(crate) struct Packer {
    keys: Keys,
    pack_size: usize,
    data: PackBuilder,
    tree: PackBuilder,
    dict: PackBuilder,
    /// A buffer of an uploaded data pack, for the next data pack.
    spare: Option<Vec<u8>>,
}

impl Packer {
    pub(crate) fn new(keys: Keys, pack_size: u64) -> Self {
        // A config's pack size that does not fit memory cannot be filled anyway.
        let pack_size = usize::try_from(pack_size).unwrap_or(usize::MAX);
        Packer {
            data: Self::builder(BlobKind::Data, pack_size),
            tree: Self::builder(BlobKind::Tree, pack_size),
            dict: Self::builder(BlobKind::Dict, pack_size),
            keys,
            pack_size,
            spare: None,
        }
    }

    /// The bytes at which a pack of `kind` is closed.
    pub(crate) fn limit(kind: BlobKind, pack_size: usize) -> usize {
        match kind {
            BlobKind::Data => pack_size,
            BlobKind::Tree | BlobKind::Dict => pack_size / 4,
        }
    }

    /// A new empty pack of `kind`. A data pack is given room for the blob that takes it past
    /// its limit, so its buffer is rarely grown; tree packs start small.
    fn builder(kind: BlobKind, pack_size: usize) -> PackBuilder {
        match kind {
            BlobKind::Data => {
                PackBuilder::new(kind, pack_size.saturating_add(pack_size / 8).min(1 << 30))
            }
            BlobKind::Tree | BlobKind::Dict => PackBuilder::new(kind, 1 << 20),
        }
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Offers the buffer of an uploaded data pack for the next data pack.
    pub(crate) fn recycle(&mut self, buffer: Vec<u8>) {
        self.spare = Some(buffer);
    }

    /// Adds a sealed blob to the open pack of its kind; returns whether that pack is now
    /// full, in which case the caller flushes it (after offering a spare buffer, if any).
    pub(crate) fn add(&mut self, blob: &SealedBlob) -> Result<bool> {
        let limit = Self::limit(blob.kind, self.pack_size);
        let builder = self.open_pack(blob.kind);
        builder.add(blob)?;
        Ok(builder.len() >= limit)
    }

    /// Finishes the open pack of `kind`, if it holds anything.
    pub(crate) fn flush(&mut self, kind: BlobKind) -> Result<Option<FinishedPack>> {
        if self.open_pack(kind).is_empty() {
            return Ok(None);
        }
        // Only a data pack takes the spare buffer; a tree flush leaves it for the next one.
        let spare = match kind {
            BlobKind::Data => self.spare.take(),
            BlobKind::Tree | BlobKind::Dict => None,
        };
        let next = match spare {
            Some(buffer) => PackBuilder::with_buffer(kind, buffer),
            None => Self::builder(kind, self.pack_size),
        };
        let full = std::mem::replace(self.open_pack(kind), next);
        full.finish(&self.keys).map(Some)
    }

    /// Finishes every open pack that holds anything (data first).
    pub(crate) fn flush_all(&mut self) -> Result<Vec<FinishedPack>> {
        let mut out = Vec::new();
        for kind in [BlobKind::Data, BlobKind::Tree, BlobKind::Dict] {
            out.extend(self.flush(kind)?);
        }
        Ok(out)
    }

    fn open_pack(&mut self, kind: BlobKind) -> &mut PackBuilder {
        match kind {
            BlobKind::Data => &mut self.data,
            BlobKind::Tree => &mut self.tree,
            BlobKind::Dict => &mut self.dict,
        }
    }
}

/// Stores a finished pack under its name. Returns its index entry, to be listed by an index
/// file only now that the pack is durable, and its bytes (a buffer the caller may reuse once
/// the store has let go of it).
pub(crate) fn store_pack(store: &Store, pack: FinishedPack) -> Result<(IndexPack, Bytes)> {
    let size = pack.bytes.len() as u64;
    let bytes = Bytes::from(pack.bytes);
    store.put(FileType::Pack, &pack.id.to_hex(), bytes.clone())?;
    Ok((
        IndexPack {
            id: pack.id,
            size,
            blobs: pack.entries,
        },
        bytes,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::MasterKey;
    use crate::format::blob;

    /// Tree packs close at a quarter of the pack size, data packs at the pack size: the one
    /// policy for the writer and for prune's repack.
    #[test]
    fn tree_packs_close_at_a_quarter_of_the_pack_size() {
        let keys = Keys::derive(&MasterKey::generate().unwrap()).unwrap();
        let pack_size = 64 << 10;
        let mut packer = Packer::new(keys.clone(), pack_size);
        let mut filled = |kind: BlobKind| -> usize {
            let mut n = 0u32;
            loop {
                n += 1;
                let plain: Vec<u8> = (0..4096u32)
                    .map(|i| (i.wrapping_mul(2654435761) ^ n.wrapping_mul(40503)) as u8)
                    .collect();
                let id = keys.blob_id(&plain);
                let sealed = blob::seal(&keys, kind, id, &plain, 0).unwrap();
                if packer.add(&sealed).unwrap() {
                    let pack = packer.flush(kind).unwrap().unwrap();
                    assert_eq!(pack.kind, kind);
                    return pack.entries.iter().map(|e| e.length as usize).sum();
                }
            }
        };
        let tree = filled(BlobKind::Tree);
        let data = filled(BlobKind::Data);
        let quarter = (pack_size / 4) as usize;
        assert!((quarter..quarter + 5000).contains(&tree), "{tree}");
        assert!(
            (pack_size as usize..pack_size as usize + 5000).contains(&data),
            "{data}"
        );
        assert!(packer.flush_all().unwrap().is_empty());
    }
}
