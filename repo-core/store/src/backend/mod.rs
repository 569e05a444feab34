//! Storage backends: where objects are kept.
//!
//! A [`Root`] is a repository's storage as a whole: the marker that says "this is a Cairn
//! repository" and the list of tenants, each a namespace reached as a [`Backend`]. Whatever
//! else a root needs (a local folder's staging folder, a server's capabilities) stays inside
//! its implementation, so a root need not be a local folder. [`open`] makes the root of a
//! [`Location`] with the cross-cutting layers of [`layers`] stacked on it.
//!
//! A [`Backend`] stores the objects of one tenant namespace, keyed by ([`FileType`], name).
//! It knows nothing of encryption or formats. Contracts every implementation must meet, and
//! that [`conformance`] checks:
//!
//! - `create` is create-only and atomic: when it returns `Ok` the object is durable and
//!   complete under its name; a failed or interrupted `create` leaves either nothing or a
//!   complete object under the name, never a partial one. Creating a name that exists fails
//!   with [`ErrorKind::AlreadyExists`](crate::error::ErrorKind::AlreadyExists); since objects are
//!   content-addressed, callers treat that as success.
//! - `read`/`read_range` of a missing object fail with `NotFound`. A range that extends past
//!   the end of the object is an error (`Corrupt`): a truncated pack must never look like a
//!   short, valid read.
//! - `list` returns every complete object of a type with its size, in no particular order;
//!   names that are not valid object names (stray files) are left out.
//! - `remove` is idempotent: removing a missing object succeeds.
//!
//! - The calling-thread methods (`read_direct`, `read_range_direct`, `stat_direct`,
//!   `remove_stale_staging`) are optional fast paths with defaults; a decorator that only
//!   adds behaviour around calls (retries, limits) forwards them, as [`RetryBackend`] does.
//!
//! Errors say whether a retry can help: `Io` is transient; `PermissionDenied`,
//! `QuotaExceeded`, `NotFound`, `AlreadyExists` and `Corrupt` are not.
//!
//! The library's synchronous code reaches backends through [`Store`], which owns the tokio
//! runtime; async callers (the server) use the trait directly.

pub mod conformance;
pub mod layers;
mod opendal;
pub mod rest;
pub mod retry;
pub mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use self::layers::BackendOptions;
pub use self::opendal::{OpendalBackend, OpendalRoot};
pub use self::retry::RetryBackend;
pub use self::s3::S3Settings;
use crate::error::Result;
pub use crate::layout::FileType;
use crate::location::Location;

/// A stored object's name and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
}

#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where this namespace is, for messages.
    fn location(&self) -> String;
    async fn create(&self, ft: FileType, name: &str, data: Bytes) -> Result<()>;
    async fn read(&self, ft: FileType, name: &str) -> Result<Bytes>;
    async fn read_range(&self, ft: FileType, name: &str, offset: u64, len: u64) -> Result<Bytes>;
    /// The same as `read_range`, done on the calling thread, for backends that can do it
    /// cheaply there (a local file: one positioned read); `None` means "use `read_range`".
    /// Restores read thousands of small ranges, and a hop to the runtime's threads and back
    /// for each costs more than the read.
    fn read_range_direct(
        &self,
        _ft: FileType,
        _name: &str,
        _offset: u64,
        _len: u64,
    ) -> Option<Result<Bytes>> {
        None
    }
    /// The same as `read`, done on the calling thread, for backends that can do it cheaply
    /// there; `None` means "use `read`". A local read this way also allocates exactly the
    /// object's size (the runtime path reserves 2 MiB for any read, kept alive by the result).
    fn read_direct(&self, _ft: FileType, _name: &str) -> Option<Result<Bytes>> {
        None
    }
    /// The size of an object in bytes.
    async fn stat(&self, ft: FileType, name: &str) -> Result<u64>;
    /// The same as `stat`, done on the calling thread, for backends that can do it cheaply
    /// there (a writer checks each pack it deduplicates against); `None` means "use `stat`".
    fn stat_direct(&self, _ft: FileType, _name: &str) -> Option<Result<u64>> {
        None
    }
    async fn list(&self, ft: FileType) -> Result<Vec<ObjectInfo>>;
    /// When the storage received each object of a type, by its own clock: a file's
    /// modification time, an S3 object's `Last-Modified`, a server's record of the upload.
    /// `None` when the storage keeps no such time. Retention can judge snapshots by it
    /// instead of the time they claim (`forget --by-received-time`), which a client that
    /// writes but cannot set the storage's clock cannot forge.
    async fn received_times(
        &self,
        _ft: FileType,
    ) -> Result<Option<Vec<(String, std::time::SystemTime)>>> {
        Ok(None)
    }
    async fn remove(&self, ft: FileType, name: &str) -> Result<()>;
    /// Removes staging files (uploads in progress) not modified for `older_than`: what a
    /// writer that failed or was killed mid-upload left behind. Returns how many were
    /// removed. Only backends that stage uploads beside the objects have any.
    fn remove_stale_staging(&self, _older_than: std::time::Duration) -> Result<u64> {
        Ok(0)
    }
}

