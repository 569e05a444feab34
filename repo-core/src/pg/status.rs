//! The state of a tenant's PostgreSQL archive: what `cairn wal list` and `cairn pg status`
//! report (docs/postgresql.md, "Status and verification").
//!
//! - per timeline: runs of consecutive segments, the gaps between them, the history file
//!   (where the timeline branched), `.partial` and `.backup` files;
//! - per base backup: complete or not, and whether its WAL from start to stop is archived
//!   (without it the restored cluster never becomes consistent);
//! - the windows of time a restore can reach: from each consistent complete base backup's
//!   stop time to the modification time of the last segment reachable from it without a
//!   gap, along each timeline path through it.
//!
//! **Problems** (the archive cannot do what it is for; `pg status` exits 1): a complete
//! base backup whose start..stop WAL is missing; on a timeline path, a gap after the
//! newest consistent base backup that cuts off archived WAL (the latest moments cannot be
//! restored); a history file that cannot be read; base backups of another cluster.
//! **Warnings** do not change the exit code: older windows that end at a gap (retention
//! keeps only start..stop of base backups older than its window, by design), incomplete
//! base backups, a timeline without a history file, a parent that continued past the point
//! a child branched from it (a restore drill archiving into the production tenant, or two
//! primaries).

use std::collections::BTreeMap;

use serde::Serialize;

use super::archive_map::{ArchiveMap, Scope};
use super::recovery_plan::{BackupPoint, Gap};
use super::timeline::HistoryEntry;
use super::wal::Catalog;
use crate::error::Result;
use crate::format::snapshot::{Snapshot, SnapshotKind};
use crate::id::Id;
use crate::repository::Repository;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub system_identifier: Option<String>,
    pub segment_size: u32,
    pub timelines: Vec<TimelineStatus>,
    pub base_backups: Vec<BaseBackupStatus>,
    /// What makes the archive unfit for a restore (a non-empty list is exit 1).
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

impl Status {
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Consecutive segments (`first..=last`), or a gap when listed as one.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub first: String,
    pub last: String,
    pub count: u64,
    /// The last segment's modification time (RFC 3339), for runs of archived segments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_written: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelineStatus {
    pub timeline: u32,
    /// The ancestors, oldest first, with their switchpoints (from the history file).
    pub history: Vec<HistoryEntry>,
    /// Why the history file could not be used, or that it is missing (timelines above 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_problem: Option<String>,
    pub segments: u64,
    pub ranges: Vec<Run>,
    pub gaps: Vec<Run>,
    pub partial: Vec<String>,
    pub backup_files: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// The timeline the path leads to.
    pub timeline: u32,
    /// The base backup's stop time: the earliest moment a restore reaches.
    pub from: Option<String>,
    /// The last reachable segment's modification time: no later moment is covered.
    pub to: Option<String>,
    pub last_segment: Option<String>,
    /// The first segment missing, when archived WAL of the path continues after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_by_gap: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BaseBackupStatus {
    pub id: Id,
    pub time: String,
    pub timeline: u32,
    pub start_lsn: Option<String>,
    pub stop_lsn: Option<String>,
    pub start_time: Option<String>,
    pub stop_time: Option<String>,
    /// Saved as incomplete: never chosen for a restore.
    pub incomplete: bool,
    /// Its WAL from start to stop is all archived.
    pub wal_present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<Gap>,
    pub windows: Vec<Window>,
}

/// The tenant's base backups of kind `pg-basebackup`, oldest first.
pub fn base_backups(repo: &Repository) -> Result<Vec<(Id, Snapshot)>> {
    Ok(repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| s.kind == SnapshotKind::PgBasebackup && s.pg.is_some())
        .collect())
}

/// Reads the catalog, the archive map and the base backups, and judges them.
pub fn status(repo: &Repository) -> Result<Status> {
    let catalog = Catalog::load(repo)?;
    let map = ArchiveMap::load(repo, &catalog, &Scope::All)?;
    let system_id = catalog.system_id()?;
    judge(&map, system_id, &base_backups(repo)?)
}

