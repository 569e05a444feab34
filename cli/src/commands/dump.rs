//! `cairn dump SNAPSHOT PATH`: a file's content to stdout, or a directory as a tar stream
//! (or a ZIP archive with `--archive zip`). Content is streamed blob by blob; nothing is
//! held whole in memory.

use std::io::Write;

use anyhow::{bail, Result};
use cairn_repo::content::{walk, ContentReader, EntryBudget};
use cairn_repo::format::tree::{Node, NodeKind};
use cairn_repo::Repository;

use crate::args::{ArchiveFormat, DumpArgs};
use crate::context::Context;
use crate::zip::{Entry, EntryKind, ZipWriter};

fn header_for(node: &Node) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(node.mode);
    h.set_uid(node.uid as u64);
    h.set_gid(node.gid as u64);
    h.set_mtime(node.mtime.0.max(0) as u64);
    if let Some(u) = &node.user {
        let _ = h.set_username(u);
    }
    if let Some(g) = &node.group {
        let _ = h.set_groupname(g);
    }
    h
}

fn append(
    repo: &Repository,
    tar: &mut tar::Builder<impl Write>,
    path: &[u8],
    node: &Node,
) -> Result<()> {
    let rel = std::str::from_utf8(path)
        .map(|s| s.trim_start_matches('/').to_string())
        .unwrap_or_else(|_| {
            String::from_utf8_lossy(path)
                .trim_start_matches('/')
                .to_string()
        });
    let rel = if rel.is_empty() { ".".to_string() } else { rel };
    let mut h = header_for(node);
    match node.kind {
        NodeKind::File => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(node.size);
            tar.append_data(&mut h, &rel, ContentReader::new(repo, node)?)?;
        }
        NodeKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            tar.append_data(&mut h, &rel, std::io::empty())?;
        }
        NodeKind::Symlink => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            let target = String::from_utf8_lossy(node.link_target.as_deref().unwrap_or_default())
                .into_owned();
            tar.append_link(&mut h, &rel, target)?;
        }
        NodeKind::Fifo | NodeKind::Chardev | NodeKind::Blockdev => {
            h.set_entry_type(match node.kind {
                NodeKind::Fifo => tar::EntryType::Fifo,
                NodeKind::Chardev => tar::EntryType::Char,
                _ => tar::EntryType::Block,
            });
            h.set_size(0);
            let major = ((node.rdev >> 8) & 0xfff) | ((node.rdev >> 32) & !0xfff);
            let minor = (node.rdev & 0xff) | ((node.rdev >> 12) & !0xff);
            let _ = h.set_device_major(major as u32);
            let _ = h.set_device_minor(minor as u32);
            tar.append_data(&mut h, &rel, std::io::empty())?;
        }
        NodeKind::Socket => {}
    }
    Ok(())
}

pub fn run(ctx: &Context, args: DumpArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let (_, snap, sub) = super::snapshots::resolve(&repo, &args.snapshot, &args.filter)?;
    let shown = match (sub, args.inside) {
        (Some(_), Some(_)) => {
            bail!("give the path either as SNAPSHOT:PATH or as the second argument")
        }
        (Some(p), None) | (None, Some(p)) => p,
        (None, None) => {
            bail!("which path? give it as SNAPSHOT:PATH or as the second argument (`/` for all)")
        }
    };
    let path = shown.trim_end_matches('/').as_bytes().to_vec();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let (root_node, tree) = if path.is_empty() {
        (None, Some(snap.tree))
    } else {
        match repo.resolve_path(&snap.tree, &path)? {
            Some(node) if node.kind == NodeKind::File => {
                std::io::copy(&mut ContentReader::new(&repo, &node)?, &mut out)
                    .map_err(|e| cairn_repo::content::unwrap_io(e, "dump"))?;
                out.flush()?;
                return Ok(0);
            }
            Some(node) if node.kind == NodeKind::Dir => (Some(node.clone()), node.subtree),
            Some(_) => bail!("{shown} is neither a file nor a directory"),
            None => bail!("no such path"),
        }
    };
    if args.archive == ArchiveFormat::Zip {
        return dump_zip(&repo, out, &snap, &path, root_node.as_ref(), tree);
    }
    // Nothing is written before the first tree is read, so a snapshot whose root cannot be
    // read gives an empty stream (which `tar` rejects), not an empty archive. A failure
    // later ends the stream with a block that is no tar header, never with the end-of-archive
    // marker, so whatever reads it fails too.
    let mut tar = tar::Builder::new(Guarded {
        out,
        failed: false,
        written: false,
    });
    tar.follow_symlinks(false);
    let result = write_entries(&repo, &mut tar, &snap, &path, root_node.as_ref(), tree);
    if let Err(e) = result {
        let g = tar.get_mut();
        g.failed = true;
        if g.written {
            let _ = g.out.write_all(&[0xff; 512]);
        }
        let _ = g.out.flush();
        return Err(e);
    }
    tar.into_inner()?.out.flush()?;
    Ok(0)
}

