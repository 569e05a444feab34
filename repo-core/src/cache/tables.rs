//! Reading and writing the cache's tables; every call runs under `Cache::guard`.

use super::*;

impl Cache {
    fn get_location(
        table: &Table,
        t: &impl ReadableTable<&'static [u8], &'static [u8]>,
        id: &Id,
    ) -> Result<Option<BlobLocation>> {
        match t.get(id.0.as_slice())? {
            Some(v) => Ok(Some(BlobLocation::decode(checked(
                table,
                &id.0,
                v.value(),
            )?)?)),
            None => Ok(None),
        }
    }

    /// Where a blob is, for writers: only blobs they may deduplicate against.
    pub fn lookup(&self, id: &Id) -> Result<Option<BlobLocation>> {
        self.guard(|| {
            let tx = self.db.begin_read()?;
            Self::get_location(&BLOBS, &tx.open_table(BLOBS)?, id)
        })
    }

    /// Where a blob is, for readers: also blobs that only condemned packs or superseded index
    /// files still hold (a snapshot committed during a prune restores at once).
    pub fn lookup_readable(&self, id: &Id) -> Result<Option<BlobLocation>> {
        self.guard(|| {
            let tx = self.db.begin_read()?;
            if let Some(loc) = Self::get_location(&BLOBS, &tx.open_table(BLOBS)?, id)? {
                return Ok(Some(loc));
            }
            Self::get_location(&READABLE_ONLY, &tx.open_table(READABLE_ONLY)?, id)
        })
    }

