//! One file per command. Each `run` returns the process exit code.

mod backup;
mod cache;
mod cat;
mod check;
mod diff;
mod dump;
mod find;
mod forget;
mod info;
mod init;
mod key;
mod leases;
mod ls;
mod mount;
mod pg;
mod pg_drill;
mod pg_restore;
mod pg_status;
mod prune;
mod repair;
mod restore;
mod snapshots;
mod stats;
mod tag;
mod tenant;
pub mod wal;

use anyhow::Result;

use crate::args::Command;
use crate::context::Context;
use crate::output::outln;

pub fn run(ctx: &Context, cmd: Command) -> Result<i32> {
    match cmd {
        Command::Init(a) => init::run(ctx, a),
        Command::Tenant(a) => tenant::run(ctx, a),
        Command::Key(a) => key::run(ctx, a),
        Command::Backup(a) => backup::run(ctx, a),
        Command::Snapshots(a) => snapshots::run(ctx, a),
        Command::Ls(a) => ls::run(ctx, a),
        Command::Find(a) => find::run(ctx, a),
        Command::Mount(a) => mount::run(ctx, a),
        Command::Diff(a) => diff::run(ctx, a),
        Command::Dump(a) => dump::run(ctx, a),
        Command::Restore(a) => restore::run(ctx, a),
        Command::Stats(a) => stats::run(ctx, a),
        Command::Info(a) => info::run(ctx, a),
        Command::Cat(a) => cat::run(ctx, a),
        Command::Forget(a) => forget::run(ctx, a),
        Command::Prune(a) => prune::run(ctx, a),
        Command::Check(a) => check::run(ctx, a),
        Command::Repair(a) => repair::run(ctx, a),
        Command::Leases(a) => leases::run(ctx, a),
        Command::Tag(a) => tag::run(ctx, a),
        Command::Protect(a) => tag::protect(ctx, a, true),
        Command::Unprotect(a) => tag::protect(ctx, a, false),
        Command::Wal(a) => wal::run(ctx, a),
        Command::Pg(a) => pg::run(ctx, a),
        Command::Version => version(ctx),
        Command::Cache { cleanup, max_age } => cache::run(ctx, cleanup, max_age),
        Command::Generate { completions, man } => generate(completions, man.as_deref()),
        Command::List { kind } => list(ctx, kind),
    }
}

/// `cairn version`.
fn version(ctx: &Context) -> anyhow::Result<i32> {
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    if ctx.json() {
        crate::output::print_json(&serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "format_version": cairn_repo::format::config::FORMAT_VERSION,
            "target": target,
        }))?;
    } else {
        outln!(
            "cairn {} (repository format {}, {target})",
            env!("CARGO_PKG_VERSION"),
            cairn_repo::format::config::FORMAT_VERSION
        );
    }
    Ok(0)
}

/// `cairn list KIND`: one name per line (`--json`: one document per line).
fn list(ctx: &Context, kind: crate::args::ListKind) -> anyhow::Result<i32> {
    use crate::args::ListKind;
    use cairn_repo::backend::FileType;
    use std::io::Write;
    let repo = ctx.open()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let ft = match kind {
        ListKind::Packs => FileType::Pack,
        ListKind::Index => FileType::Index,
        ListKind::Snapshots => FileType::Snapshot,
        ListKind::Keys => FileType::Key,
        ListKind::Locks => FileType::Lock,
        ListKind::Blobs => {
            repo.for_each_indexed_blob(&mut |id, blob_kind, pack| {
                let kind = match blob_kind {
                    cairn_repo::BlobKind::Data => "data",
                    cairn_repo::BlobKind::Tree => "tree",
                    cairn_repo::BlobKind::Dict => "dict",
                };
                let line = if ctx.json() {
                    serde_json::json!({"id": id, "kind": kind, "pack": pack}).to_string()
                } else {
                    format!("{kind} {} {}", id.to_hex(), pack.to_hex())
                };
                writeln!(out, "{line}").map_err(|e| cairn_repo::Error::io("writing", e))
            })?;
            out.flush()?;
            return Ok(0);
        }
    };
    for (name, size) in repo.object_names(ft)? {
        if ctx.json() {
            writeln!(out, "{}", serde_json::json!({"name": name, "size": size}))?;
        } else {
            writeln!(out, "{name}")?;
        }
    }
    out.flush()?;
    Ok(0)
}

/// `cairn generate`: shell completions on standard output, or man pages into a folder (one
/// for `cairn` and one per command, `cairn-backup.1` and so on, nested commands included).
fn generate(
    shell: Option<clap_complete::Shell>,
    man: Option<&std::path::Path>,
) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    use clap::CommandFactory;
    let mut cmd = crate::args::Cli::command();
    if let Some(shell) = shell {
        clap_complete::generate(shell, &mut cmd, "cairn", &mut std::io::stdout());
        return Ok(0);
    }
    let Some(dir) = man else {
        anyhow::bail!("give --completions SHELL or --man DIR");
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    cmd.build();
    let mut stack: Vec<(String, clap::Command)> = vec![("cairn".to_string(), cmd)];
    let mut written = 0;
    while let Some((name, command)) = stack.pop() {
        for sub in command.get_subcommands() {
            if !sub.is_hide_set() && sub.get_name() != "help" {
                stack.push((format!("{name}-{}", sub.get_name()), sub.clone()));
            }
        }
        let page = command.clone().name(name.clone());
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        written += 1;
    }
    eprintln!("wrote {written} man pages into {}", dir.display());
    Ok(0)
}
