//! Retention of WAL by recovery window (`cairn forget --keep-within-pitr D`).
//!
//! "Keep everything needed to restore to any moment of the last D" means, with the window
//! starting at `W = anchor - D` (the anchor is the time of the tenant's newest base backup
//! or `wal` snapshot, so an archive that stopped keeps its last D):
//! - the newest complete base backup whose stop time is at or before W, and every complete
//!   base backup that stopped after W ([`pitr_backups`]);
//! - all WAL from each of those backups' start segment onward, on every timeline whose
//!   path passes through the backup's timeline at its start;
//! - for every other base backup that is kept (by `--keep-*` rules, a hold, or because the
//!   command did not judge it), its WAL from start to stop only, so it stays consistent;
//! - every `.history` file, every segment last written at or after W (fresh WAL on a
//!   timeline no kept backup reaches is the only copy of recent commits), and every name
//!   that is not understood.
//!
//! Everything else is dropped by rewriting the `wal` snapshots ([`trim_wal`]): a snapshot
//! holding only kept files is left alone, one holding none is removed, and one holding
//! both is replaced by a new `wal` snapshot holding only the kept files, whose unchanged
//! log folders reuse their tree blobs (no segment data is written). Every new snapshot is
//! saved before any old one is removed, so a crash at any point loses no kept file (it may
//! leave both, which readers take as a union). A snapshot tagged `hold` is never changed.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

use super::archive_map::ArchiveMap;
use super::names::{Segment, WalFile};
use super::recovery_plan::BackupPoint;
use super::wal::{dir_node, wal_snapshot, Catalog};
use crate::commit::ensure_complete;
use crate::error::Result;
use crate::format::snapshot::{PgInfo, Snapshot, SnapshotKind, Summary};
use crate::format::to_cbor;
use crate::format::tree::{Node, NodeKind, Time, Tree};
use crate::id::{BlobKind, Id};
use crate::lease::LeaseGuard;
use crate::repository::Repository;
use crate::retention::HOLD_TAG;
use crate::writer::BlobWriter;

/// The time the window is measured back from: the newest base backup or `wal` snapshot.
pub fn anchor(snapshots: &[(Id, Snapshot)]) -> Option<Timestamp> {
    snapshots
        .iter()
        .filter(|(_, s)| matches!(s.kind, SnapshotKind::PgBasebackup | SnapshotKind::Wal))
        .filter_map(|(_, s)| s.timestamp())
        .max()
}

/// The base backups the window keeps, with the reason: the newest complete one that
/// stopped at or before `window_start`, and every complete one that stopped after it.
pub fn pitr_backups(backups: &[(Id, Snapshot)], window_start: Timestamp) -> BTreeMap<Id, String> {
    let mut out = BTreeMap::new();
    let mut before: Option<(Timestamp, Id)> = None;
    for (id, s) in backups {
        if s.kind != SnapshotKind::PgBasebackup || s.incomplete {
            continue;
        }
        let Some(stop) =
            s.pg.as_ref()
                .and_then(|p| p.stop_time.as_deref())
                .and_then(|t| t.parse::<Timestamp>().ok())
        else {
            continue;
        };
        if stop > window_start {
            out.insert(*id, "pitr window".to_string());
        } else if before.is_none_or(|(b, _)| stop > b) {
            before = Some((stop, *id));
        }
    }
    if let Some((_, id)) = before {
        out.insert(id, "pitr window start".to_string());
    }
    out
}

/// Which WAL files to keep.
#[derive(Debug, Clone)]
pub struct WalKeep {
    seg_size: u32,
    /// Per timeline: every segment from this number on.
    from: BTreeMap<u32, u64>,
    /// Per timeline: these ranges (inclusive).
    ranges: BTreeMap<u32, Vec<(u64, u64)>>,
    /// Every file last written at or after this time.
    recent: Option<Time>,
}

impl WalKeep {
    /// What to keep for `onward` (backups whose WAL is kept from their start on) and
    /// `consistency` (backups whose start..stop only is kept), with files written at or
    /// after `window_start` kept whatever they are.
    pub fn compute(
        map: &ArchiveMap,
        onward: &[&PgInfo],
        consistency: &[&PgInfo],
        window_start: Option<Timestamp>,
    ) -> Result<WalKeep> {
        let size = u64::from(map.seg_size());
        let mut keep = WalKeep {
            seg_size: map.seg_size(),
            from: BTreeMap::new(),
            ranges: BTreeMap::new(),
            recent: window_start.map(|w| Time(w.as_second(), w.subsec_nanosecond().max(0) as u32)),
        };
        let mut candidates = map.all_timelines();
        for pg in onward {
            let b = BackupPoint::of(pg)?;
            let first = b.start.0 / size;
            candidates.insert(b.timeline);
            for t in map
                .known()
                .reachable_from(b.timeline, b.start, candidates.iter().copied())
            {
                let slot = keep.from.entry(t).or_insert(first);
                *slot = (*slot).min(first);
            }
            // The start's own timeline, even when its path cannot be read.
            let slot = keep.from.entry(b.timeline).or_insert(first);
            *slot = (*slot).min(first);
        }
        for pg in consistency {
            let b = BackupPoint::of(pg)?;
            let range = (b.start.0 / size, b.stop.0 / size);
            for t in [b.timeline, b.stop_timeline] {
                keep.ranges.entry(t).or_default().push(range);
            }
        }
        Ok(keep)
    }

