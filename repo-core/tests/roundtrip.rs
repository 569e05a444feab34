#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Backup then restore of random trees gives back the same tree, metadata included; and
//! streams round-trip byte for byte.

mod common;

use std::path::Path;

use cairn_repo::archiver::{backup_paths, backup_stream, BackupOptions};
use cairn_repo::content::ContentReader;
use cairn_repo::crypto::MasterKey;
use cairn_repo::progress::NoProgress;
use cairn_repo::restorer::{restore, RestoreOptions};
use cairn_repo::testing::{compare_trees, random_tree, Rng};
use cairn_repo::{Credentials, InitOptions, Location, OpenOptions, Repository};
use proptest::prelude::*;

fn small_repo(dir: &Path) -> Repository {
    let opts = InitOptions {
        chunker: cairn_repo::format::config::ChunkerConfig {
            min: 4096,
            avg: 16384,
            max: 65536,
        },
        ..Default::default()
    };
    let creds = Credentials::Key(MasterKey::generate().unwrap());
    Repository::init(
        &Location::Local(dir.join("repo")),
        "default",
        &creds,
        &opts,
        &OpenOptions {
            cache_dir: Some(dir.join("cache")),
            ..Default::default()
        },
    )
    .unwrap()
}

fn round_trip(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    random_tree(&src, seed, 40).unwrap();
    let repo = small_repo(dir.path());
    let r = common::backup(&repo, &src);
    assert!(!r.snapshot.incomplete, "{:?}", r.warnings);
    let out = dir.path().join("out");
    restore(
        &repo,
        &r.id,
        &out,
        &RestoreOptions {
            verify: true,
            ..Default::default()
        },
        &NoProgress,
    )
    .unwrap();
    let restored = out.join(src.strip_prefix("/").unwrap());
    compare_trees(&src, &restored).unwrap_or_else(|e| panic!("seed {seed}: {e}"));

    // A second backup reads nothing unchanged and restores the same.
    let r2 = common::backup(&repo, &src);
    assert_eq!(
        r2.snapshot.summary.bytes_read, 0,
        "seed {seed}: unchanged files were read again"
    );
    assert_eq!(r2.snapshot.parent, Some(r.id));
    let out2 = dir.path().join("out2");
    restore(
        &repo,
        &r2.id,
        &out2,
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    compare_trees(&src, &out2.join(src.strip_prefix("/").unwrap()))
        .unwrap_or_else(|e| panic!("seed {seed} (second): {e}"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn random_trees_round_trip(seed in any::<u64>()) {
        round_trip(seed);
    }
}

/// Backs `src` up, restores the snapshot into `out`; returns the backup and where `src`'s
/// copy is.
fn backup_and_restore(
    repo: &Repository,
    src: &Path,
    out: &Path,
) -> (cairn_repo::archiver::BackupResult, std::path::PathBuf) {
    let r = backup_paths(
        repo,
        &[src.to_path_buf()],
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    restore(repo, &r.id, out, &RestoreOptions::default(), &NoProgress).unwrap();
    let copy = out.join(src.strip_prefix("/").unwrap());
    (r, copy)
}

#[test]
fn sparse_files_restore_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    let repo = small_repo(dir.path());
    let (r, restored) = backup_and_restore(&repo, &src, &dir.path().join("out"));
    let restored = restored.join("sparse");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&restored).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "restored file uses {} blocks",
        meta.blocks()
    );
    // 64 MiB of zeros deduplicate to one chunk.
    assert!(r.snapshot.summary.bytes_stored < 100_000);
}

/// Data and runs of zeros at unaligned places, in a file written through the restorer's
/// staging buffer (at least 1 MiB) and in one written with vectored writes (smaller); both
/// end in a hole.
#[test]
fn files_mixing_data_and_holes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut rng = Rng::new(17);
    let mut large = rng.bytes(300_001);
    large.extend(vec![0u8; 700_000]);
    large.extend(rng.bytes(1_048_579));
    large.extend(vec![0u8; 3 << 20]);
    large.extend(rng.bytes(1_300_007));
    large.extend(vec![0u8; 400_000]);
    let mut small = rng.bytes(100_003);
    small.extend(vec![0u8; 300_000]);
    small.extend(rng.bytes(70_001));
    small.extend(vec![0u8; 200_000]);
    std::fs::write(src.join("large"), &large).unwrap();
    std::fs::write(src.join("small"), &small).unwrap();
    let repo = small_repo(dir.path());
    let (_, restored) = backup_and_restore(&repo, &src, &dir.path().join("out"));
    use std::os::unix::fs::MetadataExt;
    for (name, expected) in [("large", &large), ("small", &small)] {
        let got = std::fs::read(restored.join(name)).unwrap();
        assert_eq!(got.len(), expected.len(), "{name}: length");
        assert!(got == *expected, "{name}: content differs");
        let meta = std::fs::metadata(restored.join(name)).unwrap();
        assert!(
            meta.blocks() * 512 < expected.len() as u64,
            "{name}: no holes ({} blocks for {} bytes)",
            meta.blocks(),
            expected.len()
        );
    }
}

