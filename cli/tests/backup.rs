#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `cairn backup` from the command line: paths, options, streams and commands, partial
//! failures.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{restored, Env};
use predicates::str::contains;

#[test]
fn second_backup_skips_unchanged_files_and_records_its_parent() {
    let env = Env::new();
    env.init();
    let src = env.source();
    let first = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(first["summary"]["files_new"], 3);
    assert_eq!(first["message_type"], "summary");
    assert_eq!(first["snapshot_id"], first["snapshot"]);
    let second = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(second["summary"]["files_unmodified"], 3);
    assert_eq!(second["summary"]["bytes_read"], 0);
    assert_eq!(second["parent"], first["snapshot"]);
    // A changed file is read again; --force reads everything; --no-cache still works.
    std::fs::write(src.join("a.txt"), "alpha changed\n").unwrap();
    let third = env.json(&["backup", src.to_str().unwrap()]);
    assert_eq!(third["summary"]["files_changed"], 1);
    assert_eq!(third["summary"]["files_unmodified"], 2);
    let forced = env.json(&["backup", "--force", src.to_str().unwrap()]);
    assert_eq!(forced["summary"]["files_unmodified"], 0);
    // Content deduplicates; at most the trees of ancestors such as /tmp (whose mtime other
    // processes change) are new.
    let only_trees = |r: &serde_json::Value| r["summary"]["bytes_added"].as_u64().unwrap() < 4096;
    assert!(only_trees(&forced), "{forced}");
    let uncached = env.json(&["--no-cache", "backup", src.to_str().unwrap()]);
    assert!(only_trees(&uncached), "{uncached}");
    // Deleting the cache is harmless: it is rebuilt from the repository.
    std::fs::remove_dir_all(env.path("home/.cache")).unwrap();
    let rebuilt = env.json(&["backup", src.to_str().unwrap()]);
    assert!(only_trees(&rebuilt), "{rebuilt}");
}

