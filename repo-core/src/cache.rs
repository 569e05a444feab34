//! The local cache: a redb database per (repository, tenant), derived entirely from the
//! backend and rebuildable at any time.
//!
//! Tables:
//! - `blobs`: blob id -> location (kind, pack, offset, length, raw length);
//! - `index_files`: the index files whose entries `blobs` holds;
//! - `snapshots`: snapshot id -> decoded manifest (CBOR), so listing does not decrypt them all;
//! - `files`: absolute path -> (inode, mtime, ctime, size, content ids), which lets backup
//!   skip unchanged files without reading them.
//!
//! Invariant: an id in `blobs` is in a pack that some present index file lists. When an
//! ingested index file disappears from the backend (compaction, prune), the blob table is
//! rebuilt from scratch (see `Repository::sync_index`). Lookups read redb on disk, so memory
//! stays bounded whatever the repository size.
//!
//! redb allows one process per database file. A second process finding the cache busy works
//! with a private temporary cache instead (slower, never wrong).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::format::index::IndexFile;
use crate::format::pack::PackEntry;
use crate::format::snapshot::Snapshot;
use crate::format::{from_cbor, to_cbor};
use crate::id::{BlobKind, Id};
use crate::scratch::ScratchDir;

const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
const INDEX_FILES: TableDefinition<&[u8], u64> = TableDefinition::new("index_files");
const SNAPSHOTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("snapshots");
const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CONDEMNED: TableDefinition<&[u8], ()> = TableDefinition::new("condemned");

/// redb's page cache for the persistent cache, and for temporary ones (overlays, --no-cache):
/// lookups stay fast while memory stays flat however large the index grows.
const CACHE_BYTES: usize = 32 << 20;
const TEMPORARY_CACHE_BYTES: usize = 16 << 20;

/// Non-durable entries after which a commit is made durable (bounds redb's memory).
const DURABLE_EVERY: usize = 100_000;
/// A bulk load commits (durably) every this many entries.
const LOAD_COMMIT_EVERY: usize = 1_000_000;

/// Bumped when the cache layout changes; a cache of another version is discarded.
const CACHE_VERSION: &[u8] = b"cairn-cache-2";

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub kind: BlobKind,
    pub pack: Id,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
}

/// Bytes of an encoded [`BlobLocation`].
pub const LOCATION_LEN: usize = 49;

