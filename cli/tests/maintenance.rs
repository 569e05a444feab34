#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! forget, prune, check, repair, leases, tag and protect from the command line.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{packs, restored, Env};
use predicates::str::contains;

fn repo_bytes(env: &Env) -> u64 {
    packs(&env.repo())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Four monthly snapshots of a folder whose big file changes every time.
fn history(env: &Env) -> std::path::PathBuf {
    env.init();
    let src = env.source();
    for m in 1..=4 {
        let data = cairn_repo::testing::Rng::new(m as u64).bytes(1_500_000);
        std::fs::write(src.join("big.bin"), data).unwrap();
        env.ok(&[
            "backup",
            src.to_str().unwrap(),
            "--time",
            &format!("2026-0{m}-15 12:00:00"),
        ]);
    }
    src
}

#[test]
fn forget_explains_and_prune_frees_the_space() {
    let env = Env::new();
    let src = history(&env);
    let before = repo_bytes(&env);
    let index_files = || {
        std::fs::read_dir(env.repo().join("default/index"))
            .unwrap()
            .count()
    };
    assert!(index_files() >= 4, "one index file per backup");
    let plan = env.json(&[
        "forget",
        "--keep-last",
        "1",
        "--keep-monthly",
        "2",
        "--dry-run",
    ]);
    let g = &plan["groups"][0];
    assert_eq!(g["keep"].as_array().unwrap().len(), 2);
    assert_eq!(
        g["keep"][0]["reasons"],
        serde_json::json!(["last", "monthly"])
    );
    assert_eq!(g["keep"][1]["reasons"], serde_json::json!(["monthly"]));
    assert_eq!(g["remove"].as_array().unwrap().len(), 2);
    assert_eq!(env.snapshot_ids().len(), 4, "a dry run changes nothing");
    let text = env.ok(&[
        "forget",
        "--keep-last",
        "1",
        "--keep-monthly",
        "2",
        "--dry-run",
    ]);
    assert!(
        text.contains("keep") && text.contains("(last, monthly)") && text.contains("remove"),
        "{text}"
    );

    let dry = env.json(&["prune", "--dry-run"]);
    assert_eq!(
        dry["plan"]["delete_packs"].as_array().unwrap().len(),
        0,
        "nothing is unused yet"
    );
    env.ok(&["forget", "--keep-last", "1", "--keep-monthly", "2"]);
    assert_eq!(env.snapshot_ids().len(), 2);
    let dry = env.json(&["prune", "--dry-run"]);
    let to_free = dry["plan"]["delete_bytes"].as_u64().unwrap()
        + dry["plan"]["repack_unused_bytes"].as_u64().unwrap();
    assert!(to_free > 2_000_000, "{dry}");
    assert_eq!(repo_bytes(&env), before, "a dry run deletes nothing");
    // --max-repack-size bounds what one run reads for repacking.
    let bounded = env.json(&["prune", "--dry-run", "--max-repack-size", "1K"]);
    assert_eq!(
        bounded["plan"]["repack_packs"].as_array().unwrap().len(),
        0,
        "{bounded}"
    );
    env.fails(&["prune", "--dry-run", "--max-unused", "lots"], 2);
    let r = env.json(&["prune"]);
    assert!(
        r["pending_record"].is_null(),
        "no writer runs, so space comes back at once: {r}"
    );
    assert!(
        r["swept"]["bytes_freed"].as_u64().unwrap() > 2_000_000,
        "{r}"
    );
    assert!(repo_bytes(&env) < before - 2_000_000);
    // The plan's estimate and the result are in the same units: the repository's net change
    // (what repacking wrote counted against what was deleted).
    let (b, a) = (
        r["pack_bytes_before"].as_u64().unwrap(),
        r["pack_bytes_after"].as_u64().unwrap(),
    );
    assert_eq!(a, repo_bytes(&env), "{r}");
    // (The estimate counts unused blob bytes; pack headers go too, so it is a little low.)
    assert!(
        (b - a).abs_diff(to_free) <= to_free / 10,
        "freed {} of {to_free} planned: {r}",
        b - a
    );
    assert_eq!(
        r["swept"]["bytes_freed"].as_u64().unwrap() - r["repacked_into_bytes"].as_u64().unwrap(),
        b - a,
        "{r}"
    );
    assert_eq!(index_files(), 1, "prune merges the index into one file");
    env.ok(&["check", "--read-data"]);
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(restored(&target, &src).join("big.bin")).unwrap(),
        std::fs::read(src.join("big.bin")).unwrap()
    );
    // forget --prune in one go, by id; a real run words its plan as done, not as a plan.
    let ids = env.snapshot_ids();
    let text = env.ok(&["forget", &ids[0][..10], "--prune"]);
    assert!(
        !text.contains("will ") && !text.contains("would "),
        "{text}"
    );
    assert!(
        text.contains("condemned ") && text.contains("freed "),
        "{text}"
    );
    let dry = env.ok(&["prune", "--dry-run"]);
    assert!(dry.contains("would free about"), "{dry}");
    assert_eq!(env.snapshot_ids().len(), 1);
    env.ok(&["check", "--read-data"]);
}

