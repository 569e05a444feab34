//! A compact map of what the WAL archive holds, per timeline, read from the `wal`
//! snapshots' trees: the segment numbers (with each one's modification time, size and the
//! snapshot holding it), the `.partial` and `.backup` files, and the parsed `.history`
//! files.
//!
//! Memory is proportional to the number of archived files, never to the index: only the
//! trees of `wal` snapshots are read (each tree blob once, however many snapshots share
//! it, since consolidation reuses unchanged log folders), and a [`Scope`] limits which
//! timelines' log folders are read at all. Several snapshots may hold the same name (a
//! union, after concurrent consolidations); the newest holder is recorded.
//!
//! Recovery planning over this map lives in `pg/recovery_plan.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Read;

use super::names::{check_seg_size, Segment, WalFile};
use super::timeline::{parse_history, History, Timelines, MAX_HISTORY_BYTES};
use super::wal::Catalog;
use crate::content::ContentReader;
use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeKind, Time};
use crate::id::Id;
use crate::repository::Repository;

/// PostgreSQL's default segment size, assumed when the archive holds no full segment.
pub const DEFAULT_SEG_SIZE: u32 = 16 << 20;

/// One archived file's facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// The file's modification time when it was pushed: its last write, which bounds the
    /// time of the newest record it holds.
    pub mtime: Time,
    pub size: u64,
    /// Index into [`ArchiveMap::snapshots`].
    pub snapshot: u32,
}

impl FileInfo {
    pub fn timestamp(&self) -> Option<jiff::Timestamp> {
        jiff::Timestamp::new(self.mtime.0, i32::try_from(self.mtime.1).unwrap_or(0)).ok()
    }
}

/// A `.partial` or `.backup` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherFile {
    pub name: String,
    pub info: FileInfo,
}

/// What the archive holds of one timeline.
#[derive(Debug, Clone, Default)]
pub struct TimelineFiles {
    /// Segment number -> facts. Sorted, so ranges and gaps come from one pass.
    pub segments: BTreeMap<u64, FileInfo>,
    pub partial: Vec<OtherFile>,
    pub backup: Vec<OtherFile>,
}

impl TimelineFiles {
    /// Runs of consecutive segment numbers, `(first, last)` inclusive, in order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for n in self.segments.keys() {
            match out.last_mut() {
                Some((_, last)) if last.checked_add(1) == Some(*n) => *last = *n,
                _ => out.push((*n, *n)),
            }
        }
        out
    }
}

/// A history file as found: parsed, or why it could not be.
#[derive(Debug, Clone)]
pub struct HistoryFile {
    pub parsed: std::result::Result<History, String>,
    pub info: FileInfo,
}

/// Which timelines' segments to read.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every timeline.
    All,
    /// Only these timelines' log folders (history files are always read: they are small and
    /// say which timelines matter).
    Timelines(BTreeSet<u32>),
}

impl Scope {
    fn wants(&self, timeline: u32) -> bool {
        match self {
            Scope::All => true,
            Scope::Timelines(t) => t.contains(&timeline),
        }
    }
}

/// The archive's files, per timeline.
#[derive(Debug, Clone)]
pub struct ArchiveMap {
    seg_size: u32,
    snapshots: Vec<Id>,
    timelines: BTreeMap<u32, TimelineFiles>,
    histories: BTreeMap<u32, HistoryFile>,
    known: Timelines,
    problems: Vec<String>,
}

/// A segment entry before the segment size is known (numbers depend on it).
struct RawSegment {
    timeline: u32,
    log: u32,
    seg: u32,
    info: FileInfo,
}

