#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Trees nested deeper than a path can name, under the common descriptor limit.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use cairn_repo::format::tree::NodeKind;
use cairn_repo::testing::{nested_folders, remove_nested};
use cairn_repo::{Credentials, Location, OpenOptions, Repository};
use common::Env;

const DEPTH: usize = 10_000;

/// Runs `cairn` with this test's repository under `ulimit -n limit`.
fn limited(env: &Env, limit: u32, args: &[&str]) -> Output {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.path("home"))
        .env("XDG_CACHE_HOME", env.path("home/.cache"))
        .env("XDG_DATA_HOME", env.path("home/.local/share"))
        .env("XDG_CONFIG_HOME", env.path("home/.config"))
        .env("TZ", "UTC")
        .env("TMPDIR", env.path("tmp"))
        .env("CAIRN_KDF_PARAMS", "1024,1,1")
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_PASSWORD_FILE", env.path("password"))
        .output()
        .unwrap()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes a deep tree before its temporary folder is (`remove_dir_all` recurses).
struct Nested(PathBuf);

impl Drop for Nested {
    fn drop(&mut self) {
        let _ = remove_nested(&self.0);
    }
}

/// One user's `mkdir -p d/d/d/...` 10,000 levels deep (20,000 bytes of path) does not stop
/// the backup of the tree it is in, even with 256 descriptors: everything is saved, the deep
/// folder level by level, and check walks the snapshot.
#[test]
fn backup_and_check_of_a_tree_nested_10000_deep_under_ulimit_256() {
    let env = Env::new();
    env.init();
    let src = env.source();
    let _cleanup = Nested(src.clone());
    nested_folders(&src, "d", DEPTH, b"bottom\n").unwrap();

    let out = limited(&env, 256, &["backup", src.to_str().unwrap()]);
    assert_ok(&out, "backup");
    let out = limited(&env, 256, &["check"]);
    assert_ok(&out, "check");
    // The same snapshot restores, lists and goes through repair under the same limit.
    let target = env.path("restored");
    let _restored = Nested(target.clone());
    let out = limited(
        &env,
        256,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_ok(&out, "restore");
    let found = std::process::Command::new("find")
        .arg(&target)
        .args(["-name", "bottom", "-execdir", "cat", "{}", ";"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&found.stdout), "bottom\n");
    let out = limited(&env, 256, &["ls", "latest"]);
    assert_ok(&out, "ls");
    assert!(out.stdout.iter().filter(|b| **b == b'\n').count() > DEPTH);
    let out = limited(&env, 256, &["repair", "snapshots", "--dry-run"]);
    assert_ok(&out, "repair snapshots");

    let repo = Repository::open(
        &Location::Local(env.repo()),
        "default",
        &Credentials::Password(b"correct horse".to_vec()),
        &OpenOptions {
            cache_dir: Some(env.path("library-cache")),
            ..Default::default()
        },
    )
    .unwrap();
    let (_, snap) = repo.find_snapshot("latest").unwrap();
    assert!(!snap.incomplete);
    let at = |p: &Path| {
        repo.resolve_path(&snap.tree, p.as_os_str().as_bytes())
            .unwrap()
            .unwrap()
    };
    assert_eq!(at(&src.join("a.txt")).size, 6);
    assert_eq!(at(&src.join("sub/c.txt")).size, 200_000);
    assert_eq!(
        at(&src.join("link")).link_target.as_deref(),
        Some(&b"a.txt"[..])
    );
    let mut tree = repo
        .load_tree(&at(&src.join("d")).subtree.unwrap())
        .unwrap();
    for level in 1..DEPTH {
        assert_eq!(tree.nodes.len(), 1, "level {level}");
        assert_eq!(tree.nodes[0].kind, NodeKind::Dir, "level {level}");
        tree = repo.load_tree(&tree.nodes[0].subtree.unwrap()).unwrap();
    }
    assert_eq!(tree.nodes.len(), 1);
    assert_eq!(
        (tree.nodes[0].name.as_slice(), tree.nodes[0].size),
        (&b"bottom"[..], 7)
    );
}
