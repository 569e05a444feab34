//! Packs: many sealed blobs in one object.
//!
//! ```text
//! blob 0 | blob 1 | ... | blob n-1 | sealed header | header length (u32 LE)
//! ```
//! The header is a metadata object (AAD `cairn:pack-header`) holding one [`PackEntry`] per
//! blob. A pack alone is therefore enough to rebuild its index entries. A pack holds blobs of
//! one kind only (data packs and tree packs are separate) so that tree packs can be cached and
//! read without touching data.

use serde::{Deserialize, Serialize};

use crate::crypto::Keys;
use crate::error::{Error, Result};
use crate::format::{max_plaintext, max_sealed, open_meta, seal_meta};
use crate::id::{BlobKind, Id};

use super::blob::SealedBlob;

pub(crate) const HEADER_AAD: &[u8] = b"cairn:pack-header";

/// Where one blob lives inside a pack. Decoding (from a pack header or an index file)
/// refuses an entry whose end overflows or whose lengths exceed what a blob of its kind may
/// hold (see [`PackEntry::validate`]), so no reader ever computes with such values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawPackEntry")]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: Id,
    pub offset: u64,
    /// Stored (sealed) length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

/// A pack entry as decoded, before [`PackEntry::validate`].
#[derive(Deserialize)]
struct RawPackEntry {
    kind: BlobKind,
    id: Id,
    offset: u64,
    length: u32,
    raw_length: u32,
}

impl TryFrom<RawPackEntry> for PackEntry {
    type Error = String;
    fn try_from(r: RawPackEntry) -> std::result::Result<Self, String> {
        let e = PackEntry {
            kind: r.kind,
            id: r.id,
            offset: r.offset,
            length: r.length,
            raw_length: r.raw_length,
        };
        e.validate().map_err(|e| e.to_string())?;
        Ok(e)
    }
}

impl PackEntry {
    /// The end of the blob in its pack, if it does not overflow.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(u64::from(self.length))
    }

    /// Checks what an entry claims against the format's bounds: its end does not overflow,
    /// its plaintext is at most [`max_plaintext`] of its kind, and its sealed length fits
    /// an envelope around at most that plaintext.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| {
            Err(Error::corrupt(format!(
                "pack entry of blob {}: {why}",
                self.id
            )))
        };
        if self.end().is_none() {
            return bad(format!(
                "offset {} plus length {} overflows",
                self.offset, self.length
            ));
        }
        let raw = u64::from(self.raw_length);
        if raw > max_plaintext(self.kind) {
            return bad(format!(
                "plaintext of {raw} bytes is more than a {:?} blob may hold",
                self.kind
            ));
        }
        let len = u64::from(self.length);
        if len > max_sealed(raw) || len < max_sealed(0) {
            return bad(format!(
                "stored length {len} does not fit a blob of {raw} bytes"
            ));
        }
        Ok(())
    }
}

/// The stored bytes of `entry` inside the whole `pack`, with checked arithmetic: an entry
/// that lies outside the pack is an error, never a panic.
pub fn entry_bytes<'p>(pack: &'p [u8], entry: &PackEntry) -> Result<&'p [u8]> {
    let range = entry.end().and_then(|end| {
        let start = usize::try_from(entry.offset).ok()?;
        let end = usize::try_from(end).ok()?;
        pack.get(start..end)
    });
    range.ok_or_else(|| {
        Error::corrupt(format!(
            "blob {} at offset {} (length {}) lies outside the pack of {} bytes",
            entry.id,
            entry.offset,
            entry.length,
            pack.len()
        ))
    })
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) blobs: Vec<PackEntry>,
}

/// Accumulates sealed blobs in memory until the pack is big enough to upload.
#[derive(Debug)]
pub struct PackBuilder {
    kind: BlobKind,
    bytes: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A finished pack: its name, stored bytes and entries.
#[derive(Debug)]
pub struct FinishedPack {
    pub id: Id,
    pub kind: BlobKind,
    pub bytes: Vec<u8>,
    pub entries: Vec<PackEntry>,
}

impl PackBuilder {
    pub fn new(kind: BlobKind, capacity: usize) -> Self {
        PackBuilder {
            kind,
            bytes: Vec::with_capacity(capacity),
            entries: Vec::new(),
        }
    }

    /// A builder that fills `buffer` (emptied first), typically one an earlier pack left:
    /// reusing it spares the page faults of first touching fresh memory.
    pub fn with_buffer(kind: BlobKind, mut buffer: Vec<u8>) -> Self {
        buffer.clear();
        PackBuilder {
            kind,
            bytes: buffer,
            entries: Vec::new(),
        }
    }