impl ArchiveMap {
    /// Reads the map from the `wal` snapshots of `catalog`.
    pub fn load(repo: &Repository, catalog: &Catalog, scope: &Scope) -> Result<ArchiveMap> {
        let mut snapshots = Vec::new();
        let mut raw: Vec<RawSegment> = Vec::new();
        let mut others: Vec<(u32, WalFile, FileInfo)> = Vec::new();
        let mut histories: BTreeMap<u32, HistoryFile> = BTreeMap::new();
        let mut problems = Vec::new();
        let mut seen_logs: HashSet<Id> = HashSet::new();
        let mut seen_names: HashSet<(u32, u32, u32)> = HashSet::new();
        // Newest first: the first holder of a name found is the newest.
        for (snap_id, snap) in catalog.snapshots().iter().rev() {
            let index = u32::try_from(snapshots.len())
                .map_err(|_| Error::corrupt("more wal snapshots than can be counted"))?;
            snapshots.push(*snap_id);
            let root = repo
                .load_tree(&snap.tree)
                .map_err(|e| e.context(format!("wal snapshot {}", snap_id.short())))?;
            for tl_node in root.nodes {
                let Some(timeline) = hex_u32(&tl_node.name, 8) else {
                    problems.push(format!(
                        "wal snapshot {}: unexpected entry {:?} at the top",
                        snap_id.short(),
                        tl_node.name_lossy()
                    ));
                    continue;
                };
                let (NodeKind::Dir, Some(sub)) = (tl_node.kind, tl_node.subtree) else {
                    continue;
                };
                for node in repo.load_tree(&sub)?.nodes {
                    let info = file_info(&node, index);
                    if node.kind == NodeKind::File {
                        let name = String::from_utf8_lossy(&node.name).into_owned();
                        match WalFile::parse(&name) {
                            Ok(WalFile::History(t)) if t == timeline => {
                                if let std::collections::btree_map::Entry::Vacant(slot) =
                                    histories.entry(t)
                                {
                                    let parsed = read_history(repo, &node, t);
                                    if let Err(e) = &parsed {
                                        problems.push(e.clone());
                                    }
                                    slot.insert(HistoryFile { parsed, info });
                                }
                            }
                            _ => problems.push(format!(
                                "wal snapshot {}: unexpected file {name:?} in timeline {timeline:08X}",
                                snap_id.short()
                            )),
                        }
                        continue;
                    }
                    let (NodeKind::Dir, Some(log_tree)) = (node.kind, node.subtree) else {
                        continue;
                    };
                    if !scope.wants(timeline) || !seen_logs.insert(log_tree) {
                        continue;
                    }
                    let Some(log) = hex_u32(&node.name, 8) else {
                        continue;
                    };
                    for f in repo.load_tree(&log_tree)?.nodes {
                        let name = String::from_utf8_lossy(&f.name).into_owned();
                        let info = file_info(&f, index);
                        match WalFile::parse(&name) {
                            Ok(WalFile::Segment(_)) => {
                                let part = |r: std::ops::Range<usize>| {
                                    f.name.get(r).and_then(|p| hex_u32(p, 8))
                                };
                                let seg = part(16..24).unwrap_or(u32::MAX);
                                let (ft, fl) = (part(0..8), part(8..16));
                                if ft != Some(timeline) || fl != Some(log) {
                                    problems.push(format!(
                                        "{name} is filed under {timeline:08X}/{log:08X}"
                                    ));
                                    continue;
                                }
                                if seen_names.insert((timeline, log, seg)) {
                                    raw.push(RawSegment {
                                        timeline,
                                        log,
                                        seg,
                                        info,
                                    });
                                }
                            }
                            Ok(file @ (WalFile::Partial(_) | WalFile::Backup(_))) => {
                                others.push((timeline, file, info));
                            }
                            _ => problems.push(format!(
                                "unexpected file {name:?} in {timeline:08X}/{log:08X}"
                            )),
                        }
                    }
                }
            }
        }
        let seg_size = segment_size(&raw, &mut problems);
        let per_log = (1u64 << 32) / u64::from(seg_size);
        let mut timelines: BTreeMap<u32, TimelineFiles> = BTreeMap::new();
        for r in raw {
            if u64::from(r.seg) >= per_log {
                problems.push(format!(
                    "{:08X}{:08X}{:08X} is not a segment name for {} MiB segments",
                    r.timeline,
                    r.log,
                    r.seg,
                    seg_size >> 20
                ));
                continue;
            }
            let number = u64::from(r.log) * per_log + u64::from(r.seg);
            timelines
                .entry(r.timeline)
                .or_default()
                .segments
                .insert(number, r.info);
        }
        let mut names_seen: HashSet<String> = HashSet::new();
        for (t, file, info) in others {
            let name = file.name();
            if !names_seen.insert(name.clone()) {
                continue;
            }
            let entry = timelines.entry(t).or_default();
            let list = match file {
                WalFile::Partial(_) => &mut entry.partial,
                _ => &mut entry.backup,
            };
            list.push(OtherFile { name, info });
        }
        for tf in timelines.values_mut() {
            tf.partial.sort_by(|a, b| a.name.cmp(&b.name));
            tf.backup.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let mut known = Timelines::new();
        for h in histories.values() {
            if let Ok(h) = &h.parsed {
                known.insert(h.clone());
            }
        }
        Ok(ArchiveMap {
            seg_size,
            snapshots,
            timelines,
            histories,
            known,
            problems,
        })
    }

    /// The segment size of the archive: that of its full segments, or
    /// [`DEFAULT_SEG_SIZE`] when it holds none.
    pub fn seg_size(&self) -> u32 {
        self.seg_size
    }

    /// The `wal` snapshots read, newest first; [`FileInfo::snapshot`] indexes this.
    pub fn snapshots(&self) -> &[Id] {
        &self.snapshots
    }

    pub fn snapshot_of(&self, info: &FileInfo) -> Option<Id> {
        usize::try_from(info.snapshot)
            .ok()
            .and_then(|i| self.snapshots.get(i))
            .copied()
    }

    pub fn timelines(&self) -> &BTreeMap<u32, TimelineFiles> {
        &self.timelines
    }

    pub fn histories(&self) -> &BTreeMap<u32, HistoryFile> {
        &self.histories
    }

    /// The parsed histories, for timeline questions.
    pub fn known(&self) -> &Timelines {
        &self.known
    }

    /// Every timeline the archive mentions: by segments, `.partial`/`.backup` files or
    /// history files.
    pub fn all_timelines(&self) -> BTreeSet<u32> {
        self.timelines
            .keys()
            .chain(self.histories.keys())
            .copied()
            .collect()
    }

    /// Oddities met while reading (unexpected names, unreadable history files, mixed
    /// segment sizes). None of them stops the map from being used.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    pub fn segment(&self, timeline: u32, number: u64) -> Option<&FileInfo> {
        self.timelines.get(&timeline)?.segments.get(&number)
    }

