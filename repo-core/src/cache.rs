//! The local cache: a redb database per (repository, tenant), derived entirely from the
//! backend and rebuildable at any time.
//!
//! Tables:
//! - `blobs`: blob id -> location (kind, pack, offset, length, raw length) of every blob that
//!   writers may deduplicate against (listed by an index file in force, in a pack that no
//!   condemned record names);
//! - `readable_only`: blobs that readers may still read but writers must not reuse (in
//!   condemned packs, or listed only by superseded index files), so that a snapshot committed
//!   while a prune runs restores at once;
//! - `index_files`: the index files whose entries the blob tables hold;
//! - `condemned`: packs named by present condemned records;
//! - `snapshots`: snapshot id -> decoded manifest (CBOR), so listing does not decrypt them all;
//! - `files`: absolute path -> (inode, mtime, ctime, size, content ids), which lets backup
//!   skip unchanged files without reading them.
//!
//! Invariant: an id in `blobs` is in a pack that some present index file in force lists. When
//! an ingested index file disappears from the backend (compaction, prune), the blob tables are
//! rebuilt from scratch (see `Repository::sync_index`). Lookups read redb on disk, so memory
//! stays bounded whatever the repository size.
//!
//! Damage: every row ends with a checksum of its table, key and value; a cache file of up to
//! 16 MiB has all its pages checked by redb when opened (about 25 ms); a panic inside redb is caught. Damage
//! found while opening starts the cache again; damage found later fails the operation with an
//! [`ErrorKind::Cache`] error and removes the file, so the next command rebuilds it. A blob
//! that the cache does not know is looked for in the repository itself before it is reported
//! missing (`Repository::locate`), and check and repair work from an index read from the
//! repository, so no decision rests on the cache alone.
//!
//! redb allows one process per database file. A second process finding the cache busy works
//! with a private temporary cache instead (slower, never wrong). Cache folders are private
//! to their user (0700, files 0600: they name every backed-up path) and carry a
//! `CACHEDIR.TAG`.

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::format::index::IndexFile;
use crate::format::pack::PackEntry;
use crate::format::snapshot::Snapshot;
use crate::format::{from_cbor, to_cbor};
use crate::id::{BlobKind, Id};
use crate::scratch::ScratchDir;

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

const BLOBS: Table = TableDefinition::new("blobs");
const READABLE_ONLY: Table = TableDefinition::new("readable_only");
const INDEX_FILES: Table = TableDefinition::new("index_files");
const SNAPSHOTS: Table = TableDefinition::new("snapshots");
const FILES: Table = TableDefinition::new("files");
const CONDEMNED: Table = TableDefinition::new("condemned");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// redb's page cache for the persistent cache, and for temporary ones (overlays, --no-cache):
/// lookups stay fast while memory stays flat however large the index grows.
const CACHE_BYTES: usize = 32 << 20;
const TEMPORARY_CACHE_BYTES: usize = 16 << 20;

/// Non-durable entries after which a commit is made durable (bounds redb's memory).
const DURABLE_EVERY: usize = 100_000;
/// A bulk load commits (durably) every this many entries.
const LOAD_COMMIT_EVERY: usize = 1_000_000;
/// Cache files up to this size have every page checked (redb's integrity check, which
/// verifies the page checksums) when they are opened; larger ones rely on the value
/// checksums and on verifying misses against the repository (module docs).
const VERIFY_ON_OPEN_MAX: u64 = 16 << 20;

/// Bumped when the cache layout changes; a cache of another version is discarded.
const CACHE_VERSION: &[u8] = b"cairn-cache-3";

/// Bytes of the checksum that ends every stored value.
const SUM_LEN: usize = 8;

/// The tag that marks a cache folder for backup tools (the Cache Directory Tagging spec).
const CACHEDIR_TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file marks a cache folder of the Cairn backup program; it can be deleted at any time\n\
# and is rebuilt from the repository. Backup programs that honour cache tags skip it.\n";

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
            return Err(Error::new(ErrorKind::Cache, "cache: bad blob record"));
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

/// Which blob table an entry of a bulk load goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobTable {
    /// Blobs that writers may deduplicate against: listed by an index file in force, in a
    /// pack that no present condemned record names.
    Index,
    /// Blobs that readers may still read but writers must not reuse: in condemned packs, or
    /// listed only by superseded index files (see `Repository::load_index`).
    ReadableOnly,
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

/// The checksum stored after a value: BLAKE3 over the table name, the key and the value, so a
/// changed byte in either a key or a value is noticed when the row is read.
fn checksum(table: &str, key: &[u8], value: &[u8]) -> [u8; SUM_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(table.as_bytes());
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(value);
    let mut out = [0u8; SUM_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..SUM_LEN]);
    out
}

