//! Snapshot manifests: the only commit points of a repository. A snapshot is written last,
//! after every pack and index file it needs; until it exists, nothing of a backup is visible.

use serde::{Deserialize, Serialize};

use crate::id::Id;

pub const AAD: &[u8] = b"cairn:snapshot";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotKind {
    Files,
    Stdin,
    Command,
    PgBasebackup,
    Wal,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    /// Other entries: symlinks, devices, FIFOs, sockets.
    #[serde(default)]
    pub others: u64,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    /// Logical size of all file content in the snapshot.
    pub total_bytes: u64,
    /// Bytes read from the source (unchanged files are not read).
    pub bytes_read: u64,
    pub blobs_added: u64,
    /// Plaintext bytes of the blobs this snapshot added.
    pub bytes_added: u64,
    /// Stored (compressed, sealed) bytes of the blobs this snapshot added.
    pub bytes_stored: u64,
    pub duration_secs: f64,
    /// Entries that could not be read and are missing from the snapshot.
    #[serde(default)]
    pub errors: u64,
}

/// PostgreSQL facts of a base backup or WAL snapshot (filled by the PostgreSQL integration).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PgInfo {
    pub system_identifier: String,
    pub timeline: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_first: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_last: Option<String>,
    /// When a base backup started and stopped (RFC 3339, UTC), as PostgreSQL recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_time: Option<String>,
    /// The page dictionary a base backup compressed its new pages with, or trained for the
    /// next ones (see `pg::page_dictionary`), and the relation bytes it was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dictionary: Option<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dictionary_basis: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// RFC 3339 with nanoseconds, UTC.
    pub time: String,
    pub host: String,
    pub user: String,
    pub tenant: String,
    pub kind: SnapshotKind,
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    pub tree: Id,
    pub summary: Summary,
    pub program_version: String,
    /// True when some entries could not be read (see `summary.errors`).
    #[serde(default)]
    pub incomplete: bool,
    /// The command whose output a `command` snapshot holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg: Option<PgInfo>,
    /// When this snapshot replaces another (tag edits), the one it replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
}

impl Snapshot {
    pub fn timestamp(&self) -> Option<jiff::Timestamp> {
        self.time.parse().ok()
    }
}
