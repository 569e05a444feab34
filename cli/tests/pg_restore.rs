//! `cairn pg basebackup` and `cairn pg restore` against real PostgreSQL 15 clusters: a
//! cluster archives through `cairn wal push` under pgbench load, is lost, and is brought
//! back to recorded points (times between two known commits, an LSN, a restore point, a
//! transaction, the end of the archive), across a timeline switch, and never further than
//! the archive can take it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::pg::{postgres_tempdir, Bench, Cluster, ClusterOpts, Pg, RestoredOpts};
use common::pg_archive::PgArchive;

const RECOVERY: Duration = Duration::from_secs(120);
const ARCHIVED: Duration = Duration::from_secs(60);

fn archiving_cluster(arc: &PgArchive, dir: &Path) -> Cluster {
    let mut pg = Cluster::init(
        dir,
        &ClusterOpts {
            fsync: false,
            ..ClusterOpts::archiving(&arc.archive_command()).env(arc.base_vars())
        },
    );
    pg.start();
    pg.exec("create table marks (n int primary key, at timestamptz default clock_timestamp())");
    pg
}

fn mark(pg: &Cluster, n: u32) {
    pg.exec(&format!("insert into marks (n) values ({n})"));
}

/// A moment strictly between the commit just made and the next one.
fn moment_between(pg: &Cluster) -> String {
    std::thread::sleep(Duration::from_millis(200));
    let t = pg.now();
    std::thread::sleep(Duration::from_millis(200));
    t
}

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Restores into `work/name` with `args`, starts it with archiving off, waits for the end
/// of recovery, and returns the marks it holds.
fn restore_and_read(arc: &PgArchive, work: &Path, name: &str, args: &[&str]) -> Vec<u32> {
    let back = restore_and_start(arc, work, name, args, false);
    back.wait_recovery_end(RECOVERY);
    marks(&back)
}

fn restore_and_start(
    arc: &PgArchive,
    work: &Path,
    name: &str,
    args: &[&str],
    archiving: bool,
) -> Cluster {
    let data = work.join(name);
    let out = arc.restore(&data, args);
    assert_eq!(
        code(&out),
        Some(0),
        "cairn pg restore {args:?}: {}",
        text(&out)
    );
    let mut settings = Vec::new();
    if !archiving {
        settings.push(("archive_mode".to_string(), "off".to_string()));
    }
    let mut back = Cluster::from_restored(
        &data,
        &RestoredOpts {
            settings,
            env: arc.base_vars(),
            ..RestoredOpts::default()
        },
    );
    back.start();
    back
}

fn marks(pg: &Cluster) -> Vec<u32> {
    pg.psql("select coalesce(string_agg(n::text, ',' order by n), '') from marks")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn restores_to_times_an_lsn_a_restore_point_a_transaction_and_the_end() {
    let Some(_pg) = Pg::require() else { return };
    let arc = PgArchive::new();
    let work = postgres_tempdir();
    let pg = archiving_cluster(&arc, &work.path().join("cluster"));
    pg.pgbench_init(1);
    let base = arc.basebackup(&pg);
    assert_eq!(base["incomplete"], false, "{base}");
    assert_eq!(base["pg"]["timeline"], 1, "{base}");

    // Known commits, with load beside them.
    let mut times = Vec::new();
    let (lsn_after_2, xid_of_5) = std::thread::scope(|s| {
        s.spawn(|| pg.pgbench(Bench::Seconds(4), 2));
        mark(&pg, 1);
        times.push(moment_between(&pg)); // between 1 and 2
        mark(&pg, 2);
        let lsn = pg.current_lsn();
        mark(&pg, 3);
        pg.create_restore_point("after-3");
        mark(&pg, 4);
        times.push(moment_between(&pg)); // between 4 and 5
        let xid = pg.psql("insert into marks (n) values (5); select txid_current()");
        mark(&pg, 6);
        times.push(moment_between(&pg)); // between 6 and 7
        mark(&pg, 7);
        (lsn, xid)
    });
    pg.switch_and_archive(ARCHIVED);
    drop(pg); // the cluster is lost

    let w = work.path();
    assert_eq!(
        restore_and_read(&arc, w, "t1", &["--target-time", &times[0]]),
        [1]
    );
    assert_eq!(
        restore_and_read(&arc, w, "t4", &["--target-time", &times[1]]),
        [1, 2, 3, 4]
    );
    // ISO 8601 in another zone means the same moment.
    let moment: jiff::Timestamp = format!("{}:00", times[2].replacen(' ', "T", 1))
        .parse()
        .unwrap();
    let iso = moment
        .to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(2)))
        .strftime("%Y-%m-%dT%H:%M:%S%.f%:z")
        .to_string();
    assert_eq!(
        restore_and_read(&arc, w, "t6", &["--target-time", &iso]),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        restore_and_read(&arc, w, "lsn", &["--target-lsn", &lsn_after_2]),
        [1, 2]
    );
    assert_eq!(
        restore_and_read(&arc, w, "name", &["--target-name", "after-3"]),
        [1, 2, 3]
    );
    assert_eq!(
        restore_and_read(&arc, w, "xid", &["--target-xid", &xid_of_5]),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        restore_and_read(&arc, w, "latest", &[]),
        [1, 2, 3, 4, 5, 6, 7]
    );
    let immediate = restore_and_start(&arc, w, "immediate", &["--immediate"], false);
    immediate.wait_recovery_end(RECOVERY);
    assert!(marks(&immediate).is_empty());
    assert_eq!(
        immediate.psql("select count(*) > 0 from pgbench_accounts"),
        "t"
    );
}

