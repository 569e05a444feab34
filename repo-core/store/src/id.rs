//! Identifiers: 32-byte BLAKE3 values shown as 64 hex digits.
//!
//! Two namespaces of ids exist and must not be confused:
//! - object names (packs, index files, snapshots, key slots) are the unkeyed BLAKE3 of the
//!   object's stored bytes, so anyone holding the bytes (e.g. a server) can verify them;
//! - blob ids are the BLAKE3 of the plaintext keyed with the tenant's chunk-id key, so they
//!   reveal nothing about content to someone without the key.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Fills `buf` with random bytes from the operating system (ids, nonces, salts, keys).
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| {
        Error::new(
            crate::error::ErrorKind::Other,
            format!("no randomness from the OS: {e}"),
        )
    })
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// The name of an object: BLAKE3 of its stored bytes.
    pub fn of_bytes(bytes: &[u8]) -> Id {
        Id(*blake3::hash(bytes).as_bytes())
    }

    pub fn random() -> Result<Id> {
        let mut b = [0u8; 32];
        fill_random(&mut b)?;
        Ok(Id(b))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    pub fn from_hex(s: &str) -> Result<Id> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b)
            .map_err(|_| Error::invalid(format!("{s:?} is not a 64-digit hex id")))?;
        Ok(Id(b))
    }

    pub fn from_slice(s: &[u8]) -> Result<Id> {
        let b: [u8; 32] = s
            .try_into()
            .map_err(|_| Error::corrupt(format!("id of {} bytes, expected 32", s.len())))?;
        Ok(Id(b))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

// Ids are CBOR byte strings in stored objects (compact) and hex strings in JSON output.
impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        if d.is_human_readable() {
            let s: String = Deserialize::deserialize(d)?;
            return Id::from_hex(&s).map_err(serde::de::Error::custom);
        }
        let b: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        let arr: [u8; 32] = b
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::custom("id must be 32 bytes"))?;
        Ok(Id(arr))
    }
}

/// What a blob holds. Stored in pack headers and bound into each blob's AEAD associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// File or stream content.
    Data,
    /// A directory listing, or a spilled list of content ids of a large file.
    Tree,
    /// A zstd dictionary that data blobs may be compressed with (payload format 2). Never
    /// collected: a blob compressed with it names it, not any snapshot.
    Dict,
}

impl BlobKind {
    pub fn as_u8(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
            BlobKind::Dict => 2,
        }
    }

    pub fn from_u8(b: u8) -> Result<BlobKind> {
        match b {
            0 => Ok(BlobKind::Data),
            1 => Ok(BlobKind::Tree),
            2 => Ok(BlobKind::Dict),
            _ => Err(Error::corrupt(format!("unknown blob kind {b}"))),
        }
    }
}
