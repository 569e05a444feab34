//! Backup: turning file trees and streams into blobs, trees and a snapshot. This module
//! holds what every kind of backup shares: its options, the `Archiver` (lease, writer,
//! summary, warnings) and the commit with its lapse recheck. Its siblings do the rest:
//! `pipeline` turns any reader into sealed blobs, `tree_walk` and `files` save a file tree,
//! `stream` saves standard input or a command's output.
//!
//! Strategy. Directories are walked depth-first in name order, with an explicit stack rather
//! than recursion, each entry reached through a descriptor of its folder (see `tree_walk`);
//! each directory becomes one tree blob once its entries are saved, so memory holds one
//! listing per level of depth. A file whose (path, inode, mtime, ctime, size) matches the files cache, and whose blobs are
//! all still indexed, is not read at all. The other small files of a folder (below 1 MiB) are
//! read whole, cut, hashed, looked up, compressed and sealed in parallel on the rayon pool, a
//! file per task, in groups of up to 256 files or 16 MiB, and their blobs are then packed in
//! name order. Larger files and streams are read in 4 MiB batches on a thread of their own;
//! the chunks of a batch are sealed in parallel while the previous batch is packed (see
//! `pipeline`). A file is read up to the size it had when opened (see `files`).
//!
//! Failure. A file or directory that cannot be read (permissions, vanished mid-walk) is
//! reported as a warning and left out; the snapshot is then marked incomplete. Any other
//! error (repository, cache, upload) aborts the backup before the snapshot is written: what
//! was uploaded stays unreferenced until garbage collection, and the repository is unchanged
//! from the point of view of every reader.

mod files;
pub(crate) mod pipeline;
mod scan;
pub(crate) mod stream;
mod tree_walk;

pub use stream::{backup_command, backup_stream};
use tree_walk::Trie;

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Instant;

use crate::cache::{CacheReader, FileRecord};
use crate::commit::{ensure_complete, IndexWatch};
use crate::error::{Error, Result};
use crate::format::snapshot::{PgInfo, Snapshot, SnapshotKind, Summary};
use crate::format::to_cbor;
use crate::format::tree::Tree;
use crate::id::{BlobKind, Id};
use crate::lease::LeaseGuard;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::sys;
use crate::walk::Excludes;
use crate::writer::BlobWriter;

/// Files below this size are read whole, with others of their folder, a file per pool
/// task; larger ones are read as streams (see `pipeline`), which bounds the memory a file
/// can take.
const SMALL_FILE: u64 = 1 << 20;

/// Files-cache records are written in batches of this many.
const FILES_CACHE_BATCH: usize = 4096;

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub excludes: Excludes,
    pub one_file_system: bool,
    pub tags: Vec<String>,
    pub host: String,
    /// The snapshot's time; now when `None`.
    pub time: Option<jiff::Timestamp>,
    /// zstd level for data blobs; `None` uses the repository's default.
    pub compression: Option<i32>,
    /// Whether to trust the files cache, and the parent snapshot's tree, to skip unchanged
    /// files.
    pub use_files_cache: bool,
    /// The parent snapshot: recorded as the new snapshot's parent, and its tree consulted
    /// for files the files cache does not know. `None`: the latest snapshot of the same
    /// host, paths and kind.
    pub parent: Option<Id>,
    /// Read, cut, compress and seal everything, and count what would be added, but store
    /// nothing: no pack, index file, snapshot, lease or files-cache record is written, so it
    /// works on a read-only repository.
    pub dry_run: bool,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            excludes: Excludes::default(),
            one_file_system: false,
            tags: Vec::new(),
            host: sys::hostname(),
            time: None,
            compression: None,
            use_files_cache: true,
            parent: None,
            dry_run: false,
        }
    }
}

/// What a snapshot says of its source, as the code that read the source knows it; the rest of
/// the snapshot (time, host, tags, summary, parent, tree) the `Archiver` fills in. A writer
/// of another kind (WAL segments, base backups) commits through the same path by giving its
/// own kind and `pg`.
#[derive(Debug, Clone)]
pub struct SnapshotMeta {
    pub kind: SnapshotKind,
    /// The paths saved, absolute (`/name` for a stream). With the host and the kind, they
    /// pick the parent: the latest snapshot of the same three.
    pub paths: Vec<String>,
    /// The command whose output a `command` snapshot holds; empty otherwise.
    pub command: Vec<String>,
    /// PostgreSQL facts of a base backup or WAL snapshot.
    pub pg: Option<PgInfo>,
    /// The source knows the snapshot cannot be used as it is (a base backup whose WAL is
    /// not all archived); it is saved, marked incomplete.
    pub incomplete: bool,
}

