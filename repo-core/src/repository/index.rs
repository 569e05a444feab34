//! The index: listing and reading index files, keeping the cache in step with them, and
//! writing new ones.

use super::*;

impl Repository {
    // ---- index ----

    /// Lists the index files in the backend.
    pub fn index_file_ids(&self) -> Result<Vec<Id>> {
        let mut ids: Vec<Id> = self
            .store
            .list(FileType::Index)?
            .into_iter()
            .map(|o| Id::from_hex(&o.name))
            .collect::<Result<_>>()?;
        ids.sort();
        Ok(ids)
    }

    /// Brings the blob index in the cache up to date with the index files in the backend.
    ///
    /// New ordinary index files are read and ingested in batches, leaving out packs that a
    /// condemned record names. When an ingested file has disappeared, or a new file
    /// supersedes others or condemns packs, the blob table is rebuilt: the structure of
    /// every present file is read first (what is superseded, what is condemned), then the
    /// files that are not superseded are ingested without the condemned packs. Invariant: a
    /// blob is in the cache only if a present, non-superseded index file lists it in a pack
    /// that no present record condemns.
    pub fn sync_index(&self) -> Result<()> {
        // A listed index file that is gone when read was replaced by a concurrent prune's
        // sweep (which writes the replacement first): list again.
        let mut attempts = 0;
        loop {
            match self.sync_index_once() {
                Err(e) if e.kind() == ErrorKind::NotFound && attempts < 5 => {
                    attempts += 1;
                    tracing::debug!("index changed while being read ({e}); reading it again");
                }
                Ok(()) => {
                    self.index_synced.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                other => return other,
            }
        }
    }

    /// Syncs the index unless it was synced in this process already. Reads by id and index
    /// statistics call this, so a read-only command starts from the repository's index
    /// without having to remember to sync; writers and garbage collection sync explicitly at
    /// the points their ordering needs.
    pub fn ensure_index_synced(&self) -> Result<()> {
        if self.index_synced.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.sync_index()
    }

    fn sync_index_once(&self) -> Result<()> {
        let listed = self.index_file_ids()?;
        let present: HashSet<Id> = listed.iter().copied().collect();
        let ingested = self.cache.ingested_index_files()?;
        if ingested.is_empty() && !listed.is_empty() {
            return self.load_index(&listed);
        }
        if ingested.iter().any(|id| !present.contains(id)) {
            tracing::info!("the index changed in the backend; rebuilding the cached index");
            return self.load_index(&listed);
        }
        let todo: Vec<Id> = listed
            .into_iter()
            .filter(|id| !ingested.contains(id))
            .collect();
        let condemned = self.cache.condemned_packs()?;
        let mut damaged = Vec::new();
        for batch in todo.chunks(INDEX_READ_BATCH) {
            let files: Vec<(Id, IndexFile)> = self
                .read_index_batch(batch, &mut damaged)?
                .into_iter()
                .collect();
            if files.iter().any(|(_, f)| f.is_structural()) {
                tracing::info!("the index changed in the backend; rebuilding the cached index");
                return self.load_index(&self.index_file_ids()?);
            }
            // Blobs in condemned packs stay readable (a writer that started before the mark
            // indexes its packs after it) but are never offered for deduplication.
            let mut readable_only = Vec::new();
            let entries: Vec<(Id, Vec<(Id, BlobLocation)>)> = files
                .iter()
                .map(|(id, f)| {
                    let (condemned_entries, usable): (Vec<_>, Vec<_>) = index_locations(f)
                        .into_iter()
                        .partition(|(_, loc)| condemned.contains(&loc.pack));
                    readable_only.extend(condemned_entries);
                    (*id, usable)
                })
                .collect();
            self.cache.ingest_readable_only(&readable_only)?;
            self.cache.ingest(&entries)?;
        }
        self.note_damaged_index(damaged);
        self.cache.flush()
    }

    /// Reads a batch of index files in parallel. A file that cannot be decoded (damaged) is
    /// left out and recorded in `damaged`; one that vanished since listing is an error of kind
    /// `NotFound` (the caller lists again).
    fn read_index_batch(
        &self,
        batch: &[Id],
        damaged: &mut Vec<(Id, String)>,
    ) -> Result<Vec<(Id, IndexFile)>> {
        let read: Vec<(Id, Result<IndexFile>)> = batch
            .par_iter()
            .map(|id| (*id, self.read_index_file(id)))
            .collect();
        let mut out = Vec::with_capacity(read.len());
        for (id, r) in read {
            match r {
                Ok(f) => out.push((id, f)),
                Err(e) if e.kind() == ErrorKind::Corrupt => damaged.push((id, e.to_string())),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Remembers which index files could not be read, warning once about each.
    fn note_damaged_index(&self, damaged: Vec<(Id, String)>) {
        if let Ok(mut known) = self.damaged_index.lock() {
            for (id, why) in &damaged {
                if !known.iter().any(|(k, _)| k == id) {
                    tracing::warn!(
                        "{why}; its entries are left out (run `cairn check`, then `cairn repair index`)"
                    );
                }
            }
            *known = damaged;
        }
    }

    /// Index files that could not be read at the last sync, with the reason.
    pub fn damaged_index_files(&self) -> Vec<(Id, String)> {
        self.damaged_index
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// Fails when an index file could not be read. Writers and garbage collection call this:
    /// a damaged index file may have been a condemned record or a superseding file, so
    /// without it they cannot tell which blobs they may reuse or delete.
    pub fn require_intact_index(&self) -> Result<()> {
        match self.damaged_index_files().first() {
            None => Ok(()),
            Some((id, why)) => Err(Error::corrupt(format!(
                "index file {id} cannot be read ({why}); run `cairn check` and then `cairn repair index` before writing to this repository"
            ))),
        }
    }

    /// Reads every index file again and rebuilds the cached index from them (check and
    /// repair do this, so that none of their findings rests on the cache alone).
    pub fn reload_index(&self) -> Result<()> {
        let mut attempts = 0;
        loop {
            match self.index_file_ids().and_then(|l| self.load_index(&l)) {
                Err(e) if e.kind() == ErrorKind::NotFound && attempts < 5 => attempts += 1,
                Ok(()) => {
                    self.index_synced.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                other => return other,
            }
        }
    }

    /// Builds the cached index from scratch (a new cache, or one the backend's index no
    /// longer matches) in one pass over `listed`: every entry goes through an external sort
    /// (`index_sort`) and into the emptied tables in id order. A blob goes to the table that
    /// writers deduplicate against when a file in force lists it in a pack that no condemned
    /// record names; a blob that only condemned packs or superseded files hold goes to the
    /// readers' table, since such a pack exists until a sweep has made sure that no snapshot
    /// needs it. Entries of packs that are missing from the repository are left out (with a
    /// warning), so that the next backup stores those blobs again. Memory does not grow with
    /// the number of blobs, only with the number of index files and packs.
    fn load_index(&self, listed: &[Id]) -> Result<()> {
        let mut sorter = EntrySorter::new(self.cache.scratch_dir())?;
        let mut superseded = HashSet::new();
        let mut condemned = HashSet::new();
        let mut damaged = Vec::new();
        // Per readable file, in the order of `files`: its id, entry count and packs.
        let mut files: Vec<(Id, u64, Vec<Id>)> = Vec::with_capacity(listed.len());
        for batch in listed.chunks(INDEX_READ_BATCH) {
            for (id, f) in self.read_index_batch(batch, &mut damaged)? {
                let position = u32::try_from(files.len())
                    .map_err(|_| Error::invalid("more than 4 billion index files"))?;
                let mut count = 0u64;
                for p in &f.packs {
                    for e in &p.blobs {
                        sorter.push(&e.id, position, &BlobLocation::from_entry(p.id, e))?;
                        count += 1;
                    }
                }
                files.push((id, count, f.packs.iter().map(|p| p.id).collect()));
                superseded.extend(f.supersedes);
                if let Some(c) = f.condemned {
                    condemned.extend(c.packs);
                }
            }
        }
        // Packs are listed after the index files: a pack is stored before any index file
        // that lists it, so a listed file's pack that is absent now was really removed.
        let stored: HashSet<Id> = self.pack_sizes()?.into_keys().collect();
        let in_force: Vec<bool> = files
            .iter()
            .map(|(id, _, _)| !superseded.contains(id))
            .collect();
        let mut dedup_packs: HashSet<Id> = HashSet::new();
        for ((file, _, packs), force) in files.iter().zip(&in_force) {
            for p in packs {
                if !stored.contains(p) {
                    if *force && !condemned.contains(p) {
                        tracing::warn!("pack {p} is listed by index file {file} but missing from the repository (run `cairn check`); its blobs are not reused");
                    }
                } else if *force && !condemned.contains(p) {
                    dedup_packs.insert(*p);
                }
            }
        }
        let recorded: Vec<(Id, u64)> = files
            .iter()
            .zip(&in_force)
            .map(|((id, n, _), force)| (*id, if *force { *n } else { 0 }))
            .collect();
        self.cache.clear_index()?;
        self.cache.set_condemned(&condemned)?;
        let entries = sorter.into_merged()?.filter_map(|e| {
            let e = match e {
                Ok(e) => e,
                Err(err) => return Some(Err(err)),
            };
            let pack = e.location.pack;
            if !stored.contains(&pack) {
                return None;
            }
            if dedup_packs.contains(&pack) {
                // Listed by some file in force; only that file's entry goes in, once.
                let force = in_force.get(e.file as usize).copied().unwrap_or(false);
                return (force && !condemned.contains(&pack)).then_some(Ok((
                    BlobTable::Index,
                    e.id,
                    e.location,
                )));
            }
            Some(Ok((BlobTable::ReadableOnly, e.id, e.location)))
        });
        self.cache.load_sorted(entries, &recorded)?;
        self.note_damaged_index(damaged);
        Ok(())
    }

    /// Removes staging files that failed uploads left behind (see
    /// [`crate::backend::Backend::remove_stale_staging`]).
    pub fn remove_stale_staging(&self, older_than: std::time::Duration) -> Result<u64> {
        self.store.remove_stale_staging(older_than)
    }

    /// The names and sizes of every stored object of a type (`cairn list`).
    pub fn object_names(&self, ft: FileType) -> Result<Vec<(String, u64)>> {
        let mut out: Vec<(String, u64)> = self
            .store
            .list(ft)?
            .into_iter()
            .map(|o| (o.name, o.size))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Calls `f` with every blob the index lists in a pack in force (its id, kind and pack),
    /// in id order, after syncing the index.
    pub fn for_each_indexed_blob(
        &self,
        f: &mut dyn FnMut(Id, BlobKind, Id) -> Result<()>,
    ) -> Result<()> {
        self.ensure_index_synced()?;
        self.cache
            .for_each_blob(&mut |id, loc| f(id, loc.kind, loc.pack))
    }

    /// Every stored pack with its size.
    pub fn pack_sizes(&self) -> Result<std::collections::HashMap<Id, u64>> {
        Ok(self
            .store
            .list(FileType::Pack)?
            .into_iter()
            .filter_map(|o| Id::from_hex(&o.name).ok().map(|id| (id, o.size)))
            .collect())
    }

    /// How many packs are stored and their bytes.
    pub fn pack_stats(&self) -> Result<PackStats> {
        let packs = self.store.list(FileType::Pack)?;
        Ok(PackStats {
            packs: packs.len() as u64,
            bytes: packs.iter().map(|p| p.size).sum(),
        })
    }

    /// Counts and sizes of the blobs in the index (synced first if this process has not).
    pub fn blob_totals(&self) -> Result<BlobTotals> {
        self.ensure_index_synced()?;
        self.cache.blob_totals()
    }

    /// Stores an index file (or condemned record); returns its name.
    pub fn save_index(&self, index: &IndexFile) -> Result<Id> {
        store_index_file(&self.store, &self.keys, index)
    }

    pub fn read_index_file(&self, id: &Id) -> Result<IndexFile> {
        self.read_sealed(FileType::Index, format::index::AAD, id, "index file")
    }
}

/// The packs stored in a repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    pub packs: u64,
    pub bytes: u64,
}

/// Seals and stores an index file (or condemned record) under the hash of its bytes; returns
/// its name. Every index file is written here: by [`Repository::save_index`], by
/// [`IndexFileWriter`] and by the upload thread of [`crate::writer::BlobWriter`] (which holds
/// the store and keys, not the repository). Callers store the packs a file lists first.
pub(crate) fn store_index_file(store: &Store, keys: &Keys, index: &IndexFile) -> Result<Id> {
    let sealed = seal_meta(keys, format::index::AAD, index)?;
    let id = Id::of_bytes(&sealed);
    store.put(FileType::Index, &id.to_hex(), Bytes::from(sealed))?;
    Ok(id)
}

/// Writes pack entries as a series of index files of at most [`IndexFileWriter::ENTRIES`]
/// entries. The last file, written by `finish`, carries `supersedes`: until it exists, the
/// files it supersedes stay in force.
pub struct IndexFileWriter<'a> {
    repo: &'a Repository,
    current: IndexFile,
    written: u64,
}

impl<'a> IndexFileWriter<'a> {
    pub const ENTRIES: usize = 50_000;

    pub fn new(repo: &'a Repository) -> Self {
        IndexFileWriter {
            repo,
            current: IndexFile {
                version: 1,
                ..Default::default()
            },
            written: 0,
        }
    }

    pub fn push(&mut self, pack: crate::format::index::IndexPack) -> Result<()> {
        self.current.packs.push(pack);
        if self.current.blob_count() >= Self::ENTRIES {
            let full = std::mem::replace(
                &mut self.current,
                IndexFile {
                    version: 1,
                    ..Default::default()
                },
            );
            self.repo.save_index(&full)?;
            self.written += 1;
        }
        Ok(())
    }

    /// Writes the last file; returns how many files were written in all.
    pub fn finish(mut self, supersedes: Vec<Id>) -> Result<u64> {
        self.current.supersedes = supersedes;
        self.repo.save_index(&self.current)?;
        Ok(self.written + 1)
    }
}
