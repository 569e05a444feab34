//! Backup: turning file trees and streams into blobs, trees and a snapshot.
//!
//! Strategy. Directories are walked depth-first in name order, with an explicit stack rather
//! than recursion, each entry reached through a descriptor of its folder (see `tree_walk`);
//! each directory becomes one tree blob once its entries are saved, so memory holds one
//! listing per level of depth. A file whose (path, inode, mtime, ctime, size) matches the files cache, and whose blobs are
//! all still indexed, is not read at all. The other small files of a folder (below 1 MiB) are
//! read whole, cut, hashed, looked up, compressed and sealed in parallel on the rayon pool, a
//! file per task, in groups of up to 256 files or 16 MiB, and their blobs are then packed in
//! name order. Larger files and streams are read in 4 MiB batches on a thread of their own;
//! the chunks of a batch are sealed in parallel while the previous batch is packed. A file
//! is read up to the size it had when opened (see `files`).
//!
//! Failure. A file or directory that cannot be read (permissions, vanished mid-walk) is
//! reported as a warning and left out; the snapshot is then marked incomplete. Any other
//! error (repository, cache, upload) aborts the backup before the snapshot is written: what
//! was uploaded stays unreferenced until garbage collection, and the repository is unchanged
//! from the point of view of every reader.

mod files;
mod tree_walk;

use tree_walk::Trie;

use std::io::Read;
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
use crate::walk::Excludes;
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

    /// A warning about something saved, not left out: the snapshot stays complete.
    fn note(&mut self, message: String) {
        self.progress.warn(&message);
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

    fn save_tree(&mut self, mut tree: Tree) -> Result<Id> {
        tree.canonicalize()?;
        let bytes = to_cbor(&tree)?;
        self.writer.add_plain(BlobKind::Tree, &bytes)
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
    let mut a = Archiver::new(repo, opts, progress)?;
    let root_tree = a.walk_roots(&trie)?;
    let root = a.save_tree(root_tree)?;
    a.commit(SnapshotKind::Files, names, root, started, Vec::new())
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
