//! A bounded cache of decrypted data blobs for random reads (the mount), filled by coalesced
//! reads and shared by every reader of one process.
//!
//! Invariants:
//! - The cache holds at most its capacity in plaintext bytes, plus the blobs one request
//!   needs at once (a request's blobs are handed to it even when they do not all fit); the
//!   least recently used blobs are dropped first.
//! - A blob is fetched by one reader at a time: a blob being fetched is marked `Loading`,
//!   and readers that need it wait for it instead of reading it again. A fetch that fails
//!   removes its marks and wakes the waiters, which then fetch the blob themselves and meet
//!   the error for their own read; nothing failed is cached.
//! - Every blob comes through [`Repository::read_run`], which authenticates it and checks its
//!   plaintext against its id: the cache never holds bytes other than the blob's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rayon::prelude::*;

use crate::cache::BlobLocation;
use crate::error::{Error, Result};
use crate::id::{BlobKind, Id};
use crate::repository::{coalesce, Repository};

/// Neighbouring blobs of one pack with at most this gap between them are read with one
/// request (the gap is read and thrown away).
const COALESCE_GAP: u64 = 256 << 10;

/// Read-ahead fetches running at once, per cache; further read-ahead is skipped until one
/// ends (the reads themselves never wait for this).
const MAX_PREFETCHES: usize = 4;

/// The plaintexts of one run, as [`Repository::read_run`] gives them.
type RunPlains = Vec<(Id, Vec<u8>)>;

/// A decrypted blob, shared between the cache and the readers that use it.
pub type Plain = Arc<Vec<u8>>;

enum Slot {
    Loading,
    Ready { data: Plain, used: u64 },
}

#[derive(Default)]
struct State {
    slots: HashMap<Id, Slot>,
    /// Last use -> blob, for eviction in order of last use.
    by_use: BTreeMap<u64, Id>,
    clock: u64,
    bytes: usize,
}

impl State {
    fn touch(&mut self, id: &Id) -> Option<Plain> {
        self.clock += 1;
        let now = self.clock;
        match self.slots.get_mut(id) {
            Some(Slot::Ready { data, used }) => {
                self.by_use.remove(used);
                *used = now;
                self.by_use.insert(now, *id);
                Some(data.clone())
            }
            _ => None,
        }
    }

    fn insert(&mut self, id: Id, data: Plain, capacity: usize) {
        self.clock += 1;
        let now = self.clock;
        self.bytes += data.len();
        if let Some(Slot::Ready { data: old, used }) =
            self.slots.insert(id, Slot::Ready { data, used: now })
        {
            self.by_use.remove(&used);
            self.bytes -= old.len();
        }
        self.by_use.insert(now, id);
        while self.bytes > capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(Slot::Ready { data, .. }) = self.slots.remove(&oldest) {
                self.bytes -= data.len();
            }
        }
    }
}

/// The `Loading` marks of one fetch: removed, and the waiters woken, when it is dropped
/// (blobs read by then are `Ready` and stay).
struct Marks<'a> {
    cache: &'a BlobCache,
    ids: &'a [Id],
}

impl Drop for Marks<'_> {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        for id in self.ids {
            if matches!(state.slots.get(id), Some(Slot::Loading)) {
                state.slots.remove(id);
            }
        }
        drop(state);
        self.cache.loaded.notify_all();
    }
}

/// One running read-ahead, counted in `BlobCache::prefetching` until dropped.
struct PrefetchSlot<'a>(&'a AtomicUsize);

impl Drop for PrefetchSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The cache (module docs). Cheap to share: clone the `Arc`.
pub struct BlobCache {
    state: Mutex<State>,
    loaded: Condvar,
    capacity: usize,
    prefetching: AtomicUsize,
}