impl BlobLocation {
    pub(crate) fn encode(&self) -> [u8; LOCATION_LEN] {
        let mut b = [0u8; LOCATION_LEN];
        b[0] = self.kind.as_u8();
        b[1..33].copy_from_slice(&self.pack.0);
        b[33..41].copy_from_slice(&self.offset.to_le_bytes());
        b[41..45].copy_from_slice(&self.length.to_le_bytes());
        b[45..49].copy_from_slice(&self.raw_length.to_le_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != LOCATION_LEN {
            return Err(Error::corrupt(
                "cache: bad blob record (delete the cache to rebuild it)",
            ));
        }
        let mut off = [0u8; 8];
        off.copy_from_slice(&b[33..41]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&b[41..45]);
        let mut raw = [0u8; 4];
        raw.copy_from_slice(&b[45..49]);
        Ok(BlobLocation {
            kind: BlobKind::from_u8(b[0])?,
            pack: Id::from_slice(&b[1..33])?,
            offset: u64::from_le_bytes(off),
            length: u32::from_le_bytes(len),
            raw_length: u32::from_le_bytes(raw),
        })
    }

    pub fn from_entry(pack: Id, e: &PackEntry) -> Self {
        BlobLocation {
            kind: e.kind,
            pack,
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        }
    }
}

/// Every blob an index file lists, with its location.
pub fn index_locations(index: &IndexFile) -> Vec<(Id, BlobLocation)> {
    index
        .packs
        .iter()
        .flat_map(|p| {
            p.blobs
                .iter()
                .map(move |e| (e.id, BlobLocation::from_entry(p.id, e)))
        })
        .collect()
}

/// What the files cache remembers of a file it saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub inode: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub size: u64,
    #[serde(default)]
    pub content: Vec<Id>,
    #[serde(default)]
    pub content_lists: Vec<Id>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobTotals {
    pub blobs: u64,
    pub data_blobs: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

pub struct Cache {
    db: Database,
    path: PathBuf,
    /// Entries written by non-durable commits since the last durable one. redb keeps the
    /// pages of non-durable commits in memory, so they are made durable every so often.
    undurable: std::sync::atomic::AtomicUsize,
    /// Keeps a temporary cache's folder alive; removed on drop.
    _temp: Option<ScratchDir>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cache({})", self.path.display())
    }
}

/// A folder removed when dropped.
fn redb_err(what: &str, e: impl Into<redb::Error>) -> Error {
    Error::from(e.into()).context(what)
}

impl Cache {
    /// Opens or creates the cache at `path`. A busy cache (another process) or one of an
    /// older layout falls back as described in the module docs.
    pub fn open(path: &Path) -> Result<Cache> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating cache folder {}", parent.display()), e))?;
        }
        let db = match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                tracing::info!(
                    "cache {} is in use by another process; using a temporary cache",
                    path.display()
                );
                return Cache::temporary();
            }
            Err(e) => {
                // A damaged cache is only a cache: start again.
                tracing::warn!(
                    "cache {} cannot be opened ({e}); rebuilding it",
                    path.display()
                );
                let _ = std::fs::remove_file(path);
                Database::builder()
                    .set_cache_size(CACHE_BYTES)
                    .create(path)
                    .map_err(|e| redb_err("creating cache", e))?
            }
        };
        let cache = Cache {
            db,
            path: path.to_path_buf(),
            undurable: Default::default(),
            _temp: None,
        };
        cache.init_tables()?;
        Ok(cache)
    }

    /// A cache in a private temporary folder, removed when dropped (`--no-cache`).
    pub fn temporary() -> Result<Cache> {
        let temp = ScratchDir::new("cairn-cache")?;
        let path = temp.path().join("cache.redb");
        let db = Database::builder()
            .set_cache_size(TEMPORARY_CACHE_BYTES)
            .create(&path)
            .map_err(|e| redb_err("creating cache", e))?;
        let cache = Cache {
            db,
            path,
            undurable: Default::default(),
            _temp: Some(temp),
        };
        cache.init_tables()?;
        Ok(cache)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init_tables(&self) -> Result<()> {
        let tx = self.db.begin_write()?;
        let stale = {
            let meta = tx.open_table(META)?;
            let v = meta.get("version")?.map(|g| g.value().to_vec());
            v.as_deref() != Some(CACHE_VERSION)
        };
        if stale {
            for t in [BLOBS, SNAPSHOTS, FILES] {
                tx.delete_table(t)?;
            }
            tx.delete_table(INDEX_FILES)?;
            tx.delete_table(CONDEMNED)?;
        }
        tx.open_table(BLOBS)?;
        tx.open_table(INDEX_FILES)?;
        tx.open_table(SNAPSHOTS)?;
        tx.open_table(FILES)?;
        tx.open_table(CONDEMNED)?;
        tx.open_table(META)?.insert("version", CACHE_VERSION)?;
        tx.commit()?;
        Ok(())
    }

    pub fn lookup(&self, id: &Id) -> Result<Option<BlobLocation>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BLOBS)?;
        match t.get(id.0.as_slice())? {
            Some(v) => Ok(Some(BlobLocation::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// A reader for many lookups under one read transaction.
    pub fn reader(&self) -> Result<CacheReader> {
        let tx = self.db.begin_read()?;
        Ok(CacheReader {
            blobs: tx.open_table(BLOBS)?,
            files: tx.open_table(FILES)?,
        })
    }

    pub fn ingested_index_files(&self) -> Result<HashSet<Id>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(INDEX_FILES)?;
        let mut out = HashSet::new();
        for row in t.iter()? {
            let (k, _) = row?;
            out.insert(Id::from_slice(k.value())?);
        }
        Ok(out)
    }

    /// Records index files and their entries in one transaction. Entries are inserted in id
    /// order, which keeps redb's B-tree writes sequential.
    pub fn ingest(&self, files: &[(Id, Vec<(Id, BlobLocation)>)]) -> Result<()> {
        let count: usize = files.iter().map(|(_, e)| e.len()).sum();
        let pending = self
            .undurable
            .fetch_add(count, std::sync::atomic::Ordering::Relaxed)
            + count;
        let mut tx = self.db.begin_write()?;
        if pending >= DURABLE_EVERY {
            self.undurable
                .store(0, std::sync::atomic::Ordering::Relaxed);
        } else {
            tx.set_durability(Durability::None)?;
        }
        {
            let mut blobs = tx.open_table(BLOBS)?;
            let mut all: Vec<&(Id, BlobLocation)> =
                files.iter().flat_map(|(_, e)| e.iter()).collect();
            all.sort_by_key(|e| e.0);
            for (id, loc) in all {
                blobs.insert(id.0.as_slice(), loc.encode().as_slice())?;
            }
            let mut idx = tx.open_table(INDEX_FILES)?;
            for (id, entries) in files {
                idx.insert(id.0.as_slice(), entries.len() as u64)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Where a bulk load may sort its entries: next to the cache file, private to the one
    /// process that has the cache open.
    pub fn scratch_dir(&self) -> PathBuf {
        self.path.with_extension("sort")
    }

    /// Fills the blob table, which must be empty, from entries in id order (see
    /// `index_sort`), keeping the first location of an id listed twice, and then records the
    /// index files with their entry counts. The blob table is committed durably every
    /// [`LOAD_COMMIT_EVERY`] entries; the index files only at the end, so a load that is
    /// interrupted leaves a cache that records no index file and is loaded again.
    pub fn load_sorted(
        &self,
        entries: impl Iterator<Item = Result<(Id, BlobLocation)>>,
        files: &[(Id, u64)],
    ) -> Result<()> {
        let mut entries = entries.peekable();
        let mut last: Option<Id> = None;
        while entries.peek().is_some() {
            let tx = self.db.begin_write()?;
            {
                let mut blobs = tx.open_table(BLOBS)?;
                let mut n = 0;
                while n < LOAD_COMMIT_EVERY {
                    let Some(e) = entries.next() else { break };
                    let (id, loc) = e?;
                    if last == Some(id) {
                        continue;
                    }
                    blobs.insert(id.0.as_slice(), loc.encode().as_slice())?;
                    last = Some(id);
                    n += 1;
                }
            }
            tx.commit()?;
        }
        let tx = self.db.begin_write()?;
        {
            let mut idx = tx.open_table(INDEX_FILES)?;
            for (id, count) in files {
                idx.insert(id.0.as_slice(), *count)?;
            }
        }
        tx.commit()?;
        self.undurable
            .store(0, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Forgets every blob and index file (before a rebuild).
    pub fn clear_index(&self) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.delete_table(BLOBS)?;
        tx.delete_table(INDEX_FILES)?;
        tx.open_table(BLOBS)?;
        tx.open_table(INDEX_FILES)?;
        tx.commit()?;
        Ok(())
    }

    /// Packs named by present condemned records.
    pub fn condemned_packs(&self) -> Result<HashSet<Id>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CONDEMNED)?;
        let mut out = HashSet::new();
        for row in t.iter()? {
            let (k, _) = row?;
            out.insert(Id::from_slice(k.value())?);
        }
        Ok(out)
    }

    pub fn set_condemned(&self, packs: &HashSet<Id>) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.delete_table(CONDEMNED)?;
        {
            let mut t = tx.open_table(CONDEMNED)?;
            for p in packs {
                t.insert(p.0.as_slice(), ())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Makes everything written so far durable (a commit with Durability::None is not).
    pub fn flush(&self) -> Result<()> {
        let tx = self.db.begin_write()?;
        tx.commit()?;
        Ok(())
    }

    pub fn cached_snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SNAPSHOTS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let id = Id::from_slice(k.value())?;
            match from_cbor::<Snapshot>(v.value(), "cached snapshot") {
                Ok(s) => out.push((id, s)),
                Err(e) if e.kind() == ErrorKind::Corrupt => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub fn update_snapshots(&self, add: &[(Id, Snapshot)], remove: &[Id]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(SNAPSHOTS)?;
            for (id, s) in add {
                t.insert(id.0.as_slice(), to_cbor(s)?.as_slice())?;
            }
            for id in remove {
                t.remove(id.0.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Calls `f` for every indexed blob, streamed from disk in id order.
    pub fn for_each_blob(&self, f: &mut dyn FnMut(Id, BlobLocation) -> Result<()>) -> Result<()> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BLOBS)?;
        for row in t.iter()? {
            let (k, v) = row?;
            f(Id::from_slice(k.value())?, BlobLocation::decode(v.value())?)?;
        }
        Ok(())
    }

    /// Counts and sums over every indexed blob, streamed from disk.
    pub fn blob_totals(&self) -> Result<BlobTotals> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BLOBS)?;
        let mut out = BlobTotals::default();
        for row in t.iter()? {
            let (_, v) = row?;
            let loc = BlobLocation::decode(v.value())?;
            out.blobs += 1;
            if loc.kind == BlobKind::Data {
                out.data_blobs += 1;
            }
            out.raw_bytes += loc.raw_length as u64;
            out.stored_bytes += loc.length as u64;
        }
        Ok(out)
    }

    pub fn put_files(&self, records: &[(Vec<u8>, FileRecord)]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(FILES)?;
            for (path, rec) in records {
                t.insert(path.as_slice(), to_cbor(rec)?.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Many lookups under one read transaction (a consistent view).
pub struct CacheReader {
    blobs: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    files: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl CacheReader {
    pub fn lookup(&self, id: &Id) -> Result<Option<BlobLocation>> {
        match self.blobs.get(id.0.as_slice())? {
            Some(v) => Ok(Some(BlobLocation::decode(v.value())?)),
            None => Ok(None),
        }
    }

    pub fn file(&self, path: &[u8]) -> Result<Option<FileRecord>> {
        match self.files.get(path)? {
            Some(v) => Ok(from_cbor(v.value(), "files cache").ok()),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn loc(offset: u64) -> BlobLocation {
        BlobLocation {
            kind: BlobKind::Data,
            pack: Id([2; 32]),
            offset,
            length: 10,
            raw_length: 20,
        }
    }

    /// A sorted load records its index files only after the last entry: a load stopped
    /// before that leaves a cache that records no index file (so the repository loads it
    /// again), and the next load starts from an emptied table. Duplicate ids keep the first.
    #[test]
    fn an_interrupted_sorted_load_is_redone_from_scratch() {
        let cache = Cache::temporary().unwrap();
        let stale = [(Id([5; 32]), loc(1))];
        // As if the process died after the blob commits, before the index files were recorded.
        cache
            .load_sorted(stale.iter().map(|e| Ok(*e)), &[])
            .unwrap();
        assert!(cache.ingested_index_files().unwrap().is_empty());

        cache.clear_index().unwrap();
        let entries = [
            (Id([1; 32]), loc(7)),
            (Id([1; 32]), loc(8)),
            (Id([9; 32]), loc(9)),
        ];
        let file = Id([4; 32]);
        cache
            .load_sorted(entries.iter().map(|e| Ok(*e)), &[(file, 3)])
            .unwrap();
        assert_eq!(cache.lookup(&Id([5; 32])).unwrap(), None);
        assert_eq!(cache.lookup(&Id([1; 32])).unwrap(), Some(loc(7)));
        assert_eq!(cache.lookup(&Id([9; 32])).unwrap(), Some(loc(9)));
        assert!(cache.ingested_index_files().unwrap().contains(&file));
    }
}
