#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Every backend passes the same conformance suite.

use cairn_repo::backend::{conformance, Backend, FileType, RootLocation};

#[tokio::test]
async fn memory_backend_conforms() {
    let root = RootLocation::memory().unwrap();
    conformance::run(&root.tenant("t1").unwrap()).await.unwrap();
}

#[tokio::test]
async fn fs_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let root = RootLocation::local(dir.path()).unwrap();
    let tenant = root.tenant("t1").unwrap();
    // Local reads are done on the calling thread, so the suite checks that path too.
    let missing = cairn_repo::Id::of_bytes(b"missing").to_hex();
    assert!(tenant
        .read_range_direct(FileType::Index, &missing, 0, 1)
        .is_some());
    assert!(tenant.read_direct(FileType::Index, &missing).is_some());
    conformance::run(&tenant).await.unwrap();
    // Nothing is left in the staging folder.
    let staged = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
    assert_eq!(staged, 0);
}

#[tokio::test]
async fn tenants_are_separate_namespaces() {
    let root = RootLocation::memory().unwrap();
    let a = root.tenant("a").unwrap();
    let b = root.tenant("b").unwrap();
    use cairn_repo::backend::{Backend, FileType};
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
    use cairn_repo::ErrorKind;
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
        let root = RootLocation::local(&mnt).unwrap();
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
