//! `cairn forget`: remove snapshots by id, or by a retention policy with `--keep-*` rules.
//!
//! `wal` snapshots are never judged by the `--keep-*` rules nor removed by id: WAL is
//! forgotten only by `--keep-within-pitr`, which keeps what restoring to any moment of its
//! window needs plus the start..stop WAL of every other kept base backup
//! (`cairn_repo::pg::pitr_retention`). Without it, WAL is left as it is, so plain rules
//! never remove WAL a kept base backup needs.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};
use cairn_repo::format::snapshot::{Snapshot, SnapshotKind};
use cairn_repo::pg::archive_map::{ArchiveMap, Scope};
use cairn_repo::pg::pitr_retention::{self, TrimReport, WalKeep};
use cairn_repo::pg::wal::Catalog;
use cairn_repo::retention::{
    apply, parse_duration, Decision, GroupBy, GroupKey, Period, Policy, HOLD_TAG,
};
use cairn_repo::snapshot_edit::forget;
use cairn_repo::Id;
use serde_json::json;

use crate::args::ForgetArgs;
use crate::commands::snapshots::matches;
use crate::context::Context;
use crate::output::{outln, print_json};
use crate::progress_bar::Bar;

fn duration(flag: &str, v: &Option<String>) -> Result<Option<jiff::SignedDuration>> {
    match v {
        None => Ok(None),
        Some(s) => match parse_duration(s) {
            Some(d) => Ok(Some(d)),
            None => crate::bail_usage!(
                "--{flag}: expected a duration such as 7d, 2w, 6mo, 1y, 36h; got {s:?}"
            ),
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
            other => {
                crate::bail_usage!("--group-by: unknown field {other:?} (use host, paths, tags)")
            }
        }
    }
    Ok(g)
}

/// Gives each snapshot the time the storage received it instead of the time it claims
/// (`--by-received-time`).
fn received_times(
    repo: &cairn_repo::Repository,
    snapshots: &mut [(Id, cairn_repo::format::snapshot::Snapshot)],
) -> Result<()> {
    let Some(times) = repo.snapshot_received_times()? else {
        bail!(
            "--by-received-time: {} does not record when it received objects",
            repo.root_description()
        );
    };
    for (id, snap) in snapshots.iter_mut() {
        let at = times.get(id).with_context(|| {
            format!(
                "--by-received-time: no receive time for snapshot {}",
                id.short()
            )
        })?;
        snap.time = jiff::Timestamp::try_from(*at)
            .with_context(|| format!("the receive time of snapshot {}", id.short()))?
            .to_string();
    }
    Ok(())
}

