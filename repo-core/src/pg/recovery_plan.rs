//! What a recovery from a base backup needs from the archive: the segments from the
//! backup's start, along the timeline path to the target, through switchpoints, up to the
//! target; or the first segment missing on the way.
//!
//! Rules (PostgreSQL's, docs/postgresql.md "Status and verification"):
//! - the target timeline must have the backup's timeline on its path, still valid at the
//!   backup's stop (a timeline that branched before the backup ended cannot be followed);
//! - every segment from the one holding the start to the one holding the stop is needed
//!   for the restored cluster to be consistent;
//! - an LSN target needs the segment holding it; a time target needs continuous WAL up to
//!   a segment last written after the target (a commit after the target is what stops
//!   recovery; without one PostgreSQL ends with "recovery ended before configured
//!   recovery target was reached"); "end of archive" takes every segment reachable without
//!   a gap, and is a gap error when archived WAL of the path lies beyond the first missing
//!   segment (recovery would end there, early, and silently).

use std::fmt;

use jiff::Timestamp;

use super::archive_map::{ArchiveMap, FileInfo};
use super::names::{Lsn, Segment, WalFile};
use super::timeline::{OnPath, TimelinePath};
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::PgInfo;

/// Which timeline to recover along (PostgreSQL's `recovery_target_timeline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetTimeline {
    /// The backup's own timeline.
    Current,
    /// The newest timeline, found as PostgreSQL finds it (history files probed upwards from
    /// the backup's timeline).
    Latest,
    Id(u32),
}

/// Where to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// At consistency: the backup's stop.
    Immediate,
    /// Replay everything reachable without a gap.
    EndOfArchive,
    Lsn(Lsn),
    Time(Timestamp),
}

/// Consecutive segments of one timeline, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SegmentRun {
    pub timeline: u32,
    pub first: u64,
    pub last: u64,
}

impl SegmentRun {
    pub fn count(&self) -> u64 {
        self.last.saturating_sub(self.first).saturating_add(1)
    }

    /// The names of the run's segments, in order.
    pub fn names(&self, seg_size: u32) -> impl Iterator<Item = String> + '_ {
        (self.first..=self.last).map(move |number| {
            Segment {
                timeline: self.timeline,
                number,
            }
            .name(seg_size)
        })
    }
}

/// The position and time facts of a base backup, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupPoint {
    pub timeline: u32,
    pub start: Lsn,
    pub stop: Lsn,
    /// The timeline of the segment holding the stop (the start's, unless a standby was
    /// promoted during the backup).
    pub stop_timeline: u32,
    pub stop_time: Option<Timestamp>,
}

impl BackupPoint {
    pub fn of(pg: &PgInfo) -> Result<BackupPoint> {
        let field = |v: &Option<String>, what: &str| -> Result<Lsn> {
            let s = v.as_deref().ok_or_else(|| {
                Error::invalid(format!("the base backup records no {what} position"))
            })?;
            Lsn::parse(s)
        };
        let (start, stop) = (field(&pg.start_lsn, "start")?, field(&pg.stop_lsn, "stop")?);
        if pg.timeline == 0 || stop < start {
            return Err(Error::invalid(format!(
                "the base backup's positions make no sense: timeline {}, start {start}, stop {stop}",
                pg.timeline
            )));
        }
        let stop_timeline = match pg.wal_last.as_deref().map(WalFile::parse) {
            Some(Ok(f @ WalFile::Segment(_))) => f.timeline(),
            _ => pg.timeline,
        };
        let stop_time = match pg.stop_time.as_deref() {
            Some(t) => Some(t.parse::<Timestamp>().map_err(|_| {
                Error::invalid(format!("the base backup's stop time {t:?} is not RFC 3339"))
            })?),
            None => None,
        };
        Ok(BackupPoint {
            timeline: pg.timeline,
            start,
            stop,
            stop_timeline,
            stop_time,
        })
    }
}

/// The first segment missing where recovery needs one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// The missing segment's name.
    pub missing: String,
    /// The last segment present before it, if any was.
    pub last_present: Option<String>,
    /// What the segment is needed for.
    pub needed_for: String,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WAL segment {} is not in the archive ({}",
            self.missing, self.needed_for
        )?;
        match &self.last_present {
            Some(l) => write!(f, "; continuous WAL ends at {l})"),
            None => write!(f, ")"),
        }
    }
}

