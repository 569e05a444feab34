#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Looking into snapshots: snapshots, ls, find, diff, dump, cat, stats, and snapshot ids.

mod common;

use common::Env;
use predicates::str::contains;

fn two_snapshots(env: &Env) -> (std::path::PathBuf, String, String) {
    env.init();
    let src = env.source();
    let a = env.json(&["backup", src.to_str().unwrap()])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(src.join("a.txt"), "alpha two\n").unwrap();
    std::fs::remove_file(src.join("b.log")).unwrap();
    std::fs::write(src.join("new.txt"), "new\n").unwrap();
    std::fs::set_permissions(
        src.join("sub/c.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let b = env.json(&["backup", src.to_str().unwrap()])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    (src, a, b)
}

#[test]
fn ls_lists_recursively_and_below_a_path() {
    let env = Env::new();
    let (src, _, _) = two_snapshots(&env);
    let all = env.ok(&["ls", "latest"]);
    for p in ["/a.txt", "/new.txt", "/sub/c.txt", "/link"] {
        assert!(
            all.contains(&format!("{}{p}\n", src.display())),
            "{p} in {all}"
        );
    }
    let sub = format!("{}/sub", src.display());
    let below = env.ok(&["ls", "latest", &sub]);
    assert_eq!(below.lines().count(), 2, "{below}");
    let long = env.ok(&["ls", "--long", "latest", &sub]);
    assert!(long.contains("-0600") && long.contains("200000"), "{long}");
    let json_lines = env.ok(&["--json", "ls", "latest", &sub]);
    let last: serde_json::Value = serde_json::from_str(json_lines.lines().last().unwrap()).unwrap();
    assert_eq!(last["name"], "c.txt");
    assert_eq!(last["size"], 200_000);
    let link = env.ok(&["ls", "--long", "latest", &format!("{}/link", src.display())]);
    assert!(link.contains("-> a.txt"), "{link}");
    env.fails(&["ls", "latest", "/no/such/path"], 1);
}

#[test]
fn snapshot_ids_by_prefix_latest_and_errors() {
    let env = Env::new();
    let (_, a, b) = two_snapshots(&env);
    assert!(env.ok(&["ls", &a[..8]]).contains("b.log"));
    assert!(!env.ok(&["ls", &b[..8]]).contains("b.log"));
    assert!(!env.ok(&["ls", "latest"]).contains("b.log"));
    let err = env.fails(&["ls", "ffffffffffff"], 1);
    assert!(err.contains("no snapshot matches"), "{err}");
    let err = env.fails(&["ls", "not-hex"], 1);
    assert!(err.contains("not a snapshot id"), "{err}");
    // Make an ambiguous prefix: back up until two ids share a first digit.
    let mut ids = env.snapshot_ids();
    let stdin = || {
        let mut c = env.cmd();
        c.args(["backup", "--stdin"]);
        c
    };
    let mut n = 0;
    while {
        let mut firsts: Vec<char> = ids.iter().map(|i| i.chars().next().unwrap()).collect();
        firsts.sort();
        firsts.windows(2).all(|w| w[0] != w[1])
    } {
        stdin().write_stdin(format!("data {n}")).assert().success();
        n += 1;
        ids = env.snapshot_ids();
        assert!(n < 40, "bounded loop");
    }
    let mut firsts: Vec<char> = ids.iter().map(|i| i.chars().next().unwrap()).collect();
    firsts.sort();
    let dup = firsts.windows(2).find(|w| w[0] == w[1]).unwrap()[0];
    let err = env.fails(&["ls", &dup.to_string()], 1);
    assert!(
        err.contains("matches") && err.contains("give more digits"),
        "{err}"
    );
}

#[test]
fn find_diff_and_snapshot_filters() {
    let env = Env::new();
    let (src, a, b) = two_snapshots(&env);
    let found = env.ok(&["find", "*.txt"]);
    assert!(
        found.contains("/sub/c.txt") && found.contains("/new.txt"),
        "{found}"
    );
    assert_eq!(
        found.lines().filter(|l| l.ends_with("/a.txt")).count(),
        2,
        "{found}"
    );
    let found_b = env.ok(&["find", "b.log"]);
    assert_eq!(found_b.lines().count(), 2, "{found_b}");
    assert!(found_b.starts_with(&a[..8]));
    // The count follows the results on stdout; --json has only the matches.
    assert_eq!(
        found_b.lines().last(),
        Some("1 match in 1 of 2 snapshots searched"),
        "{found_b}"
    );
    let json = env.ok(&["--json", "find", "b.log"]);
    assert_eq!(json.lines().count(), 1, "{json}");

    let diff = env.ok(&["diff", &a, &b]);
    let s = src.display();
    assert!(diff.contains(&format!("M    {s}/a.txt")), "{diff}");
    assert!(diff.contains(&format!("-    {s}/b.log")), "{diff}");
    assert!(diff.contains(&format!("+    {s}/new.txt")), "{diff}");
    assert!(diff.contains(&format!("U    {s}/sub/c.txt")), "{diff}");
    assert!(!diff.contains("link"), "{diff}");
    let summary = env.ok(&["--json", "diff", &a, &b]);
    let last: serde_json::Value = serde_json::from_str(summary.lines().last().unwrap()).unwrap();
    assert_eq!(last["summary"]["added"], 1);
    assert_eq!(last["summary"]["removed"], 1);
    assert_eq!(
        env.ok(&["diff", &b, &b])
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        1
    );

    let path = src.to_str().unwrap();
    assert_eq!(
        env.json(&["snapshots", "--path", path])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        env.json(&["snapshots", "--path", "/elsewhere"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn dump_files_and_directories_as_tar() {
    let env = Env::new();
    let (src, _, _) = two_snapshots(&env);
    let out = env
        .cmd()
        .args(["dump", "latest", &format!("{}/sub/c.txt", src.display())])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, vec![b'c'; 200_000]);
    // A directory becomes a tar stream that the system's tar extracts.
    let tar = env
        .cmd()
        .args(["dump", "latest", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
    let x = env.path("x");
    std::fs::create_dir(&x).unwrap();
    let mut child = std::process::Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&x)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &tar.stdout).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let base = x.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(base.join("sub/c.txt")).unwrap().len(),
        200_000
    );
    assert_eq!(
        std::fs::read_to_string(base.join("a.txt")).unwrap(),
        "alpha two\n"
    );
    assert_eq!(
        std::fs::read_link(base.join("link")).unwrap(),
        std::path::Path::new("a.txt")
    );
    // The whole snapshot, and a pipe closed early, are fine too.
    env.cmd().args(["dump", "latest", "/"]).assert().success();
    let mut c = std::process::Command::new("sh");
    c.arg("-c").arg(format!(
        "{} dump latest / | head -c 10 >/dev/null",
        env!("CARGO_BIN_EXE_cairn")
    ));
    c.env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_PASSWORD_FILE", env.path("password"))
        .env("HOME", env.path("home"))
        .env("CAIRN_KDF_PARAMS", "1024,1,1");
    assert!(c.status().unwrap().success());
}

/// `dump --archive zip`: a ZIP archive that unzip tests and extracts, with contents, modes,
/// folders and symlinks; one that fails part way has no central directory.
#[test]
fn dump_a_directory_as_zip() {
    let env = Env::new();
    let (src, _, _) = two_snapshots(&env);
    let zip = env
        .cmd()
        .args(["dump", "latest", src.to_str().unwrap(), "--archive", "zip"])
        .output()
        .unwrap();
    assert!(
        zip.status.success(),
        "{}",
        String::from_utf8_lossy(&zip.stderr)
    );
    let file = env.path("out.zip");
    std::fs::write(&file, &zip.stdout).unwrap();
    let test = std::process::Command::new("unzip")
        .arg("-t")
        .arg(&file)
        .output()
        .expect("unzip (Debian package unzip) must be installed");
    assert!(
        test.status.success(),
        "{}",
        String::from_utf8_lossy(&test.stdout)
    );
    let x = env.path("x");
    let unzip = std::process::Command::new("unzip")
        .args(["-q", "-d"])
        .arg(&x)
        .arg(&file)
        .status()
        .unwrap();
    assert!(unzip.success());
    let base = x.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(base.join("sub/c.txt")).unwrap(),
        vec![b'c'; 200_000]
    );
    assert_eq!(
        std::fs::read_to_string(base.join("a.txt")).unwrap(),
        "alpha two\n"
    );
    assert_eq!(
        std::fs::read_link(base.join("link")).unwrap(),
        std::path::Path::new("a.txt")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&base.join("a.txt")), mode(&src.join("a.txt")));
    // Deflated: 200,000 repeated bytes take far less.
    assert!(zip.stdout.len() < 20_000, "{}", zip.stdout.len());
    // A bad value is a usage error.
    let bad = env
        .cmd()
        .args(["dump", "latest", "/", "--archive", "rar"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));

    // Damage every pack: the dump fails, and what it wrote is no archive.
    for p in common::packs(&env.repo()) {
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len / 2).unwrap();
    }
    let broken = env
        .cmd()
        .args(["--no-cache", "dump", "latest", "/", "--archive", "zip"])
        .output()
        .unwrap();
    assert!(!broken.status.success());
    let file = env.path("broken.zip");
    std::fs::write(&file, &broken.stdout).unwrap();
    let test = std::process::Command::new("unzip")
        .arg("-t")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!test.status.success());
}