    pub fn kind(&self) -> BlobKind {
        self.kind
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn add(&mut self, blob: &SealedBlob) -> Result<()> {
        let length = u32::try_from(blob.bytes.len())
            .map_err(|_| Error::invalid("blob larger than 4 GiB"))?;
        self.entries.push(PackEntry {
            kind: blob.kind,
            id: blob.id,
            offset: self.bytes.len() as u64,
            length,
            raw_length: blob.raw_length,
        });
        self.bytes.extend_from_slice(&blob.bytes);
        Ok(())
    }

    pub fn finish(mut self, keys: &Keys) -> Result<FinishedPack> {
        let header = seal_meta(
            keys,
            HEADER_AAD,
            &Header {
                version: 1,
                blobs: self.entries.clone(),
            },
        )?;
        let len = u32::try_from(header.len())
            .map_err(|_| Error::invalid("pack header larger than 4 GiB"))?;
        self.bytes.extend_from_slice(&header);
        self.bytes.extend_from_slice(&len.to_le_bytes());
        Ok(FinishedPack {
            id: Id::of_bytes(&self.bytes),
            kind: self.kind,
            bytes: self.bytes,
            entries: self.entries,
        })
    }
}

/// Decodes a pack header given the pack's tail (at least header + 4 bytes) and total size.
/// Returns `Err(needed)` through [`HeaderRead::NeedMore`] when the tail is too short.
pub enum HeaderRead {
    Done(Vec<PackEntry>),
    NeedMore(u64),
}

pub fn parse_header(keys: &Keys, pack: &Id, pack_size: u64, tail: &[u8]) -> Result<HeaderRead> {
    let what = format!("pack {pack}");
    if tail.len() < 4 || pack_size < 4 {
        return Err(Error::corrupt(format!(
            "{what}: too short to hold a header ({pack_size} bytes)"
        )));
    }
    let mut len4 = [0u8; 4];
    len4.copy_from_slice(&tail[tail.len() - 4..]);
    let hlen = u32::from_le_bytes(len4) as u64;
    if hlen + 4 > pack_size {
        return Err(Error::corrupt(format!(
            "{what}: header length {hlen} exceeds the pack size {pack_size} (truncated?)"
        )));
    }
    if (tail.len() as u64) < hlen + 4 {
        return Ok(HeaderRead::NeedMore(hlen + 4));
    }
    let start = tail.len() - 4 - hlen as usize;
    let header: Header = open_meta(
        keys,
        HEADER_AAD,
        &tail[start..tail.len() - 4],
        &format!("{what} header"),
    )?;
    let data_end = pack_size - hlen - 4;
    for e in &header.blobs {
        if e.end().is_none_or(|end| end > data_end) {
            return Err(Error::corrupt(format!(
                "{what}: blob {} extends past the blob area",
                e.id
            )));
        }
    }
    Ok(HeaderRead::Done(header.blobs))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::crypto::MasterKey;
    use crate::format::{from_cbor, to_cbor, MAX_DATA_BLOB as MAX_DATA, MAX_TREE_BLOB};

    fn entry(kind: BlobKind, offset: u64, length: u32, raw_length: u32) -> PackEntry {
        PackEntry {
            kind,
            id: Id([1; 32]),
            offset,
            length,
            raw_length,
        }
    }

    /// Decoding refuses entries a writer never makes, wherever they are stored.
    #[test]
    fn pack_entries_that_overflow_or_claim_more_than_a_blob_may_hold_are_refused() {
        let decodes = |e: PackEntry| from_cbor::<PackEntry>(&to_cbor(&e).unwrap(), "e").is_ok();
        assert!(decodes(entry(BlobKind::Data, 10, 100, 59)));
        assert!(decodes(entry(BlobKind::Tree, u64::MAX - 100, 100, 59)));
        assert!(!decodes(entry(BlobKind::Data, u64::MAX - 10, 100, 59)));
        assert!(
            !decodes(entry(BlobKind::Data, 0, 40, 0)),
            "shorter than an envelope"
        );
        assert!(
            !decodes(entry(BlobKind::Data, 0, 1000, 10)),
            "longer than its plaintext allows"
        );
        let over = (MAX_DATA + 1) as u32;
        assert!(!decodes(entry(BlobKind::Data, 0, over + 41, over)));
        let tree_over = (MAX_TREE_BLOB + 1) as u32;
        assert!(!decodes(entry(
            BlobKind::Tree,
            0,
            tree_over + 41,
            tree_over
        )));
    }
    /// A header entry past the blob area, or overflowing, is an error, never a panic; and
    /// `entry_bytes` never slices outside the pack.
    #[test]
    fn parse_header_and_entry_bytes_check_every_range() {
        let keys = Keys::derive(&MasterKey::from_bytes([1; 32])).unwrap();
        let pack_with = |blobs: Vec<PackEntry>| {
            let header = seal_meta(&keys, HEADER_AAD, &Header { version: 1, blobs }).unwrap();
            let mut pack = vec![0u8; 100];
            pack.extend_from_slice(&header);
            pack.extend_from_slice(&(header.len() as u32).to_le_bytes());
            pack
        };
        let id = Id([2; 32]);
        let ok = pack_with(vec![entry(BlobKind::Data, 0, 100, 59)]);
        match parse_header(&keys, &id, ok.len() as u64, &ok).unwrap() {
            HeaderRead::Done(e) => assert_eq!(entry_bytes(&ok, &e[0]).unwrap().len(), 100),
            HeaderRead::NeedMore(_) => panic!("whole pack given"),
        }
        let past = pack_with(vec![entry(BlobKind::Data, 50, 100, 59)]);
        assert!(parse_header(&keys, &id, past.len() as u64, &past).is_err());
        assert!(entry_bytes(&[0u8; 10], &entry(BlobKind::Data, 5, 41, 0)).is_err());
        assert!(entry_bytes(&[0u8; 10], &entry(BlobKind::Data, u64::MAX, 41, 0)).is_err());
        // A header length larger than the pack.
        let mut short = ok.clone();
        let n = short.len();
        short[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_header(&keys, &id, n as u64, &short).is_err());
    }
}
