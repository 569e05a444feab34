//! Finishing an interrupted restore by running it again.
//!
//! Before a restore changes anything in its target it writes a marker file at the target's
//! top, [`MARKER`], naming the snapshot and what of it is restored (the `--include` and
//! `--exclude` patterns); it removes the marker when everything is restored. A restore that
//! is interrupted (Ctrl-C, `kill -9`, a full disk, power loss) leaves the marker behind.
//!
//! When the same snapshot is restored into the same target again, the marker's time (its
//! mtime, from when the first run started; a rerun leaves the marker as it is) tells which
//! entries that run made: those whose ctime is not older than the marker. Creating, renaming,
//! writing and setting metadata all set an entry's ctime, and nobody can set it back. Those
//! entries the rerun replaces where they differ from the snapshot, whatever `--overwrite`
//! says; every older entry follows the usual `--overwrite` rules, since the first run may
//! never have checked it (it may have restored less). The rerun also removes the temporary
//! files the first run left.
//!
//! A file is complete once its times are applied: the restore writes them last, after the
//! content, the owner, the mode and the extended attributes. So when resuming, a regular file
//! the first run made whose size and modification time (to the nanosecond) equal the
//! snapshot's is taken as complete without reading it; any other file is compared by content
//! as usual. With `--verify` no file is taken as complete unread.
//!
//! The marker is removed only by a run that restores at least what the marker's run did:
//! the whole snapshot, or the same patterns. A snapshot that itself holds an entry of the
//! marker's name at its top is restored without a marker (and without resuming).
//!
//! A marker naming another snapshot changes nothing: the restore then treats the target as
//! any other non-empty folder, and a conflict error names the interrupted snapshot.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::dirs::{errno, DirFd};
use super::io_err;
use crate::error::{Error, Result};
use crate::id::Id;

/// The marker's name, at the top of the target.
pub const MARKER: &str = ".cairn-restore-in-progress";
/// The most of a marker that is read (it is two short lines).
const MAX_MARKER: u64 = 4096;
/// What the marker's first line says, for a person who finds it.
const HEADER: &str = "a cairn restore into this folder was interrupted; run it again to finish it";

/// What a marker says of the interrupted restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Marker {
    pub(super) snapshot: Id,
    /// The patterns that chose what was restored (see [`selection`]).
    pub(super) selection: String,
    /// When the interrupted run started: the marker's mtime (seconds, nanoseconds).
    pub(super) since: (i64, i64),
}

/// A restore's selection as a marker records it: empty for the whole snapshot.
pub(super) fn selection(include: &[String], exclude: &[String]) -> String {
    let mut out = String::new();
    for (what, patterns) in [("include", include), ("exclude", exclude)] {
        for p in patterns {
            // Patterns are one line each; a newline in one is escaped so that it cannot
            // make another line of the marker.
            out.push_str(&format!("{what} {}\n", p.escape_default()));
        }
    }
    out
}

/// The interrupted restore into `dir`, if its marker is there.
pub(super) fn read(dir: &DirFd) -> Result<Option<Marker>> {
    let shown = dir.child(MARKER.as_bytes());
    let fd = match openat(
        dir.file.as_fd(),
        OsStr::new(MARKER),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(errno(&shown, e)),
    };
    let st = nix::sys::stat::fstat(&fd).map_err(|e| errno(&shown, e))?;
    if nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT
        != nix::sys::stat::SFlag::S_IFREG
    {
        return Err(Error::corrupt(format!(
            "{} is not a regular file; remove it if no restore is running",
            shown.display()
        )));
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_MARKER)
        .read_to_string(&mut text)
        .map_err(|e| io_err(&shown, e))?;
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("snapshot "))
        .and_then(|hex| Id::from_hex(hex.trim()).ok());
    let selection: String = text
        .lines()
        .filter(|l| l.starts_with("include ") || l.starts_with("exclude "))
        .map(|l| format!("{l}\n"))
        .collect();
    match id {
        Some(snapshot) => Ok(Some(Marker {
            snapshot,
            selection,
            since: (st.st_mtime, st.st_mtime_nsec),
        })),
        None => Err(Error::corrupt(format!(
            "{} names no snapshot; remove it if no restore is running",
            shown.display()
        ))),
    }
}

/// Writes the marker for a restore of `snapshot` (of what `selection` chooses) into `dir`,
/// replacing one that is there.
pub(super) fn write(dir: &DirFd, snapshot: &Id, selection: &str) -> Result<()> {
    let shown = dir.child(MARKER.as_bytes());
    let fd = openat(
        dir.file.as_fd(),
        OsStr::new(MARKER),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .map_err(|e| errno(&shown, e))?;
    std::fs::File::from(fd)
        .write_all(format!("{HEADER}\nsnapshot {}\n{selection}", snapshot.to_hex()).as_bytes())
        .map_err(|e| io_err(&shown, e))
}

/// Removes the marker from `dir`; a missing one is fine.
pub(super) fn remove(dir: &DirFd) -> Result<()> {
    match unlinkat(
        dir.file.as_fd(),
        OsStr::new(MARKER),
        UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(errno(&dir.child(MARKER.as_bytes()), e)),
    }
}

/// Whether `name` is one of the temporary names a restore writes a replacing file under.
pub(super) fn is_temporary(name: &[u8]) -> bool {
    name.starts_with(b".cairn-restore-") && name.ends_with(b".tmp") && name != MARKER.as_bytes()
}

/// Removes the temporary files an interrupted restore left in `dir`; returns how many.
pub(super) fn remove_temporaries(dir: &DirFd) -> Result<u64> {
    use std::os::fd::AsRawFd;
    // Listed through the descriptor's own path, as `delete_extra` does.
    let own = Path::new("/proc/self/fd").join(dir.file.as_raw_fd().to_string());
    let rd = std::fs::read_dir(&own).map_err(|e| io_err(&dir.path, e))?;
    let mut removed = 0;
    for entry in rd {
        let entry = entry.map_err(|e| io_err(&dir.path, e))?;
        let name = entry.file_name();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && is_temporary(name.as_bytes()) {
            match unlinkat(
                dir.file.as_fd(),
                name.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) => removed += 1,
                Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(errno(&dir.child(name.as_bytes()), e)),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_recognised_and_the_marker_is_not_one() {
        assert!(is_temporary(b".cairn-restore-0123456789abcdef.tmp"));
        assert!(!is_temporary(MARKER.as_bytes()));
        assert!(!is_temporary(b"cairn-restore-x.tmp"));
        assert!(!is_temporary(b".cairn-restore-x.txt"));
    }
}
