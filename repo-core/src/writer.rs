//! Writing blobs: deduplication, packing (by the policy in `crate::packer`), upload, and the
//! index files that list the uploaded packs (stored by `repository::store_index_file`).
//!
//! Ordering invariant (docs/design.md, "Write ordering"): a pack is uploaded before any index
//! file that lists it, and every index file a snapshot needs is uploaded before the snapshot.
//! The uploader thread enforces the first half (it writes an index file only for packs whose
//! upload returned); [`BlobWriter::finish`] returns only after all of it is durable, and
//! callers save the snapshot after that.
//!
//! Memory is bounded: at most [`UPLOAD_QUEUE`] finished packs wait for upload, and the set of
//! blob ids not yet in the cache's index is emptied every [`INDEX_FLUSH_PACKS`] packs or
//! [`INDEX_FLUSH_BLOBS`] blobs.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::backend::{FileType, Store};
use crate::cache::{index_locations, Cache};
use crate::crypto::Keys;
use crate::error::{Error, ErrorKind, Result};
use crate::format::blob::{self, SealedBlob};
use crate::format::dictionary::Dictionary;
use crate::format::index::IndexFile;
use crate::format::pack::FinishedPack;
use crate::id::{BlobKind, Id};
use crate::packer::{store_pack, Packer};
use crate::repository::{store_index_file, Repository};

pub const UPLOAD_QUEUE: usize = 2;
pub const INDEX_FLUSH_PACKS: usize = 32;
/// ... or when it lists this many blobs, whichever comes first.
pub const INDEX_FLUSH_BLOBS: usize = 50_000;

/// What a writer added to the repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub blobs_added: u64,
    /// Plaintext bytes of added blobs.
    pub bytes_added: u64,
    /// Sealed bytes of added blobs.
    pub bytes_stored: u64,
    pub packs: u64,
    pub index_files: u64,
}

struct Shared {
    /// Blobs accepted but not yet in the cache's index.
    pending: Mutex<HashSet<Id>>,
    /// The first upload error; once set the writer refuses further use.
    failed: Mutex<Option<Error>>,
    stats: Mutex<WriteStats>,
    /// Packs whose existence this run has checked (deduplicated against) or made itself.
    packs: Mutex<HashMap<Id, bool>>,
    /// Whether blobs the index lists count as present (see [`BlobWriter::unindexed`]).
    index_dedup: bool,
    /// Whether finished packs are counted and dropped instead of stored (a dry run).
    discard: bool,
}

/// What a [`BlobWriter`] has or has accepted. A blob the writer accepts after a lookup here
/// said "absent" is still deduplicated: [`BlobWriter::add`] checks again under its lock, so a
/// stale answer costs sealing work, never a second copy.
///
/// A blob counts as present only if its pack exists: the first time a run deduplicates
/// against a pack, the pack's existence is checked in the repository (once per pack and run).
/// A pack that is gone (lost storage) makes its blobs count as absent, so they are stored
/// again and the new snapshot restores; the next backup thereby heals the repository.
#[derive(Clone)]
pub struct Known {
    shared: Arc<Shared>,
    cache: Arc<Cache>,
    store: Store,
}

impl Known {
    pub fn contains(&self, id: &Id) -> Result<bool> {
        let pending = self
            .shared
            .pending
            .lock()
            .map_err(|_| Error::new(ErrorKind::Other, "writer state poisoned"))?
            .contains(id);
        Ok(pending || self.stored(id)?)
    }

    /// Whether the index lists the blob in a pack that exists.
    fn stored(&self, id: &Id) -> Result<bool> {
        if !self.shared.index_dedup {
            return Ok(false);
        }
        match self.cache.lookup(id)? {
            Some(loc) => self.pack_exists(&loc.pack),
            None => Ok(false),
        }
    }

    fn pack_exists(&self, pack: &Id) -> Result<bool> {
        let poisoned = || Error::new(ErrorKind::Other, "writer state poisoned");
        if let Some(known) = self.shared.packs.lock().map_err(|_| poisoned())?.get(pack) {
            return Ok(*known);
        }
        let exists = match self.store.stat(FileType::Pack, &pack.to_hex()) {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::warn!("pack {pack} is missing from the repository: the blobs it held are stored again (run `cairn check`, then `cairn repair index`)");
                false
            }
            Err(e) => return Err(e),
        };
        self.shared
            .packs
            .lock()
            .map_err(|_| poisoned())?
            .insert(*pack, exists);
        Ok(exists)
    }
}

/// How data blobs are compressed: a zstd level, and a dictionary (payload format 2) if any.
#[derive(Debug, Clone, Default)]
pub struct Compression {
    pub level: i32,
    pub dict: Option<Arc<Dictionary>>,
}