#[test]
fn protected_snapshots_are_never_forgotten() {
    let env = Env::new();
    history(&env);
    let ids = env.snapshot_ids();
    env.ok(&["protect", &ids[0][..10]]);
    let held = env.snapshot_ids();
    env.ok(&["forget", "--keep-last", "1"]);
    let left = env.json(&["snapshots"]);
    let left = left.as_array().unwrap();
    assert_eq!(left.len(), 2);
    assert!(left
        .iter()
        .any(|s| s["tags"] == serde_json::json!(["hold"])));
    // Forgetting it by id is refused too, until it is unprotected.
    let held_id = left
        .iter()
        .find(|s| s["tags"] == serde_json::json!(["hold"]))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let err = env.fails(&["forget", &held_id[..10]], 1);
    assert!(err.contains("protected"), "{err}");
    env.ok(&["unprotect", &held_id[..10]]);
    env.ok(&["forget", "--keep-last", "1"]);
    assert_eq!(env.snapshot_ids().len(), 1);
    assert_ne!(held, env.snapshot_ids());
}

#[test]
fn tags_are_edited_by_new_snapshots() {
    let env = Env::new();
    history(&env);
    let id = env.snapshot_ids()[0].clone();
    let changed = env.json(&["tag", &id[..10], "--add", "a", "--add", "b"]);
    let new = changed[0]["new"].as_str().unwrap().to_string();
    let s = env.json(&["cat", "snapshot", &new[..10]]);
    assert_eq!(s["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(s["original"], id.as_str());
    let changed = env.json(&["tag", &new[..10], "--remove", "a"]);
    let newer = changed[0]["new"].as_str().unwrap().to_string();
    assert_eq!(
        env.json(&["cat", "snapshot", &newer[..10]])["tags"],
        serde_json::json!(["b"])
    );
    assert_eq!(
        env.json(&["cat", "snapshot", &newer[..10]])["original"],
        id.as_str(),
        "original points at the first version"
    );
    let changed = env.json(&["tag", &newer[..10], "--set", "x", "--set", "y"]);
    let last = changed[0]["new"].as_str().unwrap().to_string();
    assert_eq!(
        env.json(&["cat", "snapshot", &last[..10]])["tags"],
        serde_json::json!(["x", "y"])
    );
    assert_eq!(env.snapshot_ids().len(), 4);
    env.fails(&["cat", "snapshot", &id[..10]], 1);
}

#[test]
fn prune_waits_for_a_running_backup_then_sweeps() {
    let env = Env::new();
    history(&env);
    env.ok(&["forget", "--keep-last", "1"]);
    // A backup reading from a pipe holds its lease until its input ends.
    let mut backup = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["backup", "--stdin", "--stdin-filename", "slow.sql"])
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_PASSWORD_FILE", env.path("password"))
        .env("HOME", env.path("home"))
        .env("CAIRN_KDF_PARAMS", "1024,1,1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut pipe = backup.stdin.take().unwrap();
    pipe.write_all(b"first rows\n").unwrap();
    let start = std::time::Instant::now();
    while env.json(&["leases"]).as_array().unwrap().is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "the backup took no lease"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let leases = env.ok(&["leases"]);
    assert!(leases.contains("backup"), "{leases}");
    let r = env.json(&["prune"]);
    assert!(r["pending_record"].is_string(), "{r}");
    assert_eq!(r["swept"]["packs_deleted"], 0);
    let text = env.ok(&["prune"]);
    assert!(text.contains("waits for 1 running writers"), "{text}");
    env.ok(&["check"]);
    pipe.write_all(b"last rows\n").unwrap();
    drop(pipe);
    assert!(backup.wait().unwrap().success());
    let r = env.json(&["prune"]);
    assert!(r["pending_record"].is_null(), "{r}");
    assert!(r["swept"]["packs_deleted"].as_u64().unwrap() > 0, "{r}");
    env.ok(&["check", "--read-data"]);
    assert_eq!(
        env.ok(&["dump", "latest", "/slow.sql"]),
        "first rows\nlast rows\n"
    );
    assert!(env.json(&["leases"]).as_array().unwrap().is_empty());
}

#[test]
fn check_names_damage_in_every_object_type() {
    let env = Env::new();
    history(&env);
    env.ok(&["check", "--read-data"]);
    let flip = |path: &std::path::Path, at: usize| {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let mut b = std::fs::read(path).unwrap();
        let i = at.min(b.len() - 1);
        b[i] ^= 0x20;
        std::fs::write(path, b).unwrap();
    };
    let name = |p: &std::path::Path| p.file_name().unwrap().to_str().unwrap().to_string();
    // A flipped byte inside a data pack: found by --read-data, named by pack and blob.
    let data_pack = packs(&env.repo())
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    flip(&data_pack, 1000);
    env.ok(&["check"]);
    let err = env.fails(&["check", "--read-data"], 1);
    assert!(
        err.contains(&name(&data_pack)) && err.contains("blob"),
        "{err}"
    );
    flip(&data_pack, 1000);
    // Truncated: found without reading data.
    let len = std::fs::metadata(&data_pack).unwrap().len();
    let original = std::fs::read(&data_pack).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data_pack)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let err = env.fails(&["check"], 1);
    assert!(
        err.contains(&name(&data_pack)) && err.contains("truncated"),
        "{err}"
    );
    std::fs::write(&data_pack, &original).unwrap();
    // A damaged pack header.
    flip(&data_pack, original.len() - 10);
    let err = env.fails(&["check"], 1);
    assert!(err.contains(&name(&data_pack)), "{err}");
    std::fs::write(&data_pack, &original).unwrap();
    env.ok(&["check", "--read-data"]);
    // Index file, snapshot, key slot.
    for dir in ["index", "snapshots", "keys"] {
        let f = std::fs::read_dir(env.repo().join("default").join(dir))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let orig = std::fs::read(&f).unwrap();
        flip(&f, 40);
        let out = env.cmd().args(["--no-cache", "check"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if dir == "keys" && err.contains("wrong password") {
            // The only slot was damaged: the repository cannot be opened, which says so.
            assert_eq!(out.status.code(), Some(12));
        } else {
            assert_eq!(out.status.code(), Some(1), "{dir}: {err}");
            assert!(err.contains(&name(&f)), "{dir}: {err}");
        }
        std::fs::write(&f, orig).unwrap();
    }
    // A damaged tree pack (the smallest packs hold trees): named by plain check.
    let tree_pack = packs(&env.repo())
        .into_iter()
        .min_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let orig = std::fs::read(&tree_pack).unwrap();
    flip(&tree_pack, 30);
    let err = env.fails(&["--no-cache", "check"], 1);
    assert!(err.contains(&name(&tree_pack)), "{err}");
    std::fs::write(&tree_pack, orig).unwrap();
    // A missing pack.
    std::fs::remove_file(&data_pack).unwrap();
    let err = env.fails(&["check"], 1);
    assert!(
        err.contains(&name(&data_pack)) && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn read_data_subsets_cover_everything_over_several_runs() {
    let env = Env::new();
    history(&env);
    let total = packs(&env.repo()).len() as u64;
    let mut read = 0;
    for n in 1..=3 {
        let r = env.json(&["check", "--read-data-subset", &format!("{n}/3")]);
        read += r["packs_read"].as_u64().unwrap();
    }
    assert_eq!(read, total);
    let r = env.json(&["check", "--read-data-subset", "100%"]);
    assert_eq!(r["packs_read"].as_u64().unwrap(), total);
    let r = env.json(&["check", "--read-data-subset", "1K"]);
    assert!(r["packs_read"].as_u64().unwrap() >= 1 && r["packs_read"].as_u64().unwrap() <= total);
    env.fails(&["check", "--read-data-subset", "7/3"], 1);
}

#[test]
fn repair_index_and_snapshots_recover_what_is_left() {
    let env = Env::new();
    let src = history(&env);
    // Losing every index file: repair index rebuilds it from the packs.
    for f in std::fs::read_dir(env.repo().join("default/index")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    env.fails(&["--no-cache", "ls", "latest"], 1);
    let r = env.json(&["repair", "index"]);
    assert!(r["packs_indexed"].as_u64().unwrap() > 0);
    env.ok(&["check", "--read-data"]);
    // Losing a data pack: repair snapshots keeps everything else restorable.
    let data_pack = packs(&env.repo())
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    std::fs::remove_file(&data_pack).unwrap();
    env.ok(&["repair", "index"]);
    env.fails(&["check"], 1);
    let dry = env.json(&["repair", "snapshots", "--dry-run"]);
    assert!(!dry.as_array().unwrap().is_empty());
    let r = env.json(&["repair", "snapshots", "--forget"]);
    let repaired: Vec<_> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["repaired"].as_str().unwrap().to_string())
        .collect();
    assert!(
        r[0]["lost"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().ends_with("big.bin")),
        "{r}"
    );
    env.ok(&["check"]);
    let snap = env.json(&["cat", "snapshot", &repaired[0][..10]]);
    assert!(snap["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "repaired"));
    // Every file not reported lost restores intact; the lost ones are left out.
    for (i, r) in r.as_array().unwrap().iter().enumerate() {
        let target = env.path(&format!("out{i}"));
        env.ok(&[
            "restore",
            &repaired[i][..10],
            "--target",
            target.to_str().unwrap(),
        ]);
        let lost: Vec<&str> = r["lost"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        for name in ["a.txt", "b.log", "sub/c.txt"] {
            let out = restored(&target, &src).join(name);
            if lost.iter().any(|l| l.ends_with(&format!("/{name}"))) {
                assert!(!out.exists(), "{name} was reported lost but restored");
            } else {
                assert_eq!(
                    std::fs::read(&out).unwrap(),
                    std::fs::read(src.join(name)).unwrap(),
                    "{name}"
                );
            }
        }
    }
    env.cmd()
        .args(["snapshots"])
        .assert()
        .success()
        .stdout(contains("repaired"));
}

/// A snapshot that claims an old time (as a compromised client can make it claim) is judged
/// by when the storage received it with `--by-received-time`: `--keep-last 1` then keeps
/// the snapshot received last, not the one claiming to be newest.
#[test]
fn forget_by_received_time_ignores_the_time_a_snapshot_claims() {
    let env = Env::new();
    env.init();
    let src = env.source();
    let s = src.to_str().unwrap();
    env.ok(&["backup", s, "--time", "2030-01-01 00:00:00"]);
    std::thread::sleep(std::time::Duration::from_millis(50));
    env.ok(&["backup", s, "--time", "2020-01-01 00:00:00"]);
    let ids = env.snapshot_ids();
    let decide = |extra: &[&str]| {
        let mut args = vec!["forget", "--keep-last", "1", "--dry-run"];
        args.extend_from_slice(extra);
        let out = env.json(&args);
        let group = &out["groups"][0];
        let kept: Vec<String> = group["keep"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["id"].as_str().unwrap().to_string())
            .collect();
        kept
    };
    let claimed = decide(&[]);
    let received = decide(&["--by-received-time"]);
    assert_eq!(claimed.len(), 1);
    assert_eq!(received.len(), 1);
    assert_ne!(claimed, received, "the claimed time decided both");
    // The one received last is the one claiming 2020.
    let newest_received = env
        .json(&["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["time"].as_str().unwrap().starts_with("2020"))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(received, vec![newest_received]);
    assert!(ids.len() == 2);
}

/// `cairn cache` lists the caches; `--cleanup` removes only those not used for --max-age
/// days, and a removed cache is rebuilt by the next command.
#[test]
fn cache_lists_and_cleans_old_caches() {
    let env = Env::new();
    env.init();
    let src = env.source();
    env.ok(&["backup", src.to_str().unwrap()]);
    let listed = env.json(&["cache"]);
    let caches = listed["caches"].as_array().unwrap();
    assert_eq!(caches.len(), 1, "{listed}");
    assert_eq!(caches[0]["old"], false);
    // A second cache, last used 40 days ago.
    let folder = std::path::PathBuf::from(listed["folder"].as_str().unwrap());
    let stale = folder.join(format!("{}.redb", "ab".repeat(32)));
    std::fs::write(&stale, b"old cache").unwrap();
    let forty_days = std::time::SystemTime::now() - std::time::Duration::from_secs(40 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(forty_days)
        .unwrap();
    assert!(env.ok(&["cache"]).contains("--cleanup"));
    env.ok(&["cache", "--cleanup", "--max-age", "60"]);
    assert!(stale.exists(), "removed although younger than --max-age");
    let out = env.json(&["cache", "--cleanup"]);
    assert!(!stale.exists());
    assert_eq!(
        out["caches"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["removed"] == true)
            .count(),
        1
    );
    // The repository's own cache is gone too when removed, and simply rebuilt.
    std::fs::remove_file(folder.join(format!("{}.redb", caches[0]["id"].as_str().unwrap())))
        .unwrap();
    assert!(env.ok(&["snapshots"]).contains("1 snapshots"));
}