#[derive(Debug, Clone)]
pub struct BackupResult {
    pub id: Id,
    pub snapshot: Snapshot,
    pub warnings: Vec<String>,
}

/// One backup in progress: it holds the backup lease from the start until its snapshot is
/// written, and the writer its blobs go through. Every kind of backup makes one with
/// [`Archiver::new`], stores content (a stream with [`Archiver::save_reader`] and
/// [`Archiver::stream_file`], or the file walk), saves its root tree with
/// [`Archiver::save_tree`] and ends with [`Archiver::commit`]; dropping it instead commits
/// nothing.
pub(crate) struct Archiver<'a> {
    repo: &'a Repository,
    writer: BlobWriter,
    chunker: cairn_chunker::Chunker,
    opts: &'a BackupOptions,
    progress: &'a dyn Progress,
    summary: Summary,
    warnings: Vec<String>,
    reader: Option<CacheReader<'a>>,
    file_records: Vec<(Vec<u8>, FileRecord)>,
    /// `None` in a dry run, which writes nothing.
    lease: Option<LeaseGuard>,
    /// The index files present at the start, to tell at commit whether a sweep ran.
    watch: IndexWatch,
    /// The root tree of the parent snapshot, for files the files cache does not know
    /// (see `files.rs`).
    previous: Option<Id>,
}

impl<'a> Archiver<'a> {
    pub(crate) fn new(
        repo: &'a Repository,
        opts: &'a BackupOptions,
        progress: &'a dyn Progress,
    ) -> Result<Self> {
        // The lease comes before the index is read: see lease.rs.
        let lease = if opts.dry_run {
            None
        } else {
            let lease = LeaseGuard::acquire(repo, "backup")?;
            if let Ok(n @ 1..) = repo.remove_stale_staging(crate::prune::STALE_STAGING) {
                tracing::info!("removed {n} staging files left by failed uploads");
            }
            Some(lease)
        };
        repo.sync_index()?;
        repo.require_intact_index()?;
        let watch = IndexWatch::start(repo)?;
        let chunker = repo.chunker()?;
        let level = opts.compression.unwrap_or(repo.config().compression);
        let reader = if opts.use_files_cache {
            Some(repo.cache().reader()?)
        } else {
            None
        };
        Ok(Archiver {
            repo,
            writer: if opts.dry_run {
                BlobWriter::discarding(repo, level)
            } else {
                BlobWriter::new(repo, level)
            },
            chunker,
            opts,
            progress,
            summary: Summary::default(),
            warnings: Vec::new(),
            reader,
            file_records: Vec::new(),
            lease,
            watch,
            previous: None,
        })
    }

    fn warn(&mut self, message: String) {
        self.progress.warn(&message);
        self.summary.errors += 1;
        self.warnings.push(message);
    }

    /// A warning about something saved, not left out: the snapshot stays complete.
    fn note(&mut self, message: String) {
        self.progress.warn(&message);
        self.warnings.push(message);
    }

    /// Reads a stream to its end through the pipeline (see [`pipeline::save_reader`], whose
    /// two layers of errors it keeps).
    pub(crate) fn save_reader(
        &mut self,
        r: &mut (dyn Read + Send),
    ) -> std::io::Result<Result<pipeline::Saved>> {
        pipeline::save_reader(&mut self.writer, &self.chunker, r, self.progress)
    }

    /// As [`Archiver::save_reader`], cut by `chunker` instead of the repository's.
    pub(crate) fn save_reader_cut(
        &mut self,
        chunker: &cairn_chunker::Chunker,
        r: &mut (dyn Read + Send),
    ) -> std::io::Result<Result<pipeline::Saved>> {
        pipeline::save_reader(&mut self.writer, chunker, r, self.progress)
    }

    /// Saves a tree as a tree blob, in canonical order; returns its id.
    /// The writer, for callers that store blobs beside the tree (a base backup's page
    /// dictionary) or set how data is compressed.
    pub(crate) fn writer_mut(&mut self) -> &mut BlobWriter {
        &mut self.writer
    }

    pub(crate) fn save_tree(&mut self, mut tree: Tree) -> Result<Id> {
        tree.canonicalize()?;
        let bytes = to_cbor(&tree)?;
        self.writer.add_plain(BlobKind::Tree, &bytes)
    }

