#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Progress as the user sees it: in a real pseudo-terminal, the backup's line (elapsed time,
//! percentage, files and bytes of the totals, errors, ETA), check's and prune's phases, all
//! cleared at the end; with `--json`, status lines on standard output and never a bar; with
//! no terminal, nothing at all.

mod common;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use serde_json::Value;

/// Files of 4 MiB each in the big trees: 192 MiB of content that does not compress, which
/// takes about a second to back up on two cores. A test that needs a longer backup grows it.
const BIG_FILES: usize = 48;
const BIG_FILE: usize = 4 << 20;
/// Small files beside them, in a subfolder.
const SMALL_FILES: usize = 100;

/// How long a command may take before the test gives up on it.
const LIMIT: Duration = Duration::from_secs(600);

/// Content that does not compress, from the kernel's generator (fast in any build).
fn noise(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .take(len as u64)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Runs `attempt` with each number of [`BIG_FILE`]s in `sizes` in turn until it sees what it
/// looks for: on a fast machine a small backup ends before a line is drawn (five times a
/// second), a status line written or an ETA shown (after a second). `attempt` returns what
/// it missed; what the largest size missed fails the test.
fn with_growing_input(sizes: &[usize], mut attempt: impl FnMut(usize) -> Result<(), String>) {
    let mut missed = String::from("no sizes");
    for &n in sizes {
        match attempt(n) {
            Ok(()) => return,
            Err(e) => missed = e,
        }
    }
    panic!("{missed}");
}

/// A tree of `big` files of [`BIG_FILE`] bytes (half of them in `sub/`) and
/// [`SMALL_FILES`] small ones in `sub/small/`; returns its folder, file count and bytes.
fn tree(env: &Env, big: usize) -> (std::path::PathBuf, u64, u64) {
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub/small")).unwrap();
    let mut bytes = 0;
    for i in 0..big {
        let dir = if i % 2 == 0 {
            src.clone()
        } else {
            src.join("sub")
        };
        std::fs::write(dir.join(format!("big{i:03}")), noise(BIG_FILE)).unwrap();
        bytes += BIG_FILE as u64;
    }
    for i in 0..SMALL_FILES {
        let data = noise(1000 + i);
        bytes += data.len() as u64;
        std::fs::write(src.join(format!("sub/small/s{i:03}")), data).unwrap();
    }
    (src, (big + SMALL_FILES) as u64, bytes)
}

/// `cairn` with the test's repository, as a std command.
fn cairn(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.env_clear()
        .envs(env.cmd_vars())
        .env("TERM", "xterm-256color")
        .args(args);
    c
}

/// Waits for `child` at most [`LIMIT`], killing it after.
fn wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cairn took more than {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `args` with standard input, output and error on a pseudo-terminal of 100 columns;
/// returns the exit code and everything written to the terminal.
fn in_pty(env: &Env, args: &[&str]) -> (Option<i32>, String) {
    in_pty_from(env, args, None)
}

/// [`in_pty`], with standard input from `stdin` when given.
fn in_pty_from(env: &Env, args: &[&str], stdin: Option<std::fs::File>) -> (Option<i32>, String) {
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let slave: OwnedFd = pty.slave;
    let mut cmd = cairn(env, args);
    match stdin {
        Some(f) => cmd.stdin(f),
        None => cmd.stdin(Stdio::from(slave.try_clone().unwrap())),
    };
    cmd.stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    let mut child = cmd.spawn().unwrap();
    // Only the child holds the terminal now: reading ends (EIO) when it exits.
    drop(cmd);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => return all,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    });
    let status = wait(&mut child);
    let out = reader.join().unwrap();
    (status.code(), String::from_utf8_lossy(&out).into_owned())
}

/// Runs `args` with plain pipes; returns the exit code, stdout and stderr.
fn piped(env: &Env, args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = cairn(env, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let status = wait(&mut child);
    (status.code(), o.join().unwrap(), e.join().unwrap())
}

/// Sizes as cairn prints them.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// The frames drawn on the terminal: the text between carriage returns and line ends, with
/// the escape sequences that clear a line taken out.
fn frames(screen: &str) -> Vec<String> {
    screen
        .replace("\x1b[2K", "")
        .split(['\r', '\n'])
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect()
}

/// Whether `f` holds a number directly before `word` (e.g. `12 of`), and what follows.
fn count_before<'a>(f: &'a str, word: &str) -> Option<(u64, &'a str)> {
    let at = f.find(word)?;
    let digits: String = f[..at]
        .trim_end()
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let n = digits.chars().rev().collect::<String>().parse().ok()?;
    Some((n, &f[at + word.len()..]))
}

