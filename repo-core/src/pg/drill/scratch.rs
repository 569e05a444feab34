//! The drill's scratch folder: the restored data directory, the server's socket folder, its
//! log and its own authentication files, all in one folder that is removed at the end.
//!
//! Invariants: everything in the folder is the drill's own (a given `--scratch` must be
//! missing or empty), so removing it never removes anything else; a folder the drill
//! created is removed whole, a given one is emptied and left. Unless kept, it is removed
//! when the [`Scratch`] is dropped, so an error or an interruption cleans up too.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::id::Id;

/// Attempts at removing the folder: a process of the server that is still exiting may
/// create a file while the tree is removed.
const REMOVE_ATTEMPTS: u32 = 20;

#[derive(Debug)]
pub(super) struct Scratch {
    path: PathBuf,
    /// Whether the drill created the folder (then it removes it, else only empties it).
    created: bool,
    keep: bool,
    finished: bool,
}

impl Scratch {
    /// `dir` (created, or empty), or a new folder `cairn-drill-<random>` in the system's
    /// temporary folder (`$TMPDIR`).
    pub fn create(dir: Option<&Path>, keep: bool) -> Result<Scratch> {
        let (path, created) = match dir {
            Some(d) => {
                let d = std::path::absolute(d)
                    .map_err(|e| Error::io(format!("resolving {}", d.display()), e))?;
                (d.clone(), prepare_given(&d)?)
            }
            None => (new_temp()?, true),
        };
        Ok(Scratch {
            path,
            created,
            keep,
            finished: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn data(&self) -> PathBuf {
        self.path.join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.path.join("socket")
    }

    pub fn log(&self) -> PathBuf {
        self.path.join("postgres.log")
    }

    /// Removes everything in the folder now (the folder stays). Best effort.
    pub fn clear(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }

    /// Removes the folder (or its contents, for a given one) unless it is kept; returns
    /// whether it was kept.
    pub fn finish(&mut self) -> Result<bool> {
        self.finished = true;
        if self.keep {
            return Ok(true);
        }
        let mut last = None;
        for _ in 0..REMOVE_ATTEMPTS {
            let r = if self.created {
                std::fs::remove_dir_all(&self.path)
            } else {
                self.clear();
                match std::fs::read_dir(&self.path).map(|mut d| d.next().is_none()) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(std::io::Error::other("not empty yet")),
                    Err(e) => Err(e),
                }
            };
            match r {
                Ok(()) => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Error::io(
            format!("removing the scratch folder {}", self.path.display()),
            last.unwrap_or_else(|| std::io::Error::other("unknown")),
        ))
    }

    /// Hands the folder (when the drill created it) and the socket folder to the user who
    /// runs PostgreSQL, and writes the server's own `pg_hba.conf` (local connections only,
    /// trusted: the socket folder is that user's alone) and an empty `pg_ident.conf`.
    pub fn prepare_for(&self, ids: Option<(u32, u32)>) -> Result<(PathBuf, PathBuf)> {
        let chown = |p: &Path| -> Result<()> {
            if let Some((uid, gid)) = ids {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| {
                    Error::io(format!("giving {} to the cluster's owner", p.display()), e)
                })?;
            }
            Ok(())
        };
        if self.created {
            chown(&self.path)?;
        }
        let socket = self.socket_dir();
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&socket)
            .map_err(|e| Error::io(format!("creating {}", socket.display()), e))?;
        chown(&socket)?;
        let hba = self.path.join("pg_hba.conf");
        let ident = self.path.join("pg_ident.conf");
        for (p, text) in [
            (
                &hba,
                "# cairn pg drill: the socket folder is private\nlocal all all trust\n",
            ),
            (&ident, ""),
        ] {
            write_new(p, text)?;
            chown(p)?;
        }
        Ok((hba, ident))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.finished {
            if let Err(e) = self.finish() {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Writes a new file, owner-only.
pub(super) fn write_new(p: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| Error::io(format!("writing {}", p.display()), e))
}

/// Creates a given folder or accepts it when empty; returns whether it was created.
fn prepare_given(d: &Path) -> Result<bool> {
    match std::fs::read_dir(d) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "{} is not empty: a drill's scratch folder must be new or empty, since all of it is removed",
                        d.display()
                    ),
                ));
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
            Ok(true)
        }
        Err(e) => Err(Error::io(format!("reading {}", d.display()), e)),
    }
}

fn new_temp() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    let base = std::path::absolute(&base)
        .map_err(|e| Error::io(format!("resolving {}", base.display()), e))?;
    let mut last = None;
    for _ in 0..8 {
        let p = base.join(format!("cairn-drill-{}", Id::random()?.short()));
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(Error::io(format!("creating {}", p.display()), e)),
        }
    }
    Err(Error::io(
        format!("creating a folder in {}", base.display()),
        last.unwrap_or_else(|| std::io::Error::other("unknown")),
    ))
}

/// The first folder on the way to `path` (or `path` itself, needing `last_bits`) that the
/// user `uid`/`gid` cannot use by the mode bits, if any. Supplementary groups and ACLs
/// are not considered, so this is for warnings only.
pub(super) fn blocked_for(path: &Path, uid: u32, gid: u32, last_bits: u32) -> Option<PathBuf> {
    let allowed = |p: &Path, bits: u32| {
        let Ok(m) = std::fs::metadata(p) else {
            return true;
        };
        let mode = m.permissions().mode();
        let granted = if m.uid() == uid {
            mode >> 6
        } else if m.gid() == gid {
            mode >> 3
        } else {
            mode
        };
        uid == 0 || granted & bits == bits
    };
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for a in ancestors {
        if !a.as_os_str().is_empty() && !allowed(a, 0o1) {
            return Some(a.to_path_buf());
        }
    }
    (!allowed(path, last_bits)).then(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_given_folder_must_be_empty_and_is_emptied_a_created_one_removed() {
        let base = tempfile::tempdir().unwrap();
        let full = base.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("precious"), "x").unwrap();
        assert_eq!(
            Scratch::create(Some(&full), false).unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        assert!(full.join("precious").exists());

        let empty = base.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let mut s = Scratch::create(Some(&empty), false).unwrap();
        std::fs::create_dir_all(s.data().join("base")).unwrap();
        assert!(!s.finish().unwrap());
        assert!(empty.exists() && std::fs::read_dir(&empty).unwrap().next().is_none());

        let new = base.path().join("a/new");
        let s = Scratch::create(Some(&new), false).unwrap();
        std::fs::write(s.log(), "log").unwrap();
        drop(s);
        assert!(!new.exists(), "dropping removes a folder the drill created");

        let mut s = Scratch::create(Some(&new), true).unwrap();
        assert!(s.finish().unwrap());
        assert!(new.exists(), "a kept folder stays");
    }
}
