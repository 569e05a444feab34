//! Backup: turning file trees and streams into blobs, trees and a snapshot.
//!
//! Strategy. Directories are walked depth-first in name order; each directory becomes one
//! tree blob once its entries are saved, so memory holds one listing per level of depth. A
//! file whose (path, inode, mtime, ctime, size) matches the files cache, and whose blobs are
//! all still indexed, is not read at all. The other small files of a folder (below 1 MiB) are
//! read whole, cut, hashed, looked up, compressed and sealed in parallel on the rayon pool, a
//! file per task, in groups of up to 256 files or 16 MiB, and their blobs are then packed in
//! name order. Larger files and streams are read in 4 MiB batches on a thread of their own;
//! the chunks of a batch are sealed in parallel while the previous batch is packed.
//!
//! Failure. A file or directory that cannot be read (permissions, vanished mid-walk) is
//! reported as a warning and left out; the snapshot is then marked incomplete. Any other
//! error (repository, cache, upload) aborts the backup before the snapshot is written: what
//! was uploaded stays unreferenced until garbage collection, and the repository is unchanged
//! from the point of view of every reader.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{sync_channel, TryRecvError};
use std::time::Instant;

use rayon::prelude::*;

use crate::cache::{CacheReader, FileRecord};
use crate::commit::{ensure_complete, IndexWatch};
use crate::crypto::Keys;
use crate::error::{Error, ErrorKind, Result};
use crate::format::blob::{self, SealedBlob};
use crate::format::snapshot::{Snapshot, SnapshotKind, Summary};
use crate::format::to_cbor;
use crate::format::tree::{ContentList, Node, NodeKind, Time, Tree, INLINE_CONTENT_MAX};
use crate::id::{BlobKind, Id};
use crate::lease::LeaseGuard;
use crate::repository::Repository;
use crate::sys;
use crate::walk::{name_bytes, node_from_metadata, Excludes};
use crate::writer::{BlobWriter, Known};

/// Fills `buf` from `filled` on until it is full or the reader ends.
fn fill(
    r: &mut dyn Read,
    buf: &mut [u8],
    mut filled: usize,
    eof: &mut bool,
) -> std::io::Result<usize> {
    while !*eof && filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => *eof = true,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The chunks that can be decided in `buf` (all of it at the end of the input).
fn cut(chunker: &cairn_chunker::Chunker, buf: &[u8], eof: bool) -> Vec<std::ops::Range<usize>> {
    let mut cuts = Vec::new();
    let mut start = 0;
    while let Some(n) = chunker.next_cut(&buf[start..], eof) {
        cuts.push(start..start + n);
        start += n;
    }
    cuts
}

/// A chunk's id, and the sealed blob when the repository did not have it yet.
type Sealed = Vec<(Id, Option<SealedBlob>)>;

/// Hashes, looks up, compresses and seals chunks in parallel on the rayon pool.
fn seal_chunks(known: &Known, keys: &Keys, level: i32, chunks: &[&[u8]]) -> Result<Sealed> {
    chunks
        .par_iter()
        .map(|data| seal_chunk(known, keys, level, data))
        .collect()
}

/// A chunk's id, and the chunk sealed unless the repository or writer already has it.
fn seal_chunk(
    known: &Known,
    keys: &Keys,
    level: i32,
    data: &[u8],
) -> Result<(Id, Option<SealedBlob>)> {
    let id = keys.blob_id(data);
    if known.contains(&id)? {
        return Ok((id, None));
    }
    Ok((id, Some(blob::seal(keys, BlobKind::Data, id, data, level)?)))
}

/// Adds sealed chunks to the writer in order; appends every chunk's id to `ids`.
fn add_sealed(writer: &mut BlobWriter, sealed: Sealed, ids: &mut Vec<Id>) -> Result<()> {
    for (id, blob) in sealed {
        ids.push(id);
        if let Some(b) = blob {
            writer.add(b)?;
        }
    }
    Ok(())
}

/// Adds a sealed batch (and its plaintext length) to the writer; returns that length.
fn add_batch(
    writer: &mut BlobWriter,
    batch: Option<(Sealed, usize)>,
    ids: &mut Vec<Id>,
    progress: &dyn Progress,
) -> Result<u64> {
    let Some((sealed, n)) = batch else {
        return Ok(0);
    };
    add_sealed(writer, sealed, ids)?;
    progress.bytes(n as u64);
    Ok(n as u64)
}

/// Files below this size are read whole, with others of their folder, a file per pool
/// task; larger ones are read as streams (see `save_stream`), which bounds the memory a file
/// can take.
const SMALL_FILE: u64 = 1 << 20;

/// Content ids per spilled content-list blob.
const CONTENT_LIST_LEN: usize = 8192;
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
    /// Whether to trust the files cache to skip unchanged files.
    pub use_files_cache: bool,
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
        }
    }
}