#[test]
fn cat_and_stats() {
    let env = Env::new();
    let (_, a, _) = two_snapshots(&env);
    let config = env.json(&["cat", "config"]);
    assert_eq!(config["tenant"], "default");
    assert_eq!(config["chunker"]["avg"], 65536);
    let snap = env.json(&["cat", "snapshot", &a[..10]]);
    assert_eq!(snap["id"], a.as_str());
    let tree = env.json(&["cat", "tree", &a[..10]]);
    assert!(tree["nodes"].as_array().unwrap().len() == 1);
    let sub = tree["nodes"][0]["subtree"].as_str().unwrap().to_string();
    let subtree = env.json(&["cat", "tree", &sub]);
    assert!(subtree["nodes"].is_array());
    let index_name = std::fs::read_dir(env.repo().join("default/index"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let index = env.json(&["cat", "index", index_name.to_str().unwrap()]);
    let pack = index["packs"][0]["id"].as_str().unwrap().to_string();
    let header = env.json(&["cat", "pack", &pack]);
    assert_eq!(header["blobs"], index["packs"][0]["blobs"]);
    let key = env.json(&["key", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        env.json(&["cat", "key", &key[..8]])["slot"]["kdf"],
        "argon2id"
    );
    env.fails(&["cat", "bogus"], 1);

    let stats = env.json(&["stats"]);
    assert_eq!(stats["snapshots"], 2);
    assert!(stats["logical_bytes"].as_u64().unwrap() > 400_000);
    assert!(stats["dedup_ratio"].as_f64().unwrap() > 1.5, "{stats}");
    assert!(
        stats["compression_ratio"].as_f64().unwrap() > 10.0,
        "{stats}"
    );
    env.cmd()
        .arg("stats")
        .assert()
        .success()
        .stdout(contains("Deduplication"));
}

/// Odd entries in a ZIP dump: an empty file, a name that is not UTF-8, a time before 1970
/// and one before 1980. Both `unzip -t` and Python's `zipfile` accept the archive, and
/// extracting it gives back every file's bytes and (from 1970 on) modification time.
#[test]
fn dump_zip_of_odd_entries_is_read_back_exactly() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    env.init();
    let src = env.path("odd");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(
        src.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
        b"latin-1 name\n",
    )
    .unwrap();
    std::fs::write(src.join("d/old"), b"from 1966\n").unwrap();
    std::fs::write(src.join("d/y1975"), b"from 1975\n").unwrap();
    let set = |p: &std::path::Path, secs: i64| {
        let t = if secs >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_secs((-secs) as u64)
        };
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(t).unwrap();
    };
    set(&src.join("d/old"), -110_000_000);
    set(&src.join("d/y1975"), 160_000_000);
    env.ok(&["backup", src.to_str().unwrap()]);
    let zip = env
        .cmd()
        .args(["dump", "latest", src.to_str().unwrap(), "--archive", "zip"])
        .output()
        .unwrap();
    assert!(
        zip.status.success(),
        "{}",
        String::from_utf8_lossy(&zip.stderr)
    );
    let file = env.path("odd.zip");
    std::fs::write(&file, &zip.stdout).unwrap();
    let test = std::process::Command::new("unzip")
        .arg("-t")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}",
        String::from_utf8_lossy(&test.stdout)
    );
    let py = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); bad = z.testzip(); assert bad is None, bad; print(len(z.infolist()))")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let x = env.path("x");
    let unzip = std::process::Command::new("unzip")
        .args(["-q", "-d"])
        .arg(&x)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        unzip.status.success(),
        "{}",
        String::from_utf8_lossy(&unzip.stderr)
    );
    let base = x.join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(base.join("empty")).unwrap(), b"");
    assert_eq!(
        std::fs::read(base.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"))).unwrap(),
        b"latin-1 name\n"
    );
    use std::os::unix::fs::MetadataExt;
    let mtime = |p: &std::path::Path| std::fs::metadata(p).unwrap().mtime();
    assert_eq!(mtime(&base.join("d/y1975")), 160_000_000, "a 1975 time");
    // Before 1970 only the DOS time (1980 at the earliest) is taken; never a time to come.
    assert!(
        mtime(&base.join("d/old")) <= 315_532_800 + 86_400,
        "a 1966 time"
    );
}
