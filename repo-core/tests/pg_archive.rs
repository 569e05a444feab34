#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The archive as status, restore planning and retention see it: timelines and their
//! switches, gaps, time targets, incomplete base backups, and WAL dropped by recovery window
//! without losing what a kept base backup needs (docs/postgresql.md, "Status and
//! verification" and "Retention"). WAL is pushed with the real `wal::push` (1 MiB segments
//! with valid headers and chosen modification times); base backups are saved directly.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use cairn_repo::format::snapshot::{PgInfo, Snapshot, SnapshotKind, Summary};
use cairn_repo::pg::archive_map::{ArchiveMap, Scope};
use cairn_repo::pg::consolidate::consolidate;
use cairn_repo::pg::pitr_retention::{anchor, pitr_backups, trim_wal, WalKeep};
use cairn_repo::pg::recovery_plan::{PlanError, RecoveryTarget, SegmentRun, TargetTimeline};
use cairn_repo::pg::status::status;
use cairn_repo::pg::wal::{fetch, push, Catalog, Fetched};
use cairn_repo::pg::{Lsn, Segment};
use cairn_repo::{Id, Repository};

const SEG: u32 = 1 << 20;
const SYSID: u64 = 7_300_000_000_000_000_002;
/// 2024-01-01T00:00:00Z: segment n of timeline t is last written at BASE + n minutes
/// (+ 30 s on timeline 2).
const BASE: u64 = 1_704_067_200;

fn written(timeline: u32, number: u64) -> u64 {
    BASE + number * 60 + if timeline == 2 { 30 } else { 0 }
}

fn rfc(secs: u64) -> String {
    jiff::Timestamp::from_second(secs as i64)
        .unwrap()
        .to_string()
}

/// A 1 MiB segment with a valid long header, last written at `mtime` (seconds).
fn segment(dir: &Path, timeline: u32, number: u64, mtime: u64) -> PathBuf {
    let p = common::wal_segment(dir, timeline, number, SEG, SYSID, 0);
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
    p
}

fn push_segments(repo: &Repository, dir: &Path, timeline: u32, numbers: impl Iterator<Item = u64>) {
    for n in numbers {
        push(repo, &segment(dir, timeline, n, written(timeline, n))).unwrap();
    }
}

fn push_history(repo: &Repository, dir: &Path, timeline: u32, text: &str) {
    let p = dir.join(format!("{timeline:08X}.history"));
    std::fs::write(&p, text).unwrap();
    push(repo, &p).unwrap();
}

fn lsn_in(number: u64, offset: u64) -> String {
    Lsn(number * u64::from(SEG) + offset).to_string()
}

/// A base backup on `timeline` from segment `start` to segment `stop`, stopping at
/// `stop_time`; saved with the tree of any existing snapshot (its tree is not read here).
fn base_backup(
    repo: &Repository,
    timeline: u32,
    (start, stop): (u64, u64),
    stop_time: u64,
    incomplete: bool,
) -> (Id, PgInfo) {
    let tree = repo.snapshots().unwrap()[0].1.tree;
    let name = |n: u64| Segment::from_number(timeline, n, SEG).unwrap().name(SEG);
    let pg = PgInfo {
        system_identifier: SYSID.to_string(),
        timeline,
        start_lsn: Some(lsn_in(start, 0x28)),
        stop_lsn: Some(lsn_in(stop, 0x100)),
        wal_first: Some(name(start)),
        wal_last: Some(name(stop)),
        start_time: Some(rfc(stop_time - 30)),
        stop_time: Some(rfc(stop_time)),
        ..PgInfo::default()
    };
    let snap = Snapshot {
        version: 1,
        time: rfc(stop_time),
        host: "db".into(),
        user: "postgres".into(),
        tenant: "default".into(),
        kind: SnapshotKind::PgBasebackup,
        paths: vec!["/var/lib/postgresql/data".into()],
        tags: Vec::new(),
        parent: None,
        tree,
        summary: Summary::default(),
        program_version: "test".into(),
        incomplete,
        command: Vec::new(),
        pg: Some(pg.clone()),
        original: None,
    };
    (repo.save_snapshot(&snap).unwrap(), pg)
}

fn map(repo: &Repository) -> ArchiveMap {
    ArchiveMap::load(repo, &Catalog::load(repo).unwrap(), &Scope::All).unwrap()
}

fn run(timeline: u32, first: u64, last: u64) -> SegmentRun {
    SegmentRun {
        timeline,
        first,
        last,
    }
}