impl BlobCache {
    /// A cache holding up to `capacity` bytes of plaintext.
    pub fn new(capacity: usize) -> Arc<BlobCache> {
        Arc::new(BlobCache {
            state: Mutex::new(State::default()),
            loaded: Condvar::new(),
            capacity,
            prefetching: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps consistent (every change is a
        // single insert or remove), so a poisoned lock is used as it is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plaintexts of `wanted`, in its order (an id may repeat). Blobs not cached are
    /// fetched now, neighbours of one pack with one read; blobs another reader is fetching
    /// are waited for.
    pub fn get(&self, repo: &Repository, wanted: &[(Id, BlobLocation)]) -> Result<Vec<Plain>> {
        let mut found: HashMap<Id, Plain> = HashMap::new();
        let mut mine: Vec<(Id, BlobLocation)> = Vec::new();
        let mut others: Vec<(Id, BlobLocation)> = Vec::new();
        {
            let mut state = self.lock();
            let mut seen = HashSet::new();
            for (id, loc) in wanted {
                if !seen.insert(*id) {
                    continue;
                }
                if let Some(data) = state.touch(id) {
                    found.insert(*id, data);
                } else if matches!(state.slots.get(id), Some(Slot::Loading)) {
                    others.push((*id, *loc));
                } else {
                    state.slots.insert(*id, Slot::Loading);
                    mine.push((*id, *loc));
                }
            }
        }
        if !mine.is_empty() {
            found.extend(self.fetch(repo, mine)?);
        }
        for (id, loc) in others {
            let data = match self.wait_for(&id) {
                Some(data) => data,
                // The other reader's fetch failed: read it here, to report this read's
                // own error.
                None => {
                    let mut got = self.fetch(repo, vec![(id, loc)])?;
                    got.pop().map(|(_, d)| d).ok_or_else(|| {
                        Error::corrupt(format!("blob {id} was not returned by its read"))
                    })?
                }
            };
            found.insert(id, data);
        }
        wanted
            .iter()
            .map(|(id, _)| {
                found.get(id).cloned().ok_or_else(|| {
                    Error::corrupt(format!("blob {id} was not returned by its read"))
                })
            })
            .collect()
    }

    /// Starts fetching, in the background, the blobs of `ahead` that are neither cached nor
    /// being fetched; returns at once. Skipped while [`MAX_PREFETCHES`] are running.
    pub fn prefetch(self: &Arc<Self>, repo: &Arc<Repository>, ahead: &[(Id, BlobLocation)]) {
        if self.prefetching.fetch_add(1, Ordering::AcqRel) >= MAX_PREFETCHES {
            self.prefetching.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let mine: Vec<(Id, BlobLocation)> = {
            let mut state = self.lock();
            let mut mine = Vec::new();
            for (id, loc) in ahead {
                if !state.slots.contains_key(id) {
                    state.slots.insert(*id, Slot::Loading);
                    mine.push((*id, *loc));
                }
            }
            mine
        };
        if mine.is_empty() {
            self.prefetching.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let ids: Vec<Id> = mine.iter().map(|(id, _)| *id).collect();
        let cache = Arc::clone(self);
        let repo = Arc::clone(repo);
        let spawned = std::thread::Builder::new()
            .name("cairn-read-ahead".into())
            .spawn(move || {
                // The slot is given back however the fetch ends (a panic included).
                let _slot = PrefetchSlot(&cache.prefetching);
                if let Err(e) = cache.fetch(&repo, mine) {
                    tracing::debug!("read-ahead failed: {e}");
                }
            });
        if let Err(e) = spawned {
            // The marks were set for a fetch that will not run: clear them.
            tracing::debug!("read-ahead not started: {e}");
            let mut state = self.lock();
            for id in &ids {
                if matches!(state.slots.get(id), Some(Slot::Loading)) {
                    state.slots.remove(id);
                }
            }
            drop(state);
            self.loaded.notify_all();
            self.prefetching.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Reads blobs this caller has marked `Loading`, caches them and wakes waiters. On
    /// failure the marks of those not read are removed.
    fn fetch(&self, repo: &Repository, mine: Vec<(Id, BlobLocation)>) -> Result<Vec<(Id, Plain)>> {
        let ids: Vec<Id> = mine.iter().map(|(id, _)| *id).collect();
        // Clears the marks and wakes the waiters however this fetch ends, a panic unwinding
        // through the read included: a mark left behind would make every later reader of
        // the blob wait forever.
        let _marks = Marks {
            cache: self,
            ids: &ids,
        };
        let runs = coalesce(mine, COALESCE_GAP);
        let read: Result<Vec<RunPlains>> = runs
            .par_iter()
            .map(|run| repo.read_run(BlobKind::Data, run))
            .collect();
        let runs = read?;
        let mut state = self.lock();
        let mut out = Vec::with_capacity(ids.len());
        for (id, data) in runs.into_iter().flatten() {
            let data = Arc::new(data);
            state.insert(id, data.clone(), self.capacity);
            out.push((id, data));
        }
        Ok(out)
    }

    /// Waits until `id` is no longer being fetched: its plaintext, or `None` when the fetch
    /// failed (or it was evicted before this waiter woke).
    fn wait_for(&self, id: &Id) -> Option<Plain> {
        let mut state = self.lock();
        loop {
            match state.slots.get(id) {
                Some(Slot::Loading) => {
                    state = self.loaded.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                Some(Slot::Ready { .. }) => return state.touch(id),
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;

    fn id(n: u8) -> Id {
        Id([n; 32])
    }

    #[test]
    fn a_fetch_that_ends_by_unwinding_leaves_no_mark_to_wait_for() {
        let cache = BlobCache::new(100);
        cache.lock().slots.insert(id(1), Slot::Loading);
        let ids = [id(1)];
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _marks = Marks {
                cache: &cache,
                ids: &ids,
            };
            panic!("a read that panics");
        }));
        assert!(unwound.is_err());
        // Without the mark removed this would wait forever.
        assert!(cache.wait_for(&id(1)).is_none());
        assert!(cache.lock().slots.is_empty());
    }

    #[test]
    fn the_least_recently_used_blobs_go_first_and_the_bytes_stay_bounded() {
        let mut state = State::default();
        state.insert(id(1), Arc::new(vec![0; 40]), 100);
        state.insert(id(2), Arc::new(vec![0; 40]), 100);
        assert!(state.touch(&id(1)).is_some());
        state.insert(id(3), Arc::new(vec![0; 40]), 100);
        assert_eq!(state.bytes, 80);
        assert!(
            state.touch(&id(2)).is_none(),
            "the least recently used is dropped"
        );
        assert!(state.touch(&id(1)).is_some());
        assert!(state.touch(&id(3)).is_some());
        // Replacing a blob does not count it twice.
        state.insert(id(3), Arc::new(vec![0; 40]), 100);
        assert_eq!(state.bytes, 80);
        assert_eq!(state.by_use.len(), 2);
    }
}