fn with_sum(table: &Table, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + SUM_LEN);
    v.extend_from_slice(value);
    v.extend_from_slice(&checksum(table.name(), key, value));
    v
}

/// The value of a row whose checksum holds; a damaged row is a [`ErrorKind::Cache`] error.
fn checked<'v>(table: &Table, key: &[u8], stored: &'v [u8]) -> Result<&'v [u8]> {
    let split = stored
        .len()
        .checked_sub(SUM_LEN)
        .ok_or_else(|| Error::new(ErrorKind::Cache, format!("short row in {}", table.name())))?;
    let (value, sum) = stored.split_at(split);
    if sum != checksum(table.name(), key, value) {
        return Err(Error::new(
            ErrorKind::Cache,
            format!("a row of table {} fails its checksum", table.name()),
        ));
    }
    Ok(value)
}

/// Prepares the folder that holds cache files. A folder this creates is private to its user
/// (0700: the cache names every backed-up path) and tagged with `CACHEDIR.TAG`; so is an
/// existing folder named `cairn` (the default location, which older versions created 0755).
/// Any other existing folder (a `--cache-dir` such as `/tmp` or a home folder) is left as it
/// is: changing its mode or tagging it could break it or hide it from backups, and the cache
/// files themselves are 0600.
fn prepare_cache_dir(dir: &Path) -> Result<()> {
    let created = !dir.exists();
    if created {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("creating cache folder {}", dir.display()), e))?;
    }
    let ours = created || dir.file_name().is_some_and(|n| n == "cairn");
    if ours {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("making cache folder {} private", dir.display()), e))?;
        let tag = dir.join("CACHEDIR.TAG");
        if !tag.exists() {
            let _ = std::fs::write(&tag, CACHEDIR_TAG);
        }
    }
    Ok(())
}

fn make_private_file(path: &Path) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("making cache {} private", path.display()), e))
}

pub struct Cache {
    db: Database,
    path: PathBuf,
    /// Entries written by non-durable commits since the last durable one. redb keeps the
    /// pages of non-durable commits in memory, so they are made durable every so often.
    undurable: AtomicUsize,
    /// Set once damage was seen: every later call fails the same way.
    damaged: AtomicBool,
    /// Keeps a temporary cache's folder alive; removed on drop.
    temp: Option<ScratchDir>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cache({})", self.path.display())
    }
}

fn redb_err(what: &str, e: impl Into<redb::Error>) -> Error {
    Error::from(e.into()).context(what)
}

/// Opens a redb file, turning a panic inside redb (a damaged file) into an error.
fn open_db(path: &Path, cache_bytes: usize) -> Result<Database> {
    match catch_unwind(|| Database::builder().set_cache_size(cache_bytes).create(path)) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(Error::new(
            ErrorKind::AlreadyExists,
            format!("cache {} is in use by another process", path.display()),
        )),
        Ok(Err(e)) => Err(Error::with_source(
            ErrorKind::Cache,
            format!("cache {} cannot be opened", path.display()),
            e,
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Cache,
            format!("cache {} cannot be opened (damaged)", path.display()),
        )),
    }
}

