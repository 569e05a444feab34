//! An open tenant namespace and how it is opened or created (locations, credentials, the
//! cache it attaches). The operations every command shares live beside it, one job a file:
//! `key_slots` (passwords of the tenant), `index` (index files and the cache kept in step
//! with them), `blobs` (finding blobs and reading them by id: trees, content lists, paths),
//! `reader` (the one path from pack bytes to verified plaintext: single blobs, runs of
//! neighbouring blobs, pack headers, whole packs) and `snapshots` (listing, verifying,
//! resolving and committing snapshots).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rayon::prelude::*;

use crate::backend::{new_runtime, BackendOptions, FileType, Root, Store};
use crate::cache::{index_locations, BlobLocation, BlobTable, BlobTotals, Cache};
use crate::crypto::{Keys, MasterKey};
use crate::error::{Error, ErrorKind, Result};
use crate::format::config::{ChunkerConfig, Config, FORMAT_VERSION};
use crate::format::index::IndexFile;
use crate::format::snapshot::Snapshot;
use crate::format::tree::{ContentList, Node, Tree};
use crate::format::{self, blob, open_meta, seal_meta};
use crate::id::{BlobKind, Id};
use crate::index_sort::EntrySorter;
use crate::keys::{KdfParams, KeySlot};
pub use crate::location::Location;
use crate::{layout, sys};

mod blobs;
mod index;
mod key_slots;
mod reader;
mod snapshots;

pub use blobs::Locator;
pub(crate) use index::store_index_file;
pub use index::{IndexFileWriter, PackStats};
pub use reader::{coalesce, BlobRun, PackBytes};
pub use snapshots::{SnapshotList, SnapshotRead};

/// Index files decoded at once while syncing: enough to keep the cores busy, few enough that
/// memory stays bounded (an index file holds up to 50,000 entries).
const INDEX_READ_BATCH: usize = 4;

/// Default time to live of a writer's lease: long enough for a slow upload between
/// refreshes, short enough that a crashed writer on another host delays space reclamation by
/// at most this much. Leases (`crate::lease`) are taken through an open repository, which
/// carries the time to live it was opened with.
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 60);

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
    /// Time to live of this process's leases; `None` uses [`DEFAULT_LEASE_TTL`].
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
    /// Whether the cached index was synced with the repository in this process (readers
    /// sync once on first need, see [`Repository::ensure_index_synced`]).
    index_synced: AtomicBool,
    /// Dictionaries read in this process, most recent last (a few at most: one per
    /// PostgreSQL cluster backed up here).
    dictionaries: Mutex<Vec<Arc<crate::format::dictionary::Dictionary>>>,
}

/// Opens the root of an existing repository location. A local folder that does not exist is
/// reported, never created.
fn open_root(location: &Location) -> Result<(Arc<dyn Root>, Arc<tokio::runtime::Runtime>)> {
    if let Location::Local(p) = location {
        if !p.exists() {
            return Err(Error::new(
                ErrorKind::NotARepository,
                format!("there is no repository at {} (the folder does not exist; create one with `cairn init`)", p.display()),
            ));
        }
        // Checked before the root is opened, which would create its staging folder: a
        // restic repository is left exactly as it is, by `init` too.
        if !p.join(layout::MARKER).exists() && looks_like_restic(p) {
            return Err(Error::new(
                ErrorKind::NotARepository,
                format!(
                    "{} is a restic repository, not a Cairn one: Cairn cannot read it (use restic for it, and `cairn init` for a Cairn repository in a folder of its own)",
                    p.display()
                ),
            ));
        }
    }
    let rt = new_runtime()?;
    // opendal operators are built inside the runtime they will run on.
    let options = BackendOptions::for_location(location);
    let root = rt.block_on(async { crate::backend::open(location, &options) })?;
    Ok((root, rt))
}

