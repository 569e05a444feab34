#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The REST client against real servers on loopback: `rclone serve restic`, another
//! implementation of restic's REST protocol v2. (`cairn-server` has its own tests.)

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_repo::backend::rest::{RestRoot, RestTarget};
use cairn_repo::backend::{BackendOptions, FileType, Root};
use cairn_repo::ErrorKind;

/// A server process, killed when dropped.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `rclone serve restic` on a free loopback port, once it accepts connections; `None` (or a
/// failure under CI, where scripts/test installs rclone) when rclone is missing.
fn rclone(extra: &[&str]) -> Option<Server> {
    rclone_with(extra, "http")
}

/// [`rclone`] with its URL's scheme (`https` when `extra` gives it a certificate).
fn rclone_with(extra: &[&str], scheme: &str) -> Option<Server> {
    if Command::new("rclone").arg("version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "rclone is required under CI (scripts/test installs it)"
        );
        eprintln!("skipped: rclone not found (scripts/test installs it)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new("rclone")
        .args(["serve", "restic", "--addr", &format!("127.0.0.1:{port}")])
        .args(extra)
        .arg(dir.path().join("store"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        url: format!("{scheme}://localhost:{port}/"),
        _dir: dir,
    };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "rclone did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(server)
}

fn root(url: &str) -> RestRoot {
    let target = RestTarget::parse(url).unwrap();
    let mut options = BackendOptions::remote();
    options.retries = 1;
    options.retry_min_delay = Duration::from_millis(10);
    RestRoot::new(&target, &options).unwrap()
}

/// rclone's server replaces an object on a second upload instead of refusing it, so it
/// cannot pass the create-only part of the conformance suite (`cairn-server` does); a
/// repository works through it all the same, since every name but `config` is the hash of
/// its bytes and `init` refuses a namespace that holds a config.
#[test]
fn a_repository_works_through_rclone_serve_restic() {
    use cairn_repo::archiver::{backup_stream, BackupOptions};
    use cairn_repo::crypto::MasterKey;
    use cairn_repo::progress::NoProgress;
    use cairn_repo::{Credentials, InitOptions, Location, OpenOptions, Repository};

    let Some(server) = rclone(&[]) else { return };
    let dir = tempfile::tempdir().unwrap();
    let location = Location::parse(&format!("rest:{}", server.url)).unwrap();
    let key = Credentials::Key(MasterKey::generate().unwrap());
    let open = |cache: &str| OpenOptions {
        cache_dir: Some(dir.path().join(cache)),
        ..Default::default()
    };
    let repo = Repository::init(
        &location,
        "team",
        &key,
        &InitOptions::default(),
        &open("c1"),
    )
    .unwrap();
    let data = cairn_repo::testing::Rng::new(7).bytes(3_000_000);
    let id = backup_stream(
        &repo,
        &mut &data[..],
        "db.dump",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap()
    .id;
    let err = Repository::init(
        &location,
        "team",
        &key,
        &InitOptions::default(),
        &open("c2"),
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");

    let again = Repository::open(&location, "team", &key, &open("c3")).unwrap();
    let node = again
        .resolve_path(&again.read_snapshot(&id).unwrap().tree, b"/db.dump")
        .unwrap()
        .unwrap();
    let mut back = Vec::new();
    for blob in again.file_content(&node).unwrap() {
        back.extend(again.read_blob(cairn_repo::BlobKind::Data, &blob).unwrap());
    }
    assert!(back == data, "the stream reads back whole");
    // rclone does not say when it received an object.
    assert!(again.snapshot_received_times().unwrap().is_none());
    let report =
        cairn_repo::check::check(&again, Some(cairn_repo::check::Subset::All), &NoProgress)
            .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let err = Repository::open(&location, "other", &key, &open("c4"))
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn a_server_that_is_not_there_is_a_transient_error() {
    let root = root(&format!("http://127.0.0.1:{}/", free_port()));
    let err = root
        .tenant("t1")
        .unwrap()
        .list(FileType::Index)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
}

#[test]
fn urls_are_parsed_with_their_credentials() {
    let t = RestTarget::parse("https://al%40ice:p%3Ass@backup.example:8000/team").unwrap();
    assert_eq!(t.url, "https://backup.example:8000/team/");
    assert_eq!(t.username.as_deref(), Some("al@ice"));
    assert_eq!(t.password.as_deref(), Some("p:ss"));
    assert!(
        !format!("{t:?}").contains("p:ss"),
        "the password is not shown"
    );
    let t = RestTarget::parse("http://host").unwrap();
    assert_eq!((t.url.as_str(), t.username), ("http://host/", None));
    for bad in ["host:8000/", "ftp://host/", "http:///x", "http://a:%zz@h/"] {
        assert!(RestTarget::parse(bad).is_err(), "{bad}");
    }
}

/// A credential that may not delete (rclone's `--append-only`, like an append-only user of
/// cairn-server) backs up and archives WAL, but forget and prune refuse before they change
/// anything, and pushes stop merging wal snapshots (which would need deletes) instead of
/// adding a merged copy on every push.
#[test]
fn an_append_only_credential_backs_up_but_deletes_nothing() {
    use cairn_repo::archiver::{backup_stream, BackupOptions};
    use cairn_repo::crypto::MasterKey;
    use cairn_repo::pg::wal::{push, Catalog};
    use cairn_repo::progress::NoProgress;
    use cairn_repo::{Credentials, InitOptions, Location, OpenOptions, Repository};

    let Some(server) = rclone(&["--append-only"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let location = Location::parse(&format!("rest:{}", server.url)).unwrap();
    let key = Credentials::Key(MasterKey::generate().unwrap());
    let opts = OpenOptions {
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    };
    let repo = Repository::init(&location, "db", &key, &InitOptions::default(), &opts).unwrap();
    let mut ids = Vec::new();
    for seed in 0..2 {
        let data = cairn_repo::testing::Rng::new(seed).bytes(500_000);
        ids.push(
            backup_stream(
                &repo,
                &mut &data[..],
                "dump",
                &BackupOptions::default(),
                &NoProgress,
            )
            .unwrap()
            .id,
        );
    }
    let err = cairn_repo::snapshot_edit::forget(&repo, &ids[..1]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    let err = cairn_repo::prune::prune(&repo, &Default::default(), &NoProgress).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert_eq!(repo.snapshots().unwrap().len(), 2);

    let wal = dir.path().join("pg_wal");
    std::fs::create_dir_all(&wal).unwrap();
    let merge_at = cairn_repo::pg::consolidate::CONSOLIDATE_AT as u64;
    for n in 1..=merge_at + 3 {
        let seg = common::wal_segment(&wal, 1, n, 1 << 20, 7_300_000_000_000_000_001, 0);
        push(&repo, &seg).unwrap();
    }
    let catalog = Catalog::load(&repo).unwrap();
    assert_eq!(
        catalog.snapshots().len() as u64,
        merge_at + 3,
        "no push merged"
    );
}

/// A certificate authority and a server certificate for `localhost` signed by it, as PEM
/// files in `dir`: (CA certificate, server certificate, server key).
fn private_ca(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// An https server whose certificate comes from a private CA: refused (at once, not
/// retried) until the client is given the CA with `ca_file` (`--tls-ca`), then used.
#[tokio::test]
async fn https_with_a_private_ca_needs_the_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(certs.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let Some(server) = rclone_with(&["--cert", cert, "--key", key], "https") else {
        return;
    };
    let mut target = RestTarget::parse(&server.url).unwrap();
    let mut options = BackendOptions::remote();
    options.retry_min_delay = Duration::from_secs(5);
    let refused = RestRoot::new(&target, &options).unwrap();
    let started = Instant::now();
    let err = refused
        .tenant("t1")
        .unwrap()
        .list(FileType::Snapshot)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Other, "{err}");
    assert!(err.to_string().contains("--tls-ca"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a certificate error was retried"
    );
    target.ca_file = Some(ca);
    let root = RestRoot::new(&target, &options).unwrap();
    let tenant = root.tenant("t1").unwrap();
    let data = bytes::Bytes::from_static(b"over https");
    let name = cairn_repo::Id::of_bytes(&data).to_hex();
    tenant
        .create(FileType::Index, &name, data.clone())
        .await
        .unwrap();
    assert_eq!(tenant.read(FileType::Index, &name).await.unwrap(), data);
}
