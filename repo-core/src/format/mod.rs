//! Serialization types and their byte layouts. Nothing here does I/O.
//!
//! Metadata objects (config, index files, snapshots, pack headers, tree blobs) are CBOR with
//! named fields, so that fields can be added later without breaking old readers; ids are CBOR
//! byte strings. Before sealing, a payload gets one format byte: `0` = stored as is, `1` =
//! zstd frame (with its content size), `2` = zstd frame compressed with a dictionary (data
//! blobs only, see [`dictionary`]). See docs/design.md for the full layouts.

pub mod blob;
pub mod config;
pub mod dictionary;
pub mod index;
pub mod pack;
pub mod snapshot;
pub mod tree;

#[cfg(test)]
mod kat;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crypto::Keys;
use crate::error::{Error, ErrorKind, Result};
use crate::id::BlobKind;
use dictionary::{Dictionary, DictionarySource, NoDictionaries};

/// Upper bound on the decompressed payload of a metadata object (config, index file,
/// snapshot, pack header, lease); protects against a forged frame size.
pub const MAX_PAYLOAD: u64 = 1 << 30;

/// Upper bound on a data blob's plaintext in any repository: the largest chunk FastCDC can
/// be configured to cut. A repository's own bound is its chunker's `max`.
pub const MAX_DATA_BLOB: u64 = 16 << 20;

/// Upper bound on a tree blob's plaintext (a directory listing or a content list). Writers
/// refuse to store a larger tree; readers refuse to allocate for one.
pub const MAX_TREE_BLOB: u64 = 256 << 20;

/// Upper bound on a dictionary blob's plaintext (zstd dictionaries are trained to 64 KiB).
pub const MAX_DICT_BLOB: u64 = 1 << 20;

/// The most plaintext a blob of `kind` may hold in any repository.
pub fn max_plaintext(kind: BlobKind) -> u64 {
    match kind {
        BlobKind::Data => MAX_DATA_BLOB,
        BlobKind::Tree => MAX_TREE_BLOB,
        BlobKind::Dict => MAX_DICT_BLOB,
    }
}

/// The most bytes a sealed blob of at most `raw` plaintext bytes occupies: a writer stores
/// the raw form when zstd would not make it smaller, so the payload is at most the format
/// byte plus the plaintext.
pub fn max_sealed(raw: u64) -> u64 {
    raw.saturating_add(1 + crate::crypto::OVERHEAD as u64)
}

pub fn to_cbor<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out)
        .map_err(|e| Error::new(ErrorKind::Other, format!("CBOR encoding: {e}")))?;
    Ok(out)
}

pub fn from_cbor<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    ciborium::from_reader(bytes).map_err(|e| Error::corrupt(format!("{what}: cannot decode: {e}")))
}

