//! `cairn diff A B`: what changed between two snapshots. Subtrees with the same id are
//! skipped without being read, so comparing two similar snapshots reads only what differs.
//!
//! Markers: `+` added, `-` removed, `M` content changed, `U` metadata changed only,
//! `T` type changed.

use std::io::Write;

use anyhow::Result;
use cairn_repo::content::EntryBudget;
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

/// Two folders being compared: their entries, the position in each, and the length of
/// their path.
struct Level {
    a: Vec<Node>,
    b: Vec<Node>,
    i: usize,
    j: usize,
    path_len: usize,
}

/// Compares the trees `a` and `b` (a missing one is empty). The comparison keeps its own
/// stack of folders, so depth is bounded by memory, not by the thread's stack; every entry
/// met counts against `budget` (see `EntryBudget`).
fn diff(
    repo: &Repository,
    a: Option<&Id>,
    b: Option<&Id>,
    budget: &mut EntryBudget,
    emit: &mut dyn FnMut(char, &[u8]) -> Result<()>,
    counts: &mut Counts,
) -> Result<()> {
    let mut path: Vec<u8> = Vec::new();
    let mut stack: Vec<Level> = Vec::new();
    // Pushes the comparison of two subtrees, unless they are the same tree.
    let push = |stack: &mut Vec<Level>,
                a: Option<&Id>,
                b: Option<&Id>,
                path_len: usize|
     -> cairn_repo::Result<()> {
        if a.is_some() && a == b {
            return Ok(());
        }
        stack.push(Level {
            a: load(repo, a)?.nodes,
            b: load(repo, b)?.nodes,
            i: 0,
            j: 0,
            path_len,
        });
        Ok(())
    };
    push(&mut stack, a, b, 0)?;
    let sub = |n: &Node| {
        if n.kind == NodeKind::Dir {
            n.subtree
        } else {
            None
        }
    };
    while let Some(level) = stack.last_mut() {
        let (i, j) = (level.i, level.j);
        if i >= level.a.len() && j >= level.b.len() {
            stack.pop();
            continue;
        }
        let order = match (level.a.get(i), level.b.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let name = match order {
            std::cmp::Ordering::Greater => &level.b[j].name,
            _ => &level.a[i].name,
        };
        path.truncate(level.path_len);
        path.push(b'/');
        path.extend_from_slice(name);
        budget.take()?;
        // The subtrees to compare next, if any.
        let next: Option<(Option<Id>, Option<Id>)> = match order {
            std::cmp::Ordering::Less => {
                let n = &level.a[i];
                level.i += 1;
                emit('-', &path)?;
                counts.removed += 1;
                sub(n).map(|t| (Some(t), None))
            }
            std::cmp::Ordering::Greater => {
                let n = &level.b[j];
                level.j += 1;
                emit('+', &path)?;
                counts.added += 1;
                sub(n).map(|t| (None, Some(t)))
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&level.a[i], &level.b[j]);
                level.i += 1;
                level.j += 1;
                if x.kind != y.kind {
                    emit('T', &path)?;
                    counts.modified += 1;
                    Some((sub(x), sub(y)))
                } else if x.kind == NodeKind::File
                    && (x.content != y.content || x.content_lists != y.content_lists)
                {
                    emit('M', &path)?;
                    counts.modified += 1;
                    None
                } else {
                    if !same_metadata(x, y) {
                        emit('U', &path)?;
                        counts.metadata += 1;
                    }
                    (x.kind == NodeKind::Dir).then_some((x.subtree, y.subtree))
                }
            }
        };
        if let Some((ta, tb)) = next {
            if ta.is_some() || tb.is_some() {
                push(&mut stack, ta.as_ref(), tb.as_ref(), path.len())?;
            }
        }
    }
    Ok(())
}

pub fn run(ctx: &Context, args: DiffArgs) -> Result<i32> {
    let repo = ctx.open()?;
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
        &mut EntryBudget::for_snapshot(&a).plus(&EntryBudget::for_snapshot(&b)),
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
