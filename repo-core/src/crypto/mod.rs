//! The key hierarchy and authenticated encryption.
//!
//! A tenant has one random 256-bit master key. Everything else derives from it with
//! `blake3::derive_key` under fixed context strings, so adding or changing a password never
//! touches data:
//!
//! | sub-key      | context string                     | use                                    |
//! |--------------|------------------------------------|----------------------------------------|
//! | chunk-id     | `cairn 2026 chunk-id key v1`       | keyed BLAKE3 of blob plaintext = blob id |
//! | chunker seed | `cairn 2026 chunker seed v1`       | first 8 bytes (LE) seed FastCDC's gear table |
//! | data         | `cairn 2026 data aead key v1`      | XChaCha20-Poly1305 for data blobs      |
//! | metadata     | `cairn 2026 metadata aead key v1`  | tree blobs, pack headers, index, snapshots, config |
//!
//! A sealed message is `nonce (24 random bytes) || ciphertext || tag (16)`. The associated
//! data binds what the message is (blob kind and id, or object type), so a sealed object
//! cannot be passed off as another.

mod xchacha;

use crate::error::{Error, Result};
use crate::id::{BlobKind, Id};
use xchacha::XChaCha20Poly1305;

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// A tenant's master key. Never stored unwrapped except in a key file the user asked for.
#[derive(Clone)]
pub struct MasterKey(pub(crate) [u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; 32];
        crate::sys::fill_random(&mut k)?;
        Ok(MasterKey(k))
    }

    pub fn from_bytes(b: [u8; 32]) -> Self {
        MasterKey(b)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// The sub-keys of a tenant, derived once when a repository is opened.
#[derive(Clone)]
pub struct Keys {
    chunk_id: [u8; 32],
    chunker_seed: u64,
    data: XChaCha20Poly1305,
    meta: XChaCha20Poly1305,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// The context strings of the sub-keys (see the module documentation). Part of format 1.
pub(crate) const CHUNK_ID_CONTEXT: &str = "cairn 2026 chunk-id key v1";
pub(crate) const CHUNKER_SEED_CONTEXT: &str = "cairn 2026 chunker seed v1";
pub(crate) const DATA_CONTEXT: &str = "cairn 2026 data aead key v1";
pub(crate) const META_CONTEXT: &str = "cairn 2026 metadata aead key v1";

/// The raw sub-keys of a master key: chunk-id key, chunker seed, data key, metadata key.
pub(crate) fn sub_keys(master: &MasterKey) -> ([u8; 32], u64, [u8; 32], [u8; 32]) {
    let seed = blake3::derive_key(CHUNKER_SEED_CONTEXT, &master.0);
    let mut seed8 = [0u8; 8];
    seed8.copy_from_slice(&seed[..8]);
    (
        blake3::derive_key(CHUNK_ID_CONTEXT, &master.0),
        u64::from_le_bytes(seed8),
        blake3::derive_key(DATA_CONTEXT, &master.0),
        blake3::derive_key(META_CONTEXT, &master.0),
    )
}

impl Keys {
    pub fn derive(master: &MasterKey) -> Result<Keys> {
        let (chunk_id, chunker_seed, data, meta) = sub_keys(master);
        Ok(Keys {
            chunk_id,
            chunker_seed,
            data: XChaCha20Poly1305::new(data),
            meta: XChaCha20Poly1305::new(meta),
        })
    }

    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }

    /// The id of a blob: BLAKE3 of its plaintext keyed with the tenant's chunk-id key.
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        Id(*blake3::keyed_hash(&self.chunk_id, plaintext).as_bytes())
    }

    fn cipher(&self, kind: BlobKind) -> &XChaCha20Poly1305 {
        match kind {
            BlobKind::Data | BlobKind::Dict => &self.data,
            BlobKind::Tree => &self.meta,
        }
    }

    /// Seals a blob whose payload is `buf[NONCE_LEN..]`, in place (see [`seal_in_place`]).
    pub fn seal_blob_in_place(&self, kind: BlobKind, id: &Id, buf: &mut Vec<u8>) -> Result<()> {
        seal_in_place(self.cipher(kind), &blob_aad(kind, id), buf)
    }

    /// Like [`Keys::open_blob`], decrypting inside `sealed` (see `open_in_place`).
    pub fn open_blob_in_place<'b>(
        &self,
        kind: BlobKind,
        id: &Id,
        sealed: &'b mut [u8],
    ) -> Result<&'b [u8]> {
        open_in_place(self.cipher(kind), &blob_aad(kind, id), sealed)
            .map_err(|e| e.context(format!("blob {id} ({kind:?})")))
    }

    pub fn open_blob(&self, kind: BlobKind, id: &Id, sealed: &[u8]) -> Result<Vec<u8>> {
        open(self.cipher(kind), &blob_aad(kind, id), sealed)
            .map_err(|e| e.context(format!("blob {id} ({kind:?})")))
    }

    /// Seals a metadata object; `aad` names its type (e.g. `b"cairn:snapshot"`).
    pub fn seal_meta(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        seal(&self.meta, aad, plaintext)
    }

    pub fn open_meta(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        open(&self.meta, aad, sealed)
    }
}

pub(crate) fn blob_aad(kind: BlobKind, id: &Id) -> [u8; 43] {
    let mut aad = [0u8; 43];
    aad[..10].copy_from_slice(b"cairn:blob");
    aad[10] = kind.as_u8();
    aad[11..].copy_from_slice(&id.0);
    aad
}

