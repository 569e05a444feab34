//! PostgreSQL's names for WAL files and positions: segment names (`TTTTTTTTLLLLLLLLSSSSSSSS`),
//! timeline history files (`TTTTTTTT.history`), backup history files
//! (`<segment>.<offset>.backup`), partial segments (`<segment>.partial`), and LSNs (`X/Y`).
//!
//! A segment name is the timeline, then the segment number split into a "log" (the high 32
//! bits of the LSN) and the segment within it. How many segments a log holds depends on the
//! segment size, so turning a name into an LSN needs the size (16 MiB by default: 256 a log).

use std::fmt;

use crate::error::{Error, Result};

/// A position in the WAL, as PostgreSQL writes it: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn parse(s: &str) -> Result<Lsn> {
        let bad = || {
            Error::invalid(format!(
                "{s:?} is not an LSN (expected the form 16/B374D848)"
            ))
        };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(bad());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }

    /// The segment that holds this position.
    pub fn segment(self, timeline: u32, seg_size: u32) -> Result<Segment> {
        Segment::from_number(
            timeline,
            self.0 / u64::from(check_seg_size(seg_size)?),
            seg_size,
        )
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Segment sizes PostgreSQL allows: a power of two from 1 MiB to 1 GiB.
pub fn check_seg_size(seg_size: u32) -> Result<u32> {
    if seg_size.is_power_of_two() && (1 << 20..=1 << 30).contains(&seg_size) {
        Ok(seg_size)
    } else {
        Err(Error::invalid(format!(
            "{seg_size} is not a WAL segment size (a power of two from 1 MiB to 1 GiB)"
        )))
    }
}

/// Segments in one "log" (4 GiB of WAL).
fn segments_per_log(seg_size: u32) -> u64 {
    (1u64 << 32) / u64::from(seg_size)
}

/// One WAL segment: its timeline and its number (LSN / segment size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    pub number: u64,
}

impl Segment {
    pub fn from_number(timeline: u32, number: u64, seg_size: u32) -> Result<Segment> {
        let per_log = segments_per_log(check_seg_size(seg_size)?);
        if timeline == 0 || number / per_log > u64::from(u32::MAX) {
            return Err(Error::invalid(format!(
                "no WAL segment {number} on timeline {timeline}"
            )));
        }
        Ok(Segment { timeline, number })
    }

    /// The segment a 24-hex-digit name gives, for segments of `seg_size` bytes. The part
    /// within a log must be below the number of segments a log holds.
    pub fn parse(name: &str, seg_size: u32) -> Result<Segment> {
        let bad = || Error::invalid(format!("{name:?} is not a WAL segment name"));
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let field =
            |r: std::ops::Range<usize>| u32::from_str_radix(&name[r], 16).map_err(|_| bad());
        let (timeline, log, seg) = (field(0..8)?, field(8..16)?, field(16..24)?);
        let per_log = segments_per_log(check_seg_size(seg_size)?);
        if timeline == 0 || u64::from(seg) >= per_log {
            return Err(bad());
        }
        Ok(Segment {
            timeline,
            number: u64::from(log) * per_log + u64::from(seg),
        })
    }

    pub fn name(&self, seg_size: u32) -> String {
        let per_log = segments_per_log(seg_size.max(1 << 20));
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per_log,
            self.number % per_log
        )
    }

    /// The first position in the segment.
    pub fn start(&self, seg_size: u32) -> Lsn {
        Lsn(self.number.saturating_mul(u64::from(seg_size)))
    }
}

/// What a file that PostgreSQL archives is, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalFile {
    /// A full segment, 24 hex digits.
    Segment(String),
    /// `<segment>.partial`: the last, incomplete segment of a timeline that a promotion ended.
    Partial(String),
    /// `<segment>.<8 hex digits>.backup`: written when a base backup ends.
    Backup(String),
    /// `TTTTTTTT.history`: how a timeline branched from its parents.
    History(u32),
}

