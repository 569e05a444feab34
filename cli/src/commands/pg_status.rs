//! `cairn wal list` and `cairn pg status` (alias `cairn wal verify`): what the PostgreSQL
//! archive holds and whether it can do its job (docs/postgresql.md, "Status and
//! verification").
//!
//! `pg status` exits 1 when the archive has a problem (a complete base backup that cannot
//! be made consistent, a gap cutting off the newest WAL of a timeline, an unreadable
//! history file) and 0 otherwise; `wal list` exits 0 whenever it could read the archive.

use anyhow::Result;
use cairn_repo::pg::status::{status as archive_status, Run, Status, TimelineStatus};
use serde_json::json;

use crate::context::Context;
use crate::output::human_time;
use crate::output::{outln, print_json};

fn load(ctx: &Context) -> Result<Status> {
    let repo = ctx.open()?;
    Ok(archive_status(&repo)?)
}

fn runs(list: &[Run]) -> String {
    list.iter()
        .map(|r| {
            if r.count == 1 {
                r.first.clone()
            } else {
                format!("{}..{} ({})", r.first, r.last, r.count)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_timeline(t: &TimelineStatus) -> Result<()> {
    outln!("timeline {} ({} segments)", t.timeline, t.segments);
    for h in &t.history {
        outln!(
            "  branched: timeline {} until {}{}",
            h.parent,
            h.switchpoint,
            if h.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", h.reason)
            }
        );
    }
    if let Some(p) = &t.history_problem {
        outln!("  history: {p}");
    }
    for r in &t.ranges {
        outln!(
            "  segments {}..{}  {} segments, last written {}",
            r.first,
            r.last,
            r.count,
            r.last_written
                .as_deref()
                .map(human_time)
                .unwrap_or("?".into())
        );
    }
    if !t.gaps.is_empty() {
        outln!("  gaps: {}", runs(&t.gaps));
    }
    if !t.partial.is_empty() {
        outln!("  partial: {}", t.partial.join(", "));
    }
    if !t.backup_files.is_empty() {
        outln!("  backup files: {}", t.backup_files.join(", "));
    }
    Ok(())
}

/// `cairn wal list [--timeline N]`.
pub fn list(ctx: &Context, timeline: Option<u32>) -> Result<i32> {
    let st = load(ctx)?;
    let timelines: Vec<&TimelineStatus> = st
        .timelines
        .iter()
        .filter(|t| timeline.is_none_or(|n| t.timeline == n))
        .collect();
    if ctx.json() {
        print_json(&json!({
            "system_identifier": st.system_identifier,
            "segment_size": st.segment_size,
            "timelines": timelines,
        }))?;
        return Ok(0);
    }
    if timelines.is_empty() {
        outln!(
            "no WAL is archived{}",
            match timeline {
                Some(n) => format!(" on timeline {n}"),
                None => String::new(),
            }
        );
    }
    for t in timelines {
        print_timeline(t)?;
    }
    Ok(0)
}

/// `cairn pg status` and `cairn wal verify`.
pub fn status(ctx: &Context) -> Result<i32> {
    let st = load(ctx)?;
    let code = if st.healthy() { 0 } else { 1 };
    if ctx.json() {
        let mut v = serde_json::to_value(&st)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("ok".into(), json!(st.healthy()));
        }
        print_json(&v)?;
        return Ok(code);
    }
    outln!(
        "cluster {}  ({} MiB segments)",
        st.system_identifier
            .as_deref()
            .unwrap_or("(nothing archived)"),
        st.segment_size >> 20
    );
    outln!("");
    outln!("base backups:");
    if st.base_backups.is_empty() {
        outln!("  none");
    }
    for b in &st.base_backups {
        let state = match (b.incomplete, b.wal_present) {
            (true, _) => "incomplete".to_string(),
            (false, true) => "complete, WAL present".to_string(),
            (false, false) => format!(
                "complete, WAL MISSING: {}",
                b.missing
                    .as_ref()
                    .map(|g| g.missing.clone())
                    .unwrap_or_else(|| "unreadable positions".into())
            ),
        };
        outln!(
            "  {}  timeline {}  {}..{}  {} .. {}  {state}",
            b.id.short(),
            b.timeline,
            b.start_lsn.as_deref().unwrap_or("?"),
            b.stop_lsn.as_deref().unwrap_or("?"),
            b.start_time
                .as_deref()
                .map(human_time)
                .unwrap_or("?".into()),
            b.stop_time.as_deref().map(human_time).unwrap_or("?".into()),
        );
        for w in &b.windows {
            outln!(
                "      restorable on timeline {}: {} .. {} (to {}){}",
                w.timeline,
                w.from.as_deref().map(human_time).unwrap_or("?".into()),
                w.to.as_deref().map(human_time).unwrap_or("?".into()),
                w.last_segment.as_deref().unwrap_or("?"),
                match &w.cut_by_gap {
                    Some(g) => format!(", then a gap at {g}"),
                    None => String::new(),
                }
            );
        }
    }
    outln!("");
    outln!("timelines:");
    for t in &st.timelines {
        print_timeline(t)?;
    }
    if !st.warnings.is_empty() {
        outln!("");
        outln!("warnings:");
        for w in &st.warnings {
            outln!("  {w}");
        }
    }
    outln!("");
    if st.healthy() {
        outln!("ok");
    } else {
        outln!("problems:");
        for p in &st.problems {
            outln!("  {p}");
        }
    }
    Ok(code)
}