/// A cluster archiving into `arc` with a base backup and marks 1, 2, 3, then lost; returns
/// a moment between 1 and 2 and one between 2 and 3.
fn archive_marks_then_lose(arc: &PgArchive, w: &Path) -> (String, String) {
    let pg = archiving_cluster(arc, &w.join("cluster"));
    arc.basebackup(&pg);
    mark(&pg, 1);
    let t12 = moment_between(&pg);
    mark(&pg, 2);
    let t23 = moment_between(&pg);
    mark(&pg, 3);
    pg.switch_and_archive(ARCHIVED);
    (t12, t23)
}

#[test]
fn a_restore_before_a_timeline_switch_and_the_latest_after_it() {
    let Some(_pg) = Pg::require() else { return };
    let arc = PgArchive::new();
    let work = postgres_tempdir();
    let w = work.path();
    let (t12, t23) = archive_marks_then_lose(&arc, w);

    // Back to before 3, promoted on timeline 2, which goes on archiving into the same tenant.
    let second = restore_and_start(&arc, w, "second", &["--target-time", &t23], true);
    second.wait_recovery_end(RECOVERY);
    assert_eq!(second.timeline(), 2);
    assert_eq!(marks(&second), [1, 2]);
    mark(&second, 100);
    second.switch_and_archive(ARCHIVED);
    drop(second);

    // A moment before the switch is still reachable, on timeline 1.
    assert_eq!(
        restore_and_read(&arc, w, "before", &["--target-time", &t12]),
        [1]
    );
    // The end of the archive follows timeline 2: mark 3 was abandoned with timeline 1.
    assert_eq!(restore_and_read(&arc, w, "latest", &[]), [1, 2, 100]);
}

