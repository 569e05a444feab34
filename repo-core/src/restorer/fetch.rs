//! Fetching restored files' contents: large files in parallel windows of blobs, small files
//! in groups whose blobs are read with one ranged read per run of neighbouring blobs in a
//! pack. Every blob is read through the repository's blob reader, which decodes a window's or
//! a group's blobs into one buffer (kept for the whole restore), each at the place its index
//! entry's length gives it; the bytes go to [`NewFile`]s, which write them.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Mutex;

use rayon::prelude::*;

use super::dirs::DirFd;
use super::write::NewFile;
use crate::cache::BlobLocation;
use crate::error::{Error, ErrorKind, Result};
use crate::format::tree::Node;
use crate::id::{BlobKind, Id};
use crate::progress::Progress;
use crate::repository::{coalesce, BlobRun, Repository};

/// A new file to write: created as `name` in `dir` (its own name, or a temporary name when
/// it replaces an entry), shown (in progress, warnings and errors) under its own name.
pub(super) struct FileJob<'a> {
    pub(super) dir: &'a DirFd,
    pub(super) name: &'a [u8],
    pub(super) shown: &'a [u8],
    pub(super) node: &'a Node,
}

impl FileJob<'_> {
    pub(super) fn shown_path(&self) -> PathBuf {
        self.dir.child(self.shown)
    }
}

/// Decoding buffers kept between the files and batches of one restore, so that each is
/// faulted into memory once rather than for every file: a new buffer of a window's size is
/// fresh pages, whose first touch costs the kernel more than decoding into them.
#[derive(Debug, Default)]
pub(super) struct Buffers(Mutex<Vec<Vec<u8>>>);

/// Buffers kept: two per large file being written on each of two threads. They are no more
/// than the restore holds at its busiest anyway...
const BUFFERS_KEPT: usize = 4;
/// ... and none larger than a window or a group of small files needs.
const BUFFER_KEPT_MAX: usize = 2 * SMALL_GROUP_BYTES as usize;

impl Buffers {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut kept| kept.pop())
            .unwrap_or_default()
    }

    fn give(&self, buf: Vec<u8>) {
        if buf.len() > BUFFER_KEPT_MAX {
            return;
        }
        if let Ok(mut kept) = self.0.lock() {
            if kept.len() < BUFFERS_KEPT {
                kept.push(buf);
            }
        }
    }
}