/// Progress callbacks; every method may be called from several threads.
pub trait Progress: Sync {
    fn file(&self, _path: &Path) {}
    fn bytes(&self, _n: u64) {}
    fn warn(&self, _message: &str) {}
}

pub struct NoProgress;
impl Progress for NoProgress {}

#[derive(Debug, Clone)]
pub struct BackupResult {
    pub id: Id,
    pub snapshot: Snapshot,
    pub warnings: Vec<String>,
}

struct Archiver<'a> {
    repo: &'a Repository,
    writer: BlobWriter,
    chunker: cairn_chunker::Chunker,
    opts: &'a BackupOptions,
    progress: &'a dyn Progress,
    summary: Summary,
    warnings: Vec<String>,
    reader: Option<CacheReader<'a>>,
    file_records: Vec<(Vec<u8>, FileRecord)>,
    /// Bytes per read batch of a stream.
    batch_cap: usize,
    lease: LeaseGuard,
    /// The index files present at the start, to tell at commit whether a sweep ran.
    watch: IndexWatch,
}

/// A small file (below [`SMALL_FILE`]) waiting to be read and sealed on the pool with
/// others of its folder.
struct FileJob {
    path: PathBuf,
    node: Node,
    meta: std::fs::Metadata,
    start: FileStart,
}

/// What is known of a file about to be read.
struct FileStart {
    /// Its key in the files cache.
    key: Vec<u8>,
    /// Whether the files cache knew it (a changed file rather than a new one).
    known: bool,
}

/// A small file read and sealed, or why not.
enum JobResult {
    Sealed {
        sealed: Sealed,
        len: u64,
    },
    /// It grew past the threshold while being read: it is read again as a stream.
    Grew,
    /// It could not be opened or read (a warning, not an error).
    Unreadable(std::io::Error),
}

/// Small files are read and sealed in parallel in groups of at most this many ...
const JOB_FILES: usize = 256;
/// ... or this many bytes.
const JOB_BYTES: u64 = 16 << 20;

/// Reads a small file whole and seals its chunks (on a pool thread).
fn read_and_seal(
    path: &Path,
    chunker: &cairn_chunker::Chunker,
    known: &Known,
    keys: &Keys,
    level: i32,
) -> Result<JobResult> {
    let data = match read_small(path) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(JobResult::Grew),
        Err(e) => return Ok(JobResult::Unreadable(e)),
    };
    let sealed = cut(chunker, &data, true)
        .into_iter()
        .map(|range| seal_chunk(known, keys, level, &data[range]))
        .collect::<Result<Sealed>>()?;
    Ok(JobResult::Sealed {
        sealed,
        len: data.len() as u64,
    })
}

/// A file's bytes, or `None` if it holds more than [`SMALL_FILE`] bytes.
fn read_small(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let f = std::fs::File::open(path)?;
    let mut data = Vec::new();
    f.take(SMALL_FILE + 1).read_to_end(&mut data)?;
    Ok((data.len() as u64 <= SMALL_FILE).then_some(data))
}

impl<'a> Archiver<'a> {
    fn new(
        repo: &'a Repository,
        opts: &'a BackupOptions,
        progress: &'a dyn Progress,
    ) -> Result<Self> {
        // The lease comes before the index is read: see lease.rs.
        let lease = LeaseGuard::acquire(repo, "backup")?;
        if let Ok(n @ 1..) = repo.remove_stale_staging(crate::prune::STALE_STAGING) {
            tracing::info!("removed {n} staging files left by failed uploads");
        }
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
        let cap = (4 << 20).max(2 * chunker.params().max);
        Ok(Archiver {
            repo,
            writer: BlobWriter::new(repo, level),
            chunker,
            opts,
            progress,
            summary: Summary::default(),
            warnings: Vec::new(),
            reader,
            file_records: Vec::new(),
            batch_cap: cap,
            lease,
            watch,
        })
    }