fn gap_of(r: Result<impl std::fmt::Debug, PlanError>) -> String {
    match r {
        Err(PlanError::Gap(g)) => g.missing,
        other => panic!("expected a gap, got {other:?}"),
    }
}

/// Timeline 1 holds segments 1..=6; timeline 2 branched in segment 5 (at 0/500080) and
/// holds 5, 6, 7 and 9 (8 is missing). A base backup on timeline 1 covers 1..=2.
#[test]
fn plans_follow_the_timeline_path_and_name_the_first_missing_segment() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    let src = dir.path().join("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    push_segments(&repo, &src, 1, 1..=6);
    push_history(
        &repo,
        &src,
        2,
        "1\t0/500080\tno recovery target specified\n",
    );
    push_segments(&repo, &src, 2, [5, 6, 7, 9].into_iter());
    let (_, b1) = base_backup(&repo, 1, (1, 2), written(1, 2), false);
    let m = map(&repo);
    assert_eq!(m.seg_size(), SEG);

    // Along timeline 1 the WAL runs to its end.
    let p = m
        .plan(&b1, TargetTimeline::Current, RecoveryTarget::EndOfArchive)
        .unwrap();
    assert_eq!(p.runs, vec![run(1, 1, 6)]);
    // Along timeline 2: 1..=4 from timeline 1, then timeline 2 from the switch's segment.
    let target = Lsn::parse(&lsn_in(7, 0x10)).unwrap();
    let p = m
        .plan(&b1, TargetTimeline::Id(2), RecoveryTarget::Lsn(target))
        .unwrap();
    assert_eq!(p.runs, vec![run(1, 1, 4), run(2, 5, 7)]);
    assert_eq!(p.names()[4], "000000020000000000000005");
    // To the end of timeline 2 (also "latest"), segment 8 is missing.
    assert_eq!(
        gap_of(
            m.plan(&b1, TargetTimeline::Latest, RecoveryTarget::EndOfArchive)
                .map(|_| ())
        ),
        "000000020000000000000008"
    );
    let e: cairn_repo::Error = m
        .plan(
            &b1,
            TargetTimeline::Id(2),
            RecoveryTarget::Lsn(Lsn(9 * u64::from(SEG))),
        )
        .unwrap_err()
        .into();
    assert_eq!(e.kind(), cairn_repo::ErrorKind::NotFound);
    assert!(e.to_string().contains("000000020000000000000008"), "{e}");
    // Immediate: the backup's start..stop only.
    let p = m
        .plan(&b1, TargetTimeline::Latest, RecoveryTarget::Immediate)
        .unwrap();
    assert_eq!(p.runs, vec![run(1, 1, 2)]);
    let end = m.end_of_wal(&b1, TargetTimeline::Id(2)).unwrap().unwrap();
    assert_eq!(end.0.name(SEG), "000000020000000000000007");

    // A time target needs a segment written after it: 20 s after timeline 2's segment 5
    // was last written, segment 6 is the first written later.
    let t = jiff::Timestamp::from_second((written(2, 5) + 20) as i64).unwrap();
    let p = m
        .plan(&b1, TargetTimeline::Id(2), RecoveryTarget::Time(t))
        .unwrap();
    assert_eq!(p.runs, vec![run(1, 1, 4), run(2, 5, 6)]);
    // Past everything reachable: the gap is named.
    let late = jiff::Timestamp::from_second((written(2, 9) + 1) as i64).unwrap();
    assert_eq!(
        gap_of(
            m.plan(&b1, TargetTimeline::Id(2), RecoveryTarget::Time(late))
                .map(|_| ())
        ),
        "000000020000000000000008"
    );
    // Before the backup's end: refused, whatever the archive holds.
    let early = jiff::Timestamp::from_second((written(1, 2) - 100) as i64).unwrap();
    assert!(matches!(
        m.plan(&b1, TargetTimeline::Current, RecoveryTarget::Time(early)),
        Err(PlanError::Refused(_))
    ));

    // A backup that ended after timeline 2 branched cannot follow timeline 2.
    let (_, b2) = base_backup(&repo, 1, (3, 6), written(1, 6), false);
    let e = m
        .plan(&b2, TargetTimeline::Id(2), RecoveryTarget::EndOfArchive)
        .unwrap_err();
    assert!(e.to_string().contains("branched"), "{e}");
    // A backup whose own WAL is not all archived.
    let (_, b3) = base_backup(&repo, 2, (7, 8), written(2, 8), false);
    assert_eq!(
        m.consistency_gap(&b3).unwrap().unwrap().missing,
        "000000020000000000000008"
    );
    assert!(m.consistency_gap(&b1).unwrap().is_none());
}