/// Files of at most this many blobs, or of at most [`SMALL_FILE_BYTES`], are "small": their
/// blobs are fetched together with those of the other small files of the batch, in
/// coalesced reads, and the files are created on one thread while the blobs are fetched.
/// A data directory's catalogs are files of a few 8 KiB pages, each page a blob: fetched
/// one file at a time, each paid for a window of its own and their creation contended for
/// their folder's lock.
const SMALL_FILE_BLOBS: usize = 4;
const SMALL_FILE_BYTES: u64 = 1 << 20;
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
    buffers: &Buffers,
    files: &[FileJob<'_>],
    group_files: usize,
    is_root: bool,
    progress: &dyn Progress,
) -> Vec<Result<u64>> {
    let mut results: Vec<Option<Result<u64>>> = (0..files.len()).map(|_| None).collect();
    let mut small: Vec<usize> = Vec::new();
    for (i, FileJob { node, .. }) in files.iter().enumerate() {
        if node.content_lists.is_empty()
            && node.size <= SMALL_GROUP_BYTES
            && (node.content.len() <= SMALL_FILE_BLOBS || node.size <= SMALL_FILE_BYTES)
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
                let written = write_content(repo, buffers, job, progress)
                    .and_then(|out| out.finish(job.node, is_root));
                (i, written)
            })
            .collect()
    };
    let write_small = || -> Vec<(usize, Result<u64>)> {
        let mut out = Vec::with_capacity(small.len());
        // One buffer serves every group in turn.
        let mut buf = buffers.take();
        for group in small_groups(files, &small, group_files) {
            match write_small_group(repo, files, group, is_root, progress, &mut buf) {
                Ok(rs) => out.extend(group.iter().copied().zip(rs)),
                Err(e) => out.extend(
                    group
                        .iter()
                        .map(|&i| (i, Err(Error::new(e.kind(), e.to_string())))),
                ),
            }
        }
        buffers.give(buf);
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

/// Where each fetched blob's plaintext lies in the buffer it was decoded into.
type Placed = HashMap<Id, Range<usize>>;

/// Decodes the blobs of `runs` into `buf`, one after another (`buf` is replaced by a larger
/// one when it is too short; what it held is overwritten, never read): each run is read with
/// one ranged read, runs and their blobs are opened in parallel, and no blob gets an
/// allocation of its own. Returns where each blob's plaintext is.
///
/// Nothing is allocated before every blob's claimed size is checked against the
/// repository's bound, and the claims together must not exceed `limit` (what the caller's
/// files or window can hold): a damaged index cannot make a restore allocate more.
fn fetch_runs(
    repo: &Repository,
    runs: &[BlobRun],
    limit: u64,
    buf: &mut Vec<u8>,
) -> Result<Placed> {
    for run in runs {
        repo.check_run(BlobKind::Data, run)?;
    }
    let claimed = runs
        .iter()
        .try_fold(0u64, |sum, run| sum.checked_add(run.plain_len()?));
    let total = match claimed {
        Some(n) if n <= limit => usize::try_from(n).ok(),
        _ => None,
    }
    .ok_or_else(|| {
        Error::corrupt(format!(
            "the index claims more plaintext for {} blobs than the {limit} bytes of the files they make",
            runs.iter().map(|r| r.blobs().len()).sum::<usize>()
        ))
    })?;
    let mut placed = HashMap::new();
    let mut at = 0usize;
    let mut lens = Vec::with_capacity(runs.len());
    for run in runs {
        let start = at;
        for (id, loc) in run.blobs() {
            // Within `total`, which was summed from these lengths without overflow.
            let end = at + loc.raw_length as usize;
            placed.insert(*id, at..end);
            at = end;
        }
        lens.push(at - start);
    }
    if buf.len() < total {
        // The old buffer goes first, then a new zeroed one comes from the allocator's zeroed
        // pages (growing the old one would write every new byte twice).
        *buf = Vec::new();
        *buf = vec![0; total];
    }
    let mut slices = Vec::with_capacity(runs.len());
    let mut rest = &mut buf[..total];
    for len in lens {
        let (slice, tail) = rest
            .split_at_mut_checked(len)
            .ok_or_else(|| Error::new(ErrorKind::Other, "runs longer than their buffer"))?;
        slices.push(slice);
        rest = tail;
    }
    runs.par_iter()
        .zip(slices)
        .try_for_each(|(run, slice)| repo.read_run_into(BlobKind::Data, run, slice))?;
    Ok(placed)
}

/// The plaintexts of `ids` in order, from a buffer [`fetch_runs`] filled.
fn placed_slices<'b>(buf: &'b [u8], placed: &Placed, ids: &[Id]) -> Result<Vec<&'b [u8]>> {
    ids.iter()
        .map(|id| {
            placed
                .get(id)
                .and_then(|r| buf.get(r.clone()))
                .ok_or_else(|| Error::not_found(format!("blob {id} was not fetched")))
        })
        .collect()
}

fn write_small_group(
    repo: &Repository,
    files: &[FileJob<'_>],
    group: &[usize],
    is_root: bool,
    progress: &dyn Progress,
    buf: &mut Vec<u8>,
) -> Result<Vec<Result<u64>>> {
    // Every distinct blob of the group with where it is, in runs of neighbouring blobs of
    // one pack.
    let mut seen = HashSet::new();
    let distinct = group
        .iter()
        .flat_map(|&i| files[i].node.content.iter())
        .filter(|id| seen.insert(**id));
    let locator = repo.locator()?;
    let located = distinct
        .map(|id| Ok((*id, locator.locate(id)?)))
        .collect::<Result<Vec<_>>>()?;
    // The cache's read transaction ends before packs are read and files written.
    drop(locator);
    let runs = coalesce(located, COALESCE_GAP);
    // The group's distinct blobs hold at most its files' bytes (with room to spare, so that
    // a snapshot whose sizes and blobs disagree is still restored as it always was).
    let limit = group.iter().fold(SMALL_GROUP_BYTES, |sum, &i| {
        sum.saturating_add(files[i].node.size)
    });
    // The group's files are created on one thread while the others fetch its blobs:
    // creating entries takes their folder's lock, so creating them in parallel only spins.
    let create_all = || -> Vec<Result<NewFile<'_>>> {
        group.iter().map(|&i| NewFile::create(&files[i])).collect()
    };
    let (created, placed) = rayon::join(create_all, || fetch_runs(repo, &runs, limit, buf));
    let placed = placed?;
    let buf: &[u8] = buf;
    Ok(group
        .par_iter()
        .zip(created)
        .map(|(&i, out)| {
            let node = files[i].node;
            let mut out = out?;
            progress.file(&out.shown);
            out.append_all(&placed_slices(buf, &placed, &node.content)?)?;
            progress.bytes(out.len);
            out.finish(node, is_root)
        })
        .collect())
}

