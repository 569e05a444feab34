//! `cairn check`: verify the repository.

use anyhow::Result;
use cairn_repo::check::{check, Subset};

use crate::args::CheckArgs;
use crate::context::Context;
use crate::output::{human_bytes, outln, print_json};
use crate::progress_bar::Bar;

/// A problem is often the error of reading its object, whose text names the object already
/// ("snapshot 1a2b...: contents do not match its name"); the object is then not repeated.
fn problem_line(object: &str, problem: &str) -> String {
    match problem.strip_prefix(object) {
        Some(rest) if rest.starts_with(':') || rest.starts_with(' ') => problem.to_string(),
        _ => format!("{object}: {problem}"),
    }
}

pub fn run(ctx: &Context, args: CheckArgs) -> Result<i32> {
    let repo = ctx.open()?;
    let subset = match (&args.read_data_subset, args.read_data) {
        (Some(s), _) => Some(Subset::parse(s)?),
        (None, true) => Some(Subset::All),
        (None, false) => None,
    };
    let bar = Bar::phases(!ctx.quiet());
    let report = check(&repo, subset, &bar);
    bar.finish();
    let r = report?;
    if ctx.json() {
        print_json(&r)?;
    } else {
        if !ctx.quiet() {
            for n in &r.notices {
                outln!("note: {n}");
            }
            outln!(
                "checked {} snapshots, {} trees, {} data blobs, {} index files, {} packs{}",
                r.snapshots,
                r.trees,
                r.data_blobs,
                r.index_files,
                r.packs,
                if subset.is_some() {
                    format!(
                        "; read {} packs ({})",
                        r.packs_read,
                        human_bytes(r.bytes_read)
                    )
                } else {
                    String::new()
                }
            );
        }
        for p in &r.problems {
            eprintln!("error: {}", problem_line(&p.object, &p.problem));
        }
        if r.problems.is_empty() {
            if !ctx.quiet() {
                outln!("no problems found");
            }
        } else {
            eprintln!("{} problems found", r.problems.len());
        }
    }
    Ok(if r.problems.is_empty() {
        0
    } else {
        crate::EXIT_FAILURE
    })
}
