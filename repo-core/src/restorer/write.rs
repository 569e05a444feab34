//! Writing restored files: each created relative to its folder's descriptor, filled with
//! the fetched contents (all-zero blobs left as holes), then given its metadata through the
//! same descriptor; and checking whether a local file already has a snapshot's content.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::dirs::{errno, DirFd};
use super::entries::apply_fd;
use super::fetch::FileJob;
use super::io_err;
use crate::error::Result;
use crate::format::tree::Node;
use crate::repository::Repository;

/// Files of at least this size are written in pieces of this size at offsets that are
/// multiples of it. Linux stores such writes in large page-cache folios: on the reference
/// machine writing 800 MB in aligned 1 MiB pieces takes 0.2 s of system time, in 64 KiB or
/// unaligned pieces 1.1-2.1 s (see docs/performance.md).
const STAGE: usize = 1 << 20;
/// A large file's writing to storage is started each time this much more of it has been
/// written (see [`crate::sys::start_writeback`]), so that the flush after a restore (a
/// PostgreSQL restore syncs the file system before it writes `pg_control`) overlaps with
/// the restore instead of following it: on the reference machine a 340 MB data directory
/// restores in 0.44-0.52 s instead of 0.58-0.61 s (docs/performance.md).
const WRITEBACK_EVERY: u64 = 8 << 20;
/// Files from this size on have their writing to storage started when they are complete.
const WRITEBACK_MIN: u64 = 64 << 10;

/// A file being restored: created owner-only and new, filled blob by blob, with all-zero
/// blobs left as holes, then given its metadata through the open descriptor (no path
/// lookups, and safe to do in parallel).
pub(super) struct NewFile<'p> {
    f: File,
    dir: &'p DirFd,
    name: &'p [u8],
    /// The file's path as shown: its own name, also while it is written under a temporary
    /// one.
    pub(super) shown: PathBuf,
    /// Content length so far, including `staged` bytes not yet written.
    pub(super) len: u64,
    /// Whether the content ends in a hole, which only setting the length materialises.
    hole_at_end: bool,
    /// For files of at least `STAGE` bytes: content not yet written, which starts at file
    /// offset `len - staged.len()` and is written up to the next multiple of `STAGE`.
    staged: Option<Vec<u8>>,
    /// Set once complete; until then dropping the file removes it, so a failed or
    /// abandoned file never stays behind as a partial one.
    done: bool,
    /// For staged files: where the next writeback starts.
    written_back: u64,
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
    pub(super) fn create(job: &FileJob<'p>) -> Result<Self> {
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
            written_back: 0,
        })
    }

    /// Appends blobs to a staged file (one of at least `STAGE` bytes): the bytes are written
    /// straight from the blobs, a vectored write per run of non-zero blobs up to each
    /// multiple of `STAGE`; only what follows the last such multiple is copied, into
    /// `staged`, to go first in the next write. All-zero blobs are holes.
    fn append_staged(&mut self, blobs: &[&[u8]]) -> Result<()> {
        let mut staged = self.staged.take().unwrap_or_default();
        let result = self.append_staged_with(&mut staged, blobs);
        self.staged = Some(staged);
        result
    }

    fn append_staged_with(&mut self, staged: &mut Vec<u8>, blobs: &[&[u8]]) -> Result<()> {
        // The bytes not yet written, in order: what was staged, then parts of blobs. They
        // start at file offset `self.len - pending`.
        let mut run: Vec<&[u8]> = Vec::with_capacity(blobs.len() + 1);
        let carried = std::mem::take(staged);
        if !carried.is_empty() {
            run.push(&carried);
        }
        let mut pending: u64 = carried.len() as u64;
        for data in blobs {
            if data.iter().all(|b| *b == 0) {
                self.write_all_of(&run)?;
                run.clear();
                pending = 0;
                self.f
                    .seek(SeekFrom::Current(data.len() as i64))
                    .map_err(|e| io_err(&self.shown, e))?;
                self.len += data.len() as u64;
                self.hole_at_end = true;
                continue;
            }
            self.hole_at_end = false;
            run.push(data);
            pending += data.len() as u64;
            self.len += data.len() as u64;
            let start = self.len - pending;
            let boundary = self.len / STAGE as u64 * STAGE as u64;
            if boundary > start {
                // Write up to the boundary; the rest of the last blob stays pending.
                let keep = (self.len - boundary) as usize;
                let last = run.pop().unwrap_or_default();
                let (head, tail) = last.split_at(last.len() - keep);
                run.push(head);
                self.write_all_of(&run)?;
                run.clear();
                if !tail.is_empty() {
                    run.push(tail);
                }
                pending = keep as u64;
                if boundary - self.written_back >= WRITEBACK_EVERY {
                    crate::sys::start_writeback(
                        &self.f,
                        self.written_back,
                        boundary - self.written_back,
                    );
                    self.written_back = boundary;
                }
            }
        }
        // What follows the last boundary waits for the next blobs, in `staged`.
        staged.clear();
        for part in &run {
            staged.extend_from_slice(part);
        }
        Ok(())
    }

    /// Writes `parts` whole, in order, with vectored writes.
    fn write_all_of(&mut self, parts: &[&[u8]]) -> Result<()> {
        let mut slices: Vec<std::io::IoSlice> =
            parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
        self.write_run(&mut slices)
    }

    /// Appends the whole content of a small file at once: each run of non-zero blobs is
    /// one vectored write, all-zero blobs are holes.
    pub(super) fn append_all(&mut self, blobs: &[&[u8]]) -> Result<()> {
        if self.staged.is_some() {
            return self.append_staged(blobs);
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
        // Small files are left to the kernel, which writes many of them in one go; a
        // writeback of its own for each would cost a request each.
        if self.len >= WRITEBACK_MIN {
            crate::sys::start_writeback(&self.f, self.written_back, 0);
        }
        apply_fd(&self.f, &shown, node, is_root)?;
        self.done = true;
        Ok(self.len)
    }
}

/// Whether the local file has exactly the snapshot's content: it is read blob by blob, each
/// piece as long as the snapshot's blob there (its length from the index), and each piece's
/// id compared with the snapshot's. So nothing but the local file is read, and it does not
/// matter how the content was cut (base backups cut data files at page boundaries, not with
/// the repository's chunker).
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
    let max = repo.max_blob(crate::id::BlobKind::Data);
    let mut buf = Vec::new();
    let mut total = 0u64;
    for id in &expected {
        let len = u64::from(repo.locate(id)?.raw_length);
        if len > max {
            return Err(crate::error::Error::corrupt(format!(
                "blob {id} claims {len} bytes, more than a data blob may hold ({max})"
            )));
        }
        total = total.saturating_add(len);
        if total > node.size {
            return Ok(false);
        }
        buf.resize(len as usize, 0);
        if !fill_exactly(&mut f, &mut buf).map_err(|e| io_err(path, e))? {
            return Ok(false);
        }
        if repo.blob_id(&buf) != *id {
            return Ok(false);
        }
    }
    // Nothing may follow the snapshot's content.
    let mut probe = [0u8; 1];
    let more = fill_exactly(&mut f, &mut probe).map_err(|e| io_err(path, e))?;
    Ok(total == node.size && !more)
}

/// Fills `buf` from `f`; false when the file ends first.
fn fill_exactly(f: &mut File, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        match std::io::Read::read(f, &mut buf[at..]) {
            Ok(0) => return Ok(false),
            Ok(n) => at += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
