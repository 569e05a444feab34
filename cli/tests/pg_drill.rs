//! `cairn pg drill` against real PostgreSQL 15 clusters archived with `cairn wal push` and
//! backed up with `cairn pg basebackup`: a drill that passes reports what it recovered,
//! leaves no server and no scratch folder behind and writes nothing to the repository; a
//! failing check, a repository that cannot be read during recovery, a target the archive
//! cannot reach and a SIGTERM each end it with exit 1, cleaned up just the same.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::pg::{
    give_to_postgres, pg_bindir, run_timeout, wait_for, Bench, Cluster, ClusterOpts, Pg,
};
use common::pg_archive::PgArchive;
use serde_json::Value;

/// A whole drill of a small cluster: restore, recovery, checks, cleanup.
const DRILL: Duration = Duration::from_secs(300);

/// A repository with a key file, a cluster archiving into it with `cairn wal push`, one base
/// backup taken with `cairn pg basebackup`, and WAL written after it. Everything the
/// PostgreSQL user runs belongs to it; the cluster is stopped once archived, so nothing
/// writes to the repository while a drill runs.
struct Setup {
    arc: PgArchive,
    /// The base backup's stop and what was committed after it.
    marker_lsn: String,
    base_packs: Vec<PathBuf>,
}

impl Setup {
    fn new() -> Setup {
        let arc = PgArchive::new();
        std::fs::create_dir_all(arc.path("work")).unwrap();
        give_to_postgres(&arc.path("work"));
        let mut s = Setup {
            arc,
            marker_lsn: String::new(),
            base_packs: Vec::new(),
        };
        let mut pg = Cluster::init(
            &s.path("work/cluster"),
            &ClusterOpts {
                fsync: false,
                ..ClusterOpts::archiving(&s.arc.archive_command()).env(s.arc.base_vars())
            },
        );
        pg.start();
        pg.pgbench_init(1);
        let port = pg.port.to_string();
        let sock = pg.socket_dir().display().to_string();
        let out = s.as_postgres(&[
            "pg",
            "basebackup",
            "-h",
            &sock,
            "-p",
            &port,
            "-U",
            "postgres",
            "--pg-bin",
            &pg_bindir().display().to_string(),
        ]);
        expect_code(&out, 0, "cairn pg basebackup");
        s.base_packs = common::packs(&s.repo());
        pg.pgbench(Bench::Transactions(300), 2);
        pg.exec("create table marker as select 42 as answer");
        s.marker_lsn = pg.current_lsn();
        let stats = pg.wait_archived(&pg.switch_wal(), Duration::from_secs(60));
        assert_eq!(stats.failed_count, 0, "{stats:?}\n{}", pg.log_tail(30));
        pg.stop();
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.arc.path(rel)
    }

    fn repo(&self) -> PathBuf {
        self.arc.repo()
    }

    /// `cairn` (the copy PostgreSQL's user can run) against the repository with its key.
    fn cmd(&self) -> Command {
        self.arc.cmd_as_caller()
    }

    /// Runs cairn as PostgreSQL's user (what writes the repository in these tests).
    fn as_postgres(&self, args: &[&str]) -> Output {
        self.arc.run(args)
    }

    /// `cairn pg drill` as the test's own user (root in CI: the drill then runs PostgreSQL
    /// as the owner of the restored files). Its own cache is temporary, so it leaves the
    /// shared cache folder to the PostgreSQL user's fetches.
    fn drill_cmd(&self, args: &[&str]) -> Command {
        let mut c = self.cmd();
        c.args(["--no-cache", "pg", "drill", "--pg-bin"])
            .arg(pg_bindir())
            .args(args);
        c
    }

    fn drill(&self, args: &[&str]) -> Output {
        run_timeout(self.drill_cmd(args), DRILL)
    }

