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

/// The newest `n` snapshots of each host and set of paths (restic's `--latest`), oldest
/// first as the listing is.
fn latest_per_group(snaps: Vec<(Id, Snapshot)>, n: usize) -> Vec<(Id, Snapshot)> {
    let mut seen: std::collections::HashMap<(String, Vec<String>), usize> = Default::default();
    let mut keep = vec![false; snaps.len()];
    let mut order: Vec<usize> = (0..snaps.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(snaps[i].1.timestamp()));
    for i in order {
        let s = &snaps[i].1;
        let mut paths = s.paths.clone();
        paths.sort();
        let count = seen.entry((s.host.clone(), paths)).or_default();
        if *count < n {
            *count += 1;
            keep[i] = true;
        }
    }
    snaps
        .into_iter()
        .zip(keep)
        .filter_map(|(s, k)| k.then_some(s))
        .collect()
}

pub fn run(ctx: &Context, args: SnapshotsArgs) -> Result<i32> {
    let repo = ctx.open()?;
    // Every object is read and checked, so a damaged snapshot is reported even when the
    // cache holds a good copy of its manifest.
    let list = repo.list_snapshots(SnapshotRead::Verified)?;
    for (id, e) in &list.unreadable {
        eprintln!("warning: snapshot {} cannot be read: {e}", id.short());
    }
    let mut snaps: Vec<_> = list
        .snapshots
        .into_iter()
        .filter(|(_, s)| matches(&args.filter, s))
        .collect();
    if let Some(n) = args.latest {
        snaps = latest_per_group(snaps, n);
    }
    if ctx.json() {
        print_json(
            &snaps
                .iter()
                .map(|(id, s)| snapshot_json(id, s))
                .collect::<Vec<_>>(),
        )?;
        return Ok(0);
    }
    if args.compact {
        outln!("{:<10} {:<19} {:<16} paths", "id", "time", "host");
        for (id, s) in &snaps {
            outln!(
                "{:<10} {:<19} {:<16} {}",
                id.short(),
                local_time(s),
                s.host,
                s.paths.join(" ")
            );
        }
        if !ctx.quiet() {
            outln!("{} snapshots", snaps.len());
        }
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

/// The snapshot `spec` names: an id prefix, or `latest`, the newest snapshot (archived WAL
/// aside) that `filter` admits. `SNAPSHOT:PATH` also names a path inside it, returned
/// separately.
pub fn resolve(
    repo: &cairn_repo::Repository,
    spec: &str,
    filter: &SnapshotFilter,
) -> Result<(Id, Snapshot, Option<String>)> {
    let (spec, sub) = match spec.split_once(':') {
        Some((s, p)) => (s, Some(p.to_string())),
        None => (spec, None),
    };
    let narrowed = !filter.host.is_empty() || !filter.tag.is_empty() || !filter.path.is_empty();
    if spec != "latest" || !narrowed {
        let (id, snap) = repo.find_snapshot(spec)?;
        return Ok((id, snap, sub));
    }
    let newest = repo.snapshots()?.into_iter().rev().find(|(_, s)| {
        s.kind != cairn_repo::format::snapshot::SnapshotKind::Wal && matches(filter, s)
    });
    match newest {
        Some((id, snap)) => Ok((id, snap, sub)),
        None => anyhow::bail!("no snapshot matches --host/--tag/--path for `latest`"),
    }
}
