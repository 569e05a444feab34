//! PostgreSQL: what Cairn knows of WAL files and clusters (names, positions, segment headers).
//! Archiving, fetching, base backups and restores build on these.

pub mod archive_check;
pub mod archive_map;
pub mod basebackup;
pub mod consolidate;
pub mod drill;
pub mod fetch;
pub mod header;
pub mod names;
mod page_dictionary;
pub mod pitr_retention;
pub mod prefetch;
pub mod push_ahead;
pub mod recovery_plan;
pub mod restore;
pub mod spool;
mod stall;
pub mod status;
mod tar_stream;
mod tar_tree;
pub mod target;
pub mod timeline;
pub mod wal;

pub use header::SegmentHeader;
pub use names::{Lsn, Segment, WalFile};
