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
