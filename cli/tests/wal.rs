//! `cairn wal push` (archive_command) and `cairn wal fetch` (restore_command) against real
//! PostgreSQL 15 WAL: the exit codes PostgreSQL relies on, what a push refuses, what a fetch
//! leaves behind, and a real archive and recovery through both commands.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::pg::{
    cairn_for_postgres, give_to_postgres, postgres_tempdir, run_timeout, wait_for, Bench, Cluster,
    ClusterOpts, Pg, RestoredOpts,
};
use common::{packs, Tmpfs};

const RUN: Duration = Duration::from_secs(60);
const SEG: usize = 16 * 1024 * 1024;

/// A repository opened with a key file, with its own home, temporary folder and cache, all
/// in one folder that the PostgreSQL user can be given.
struct Archive {
    dir: tempfile::TempDir,
}

impl Archive {
    /// A new folder with a repository initialised with a key file.
    fn new() -> Archive {
        let a = Archive {
            dir: postgres_tempdir(),
        };
        for d in ["home", "tmp", "cache"] {
            std::fs::create_dir_all(a.path(d)).unwrap();
        }
        let out = a.run(&["init"]);
        expect_code(&out, 0, "cairn init");
        assert!(a.key().exists(), "init wrote no key file");
        a
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    fn key(&self) -> PathBuf {
        self.path("repo.key")
    }

    /// What every cairn run gets besides the repository and the key: an isolated home,
    /// temporary folder and cache, and fast password hashing.
    fn base_vars(&self) -> Vec<(OsString, OsString)> {
        let p = |rel: &str| self.path(rel).into_os_string();
        vec![
            ("PATH".into(), std::env::var_os("PATH").unwrap_or_default()),
            ("HOME".into(), p("home")),
            ("XDG_CACHE_HOME".into(), p("home/.cache")),
            ("XDG_CONFIG_HOME".into(), p("home/.config")),
            ("XDG_DATA_HOME".into(), p("home/.local/share")),
            ("TMPDIR".into(), p("tmp")),
            ("TZ".into(), "UTC".into()),
            ("CAIRN_KDF_PARAMS".into(), "1024,1,1".into()),
            ("CAIRN_CACHE_DIR".into(), p("cache")),
        ]
    }

    /// [`Archive::base_vars`] with this repository and its key file.
    fn vars(&self) -> Vec<(OsString, OsString)> {
        let mut v = self.base_vars();
        v.push(("CAIRN_REPOSITORY".into(), self.repo().into_os_string()));
        v.push(("CAIRN_KEY_FILE".into(), self.key().into_os_string()));
        v
    }

    /// `cairn` against this repository with its key file, run in this folder.
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env_clear().envs(self.vars()).current_dir(self.dir.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args);
        run_timeout(c, RUN)
    }

    fn push(&self, file: &Path) -> Output {
        let mut c = self.cmd();
        c.args(["wal", "push"]).arg(file);
        run_timeout(c, RUN)
    }

    fn fetch(&self, name: &str, dest: &Path) -> Output {
        let mut c = self.cmd();
        c.args(["wal", "fetch", name]).arg(dest);
        run_timeout(c, RUN)
    }

    /// Pushes and expects exit 0.
    fn push_ok(&self, file: &Path) {
        expect_code(&self.push(file), 0, &format!("wal push {}", file.display()));
    }

    /// Fetches `name` into a new folder and returns its bytes (expects exit 0).
    fn fetched(&self, name: &str) -> Vec<u8> {
        let dir = tempfile::tempdir_in(self.path("tmp")).unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        expect_code(&self.fetch(name, &dest), 0, &format!("wal fetch {name}"));
        std::fs::read(&dest).unwrap()
    }

    fn snapshot_count(&self) -> usize {
        let out = self.run(&["--json", "snapshots"]);
        expect_code(&out, 0, "cairn snapshots");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().expect("snapshots --json is a list").len()
    }
}

/// Asserts the exit code (with stderr in the message); returns stderr.
fn expect_code(out: &Output, code: i32, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exited {}, expected {code}\nstdout: {}\nstderr: {err}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    err
}

/// Copies `src` into the folder `dir` (created) under `name`; returns the new path.
fn copy_as(src: &Path, dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let dst = dir.join(name);
    std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    dst
}

/// Writes `bytes` as `dir/name` (the folder is created); returns the path.
fn write_as(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let dst = dir.join(name);
    std::fs::write(&dst, bytes).unwrap();
    dst
}

