//! The tree walk of a backup.
//!
//! Folders are walked depth-first in name order with an explicit stack of folder states (its
//! node, its descriptor, the names still to save, the tree built so far, its small files
//! queued for reading), never by recursion: a tree's depth costs one listing per level of
//! memory and no stack. A folder's tree is saved when all its entries are, so trees are
//! written bottom-up as before.
//!
//! Every entry is reached relative to a descriptor of its folder (`fstatat`, `openat`,
//! `readlinkat`, extended attributes through `/proc/self/fd`), never through a symlink:
//! depth is not limited by `PATH_MAX`, and a folder swapped for a symlink while the backup
//! runs is not followed. Absolute paths are still built, as bytes, for excludes, the files
//! cache and messages. Only the folders above a backed-up path are opened following
//! symlinks, as the path given names them.
//!
//! Descriptors are held for the walk's root and the [`HELD`] innermost folders. Returning to
//! a folder whose descriptor was let go reopens it as `..` of the folder just finished (one
//! `openat`, however deep), or failing that by name from the nearest folder still open; it is
//! used only if it is the same folder (device and inode) as when the walk entered it.
//! Otherwise it was moved meanwhile, and what was not yet saved of it is left out with a
//! warning.

use std::collections::{btree_map, BTreeMap};
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::files::{FileJob, JOB_BYTES, JOB_FILES};
use super::{Archiver, SMALL_FILE};
use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeKind, Tree};
use crate::id::Id;
use crate::walk::{folder_left_out, node_from_stat, read_link_at, read_xattrs, DirHandle, Stat};

/// How many of the innermost folders keep their descriptors open (besides the walk's
/// root). Folders nested deeper than this cost an `openat` of `..` and an `fstat` each on
/// the way back up; the bound keeps a backup within `ulimit -n` however deep the tree.
const HELD: usize = 64;

/// Path components of the roots to back up. Its depth is bounded by the length of a path
/// (each root was found with `lstat`, so it is shorter than `PATH_MAX`).
#[derive(Default, Debug)]
pub(super) struct Trie {
    pub(super) whole: bool,
    pub(super) children: BTreeMap<Vec<u8>, Trie>,
}

impl Trie {
    /// Adds an absolute path. A root saved whole covers everything below it.
    pub(super) fn insert(&mut self, abs: &Path) {
        let mut node = self;
        for c in abs.components().skip(1) {
            if node.whole {
                return;
            }
            node = node
                .children
                .entry(c.as_os_str().as_bytes().to_vec())
                .or_default();
        }
        node.whole = true;
        node.children.clear();
    }
}

/// Where a folder's entries come from.
pub(super) enum Entries<'t> {
    /// A folder read from disk: its names still to save, in byte order.
    Listed(std::vec::IntoIter<CString>),
    /// A folder above the backed-up paths: only the trie's children are saved.
    Roots(btree_map::Iter<'t, Vec<u8>, Trie>),
    /// Nothing more is saved of it.
    Done,
}

pub(super) enum Next<'t> {
    Entry(CString),
    /// A folder above backed-up paths, not saved whole.
    Between(CString, &'t Trie),
}

impl<'t> Entries<'t> {
    pub(super) fn next(&mut self) -> Option<std::result::Result<Next<'t>, Vec<u8>>> {
        match self {
            Entries::Listed(names) => names.next().map(|n| Ok(Next::Entry(n))),
            Entries::Roots(children) => children.next().map(|(name, child)| {
                let c = CString::new(name.clone()).map_err(|_| name.clone())?;
                Ok(if child.whole {
                    Next::Entry(c)
                } else {
                    Next::Between(c, child)
                })
            }),
            Entries::Done => None,
        }
    }
}

/// A folder being saved.
pub(super) struct Frame<'t> {
    /// Its node, which gets its subtree when all entries are saved; `None` for the root of
    /// the walk, whose tree is the snapshot's.
    node: Option<Node>,
    /// Its descriptor, while it is among the innermost folders.
    pub(super) dir: Option<DirHandle>,
    /// What `fstatat` said when the walk entered it: a reopened descriptor must match.
    pub(super) stat: Stat,
    /// It is above the backed-up paths and was opened following symlinks.
    pub(super) followed: bool,
    /// Its path is `Walk::path[..path_len]`.
    pub(super) path_len: usize,
    /// The device of the backed-up root it is in (`--one-file-system`); `None` above the
    /// roots.
    pub(super) root_dev: Option<u64>,
    pub(super) entries: Entries<'t>,
    tree: Tree,
    /// The parent snapshot's entries of this folder, sorted by name (empty when it had no
    /// such folder): files the files cache does not know are looked up here.
    previous: Vec<Node>,
    /// Small files queued for reading in parallel, and their bytes.
    jobs: Vec<FileJob>,
    job_bytes: u64,
}

