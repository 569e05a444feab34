//! Timeline history: how each timeline branched from its parents, read from PostgreSQL's
//! `TTTTTTTT.history` files, and the questions a restore asks of it.
//!
//! The history file of timeline T lists every ancestor of T, oldest first, one a line:
//! `parentTLI<TAB>switchpoint<TAB>reason`. The switchpoint is the first position of WAL
//! that is *not* the parent's any more: the parent's WAL is valid below it, and the next
//! timeline begins at it. Lines starting with `#` and blank lines are comments. So a single
//! file gives the whole path from timeline 1 (or the oldest ancestor) to T, and no question
//! here needs to follow parents file by file.
//!
//! Which file a restore reads for a segment follows PostgreSQL (`XLogFileReadAnyTLI`): the
//! newest timeline of the path whose first segment is at or before the segment. The segment
//! holding a switchpoint is therefore read from the child timeline (PostgreSQL copies the
//! parent's part of it into the child's file when it switches; the parent's own copy is
//! archived as `.partial`, which recovery never reads).
//!
//! Input from storage may be anything: parsing never panics, bounds its work by the size of
//! the input, and reports what it refuses.

use std::collections::BTreeMap;

use super::names::{check_seg_size, Lsn};
use crate::error::{Error, Result};

/// The largest history file accepted. Real ones hold one line per ancestor (tens of bytes
/// each); this is generous and keeps a hostile file from costing memory.
pub const MAX_HISTORY_BYTES: usize = 1 << 20;

/// One ancestor line of a history file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub parent: u32,
    /// The first position that is no longer the ancestor's.
    pub switchpoint: Lsn,
    /// PostgreSQL's reason for the switch (free text).
    pub reason: String,
}

/// A parsed `TTTTTTTT.history` file: the ancestors of `timeline`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct History {
    pub timeline: u32,
    pub entries: Vec<HistoryEntry>,
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Parses the history file of `timeline`. Refuses (with the line number) a line that is
/// not `TLI<whitespace>LSN[<whitespace>reason]`, ancestors that do not increase or are not
/// below `timeline`, and switchpoints that go backwards.
pub fn parse_history(timeline: u32, text: &[u8]) -> Result<History> {
    let file = format!("{timeline:08X}.history");
    if timeline < 2 {
        return Err(Error::invalid(format!(
            "{file}: timeline {timeline} has no history file (its first is timeline 2)"
        )));
    }
    if text.len() > MAX_HISTORY_BYTES {
        return Err(Error::invalid(format!(
            "{file}: {} bytes, more than a history file holds ({MAX_HISTORY_BYTES})",
            text.len()
        )));
    }
    let text = std::str::from_utf8(text)
        .map_err(|_| Error::invalid(format!("{file}: not text (invalid UTF-8)")))?;
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |what: &str| Error::invalid(format!("{file}, line {}: {what}", i + 1));
        let mut fields = line.splitn(3, |c: char| c.is_ascii_whitespace());
        let tli = fields.next().unwrap_or_default();
        let lsn = fields.next().unwrap_or_default().trim();
        let reason = fields.next().unwrap_or_default().trim().to_string();
        let parent: u32 = tli
            .parse()
            .map_err(|_| bad(&format!("{tli:?} is not a timeline number")))?;
        let switchpoint =
            Lsn::parse(lsn).map_err(|_| bad(&format!("{lsn:?} is not a switchpoint LSN")))?;
        if parent == 0 || parent >= timeline {
            return Err(bad(&format!(
                "ancestor {parent} is not a timeline below {timeline}"
            )));
        }
        if let Some(prev) = entries.last() {
            if parent <= prev.parent {
                return Err(bad(
                    "ancestors must increase (PostgreSQL writes them in order)",
                ));
            }
            if switchpoint < prev.switchpoint {
                return Err(bad(&format!(
                    "switchpoint {switchpoint} is before the previous one ({})",
                    prev.switchpoint
                )));
            }
        }
        entries.push(HistoryEntry {
            parent,
            switchpoint,
            reason,
        });
    }
    if entries.is_empty() {
        return Err(Error::invalid(format!("{file}: no ancestor line")));
    }
    Ok(History { timeline, entries })
}

/// One timeline of a path, valid from `begin` (inclusive) to `end` (exclusive; `None` for
/// the path's target, which has no end yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub timeline: u32,
    pub begin: Lsn,
    pub end: Option<Lsn>,
}

/// How a timeline lies on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPath {
    /// Not an ancestor of the path's target, nor the target.
    No,
    /// An ancestor, valid below this position.
    Below(Lsn),
    /// The target itself: valid to the end.
    ToTheEnd,
}

/// The timelines WAL replay passes through to reach a target timeline, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TimelinePath {
    steps: Vec<Step>,
}

impl TimelinePath {
    /// The path of a timeline without ancestors (timeline 1, or one whose history is
    /// unknown and is taken as it is).
    pub fn root(timeline: u32) -> TimelinePath {
        TimelinePath {
            steps: vec![Step {
                timeline,
                begin: Lsn(0),
                end: None,
            }],
        }
    }

