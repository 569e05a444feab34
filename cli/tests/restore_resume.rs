#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Running an interrupted restore again finishes it: complete files are kept, partial ones
//! redone, temporary files removed, and no `--overwrite` is needed.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{restored, Env};

const MARKER: &str = ".cairn-restore-in-progress";

fn snapshot_id(env: &Env) -> String {
    env.snapshot_ids().pop().unwrap()
}

/// A backup of the small source tree, restored whole into `out`.
struct Restored {
    src: PathBuf,
    /// The snapshot's id.
    id: String,
    /// The restore's target.
    target: PathBuf,
    /// Where the source tree landed below it.
    out: PathBuf,
}

fn backed_up_and_restored(env: &Env) -> Restored {
    env.init();
    let src = env.source();
    env.ok(&["backup", src.to_str().unwrap()]);
    let id = snapshot_id(env);
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let out = restored(&target, &src);
    Restored {
        src,
        id,
        target,
        out,
    }
}

/// Every regular file below `dir`, relative to it, with its content.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                let rel = e.path().strip_prefix(dir).unwrap().to_path_buf();
                out.push((rel, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_unfinished_restore_is_finished_without_overwrite() {
    let env = Env::new();
    let Restored {
        src,
        id,
        target,
        out,
    } = backed_up_and_restored(&env);
    let t = target.to_str().unwrap();
    assert!(
        !target.join(MARKER).exists(),
        "a finished restore removes its marker"
    );

    // What an interrupted restore of this snapshot leaves: its marker, a complete file, a
    // partial one, one not yet written, and a temporary file of a replacement.
    std::fs::write(
        target.join(MARKER),
        format!("a cairn restore into this folder was interrupted\nsnapshot {id}\n"),
    )
    .unwrap();
    let kept_inode = std::fs::metadata(out.join("a.txt")).unwrap().ino();
    std::fs::write(out.join("sub/c.txt"), vec![b'c'; 70_000]).unwrap();
    std::fs::remove_file(out.join("b.log")).unwrap();
    let stray = out.join("sub/.cairn-restore-0123456789abcdef.tmp");
    std::fs::write(&stray, "half a file").unwrap();

    let r = env.json(&["restore", "latest", "--target", t]);
    assert_eq!(r["resumed"], true, "{r}");
    assert_eq!(
        r["files"], 2,
        "the partial and the missing file are written: {r}"
    );
    assert_eq!(r["files_unchanged"], 1, "{r}");
    assert_eq!(files(&out), files(&src));
    assert_eq!(
        std::fs::metadata(out.join("a.txt")).unwrap().ino(),
        kept_inode,
        "a complete file is kept, not written again"
    );
    assert!(!stray.exists(), "the temporary file is removed");
    assert!(!target.join(MARKER).exists());

    // Without a marker the same state is a conflict, as before.
    std::fs::write(out.join("sub/c.txt"), vec![b'c'; 70_000]).unwrap();
    let err = env.fails(&["restore", "latest", "--target", t], 1);
    assert!(
        err.contains("c.txt") && err.contains("--overwrite"),
        "{err}"
    );
}

#[test]
fn a_marker_of_another_snapshot_is_named_and_changes_nothing() {
    let env = Env::new();
    env.init();
    let src = env.source();
    env.ok(&["backup", src.to_str().unwrap()]);
    let first = snapshot_id(&env);
    std::fs::write(src.join("a.txt"), "changed\n").unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let target = env.path("out");
    let t = target.to_str().unwrap();
    env.ok(&["restore", &first, "--target", t]);
    std::fs::write(
        target.join(MARKER),
        format!("interrupted\nsnapshot {first}\n"),
    )
    .unwrap();
    let err = env.fails(&["restore", "latest", "--target", t], 1);
    assert!(err.contains("a.txt"), "{err}");
    assert!(
        err.contains(&format!("interrupted restore of snapshot {}", &first[..8])),
        "{err}"
    );
    let out = restored(&target, &src);
    assert_eq!(
        std::fs::read_to_string(out.join("a.txt")).unwrap(),
        "alpha\n"
    );
    // The interrupted snapshot itself finishes, and its marker goes.
    env.ok(&["restore", &first, "--target", t]);
    assert!(!target.join(MARKER).exists());
}

const FILE_SIZE: u64 = 48 * 1024;

/// A tree that takes a while to restore: many files with content of their own.
fn big_source(env: &Env) -> PathBuf {
    let src = env.path("big");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for d in 0..20 {
        let dir = src.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..40 {
            let mut data = vec![0u8; FILE_SIZE as usize];
            for chunk in data.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            std::fs::write(dir.join(format!("f{f:03}")), data).unwrap();
        }
    }
    src
}

/// Files below `dir` with all their bytes (restored files are created, then written).
fn count_complete(dir: &Path) -> usize {
    let mut n = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(e.path()),
                Ok(_) if e.metadata().is_ok_and(|m| m.len() == FILE_SIZE) => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// Starts a restore into `target` and sends `signal` once some files are there; returns the
/// exit status, or `None` when the restore finished before it could be interrupted.
fn interrupt_restore(
    env: &Env,
    target: &Path,
    signal: nix::sys::signal::Signal,
) -> Option<std::process::ExitStatus> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.env_clear()
        .envs(env.cmd_vars())
        .args(["restore", "latest", "--target", target.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the restore ended before it was interrupted: {status}");
        }
        if count_complete(target) > 30 {
            break;
        }
        assert!(Instant::now() < deadline, "no files appeared in a minute");
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, signal).unwrap();
    let status = child.wait().unwrap();
    // The marker is there unless the restore finished just before the signal.
    target.join(MARKER).exists().then_some(status)
}

#[test]
fn a_restore_stopped_by_ctrl_c_or_sigkill_finishes_when_run_again() {
    use nix::sys::signal::Signal;
    let env = Env::new();
    env.init();
    let src = big_source(&env);
    env.ok(&["backup", src.to_str().unwrap()]);
    for (n, signal) in [Signal::SIGINT, Signal::SIGKILL].into_iter().enumerate() {
        let target = env.path(&format!("out{n}"));
        let Some(status) = interrupt_restore(&env, &target, signal) else {
            panic!("the restore finished before {signal} reached it; make the tree larger");
        };
        match signal {
            Signal::SIGINT => assert_eq!(status.code(), Some(130), "{status}"),
            _ => assert_eq!(status.code(), None, "{status}"),
        }
        let r = env.json(&[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--verify",
        ]);
        assert_eq!(r["resumed"], true, "{r}");
        assert!(
            r["files_unchanged"].as_u64().unwrap() > 0,
            "files completed before the {signal} are kept: {r}"
        );
        assert_eq!(
            r["files"].as_u64().unwrap() + r["files_unchanged"].as_u64().unwrap(),
            800,
            "{r}"
        );
        assert_eq!(files(&restored(&target, &src)), files(&src));
        assert!(!target.join(MARKER).exists());
    }
}

/// The in-progress marker of an interrupted restore, as the first run writes it.
fn leave_marker(target: &Path, id: &str) {
    std::fs::write(
        target.join(MARKER),
        format!("a cairn restore into this folder was interrupted\nsnapshot {id}\n"),
    )
    .unwrap();
}

/// A first run restricted by `--include` checked only what it selected. A rerun of the same
/// snapshot that selects more must not replace, unasked, an existing file the first run
/// never looked at: without `--overwrite` that is a conflict, as without a marker.
#[test]
fn a_rerun_selecting_more_does_not_replace_files_the_first_run_never_checked() {
    let env = Env::new();
    env.init();
    let src = env.source();
    env.ok(&["backup", src.to_str().unwrap()]);
    let id = snapshot_id(&env);
    let target = env.path("out");
    let t = target.to_str().unwrap();
    let out = restored(&target, &src);
    // The user's own, edited copy of a.txt is in the target.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("a.txt"), "my own edits\n").unwrap();
    // A restore of sub/ only, interrupted: its marker stays (a.txt was not selected, so not
    // checked).
    let sub = src.join("sub");
    env.ok(&[
        "restore",
        "latest",
        "--target",
        t,
        "--include",
        sub.to_str().unwrap(),
    ]);
    leave_marker(&target, &id);

    // The whole snapshot, without --overwrite: a.txt differs and was never checked.
    let err = env.fails(&["restore", "latest", "--target", t], 1);
    assert!(err.contains("a.txt"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("a.txt")).unwrap(),
        "my own edits\n",
        "a file the interrupted restore never checked was replaced without --overwrite"
    );
}

/// A file the interrupted run never wrote (its change time is older than the marker) is
/// not known to be complete, whatever its size and modification time: `--overwrite
/// if-changed` run to repair damaged files (same size, same times, other bytes) must still
/// compare it when it finishes an interrupted run.
#[test]
fn a_rerun_compares_files_the_interrupted_run_did_not_write() {
    let env = Env::new();
    let Restored {
        src,
        id,
        target,
        out,
    } = backed_up_and_restored(&env);
    let t = target.to_str().unwrap();
    // Damage that keeps size and times (a flipped bit on disk, an edit with `touch -r`).
    let c = out.join("sub/c.txt");
    let mtime = std::fs::metadata(&c).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&c).unwrap();
    bytes[1000] = b'X';
    std::fs::write(&c, &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&c).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(20));
    // `restore --overwrite if-changed` to repair it, interrupted before it reached c.txt.
    leave_marker(&target, &id);

    let r = env.json(&[
        "restore",
        "latest",
        "--target",
        t,
        "--overwrite",
        "if-changed",
    ]);
    assert_eq!(r["resumed"], true, "{r}");
    assert!(
        std::fs::read(&c).unwrap() == std::fs::read(src.join("sub/c.txt")).unwrap(),
        "a damaged file was kept as complete: {r}"
    );
}