    /// Every file of the repository with its size and modification time.
    fn listing(&self) -> BTreeMap<PathBuf, (u64, i64)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.repo()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = std::fs::symlink_metadata(e.path()).unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    out.insert(
                        e.path(),
                        (m.size(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
                    );
                }
            }
        }
        out
    }

    fn snapshots(&self) -> Value {
        let out = self.as_postgres(&["--json", "snapshots"]);
        expect_code(&out, 0, "cairn snapshots");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn expect_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exited {}, expected {code}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// An LSN (`X/Y`) as a number, to compare.
fn lsn(s: &str) -> u64 {
    let (hi, lo) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {s:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Processes working in, or started with an argument naming, `dir`: a drill's server, its
/// backends (whose working folder is the data directory) and its restore_command.
fn processes_in(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() {
            continue;
        }
        let cwd = std::fs::read_link(e.path().join("cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cwd.starts_with(&needle) || cmdline.contains(&needle) {
            found.push(format!("{name}: {cmdline} (in {cwd})"));
        }
    }
    found
}

/// Asserts that a drill with scratch folder `scratch` left nothing behind.
fn assert_cleaned(scratch: &Path) {
    assert!(!scratch.exists(), "{} was left behind", scratch.display());
    let left = processes_in(scratch);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
}

#[test]
fn a_drill_recovers_checks_reports_and_leaves_nothing_behind() {
    let Some(_pg) = Pg::require() else { return };
    let s = Setup::new();
    let before = (s.snapshots(), s.listing());

    let scratch = s.path("work/drill");
    let out = s.drill(&["--json", "--scratch", scratch.to_str().unwrap()]);
    expect_code(&out, 0, "pg drill");
    let r = json_of(&out);
    assert_eq!(r["passed"], true, "{r:#}");
    assert!(r["error"].is_null(), "{r:#}");
    assert_eq!(r["target"], "the end of the archive");
    let base = before
        .0
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "pg-basebackup")
        .expect("a base backup");
    assert_eq!(r["snapshot"], base["id"], "{r:#}");
    assert!(r["base"]["stop_lsn"].is_string(), "{r:#}");
    assert!(r["restored"]["files"].as_u64().unwrap() > 100, "{r:#}");
    assert!(
        r["restored"]["wal_segments"].as_u64().unwrap() >= 2,
        "{r:#}"
    );
    let rec = &r["recovered"];
    assert!(
        lsn(rec["replay_lsn"].as_str().unwrap()) >= lsn(&s.marker_lsn),
        "recovery stopped before the last commit at {}: {r:#}",
        s.marker_lsn
    );
    assert!(rec["last_transaction_time"].is_string(), "{r:#}");
    assert_eq!(
        rec["timeline"], 2,
        "a promoted drill runs on a new timeline: {r:#}"
    );
    assert!(rec["wal_files_restored"].as_u64().unwrap() >= 2, "{r:#}");
    let t = &r["timings"];
    for k in ["restore_secs", "recovery_secs", "checks_secs", "total_secs"] {
        assert!(t[k].as_f64().unwrap() > 0.0, "{k}: {r:#}");
    }
    assert!(t["total_secs"].as_f64() >= t["restore_secs"].as_f64());
    let checks = r["checks"].as_array().unwrap();
    let dbs: Vec<&str> = checks
        .iter()
        .map(|c| c["database"].as_str().unwrap())
        .collect();
    assert_eq!(
        dbs,
        ["postgres", "template1"],
        "every database that allows connections"
    );
    for c in checks {
        assert_eq!(c["sql"], "select count(*) from pg_class");
        assert_eq!(c["passed"], true, "{c:#}");
        assert!(c["output"].as_str().unwrap().parse::<u64>().unwrap() > 0);
    }
    assert_eq!(r["kept"], false);
    assert_eq!(r["scratch"], scratch.to_str().unwrap());
    assert_cleaned(&scratch);

    // The default scratch folder (in $TMPDIR), a check of the data, and the text report.
    let out = s.drill(&[
        "--check-sql",
        "select answer from marker",
        "--check-sql",
        "select count(*) from pgbench_accounts",
        "--database",
        "postgres",
    ]);
    expect_code(&out, 0, "pg drill with checks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PASSED"), "{text}");
    assert!(
        text.contains("postgres: select answer from marker  -> 42"),
        "{text}"
    );
    assert!(text.contains("-> 100000"), "{text}");
    let left: Vec<_> = std::fs::read_dir(s.path("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cairn-drill"))
        .collect();
    assert!(left.is_empty(), "scratch folders left in $TMPDIR: {left:?}");
    assert!(processes_in(&s.path("tmp")).is_empty());

    // --keep leaves the folder with the stopped server's data directory and log.
    let kept = s.path("work/kept");
    let out = s.drill(&["--keep", "--scratch", kept.to_str().unwrap()]);
    expect_code(&out, 0, "pg drill --keep");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("kept {}", kept.display())), "{text}");
    assert!(kept.join("data/PG_VERSION").is_file() && kept.join("postgres.log").is_file());
    assert!(
        !kept.join("data/postmaster.pid").exists(),
        "the server was not stopped"
    );
    let left = processes_in(&kept);
    assert!(left.is_empty(), "processes left behind: {left:#?}");
    std::fs::remove_dir_all(&kept).unwrap();

    // No drill wrote to the repository: no snapshot, no WAL file, no object.
    assert_eq!(s.snapshots(), before.0, "the drills changed the snapshots");
    assert_eq!(
        s.listing(),
        before.1,
        "the drills changed the repository's files"
    );
}

