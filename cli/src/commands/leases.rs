//! `cairn leases`: who is writing to the repository now.

use anyhow::Result;
use serde_json::json;

use crate::args::LeasesArgs;
use crate::context::Context;
use crate::output::human_time;
use crate::output::{outln, print_json};

pub fn run(ctx: &Context, args: LeasesArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let now = jiff::Timestamp::now();
    let leases: Vec<_> = cairn_repo::lease::list(&repo)?
        .into_iter()
        .map(|(name, l)| (name, l.is_live(now), l))
        .filter(|(_, live, _)| args.all || *live)
        .collect();
    if ctx.json() {
        let v: Vec<_> = leases
            .iter()
            .map(|(name, live, l)| json!({"name": name, "live": live, "lease": l}))
            .collect();
        return print_json(&v).map(|_| 0);
    }
    for (name, live, l) in &leases {
        outln!(
            "{} {:<7} {:<16} pid {:<8} since {}  until {}{}",
            &name[..8],
            l.kind,
            l.host,
            l.pid,
            human_time(&l.started),
            l.expires,
            if *live { "" } else { "  (ended)" }
        );
    }
    if !ctx.quiet() {
        outln!("{} leases", leases.len());
    }
    Ok(0)
}
