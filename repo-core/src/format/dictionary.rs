//! Dictionary compression: payload format 2.
//!
//! Blobs of a few kilobytes that share a structure (PostgreSQL's 8 KiB pages: the same page
//! header, line pointers and tuple layouts in every page of a table) compress poorly one by
//! one, because each zstd frame starts without any history. A zstd dictionary trained on
//! samples of such blobs supplies that history: measured on pgbench data and index pages, the
//! pages changed between two base backups took 681 bytes each against 1,111 without one
//! (docs/performance.md).
//!
//! A dictionary is itself a blob, of kind [`BlobKind::Dict`](crate::id::BlobKind), stored and
//! read like any other. A payload compressed with it is
//!
//! ```text
//! 2 || dictionary blob id (32 bytes) || zstd frame (with its content size)
//! ```
//!
//! so a reader needs nothing but the blob and the index to find the dictionary. A dictionary's
//! own payload is never format 2: [`NoDictionaries`] answers any such reference with an error.
//! Dictionary blobs are never collected by prune (docs/design.md, section 13), because the
//! blobs compressed with them name them and no snapshot needs to.

use std::cell::RefCell;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::id::Id;

/// The payload format byte of a dictionary-compressed blob.
pub const FORMAT: u8 = 2;

/// The size dictionaries are trained to. Measured on PostgreSQL pages, 32 KiB and 112 KiB
/// dictionaries compressed the same; 64 KiB leaves room for more varied data.
pub const TRAINED_SIZE: usize = 64 << 10;

/// The lowest zstd level used with a dictionary. At level 1 zstd's fastest strategy makes
/// little use of a dictionary: changed B-tree index pages took 2,153 bytes each with one and
/// 2,090 without, against 1,336 with one at level 3 (pgbench, scale 20).
pub const MIN_LEVEL: i32 = 3;

/// A zstd dictionary and the id of the blob that holds it.
#[derive(Debug)]
pub struct Dictionary {
    id: Id,
    bytes: Vec<u8>,
}

impl Dictionary {
    pub fn new(id: Id, bytes: Vec<u8>) -> Dictionary {
        Dictionary { id, bytes }
    }

