//! Writing restored files: contents fetched in parallel and written through descriptors
//! created relative to their folder's descriptor, then their metadata applied through the
//! same descriptors.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};
use rayon::prelude::*;

use super::dirs::{errno, DirFd};
use super::entries::apply_fd;
use super::io_err;
use crate::error::{Error, ErrorKind, Result};
use crate::format::tree::Node;
use crate::id::{BlobKind, Id};
use crate::progress::Progress;
use crate::repository::{coalesce, Repository};

/// A new file to write: created as `name` in `dir` (its own name, or a temporary name when
/// it replaces an entry), shown (in progress, warnings and errors) under its own name.
pub(super) struct FileJob<'a> {
    pub(super) dir: &'a DirFd,
    pub(super) name: &'a [u8],
    pub(super) shown: &'a [u8],
    pub(super) node: &'a Node,
}

impl FileJob<'_> {
    fn shown_path(&self) -> PathBuf {
        self.dir.child(self.shown)
    }
}

/// Files of at most this many blobs are "small": their blobs are fetched together with those
/// of the other small files of the folder, in coalesced reads.
const SMALL_FILE_BLOBS: usize = 4;
/// Plaintext held at once for a group of small files.
const SMALL_GROUP_BYTES: u64 = 32 << 20;
/// Two blobs of one pack are fetched by one read when the gap between them is at most this.
const COALESCE_GAP: u64 = 256 << 10;

/// Writes the contents of new files (to their temporary names). Large files stream their
/// blobs in parallel windows; small files are grouped, and the blobs of a group are read
/// with one ranged read per run of neighbouring blobs in a pack (files of one folder were
/// backed up one after another, so their blobs are usually adjacent), decrypted in parallel,
/// and then written. Returns the bytes written per file, in order.
pub(super) fn write_files(
    repo: &Repository,
    files: &[FileJob<'_>],
    group_files: usize,
    is_root: bool,
    progress: &dyn Progress,
) -> Vec<Result<u64>> {
    let mut results: Vec<Option<Result<u64>>> = (0..files.len()).map(|_| None).collect();
    let mut small: Vec<usize> = Vec::new();
    for (i, FileJob { node, .. }) in files.iter().enumerate() {
        if node.content_lists.is_empty()
            && node.content.len() <= SMALL_FILE_BLOBS
            && node.size <= SMALL_GROUP_BYTES
        {
            small.push(i);
        }
    }
    // Large files: one at a time each, in parallel.
    let mut is_small = vec![false; files.len()];
    for &i in &small {
        is_small[i] = true;
    }
    let large: Vec<usize> = (0..files.len()).filter(|&i| !is_small[i]).collect();
    // Large files (each in parallel windows) and the groups of small files run side by
    // side, so that neither phase's tail leaves a core idle.
    let write_large = || -> Vec<(usize, Result<u64>)> {
        large
            .par_iter()
            .map(|&i| {
                let job = &files[i];
                let written = write_content(repo, job, progress)
                    .and_then(|out| out.finish(job.node, is_root));
                (i, written)
            })
            .collect()
    };
    let write_small = || -> Vec<(usize, Result<u64>)> {
        let mut out = Vec::with_capacity(small.len());
        for group in small_groups(files, &small, group_files) {
            match write_small_group(repo, files, group, is_root, progress) {
                Ok(rs) => out.extend(group.iter().copied().zip(rs)),
                Err(e) => out.extend(
                    group
                        .iter()
                        .map(|&i| (i, Err(Error::new(e.kind(), e.to_string())))),
                ),
            }
        }
        out
    };
    let (large_results, small_results) = rayon::join(write_large, write_small);
    for (i, r) in large_results.into_iter().chain(small_results) {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::new(ErrorKind::Other, "file was not written"))))
        .collect()
}

/// Consecutive runs of `small` (indexes into `files`) holding about `SMALL_GROUP_BYTES` and
/// at most `max_files` files: a group's files are all open at once.
fn small_groups<'s>(
    files: &[FileJob<'_>],
    small: &'s [usize],
    max_files: usize,
) -> Vec<&'s [usize]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (k, &i) in small.iter().enumerate() {
        bytes += files[i].node.size;
        if bytes >= SMALL_GROUP_BYTES || k + 1 - start >= max_files || k + 1 == small.len() {
            groups.push(&small[start..=k]);
            start = k + 1;
            bytes = 0;
        }
    }
    groups
}

/// A blob's id and plaintext.
type Plain = (Id, Vec<u8>);

