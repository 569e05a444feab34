//! Finishing an interrupted restore by running it again.
//!
//! Before a restore changes anything in its target it writes a marker file at the target's
//! top, [`MARKER`], naming the snapshot; it removes the marker when everything is restored.
//! A restore that is interrupted (Ctrl-C, `kill -9`, a full disk, power loss) leaves the
//! marker behind. When the same snapshot is restored into the same target again, the marker
//! tells the restore that every entry which differs from the snapshot is its own unfinished
//! work, since the first run checked before writing anything that no existing entry
//! conflicted. So the rerun replaces what differs (as `--overwrite if-changed` would) without
//! being asked to, keeps what is complete, and removes the temporary files the first run
//! left.
//!
//! A file is complete once its times are applied: the restore writes them last, after the
//! content, the owner, the mode and the extended attributes. So when resuming, a regular file
//! whose size and modification time (to the nanosecond) equal the snapshot's is taken as
//! complete without reading it; any other file is compared by content as usual. With
//! `--verify` no file is taken as complete unread.
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

/// The snapshot an interrupted restore into `dir` was restoring, if its marker is there.
pub(super) fn read(dir: &DirFd) -> Result<Option<Id>> {
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
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_MARKER)
        .read_to_string(&mut text)
        .map_err(|e| io_err(&shown, e))?;
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("snapshot "))
        .and_then(|hex| Id::from_hex(hex.trim()).ok());
    match id {
        Some(id) => Ok(Some(id)),
        None => Err(Error::corrupt(format!(
            "{} names no snapshot; remove it if no restore is running",
            shown.display()
        ))),
    }
}

/// Writes the marker for a restore of `snapshot` into `dir` (replacing one that is there).
pub(super) fn write(dir: &DirFd, snapshot: &Id) -> Result<()> {
    let shown = dir.child(MARKER.as_bytes());
    let fd = openat(
        dir.file.as_fd(),
        OsStr::new(MARKER),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )
    .map_err(|e| errno(&shown, e))?;
    std::fs::File::from(fd)
        .write_all(format!("{HEADER}\nsnapshot {}\n", snapshot.to_hex()).as_bytes())
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
