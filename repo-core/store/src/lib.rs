//! The keyless layer of a Cairn repository: what a party without keys may know.
//!
//! - [`id`]: object and blob ids (BLAKE3), and randomness from the OS;
//! - [`layout`]: where each object lives below a root and a tenant;
//! - [`location`]: repository locations as users write them;
//! - [`backend`]: the storage contract, its implementations and the conformance suite;
//! - [`error`]: the one error type, with kinds that tell retryable failures from the rest.
//!
//! Nothing here encrypts, compresses, chunks or caches: the server depends on this crate
//! alone, so Cargo keeps keys out of it (docs/design.md, "Crates and the dependency rule").

pub mod backend;
pub mod error;
pub mod id;
pub mod layout;
pub mod location;

pub use error::{Error, ErrorKind, Result};
pub use id::{BlobKind, Id};
pub use location::Location;