/// The names in a folder, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_segment_name(n: &str) -> bool {
    n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A cluster that archives with plain `cp` into `dir/archive`, run long enough to archive a
/// few segments and a `.backup` file, then stopped. Returns the archive folder and the
/// cluster's system identifier.
fn real_wal(dir: &Path) -> (PathBuf, u64) {
    let archive = dir.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    give_to_postgres(&archive);
    let a = archive.display().to_string();
    let mut pg = Cluster::init(
        &dir.join("cluster"),
        &ClusterOpts {
            fsync: false,
            ..ClusterOpts::archiving(&format!("test ! -f {a}/%f && cp %p {a}/%f"))
        },
    );
    pg.start();
    pg.exec("create table t as select n, md5(n::text) as h from generate_series(1, 20000) n");
    pg.switch_and_archive(Duration::from_secs(20));
    pg.exec("insert into t select n, md5(n::text) from generate_series(20001, 40000) n");
    // A non-exclusive backup in one session writes and archives a .backup file.
    let mut cmd = pg.command("psql");
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", "select pg_backup_start('cairn-wal-test', true)"])
        .args(["-c", "select pg_backup_stop()"]);
    let out = run_timeout(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "pg_backup_start/stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.switch_and_archive(Duration::from_secs(20));
    let id = pg.system_identifier();
    pg.stop();
    (archive, id)
}

/// The first segment written by a fresh `initdb` into `dir/cluster` (not started), with its
/// system identifier.
fn initdb_segment(dir: &Path) -> (PathBuf, u64) {
    let pg = Cluster::init(
        &dir.join("cluster"),
        &ClusterOpts {
            fsync: false,
            ..ClusterOpts::default()
        },
    );
    let seg = pg.data.join("pg_wal/000000010000000000000001");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), SEG as u64);
    (seg, pg.system_identifier())
}

