#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Format 1, pinned: `tests/fixtures/v1/` is a repository written by the first release of the
//! format, with `expected.json` describing what it holds. Every later build must open it with
//! each credential, list the same snapshots, restore every one of them to the same bytes,
//! modes and link targets, and find nothing wrong with it (docs/design.md, "Format versions").
//!
//! The fixture was made once by `write_the_v1_fixture` below. Never rerun it for v1: the
//! fixture must stay exactly as format 1 wrote it. A new format version gets a fixture of its
//! own next to this one, and this test keeps running against the old one.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cairn_repo::check::{check, Subset};
use cairn_repo::keys::read_key_file;
use cairn_repo::progress::NoProgress;
use cairn_repo::restorer::{restore, RestoreOptions};
use cairn_repo::{Credentials, Id, Location, OpenOptions, Repository};
use serde::{Deserialize, Serialize};

/// What `expected.json` says about the repository.
#[derive(Debug, Serialize, Deserialize)]
struct Expected {
    /// How the fixture came to be and what state it is in.
    notes: Vec<String>,
    tenants: BTreeMap<String, ExpectedTenant>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ExpectedTenant {
    passwords: Vec<String>,
    /// Relative to the fixture folder.
    key_file: String,
    key_slots: usize,
    snapshots: Vec<ExpectedSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ExpectedSnapshot {
    id: String,
    kind: String,
    time: String,
    host: String,
    paths: Vec<String>,
    tags: Vec<String>,
    /// Every restored entry below the restore target, by relative path.
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    #[serde(rename = "type")]
    kind: String,
    /// Permission bits (not for symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    /// BLAKE3 of a file's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blake3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtime: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    link_target: Option<String>,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// Every entry below `root` (not `root` itself), walked with an explicit stack.
fn entries(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let entry = if ft.is_symlink() {
                Entry {
                    kind: "symlink".into(),
                    mode: None,
                    size: None,
                    blake3: None,
                    mtime: None,
                    link_target: Some(fs::read_link(&path).unwrap().to_string_lossy().into()),
                }
            } else if ft.is_dir() {
                stack.push(path.clone());
                Entry {
                    kind: "dir".into(),
                    mode: Some(meta.permissions().mode() & 0o7777),
                    size: None,
                    blake3: None,
                    mtime: None,
                    link_target: None,
                }
            } else {
                let bytes = fs::read(&path).unwrap();
                Entry {
                    kind: "file".into(),
                    mode: Some(meta.permissions().mode() & 0o7777),
                    size: Some(bytes.len() as u64),
                    blake3: Some(blake3::hash(&bytes).to_hex().to_string()),
                    mtime: Some(meta.mtime()),
                    link_target: None,
                }
            };
            out.insert(rel, entry);
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    let mut stack = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src, dst)) = stack.pop() {
        fs::create_dir_all(&dst).unwrap();
        for e in fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            let target = dst.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push((e.path(), target));
            } else {
                fs::copy(e.path(), &target).unwrap();
            }
        }
    }
}

fn describe(repo: &Repository, restore_root: &Path) -> Vec<ExpectedSnapshot> {
    let mut out = Vec::new();
    for (id, snap) in repo.snapshots().unwrap() {
        let target = restore_root.join(id.to_hex());
        restore(repo, &id, &target, &RestoreOptions::default(), &NoProgress).unwrap();
        out.push(ExpectedSnapshot {
            id: id.to_hex(),
            kind: serde_json::to_value(snap.kind)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string(),
            time: snap.time.clone(),
            host: snap.host.clone(),
            paths: snap.paths.clone(),
            tags: snap.tags.clone(),
            entries: entries(&target),
        });
    }
    out
}

