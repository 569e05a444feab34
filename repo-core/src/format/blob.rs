//! Blobs: the unit of deduplication. On disk a blob is
//! `nonce (24) || XChaCha20-Poly1305(format byte || zstd(plaintext) or plaintext) || tag (16)`
//! with associated data `"cairn:blob" || kind || id`.

use crate::crypto::{self, Keys};
use crate::error::{Error, Result};
use crate::format::dictionary::{Dictionary, DictionarySource, NoDictionaries};
use crate::format::{compress_payload, decompress_blob, decompress_blob_into, max_plaintext};
use crate::id::{BlobKind, Id};

/// A blob ready to be appended to a pack.
#[derive(Debug, Clone)]
pub struct SealedBlob {
    pub kind: BlobKind,
    pub id: Id,
    pub raw_length: u32,
    pub bytes: Vec<u8>,
}

pub fn seal(
    keys: &Keys,
    kind: BlobKind,
    id: Id,
    plaintext: &[u8],
    level: i32,
) -> Result<SealedBlob> {
    seal_with(keys, kind, id, plaintext, level, None)
}

/// Like [`seal`], compressing a data blob with `dict` (payload format 2) when one is given;
/// other kinds never use a dictionary.
pub fn seal_with(
    keys: &Keys,
    kind: BlobKind,
    id: Id,
    plaintext: &[u8],
    level: i32,
    dict: Option<&Dictionary>,
) -> Result<SealedBlob> {
    let dict = dict.filter(|_| kind == BlobKind::Data);
    let raw_length =
        u32::try_from(plaintext.len()).map_err(|_| Error::invalid("blob larger than 4 GiB"))?;
    // Readers refuse larger blobs, so none is ever written.
    if u64::from(raw_length) > max_plaintext(kind) {
        return Err(Error::invalid(format!(
            "a {kind:?} blob of {raw_length} bytes is more than the {} a blob may hold",
            max_plaintext(kind)
        )));
    }
    // Compressed straight after room for the nonce and sealed where it lies: one buffer,
    // no copies of the payload.
    let mut bytes =
        Vec::with_capacity(crypto::OVERHEAD + 1 + zstd::zstd_safe::compress_bound(plaintext.len()));
    bytes.resize(crypto::NONCE_LEN, 0);
    // Only data blobs take the fast frame of a small blob (see `compress_payload`).
    compress_payload(plaintext, level, dict, kind == BlobKind::Data, &mut bytes)?;
    keys.seal_blob_in_place(kind, &id, &mut bytes)?;
    Ok(SealedBlob {
        kind,
        id,
        raw_length,
        bytes,
    })
}

/// Opens a blob and checks that its plaintext hashes to its id, so a blob filed under the
/// wrong id (or by another tenant's key) is caught, not returned. The plaintext may be at most
/// [`max_plaintext`] of its kind.
pub fn open(keys: &Keys, kind: BlobKind, id: &Id, sealed: &[u8]) -> Result<Vec<u8>> {
    open_bounded(keys, kind, id, sealed, max_plaintext(kind), &NoDictionaries)
}

/// Like [`open`], refusing a plaintext of more than `max` bytes (a repository's chunker
/// bound for data blobs) before allocating for it, and finding the dictionary a data blob
/// was compressed with in `dicts`.
pub fn open_bounded(
    keys: &Keys,
    kind: BlobKind,
    id: &Id,
    sealed: &[u8],
    max: u64,
    dicts: &dyn DictionarySource,
) -> Result<Vec<u8>> {
    let payload = keys.open_blob(kind, id, sealed)?;
    plaintext(keys, kind, id, &payload, max, dicts)
}

/// Like [`open`], decrypting inside `sealed` (the buffer is left holding the compressed
/// payload); the restorer's packs are read into buffers of its own, so this spares a copy
/// and an allocation per blob.
pub fn open_in_place(keys: &Keys, kind: BlobKind, id: &Id, sealed: &mut [u8]) -> Result<Vec<u8>> {
    open_in_place_bounded(keys, kind, id, sealed, max_plaintext(kind), &NoDictionaries)
}

/// Like [`open_in_place`] with the bound and dictionaries of [`open_bounded`].
pub fn open_in_place_bounded(
    keys: &Keys,
    kind: BlobKind,
    id: &Id,
    sealed: &mut [u8],
    max: u64,
    dicts: &dyn DictionarySource,
) -> Result<Vec<u8>> {
    let payload = keys.open_blob_in_place(kind, id, sealed)?;
    plaintext(keys, kind, id, payload, max, dicts)
}

/// Like [`open_in_place_bounded`], decoding the plaintext into `out`, whose length is the
/// plaintext length the index claims (the caller has bounded it): a blob of any other length
/// is corrupt, and `out` holds nothing trustworthy after an error.
pub fn open_in_place_into(
    keys: &Keys,
    kind: BlobKind,
    id: &Id,
    sealed: &mut [u8],
    out: &mut [u8],
    dicts: &dyn DictionarySource,
) -> Result<()> {
    let payload = keys.open_blob_in_place(kind, id, sealed)?;
    decompress_blob_into(payload, out, &BlobName(id), allowed(kind, dicts))?;
    check_id(keys, id, out)
}

/// Decompresses an opened payload and checks the plaintext against the blob's id.
fn plaintext(
    keys: &Keys,
    kind: BlobKind,
    id: &Id,
    payload: &[u8],
    max: u64,
    dicts: &dyn DictionarySource,
) -> Result<Vec<u8>> {
    let plain = decompress_blob(payload, max, &BlobName(id), allowed(kind, dicts))?;
    check_id(keys, id, &plain)?;
    Ok(plain)
}

/// The dictionaries a blob of `kind` may name: only a data blob may name one.
fn allowed(kind: BlobKind, dicts: &dyn DictionarySource) -> &dyn DictionarySource {
    if kind == BlobKind::Data {
        dicts
    } else {
        &NoDictionaries
    }
}

/// A plaintext whose keyed hash is not the blob's id is corrupt: a blob filed under the
/// wrong id (or by another tenant's key) is caught, not returned.
fn check_id(keys: &Keys, id: &Id, plain: &[u8]) -> Result<()> {
    if keys.blob_id(plain) != *id {
        return Err(Error::corrupt(format!(
            "blob {id}: content does not match its id"
        )));
    }
    Ok(())
}

/// "blob <id>", for errors: formatted only when one is reported.
struct BlobName<'a>(&'a Id);

impl std::fmt::Display for BlobName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blob {}", self.0)
    }
}