    fn warn(&mut self, message: String) {
        self.progress.warn(&message);
        self.summary.errors += 1;
        self.warnings.push(message);
    }

    /// Reads a large file or a stream to its end with reading and cutting on a thread of
    /// their own, so that both overlap with compressing and sealing the previous batch on the
    /// rayon pool. Batches are about 4 MiB: one being filled, one queued, one being sealed,
    /// and one handed back for reuse at most.
    fn save_stream(
        &mut self,
        r: &mut (dyn Read + Send),
    ) -> std::io::Result<Result<(Vec<Id>, u64)>> {
        let chunker = self.chunker.clone();
        let cap = self.batch_cap;
        let writer = &mut self.writer;
        let progress = self.progress;
        std::thread::scope(|scope| {
            let (tx, rx) =
                sync_channel::<std::io::Result<(Vec<u8>, Vec<std::ops::Range<usize>>)>>(1);
            // Batches come back once sealed and are reused: a fresh buffer per batch costs a
            // page fault per 4 KiB.
            let (recycle, recycled) = sync_channel::<Vec<u8>>(2);
            scope.spawn(move || {
                let mut buf = vec![0u8; cap];
                let mut filled = 0;
                let mut eof = false;
                loop {
                    filled = match fill(r, &mut buf, filled, &mut eof) {
                        Ok(f) => f,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let cuts = cut(&chunker, &buf[..filled], eof);
                    let used: usize = cuts.iter().map(|c| c.len()).sum();
                    let mut next = recycled.try_recv().unwrap_or_else(|_| vec![0u8; cap]);
                    next[..filled - used].copy_from_slice(&buf[used..filled]);
                    let batch = std::mem::replace(&mut buf, next);
                    filled -= used;
                    if tx.send(Ok((batch, cuts))).is_err() {
                        return; // the consumer stopped on an error
                    }
                    if eof && filled == 0 {
                        return;
                    }
                }
            });
            // Two stages overlap on the pool: while batch N is sealed, batch N-1's blobs are
            // added to the pack (a copy, and a wait whenever the upload queue is full). Done in
            // turn, the pool would idle during every add.
            let known = writer.known();
            let keys = writer.keys().clone();
            let level = writer.level();
            let mut ids = Vec::new();
            let mut total = 0u64;
            let mut sealed_before: Option<(Sealed, usize)> = None;
            loop {
                let msg = match rx.try_recv() {
                    Ok(msg) => msg,
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {
                        // The input stalls (a dump waiting on a lock, a slow pipe): store what
                        // is sealed now rather than holding it until more arrives.
                        match add_batch(writer, sealed_before.take(), &mut ids, progress) {
                            Ok(n) => total += n,
                            Err(e) => return Ok(Err(e)),
                        }
                        match rx.recv() {
                            Ok(msg) => msg,
                            Err(_) => break,
                        }
                    }
                };
                let (batch, cuts) = msg?;
                let slices: Vec<&[u8]> = cuts.iter().map(|r| &batch[r.clone()]).collect();
                let before = sealed_before.take();
                let (sealed, added) = rayon::join(
                    || seal_chunks(&known, &keys, level, &slices),
                    || add_batch(writer, before, &mut ids, progress),
                );
                let sealed = match (sealed, added) {
                    (Ok(s), Ok(n)) => {
                        total += n;
                        s
                    }
                    (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
                };
                let n: usize = cuts.iter().map(|c| c.len()).sum();
                sealed_before = Some((sealed, n));
                drop(slices);
                let _ = recycle.try_send(batch);
            }
            match add_batch(writer, sealed_before, &mut ids, progress) {
                Ok(n) => total += n,
                Err(e) => return Ok(Err(e)),
            }
            Ok(Ok((ids, total)))
        })
    }

    /// Stores the content ids on the node, spilling long lists into content-list blobs.
    fn set_content(&mut self, node: &mut Node, ids: Vec<Id>) -> Result<()> {
        if ids.len() <= INLINE_CONTENT_MAX {
            node.content = ids;
            return Ok(());
        }
        for part in ids.chunks(CONTENT_LIST_LEN) {
            let list = to_cbor(&ContentList { ids: part.to_vec() })?;
            node.content_lists
                .push(self.writer.add_plain(BlobKind::Tree, &list)?);
        }
        Ok(())
    }

    /// Whether a files-cache record still describes the file: same inode, size, mtime and
    /// ctime, and every blob it names still indexed (a prune may have removed some).
    fn reusable(&self, rec: &FileRecord, meta: &std::fs::Metadata) -> Result<bool> {
        let same = rec.inode == meta.ino()
            && rec.size == meta.size()
            && rec.mtime == (meta.mtime(), meta.mtime_nsec() as u32)
            && rec.ctime == (meta.ctime(), meta.ctime_nsec() as u32);
        if !same {
            return Ok(false);
        }
        for id in rec.content.iter().chain(rec.content_lists.iter()) {
            if !self.writer.contains(id)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Accounts for a file about to be saved. Returns the node with its content when the
    /// files cache shows it unchanged, else what reading it needs.
    fn begin_file(
        &mut self,
        path: &Path,
        mut node: Node,
        meta: &std::fs::Metadata,
    ) -> Result<std::result::Result<Node, (Node, FileStart)>> {
        let key = path.as_os_str().as_bytes().to_vec();
        self.summary.total_bytes += meta.size();
        // One files-cache lookup decides both "unchanged" and "changed rather than new".
        let rec = match &self.reader {
            Some(r) => r.file(&key)?,
            None => None,
        };
        let known = rec.is_some();
        if let Some(rec) = rec {
            if self.reusable(&rec, meta)? {
                node.content = rec.content;
                node.content_lists = rec.content_lists;
                self.summary.files_unmodified += 1;
                self.progress.bytes(meta.size());
                return Ok(Ok(node));
            }
        }
        self.progress.file(path);
        Ok(Err((node, FileStart { key, known })))
    }

    /// A file that could not be read is left out with a warning.
    fn unreadable(&mut self, path: &Path, meta: &std::fs::Metadata, e: std::io::Error) {
        self.summary.total_bytes -= meta.size();
        self.summary.files -= 1;
        self.warn(format!("{}: {e}", path.display()));
    }

    /// Reads a file as a stream on this thread and the pool (large files).
    fn read_file(
        &mut self,
        path: &Path,
        node: Node,
        meta: &std::fs::Metadata,
        start: FileStart,
    ) -> Result<Option<Node>> {
        let saved = std::fs::File::open(path).and_then(|mut f| self.save_stream(&mut f));
        match saved {
            Ok(r) => {
                let (ids, len) = r?;
                self.end_file(node, meta, start, ids, len).map(Some)
            }
            Err(e) => {
                self.unreadable(path, meta, e);
                Ok(None)
            }
        }
    }

    /// Records a file's content once read: its size, content ids and files-cache record.
    fn end_file(
        &mut self,
        mut node: Node,
        meta: &std::fs::Metadata,
        start: FileStart,
        ids: Vec<Id>,
        len: u64,
    ) -> Result<Node> {
        self.summary.bytes_read += len;
        // The size recorded is the size read, so a file that grew or shrank while it was
        // read restores to exactly the bytes saved.
        self.summary.total_bytes = self.summary.total_bytes - meta.size() + len;
        node.size = len;
        self.set_content(&mut node, ids)?;
        if start.known {
            self.summary.files_changed += 1;
        } else {
            self.summary.files_new += 1;
        }
        if self.reader.is_some() && len == meta.size() {
            self.file_records.push((
                start.key,
                FileRecord {
                    inode: meta.ino(),
                    mtime: (meta.mtime(), meta.mtime_nsec() as u32),
                    ctime: (meta.ctime(), meta.ctime_nsec() as u32),
                    size: len,
                    content: node.content.clone(),
                    content_lists: node.content_lists.clone(),
                },
            ));
            if self.file_records.len() >= FILES_CACHE_BATCH {
                self.flush_file_records()?;
            }
        }
        Ok(node)
    }

    /// Reads and seals a folder's small files in parallel on the pool, then adds their
    /// blobs to the writer in order and puts their nodes in `tree`. Reading on several
    /// threads keeps a tree of many small files from being one thread's system calls.
    fn run_jobs(&mut self, jobs: &mut Vec<FileJob>, tree: &mut Tree) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let known = self.writer.known();
        let keys = self.writer.keys().clone();
        let level = self.writer.level();
        let chunker = &self.chunker;
        let results: Vec<Result<JobResult>> = jobs
            .par_iter()
            .map(|j| read_and_seal(&j.path, chunker, &known, &keys, level))
            .collect();
        for (job, result) in jobs.drain(..).zip(results) {
            let node = match result? {
                JobResult::Sealed { sealed, len } => {
                    let mut ids = Vec::with_capacity(sealed.len());
                    add_sealed(&mut self.writer, sealed, &mut ids)?;
                    self.progress.bytes(len);
                    Some(self.end_file(job.node, &job.meta, job.start, ids, len)?)
                }
                JobResult::Grew => self.read_file(&job.path, job.node, &job.meta, job.start)?,
                JobResult::Unreadable(e) => {
                    self.unreadable(&job.path, &job.meta, e);
                    None
                }
            };
            if let Some(node) = node {
                tree.nodes.push(node);
            }
        }
        Ok(())
    }

    fn flush_file_records(&mut self) -> Result<()> {
        let records = std::mem::take(&mut self.file_records);
        self.repo.cache().put_files(&records)
    }

    /// Saves one entry (recursively for directories). `Ok(None)` means it was left out.
    fn save_path(
        &mut self,
        path: &Path,
        name: &[u8],
        root_dev: Option<u64>,
    ) -> Result<Option<Node>> {
        if self.opts.excludes.excluded(path) {
            return Ok(None);
        }
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                self.warn(format!("{}: {e}", path.display()));
                return Ok(None);
            }
        };
        self.save_entry(path, name, &meta, root_dev)
    }

    /// Saves one entry whose metadata is known.
    fn save_entry(
        &mut self,
        path: &Path,
        name: &[u8],
        meta: &std::fs::Metadata,
        root_dev: Option<u64>,
    ) -> Result<Option<Node>> {
        let mut node = node_from_metadata(name, path, meta);
        match node.kind {
            NodeKind::File => {
                self.summary.files += 1;
                return match self.begin_file(path, node, meta)? {
                    Ok(unchanged) => Ok(Some(unchanged)),
                    Err((node, start)) => self.read_file(path, node, meta, start),
                };
            }
            NodeKind::Symlink => {
                self.summary.others += 1;
                match std::fs::read_link(path) {
                    Ok(t) => node.link_target = Some(t.as_os_str().as_bytes().to_vec()),
                    Err(e) => {
                        self.summary.others -= 1;
                        self.warn(format!("{}: {e}", path.display()));
                        return Ok(None);
                    }
                }
            }
            NodeKind::Dir => {
                for marker in &self.opts.excludes.if_present {
                    if path
                        .join(std::ffi::OsStr::from_bytes(marker))
                        .symlink_metadata()
                        .is_ok()
                    {
                        return Ok(None);
                    }
                }
                self.summary.dirs += 1;
                let root_dev = root_dev.unwrap_or(meta.dev());
                let descend = !self.opts.one_file_system || meta.dev() == root_dev;
                let tree = if descend {
                    self.save_dir_contents(path, root_dev)?
                } else {
                    Tree::default()
                };
                node.subtree = Some(self.save_tree(tree)?);
            }
            _ => self.summary.others += 1,
        }
        Ok(Some(node))
    }

    fn save_dir_contents(&mut self, path: &Path, root_dev: u64) -> Result<Tree> {
        let mut names: Vec<std::ffi::OsString> = match std::fs::read_dir(path) {
            Ok(rd) => {
                let mut v = Vec::new();
                for entry in rd {
                    match entry {
                        Ok(e) => v.push(e.file_name()),
                        Err(e) => self.warn(format!("{}: {e}", path.display())),
                    }
                }
                v
            }
            Err(e) => {
                self.warn(format!("{}: {e}", path.display()));
                Vec::new()
            }
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut tree = Tree::default();
        // Small files that must be read are queued and read in parallel (`run_jobs`).
        let mut jobs: Vec<FileJob> = Vec::new();
        let mut job_bytes = 0u64;
        for name in names {
            let child = path.join(&name);
            if self.opts.excludes.excluded(&child) {
                continue;
            }
            let meta = match std::fs::symlink_metadata(&child) {
                Ok(m) => m,
                Err(e) => {
                    self.warn(format!("{}: {e}", child.display()));
                    continue;
                }
            };
            let name = name_bytes(&name);
            if !(meta.file_type().is_file() && meta.size() < SMALL_FILE) {
                if let Some(node) = self.save_entry(&child, &name, &meta, Some(root_dev))? {
                    tree.nodes.push(node);
                }
                continue;
            }
            self.summary.files += 1;
            let node = node_from_metadata(&name, &child, &meta);
            match self.begin_file(&child, node, &meta)? {
                Ok(unchanged) => tree.nodes.push(unchanged),
                Err((node, start)) => {
                    job_bytes += meta.size();
                    jobs.push(FileJob {
                        path: child,
                        node,
                        meta,
                        start,
                    });
                    if jobs.len() >= JOB_FILES || job_bytes >= JOB_BYTES {
                        self.run_jobs(&mut jobs, &mut tree)?;
                        job_bytes = 0;
                    }
                }
            }
        }
        self.run_jobs(&mut jobs, &mut tree)?;
        Ok(tree)
    }

    fn save_tree(&mut self, mut tree: Tree) -> Result<Id> {
        tree.canonicalize()?;
        let bytes = to_cbor(&tree)?;
        self.writer.add_plain(BlobKind::Tree, &bytes)
    }

    /// Builds the root tree for several absolute paths, keeping their places: backing up
    /// `/srv/a` yields root -> `srv` -> `a`, with the real metadata of `/srv`.
    fn save_roots(&mut self, roots: &Trie, prefix: &Path) -> Result<Tree> {
        let mut tree = Tree::default();
        for (name, child) in &roots.children {
            let path = prefix.join(std::ffi::OsStr::from_bytes(name));
            let node = if child.whole {
                self.save_path(&path, name, None)?
            } else {
                match std::fs::symlink_metadata(&path) {
                    Ok(meta) => {
                        let mut node = node_from_metadata(name, &path, &meta);
                        let sub = self.save_roots(child, &path)?;
                        node.subtree = Some(self.save_tree(sub)?);
                        Some(node)
                    }
                    Err(e) => {
                        self.warn(format!("{}: {e}", path.display()));
                        None
                    }
                }
            };
            if let Some(n) = node {
                tree.nodes.push(n);
            }
        }
        Ok(tree)
    }

    fn commit(
        mut self,
        kind: SnapshotKind,
        paths: Vec<String>,
        root: Id,
        started: Instant,
        command: Vec<String>,
    ) -> Result<BackupResult> {
        self.flush_file_records()?;
        let stats = self.writer.finish()?;
        self.summary.blobs_added = stats.blobs_added;
        self.summary.bytes_added = stats.bytes_added;
        self.summary.bytes_stored = stats.bytes_stored;
        self.summary.duration_secs = started.elapsed().as_secs_f64();
        let parent = find_parent(self.repo, &self.opts.host, &paths, kind)?;
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
            incomplete: self.summary.errors > 0,
            summary: self.summary,
            program_version: env!("CARGO_PKG_VERSION").to_string(),
            command,
            pg: None,
            original: None,
        };
        let lapsed = !self.lease.held();
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
        if let Err(e) = self.lease.release() {
            tracing::warn!("cannot remove the backup lease (it expires by itself): {e}");
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

/// Path components of the roots to back up.
#[derive(Default, Debug)]
struct Trie {
    whole: bool,
    children: BTreeMap<Vec<u8>, Trie>,
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
        let mut node = &mut trie;
        for c in abs.components().skip(1) {
            node = node
                .children
                .entry(c.as_os_str().as_bytes().to_vec())
                .or_default();
        }
        node.whole = true;
    }
    names.sort();
    names.dedup();
    prune_trie(&mut trie);
    let mut a = Archiver::new(repo, opts, progress)?;
    let root_tree = if trie.whole {
        a.save_dir_contents(
            Path::new("/"),
            std::fs::symlink_metadata("/").map(|m| m.dev()).unwrap_or(0),
        )?
    } else {
        a.save_roots(&trie, Path::new("/"))?
    };
    let root = a.save_tree(root_tree)?;
    a.commit(SnapshotKind::Files, names, root, started, Vec::new())
}

/// A root that is saved whole covers everything below it.
fn prune_trie(t: &mut Trie) {
    if t.whole {
        t.children.clear();
    }
    for c in t.children.values_mut() {
        prune_trie(c);
    }
}

fn stream_node(name: &str, size: u64) -> Node {
    let now = jiff::Timestamp::now();
    let t = Time(now.as_second(), now.subsec_nanosecond().max(0) as u32);
    Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::File,
        mode: 0o600,
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        user: Some(sys::username()),
        group: sys::group_name(nix::unistd::getgid().as_raw()),
        mtime: t,
        atime: None,
        ctime: t,
        size,
        inode: 0,
        device: 0,
        links: 1,
        rdev: 0,
        link_target: None,
        xattrs: Vec::new(),
        content: Vec::new(),
        content_lists: Vec::new(),
        subtree: None,
    }
}

fn validate_stream_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(Error::invalid(format!(
            "stdin file name {name:?} must be a plain file name"
        )));
    }
    Ok(())
}

