#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Damaged repositories give clear errors that name the damaged object, never a panic or
//! silently wrong bytes.

mod common;

use std::path::PathBuf;

use common::{packs, Env};

/// A repository with one snapshot of a 3 MB incompressible file. Returns the largest pack
/// (the data pack) and the id of its first blob.
fn setup(env: &Env) -> (PathBuf, String, String) {
    env.init();
    let src = env.path("src");
    std::fs::create_dir(&src).unwrap();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    std::fs::write(src.join("data.bin"), data).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let pack = packs(&env.repo())
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let name = pack.file_name().unwrap().to_str().unwrap().to_string();
    let header = env.json(&["cat", "pack", &name]);
    let blob = header["blobs"][0]["id"].as_str().unwrap().to_string();
    (pack, name, blob)
}

fn restore(env: &Env, target: &str) -> (Option<i32>, String) {
    let out = env
        .cmd()
        .args([
            "restore",
            "latest",
            "--target",
            env.path(target).to_str().unwrap(),
        ])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Regular files below `dir` (none when it does not exist).
fn regular_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let entry = entry.unwrap();
        let t = entry.file_type().unwrap();
        if t.is_dir() {
            out.extend(regular_files(&entry.path()));
        } else if t.is_file() {
            out.push(entry.path());
        }
    }
    out
}

fn writable(p: &std::path::Path) {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
}

#[test]
fn a_flipped_byte_in_a_pack_names_the_pack_and_blob() {
    let env = Env::new();
    let (pack, name, blob) = setup(&env);
    writable(&pack);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&pack, bytes).unwrap();
    let (code, err) = restore(&env, "out");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&name), "pack not named: {err}");
    assert!(err.contains(&blob), "blob not named: {err}");
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("panicked"));
    // The file being written when the damage was found is removed, not left partial; the
    // restore's marker stays, so that running it again (once repaired) finishes it.
    let marker = env.path("out").join(".cairn-restore-in-progress");
    let left = regular_files(&env.path("out"));
    assert_eq!(left, vec![marker], "partial files left");
}

#[test]
fn a_truncated_pack_is_reported_not_read_short() {
    let env = Env::new();
    let (pack, name, _) = setup(&env);
    writable(&pack);
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (code, err) = restore(&env, "out");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&name) && err.contains("truncated"), "{err}");
    let marker = env.path("out").join(".cairn-restore-in-progress");
    let left = regular_files(&env.path("out"));
    assert_eq!(left, vec![marker], "partial files left");
    let err = env.fails(&["cat", "pack", &name], 1);
    assert!(err.contains(&name), "{err}");
}

#[test]
fn a_missing_pack_is_named() {
    let env = Env::new();
    let (pack, name, _) = setup(&env);
    std::fs::remove_file(&pack).unwrap();
    let (code, err) = restore(&env, "out");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&name), "{err}");
    assert!(
        err.to_lowercase().contains("not found") || err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn damaged_snapshot_index_and_tree_objects() {
    let env = Env::new();
    setup(&env);
    // A second snapshot, so one can be damaged while the other stays listable.
    env.cmd()
        .args(["backup", "--stdin"])
        .write_stdin("hello")
        .assert()
        .success();
    let snaps = env.snapshot_ids();
    let victim = &snaps[0];
    let path = env.repo().join("default/snapshots").join(victim);
    writable(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    // With a fresh cache: listing warns about the damaged snapshot and shows the others.
    let out = env
        .cmd()
        .args(["--no-cache", "--json", "snapshots"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(victim.as_str()));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let err = env.fails(&["--no-cache", "cat", "snapshot", &victim[..12]], 1);
    assert!(err.contains(victim.as_str()), "{err}");

    // A damaged index file is named.
    let index = std::fs::read_dir(env.repo().join("default/index"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    writable(&index);
    let mut bytes = std::fs::read(&index).unwrap();
    bytes[30] ^= 1;
    std::fs::write(&index, bytes).unwrap();
    let name = index.file_name().unwrap().to_str().unwrap().to_string();
    // With a damaged index file (cold cache), reading goes on with a warning that names it
    // and the command that mends it; whatever needs it fails naming it; writers and garbage
    // collection refuse (they cannot tell what they may reuse or delete); check reports it
    // among everything else it finds.
    for snap in &snaps[1..] {
        let out = env
            .cmd()
            .args(["--no-cache", "ls", &snap[..12]])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&name), "{stderr}");
        assert!(stderr.contains("cairn repair index"), "{stderr}");
    }
    let err = env.fails(&["--no-cache", "backup", "--stdin"], 1);
    assert!(err.contains(&name) && err.contains("repair index"), "{err}");
    let err = env.fails(&["--no-cache", "prune"], 1);
    assert!(err.contains(&name) && err.contains("repair index"), "{err}");
    let out = env.cmd().args(["--no-cache", "check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(&name) && report.contains("repair index"),
        "{report}"
    );
    assert!(
        report.contains(victim.as_str()),
        "every problem is reported: {report}"
    );
}

#[test]
fn a_damaged_tree_pack_is_named_by_ls() {
    let env = Env::new();
    let (data_pack, _, _) = setup(&env);
    let tree_pack = packs(&env.repo())
        .into_iter()
        .find(|p| *p != data_pack)
        .unwrap();
    let name = tree_pack.file_name().unwrap().to_str().unwrap().to_string();
    writable(&tree_pack);
    let mut bytes = std::fs::read(&tree_pack).unwrap();
    bytes[40] ^= 0x08;
    std::fs::write(&tree_pack, bytes).unwrap();
    let err = env.fails(&["ls", "latest"], 1);
    assert!(err.contains(&name), "{err}");
}

/// A damaged snapshot object with a warm cache that holds its manifest: `snapshots` and `ls`
/// must say so, and forget and prune must refuse until the user says it is to be dropped.
#[test]
fn a_damaged_snapshot_is_reported_with_a_warm_cache_and_stops_forget_and_prune() {
    let env = Env::new();
    setup(&env);
    env.cmd()
        .args(["backup", "--stdin"])
        .write_stdin("second")
        .assert()
        .success();
    let snaps = env.snapshot_ids();
    assert_eq!(snaps.len(), 2, "the cache now holds both manifests");
    let victim = &snaps[0];
    let path = env.repo().join("default/snapshots").join(victim);
    writable(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0x08;
    std::fs::write(&path, bytes).unwrap();

    let out = env.cmd().args(["--json", "snapshots"]).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&victim[..8]), "{stderr}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);

    let err = env.fails(&["ls", &victim[..12]], 1);
    assert!(err.contains(victim.as_str()), "{err}");

    let packs_before = packs(&env.repo()).len();
    for args in [
        &["forget", "--keep-last", "1", "--prune"][..],
        &["prune"][..],
    ] {
        let err = env.fails(args, 1);
        assert!(
            err.contains(&victim[..8]) && err.contains("repair snapshots"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        packs(&env.repo()).len(),
        packs_before,
        "nothing was deleted"
    );
    env.ok(&["forget", "--keep-last", "1", "--drop-unreadable"]);
    assert_eq!(env.snapshot_ids().len(), 1);
    assert!(!path.exists(), "the unreadable snapshot was dropped");
}