pub(crate) fn seal(cipher: &XChaCha20Poly1305, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(OVERHEAD + plaintext.len());
    buf.resize(NONCE_LEN, 0);
    buf.extend_from_slice(plaintext);
    seal_in_place(cipher, aad, &mut buf)?;
    Ok(buf)
}

/// Seals `buf[NONCE_LEN..]` where it lies: writes a fresh nonce over `buf[..NONCE_LEN]`,
/// encrypts the rest in place and appends the tag, giving the same layout as [`seal`]
/// without copying the plaintext.
pub(crate) fn seal_in_place(
    cipher: &XChaCha20Poly1305,
    aad: &[u8],
    buf: &mut Vec<u8>,
) -> Result<()> {
    if buf.len() < NONCE_LEN {
        return Err(Error::invalid("seal_in_place: no room for the nonce"));
    }
    let mut nonce = [0u8; NONCE_LEN];
    crate::sys::fill_random(&mut nonce)?;
    buf[..NONCE_LEN].copy_from_slice(&nonce);
    let tag = cipher.seal_in_place(&nonce, aad, &mut buf[NONCE_LEN..])?;
    buf.extend_from_slice(&tag);
    Ok(())
}

/// Opens a sealed message inside its own buffer: the ciphertext is decrypted where it lies
/// and that part of `sealed` is returned, so nothing is allocated or copied.
pub(crate) fn open_in_place<'b>(
    cipher: &XChaCha20Poly1305,
    aad: &[u8],
    sealed: &'b mut [u8],
) -> Result<&'b [u8]> {
    let (nonce, tag) = envelope(sealed)?;
    let end = sealed.len() - TAG_LEN;
    let ct = &mut sealed[NONCE_LEN..end];
    cipher
        .open_in_place(&nonce, aad, ct, &tag)
        .map_err(|_| unauthentic())?;
    Ok(ct)
}

pub(crate) fn open(cipher: &XChaCha20Poly1305, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    let (nonce, tag) = envelope(sealed)?;
    let mut buf = sealed[NONCE_LEN..sealed.len() - TAG_LEN].to_vec();
    cipher
        .open_in_place(&nonce, aad, &mut buf, &tag)
        .map_err(|_| unauthentic())?;
    Ok(buf)
}

/// The nonce and tag of a sealed message, once it is known to be long enough to hold both.
fn envelope(sealed: &[u8]) -> Result<([u8; NONCE_LEN], [u8; TAG_LEN])> {
    if sealed.len() < OVERHEAD {
        return Err(Error::corrupt(format!(
            "sealed message of {} bytes is shorter than the {OVERHEAD}-byte envelope",
            sealed.len()
        )));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[..NONCE_LEN]);
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&sealed[sealed.len() - TAG_LEN..]);
    Ok((nonce, tag))
}

fn unauthentic() -> Error {
    Error::corrupt("authentication failed (the bytes were changed, or the key is wrong)")
}

/// Seals with a one-off key (key slots wrap the master key this way).
pub(crate) fn seal_with(key: [u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    seal(&XChaCha20Poly1305::new(key), aad, plaintext)
}

pub(crate) fn open_with(key: [u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    open(&XChaCha20Poly1305::new(key), aad, sealed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn seal_open_and_tamper() {
        let keys = Keys::derive(&MasterKey::from_bytes([7; 32])).unwrap();
        let id = keys.blob_id(b"hello");
        let mut sealed = vec![0u8; NONCE_LEN];
        sealed.extend_from_slice(b"hello");
        keys.seal_blob_in_place(BlobKind::Data, &id, &mut sealed)
            .unwrap();
        assert_eq!(sealed.len(), OVERHEAD + 5);
        assert_eq!(
            keys.open_blob(BlobKind::Data, &id, &sealed).unwrap(),
            b"hello"
        );
        let mut bad = sealed.clone();
        bad[30] ^= 1;
        assert_eq!(
            keys.open_blob(BlobKind::Data, &id, &bad)
                .unwrap_err()
                .kind(),
            ErrorKind::Corrupt
        );
        // Kind and id are bound.
        assert!(keys.open_blob(BlobKind::Tree, &id, &sealed).is_err());
        assert!(keys
            .open_blob(BlobKind::Data, &keys.blob_id(b"x"), &sealed)
            .is_err());
        // Another tenant's key neither opens it nor computes the same id.
        let other = Keys::derive(&MasterKey::from_bytes([8; 32])).unwrap();
        assert!(other.open_blob(BlobKind::Data, &id, &sealed).is_err());
        assert_ne!(other.blob_id(b"hello"), id);
        assert_ne!(other.chunker_seed(), keys.chunker_seed());
    }

    /// A message too short to hold a nonce and a tag is refused as corrupt, by both open
    /// paths, before anything is sliced.
    #[test]
    fn a_message_shorter_than_its_envelope_is_corrupt() {
        let keys = Keys::derive(&MasterKey::from_bytes([7; 32])).unwrap();
        let id = keys.blob_id(b"x");
        for len in [0, 1, NONCE_LEN, OVERHEAD - 1] {
            let mut short = vec![0u8; len];
            let e = keys.open_blob(BlobKind::Data, &id, &short).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
            assert!(e.to_string().contains("shorter than"), "{e}");
            let e = keys
                .open_blob_in_place(BlobKind::Data, &id, &mut short)
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        }
        // The envelope alone is an empty message: it opens only with its tag.
        let mut empty = vec![0u8; NONCE_LEN];
        keys.seal_blob_in_place(BlobKind::Data, &id, &mut empty)
            .unwrap();
        assert_eq!(empty.len(), OVERHEAD);
        assert!(keys
            .open_blob(BlobKind::Data, &id, &empty)
            .unwrap()
            .is_empty());
    }
}
