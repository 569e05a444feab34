//! Decoded folders (trees) kept for the mount, so that listing a large folder page by page
//! and looking up its entries decode its tree once. Bounded by an estimate of their memory;
//! the least recently used go first, and the one just loaded always stays.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use cairn_repo::file_reader::with_fresh_index;
use cairn_repo::format::tree::Node;
use cairn_repo::{Id, Repository, Result};

/// Memory the decoded trees may take, by [`estimate`].
pub const TREE_CACHE_BYTES: usize = 64 << 20;

/// Subfolders of a folder read ahead when it is read (see [`Trees::read_ahead`]).
const READ_AHEAD_FOLDERS: usize = 128;

/// A decoded folder: its entries sorted by name, each shared with the inodes that name it
/// (so an entry the kernel holds is in memory once, whether or not its folder still is).
pub struct Folder {
    pub nodes: Vec<Arc<Node>>,
}

impl Folder {
    pub fn find(&self, name: &[u8]) -> Option<&Arc<Node>> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// Clears a "running" flag when dropped.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A decoded folder held in memory.
struct Held {
    tree: Arc<Folder>,
    /// Clock value of its last use.
    used: u64,
    size: usize,
    /// Whether a caller has had it (its subfolders were then read ahead); a tree read ahead
    /// has not been, until the walk gets to it.
    opened: bool,
}

#[derive(Default)]
struct State {
    trees: HashMap<Id, Held>,
    by_use: BTreeMap<u64, Id>,
    clock: u64,
    bytes: usize,
}

pub struct Trees {
    state: Mutex<State>,
    capacity: usize,
    /// Set while a read-ahead runs: one at a time.
    reading_ahead: AtomicBool,
}

/// About the memory a decoded tree takes.
fn estimate(tree: &Folder) -> usize {
    tree.nodes
        .iter()
        .map(|n| {
            200 + n.name.len()
                + 32 * (n.content.len() + n.content_lists.len())
                + n.link_target.as_ref().map_or(0, Vec::len)
                + n.xattrs
                    .iter()
                    .map(|x| x.name.len() + x.value.len() + 48)
                    .sum::<usize>()
        })
        .sum()
}

impl Trees {
    pub fn new(capacity: usize) -> Trees {
        Trees {
            state: Mutex::new(State::default()),
            capacity,
            reading_ahead: AtomicBool::new(false),
        }
    }

    /// Whether the trees held take at most half the cache.
    fn under_half_full(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.bytes <= self.capacity / 2
    }

    /// Reads the subfolders of `tree` in the background, so that a walk that goes down into
    /// them finds them read: a walk lists one folder after another, and each would
    /// otherwise wait for its own read. At most [`READ_AHEAD_FOLDERS`], only one read-ahead
    /// at a time, and only while the cache is less than half full, so that reading ahead
    /// never pushes out what is in use.
    pub fn read_ahead(self: &Arc<Self>, repo: &Arc<Repository>, tree: &Folder) {
        if self.reading_ahead.load(Ordering::Acquire) || !self.under_half_full() {
            return;
        }
        let ids: Vec<Id> = {
            let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            tree.nodes
                .iter()
                .filter_map(|n| n.subtree)
                .filter(|id| !s.trees.contains_key(id))
                .take(READ_AHEAD_FOLDERS)
                .collect()
        };
        if ids.is_empty() || self.reading_ahead.swap(true, Ordering::AcqRel) {
            return;
        }
        let (trees, repo) = (Arc::clone(self), Arc::clone(repo));
        let spawned = std::thread::Builder::new()
            .name("cairn-folders-ahead".into())
            .spawn(move || {
                // The flag is cleared however the read-ahead ends.
                let _running = Running(&trees.reading_ahead);
                ids.par_iter().for_each(|id| {
                    if trees.under_half_full() {
                        if let Err(e) = trees.fetch(&repo, id, false) {
                            tracing::debug!("reading folder {id} ahead: {e}");
                        }
                    }
                });
            });
        if spawned.is_err() {
            self.reading_ahead.store(false, Ordering::Release);
        }
    }

    /// The tree `id`, from memory or read now (two readers may both read a tree that is not
    /// held; either copy is the same), and whether this is its first use: a caller then reads
    /// its subfolders ahead. The index is read again when the tree's pack is gone (repacked
    /// by a prune since the mount read the index).
    pub fn open(&self, repo: &Repository, id: &Id) -> Result<(Arc<Folder>, bool)> {
        self.fetch(repo, id, true)
    }

    fn fetch(&self, repo: &Repository, id: &Id, open: bool) -> Result<(Arc<Folder>, bool)> {
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.clock += 1;
            let now = s.clock;
            if let Some(held) = s.trees.get_mut(id) {
                let (tree, old, first) = (held.tree.clone(), held.used, !held.opened && open);
                held.used = now;
                held.opened |= open;
                s.by_use.remove(&old);
                s.by_use.insert(now, *id);
                return Ok((tree, first));
            }
        }
        let tree = Arc::new(Folder {
            nodes: with_fresh_index(repo, |_| repo.load_tree(id))?
                .nodes
                .into_iter()
                .map(Arc::new)
                .collect(),
        });
        let size = estimate(&tree);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.clock += 1;
        let now = s.clock;
        let held = Held {
            tree: tree.clone(),
            used: now,
            size,
            opened: open,
        };
        if let Some(old) = s.trees.insert(*id, held) {
            s.by_use.remove(&old.used);
            s.bytes -= old.size;
        }
        s.by_use.insert(now, *id);
        s.bytes += size;
        while s.bytes > self.capacity && s.by_use.len() > 1 {
            let Some((_, oldest)) = s.by_use.pop_first() else {
                break;
            };
            if let Some(old) = s.trees.remove(&oldest) {
                s.bytes -= old.size;
            }
        }
        Ok((tree, open))
    }
}
