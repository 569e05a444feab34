//! `cairn cache`: the local caches in the cache folder, and removing those not used for a
//! while. A cache is derived data (docs/design.md, section 12): removing one costs only a
//! rebuild from the repository the next time that repository is used.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use serde_json::json;

use crate::context::Context;
use crate::output::{human_bytes, human_time, outln, print_json};

/// A cache file, named by the repository tenant's config id.
struct Entry {
    path: std::path::PathBuf,
    id: String,
    bytes: u64,
    used: SystemTime,
}

pub fn run(ctx: &Context, cleanup: bool, max_age_days: u64) -> Result<i32> {
    let Some(dir) = ctx.open_options().cache_dir else {
        anyhow::bail!(
            "no cache folder: --no-cache is given, or neither XDG_CACHE_HOME nor HOME is set"
        );
    };
    let mut entries = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(list) => {
            for e in list {
                let e = e.with_context(|| format!("reading {}", dir.display()))?;
                let path = e.path();
                let Some(id) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".redb"))
                    .map(str::to_string)
                else {
                    continue;
                };
                let meta = e
                    .metadata()
                    .with_context(|| format!("reading {}", path.display()))?;
                entries.push(Entry {
                    path,
                    id,
                    bytes: meta.len(),
                    // Every open of a cache writes to it, so this is when it was last used.
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.used));
    let max_age = Duration::from_secs(max_age_days.saturating_mul(86_400));
    let now = SystemTime::now();
    let is_old = |e: &Entry| now.duration_since(e.used).is_ok_and(|age| age > max_age);
    let mut removed = Vec::new();
    if cleanup {
        for e in entries.iter().filter(|e| is_old(e)) {
            std::fs::remove_file(&e.path)
                .with_context(|| format!("removing {}", e.path.display()))?;
            removed.push(e.id.clone());
        }
    }
    let used = |e: &Entry| {
        jiff::Timestamp::try_from(e.used)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    if ctx.json() {
        print_json(&json!({
            "folder": dir,
            "caches": entries.iter().map(|e| json!({
                "id": e.id,
                "bytes": e.bytes,
                "last_used": used(e),
                "old": is_old(e),
                "removed": removed.contains(&e.id),
            })).collect::<Vec<_>>(),
        }))?;
        return Ok(0);
    }
    outln!("caches in {}", dir.display());
    for e in &entries {
        let state = if removed.contains(&e.id) {
            "  removed"
        } else if is_old(e) {
            "  old"
        } else {
            ""
        };
        outln!(
            "  {}  {:>10}  last used {}{state}",
            &e.id[..e.id.len().min(16)],
            human_bytes(e.bytes),
            human_time(&used(e))
        );
    }
    let old = entries.iter().filter(|e| is_old(e)).count();
    if cleanup {
        outln!(
            "{} caches, {} removed (not used for {max_age_days} days)",
            entries.len(),
            removed.len()
        );
    } else if old > 0 {
        outln!("{} caches, {old} not used for {max_age_days} days: `cairn cache --cleanup` removes them", entries.len());
    } else {
        outln!("{} caches", entries.len());
    }
    Ok(0)
}