    /// A segment's name in this archive's segment size.
    pub fn name(&self, timeline: u32, number: u64) -> String {
        Segment { timeline, number }.name(self.seg_size)
    }

    /// The segment number of a segment name, in this archive's segment size.
    pub fn number_of(&self, name: &str) -> Result<Segment> {
        Segment::parse(name, self.seg_size)
    }
}

/// Parses `width` hex digits (upper or lower case) exactly.
fn hex_u32(name: &[u8], width: usize) -> Option<u32> {
    let s = std::str::from_utf8(name.get(..width)?).ok()?;
    if name.len() != width || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

fn file_info(node: &Node, snapshot: u32) -> FileInfo {
    FileInfo {
        mtime: node.mtime,
        size: node.size,
        snapshot,
    }
}

/// Reads and parses a history file node, bounded by [`MAX_HISTORY_BYTES`].
fn read_history(
    repo: &Repository,
    node: &Node,
    timeline: u32,
) -> std::result::Result<History, String> {
    let name = format!("{timeline:08X}.history");
    if node.size > MAX_HISTORY_BYTES as u64 {
        return Err(format!(
            "{name}: {} bytes, too large for a history file",
            node.size
        ));
    }
    let mut text = Vec::new();
    ContentReader::new(repo, node)
        .map_err(|e| format!("{name}: {e}"))?
        .take(MAX_HISTORY_BYTES as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("{name}: cannot be read: {e}"))?;
    parse_history(timeline, &text).map_err(|e| e.to_string())
}

/// The size of the archive's full segments: the most common valid size among them (all of
/// a cluster's segments have one size; a mix is reported), or the default.
fn segment_size(raw: &[RawSegment], problems: &mut Vec<String>) -> u32 {
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for r in raw {
        *counts.entry(r.info.size).or_default() += 1;
    }
    let valid: Vec<(u64, usize)> = counts
        .iter()
        .filter_map(|(size, n)| {
            let s = u32::try_from(*size).ok()?;
            check_seg_size(s).ok().map(|_| (*size, *n))
        })
        .collect();
    if counts.len() > 1 {
        problems.push(format!(
            "segments of several sizes are archived: {:?}",
            counts.keys().collect::<BTreeSet<_>>()
        ));
    }
    valid
        .iter()
        .max_by_key(|(size, n)| (*n, *size))
        .and_then(|(size, _)| u32::try_from(*size).ok())
        .unwrap_or(DEFAULT_SEG_SIZE)
}
