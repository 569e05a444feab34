#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Restore within the process's limits: few open files whatever the folder size and depth,
//! and messages that name the entries restored.

mod common;
#[path = "common/crafted.rs"]
mod crafted;

use std::os::fd::OwnedFd;
use std::path::Path;

use cairn_repo::format::tree::Xattr;
use cairn_repo::writer::BlobWriter;
use common::Env;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

/// Runs `cairn args` (as `Env::cmd` does) with at most `nofile` open files.
fn run_limited(env: &Env, nofile: u32, args: &[&str]) -> std::process::Output {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.path("home"))
        .env("XDG_CACHE_HOME", env.path("home/.cache"))
        .env("TMPDIR", env.path("tmp"))
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_PASSWORD_FILE", env.path("password"))
        .output()
        .unwrap()
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn restore_of_a_folder_of_2000_files_works_with_256_open_files() {
    let env = Env::new();
    env.init();
    let src = env.path("many");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..2000 {
        std::fs::write(src.join(format!("f{i:04}")), format!("file {i}\n")).unwrap();
    }
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("out");
    let out = run_limited(
        &env,
        256,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_ok(&out);
    let restored = common::restored(&target, &src);
    assert_eq!(std::fs::read_dir(&restored).unwrap().count(), 2000);
    assert_eq!(
        std::fs::read_to_string(restored.join("f1999")).unwrap(),
        "file 1999\n"
    );
}

/// Opens `name` below `dir` one component at a time (the path is longer than the kernel
/// resolves at once).
fn open_below(dir: &Path, names: &[&str]) -> OwnedFd {
    let mut fd = openat(
        nix::fcntl::AT_FDCWD,
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for (i, n) in names.iter().enumerate() {
        let flags = if i + 1 == names.len() {
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW
        } else {
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW
        };
        fd = openat(&fd, *n, flags, Mode::empty()).unwrap();
    }
    fd
}

#[test]
fn restore_of_a_tree_10000_levels_deep_works_with_1024_open_files() {
    let env = Env::new();
    env.init();
    let snap = crafted::deep_snapshot(&env, 10_000).to_hex();
    let target = env.path("out");
    let out = run_limited(
        &env,
        1024,
        &["restore", &snap, "--target", target.to_str().unwrap()],
    );
    assert_ok(&out);
    let mut names = vec!["d"; 10_000];
    names.push("f");
    let deepest = std::fs::File::from(open_below(&target, &names));
    assert_eq!(std::io::read_to_string(deepest).unwrap(), "deepest\n");
    let top = std::fs::File::from(open_below(&target, &["d", "f"]));
    assert_eq!(std::io::read_to_string(top).unwrap(), "top\n");
    // Folders got their mode back on the way up.
    let st = nix::sys::stat::fstat(open_below(&target, &names[..9_999])).unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o755);
    // Again over the restored tree: both passes now meet every existing folder.
    let out = run_limited(
        &env,
        1024,
        &[
            "restore",
            &snap,
            "--target",
            target.to_str().unwrap(),
            "--overwrite",
            "if-changed",
        ],
    );
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 unchanged"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn an_extended_attribute_warning_names_the_restored_file_not_its_temporary_name() {
    let env = Env::new();
    env.init();
    let snap = {
        let repo = crafted::open(&env);
        repo.sync_index().unwrap();
        let mut w = BlobWriter::new(&repo, 3);
        let mut f = crafted::file(&mut w, b"x", b"content\n");
        // No file system knows this namespace, so setting it fails everywhere.
        f.xattrs.push(Xattr {
            name: b"cairn-test.nowhere".to_vec(),
            value: b"1".to_vec(),
        });
        let root = crafted::save_tree(&mut w, vec![f]);
        w.finish().unwrap();
        crafted::commit(&repo, root, 1, 0).to_hex()
    };
    let target = env.path("out");
    let target_s = target.to_str().unwrap();
    std::fs::create_dir_all(&target).unwrap();
    // An existing file is replaced through a temporary name.
    std::fs::write(target.join("x"), "old\n").unwrap();
    let out = env
        .cmd()
        .args([
            "restore",
            &snap,
            "--target",
            target_s,
            "--overwrite",
            "always",
        ])
        .output()
        .unwrap();
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: cannot set extended attribute",
            target.join("x").display()
        )),
        "{err}"
    );
    assert!(!err.contains(".cairn-restore-"), "{err}");
    assert_eq!(
        std::fs::read_to_string(target.join("x")).unwrap(),
        "content\n"
    );
}