    /// Whether the file `name`, last written at `mtime`, is kept.
    pub fn keeps(&self, name: &str, mtime: Time) -> bool {
        let seg_name = match WalFile::parse(name) {
            Ok(WalFile::Segment(n)) => n,
            Ok(WalFile::Partial(n) | WalFile::Backup(n)) => n.chars().take(24).collect(),
            // History files are always kept; names not understood are never dropped.
            Ok(WalFile::History(_)) | Err(_) => return true,
        };
        let Ok(seg) = Segment::parse(&seg_name, self.seg_size) else {
            return true;
        };
        self.from
            .get(&seg.timeline)
            .is_some_and(|f| seg.number >= *f)
            || self
                .ranges
                .get(&seg.timeline)
                .is_some_and(|rs| rs.iter().any(|(a, b)| (*a..=*b).contains(&seg.number)))
            || self.recent.is_some_and(|r| mtime >= r)
    }
}

/// What trimming did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrimReport {
    /// `wal` snapshots replaced: (old, new; `None` in a dry run).
    pub rewritten: Vec<(Id, Option<Id>)>,
    /// `wal` snapshots removed because they held only dropped files.
    pub removed: Vec<Id>,
    pub unchanged: usize,
    /// Dropped segments per timeline, as runs of names `(first, last, count)`.
    pub dropped_segments: BTreeMap<u32, Vec<(String, String, u64)>>,
    /// Dropped `.partial` and `.backup` files.
    pub dropped_other: Vec<String>,
    pub dropped_bytes: u64,
}

/// One `wal` snapshot's tree with the dropped files left out.
struct Trimmed {
    root: Option<Tree>,
    summary: Summary,
    first: Option<String>,
    last: Option<String>,
    dropped_any: bool,
}

/// Rewrites the tenant's `wal` snapshots to hold only the files `keep` keeps.
pub fn trim_wal(repo: &Repository, keep: &WalKeep, dry_run: bool) -> Result<TrimReport> {
    // The lease before the catalog: the rewritten snapshots reuse tree blobs of the ones
    // read, which a prune protects only for writers whose lease existed first (lease.rs).
    let lease = if dry_run {
        None
    } else {
        repo.require_deletes(crate::backend::FileType::Snapshot, "WAL retention")?;
        Some(LeaseGuard::acquire(repo, "wal-retention")?)
    };
    let catalog = Catalog::load(repo)?;
    let mut report = TrimReport::default();
    let mut dropped: BTreeSet<(u32, u64)> = BTreeSet::new();
    let mut other: BTreeSet<String> = BTreeSet::new();
    let mut writer = BlobWriter::unindexed(repo, repo.config().compression);
    let mut replacements: Vec<(Id, Snapshot)> = Vec::new();
    for (id, snap) in catalog.snapshots() {
        if snap.tags.iter().any(|t| t == HOLD_TAG) {
            report.unchanged += 1;
            continue;
        }
        let t = trim_one(repo, &mut writer, snap, keep, dry_run, &mut |name, node| {
            report.dropped_bytes = report.dropped_bytes.saturating_add(node.size);
            match Segment::parse(name, keep.seg_size) {
                Ok(s) => {
                    dropped.insert((s.timeline, s.number));
                }
                Err(_) => {
                    other.insert(name.to_string());
                }
            }
        })?;
        if !t.dropped_any {
            report.unchanged += 1;
            continue;
        }
        let Some(root) = t.root else {
            report.removed.push(*id);
            continue;
        };
        if dry_run {
            report.rewritten.push((*id, None));
            continue;
        }
        let root_id = writer.add_plain(BlobKind::Tree, &to_cbor(&root)?)?;
        let pg = snap.pg.clone().unwrap_or_default();
        let mut new = wal_snapshot(
            repo,
            root_id,
            t.summary,
            pg.system_identifier.parse().ok(),
            pg.timeline,
            (t.first, t.last),
        );
        new.time = snap.time.clone();
        new.tags = snap.tags.clone();
        new.original = Some(*id);
        replacements.push((*id, new));
    }
    if !dry_run {
        // Trees first, then the new snapshots, then the removals: kept WAL is always held
        // by a snapshot that exists.
        writer.finish()?;
        for (old, new) in replacements {
            // The rewritten trees reuse blobs a prune may have condemned meanwhile: copied
            // out of condemned packs (or the trim fails) before the snapshot exists.
            ensure_complete(repo, &new.tree, repo.config().compression)?;
            let new_id = repo.save_snapshot(&new)?;
            report.rewritten.push((old, Some(new_id)));
        }
        let gone: Vec<Id> = report
            .rewritten
            .iter()
            .map(|(old, _)| *old)
            .chain(report.removed.iter().copied())
            .collect();
        for old in &gone {
            repo.store()
                .remove(crate::backend::FileType::Snapshot, &old.to_hex())?;
        }
        repo.cache().update_snapshots(&[], &gone)?;
    }
    if let Some(lease) = lease {
        if let Err(e) = lease.release() {
            tracing::warn!("cannot remove the lease (it expires by itself): {e}");
        }
    }
    for (t, n) in dropped {
        let runs = report.dropped_segments.entry(t).or_default();
        match runs.last_mut() {
            Some((_, last, count))
                if Segment::parse(last, keep.seg_size)
                    .is_ok_and(|s| s.number.checked_add(1) == Some(n)) =>
            {
                *last = Segment {
                    timeline: t,
                    number: n,
                }
                .name(keep.seg_size);
                *count = count.saturating_add(1);
            }
            _ => {
                let name = Segment {
                    timeline: t,
                    number: n,
                }
                .name(keep.seg_size);
                runs.push((name.clone(), name, 1));
            }
        }
    }
    report.dropped_other = other.into_iter().collect();
    Ok(report)
}

