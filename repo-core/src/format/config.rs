//! The tenant config: written once by `init`/`tenant add`, sealed with the metadata key.

use serde::{Deserialize, Serialize};

use crate::id::Id;

pub const AAD: &[u8] = b"cairn:config";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub version: u32,
    /// Random, unique per tenant namespace; names the local cache.
    pub id: Id,
    pub tenant: String,
    pub chunker: ChunkerConfig,
    /// Target pack size in bytes.
    pub pack_size: u64,
    /// Default zstd level for data blobs (0 = off).
    pub compression: i32,
    pub created: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ChunkerConfig {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl ChunkerConfig {
    pub fn params(&self) -> cairn_chunker::Params {
        cairn_chunker::Params {
            min: self.min as usize,
            avg: self.avg as usize,
            max: self.max as usize,
        }
    }
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        let p = cairn_chunker::Params::DEFAULT;
        ChunkerConfig {
            min: p.min as u32,
            avg: p.avg as u32,
            max: p.max as u32,
        }
    }
}
