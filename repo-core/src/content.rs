//! Reading file content back: a `Read` over a file node's blobs, fetched one at a time, and
//! helpers to walk snapshot trees.

use std::io::Read;

use crate::error::{Error, ErrorKind, Result};
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

/// Visits every node below `tree` depth-first in name order, with its path (components
/// joined by '/', starting with '/'). The visitor returns whether to descend into a
/// directory. Memory holds one tree per level of depth.
pub fn walk(
    repo: &Repository,
    tree: &Id,
    prefix: &[u8],
    visit: &mut dyn FnMut(&[u8], &Node) -> Result<bool>,
) -> Result<()> {
    let t = repo.load_tree(tree)?;
    for node in &t.nodes {
        let mut path = prefix.to_vec();
        path.push(b'/');
        path.extend_from_slice(&node.name);
        let descend = visit(&path, node)?;
        if descend && node.kind == NodeKind::Dir {
            if let Some(sub) = &node.subtree {
                walk(repo, sub, &path, visit)?;
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