#[test]
fn a_restore_refuses_what_it_cannot_do_and_writes_nothing() {
    let Some(_pg) = Pg::require() else { return };
    let arc = PgArchive::new();
    let work = postgres_tempdir();
    let w = work.path();

    // No base backup yet.
    let out = arc.restore(&w.join("none"), &[]);
    assert_eq!(code(&out), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no complete base backup"),
        "{}",
        text(&out)
    );
    assert!(!w.join("none").exists());

    let pg = archiving_cluster(&arc, &w.join("cluster"));
    arc.basebackup(&pg);
    mark(&pg, 1);
    pg.switch_and_archive(ARCHIVED);
    let after_all = moment_between(&pg);

    // A target later than anything archived: recovery could not tell it got there.
    let out = arc.restore(&w.join("future"), &["--target-time", &after_all]);
    assert_eq!(code(&out), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("needs WAL written after it"),
        "{}",
        text(&out)
    );
    assert!(!w.join("future").exists(), "a refused restore wrote files");

    // An LSN beyond the archive.
    let out = arc.restore(&w.join("far"), &["--target-lsn", "FF/0"]);
    assert_eq!(code(&out), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is not in the archive"),
        "{}",
        text(&out)
    );
    assert!(!w.join("far").exists());

    // A data directory that is not empty is left as it is.
    let busy = w.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("PG_VERSION"), "15\n").unwrap();
    let out = arc.restore(&busy, &[]);
    assert_eq!(code(&out), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not empty"), "{}", text(&out));
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);

    // Run by root with a key file only root can read: the cluster's owner could not fetch
    // a single segment, so nothing is restored.
    if common::pg::is_root() {
        let private = tempfile::tempdir().unwrap();
        let key = private.path().join("root.key");
        std::fs::copy(arc.key(), &key).unwrap();
        let data = w.join("as-root");
        let mut c = std::process::Command::new(&arc.cairn);
        c.env_clear()
            .envs(arc.base_vars())
            .args([
                "-r",
                arc.repo().to_str().unwrap(),
                "--key-file",
                key.to_str().unwrap(),
            ])
            .args([
                "--no-cache",
                "pg",
                "restore",
                "--pgdata",
                data.to_str().unwrap(),
            ]);
        let out = common::pg::run_timeout(c, Duration::from_secs(120));
        assert_eq!(code(&out), Some(1), "{}", text(&out));
        assert!(text(&out).contains("cannot read"), "{}", text(&out));
        assert!(!data.exists(), "a refused restore wrote files");
    }

    // Bad targets are usage errors.
    let out = arc.restore(&w.join("x"), &["--target-time", "yesterday-ish"]);
    assert_ne!(code(&out), Some(0));
    let out = arc.restore(&w.join("x"), &["--target-lsn", "0/1", "--target-name", "a"]);
    assert_eq!(code(&out), Some(2), "{}", text(&out));
}

#[test]
fn recovery_stops_with_an_error_when_the_archive_cannot_be_read() {
    let Some(_pg) = Pg::require() else { return };
    let arc = PgArchive::new();
    let work = postgres_tempdir();
    let w = work.path();
    let pg = archiving_cluster(&arc, &w.join("cluster"));
    arc.basebackup(&pg);
    for n in 1..=3 {
        mark(&pg, n);
        pg.switch_and_archive(ARCHIVED);
    }
    drop(pg);

    let data = w.join("back");
    let out = arc.restore(&data, &[]);
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    // The repository goes away after the restore: every fetch now cannot tell.
    let hidden = w.join("hidden-repo");
    std::fs::rename(arc.repo(), &hidden).unwrap();
    let mut back = Cluster::from_restored(
        &data,
        &RestoredOpts {
            settings: vec![("archive_mode".into(), "off".into())],
            env: arc.base_vars(),
            ..RestoredOpts::default()
        },
    );
    let started = back.try_start();
    let log = std::fs::read_to_string(&back.log).unwrap_or_default();
    assert!(
        started.is_err() || !back.is_running(),
        "recovery went on without its archive:\n{log}"
    );
    assert!(
        !log.contains("database system is ready to accept connections"),
        "the server opened without its WAL:\n{log}"
    );
    assert!(
        !log.contains("selected new timeline ID"),
        "recovery ended early:\n{log}"
    );

    // With the repository back, the same directory recovers everything.
    std::fs::rename(&hidden, arc.repo()).unwrap();
    back.start();
    back.wait_recovery_end(RECOVERY);
    assert_eq!(marks(&back), [1, 2, 3]);
}