/// Backs up a stream as one file named `name`. `before_commit` runs after the stream ended
/// and before the snapshot is written; an error from it means no snapshot.
/// A stream to back up as one file.
struct Stream<'a> {
    reader: &'a mut (dyn Read + Send),
    name: &'a str,
    kind: SnapshotKind,
    command: Vec<String>,
}

fn backup_reader(
    repo: &Repository,
    stream: Stream<'_>,
    opts: &BackupOptions,
    progress: &dyn Progress,
    before_commit: &mut dyn FnMut() -> Result<()>,
) -> Result<BackupResult> {
    let Stream {
        reader,
        name,
        kind,
        command,
    } = stream;
    let started = Instant::now();
    validate_stream_name(name)?;
    let mut a = Archiver::new(repo, opts, progress)?;
    let (ids, len) = a.save_stream(reader).map_err(|e| {
        Error::io(
            format!(
                "reading {}",
                if command.is_empty() {
                    "standard input".to_string()
                } else {
                    format!("the output of `{}`", command.join(" "))
                }
            ),
            e,
        )
    })??;
    before_commit()?;
    let mut node = stream_node(name, len);
    a.set_content(&mut node, ids)?;
    a.summary.files = 1;
    a.summary.files_new = 1;
    a.summary.total_bytes = len;
    a.summary.bytes_read = len;
    let root = a.save_tree(Tree { nodes: vec![node] })?;
    a.commit(kind, vec![format!("/{name}")], root, started, command)
}

