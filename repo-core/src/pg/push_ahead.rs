//! Push-ahead: which further WAL segments a push may archive in the same commit as the one
//! PostgreSQL asked for.
//!
//! PostgreSQL calls `archive_command` once per file, oldest first, and marks a file ready by
//! creating `pg_wal/archive_status/<name>.ready` once it is complete (it never writes the
//! file again before it was archived: a segment is recycled only after its `.done`). So the
//! segments with a `.ready` marker beside `%p` are whole, and archiving them now lets the
//! later calls for them answer from the spool (`pg/spool.rs`) at once. The markers are
//! PostgreSQL's: they are only read, never renamed or removed.
//!
//! Only plain segments of `%p`'s timeline with names after `%p` are taken. `.history`,
//! `.backup` and `.partial` files are small or rare and are archived when PostgreSQL asks
//! for them.

use std::path::{Path, PathBuf};

use super::names::WalFile;

/// How much a push may take ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AheadLimits {
    /// Files at most (0: none).
    pub files: usize,
    /// Bytes at most, over all files taken ahead.
    pub bytes: u64,
}

/// The segments after the one at `path` on its timeline that PostgreSQL has marked ready,
/// oldest first, within `limits`. A marker whose segment is missing, or that `skip` rejects
/// (e.g. one already pushed ahead), is passed over. Nothing here fails: without a readable
/// `archive_status` folder there is simply nothing to take.
pub fn ready_after(path: &Path, limits: AheadLimits, skip: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    if limits.files == 0 {
        return Vec::new();
    }
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let Ok(WalFile::Segment(_)) = WalFile::parse(name) else {
        return Vec::new();
    };
    let timeline = &name[..8];
    let dir = path.parent().unwrap_or(Path::new(""));
    let status = if dir.as_os_str().is_empty() {
        PathBuf::from("archive_status")
    } else {
        dir.join("archive_status")
    };
    let Ok(entries) = std::fs::read_dir(&status) else {
        return Vec::new();
    };
    let mut ready: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let marker = e.file_name().into_string().ok()?;
            let seg = marker.strip_suffix(".ready")?.to_string();
            let plain = matches!(WalFile::parse(&seg), Ok(WalFile::Segment(_)));
            (plain && seg.starts_with(timeline) && seg.as_str() > name).then_some(seg)
        })
        .collect();
    ready.sort();
    let mut taken = Vec::new();
    let mut bytes = 0u64;
    for seg in ready {
        if taken.len() >= limits.files {
            break;
        }
        if skip(&seg) {
            continue;
        }
        let p = dir.join(&seg);
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        let Some(total) = bytes.checked_add(meta.len()).filter(|t| *t <= limits.bytes) else {
            break;
        };
        bytes = total;
        taken.push(p);
    }
    taken
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn takes_later_ready_segments_of_the_timeline_within_limits() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path();
        std::fs::create_dir(wal.join("archive_status")).unwrap();
        let seg = |n: u32| format!("00000001000000000000{n:04X}");
        for n in 1..=6 {
            std::fs::write(wal.join(seg(n)), vec![0u8; 100]).unwrap();
        }
        for marker in [
            seg(1) + ".ready",
            seg(2) + ".ready",
            seg(3) + ".done",
            seg(4) + ".ready",
            seg(5) + ".ready",
            seg(6) + ".ready",
            seg(7) + ".ready", // its segment is gone
            "000000020000000000000009.ready".to_string(),
            "00000002.history.ready".to_string(),
        ] {
            std::fs::write(wal.join("archive_status").join(marker), b"").unwrap();
        }
        let names = |v: Vec<PathBuf>| -> Vec<String> {
            v.iter()
                .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
                .collect()
        };
        let all = AheadLimits {
            files: 8,
            bytes: 1 << 20,
        };
        let main = wal.join(seg(1));
        assert_eq!(
            names(ready_after(&main, all, |_| false)),
            [seg(2), seg(4), seg(5), seg(6)]
        );
        assert_eq!(
            names(ready_after(&main, all, |n| n == seg(4))),
            [seg(2), seg(5), seg(6)]
        );
        let two = AheadLimits { files: 2, ..all };
        assert_eq!(names(ready_after(&main, two, |_| false)), [seg(2), seg(4)]);
        let small = AheadLimits {
            files: 8,
            bytes: 250,
        };
        assert_eq!(
            names(ready_after(&main, small, |_| false)),
            [seg(2), seg(4)]
        );
        let none = AheadLimits { files: 0, ..all };
        assert!(ready_after(&main, none, |_| false).is_empty());
        assert!(ready_after(&wal.join("00000002.history"), all, |_| false).is_empty());
    }
}
