//! `cairn diff A B`: what changed between two snapshots. Subtrees with the same id are
//! skipped without being read, so comparing two similar snapshots reads only what differs.
//!
//! Markers: `+` added, `-` removed, `M` content changed, `U` metadata changed only,
//! `T` type changed.

use std::io::Write;

use anyhow::Result;
use cairn_repo::format::tree::{Node, NodeKind, Tree};
use cairn_repo::{Id, Repository};
use serde_json::json;

use crate::args::DiffArgs;
use crate::context::Context;
use crate::output::path_json;

#[derive(Default)]
struct Counts {
    added: u64,
    removed: u64,
    modified: u64,
    metadata: u64,
}

fn load(repo: &Repository, id: Option<&Id>) -> cairn_repo::Result<Tree> {
    match id {
        Some(id) => repo.load_tree(id),
        None => Ok(Tree::default()),
    }
}

fn same_metadata(a: &Node, b: &Node) -> bool {
    a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.mtime == b.mtime
        && a.xattrs == b.xattrs
        && a.link_target == b.link_target
        && a.rdev == b.rdev
}

fn diff(
    repo: &Repository,
    a: Option<&Id>,
    b: Option<&Id>,
    prefix: &[u8],
    emit: &mut dyn FnMut(char, &[u8]) -> Result<()>,
    counts: &mut Counts,
) -> Result<()> {
    if a.is_some() && a == b {
        return Ok(());
    }
    let (ta, tb) = (load(repo, a)?, load(repo, b)?);
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let order = match (ta.nodes.get(i), tb.nodes.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let name = match order {
            std::cmp::Ordering::Greater => &tb.nodes[j].name,
            _ => &ta.nodes[i].name,
        };
        let mut path = prefix.to_vec();
        path.push(b'/');
        path.extend_from_slice(name);
        match order {
            std::cmp::Ordering::Less => {
                let n = &ta.nodes[i];
                emit('-', &path)?;
                counts.removed += 1;
                if n.kind == NodeKind::Dir {
                    diff(repo, n.subtree.as_ref(), None, &path, emit, counts)?;
                }
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let n = &tb.nodes[j];
                emit('+', &path)?;
                counts.added += 1;
                if n.kind == NodeKind::Dir {
                    diff(repo, None, n.subtree.as_ref(), &path, emit, counts)?;
                }
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&ta.nodes[i], &tb.nodes[j]);
                if x.kind != y.kind {
                    emit('T', &path)?;
                    counts.modified += 1;
                    let sub = |n: &Node| {
                        if n.kind == NodeKind::Dir {
                            n.subtree
                        } else {
                            None
                        }
                    };
                    diff(repo, sub(x).as_ref(), sub(y).as_ref(), &path, emit, counts)?;
                } else if x.kind == NodeKind::File
                    && (x.content != y.content || x.content_lists != y.content_lists)
                {
                    emit('M', &path)?;
                    counts.modified += 1;
                } else {
                    if !same_metadata(x, y) {
                        emit('U', &path)?;
                        counts.metadata += 1;
                    }
                    if x.kind == NodeKind::Dir {
                        diff(
                            repo,
                            x.subtree.as_ref(),
                            y.subtree.as_ref(),
                            &path,
                            emit,
                            counts,
                        )?;
                    }
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

pub fn run(ctx: &Context, args: DiffArgs) -> Result<i32> {
    let repo = ctx.open()?;
    repo.sync_index()?;
    let (ida, a) = repo.find_snapshot(&args.first)?;
    let (idb, b) = repo.find_snapshot(&args.second)?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let json = ctx.json();
    let mut counts = Counts::default();
    diff(
        &repo,
        Some(&a.tree),
        Some(&b.tree),
        b"",
        &mut |c, path| {
            if json {
                writeln!(
                    out,
                    "{}",
                    json!({"change": c.to_string(), "path": path_json(path)})
                )?;
            } else {
                write!(out, "{c}    ")?;
                out.write_all(path)?;
                out.write_all(b"\n")?;
            }
            Ok(())
        },
        &mut counts,
    )?;
    if json {
        writeln!(
            out,
            "{}",
            json!({"summary": {"first": ida, "second": idb, "added": counts.added, "removed": counts.removed, "modified": counts.modified, "metadata": counts.metadata}})
        )?;
    } else if !ctx.quiet() {
        writeln!(
            out,
            "\n{} added, {} removed, {} modified, {} metadata only",
            counts.added, counts.removed, counts.modified, counts.metadata
        )?;
    }
    out.flush()?;
    Ok(0)
}