/// Backs up standard input (or any reader) as one file.
pub fn backup_stream(
    repo: &Repository,
    reader: &mut (dyn Read + Send),
    name: &str,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let stream = Stream {
        reader,
        name,
        kind: SnapshotKind::Stdin,
        command: Vec::new(),
    };
    backup_reader(repo, stream, opts, progress, &mut || Ok(()))
}

/// Runs a command and backs up its standard output as one file. The snapshot is written
/// only if the command exits with status 0; otherwise the error names the exit status and
/// nothing is committed. The command's standard error passes through.
pub fn backup_command(
    repo: &Repository,
    argv: &[String],
    name: &str,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupResult> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| Error::invalid("no command given after --"))?;
    validate_stream_name(name)?;
    let shown = argv.join(" ");
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            Error::with_source(ErrorKind::Command, format!("cannot start `{shown}`"), e)
        })?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::new(ErrorKind::Command, "no stdout pipe"))?;
    let mut wait = || -> Result<()> {
        let status = child
            .wait()
            .map_err(|e| Error::io(format!("waiting for `{shown}`"), e))?;
        if status.success() {
            Ok(())
        } else {
            let how = match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(s)) => format!("was killed by signal {s}"),
                _ => "failed".to_string(),
            };
            Err(Error::new(
                ErrorKind::Command,
                format!("command `{shown}` {how}; no snapshot was saved"),
            ))
        }
    };
    let stream = Stream {
        reader: &mut stdout,
        name,
        kind: SnapshotKind::Command,
        command: argv.to_vec(),
    };
    let result = backup_reader(repo, stream, opts, progress, &mut wait);
    if result.is_err() {
        // Do not leave the child blocked on a full pipe.
        drop(stdout);
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A file queued as small but longer than `SMALL_FILE` by the time it is read (it grew)
    /// is reported as such, so that it is read again as a stream, never cut short.
    #[test]
    fn read_small_refuses_files_that_outgrew_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let at_limit = dir.path().join("at-limit");
        let over = dir.path().join("over");
        std::fs::write(&at_limit, vec![7u8; SMALL_FILE as usize]).unwrap();
        std::fs::write(&over, vec![7u8; SMALL_FILE as usize + 1]).unwrap();
        assert_eq!(
            read_small(&at_limit).unwrap().map(|d| d.len()),
            Some(SMALL_FILE as usize)
        );
        assert!(read_small(&over).unwrap().is_none());
        assert!(read_small(&dir.path().join("missing")).is_err());
    }
}
