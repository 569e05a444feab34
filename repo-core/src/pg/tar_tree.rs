//! Turns the tar stream of a base backup into a snapshot tree, content streamed into the
//! repository as it arrives.
//!
//! A tree blob can only be written once its folder is complete, and a tar stream does not
//! say when that is. PostgreSQL sends a folder's entries right after it, folder by folder
//! (depth first), except that `global/pg_control` comes last of all, so that a backup's
//! control file is the newest. The builder therefore keeps the top-level folders open to the
//! end (there are a few dozen, most small) and closes a deeper folder as soon as an entry
//! outside it arrives; an entry whose deeper folder was already closed is an error, never a
//! silently different tree. Memory holds the nodes of the top-level folders and of the
//! folders on the current path, as a file backup does.

use super::page_dictionary::{is_relation, PageSampler, Sampled};
use std::io::Read;

use super::tar_stream::{EntryKind, Header, TarStream};
use crate::archiver::Archiver;
use crate::error::{Error, ErrorKind, Result};
use crate::format::tree::{Node, NodeKind, Time, Tree};
use crate::id::Id;

/// Files whose content is kept while streaming (their size is bounded by `CAPTURE_MAX`).
const CAPTURED: [&[u8]; 2] = [b"backup_label", b"global/pg_control"];
const CAPTURE_MAX: usize = 1 << 20;
/// The manifest's end, where PostgreSQL writes the backup's WAL range.
const MANIFEST: &[u8] = b"backup_manifest";
const MANIFEST_TAIL: usize = 64 * 1024;

/// Small files read on the way, for the base backup's facts.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub(crate) backup_label: Option<Vec<u8>>,
    pub(crate) pg_control: Option<Vec<u8>>,
    pub(crate) manifest_tail: Option<Vec<u8>>,
}

struct Folder {
    path: Vec<Vec<u8>>,
    node: Node,
    children: Vec<Node>,
}

/// Reads the whole tar stream into the archiver; returns the root tree's id and what was
/// captured. Every file's content is cut by `chunker`; relation files' pages are sampled.
pub(crate) fn store_tar<R: Read + Send>(
    a: &mut Archiver<'_>,
    tar: &mut TarStream<R>,
    chunker: &cairn_chunker::Chunker,
    sampler: &mut PageSampler,
) -> Result<(Id, Captured)> {
    let mut captured = Captured::default();
    let mut root: Vec<Node> = Vec::new();
    let mut top: Vec<Folder> = Vec::new();
    let mut stack: Vec<Folder> = Vec::new();
    while let Some(h) = tar.next_header()? {
        // PostgreSQL writes some names as `./pg_wal/...`: a `.` part means nothing.
        let parts: Vec<Vec<u8>> = h
            .path
            .split(|&b| b == b'/')
            .filter(|p| *p != b".")
            .map(<[u8]>::to_vec)
            .collect();
        if parts.iter().any(|p| p.is_empty() || p.as_slice() == b"..") {
            return Err(stream_error(&h, "is not a plain relative path"));
        }
        let Some((name, parent)) = parts.split_last() else {
            return Err(stream_error(&h, "has no name"));
        };
        // Close the deeper folders this entry is not in.
        while let Some(last) = stack.last() {
            if parent.starts_with(&last.path) {
                break;
            }
            if let Some(done) = stack.pop() {
                close(a, done, &mut top, &mut stack)?;
            }
        }
        let mut node = node_of(&h, name);
        if h.kind != EntryKind::File {
            a.count_entry(node.kind);
        }
        match h.kind {
            EntryKind::Dir => {
                let folder = Folder {
                    path: parts.clone(),
                    node,
                    children: Vec::new(),
                };
                if parent.is_empty() {
                    if top.iter().any(|f| f.path == parts) {
                        return Err(stream_error(&h, "is listed twice"));
                    }
                    top.push(folder);
                } else {
                    // Its parent must be open: checked by finding the container.
                    container(&h, parent, &mut root, &mut top, &mut stack)?;
                    stack.push(folder);
                }
                continue;
            }
            EntryKind::Symlink => {}
            EntryKind::File => {
                let capture = capture_kind(&h.path);
                let mut sink = Vec::new();
                let relation = is_relation(&h.path);
                if relation {
                    sampler.start_file();
                }
                let saved = {
                    let mut content = Sampled {
                        inner: Tee {
                            inner: tar.content(h.size),
                            sink: capture.map(|_| &mut sink),
                            tail: capture == Some(Capture::Tail),
                        },
                        sampler: relation.then_some(&mut *sampler),
                    };
                    a.save_reader_cut(chunker, &mut content)
                        .map_err(|e| Error::io("reading pg_basebackup's output", e))??
                };
                if saved.len != h.size {
                    return Err(stream_error(&h, "is shorter than its header says"));
                }
                match capture {
                    Some(Capture::Tail) => captured.manifest_tail = Some(sink),
                    Some(Capture::Whole) if h.path == CAPTURED[0] => {
                        captured.backup_label = Some(sink)
                    }
                    Some(Capture::Whole) => captured.pg_control = Some(sink),
                    None => {}
                }
                node = a.file_with_content(node, saved)?;
            }
        }
        container(&h, parent, &mut root, &mut top, &mut stack)?.push(node);
    }
    while let Some(done) = stack.pop() {
        close(a, done, &mut top, &mut stack)?;
    }
    for folder in std::mem::take(&mut top) {
        let id = a.save_tree(Tree {
            nodes: folder.children,
        })?;
        let mut node = folder.node;
        node.subtree = Some(id);
        root.push(node);
    }
    let id = a.save_tree(Tree { nodes: root })?;
    Ok((id, captured))
}

