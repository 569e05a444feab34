#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Every backend passes the same conformance suite.

use cairn_repo::backend::{conformance, RootLocation};

#[tokio::test]
async fn memory_backend_conforms() {
    let root = RootLocation::memory().unwrap();
    conformance::run(&root.tenant("t1").unwrap()).await.unwrap();
}

#[tokio::test]
async fn fs_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let root = RootLocation::local(dir.path()).unwrap();
    conformance::run(&root.tenant("t1").unwrap()).await.unwrap();
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