impl<'t> Frame<'t> {
    pub(super) fn new(
        node: Option<Node>,
        dir: DirHandle,
        stat: Stat,
        path_len: usize,
    ) -> Frame<'t> {
        Frame {
            node,
            dir: Some(dir),
            stat,
            followed: false,
            path_len,
            root_dev: None,
            entries: Entries::Done,
            tree: Tree::default(),
            previous: Vec::new(),
            jobs: Vec::new(),
            job_bytes: 0,
        }
    }
}

/// The parent snapshot's entry `name` of a folder, if it was a file.
fn previous_entry<'n>(previous: &'n [Node], name: &[u8]) -> Option<&'n Node> {
    let i = previous
        .binary_search_by(|n| n.name.as_slice().cmp(name))
        .ok()?;
    previous.get(i).filter(|n| n.kind == NodeKind::File)
}

/// The tree of the parent snapshot's folder `name`, if it had one.
fn previous_folder(previous: &[Node], name: &[u8]) -> Option<Id> {
    let i = previous
        .binary_search_by(|n| n.name.as_slice().cmp(name))
        .ok()?;
    previous
        .get(i)
        .filter(|n| n.kind == NodeKind::Dir)
        .and_then(|n| n.subtree)
}

pub(super) fn as_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// Sets `path` to the entry `name` of the folder whose path is `path[..len]`.
pub(super) fn set_entry_path(path: &mut Vec<u8>, len: usize, name: &[u8]) {
    path.truncate(len);
    if path.last() != Some(&b'/') {
        path.push(b'/');
    }
    path.extend_from_slice(name);
}

/// The folder descriptor of the innermost frame, which always has one while it has entries
/// to save.
pub(super) fn held(dir: &Option<DirHandle>) -> Result<&DirHandle> {
    dir.as_ref()
        .ok_or_else(|| Error::invalid("internal: the folder being saved has no descriptor"))
}

fn fd_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(format!("{}", path.display()), e)
}

