//! Finding blobs (the index, with a miss verified against the repository) and reading them
//! by id: trees, content lists, a file's content ids and paths below a tree. The bytes are
//! read and verified by `reader`.

use super::*;

impl Repository {
    /// Where a blob is, for writers: only blobs they may deduplicate against (see
    /// [`Cache::lookup`]). Readers use [`Repository::locate`].
    pub fn lookup(&self, id: &Id) -> Result<Option<BlobLocation>> {
        self.cache.lookup(id)
    }

    // ---- blobs and trees ----

    /// Reads a blob (see [`Repository::locate`]).
    pub fn read_blob(&self, kind: BlobKind, id: &Id) -> Result<Vec<u8>> {
        let loc = self.locate(id)?;
        self.read_blob_at(kind, id, &loc)
    }

    /// Where a blob is, for readers (condemned packs included: they exist until a sweep
    /// has made sure no snapshot needs them). The index is synced once per process before
    /// the first lookup (see [`Repository::ensure_index_synced`]). `None` means the repository itself does not
    /// list it: a miss in the cache is followed by reading new index files (the blob may
    /// belong to a snapshot committed after the last sync) and, if it still misses, by
    /// reloading the whole index from the repository once per process, so that a damaged
    /// or stale cache can never make a present blob look missing.
    pub fn locate_verified(&self, id: &Id) -> Result<Option<BlobLocation>> {
        self.ensure_index_synced()?;
        if let Some(loc) = self.cache.lookup_readable(id)? {
            return Ok(Some(loc));
        }
        self.sync_index()?;
        if let Some(loc) = self.cache.lookup_readable(id)? {
            return Ok(Some(loc));
        }
        if !self.reloaded_after_miss.swap(true, Ordering::Relaxed) {
            tracing::debug!("blob {id} is not in the cached index; reloading the index");
            self.reload_index()?;
            return self.cache.lookup_readable(id);
        }
        Ok(None)
    }

    /// Where a blob is (see [`Repository::locate_verified`]); a missing blob is an error.
    pub fn locate(&self, id: &Id) -> Result<BlobLocation> {
        self.locate_verified(id)?.ok_or_else(|| {
            let mut msg = format!("blob {id} is not in the index");
            if let Some((file, _)) = self.damaged_index_files().first() {
                msg.push_str(&format!(
                    " (index file {file} cannot be read: run `cairn check`, then `cairn repair index`)"
                ));
            }
            Error::not_found(msg)
        })
    }

    /// [`Repository::locate`] for many blobs, looked up under one read transaction of the
    /// cache (a restore looks up tens of thousands).
    pub fn locator(&self) -> Result<Locator<'_>> {
        self.ensure_index_synced()?;
        Ok(Locator {
            repo: self,
            reader: self.cache.reader()?,
        })
    }

    /// Reads and decodes a tree (validated: see [`Tree::decode`]).
    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        Tree::decode(&self.read_blob(BlobKind::Tree, id)?, id)
    }

    /// Reads and decodes a spilled content list.
    pub fn load_content_list(&self, id: &Id) -> Result<ContentList> {
        ContentList::decode(&self.read_blob(BlobKind::Tree, id)?, id)
    }

    /// The ordered data blob ids of a file node, following spilled content lists.
    pub fn file_content(&self, node: &Node) -> Result<Vec<Id>> {
        if node.content_lists.is_empty() {
            return Ok(node.content.clone());
        }
        let mut out = Vec::new();
        for list in &node.content_lists {
            out.extend(self.load_content_list(list)?.ids);
        }
        Ok(out)
    }

    /// Finds the node at `path` (components separated by '/') below a root tree.
    pub fn resolve_path(&self, root: &Id, path: &[u8]) -> Result<Option<Node>> {
        let mut tree_id = *root;
        let parts: Vec<&[u8]> = path
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Ok(None);
        }
        for (i, part) in parts.iter().enumerate() {
            let tree = self.load_tree(&tree_id)?;
            let node = match tree.find(part) {
                Some(n) => n.clone(),
                None => {
                    return Err(Error::not_found(format!(
                        "{:?} is not in the snapshot",
                        String::from_utf8_lossy(path)
                    )))
                }
            };
            if i + 1 == parts.len() {
                return Ok(Some(node));
            }
            tree_id = node.subtree.ok_or_else(|| {
                Error::not_found(format!(
                    "{:?} is not a directory",
                    String::from_utf8_lossy(part)
                ))
            })?;
        }
        Ok(None)
    }
}

/// Lookups of [`Repository::locator`].
pub struct Locator<'r> {
    repo: &'r Repository,
    reader: crate::cache::CacheReader<'r>,
}

impl Locator<'_> {
    /// Where a blob is. One the cache's view does not hold goes through
    /// [`Repository::locate`] itself (index sync, then one reload), so a blob of a snapshot
    /// committed since is still found.
    pub fn locate(&self, id: &Id) -> Result<BlobLocation> {
        match self.reader.lookup_readable(id)? {
            Some(loc) => Ok(loc),
            None => self.repo.locate(id),
        }
    }
}
