//! `cairn cat KIND [ID]`: a decoded object as JSON, for debugging.

use anyhow::{bail, Result};
use cairn_repo::Id;
use serde_json::json;

use crate::args::CatArgs;
use crate::commands::snapshots::snapshot_json;
use crate::context::Context;
use crate::output::{node_json, print_json};

fn need(id: &Option<String>, kind: &str) -> Result<String> {
    match id {
        Some(i) => Ok(i.clone()),
        None => bail!("`cat {kind}` needs an id"),
    }
}

pub fn run(ctx: &Context, args: CatArgs) -> Result<i32> {
    let repo = ctx.open()?;
    match args.kind.as_str() {
        "config" => print_json(repo.config())?,
        "snapshot" => {
            let (id, s) = repo.find_snapshot(&need(&args.id, "snapshot")?)?;
            print_json(&snapshot_json(&id, &s))?;
        }
        "tree" => {
            let spec = need(&args.id, "tree")?;
            let id = match Id::from_hex(&spec) {
                Ok(id) => id,
                Err(_) => repo.find_snapshot(&spec)?.1.tree,
            };
            let tree = repo.load_tree(&id)?;
            print_json(
                &json!({"id": id, "nodes": tree.nodes.iter().map(|n| node_json(None, n)).collect::<Vec<_>>()}),
            )?;
        }
        "index" => {
            let id = Id::from_hex(&need(&args.id, "index")?)?;
            print_json(&repo.read_index_file(&id)?)?;
        }
        "key" => {
            let prefix = need(&args.id, "key")?;
            let slots = repo.key_slots()?;
            let found: Vec<_> = slots
                .iter()
                .filter(|(n, _)| n.starts_with(&prefix))
                .collect();
            match found.as_slice() {
                [(n, s)] => print_json(&json!({"id": n, "slot": s}))?,
                [] => bail!("no key slot matches {prefix:?}"),
                _ => bail!("{prefix:?} matches several key slots"),
            }
        }
        "pack" => {
            let id = Id::from_hex(&need(&args.id, "pack")?)?;
            let (size, entries) = repo.read_pack_header(&id)?;
            print_json(&json!({"id": id, "size": size, "blobs": entries}))?;
        }
        other => {
            bail!("unknown object kind {other:?}: use config, snapshot, tree, index, key or pack")
        }
    }
    Ok(0)
}