fn require_repository(root: &dyn Root, rt: &tokio::runtime::Runtime) -> Result<()> {
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

/// A restic repository has, at its top, the `config` file and the `keys`, `data`,
/// `snapshots` and `index` folders (where Cairn keeps them one level down, per tenant).
fn looks_like_restic(dir: &std::path::Path) -> bool {
    dir.join("config").is_file()
        && ["keys", "data", "snapshots", "index"]
            .iter()
            .all(|d| dir.join(d).is_dir())
}

/// Lists the tenants of a repository (no keys needed).
pub fn list_tenants(location: &Location) -> Result<Vec<String>> {
    let (root, rt) = open_root(location)?;
    require_repository(&*root, &rt)?;
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
        let backend = root.tenant(tenant)?;
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
        Ok(Repository::assemble(
            root.description(),
            tenant,
            store,
            keys,
            config,
            cache,
            open,
        ))
    }

    /// A repository from its opened parts, with nothing synced or read yet.
    fn assemble(
        root_description: String,
        tenant: &str,
        store: Store,
        keys: Keys,
        config: Config,
        cache: Arc<Cache>,
        open: &OpenOptions,
    ) -> Repository {
        Repository {
            root_description,
            tenant: tenant.to_string(),
            store,
            keys,
            config,
            cache,
            lease_ttl: open.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
            damaged_index: Mutex::new(Vec::new()),
            reloaded_after_miss: AtomicBool::new(false),
            index_synced: AtomicBool::new(false),
            dictionaries: Mutex::new(Vec::new()),
        }
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
        require_repository(&*root, &rt)?;
        let store = Store::new(root.tenant(tenant)?, rt);
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
        Repository::open_store(store, root.description(), tenant, creds, open)
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
        Ok(Repository::assemble(
            root_description,
            tenant,
            store,
            keys,
            config,
            cache,
            open,
        ))
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
    /// The tenant's storage. Crate-private: callers outside go through operations that keep
    /// the format's rules (write ordering, verified reads).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Fails with `PermissionDenied` when the storage refuses to delete objects of type `ft`
    /// (an append-only or read-only user on a server), before an operation that deletes
    /// (`what`) has changed anything. Found out by removing a random name that does not
    /// exist: removal is idempotent, so storage that allows deleting answers with success, and
    /// nothing is removed either way.
    pub fn require_deletes(&self, ft: FileType, what: &str) -> Result<()> {
        let absent = Id::random()?.to_hex();
        match self.store.remove(ft, &absent) {
            Err(e) if e.kind() == ErrorKind::PermissionDenied => Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{what} deletes objects, and {} does not allow this credential to delete {} ({}); \
                     nothing was changed. Run it with a credential that may delete (on cairn-server, a user with --access full)",
                    self.root_description,
                    ft.dir(),
                    e.message()
                ),
            )),
            other => other,
        }
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub(crate) fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }
    /// The local cache's file (for a temporary cache, the temporary file).
    pub fn cache_path(&self) -> &Path {
        self.cache.path()
    }
    /// Whether the cache is a temporary one (no cache folder, or it could not be used).
    /// Moves this process to a private copy of its cache (see [`Cache::private_copy`]),
    /// once the shared cache has the current index and snapshot manifests, so that the copy
    /// starts complete and the shared file is free for other commands. A temporary cache
    /// is private already and is kept.
    pub fn use_private_cache(&mut self) -> Result<()> {
        if self.cache.is_temporary() {
            return Ok(());
        }
        self.sync_index()?;
        self.snapshots()?;
        self.cache = Arc::new(self.cache.private_copy()?);
        Ok(())
    }

    pub fn cache_is_temporary(&self) -> bool {
        self.cache.is_temporary()
    }
    /// Test escape hatch: the tenant's raw storage, for tests that plant or damage objects
    /// as anyone with storage access could. Not part of the API.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn store_for_tests(&self) -> &Store {
        &self.store
    }
    /// Test escape hatch: the tenant's keys, for tests that craft sealed objects. Not part
    /// of the API.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn keys_for_tests(&self) -> &Keys {
        &self.keys
    }
    pub fn lease_ttl(&self) -> std::time::Duration {
        self.lease_ttl
    }

    /// The id of a blob with this plaintext (keyed: ids differ between tenants).
    pub fn blob_id(&self, plaintext: &[u8]) -> Id {
        self.keys.blob_id(plaintext)
    }

    pub fn chunker(&self) -> Result<cairn_chunker::Chunker> {
        cairn_chunker::Chunker::new(self.config.chunker.params(), self.keys.chunker_seed())
            .map_err(|e| Error::corrupt(format!("config: {e}")))
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

/// The bytes of a read as a buffer that can be decrypted in place: the same memory when
/// nothing else refers to it (local reads), else a copy.
pub fn writable(bytes: Bytes) -> bytes::BytesMut {
    bytes
        .try_into_mut()
        .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]))
}
