//! `cairn snapshots`.

use anyhow::Result;
use cairn_repo::format::snapshot::Snapshot;
use cairn_repo::repository::SnapshotRead;
use cairn_repo::Id;
use serde_json::json;

use crate::args::{SnapshotFilter, SnapshotsArgs};
use crate::context::Context;
use crate::output::{human_bytes, outln, print_json};

pub fn matches(f: &SnapshotFilter, s: &Snapshot) -> bool {
    (f.host.is_empty() || f.host.contains(&s.host))
        && f.tag.iter().all(|t| s.tags.contains(t))
        && f.path.iter().all(|p| {
            s.paths
                .iter()
                .any(|sp| sp == p || sp == p.trim_end_matches('/'))
        })
}

pub fn snapshot_json(id: &Id, s: &Snapshot) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["id"] = json!(id);
    v["short_id"] = json!(id.short());
    v
}

fn local_time(s: &Snapshot) -> String {
    match s.timestamp() {
        Some(ts) => ts
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string(),
        None => s.time.clone(),
    }
}

pub fn run(ctx: &Context, args: SnapshotsArgs) -> Result<i32> {
    let repo = ctx.open()?;
    // Every object is read and checked, so a damaged snapshot is reported even when the
    // cache holds a good copy of its manifest.
    let list = repo.list_snapshots(SnapshotRead::Verified)?;
    for (id, e) in &list.unreadable {
        eprintln!("warning: snapshot {} cannot be read: {e}", id.short());
    }
    let snaps: Vec<_> = list
        .snapshots
        .into_iter()
        .filter(|(_, s)| matches(&args.filter, s))
        .collect();
    if ctx.json() {
        print_json(
            &snaps
                .iter()
                .map(|(id, s)| snapshot_json(id, s))
                .collect::<Vec<_>>(),
        )?;
        return Ok(0);
    }
    outln!(
        "{:<10} {:<19} {:<16} {:<8} {:<16} {:>11}  paths",
        "id",
        "time",
        "host",
        "kind",
        "tags",
        "size"
    );
    for (id, s) in &snaps {
        let kind = serde_json::to_value(s.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let flag = if s.incomplete { " (incomplete)" } else { "" };
        outln!(
            "{:<10} {:<19} {:<16} {:<8} {:<16} {:>11}  {}{flag}",
            id.short(),
            local_time(s),
            s.host,
            kind,
            s.tags.join(","),
            human_bytes(s.summary.total_bytes),
            s.paths.join(" ")
        );
    }
    if !ctx.quiet() {
        outln!("{} snapshots", snaps.len());
    }
    Ok(0)
}
