#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real binary killed with SIGKILL at random moments of backups and prunes: afterwards
//! `check --read-data` passes and every committed snapshot restores byte for byte.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_repo::testing::{compare_trees, Rng};
use common::{restored, Env};

fn spawn(env: &Env, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .env("CAIRN_REPOSITORY", env.repo())
        .env("CAIRN_PASSWORD_FILE", env.path("password"))
        .env("HOME", env.path("home"))
        .env("TMPDIR", env.path("tmp"))
        .env("CAIRN_KDF_PARAMS", "1024,1,1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Runs the command, killing it after `after` unless it finished first. Returns whether it
/// completed successfully.
fn run_or_kill(env: &Env, args: &[&str], after: Duration) -> bool {
    let mut child = spawn(env, args);
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if start.elapsed() >= after {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn sigkill_during_backups_and_prunes_loses_nothing_committed() {
    let env = Env::new();
    env.init();
    let mut rng = Rng::new(0x5eed);
    let mut versions: HashMap<String, std::path::PathBuf> = HashMap::new();
    let mut killed = 0;
    for round in 0..10u64 {
        // A new version of the source each round, kept aside to compare restores with.
        let src = env.path(&format!("src-{round}"));
        std::fs::create_dir_all(src.join("d")).unwrap();
        for i in 0..8u64 {
            let len = 100_000 + rng.below(600_000) as usize;
            let seed = if i < 4 { i } else { round * 100 + i };
            std::fs::write(src.join(format!("d/f{i}")), Rng::new(seed).bytes(len)).unwrap();
        }
        let tag = format!("round{round}");
        // Every third backup runs to the end; the others are killed somewhere in their work.
        let delay = if round % 3 == 2 {
            Duration::from_secs(120)
        } else {
            Duration::from_millis(rng.below(400))
        };
        // A killed backup may still have committed (killed after its snapshot was written):
        // every round's source is kept, and a snapshot, if any, must restore to it.
        versions.insert(tag.clone(), src.clone());
        if !run_or_kill(
            &env,
            &["backup", src.to_str().unwrap(), "--tag", &tag],
            delay,
        ) {
            killed += 1;
        }
        // Forget all but the last three, then a prune that may be killed too.
        env.ok(&["forget", "--keep-last", "3", "--group-by", "host"]);
        let delay = Duration::from_millis(rng.below(250));
        if !run_or_kill(&env, &["prune", "--max-unused", "0%"], delay) {
            killed += 1;
        }
        env.ok(&["check", "--read-data"]);
    }
    eprintln!("{killed} of 20 runs were killed");
    assert!(
        killed >= 3,
        "only {killed} runs were killed: the delays do not reach into the work"
    );
    env.ok(&["prune"]);
    env.ok(&["check", "--read-data"]);
    // Killed runs cannot remove their temporary folders; the next run that makes one of the
    // same kind removes them (the final prune made an id set, and nothing holds a cache).
    // A folder still being prepared (`.new`, microseconds before its lock is taken) is only
    // removed once it is an hour old, so a kill landing in that instant is not counted.
    let left: Vec<String> = std::fs::read_dir(env.path("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cairn-") && !n.ends_with(".new"))
        .collect();
    assert!(left.is_empty(), "left in the temporary folder: {left:?}");
    let snaps = env.json(&["snapshots"]);
    let snaps = snaps.as_array().unwrap();
    assert!(
        !snaps.is_empty() && snaps.len() <= 3,
        "{} snapshots",
        snaps.len()
    );
    for s in snaps {
        let tag = s["tags"][0].as_str().unwrap();
        let id = s["id"].as_str().unwrap();
        let expected = versions
            .get(tag)
            .unwrap_or_else(|| panic!("snapshot {id} has an unknown tag {tag}"));
        let target = env.path(&format!("out-{tag}"));
        env.ok(&["restore", id, "--target", target.to_str().unwrap()]);
        compare_trees(expected, &restored(&target, expected))
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
    }
}