#[test]
fn status_reports_windows_gaps_and_inconsistent_backups() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    let src = dir.path().join("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    push_segments(&repo, &src, 1, 1..=6);
    push_history(&repo, &src, 2, "1\t0/500080\tx\n");
    push_segments(&repo, &src, 2, [5, 6, 7, 9].into_iter());
    let (b1, _) = base_backup(&repo, 1, (1, 2), written(1, 2), false);
    let (b3, _) = base_backup(&repo, 2, (7, 8), written(2, 8), true);

    let st = status(&repo).unwrap();
    assert_eq!(
        st.system_identifier.as_deref(),
        Some(SYSID.to_string().as_str())
    );
    // The incomplete backup is reported, not a problem; the gap at 8 cuts off segment 9
    // after the newest consistent backup on timeline 2: a problem.
    assert!(!st.healthy(), "{:?}", st.problems);
    assert_eq!(st.problems.len(), 1, "{:?}", st.problems);
    assert!(st.problems[0].contains("000000020000000000000008"));
    let s1 = st.base_backups.iter().find(|b| b.id == b1).unwrap();
    assert!(s1.wal_present);
    let w2 = s1.windows.iter().find(|w| w.timeline == 2).unwrap();
    assert_eq!(w2.last_segment.as_deref(), Some("000000020000000000000007"));
    assert_eq!(w2.to, Some(rfc(written(2, 7))));
    assert_eq!(w2.from, Some(rfc(written(1, 2))));
    assert_eq!(w2.cut_by_gap.as_deref(), Some("000000020000000000000008"));
    let w1 = s1.windows.iter().find(|w| w.timeline == 1).unwrap();
    assert_eq!(w1.last_segment.as_deref(), Some("000000010000000000000006"));
    assert!(w1.cut_by_gap.is_none());
    let s3 = st.base_backups.iter().find(|b| b.id == b3).unwrap();
    assert!(s3.incomplete && !s3.wal_present);
    let t2 = st.timelines.iter().find(|t| t.timeline == 2).unwrap();
    assert_eq!(t2.history[0].parent, 1);
    assert_eq!(t2.ranges.len(), 2);
    assert_eq!(t2.gaps[0].first, "000000020000000000000008");
    // Timeline 1 continued past the switch (segment 6): a warning only.
    assert!(st.warnings.iter().any(|w| w.contains("continues past")));

    // The missing segment arrives: healthy.
    push_segments(&repo, &src, 2, 8..=8);
    let st = status(&repo).unwrap();
    assert!(st.healthy(), "{:?}", st.problems);
    // A complete base backup whose WAL is missing is a problem.
    base_backup(&repo, 2, (10, 11), written(2, 11), false);
    let st = status(&repo).unwrap();
    assert_eq!(st.problems.len(), 1, "{:?}", st.problems);
    assert!(st.problems[0].contains("cannot be made consistent"));
}