#[test]
fn a_second_base_backup_stores_only_what_changed() {
    let Some(_pg) = Pg::require() else { return };
    let arc = PgArchive::new();
    let work = postgres_tempdir();
    let pg = archiving_cluster(&arc, &work.path().join("cluster"));
    pg.pgbench_init(5);
    let first = arc.basebackup(&pg);
    pg.pgbench(Bench::Transactions(200), 2);
    let second = arc.basebackup(&pg);
    let added = |b: &serde_json::Value| b["summary"]["bytes_added"].as_u64().unwrap();
    let total = |b: &serde_json::Value| b["summary"]["total_bytes"].as_u64().unwrap();
    assert!(added(&first) > total(&first) / 2, "{first}");
    assert!(
        added(&second) * 2 < added(&first),
        "the second base backup stored {} of {} bytes",
        added(&second),
        total(&second)
    );
    assert_ne!(first["snapshot"], second["snapshot"]);
    assert_ne!(first["pg"]["start_lsn"], second["pg"]["start_lsn"]);
    // A cluster that does not archive into this tenant gets an incomplete base backup.
    let mut other = Cluster::init(
        &work.path().join("other"),
        &ClusterOpts::default().setting("archive_mode", "off"),
    );
    other.start();
    let port = other.port.to_string();
    let host = other.socket_dir().display().to_string();
    let out = arc.run(&[
        "pg",
        "basebackup",
        "-h",
        &host,
        "-p",
        &port,
        "-U",
        "postgres",
    ]);
    assert_ne!(code(&out), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("tenant of its own"),
        "a second cluster's base backup was not refused: {}",
        text(&out)
    );
}

#[test]
fn retention_keeps_what_a_window_needs_across_a_timeline_switch() {
    let Some(_pg) = Pg::require() else { return };
    let arc = PgArchive::new();
    let work = postgres_tempdir();
    let w = work.path();
    let (t12, t23) = archive_marks_then_lose(&arc, w);
    // Promoted on timeline 2, which archives on and gets a base backup of its own (whose
    // postgresql.auto.conf holds the recovery settings of the restore that made it).
    let second = restore_and_start(&arc, w, "second", &["--target-time", &t23], true);
    second.wait_recovery_end(RECOVERY);
    mark(&second, 100);
    second.switch_and_archive(ARCHIVED);
    let b2 = arc.basebackup(&second);
    assert_eq!(b2["pg"]["timeline"], 2, "{b2}");
    mark(&second, 101);
    second.switch_and_archive(ARCHIVED);
    drop(second);

    // A window that covers everything keeps everything.
    arc.ok(&["forget", "--keep-within-pitr", "1d", "--prune"]);
    arc.ok(&["check", "--read-data"]);
    assert_eq!(
        restore_and_read(&arc, w, "before", &["--target-time", &t12]),
        [1]
    );

    // A window of a second keeps the newest base backup (timeline 2) and the WAL after it;
    // the first base backup and the WAL only it needed go.
    arc.ok(&["forget", "--keep-within-pitr", "1s", "--prune"]);
    arc.ok(&["check", "--read-data"]);
    let back = restore_and_start(&arc, w, "latest", &[], false);
    back.wait_recovery_end(RECOVERY);
    assert_eq!(marks(&back), [1, 2, 100, 101], "{}", back.log_tail(40));
    let out = arc.restore(&w.join("gone"), &["--target-time", &t12]);
    assert_eq!(code(&out), Some(1), "{}", text(&out));
    assert!(!w.join("gone").exists(), "a refused restore wrote files");
}