thread_local! {
    /// zstd contexts per thread, one per level in use, kept between blobs: creating a
    /// context costs more than compressing a small blob with it.
    static COMPRESSORS: std::cell::RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

thread_local! {
    /// Likewise one decompression context per thread.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Data blobs of at most this many bytes are compressed twice: at the level asked for and
/// at [`FAST_LEVEL`] (see [`compress_payload`]).
pub const SMALL_BLOB: usize = 16 << 10;
/// A negative zstd level: literals are stored as they are, not Huffman-coded. Decoding
/// such a frame builds no Huffman table, which for a small blob is much of its decoding
/// time: 8 KiB pages of a pgbench table decode at 2.8 GB/s instead of 1.35 GB/s.
pub const FAST_LEVEL: i32 = -1;
/// The fast frame of a small blob is kept when it is at most this many bytes larger than
/// the other (1.6% of an 8 KiB page). The same table's pages then grow by 70 bytes each on
/// average, while index pages, whose Huffman-coded literals save about 700 bytes a page,
/// keep them.
pub const FAST_SLACK: usize = 128;

fn zstd_into(plaintext: &[u8], level: i32, out: &mut Vec<u8>) -> std::io::Result<usize> {
    COMPRESSORS.with(|cell| {
        let mut held = cell.borrow_mut();
        let at = match held.iter().position(|(l, _)| *l == level) {
            Some(at) => at,
            None => {
                let mut c = zstd::bulk::Compressor::new(level)?;
                c.include_contentsize(true)?;
                // A writer uses its data level, the fast level and level 3 (trees and
                // metadata): room for all three, so none is rebuilt for every blob.
                if held.len() >= 3 {
                    held.remove(0);
                }
                held.push((level, c));
                held.len() - 1
            }
        };
        let c = &mut held[at].1;
        // The cursor makes zstd write after what `out` already holds, into its spare
        // capacity, without zero-filling it first.
        let start = out.len();
        let mut cursor = std::io::Cursor::new(out);
        cursor.set_position(start as u64);
        c.compress_to_buffer(plaintext, &mut cursor)
    })
}

/// Appends the format byte and the payload to `out`, compressing with zstd `level` when
/// that saves space. Level 0 stores as is.
pub fn compress_into(plaintext: &[u8], level: i32, out: &mut Vec<u8>) -> Result<()> {
    compress_into_with(plaintext, level, None, out)
}

/// Like [`compress_into`], with `dict` (format 2) when one is given.
pub fn compress_into_with(
    plaintext: &[u8],
    level: i32,
    dict: Option<&Dictionary>,
    out: &mut Vec<u8>,
) -> Result<()> {
    compress_payload(plaintext, level, dict, false, out)
}

/// Appends the format byte and the payload (see [`compress_into_with`]). With
/// `fast_small` (data blobs), a plaintext of at most [`SMALL_BLOB`] bytes compressed without a
/// dictionary keeps the [`FAST_LEVEL`] frame when that costs at most [`FAST_SLACK`] bytes more
/// (reading it then builds no Huffman table). Trees and metadata do not: they are read far
/// less often than they would grow.
pub(crate) fn compress_payload(
    plaintext: &[u8],
    level: i32,
    dict: Option<&Dictionary>,
    fast_small: bool,
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = out.len();
    if let (Some(dict), true) = (dict, level != 0 && plaintext.len() >= 64) {
        if dictionary::compress_into(plaintext, level, dict, out)? {
            return Ok(());
        }
    } else if level != 0 && plaintext.len() >= 64 {
        out.push(1u8);
        let bound = zstd::zstd_safe::compress_bound(plaintext.len());
        out.reserve(bound);
        let n = zstd_into(plaintext, level, out).map_err(|e| Error::io("zstd", e))?;
        // Incompressible data is stored raw: it restores faster and is no bigger.
        if n + 1 < plaintext.len() {
            if fast_small && plaintext.len() <= SMALL_BLOB && level > FAST_LEVEL {
                // The fast frame goes after the first and replaces it when it is kept.
                let first = out.len();
                out.reserve(bound);
                let m = zstd_into(plaintext, FAST_LEVEL, out).map_err(|e| Error::io("zstd", e))?;
                // Like any compressed payload it must be smaller than the plaintext: a
                // reader bounds a blob's stored length by its plaintext length.
                if m <= n.saturating_add(FAST_SLACK) && m + 1 < plaintext.len() {
                    out.copy_within(first..first + m, start + 1);
                    out.truncate(start + 1 + m);
                } else {
                    out.truncate(first);
                }
            }
            return Ok(());
        }
        out.truncate(start);
    }
    out.reserve(plaintext.len() + 1);
    out.push(0u8);
    out.extend_from_slice(plaintext);
    Ok(())
}

/// Adds the format byte, compressing with zstd `level` when that saves space. Level 0 stores
/// as is.
pub fn compress(plaintext: &[u8], level: i32) -> Result<Vec<u8>> {
    compress_with(plaintext, level, None)
}

/// Like [`compress`], with `dict` when one is given.
pub fn compress_with(plaintext: &[u8], level: i32, dict: Option<&Dictionary>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    compress_into_with(plaintext, level, dict, &mut out)?;
    Ok(out)
}

/// Reverses [`compress`], refusing payloads of more than [`MAX_PAYLOAD`] bytes.
pub fn decompress(payload: &[u8], what: &str) -> Result<Vec<u8>> {
    decompress_bounded(payload, MAX_PAYLOAD, what)
}

/// The content size a zstd frame's header claims, refused above `max` (before anything is
/// allocated for it).
fn frame_size(frame: &[u8], max: u64, what: &dyn std::fmt::Display) -> Result<usize> {
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size <= max => usize::try_from(size)
            .map_err(|_| Error::corrupt(format!("{what}: bad zstd frame header"))),
        Ok(Some(size)) => Err(Error::corrupt(format!(
            "{what}: zstd frame claims {size} bytes, more than the {max} allowed"
        ))),
        _ => Err(Error::corrupt(format!("{what}: bad zstd frame header"))),
    }
}

/// Reverses [`compress`], refusing a payload whose plaintext would exceed `max` bytes before
/// allocating anything for it (the zstd frame's content size is read from its header). A
/// payload that names a dictionary is refused: only data blobs may.
pub fn decompress_bounded(payload: &[u8], max: u64, what: &str) -> Result<Vec<u8>> {
    decompress_blob(payload, max, &what, &NoDictionaries)
}

/// Like [`decompress_bounded`], finding the dictionaries of format 2 payloads in `source`.
/// `what` names the payload in errors; it is formatted only when there is one (a restore
/// opens tens of thousands of blobs). The plaintext's size is read from the payload and
/// bounded first; then it is decoded as [`decompress_blob_into`] decodes.
pub fn decompress_blob(
    payload: &[u8],
    max: u64,
    what: &dyn std::fmt::Display,
    source: &dyn DictionarySource,
) -> Result<Vec<u8>> {
    let mut out = vec![0; plaintext_size(payload, max, what)?];
    decompress_blob_into(payload, &mut out, what, source)?;
    Ok(out)
}

/// The plaintext size a payload states (a zstd frame's header, or a stored payload's own
/// length), refused above `max` before anything is allocated for it.
fn plaintext_size(payload: &[u8], max: u64, what: &dyn std::fmt::Display) -> Result<usize> {
    match payload.split_first() {
        Some((&dictionary::FORMAT, rest)) => match rest.get(32..) {
            Some(frame) => frame_size(frame, max, what),
            None => Err(Error::corrupt(format!(
                "{what}: dictionary payload too short"
            ))),
        },
        Some((0, rest)) if rest.len() as u64 > max => Err(Error::corrupt(format!(
            "{what}: {} bytes, more than the {max} allowed",
            rest.len()
        ))),
        Some((0, rest)) => Ok(rest.len()),
        Some((1, rest)) => frame_size(rest, max, what),
        Some((b, _)) => Err(Error::corrupt(format!(
            "{what}: unknown payload format {b}"
        ))),
        None => Err(Error::corrupt(format!("{what}: empty payload"))),
    }
}

/// Like [`decompress_blob`], into `out`, whose length is the plaintext length the index
/// claims for the blob: a payload of any other length is corrupt. Nothing is allocated, so a
/// reader that knows where each blob goes (a restore's window of a file) decodes straight
/// into place.
pub fn decompress_blob_into(
    payload: &[u8],
    out: &mut [u8],
    what: &dyn std::fmt::Display,
    source: &dyn DictionarySource,
) -> Result<()> {
    let want = out.len();
    let mismatch = |have: u64| {
        Error::corrupt(format!(
            "{what}: holds {have} bytes where its index entry says {want}"
        ))
    };
    // The frame must claim exactly the expected size, checked before decoding a byte.
    let sized = |frame: &[u8]| -> Result<usize> {
        match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(size)) if size == want as u64 => Ok(want),
            Ok(Some(size)) => Err(mismatch(size)),
            _ => Err(Error::corrupt(format!("{what}: bad zstd frame header"))),
        }
    };
    let n = match payload.split_first() {
        Some((&dictionary::FORMAT, rest)) => {
            dictionary::decompress_into(rest, out, what, sized, source)?
        }
        Some((0, rest)) => {
            if rest.len() != want {
                return Err(mismatch(rest.len() as u64));
            }
            out.copy_from_slice(rest);
            want
        }
        Some((1, rest)) => {
            sized(rest)?;
            DECOMPRESSOR
                .with(|cell| match &mut *cell.borrow_mut() {
                    Some(d) => d.decompress_to_buffer(rest, out),
                    slot => {
                        let d = slot.insert(zstd::bulk::Decompressor::new()?);
                        d.decompress_to_buffer(rest, out)
                    }
                })
                .map_err(|e| Error::corrupt(format!("{what}: zstd: {e}")))?
        }
        Some((b, _)) => {
            return Err(Error::corrupt(format!(
                "{what}: unknown payload format {b}"
            )))
        }
        None => return Err(Error::corrupt(format!("{what}: empty payload"))),
    };
    if n != want {
        return Err(Error::corrupt(format!(
            "{what}: zstd frame is shorter than it says"
        )));
    }
    Ok(())
}

