//! The long page header at the start of every WAL segment, and the checks a segment passes
//! before it is archived: it must be WAL of a known PostgreSQL version, of the cluster the
//! repository archives, and the segment its name says.
//!
//! Layout (little-endian on the platforms PostgreSQL archives from here; `XLogLongPageHeaderData`):
//!
//! ```text
//!  0  u16 xlp_magic      XLOG_PAGE_MAGIC of the server version (0xD110 for 15)
//!  2  u16 xlp_info       flags; XLP_LONG_HEADER (0x0002) on a segment's first page
//!  4  u32 xlp_tli        timeline of the page
//!  8  u64 xlp_pageaddr   LSN of the page: the segment's start
//! 16  u32 xlp_rem_len    (not checked) + 4 bytes of padding
//! 24  u64 xlp_sysid      the cluster's system identifier
//! 32  u32 xlp_seg_size   segment size in bytes
//! 36  u32 xlp_xlog_blcksz  WAL block size
//! ```

use super::names::{check_seg_size, Lsn, Segment};
use crate::error::{Error, ErrorKind, Result};

/// Bytes of the long page header.
pub const LONG_HEADER_LEN: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;

/// XLOG_PAGE_MAGIC by server version: the versions whose WAL Cairn archives.
const MAGICS: &[(u16, u32)] = &[
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
];

