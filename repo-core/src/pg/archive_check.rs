//! Whether the archive holds the WAL a recovery needs, checked before a restore writes
//! anything.

use super::names::{Segment, WalFile};
use super::target::Target;
use super::wal::Catalog;
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::PgInfo;
use crate::repository::Repository;

/// PostgreSQL's default segment size, used until an archived segment says otherwise.
const DEFAULT_SEG_SIZE: u32 = 16 << 20;

/// The WAL a recovery will replay from the archive: consecutive segments `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalReach {
    pub first: String,
    pub last: String,
    pub segments: u64,
    /// When the last segment was last written (an upper bound of its newest record).
    pub last_written: Option<jiff::Timestamp>,
}

/// Checks that the archive has continuous WAL from the base backup's start to what the
/// target needs: an LSN's segment; for a time, a segment written after it; for the other
/// targets at least the backup's stop (recovery then runs to the end of the archive).
pub fn check_wal(
    repo: &Repository,
    catalog: &Catalog,
    base: &PgInfo,
    target: &Target,
    _timeline: &str,
) -> Result<WalReach> {
    let first_name = base
        .wal_first
        .as_deref()
        .ok_or_else(|| Error::corrupt("the base backup records no first WAL segment"))?;
    let tli = base.timeline;
    let seg_size = match catalog.find(repo, &WalFile::parse(first_name)?)? {
        Some((_, node)) => u32::try_from(node.size).unwrap_or(DEFAULT_SEG_SIZE),
        None => DEFAULT_SEG_SIZE,
    };
    let first = Segment::parse(first_name, seg_size)?;
    let stop = Segment::parse(base.wal_last.as_deref().unwrap_or(first_name), seg_size)?;
    let must_reach = match target {
        Target::Lsn(l) => Some(l.segment(tli, seg_size)?.number.max(stop.number)),
        _ => Some(stop.number),
    };
    let mut last: Option<(u64, Option<jiff::Timestamp>)> = None;
    let mut number = first.number;
    loop {
        let seg = Segment::from_number(tli, number, seg_size)?;
        let found = catalog.find(repo, &WalFile::Segment(seg.name(seg_size)))?;
        let Some((_, node)) = found else {
            let needed = must_reach.is_some_and(|m| number <= m);
            if needed {
                return Err(gap(&seg.name(seg_size), target));
            }
            break;
        };
        let written =
            jiff::Timestamp::new(node.mtime.0, i32::try_from(node.mtime.1).unwrap_or(0)).ok();
        last = Some((number, written));
        let reached = match target {
            Target::Time(t) => written.is_some_and(|w| w > *t) && number >= stop.number,
            Target::Lsn(_) | Target::Immediate => must_reach.is_some_and(|m| number >= m),
            _ => false,
        };
        if reached {
            break;
        }
        number = number
            .checked_add(1)
            .ok_or_else(|| Error::corrupt("WAL segment numbers overflow"))?;
    }
    let Some((last_number, last_written)) = last else {
        return Err(gap(first_name, target));
    };
    if let Target::Time(t) = target {
        if last_written.is_none_or(|w| w <= *t) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "the archive holds no WAL written after {t} (its newest continuous segment is {}); recovery could not tell that it passed the target. Wait for the next segment to be archived (archive_timeout) or choose an earlier time",
                    Segment::from_number(tli, last_number, seg_size)?.name(seg_size)
                ),
            ));
        }
    }
    Ok(WalReach {
        first: first.name(seg_size),
        last: Segment::from_number(tli, last_number, seg_size)?.name(seg_size),
        segments: last_number - first.number + 1,
        last_written,
    })
}

fn gap(missing: &str, target: &Target) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!(
            "the archive lacks WAL segment {missing}, which recovery to {} needs; nothing was restored",
            describe(target)
        ),
    )
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
