//! Random access to a file of a snapshot: the bytes at any offset, read through a shared
//! [`BlobCache`], with read-ahead while the file is read in order (the mount's reads).
//!
//! Opening a file looks up where each of its blobs is (the index, not the blobs), so that a
//! read goes straight to the blobs covering its range. What a read returns is always the
//! file's bytes: blobs are authenticated and checked against their ids, and a blob that
//! cannot be read fails that read with an error. Nothing is ever filled in.
//!
//! Locations can go stale while a file is open: a prune may repack a blob into a new pack
//! and delete the old one. A read that finds a pack missing re-reads the index once and
//! looks the file's blobs up again; if a blob is gone altogether (the last snapshot using
//! it was forgotten and pruned), the read fails with `NotFound`.

use std::sync::{Arc, Mutex};

use crate::blob_cache::{BlobCache, Plain};
use crate::cache::BlobLocation;
use crate::error::{Error, ErrorKind, Result};
use crate::format::tree::{Node, NodeKind};
use crate::id::Id;
use crate::repository::Repository;

/// Read-ahead starts at this many bytes past a read that follows the one before it, and
/// doubles with each further read in order, up to [`MAX_READ_AHEAD`].
const FIRST_READ_AHEAD: u64 = 2 << 20;
const MAX_READ_AHEAD: u64 = 32 << 20;

/// An open file (module docs).
pub struct FileReader {
    ids: Vec<Id>,
    /// End offset of each blob in the file: `ends[i]` is the sum of the lengths of blobs
    /// `0..=i`.
    ends: Vec<u64>,
    locations: Mutex<Vec<BlobLocation>>,
    order: Mutex<ReadOrder>,
}

/// Where the last read ended, and how far ahead reads in order are fetched now.
#[derive(Default)]
struct ReadOrder {
    next: u64,
    ahead: u64,
}

impl FileReader {
    /// Opens a file node: its content ids (following spilled content lists) and where each
    /// blob is.
    pub fn open(repo: &Repository, node: &Node) -> Result<FileReader> {
        if node.kind != NodeKind::File {
            return Err(Error::invalid(format!(
                "{:?} is not a file",
                node.name_lossy()
            )));
        }
        // Spilled content lists are tree blobs, which a prune may have repacked too.
        let (ids, locations) = with_fresh_index(repo, |_| {
            let ids = repo.file_content(node)?;
            let locations = locate_all(repo, &ids)?;
            Ok((ids, locations))
        })?;
        let mut ends = Vec::with_capacity(ids.len());
        let mut end: u64 = 0;
        for loc in &locations {
            end = end
                .checked_add(u64::from(loc.raw_length))
                .ok_or_else(|| Error::corrupt("a file's blob lengths overflow"))?;
            ends.push(end);
        }
        // A backup records the bytes it saved as the size; a node that says otherwise is
        // damaged, and reading it would give a file cut short or padded.
        if end != node.size {
            return Err(Error::corrupt(format!(
                "{:?}: its blobs hold {end} bytes but its entry says {}",
                node.name_lossy(),
                node.size
            )));
        }
        Ok(FileReader {
            ids,
            ends,
            locations: Mutex::new(locations),
            order: Mutex::new(ReadOrder::default()),
        })
    }

    /// The length of the content: what its blobs hold, which [`FileReader::open`] has
    /// checked against the node's `size`.
    pub fn len(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `len` bytes from `offset` (fewer only at the end of the file).
    pub fn read_at(
        &self,
        repo: &Arc<Repository>,
        cache: &Arc<BlobCache>,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>> {
        let size = self.len();
        if offset >= size || len == 0 {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(len as u64).min(size);
        // The blobs covering [offset, end): the first whose end is past `offset`, through
        // the one holding byte `end - 1`.
        let first = self.ends.partition_point(|e| *e <= offset);
        let last = self.ends.partition_point(|e| *e < end);
        let plains = with_fresh_index(repo, |again| {
            if again {
                *self.lock_locations() = locate_all(repo, &self.ids)?;
            }
            self.blobs(repo, cache, first, last)
        })?;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (i, plain) in (first..=last).zip(plains) {
            let blob_start = if i == 0 { 0 } else { self.ends[i - 1] };
            let from = offset.max(blob_start) - blob_start;
            let to = end.min(self.ends[i]) - blob_start;
            let piece = plain.get(from as usize..to as usize).ok_or_else(|| {
                Error::corrupt(format!(
                    "blob {} is shorter than its index entry says",
                    self.ids[i]
                ))
            })?;
            out.extend_from_slice(piece);
        }
        self.read_ahead(repo, cache, offset, end, last);
        Ok(out)
    }

    fn lock_locations(&self) -> std::sync::MutexGuard<'_, Vec<BlobLocation>> {
        self.locations.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blobs(
        &self,
        repo: &Repository,
        cache: &BlobCache,
        first: usize,
        last: usize,
    ) -> Result<Vec<Plain>> {
        let wanted: Vec<(Id, BlobLocation)> = {
            let locations = self.lock_locations();
            (first..=last)
                .map(|i| (self.ids[i], locations[i]))
                .collect()
        };
        cache.get(repo, &wanted)
    }

    /// A read that starts where the previous one ended doubles the read-ahead and fetches
    /// that far past its end in the background; any other read stops it.
    fn read_ahead(
        &self,
        repo: &Arc<Repository>,
        cache: &Arc<BlobCache>,
        offset: u64,
        end: u64,
        last: usize,
    ) {
        let ahead = {
            let mut order = self.order.lock().unwrap_or_else(|p| p.into_inner());
            order.ahead = if offset == order.next {
                (order.ahead * 2).clamp(FIRST_READ_AHEAD, MAX_READ_AHEAD)
            } else {
                0
            };
            order.next = end;
            order.ahead
        };
        if ahead == 0 || last + 1 >= self.ids.len() {
            return;
        }
        let until = end.saturating_add(ahead);
        let stop = self
            .ends
            .partition_point(|e| *e < until)
            .min(self.ids.len() - 1);
        let wanted: Vec<(Id, BlobLocation)> = {
            let locations = self.lock_locations();
            (last + 1..=stop)
                .map(|i| (self.ids[i], locations[i]))
                .collect()
        };
        cache.prefetch(repo, &wanted);
    }
}

/// Runs `read(false)`, and `read(true)` after reading the index again when it fails with
/// `NotFound`: a process that keeps its index for long (the mount) may hold locations in
/// packs that a prune has since repacked and deleted, so the second call looks again what it
/// had looked up. A blob that is still missing then is really gone.
pub fn with_fresh_index<T>(repo: &Repository, read: impl Fn(bool) -> Result<T>) -> Result<T> {
    match read(false) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            tracing::debug!("{e}; reading the index again");
            repo.sync_index()?;
            read(true)
        }
        other => other,
    }
}

fn locate_all(repo: &Repository, ids: &[Id]) -> Result<Vec<BlobLocation>> {
    ids.iter().map(|id| repo.locate(id)).collect()
}
