//! `cairn ls SNAPSHOT [PATH]`: entries below a path, recursively. `--json` prints one JSON
//! object per line, so output is streamed however large the snapshot.

use std::io::Write;

use anyhow::{bail, Result};
use cairn_repo::content::{walk, EntryBudget};
use cairn_repo::format::tree::{Node, NodeKind};

use crate::args::LsArgs;
use crate::context::Context;
use crate::output::human_node_time;
use crate::output::node_json;

pub fn long_line(path: &[u8], n: &Node) -> String {
    let t = match n.kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::Chardev => 'c',
        NodeKind::Blockdev => 'b',
        NodeKind::Socket => 's',
        NodeKind::File => '-',
    };
    let mut line = format!(
        "{t}{:04o} {:>8} {:>8} {:>12} {} {}",
        n.mode,
        n.user.clone().unwrap_or_else(|| n.uid.to_string()),
        n.group.clone().unwrap_or_else(|| n.gid.to_string()),
        n.size,
        human_node_time(n.mtime),
        String::from_utf8_lossy(path)
    );
    if let Some(target) = &n.link_target {
        line.push_str(&format!(" -> {}", String::from_utf8_lossy(target)));
    }
    line
}

pub fn run(ctx: &Context, args: LsArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let (_, snap, sub) = super::snapshots::resolve(&repo, &args.snapshot, &args.filter)?;
    if sub.is_some() && args.inside.is_some() {
        anyhow::bail!("give the path either as SNAPSHOT:PATH or as the second argument");
    }
    let prefix = sub
        .as_deref()
        .or(args.inside.as_deref())
        .unwrap_or("/")
        .trim_end_matches('/')
        .as_bytes()
        .to_vec();
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let mut print = |path: &[u8], node: &Node| -> Result<()> {
        if ctx.json() {
            writeln!(
                out,
                "{}",
                serde_json::to_string(&node_json(Some(path), node))?
            )?;
        } else if args.long {
            writeln!(out, "{}", long_line(path, node))?;
        } else {
            out.write_all(path)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    };
    let start = if prefix.is_empty() {
        snap.tree
    } else {
        match repo.resolve_path(&snap.tree, &prefix)? {
            Some(node) if node.kind == NodeKind::Dir => {
                print(&prefix, &node)?;
                match node.subtree {
                    Some(t) => t,
                    None => bail!("directory without a tree"),
                }
            }
            Some(node) => {
                print(&prefix, &node)?;
                out.flush()?;
                return Ok(0);
            }
            None => bail!("no such path"),
        }
    };
    let mut err = None;
    let mut budget = EntryBudget::for_snapshot(&snap);
    walk(&repo, &start, &prefix, &mut budget, &mut |path, node| {
        if let Err(e) = print(path, node) {
            err = Some(e);
            return Err(cairn_repo::Error::new(
                cairn_repo::ErrorKind::Io,
                "output failed",
            ));
        }
        Ok(true)
    })
    .or_else(|e| if err.is_some() { Ok(()) } else { Err(e) })?;
    if let Some(e) = err {
        return Err(e);
    }
    out.flush()?;
    Ok(0)
}
