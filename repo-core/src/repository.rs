//! Opening and creating repositories, and the operations every command shares: key slots,
//! index sync, snapshot listing and lookup, reading blobs and trees.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rayon::prelude::*;

use crate::backend::{new_runtime, FileType, RootLocation, Store};
use crate::cache::{index_locations, BlobLocation, BlobTable, Cache};
use crate::crypto::{Keys, MasterKey};
use crate::error::{Error, ErrorKind, Result};
use crate::format::config::{ChunkerConfig, Config, FORMAT_VERSION};
use crate::format::index::IndexFile;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{ContentList, Node, Tree};
use crate::format::{self, blob, from_cbor, open_meta, seal_meta};
use crate::id::{BlobKind, Id};
use crate::index_sort::EntrySorter;
use crate::keys::{KdfParams, KeySlot};
use crate::{layout, sys};

/// Index files decoded at once while syncing: enough to keep the cores busy, few enough that
/// memory stays bounded (an index file holds up to 50,000 entries).
const INDEX_READ_BATCH: usize = 4;

/// How far a snapshot listing trusts the manifests in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotRead {
    /// A manifest in the cache is used without reading its object again.
    Cached,
    /// Every object is read and checked against its name.
    Verified,
}

/// A snapshot listing: the readable snapshots, oldest first, and those that cannot be read.
#[derive(Debug, Default)]
pub struct SnapshotList {
    pub snapshots: Vec<(Id, Snapshot)>,
    pub unreadable: Vec<(Id, Error)>,
}

/// Where a repository is. Only local folders for now; the same string grows `s3:` and
/// `rest:` forms later.
#[derive(Debug, Clone)]
pub enum Location {
    Local(PathBuf),
    /// An in-memory repository, for tests and benchmarks (`memory:`).
    Memory,
}

impl Location {
    pub fn parse(s: &str) -> Result<Location> {
        if s == "memory:" {
            return Ok(Location::Memory);
        }
        let path = s.strip_prefix("file:").unwrap_or(s);
        if path.is_empty() {
            return Err(Error::invalid("empty repository location"));
        }
        if let Some((scheme, _)) = path.split_once("://") {
            return Err(Error::invalid(format!(
                "repository scheme {scheme:?} is not supported (use a local path)"
            )));
        }
        Ok(Location::Local(PathBuf::from(path)))
    }

    fn root(&self) -> Result<RootLocation> {
        match self {
            Location::Local(p) => RootLocation::local(p),
            Location::Memory => RootLocation::memory(),
        }
    }
}

/// How to unlock a tenant.
#[derive(Clone)]
pub enum Credentials {
    Password(Vec<u8>),
    Key(MasterKey),
}

/// Local settings that are not part of the repository.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Folder for caches; `None` uses a temporary cache (as `--no-cache` does).
    pub cache_dir: Option<PathBuf>,
    /// Time to live of this process's leases; `None` uses [`crate::lease::DEFAULT_TTL`].
    pub lease_ttl: Option<std::time::Duration>,
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub kdf: KdfParams,
    pub chunker: ChunkerConfig,
    pub pack_size: u64,
    pub compression: i32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            kdf: KdfParams::default(),
            chunker: ChunkerConfig::default(),
            pack_size: 16 << 20,
            compression: 1,
        }
    }
}

/// An open tenant namespace: keys unlocked, config read, cache attached.
#[derive(Debug)]
pub struct Repository {
    root_description: String,
    tenant: String,
    store: Store,
    keys: Keys,
    config: Config,
    cache: Arc<Cache>,
    lease_ttl: std::time::Duration,
    /// Index files that could not be read at the last sync, with why.
    damaged_index: Mutex<Vec<(Id, String)>>,
    /// Whether the cached index was reloaded from the repository after a miss (done at most
    /// once per process: a blob missing after that is missing from the repository).
    reloaded_after_miss: AtomicBool,
}

/// Opens the root of an existing repository location. A local folder that does not exist is
/// reported, never created.
fn open_root(location: &Location) -> Result<(RootLocation, Arc<tokio::runtime::Runtime>)> {
    if let Location::Local(p) = location {
        if !p.exists() {
            return Err(Error::new(
                ErrorKind::NotARepository,
                format!("there is no repository at {} (the folder does not exist; create one with `cairn init`)", p.display()),
            ));
        }
    }
    let rt = new_runtime()?;
    let root = rt.block_on(async { location.root() })?;
    Ok((root, rt))
}

