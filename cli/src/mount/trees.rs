//! Decoded folders (trees) kept for the mount, so that listing a large folder page by page
//! and looking up its entries decode its tree once. Bounded by an estimate of their memory;
//! the least recently used go first, and the one just loaded always stays.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use cairn_repo::file_reader::with_fresh_index;
use cairn_repo::format::tree::Tree;
use cairn_repo::{Id, Repository, Result};

/// Memory the decoded trees may take, by [`estimate`].
pub const TREE_CACHE_BYTES: usize = 64 << 20;

#[derive(Default)]
struct State {
    trees: HashMap<Id, (Arc<Tree>, u64, usize)>,
    by_use: BTreeMap<u64, Id>,
    clock: u64,
    bytes: usize,
}

pub struct Trees {
    state: Mutex<State>,
    capacity: usize,
}

/// About the memory a decoded tree takes.
fn estimate(tree: &Tree) -> usize {
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
        }
    }

    /// The tree `id`, from memory or read now (two readers may both read a tree that is not
    /// held; either copy is the same). The index is read again when the tree's pack is gone
    /// (repacked by a prune since the mount read the index).
    pub fn get(&self, repo: &Repository, id: &Id) -> Result<Arc<Tree>> {
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.clock += 1;
            let now = s.clock;
            if let Some((tree, used, _)) = s.trees.get_mut(id) {
                let (tree, old) = (tree.clone(), *used);
                *used = now;
                s.by_use.remove(&old);
                s.by_use.insert(now, *id);
                return Ok(tree);
            }
        }
        let tree = Arc::new(with_fresh_index(repo, || repo.load_tree(id))?);
        let size = estimate(&tree);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.clock += 1;
        let now = s.clock;
        if let Some((_, used, size)) = s.trees.insert(*id, (tree.clone(), now, size)) {
            s.by_use.remove(&used);
            s.bytes -= size;
        }
        s.by_use.insert(now, *id);
        s.bytes += size;
        while s.bytes > self.capacity && s.by_use.len() > 1 {
            let Some((_, oldest)) = s.by_use.pop_first() else {
                break;
            };
            if let Some((_, _, size)) = s.trees.remove(&oldest) {
                s.bytes -= size;
            }
        }
        Ok(tree)
    }
}