#[test]
fn failed_drills_exit_1_and_clean_up() {
    let Some(_pg) = Pg::require() else { return };
    let s = Setup::new();

    // A failing check: the drill recovers, reports the failure and still removes all.
    let scratch = s.path("work/check");
    let out = s.drill(&[
        "--json",
        "--scratch",
        scratch.to_str().unwrap(),
        "--check-sql",
        "select 1/0",
        "--database",
        "postgres",
    ]);
    expect_code(&out, 1, "pg drill with a failing check");
    let r = json_of(&out);
    assert_eq!(r["passed"], false);
    assert!(r["error"].is_null(), "the steps worked: {r:#}");
    assert!(r["recovered"]["replay_lsn"].is_string(), "{r:#}");
    let c = &r["checks"][0];
    assert_eq!(c["passed"], false, "{r:#}");
    assert!(
        c["error"].as_str().unwrap().contains("division by zero"),
        "{r:#}"
    );
    assert_cleaned(&scratch);

    // A target the archive cannot reach: refused before anything is restored.
    let scratch = s.path("work/target");
    let out = s.drill(&[
        "--scratch",
        scratch.to_str().unwrap(),
        "--target-lsn",
        "FF/0",
    ]);
    expect_code(&out, 1, "pg drill to an LSN the archive lacks");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not in the archive"), "{err}");
    assert_cleaned(&scratch);

    // A scratch folder too deep for the server's socket: refused before the restore.
    let scratch = s.path(&format!("work/{}", "deep".repeat(25)));
    let out = s.drill(&["--scratch", scratch.to_str().unwrap()]);
    expect_code(&out, 1, "pg drill in a folder too deep for a socket");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give a shorter --scratch"), "{err}");
    assert_cleaned(&scratch);

    // SIGTERM while the server runs (a check that would take a minute): the drill stops
    // the server and removes its folder before it exits.
    let scratch = s.path("work/signal");
    let mut cmd = s.drill_cmd(&[
        "--scratch",
        scratch.to_str().unwrap(),
        "--check-sql",
        "select pg_sleep(120)",
        "--database",
        "postgres",
    ]);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let socket = scratch.join("socket");
    wait_for("the drill's server", DRILL, || {
        let up = std::fs::read_dir(&socket)
            .map(|d| d.flatten().count() > 0)
            .unwrap_or(false);
        assert!(child.try_wait().unwrap().is_none(), "the drill ended early");
        up.then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the drill did not end after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert_cleaned(&scratch);

    // WAL the repository cannot deliver during recovery: the packs written after the base
    // backup are damaged where their first blob (WAL data) lies. The restore itself reads
    // only the base backup and the catalog, so it succeeds; recovery then fails at the
    // first segment after the backup, and the drill says so.
    let damaged: Vec<PathBuf> = common::packs(&s.repo())
        .into_iter()
        .filter(|p| !s.base_packs.contains(p) && std::fs::metadata(p).unwrap().len() > 64 * 1024)
        .collect();
    assert!(
        !damaged.is_empty(),
        "no WAL pack written after the base backup"
    );
    for p in &damaged {
        let mut bytes = std::fs::read(p).unwrap();
        for b in &mut bytes[100..164] {
            *b ^= 0xff;
        }
        std::fs::write(p, bytes).unwrap();
    }
    let scratch = s.path("work/damaged");
    let out = s.drill(&["--json", "--scratch", scratch.to_str().unwrap()]);
    expect_code(&out, 1, "pg drill with damaged WAL");
    let r = json_of(&out);
    let e = r["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {r:#}"));
    assert!(e.contains("PostgreSQL stopped during recovery"), "{r:#}");
    assert!(e.contains("wal fetch"), "the failed fetch is named: {r:#}");
    assert!(r["restored"]["files"].as_u64().unwrap() > 0, "{r:#}");
    assert!(r["log_tail"].is_string(), "{r:#}");
    assert_cleaned(&scratch);
}
