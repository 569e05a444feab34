#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Every backend passes the same conformance suite.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cairn_repo::backend::{
    conformance, Backend, BackendOptions, FileType, ObjectInfo, OpendalRoot, RetryBackend, Root,
};
use cairn_repo::{Error, ErrorKind, Location};
use common::{quick_retries, LostAnswer};

fn local(dir: &std::path::Path) -> OpendalRoot {
    OpendalRoot::local(
        dir,
        &BackendOptions::for_location(&Location::Local(dir.into())),
    )
    .unwrap()
}

#[tokio::test]
async fn memory_backend_conforms() {
    let root = OpendalRoot::memory(&BackendOptions::none()).unwrap();
    conformance::run(&*root.tenant("t1").unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn fs_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = local(dir.path()).tenant("t1").unwrap();
    // Local reads are done on the calling thread, so the suite checks that path too.
    let missing = cairn_repo::Id::of_bytes(b"missing").to_hex();
    assert!(tenant
        .read_range_direct(FileType::Index, &missing, 0, 1)
        .is_some());
    assert!(tenant.read_direct(FileType::Index, &missing).is_some());
    conformance::run(&*tenant).await.unwrap();
    // Nothing is left in the staging folder.
    let staged = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
    assert_eq!(staged, 0);
}

#[tokio::test]
async fn memory_root_conforms() {
    let root = OpendalRoot::memory(&BackendOptions::none()).unwrap();
    conformance::run_root(&root).await.unwrap();
}

#[tokio::test]
async fn fs_root_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run_root(&local(dir.path())).await.unwrap();
    // The root holds the marker, the staging folder and one folder per tenant, nothing else.
    let mut top: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["alpha", "beta", "cairn-repository", "gamma", "tmp"]);
}

#[tokio::test]
async fn a_root_opened_through_its_location_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let location = Location::Local(dir.path().join("repo"));
    std::fs::create_dir(dir.path().join("repo")).unwrap();
    let root =
        cairn_repo::backend::open(&location, &BackendOptions::for_location(&location)).unwrap();
    conformance::run_root(&*root).await.unwrap();
    let memory = cairn_repo::backend::open(&Location::Memory, &BackendOptions::none()).unwrap();
    conformance::run_root(&*memory).await.unwrap();
}

/// A backend whose first `failures` calls fail with an error of `kind`.
#[derive(Debug)]
struct Failing {
    inner: Arc<dyn Backend>,
    kind: ErrorKind,
    failures: usize,
    calls: AtomicUsize,
}

