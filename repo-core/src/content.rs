//! Reading file content back: a `Read` over a file node's blobs, fetched one at a time, and
//! helpers to walk snapshot trees.

use std::io::Read;

use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::Snapshot;
use crate::format::tree::{Node, NodeKind};
use crate::id::{BlobKind, Id};
use crate::repository::Repository;

/// Blobs fetched and decrypted at once, in parallel, while streaming a file.
const WINDOW: usize = 16;

/// Streams a file's content; memory holds one window of blobs at a time.
pub struct ContentReader<'a> {
    repo: &'a Repository,
    ids: Vec<Id>,
    next: usize,
    ready: std::collections::VecDeque<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl<'a> ContentReader<'a> {
    pub fn new(repo: &'a Repository, node: &Node) -> Result<Self> {
        if node.kind != NodeKind::File {
            return Err(Error::invalid(format!(
                "{:?} is not a file",
                node.name_lossy()
            )));
        }
        Ok(ContentReader {
            repo,
            ids: repo.file_content(node)?,
            next: 0,
            ready: Default::default(),
            current: Vec::new(),
            pos: 0,
        })
    }

    fn fetch_window(&mut self) -> std::io::Result<()> {
        use rayon::prelude::*;
        let end = (self.next + WINDOW).min(self.ids.len());
        let repo = self.repo;
        let blobs: Vec<Result<Vec<u8>>> = self.ids[self.next..end]
            .par_iter()
            .map(|id| repo.read_blob(BlobKind::Data, id))
            .collect();
        self.next = end;
        for b in blobs {
            self.ready.push_back(b.map_err(std::io::Error::other)?);
        }
        Ok(())
    }
}

impl Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            if self.ready.is_empty() {
                if self.next == self.ids.len() {
                    return Ok(0);
                }
                self.fetch_window()?;
            }
            self.current = self.ready.pop_front().unwrap_or_default();
            self.pos = 0;
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// How many entries a walk of one snapshot may visit.
///
/// A backup reads every entry it saves once and counts it in the snapshot's summary (files,
/// folders and other entries), and the folders above the backed-up paths are one per path
/// component. Identical folders share one tree, so a walk may meet a tree many times, but
/// never more entries in all than the backup read. A tree graph that expands to more (trees
/// that share subtrees level after level claim 2^40 paths with 40 stored trees) was not
/// written by a backup; a walk that reaches the bound stops with an error instead of running
/// without end.
#[derive(Debug, Clone)]
pub struct EntryBudget {
    left: u64,
    limit: u64,
}

impl EntryBudget {
    /// The bound for a walk of `snap`'s tree (or any part of it).
    pub fn for_snapshot(snap: &Snapshot) -> Self {
        let s = &snap.summary;
        let above: u64 = snap
            .paths
            .iter()
            .map(|p| p.split('/').filter(|c| !c.is_empty()).count() as u64)
            .sum();
        Self::new(
            s.files
                .saturating_add(s.dirs)
                .saturating_add(s.others)
                .saturating_add(above),
        )
    }

    pub fn new(limit: u64) -> Self {
        EntryBudget { left: limit, limit }
    }

    /// The sum of two budgets (a walk over two snapshots at once, as `diff` does).
    pub fn plus(&self, other: &EntryBudget) -> Self {
        Self::new(self.limit.saturating_add(other.limit))
    }

    /// Counts one entry visited; an error once more entries are visited than the bound.
    pub fn take(&mut self) -> Result<()> {
        match self.left.checked_sub(1) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(Error::corrupt(format!(
                "the snapshot's trees expand to more than the {} entries its summary records: \
                 its folders share subtrees in a way no backup writes; stopped walking it",
                self.limit
            ))),
        }
    }
}

/// Visits every node below `tree` depth-first in name order, with its path (components
/// joined by '/', starting with '/'). The visitor returns whether to descend into a
/// directory. Memory holds one tree per level of depth and one path; the walk keeps its own
/// stack, so depth is bounded by memory, not by the thread's stack. Every visit is counted
/// against `budget`.
pub fn walk(
    repo: &Repository,
    tree: &Id,
    prefix: &[u8],
    budget: &mut EntryBudget,
    visit: &mut dyn FnMut(&[u8], &Node) -> Result<bool>,
) -> Result<()> {
    /// One folder being walked: its entries not yet visited and the length of its path.
    struct Level {
        nodes: std::vec::IntoIter<Node>,
        path_len: usize,
    }
    let mut path = prefix.to_vec();
    let mut stack = vec![Level {
        nodes: repo.load_tree(tree)?.nodes.into_iter(),
        path_len: path.len(),
    }];
    while let Some(level) = stack.last_mut() {
        let Some(node) = level.nodes.next() else {
            stack.pop();
            continue;
        };
        path.truncate(level.path_len);
        path.push(b'/');
        path.extend_from_slice(&node.name);
        budget.take()?;
        let descend = visit(&path, &node)?;
        if descend && node.kind == NodeKind::Dir {
            if let Some(sub) = &node.subtree {
                stack.push(Level {
                    nodes: repo.load_tree(sub)?.nodes.into_iter(),
                    path_len: path.len(),
                });
            }
        }
    }
    Ok(())
}

/// Turns an I/O error that wraps a library error back into it.
pub fn unwrap_io(e: std::io::Error, what: &str) -> Error {
    let kind = e.kind();
    match e.into_inner() {
        Some(inner) => match inner.downcast::<Error>() {
            Ok(err) => *err,
            Err(other) => Error::new(ErrorKind::Io, format!("{what}: {other}")),
        },
        None => Error::new(ErrorKind::Io, format!("{what}: {kind}")),
    }
}