/// Hard links the interrupted run did not make yet are made when it is finished: the
/// paths of a group share one inode, as after an uninterrupted restore.
#[test]
fn a_rerun_links_the_rest_of_a_half_restored_hard_link_group() {
    let env = Env::new();
    env.init();
    let src = env.source();
    std::fs::write(src.join("h1"), "linked\n").unwrap();
    std::fs::hard_link(src.join("h1"), src.join("h2")).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    let id = snapshot_id(&env);
    let target = env.path("out");
    let t = target.to_str().unwrap();
    env.ok(&["restore", "latest", "--target", t]);
    let out = restored(&target, &src);
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&out.join("h1")), ino(&out.join("h2")));
    // Interrupted after h1, before h2 was linked to it.
    std::fs::remove_file(out.join("h2")).unwrap();
    leave_marker(&target, &id);

    let r = env.json(&["restore", "latest", "--target", t]);
    assert_eq!(r["resumed"], true, "{r}");
    assert_eq!(
        ino(&out.join("h1")),
        ino(&out.join("h2")),
        "h2 was restored as a copy, not as a link to h1: {r}"
    );
}

/// A snapshot may hold a file named like the marker at its top (a folder that held an
/// interrupted restore was backed up, or the stdin name chosen). Restoring it must restore
/// that file, not fail on it, nor delete it at the end.
#[test]
fn a_snapshot_holding_a_file_named_like_the_marker_restores_it() {
    let env = Env::new();
    env.init();
    env.cmd()
        .args(["backup", "--stdin", "--stdin-filename", MARKER])
        .write_stdin("the snapshot's own file\n")
        .assert()
        .success();
    let target = env.path("out");
    let t = target.to_str().unwrap();
    let first = env
        .cmd()
        .args(["restore", "latest", "--target", t])
        .output()
        .unwrap();
    let again = env
        .cmd()
        .args(["restore", "latest", "--target", t])
        .output()
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(target.join(MARKER)).ok().as_deref(),
        Some("the snapshot's own file\n"),
        "first run: {}; second run: {}",
        String::from_utf8_lossy(&first.stderr),
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
}

