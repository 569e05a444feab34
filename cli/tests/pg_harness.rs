//! The PostgreSQL test harness itself, against a real PostgreSQL 15 with a plain `cp`
//! archive: what the WAL archiving and restore tests build on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::pg::{
    file_size, postgres_tempdir, run_timeout, Bench, Cluster, ClusterOpts, Pg, RestoredOpts,
};

#[test]
fn archives_wal_with_plain_cp() {
    let Some(_pg) = Pg::require() else { return };
    let archive = postgres_tempdir();
    let a = archive.path().display().to_string();
    let dir = postgres_tempdir();
    let mut pg = Cluster::init(
        &dir.path().join("cluster"),
        &ClusterOpts::archiving(&format!("test ! -f {a}/%f && cp %p {a}/%f")),
    );
    pg.start();
    assert!(pg.is_running());
    assert_eq!(pg.psql("select 1 + 1"), "2");
    assert!(!pg.in_recovery());
    assert!(pg.system_identifier() > 0);
    assert_eq!(
        pg.system_identifier().to_string(),
        pg.psql("select system_identifier from pg_control_system()")
    );

    pg.pgbench_init(1);
    pg.pgbench(Bench::Transactions(200), 2);
    let before = pg.current_lsn();
    pg.create_restore_point("after-bench");
    assert!(!pg.now().is_empty());

    let switched = pg.switch_wal();
    let segment = pg.walfile_name(&switched);
    let stats = pg.wait_archived(&switched, Duration::from_secs(15));
    assert!(stats.archived_count >= 1, "{stats:?}");
    assert_eq!(stats.failed_count, 0, "{stats:?}");
    assert!(pg.walfile_name(&before) <= segment);

    let archived = archive.path().join(&segment);
    assert_eq!(file_size(&archived), 16 * 1024 * 1024);

    pg.kill();
    assert!(!pg.is_running());
    assert!(pg.pids().is_empty());

    // Crash recovery after losing the server.
    pg.start();
    assert_eq!(pg.psql("select count(*) from pgbench_accounts"), "100000");
    pg.kill();
}

#[test]
fn restored_base_backup_recovers_to_a_restore_point() {
    let Some(_pg) = Pg::require() else { return };
    let archive = postgres_tempdir();
    let a = archive.path().display().to_string();
    let dir = postgres_tempdir();
    let mut pg = Cluster::init(
        &dir.path().join("cluster"),
        &ClusterOpts::archiving(&format!("test ! -f {a}/%f && cp %p {a}/%f")),
    );
    pg.start();
    pg.exec("create table t (n int)");
    let restored = dir.path().join("restored");
    let mut cmd = pg.command("pg_basebackup");
    cmd.arg("-D")
        .arg(&restored)
        .args(["-X", "none", "-c", "fast"]);
    let out = run_timeout(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    pg.exec("insert into t select generate_series(1, 10)");
    pg.create_restore_point("ten");
    pg.exec("insert into t select generate_series(11, 20)");
    pg.switch_and_archive(Duration::from_secs(15));
    let id = pg.system_identifier();
    pg.stop();

    let mut back = Cluster::from_restored(
        &restored,
        &RestoredOpts {
            restore_command: Some(format!("cp {a}/%f %p")),
            targets: vec![("recovery_target_name".into(), "ten".into())],
            settings: vec![("archive_mode".into(), "off".into())],
            ..RestoredOpts::default()
        },
    );
    assert_ne!(back.port, pg.port);
    back.start_recovered(Duration::from_secs(15));
    assert_eq!(back.psql("select count(*) from t"), "10");
    assert_eq!(back.system_identifier(), id);
    assert_eq!(back.timeline(), 2);
}

#[test]
fn dropping_a_cluster_leaves_no_postgres_running() {
    let Some(_pg) = Pg::require() else { return };
    let dir = postgres_tempdir();
    let mut pg = Cluster::init(&dir.path().join("cluster"), &ClusterOpts::default());
    pg.start();
    pg.exec("create table t as select generate_series(1, 1000) as n");
    assert_eq!(pg.psql("select count(*) from t"), "1000");
    pg.restart();
    assert_eq!(pg.psql("select count(*) from t"), "1000");

    let data = pg.data.display().to_string();
    let pids = pg.pids();
    assert!(pids.len() > 1, "postmaster and children: {pids:?}");
    assert!(pgrep(&data), "pgrep finds the running postmaster");
    drop(pg);

    assert!(!pgrep(&data), "a postgres survived the drop");
    for p in pids {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().chars().next().unwrap_or(' '))
            .unwrap_or('-');
        assert!(
            stat.is_empty() || state == 'Z',
            "process {p} survived the drop: {stat}"
        );
    }
}

fn pgrep(pattern: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .status()
        .unwrap()
        .success()
}