#[test]
fn streams_round_trip_and_deduplicate() {
    let dir = tempfile::tempdir().unwrap();
    let repo = small_repo(dir.path());
    let mut rng = Rng::new(5);
    let data = rng.bytes(3_000_000);
    let r = backup_stream(
        &repo,
        &mut &data[..],
        "dump.sql",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let node = repo
        .resolve_path(&r.snapshot.tree, b"/dump.sql")
        .unwrap()
        .unwrap();
    let mut back = Vec::new();
    std::io::copy(&mut ContentReader::new(&repo, &node).unwrap(), &mut back).unwrap();
    assert_eq!(back, data);
    // The same bytes with a small insertion add only a few chunks.
    let mut changed = data[..1_500_000].to_vec();
    changed.extend_from_slice(b"a new row");
    changed.extend_from_slice(&data[1_500_000..]);
    let r2 = backup_stream(
        &repo,
        &mut &changed[..],
        "dump.sql",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert!(
        r2.snapshot.summary.bytes_added < 200_000,
        "added {}",
        r2.snapshot.summary.bytes_added
    );
    assert_eq!(r2.snapshot.parent, Some(r.id));
}

#[test]
fn tenants_do_not_share_chunks_or_keys() {
    let dir = tempfile::tempdir().unwrap();
    let loc = Location::Local(dir.path().join("repo"));
    let open = OpenOptions {
        cache_dir: Some(dir.path().join("cache")),
        ..Default::default()
    };
    let ka = MasterKey::generate().unwrap();
    let kb = MasterKey::generate().unwrap();
    let a = Repository::init(
        &loc,
        "a",
        &Credentials::Key(ka.clone()),
        &InitOptions::default(),
        &open,
    )
    .unwrap();
    let b = Repository::init(
        &loc,
        "b",
        &Credentials::Key(kb),
        &InitOptions::default(),
        &open,
    )
    .unwrap();
    let data = Rng::new(9).bytes(2_000_000);
    let ra = backup_stream(
        &a,
        &mut &data[..],
        "x",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let rb = backup_stream(
        &b,
        &mut &data[..],
        "x",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let na = a.resolve_path(&ra.snapshot.tree, b"/x").unwrap().unwrap();
    let nb = b.resolve_path(&rb.snapshot.tree, b"/x").unwrap().unwrap();
    assert!(
        na.content.iter().all(|id| !nb.content.contains(id)),
        "blob ids leak across tenants"
    );
    // Tenant a's key does not open tenant b.
    let e = Repository::open(&loc, "b", &Credentials::Key(ka), &open).unwrap_err();
    assert_eq!(e.kind(), cairn_repo::ErrorKind::WrongPassword);
}

#[test]
fn special_files_round_trip() {
    let root = nix::unistd::geteuid().is_root();
    if !root && std::env::var_os("CI").is_some() {
        panic!("device nodes can only be created as root, and CI must test them");
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    nix::unistd::mkfifo(
        &src.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o620),
    )
    .unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(src.join("socket")).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    if root {
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        mknod(
            &src.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .unwrap();
        mknod(
            &src.join("loop"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            makedev(7, 200),
        )
        .unwrap();
    }
    let repo = small_repo(dir.path());
    let r = common::backup(&repo, &src);
    assert!(!r.snapshot.incomplete);
    let out = dir.path().join("out");
    restore(&repo, &r.id, &out, &RestoreOptions::default(), &NoProgress).unwrap();
    compare_trees(&src, &out.join(src.strip_prefix("/").unwrap())).unwrap();
}

#[test]
fn a_stale_cache_is_rebuilt_when_index_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let repo = small_repo(dir.path());
    let data = Rng::new(3).bytes(500_000);
    let r = backup_stream(
        &repo,
        &mut &data[..],
        "x",
        &BackupOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let node = repo.resolve_path(&r.snapshot.tree, b"/x").unwrap().unwrap();
    let first = node.content[0];
    assert!(repo.lookup(&first).unwrap().is_some());
    // Replace all index files by one merged file (as compaction will): same entries, new name.
    use cairn_repo::backend::FileType;
    let store = repo.store_for_tests();
    let mut merged = cairn_repo::format::index::IndexFile {
        version: 1,
        ..Default::default()
    };
    let names: Vec<String> = store
        .list(FileType::Index)
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    for n in &names {
        let f = repo
            .read_index_file(&cairn_repo::Id::from_hex(n).unwrap())
            .unwrap();
        merged.packs.extend(f.packs);
    }
    for p in &mut merged.packs {
        p.blobs.retain(|b| b.id != first);
    }
    let sealed = cairn_repo::format::seal_meta(
        repo.keys_for_tests(),
        cairn_repo::format::index::AAD,
        &merged,
    )
    .unwrap();
    store
        .put(
            FileType::Index,
            &cairn_repo::Id::of_bytes(&sealed).to_hex(),
            sealed.into(),
        )
        .unwrap();
    for n in &names {
        store.remove(FileType::Index, n).unwrap();
    }
    repo.sync_index().unwrap();
    assert!(
        repo.lookup(&first).unwrap().is_none(),
        "the cache still has a blob no index lists"
    );
    assert!(repo.lookup(&node.content[1]).unwrap().is_some());
}
