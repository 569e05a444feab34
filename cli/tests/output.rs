#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What the user sees: a closed output pipe ends a command quietly with 0, stderr carries no
//! colour codes unless it is a terminal, and an error prints each piece of its text once.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::Env;

/// `cairn` as `Env::cmd` runs it, as a std command so that its pipes can be handled.
fn cairn(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.env_clear()
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
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs `args` with a standard output whose reader reads `read` bytes and then goes away
/// (0: before cairn writes anything); returns the exit code and stderr.
fn with_closed_stdout(env: &Env, args: &[&str], read: usize) -> (Option<i32>, String) {
    let mut child = cairn(env, args).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    if read > 0 {
        let mut buf = vec![0u8; read];
        stdout.read_exact(&mut buf).unwrap();
    }
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_every_command_quietly_with_0() {
    let env = Env::new();
    env.init();
    let src = env.source();
    // A file larger than a pipe holds, so that dump is still writing when the reader goes.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("big.bin"), &big).unwrap();
    env.ok(&["backup", src.to_str().unwrap()]);
    env.ok(&["backup", "--force", src.to_str().unwrap()]);
    let big_path = src.join("big.bin");
    let big_path = big_path.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec!["snapshots"],
        vec!["--json", "snapshots"],
        vec!["key", "list"],
        vec!["stats"],
        vec!["leases"],
        vec!["forget", "--dry-run", "--keep-last", "1"],
        vec!["check"],
        vec!["cat", "config"],
        vec!["tenant", "list"],
        vec!["ls", "latest"],
        vec!["find", "*.txt"],
        vec!["dump", "latest", big_path],
        vec!["dump", "latest", "/"],
    ];
    for args in &commands {
        let (code, err) = with_closed_stdout(&env, args, 0);
        assert_eq!(code, Some(0), "cairn {args:?} with a closed stdout: {err}");
        assert!(!err.contains("panicked"), "cairn {args:?}: {err}");
        assert!(err.is_empty(), "cairn {args:?} is not quiet: {err}");
    }
    // `cairn dump ... | head -c 1000`: the reader goes while cairn is writing.
    for args in [
        vec!["dump", "latest", big_path],
        vec!["dump", "latest", "/"],
    ] {
        let (code, err) = with_closed_stdout(&env, &args, 1000);
        assert_eq!(code, Some(0), "cairn {args:?} cut short: {err}");
        assert!(err.is_empty(), "cairn {args:?} is not quiet: {err}");
    }
    // Nothing was changed by the dry run.
    assert_eq!(env.snapshot_ids().len(), 2);
}

#[test]
fn a_closed_stdout_never_leaves_a_change_undone() {
    let env = Env::new();
    env.init();
    let src = env.source();
    for _ in 0..3 {
        env.ok(&["backup", "--force", src.to_str().unwrap()]);
    }
    let (code, err) = with_closed_stdout(&env, &["forget", "--keep-last", "1", "--prune"], 0);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(env.snapshot_ids().len(), 1);
    env.ok(&["check"]);
}

#[test]
fn stderr_carries_no_colour_codes_when_it_is_not_a_terminal() {
    let env = Env::new();
    env.init();
    let out = cairn(&env, &["snapshots"])
        .env("CAIRN_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DEBUG"), "expected log lines: {err}");
    assert!(!err.contains('\x1b'), "escape codes in stderr: {err:?}");
}

#[test]
fn an_error_prints_each_piece_of_its_text_once() {
    let env = Env::new();
    env.init();
    let missing = env.path("no-such-folder");
    let missing = missing.to_str().unwrap();
    let err = env.fails(&["backup", missing], 1);
    assert_eq!(
        err,
        format!("error: {missing}: No such file or directory (os error 2)\n")
    );
    let err = env.fails(&["cat", "snapshot", "deadbeef"], 1);
    assert_eq!(err, "error: no snapshot matches \"deadbeef\"\n");

    // A damaged snapshot is named once in check's problem line.
    let src = env.source();
    env.ok(&["backup", src.to_str().unwrap()]);
    let id = env.snapshot_ids().pop().unwrap();
    let file = env.repo().join("default/snapshots").join(&id);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let err = env.fails(&["--no-cache", "check"], 1);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:") && l.contains(&id))
        .unwrap_or_else(|| panic!("no problem line names {id}: {err}"));
    assert_eq!(line.matches(&id).count(), 1, "{line}");
}

