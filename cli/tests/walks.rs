#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Commands that walk a snapshot's trees (ls, find, diff, dump, restore) on trees of hostile
//! shape: nested 10,000 levels deep, or a tree graph that shares subtrees so that 40 stored
//! trees expand to 2^40 paths.

mod common;
#[path = "common/crafted.rs"]
mod crafted;

use std::time::Duration;

use common::Env;

/// A safety net only: a walk without end would otherwise hang the test run.
const NET: Duration = Duration::from_secs(300);

fn run(env: &Env, args: &[&str]) -> std::process::Output {
    env.cmd().args(args).timeout(NET).output().unwrap()
}

fn ok(env: &Env, args: &[&str]) -> Vec<u8> {
    let out = run(env, args);
    assert!(
        out.status.success(),
        "cairn {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn ls_find_diff_and_dump_walk_a_tree_10000_levels_deep() {
    let env = Env::new();
    env.init();
    let deep = crafted::deep_snapshot(&env, 10_000).to_hex();
    let deeper = crafted::deep_snapshot(&env, 10_001).to_hex();

    let ls = ok(&env, &["ls", &deep]);
    assert_eq!(
        ls.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(),
        10_002
    );
    let deepest = format!("{}/f", "/d".repeat(10_000));
    assert!(ls.split(|b| *b == b'\n').any(|l| l == deepest.as_bytes()));

    let found = ok(&env, &["find", "f", "-s", &deep]);
    assert_eq!(
        String::from_utf8_lossy(&found).lines().count(),
        3,
        "two matches and the count"
    );

    let diff = ok(&env, &["diff", &deep, &deeper]);
    let diff = String::from_utf8_lossy(&diff);
    assert!(
        diff.contains(&format!("+    {}/d/f", "/d".repeat(10_000))),
        "{}",
        &diff[diff.len().saturating_sub(300)..]
    );

    let tar = ok(&env, &["dump", &deep, "/"]);
    let archive = env.path("deep.tar");
    std::fs::write(&archive, &tar).unwrap();
    let listed = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        10_002
    );
}

#[test]
fn walks_stop_on_a_tree_graph_that_expands_beyond_its_summary() {
    let env = Env::new();
    env.init();
    let dag = crafted::dag_snapshot(&env, 40, false).to_hex();
    let small = crafted::dag_snapshot(&env, 2, true).to_hex();
    let target = env.path("out");
    let target = target.to_str().unwrap();
    for args in [
        vec!["ls", &dag],
        vec!["find", "f", "-s", &dag],
        vec!["dump", &dag, "/"],
        vec!["diff", &small, &dag],
        vec!["restore", &dag, "--target", target],
    ] {
        let out = run(&env, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "cairn {args:?} succeeded");
        assert!(err.contains("expand to more than"), "cairn {args:?}: {err}");
    }
    // A snapshot whose folders legitimately share trees is walked whole.
    let ls = ok(&env, &["ls", &small]);
    assert_eq!(String::from_utf8_lossy(&ls).lines().count(), 2 + 4 + 4);
    let target2 = env.path("out2");
    ok(
        &env,
        &["restore", &small, "--target", target2.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(env.path("out2/b/a/f")).unwrap(),
        b"leaf\n".to_vec()
    );
}

#[test]
fn dump_of_a_snapshot_whose_root_tree_is_damaged_writes_no_archive() {
    let env = Env::new();
    env.init();
    let src = env.source();
    env.ok(&["backup", src.to_str().unwrap()]);
    // The only tree pack is damaged: trees are packed apart from data, and the root tree
    // is the one every walk reads first.
    let repo = crafted::open(&env);
    repo.sync_index().unwrap();
    let snap = repo.find_snapshot("latest").unwrap().1;
    let loc = repo.locate(&snap.tree).unwrap();
    drop(repo);
    let pack = common::packs(&env.repo())
        .into_iter()
        .find(|p| p.file_name().unwrap().to_str().unwrap() == loc.pack.to_hex())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[loc.offset as usize + loc.length as usize / 2] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();

    let out = env
        .cmd()
        .args(["--no-cache", "dump", "latest", "/"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "dump wrote {} bytes before failing",
        out.stdout.len()
    );
}