pub fn run(ctx: &Context, args: ForgetArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let policy = policy(&args)?;
    let pitr = duration("keep-within-pitr", &args.keep_within_pitr)?;
    if pitr.is_some_and(|d| !d.is_positive()) {
        crate::bail_usage!("--keep-within-pitr: the window must be longer than zero");
    }
    if policy.is_empty() && args.snapshots.is_empty() && pitr.is_none() {
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
        let (id, snap) = repo.find_snapshot(spec)?;
        if snap.kind == SnapshotKind::Wal {
            bail!("snapshot {} holds archived WAL: WAL is forgotten by --keep-within-pitr, which keeps what the kept base backups need", id.short());
        }
        remove.push(id);
    }
    // The window and the base backups it keeps.
    let window_start = match pitr {
        Some(d) => pitr_retention::anchor(&all).map(|a| a - d),
        None => None,
    };
    let pitr_kept = match window_start {
        Some(w) => pitr_retention::pitr_backups(&all, w),
        None => Default::default(),
    };
    let mut groups: BTreeMap<String, (Vec<serde_json::Value>, Vec<serde_json::Value>)> =
        BTreeMap::new();
    if !policy.is_empty() || pitr.is_some() {
        // Rules never judge WAL; with --keep-within-pitr alone, only base backups are judged.
        let mut selected: Vec<_> = all
            .iter()
            .filter(|(_, s)| matches(&args.filter, s))
            .filter(|(_, s)| s.kind != SnapshotKind::Wal)
            .filter(|(_, s)| !policy.is_empty() || s.kind == SnapshotKind::PgBasebackup)
            .cloned()
            .collect();
        if args.by_received_time {
            received_times(&repo, &mut selected)?;
        }
        let tz = jiff::tz::TimeZone::system();
        let by_id: std::collections::HashMap<Id, &cairn_repo::format::snapshot::Snapshot> =
            selected.iter().map(|(id, s)| (*id, s)).collect();
        let decisions = if policy.is_empty() {
            selected
                .iter()
                .map(|(id, s)| Decision {
                    id: *id,
                    group: GroupKey {
                        host: None,
                        paths: None,
                        tags: None,
                    },
                    reasons: if s.tags.iter().any(|t| t == HOLD_TAG) {
                        vec!["hold".into()]
                    } else {
                        Vec::new()
                    },
                })
                .collect()
        } else {
            apply(&selected, &policy, group_by(&args.group_by)?, &tz)?
        };
        for mut d in decisions {
            if let Some(reason) = pitr_kept.get(&d.id) {
                d.reasons.push(reason.clone());
            }
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
    let mut wal_report = None;
    if !args.dry_run {
        forget(&repo, &remove)?;
    }
    // Base backups are forgotten first and WAL after, so a crash in between leaves WAL
    // that nothing needs rather than a base backup without its WAL.
    if let Some(w) = window_start {
        wal_report = trim_wal(&repo, &all, &remove, &pitr_kept, w, args.dry_run)?;
    }
    let pruned = if args.dry_run {
        None
    } else {
        match &prune_opts {
            Some(opts) => {
                let bar = Bar::phases(!ctx.quiet());
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
        print_json(
            &json!({"dry_run": args.dry_run, "groups": v, "removed": remove, "wal": wal_report}),
        )?;
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
    if let (Some(r), false) = (&wal_report, ctx.quiet() || ctx.json()) {
        print_wal(r, args.dry_run)?;
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

/// Drops the WAL that neither the window nor another kept base backup needs. Refuses when
/// the timelines cannot be followed (an unreadable or missing history file): what a
/// timeline reaches would be unknown, and WAL is never dropped on a guess.
fn trim_wal(
    repo: &cairn_repo::Repository,
    all: &[(Id, Snapshot)],
    removed: &[Id],
    pitr_kept: &BTreeMap<Id, String>,
    window_start: jiff::Timestamp,
    dry_run: bool,
) -> Result<Option<TrimReport>> {
    let onward: Vec<_> = all
        .iter()
        .filter(|(id, _)| pitr_kept.contains_key(id))
        .filter_map(|(_, s)| s.pg.as_ref())
        .collect();
    if onward.is_empty() {
        tracing::warn!("no complete base backup with a stop time: all WAL is kept");
        return Ok(None);
    }
    let others: Vec<_> = all
        .iter()
        .filter(|(id, s)| {
            s.kind == SnapshotKind::PgBasebackup
                && !removed.contains(id)
                && !pitr_kept.contains_key(id)
        })
        .filter_map(|(_, s)| s.pg.as_ref())
        .collect();
    let catalog = Catalog::load(repo)?;
    let map = ArchiveMap::load(repo, &catalog, &Scope::All)?;
    for (t, h) in map.histories() {
        if let Err(e) = &h.parsed {
            bail!("WAL is kept: the history of timeline {t} cannot be read ({e})");
        }
    }
    for t in map.timelines().keys() {
        if *t > 1 && !map.histories().contains_key(t) {
            bail!("WAL is kept: timeline {t} has segments but no history file ({t:08X}.history), so where it branched is unknown");
        }
    }
    let keep = WalKeep::compute(&map, &onward, &others, Some(window_start))?;
    Ok(Some(pitr_retention::trim_wal(repo, &keep, dry_run)?))
}

fn print_wal(r: &TrimReport, dry_run: bool) -> Result<()> {
    let verb = if dry_run { "would drop" } else { "dropped" };
    let segments: u64 = r
        .dropped_segments
        .values()
        .flat_map(|runs| runs.iter().map(|(_, _, n)| *n))
        .sum();
    outln!(
        "WAL: {verb} {segments} segments and {} other files ({} bytes); {} wal snapshots rewritten, {} removed, {} unchanged",
        r.dropped_other.len(),
        r.dropped_bytes,
        r.rewritten.len(),
        r.removed.len(),
        r.unchanged
    );
    for (t, runs) in &r.dropped_segments {
        for (first, last, n) in runs {
            outln!("  {verb}  timeline {t}: {first}..{last} ({n})");
        }
    }
    for name in &r.dropped_other {
        outln!("  {verb}  {name}");
    }
    Ok(())
}