    /// The path a history file describes.
    pub fn of(history: &History) -> TimelinePath {
        let mut steps = Vec::with_capacity(history.entries.len() + 1);
        let mut begin = Lsn(0);
        for e in &history.entries {
            steps.push(Step {
                timeline: e.parent,
                begin,
                end: Some(e.switchpoint),
            });
            begin = e.switchpoint;
        }
        steps.push(Step {
            timeline: history.timeline,
            begin,
            end: None,
        });
        TimelinePath { steps }
    }

    /// The timeline the path leads to.
    pub fn target(&self) -> u32 {
        self.steps.last().map_or(0, |s| s.timeline)
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Whether (and up to where) `timeline` is on this path.
    pub fn on_path(&self, timeline: u32) -> OnPath {
        match self.steps.iter().find(|s| s.timeline == timeline) {
            None => OnPath::No,
            Some(Step { end: Some(e), .. }) => OnPath::Below(*e),
            Some(Step { end: None, .. }) => OnPath::ToTheEnd,
        }
    }

    /// Whether `timeline` is on this path and still valid at `lsn`.
    pub fn passes(&self, timeline: u32, lsn: Lsn) -> bool {
        match self.on_path(timeline) {
            OnPath::No => false,
            OnPath::Below(end) => lsn <= end,
            OnPath::ToTheEnd => true,
        }
    }

    /// The timeline whose WAL holds position `lsn` on this path: the step with
    /// `begin <= lsn < end`. A switchpoint belongs to the child.
    pub fn timeline_at(&self, lsn: Lsn) -> u32 {
        self.steps
            .iter()
            .rev()
            .find(|s| s.begin <= lsn)
            .map_or(0, |s| s.timeline)
    }

    /// The timeline whose file recovery reads for segment `number`: the newest step whose
    /// first segment is at or before it.
    pub fn timeline_of_segment(&self, number: u64, seg_size: u32) -> Result<u32> {
        let size = u64::from(check_seg_size(seg_size)?);
        Ok(self
            .steps
            .iter()
            .rev()
            .find(|s| s.begin.0 / size <= number)
            .map_or(0, |s| s.timeline))
    }

    /// The segment numbers recovery reads from each timeline of the path, oldest first:
    /// `(timeline, first, end)` with `end` exclusive (`None`: no end). Steps whose range is
    /// empty (a timeline abandoned in the segment it began) are left out.
    pub fn segment_ranges(&self, seg_size: u32) -> Result<Vec<(u32, u64, Option<u64>)>> {
        let size = u64::from(check_seg_size(seg_size)?);
        let mut out = Vec::with_capacity(self.steps.len());
        for (i, s) in self.steps.iter().enumerate() {
            let first = s.begin.0 / size;
            let end = self.steps.get(i + 1).map(|n| n.begin.0 / size);
            if end.is_none_or(|e| e > first) {
                out.push((s.timeline, first, end));
            }
        }
        Ok(out)
    }
}

/// Every history known, by timeline.
#[derive(Debug, Clone, Default)]
pub struct Timelines {
    histories: BTreeMap<u32, History>,
}

impl Timelines {
    pub fn new() -> Timelines {
        Timelines::default()
    }

    pub fn insert(&mut self, history: History) {
        self.histories.insert(history.timeline, history);
    }

    pub fn get(&self, timeline: u32) -> Option<&History> {
        self.histories.get(&timeline)
    }

    pub fn histories(&self) -> impl Iterator<Item = &History> {
        self.histories.values()
    }

    /// The path to `timeline`. Timeline 1 has no history file; any other needs one, since
    /// without it nothing says where it branched.
    pub fn path(&self, timeline: u32) -> Result<TimelinePath> {
        match (timeline, self.histories.get(&timeline)) {
            (0, _) => Err(Error::invalid("timeline 0 does not exist")),
            (1, _) => Ok(TimelinePath::root(1)),
            (_, Some(h)) => Ok(TimelinePath::of(h)),
            (t, None) => Err(Error::not_found(format!(
                "the archive holds no history file for timeline {t} ({t:08X}.history), so where it branched is unknown"
            ))),
        }
    }

    /// The timeline PostgreSQL's `recovery_target_timeline = 'latest'` picks when recovery
    /// starts on `start`: it probes `start + 1`, `start + 2`, ... for history files and
    /// takes the last one found.
    pub fn latest_from(&self, start: u32) -> u32 {
        let mut t = start;
        while let Some(next) = t.checked_add(1) {
            if !self.histories.contains_key(&next) {
                break;
            }
            t = next;
        }
        t
    }

    /// Whether `a` is on the path to `b`, and up to where: [`OnPath::ToTheEnd`] when they
    /// are the same, [`OnPath::Below`] the switchpoint when `a` is an ancestor.
    pub fn ancestry(&self, a: u32, b: u32) -> Result<OnPath> {
        Ok(self.path(b)?.on_path(a))
    }

    /// The timeline holding position `lsn` on the path to `target`.
    pub fn timeline_at(&self, target: u32, lsn: Lsn) -> Result<u32> {
        Ok(self.path(target)?.timeline_at(lsn))
    }