impl Compression {
    /// Seals a data blob this way.
    pub fn seal(&self, keys: &Keys, id: Id, plaintext: &[u8]) -> Result<SealedBlob> {
        blob::seal_with(
            keys,
            BlobKind::Data,
            id,
            plaintext,
            self.level,
            self.dict.as_deref(),
        )
    }
}

pub struct BlobWriter {
    store: Store,
    cache: Arc<Cache>,
    level: i32,
    /// The dictionary data blobs are compressed with, if any (see `set_dictionary`).
    dict: Option<Arc<Dictionary>>,
    packer: Packer,
    shared: Arc<Shared>,
    tx: Option<SyncSender<FinishedPack>>,
    /// Buffers of uploaded data packs, handed back for the next pack.
    spare: Receiver<Vec<u8>>,
    uploader: Option<JoinHandle<()>>,
}

impl BlobWriter {
    /// `level` is the zstd level for data blobs (trees always use level 3). The writer
    /// deduplicates against the index, which the caller has synced (write-ordering rule 4).
    pub fn new(repo: &Repository, level: i32) -> Self {
        Self::with_dedup(repo, level, true)
    }

    /// A writer that deduplicates only against what it has accepted itself, for a short
    /// process that must not read the index (a WAL push): what it stores never depends on
    /// the cache, synced or not.
    pub fn unindexed(repo: &Repository, level: i32) -> Self {
        Self::with_dedup(repo, level, false)
    }

    /// A writer that seals and packs like [`BlobWriter::new`] but stores nothing: each
    /// finished pack is counted and dropped, and no index file is written (a dry run). Its
    /// statistics say what a real run would have added.
    pub fn discarding(repo: &Repository, level: i32) -> Self {
        Self::build(repo, level, true, true)
    }

    fn with_dedup(repo: &Repository, level: i32, index_dedup: bool) -> Self {
        Self::build(repo, level, index_dedup, false)
    }

    fn build(repo: &Repository, level: i32, index_dedup: bool, discard: bool) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashSet::new()),
            failed: Mutex::new(None),
            stats: Mutex::new(WriteStats::default()),
            packs: Mutex::new(HashMap::new()),
            index_dedup,
            discard,
        });
        let (tx, rx) = sync_channel(UPLOAD_QUEUE);
        let (spare_tx, spare) = sync_channel(1);
        let uploader = {
            let store = repo.store().clone();
            let keys = repo.keys().clone();
            let cache = repo.cache().clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("cairn-upload".into())
                .spawn(move || upload_loop(rx, spare_tx, store, keys, cache, shared))
                .ok()
        };
        BlobWriter {
            store: repo.store().clone(),
            cache: repo.cache().clone(),
            level,
            dict: None,
            packer: Packer::new(repo.keys().clone(), repo.config().pack_size),
            shared,
            tx: Some(tx),
            spare,
            uploader,
        }
    }

    pub fn keys(&self) -> &Keys {
        self.packer.keys()
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    /// Compresses the data blobs added from now on with `dict`, which MUST already be durable
    /// and indexed in the repository: a dictionary added to this same writer would be uploaded
    /// in a pack of its own kind after the data packs that need it, so a crash in between
    /// would leave indexed blobs naming a dictionary that was never stored.
    pub fn set_dictionary(&mut self, dict: Option<Arc<Dictionary>>) {
        self.dict = dict;
    }

    /// How this writer compresses data blobs.
    pub fn compression(&self) -> Compression {
        Compression {
            level: self.level,
            dict: self.dict.clone(),
        }
    }

    fn check_failed(&self) -> Result<()> {
        match self.shared.failed.lock() {
            Ok(g) => match &*g {
                Some(e) => Err(Error::new(
                    e.kind(),
                    format!("an earlier upload failed: {e}"),
                )),
                None => Ok(()),
            },
            Err(_) => Err(Error::new(ErrorKind::Other, "uploader panicked")),
        }
    }

    /// Whether the repository (or this writer) already has the blob.
    pub fn contains(&self, id: &Id) -> Result<bool> {
        self.known().contains(id)
    }

    /// A view of what this writer has or has accepted, for threads that look blobs up while
    /// the writer adds others.
    pub fn known(&self) -> Known {
        Known {
            shared: self.shared.clone(),
            cache: self.cache.clone(),
            store: self.store.clone(),
        }
    }

    /// Adds a sealed blob unless it is already stored. Returns whether it was added.
    pub fn add(&mut self, sealed: SealedBlob) -> Result<bool> {
        self.check_failed()?;
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .map_err(|_| Error::new(ErrorKind::Other, "writer state poisoned"))?;
            if pending.contains(&sealed.id) || self.known().stored(&sealed.id)? {
                return Ok(false);
            }
            pending.insert(sealed.id);
        }
        if let Ok(mut s) = self.shared.stats.lock() {
            s.blobs_added += 1;
            s.bytes_added += sealed.raw_length as u64;
            s.bytes_stored += sealed.bytes.len() as u64;
        }
        if self.packer.add(&sealed)? {
            self.flush_kind(sealed.kind)?;
        }
        Ok(true)
    }

    /// Hashes, seals and adds a plaintext blob (used for trees and small data).
    pub fn add_plain(&mut self, kind: BlobKind, plaintext: &[u8]) -> Result<Id> {
        let id = self.keys().blob_id(plaintext);
        if self.contains(&id)? {
            return Ok(id);
        }
        let sealed = match kind {
            BlobKind::Data => self.compression().seal(self.keys(), id, plaintext)?,
            BlobKind::Tree | BlobKind::Dict => blob::seal(self.keys(), kind, id, plaintext, 3)?,
        };
        self.add(sealed)?;
        Ok(id)
    }

    /// Finishes the open pack of `kind` and queues it for upload.
    fn flush_kind(&mut self, kind: BlobKind) -> Result<()> {
        if kind == BlobKind::Data {
            if let Ok(buffer) = self.spare.try_recv() {
                self.packer.recycle(buffer);
            }
        }
        let Some(pack) = self.packer.flush(kind)? else {
            return Ok(());
        };
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Other, "writer already finished"))?;
        if tx.send(pack).is_err() {
            self.check_failed()?;
            return Err(Error::new(ErrorKind::Other, "uploader stopped"));
        }
        Ok(())
    }

    /// Uploads everything pending, writes the last index file, and waits until all of it is
    /// durable. Only then may a snapshot referring to these blobs be saved.
    pub fn finish(mut self) -> Result<WriteStats> {
        self.flush_kind(BlobKind::Data)?;
        self.flush_kind(BlobKind::Tree)?;
        self.flush_kind(BlobKind::Dict)?;
        drop(self.tx.take());
        if let Some(h) = self.uploader.take() {
            h.join()
                .map_err(|_| Error::new(ErrorKind::Other, "uploader panicked"))?;
        }
        self.check_failed()?;
        self.cache.flush()?;
        let stats = self.shared.stats.lock().map(|s| *s).unwrap_or_default();
        Ok(stats)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.uploader.take() {
            let _ = h.join();
        }
    }
}

