//! `cairn mount` with real FUSE: the mounted snapshot against its source (content and
//! metadata), reads at random offsets, snapshots appearing and going while mounted, the
//! ways a mount ends, a killed mount cleaned up by the next one, refusals, and what a reader
//! sees when a prune deletes data it still has open.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/crafted.rs"]
mod crafted;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::mount::{fuse_available, is_mounted, wait_until, Mounted};
use common::Env;

/// Deterministic bytes (xorshift), so a failure can be reproduced.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A tree with what a mount must show as it was: sizes from empty to several blobs, a
/// sparse file, modes, owners, nanosecond times, hard links, symlinks (one dangling), a
/// FIFO, a name that is not UTF-8, and extended attributes.
fn rich_source(env: &Env) -> PathBuf {
    let src = env.path("src");
    let d = src.join("docs/deeper");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(src.join("small.txt"), b"hello, mount\n").unwrap();
    std::fs::write(src.join("docs/big.bin"), pseudo_random(7, 3 << 20)).unwrap();
    std::fs::write(d.join("notes.md"), b"# notes\n").unwrap();
    let sparse = std::fs::File::create(src.join("sparse.img")).unwrap();
    sparse.write_at(b"tail", (5 << 20) - 4).unwrap();
    sparse.write_at(b"head", 0).unwrap();
    drop(sparse);
    std::fs::write(src.join("secret"), b"mode 600\n").unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::hard_link(src.join("small.txt"), src.join("docs/small-link.txt")).unwrap();
    std::os::unix::fs::symlink("small.txt", src.join("to-small")).unwrap();
    std::os::unix::fs::symlink("nowhere/at/all", src.join("dangling")).unwrap();
    nix::unistd::mkfifo(
        &src.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    std::fs::write(src.join(OsStr::from_bytes(b"caf\xe9-latin1")), b"bytes\n").unwrap();
    xattr::set(src.join("small.txt"), "user.origin", b"mount test").unwrap();
    xattr::set(&d, "user.folder", b"x").unwrap();
    std::os::unix::fs::chown(src.join("docs/big.bin"), Some(1234), Some(5678)).unwrap();
    let when = std::time::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    std::fs::File::options()
        .write(true)
        .open(src.join("docs/big.bin"))
        .unwrap()
        .set_times(
            std::fs::FileTimes::new()
                .set_modified(when)
                .set_accessed(when),
        )
        .unwrap();
    src
}

/// What a mount must reproduce of an entry.
#[derive(Debug, PartialEq, Eq)]
struct Shown {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    links: u64,
    target: Option<Vec<u8>>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Every entry below `root` by relative path (bytes), with its facts; the contents of
/// regular files are compared separately.
fn entries(root: &Path) -> BTreeMap<Vec<u8>, Shown> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                stack.push(p.clone());
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            let xattrs = if ft.is_symlink() {
                BTreeMap::new()
            } else {
                xattr::list(&p)
                    .unwrap()
                    .map(|n| {
                        let v = xattr::get(&p, &n).unwrap().unwrap_or_default();
                        (n.as_bytes().to_vec(), v)
                    })
                    .collect()
            };
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            out.insert(
                rel,
                Shown {
                    kind: kind.into(),
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if ft.is_dir() { 0 } else { m.len() },
                    mtime: (m.mtime(), m.mtime_nsec()),
                    links: if ft.is_dir() { 0 } else { m.nlink() },
                    target: std::fs::read_link(&p)
                        .ok()
                        .map(|t| t.as_os_str().as_bytes().to_vec()),
                    xattrs,
                },
            );
        }
    }
    out
}

/// The snapshot folder of `src` in a mount: `<snapshot>/<src without its leading />`.
/// Opens a file in the mount and checks that its first bytes are `head`; the file stays
/// open for the rest of a test (reads after a prune).
fn open_reading_head(file: &Path, head: &[u8]) -> std::fs::File {
    let f = std::fs::File::open(file).unwrap();
    let mut read = vec![0u8; head.len()];
    f.read_exact_at(&mut read, 0).unwrap();
    assert!(read == head);
    f
}