#[test]
fn push_contract_on_real_segments() {
    let Some(_pg) = Pg::require() else { return };
    let arc = Archive::new();
    let work = postgres_tempdir();
    let (archive, sysid) = real_wal(work.path());
    let all = names_in(&archive);
    let segments: Vec<&String> = all.iter().filter(|n| is_segment_name(n)).collect();
    assert!(segments.len() >= 3, "archived: {all:?}");
    let backup = all
        .iter()
        .find(|n| n.ends_with(".backup"))
        .unwrap_or_else(|| panic!("no .backup file archived: {all:?}"));

    // A segment, then the same again: success, no new snapshot, no new pack.
    let first = archive.join(segments[0]);
    let original = std::fs::read(&first).unwrap();
    arc.push_ok(&first);
    assert_eq!(arc.snapshot_count(), 1);
    let packs_after_first = packs(&arc.repo()).len();
    assert!(packs_after_first >= 1);
    arc.push_ok(&first);
    assert_eq!(arc.snapshot_count(), 1, "a second push of the same bytes");
    assert_eq!(
        packs(&arc.repo()).len(),
        packs_after_first,
        "a second push of the same bytes wrote a pack"
    );
    assert_eq!(arc.fetched(segments[0]), original);

    // The same name with one byte changed (past the page header): refused, the archived
    // bytes kept.
    let mut changed = original.clone();
    changed[SEG / 2 + 123] ^= 0xff;
    let other = write_as(&work.path().join("changed"), segments[0], &changed);
    let err = expect_code(
        &arc.push(&other),
        1,
        "push of other bytes under an archived name",
    );
    assert!(err.contains("other content"), "stderr: {err}");
    assert_eq!(
        arc.fetched(segments[0]),
        original,
        "the archived bytes changed"
    );
    assert_eq!(arc.snapshot_count(), 1);

    // A segment of another cluster (its own initdb).
    let (foreign, foreign_id) = initdb_segment(&work.path().join("other"));
    assert_ne!(foreign_id, sysid);
    let err = expect_code(&arc.push(&foreign), 1, "push of another cluster's segment");
    assert!(
        err.contains("system identifier") && err.contains("a tenant of its own"),
        "stderr: {err}"
    );
    assert!(err.contains(&foreign_id.to_string()), "stderr: {err}");
    assert_eq!(arc.fetched(segments[0]), original);

    // Broken copies of a segment not archived yet: all refused, nothing stored.
    let second = archive.join(segments[1]);
    let bytes = std::fs::read(&second).unwrap();
    let mut zeroed = bytes.clone();
    zeroed[..8].fill(0);
    let damaged = write_as(&work.path().join("damaged"), segments[1], &zeroed);
    let err = expect_code(&arc.push(&damaged), 1, "push of a zeroed header");
    assert!(err.contains(segments[1].as_str()), "stderr: {err}");
    let truncated = write_as(
        &work.path().join("truncated"),
        segments[1],
        &bytes[..SEG / 2],
    );
    let err = expect_code(&arc.push(&truncated), 1, "push of half a segment");
    assert!(err.contains(segments[1].as_str()), "stderr: {err}");
    let misnamed = copy_as(&second, &work.path().join("misnamed"), "not-a-wal-file");
    let err = expect_code(&arc.push(&misnamed), 1, "push of a file not named as WAL");
    assert!(err.contains("not a WAL file name"), "stderr: {err}");
    // A real segment under the name of another one: its header says otherwise.
    let renamed = copy_as(&second, &work.path().join("renamed"), segments[2]);
    expect_code(
        &arc.push(&renamed),
        1,
        "push of a segment under another name",
    );
    assert_eq!(arc.snapshot_count(), 1, "a refused push stored a snapshot");
    let dest = work.path().join("absent");
    expect_code(
        &arc.fetch(segments[1], &dest),
        1,
        "fetch of a segment whose pushes were all refused",
    );
    assert!(!dest.exists());

    // The genuine files still archive, and come back byte for byte.
    arc.push_ok(&second);
    arc.push_ok(&archive.join(segments[2]));
    assert_eq!(arc.fetched(segments[1]), bytes);
    assert_eq!(
        arc.fetched(segments[2]),
        std::fs::read(archive.join(segments[2])).unwrap()
    );

    // A .backup file, as PostgreSQL archived it.
    let backup_path = archive.join(backup);
    let backup_bytes = std::fs::read(&backup_path).unwrap();
    assert!(String::from_utf8_lossy(&backup_bytes).contains("cairn-wal-test"));
    arc.push_ok(&backup_path);
    arc.push_ok(&backup_path);
    assert_eq!(arc.fetched(backup), backup_bytes);

    // A .history file of a new timeline.
    let history_bytes = format!("1\t{}\tno recovery target specified\n", "0/5000000").into_bytes();
    let history = write_as(
        &work.path().join("history"),
        "00000002.history",
        &history_bytes,
    );
    arc.push_ok(&history);
    arc.push_ok(&history);
    assert_eq!(arc.fetched("00000002.history"), history_bytes);
    let err = expect_code(
        &arc.push(&write_as(
            &work.path().join("history2"),
            "00000002.history",
            b"1\t0/6000000\tanother branch\n",
        )),
        1,
        "push of another .history under an archived name",
    );
    assert!(err.contains("other content"), "stderr: {err}");
    assert_eq!(arc.fetched("00000002.history"), history_bytes);

    // Everything pushed is still there.
    assert_eq!(arc.fetched(segments[0]), original);
}

#[test]
fn push_that_failed_for_lack_of_space_succeeds_when_retried() {
    let Some(_pg) = Pg::require() else { return };
    let arc = Archive::new();
    let work = postgres_tempdir();
    let (segment, _) = initdb_segment(work.path());
    let original = std::fs::read(&segment).unwrap();
    let name = "000000010000000000000001";

    // A repository on a file system too small for the segment.
    let Some(small) = Tmpfs::mount(&arc.path("small"), "512k") else {
        return;
    };
    let small_repo = small.0.join("repo");
    let copy = |from: &Path, to: &Path| {
        let st = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(st.success(), "cp -a {} {}", from.display(), to.display());
    };
    copy(&arc.repo(), &small_repo);
    let on_small = |args: &[&str], file: &Path| {
        let mut c = arc.cmd();
        c.env("CAIRN_REPOSITORY", &small_repo).args(args).arg(file);
        run_timeout(c, RUN)
    };
    let out = on_small(&["wal", "push"], &segment);
    let err = expect_code(&out, 1, "push into a full repository");
    assert!(err.contains("space"), "stderr: {err}");

    // The same repository moved to a larger place: the retry stores the segment, and the
    // cache the failed push used does not make it skip anything.
    let big_repo = arc.path("big");
    copy(&small_repo, &big_repo);
    drop(small);
    let mut c = arc.cmd();
    c.env("CAIRN_REPOSITORY", &big_repo)
        .args(["wal", "push"])
        .arg(&segment);
    expect_code(&run_timeout(c, RUN), 0, "retried push");
    let dest_dir = arc.path("restore");
    std::fs::create_dir_all(&dest_dir).unwrap();
    let dest = dest_dir.join("RECOVERYXLOG");
    let mut c = arc.cmd();
    c.env("CAIRN_REPOSITORY", &big_repo)
        .args(["wal", "fetch", name])
        .arg(&dest);
    expect_code(&run_timeout(c, RUN), 0, "fetch after the retry");
    assert!(
        std::fs::read(&dest).unwrap() == original,
        "fetched bytes differ"
    );
    let mut c = arc.cmd();
    c.env("CAIRN_REPOSITORY", &big_repo)
        .args(["check", "--read-data"]);
    expect_code(&run_timeout(c, RUN), 0, "check --read-data after the retry");
}