impl WalFile {
    /// Classifies a name as given to `archive_command` (`%f`) or `restore_command`. Names are
    /// at most 64 characters of `[0-9A-F.]` (PostgreSQL writes upper-case hex); anything else,
    /// including a path, is refused.
    pub fn parse(name: &str) -> Result<WalFile> {
        let bad = || {
            Error::invalid(format!(
                "{name:?} is not a WAL file name (a segment, .partial, .backup or .history)"
            ))
        };
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if name.len() > 64 {
            return Err(bad());
        }
        if hex(name, 24) {
            return Ok(WalFile::Segment(name.to_string()));
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            return if hex(seg, 24) {
                Ok(WalFile::Partial(name.to_string()))
            } else {
                Err(bad())
            };
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            return match rest.split_once('.') {
                Some((seg, off)) if hex(seg, 24) && hex(off, 8) => {
                    Ok(WalFile::Backup(name.to_string()))
                }
                _ => Err(bad()),
            };
        }
        if let Some(tli) = name.strip_suffix(".history") {
            if hex(tli, 8) {
                let t = u32::from_str_radix(tli, 16).map_err(|_| bad())?;
                if t > 0 {
                    return Ok(WalFile::History(t));
                }
            }
        }
        Err(bad())
    }

    pub fn name(&self) -> String {
        match self {
            WalFile::Segment(n) | WalFile::Partial(n) | WalFile::Backup(n) => n.clone(),
            WalFile::History(t) => format!("{t:08X}.history"),
        }
    }

    /// The timeline the file belongs to (its first 8 hex digits).
    pub fn timeline(&self) -> u32 {
        match self {
            WalFile::History(t) => *t,
            WalFile::Segment(n) | WalFile::Partial(n) | WalFile::Backup(n) => n
                .get(0..8)
                .and_then(|t| u32::from_str_radix(t, 16).ok())
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MB16: u32 = 16 << 20;

    #[test]
    fn lsns_round_trip() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0").unwrap().to_string(), "0/0");
        for bad in ["", "16", "/1", "1/", "G/1", "123456789/0", "1/2/3"] {
            assert!(Lsn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn segment_names_follow_postgresql() {
        // 16 MiB segments: 256 a log. LSN 16/B374D848 is in log 0x16, segment 0xB3.
        let s = Lsn::parse("16/B374D848").unwrap().segment(1, MB16).unwrap();
        assert_eq!(s.name(MB16), "0000000100000016000000B3");
        assert_eq!(Segment::parse("0000000100000016000000B3", MB16).unwrap(), s);
        assert_eq!(s.start(MB16), Lsn::parse("16/B3000000").unwrap());
        // 64 MiB segments: 64 a log, so 0x40 and above are not segment names.
        assert!(Segment::parse("000000010000000000000040", 64 << 20).is_err());
        assert!(Segment::parse("00000001000000000000003F", 64 << 20).is_ok());
        assert!(Segment::parse("000000000000000000000001", MB16).is_err());
        assert!(Segment::parse("00000001000000000000001", MB16).is_err());
        assert!(check_seg_size(3 << 20).is_err());
    }

    #[test]
    fn wal_file_kinds() {
        let seg = "0000000200000000000000A1";
        assert_eq!(WalFile::parse(seg).unwrap(), WalFile::Segment(seg.into()));
        assert_eq!(
            WalFile::parse("0000000200000000000000A1.partial").unwrap(),
            WalFile::Partial("0000000200000000000000A1.partial".into())
        );
        let b = "000000010000000000000002.00000028.backup";
        assert_eq!(WalFile::parse(b).unwrap(), WalFile::Backup(b.into()));
        assert_eq!(
            WalFile::parse("00000003.history").unwrap(),
            WalFile::History(3)
        );
        assert_eq!(WalFile::History(3).name(), "00000003.history");
        assert_eq!(WalFile::parse(seg).unwrap().timeline(), 2);
        for bad in [
            "",
            "../000000010000000000000001",
            "pg_wal/000000010000000000000001",
            "00000000.history",
            "0000000G.history",
            "000000010000000000000002.backup",
            "000000010000000000000002.0000002.backup",
            "RECOVERYXLOG",
        ] {
            assert!(WalFile::parse(bad).is_err(), "{bad}");
        }
    }
}
