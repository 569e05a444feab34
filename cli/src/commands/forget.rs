//! `cairn forget`: remove snapshots by id, or by a retention policy with `--keep-*` rules.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use cairn_repo::retention::{apply, parse_duration, GroupBy, Period, Policy};
use cairn_repo::snapshot_edit::forget;
use cairn_repo::Id;
use serde_json::json;

use crate::args::ForgetArgs;
use crate::commands::snapshots::matches;
use crate::context::Context;
use crate::output::{outln, print_json, Bar};

fn duration(flag: &str, v: &Option<String>) -> Result<Option<jiff::SignedDuration>> {
    match v {
        None => Ok(None),
        Some(s) => match parse_duration(s) {
            Some(d) => Ok(Some(d)),
            None => bail!("--{flag}: expected a duration such as 7d, 2w, 6mo, 1y, 36h; got {s:?}"),
        },
    }
}

fn policy(a: &ForgetArgs) -> Result<Policy> {
    let mut p = Policy {
        last: a.keep_last,
        tags: a.keep_tag.clone(),
        within: duration("keep-within", &a.keep_within)?,
        ..Default::default()
    };
    for (period, n) in [
        (Period::Hourly, a.keep_hourly),
        (Period::Daily, a.keep_daily),
        (Period::Weekly, a.keep_weekly),
        (Period::Monthly, a.keep_monthly),
        (Period::Yearly, a.keep_yearly),
    ] {
        if let Some(n) = n {
            p.periods.insert(period, n);
        }
    }
    for (period, flag, v) in [
        (Period::Hourly, "keep-within-hourly", &a.keep_within_hourly),
        (Period::Daily, "keep-within-daily", &a.keep_within_daily),
        (Period::Weekly, "keep-within-weekly", &a.keep_within_weekly),
        (
            Period::Monthly,
            "keep-within-monthly",
            &a.keep_within_monthly,
        ),
        (Period::Yearly, "keep-within-yearly", &a.keep_within_yearly),
    ] {
        if let Some(d) = duration(flag, v)? {
            p.within_periods.insert(period, d);
        }
    }
    Ok(p)
}

fn group_by(s: &str) -> Result<GroupBy> {
    let mut g = GroupBy {
        host: false,
        paths: false,
        tags: false,
    };
    for f in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        match f {
            "host" => g.host = true,
            "paths" | "path" => g.paths = true,
            "tags" | "tag" => g.tags = true,
            other => bail!("--group-by: unknown field {other:?} (use host, paths, tags)"),
        }
    }
    Ok(g)
}

pub fn run(ctx: &Context, args: ForgetArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let policy = policy(&args)?;
    if policy.is_empty() && args.snapshots.is_empty() {
        bail!("nothing to forget: give snapshot ids or at least one --keep-* rule");
    }
    if !policy.is_empty() && !policy.keeps_something() {
        // A zero keeps nothing of its kind; as the whole policy it would remove everything.
        bail!("refusing a policy that keeps nothing: every --keep-* rule given is zero; add a rule that keeps snapshots (e.g. --keep-last 1), or name the snapshots to forget");
    }
    // Retention decides on every snapshot, so none may be unreadable (see prune).
    let all = repo.snapshots_for_gc(args.prune_opts.drop_unreadable && !args.dry_run)?;
    let mut remove: Vec<Id> = Vec::new();
    for spec in &args.snapshots {
        remove.push(repo.find_snapshot(spec)?.0);
    }
    let mut groups: BTreeMap<String, (Vec<serde_json::Value>, Vec<serde_json::Value>)> =
        BTreeMap::new();
    if !policy.is_empty() {
        let selected: Vec<_> = all
            .iter()
            .filter(|(_, s)| matches(&args.filter, s))
            .cloned()
            .collect();
        let tz = jiff::tz::TimeZone::system();
        let by_id: std::collections::HashMap<Id, &cairn_repo::format::snapshot::Snapshot> =
            selected.iter().map(|(id, s)| (*id, s)).collect();
        for d in apply(&selected, &policy, group_by(&args.group_by)?, &tz)? {
            let s = by_id.get(&d.id);
            let label = format!(
                "host={} paths={} tags={}",
                d.group.host.clone().unwrap_or_else(|| "*".into()),
                d.group
                    .paths
                    .as_ref()
                    .map(|p| p.join(","))
                    .unwrap_or_else(|| "*".into()),
                d.group
                    .tags
                    .as_ref()
                    .map(|t| t.join(","))
                    .unwrap_or_else(|| "*".into())
            );
            let entry = json!({"id": d.id, "short_id": d.id.short(), "time": s.map(|s| s.time.clone()), "tags": s.map(|s| s.tags.clone()), "reasons": d.reasons});
            let g = groups.entry(label).or_default();
            if d.keep() {
                g.0.push(entry);
            } else {
                g.1.push(entry);
                remove.push(d.id);
            }
        }
    }
    remove.sort();
    remove.dedup();
    // The change is made before anything is printed: output that cannot be written (a
    // closed pipe ends the command at once) must not leave the work undone.
    let prune_opts = match args.prune {
        true => Some(super::prune::options(&args.prune_opts, false)?),
        false => None,
    };
    let pruned = if args.dry_run {
        None
    } else {
        forget(&repo, &remove)?;
        match &prune_opts {
            Some(opts) => {
                let bar = Bar::new(!ctx.quiet(), None);
                let r = cairn_repo::prune::prune(&repo, opts, &bar);
                bar.finish();
                Some(r?)
            }
            None => None,
        }
    };
    if ctx.json() {
        let v: Vec<_> = groups
            .iter()
            .map(|(g, (k, r))| json!({"group": g, "keep": k, "remove": r}))
            .collect();
        print_json(&json!({"dry_run": args.dry_run, "groups": v, "removed": remove}))?;
    } else if !ctx.quiet() {
        for (g, (keep, rem)) in &groups {
            outln!("{g}: keep {}, remove {}", keep.len(), rem.len());
            for k in keep {
                outln!(
                    "  keep    {}  {}  ({})",
                    k["short_id"].as_str().unwrap_or(""),
                    k["time"].as_str().unwrap_or(""),
                    k["reasons"]
                        .as_array()
                        .map(|r| r
                            .iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                );
            }
            for r in rem {
                outln!(
                    "  remove  {}  {}",
                    r["short_id"].as_str().unwrap_or(""),
                    r["time"].as_str().unwrap_or("")
                );
            }
        }
    }
    if args.dry_run {
        if !ctx.quiet() && !ctx.json() {
            outln!("dry run: {} snapshots would be removed", remove.len());
        }
        return Ok(0);
    }
    if !ctx.quiet() && !ctx.json() {
        outln!("removed {} snapshots", remove.len());
    }
    if let Some(r) = pruned {
        if !ctx.json() {
            super::prune::report(ctx, &r)?;
        }
    }
    Ok(0)
}