impl Archiver<'_> {
    /// The entries of a folder of the parent snapshot. The parent only saves reading: a
    /// tree that cannot be read is passed over (the files are read), and the backup goes on.
    fn previous_nodes(&self, tree: Option<Id>) -> Vec<Node> {
        let Some(tree) = tree else {
            return Vec::new();
        };
        match self.repo.load_tree(&tree) {
            Ok(t) => t.nodes,
            Err(e) => {
                tracing::info!(
                    "parent snapshot's tree {tree} cannot be read ({e}); its files are read"
                );
                Vec::new()
            }
        }
    }

    /// Saves the roots described by `trie` (all of `/` when it is whole) and returns the
    /// root tree, unsaved.
    pub(super) fn walk_roots(&mut self, trie: &Trie) -> Result<Tree> {
        let slash = Path::new("/");
        let mut root = if trie.whole {
            DirHandle::list(slash)
        } else {
            DirHandle::pass(slash)
        }
        .map_err(fd_error(slash))?;
        let st = Stat::of(root.fd().map_err(fd_error(slash))?).map_err(fd_error(slash))?;
        let entries = if trie.whole {
            let (names, error) = root.names();
            if let Some(e) = error {
                self.warn(format!("/: {e}"));
            }
            Entries::Listed(names.into_iter())
        } else {
            Entries::Roots(trie.children.iter())
        };
        let mut frame = Frame::new(None, root, st, 1);
        frame.previous = self.previous_nodes(self.previous);
        frame.entries = entries;
        frame.followed = !trie.whole;
        frame.root_dev = trie.whole.then_some(st.dev);
        let mut stack = vec![frame];
        let mut path = b"/".to_vec();
        loop {
            let Some(top) = stack.last_mut() else {
                return Err(Error::invalid("internal: the walk lost its root"));
            };
            match top.entries.next() {
                Some(Ok(Next::Entry(name))) => {
                    set_entry_path(&mut path, top.path_len, name.to_bytes());
                    self.save_entry(&mut stack, &path, name)?;
                }
                Some(Ok(Next::Between(name, child))) => {
                    set_entry_path(&mut path, top.path_len, name.to_bytes());
                    self.enter_between(&mut stack, &path, name, child)?;
                }
                Some(Err(name)) => {
                    set_entry_path(&mut path, top.path_len, &name);
                    self.warn(format!(
                        "{}: not a valid file name",
                        as_path(&path).display()
                    ));
                }
                None => {
                    if let Some(tree) = self.leave(&mut stack, &path)? {
                        return Ok(tree);
                    }
                }
            }
        }
    }

    /// Saves the entry `name` of the innermost folder; its path is `path`. A folder is
    /// entered (pushed on `stack`); everything else is saved at once or queued.
    fn save_entry(&mut self, stack: &mut Vec<Frame<'_>>, path: &[u8], name: CString) -> Result<()> {
        let path = as_path(path);
        if self.opts.excludes.excluded(path) {
            return Ok(());
        }
        let Some(top) = stack.last_mut() else {
            return Ok(());
        };
        let dir = held(&top.dir)?.fd().map_err(fd_error(path))?;
        let st = match Stat::at(dir, &name) {
            Ok(st) => st,
            Err(e) => {
                self.warn(format!("{}: {e}", path.display()));
                return Ok(());
            }
        };
        let kind = st.kind();
        if kind == NodeKind::File && self.opts.excludes.larger_than.is_some_and(|l| st.size > l) {
            return Ok(());
        }
        let xattrs = read_xattrs(kind, dir, &name, path);
        let mut node = node_from_stat(name.to_bytes(), &st, xattrs);
        match kind {
            NodeKind::File => {
                self.summary.files += 1;
                let previous = previous_entry(&top.previous, name.to_bytes());
                match self.begin_file(path, node, &st, previous)? {
                    Ok(unchanged) => top.tree.nodes.push(unchanged),
                    Err((node, start)) if st.size < SMALL_FILE => {
                        top.job_bytes += st.size;
                        top.jobs.push(FileJob {
                            name,
                            node,
                            stat: st,
                            start,
                        });
                        if top.jobs.len() >= JOB_FILES || top.job_bytes >= JOB_BYTES {
                            let folder = path.parent().unwrap_or(path);
                            self.run_jobs(Some(dir), folder, &mut top.jobs, &mut top.tree)?;
                            top.job_bytes = 0;
                        }
                    }
                    Err((node, start)) => {
                        if let Some(n) = self.read_file(dir, &name, node, &st, start)? {
                            top.tree.nodes.push(n);
                        }
                    }
                }
            }
            NodeKind::Symlink => match read_link_at(dir, &name) {
                Ok(target) => {
                    self.summary.others += 1;
                    node.link_target = Some(target);
                    top.tree.nodes.push(node);
                }
                Err(e) => self.warn(format!("{}: {e}", path.display())),
            },
            NodeKind::Dir => {
                let opened = match DirHandle::list_at(dir, &name) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        self.warn(format!("{}: {e}", path.display()));
                        None
                    }
                };
                if let Some(d) = &opened {
                    if folder_left_out(&self.opts.excludes, d.fd().map_err(fd_error(path))?) {
                        return Ok(());
                    }
                }
                self.summary.dirs += 1;
                let root_dev = top.root_dev.unwrap_or(st.dev);
                let descend = !self.opts.one_file_system || st.dev == root_dev;
                match opened {
                    Some(mut d) if descend => {
                        let (names, error) = d.names();
                        if let Some(e) = error {
                            self.warn(format!("{}: {e}", path.display()));
                        }
                        let path_len = path.as_os_str().len();
                        let previous = previous_folder(&top.previous, name.to_bytes());
                        let mut frame = Frame::new(Some(node), d, st, path_len);
                        frame.previous = self.previous_nodes(previous);
                        frame.entries = Entries::Listed(names.into_iter());
                        frame.root_dev = Some(root_dev);
                        push(stack, frame);
                    }
                    _ => {
                        node.subtree = Some(self.save_tree(Tree::default())?);
                        top.tree.nodes.push(node);
                    }
                }
            }
            _ => {
                self.summary.others += 1;
                top.tree.nodes.push(node);
            }
        }
        Ok(())
    }

    /// Enters a folder above backed-up paths: only the paths below it are saved, and it is
    /// recorded as the folder its name leads to (symlinks followed, as the given path names
    /// it).
    fn enter_between<'t>(
        &mut self,
        stack: &mut Vec<Frame<'t>>,
        path: &[u8],
        name: CString,
        child: &'t Trie,
    ) -> Result<()> {
        let path = as_path(path);
        let Some(top) = stack.last() else {
            return Ok(());
        };
        let dir = held(&top.dir)?.fd().map_err(fd_error(path))?;
        let opened = DirHandle::pass_at(dir, &name, true).and_then(|d| Ok((Stat::of(d.fd()?)?, d)));
        let (st, d) = match opened {
            Ok(o) => o,
            Err(e) => {
                self.warn(format!("{}: {e}", path.display()));
                return Ok(());
            }
        };
        // `.` of the folder's own descriptor: its attributes, not those of a symlink to it.
        let xattrs = read_xattrs(NodeKind::Dir, d.fd().map_err(fd_error(path))?, c".", path);
        let node = node_from_stat(name.to_bytes(), &st, xattrs);
        let previous = previous_folder(&top.previous, name.to_bytes());
        let mut frame = Frame::new(Some(node), d, st, path.as_os_str().len());
        frame.previous = self.previous_nodes(previous);
        frame.entries = Entries::Roots(child.children.iter());
        frame.followed = true;
        push(stack, frame);
        Ok(())
    }

    /// Finishes the innermost folder: reads its queued files, saves its tree and adds its
    /// node to its parent (reopened if its descriptor was let go). Returns the root tree
    /// when the walk is done.
    fn leave(&mut self, stack: &mut Vec<Frame<'_>>, path: &[u8]) -> Result<Option<Tree>> {
        let Some(mut frame) = stack.pop() else {
            return Err(Error::invalid("internal: the walk lost its root"));
        };
        let folder = as_path(&path[..frame.path_len]);
        if !frame.jobs.is_empty() {
            let dir = match &frame.dir {
                Some(d) => Some(d.fd().map_err(fd_error(folder))?),
                None => None,
            };
            self.run_jobs(dir, folder, &mut frame.jobs, &mut frame.tree)?;
        }
        let Some(mut node) = frame.node else {
            return Ok(Some(frame.tree));
        };
        if stack.last().is_some_and(|p| p.dir.is_none()) {
            self.reopen_parent(stack, path, frame.dir.as_ref());
        }
        node.subtree = Some(self.save_tree(frame.tree)?);
        if let Some(parent) = stack.last_mut() {
            parent.tree.nodes.push(node);
        }
        Ok(None)
    }

    /// Gives the innermost folder of `stack` its descriptor back, from `child` (the folder
    /// just finished, still open) or by name from the nearest folder still open. A folder
    /// that is not the one the walk entered has been moved: what remains of it is left out.
    fn reopen_parent(&mut self, stack: &mut [Frame<'_>], path: &[u8], child: Option<&DirHandle>) {
        if let Some(len) = reopen_parent(stack, path, child) {
            let folder = as_path(&path[..len]);
            self.warn(format!(
                "{}: moved while it was backed up; entries not yet saved are left out",
                folder.display()
            ));
        }
    }
}