    pub fn id(&self) -> &Id {
        &self.id
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Trains a dictionary of at most [`TRAINED_SIZE`] bytes on `samples` (concatenated; the
    /// length of each in `sizes`). zstd refuses too few or too uniform samples: an error,
    /// after which the caller goes on without a dictionary.
    pub fn train(samples: &[u8], sizes: &[usize]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(TRAINED_SIZE);
        zstd::zstd_safe::train_from_buffer(&mut out, samples, sizes).map_err(|code| {
            Error::invalid(format!(
                "training a dictionary on {} samples: {}",
                sizes.len(),
                zstd::zstd_safe::get_error_name(code)
            ))
        })?;
        Ok(out)
    }
}

/// Where the dictionaries that payloads name are found (the repository, through its index).
pub trait DictionarySource {
    fn dictionary(&self, id: &Id) -> Result<Arc<Dictionary>>;
}

/// For payloads that may not name a dictionary: metadata, and dictionaries themselves.
pub struct NoDictionaries;

impl DictionarySource for NoDictionaries {
    fn dictionary(&self, id: &Id) -> Result<Arc<Dictionary>> {
        Err(Error::corrupt(format!(
            "names dictionary {id}, where no dictionary may be used"
        )))
    }
}

thread_local! {
    /// One compression context per thread with the last dictionary loaded into it: loading
    /// a dictionary costs more than compressing a page with it.
    static COMPRESSOR: RefCell<Option<(i32, Id, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    /// Decompression contexts with the last few dictionaries loaded: a restore after a
    /// dictionary was retrained meets pages of the old and the new one side by side, and
    /// loading a dictionary for each page would cost more than decoding it.
    static DECOMPRESSORS: RefCell<Vec<(Id, zstd::bulk::Decompressor<'static>)>> =
        const { RefCell::new(Vec::new()) };
}

/// Dictionaries each thread keeps loaded for decompression.
const DECOMPRESSORS_KEPT: usize = 4;

fn io_err(e: std::io::Error) -> Error {
    Error::io("zstd with a dictionary", e)
}

/// Appends `2 || dictionary id || frame` to `out` and returns true when that is smaller than
/// the plaintext; otherwise leaves `out` as it was and returns false.
pub(crate) fn compress_into(
    plaintext: &[u8],
    level: i32,
    dict: &Dictionary,
    out: &mut Vec<u8>,
) -> Result<bool> {
    let level = level.max(MIN_LEVEL);
    let start = out.len();
    out.push(FORMAT);
    out.extend_from_slice(&dict.id.0);
    out.reserve(zstd::zstd_safe::compress_bound(plaintext.len()));
    let n = COMPRESSOR
        .with(|cell| -> std::io::Result<usize> {
            let mut slot = cell.borrow_mut();
            let c = match &mut *slot {
                Some((l, id, c)) if *l == level && *id == dict.id => c,
                _ => {
                    let mut c = zstd::bulk::Compressor::with_dictionary(level, &dict.bytes)?;
                    c.include_contentsize(true)?;
                    c.include_dictid(false)?;
                    c.include_checksum(false)?;
                    &mut slot.insert((level, dict.id, c)).2
                }
            };
            let at = out.len();
            let mut cursor = std::io::Cursor::new(&mut *out);
            cursor.set_position(at as u64);
            c.compress_to_buffer(plaintext, &mut cursor)
        })
        .map_err(io_err)?;
    if 1 + 32 + n < plaintext.len() {
        return Ok(true);
    }
    out.truncate(start);
    Ok(false)
}

/// Decodes what follows the format byte of a format 2 payload (the dictionary id and a
/// frame) into `out`, with this thread's decompression context holding that dictionary
/// (loaded only when it is not one the thread keeps). `size_of` checks the frame's stated
/// size against `out` before anything is decoded; returns the bytes the frame held, which
/// must be that size.
pub(crate) fn decompress_into(
    rest: &[u8],
    out: &mut [u8],
    what: &dyn std::fmt::Display,
    size_of: impl Fn(&[u8]) -> Result<usize>,
    source: &dyn DictionarySource,
) -> Result<usize> {
    let (id, frame) = rest
        .split_at_checked(32)
        .ok_or_else(|| Error::corrupt(format!("{what}: dictionary payload too short")))?;
    let id =
        Id::from_slice(id).map_err(|_| Error::corrupt(format!("{what}: bad dictionary id")))?;
    let size = size_of(frame)?;
    // Asked of the source every time, also when this thread's context already holds the
    // dictionary: a source that allows none (metadata, dictionaries) must refuse.
    let dict = source
        .dictionary(&id)
        .map_err(|e| e.context(format!("{what}: its dictionary {id}")))?;
    let n = DECOMPRESSORS
        .with(|cell| -> std::io::Result<usize> {
            let mut held = cell.borrow_mut();
            // Least recently used last out: a hit moves to the back.
            match held.iter().position(|(have, _)| *have == id) {
                Some(at) => {
                    let d = held.remove(at);
                    held.push(d);
                }
                None => {
                    let d = zstd::bulk::Decompressor::with_dictionary(&dict.bytes)?;
                    if held.len() >= DECOMPRESSORS_KEPT {
                        held.remove(0);
                    }
                    held.push((id, d));
                }
            }
            let last = held.len() - 1;
            held[last].1.decompress_to_buffer(frame, out)
        })
        .map_err(|e| Error::corrupt(format!("{what}: zstd with dictionary {id}: {e}")))?;
    if n != size {
        return Err(Error::corrupt(format!(
            "{what}: zstd frame is shorter than it says"
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::format::{compress_with, decompress_blob, decompress_bounded};
    use std::collections::HashMap;

    /// Pages that look alike: each is made of words from one shared vocabulary of
    /// pseudo-random 48-byte words, in its own order, as tables' pages repeat their values.
    fn page(n: u32) -> Vec<u8> {
        let mut state = 0x2545_f491u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let words: Vec<Vec<u8>> = (0..96)
            .map(|_| (0..48).map(|_| next() as u8).collect())
            .collect();
        let mut pick = n.wrapping_mul(2_654_435_761) | 1;
        let mut p = Vec::with_capacity(8192);
        while p.len() < 8192 {
            pick ^= pick << 13;
            pick ^= pick >> 17;
            pick ^= pick << 5;
            p.extend_from_slice(&words[(pick % 96) as usize]);
            p.extend_from_slice(&n.to_le_bytes());
        }
        p.truncate(8192);
        p
    }

    struct Source(HashMap<Id, Arc<Dictionary>>);
    impl DictionarySource for Source {
        fn dictionary(&self, id: &Id) -> Result<Arc<Dictionary>> {
            self.0
                .get(id)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("dictionary {id}")))
        }
    }

    fn trained() -> Arc<Dictionary> {
        let samples: Vec<u8> = (0..400).flat_map(page).collect();
        let sizes = vec![8192; 400];
        let bytes = Dictionary::train(&samples, &sizes).unwrap();
        assert!(bytes.len() <= TRAINED_SIZE);
        Arc::new(Dictionary::new(Id([7; 32]), bytes))
    }

    #[test]
    fn a_dictionary_payload_round_trips_and_is_smaller() {
        let dict = trained();
        let source = Source(HashMap::from([(*dict.id(), dict.clone())]));
        let p = page(1000);
        let with = compress_with(&p, 3, Some(&dict)).unwrap();
        let without = compress_with(&p, 3, None).unwrap();
        assert_eq!(with[0], FORMAT);
        assert_eq!(&with[1..33], &dict.id().0);
        assert!(
            with.len() < without.len(),
            "{} vs {}",
            with.len(),
            without.len()
        );
        assert_eq!(decompress_blob(&with, 8192, &"t", &source).unwrap(), p);
    }

    /// Decoding into place works with a dictionary too, refuses a wrong length, and still
    /// asks the source each time: a payload where no dictionary may be used is refused even
    /// right after this thread decoded one with that dictionary. Six dictionaries in turn on
    /// one thread (more than it keeps loaded) all decode.
    #[test]
    fn dictionary_payloads_decode_into_place_and_only_where_allowed() {
        use crate::format::decompress_blob_into;
        let base = trained();
        let dicts: Vec<Arc<Dictionary>> = (0..6u8)
            .map(|n| Arc::new(Dictionary::new(Id([n + 1; 32]), base.bytes().to_vec())))
            .collect();
        let source = Source(dicts.iter().map(|d| (*d.id(), d.clone())).collect());
        for round in 0..2 {
            for (n, dict) in dicts.iter().enumerate() {
                let p = page(2000 + n as u32 + round);
                let with = compress_with(&p, 3, Some(dict)).unwrap();
                let mut out = vec![0u8; p.len()];
                decompress_blob_into(&with, &mut out, &"t", &source).unwrap();
                assert_eq!(out, p);
                let mut short = vec![0u8; p.len() - 1];
                let e = decompress_blob_into(&with, &mut short, &"blob x", &source).unwrap_err();
                assert!(e.to_string().contains("index entry says"), "{e}");
                let e =
                    decompress_blob_into(&with, &mut out, &"meta", &NoDictionaries).unwrap_err();
                assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{e}");
            }
        }
    }

    #[test]
    fn a_missing_dictionary_or_one_where_none_may_be_is_an_error() {
        let dict = trained();
        let with = compress_with(&page(3), 3, Some(&dict)).unwrap();
        let e = decompress_blob(&with, 8192, &"blob x", &Source(HashMap::new())).unwrap_err();
        assert!(e.to_string().contains("its dictionary"), "{e}");
        let e = decompress_bounded(&with, 8192, "meta").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{e}");
        // The frame's claimed size is bounded before the dictionary is even looked up.
        let e = decompress_blob(&with, 100, &"blob x", &Source(HashMap::new())).unwrap_err();
        assert!(e.to_string().contains("more than the 100 allowed"), "{e}");
        // A truncated payload is refused, not read past.
        let e = decompress_blob(&with[..20], 8192, &"blob x", &Source(HashMap::new())).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt, "{e}");
    }

    #[test]
    fn the_wrong_dictionary_does_not_give_the_plaintext() {
        let dict = trained();
        let p = page(5);
        let with = compress_with(&p, 3, Some(&dict)).unwrap();
        let other = Arc::new(Dictionary::new(*dict.id(), page(77)));
        let source = Source(HashMap::from([(*dict.id(), other)]));
        match decompress_blob(&with, 8192, &"t", &source) {
            Err(e) => assert_eq!(e.kind(), crate::ErrorKind::Corrupt),
            Ok(out) => assert_ne!(out, p),
        }
    }
}