fn inside(snapshot: &Path, src: &Path) -> PathBuf {
    snapshot.join(src.strip_prefix("/").unwrap())
}

/// A test's environment with a new repository, or `None` where real FUSE cannot be tested
/// (a failure under CI).
fn fuse_env() -> Option<Env> {
    if !fuse_available() {
        return None;
    }
    let env = Env::new();
    env.init();
    Some(env)
}

/// Runs `cairn backup ARGS...` and returns the new snapshot's id.
fn backup(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["backup"];
    all.extend_from_slice(args);
    env.json(&all)["snapshot_id"].as_str().unwrap().to_string()
}

#[test]
fn a_mounted_snapshot_shows_the_source_tree_exactly() {
    let Some(env) = fuse_env() else { return };
    let src = rich_source(&env);
    backup(&env, &[src.to_str().unwrap()]);
    let m = Mounted::start(&env, &env.path("mnt"), &[]);
    let latest = m.point.join("snapshots/latest");
    let shown = inside(&latest, &src);

    let want = entries(&src);
    let got = entries(&shown);
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "the same names"
    );
    for (name, w) in &want {
        assert_eq!(Some(w), got.get(name), "{}", String::from_utf8_lossy(name));
        if w.kind == "file" {
            let a = std::fs::read(src.join(OsStr::from_bytes(name))).unwrap();
            let b = std::fs::read(shown.join(OsStr::from_bytes(name))).unwrap();
            assert!(a == b, "content of {}", String::from_utf8_lossy(name));
        }
    }
    // Hard links share one inode, as on the source.
    let ino = |p: &str| std::fs::metadata(shown.join(p)).unwrap().ino();
    assert_eq!(ino("small.txt"), ino("docs/small-link.txt"));
    assert_ne!(ino("small.txt"), ino("secret"));

    // Ranges at random offsets, against the source.
    for name in ["docs/big.bin", "sparse.img"] {
        let a = std::fs::File::open(src.join(name)).unwrap();
        let b = std::fs::File::open(shown.join(name)).unwrap();
        let size = a.metadata().unwrap().len();
        let picks = pseudo_random(99, 400);
        for pair in picks.chunks(4) {
            let offset = u64::from(u16::from_le_bytes([pair[0], pair[1]])) * size / 65536;
            let len = 1 + usize::from(u16::from_le_bytes([pair[2], pair[3]])) * 4;
            let (mut x, mut y) = (vec![0u8; len], vec![0u8; len]);
            let nx = a.read_at(&mut x, offset).unwrap();
            let ny = b.read_at(&mut y, offset).unwrap();
            assert_eq!(nx, ny, "{name} at {offset}+{len}");
            assert!(x[..nx] == y[..ny], "{name} at {offset}+{len}");
        }
    }

    // The other ways to the same snapshot.
    let id = env.snapshot_ids().pop().unwrap();
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for via in [format!("ids/{}", &id[..8]), format!("hosts/{host}/latest")] {
        let p = inside(&m.point.join(via), &src).join("small.txt");
        assert_eq!(std::fs::read(p).unwrap(), b"hello, mount\n");
    }
}

#[test]
fn the_mount_is_read_only() {
    let Some(env) = fuse_env() else { return };
    let src = env.source();
    backup(&env, &[src.to_str().unwrap()]);
    let m = Mounted::start(&env, &env.path("mnt"), &[]);
    let shown = inside(&m.point.join("snapshots/latest"), &src);
    let erofs = |r: std::io::Result<()>| {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    };
    erofs(std::fs::write(shown.join("a.txt"), b"changed").map(|_| ()));
    erofs(std::fs::write(shown.join("new"), b"new").map(|_| ()));
    erofs(std::fs::create_dir(m.point.join("snapshots/new")));
    erofs(std::fs::remove_file(shown.join("a.txt")));
    erofs(xattr::set(shown.join("a.txt"), "user.x", b"y"));
    assert_eq!(std::fs::read(shown.join("a.txt")).unwrap(), b"alpha\n");
}