/// A repository's storage as a whole: its marker and its tenants.
#[async_trait]
pub trait Root: Send + Sync + std::fmt::Debug {
    /// Where this root is, for messages.
    fn description(&self) -> String;
    /// Whether the repository marker exists (the root holds a Cairn repository).
    async fn has_marker(&self) -> Result<bool>;
    /// Writes the repository marker; `contents` says which format the repository uses.
    async fn write_marker(&self, contents: Bytes) -> Result<()>;
    /// The tenants, sorted: namespaces that hold a config.
    async fn tenants(&self) -> Result<Vec<String>>;
    /// The namespace of one tenant (which need not exist yet). Rejects names that are not
    /// valid tenant names, so no tenant can reach the marker, the staging folder or another
    /// tenant's objects.
    fn tenant(&self, name: &str) -> Result<Arc<dyn Backend>>;
}

/// Opens the root a location names, with `options`' layers stacked on its storage. A local
/// folder need not exist yet: it is created by the first write. An S3 root takes its
/// credentials and region from the environment ([`S3Settings::from_env`]); its first write
/// checks that the service honours conditional writes and fails when it does not. Must be
/// called inside a tokio runtime.
pub fn open(location: &Location, options: &BackendOptions) -> Result<Arc<dyn Root>> {
    Ok(match location {
        Location::Local(path) => Arc::new(OpendalRoot::local(path, options)?),
        Location::Memory => Arc::new(OpendalRoot::memory(options)?),
        Location::Rest(target) => Arc::new(rest::RestRoot::new(target, options)?),
        Location::S3(s3) => Arc::new(OpendalRoot::s3(&S3Settings::from_env(s3)?, options)?),
    })
}

/// Blocking access to a backend for the library's synchronous code (archiver, restorer).
///
/// Must not be called from inside an async context: it blocks on the runtime it owns.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Arc<dyn Backend>,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>, rt: Arc<tokio::runtime::Runtime>) -> Self {
        Store { backend, rt }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn runtime(&self) -> &Arc<tokio::runtime::Runtime> {
        &self.rt
    }

    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Creates an object, treating an existing object of the same name as success (names
    /// are content hashes, so an existing object holds the same bytes).
    pub fn put(&self, ft: FileType, name: &str, data: Bytes) -> Result<()> {
        match self.rt.block_on(self.backend.create(ft, name, data)) {
            Err(e) if e.kind() == crate::error::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }

    /// Creates an object whose name is not the hash of its bytes (the config): fails with
    /// `AlreadyExists` when the name holds other bytes. A create that a retry layer repeated
    /// after its first attempt stored the object but lost the answer also reports
    /// `AlreadyExists`; reading the object back tells the two apart, and the same bytes are
    /// success.
    pub fn create(&self, ft: FileType, name: &str, data: Bytes) -> Result<()> {
        match self
            .rt
            .block_on(self.backend.create(ft, name, data.clone()))
        {
            Err(e) if e.kind() == crate::error::ErrorKind::AlreadyExists => {
                match self.read(ft, name) {
                    Ok(existing) if existing == data => Ok(()),
                    _ => Err(e),
                }
            }
            other => other,
        }
    }

    pub fn read(&self, ft: FileType, name: &str) -> Result<Bytes> {
        if let Some(r) = self.backend.read_direct(ft, name) {
            return r;
        }
        self.rt.block_on(self.backend.read(ft, name))
    }

    pub fn read_range(&self, ft: FileType, name: &str, offset: u64, len: u64) -> Result<Bytes> {
        if let Some(r) = self.backend.read_range_direct(ft, name, offset, len) {
            return r;
        }
        self.rt
            .block_on(self.backend.read_range(ft, name, offset, len))
    }

    pub fn stat(&self, ft: FileType, name: &str) -> Result<u64> {
        if let Some(r) = self.backend.stat_direct(ft, name) {
            return r;
        }
        self.rt.block_on(self.backend.stat(ft, name))
    }

    pub fn list(&self, ft: FileType) -> Result<Vec<ObjectInfo>> {
        self.rt.block_on(self.backend.list(ft))
    }

    /// See [`Backend::received_times`].
    pub fn received_times(
        &self,
        ft: FileType,
    ) -> Result<Option<Vec<(String, std::time::SystemTime)>>> {
        self.rt.block_on(self.backend.received_times(ft))
    }

    pub fn remove(&self, ft: FileType, name: &str) -> Result<()> {
        self.rt.block_on(self.backend.remove(ft, name))
    }

    pub fn remove_stale_staging(&self, older_than: std::time::Duration) -> Result<u64> {
        self.backend.remove_stale_staging(older_than)
    }
}

/// A runtime for the blocking facade: few threads, since backend calls are I/O-bound.
pub fn new_runtime() -> Result<Arc<tokio::runtime::Runtime>> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cairn-io")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| crate::error::Error::io("starting the I/O runtime", e))
}
