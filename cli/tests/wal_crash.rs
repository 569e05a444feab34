//! A `cairn wal push` killed at any moment leaves the archive consistent, and PostgreSQL's
//! retry of the same segment then succeeds with the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::pg::{postgres_tempdir, Cluster, ClusterOpts, Pg};
use common::pg_archive::PgArchive;

#[test]
fn a_push_killed_at_any_moment_is_retried_to_the_same_bytes() {
    let Some(_pg) = Pg::require() else { return };
    let arc = PgArchive::new();
    let work = postgres_tempdir();
    // Real segments of a real cluster: initdb writes the first one; a started cluster more.
    let mut pg = Cluster::init(
        &work.path().join("cluster"),
        &ClusterOpts {
            fsync: false,
            ..ClusterOpts::default().setting("archive_command", "/bin/true")
        },
    );
    pg.start();
    let mut names = Vec::new();
    for _ in 0..5 {
        let lsn = pg.switch_wal();
        names.push(pg.walfile_name(&lsn));
        pg.exec("create table if not exists t (x int); insert into t values (1)");
    }
    // An immediate stop leaves the finished segments in pg_wal (a checkpoint would recycle
    // them).
    pg.stop_immediate();
    // Kill pushes at different moments: before the repository is opened, while the
    // segment is read and sealed, while the pack, index or snapshot is written.
    let delays_ms = [0u64, 5, 15, 30, 60];
    let mut tried = 0;
    for (name, delay) in names.iter().zip(delays_ms) {
        let seg = pg.data.join("pg_wal").join(name);
        if !seg.exists() {
            continue;
        }
        tried += 1;
        let copy = work.path().join(name);
        std::fs::copy(&seg, &copy).unwrap();
        common::pg::give_to_postgres(&copy);
        let mut c = arc.cmd();
        c.args(["wal", "push"]).arg(&copy);
        let mut child = c.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        // PostgreSQL retries the same file.
        let out = arc.run(&["wal", "push", copy.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "retry of {name} after a kill at {delay} ms: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let back = work.path().join(format!("{name}.fetched"));
        let out = arc.run(&["wal", "fetch", name, back.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::fs::read(&back).unwrap() == std::fs::read(&copy).unwrap(),
            "{name} fetched with other bytes"
        );
    }
    assert!(tried >= 3, "only {tried} segments were left to push");
    let out = arc.run(&["check", "--read-data"]);
    assert!(
        out.status.success(),
        "check after killed pushes: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