/// Walks one snapshot's tree (timeline folders, their history files and log folders) and
/// builds the tree of what is kept; `on_drop` hears of every dropped file. Unchanged log
/// and timeline folders keep their nodes (and so their tree blobs).
fn trim_one(
    repo: &Repository,
    writer: &mut BlobWriter,
    snap: &Snapshot,
    keep: &WalKeep,
    dry_run: bool,
    on_drop: &mut dyn FnMut(&str, &Node),
) -> Result<Trimmed> {
    let mut summary = Summary::default();
    let (mut first, mut last): (Option<String>, Option<String>) = (None, None);
    let mut note = |name: &str, node: &Node, summary: &mut Summary| {
        summary.files += 1;
        summary.total_bytes = summary.total_bytes.saturating_add(node.size);
        if first.as_deref().is_none_or(|f| name < f) {
            first = Some(name.to_string());
        }
        if last.as_deref().is_none_or(|l| name > l) {
            last = Some(name.to_string());
        }
    };
    let mut dropped_any = false;
    let mut root_nodes = Vec::new();
    for tl in repo.load_tree(&snap.tree)?.nodes {
        let (NodeKind::Dir, Some(tl_tree)) = (tl.kind, tl.subtree) else {
            root_nodes.push(tl);
            continue;
        };
        let mut tl_nodes = Vec::new();
        let mut tl_changed = false;
        for node in repo.load_tree(&tl_tree)?.nodes {
            let (NodeKind::Dir, Some(log_tree)) = (node.kind, node.subtree) else {
                // A history file (or anything else at this level): always kept.
                note(&node.name_lossy(), &node, &mut summary);
                tl_nodes.push(node);
                continue;
            };
            let mut kept = Vec::new();
            let mut log_changed = false;
            for f in repo.load_tree(&log_tree)?.nodes {
                let name = f.name_lossy();
                if f.kind != NodeKind::File || keep.keeps(&name, f.mtime) {
                    note(&name, &f, &mut summary);
                    kept.push(f);
                } else {
                    on_drop(&name, &f);
                    log_changed = true;
                }
            }
            if !log_changed {
                summary.dirs += 1;
                tl_nodes.push(node);
                continue;
            }
            tl_changed = true;
            if kept.is_empty() {
                continue;
            }
            summary.dirs += 1;
            let id = if dry_run {
                log_tree
            } else {
                writer.add_plain(BlobKind::Tree, &to_cbor(&Tree { nodes: kept })?)?
            };
            tl_nodes.push(dir_node(&node.name_lossy(), id));
        }
        if !tl_changed {
            summary.dirs += 1;
            root_nodes.push(tl);
            continue;
        }
        dropped_any = true;
        if tl_nodes.is_empty() {
            continue;
        }
        summary.dirs += 1;
        let id = if dry_run {
            tl_tree
        } else {
            let mut tree = Tree { nodes: tl_nodes };
            tree.canonicalize()?;
            writer.add_plain(BlobKind::Tree, &to_cbor(&tree)?)?
        };
        root_nodes.push(dir_node(&tl.name_lossy(), id));
    }
    Ok(Trimmed {
        root: (!root_nodes.is_empty()).then_some(Tree { nodes: root_nodes }),
        summary,
        first,
        last,
        dropped_any,
    })
}