/// What a `pg restore` stopped part way leaves (its marker, some files partial or missing,
/// perhaps a `pg_control` and no recovery settings yet) is finished by running it again, and
/// the cluster then recovers as from an uninterrupted restore.
#[test]
fn an_interrupted_restore_is_finished_by_running_it_again() {
    let Some(_pg) = Pg::require() else { return };
    let arc = PgArchive::new();
    let work = postgres_tempdir();
    let w = work.path();
    let pg = archiving_cluster(&arc, &w.join("cluster"));
    pg.pgbench_init(1);
    let base = arc.basebackup(&pg);
    let id = base["snapshot"].as_str().unwrap().to_string();
    mark(&pg, 1);
    pg.switch_and_archive(ARCHIVED);
    drop(pg);

    let data = w.join("back");
    let started = std::time::SystemTime::now() - Duration::from_secs(1);
    let out = arc.restore(&data, &[]);
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    assert!(!data.join(".cairn-restore-in-progress").exists());
    // Undo the end of it, as an interruption would have left it: the marker, dated from
    // before the restore began (what the restore wrote is its own work).
    std::fs::write(
        data.join(".cairn-restore-in-progress"),
        format!("interrupted\nsnapshot {id}\n"),
    )
    .unwrap();
    std::fs::File::options()
        .write(true)
        .open(data.join(".cairn-restore-in-progress"))
        .unwrap()
        .set_modified(started)
        .unwrap();
    let owner = std::fs::metadata(&data).unwrap();
    std::os::unix::fs::chown(
        data.join(".cairn-restore-in-progress"),
        Some(std::os::unix::fs::MetadataExt::uid(&owner)),
        Some(std::os::unix::fs::MetadataExt::gid(&owner)),
    )
    .unwrap();
    std::fs::remove_file(data.join("recovery.signal")).unwrap();
    std::fs::write(data.join("global/pg_control"), b"half").unwrap();
    let largest = std::fs::read_dir(data.join("base/5"))
        .unwrap()
        .map(|e| e.unwrap())
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&largest)
        .unwrap();
    f.set_len(8192).unwrap();
    drop(f);
    std::fs::remove_file(data.join("PG_VERSION")).unwrap();

    // Another data directory's marker is refused.
    let other = w.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join(".cairn-restore-in-progress"),
        format!("interrupted\nsnapshot {}\n", "ab".repeat(32)),
    )
    .unwrap();
    let out = arc.restore(&other, &[]);
    assert_eq!(code(&out), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("interrupted restore of base backup abababab"),
        "{}",
        text(&out)
    );

    let out = arc.restore(&data, &[]);
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    assert!(!data.join(".cairn-restore-in-progress").exists());
    assert!(data.join("recovery.signal").exists());
    // The base backup's files, cut at page boundaries, verify as restored.
    let plain = w.join("plain");
    let out = arc.run(&[
        "restore",
        &id,
        "--target",
        plain.to_str().unwrap(),
        "--verify",
    ]);
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    assert!(text(&out).contains("verified"), "{}", text(&out));
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert_eq!(auto.matches("restore_command").count(), 1, "{auto}");
    let mut back = Cluster::from_restored(
        &data,
        &RestoredOpts {
            settings: vec![("archive_mode".to_string(), "off".to_string())],
            env: arc.base_vars(),
            ..RestoredOpts::default()
        },
    );
    back.start();
    back.wait_recovery_end(RECOVERY);
    assert_eq!(marks(&back), vec![1]);
    assert_eq!(back.psql("select count(*) from pgbench_accounts"), "100000");
}

/// A restore killed after it wrote `pg_control` and the recovery settings but before it
/// removed its marker leaves a cluster PostgreSQL starts. Once a server has run there (or
/// still runs), running the restore again must not take the folder for its own unfinished
/// work: it would replace files under a live server and keep the files the server wrote.
#[test]
fn a_marker_left_in_a_cluster_that_has_run_does_not_resume_over_it() {
    let Some(_pg) = Pg::require() else { return };
    let arc = PgArchive::new();
    let work = postgres_tempdir();
    let w = work.path();
    let pg = archiving_cluster(&arc, &w.join("cluster"));
    let base = arc.basebackup(&pg);
    let id = base["snapshot"].as_str().unwrap().to_string();
    mark(&pg, 1);
    pg.switch_and_archive(ARCHIVED);
    drop(pg);

    let data = w.join("back");
    let out = arc.restore(&data, &[]);
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    let mut back = Cluster::from_restored(
        &data,
        &RestoredOpts {
            settings: vec![("archive_mode".to_string(), "off".to_string())],
            env: arc.base_vars(),
            ..RestoredOpts::default()
        },
    );
    back.start();
    back.wait_recovery_end(RECOVERY);
    back.exec("insert into marks (n) values (2)");
    // The marker the interrupted restore left (as its owner would have it).
    let marker = data.join(".cairn-restore-in-progress");
    std::fs::write(&marker, format!("interrupted\nsnapshot {id}\n")).unwrap();
    let owner = std::fs::metadata(&data).unwrap();
    std::os::unix::fs::chown(
        &marker,
        Some(std::os::unix::fs::MetadataExt::uid(&owner)),
        Some(std::os::unix::fs::MetadataExt::gid(&owner)),
    )
    .unwrap();
    assert!(data.join("postmaster.pid").exists());

    let out = arc.restore(&data, &[]);
    assert_eq!(
        code(&out),
        Some(1),
        "a restore went over a running cluster: {}",
        text(&out)
    );
    assert_eq!(marks(&back), vec![1, 2]);
}