/// CBOR, compress, seal: the encoding of every metadata object.
pub fn seal_meta<T: Serialize>(keys: &Keys, aad: &[u8], value: &T) -> Result<Vec<u8>> {
    keys.seal_meta(aad, &compress(&to_cbor(value)?, 3)?)
}

pub fn open_meta<T: DeserializeOwned>(
    keys: &Keys,
    aad: &[u8],
    sealed: &[u8],
    what: &str,
) -> Result<T> {
    let payload = keys.open_meta(aad, sealed).map_err(|e| e.context(what))?;
    from_cbor(&decompress(&payload, what)?, what)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A small blob whose Huffman-coded literals save little is stored as the fast frame
    /// (no Huffman table to build when it is read); one whose literals they shrink a lot
    /// keeps them; neither is ever as large as its plaintext.
    #[test]
    fn small_blobs_take_the_fast_frame_only_when_it_costs_little() {
        // The payload (format byte and frame) at one level.
        let frame = |p: &[u8], level: i32| {
            let mut out = vec![1u8];
            out.reserve(zstd::zstd_safe::compress_bound(p.len()));
            zstd_into(p, level, &mut out).unwrap();
            out
        };
        // Repetitive text: both frames are tiny and the fast one is kept.
        let page = b"row 0000000001 | filler                    \n".repeat(180);
        let normal = frame(&page, 3).len();
        let data = |p: &[u8]| {
            let mut out = Vec::new();
            compress_payload(p, 3, None, true, &mut out).unwrap();
            out
        };
        let chosen = data(&page);
        assert_eq!(chosen, frame(&page, FAST_LEVEL), "{normal} bytes otherwise");
        // Metadata and trees keep the frame of their level.
        assert_eq!(compress(&page, 3).unwrap(), frame(&page, 3));
        assert!(chosen.len() <= normal + FAST_SLACK);
        // Text of skewed random letters: Huffman coding saves far more than the slack.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let skewed: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"eeeeeeeetttaaoinshrdlu"[(x % 22) as usize]
            })
            .collect();
        let chosen = data(&skewed);
        let fast = frame(&skewed, FAST_LEVEL);
        assert!(
            chosen.len() + FAST_SLACK < fast.len(),
            "{} vs {}",
            chosen.len(),
            fast.len()
        );
        assert_eq!(chosen, frame(&skewed, 3));
        // Barely compressible blobs: the fast frame is never kept when it is not smaller
        // than the plaintext (readers bound a blob's stored length by its plaintext's).
        for k in 0..400u64 {
            let len = 64 + (k as usize * 37) % 2000;
            let blob: Vec<u8> = (0..len)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if (i as u64 + k) % 5 < k % 4 {
                        b'a'
                    } else {
                        x as u8
                    }
                })
                .collect();
            let c = compress(&blob, 3).unwrap();
            assert!(
                c.len() <= blob.len() + 1,
                "{} bytes stored as {}",
                blob.len(),
                c.len()
            );
            assert_eq!(decompress(&c, "x").unwrap(), blob);
        }
        for p in [&page[..], &skewed[..]] {
            let c = data(p);
            assert!(c.len() <= p.len());
            assert_eq!(decompress(&c, "x").unwrap(), p);
        }
    }

    /// Decoding into a buffer gives the plaintext, and a buffer of another length than the
    /// payload holds is refused as corrupt, for every payload format.
    #[test]
    fn decoding_into_place_needs_the_exact_length() {
        let text = b"INSERT INTO t VALUES (1, 'abc');\n".repeat(100);
        let random: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for (plain, level) in [
            (&text[..], 3),
            (&text[..], FAST_LEVEL),
            (&random[..], 3),
            (&text[..], 0),
        ] {
            let c = compress(plain, level).unwrap();
            let mut out = vec![0u8; plain.len()];
            decompress_blob_into(&c, &mut out, &"x", &NoDictionaries).unwrap();
            assert_eq!(out, plain);
            for len in [plain.len() - 1, plain.len() + 1] {
                let mut out = vec![0u8; len];
                let e = decompress_blob_into(&c, &mut out, &"blob x", &NoDictionaries).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
                assert!(e.to_string().contains("index entry says"), "{e}");
            }
        }
        let mut out = vec![0u8; 4];
        assert!(decompress_blob_into(&[7, 1, 2], &mut out, &"x", &NoDictionaries).is_err());
        assert!(decompress_blob_into(&[], &mut out, &"x", &NoDictionaries).is_err());
    }

    #[test]
    fn compression_round_trip() {
        let text = b"INSERT INTO t VALUES (1, 'abc');\n".repeat(100);
        let c = compress(&text, 3).unwrap();
        assert_eq!(c[0], 1);
        assert!(c.len() < text.len() / 5);
        assert_eq!(decompress(&c, "x").unwrap(), text);
        let random: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let c = compress(&random, 3).unwrap();
        assert_eq!(decompress(&c, "x").unwrap(), random);
        assert!(decompress(&[1, 2, 3], "x").is_err());
        assert!(decompress(&[], "x").is_err());
    }

    /// A payload is refused before anything is allocated for it when its zstd frame (or its
    /// stored form) holds more than the reader's bound.
    #[test]
    fn decompress_refuses_payloads_over_their_bound() {
        let zeros = vec![0u8; 100_000];
        let c = compress(&zeros, 3).unwrap();
        assert_eq!(c[0], 1);
        assert!(c.len() < 1000);
        let e = decompress_bounded(&c, 99_999, "x").unwrap_err();
        assert!(e.to_string().contains("claims 100000 bytes"), "{e}");
        assert_eq!(decompress_bounded(&c, 100_000, "x").unwrap(), zeros);
        let raw = compress(&zeros, 0).unwrap();
        assert!(decompress_bounded(&raw, 99_999, "x").is_err());
        assert_eq!(decompress_bounded(&raw, 100_000, "x").unwrap(), zeros);
    }
}