fn require_repository(root: &RootLocation, rt: &tokio::runtime::Runtime) -> Result<()> {
    if !rt.block_on(root.has_marker())? {
        return Err(Error::new(
            ErrorKind::NotARepository,
            format!(
                "{} is not a Cairn repository (create one with `cairn init`)",
                root.description()
            ),
        ));
    }
    Ok(())
}

/// Lists the tenants of a repository (no keys needed).
pub fn list_tenants(location: &Location) -> Result<Vec<String>> {
    let (root, rt) = open_root(location)?;
    require_repository(&root, &rt)?;
    rt.block_on(root.tenants())
}

/// Whether a repository exists at `location`.
pub fn exists(location: &Location) -> Result<bool> {
    if let Location::Local(p) = location {
        if !p.exists() {
            return Ok(false);
        }
    }
    let (root, rt) = open_root(location)?;
    rt.block_on(root.has_marker())
}

/// The master key of `creds`. A password is tried against the key slots (see
/// [`crate::keys::unlock_with_password`]); `is_ours` says whether a key is this tenant's.
fn credential_key(
    store: &Store,
    creds: &Credentials,
    is_ours: impl FnMut(&MasterKey) -> bool,
) -> Result<(MasterKey, Option<String>)> {
    match creds {
        Credentials::Key(k) => Ok((k.clone(), None)),
        Credentials::Password(pw) => {
            let mut slots = Vec::new();
            for info in store.list(FileType::Key)? {
                match store.read(FileType::Key, &info.name) {
                    Ok(bytes) => slots.push((info.name, bytes.to_vec())),
                    // Removed since it was listed (a concurrent `key remove`).
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            let u = crate::keys::unlock_with_password(&store.location(), slots, pw, is_ours)?;
            Ok((u.master, Some(u.slot)))
        }
    }
}

/// Whether `master` is the key that sealed this tenant's config.
fn opens_config(master: &MasterKey, sealed_config: &[u8]) -> bool {
    Keys::derive(master)
        .and_then(|k| open_meta::<Config>(&k, format::config::AAD, sealed_config, "config"))
        .is_ok()
}

impl Repository {
    /// Creates the repository root if needed and a new tenant in it, with one key slot (for a
    /// password) or none (for a key the caller keeps in a key file).
    pub fn init(
        location: &Location,
        tenant: &str,
        creds: &Credentials,
        opts: &InitOptions,
        open: &OpenOptions,
    ) -> Result<Repository> {
        layout::validate_tenant(tenant)?;
        cairn_chunker::Params {
            min: opts.chunker.min as usize,
            avg: opts.chunker.avg as usize,
            max: opts.chunker.max as usize,
        }
        .validate()
        .map_err(|e| Error::invalid(e.to_string()))?;
        if let Location::Local(p) = location {
            std::fs::create_dir_all(p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
        }
        let (root, rt) = open_root(location)?;
        if !rt.block_on(root.has_marker())? {
            let marker = serde_json::json!({ "format": "cairn", "version": FORMAT_VERSION });
            rt.block_on(root.write_marker(Bytes::from(marker.to_string())))?;
        }
        let backend = Arc::new(root.tenant(tenant)?);
        let store = Store::new(backend, rt);
        if !store.list(FileType::Config)?.is_empty() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("tenant {tenant:?} already exists in {}", root.description()),
            ));
        }
        let master = match creds {
            Credentials::Key(k) => k.clone(),
            Credentials::Password(_) => MasterKey::generate()?,
        };
        let keys = Keys::derive(&master)?;
        if let Credentials::Password(pw) = creds {
            let (_, bytes) =
                KeySlot::create(&master, pw, opts.kdf, &sys::hostname(), &sys::username())?;
            store.put(
                FileType::Key,
                &Id::of_bytes(&bytes).to_hex(),
                Bytes::from(bytes),
            )?;
        }
        let config = Config {
            version: FORMAT_VERSION,
            id: Id::random()?,
            tenant: tenant.to_string(),
            chunker: opts.chunker,
            pack_size: opts.pack_size,
            compression: opts.compression,
            created: jiff::Timestamp::now().to_string(),
        };
        // The config goes last: a tenant without one does not exist, so an interrupted init
        // can simply be run again.
        store.create(
            FileType::Config,
            "config",
            Bytes::from(seal_meta(&keys, format::config::AAD, &config)?),
        )?;
        let cache = Arc::new(open_cache(open, &config)?);
        Ok(Repository {
            root_description: root.description().to_string(),
            tenant: tenant.to_string(),
            store,
            keys,
            config,
            cache,
            lease_ttl: open.lease_ttl.unwrap_or(crate::lease::DEFAULT_TTL),
            damaged_index: Mutex::new(Vec::new()),
            reloaded_after_miss: AtomicBool::new(false),
        })
    }

    /// Opens a tenant with a password or key.
    pub fn open(
        location: &Location,
        tenant: &str,
        creds: &Credentials,
        open: &OpenOptions,
    ) -> Result<Repository> {
        layout::validate_tenant(tenant)?;
        let (root, rt) = open_root(location)?;
        require_repository(&root, &rt)?;
        let store = Store::new(Arc::new(root.tenant(tenant)?), rt);
        match store.stat(FileType::Config, "config") {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let tenants = store.runtime().block_on(root.tenants()).unwrap_or_default();
                let list = if tenants.is_empty() {
                    "none".to_string()
                } else {
                    tenants.join(", ")
                };
                return Err(Error::not_found(format!(
                    "{} has no tenant {tenant:?} (tenants: {list})",
                    root.description()
                )));
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        Repository::open_store(store, root.description().to_string(), tenant, creds, open)
    }

    /// Opens a tenant namespace on any store: the same checks as [`Repository::open`] minus
    /// the repository marker (used for remote backends and fault injection).
    pub fn open_store(
        store: Store,
        root_description: String,
        tenant: &str,
        creds: &Credentials,
        open: &OpenOptions,
    ) -> Result<Repository> {
        let sealed = store.read(FileType::Config, "config")?;
        let (master, _) = credential_key(&store, creds, |k| opens_config(k, &sealed))?;
        let keys = Keys::derive(&master)?;
        let config: Config = match open_meta(&keys, format::config::AAD, &sealed, "config") {
            Ok(c) => c,
            Err(e) if matches!(creds, Credentials::Key(_)) && e.kind() == ErrorKind::Corrupt => {
                return Err(Error::new(
                    ErrorKind::WrongPassword,
                    format!("the key does not belong to tenant {tenant:?} of {root_description}"),
                ));
            }
            Err(e) => return Err(e),
        };
        if config.version != FORMAT_VERSION {
            return Err(Error::corrupt(format!("repository format version {} is not supported (this program reads {FORMAT_VERSION})", config.version)));
        }
        let cache = Arc::new(open_cache(open, &config)?);
        Ok(Repository {
            root_description,
            tenant: tenant.to_string(),
            store,
            keys,
            config,
            cache,
            lease_ttl: open.lease_ttl.unwrap_or(crate::lease::DEFAULT_TTL),
            damaged_index: Mutex::new(Vec::new()),
            reloaded_after_miss: AtomicBool::new(false),
        })
    }

    pub fn description(&self) -> String {
        self.store.location()
    }
    pub fn root_description(&self) -> &str {
        &self.root_description
    }
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    pub fn keys(&self) -> &Keys {
        &self.keys
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }
    pub fn lease_ttl(&self) -> std::time::Duration {
        self.lease_ttl
    }

    pub fn chunker(&self) -> Result<cairn_chunker::Chunker> {
        cairn_chunker::Chunker::new(self.config.chunker.params(), self.keys.chunker_seed())
            .map_err(|e| Error::corrupt(format!("config: {e}")))
    }

    // ---- key slots ----

    /// The key slots that can be read, oldest first. A damaged slot is left out with a warning
    /// naming it (it can still be removed by name); one removed meanwhile is skipped.
    pub fn key_slots(&self) -> Result<Vec<(String, KeySlot)>> {
        let mut out = Vec::new();
        for info in self.store.list(FileType::Key)? {
            let bytes = match self.store.read(FileType::Key, &info.name) {
                Ok(b) => b,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match KeySlot::parse(&info.name, &bytes) {
                Ok(slot) => out.push((info.name.clone(), slot)),
                Err(e) => tracing::warn!("key slot {} cannot be read: {e}", info.name),
            }
        }
        out.sort_by(|a, b| a.1.created.cmp(&b.1.created));
        Ok(out)
    }

    /// Adds a password for this tenant; returns the new slot's id.
    pub fn add_key(&self, master: &MasterKey, password: &[u8], kdf: KdfParams) -> Result<String> {
        let (_, bytes) =
            KeySlot::create(master, password, kdf, &sys::hostname(), &sys::username())?;
        let name = Id::of_bytes(&bytes).to_hex();
        self.store.put(FileType::Key, &name, Bytes::from(bytes))?;
        Ok(name)
    }

    /// Removes a key slot, refusing to remove the last usable one (the data would become
    /// unreadable to everyone without a key file). A damaged slot can always be removed.
    pub fn remove_key(&self, id_prefix: &str) -> Result<String> {
        let names: Vec<String> = self
            .store
            .list(FileType::Key)?
            .into_iter()
            .map(|o| o.name)
            .filter(|n| n.starts_with(id_prefix))
            .collect();
        let name = match names.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(Error::not_found(format!(
                    "no key slot matches {id_prefix:?}"
                )))
            }
            _ => {
                return Err(Error::invalid(format!(
                    "{id_prefix:?} matches {} key slots; give more digits",
                    names.len()
                )))
            }
        };
        let usable = self.key_slots()?;
        let target_usable = usable.iter().any(|(n, _)| *n == name);
        if target_usable && usable.len() <= 1 {
            return Err(Error::new(ErrorKind::Conflict, "refusing to remove the last usable key slot: add another password first (`cairn key add`)"));
        }
        // Another process may be removing another slot at this very moment, and both saw
        // "not the last". Each remover lists again after its removal, and one that then sees
        // no usable slot puts its own back: the last remover to list sees every removal, so
        // at least one usable slot always survives.
        let bytes = self.store.read(FileType::Key, &name)?;
        self.store.remove(FileType::Key, &name)?;
        if !target_usable || matches!(self.key_slots(), Ok(l) if !l.is_empty()) {
            return Ok(name);
        }
        self.store.put(FileType::Key, &name, bytes).map_err(|e| {
            e.context(format!(
                "key slot {name} was the last usable one after a concurrent removal and could not be put back"
            ))
        })?;
        Err(Error::new(
            ErrorKind::Conflict,
            format!("key slot {name} was not removed: another slot was removed at the same time and it is now the last usable one"),
        ))
    }

    /// The master key, re-derived from credentials (to wrap it again under a new password).
    pub fn master_key(&self, creds: &Credentials) -> Result<(MasterKey, Option<String>)> {
        let probe = self.keys.blob_id(b"cairn: is this the tenant's key?");
        credential_key(&self.store, creds, |k| {
            Keys::derive(k)
                .is_ok_and(|keys| keys.blob_id(b"cairn: is this the tenant's key?") == probe)
        })
    }

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
                other => return other,
            }
        }
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

    /// Every stored pack with its size.
    pub fn pack_sizes(&self) -> Result<std::collections::HashMap<Id, u64>> {
        Ok(self
            .store
            .list(FileType::Pack)?
            .into_iter()
            .filter_map(|o| Id::from_hex(&o.name).ok().map(|id| (id, o.size)))
            .collect())
    }

    /// Stores an index file (or condemned record); returns its name.
    pub fn save_index(&self, index: &IndexFile) -> Result<Id> {
        let sealed = seal_meta(&self.keys, format::index::AAD, index)?;
        let id = Id::of_bytes(&sealed);
        self.store
            .put(FileType::Index, &id.to_hex(), Bytes::from(sealed))?;
        Ok(id)
    }

    pub fn read_index_file(&self, id: &Id) -> Result<IndexFile> {
        self.read_sealed(FileType::Index, format::index::AAD, id, "index file")
    }

    /// Reads a sealed metadata object, checking that its bytes match its name first.
    fn read_sealed<T: serde::de::DeserializeOwned>(
        &self,
        ft: FileType,
        aad: &[u8],
        id: &Id,
        what: &str,
    ) -> Result<T> {
        let bytes = self.store.read(ft, &id.to_hex())?;
        if Id::of_bytes(&bytes) != *id {
            return Err(Error::corrupt(format!(
                "{what} {id}: contents do not match its name"
            )));
        }
        open_meta(&self.keys, aad, &bytes, &format!("{what} {id}"))
    }

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

    // ---- snapshots ----

    /// Every readable snapshot, oldest first, trusting manifests already in the cache. An
    /// unreadable snapshot is reported as a warning and left out; use
    /// [`Repository::list_snapshots`] to act on it, and [`Repository::snapshots_for_gc`]
    /// before deleting anything.
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let list = self.list_snapshots(SnapshotRead::Cached)?;
        for (id, e) in &list.unreadable {
            tracing::warn!("skipping unreadable snapshot {id}: {e}");
        }
        Ok(list.snapshots)
    }

    /// Lists the snapshots. Each listed object is read unless its manifest is cached and
    /// `how` is [`SnapshotRead::Cached`]; [`SnapshotRead::Verified`] reads every object and
    /// checks its bytes against its name, so that a damaged object is found even when the
    /// cache holds a good copy of its manifest. A snapshot removed while the listing runs (a
    /// concurrent `forget`) is left out without a word; one that cannot be read is returned
    /// in `unreadable` and dropped from the cache.
    pub fn list_snapshots(&self, how: SnapshotRead) -> Result<SnapshotList> {
        let listed: Vec<Id> = self
            .store
            .list(FileType::Snapshot)?
            .into_iter()
            .map(|o| Id::from_hex(&o.name))
            .collect::<Result<_>>()?;
        let listed_set: HashSet<Id> = listed.iter().copied().collect();
        let cached: HashMap<Id, Snapshot> = match self.cache.cached_snapshots() {
            Ok(c) => c.into_iter().collect(),
            Err(e) if e.kind() == ErrorKind::Cache => {
                tracing::warn!("{e}");
                HashMap::new()
            }
            Err(e) => return Err(e),
        };
        let gone: Vec<Id> = cached
            .keys()
            .filter(|id| !listed_set.contains(id))
            .copied()
            .collect();
        enum Outcome {
            Cached(Id),
            Fetched(Id, Box<Snapshot>),
            Vanished(Id),
            Unreadable(Id, Error),
        }
        let outcomes: Vec<Outcome> = listed
            .par_iter()
            .map(|id| {
                let read = match (cached.contains_key(id), how) {
                    (true, SnapshotRead::Cached) => return Ok(Outcome::Cached(*id)),
                    (true, SnapshotRead::Verified) => self
                        .verify_object(FileType::Snapshot, id, "snapshot")
                        .map(|()| None),
                    (false, _) => self.read_snapshot(id).map(Some),
                };
                match read {
                    Ok(None) => Ok(Outcome::Cached(*id)),
                    Ok(Some(s)) => Ok(Outcome::Fetched(*id, Box::new(s))),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(Outcome::Vanished(*id)),
                    Err(e) if e.kind() == ErrorKind::Corrupt => Ok(Outcome::Unreadable(*id, e)),
                    Err(e) => Err(e),
                }
            })
            .collect::<Result<_>>()?;
        let mut out = SnapshotList::default();
        let mut fetched = Vec::new();
        let mut drop_from_cache = gone;
        for o in outcomes {
            match o {
                Outcome::Cached(id) => {
                    if let Some(s) = cached.get(&id) {
                        out.snapshots.push((id, s.clone()));
                    }
                }
                Outcome::Fetched(id, s) => {
                    fetched.push((id, (*s).clone()));
                    out.snapshots.push((id, *s));
                }
                Outcome::Vanished(id) => drop_from_cache.push(id),
                Outcome::Unreadable(id, e) => {
                    drop_from_cache.push(id);
                    out.unreadable.push((id, e));
                }
            }
        }
        if !drop_from_cache.is_empty() || !fetched.is_empty() {
            if let Err(e) = self.cache.update_snapshots(&fetched, &drop_from_cache) {
                tracing::warn!("{e}");
            }
        }
        out.snapshots
            .sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        out.unreadable.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// The snapshots that garbage collection and retention may act on, every object read
    /// and verified. While any snapshot cannot be read they refuse, since the data only that
    /// snapshot uses would look unused and be freed; with `drop_unreadable` the unreadable
    /// snapshot objects are removed first (the user has said they are to be dropped).
    pub fn snapshots_for_gc(&self, drop_unreadable: bool) -> Result<Vec<(Id, Snapshot)>> {
        let list = self.list_snapshots(SnapshotRead::Verified)?;
        if list.unreadable.is_empty() {
            return Ok(list.snapshots);
        }
        if !drop_unreadable {
            let names: Vec<String> = list
                .unreadable
                .iter()
                .map(|(id, e)| format!("{}: {e}", id.short()))
                .collect();
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "{} snapshot(s) cannot be read, and the data only they use would be freed: {}. Restore the object from a copy if you have one; otherwise run `cairn repair snapshots --forget` to remove unreadable snapshots, or pass --drop-unreadable to drop them now",
                    list.unreadable.len(),
                    names.join("; ")
                ),
            ));
        }
        for (id, e) in &list.unreadable {
            tracing::warn!("dropping unreadable snapshot {id} ({e})");
            self.store.remove(FileType::Snapshot, &id.to_hex())?;
        }
        Ok(list.snapshots)
    }

    /// Reads an object and checks that its bytes hash to its name.
    fn verify_object(&self, ft: FileType, id: &Id, what: &str) -> Result<()> {
        let bytes = self.store.read(ft, &id.to_hex())?;
        if Id::of_bytes(&bytes) != *id {
            return Err(Error::corrupt(format!(
                "{what} {id}: contents do not match its name"
            )));
        }
        Ok(())
    }

    pub fn read_snapshot(&self, id: &Id) -> Result<Snapshot> {
        self.read_sealed(FileType::Snapshot, format::snapshot::AAD, id, "snapshot")
    }

    /// Resolves `latest` or a unique hex prefix of a snapshot id. The chosen snapshot's object
    /// is read again and checked, so a damaged snapshot is reported as such even when the
    /// cache holds its manifest; a prefix that names an unreadable snapshot says why.
    pub fn find_snapshot(&self, spec: &str) -> Result<(Id, Snapshot)> {
        let list = self.list_snapshots(SnapshotRead::Cached)?;
        let chosen = if spec == "latest" {
            for (id, e) in &list.unreadable {
                tracing::warn!(
                    "snapshot {id} cannot be read ({e}); `latest` is the newest of the others"
                );
            }
            list.snapshots
                .last()
                .map(|(id, _)| *id)
                .ok_or_else(|| Error::not_found("the repository has no snapshots"))?
        } else {
            if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::invalid(format!(
                    "{spec:?} is not a snapshot id (hex digits) or `latest`"
                )));
            }
            let spec = spec.to_ascii_lowercase();
            let matches: Vec<Id> = list
                .snapshots
                .iter()
                .map(|(id, _)| *id)
                .chain(list.unreadable.iter().map(|(id, _)| *id))
                .filter(|id| id.to_hex().starts_with(&spec))
                .collect();
            match matches.as_slice() {
                [] => return Err(Error::not_found(format!("no snapshot matches {spec:?}"))),
                [one] => *one,
                _ => {
                    return Err(Error::invalid(format!(
                        "{spec:?} matches {} snapshots ({}); give more digits",
                        matches.len(),
                        matches
                            .iter()
                            .take(5)
                            .map(|id| id.short())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        };
        match self.read_snapshot(&chosen) {
            Ok(s) => Ok((chosen, s)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::not_found(format!(
                "snapshot {chosen} was removed (by a concurrent forget?)"
            ))),
            Err(e) => {
                let _ = self.cache.update_snapshots(&[], &[chosen]);
                Err(e.context("the snapshot cannot be read (run `cairn check`)"))
            }
        }
    }

    /// Commits a snapshot: the last write of any backup.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        let sealed = seal_meta(&self.keys, format::snapshot::AAD, snap)?;
        let id = Id::of_bytes(&sealed);
        self.store
            .create(FileType::Snapshot, &id.to_hex(), Bytes::from(sealed))?;
        self.cache.update_snapshots(&[(id, snap.clone())], &[])?;
        Ok(id)
    }
}

/// The persistent cache, or a temporary one when there is none or it cannot be used (a
/// folder or file that cannot be written, a full disk): the cache only saves work.
fn open_cache(open: &OpenOptions, config: &Config) -> Result<Cache> {
    let Some(dir) = &open.cache_dir else {
        return Cache::temporary();
    };
    let path = dir.join(format!("{}.redb", config.id.to_hex()));
    match Cache::open(&path) {
        Ok(c) => Ok(c),
        Err(e) => {
            tracing::warn!(
                "cannot use the cache {} ({e}); using a temporary cache for this command",
                path.display()
            );
            Cache::temporary()
        }
    }
}

/// The default cache folder: `$XDG_CACHE_HOME/cairn` or `~/.cache/cairn`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(Path::new(&x).join("cairn"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache").join("cairn"))
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

/// The bytes of a read as a buffer that can be decrypted in place: the same memory when
/// nothing else refers to it (local reads), else a copy.
pub fn writable(bytes: Bytes) -> bytes::BytesMut {
    bytes
        .try_into_mut()
        .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]))
}
