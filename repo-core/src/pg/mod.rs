//! PostgreSQL: what Cairn knows of WAL files and clusters (names, positions, segment headers).
//! Archiving, fetching, base backups and restores build on these.

pub mod basebackup;
pub mod consolidate;
pub mod header;
pub mod names;
mod tar_stream;
mod tar_tree;
pub mod wal;

pub use header::SegmentHeader;
pub use names::{Lsn, Segment, WalFile};