/// Segments 1..=10 of timeline 1 merged into one snapshot, 11 and 12 in their own; a drill
/// timeline 2 branched at segment 2 with one segment. Base backups stopped 9, 8 and 1 days
/// before now; a 7-day window keeps the 8-day one (newest before the window) and the 1-day
/// one with all WAL from segment 5, the 9-day one (kept by another rule) with 2..=3.
#[test]
fn retention_keeps_the_window_and_kept_backups_consistency_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    let src = dir.path().join("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    let now = jiff::Timestamp::now().as_second() as u64;
    let old = |n: u64| now - 10 * 86_400 + n * 3600;
    for n in 1..=10 {
        push(&repo, &segment(&src, 1, n, old(n))).unwrap();
    }
    consolidate(&repo).unwrap();
    for n in 11..=12 {
        push(&repo, &segment(&src, 1, n, old(n))).unwrap();
    }
    push_history(&repo, &src, 2, "1\t0/200000\tdrill\n");
    push(&repo, &segment(&src, 2, 2, old(2))).unwrap();

    let (b_old, old_pg) = base_backup(&repo, 1, (2, 3), now - 9 * 86_400, false);
    let (b_mid, mid_pg) = base_backup(&repo, 1, (5, 6), now - 8 * 86_400, false);
    let (b_new, new_pg) = base_backup(&repo, 1, (9, 10), now - 86_400, false);
    let (b_inc, _) = base_backup(&repo, 1, (11, 12), now - 3600, true);
    let all = repo.snapshots().unwrap();
    let w = anchor(&all).unwrap() - jiff::SignedDuration::from_hours(7 * 24);
    let kept = pitr_backups(&all, w);
    assert!(kept.contains_key(&b_mid) && kept.contains_key(&b_new));
    assert!(!kept.contains_key(&b_old) && !kept.contains_key(&b_inc));

    let m = map(&repo);
    let keep = WalKeep::compute(&m, &[&mid_pg, &new_pg], &[&old_pg], Some(w)).unwrap();
    let before = Catalog::load(&repo).unwrap().snapshots().len();
    let dry = trim_wal(&repo, &keep, true).unwrap();
    assert_eq!(Catalog::load(&repo).unwrap().snapshots().len(), before);
    let report = trim_wal(&repo, &keep, false).unwrap();
    assert_eq!(dry.dropped_segments, report.dropped_segments);
    let dropped: Vec<_> = report.dropped_segments[&1]
        .iter()
        .map(|(a, b, _)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        dropped,
        vec![
            ("000000010000000000000001", "000000010000000000000001"),
            ("000000010000000000000004", "000000010000000000000004")
        ]
    );
    assert_eq!(report.dropped_segments[&2][0].0, "000000020000000000000002");
    // The merged snapshot was rewritten, the drill segment's removed, 11 and 12 untouched.
    assert_eq!(report.rewritten.len(), 1);
    assert_eq!(report.removed.len(), 1);

    let m = map(&repo);
    let kept: Vec<u64> = m.timelines()[&1].segments.keys().copied().collect();
    assert_eq!(kept, vec![2, 3, 5, 6, 7, 8, 9, 10, 11, 12]);
    assert!(m.timelines().get(&2).is_none_or(|t| t.segments.is_empty()));
    assert!(
        m.histories().contains_key(&2),
        "history files are always kept"
    );
    // Kept segments still fetch byte for byte; dropped ones are absent.
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for n in [2u64, 5, 10, 12] {
        let name = Segment::from_number(1, n, SEG).unwrap().name(SEG);
        assert!(matches!(
            fetch(&repo, &name, &out.join(&name)).unwrap(),
            Fetched::Written { .. }
        ));
        assert_eq!(
            std::fs::read(out.join(&name)).unwrap(),
            std::fs::read(src.join(&name)).unwrap()
        );
    }
    for n in [1u64, 4] {
        let name = Segment::from_number(1, n, SEG).unwrap().name(SEG);
        assert_eq!(
            fetch(&repo, &name, &out.join("x")).unwrap(),
            Fetched::Absent
        );
    }
    // Every kept backup still plans; running again drops nothing more.
    for pg in [&old_pg, &mid_pg, &new_pg] {
        assert!(m.consistency_gap(pg).unwrap().is_none());
    }
    let again = trim_wal(
        &repo,
        &WalKeep::compute(&m, &[&mid_pg, &new_pg], &[&old_pg], Some(w)).unwrap(),
        false,
    )
    .unwrap();
    assert!(again.dropped_segments.is_empty() && again.rewritten.is_empty());
    common::assert_clean(&repo);
}

/// Segments written inside the window are kept even on a timeline no kept backup reaches.
#[test]
fn recent_wal_is_kept_whatever_its_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::init(dir.path());
    let repo = common::open(dir.path(), &key, "cache");
    let src = dir.path().join("pg_wal");
    std::fs::create_dir_all(&src).unwrap();
    let now = jiff::Timestamp::now().as_second() as u64;
    for n in 1..=4 {
        push(&repo, &segment(&src, 1, n, now - 20 * 86_400 + n)).unwrap();
    }
    push_history(&repo, &src, 2, "1\t0/100000\trestored\n");
    push(&repo, &segment(&src, 2, 1, now - 60)).unwrap();
    let (_, b) = base_backup(&repo, 1, (3, 4), now - 19 * 86_400, false);
    let all = repo.snapshots().unwrap();
    let w = anchor(&all).unwrap() - jiff::SignedDuration::from_hours(24);
    let m = map(&repo);
    let keep = WalKeep::compute(&m, &[&b], &[], Some(w)).unwrap();
    let r = trim_wal(&repo, &keep, false).unwrap();
    assert_eq!(r.dropped_segments[&1].len(), 1);
    assert!(!r.dropped_segments.contains_key(&2));
    let m = map(&repo);
    assert_eq!(m.timelines()[&2].segments.len(), 1);
}