/// What a segment's first page says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The PostgreSQL major version that wrote it.
    pub version: u32,
    pub timeline: u32,
    /// Where the segment starts.
    pub start: Lsn,
    pub system_id: u64,
    pub seg_size: u32,
    pub block_size: u32,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl SegmentHeader {
    /// Reads the long page header from the first bytes of a segment.
    pub fn parse(first: &[u8], shown: &str) -> Result<SegmentHeader> {
        let damaged = |what: &str| Error::corrupt(format!("{shown}: not a WAL segment ({what})"));
        if first.len() < LONG_HEADER_LEN {
            return Err(damaged("shorter than a page header"));
        }
        let field = |v: Option<u64>| v.ok_or_else(|| damaged("short header"));
        let magic = field(u16_at(first, 0).map(u64::from))? as u16;
        let version = MAGICS
            .iter()
            .find(|(m, _)| *m == magic)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                damaged(&format!(
                    "page magic {magic:#06X} of no known PostgreSQL version"
                ))
            })?;
        let info = field(u16_at(first, 2).map(u64::from))? as u16;
        if info & XLP_LONG_HEADER == 0 {
            return Err(damaged("its first page has no long header"));
        }
        let seg_size = field(u32_at(first, 32).map(u64::from))? as u32;
        check_seg_size(seg_size).map_err(|_| damaged(&format!("segment size {seg_size}")))?;
        Ok(SegmentHeader {
            version,
            timeline: field(u32_at(first, 4).map(u64::from))? as u32,
            start: Lsn(field(u64_at(first, 8))?),
            system_id: field(u64_at(first, 24))?,
            seg_size,
            block_size: field(u32_at(first, 36).map(u64::from))? as u32,
        })
    }

    /// Checks that a segment (or a `.partial` one) of `len` bytes named `name` is what its
    /// header says: the same timeline (or an ancestor's, see below) and segment, the full size, and, when the repository
    /// already archives a cluster, that cluster's system identifier. A segment of another
    /// cluster is a `Conflict`; one whose header does not match its name or size `Corrupt`.
    pub fn check(&self, name: &str, len: u64, cluster: Option<u64>) -> Result<()> {
        let segment_name = name.strip_suffix(".partial").unwrap_or(name);
        let named = Segment::parse(segment_name, self.seg_size)?;
        if let Some(id) = cluster {
            if id != self.system_id {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "{name} belongs to the cluster with system identifier {}, but this repository archives the cluster {id}; \
                         a second cluster needs a tenant of its own",
                        self.system_id
                    ),
                ));
            }
        }
        // The first segment of a new timeline starts as a copy of its parent timeline's
        // segment (PostgreSQL copies the pages before the switch point), so its first page
        // may carry an older timeline; never a newer one.
        if self.timeline == 0 || self.timeline > named.timeline {
            return Err(Error::corrupt(format!(
                "{name}: its header says timeline {}, its name timeline {}",
                self.timeline, named.timeline
            )));
        }
        if self.start != named.start(self.seg_size) {
            return Err(Error::corrupt(format!(
                "{name}: its header says it starts at {}, its name at {}",
                self.start,
                named.start(self.seg_size)
            )));
        }
        if len != u64::from(self.seg_size) {
            return Err(Error::corrupt(format!(
                "{name}: {len} bytes, but its segments are {} bytes",
                self.seg_size
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The first 40 bytes of segment 000000010000000000000001 as initdb of PostgreSQL 15
    /// writes it (system identifier 7714652851746895810).
    fn header(magic: u16, tli: u32, pageaddr: u64, sysid: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&magic.to_le_bytes());
        b.extend_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        b.extend_from_slice(&tli.to_le_bytes());
        b.extend_from_slice(&pageaddr.to_le_bytes());
        b.extend_from_slice(&[0u8; 8]);
        b.extend_from_slice(&sysid.to_le_bytes());
        b.extend_from_slice(&(16u32 << 20).to_le_bytes());
        b.extend_from_slice(&8192u32.to_le_bytes());
        b
    }

    const SYSID: u64 = 7714652851746895810;
    const NAME: &str = "000000010000000000000001";

    #[test]
    fn a_real_header_is_read() {
        let real = hex::decode(
            "10d102000100000000000001000000000000000000000000c2f7d309e5f30f6b0000000100200000",
        )
        .unwrap();
        let h = SegmentHeader::parse(&real, NAME).unwrap();
        assert_eq!(h.version, 15);
        assert_eq!(h.timeline, 1);
        assert_eq!(h.start, Lsn(16 << 20));
        assert_eq!(h.system_id, SYSID);
        assert_eq!((h.seg_size, h.block_size), (16 << 20, 8192));
        h.check(NAME, 16 << 20, Some(SYSID)).unwrap();
        h.check(NAME, 16 << 20, None).unwrap();
        h.check(&format!("{NAME}.partial"), 16 << 20, None).unwrap();
    }

    #[test]
    fn mismatches_are_refused() {
        let h = SegmentHeader::parse(&header(0xD110, 1, 16 << 20, SYSID), NAME).unwrap();
        let other = h.check(NAME, 16 << 20, Some(SYSID + 1)).unwrap_err();
        assert_eq!(other.kind(), ErrorKind::Conflict);
        assert!(other.to_string().contains(&SYSID.to_string()), "{other}");
        // Named as the next segment, or on another timeline, or cut short.
        assert_eq!(
            h.check("000000010000000000000002", 16 << 20, None)
                .unwrap_err()
                .kind(),
            ErrorKind::Corrupt
        );
        // A timeline's first segment may begin with its parent's pages; not the reverse.
        h.check("000000020000000000000001", 16 << 20, None).unwrap();
        let newer = SegmentHeader::parse(
            &header(0xD110, 2, 16 << 20, SYSID),
            "000000020000000000000001",
        )
        .unwrap();
        assert!(newer.check(NAME, 16 << 20, None).is_err());
        assert!(h.check(NAME, 8 << 20, None).is_err());
        assert!(h.check("00000001000000000000001", 16 << 20, None).is_err());
    }

    #[test]
    fn damaged_headers_are_refused() {
        assert!(SegmentHeader::parse(&[0u8; 39], NAME).is_err());
        assert!(SegmentHeader::parse(&header(0x1234, 1, 16 << 20, SYSID), NAME).is_err());
        let mut no_long = header(0xD110, 1, 16 << 20, SYSID);
        no_long[2] = 0;
        assert!(SegmentHeader::parse(&no_long, NAME).is_err());
        let mut bad_size = header(0xD110, 1, 16 << 20, SYSID);
        bad_size[32..36].copy_from_slice(&(3u32 << 20).to_le_bytes());
        assert!(SegmentHeader::parse(&bad_size, NAME).is_err());
        assert_eq!(
            SegmentHeader::parse(&header(0xD113, 1, 16 << 20, SYSID), NAME)
                .unwrap()
                .version,
            16
        );
    }
}
