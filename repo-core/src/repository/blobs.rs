//! Finding and reading blobs, pack headers and trees.

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
    /// has made sure no snapshot needs them). `None` means the repository itself does not
    /// list it: a miss in the cache is followed by reading new index files (the blob may
    /// belong to a snapshot committed after the last sync) and, if it still misses, by
    /// reloading the whole index from the repository once per process, so that a damaged
    /// or stale cache can never make a present blob look missing.
    pub fn locate_verified(&self, id: &Id) -> Result<Option<BlobLocation>> {
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

    pub fn read_blob_at(&self, kind: BlobKind, id: &Id, loc: &BlobLocation) -> Result<Vec<u8>> {
        if loc.kind != kind {
            return Err(Error::corrupt(format!(
                "blob {id} is indexed as {:?}, expected {kind:?}",
                loc.kind
            )));
        }
        // What the index claims is checked before anything is read or allocated for it.
        let max = self.max_blob(kind);
        if u64::from(loc.raw_length) > max || u64::from(loc.length) > format::max_sealed(max) {
            return Err(Error::corrupt(format!(
                "blob {id} in pack {} claims {} bytes ({} stored), more than a {kind:?} blob of this repository may hold ({max})",
                loc.pack, loc.raw_length, loc.length
            )));
        }
        let sealed = self
            .store
            .read_range(
                FileType::Pack,
                &loc.pack.to_hex(),
                loc.offset,
                loc.length as u64,
            )
            .map_err(|e| e.context(format!("pack {} (blob {id})", loc.pack)))?;
        let mut sealed = writable(sealed);
        blob::open_in_place_bounded(&self.keys, kind, id, &mut sealed, max)
            .map_err(|e| e.context(format!("pack {}", loc.pack)))
    }

    /// The most plaintext a blob of `kind` may hold in this repository: the chunker's
    /// maximum for data, [`format::MAX_TREE_BLOB`] for trees.
    pub fn max_blob(&self, kind: BlobKind) -> u64 {
        match kind {
            BlobKind::Data => u64::from(self.config.chunker.max).min(format::MAX_DATA_BLOB),
            BlobKind::Tree => format::MAX_TREE_BLOB,
        }
    }

    /// A pack's size and header entries, read from its tail.
    pub fn read_pack_header(
        &self,
        pack: &Id,
    ) -> Result<(u64, Vec<crate::format::pack::PackEntry>)> {
        use crate::format::pack::{parse_header, HeaderRead};
        let name = pack.to_hex();
        let size = self.store.stat(FileType::Pack, &name)?;
        let mut want = size.min(64 * 1024);
        loop {
            let tail = self
                .store
                .read_range(FileType::Pack, &name, size - want, want)?;
            match parse_header(&self.keys, pack, size, &tail)? {
                HeaderRead::Done(entries) => return Ok((size, entries)),
                HeaderRead::NeedMore(n) if n > want => want = n,
                HeaderRead::NeedMore(_) => {
                    return Err(Error::corrupt(format!(
                        "pack {pack}: header cannot be read"
                    )))
                }
            }
        }
    }

    pub fn load_tree(&self, id: &Id) -> Result<Tree> {
        let plain = self.read_blob(BlobKind::Tree, id)?;
        let tree: Tree = from_cbor(&plain, &format!("tree {id}"))?;
        tree.validate()
            .map_err(|e| e.context(format!("tree {id}")))?;
        Ok(tree)
    }

    /// The ordered data blob ids of a file node, following spilled content lists.
    pub fn file_content(&self, node: &Node) -> Result<Vec<Id>> {
        if node.content_lists.is_empty() {
            return Ok(node.content.clone());
        }
        let mut out = Vec::new();
        for list in &node.content_lists {
            let plain = self.read_blob(BlobKind::Tree, list)?;
            let l: ContentList = from_cbor(&plain, &format!("content list {list}"))?;
            out.extend(l.ids);
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
