//! Which base backup a restore uses, and whether the archive holds the WAL its recovery
//! needs: decided from the archive map before a restore writes anything.

use super::archive_map::{ArchiveMap, Scope};
use super::names::Lsn;
use super::recovery_plan::{RecoveryPlan, RecoveryTarget, TargetTimeline};
use super::target::Target;
use super::wal::Catalog;
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::{PgInfo, Snapshot, SnapshotKind};
use crate::id::Id;
use crate::repository::Repository;

/// The WAL a recovery will replay from the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalReach {
    pub first: String,
    pub last: String,
    pub segments: u64,
    /// The timeline recovery ends on.
    pub timeline: u32,
    /// When the last needed segment was last written (an upper bound of its newest record).
    pub last_written: Option<jiff::Timestamp>,
}

/// A base backup chosen for a restore, and what its recovery reads.
#[derive(Debug, Clone)]
pub struct Choice {
    pub id: Id,
    pub snapshot: Snapshot,
    pub wal: WalReach,
}

/// Parses `recovery_target_timeline`'s value: `latest`, `current` or a number.
pub fn target_timeline(text: &str) -> Result<TargetTimeline> {
    match text.trim() {
        "latest" => Ok(TargetTimeline::Latest),
        "current" => Ok(TargetTimeline::Current),
        n => n.parse().map(TargetTimeline::Id).map_err(|_| {
            Error::invalid(format!(
                "target timeline {n:?}: give a number, `current` or `latest`"
            ))
        }),
    }
}

fn recovery_target(target: &Target) -> RecoveryTarget {
    match target {
        Target::Immediate => RecoveryTarget::Immediate,
        Target::Time(t) => RecoveryTarget::Time(*t),
        Target::Lsn(l) => RecoveryTarget::Lsn(*l),
        // Where a transaction or a restore point is, only replay finds out: recovery runs
        // to the end of the archive unless it meets the target first, so all of it must be
        // continuous.
        Target::Latest | Target::Xid(_) | Target::Name(_) => RecoveryTarget::EndOfArchive,
    }
}

fn stop_lsn(pg: &PgInfo) -> Option<Lsn> {
    pg.stop_lsn.as_deref().and_then(|l| Lsn::parse(l).ok())
}

/// Whether a base backup ended before the target (so recovery can reach it).
fn ends_before(pg: &PgInfo, target: &Target) -> bool {
    match target {
        Target::Time(t) => pg
            .stop_time
            .as_deref()
            .and_then(|s| s.parse::<jiff::Timestamp>().ok())
            .is_some_and(|stop| stop <= *t),
        Target::Lsn(l) => stop_lsn(pg).is_some_and(|stop| stop <= *l),
        _ => true,
    }
}

/// Chooses the base backup for a restore to `target` along `timeline` and plans its
/// recovery: `wanted` when given (it must be complete), otherwise the newest complete base
/// backup that ended before the target and whose recovery the archive can carry to it. When
/// none can, the error is the newest candidate's (the first missing segment, say).
pub fn choose(
    repo: &Repository,
    target: &Target,
    timeline: &str,
    wanted: Option<&Id>,
) -> Result<Choice> {
    let timeline = target_timeline(timeline)?;
    let mut candidates: Vec<(Id, Snapshot)> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| s.kind == SnapshotKind::PgBasebackup && s.pg.is_some())
        .collect();
    if let Some(w) = wanted {
        let (id, s) = candidates
            .into_iter()
            .find(|(id, _)| id == w)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("snapshot {} is not a base backup of this tenant", w.short()),
                )
            })?;
        if s.incomplete {
            return Err(Error::invalid(format!(
                "base backup {} is incomplete (the archive lacked its WAL) and cannot be restored",
                id.short()
            )));
        }
        candidates = vec![(id, s)];
    } else {
        let any = candidates.iter().any(|(_, s)| !s.incomplete);
        candidates.retain(|(_, s)| {
            !s.incomplete && s.pg.as_ref().is_some_and(|pg| ends_before(pg, target))
        });
        if candidates.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                if any {
                    "every complete base backup of this tenant ends after the target: none can reach it"
                } else {
                    "this tenant holds no complete base backup (take one with `cairn pg basebackup`)"
                },
            ));
        }
        // Newest first: the least WAL to replay.
        candidates.sort_by_key(|(_, s)| std::cmp::Reverse(s.pg.as_ref().and_then(stop_lsn)));
    }
    let catalog = Catalog::load(repo)?;
    let map = ArchiveMap::load(repo, &catalog, &Scope::All)?;
    let mut first_error = None;
    for (id, snapshot) in candidates {
        let Some(pg) = snapshot.pg.clone() else {
            continue;
        };
        match map.plan(&pg, timeline, recovery_target(target)) {
            Ok(plan) => {
                let wal = reach(&map, &plan);
                return Ok(Choice { id, snapshot, wal });
            }
            Err(e) => {
                let e: Error = e.into();
                tracing::info!("base backup {} cannot reach the target: {e}", id.short());
                first_error
                    .get_or_insert(Error::new(e.kind(), format!("{e}; nothing was restored")));
            }
        }
    }
    Err(first_error.unwrap_or_else(|| Error::new(ErrorKind::NotFound, "no base backup to restore")))
}

fn reach(map: &ArchiveMap, plan: &RecoveryPlan) -> WalReach {
    let names = plan.names();
    let last_written = plan
        .runs
        .last()
        .and_then(|r| map.segment(r.timeline, r.last))
        .and_then(|i| i.timestamp());
    WalReach {
        first: names.first().cloned().unwrap_or_default(),
        last: names.last().cloned().unwrap_or_default(),
        segments: plan.count(),
        timeline: plan.timeline,
        last_written,
    }
}

/// A target in words, for messages.
pub fn describe(target: &Target) -> String {
    match target {
        Target::Latest => "the end of the archive".into(),
        Target::Immediate => "consistency".into(),
        Target::Time(t) => format!("time {t}"),
        Target::Lsn(l) => format!("LSN {l}"),
        Target::Xid(x) => format!("transaction {x}"),
        Target::Name(n) => format!("restore point {n:?}"),
    }
}