fn write_small_group(
    repo: &Repository,
    files: &[FileJob<'_>],
    group: &[usize],
    is_root: bool,
    progress: &dyn Progress,
) -> Result<Vec<Result<u64>>> {
    // Every distinct blob of the group with where it is, in runs of neighbouring blobs of
    // one pack.
    let mut wanted: Vec<(Id, crate::cache::BlobLocation)> = Vec::new();
    let mut seen = HashSet::new();
    for &i in group {
        for id in &files[i].node.content {
            if seen.insert(*id) {
                wanted.push((*id, repo.locate(id)?));
            }
        }
    }
    let runs = coalesce(wanted, COALESCE_GAP);
    // The group's files are created on one thread while the others fetch its blobs:
    // creating entries takes their folder's lock, so creating them in parallel only spins.
    let create_all = || -> Vec<Result<NewFile<'_>>> {
        group.iter().map(|&i| NewFile::create(&files[i])).collect()
    };
    let fetch_all = || -> Vec<Result<Vec<Plain>>> {
        runs.par_iter()
            .map(|run| repo.read_run(BlobKind::Data, run))
            .collect()
    };
    let (created, fetched) = rayon::join(create_all, fetch_all);
    let mut blobs: HashMap<Id, Vec<u8>> = HashMap::new();
    for f in fetched {
        blobs.extend(f?);
    }
    Ok(group
        .par_iter()
        .zip(created)
        .map(|(&i, out)| {
            let node = files[i].node;
            let mut out = out?;
            progress.file(&out.shown);
            let mut content = Vec::with_capacity(node.content.len());
            for id in &node.content {
                let data = blobs
                    .get(id)
                    .ok_or_else(|| Error::not_found(format!("blob {id} was not fetched")))?;
                content.push(data.as_slice());
            }
            out.append_all(&content)?;
            progress.bytes(out.len);
            out.finish(node, is_root)
        })
        .collect())
}

/// Blobs of one file fetched and decrypted in parallel before being written in order.
const FETCH_WINDOW: usize = 16;

/// Writes a file's content to `path` (a new file), fetching blobs in parallel windows and
/// turning all-zero blobs into holes; returns the file to be finished. The file is not
/// fsynced: a write error, including a full disk, is reported by `write` itself.
pub(super) fn write_content<'p>(
    repo: &Repository,
    job: &FileJob<'p>,
    progress: &dyn Progress,
) -> Result<NewFile<'p>> {
    let node = job.node;
    let shown = job.shown_path();
    progress.file(&shown);
    let mut out = NewFile::create(job)?;
    let ids = repo.file_content(node)?;
    for window in ids.chunks(FETCH_WINDOW) {
        let blobs: Vec<Result<Vec<u8>>> = window
            .par_iter()
            .map(|id| repo.read_blob(BlobKind::Data, id))
            .collect();
        let blobs: Vec<Vec<u8>> = blobs
            .into_iter()
            .collect::<Result<_>>()
            .map_err(|e| e.context(out.shown.display()))?;
        let slices: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
        out.append_all(&slices)?;
        progress.bytes(slices.iter().map(|b| b.len() as u64).sum());
    }
    Ok(out)
}

/// Files of at least this size are written in pieces of this size at offsets that are
/// multiples of it. Linux stores such writes in large page-cache folios: on the reference
/// machine writing 800 MB in aligned 1 MiB pieces takes 0.2 s of system time, in 64 KiB or
/// unaligned pieces 1.1-2.1 s (see docs/performance.md).
const STAGE: usize = 1 << 20;

/// A file being restored: created owner-only and new, filled blob by blob, with all-zero
/// blobs left as holes, then given its metadata through the open descriptor (no path
/// lookups, and safe to do in parallel).
pub(super) struct NewFile<'p> {
    f: File,
    dir: &'p DirFd,
    name: &'p [u8],
    /// The file's path as shown: its own name, also while it is written under a temporary
    /// one.
    shown: PathBuf,
    /// Content length so far, including `staged` bytes not yet written.
    len: u64,
    /// Whether the content ends in a hole, which only setting the length materialises.
    hole_at_end: bool,
    /// For files of at least `STAGE` bytes: content not yet written, which starts at file
    /// offset `len - staged.len()` and is written up to the next multiple of `STAGE`.
    staged: Option<Vec<u8>>,
    /// Set once complete; until then dropping the file removes it, so a failed or
    /// abandoned file never stays behind as a partial one.
    done: bool,
}

