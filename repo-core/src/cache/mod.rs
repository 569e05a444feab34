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
//! Files: `records` (what a row holds and how a location is encoded), `tables` (reading and
//! writing the tables), this file (opening, damage, checksums, the cache folder).
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

use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::Snapshot;
use crate::format::{from_cbor, to_cbor};
use crate::id::{BlobKind, Id};
use crate::scratch::ScratchDir;

mod records;
mod tables;

pub use records::{index_locations, BlobLocation, BlobTable, BlobTotals, FileRecord, LOCATION_LEN};
pub use tables::CacheReader;

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

/// The checksum stored after a value: BLAKE3 over the table name, the key and the value, so a
/// changed byte in either a key or a value is noticed when the row is read.
fn checksum(table: &str, key: &[u8], value: &[u8]) -> [u8; SUM_LEN] {
    // BLAKE3 of `table || key length (u64 LE) || key || value`. A row is small, so it is
    // hashed in one call from a buffer on the stack: a restore checks tens of thousands of
    // rows, and setting up a streaming hasher cost more than hashing one.
    let len = (key.len() as u64).to_le_bytes();
    let mut buf = [0u8; 256];
    let parts = [table.as_bytes(), &len[..], key, value];
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let hash = if total <= buf.len() {
        let mut at = 0;
        for p in parts {
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        blake3::hash(&buf[..total])
    } else {
        let mut h = blake3::Hasher::new();
        for p in parts {
            h.update(p);
        }
        h.finalize()
    };
    let mut out = [0u8; SUM_LEN];
    out.copy_from_slice(&hash.as_bytes()[..SUM_LEN]);
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
        Cache::in_scratch(db, path, temp)
    }

    /// A cache whose file lives in `temp`, removed with it.
    fn in_scratch(db: Database, path: PathBuf, temp: ScratchDir) -> Result<Cache> {
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

    /// A private copy of this cache, for a process that reads for a long time (the mount):
    /// redb allows one process per file, so holding the shared cache would send every other
    /// command meanwhile to a temporary cache (a whole index load, and a backup without its
    /// files cache). The copy starts from everything this cache knows, is updated by the
    /// holder's own index syncs, and is removed when dropped.
    pub fn private_copy(&self) -> Result<Cache> {
        self.flush()?;
        let temp = ScratchDir::new("cairn-cache")?;
        let path = temp.path().join("cache.redb");
        std::fs::copy(&self.path, &path)
            .map_err(|e| Error::io(format!("copying the cache {}", self.path.display()), e))?;
        make_private_file(&path)?;
        let db = open_db(&path, TEMPORARY_CACHE_BYTES)?;
        Cache::in_scratch(db, path, temp)
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
            if !stale {
                // Written by this version, so every table exists: nothing to commit, and no
                // fsync for every process that opens the cache.
                tx.abort()?;
                return Ok(());
            }
            for t in [
                BLOBS,
                READABLE_ONLY,
                SNAPSHOTS,
                FILES,
                INDEX_FILES,
                CONDEMNED,
            ] {
                tx.delete_table(t)?;
                tx.open_table(t)?;
            }
            tx.open_table(META)?.insert("version", CACHE_VERSION)?;
            tx.commit()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A row's checksum is BLAKE3 of table, key length, key and value, whichever way it is
    /// computed: caches written before rows were hashed in one call still check.
    #[test]
    fn row_checksums_are_the_hash_of_the_rows_parts() {
        for (key, value) in [
            (&[1u8; 32][..], &[2u8; 40][..]),
            (&[3u8; 100][..], &[4u8; 300][..]),
        ] {
            let mut h = blake3::Hasher::new();
            h.update(b"blobs");
            h.update(&(key.len() as u64).to_le_bytes());
            h.update(key);
            h.update(value);
            assert_eq!(
                checksum("blobs", key, value),
                h.finalize().as_bytes()[..SUM_LEN]
            );
        }
    }

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