#[test]
fn fetch_contract() {
    let Some(_pg) = Pg::require() else { return };
    let arc = Archive::new();
    let work = postgres_tempdir();
    let (segment, _) = initdb_segment(work.path());
    let original = std::fs::read(&segment).unwrap();
    let name = "000000010000000000000001";
    arc.push_ok(&segment);

    // An archived file: 0, the whole file at DEST, nothing else beside it.
    let pg_wal = arc.path("restore/pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");
    expect_code(&arc.fetch(name, &dest), 0, "fetch of an archived segment");
    assert!(
        std::fs::read(&dest).unwrap() == original,
        "fetched bytes differ"
    );
    assert_eq!(names_in(&pg_wal), ["RECOVERYXLOG"]);
    std::fs::remove_file(&dest).unwrap();

    // A name the archive does not hold: 1, nothing written.
    for missing in [
        "000000010000000000000002",
        "000000020000000000000001",
        "00000002.history",
    ] {
        expect_code(
            &arc.fetch(missing, &dest),
            1,
            &format!("fetch of {missing}"),
        );
        assert!(names_in(&pg_wal).is_empty(), "{:?}", names_in(&pg_wal));
    }

    // The repository cannot be reached: 128, or 1 in standby mode.
    let nowhere = arc.path("nowhere");
    let fetch_from = |repo: &Path, cwd: &Path| {
        let mut c = arc.cmd();
        c.env("CAIRN_REPOSITORY", repo)
            .current_dir(cwd)
            .args(["wal", "fetch", name])
            .arg(&dest);
        run_timeout(c, RUN)
    };
    expect_code(
        &fetch_from(&nowhere, arc.dir.path()),
        128,
        "fetch from a missing repository",
    );
    assert!(names_in(&pg_wal).is_empty());
    let standby = arc.path("standby");
    std::fs::create_dir_all(&standby).unwrap();
    std::fs::write(standby.join("standby.signal"), "").unwrap();
    expect_code(
        &fetch_from(&nowhere, &standby),
        1,
        "fetch from a missing repository in standby mode",
    );
    assert!(names_in(&pg_wal).is_empty());
    assert!(!nowhere.exists(), "a fetch created the repository folder");

    // The wrong key (another repository's, for the same tenant name): 128.
    let stranger = Archive::new();
    let mut c = arc.cmd();
    c.env("CAIRN_KEY_FILE", stranger.key())
        .args(["wal", "fetch", name])
        .arg(&dest);
    expect_code(&run_timeout(c, RUN), 128, "fetch with the wrong key");
    assert!(names_in(&pg_wal).is_empty());

    // Damaged packs: 128, nothing at DEST, no temporary file left.
    let all = packs(&arc.repo());
    assert!(!all.is_empty());
    for p in &all {
        let mut bytes = std::fs::read(p).unwrap();
        let len = bytes.len();
        for at in [len / 4, len / 2, 3 * len / 4] {
            let end = (at + 64).min(len);
            for b in &mut bytes[at..end] {
                *b ^= 0x5a;
            }
        }
        std::fs::write(p, bytes).unwrap();
    }
    for cache in [None, Some(arc.path("fresh-cache"))] {
        let mut c = arc.cmd();
        if let Some(cache) = &cache {
            c.env("CAIRN_CACHE_DIR", cache);
        }
        c.args(["wal", "fetch", name]).arg(&dest);
        let err = expect_code(
            &run_timeout(c, RUN),
            128,
            &format!("fetch from damaged packs (cache {cache:?})"),
        );
        assert!(err.contains(name), "stderr: {err}");
        assert!(names_in(&pg_wal).is_empty(), "{:?}", names_in(&pg_wal));
    }
    // ... and 1 in standby mode.
    let mut c = arc.cmd();
    c.current_dir(&standby)
        .args(["wal", "fetch", name])
        .arg(&dest);
    expect_code(
        &run_timeout(c, RUN),
        1,
        "fetch from damaged packs in standby mode",
    );
    assert!(names_in(&pg_wal).is_empty());
}