#[test]
fn new_snapshots_appear_and_forgotten_ones_go_while_mounted() {
    let Some(env) = fuse_env() else { return };
    let src = env.source();
    let first = backup(&env, &[src.to_str().unwrap()]);
    let m = Mounted::start(&env, &env.path("mnt"), &["--refresh", "1"]);
    // Looked up by path before it is forgotten: the kernel must not keep it for long.
    let by_id = m.point.join(format!("ids/{}", &first[..8]));
    assert!(std::fs::metadata(inside(&by_id, &src)).unwrap().is_dir());
    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(m.point.join(dir))
            .map(|r| {
                r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert_eq!(names("snapshots").len(), 2, "one snapshot and latest");
    // Snapshots are named to the second: the next one must be in another second.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(src.join("a.txt"), "alpha, second version\n").unwrap();
    let second = backup(&env, &["--tag", "later", src.to_str().unwrap()]);
    assert!(
        wait_until(Duration::from_secs(20), || names("snapshots").len() == 3),
        "the new snapshot appears: {:?}",
        names("snapshots")
    );
    assert!(names("ids").contains(&second[..8].to_string()));
    assert_eq!(names("tags"), ["later"]);
    let latest = inside(&m.point.join("snapshots/latest"), &src).join("a.txt");
    assert_eq!(
        std::fs::read_to_string(latest).unwrap(),
        "alpha, second version\n",
        "latest follows the newest snapshot"
    );

    env.ok(&["forget", &first]);
    assert!(
        wait_until(Duration::from_secs(20), || !names("ids")
            .contains(&first[..8].to_string())),
        "the forgotten snapshot goes: {:?}",
        names("ids")
    );
    assert_eq!(names("snapshots").len(), 2);
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::metadata(&by_id)
            .is_err()),
        "the forgotten snapshot can still be reached by its path"
    );
}

#[test]
fn unmounting_or_a_signal_ends_the_mount_with_exit_0() {
    let Some(env) = fuse_env() else { return };
    let src = env.source();
    backup(&env, &[src.to_str().unwrap()]);

    // fusermount3 -u from outside.
    let point = env.path("mnt");
    let mut m = Mounted::start(&env, &point, &[]);
    m.unmount_from_outside();
    assert!(!is_mounted(&point));

    // SIGTERM, and SIGINT while a file is open in the mount (busy: it is detached).
    for (signal, busy) in [
        (nix::sys::signal::Signal::SIGTERM, false),
        (nix::sys::signal::Signal::SIGINT, true),
    ] {
        let mut m = Mounted::start(&env, &point, &[]);
        let open = busy.then(|| {
            std::fs::File::open(inside(&point.join("snapshots/latest"), &src).join("a.txt"))
                .unwrap()
        });
        m.signal(signal);
        assert_eq!(m.wait_exit().code(), Some(0), "{signal}: {}", m.stderr());
        drop(open);
        assert!(
            wait_until(Duration::from_secs(10), || !is_mounted(&point)),
            "{signal}: still mounted"
        );
        assert!(m.stderr().contains("unmounted"), "{}", m.stderr());
    }
}

#[test]
fn a_killed_mount_is_cleaned_up_by_the_next_mount_of_the_same_folder() {
    let Some(env) = fuse_env() else { return };
    let src = env.source();
    backup(&env, &[src.to_str().unwrap()]);
    let point = env.path("mnt");
    let mut dead = Mounted::start(&env, &point, &[]);
    dead.kill();
    assert!(
        is_mounted(&point),
        "a killed mount stays in the mount table"
    );
    let err = std::fs::read_dir(&point).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));

    let m = Mounted::start(&env, &point, &[]);
    assert!(
        m.stderr().contains("removed a mount left by a cairn mount"),
        "{}",
        m.stderr()
    );
    let a = inside(&point.join("snapshots/latest"), &src).join("a.txt");
    assert_eq!(std::fs::read(a).unwrap(), b"alpha\n");
}