/// Shell completions load into bash and complete commands; man pages render with `man -l`.
#[test]
fn completions_and_man_pages() {
    let env = Env::new();
    let bash = env
        .bare()
        .args(["generate", "--completions", "bash"])
        .output()
        .unwrap();
    assert!(bash.status.success());
    let script = env.path("cairn.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p cairn && COMP_WORDS=(cairn sna) && COMP_CWORD=1 && _cairn cairn sna cairn && echo \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&loaded.stdout);
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert!(said.contains("-F _cairn cairn"), "{said}");
    assert!(said.contains("snapshots"), "{said}");
    for shell in ["zsh", "fish"] {
        let out = env
            .bare()
            .args(["generate", "--completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success() && out.stdout.len() > 1000, "{shell}");
    }

    let dir = env.path("man");
    env.bare()
        .args(["generate", "--man", dir.to_str().unwrap()])
        .assert()
        .success();
    for page in [
        "cairn.1",
        "cairn-backup.1",
        "cairn-wal-push.1",
        "cairn-pg-restore.1",
    ] {
        let path = dir.join(page);
        assert!(path.exists(), "{page} was not written");
        let rendered = std::process::Command::new("man")
            .arg("-l")
            .arg(&path)
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .expect("man is required (scripts/test installs man-db)");
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(
            rendered.status.success() && text.contains("NAME"),
            "{page}: {text}"
        );
    }
    assert!(!dir.join("cairn-help.1").exists());
}

/// Human output shows local time to the second; JSON keeps RFC 3339 with nanoseconds.
#[test]
fn human_times_are_local_and_to_the_second() {
    let env = Env::new();
    env.init();
    let src = env.source();
    env.cmd()
        .args(["backup", src.to_str().unwrap()])
        .assert()
        .success();
    let out = env.cmd().args(["ls", "-l", "latest"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let nanos = |s: &str| {
        s.split_whitespace()
            .any(|w| w.len() > 20 && w.contains('T') && w.ends_with('Z'))
    };
    assert!(!nanos(&text), "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains(&jiff::Zoned::now().strftime(" %Y-").to_string())),
        "{text}"
    );
    let json = env.cmd().args(["--json", "ls", "latest"]).output().unwrap();
    assert!(nanos(
        &String::from_utf8_lossy(&json.stdout).replace(['"', ','], " ")
    ));
}

#[test]
fn verbose_says_what_was_decided_and_very_verbose_a_line_per_file() {
    let env = Env::new();
    env.init();
    let src = env.path("verbose-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "first").unwrap();
    std::fs::write(src.join("b.txt"), "second").unwrap();
    let s = src.to_str().unwrap();
    let lines = |out: &std::process::Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.ends_with(".txt"))
            .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
            .collect()
    };
    let first = cairn(&env, &["-vv", "backup", s]).output().unwrap();
    assert!(first.status.success());
    assert_eq!(lines(&first), ["new", "new"], "{first:?}");
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(err.contains("no parent snapshot"), "{err}");
    // -vv is about the command, not the libraries' debug logs.
    assert!(!err.contains("DEBUG"), "{err}");

    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(src.join("b.txt"), "second, changed").unwrap();
    let second = cairn(&env, &["-vv", "backup", s]).output().unwrap();
    let mut got = lines(&second);
    got.sort();
    assert_eq!(got, ["modified", "unchanged"], "{second:?}");
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(
        out.contains("modified   ") && out.contains("b.txt"),
        "{out}"
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("parent snapshot") && err.contains("1 files unchanged"),
        "{err}"
    );

    // -v decides aloud but lists no files; no flag says neither.
    let third = cairn(&env, &["-v", "backup", s]).output().unwrap();
    assert!(lines(&third).is_empty(), "{third:?}");
    assert!(String::from_utf8_lossy(&third.stderr).contains("parent snapshot"));
    let plain = cairn(&env, &["backup", s]).output().unwrap();
    assert!(lines(&plain).is_empty());
    assert!(!String::from_utf8_lossy(&plain.stderr).contains("parent snapshot"));
}

#[test]
fn json_documents_are_compact_one_per_line() {
    let env = Env::new();
    env.init();
    let src = env.source();
    for args in [
        vec!["--json", "backup", src.to_str().unwrap()],
        vec!["--json", "snapshots"],
        vec!["--json", "stats"],
        vec!["--json", "version"],
    ] {
        let out = cairn(&env, &args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        // A backup that takes over a second writes status lines before its summary: each a
        // compact document of its own line.
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() == 1 || args[1] == "backup", "{args:?}: {text}");
        for l in lines {
            let _: serde_json::Value = serde_json::from_str(l).unwrap();
        }
    }
}

#[test]
fn help_lists_exit_codes_and_examples_and_each_default_once() {
    let env = Env::new();
    let top = cairn(&env, &["--help"]).output().unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.contains("Exit codes:") && top.contains("12   wrong password"),
        "{top}"
    );
    for cmd in ["backup", "restore", "forget"] {
        let help = cairn(&env, &[cmd, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(help.contains("Examples:\n  cairn "), "{cmd}: {help}");
        // The command's own options first, the global ones in a section of their own.
        let own = help.find("\nOptions:").unwrap();
        let global = help.find("\nGlobal options:").unwrap();
        let repo = help.find("--repo <REPO>").unwrap();
        assert!(own < global && global < repo, "{cmd}: {help}");
    }
    for cmd in ["prune", "forget"] {
        let help = cairn(&env, &[cmd, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        assert!(!help.contains("] [default:"), "{cmd}: {help}");
    }
}

#[test]
fn ctrl_c_says_what_stopped_removes_the_lease_and_exits_130() {
    let env = Env::new();
    env.init();
    // A backup of standard input that waits for more: interrupted while its lease is held.
    let mut child = cairn(&env, &["backup", "--stdin", "--stdin-filename", "db.sql"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &vec![7u8; 1 << 20]).unwrap();
    let locks = env.repo().join("default/locks");
    let lease_count = || std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0);
    let mut waited = 0;
    while lease_count() == 0 && waited < 200 {
        std::thread::sleep(std::time::Duration::from_millis(25));
        waited += 1;
    }
    assert_eq!(lease_count(), 1, "the backup holds a lease");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("interrupted (SIGINT): the backup stopped; the repository is consistent"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert_eq!(lease_count(), 0, "the lease is removed, not left to expire");
    // Nothing half-done: check is clean and no snapshot was saved.
    let check = cairn(&env, &["check"]).output().unwrap();
    assert!(check.status.success(), "{check:?}");
    assert!(env.snapshot_ids().is_empty());
}
