//! Progress of the long operations (backup, restore, check, prune), reported as it happens.
//!
//! One trait for all of them, so that a front end implements it once (the CLI's terminal
//! bar; a server's metrics or a JSON stream later) and each operation reports only the
//! events it has. Every method has a default that does nothing: an implementation picks the
//! events it shows.
//!
//! Methods are called from several threads at once (files are read, written and sealed on
//! the rayon pool), hence `Sync`; they must return quickly, because the work waits for them.
//! Progress is for watching only: what an operation did is in its result (its summary,
//! warnings and report), never only here.

use std::path::Path;

use crate::id::Id;

/// What an operation reports while it runs.
pub trait Progress: Sync {
    /// A file is being worked on: read for a backup, written for a restore.
    fn file(&self, _path: &Path) {}
    /// A backup is done with a file: what the repository had of it decided how it was saved.
    fn file_done(&self, _path: &Path, _status: FileStatus) {}
    /// `n` more bytes done: read and stored by a backup (unchanged files count when they are
    /// skipped), written by a restore, packs read by a check with `--read-data` or by a
    /// prune that repacks.
    fn bytes(&self, _n: u64) {}
    /// Something was left out or saved otherwise than asked; the operation goes on, and the
    /// same message is in its result.
    fn warn(&self, _message: &str) {}
    /// A prune is done with a pack: its used blobs copied out, or the pack deleted. It is
    /// also one item done of the current phase (see [`Progress::phase`]).
    fn pack(&self, _pack: &Id, _event: PackEvent) {}
    /// A phase of a check or a prune begins, replacing the one before: its name ("index",
    /// "snapshots", "packs"; "marking", "repacking", "deleting"), how many items it will
    /// count with [`Progress::item`] (or `pack` events), and how many bytes it will count
    /// with [`Progress::bytes`], where known.
    fn phase(&self, _name: &str, _items: Option<u64>, _bytes: Option<u64>) {}
    /// One more item of the current phase is done (an index file, a snapshot, a pack).
    fn item(&self) {}
    /// Whether totals are shown. A backup of files walks its sources a second time, ahead of
    /// the backup on a thread of its own, to count them, only when this says yes: a script
    /// that shows nothing pays nothing.
    fn wants_totals(&self) -> bool {
        false
    }
    /// The totals of a backup's walk ahead so far: `files` regular files of `bytes` bytes,
    /// with the backup's excludes, as [`Progress::file_done`] and [`Progress::bytes`] will
    /// count them; `done` once the whole of the sources is counted (sizes are as found
    /// then: files that grow or appear meanwhile make the backup end past them).
    fn total(&self, _files: u64, _bytes: u64, _done: bool) {}
}

/// How a backup found a file, against the files cache of earlier backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// Not in the files cache: read whole.
    New,
    /// In the files cache but changed (size, times or inode): read whole.
    Changed,
    /// Unchanged since the backup that cached it: its content reused, not read.
    Unchanged,
}

/// What a prune did with a pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackEvent {
    /// Its used blobs were copied into new packs; it is deleted by the sweep.
    Repacked { bytes: u64 },
    /// It was deleted, freeing `bytes`.
    Deleted { bytes: u64 },
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}