fn upload_loop(
    rx: Receiver<FinishedPack>,
    spare: SyncSender<Vec<u8>>,
    store: Store,
    keys: Keys,
    cache: Arc<Cache>,
    shared: Arc<Shared>,
) {
    let mut index = IndexFile {
        version: 1,
        ..Default::default()
    };
    let fail = |e: Error| {
        if let Ok(mut f) = shared.failed.lock() {
            f.get_or_insert(e);
        }
    };
    for pack in rx.iter() {
        if shared.failed.lock().map(|f| f.is_some()).unwrap_or(true) {
            continue; // drain the queue so the sender never blocks
        }
        if shared.discard {
            if let Ok(mut s) = shared.stats.lock() {
                s.packs += 1;
            }
            continue;
        }
        let kind = pack.kind;
        let (entry, bytes) = match store_pack(&store, pack) {
            Ok(stored) => stored,
            Err(e) => {
                fail(e);
                continue;
            }
        };
        // The backend has let go of its reference once `put` returned; if it has not, the
        // buffer is simply freed.
        if kind == BlobKind::Data {
            if let Ok(buffer) = bytes.try_into_mut() {
                let _ = spare.try_send(Vec::from(buffer));
            }
        }
        if let Ok(mut s) = shared.stats.lock() {
            s.packs += 1;
        }
        if let Ok(mut packs) = shared.packs.lock() {
            packs.insert(entry.id, true);
        }
        index.packs.push(entry);
        if index.packs.len() >= INDEX_FLUSH_PACKS || index.blob_count() >= INDEX_FLUSH_BLOBS {
            if let Err(e) = write_index(&store, &keys, &cache, &shared, &mut index) {
                fail(e);
            }
        }
    }
    if !index.packs.is_empty() && shared.failed.lock().map(|f| f.is_none()).unwrap_or(false) {
        if let Err(e) = write_index(&store, &keys, &cache, &shared, &mut index) {
            fail(e);
        }
    }
}

fn write_index(
    store: &Store,
    keys: &Keys,
    cache: &Cache,
    shared: &Shared,
    index: &mut IndexFile,
) -> Result<()> {
    let id = store_index_file(store, keys, index)?;
    let entries = index_locations(index);
    cache.ingest(&[(id, entries)])?;
    // Only now, with the blobs findable in the cache, may they leave the pending set.
    if let Ok(mut pending) = shared.pending.lock() {
        for p in &index.packs {
            for b in &p.blobs {
                pending.remove(&b.id);
            }
        }
    }
    if let Ok(mut s) = shared.stats.lock() {
        s.index_files += 1;
    }
    index.packs.clear();
    Ok(())
}
