//! The folders of a restore's target, reached only through descriptors the restore opened
//! itself.
//!
//! The target folder is opened once; every other folder is opened (or created) relative to
//! its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`, and every entry is created,
//! renamed, linked or changed relative to its folder's descriptor. A symlink that someone
//! puts in place of a folder during the restore is therefore never followed: opening it
//! fails and the restore stops with an error. (Someone who can move a folder the restore
//! holds open can move it elsewhere on the same file system; what is then written into it
//! is still written into the folder the restore created, as with `tar -x`.)
//!
//! Descriptors are bounded whatever the depth: a [`DirStack`] keeps the descriptors of the
//! deepest `WINDOW` folders of the current path (and the target's); a folder above them is
//! reopened through `..` from its child when the walk climbs back to it, and checked to be
//! the same folder (device and inode) it was when first opened.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::error::{Error, Result};

/// Folders of the current path whose descriptors are kept open (besides the target's).
const WINDOW: usize = 16;

/// An open folder of the target and where it is (for messages only: nothing is ever
/// looked up by this path).
#[derive(Debug)]
pub(super) struct DirFd {
    pub(super) file: File,
    pub(super) path: PathBuf,
}

impl DirFd {
    /// The shown path of an entry of this folder.
    pub(super) fn child(&self, name: &[u8]) -> PathBuf {
        self.path.join(OsStr::from_bytes(name))
    }

    /// (device, inode): what the folder is, to recognise it when it is reopened.
    fn identity(&self) -> Result<(u64, u64)> {
        let st = fstat(&self.file).map_err(|e| errno(&self.path, e))?;
        Ok((st.st_dev, st.st_ino))
    }
}

pub(super) fn errno(path: &Path, e: nix::errno::Errno) -> Error {
    Error::io(path.display().to_string(), e.into())
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Opens the target folder itself (creating it and its parents when missing). This is the
/// one path the restore resolves as a path, as the user gave it.
pub(super) fn open_target(target: &Path) -> Result<DirFd> {
    std::fs::create_dir_all(target).map_err(|e| Error::io(target.display().to_string(), e))?;
    let fd = openat(
        nix::fcntl::AT_FDCWD,
        target,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno(target, e))?;
    Ok(DirFd {
        file: File::from(fd),
        path: target.to_path_buf(),
    })
}

/// Opens the target folder if it exists; `None` when it does not.
pub(super) fn open_existing_target(target: &Path) -> Result<Option<DirFd>> {
    match openat(
        nix::fcntl::AT_FDCWD,
        target,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(DirFd {
            file: File::from(fd),
            path: target.to_path_buf(),
        })),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(errno(target, e)),
    }
}

/// Opens the existing folder `name` of `parent`, never through a symlink.
pub(super) fn open_dir(parent: &DirFd, name: &[u8]) -> Result<DirFd> {
    let path = parent.child(name);
    let fd = openat(
        parent.file.as_fd(),
        OsStr::from_bytes(name),
        DIR_FLAGS,
        Mode::empty(),
    )
    .map_err(|e| errno(&path, e))?;
    Ok(DirFd {
        file: File::from(fd),
        path,
    })
}

/// Makes `name` in `parent` a folder and opens it; returns whether it was created (and so
/// is empty). A folder is created owner-only: its own mode is applied after its entries.
/// Anything else in its place (a file, a symlink) is removed first.
pub(super) fn ensure_dir(parent: &DirFd, name: &[u8]) -> Result<(DirFd, bool)> {
    let os = OsStr::from_bytes(name);
    let path = parent.child(name);
    match fstatat(
        parent.file.as_fd(),
        os,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
            return Ok((open_dir(parent, name)?, false));
        }
        Ok(_) => unlinkat(parent.file.as_fd(), os, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| errno(&path, e))?,
        Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(errno(&path, e)),
    }
    mkdirat(parent.file.as_fd(), os, Mode::S_IRWXU).map_err(|e| errno(&path, e))?;
    Ok((open_dir(parent, name)?, true))
}

/// Opens `name` in `parent` for reading, never through a symlink and without blocking on a
/// FIFO; `None` when it is not a regular file.
pub(super) fn open_regular(parent: &DirFd, name: &[u8]) -> Result<Option<File>> {
    let path = parent.child(name);
    let fd: OwnedFd = match openat(
        parent.file.as_fd(),
        OsStr::from_bytes(name),
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ELOOP) => return Ok(None),
        Err(e) => return Err(errno(&path, e)),
    };
    let st = fstat(&fd).map_err(|e| errno(&path, e))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Ok(None);
    }
    Ok(Some(File::from(fd)))
}