/// Why no plan could be made.
#[derive(Debug)]
pub enum PlanError {
    /// A segment recovery needs is missing.
    Gap(Gap),
    /// The request cannot be met whatever the archive holds (a timeline that did not
    /// branch from the backup, a target before consistency, a backup without positions),
    /// or the archive could not be read.
    Refused(Error),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Gap(g) => g.fmt(f),
            PlanError::Refused(e) => e.fmt(f),
        }
    }
}

impl From<Error> for PlanError {
    fn from(e: Error) -> Self {
        PlanError::Refused(e)
    }
}

impl From<PlanError> for Error {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Gap(g) => Error::new(ErrorKind::NotFound, g.to_string()),
            PlanError::Refused(e) => e,
        }
    }
}

/// How far WAL continues without a gap from a segment along a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The segments present, in order, from the start.
    pub runs: Vec<SegmentRun>,
    /// The last segment present and its facts (`None`: not even the first).
    pub last: Option<(Segment, FileInfo)>,
    /// The first segment missing.
    pub missing: Option<Segment>,
    /// Whether the archive holds segments of the path after the missing one: the gap cuts
    /// off WAL that exists.
    pub beyond: bool,
}

/// What recovery will read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPlan {
    /// The timeline recovery ends on.
    pub timeline: u32,
    pub path: TimelinePath,
    pub seg_size: u32,
    /// The segments needed, in replay order.
    pub runs: Vec<SegmentRun>,
    /// The newest segment reachable from the backup along the path without a gap: recovery
    /// may read up to it (past the target, when no commit in the needed ones stops it).
    pub end_of_wal: Option<(Segment, FileInfo)>,
}

impl RecoveryPlan {
    pub fn count(&self) -> u64 {
        self.runs.iter().map(SegmentRun::count).sum()
    }

    pub fn names(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| r.names(self.seg_size))
            .collect()
    }
}

impl ArchiveMap {
    /// Follows `path` from segment `from` for as long as segments are present.
    pub fn reach(&self, path: &TimelinePath, from: u64) -> Result<Reach> {
        let size = self.seg_size();
        let mut runs: Vec<SegmentRun> = Vec::new();
        let mut last = None;
        let mut missing = None;
        let mut n = from;
        // Each turn consumes one archived segment, so this ends.
        loop {
            let timeline = path.timeline_of_segment(n, size)?;
            let Some(info) = self.segment(timeline, n) else {
                missing = Some(Segment {
                    timeline,
                    number: n,
                });
                break;
            };
            match runs.last_mut() {
                Some(r) if r.timeline == timeline && r.last.checked_add(1) == Some(n) => r.last = n,
                _ => runs.push(SegmentRun {
                    timeline,
                    first: n,
                    last: n,
                }),
            }
            last = Some((
                Segment {
                    timeline,
                    number: n,
                },
                *info,
            ));
            match n.checked_add(1) {
                Some(next) => n = next,
                None => break,
            }
        }
        let mut beyond = false;
        if let Some(m) = missing {
            for (timeline, lo, end) in path.segment_ranges(size)? {
                let lo = lo.max(m.number.saturating_add(1));
                let Some(files) = self.timelines().get(&timeline) else {
                    continue;
                };
                let found = match end {
                    Some(e) if e <= lo => false,
                    Some(e) => files.segments.range(lo..e).next().is_some(),
                    None => files.segments.range(lo..).next().is_some(),
                };
                beyond |= found;
            }
        }
        Ok(Reach {
            runs,
            last,
            missing,
            beyond,
        })
    }

    /// Whether the WAL from the backup's start to its stop is all archived: `None` when it
    /// is, the first missing segment when not.
    pub fn consistency_gap(&self, backup: &PgInfo) -> Result<Option<Gap>> {
        let b = BackupPoint::of(backup)?;
        let path = if b.stop_timeline == b.timeline {
            TimelinePath::root(b.timeline)
        } else {
            self.known().path(b.stop_timeline)?
        };
        let size = u64::from(self.seg_size());
        let (first, stop) = (b.start.0 / size, b.stop.0 / size);
        let reach = self.reach(&path, first)?;
        Ok(match (reach.missing, &reach.last) {
            (Some(m), last) if m.number <= stop => Some(Gap {
                missing: m.name(self.seg_size()),
                last_present: last.map(|(s, _)| s.name(self.seg_size())),
                needed_for: format!(
                    "the base backup needs {}..{} to be consistent",
                    self.name(b.timeline, first),
                    self.name(b.stop_timeline, stop)
                ),
            }),
            _ => None,
        })
    }