impl Drop for NewFile<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = unlinkat(
                self.dir.file.as_fd(),
                OsStr::from_bytes(self.name),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

impl<'p> NewFile<'p> {
    /// Creates the file, exclusively and owner-only (content is written before permissions
    /// are applied), never through a symlink; the snapshot's size decides whether writes
    /// are staged.
    fn create(job: &FileJob<'p>) -> Result<Self> {
        let shown = job.shown_path();
        let fd = openat(
            job.dir.file.as_fd(),
            OsStr::from_bytes(job.name),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(|e| errno(&shown, e))?;
        let size = job.node.size;
        Ok(NewFile {
            f: File::from(fd),
            dir: job.dir,
            name: job.name,
            shown,
            len: 0,
            hole_at_end: false,
            staged: (size >= STAGE as u64).then(|| Vec::with_capacity(2 * STAGE)),
            done: false,
        })
    }

    /// Appends one blob's plaintext.
    fn append(&mut self, data: &[u8]) -> Result<()> {
        if data.iter().all(|b| *b == 0) {
            return self.skip(data.len());
        }
        self.hole_at_end = false;
        self.len += data.len() as u64;
        let Some(staged) = &mut self.staged else {
            return self.f.write_all(data).map_err(|e| io_err(&self.shown, e));
        };
        staged.extend_from_slice(data);
        let start = self.len - staged.len() as u64;
        let boundary = (start / STAGE as u64 + 1) * STAGE as u64;
        if self.len >= boundary {
            let n = (boundary - start) as usize;
            self.f
                .write_all(&staged[..n])
                .map_err(|e| io_err(&self.shown, e))?;
            staged.drain(..n);
        }
        Ok(())
    }

    /// Appends the whole content of a small file at once: each run of non-zero blobs is
    /// one vectored write, all-zero blobs are holes.
    fn append_all(&mut self, blobs: &[&[u8]]) -> Result<()> {
        if self.staged.is_some() {
            return blobs.iter().try_for_each(|b| self.append(b));
        }
        let mut run: Vec<std::io::IoSlice> = Vec::with_capacity(blobs.len());
        for data in blobs {
            if data.iter().all(|b| *b == 0) {
                self.write_run(&mut run)?;
                self.skip(data.len())?;
            } else {
                run.push(std::io::IoSlice::new(data));
                self.len += data.len() as u64;
                self.hole_at_end = false;
            }
        }
        self.write_run(&mut run)
    }

    fn write_run(&mut self, run: &mut Vec<std::io::IoSlice>) -> Result<()> {
        let mut slices = &mut run[..];
        while !slices.is_empty() {
            let n = self
                .f
                .write_vectored(slices)
                .map_err(|e| io_err(&self.shown, e))?;
            if n == 0 {
                return Err(io_err(
                    &self.shown,
                    std::io::Error::from(std::io::ErrorKind::WriteZero),
                ));
            }
            std::io::IoSlice::advance_slices(&mut slices, n);
        }
        run.clear();
        Ok(())
    }

    /// Writes what is staged at its place, leaving the file offset at `len`.
    fn write_staged(&mut self) -> Result<()> {
        if let Some(staged) = &mut self.staged {
            if !staged.is_empty() {
                self.f
                    .write_all(staged)
                    .map_err(|e| io_err(&self.shown, e))?;
                staged.clear();
            }
        }
        Ok(())
    }

    /// Leaves a hole of `n` bytes.
    fn skip(&mut self, n: usize) -> Result<()> {
        self.write_staged()?;
        self.f
            .seek(SeekFrom::Current(n as i64))
            .map_err(|e| io_err(&self.shown, e))?;
        self.len += n as u64;
        self.hole_at_end = true;
        Ok(())
    }

    /// Sets the length when the file ends in a hole, then owner (as root), mode, extended
    /// attributes and times, in that order (changing the owner clears set-id bits; the
    /// times come last because every other change touches them). Returns the length.
    pub(super) fn finish(mut self, node: &Node, is_root: bool) -> Result<u64> {
        self.write_staged()?;
        let shown = self.shown.clone();
        let err = |e: std::io::Error| io_err(&shown, e);
        if self.hole_at_end {
            self.f.set_len(self.len).map_err(err)?;
        }
        apply_fd(&self.f, &shown, node, is_root)?;
        self.done = true;
        Ok(self.len)
    }
}

/// Whether the local file has exactly the snapshot's content: it is chunked with the
/// repository's chunker and the blob ids compared, so nothing but the local file is read.
pub fn file_matches(repo: &Repository, path: &Path, node: &Node) -> Result<bool> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    content_matches(repo, f, path, node)
}

/// [`file_matches`] for a file already open.
pub(super) fn content_matches(
    repo: &Repository,
    mut f: File,
    path: &Path,
    node: &Node,
) -> Result<bool> {
    let expected = repo.file_content(node)?;
    let chunker = repo.chunker()?;
    let mut s = cairn_chunker::StreamChunker::new(chunker);
    let mut got = Vec::with_capacity(expected.len());
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path, e)),
        };
        total += n as u64;
        if total > node.size {
            return Ok(false);
        }
        s.push(&buf[..n], |c| got.push(repo.blob_id(c)));
        if got.len() > expected.len() || got.iter().zip(&expected).any(|(a, b)| a != b) {
            return Ok(false);
        }
    }
    s.finish(|c| got.push(repo.blob_id(c)));
    Ok(got == expected)
}
