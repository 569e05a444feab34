//! Private temporary folders that a killed process does not leave behind for long.
//!
//! A [`ScratchDir`] is `<temp>/<prefix>-<random>/` holding a file `lock` that the owning
//! process keeps locked (`flock`) while the folder exists; dropping it removes the folder. A
//! process that is killed cannot remove its folder, but the kernel releases its lock, so the
//! next [`ScratchDir::new`] with the same prefix finds the lock free and removes the folder.
//!
//! The folder is prepared under the name `<prefix>-<random>.new` and renamed once its lock
//! is held, so a sweep never sees a live folder whose lock is not taken yet. It is removed by
//! renaming it to `<prefix>-<random>.gone` first, so a process killed while removing it leaves
//! a folder that is plainly abandoned (never one without its lock that looks live); the next
//! sweep removes `.gone` folders at once. Leftover `.new` folders, and folders without a lock
//! file (from versions before locks), are removed once they are an hour old.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::id::Id;

const LOCK: &str = "lock";
/// Age after which a folder that cannot carry a live lock is removed.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// A temporary folder, removed when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    _lock: File,
}

impl ScratchDir {
    /// A new folder in the system's temporary folder.
    pub fn new(prefix: &str) -> Result<ScratchDir> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// A new folder in `base`, after removing the abandoned folders of the same prefix.
    pub fn new_in(base: &Path, prefix: &str) -> Result<ScratchDir> {
        sweep(base, prefix);
        let name = format!("{prefix}-{}", Id::random()?.short());
        let staging = base.join(format!("{name}.new"));
        std::fs::create_dir_all(&staging)
            .map_err(|e| Error::io(format!("creating {}", staging.display()), e))?;
        let lock_path = staging.join(LOCK);
        let lock = File::create(&lock_path)
            .map_err(|e| Error::io(format!("creating {}", lock_path.display()), e))?;
        lock.try_lock()
            .map_err(|e| Error::io(format!("locking {}", lock_path.display()), e.into()))?;
        let path = base.join(name);
        if let Err(e) = std::fs::rename(&staging, &path) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(Error::io(format!("creating {}", path.display()), e));
        }
        Ok(ScratchDir { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let gone = gone_name(&self.path);
        match std::fs::rename(&self.path, &gone) {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&gone);
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }
}

fn gone_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".gone");
    PathBuf::from(name)
}

/// Removes folders `<prefix>-*` in `base` that no live process owns. Best effort: a folder
/// that cannot be examined or removed is left.
fn sweep(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let start = format!("{prefix}-");
    // Folders being removed are abandoned whatever their kind: those of the program's other
    // prefixes (`cairn-set`, `cairn-cache`) go too.
    let family = match prefix.split_once('-') {
        Some((first, _)) => format!("{first}-"),
        None => start.clone(),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if name.starts_with(&family) && name.ends_with(".gone") {
            let _ = std::fs::remove_dir_all(&path);
            continue;
        }
        if !name.starts_with(&start) {
            continue;
        }
        if abandoned(&path, name.ends_with(".new")) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn abandoned(dir: &Path, staging: bool) -> bool {
    let old = || {
        std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_AFTER)
    };
    if staging {
        return old();
    }
    match File::open(dir.join(LOCK)) {
        // Taking the lock proves its owner is gone; it is released when `f` is closed.
        Ok(f) => f.try_lock().is_ok(),
        Err(_) => old(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn abandoned_folders_are_swept_and_live_ones_kept() {
        let base = tempfile::tempdir().unwrap();
        let live = ScratchDir::new_in(base.path(), "t").unwrap();
        // A folder whose owner died: its lock file exists but nobody holds it.
        let dead = base.path().join("t-dead");
        std::fs::create_dir(&dead).unwrap();
        File::create(dead.join(LOCK)).unwrap();
        // A recent folder without a lock, and another prefix: both kept.
        let recent = base.path().join("t-recent");
        std::fs::create_dir(&recent).unwrap();
        let other = base.path().join("u-dead");
        std::fs::create_dir(&other).unwrap();
        File::create(other.join(LOCK)).unwrap();
        // A folder whose owner was killed while removing it (its lock already deleted).
        let removing = base.path().join("t-killed.gone");
        std::fs::create_dir(&removing).unwrap();

        let second = ScratchDir::new_in(base.path(), "t").unwrap();
        assert!(!dead.exists(), "the abandoned folder is removed");
        assert!(
            !removing.exists(),
            "a folder being removed when its owner died is removed"
        );
        assert!(live.path().exists(), "a live folder is kept");
        assert!(recent.exists() && other.exists());
        assert!(second.path().join(LOCK).exists());

        let path = live.path().to_path_buf();
        drop(live);
        assert!(!path.exists(), "dropping removes the folder");
    }
}