    /// A reader for many lookups under one read transaction.
    pub fn reader(&self) -> Result<CacheReader<'_>> {
        self.guard(|| {
            let tx = self.db.begin_read()?;
            Ok(CacheReader {
                cache: self,
                blobs: tx.open_table(BLOBS)?,
                readable_only: tx.open_table(READABLE_ONLY)?,
                files: tx.open_table(FILES)?,
            })
        })
    }

    fn id_keys(&self, table: Table) -> Result<HashSet<Id>> {
        self.guard(|| {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(table)?;
            let mut out = HashSet::new();
            for row in t.iter()? {
                let (k, v) = row?;
                checked(&table, k.value(), v.value())?;
                out.insert(Id::from_slice(k.value()).map_err(|_| {
                    Error::new(ErrorKind::Cache, format!("bad key in {}", table.name()))
                })?);
            }
            Ok(out)
        })
    }

    pub fn ingested_index_files(&self) -> Result<HashSet<Id>> {
        self.id_keys(INDEX_FILES)
    }

    /// Records index files and their entries in one transaction. Entries are inserted in id
    /// order, which keeps redb's B-tree writes sequential.
    pub fn ingest(&self, files: &[(Id, Vec<(Id, BlobLocation)>)]) -> Result<()> {
        self.guard(|| {
            let count: usize = files.iter().map(|(_, e)| e.len()).sum();
            let pending = self.undurable.fetch_add(count, Ordering::Relaxed) + count;
            let mut tx = self.db.begin_write()?;
            if pending >= DURABLE_EVERY {
                self.undurable.store(0, Ordering::Relaxed);
            } else {
                tx.set_durability(Durability::None)?;
            }
            {
                let mut blobs = tx.open_table(BLOBS)?;
                let mut all: Vec<&(Id, BlobLocation)> =
                    files.iter().flat_map(|(_, e)| e.iter()).collect();
                all.sort_by_key(|e| e.0);
                for (id, loc) in all {
                    blobs.insert(
                        id.0.as_slice(),
                        with_sum(&BLOBS, &id.0, &loc.encode()).as_slice(),
                    )?;
                }
                let mut idx = tx.open_table(INDEX_FILES)?;
                for (id, entries) in files {
                    let count = (entries.len() as u64).to_le_bytes();
                    idx.insert(
                        id.0.as_slice(),
                        with_sum(&INDEX_FILES, &id.0, &count).as_slice(),
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Records blobs that readers may read but writers must not reuse (in condemned packs).
    pub fn ingest_readable_only(&self, entries: &[(Id, BlobLocation)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.guard(|| {
            let mut tx = self.db.begin_write()?;
            tx.set_durability(Durability::None)?;
            {
                let mut t = tx.open_table(READABLE_ONLY)?;
                let mut all: Vec<&(Id, BlobLocation)> = entries.iter().collect();
                all.sort_by_key(|e| e.0);
                for (id, loc) in all {
                    t.insert(
                        id.0.as_slice(),
                        with_sum(&READABLE_ONLY, &id.0, &loc.encode()).as_slice(),
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Where a bulk load may sort its entries: next to the cache file, private to the one
    /// process that has the cache open.
    pub fn scratch_dir(&self) -> PathBuf {
        self.path.with_extension("sort")
    }

    /// Fills the blob tables, which must be empty, from entries in id order (see
    /// `index_sort`), keeping the first location of an id listed twice for a table, and then
    /// records the index files with their entry counts. The tables are committed durably
    /// every [`LOAD_COMMIT_EVERY`] entries; the index files only at the end, so a load that
    /// is interrupted leaves a cache that records no index file and is loaded again.
    pub fn load_sorted(
        &self,
        entries: impl Iterator<Item = Result<(BlobTable, Id, BlobLocation)>>,
        files: &[(Id, u64)],
    ) -> Result<()> {
        self.guard(|| {
            let mut entries = entries.peekable();
            let mut last: [Option<Id>; 2] = [None, None];
            while entries.peek().is_some() {
                let tx = self.db.begin_write()?;
                {
                    let mut index = tx.open_table(BLOBS)?;
                    let mut readable = tx.open_table(READABLE_ONLY)?;
                    let mut n = 0;
                    while n < LOAD_COMMIT_EVERY {
                        let Some(e) = entries.next() else { break };
                        let (target, id, loc) = e?;
                        let (slot, table, def) = match target {
                            BlobTable::Index => (0, &mut index, &BLOBS),
                            BlobTable::ReadableOnly => (1, &mut readable, &READABLE_ONLY),
                        };
                        if last[slot] == Some(id) {
                            continue;
                        }
                        table.insert(
                            id.0.as_slice(),
                            with_sum(def, &id.0, &loc.encode()).as_slice(),
                        )?;
                        last[slot] = Some(id);
                        n += 1;
                    }
                }
                tx.commit()?;
            }
            let tx = self.db.begin_write()?;
            {
                let mut idx = tx.open_table(INDEX_FILES)?;
                for (id, count) in files {
                    idx.insert(
                        id.0.as_slice(),
                        with_sum(&INDEX_FILES, &id.0, &count.to_le_bytes()).as_slice(),
                    )?;
                }
            }
            tx.commit()?;
            self.undurable.store(0, Ordering::Relaxed);
            Ok(())
        })
    }

    /// Forgets every blob and index file (before a rebuild).
    pub fn clear_index(&self) -> Result<()> {
        self.guard(|| {
            let tx = self.db.begin_write()?;
            for t in [BLOBS, READABLE_ONLY, INDEX_FILES] {
                tx.delete_table(t)?;
                tx.open_table(t)?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Packs named by present condemned records.
    pub fn condemned_packs(&self) -> Result<HashSet<Id>> {
        self.id_keys(CONDEMNED)
    }

    pub fn set_condemned(&self, packs: &HashSet<Id>) -> Result<()> {
        self.guard(|| {
            let tx = self.db.begin_write()?;
            tx.delete_table(CONDEMNED)?;
            {
                let mut t = tx.open_table(CONDEMNED)?;
                for p in packs {
                    t.insert(p.0.as_slice(), with_sum(&CONDEMNED, &p.0, &[]).as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Makes everything written so far durable (a commit with Durability::None is not).
    pub fn flush(&self) -> Result<()> {
        self.guard(|| {
            let tx = self.db.begin_write()?;
            tx.commit()?;
            Ok(())
        })
    }

    pub fn cached_snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        self.guard(|| {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(SNAPSHOTS)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                let value = checked(&SNAPSHOTS, k.value(), v.value())?;
                let id = Id::from_slice(k.value())
                    .map_err(|_| Error::new(ErrorKind::Cache, "bad key in snapshots"))?;
                let s = from_cbor::<Snapshot>(value, "cached snapshot")
                    .map_err(|e| Error::new(ErrorKind::Cache, e.to_string()))?;
                out.push((id, s));
            }
            Ok(out)
        })
    }

    pub fn update_snapshots(&self, add: &[(Id, Snapshot)], remove: &[Id]) -> Result<()> {
        self.guard(|| {
            let tx = self.db.begin_write()?;
            {
                let mut t = tx.open_table(SNAPSHOTS)?;
                for (id, s) in add {
                    t.insert(
                        id.0.as_slice(),
                        with_sum(&SNAPSHOTS, &id.0, &to_cbor(s)?).as_slice(),
                    )?;
                }
                for id in remove {
                    t.remove(id.0.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Calls `f` for every blob writers may deduplicate against, streamed from disk in id
    /// order.
    pub fn for_each_blob(&self, f: &mut dyn FnMut(Id, BlobLocation) -> Result<()>) -> Result<()> {
        self.guard(|| {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(BLOBS)?;
            for row in t.iter()? {
                let (k, v) = row?;
                let loc = BlobLocation::decode(checked(&BLOBS, k.value(), v.value())?)?;
                let id = Id::from_slice(k.value())
                    .map_err(|_| Error::new(ErrorKind::Cache, "bad key in blobs"))?;
                f(id, loc)?;
            }
            Ok(())
        })
    }

    /// Counts and sums over every indexed blob, streamed from disk.
    pub fn blob_totals(&self) -> Result<BlobTotals> {
        let mut out = BlobTotals::default();
        self.for_each_blob(&mut |_, loc| {
            out.blobs += 1;
            if loc.kind == BlobKind::Data {
                out.data_blobs += 1;
            }
            out.raw_bytes += loc.raw_length as u64;
            out.stored_bytes += loc.length as u64;
            Ok(())
        })?;
        Ok(out)
    }

    pub fn put_files(&self, records: &[(Vec<u8>, FileRecord)]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.guard(|| {
            let tx = self.db.begin_write()?;
            {
                let mut t = tx.open_table(FILES)?;
                for (path, rec) in records {
                    t.insert(
                        path.as_slice(),
                        with_sum(&FILES, path, &to_cbor(rec)?).as_slice(),
                    )?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }
}

/// Many lookups under one read transaction (a consistent view): a backup's files cache
/// and deduplication, a restore's tens of thousands of blob locations.
pub struct CacheReader<'c> {
    cache: &'c Cache,
    blobs: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    readable_only: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    files: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl CacheReader<'_> {
    /// Where a blob is, for writers (see [`Cache::lookup`]).
    pub fn lookup(&self, id: &Id) -> Result<Option<BlobLocation>> {
        self.cache
            .guard(|| Cache::get_location(&BLOBS, &self.blobs, id))
    }

    /// Where a blob is, for readers (see [`Cache::lookup_readable`]).
    pub fn lookup_readable(&self, id: &Id) -> Result<Option<BlobLocation>> {
        self.cache.guard(|| {
            if let Some(loc) = Cache::get_location(&BLOBS, &self.blobs, id)? {
                return Ok(Some(loc));
            }
            Cache::get_location(&READABLE_ONLY, &self.readable_only, id)
        })
    }

    pub fn file(&self, path: &[u8]) -> Result<Option<FileRecord>> {
        self.cache.guard(|| match self.files.get(path)? {
            Some(v) => Ok(from_cbor(checked(&FILES, path, v.value())?, "files cache").ok()),
            None => Ok(None),
        })
    }
}