#[test]
fn excludes_tags_host_and_time() {
    let env = Env::new();
    env.init();
    let src = env.source();
    std::fs::create_dir_all(src.join("cache/deep")).unwrap();
    std::fs::write(src.join("cache/deep/x"), "x").unwrap();
    std::fs::create_dir_all(src.join("skipme")).unwrap();
    std::fs::write(src.join("skipme/.nobackup"), "").unwrap();
    std::fs::write(src.join("skipme/data"), "d").unwrap();
    std::fs::write(env.path("excludes"), "# comment\n*.log\n").unwrap();
    let cache_pattern = format!("{}/cache", src.display());
    env.ok(&[
        "backup",
        src.to_str().unwrap(),
        "--exclude",
        &cache_pattern,
        "--exclude-file",
        env.path("excludes").to_str().unwrap(),
        "--exclude-if-present",
        ".nobackup",
        "--tag",
        "nightly,db",
        "--host",
        "db1",
        "--time",
        "2024-01-02 03:04:05",
        "-x",
    ]);
    let listing = env.ok(&["ls", "latest"]);
    assert!(listing.contains("/a.txt"), "{listing}");
    assert!(!listing.contains("b.log"), "{listing}");
    assert!(!listing.contains("/cache"), "{listing}");
    assert!(!listing.contains("skipme"), "{listing}");
    let snaps = env.json(&["snapshots", "--host", "db1", "--tag", "db"]);
    let s = &snaps.as_array().unwrap()[0];
    assert_eq!(s["tags"], serde_json::json!(["nightly", "db"]));
    assert_eq!(s["time"], "2024-01-02T03:04:05Z");
    assert_eq!(
        env.json(&["snapshots", "--host", "other"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    env.fails(&["backup", src.to_str().unwrap(), "--time", "yesterday"], 2);
}

#[test]
fn stdin_and_command_output() {
    let env = Env::new();
    env.init();
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    env.cmd()
        .args(["backup", "--stdin", "--stdin-filename", "db.sql"])
        .write_stdin(data.clone())
        .assert()
        .success();
    let out = env
        .cmd()
        .args(["dump", "latest", "/db.sql"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, data);

    let r = env.json(&[
        "backup",
        "--stdin-from-command",
        "--stdin-filename",
        "listing.txt",
        "--",
        "sh",
        "-c",
        "seq 1 100000",
    ]);
    assert_eq!(r["summary"]["total_bytes"], 588_895);
    let out = env.ok(&["dump", "latest", "/listing.txt"]);
    assert!(out.starts_with("1\n2\n3\n") && out.ends_with("100000\n"));
    let snap = env.json(&["cat", "snapshot", "latest"]);
    assert_eq!(snap["kind"], "command");
    assert_eq!(
        snap["command"],
        serde_json::json!(["sh", "-c", "seq 1 100000"])
    );
}

#[test]
fn a_failing_command_saves_no_snapshot() {
    let env = Env::new();
    env.init();
    let before = env.snapshot_ids().len();
    let err = env.fails(
        &[
            "backup",
            "--stdin-from-command",
            "--",
            "sh",
            "-c",
            "echo partial; exit 7",
        ],
        1,
    );
    assert!(err.contains("exited with status 7"), "{err}");
    assert!(err.contains("no snapshot"), "{err}");
    let err = env.fails(
        &[
            "backup",
            "--stdin-from-command",
            "--",
            "/nonexistent/pg_dump",
        ],
        1,
    );
    assert!(err.contains("cannot start"), "{err}");
    let err = env.fails(
        &[
            "backup",
            "--stdin-from-command",
            "--",
            "sh",
            "-c",
            "kill -9 $$",
        ],
        1,
    );
    assert!(err.contains("signal 9"), "{err}");
    assert_eq!(env.snapshot_ids().len(), before);
    env.fails(&["backup", "--stdin-from-command"], 1);
    env.fails(&["backup"], 1);
    env.fails(&["backup", env.path("does-not-exist").to_str().unwrap()], 1);
    assert_eq!(env.snapshot_ids().len(), before);
}

/// Unreadable entries are reported, the rest is saved, and the exit code is 3. Root reads
/// everything, so as root the backup runs as `nobody` through setpriv.
#[test]
fn unreadable_files_give_an_incomplete_snapshot_and_exit_3() {
    let env = Env::new();
    let root = nix::unistd::geteuid().is_root();
    let src = env.source();
    std::fs::write(src.join("secret"), "top secret").unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::create_dir(src.join("locked")).unwrap();
    std::fs::write(src.join("locked/inner"), "x").unwrap();
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    if root {
        std::fs::create_dir(env.repo()).unwrap();
        std::os::unix::fs::chown(env.repo(), Some(65534), Some(65534)).unwrap();
    }
    let make = || {
        let mut cmd = if root {
            // Everything but the unreadable entries belongs to nobody.
            std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            for p in [
                "home",
                "src",
                "src/sub",
                "src/a.txt",
                "src/b.log",
                "src/sub/c.txt",
                "password",
            ] {
                std::os::unix::fs::chown(env.path(p), Some(65534), Some(65534)).unwrap();
            }
            let mut c = assert_cmd::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                env!("CARGO_BIN_EXE_cairn"),
            ]);
            c
        } else {
            assert_cmd::Command::new(env!("CARGO_BIN_EXE_cairn"))
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", env.path("home"))
            .env("XDG_CACHE_HOME", env.path("home/.cache"))
            .env("CAIRN_KDF_PARAMS", "1024,1,1")
            .env("CAIRN_REPOSITORY", env.repo())
            .env("CAIRN_PASSWORD_FILE", env.path("password"));
        cmd
    };
    make().arg("init").assert().success();
    let out = make()
        .args(["backup", "--json", src.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("secret") && stderr.contains("ermission denied"),
        "{stderr}"
    );
    assert!(stderr.contains("locked"), "{stderr}");
    let r = common::last_json(&out.stdout);
    assert_eq!(r["incomplete"], true);
    assert_eq!(r["summary"]["errors"], 2);
    // The readable files were saved and restore.
    std::fs::set_permissions(src.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = env.path("out");
    env.cmd()
        .args(["restore", "latest", "--target", target.to_str().unwrap()])
        .assert()
        .success();
    assert_eq!(
        std::fs::read(restored(&target, &src).join("sub/c.txt"))
            .unwrap()
            .len(),
        200_000
    );
    assert!(!restored(&target, &src).join("secret").exists());
    env.cmd()
        .arg("snapshots")
        .assert()
        .success()
        .stdout(contains("incomplete"));
}

#[test]
fn one_file_system_keeps_mount_points_empty() {
    let env = Env::new();
    env.init();
    let src = env.source();
    let Some(_mnt) = common::Tmpfs::mount(&src.join("mnt"), "1m") else {
        return;
    };
    std::fs::write(src.join("mnt/on-other-fs"), "x").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    assert!(env.ok(&["ls", "latest"]).contains("on-other-fs"));
    env.ok(&["backup", "-x", src.to_str().unwrap()]);
    let listing = env.ok(&["ls", "latest"]);
    assert!(
        listing.contains(&format!("{}/mnt\n", src.display())),
        "{listing}"
    );
    assert!(!listing.contains("on-other-fs"), "{listing}");
}

#[test]
fn cache_dir_and_quiet() {
    let env = Env::new();
    env.init();
    let src = env.source();
    let cache = env.path("my-cache");
    let out = env
        .cmd()
        .env("CAIRN_CACHE_DIR", &cache)
        .args(["-q", "backup", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "-q printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().any(|f| f.ends_with(".redb")), "{files:?}");
}

/// restic's everyday selection flags: --iexclude, --exclude-caches, --exclude-larger-than,
/// --files-from and --files-from-raw.
#[test]
fn restic_selection_flags_choose_what_is_backed_up() {
    let env = Env::new();
    env.init();
    let src = env.source();
    std::fs::write(src.join("PHOTO.JPG"), "jpeg").unwrap();
    std::fs::create_dir_all(src.join("cache")).unwrap();
    std::fs::write(
        src.join("cache/CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n",
    )
    .unwrap();
    std::fs::write(src.join("cache/blob"), "cached").unwrap();
    std::fs::create_dir_all(src.join("fake")).unwrap();
    std::fs::write(src.join("fake/CACHEDIR.TAG"), "not the signature").unwrap();
    let s = src.to_str().unwrap();
    env.ok(&[
        "backup",
        s,
        "--iexclude",
        "*.jpg",
        "--exclude-caches",
        "--exclude-larger-than",
        "100K",
    ]);
    let listing = env.ok(&["ls", "latest"]);
    for gone in ["PHOTO.JPG", "cache/blob", "sub/c.txt"] {
        assert!(!listing.contains(gone), "{gone} was backed up:\n{listing}");
    }
    for kept in ["a.txt", "fake/CACHEDIR.TAG", "b.log"] {
        assert!(listing.contains(kept), "{kept} is missing:\n{listing}");
    }
    env.fails(&["backup", s, "--exclude-larger-than", "big"], 2);

    // Paths from files: lines (comments and blank lines skipped), and NUL-separated.
    let odd = src.join("with\nnewline");
    std::fs::write(&odd, "odd").unwrap();
    let list = env.path("list.txt");
    std::fs::write(
        &list,
        format!("# what to save\n\n{}\n", src.join("a.txt").display()),
    )
    .unwrap();
    let raw = env.path("list.raw");
    let mut bytes = odd.as_os_str().as_encoded_bytes().to_vec();
    bytes.push(0);
    std::fs::write(&raw, bytes).unwrap();
    env.ok(&[
        "backup",
        "--files-from",
        list.to_str().unwrap(),
        "--files-from-raw",
        raw.to_str().unwrap(),
    ]);
    let listing = env.ok(&["ls", "latest"]);
    assert!(listing.contains("a.txt"), "{listing}");
    assert!(!listing.contains("b.log"), "{listing}");
    assert!(listing.contains("with"), "{listing}");
}

/// `snapshots --latest N` shows the newest N of each host and set of paths; `--compact`
/// fewer columns.
#[test]
fn snapshots_latest_and_compact() {
    let env = Env::new();
    env.init();
    let src = env.source();
    let other = env.path("other");
    std::fs::create_dir_all(&other).unwrap();
    for _ in 0..3 {
        env.ok(&["backup", src.to_str().unwrap()]);
        env.ok(&["backup", other.to_str().unwrap()]);
    }
    let all = env.snapshot_ids();
    assert_eq!(all.len(), 6);
    let latest = env.json(&["snapshots", "--latest", "1"]);
    let ids: Vec<&str> = latest
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{latest}");
    assert!(
        ids.iter().all(|id| all[4..].iter().any(|a| a == id)),
        "{ids:?} {all:?}"
    );
    assert_eq!(
        env.json(&["snapshots", "--latest", "2"])
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let compact = env.ok(&["snapshots", "--compact"]);
    let header = compact.lines().next().unwrap();
    assert!(
        header.contains("host") && !header.contains("kind"),
        "{compact}"
    );
    assert!(compact.contains("6 snapshots"), "{compact}");
}

/// `latest` narrowed by --host/--tag/--path wherever a snapshot is named, and the
/// `SNAPSHOT:PATH` form of ls and dump.
#[test]
fn latest_is_narrowed_by_filters_and_takes_a_subpath() {
    let env = Env::new();
    env.init();
    let src = env.source();
    let s = src.to_str().unwrap();
    env.ok(&["backup", s, "-H", "alpha"]);
    std::fs::write(src.join("a.txt"), "changed on beta\n").unwrap();
    env.ok(&["backup", s, "-H", "beta", "--tag", "nightly"]);
    let a_txt = format!("{s}/a.txt");
    let dump = |args: &[&str]| {
        let out = env.cmd().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        dump(&["dump", &format!("latest:{a_txt}")]),
        "changed on beta\n"
    );
    assert_eq!(dump(&["dump", "latest", &a_txt, "-H", "alpha"]), "alpha\n");
    assert_eq!(
        dump(&["dump", &format!("latest:{a_txt}"), "--host", "alpha"]),
        "alpha\n"
    );
    assert_eq!(
        dump(&["dump", &format!("latest:{a_txt}"), "--tag", "nightly"]),
        "changed on beta\n"
    );
    let ls = env.ok(&["ls", &format!("latest:{s}/sub"), "-H", "alpha"]);
    assert!(ls.contains("c.txt") && !ls.contains("a.txt"), "{ls}");
    let target = env.path("out");
    env.ok(&[
        "restore",
        "latest",
        "--host",
        "alpha",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(restored(&target, &src).join("a.txt")).unwrap(),
        "alpha\n"
    );
    let err = env.fails(&["ls", "latest", "-H", "gamma"], 1);
    assert!(err.contains("no snapshot matches"), "{err}");
    env.fails(&["dump", "latest:/x", "/y"], 1);
}

/// Every file below `dir` with its size, to see that a dry run changed nothing.
fn listing(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), md.len()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_dry_run_says_what_a_backup_would_add_and_stores_nothing() {
    let env = Env::new();
    env.init();
    let src = env.source();
    let s = src.to_str().unwrap();
    let before = listing(&env.repo());
    let dry = env.json(&["backup", "--dry-run", s]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert!(dry["snapshot_id"].is_null(), "{dry}");
    assert_eq!(dry["summary"]["files_new"], 3, "{dry}");
    let would_add = dry["summary"]["bytes_added"].as_u64().unwrap();
    assert!(would_add > 0, "{dry}");
    assert_eq!(
        listing(&env.repo()),
        before,
        "a dry run writes nothing to the repository"
    );
    assert!(env.snapshot_ids().is_empty());
    // The short form, in text: worded as a dry run.
    let text = env.ok(&["backup", "-n", s]);
    assert!(text.contains("dry run: nothing was stored"), "{text}");
    assert_eq!(listing(&env.repo()), before);

    // The real backup adds what the dry run said, and reads every file: the dry run left no
    // files-cache record for it to trust.
    let real = env.json(&["backup", s]);
    // (Up to a few bytes: the folder trees carry times, such as a folder's access time,
    // that the dry run's own reading may have changed.)
    let added = real["summary"]["bytes_added"].as_u64().unwrap();
    assert!(
        added.abs_diff(would_add) <= 64,
        "{added} vs {would_add}: {real}"
    );
    assert_eq!(real["summary"]["files_new"], 3, "{real}");
    // Against a repository with data: unchanged files come from the files cache, and still
    // nothing is written (no lease either, which is what lets it run on read-only storage).
    let before = listing(&env.repo());
    let again = env.json(&["backup", "-n", s]);
    assert_eq!(again["summary"]["files_unmodified"], 3, "{again}");
    assert_eq!(again["summary"]["bytes_read"], 0, "{again}");
    assert_eq!(listing(&env.repo()), before);
}

/// Without its files cache (a new cache folder, as in a throwaway container), a backup still
/// takes unchanged files from the parent snapshot instead of reading them; `--parent` names
/// the parent when the paths differ, and is recorded.
#[test]
fn the_parent_snapshot_spares_reading_what_the_files_cache_does_not_know() {
    let env = Env::new();
    env.init();
    let src = env.source();
    let s = src.to_str().unwrap();
    let first = env.json(&["backup", s]);
    let first_id = first["snapshot_id"].as_str().unwrap().to_string();
    std::fs::write(src.join("b.log"), "beta, changed\n").unwrap();

    let fresh = |name: &str| env.path(name).to_str().unwrap().to_string();
    let second = env.json(&["--cache-dir", &fresh("cache-2"), "backup", s]);
    assert_eq!(second["parent"], first_id.as_str(), "{second}");
    let sum = &second["summary"];
    assert_eq!(sum["files_unmodified"], 2, "{second}");
    assert_eq!(sum["files_changed"], 1, "{second}");
    assert_eq!(
        sum["bytes_read"], 14,
        "only the changed file is read: {second}"
    );

    // `--force` reads everything, parent or not.
    let forced = env.json(&["--cache-dir", &fresh("cache-3"), "backup", "--force", s]);
    assert_eq!(forced["summary"]["files_unmodified"], 0, "{forced}");

    // Other paths (here the tree and a folder inside it) have no automatic parent ...
    let sub = src.join("sub");
    let sub = sub.to_str().unwrap();
    let other = env.json(&["--cache-dir", &fresh("cache-4"), "backup", s, sub]);
    assert!(other["parent"].is_null(), "{other}");
    assert_eq!(other["summary"]["files_unmodified"], 0, "{other}");
    // ... but --parent names one, whose files are then taken as unchanged.
    let named = env.json(&[
        "--cache-dir",
        &fresh("cache-5"),
        "backup",
        "--parent",
        &first_id[..8],
        s,
        sub,
    ]);
    assert_eq!(named["parent"], first_id.as_str(), "{named}");
    assert_eq!(named["summary"]["files_unmodified"], 2, "{named}");
    assert_eq!(named["summary"]["bytes_read"], 14, "{named}");
    let bad = env.fails(&["backup", "--parent", "ffffffff", s], 1);
    assert!(bad.contains("ffffffff"), "{bad}");
}
