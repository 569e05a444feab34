#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Helpers shared by the repository tests: a small repository (small chunks and packs, so a
//! few megabytes make many packs), opening it, checking it, reading a stream back, and a
//! reader that pauses a backup at a chosen point.

use std::io::Read;
use std::path::Path;
use std::sync::{mpsc, Arc};

use cairn_repo::backend::{
    new_runtime, Backend, BackendOptions, FileType, ObjectInfo, OpendalRoot, Root, Store,
};
use cairn_repo::check::{check, Subset};
use cairn_repo::content::ContentReader;
use cairn_repo::crypto::MasterKey;
use cairn_repo::format::config::ChunkerConfig;
use cairn_repo::progress::NoProgress;
use cairn_repo::{Credentials, Id, InitOptions, Location, OpenOptions, Repository};

/// Backs up `src` with the default options and no progress; the test fails if it fails.
pub fn backup(repo: &Repository, src: &Path) -> cairn_repo::archiver::BackupResult {
    cairn_repo::archiver::backup_paths(
        repo,
        std::slice::from_ref(&src.to_path_buf()),
        &cairn_repo::archiver::BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
}

pub fn init(dir: &Path) -> MasterKey {
    let key = MasterKey::generate().unwrap();
    let opts = InitOptions {
        chunker: ChunkerConfig {
            min: 4096,
            avg: 16384,
            max: 65536,
        },
        pack_size: 256 * 1024,
        ..Default::default()
    };
    Repository::init(
        &Location::Local(dir.join("repo")),
        "default",
        &Credentials::Key(key.clone()),
        &opts,
        &OpenOptions::default(),
    )
    .unwrap();
    key
}

pub fn open(dir: &Path, key: &MasterKey, cache: &str) -> Repository {
    Repository::open(
        &Location::Local(dir.join("repo")),
        "default",
        &Credentials::Key(key.clone()),
        &OpenOptions {
            cache_dir: Some(dir.join(cache)),
            ..Default::default()
        },
    )
    .unwrap()
}

pub fn assert_clean(repo: &Repository) {
    let r = check(repo, Some(Subset::All), &NoProgress).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

pub fn stream_content(repo: &Repository, snap: &Id, name: &[u8]) -> Vec<u8> {
    let s = repo.read_snapshot(snap).unwrap();
    let node = repo.resolve_path(&s.tree, name).unwrap().unwrap();
    let mut out = Vec::new();
    ContentReader::new(repo, &node)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A reader that gives `first`, then waits for a go (true: continue with `rest`; false: fail).
pub struct Gate {
    pub first: Vec<u8>,
    pub rest: Vec<u8>,
    pub pos: usize,
    pub gate: Option<mpsc::Receiver<bool>>,
    pub passed: bool,
}

impl Read for Gate {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos < self.first.len() {
            let n = buf.len().min(self.first.len() - self.pos);
            buf[..n].copy_from_slice(&self.first[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        if let Some(rx) = self.gate.take() {
            self.passed = rx.recv().unwrap_or(false);
            if !self.passed {
                return Err(std::io::Error::other("the source failed"));
            }
        }
        let off = self.pos - self.first.len();
        let n = buf.len().min(self.rest.len() - off);
        buf[..n].copy_from_slice(&self.rest[off..off + n]);
        self.pos += n;
        Ok(n)
    }
}

pub fn count_packs(dir: &Path) -> usize {
    walk_count(&dir.join("repo/default/data"))
}

pub fn walk_count(p: &Path) -> usize {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.map(|e| e.unwrap())
                .map(|e| {
                    if e.file_type().unwrap().is_dir() {
                        walk_count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Opens the test repository through a backend wrapped by `wrap` (fault injection).
pub fn open_wrapped(
    dir: &Path,
    key: &MasterKey,
    cache: &str,
    wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend>,
) -> Repository {
    let rt = new_runtime().unwrap();
    let inner: Arc<dyn Backend> = rt
        .block_on(async { OpendalRoot::local(&dir.join("repo"), &BackendOptions::none()) })
        .unwrap()
        .tenant("default")
        .unwrap();
    Repository::open_store(
        Store::new(wrap(inner), rt),
        "test".into(),
        "default",
        &Credentials::Key(key.clone()),
        &OpenOptions {
            cache_dir: Some(dir.join(cache)),
            ..Default::default()
        },
    )
    .unwrap()
}

type ListHook = Box<dyn Fn(FileType, &[ObjectInfo]) + Send + Sync>;

/// A backend that runs a hook after every listing (to act between a reader's list and its
/// reads) and before every write or delete (to stop an actor at a chosen step), and can
/// refuse every write (a read-only repository).
pub struct Hooked {
    pub inner: Arc<dyn Backend>,
    pub after_list: ListHook,
    pub before_mutation: Box<dyn Fn() + Send + Sync>,
    pub read_only: bool,
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hooked({:?})", self.inner)
    }
}

impl Hooked {
    fn refuse(&self) -> cairn_repo::Result<()> {
        if self.read_only {
            return Err(cairn_repo::Error::new(
                cairn_repo::ErrorKind::Io,
                "read-only file system",
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Backend for Hooked {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn create(&self, ft: FileType, name: &str, data: bytes::Bytes) -> cairn_repo::Result<()> {
        (self.before_mutation)();
        self.refuse()?;
        self.inner.create(ft, name, data).await
    }
    async fn read(&self, ft: FileType, name: &str) -> cairn_repo::Result<bytes::Bytes> {
        self.inner.read(ft, name).await
    }
    async fn read_range(
        &self,
        ft: FileType,
        name: &str,
        offset: u64,
        len: u64,
    ) -> cairn_repo::Result<bytes::Bytes> {
        self.inner.read_range(ft, name, offset, len).await
    }
    async fn stat(&self, ft: FileType, name: &str) -> cairn_repo::Result<u64> {
        self.inner.stat(ft, name).await
    }
    async fn list(&self, ft: FileType) -> cairn_repo::Result<Vec<ObjectInfo>> {
        let listed = self.inner.list(ft).await?;
        (self.after_list)(ft, &listed);
        Ok(listed)
    }
    async fn remove(&self, ft: FileType, name: &str) -> cairn_repo::Result<()> {
        (self.before_mutation)();
        self.refuse()?;
        self.inner.remove(ft, name).await
    }
}

/// Prune options that leave no unused byte in kept packs (so every prune repacks).
pub fn aggressive() -> cairn_repo::prune::PruneOptions {
    cairn_repo::prune::PruneOptions {
        max_unused: 0.0,
        ..Default::default()
    }
}

/// Every file below `dir`.
pub fn files_below(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// A backend whose first create of an object of type `lose` stores the object and then fails
/// with a transient error, as when a network drops the answer to a request that succeeded.
#[derive(Debug)]
pub struct LostAnswer {
    pub inner: Arc<dyn Backend>,
    pub lose: FileType,
    pub lost: std::sync::atomic::AtomicBool,
}

impl LostAnswer {
    pub fn new(inner: Arc<dyn Backend>, lose: FileType) -> LostAnswer {
        LostAnswer {
            inner,
            lose,
            lost: Default::default(),
        }
    }
}

#[async_trait::async_trait]
impl Backend for LostAnswer {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn create(&self, ft: FileType, name: &str, data: bytes::Bytes) -> cairn_repo::Result<()> {
        self.inner.create(ft, name, data).await?;
        if ft == self.lose && !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(cairn_repo::Error::io(
                format!("writing {name}"),
                std::io::Error::other("connection reset"),
            ));
        }
        Ok(())
    }
    async fn read(&self, ft: FileType, name: &str) -> cairn_repo::Result<bytes::Bytes> {
        self.inner.read(ft, name).await
    }
    async fn read_range(
        &self,
        ft: FileType,
        name: &str,
        offset: u64,
        len: u64,
    ) -> cairn_repo::Result<bytes::Bytes> {
        self.inner.read_range(ft, name, offset, len).await
    }
    async fn stat(&self, ft: FileType, name: &str) -> cairn_repo::Result<u64> {
        self.inner.stat(ft, name).await
    }
    async fn list(&self, ft: FileType) -> cairn_repo::Result<Vec<ObjectInfo>> {
        self.inner.list(ft).await
    }
    async fn remove(&self, ft: FileType, name: &str) -> cairn_repo::Result<()> {
        self.inner.remove(ft, name).await
    }
}

/// Retries with pauses of a millisecond or two.
pub fn quick_retries(retries: usize) -> BackendOptions {
    BackendOptions {
        retries,
        retry_min_delay: std::time::Duration::from_millis(1),
        retry_max_delay: std::time::Duration::from_millis(4),
        ..BackendOptions::none()
    }
}

/// A WAL segment file made for a test: `seg_size` bytes with a valid long page header for
/// `timeline`/`number` and cluster `sysid`, and bytes of its own (varied by `salt`), written
/// as `dir/<its name>`.
pub fn wal_segment(
    dir: &Path,
    timeline: u32,
    number: u64,
    seg_size: u32,
    sysid: u64,
    salt: u8,
) -> std::path::PathBuf {
    let seg = cairn_repo::pg::Segment::from_number(timeline, number, seg_size).unwrap();
    let mut b = vec![0u8; seg_size as usize];
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&2u16.to_le_bytes());
    b[4..8].copy_from_slice(&timeline.to_le_bytes());
    b[8..16].copy_from_slice(&seg.start(seg_size).0.to_le_bytes());
    b[24..32].copy_from_slice(&sysid.to_le_bytes());
    b[32..36].copy_from_slice(&seg_size.to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    for (i, x) in b.iter_mut().enumerate().skip(40).step_by(97) {
        *x = (i as u64 ^ number ^ u64::from(timeline) << 20).wrapping_mul(31) as u8 ^ salt;
    }
    let p = dir.join(seg.name(seg_size));
    std::fs::write(&p, &b).unwrap();
    p
}