/// The tar stream's writer: once the dump failed it refuses every write, so the tar
/// builder cannot finish the archive when it is dropped.
struct Guarded<W: Write> {
    out: W,
    failed: bool,
    /// Whether anything was written (a stream that failed before stays empty).
    written: bool,
}

impl<W: Write> Write for Guarded<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.failed {
            return Err(std::io::Error::other("dump failed"));
        }
        self.written = true;
        self.out.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn write_entries<W: Write>(
    repo: &Repository,
    tar: &mut tar::Builder<Guarded<W>>,
    snap: &cairn_repo::format::snapshot::Snapshot,
    path: &[u8],
    root_node: Option<&Node>,
    tree: Option<cairn_repo::Id>,
) -> Result<()> {
    each_entry(repo, snap, path, root_node, tree, |p, node| {
        append(repo, tar, p, node)
    })
}

/// Calls `add` with the folder at `path` (its node, when it is not the root) and then every
/// entry below it, depth first, stopping at the first error (`add`'s or the walk's).
fn each_entry(
    repo: &Repository,
    snap: &cairn_repo::format::snapshot::Snapshot,
    path: &[u8],
    root_node: Option<&Node>,
    tree: Option<cairn_repo::Id>,
    mut add: impl FnMut(&[u8], &Node) -> Result<()>,
) -> Result<()> {
    if let Some(n) = root_node {
        add(path, n)?;
    }
    let Some(tree) = tree else { return Ok(()) };
    let mut failure = None;
    let mut budget = EntryBudget::for_snapshot(snap);
    walk(repo, &tree, path, &mut budget, &mut |p, node| {
        if let Err(e) = add(p, node) {
            failure = Some(e);
            return Err(cairn_repo::Error::new(
                cairn_repo::ErrorKind::Io,
                "dump stopped",
            ));
        }
        Ok(true)
    })
    .or_else(|e| if failure.is_some() { Ok(()) } else { Err(e) })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The ZIP archive of a folder: files, folders and symlinks (a ZIP holds no devices, FIFOs or
/// sockets; they are left out, as by `zip`). A dump that fails part way writes no central
/// directory, so no reader takes what was written for an archive.
fn dump_zip(
    repo: &Repository,
    out: impl Write,
    snap: &cairn_repo::format::snapshot::Snapshot,
    path: &[u8],
    root_node: Option<&Node>,
    tree: Option<cairn_repo::Id>,
) -> Result<i32> {
    let mut zip = ZipWriter::new(out);
    let add = |zip: &mut ZipWriter<_>, p: &[u8], node: &Node| -> Result<()> {
        let name = p.strip_prefix(b"/").unwrap_or(p);
        if name.is_empty() {
            return Ok(());
        }
        let kind = match node.kind {
            NodeKind::File => EntryKind::File { size: node.size },
            NodeKind::Dir => EntryKind::Dir,
            NodeKind::Symlink => EntryKind::Symlink {
                target: node.link_target.as_deref().unwrap_or_default(),
            },
            _ => return Ok(()),
        };
        let entry = Entry {
            name,
            kind,
            mode: node.mode,
            mtime: node.mtime.0,
        };
        if node.kind == NodeKind::File {
            zip.add(&entry, &mut ContentReader::new(repo, node)?)
                .map_err(|e| cairn_repo::content::unwrap_io(e, "dump"))?;
        } else {
            zip.add(&entry, &mut std::io::empty())?;
        }
        Ok(())
    };
    each_entry(repo, snap, path, root_node, tree, |p, node| {
        add(&mut zip, p, node)
    })?;
    zip.finish()?.flush()?;
    Ok(0)
}