/// Gives the innermost folder of `stack` its descriptor back (see
/// [`Archiver::reopen_parent`]). When it was moved, nothing more is saved of it, and the
/// length of its path is returned.
pub(super) fn reopen_parent(
    stack: &mut [Frame<'_>],
    path: &[u8],
    child: Option<&DirHandle>,
) -> Option<usize> {
    let i = stack.len().checked_sub(1)?;
    let want = stack[i].stat;
    let follow = stack[i].followed;
    let same = |d: DirHandle| -> Option<DirHandle> {
        let st = Stat::of(d.fd().ok()?).ok()?;
        st.same_object(&want).then_some(d)
    };
    let up = child
        .and_then(|c| c.fd().ok())
        .and_then(|c| DirHandle::pass_at(c, c"..", follow).ok())
        .and_then(same);
    match up.or_else(|| reopen_by_name(stack, path)) {
        Some(d) => {
            stack[i].dir = Some(d);
            None
        }
        None => {
            stack[i].entries = Entries::Done;
            Some(stack[i].path_len)
        }
    }
}

/// Reopens the innermost folder of `stack` name by name from the nearest folder still open,
/// checking that each is the folder the walk entered.
fn reopen_by_name(stack: &[Frame<'_>], path: &[u8]) -> Option<DirHandle> {
    let i = stack.len().checked_sub(1)?;
    let j = (0..i).rev().find(|&j| stack[j].dir.is_some())?;
    let mut current: Option<DirHandle> = None;
    for k in j + 1..=i {
        let from = match &current {
            Some(d) => d.fd().ok()?,
            None => stack[j].dir.as_ref()?.fd().ok()?,
        };
        let component = path.get(stack[k - 1].path_len..stack[k].path_len)?;
        let name = CString::new(component.strip_prefix(b"/").unwrap_or(component)).ok()?;
        let d = DirHandle::pass_at(from, &name, stack[k].followed).ok()?;
        if !Stat::of(d.fd().ok()?).ok()?.same_object(&stack[k].stat) {
            return None;
        }
        current = Some(d);
    }
    current
}

/// Enters a folder, letting go of the descriptor of the folder that leaves the innermost
/// [`HELD`] (never the root's).
pub(super) fn push<'t>(stack: &mut Vec<Frame<'t>>, frame: Frame<'t>) {
    stack.push(frame);
    if let Some(k) = stack.len().checked_sub(HELD + 1) {
        if k >= 1 {
            stack[k].dir = None;
        }
    }
}