impl Failing {
    fn fail(&self) -> cairn_repo::Result<()> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(Error::new(self.kind, "simulated failure"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Backend for Failing {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn create(&self, ft: FileType, name: &str, data: bytes::Bytes) -> cairn_repo::Result<()> {
        self.fail()?;
        self.inner.create(ft, name, data).await
    }
    async fn read(&self, ft: FileType, name: &str) -> cairn_repo::Result<bytes::Bytes> {
        self.fail()?;
        self.inner.read(ft, name).await
    }
    async fn read_range(
        &self,
        ft: FileType,
        name: &str,
        offset: u64,
        len: u64,
    ) -> cairn_repo::Result<bytes::Bytes> {
        self.fail()?;
        self.inner.read_range(ft, name, offset, len).await
    }
    async fn stat(&self, ft: FileType, name: &str) -> cairn_repo::Result<u64> {
        self.fail()?;
        self.inner.stat(ft, name).await
    }
    async fn list(&self, ft: FileType) -> cairn_repo::Result<Vec<ObjectInfo>> {
        self.fail()?;
        self.inner.list(ft).await
    }
    async fn remove(&self, ft: FileType, name: &str) -> cairn_repo::Result<()> {
        self.fail()?;
        self.inner.remove(ft, name).await
    }
}

fn failing(kind: ErrorKind, failures: usize) -> Arc<Failing> {
    let root = OpendalRoot::memory(&BackendOptions::none()).unwrap();
    Arc::new(Failing {
        inner: root.tenant("t").unwrap(),
        kind,
        failures,
        calls: AtomicUsize::new(0),
    })
}

/// Transient failures are retried until the call succeeds; a create whose first attempts
/// failed stores the object once.
#[tokio::test]
async fn transient_errors_are_retried() {
    let inner = failing(ErrorKind::Io, 2);
    let b = RetryBackend::new(inner.clone(), &quick_retries(3));
    let data = bytes::Bytes::from_static(b"pack");
    let name = cairn_repo::Id::of_bytes(&data).to_hex();
    b.create(FileType::Pack, &name, data.clone()).await.unwrap();
    assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    assert_eq!(b.read(FileType::Pack, &name).await.unwrap(), data);
}

/// Retries stop after the configured number, with the last error.
#[tokio::test]
async fn transient_errors_are_retried_a_bounded_number_of_times() {
    let inner = failing(ErrorKind::Io, usize::MAX);
    let b = RetryBackend::new(inner.clone(), &quick_retries(3));
    let e = b.list(FileType::Pack).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
}

/// A refusal, a full quota, a missing object or damaged bytes are never retried: the same
/// call would fail the same way, and retrying would only delay the report.
#[tokio::test]
async fn permanent_errors_are_not_retried() {
    for kind in [
        ErrorKind::PermissionDenied,
        ErrorKind::QuotaExceeded,
        ErrorKind::NotFound,
        ErrorKind::Corrupt,
        ErrorKind::AlreadyExists,
    ] {
        let inner = failing(kind, 1);
        let b = RetryBackend::new(inner.clone(), &quick_retries(5));
        let e = b.stat(FileType::Pack, &"ab".repeat(32)).await.unwrap_err();
        assert_eq!(e.kind(), kind);
        assert_eq!(
            inner.calls.load(Ordering::SeqCst),
            1,
            "{kind:?} was retried"
        );
    }
}

/// A decorator keeps the calling-thread fast paths of the backend beneath it, and a
/// retrying namespace still meets the whole contract.
#[tokio::test]
async fn the_retry_layer_keeps_direct_reads_and_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let b = RetryBackend::new(local(dir.path()).tenant("t").unwrap(), &quick_retries(2));
    let missing = cairn_repo::Id::of_bytes(b"missing").to_hex();
    assert!(b.read_direct(FileType::Index, &missing).is_some());
    assert!(b
        .read_range_direct(FileType::Index, &missing, 0, 1)
        .is_some());
    assert!(b.stat_direct(FileType::Index, &missing).is_some());
    conformance::run(&b).await.unwrap();
}

#[tokio::test]
async fn tenants_are_separate_namespaces() {
    let root = OpendalRoot::memory(&BackendOptions::none()).unwrap();
    let a = root.tenant("a").unwrap();
    let b = root.tenant("b").unwrap();
    a.create(FileType::Config, "config", bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert!(b.list(FileType::Config).await.unwrap().is_empty());
    assert_eq!(root.tenants().await.unwrap(), vec!["a".to_string()]);
}

/// A full file system is reported as `QuotaExceeded` and a missing permission as
/// `PermissionDenied`, so that retry layers retry only what is transient.
#[test]
fn storage_errors_say_whether_a_retry_can_help() {
    let dir = tempfile::tempdir().unwrap();
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run as root to mount a small file system"
        );
        return;
    }
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "cairn-test"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success());
    let result = std::panic::catch_unwind(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let root = OpendalRoot::local(&mnt, &BackendOptions::none()).unwrap();
        let b = root.tenant("t").unwrap();
        let data = bytes::Bytes::from(vec![7u8; 4 << 20]);
        let e = rt
            .block_on(b.create(FileType::Pack, &"ab".repeat(32), data))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::QuotaExceeded, "{e}");
        assert!(!e.is_transient());
    });
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&mnt)
        .status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    assert_eq!(
        cairn_repo::error::kind_of_io(std::io::ErrorKind::PermissionDenied),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        cairn_repo::error::kind_of_io(std::io::ErrorKind::ReadOnlyFilesystem),
        ErrorKind::PermissionDenied
    );
    assert!(cairn_repo::Error::io("x", std::io::Error::other("reset")).is_transient());
}

/// A create repeated by the retry layer after its first attempt stored the object (the
/// answer was lost) succeeds: for content-named objects because the name holds the same
/// bytes, for the config because reading it back shows this writer's bytes. Another
/// writer's config is still reported as existing.
#[test]
fn a_retried_create_whose_answer_was_lost_succeeds() {
    let rt = cairn_repo::backend::new_runtime().unwrap();
    for lose in [FileType::Config, FileType::Pack, FileType::Snapshot] {
        let root = rt
            .block_on(async { OpendalRoot::memory(&BackendOptions::none()) })
            .unwrap();
        let lossy: Arc<dyn Backend> = Arc::new(LostAnswer::new(root.tenant("t").unwrap(), lose));
        let store = cairn_repo::backend::Store::new(
            Arc::new(RetryBackend::new(lossy, &quick_retries(3))),
            rt.clone(),
        );
        let data = bytes::Bytes::from_static(b"sealed bytes");
        let name = cairn_repo::Id::of_bytes(&data).to_hex();
        match lose {
            FileType::Config => {
                store.create(lose, "config", data.clone()).unwrap();
                let other = store
                    .create(lose, "config", bytes::Bytes::from_static(b"another"))
                    .unwrap_err();
                assert_eq!(other.kind(), ErrorKind::AlreadyExists);
            }
            _ => store.put(lose, &name, data.clone()).unwrap(),
        }
    }
}

/// Every layer `backend::open` can stack (limit, timeouts, retries, logging) keeps the whole
/// contract, on memory and on a local folder.
#[tokio::test]
async fn a_root_with_every_layer_conforms() {
    let layered = BackendOptions {
        concurrency: Some(2),
        timeout: Some(std::time::Duration::from_secs(30)),
        io_timeout: Some(std::time::Duration::from_secs(30)),
        ..quick_retries(2)
    };
    conformance::run_root(&OpendalRoot::memory(&layered).unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    conformance::run_root(&OpendalRoot::local(dir.path(), &layered).unwrap())
        .await
        .unwrap();
}