/// A large file's blobs are fetched in windows of at most this many bytes (sealed or
/// plaintext, whichever is larger; two windows are in memory at once)...
const FETCH_WINDOW_BYTES: u64 = 16 << 20;
/// ... and at most this many blobs.
const FETCH_WINDOW_BLOBS: usize = 1024;
/// A run read in one request holds at most this many bytes, stored or decoded (whichever is
/// larger), so that a window's runs are fetched and opened in parallel: a window of pages
/// that compress twentyfold would otherwise be one run, decoded on one thread.
const RUN_BYTES: u64 = 1 << 20;

/// Writes a file's content to `path` (a new file), fetching blobs in windows (one ranged read
/// per run of neighbouring blobs in a pack, runs in parallel, blobs opened in parallel) and
/// turning all-zero blobs into holes; returns the file to be finished. The next window is
/// fetched while the current one is written, so a large file keeps reading, opening and
/// writing busy at once. The file is not fsynced: a write error, including a full disk, is
/// reported by `write` itself.
pub(super) fn write_content<'p>(
    repo: &Repository,
    buffers: &Buffers,
    job: &FileJob<'p>,
    progress: &dyn Progress,
) -> Result<NewFile<'p>> {
    let node = job.node;
    let shown = job.shown_path();
    progress.file(&shown);
    let mut out = NewFile::create(job)?;
    let ids = repo.file_content(node)?;
    let fetch = |start: usize, buf: &mut Vec<u8>| {
        fetch_window(repo, &ids, start, buf).map_err(|e| e.context(shown.display()))
    };
    // Two buffers take turns: one is written out while the next window is decoded into
    // the other.
    let (mut current, mut spare) = (buffers.take(), buffers.take());
    let mut next = if ids.is_empty() {
        None
    } else {
        Some(fetch(0, &mut current)?)
    };
    let mut start = 0;
    while let Some((end, placed)) = next.take() {
        let window = &ids[start..end];
        let write = |out: &mut NewFile<'p>| -> Result<()> {
            let slices = placed_slices(&current, &placed, window)?;
            out.append_all(&slices)?;
            progress.bytes(slices.iter().map(|b| b.len() as u64).sum());
            Ok(())
        };
        if end < ids.len() {
            let (written, fetched) = rayon::join(|| write(&mut out), || fetch(end, &mut spare));
            written?;
            next = Some(fetched?);
            std::mem::swap(&mut current, &mut spare);
        } else {
            write(&mut out)?;
        }
        start = end;
    }
    buffers.give(current);
    buffers.give(spare);
    Ok(out)
}

/// Decodes the window of `ids` that starts at `start` into `buf`: in file order up to the
/// byte or count bound (at least one blob); returns where the window ends and where each
/// of its blobs is in `buf`.
fn fetch_window(
    repo: &Repository,
    ids: &[Id],
    start: usize,
    buf: &mut Vec<u8>,
) -> Result<(usize, Placed)> {
    let locator = repo.locator()?;
    let mut wanted: Vec<(Id, BlobLocation)> = Vec::new();
    let mut seen = HashSet::new();
    let mut stored = 0u64;
    let mut end = start;
    while end < ids.len()
        && (end == start || (stored < FETCH_WINDOW_BYTES && end - start < FETCH_WINDOW_BLOBS))
    {
        let id = ids[end];
        if seen.insert(id) {
            let loc = locator.locate(&id)?;
            // Memory holds a window's sealed bytes while reading and its plaintext after.
            stored = stored.saturating_add(loc.held());
            wanted.push((id, loc));
        }
        end += 1;
    }
    // The cache's read transaction ends before packs are read.
    drop(locator);
    let runs = split_runs(coalesce(wanted, COALESCE_GAP), RUN_BYTES);
    // `stored` counted each blob's larger size, so it bounds the window's plaintext.
    Ok((end, fetch_runs(repo, &runs, stored, buf)?))
}

/// Splits runs holding more than `max` bytes (stored or decoded, whichever is larger) into
/// shorter ones (each keeps at least one blob), so that one large run does not serialise a
/// window.
fn split_runs(runs: Vec<BlobRun>, max: u64) -> Vec<BlobRun> {
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        let mut part: Vec<(Id, BlobLocation)> = Vec::new();
        let mut bytes = 0u64;
        for (id, loc) in run.blobs().iter().cloned() {
            let held = loc.held();
            if !part.is_empty() && bytes.saturating_add(held) > max {
                out.extend(coalesce(std::mem::take(&mut part), COALESCE_GAP));
                bytes = 0;
            }
            bytes = bytes.saturating_add(held);
            part.push((id, loc));
        }
        if !part.is_empty() {
            out.extend(coalesce(part, COALESCE_GAP));
        }
    }
    out
}