fn open(repo_dir: &Path, tenant: &str, creds: Credentials, cache: &Path) -> Repository {
    Repository::open(
        &Location::Local(repo_dir.to_path_buf()),
        tenant,
        &creds,
        &OpenOptions {
            cache_dir: Some(cache.to_path_buf()),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("tenant {tenant}: {e}"))
}

/// The v1 fixture opens with every password and key file, lists the snapshots it was written
/// with, restores each of them byte for byte, and checks clean with all data read.
#[test]
fn format_v1_repository_opens_restores_and_checks_clean() {
    let expected: Expected =
        serde_json::from_slice(&fs::read(fixture_dir().join("expected.json")).unwrap()).unwrap();
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("fixture");
    copy_dir(&fixture_dir(), &copy);
    let repo_dir = copy.join("repo");
    assert_eq!(
        cairn_repo::repository::list_tenants(&Location::Local(repo_dir.clone())).unwrap(),
        expected.tenants.keys().cloned().collect::<Vec<_>>()
    );
    for (tenant, want) in &expected.tenants {
        // Git does not keep a key file's 0600; the reader insists on it.
        let key_file = copy.join(&want.key_file);
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
        let (file_tenant, key) = read_key_file(&key_file).unwrap();
        assert_eq!(&file_tenant, tenant);
        let mut creds = vec![Credentials::Key(key)];
        creds.extend(
            want.passwords
                .iter()
                .map(|p| Credentials::Password(p.as_bytes().to_vec())),
        );
        for (i, c) in creds.into_iter().enumerate() {
            let cache = work.path().join(format!("cache-{tenant}-{i}"));
            let repo = open(&repo_dir, tenant, c, &cache);
            assert_eq!(repo.key_slots().unwrap().len(), want.key_slots, "{tenant}");
            if i > 0 {
                // One open per credential is enough; restore and check once per tenant.
                let ids: Vec<String> = repo
                    .snapshots()
                    .unwrap()
                    .iter()
                    .map(|(id, _)| id.to_hex())
                    .collect();
                let want_ids: Vec<String> = want.snapshots.iter().map(|s| s.id.clone()).collect();
                assert_eq!(ids, want_ids, "{tenant}: snapshots");
                continue;
            }
            let got = describe(&repo, &work.path().join(format!("restore-{tenant}")));
            assert_eq!(got.len(), want.snapshots.len(), "{tenant}: snapshot count");
            for (g, w) in got.iter().zip(&want.snapshots) {
                assert_eq!(g, w, "{tenant}: snapshot {}", w.id);
            }
            let report = check(&repo, Some(Subset::All), &NoProgress).unwrap();
            assert!(
                report.problems.is_empty(),
                "{tenant}: {:?}",
                report.problems
            );
            assert_eq!(report.snapshots as usize, want.snapshots.len());
            for s in &want.snapshots {
                repo.read_snapshot(&Id::from_hex(&s.id).unwrap()).unwrap();
            }
        }
    }
}

/// Writes the v1 fixture. Run once, by hand, when format 1 was current:
/// `CAIRN_WRITE_V1_FIXTURE=1 cargo nextest run -p cairn-repo --run-ignored only -E 'test(write_the_v1_fixture)'`.
/// Never rerun it for v1: the fixture must stay as written by format 1.
#[test]
#[ignore = "rewrites tests/fixtures/v1 (command above); never rerun for v1"]
fn write_the_v1_fixture() {
    if std::env::var_os("CAIRN_WRITE_V1_FIXTURE").is_none() {
        panic!("set CAIRN_WRITE_V1_FIXTURE=1 to write the fixture (never for v1 again)");
    }
    generator::write(&fixture_dir());
}

mod generator {
    use super::*;
    use cairn_repo::archiver::{backup_paths, backup_stream, BackupOptions};
    use cairn_repo::backend::FileType;
    use cairn_repo::crypto::MasterKey;
    use cairn_repo::format::config::ChunkerConfig;
    use cairn_repo::keys::{write_key_file, KdfParams};
    use cairn_repo::lease::Lease;
    use cairn_repo::prune::{prune, PruneOptions};
    use cairn_repo::snapshot_edit::forget;
    use cairn_repo::testing::Rng;
    use cairn_repo::InitOptions;
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;

    const KDF: KdfParams = KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };

    fn init_opts() -> InitOptions {
        InitOptions {
            kdf: KDF,
            chunker: ChunkerConfig {
                min: 512,
                avg: 2048,
                max: 8192,
            },
            pack_size: 32 * 1024,
            compression: 3,
        }
    }

    fn touch(path: &Path, secs: i64) {
        let t = TimeSpec::new(secs, 123_456_789);
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn write_file(path: &Path, bytes: &[u8], mode: u32, secs: i64) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        touch(path, secs);
    }

    fn at(s: &str) -> BackupOptions {
        BackupOptions {
            host: "fixture-host".into(),
            time: Some(s.parse().unwrap()),
            use_files_cache: false,
            ..Default::default()
        }
    }

    fn stdin(repo: &Repository, name: &str, bytes: &[u8], time: &str) -> Id {
        let mut r: &[u8] = bytes;
        backup_stream(repo, &mut r, name, &at(time), &NoProgress)
            .unwrap()
            .id
    }

    fn files(repo: &Repository, src: &Path, time: &str, tags: &[&str]) -> Id {
        let mut o = at(time);
        o.tags = tags.iter().map(|t| t.to_string()).collect();
        backup_paths(repo, &[src.to_path_buf()], &o, &NoProgress)
            .unwrap()
            .id
    }

    /// Text that compresses, with some variety.
    fn text(rng: &mut Rng, lines: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..lines {
            out.extend_from_slice(
                format!("INSERT INTO t VALUES ({i}, {});\n", rng.below(1_000_000)).as_bytes(),
            );
        }
        out
    }

    pub fn write(out: &Path) {
        let work = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(20_261_202);
        if out.exists() {
            fs::remove_dir_all(out).unwrap();
        }
        fs::create_dir_all(out).unwrap();
        let repo_dir = out.join("repo");
        let loc = Location::Local(repo_dir.clone());
        let cache = |n: &str| OpenOptions {
            cache_dir: Some(work.path().join(n)),
            ..Default::default()
        };
        // A fixed source path, so the snapshot paths read well.
        let src = std::env::temp_dir().join("cairn-format-v1/src");
        if src.exists() {
            fs::remove_dir_all(&src).unwrap();
        }
        let big: Vec<u8> = rng.bytes(12_000);
        write_file(&src.join("big.bin"), &big, 0o644, 1_700_000_000);
        write_file(&src.join("empty"), b"", 0o600, 1_700_000_001);
        write_file(
            &src.join("run.sh"),
            b"#!/bin/sh\necho hi\n",
            0o755,
            1_700_000_002,
        );
        write_file(
            &src.join("docs/notes.txt"),
            &text(&mut rng, 200),
            0o640,
            1_700_000_003,
        );
        std::os::unix::fs::symlink("../big.bin", src.join("docs/link")).unwrap();
        write_file(
            &src.join("docs/deep/er/leaf"),
            b"leaf\n",
            0o444,
            1_700_000_004,
        );
        fs::set_permissions(src.join("docs/deep"), fs::Permissions::from_mode(0o750)).unwrap();

        // Tenant alpha: two password slots and a key file.
        let alpha_pw = "alpha password v1";
        let alpha = Repository::init(
            &loc,
            "alpha",
            &Credentials::Password(alpha_pw.as_bytes().to_vec()),
            &init_opts(),
            &cache("a"),
        )
        .unwrap();
        let (master, _) = alpha
            .master_key(&Credentials::Password(alpha_pw.as_bytes().to_vec()))
            .unwrap();
        alpha
            .add_key(&master, b"alpha second password", KDF)
            .unwrap();
        write_key_file(&out.join("alpha.key"), "alpha", &master).unwrap();

        let s1 = files(&alpha, &src, "2026-01-01T00:00:00Z", &["first"]);
        stdin(
            &alpha,
            "dump.sql",
            &text(&mut rng, 300),
            "2026-01-02T00:00:00.5Z",
        );
        // Change part of the big file, add one, remove one.
        let mut big2 = big.clone();
        big2[6000..6100].copy_from_slice(&rng.bytes(100));
        write_file(&src.join("big.bin"), &big2, 0o644, 1_700_000_100);
        write_file(&src.join("added"), &rng.bytes(3000), 0o600, 1_700_000_101);
        let s3 = files(&alpha, &src, "2026-01-03T00:00:00Z", &[]);
        fs::remove_file(src.join("run.sh")).unwrap();
        write_file(&src.join("big.bin"), &rng.bytes(9000), 0o644, 1_700_000_200);
        files(&alpha, &src, "2026-01-04T00:00:00Z", &["last", "v1"]);

        // A complete prune: the first snapshot's data goes, packs are repacked and the
        // index compacted.
        forget(&alpha, &[s1]).unwrap();
        let r = prune(
            &alpha,
            &PruneOptions {
                max_unused: 0.0,
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap();
        println!("first prune: {r:?}");

        // A lease of a writer on another host that holds until 2100, then a prune whose
        // sweep must wait for it: a pending condemned record stays in the repository.
        let lease = Lease {
            kind: "backup".into(),
            host: "fixture-other-host".into(),
            pid: 4242,
            user: "fixture".into(),
            started: "2026-01-05T00:00:00Z".into(),
            expires: "2100-01-01T00:00:00Z".into(),
            holder: Id([0x11; 32]),
            nonce: Id([0x22; 32]),
            boot_id: None,
            pid_namespace: None,
            pid_start: None,
        };
        let sealed =
            cairn_repo::format::seal_meta(alpha.keys_for_tests(), b"cairn:lease", &lease).unwrap();
        alpha
            .store_for_tests()
            .put(
                FileType::Lock,
                &Id::of_bytes(&sealed).to_hex(),
                sealed.into(),
            )
            .unwrap();
        forget(&alpha, &[s3]).unwrap();
        let r = prune(
            &alpha,
            &PruneOptions {
                max_unused: 0.0,
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap();
        println!("second prune: {r:?}");
        assert!(r.pending_record.is_some(), "the sweep must wait");
        stdin(
            &alpha,
            "after-prune.txt",
            b"written after the pending prune\n",
            "2026-01-06T00:00:00Z",
        );

        // Tenant beta: created with a key, then given a password slot.
        let beta_key = MasterKey::generate().unwrap();
        let beta = Repository::init(
            &loc,
            "beta",
            &Credentials::Key(beta_key.clone()),
            &init_opts(),
            &cache("b"),
        )
        .unwrap();
        beta.add_key(&beta_key, b"beta password v1", KDF).unwrap();
        write_key_file(&out.join("beta.key"), "beta", &beta_key).unwrap();
        let src_b = std::env::temp_dir().join("cairn-format-v1/beta");
        if src_b.exists() {
            fs::remove_dir_all(&src_b).unwrap();
        }
        write_file(&src_b.join("a.txt"), b"beta a\n", 0o644, 1_700_001_000);
        write_file(
            &src_b.join("d/b.bin"),
            &rng.bytes(20_000),
            0o600,
            1_700_001_001,
        );
        files(&beta, &src_b, "2026-02-01T00:00:00Z", &[]);
        stdin(&beta, "stream", &rng.bytes(5000), "2026-02-02T00:00:00Z");

        let mut tenants = BTreeMap::new();
        for (name, repo, passwords) in [
            (
                "alpha",
                &alpha,
                vec![alpha_pw.to_string(), "alpha second password".to_string()],
            ),
            ("beta", &beta, vec!["beta password v1".to_string()]),
        ] {
            tenants.insert(
                name.to_string(),
                ExpectedTenant {
                    passwords,
                    key_file: format!("{name}.key"),
                    key_slots: repo.key_slots().unwrap().len(),
                    snapshots: describe(repo, &work.path().join(format!("restore-{name}"))),
                },
            );
        }
        // The files snapshots restore what was backed up.
        let last = &tenants["beta"].snapshots[0];
        let restored = work
            .path()
            .join("restore-beta")
            .join(&last.id)
            .join(src_b.strip_prefix("/").unwrap());
        assert_eq!(entries(&restored), entries(&src_b));
        let expected = Expected {
            notes: vec![
                "Written once by format_v1.rs write_the_v1_fixture with format 1; never rewritten.".into(),
                "alpha: 2 password slots (KDF 1024 KiB, 1 pass, 1 lane) and alpha.key. Snapshots 1 (files) and 3 (files) were forgotten; a first prune (max-unused 0) swept and compacted the index; a lease of host fixture-other-host (expires 2100) then made a second prune leave its condemned record pending, with the superseded index files still present. A stdin snapshot was written after it.".into(),
                "beta: created with a key (beta.key), then given one password slot; a files and a stdin snapshot.".into(),
                "Key files are stored 0644 by git; the test sets 0600 before reading them.".into(),
            ],
            tenants,
        };
        fs::write(
            out.join("expected.json"),
            serde_json::to_vec_pretty(&expected).unwrap(),
        )
        .unwrap();
    }
}
