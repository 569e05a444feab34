//! PostgreSQL: what Cairn knows of WAL files and clusters (names, positions, segment headers).
//! Archiving, fetching, base backups and restores build on these.

pub mod consolidate;
pub mod fetch;
pub mod header;
pub mod names;
pub mod prefetch;
pub mod push_ahead;
pub mod spool;
pub mod wal;

pub use header::SegmentHeader;
pub use names::{Lsn, Segment, WalFile};
