#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `cairn restore`: overwrite policies, --delete, --verify, include/exclude, a full disk.

mod common;

use common::{restored, Env};

fn setup(env: &Env) -> (std::path::PathBuf, std::path::PathBuf) {
    env.init();
    let src = env.source();
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    (src.clone(), restored(&target, &src))
}

#[test]
fn existing_different_files_are_refused_and_nothing_changes() {
    let env = Env::new();
    let (_, out) = setup(&env);
    std::fs::write(out.join("a.txt"), "local edit\n").unwrap();
    std::fs::write(out.join("sub/c.txt"), "also edited\n").unwrap();
    std::fs::remove_file(out.join("b.log")).unwrap();
    let target = env.path("out");
    let err = env.fails(
        &["restore", "latest", "--target", target.to_str().unwrap()],
        1,
    );
    assert!(err.contains("a.txt") && err.contains("c.txt"), "{err}");
    assert!(err.contains("2 existing entries differ"), "{err}");
    assert!(err.contains("--overwrite"), "{err}");
    // Nothing changed: edits kept, the deleted file not restored.
    assert_eq!(
        std::fs::read_to_string(out.join("a.txt")).unwrap(),
        "local edit\n"
    );
    assert!(!out.join("b.log").exists());
    // Restoring onto identical files is fine.
    env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("fresh").to_str().unwrap(),
    ]);
    env.ok(&[
        "restore",
        "latest",
        "--target",
        env.path("fresh").to_str().unwrap(),
    ]);
}

#[test]
fn if_changed_always_and_delete() {
    let env = Env::new();
    let (_, out) = setup(&env);
    let target = env.path("out");
    let t = target.to_str().unwrap();
    std::fs::write(out.join("a.txt"), "local edit\n").unwrap();
    std::fs::write(out.join("extra"), "not in the snapshot").unwrap();
    std::fs::create_dir(out.join("extra-dir")).unwrap();
    let r = env.json(&[
        "restore",
        "latest",
        "--target",
        t,
        "--overwrite",
        "if-changed",
    ]);
    assert_eq!(r["files"], 1);
    assert_eq!(r["files_unchanged"], 2);
    assert_eq!(
        std::fs::read_to_string(out.join("a.txt")).unwrap(),
        "alpha\n"
    );
    assert!(out.join("extra").exists());
    let r = env.json(&[
        "restore",
        "latest",
        "--target",
        t,
        "--overwrite",
        "always",
        "--delete",
        "--verify",
    ]);
    assert_eq!(r["files"], 3);
    assert_eq!(r["verified"], 3);
    assert_eq!(r["deleted"], 2);
    assert!(!out.join("extra").exists() && !out.join("extra-dir").exists());
}

#[test]
fn include_and_exclude() {
    let env = Env::new();
    env.init();
    let src = env.source();
    env.ok(&["backup", src.to_str().unwrap()]);
    let t1 = env.path("inc");
    env.ok(&[
        "restore",
        "latest",
        "--target",
        t1.to_str().unwrap(),
        "--include",
        "*.txt",
    ]);
    let o1 = restored(&t1, &src);
    assert!(o1.join("a.txt").exists() && o1.join("sub/c.txt").exists());
    assert!(!o1.join("b.log").exists() && !o1.join("link").exists());
    let t2 = env.path("exc");
    let sub = format!("{}/sub", src.display());
    env.ok(&[
        "restore",
        "latest",
        "--target",
        t2.to_str().unwrap(),
        "--exclude",
        &sub,
    ]);
    let o2 = restored(&t2, &src);
    assert!(o2.join("a.txt").exists() && o2.join("b.log").exists());
    assert!(!o2.join("sub").exists());
    let t3 = env.path("incdir");
    env.ok(&[
        "restore",
        "latest",
        "--target",
        t3.to_str().unwrap(),
        "--include",
        &sub,
    ]);
    let o3 = restored(&t3, &src);
    assert!(o3.join("sub/c.txt").exists());
    assert!(!o3.join("a.txt").exists());
}

/// `--include` enters only the folders on the way to what it names: a file is restored even
/// when the packs holding another folder's listing are gone.
#[test]
fn include_reads_only_the_folders_on_its_way() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("other")).unwrap();
    std::fs::write(src.join("other/g.txt"), "elsewhere\n").unwrap();
    // The folder `other` first on its own: its listing goes into this backup's packs and
    // the next backup reuses it.
    env.ok(&["backup", src.join("other").to_str().unwrap()]);
    let first = common::packs(&env.repo());
    std::fs::create_dir_all(src.join("keep")).unwrap();
    std::fs::write(src.join("keep/f.txt"), "wanted\n").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    for pack in &first {
        std::fs::remove_file(pack).unwrap();
    }
    // `restore latest --include SRC/<folder>` into a new target, with no cache.
    let args = |target: &str, folder: &str| -> Vec<String> {
        [
            "--no-cache",
            "restore",
            "latest",
            "--target",
            target,
            "--include",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("{}/{folder}", src.display())])
        .collect()
    };
    let target = env.path("out");
    let keep = args(target.to_str().unwrap(), "keep");
    env.ok(&keep.iter().map(String::as_str).collect::<Vec<_>>());
    let out = restored(&target, &src);
    assert_eq!(
        std::fs::read_to_string(out.join("keep/f.txt")).unwrap(),
        "wanted\n"
    );
    assert!(!out.join("other").exists());
    // What the lost packs held is still reported as lost.
    let other = args(env.path("out2").to_str().unwrap(), "other");
    env.fails(&other.iter().map(String::as_str).collect::<Vec<_>>(), 1);
}

/// A disk that fills during restore: as root a real 2 MiB tmpfs (ENOSPC), otherwise a file
/// size limit (EFBIG, the same code path). The error names the file, no partial file is left
/// under a real name (nor a temporary one), and a later restore with space completes.
#[test]
fn a_full_disk_leaves_no_partial_file() {
    let env = Env::new();
    env.init();
    let src = env.path("big");
    std::fs::create_dir(&src).unwrap();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    std::fs::write(src.join("large.bin"), &data).unwrap();
    std::fs::write(src.join("small.txt"), "small").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("out");
    let disk = common::Tmpfs::mount(&target, "2m");
    let limit = if disk.is_some() {
        ""
    } else {
        "trap '' XFSZ; ulimit -f 1024; "
    };
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{limit}exec {} restore latest --target {}",
            env!("CARGO_BIN_EXE_cairn"),
            target.display()
        ))
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_PASSWORD_FILE", env.path("password"))
        .env("HOME", env.path("home"))
        .env("CAIRN_KDF_PARAMS", "1024,1,1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("large.bin") || err.contains(".cairn-restore-"),
        "{err}"
    );
    assert!(
        err.contains("too large") || err.contains("No space"),
        "{err}"
    );
    let dir = restored(&target, &src);
    assert!(
        !dir.join("large.bin").exists(),
        "a partial file is left under its real name"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("cairn-restore"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // With space again, the restore completes.
    drop(disk);
    env.ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
        "if-changed",
    ]);
    assert_eq!(std::fs::read(dir.join("large.bin")).unwrap(), data);
}