/// Writes a finished folder's tree and adds its node to its parent, which is open.
fn close(
    a: &mut Archiver<'_>,
    folder: Folder,
    top: &mut [Folder],
    stack: &mut [Folder],
) -> Result<()> {
    let id = a.save_tree(Tree {
        nodes: folder.children,
    })?;
    let mut node = folder.node;
    node.subtree = Some(id);
    let parent = &folder.path[..folder.path.len().saturating_sub(1)];
    let holder = match stack.last_mut() {
        Some(f) if f.path == parent => &mut f.children,
        _ => match top.iter_mut().find(|f| f.path == parent) {
            Some(f) => &mut f.children,
            None => {
                return Err(Error::new(
                    ErrorKind::Command,
                    "pg_basebackup's tar stream: a folder's parent is not open",
                ))
            }
        },
    };
    holder.push(node);
    Ok(())
}

/// The open folder an entry whose parent path is `parent` goes into.
fn container<'f>(
    h: &Header,
    parent: &[Vec<u8>],
    root: &'f mut Vec<Node>,
    top: &'f mut [Folder],
    stack: &'f mut [Folder],
) -> Result<&'f mut Vec<Node>> {
    if parent.is_empty() {
        return Ok(root);
    }
    if let Some(f) = stack.last_mut().filter(|f| f.path == parent) {
        return Ok(&mut f.children);
    }
    if parent.len() == 1 {
        if let Some(f) = top.iter_mut().find(|f| f.path == parent) {
            return Ok(&mut f.children);
        }
    }
    Err(stream_error(
        h,
        "arrives outside its folder (the folder was never listed, or was finished before)",
    ))
}

fn stream_error(h: &Header, what: &str) -> Error {
    Error::new(
        ErrorKind::Command,
        format!(
            "pg_basebackup's tar stream: entry {} {what}",
            String::from_utf8_lossy(&h.path)
        ),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    Whole,
    Tail,
}

fn capture_kind(path: &[u8]) -> Option<Capture> {
    if CAPTURED.contains(&path) {
        Some(Capture::Whole)
    } else if path == MANIFEST {
        Some(Capture::Tail)
    } else {
        None
    }
}

/// Passes content through, keeping a copy: the first `CAPTURE_MAX` bytes, or with `tail`
/// the last `MANIFEST_TAIL` bytes.
struct Tee<'s, R> {
    inner: R,
    sink: Option<&'s mut Vec<u8>>,
    tail: bool,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(sink) = self.sink.as_deref_mut() {
            if self.tail {
                sink.extend_from_slice(&buf[..n]);
                if sink.len() > 2 * MANIFEST_TAIL {
                    let cut = sink.len() - MANIFEST_TAIL;
                    sink.drain(..cut);
                }
            } else {
                let room = CAPTURE_MAX.saturating_sub(sink.len()).min(n);
                sink.extend_from_slice(&buf[..room]);
            }
        }
        Ok(n)
    }
}

/// The node of an entry, from its header.
fn node_of(h: &Header, name: &[u8]) -> Node {
    let t = Time(h.mtime, 0);
    Node {
        name: name.to_vec(),
        kind: match h.kind {
            EntryKind::File => NodeKind::File,
            EntryKind::Dir => NodeKind::Dir,
            EntryKind::Symlink => NodeKind::Symlink,
        },
        mode: h.mode,
        uid: h.uid,
        gid: h.gid,
        user: h.user.clone(),
        group: h.group.clone(),
        mtime: t,
        atime: None,
        ctime: t,
        size: 0,
        inode: 0,
        device: 0,
        links: 1,
        rdev: 0,
        link_target: (h.kind == EntryKind::Symlink).then(|| h.link_target.clone()),
        xattrs: Vec::new(),
        content: Vec::new(),
        content_lists: Vec::new(),
        subtree: None,
    }
}