#[test]
fn postgres_archives_and_recovers_through_cairn() {
    let Some(_pg) = Pg::require() else { return };
    let arc = Archive::new();
    let cairn = cairn_for_postgres(arc.dir.path());
    // Everything the archive and restore commands touch belongs to PostgreSQL's user.
    give_to_postgres(arc.dir.path());
    let base = format!(
        "{} --key-file {} -r {} wal",
        cairn.display(),
        arc.key().display(),
        arc.repo().display()
    );
    let work = postgres_tempdir();
    let mut pg = Cluster::init(
        &work.path().join("cluster"),
        &ClusterOpts {
            fsync: false,
            ..ClusterOpts::archiving(&format!("{base} push %p")).env(arc.base_vars())
        },
    );
    pg.start();
    pg.pgbench_init(1);

    let restored = work.path().join("restored");
    let mut cmd = pg.command("pg_basebackup");
    cmd.arg("-D")
        .arg(&restored)
        .args(["-X", "none", "-c", "fast"]);
    let out = run_timeout(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "pg_basebackup: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        pg.log_tail(20)
    );

    pg.pgbench(Bench::Seconds(3), 2);
    let count = pg.psql("select count(*) from pgbench_history");
    assert_ne!(count, "0");
    let lsn = pg.current_lsn();
    let switched = pg.switch_wal();
    let stats = pg.wait_archived(&switched, Duration::from_secs(60));
    assert_eq!(stats.failed_count, 0, "{stats:?}\n{}", pg.log_tail(30));
    assert!(stats.archived_count >= 2, "{stats:?}");
    let id = pg.system_identifier();
    pg.kill();

    let mut back = Cluster::from_restored(
        &restored,
        &RestoredOpts {
            restore_command: Some(format!("{base} fetch %f %p")),
            settings: vec![("archive_mode".into(), "off".into())],
            env: arc.base_vars(),
            ..RestoredOpts::default()
        },
    );
    back.start_recovered(Duration::from_secs(90));
    assert_eq!(back.psql("select count(*) from pgbench_history"), count);
    assert_eq!(
        back.psql(&format!(
            "select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"
        )),
        "t",
        "recovery stopped before {lsn}"
    );
    assert_eq!(back.system_identifier(), id);
    let log = std::fs::read_to_string(&back.log).unwrap_or_default();
    assert!(
        log.contains("restored log file"),
        "recovery used no archived segment:\n{}",
        back.log_tail(40)
    );
    assert!(
        !log.contains("error: cairn wal fetch"),
        "a fetch failed during recovery:\n{}",
        back.log_tail(40)
    );
    // Both commands used the default spool: pushes kept records there, fetches noted what
    // to prefetch.
    let spool = spool_dir(&arc).expect("no spool under the cache folder");
    assert!(spool.join("push").is_dir() && spool.join("wanted").is_file());
}

/// The spool folder of the archive's (only) repository and tenant, once it exists.
fn spool_dir(arc: &Archive) -> Option<PathBuf> {
    let base = arc.path("cache/wal-spool");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&base)
        .ok()?
        .map(|e| e.unwrap().path())
        .collect();
    assert!(dirs.len() <= 1, "several spools: {dirs:?}");
    dirs.into_iter().next()
}