/// Judges a map and base backups (no I/O).
pub fn judge(
    map: &ArchiveMap,
    system_id: Option<u64>,
    backups: &[(Id, Snapshot)],
) -> Result<Status> {
    let mut problems = Vec::new();
    let mut warnings: Vec<String> = map.problems().to_vec();
    let timelines = timeline_status(map, &mut problems);
    let mut cluster = system_id.map(|s| s.to_string());
    let mut out = Vec::new();
    // Per target timeline: (stop, index into out) of the newest consistent backup.
    let mut newest: BTreeMap<u32, (super::names::Lsn, usize)> = BTreeMap::new();
    for (id, snap) in backups {
        let Some(pg) = &snap.pg else { continue };
        match &cluster {
            Some(c) if *c != pg.system_identifier => {
                problems.push(format!(
                    "base backup {} is of cluster {}, the archive of cluster {c}",
                    id.short(),
                    pg.system_identifier
                ));
                continue;
            }
            None => cluster = Some(pg.system_identifier.clone()),
            _ => {}
        }
        let mut s = BaseBackupStatus {
            id: *id,
            time: snap.time.clone(),
            timeline: pg.timeline,
            start_lsn: pg.start_lsn.clone(),
            stop_lsn: pg.stop_lsn.clone(),
            start_time: pg.start_time.clone(),
            stop_time: pg.stop_time.clone(),
            incomplete: snap.incomplete,
            wal_present: false,
            missing: None,
            windows: Vec::new(),
        };
        let point = match BackupPoint::of(pg) {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("base backup {}: {e}", id.short());
                if snap.incomplete {
                    warnings.push(msg);
                } else {
                    problems.push(msg);
                }
                out.push(s);
                continue;
            }
        };
        match map.consistency_gap(pg) {
            Ok(None) => s.wal_present = true,
            Ok(Some(gap)) => {
                if !snap.incomplete {
                    problems.push(format!(
                        "base backup {} cannot be made consistent: {gap}",
                        id.short()
                    ));
                }
                s.missing = Some(gap);
            }
            Err(e) => problems.push(format!("base backup {}: {e}", id.short())),
        }
        if snap.incomplete {
            warnings.push(format!(
                "base backup {} is incomplete and is never used for a restore",
                id.short()
            ));
        }
        if s.wal_present && !snap.incomplete {
            s.windows = windows(map, &point)?;
            for w in &s.windows {
                let entry = newest.entry(w.timeline).or_insert((point.stop, out.len()));
                if point.stop >= entry.0 {
                    *entry = (point.stop, out.len());
                }
            }
        }
        out.push(s);
    }
    // A gap that cuts off the newest WAL of a path is a problem; an older window's is not.
    for (b_index, b) in out.iter().enumerate() {
        for w in &b.windows {
            let Some(gap) = &w.cut_by_gap else { continue };
            let msg = format!(
                "timeline {}: WAL after base backup {} stops at a gap ({gap} is missing) and archived WAL continues after it; moments after {} cannot be restored",
                w.timeline,
                b.id.short(),
                w.to.as_deref().unwrap_or("its stop")
            );
            if newest.get(&w.timeline).is_some_and(|(_, i)| *i == b_index) {
                problems.push(msg);
            } else {
                warnings.push(msg);
            }
        }
    }
    split_brain_warnings(map, &mut warnings);
    Ok(Status {
        system_identifier: cluster,
        segment_size: map.seg_size(),
        timelines,
        base_backups: out,
        problems,
        warnings,
    })
}

/// The restore windows of a consistent base backup, one per timeline whose path passes
/// through the backup's timeline at its stop.
fn windows(map: &ArchiveMap, b: &BackupPoint) -> Result<Vec<Window>> {
    let size = u64::from(map.seg_size());
    let mut out = Vec::new();
    let mut candidates = map.all_timelines();
    candidates.insert(b.timeline);
    for t in map
        .known()
        .reachable_from(b.timeline, b.stop, candidates.iter().copied())
    {
        let Ok(path) = map.known().path(t) else {
            continue;
        };
        let reach = map.reach(&path, b.start.0 / size)?;
        out.push(Window {
            timeline: t,
            from: b.stop_time.map(|s| s.to_string()),
            to: reach
                .last
                .and_then(|(_, i)| i.timestamp())
                .map(|t| t.to_string()),
            last_segment: reach.last.map(|(s, _)| s.name(map.seg_size())),
            cut_by_gap: reach
                .missing
                .filter(|_| reach.beyond)
                .map(|m| m.name(map.seg_size())),
        });
    }
    Ok(out)
}

fn timeline_status(map: &ArchiveMap, problems: &mut Vec<String>) -> Vec<TimelineStatus> {
    let mut out = Vec::new();
    for t in map.all_timelines() {
        let files = map.timelines().get(&t).cloned().unwrap_or_default();
        let (history, history_problem) = match map.histories().get(&t) {
            Some(h) => match &h.parsed {
                Ok(h) => (h.entries.clone(), None),
                Err(e) => {
                    problems.push(e.clone());
                    (Vec::new(), Some(e.clone()))
                }
            },
            None if t > 1 => (
                Vec::new(),
                Some(format!("no history file ({t:08X}.history) is archived")),
            ),
            None => (Vec::new(), None),
        };
        let ranges = files.ranges();
        let run = |first: u64, last: u64, written: bool| Run {
            first: map.name(t, first),
            last: map.name(t, last),
            count: last.saturating_sub(first).saturating_add(1),
            last_written: written
                .then(|| map.segment(t, last).and_then(|i| i.timestamp()))
                .flatten()
                .map(|x| x.to_string()),
        };
        let gaps = ranges
            .windows(2)
            .map(|w| run(w[0].1.saturating_add(1), w[1].0.saturating_sub(1), false))
            .collect();
        out.push(TimelineStatus {
            timeline: t,
            history,
            history_problem,
            segments: files.segments.len() as u64,
            ranges: ranges.iter().map(|(a, b)| run(*a, *b, true)).collect(),
            gaps,
            partial: files.partial.iter().map(|f| f.name.clone()).collect(),
            backup_files: files.backup.iter().map(|f| f.name.clone()).collect(),
        });
    }
    out
}

/// A parent timeline with segments past the segment where a child branched from it.
fn split_brain_warnings(map: &ArchiveMap, warnings: &mut Vec<String>) {
    let size = u64::from(map.seg_size());
    for h in map.known().histories() {
        let Some(last) = h.entries.last() else {
            continue;
        };
        let switch_seg = last.switchpoint.0 / size;
        let continued = map.timelines().get(&last.parent).and_then(|f| {
            f.segments
                .range(switch_seg.saturating_add(1)..)
                .next_back()
                .map(|(n, _)| *n)
        });
        if let Some(n) = continued {
            warnings.push(format!(
                "timeline {} branched from timeline {} at {}, and timeline {} continues past it to {}: expected after a point-in-time restore of a moment already archived; otherwise a restore drill archiving into this tenant, or two primaries",
                h.timeline,
                last.parent,
                last.switchpoint,
                last.parent,
                map.name(last.parent, n)
            ));
        }
    }
}