#[test]
fn a_folder_that_is_not_empty_or_already_mounted_is_refused() {
    let Some(env) = fuse_env() else { return };
    let src = env.source();
    backup(&env, &[src.to_str().unwrap()]);
    let full = env.path("full");
    std::fs::create_dir_all(&full).unwrap();
    std::fs::write(full.join("file"), b"x").unwrap();
    let err = env.fails(&["mount", full.to_str().unwrap()], 1);
    assert!(err.contains("is not empty"), "{err}");
    let err = env.fails(&["mount", env.path("missing").to_str().unwrap()], 1);
    assert!(err.contains("does not exist"), "{err}");
    let point = env.path("mnt");
    let _m = Mounted::start(&env, &point, &[]);
    let err = env.fails(&["mount", point.to_str().unwrap()], 1);
    assert!(err.contains("a cairn mount is running there"), "{err}");
}

#[test]
fn backups_and_prunes_run_beside_a_mount_with_their_own_cache() {
    let Some(env) = fuse_env() else { return };
    let src = env.source();
    backup(&env, &[src.to_str().unwrap()]);
    let _m = Mounted::start(&env, &env.path("mnt"), &[]);
    // The mount works from a private copy of the cache: a backup meanwhile still has the
    // shared one (and with it the files cache), instead of a temporary one.
    let out = env
        .cmd()
        .args(["-v", "backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("temporary cache"), "{err}");
    env.ok(&["forget", "--keep-last", "1"]);
    env.ok(&["prune"]);
}

#[test]
fn a_read_of_data_a_prune_deleted_fails_with_an_error_never_other_bytes() {
    let Some(env) = fuse_env() else { return };
    let doomed = env.path("doomed");
    std::fs::create_dir_all(&doomed).unwrap();
    let content = pseudo_random(3, 24 << 20);
    std::fs::write(doomed.join("large.bin"), &content).unwrap();
    let first = backup(&env, &[doomed.to_str().unwrap()]);
    let kept = env.source();
    backup(&env, &[kept.to_str().unwrap()]);
    let m = Mounted::start(&env, &env.path("mnt"), &[]);
    let file = inside(&m.point.join(format!("ids/{}", &first[..8])), &doomed).join("large.bin");
    let f = open_reading_head(&file, &content[..4096]);

    // Forget the only snapshot holding the file, then prune twice: the first condemns its
    // packs, the second deletes them (the mount holds no lease that would keep them).
    env.ok(&["forget", &first]);
    env.ok(&["prune"]);
    env.ok(&["prune"]);

    // Far from what was read and read ahead: the blobs are gone.
    let mut tail = vec![0u8; 4096];
    let at = 20 << 20;
    match f.read_exact_at(&mut tail, at) {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
        Ok(()) => panic!("a read of deleted data succeeded"),
    }
    assert!(m.stderr().contains("reading a file"), "{}", m.stderr());
}

#[test]
fn a_folder_of_many_entries_is_listed_and_looked_up() {
    let Some(env) = fuse_env() else { return };
    let src = env.path("many");
    std::fs::create_dir_all(&src).unwrap();
    const N: usize = 50_000;
    for i in 0..N {
        std::fs::File::create(src.join(format!("f{i:06}"))).unwrap();
    }
    backup(&env, &[src.to_str().unwrap()]);
    let m = Mounted::start(&env, &env.path("mnt"), &[]);
    let shown = inside(&m.point.join("snapshots/latest"), &src);
    assert_eq!(std::fs::read_dir(&shown).unwrap().count(), N);
    assert!(std::fs::metadata(shown.join("f049999")).unwrap().is_file());
    assert!(std::fs::metadata(shown.join("f050000")).is_err());
}

#[test]
fn a_file_open_while_a_prune_repacks_its_blobs_is_still_read() {
    let Some(env) = fuse_env() else { return };
    let src = env.path("both");
    std::fs::create_dir_all(&src).unwrap();
    // One backup of both files puts their blobs in the same packs; once the first is
    // forgotten, those packs are partly used and a prune repacks them.
    std::fs::write(src.join("a-doomed.bin"), pseudo_random(21, 8 << 20)).unwrap();
    let kept = pseudo_random(22, 8 << 20);
    std::fs::write(src.join("b-kept.bin"), &kept).unwrap();
    let first = backup(&env, &[src.to_str().unwrap()]);
    std::fs::remove_file(src.join("a-doomed.bin")).unwrap();
    let second = backup(&env, &[src.to_str().unwrap()]);
    let packs_before = common::packs(&env.repo());

    let m = Mounted::start(&env, &env.path("mnt"), &[]);
    let file = inside(&m.point.join(format!("ids/{}", &second[..8])), &src).join("b-kept.bin");
    let f = open_reading_head(&file, &kept[..4096]);

    env.ok(&["forget", &first]);
    env.ok(&["prune", "--max-unused", "0"]);
    env.ok(&["prune", "--max-unused", "0"]);
    let packs_after = common::packs(&env.repo());
    assert!(
        packs_before.iter().any(|p| !packs_after.contains(p)),
        "a pack the open file used was repacked and deleted"
    );

    let mut rest = vec![0u8; 2 << 20];
    f.read_exact_at(&mut rest, 6 << 20).unwrap();
    assert!(rest == kept[6 << 20..8 << 20], "the moved blobs are read");
}

#[test]
fn folders_and_files_of_a_kept_snapshot_stay_readable_after_a_prune_repacks_them() {
    let Some(env) = fuse_env() else { return };
    let src = env.path("repacked");
    for dir in ["kept", "changed"] {
        std::fs::create_dir_all(src.join(dir)).unwrap();
        for i in 0..20 {
            std::fs::write(src.join(dir).join(format!("f{i}")), format!("{dir} {i}")).unwrap();
        }
    }
    let first = backup(&env, &[src.to_str().unwrap()]);
    std::fs::write(src.join("changed/f0"), "changed").unwrap();
    backup(&env, &[src.to_str().unwrap()]);
    let m = Mounted::start(&env, &env.path("mnt"), &[]);
    let shown = inside(&m.point.join("snapshots/latest"), &src);
    // Only the path down to the snapshot's folder is looked at before the prune.
    assert!(std::fs::metadata(&shown).unwrap().is_dir());

    // The first snapshot's own trees share packs with trees the second still uses: the
    // prune repacks those and deletes the old packs, which the mount's index still names.
    env.ok(&["forget", &first]);
    env.ok(&["prune", "--max-unused", "0"]);

    let names = std::fs::read_dir(shown.join("kept"))
        .unwrap_or_else(|e| panic!("listing a repacked folder: {e}: {}", m.stderr()))
        .map(|e| e.unwrap().file_name())
        .collect::<Vec<_>>();
    assert_eq!(names.len(), 20, "{names:?}");
    assert_eq!(
        std::fs::read(shown.join("kept/f3")).unwrap(),
        b"kept 3".to_vec()
    );
}

#[test]
fn a_file_whose_entry_and_blobs_disagree_on_its_size_is_refused_not_cut() {
    let Some(env) = fuse_env() else { return };
    let repo = crafted::open(&env);
    repo.sync_index().unwrap();
    let mut w = cairn_repo::writer::BlobWriter::new(&repo, 3);
    let honest = crafted::file(&mut w, b"honest", b"eight b\n");
    let mut liar = crafted::file(&mut w, b"liar", b"eight b\n");
    liar.size = 100;
    let root = crafted::save_tree(&mut w, vec![honest, liar]);
    w.finish().unwrap();
    crafted::commit(&repo, root, 2, 0);
    drop(repo);

    let m = Mounted::start(&env, &env.path("mnt"), &[]);
    let snap = m.point.join("snapshots/latest");
    assert_eq!(std::fs::read(snap.join("honest")).unwrap(), b"eight b\n");
    let err = std::fs::read(snap.join("liar")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(m.stderr().contains("its entry says 100"), "{}", m.stderr());
}

#[test]
fn dumps_have_a_folder_of_their_own_and_read_as_one_file() {
    let Some(env) = fuse_env() else { return };
    let dump = pseudo_random(31, 1 << 20);
    env.cmd()
        .args([
            "backup",
            "--stdin",
            "--stdin-filename",
            "app.sql",
            "--tag",
            "nightly",
        ])
        .write_stdin(dump.clone())
        .assert()
        .success();
    let src = env.source();
    backup(&env, &[src.to_str().unwrap()]);
    let m = Mounted::start(&env, &env.path("mnt"), &["--tag", "nightly"]);
    assert_eq!(
        std::fs::read(m.point.join("dumps/latest/app.sql")).unwrap(),
        dump
    );
    // --tag shows only the dump: the tree's snapshot is not there.
    assert_eq!(
        std::fs::read_dir(m.point.join("snapshots"))
            .unwrap()
            .count(),
        2
    );
    assert_eq!(
        std::fs::read_dir(m.point.join("pg-basebackups"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_user_without_the_fuse_helper_is_told_what_to_install() {
    let Some(env) = fuse_env() else { return };
    // As root the mount needs no helper: run as nobody, with no fusermount3 on the PATH.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let point = env.path("mnt");
    std::fs::create_dir(&point).unwrap();
    std::os::unix::fs::chown(&point, Some(65534), Some(65534)).unwrap();
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("setpriv (util-linux)");
    let out = std::process::Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_cairn"))
        .arg("mount")
        .arg(&point)
        .env_clear()
        .env("PATH", "/nonexistent")
        .env("HOME", env.path("home"))
        .env("CAIRN_REPOSITORY", env.repo())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("fusermount3 is not installed") && err.contains("fuse3"),
        "{err}"
    );
}

/// Two snapshots of one second are named with their nanoseconds; when one is forgotten the
/// other takes the plain name again. What the kernel cached below the name (an hour, for
/// entries inside a snapshot) must not outlive the snapshot it came from.
#[test]
fn a_snapshot_name_taken_by_another_snapshot_shows_the_new_snapshot() {
    let Some(env) = fuse_env() else { return };
    let src = env.source();
    std::fs::write(src.join("a.txt"), "first\n").unwrap();
    let first = env.json(&[
        "backup",
        "--time",
        "2026-01-02T03:04:05.1Z",
        src.to_str().unwrap(),
    ])["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let m = Mounted::start(&env, &env.path("mnt"), &["--refresh", "1"]);
    let plain = m.point.join("snapshots/2026-01-02T03:04:05Z");
    let file = inside(&plain, &src).join("a.txt");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "first\n");

    std::fs::write(src.join("a.txt"), "second\n").unwrap();
    env.ok(&[
        "backup",
        "--time",
        "2026-01-02T03:04:05.2Z",
        src.to_str().unwrap(),
    ]);
    env.ok(&["forget", &first]);
    // Only the listing is looked at meanwhile: the kernel keeps what it has below the name.
    let listed = |want: &str| {
        std::fs::read_dir(m.point.join("snapshots"))
            .unwrap()
            .any(|e| e.unwrap().file_name() == want)
    };
    assert!(wait_until(Duration::from_secs(20), || listed(
        "2026-01-02T03:04:05Z"
    ) && !listed(
        "2026-01-02T03:04:05.100000000Z"
    )));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "second\n",
        "the name now shows the second snapshot"
    );
}

/// A program that keeps a folder open and reads it again (`rewinddir`) sees new snapshots,
/// as one that opens it again does.
#[test]
fn a_folder_read_again_through_the_same_handle_shows_new_snapshots() {
    let Some(env) = fuse_env() else { return };
    let src = env.source();
    env.ok(&["backup", src.to_str().unwrap()]);
    let m = Mounted::start(&env, &env.path("mnt"), &["--refresh", "1"]);
    let mut dir = nix::dir::Dir::open(
        &m.point.join("snapshots"),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap();
    // Each pass reads the handle from its start: the iterator rewinds it when dropped.
    let mut names = || dir.iter().filter(|e| e.is_ok()).count();
    assert_eq!(names(), 4, "., .., one snapshot and latest");
    std::thread::sleep(Duration::from_millis(1100));
    env.ok(&["backup", src.to_str().unwrap()]);
    assert!(
        wait_until(Duration::from_secs(20), || names() == 5),
        "the new snapshot appears through the handle"
    );
}