/// The objects of one kind in the archive's repository (`snapshots`, `index`).
fn objects(arc: &Archive, kind: &str) -> usize {
    std::fs::read_dir(arc.repo().join("default").join(kind))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A `pg_wal` folder holding `segments` (copied from `archive`), each marked ready in
/// `archive_status` as PostgreSQL marks a completed segment.
fn pg_wal_with_ready(dir: &Path, archive: &Path, segments: &[&String]) -> PathBuf {
    let pg_wal = dir.join("pg_wal");
    for s in segments {
        copy_as(&archive.join(s.as_str()), &pg_wal, s);
        write_as(&pg_wal.join("archive_status"), &format!("{s}.ready"), b"");
    }
    pg_wal
}

/// Runs `f` with the repository moved away (unreachable at its path), then moves it back.
fn with_repo_away<T>(arc: &Archive, f: impl FnOnce() -> T) -> T {
    let away = arc.path("repo.away");
    std::fs::rename(arc.repo(), &away).unwrap();
    let out = f();
    std::fs::rename(&away, arc.repo()).unwrap();
    out
}

#[test]
fn push_ahead_archives_ready_segments_in_one_commit_and_answers_from_the_spool() {
    let Some(_pg) = Pg::require() else { return };
    let arc = Archive::new();
    let work = postgres_tempdir();
    let (archive, _) = real_wal(work.path());
    let all = names_in(&archive);
    let segments: Vec<&String> = all.iter().filter(|n| is_segment_name(n)).collect();
    assert!(segments.len() >= 3, "archived: {all:?}");
    let pg_wal = pg_wal_with_ready(work.path(), &archive, &segments);
    let status_before = names_in(&pg_wal.join("archive_status"));
    let index_before = objects(&arc, "index");

    // One push archives the file asked for and the ready segments after it: one snapshot,
    // one index file, every segment fetchable.
    arc.push_ok(&pg_wal.join(segments[0].as_str()));
    assert_eq!(arc.snapshot_count(), 1);
    assert_eq!(objects(&arc, "index"), index_before + 1, "one index file");
    for s in &segments {
        assert!(
            arc.fetched(s) == std::fs::read(archive.join(s.as_str())).unwrap(),
            "{s} fetched other bytes"
        );
    }
    let spool = spool_dir(&arc).expect("no spool folder");
    let records = names_in(&spool.join("push"));
    let ahead: Vec<String> = segments[1..].iter().map(|s| s.to_string()).collect();
    assert_eq!(records, ahead, "records of the files pushed ahead");
    // PostgreSQL's markers are untouched.
    assert_eq!(names_in(&pg_wal.join("archive_status")), status_before);

    // PostgreSQL's call for a file pushed ahead succeeds without the repository, and the
    // record is gone once acknowledged.
    let out = with_repo_away(&arc, || arc.push(&pg_wal.join(segments[1].as_str())));
    expect_code(&out, 0, "push of a file pushed ahead, repository away");
    assert!(!spool.join("push").join(segments[1].as_str()).exists());

    // Other bytes under a name pushed ahead are not acknowledged from the spool: the
    // repository refuses them.
    let last = segments[2].as_str();
    let mut changed = std::fs::read(pg_wal.join(last)).unwrap();
    changed[SEG / 2 + 77] ^= 0xff;
    let other = write_as(&work.path().join("changed"), last, &changed);
    let out = with_repo_away(&arc, || arc.push(&other));
    expect_code(
        &out,
        1,
        "push of other bytes under a name pushed ahead, repository away",
    );
    let err = expect_code(
        &arc.push(&other),
        1,
        "push of other bytes under a name pushed ahead",
    );
    assert!(err.contains("other content"), "stderr: {err}");

    // A damaged record is not trusted: without the repository the push fails, with it the
    // push succeeds as a file archived before.
    std::fs::write(spool.join("push").join(last), b"cairn-wal-spool 1\nname ").unwrap();
    let out = with_repo_away(&arc, || arc.push(&pg_wal.join(last)));
    expect_code(&out, 1, "push with a damaged record, repository away");
    arc.push_ok(&pg_wal.join(last));
    assert_eq!(
        arc.snapshot_count(),
        1,
        "a push of an archived file stored a snapshot"
    );

    // With --ahead 0 a push takes only its own file.
    let arc2 = Archive::new();
    let mut c = arc2.cmd();
    c.args(["wal", "push", "--ahead", "0"])
        .arg(pg_wal.join(segments[0].as_str()));
    expect_code(&run_timeout(c, RUN), 0, "push --ahead 0");
    let dest = arc2.path("absent");
    expect_code(
        &arc2.fetch(segments[1], &dest),
        1,
        "fetch of a file not pushed ahead",
    );
}

#[test]
fn a_fetch_command_line_that_cannot_be_parsed_stops_recovery() {
    // PostgreSQL reads any exit code below 126 as "no such file" and ends recovery there.
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], vars: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.env_clear()
            .env("HOME", dir.path())
            .envs(vars.iter().copied())
            .current_dir(dir.path())
            .args(args);
        run_timeout(c, RUN)
    };
    let name = "000000010000000000000003";
    let unknown_option = ["wal", "fetch", name, "RECOVERYXLOG", "--no-such-option"];
    expect_code(
        &run(&unknown_option, &[]),
        128,
        "fetch with an unknown option",
    );
    expect_code(
        &run(
            &["wal", "fetch", name, "RECOVERYXLOG"],
            &[("CAIRN_LEASE_TTL", "x")],
        ),
        128,
        "fetch with a bad value in the environment",
    );
    expect_code(&run(&["wal", "fetch", name], &[]), 128, "fetch without %p");
    expect_code(&run(&["wal", "fetch", "--help"], &[]), 0, "fetch --help");
    expect_code(&run(&["wal", "push"], &[]), 2, "push without %p");
    std::fs::write(dir.path().join("standby.signal"), b"").unwrap();
    expect_code(
        &run(&unknown_option, &[]),
        1,
        "fetch with an unknown option in standby mode",
    );
}

