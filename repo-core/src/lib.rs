//! Cairn's repository library: the format, crypto, the local index cache, and the archiver
//! and restorer built on them, over the keyless layer of `cairn-store` (ids, layout,
//! locations, storage backends and the error type, re-exported here). The `cairn` CLI is a
//! thin layer over this crate; see docs/design.md for the format specification and its
//! invariants.

pub use cairn_store::{backend, error, id, layout, location};

pub mod archiver;
pub mod blob_cache;
pub mod cache;
pub mod check;
pub mod commit;
pub mod content;
pub mod crypto;
pub mod excludes;
pub mod file_reader;
pub mod format;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod index_sort;
pub mod keys;
pub mod lease;
pub mod mark;
mod packer;
pub mod pg;
pub mod progress;
pub mod prune;
pub mod repair;
pub mod repository;
pub mod restorer;
pub mod retention;
pub mod scratch;
pub mod snapshot_edit;
pub mod sys;
#[cfg(feature = "testing")]
pub mod testing;
pub mod walk;
pub mod writer;

pub use error::{Error, ErrorKind, Result};
pub use id::{BlobKind, Id};
pub use location::Location;
pub use repository::{Credentials, InitOptions, OpenOptions, Repository};