/// `--verify` promises every restored file was read back and matched the snapshot. When a
/// rerun keeps a file by its size and modification time without reading it, that file was
/// never checked: a damaged one (same size and times) must not pass as verified.
#[test]
fn a_verified_rerun_does_not_keep_files_unread() {
    let env = Env::new();
    let Restored {
        src,
        id,
        target,
        out,
    } = backed_up_and_restored(&env);
    let t = target.to_str().unwrap();
    // The interrupted run wrote c.txt; it was damaged since, size and times kept.
    leave_marker(&target, &id);
    let c = out.join("sub/c.txt");
    let mtime = std::fs::metadata(&c).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&c).unwrap();
    bytes[1000] = b'X';
    std::fs::write(&c, &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&c).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);

    let r = env
        .cmd()
        .args(["--json", "restore", "latest", "--target", t, "--verify"])
        .output()
        .unwrap();
    let same = std::fs::read(&c).unwrap() == std::fs::read(src.join("sub/c.txt")).unwrap();
    assert!(
        same || !r.status.success(),
        "a damaged file passed --verify: {}",
        String::from_utf8_lossy(&r.stdout)
    );
}

/// A rerun that restores only part of the snapshot (`--include`) finishes only that part:
/// the marker must stay for the rest, or a partial file outside the part is left behind
/// with nothing to say so, and a later full run takes it for a conflict.
#[test]
fn a_partial_rerun_keeps_the_marker_for_the_rest() {
    let env = Env::new();
    let Restored {
        src,
        id,
        target,
        out,
    } = backed_up_and_restored(&env);
    let t = target.to_str().unwrap();
    // Interrupted while a.txt was being written.
    leave_marker(&target, &id);
    std::fs::write(out.join("a.txt"), "alp").unwrap();

    let sub = src.join("sub");
    env.ok(&[
        "restore",
        "latest",
        "--target",
        t,
        "--include",
        sub.to_str().unwrap(),
    ]);
    let a = std::fs::read_to_string(out.join("a.txt")).unwrap();
    assert!(
        a == "alpha\n" || target.join(MARKER).exists(),
        "a.txt is partial ({a:?}) and the marker is gone"
    );
    // Running the whole restore again finishes it.
    env.ok(&["restore", "latest", "--target", t]);
    assert_eq!(
        std::fs::read_to_string(out.join("a.txt")).unwrap(),
        "alpha\n"
    );
}