#[test]
fn a_spool_shared_by_two_repositories_never_answers_for_the_other() {
    let Some(_pg) = Pg::require() else { return };
    // One cluster archived into two repositories, one after the other in archive_command,
    // both with the same spool folder (CAIRN_WAL_SPOOL).
    let (a, b) = (Archive::new(), Archive::new());
    let work = postgres_tempdir();
    let (archive, _) = real_wal(work.path());
    let all = names_in(&archive);
    let segments: Vec<&String> = all.iter().filter(|n| is_segment_name(n)).collect();
    assert!(segments.len() >= 2, "archived: {all:?}");
    let shared = work.path().join("spool");
    let push = |arc: &Archive, file: &Path| {
        let mut c = arc.cmd();
        c.env("CAIRN_WAL_SPOOL", &shared)
            .args(["wal", "push"])
            .arg(file);
        run_timeout(c, RUN)
    };
    let pg_wal = pg_wal_with_ready(work.path(), &archive, &segments[..1]);
    let (first, second) = (segments[0].as_str(), segments[1].as_str());
    expect_code(&push(&a, &pg_wal.join(first)), 0, "push to A");
    // The next segment is marked ready between the push to A and the push to B: B takes it
    // ahead.
    copy_as(&archive.join(second), &pg_wal, second);
    write_as(
        &pg_wal.join("archive_status"),
        &format!("{second}.ready"),
        b"",
    );
    expect_code(&push(&b, &pg_wal.join(first)), 0, "push to B");
    // PostgreSQL's call for it: A must store it, not take B's record for its own.
    expect_code(
        &push(&a, &pg_wal.join(second)),
        0,
        "push of the next segment to A",
    );
    expect_code(
        &push(&b, &pg_wal.join(second)),
        0,
        "push of the next segment to B",
    );
    for arc in [&a, &b] {
        assert_eq!(
            arc.fetched(second),
            std::fs::read(archive.join(second)).unwrap(),
            "{second} in {}",
            arc.repo().display()
        );
    }
}