    /// Of `candidates`, the timelines whose path passes through `timeline` at `lsn` (which
    /// includes `timeline` itself): where WAL replay starting there may go. A candidate
    /// without a readable path is left out.
    pub fn reachable_from(
        &self,
        timeline: u32,
        lsn: Lsn,
        candidates: impl IntoIterator<Item = u32>,
    ) -> Vec<u32> {
        let mut out: Vec<u32> = candidates
            .into_iter()
            .filter(|t| {
                self.path(*t)
                    .map(|p| p.passes(timeline, lsn))
                    .unwrap_or(false)
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MB16: u32 = 16 << 20;

    fn lsn(s: &str) -> Lsn {
        Lsn::parse(s).unwrap()
    }

    #[test]
    fn a_history_file_as_postgresql_writes_it() {
        let h = parse_history(
            3,
            b"1\t0/3000000\tno recovery target specified\n\n# comment\n2\t0/5000100\tbefore 2024-01-01 00:00:00+00\n",
        )
        .unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.entries[1].switchpoint, lsn("0/5000100"));
        assert_eq!(h.entries[1].reason, "before 2024-01-01 00:00:00+00");
        let p = TimelinePath::of(&h);
        assert_eq!(p.target(), 3);
        assert_eq!(p.on_path(1), OnPath::Below(lsn("0/3000000")));
        assert_eq!(p.on_path(3), OnPath::ToTheEnd);
        assert_eq!(p.on_path(4), OnPath::No);
        assert_eq!(p.timeline_at(lsn("0/2FFFFFF")), 1);
        assert_eq!(p.timeline_at(lsn("0/3000000")), 2);
        assert_eq!(p.timeline_at(lsn("0/50000FF")), 2);
        assert_eq!(p.timeline_at(lsn("0/5000100")), 3);
        // Segment 5 holds the switch to 3: it is read from timeline 3.
        assert_eq!(p.timeline_of_segment(2, MB16).unwrap(), 1);
        assert_eq!(p.timeline_of_segment(3, MB16).unwrap(), 2);
        assert_eq!(p.timeline_of_segment(4, MB16).unwrap(), 2);
        assert_eq!(p.timeline_of_segment(5, MB16).unwrap(), 3);
        assert_eq!(
            p.segment_ranges(MB16).unwrap(),
            vec![(1, 0, Some(3)), (2, 3, Some(5)), (3, 5, None)]
        );
        assert!(p.passes(2, lsn("0/5000100")));
        assert!(!p.passes(2, lsn("0/5000101")));
    }

    #[test]
    fn ancestry_latest_and_reach() {
        let mut t = Timelines::new();
        t.insert(parse_history(2, b"1\t0/4000000\tx\n").unwrap());
        t.insert(parse_history(3, b"1\t0/2000000\tdrill\n").unwrap());
        assert_eq!(t.latest_from(1), 3);
        assert_eq!(t.latest_from(3), 3);
        assert_eq!(t.ancestry(1, 2).unwrap(), OnPath::Below(lsn("0/4000000")));
        assert_eq!(t.ancestry(2, 3).unwrap(), OnPath::No);
        assert_eq!(t.timeline_at(2, lsn("0/4000000")).unwrap(), 2);
        // From timeline 1 at 0/3000000, timeline 3 (branched at 0/2000000) is behind.
        assert_eq!(
            t.reachable_from(1, lsn("0/3000000"), [1, 2, 3, 4]),
            vec![1, 2]
        );
        assert!(t.path(4).is_err());
        assert_eq!(t.path(1).unwrap(), TimelinePath::root(1));
    }

    #[test]
    fn garbage_is_refused_with_the_line() {
        for (tli, text, what) in [
            (2u32, &b""[..], "no ancestor"),
            (2, b"# only a comment\n", "no ancestor"),
            (2, b"x\t0/1\n", "line 1"),
            (2, b"1\n", "line 1"),
            (2, b"1\t0/1/2\n", "line 1"),
            (2, b"2\t0/1\n", "below 2"),
            (3, b"1\t0/5\n\n1\t0/6\n", "line 3"),
            (3, b"1\t0/5\n2\t0/4\n", "before"),
            (2, b"\xff\xfe", "UTF-8"),
            (1, b"1\t0/1\n", "no history"),
        ] {
            let e = parse_history(tli, text).unwrap_err();
            assert!(e.to_string().contains(what), "{text:?}: {e}");
        }
        let big = vec![b'#'; MAX_HISTORY_BYTES + 1];
        assert!(parse_history(2, &big).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix and many mutations of a valid file.
        let good = b"1\t0/3000000\tr\n2\t5/FF000000\tq\n".to_vec();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..4000 {
            let mut b = good.clone();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % b.len();
            b[at] = (x >> 32) as u8;
            b.truncate(round % (good.len() + 1));
            if let Ok(h) = parse_history(3, &b) {
                let p = TimelinePath::of(&h);
                let _ = p.segment_ranges(MB16);
                let _ = p.timeline_of_segment(x, MB16);
            }
        }
    }
}
