//! PostgreSQL: what Cairn knows of WAL files and clusters (names, positions, segment headers).
//! Archiving, fetching, base backups and restores build on these.

pub mod archive_check;
pub mod basebackup;
pub mod consolidate;
pub mod drill;
pub mod header;
pub mod names;
pub mod restore;
mod tar_stream;
mod tar_tree;
pub mod target;
pub mod wal;

pub use header::SegmentHeader;
pub use names::{Lsn, Segment, WalFile};