/// One folder of the current path.
struct Level {
    /// Its name in its parent (empty for the target).
    name: Vec<u8>,
    /// Its descriptor while it is among the deepest `WINDOW` folders (always for the
    /// target); folders whose descriptor was let go are reopened when needed.
    dir: Option<Arc<DirFd>>,
    /// What it is, once opened (see [`DirFd::identity`]).
    identity: Option<(u64, u64)>,
}

/// The folders from the target down to the one being restored, with a bounded number of
/// descriptors (see the module's documentation). A level may be pushed before its folder
/// exists (a folder that is restored only if something below it is); it is created when a
/// descriptor for it is first asked for.
pub(super) struct DirStack {
    levels: Vec<Level>,
}

impl DirStack {
    pub(super) fn new(target: DirFd) -> Result<Self> {
        let identity = target.identity()?;
        Ok(DirStack {
            levels: vec![Level {
                name: Vec::new(),
                dir: Some(Arc::new(target)),
                identity: Some(identity),
            }],
        })
    }

    /// The target folder.
    pub(super) fn root(&self) -> Result<Arc<DirFd>> {
        self.levels[0]
            .dir
            .clone()
            .ok_or_else(|| Error::invalid("restore: the target is not open"))
    }

    /// The index of the deepest level.
    pub(super) fn top(&self) -> usize {
        self.levels.len() - 1
    }

    /// Enters the folder `name` of the deepest level, already opened.
    pub(super) fn push_open(&mut self, name: &[u8], dir: DirFd) -> Result<Arc<DirFd>> {
        let identity = dir.identity()?;
        let dir = Arc::new(dir);
        self.levels.push(Level {
            name: name.to_vec(),
            dir: Some(dir.clone()),
            identity: Some(identity),
        });
        self.trim();
        Ok(dir)
    }

    /// Enters the folder `name` of the deepest level without opening or creating it.
    pub(super) fn push_unopened(&mut self, name: &[u8]) {
        self.levels.push(Level {
            name: name.to_vec(),
            dir: None,
            identity: None,
        });
    }

    /// Lets go of descriptors above the window.
    fn trim(&mut self) {
        let top = self.top();
        if top > WINDOW {
            self.levels[top - WINDOW].dir = None;
        }
    }

    /// The descriptor of the deepest level, opening (or creating) the levels down to it
    /// from the nearest one that is open. A level opened before must be the same folder.
    pub(super) fn dir(&mut self) -> Result<Arc<DirFd>> {
        let top = self.top();
        if let Some(d) = &self.levels[top].dir {
            return Ok(d.clone());
        }
        let mut open = top;
        while self.levels[open].dir.is_none() {
            open -= 1;
        }
        for k in open + 1..=top {
            let parent = self.levels[k - 1]
                .dir
                .clone()
                .ok_or_else(|| Error::invalid("restore: a parent folder is not open"))?;
            let name = self.levels[k].name.clone();
            let d = match self.levels[k].identity {
                Some(identity) => {
                    let d = open_dir(&parent, &name)?;
                    check_identity(&d, identity)?;
                    d
                }
                None => {
                    let d = ensure_dir(&parent, &name)?.0;
                    self.levels[k].identity = Some(d.identity()?);
                    d
                }
            };
            self.levels[k].dir = Some(Arc::new(d));
            if k > WINDOW {
                self.levels[k - WINDOW].dir = None;
            }
        }
        self.levels[top]
            .dir
            .clone()
            .ok_or_else(|| Error::invalid("restore: a folder is not open"))
    }

    /// Leaves the deepest level. When its parent's descriptor was let go, the parent is
    /// reopened through `..` of the level left (which is open whenever it exists) and
    /// checked to be the folder it was.
    pub(super) fn pop(&mut self) -> Result<()> {
        let Some(left) = self.levels.pop() else {
            return Ok(());
        };
        let Some(parent) = self.levels.last_mut() else {
            return Ok(());
        };
        if parent.dir.is_some() {
            return Ok(());
        }
        let (Some(child), Some(identity)) = (left.dir, parent.identity) else {
            return Ok(());
        };
        let path = child
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let fd = openat(child.file.as_fd(), "..", DIR_FLAGS, Mode::empty())
            .map_err(|e| errno(&path, e))?;
        let d = DirFd {
            file: File::from(fd),
            path,
        };
        check_identity(&d, identity)?;
        parent.dir = Some(Arc::new(d));
        Ok(())
    }
}

fn check_identity(d: &DirFd, identity: (u64, u64)) -> Result<()> {
    if d.identity()? != identity {
        return Err(Error::new(
            crate::error::ErrorKind::Conflict,
            format!(
                "{}: the folder was replaced while it was being restored",
                d.path.display()
            ),
        ));
    }
    Ok(())
}