    /// Writes the snapshot: flushes the files cache and the writer (packs, then index
    /// files), rechecks that garbage collection removed nothing the snapshot needs when the
    /// lease lapsed or a sweep ran meanwhile, and only then saves the snapshot, the commit
    /// point. The lease is let go last.
    pub(crate) fn commit(
        mut self,
        meta: SnapshotMeta,
        root: Id,
        started: Instant,
    ) -> Result<BackupResult> {
        self.flush_file_records()?;
        let stats = self.writer.finish()?;
        self.summary.blobs_added = stats.blobs_added;
        self.summary.bytes_added = stats.bytes_added;
        self.summary.bytes_stored = stats.bytes_stored;
        self.summary.duration_secs = started.elapsed().as_secs_f64();
        let SnapshotMeta {
            kind,
            paths,
            command,
            pg,
            incomplete,
        } = meta;
        let parent = match self.opts.parent {
            Some(p) => Some(p),
            None => find_parent(self.repo, &self.opts.host, &paths, kind)?,
        };
        let snapshot = Snapshot {
            version: 1,
            time: self
                .opts
                .time
                .unwrap_or_else(jiff::Timestamp::now)
                .to_string(),
            host: self.opts.host.clone(),
            user: sys::username(),
            tenant: self.repo.tenant().to_string(),
            kind,
            paths,
            tags: self.opts.tags.clone(),
            parent,
            tree: root,
            incomplete: incomplete || self.summary.errors > 0,
            summary: self.summary,
            program_version: env!("CARGO_PKG_VERSION").to_string(),
            command,
            pg,
            original: None,
        };
        let Some(lease) = &self.lease else {
            // A dry run: the snapshot as it would be, with no id.
            return Ok(BackupResult {
                id: Id::default(),
                snapshot,
                warnings: self.warnings,
            });
        };
        let lapsed = !lease.held();
        if lapsed || self.watch.swept_since(self.repo)? {
            if lapsed {
                tracing::warn!("the backup's lease lapsed; checking that garbage collection removed nothing it needs");
            } else {
                tracing::info!("garbage collection ran during the backup; checking that it removed nothing the backup needs");
            }
            let level = self
                .opts
                .compression
                .unwrap_or(self.repo.config().compression);
            let copied = ensure_complete(self.repo, &root, level)?;
            if copied > 0 {
                tracing::warn!("copied {copied} blobs out of packs a prune had condemned");
            }
        }
        let id = self.repo.save_snapshot(&snapshot)?;
        if let Some(lease) = self.lease.take() {
            if let Err(e) = lease.release() {
                tracing::warn!("cannot remove the backup lease (it expires by itself): {e}");
            }
        }
        Ok(BackupResult {
            id,
            snapshot,
            warnings: self.warnings,
        })
    }
}

fn find_parent(
    repo: &Repository,
    host: &str,
    paths: &[String],
    kind: SnapshotKind,
) -> Result<Option<Id>> {
    Ok(repo
        .snapshots()?
        .into_iter()
        .rev()
        .find(|(_, s)| s.host == host && s.paths == paths && s.kind == kind)
        .map(|(id, _)| id))
}

/// Makes a path absolute and removes `.` and `..` lexically (symlinks are not followed).
pub fn normalize(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path)
        .map_err(|e| Error::io(format!("resolving {}", path.display()), e))?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Ok(out)
}

/// Backs up files and directories. Paths must exist; missing ones are an error before
/// anything is written.
pub fn backup_paths(
    repo: &Repository,
    paths: &[PathBuf],
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let started = Instant::now();
    if paths.is_empty() {
        return Err(Error::invalid("nothing to back up: give at least one path"));
    }
    let mut trie = Trie::default();
    let mut names = Vec::new();
    for p in paths {
        let abs = normalize(p)?;
        std::fs::symlink_metadata(&abs).map_err(|e| Error::io(format!("{}", p.display()), e))?;
        names.push(abs.to_string_lossy().into_owned());
        trie.insert(&abs);
    }
    names.sort();
    names.dedup();
    // The parent whose tree stands in for the files cache where it has no record.
    let previous = match (opts.use_files_cache, opts.parent) {
        (false, _) => None,
        (true, Some(p)) => Some(p),
        (true, None) => find_parent(repo, &opts.host, &names, SnapshotKind::Files)?,
    }
    .map(|p| repo.read_snapshot(&p).map(|s| s.tree))
    .transpose()?;
    let meta = SnapshotMeta {
        kind: SnapshotKind::Files,
        paths: names,
        command: Vec::new(),
        pg: None,
        incomplete: false,
    };
    let save = || -> Result<BackupResult> {
        let mut a = Archiver::new(repo, opts, progress)?;
        a.previous = previous;
        let root_tree = a.walk_roots(&trie)?;
        let root = a.save_tree(root_tree)?;
        a.commit(meta, root, started)
    };
    if !progress.wants_totals() {
        return save();
    }
    // The walk ahead, for totals, beside the backup; stopped when the backup ends first.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // Without the thread there are no totals, and nothing else is lost.
        let _ = std::thread::Builder::new()
            .name("cairn-scan".into())
            .spawn_scoped(s, || scan::scan(&trie, opts, progress, &stop));
        let result = save();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    })
}
