//! Restoring entries: deciding what each one takes, queueing it in a batch, and carrying a
//! batch out. Every call names an entry by its folder's descriptor and its name.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::Arc;

use nix::fcntl::{readlinkat, renameat, AtFlags};
use nix::sys::stat::{
    fchmodat, fstatat, mknodat, utimensat, FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::unistd::{fchownat, linkat, mkfifoat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::dirs::{errno, open_dir, open_regular, DirFd};
use super::fetch::{write_content, write_files, FileJob};
use super::write::content_matches;
use super::{io_err, owner_ids, timespec, tmp_name, warn_xattr, Limits, Overwrite, Restorer};
use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeKind};

/// How one entry of a folder is restored.
pub(super) enum Action {
    /// Sequentially, through `restore_entry` (special files and hard links).
    Entry {
        dir: Arc<DirFd>,
        name: Vec<u8>,
        node: Node,
    },
    /// A file already present with the snapshot's content: only its metadata is applied.
    Unchanged {
        dir: Arc<DirFd>,
        name: Vec<u8>,
        node: Node,
    },
    /// A new file whose content and metadata are written in parallel to `tmp`, renamed to
    /// `name` when finished, or straight to `name` when nothing is there to replace (`tmp`
    /// is `None`; the file is created exclusively, so nothing can be clobbered).
    Write {
        dir: Arc<DirFd>,
        name: Vec<u8>,
        tmp: Option<Vec<u8>>,
        node: Node,
    },
}

impl Action {
    fn dir(&self) -> &Arc<DirFd> {
        match self {
            Action::Entry { dir, .. }
            | Action::Unchanged { dir, .. }
            | Action::Write { dir, .. } => dir,
        }
    }
}

/// Restore work collected across folders and carried out together by [`Restorer::flush`].
/// Writing the files of many folders in one parallel phase keeps the cores busy, where a
/// phase per folder waits at the end of every folder. Nothing of a batch is on disk before
/// it is flushed, so dropping one (after an error) leaves nothing behind.
#[derive(Default)]
pub(super) struct Batch {
    /// Entries in restore order: contents are written in one parallel phase, then each
    /// entry is finished in this order (renames, hard links, special files).
    actions: Vec<Action>,
    /// Folders whose entries are all in this or an earlier batch, children before parents:
    /// their metadata is applied after the entries, since writing into a folder changes its
    /// times.
    dirs: Vec<(Arc<DirFd>, Node)>,
    /// File content the actions will write.
    bytes: u64,
    /// The folder descriptors the batch holds (by address: the batch keeps each alive).
    held: HashSet<usize>,
}

/// A batch is flushed once it holds this many entries or folders ...
const BATCH_ENTRIES: usize = 2048;
/// ... or this much file content (or refers to `Limits::batch_dirs` folders).
const BATCH_BYTES: u64 = 128 << 20;

impl Batch {
    pub(super) fn is_full(&self, limits: &Limits) -> bool {
        self.actions.len() >= BATCH_ENTRIES
            || self.dirs.len() >= BATCH_ENTRIES
            || self.bytes >= BATCH_BYTES
            || self.held.len() >= limits.batch_dirs
    }

    fn hold(&mut self, dir: &Arc<DirFd>) {
        self.held.insert(Arc::as_ptr(dir) as usize);
    }

    pub(super) fn push(&mut self, action: Action) {
        self.hold(action.dir());
        if let Action::Write { node, .. } = &action {
            self.bytes += node.size;
        }
        self.actions.push(action);
    }

    pub(super) fn push_dir(&mut self, dir: Arc<DirFd>, node: Node) {
        self.hold(&dir);
        self.dirs.push((dir, node));
    }

    /// Removes the temporary files of writes that were not renamed into place.
    fn remove_temporaries(actions: &[Action]) {
        for a in actions {
            if let Action::Write {
                dir,
                tmp: Some(tmp),
                ..
            } = a
            {
                let _ = unlinkat(
                    dir.file.as_fd(),
                    OsStr::from_bytes(tmp),
                    UnlinkatFlags::NoRemoveDir,
                );
            }
        }
    }
}

/// The entry `name` of `dir`, not following a symlink; `None` when there is none.
pub(super) fn stat(dir: &DirFd, name: &[u8]) -> Result<Option<FileStat>> {
    match fstatat(
        dir.file.as_fd(),
        OsStr::from_bytes(name),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Ok(Some(st)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(errno(&dir.child(name), e)),
    }
}

pub(super) fn kind_of(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// Applies owner (as root), mode, extended attributes and times through an open
/// descriptor, in that order (changing the owner clears set-id bits; the times come last
/// because every other change touches them). `shown` names the entry in messages.
pub(super) fn apply_fd(f: &File, shown: &Path, node: &Node, is_root: bool) -> Result<()> {
    let err = |e: std::io::Error| io_err(shown, e);
    if is_root {
        let (uid, gid) = owner_ids(node);
        std::os::unix::fs::fchown(f, Some(uid), Some(gid)).map_err(err)?;
    }
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(node.mode))
        .map_err(err)?;
    for x in &node.xattrs {
        if let Err(e) = xattr::FileExt::set_xattr(f, OsStr::from_bytes(&x.name), &x.value) {
            warn_xattr(shown, &x.name, &e);
        }
    }
    nix::sys::stat::futimens(
        f,
        &timespec(node.atime.unwrap_or(node.mtime)),
        &timespec(node.mtime),
    )
    .map_err(|e| err(e.into()))
}

impl Restorer<'_> {
    /// Whether the existing entry `name` of `dir` already equals `node`.
    /// Whether an existing entry was made by the interrupted run this restore finishes: its
    /// ctime is not older than that run's start (see `resume`).
    pub(super) fn made_by_interrupted_run(&self, st: &FileStat) -> bool {
        self.resuming
            .is_some_and(|since| (st.st_ctime, st.st_ctime_nsec) >= since)
    }

    pub(super) fn matches_existing(
        &self,
        dir: &DirFd,
        name: &[u8],
        node: &Node,
        st: &FileStat,
    ) -> Result<bool> {
        let kind = kind_of(st);
        Ok(match node.kind {
            NodeKind::Dir => kind == SFlag::S_IFDIR,
            NodeKind::Symlink => {
                kind == SFlag::S_IFLNK
                    && readlinkat(dir.file.as_fd(), OsStr::from_bytes(name))
                        .map(|t| Some(t.as_bytes()) == node.link_target.as_deref())
                        .unwrap_or(false)
            }
            NodeKind::File => {
                kind == SFlag::S_IFREG
                    && st.st_size as u64 == node.size
                    // With `--verify` every file is read: a kept file is then checked too.
                    && (!self.opts.verify
                        && self.made_by_interrupted_run(st)
                        && completed_by_restore(st, node)
                        || match open_regular(dir, name)? {
                            Some(f) => content_matches(self.repo, f, &dir.child(name), node)?,
                            None => false,
                        })
            }
            NodeKind::Fifo => kind == SFlag::S_IFIFO,
            NodeKind::Chardev => kind == SFlag::S_IFCHR && st.st_rdev == node.rdev,
            NodeKind::Blockdev => kind == SFlag::S_IFBLK && st.st_rdev == node.rdev,
            NodeKind::Socket => kind == SFlag::S_IFSOCK,
        })
    }

    /// Carries out the batch: writes the new files' contents in parallel, finishes every
    /// entry in order, then applies the folders' metadata. On an error, files under
    /// temporary names are removed (failed files already removed themselves).
    pub(super) fn flush(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        let jobs: Vec<FileJob<'_>> = batch
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Write {
                    dir,
                    name,
                    tmp,
                    node,
                } => Some(FileJob {
                    dir,
                    name: tmp.as_deref().unwrap_or(name),
                    shown: name,
                    node,
                }),
                _ => None,
            })
            .collect();
        let written = write_files(
            self.repo,
            &self.buffers,
            &jobs,
            self.limits.group_files,
            self.is_root,
            self.progress,
        );
        drop(jobs);
        if let Some(e) = written.iter().find_map(|r| r.as_ref().err()) {
            let e = Error::new(e.kind(), e.to_string());
            Batch::remove_temporaries(&batch.actions);
            return Err(e);
        }
        self.summary.bytes_written += written
            .iter()
            .map(|r| r.as_ref().map(|n| *n).unwrap_or(0))
            .sum::<u64>();
        for (k, action) in batch.actions.iter().enumerate() {
            if let Err(e) = self.finish_action(action) {
                Batch::remove_temporaries(&batch.actions[k..]);
                return Err(e);
            }
        }
        for (dir, node) in &batch.dirs {
            apply_fd(&dir.file, &dir.path, node, self.is_root)?;
        }
        Ok(())
    }

    /// Removes the entries of a restored folder that are not in the snapshot.
    pub(super) fn delete_extra(&mut self, dir: &DirFd, nodes: &[Node]) -> Result<()> {
        let keep: HashSet<&[u8]> = nodes.iter().map(|n| n.name.as_slice()).collect();
        // The folder is listed, and a subfolder removed, through the descriptor's own path.
        let own = Path::new("/proc/self/fd").join(dir.file.as_raw_fd().to_string());
        let rd = std::fs::read_dir(&own).map_err(|e| io_err(&dir.path, e))?;
        // The in-progress marker at the top stays until the restore is done.
        let at_top = dir.path == self.target;
        for entry in rd {
            let entry = entry.map_err(|e| io_err(&dir.path, e))?;
            let name = entry.file_name();
            if keep.contains(name.as_bytes()) || at_top && name == super::MARKER {
                continue;
            }
            let shown = dir.child(name.as_bytes());
            let is_dir =
                stat(dir, name.as_bytes())?.is_some_and(|st| kind_of(&st) == SFlag::S_IFDIR);
            if is_dir {
                std::fs::remove_dir_all(own.join(&name)).map_err(|e| io_err(&shown, e))?;
            } else {
                unlinkat(
                    dir.file.as_fd(),
                    name.as_os_str(),
                    UnlinkatFlags::NoRemoveDir,
                )
                .map_err(|e| errno(&shown, e))?;
            }
            self.summary.deleted += 1;
        }
        Ok(())
    }

    /// What restoring one non-directory entry takes. Identical existing entries are settled
    /// here; files that replace something get a temporary name. In a `fresh` folder (one
    /// this restore created) nothing can exist yet, so nothing is looked up.
    pub(super) fn decide(
        &mut self,
        dir: Arc<DirFd>,
        name: &[u8],
        node: &Node,
        fresh: bool,
    ) -> Result<Action> {
        let name = name.to_vec();
        if node.kind != NodeKind::File {
            return Ok(Action::Entry {
                dir,
                name,
                node: node.clone(),
            });
        }
        let existing = if fresh { None } else { stat(&dir, &name)? };
        if let Some(st) = &existing {
            if self.opts.overwrite != Overwrite::Always
                && self.matches_existing(&dir, &name, node, st)?
            {
                // Known as the group's first path now, so that its other paths decided
                // before this batch is finished become links to it, not copies.
                self.remember_link(&dir, &name, node);
                return Ok(Action::Unchanged {
                    dir,
                    name,
                    node: node.clone(),
                });
            }
        }
        if node.links > 1 && self.links.contains_key(&(node.device, node.inode)) {
            return Ok(Action::Entry {
                dir,
                name,
                node: node.clone(),
            });
        }
        let tmp = match existing {
            None => None,
            Some(_) => Some(tmp_name()?),
        };
        self.remember_link(&dir, &name, node);
        Ok(Action::Write {
            dir,
            name,
            tmp,
            node: node.clone(),
        })
    }

    fn finish_action(&mut self, action: &Action) -> Result<()> {
        match action {
            Action::Entry { dir, name, node } => self.restore_entry(dir, name, node),
            Action::Unchanged { dir, name, node } => {
                self.summary.files_unchanged += 1;
                self.remember_link(dir, name, node);
                self.apply_metadata(dir, name, name, node)
            }
            Action::Write {
                dir,
                name,
                tmp,
                node,
            } => {
                if let Some(tmp) = tmp {
                    let (from, to) = (OsStr::from_bytes(tmp), OsStr::from_bytes(name));
                    renameat(dir.file.as_fd(), from, dir.file.as_fd(), to)
                        .map_err(|e| errno(&dir.child(name), e))?;
                }
                self.summary.files += 1;
                self.verify_file(dir, name, node)
            }
        }
    }

    fn restore_entry(&mut self, dir: &DirFd, name: &[u8], node: &Node) -> Result<()> {
        let existing = stat(dir, name)?;
        if let Some(st) = &existing {
            if self.opts.overwrite != Overwrite::Always
                && self.matches_existing(dir, name, node, st)?
            {
                if node.kind == NodeKind::File {
                    self.summary.files_unchanged += 1;
                    self.remember_link(dir, name, node);
                }
                return self.apply_metadata(dir, name, name, node);
            }
        }
        let os = OsStr::from_bytes(name);
        // Hard links: a second path to an inode already restored becomes a link.
        if node.kind == NodeKind::File && node.links > 1 {
            if let Some(first) = self.links.get(&(node.device, node.inode)).cloned() {
                if existing.is_some() {
                    unlinkat(dir.file.as_fd(), os, UnlinkatFlags::NoRemoveDir)
                        .map_err(|e| errno(&dir.child(name), e))?;
                }
                let (first_dir, first_name) = self.resolve(&first)?;
                linkat(
                    first_dir.file.as_fd(),
                    first_name.as_os_str(),
                    dir.file.as_fd(),
                    os,
                    AtFlags::empty(),
                )
                .map_err(|e| errno(&dir.child(name), e))?;
                self.summary.hardlinks += 1;
                return Ok(());
            }
        }
        let tmp = tmp_name()?;
        let result = self.create_at(dir, &tmp, name, node).and_then(|()| {
            // A regular file got its metadata through its descriptor in `create_at`.
            if node.kind != NodeKind::File {
                self.apply_metadata(dir, &tmp, name, node)?;
            }
            renameat(
                dir.file.as_fd(),
                OsStr::from_bytes(&tmp),
                dir.file.as_fd(),
                os,
            )
            .map_err(|e| errno(&dir.child(name), e))
        });
        if let Err(e) = result {
            let _ = unlinkat(
                dir.file.as_fd(),
                OsStr::from_bytes(&tmp),
                UnlinkatFlags::NoRemoveDir,
            );
            return Err(e);
        }
        match node.kind {
            NodeKind::File => {
                self.summary.files += 1;
                self.remember_link(dir, name, node);
                self.verify_file(dir, name, node)?;
            }
            _ => self.summary.others += 1,
        }
        Ok(())
    }

    /// The folder and name of a path relative to the target, opened step by step from the
    /// target, never through a symlink.
    fn resolve(&self, rel: &Path) -> Result<(Arc<DirFd>, std::ffi::OsString)> {
        let mut parts: Vec<&OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p),
                _ => None,
            })
            .collect();
        let name = parts
            .pop()
            .ok_or_else(|| Error::invalid("restore: a hard link without a name"))?
            .to_os_string();
        let mut dir = self.root.clone();
        for p in parts {
            dir = Arc::new(open_dir(&dir, p.as_bytes())?);
        }
        Ok((dir, name))
    }

    /// With `--verify`, reads a restored file back and compares it with the snapshot.
    fn verify_file(&mut self, dir: &DirFd, name: &[u8], node: &Node) -> Result<()> {
        if self.opts.verify {
            let shown = dir.child(name);
            let same = match open_regular(dir, name)? {
                Some(f) => content_matches(self.repo, f, &shown, node)?,
                None => false,
            };
            if !same {
                return Err(Error::corrupt(format!(
                    "verification failed: {} does not match the snapshot",
                    shown.display()
                )));
            }
            self.summary.verified += 1;
        }
        Ok(())
    }

    fn remember_link(&mut self, dir: &DirFd, name: &[u8], node: &Node) {
        if node.links > 1 {
            let shown = dir.child(name);
            let rel = shown
                .strip_prefix(&self.target)
                .map(Path::to_path_buf)
                .unwrap_or(shown);
            self.links.entry((node.device, node.inode)).or_insert(rel);
        }
    }

    /// Creates a non-directory entry as `name` in `dir`; `shown` is its own name.
    fn create_at(&mut self, dir: &DirFd, name: &[u8], shown: &[u8], node: &Node) -> Result<()> {
        let os = OsStr::from_bytes(name);
        let err = |e: nix::errno::Errno| errno(&dir.child(shown), e);
        match node.kind {
            NodeKind::File => {
                let job = FileJob {
                    dir,
                    name,
                    shown,
                    node,
                };
                self.summary.bytes_written +=
                    write_content(self.repo, &self.buffers, &job, self.progress)?
                        .finish(node, self.is_root)?;
                Ok(())
            }
            NodeKind::Symlink => {
                let t = node.link_target.as_deref().ok_or_else(|| {
                    Error::corrupt(format!("symlink {:?} has no target", node.name_lossy()))
                })?;
                symlinkat(OsStr::from_bytes(t), dir.file.as_fd(), os).map_err(err)
            }
            NodeKind::Fifo => {
                mkfifoat(dir.file.as_fd(), os, Mode::from_bits_truncate(node.mode)).map_err(err)
            }
            NodeKind::Chardev | NodeKind::Blockdev | NodeKind::Socket => {
                let kind = match node.kind {
                    NodeKind::Chardev => SFlag::S_IFCHR,
                    NodeKind::Blockdev => SFlag::S_IFBLK,
                    _ => SFlag::S_IFSOCK,
                };
                mknodat(
                    dir.file.as_fd(),
                    os,
                    kind,
                    Mode::from_bits_truncate(node.mode),
                    node.rdev as nix::libc::dev_t,
                )
                .map_err(err)
            }
            NodeKind::Dir => Err(Error::invalid("directories are not created here")),
        }
    }

    /// Applies a non-directory entry's metadata, never through a symlink: a regular file
    /// through a descriptor, other entries with the `*at` calls that do not follow one.
    /// `shown` is the entry's own name (`name` may be a temporary one).
    fn apply_metadata(&self, dir: &DirFd, name: &[u8], shown: &[u8], node: &Node) -> Result<()> {
        let shown = dir.child(shown);
        if node.kind == NodeKind::File {
            let f = open_regular(dir, name)?.ok_or_else(|| {
                Error::new(
                    crate::error::ErrorKind::Conflict,
                    format!("{}: is no longer a regular file", shown.display()),
                )
            })?;
            return apply_fd(&f, &shown, node, self.is_root);
        }
        let os = OsStr::from_bytes(name);
        let err = |e: nix::errno::Errno| errno(&shown, e);
        // Ownership: by name when the name exists here, else by number. Only root can give
        // files away; others keep their own ownership silently, as tar does.
        if self.is_root {
            let (uid, gid) = owner_ids(node);
            fchownat(
                dir.file.as_fd(),
                os,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(err)?;
        }
        if node.kind != NodeKind::Symlink {
            fchmodat(
                dir.file.as_fd(),
                os,
                Mode::from_bits_truncate(node.mode),
                FchmodatFlags::NoFollowSymlink,
            )
            .map_err(err)?;
        }
        if !node.xattrs.is_empty() {
            // `xattr::set` does not follow a symlink in the last component; the folder is
            // reached through its descriptor.
            let at = Path::new("/proc/self/fd")
                .join(dir.file.as_raw_fd().to_string())
                .join(os);
            for x in &node.xattrs {
                if let Err(e) = xattr::set(&at, OsStr::from_bytes(&x.name), &x.value) {
                    warn_xattr(&shown, &x.name, &e);
                }
            }
        }
        utimensat(
            dir.file.as_fd(),
            os,
            &timespec(node.atime.unwrap_or(node.mtime)),
            &timespec(node.mtime),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(err)
    }
}

/// Whether a file of the snapshot's size was completed by an interrupted restore: its times
/// are the snapshot's to the nanosecond, and a restore applies them after everything else
/// (see `resume`).
fn completed_by_restore(st: &FileStat, node: &Node) -> bool {
    let mtime = node.mtime;
    st.st_mtime == mtime.0 && st.st_mtime_nsec == i64::from(mtime.1)
}