/// The ends of the line: the last frame of the bar is followed by an erase of the line
/// before `after` (the command's result) is printed.
fn assert_cleared(screen: &str, last_bar_text: &str, after: &str) {
    let bar = screen.rfind(last_bar_text).expect("no bar frame");
    let result = screen.rfind(after).expect("no result");
    assert!(bar < result, "the result came before the last bar frame");
    assert!(
        screen[bar..result].contains("\x1b[2K"),
        "the bar's line was not cleared: {:?}",
        &screen[bar..result]
    );
}

#[test]
fn backup_on_a_terminal_shows_elapsed_percent_files_bytes_errors_and_eta() {
    with_growing_input(&[BIG_FILES, 2 * BIG_FILES, 4 * BIG_FILES], |big| {
        let env = Env::new();
        env.init();
        let (src, files, bytes) = tree(&env, big);
        let (code, screen) = in_pty(&env, &["backup", src.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{screen}");
        let frames = frames(&screen);
        let total = format!("/{files} files ");
        let bar: Vec<&String> = frames.iter().filter(|f| f.contains(" files ")).collect();
        assert!(!bar.is_empty(), "no progress line: {screen:?}");
        // Once the walk ahead is done: all files and bytes as totals, and an ETA.
        let complete: Vec<&&String> = bar
            .iter()
            .filter(|f| f.contains(&total) && f.contains(&format!("/{}", human_bytes(bytes))))
            .collect();
        assert!(
            !complete.is_empty(),
            "no frame with the totals {files} files, {}: {bar:?}",
            human_bytes(bytes)
        );
        let Some(with_eta) = complete.iter().find(|f| f.contains(" ETA ")) else {
            return Err(format!("no ETA in a backup of {big} files: {complete:?}"));
        };
        // `[m:ss]` elapsed, a percentage, files done of the total, errors so far.
        assert!(
            with_eta.starts_with("[0:") || with_eta.starts_with("[1:"),
            "{with_eta}"
        );
        assert!(with_eta.contains("% "), "{with_eta}");
        assert!(with_eta.contains(" 0 errors"), "{with_eta}");
        let (done, _) = count_before(with_eta, &total).unwrap();
        assert!(done <= files, "{with_eta}");
        assert_cleared(&screen, " files ", "snapshot ");
        Ok(())
    });
}

#[test]
fn backup_of_a_stream_on_a_terminal_shows_bytes_and_rate() {
    with_growing_input(&[BIG_FILES / 4, BIG_FILES, 2 * BIG_FILES], |files| {
        let env = Env::new();
        env.init();
        let input = env.path("input");
        let mut f = std::fs::File::create(&input).unwrap();
        for _ in 0..files {
            std::io::Write::write_all(&mut f, &noise(BIG_FILE)).unwrap();
        }
        drop(f);
        let stdin = std::fs::File::open(&input).unwrap();
        let (code, screen) = in_pty_from(&env, &["backup", "--stdin"], Some(stdin));
        assert_eq!(code, Some(0), "{screen}");
        let frames = frames(&screen);
        let bar: Vec<&String> = frames
            .iter()
            .filter(|f| f.contains("/s 0 errors"))
            .collect();
        if bar.is_empty() {
            return Err(format!(
                "no progress line for a stream of {files} x 4 MiB: {frames:?}"
            ));
        }
        // No total to show a percentage or a time left against.
        assert!(
            bar.iter()
                .all(|f| f.starts_with("[0:") && !f.contains('%') && !f.contains("ETA")),
            "{bar:?}"
        );
        assert_cleared(&screen, "/s 0 errors", "snapshot ");
        Ok(())
    });
}

#[test]
fn backup_json_streams_status_lines_and_ends_with_the_summary() {
    with_growing_input(&[BIG_FILES, 2 * BIG_FILES, 4 * BIG_FILES], |big| {
        let env = Env::new();
        env.init();
        let (src, files, bytes) = tree(&env, big);
        let (code, out, err) = piped(&env, &["--json", "backup", src.to_str().unwrap()]);
        assert_eq!(code, Some(0), "{err}");
        assert!(err.is_empty(), "stderr: {err:?}");
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        let (last, status) = lines.split_last().unwrap();
        assert_eq!(last["message_type"], "summary");
        assert!(last["snapshot_id"].as_str().is_some_and(|s| s.len() == 64));
        assert_eq!(last["summary"]["files"], files);
        // The walk ahead gets to the real totals.
        let totals = |s: &&Value| s["total_files"] == files && s["total_bytes"] == bytes;
        if !status.iter().any(|s| totals(&s)) {
            return Err(format!(
                "no status with {files} files, {bytes} bytes in a backup of {big} files: {status:?}"
            ));
        }
        for s in status {
            assert_eq!(s["message_type"], "status", "{s}");
            for k in ["seconds_elapsed", "files_done", "bytes_done", "error_count"] {
                assert!(s[k].is_u64(), "{k} in {s}");
            }
            assert!(s["current_files"].is_array(), "{s}");
            let p = s["percent_done"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&p), "{s}");
            assert!(s["bytes_done"].as_u64().unwrap() <= bytes, "{s}");
        }
        // The seconds remaining come with complete totals only.
        for s in status
            .iter()
            .filter(|s| s.get("seconds_remaining").is_some())
        {
            assert_eq!(s["total_files"], files, "{s}");
        }
        Ok(())
    });
}

#[test]
fn backup_json_on_a_terminal_writes_only_json_lines() {
    let env = Env::new();
    env.init();
    let (src, _, _) = tree(&env, BIG_FILES / 4);
    let (code, screen) = in_pty(&env, &["--json", "backup", src.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        !screen.contains('\x1b'),
        "terminal codes with --json: {screen:?}"
    );
    let lines: Vec<Value> = screen
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(lines.last().unwrap()["message_type"], "summary");
}

#[test]
fn without_a_terminal_there_is_no_progress() {
    let env = Env::new();
    env.init();
    let (src, _, _) = tree(&env, BIG_FILES / 8);
    let (code, out, err) = piped(&env, &["backup", src.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "stderr: {err:?}");
    assert!(
        out.contains("snapshot ") && !out.contains('\x1b'),
        "{out:?}"
    );
    let (code, out, err) = piped(&env, &["check", "--read-data"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.is_empty(), "stderr: {err:?}");
    assert!(
        !out.contains('\x1b') && !out.contains("reading packs"),
        "{out:?}"
    );
}

#[test]
fn check_on_a_terminal_shows_its_phases_and_the_bytes_to_read() {
    let env = Env::new();
    env.init();
    let (src, _, _) = tree(&env, BIG_FILES / 4);
    env.ok(&["backup", src.to_str().unwrap()]);
    let packs = common::packs(&env.repo());
    let pack_bytes: u64 = packs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let (code, screen) = in_pty(&env, &["check", "--read-data"]);
    assert_eq!(code, Some(0), "{screen}");
    let frames = frames(&screen);
    for phase in ["index", "pack headers", "snapshots"] {
        assert!(
            frames.iter().any(|f| f.contains(&format!("] {phase} "))),
            "no phase {phase}: {frames:?}"
        );
    }
    let reading = format!(" of {}, ", packs.len());
    let total = format!("/{}", human_bytes(pack_bytes));
    let read: Vec<&String> = frames
        .iter()
        .filter(|f| f.contains("] reading packs ") && f.contains(&reading))
        .collect();
    assert!(!read.is_empty(), "no reading phase: {frames:?}");
    assert!(
        read.iter().all(|f| f.contains(&total) && f.contains('%')),
        "not against {total}: {read:?}"
    );
    assert_cleared(&screen, "reading packs", "no problems found");
}

#[test]
fn prune_on_a_terminal_counts_packs_repacked_and_deleted() {
    let env = Env::new();
    env.init();
    let (src, _, _) = tree(&env, BIG_FILES / 4);
    let src_arg = src.to_str().unwrap();
    env.ok(&["backup", src_arg]);
    let first = env.snapshot_ids()[0].clone();
    // Half the big files go: their blobs are then unused, in packs shared with kept ones
    // (repacked) and in packs of their own (deleted).
    for i in (0..BIG_FILES / 4).filter(|i| i % 4 < 2) {
        let dir = if i % 2 == 0 {
            src.clone()
        } else {
            src.join("sub")
        };
        std::fs::remove_file(dir.join(format!("big{i:03}"))).unwrap();
    }
    env.ok(&["backup", src_arg]);
    env.ok(&["forget", &first]);
    let (code, screen) = in_pty(&env, &["prune", "--max-unused", "0"]);
    assert_eq!(code, Some(0), "{screen}");
    let frames = frames(&screen);
    let counted = |phase: &str| -> Vec<(u64, u64)> {
        frames
            .iter()
            .filter_map(|f| {
                let rest = &f[f.find(&format!("] {phase} "))? + phase.len() + 3..];
                let (a, b) = rest.split_once(" of ")?;
                let b: String = b.chars().take_while(|c| c.is_ascii_digit()).collect();
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect()
    };
    assert!(frames.iter().any(|f| f.contains("] marking")), "{frames:?}");
    let repacking = counted("repacking");
    let deleting = counted("deleting");
    assert!(!repacking.is_empty(), "no repacking phase: {frames:?}");
    assert!(!deleting.is_empty(), "no deleting phase: {frames:?}");
    for (done, of) in repacking.iter().chain(&deleting) {
        assert!(done <= of && *of > 0, "{frames:?}");
    }
    // What the line counted is what the report says.
    let report = screen
        .lines()
        .find(|l| l.contains("repacked "))
        .unwrap_or_else(|| panic!("{screen}"));
    let n: String = report[report.find("repacked ").unwrap() + 9..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    assert_eq!(repacking[0].1.to_string(), n, "{report}");
    assert_cleared(&screen, "] deleting ", "freed ");
}