impl Cache {
    /// Opens or creates the cache at `path` (a file of mode 0600, in a folder prepared by
    /// `prepare_cache_dir`). A cache that another process has open gives a
    /// temporary cache; a damaged one (it fails to open, fails redb's integrity check, or
    /// has another layout) is deleted and started again. Any other failure is an error, and
    /// callers fall back to a temporary cache (`Repository::open`).
    pub fn open(path: &Path) -> Result<Cache> {
        if let Some(parent) = path.parent() {
            prepare_cache_dir(parent)?;
        }
        let db = match open_db(path, CACHE_BYTES) {
            Ok(db) => Self::verified(db, path)?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                tracing::info!("{e}; using a temporary cache");
                return Cache::temporary();
            }
            Err(e) if e.kind() == ErrorKind::Cache => {
                tracing::warn!("{e}; rebuilding it");
                Self::recreate(path)?
            }
            Err(e) => return Err(e),
        };
        make_private_file(path)?;
        let cache = Cache {
            db,
            path: path.to_path_buf(),
            undurable: AtomicUsize::new(0),
            damaged: AtomicBool::new(false),
            temp: None,
        };
        match cache.init_tables() {
            Ok(()) => Ok(cache),
            Err(e) if e.kind() == ErrorKind::Cache => {
                tracing::warn!("{e}; rebuilding it");
                drop(cache);
                let cache = Cache {
                    db: Self::recreate(path)?,
                    path: path.to_path_buf(),
                    undurable: AtomicUsize::new(0),
                    damaged: AtomicBool::new(false),
                    temp: None,
                };
                cache.init_tables()?;
                Ok(cache)
            }
            Err(e) => Err(e),
        }
    }

    /// A small cache file has every page checked now; a damaged one is started again.
    fn verified(mut db: Database, path: &Path) -> Result<Database> {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if size > VERIFY_ON_OPEN_MAX {
            return Ok(db);
        }
        match catch_unwind(AssertUnwindSafe(|| db.check_integrity())) {
            Ok(Ok(true)) => Ok(db),
            outcome => {
                let why = match outcome {
                    Ok(Ok(_)) => "it failed redb's integrity check".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "redb failed on it".to_string(),
                };
                tracing::warn!("cache {} is damaged ({why}); rebuilding it", path.display());
                drop(db);
                Self::recreate(path)
            }
        }
    }

    fn recreate(path: &Path) -> Result<Database> {
        let _ = std::fs::remove_file(path);
        let db = open_db(path, CACHE_BYTES)?;
        make_private_file(path)?;
        Ok(db)
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
            undurable: AtomicUsize::new(0),
            damaged: AtomicBool::new(false),
            temp: Some(temp),
        };
        cache.init_tables()?;
        Ok(cache)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_temporary(&self) -> bool {
        self.temp.is_some()
    }

    /// Runs one cache operation. Damage it meets (a row failing its checksum, redb reporting
    /// corruption, or redb panicking on a damaged page) marks the cache damaged and removes
    /// its file, so that the next command rebuilds it from the repository; the error says so.
    /// The cache is derived data: nothing is lost, and no decision is taken on a damaged
    /// answer.
    fn guard<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.damaged.load(Ordering::Relaxed) {
            return Err(self.damage_error("it was found damaged earlier"));
        }
        let outcome = catch_unwind(AssertUnwindSafe(f));
        let why = match outcome {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if e.kind() != ErrorKind::Cache => return Err(e),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the database failed on a damaged page".to_string(),
        };
        self.damaged.store(true, Ordering::Relaxed);
        if self.temp.is_none() {
            let _ = std::fs::remove_file(&self.path);
        }
        Err(self.damage_error(&why))
    }

    fn damage_error(&self, why: &str) -> Error {
        Error::new(
            ErrorKind::Cache,
            format!(
                "the local cache {} is damaged ({why}); it was removed and the next command rebuilds it from the repository (nothing in the repository is affected)",
                self.path.display()
            ),
        )
    }

    fn init_tables(&self) -> Result<()> {
        self.guard(|| {
            let tx = self.db.begin_write()?;
            let stale = {
                let meta = tx.open_table(META)?;
                let v = meta.get("version")?.map(|g| g.value().to_vec());
                v.as_deref() != Some(CACHE_VERSION)
            };
            if stale {
                for t in [
                    BLOBS,
                    READABLE_ONLY,
                    SNAPSHOTS,
                    FILES,
                    INDEX_FILES,
                    CONDEMNED,
                ] {
                    tx.delete_table(t)?;
                }
            }
            for t in [
                BLOBS,
                READABLE_ONLY,
                SNAPSHOTS,
                FILES,
                INDEX_FILES,
                CONDEMNED,
            ] {
                tx.open_table(t)?;
            }
            tx.open_table(META)?.insert("version", CACHE_VERSION)?;
            tx.commit()?;
            Ok(())
        })
    }

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

/// Many lookups under one read transaction (a consistent view).
pub struct CacheReader<'c> {
    cache: &'c Cache,
    blobs: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    files: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl CacheReader<'_> {
    /// Where a blob is, for writers (see [`Cache::lookup`]).
    pub fn lookup(&self, id: &Id) -> Result<Option<BlobLocation>> {
        self.cache
            .guard(|| Cache::get_location(&BLOBS, &self.blobs, id))
    }

    pub fn file(&self, path: &[u8]) -> Result<Option<FileRecord>> {
        self.cache.guard(|| match self.files.get(path)? {
            Some(v) => Ok(from_cbor(checked(&FILES, path, v.value())?, "files cache").ok()),
            None => Ok(None),
        })
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
            .load_sorted(stale.iter().map(|e| Ok((BlobTable::Index, e.0, e.1))), &[])
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
            .load_sorted(
                entries.iter().map(|e| Ok((BlobTable::Index, e.0, e.1))),
                &[(file, 3)],
            )
            .unwrap();
        assert_eq!(cache.lookup(&Id([5; 32])).unwrap(), None);
        assert_eq!(cache.lookup(&Id([1; 32])).unwrap(), Some(loc(7)));
        assert_eq!(cache.lookup(&Id([9; 32])).unwrap(), Some(loc(9)));
        assert!(cache.ingested_index_files().unwrap().contains(&file));
    }
}