#[test]
fn fetch_prefetches_the_next_segments_into_the_spool() {
    let Some(_pg) = Pg::require() else { return };
    let arc = Archive::new();
    let work = postgres_tempdir();
    let (archive, sysid) = real_wal(work.path());
    let all = names_in(&archive);
    let segments: Vec<&String> = all.iter().filter(|n| is_segment_name(n)).collect();
    assert!(segments.len() >= 3, "archived: {all:?}");
    for s in &segments {
        let mut c = arc.cmd();
        c.args(["wal", "push", "--ahead", "0"])
            .arg(archive.join(s.as_str()));
        expect_code(&run_timeout(c, RUN), 0, &format!("push {s}"));
    }
    let original = |s: &str| std::fs::read(archive.join(s)).unwrap();
    let pg_wal = arc.path("restore/pg_wal");
    std::fs::create_dir_all(&pg_wal).unwrap();
    let dest = pg_wal.join("RECOVERYXLOG");

    // A fetch of the first segment leaves the ones after it (up to 4) in the spool.
    expect_code(
        &arc.fetch(segments[0], &dest),
        0,
        "fetch of the first segment",
    );
    assert!(std::fs::read(&dest).unwrap() == original(segments[0]));
    let expected: Vec<String> = segments[1..segments.len().min(5)]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let fetch_dir = wait_for("the prefetcher", Duration::from_secs(60), || {
        let dir = spool_dir(&arc)?.join("fetch");
        expected.iter().all(|s| dir.join(s).exists()).then_some(dir)
    });
    // It wrote nothing into the data directory.
    assert_eq!(names_in(&pg_wal), ["RECOVERYXLOG"]);
    std::fs::remove_file(&dest).unwrap();

    // A data directory as restore_command's working directory: the spool serves only
    // segments of its cluster.
    let pg_control = |dir: &str, id: u64| {
        let d = arc.path(dir);
        write_as(&d.join("global"), "pg_control", &id.to_ne_bytes());
        d
    };
    let ours = pg_control("ours", sysid);
    let theirs = pg_control("theirs", sysid ^ 1);
    let fetch_in = |cwd: &Path, name: &str| {
        let mut c = arc.cmd();
        c.current_dir(cwd).args(["wal", "fetch", name]).arg(&dest);
        run_timeout(c, RUN)
    };

    with_repo_away(&arc, || {
        // The next segment comes from the spool without the repository.
        expect_code(
            &fetch_in(&ours, segments[1]),
            0,
            "fetch from the spool, repository away",
        );
        assert!(std::fs::read(&dest).unwrap() == original(segments[1]));
        std::fs::remove_file(&dest).unwrap();
        assert!(
            !fetch_dir.join(segments[1].as_str()).exists(),
            "served twice"
        );

        // A spool file whose bytes changed is not served.
        let tampered = fetch_dir.join(segments[2].as_str());
        let mut bytes = std::fs::read(&tampered).unwrap();
        bytes[SEG / 3] ^= 0x01;
        std::fs::write(&tampered, bytes).unwrap();
        expect_code(
            &arc.fetch(segments[2], &dest),
            128,
            "fetch of a tampered spool file",
        );
        assert!(names_in(&pg_wal).is_empty(), "{:?}", names_in(&pg_wal));

        // Nothing in the spool and no repository: cannot tell.
        expect_code(
            &arc.fetch("000000010000000000000099", &dest),
            128,
            "fetch, repository away",
        );
        expect_code(
            &arc.fetch("00000002.history", &dest),
            128,
            "fetch of a history file, repository away",
        );
        assert!(names_in(&pg_wal).is_empty());
    });

    // Another cluster's data directory is never served this cluster's segments.
    expect_code(
        &arc.fetch(segments[0], &dest),
        0,
        "fetch of the first segment again",
    );
    std::fs::remove_file(&dest).unwrap();
    wait_for("the prefetcher", Duration::from_secs(60), || {
        fetch_dir.join(segments[1].as_str()).exists().then_some(())
    });
    with_repo_away(&arc, || {
        expect_code(
            &fetch_in(&theirs, segments[1]),
            128,
            "fetch from the spool for another cluster, repository away",
        );
        assert!(names_in(&pg_wal).is_empty(), "{:?}", names_in(&pg_wal));
    });

    // The tampered file was dropped; the repository serves the genuine one.
    expect_code(
        &arc.fetch(segments[2], &dest),
        0,
        "fetch after a tampered spool file",
    );
    assert!(std::fs::read(&dest).unwrap() == original(segments[2]));
    std::fs::remove_file(&dest).unwrap();
    // Absent names are still answered by the repository alone.
    for missing in ["000000010000000000000099", "00000002.history"] {
        expect_code(
            &arc.fetch(missing, &dest),
            1,
            &format!("fetch of {missing}"),
        );
    }
    assert!(names_in(&pg_wal).is_empty());

    // With --prefetch 0 nothing is prefetched.
    let arc2 = Archive::new();
    let mut c = arc2.cmd();
    c.args(["wal", "push", "--ahead", "0"])
        .arg(archive.join(segments[0].as_str()));
    expect_code(&run_timeout(c, RUN), 0, "push");
    let mut c = arc2.cmd();
    c.args(["wal", "push", "--ahead", "0"])
        .arg(archive.join(segments[1].as_str()));
    expect_code(&run_timeout(c, RUN), 0, "push");
    let mut c = arc2.cmd();
    c.args(["wal", "fetch", "--prefetch", "0", segments[0]])
        .arg(&dest);
    expect_code(&run_timeout(c, RUN), 0, "fetch --prefetch 0");
    assert!(spool_dir(&arc2).is_none_or(|d| !d.join("fetch").join(segments[1].as_str()).exists()));
}