    /// The timeline a recovery from `backup` ends on, and its path, refusing a timeline
    /// that did not branch from the backup's after its stop.
    pub fn target_path(
        &self,
        backup: &PgInfo,
        timeline: TargetTimeline,
    ) -> Result<(BackupPoint, TimelinePath)> {
        let b = BackupPoint::of(backup)?;
        let t = match timeline {
            TargetTimeline::Current => b.timeline,
            TargetTimeline::Latest => self.known().latest_from(b.timeline),
            TargetTimeline::Id(t) => t,
        };
        let path = self.known().path(t)?;
        match path.on_path(b.timeline) {
            OnPath::No => Err(Error::invalid(format!(
                "timeline {t} is not a descendant of the base backup's timeline {}",
                b.timeline
            ))),
            OnPath::Below(sw) if sw < b.stop => Err(Error::invalid(format!(
                "timeline {t} branched from timeline {} at {sw}, before the base backup's end at {}",
                b.timeline, b.stop
            ))),
            _ => Ok((b, path)),
        }
    }

    /// The newest segment reachable from the backup along the path to `timeline` without a
    /// gap, and its facts: the end of continuous WAL.
    pub fn end_of_wal(
        &self,
        backup: &PgInfo,
        timeline: TargetTimeline,
    ) -> Result<Option<(Segment, FileInfo)>> {
        let (b, path) = self.target_path(backup, timeline)?;
        let first = b.start.0 / u64::from(self.seg_size());
        Ok(self.reach(&path, first)?.last)
    }

    /// The segments a recovery from `backup` to `target` along `timeline` reads, or the
    /// first one missing.
    pub fn plan(
        &self,
        backup: &PgInfo,
        timeline: TargetTimeline,
        target: RecoveryTarget,
    ) -> std::result::Result<RecoveryPlan, PlanError> {
        let (b, path) = self.target_path(backup, timeline)?;
        let seg_size = self.seg_size();
        let size = u64::from(seg_size);
        let (first, stop) = (b.start.0 / size, b.stop.0 / size);
        let reach = self.reach(&path, first)?;
        let gap = |needed_for: String| {
            let missing = reach
                .missing
                .map(|m| m.name(seg_size))
                .unwrap_or_else(|| "(beyond the last possible segment)".into());
            PlanError::Gap(Gap {
                missing,
                last_present: reach.last.map(|(s, _)| s.name(seg_size)),
                needed_for,
            })
        };
        let reached = reach.last.map(|(s, _)| s.number);
        if reached.is_none_or(|r| r < stop) {
            return Err(gap(format!(
                "the base backup needs {}..{} to be consistent",
                self.name(b.timeline, first),
                self.name(path.timeline_of_segment(stop, seg_size)?, stop)
            )));
        }
        let end = match target {
            RecoveryTarget::Immediate => stop,
            // A gap that cuts off archived WAL would end recovery early and silently.
            RecoveryTarget::EndOfArchive if reach.beyond => {
                return Err(gap(
                    "archived WAL of the path continues after it: recovery to the end of the archive would stop short".into(),
                ))
            }
            RecoveryTarget::EndOfArchive => reached.unwrap_or(stop),
            RecoveryTarget::Lsn(l) => {
                if l < b.stop {
                    return Err(PlanError::Refused(Error::invalid(format!(
                        "target {l} is before the base backup's end ({}): the cluster is not consistent there",
                        b.stop
                    ))));
                }
                let n = l.0 / size;
                if reached.is_none_or(|r| r < n) {
                    return Err(gap(format!("the target {l} is in it")));
                }
                n
            }
            RecoveryTarget::Time(t) => {
                if b.stop_time.is_some_and(|s| t < s) {
                    return Err(PlanError::Refused(Error::invalid(format!(
                        "target {t} is before the base backup's end ({}): the cluster is not consistent then",
                        b.stop_time.map(|s| s.to_string()).unwrap_or_default()
                    ))));
                }
                // The first segment at or after the stop last written after the target.
                let past = reach.runs.iter().find_map(|r| {
                    (r.first.max(stop)..=r.last).find(|n| {
                        self.segment(r.timeline, *n)
                            .and_then(|i| i.timestamp())
                            .is_some_and(|m| m > t)
                    })
                });
                match past {
                    Some(n) => n,
                    None => {
                        return Err(gap(format!(
                            "recovery to {t} needs WAL written after it, and none is reachable"
                        )))
                    }
                }
            }
        };
        let runs = reach
            .runs
            .iter()
            .filter(|r| r.first <= end)
            .map(|r| SegmentRun {
                last: r.last.min(end),
                ..*r
            })
            .collect();
        Ok(RecoveryPlan {
            timeline: path.target(),
            path,
            seg_size,
            runs,
            end_of_wal: reach.last,
        })
    }
}
