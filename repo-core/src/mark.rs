//! Reachability: which blobs the snapshots use, in bounded memory.
//!
//! [`IdSet`] is a set of ids that spills to a temporary redb database: recent insertions stay
//! in a small in-memory buffer, the rest lives on disk, so marking a repository of any size
//! needs a bounded amount of memory.

use std::collections::HashSet;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use crate::cache::{BlobLocation, Cache};
use crate::error::{Error, Result};
use crate::format::tree::{ContentList, NodeKind, Tree};
use crate::id::{BlobKind, Id};
use crate::repository::Repository;
use crate::scratch::ScratchDir;

const SET: TableDefinition<&[u8], ()> = TableDefinition::new("set");
const BUFFER: usize = 100_000;

/// A set of ids on disk with an in-memory front buffer. Removed when dropped.
pub struct IdSet {
    db: Database,
    _dir: ScratchDir,
    buffer: HashSet<Id>,
    len: u64,
}

impl IdSet {
    pub fn new() -> Result<IdSet> {
        let dir = ScratchDir::new("cairn-set")?;
        let db = Database::builder()
            .set_cache_size(8 << 20)
            .create(dir.path().join("set.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(SET)?;
        tx.commit()?;
        Ok(IdSet {
            db,
            _dir: dir,
            buffer: HashSet::new(),
            len: 0,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn on_disk(&self, id: &Id) -> Result<bool> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SET)?;
        Ok(t.get(id.0.as_slice())?.is_some())
    }

    pub fn contains(&self, id: &Id) -> Result<bool> {
        Ok(self.buffer.contains(id) || self.on_disk(id)?)
    }

    /// Adds `id`; returns whether it was new.
    pub fn insert(&mut self, id: Id) -> Result<bool> {
        if self.contains(&id)? {
            return Ok(false);
        }
        self.buffer.insert(id);
        self.len += 1;
        if self.buffer.len() >= BUFFER {
            self.spill()?;
        }
        Ok(true)
    }

    fn spill(&mut self) -> Result<()> {
        let mut ids: Vec<Id> = self.buffer.drain().collect();
        ids.sort();
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        {
            let mut t = tx.open_table(SET)?;
            for id in ids {
                t.insert(id.0.as_slice(), ())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Finds blobs: in the index, and optionally in an overlay of packs that the index leaves
/// out (condemned packs, which a snapshot may still reference until the sweep rescues them).
pub struct Locator<'a> {
    pub repo: &'a Repository,
    pub overlay: Option<&'a Cache>,
}

impl<'a> Locator<'a> {
    pub fn index_only(repo: &'a Repository) -> Self {
        Locator {
            repo,
            overlay: None,
        }
    }

    /// Where a blob can be read: the readers' view of the index (condemned packs and
    /// packs only superseded index files list included), then the overlay.
    pub fn locate(&self, id: &Id) -> Result<Option<BlobLocation>> {
        if let Some(loc) = self.repo.cache().lookup_readable(id)? {
            return Ok(Some(loc));
        }
        match self.overlay {
            Some(o) => o.lookup(id),
            None => Ok(None),
        }
    }

    pub fn read(&self, kind: BlobKind, id: &Id) -> Result<Vec<u8>> {
        let loc = self
            .locate(id)?
            .ok_or_else(|| Error::not_found(format!("{kind:?} blob {id} is not in the index")))?;
        self.repo.read_blob_at(kind, id, &loc)
    }

    /// Reads and decodes a tree (validated: see [`Tree::decode`]).
    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        Tree::decode(&self.read(BlobKind::Tree, id)?, id)
    }

    /// Reads and decodes a spilled content list.
    pub fn load_content_list(&self, id: &Id) -> Result<ContentList> {
        ContentList::decode(&self.read(BlobKind::Tree, id)?, id)
    }
}

/// An overlay holding the header entries of the given packs (those that still exist).
pub fn overlay_of(repo: &Repository, packs: &HashSet<Id>) -> Result<Cache> {
    let overlay = Cache::temporary()?;
    let mut batch = Vec::new();
    for pack in packs {
        match repo.read_pack_header(pack) {
            Ok((_, entries)) => batch.extend(
                entries
                    .iter()
                    .map(|e| (e.id, BlobLocation::from_entry(*pack, e))),
            ),
            Err(e) if e.kind() == crate::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        if batch.len() > 100_000 {
            overlay.ingest(&[(*pack, std::mem::take(&mut batch))])?;
        }
    }
    overlay.ingest(&[(Id::default(), batch)])?;
    Ok(overlay)
}

/// Calls `visit` for every blob reachable from the tree `root` (the tree blobs themselves,
/// content lists, and data blobs), entering each tree at most once across calls that share
/// `seen_trees`. A tree or content list that cannot be read is an error naming it.
pub fn walk_blobs(
    locator: &Locator,
    root: &Id,
    seen_trees: &mut IdSet,
    visit: &mut dyn FnMut(BlobKind, &Id) -> Result<()>,
) -> Result<()> {
    let mut stack = vec![*root];
    while let Some(tree_id) = stack.pop() {
        if !seen_trees.insert(tree_id)? {
            continue;
        }
        visit(BlobKind::Tree, &tree_id)?;
        let tree = locator.load_tree(&tree_id)?;
        for node in &tree.nodes {
            match node.kind {
                NodeKind::Dir => {
                    if let Some(sub) = node.subtree {
                        stack.push(sub);
                    }
                }
                NodeKind::File => {
                    for id in &node.content {
                        visit(BlobKind::Data, id)?;
                    }
                    for list in &node.content_lists {
                        visit(BlobKind::Tree, list)?;
                        for id in &locator.load_content_list(list)?.ids {
                            visit(BlobKind::Data, id)?;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Every blob used by the given snapshot roots.
pub fn mark(locator: &Locator, roots: &[Id]) -> Result<IdSet> {
    let mut used = IdSet::new()?;
    let mut seen = IdSet::new()?;
    for root in roots {
        walk_blobs(locator, root, &mut seen, &mut |_, id| {
            used.insert(*id).map(|_| ())
        })?;
    }
    Ok(used)
}
