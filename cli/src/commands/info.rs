//! `cairn info`: an overview per profile, as pgBackRest's `info` gives per stanza: where the
//! repository is, the newest snapshot of each kind, the size, and whether all is well.
//!
//! Given a profile or a repository, it reports that one. Given neither, it reports every
//! profile of the configuration file, each by running `cairn --json info` for it in a
//! process of its own, all at once: a profile's credentials (which may be put into the environment)
//! never meet another's, and one that fails or cannot be reached does not stop the rest.
//! Exits 0 when every repository was read and is healthy; else, for one repository, the
//! code another command would exit with on the same failure (10 no repository, 12 wrong
//! credentials, 1 otherwise), and for several profiles 1.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use cairn_repo::format::snapshot::{Snapshot, SnapshotKind};
use cairn_repo::{ErrorKind, Id};
use serde::{Deserialize, Serialize};

use crate::args::InfoArgs;
use crate::context::Context;
use crate::output::{human_bytes, human_time, outln, print_json};
use crate::{UsageError, EXIT_FAILURE};

/// What `info` says about one repository; also the document a profile's process prints.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Report {
    profile: Option<String>,
    location: String,
    tenant: Option<String>,
    /// ok, problems, unreachable, wrong credentials, no repository, access denied, error
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default)]
    snapshots: Option<usize>,
    /// The newest snapshot of each kind present: files, stream, pg-basebackup, wal.
    #[serde(default)]
    newest: BTreeMap<String, Newest>,
    #[serde(default)]
    wal: Option<WalSummary>,
    #[serde(default)]
    stored_bytes: Option<u64>,
    #[serde(default)]
    packs: Option<u64>,
    /// Leases of running backups and prunes (ended ones left by crashed holders aside).
    #[serde(default)]
    leases: Option<usize>,
    #[serde(default)]
    problems: Vec<String>,
    #[serde(default)]
    warnings: Vec<String>,
    /// The exit code this report stands for (not printed).
    #[serde(skip)]
    code: i32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Newest {
    id: String,
    short_id: String,
    time: String,
    host: String,
    user: String,
    paths: Vec<String>,
    tags: Vec<String>,
    incomplete: bool,
    total_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct WalSummary {
    /// The newest archived segment of the highest timeline.
    newest_segment: Option<String>,
    timelines: usize,
    /// Segments missing between archived ones, all timelines.
    missing_segments: u64,
}

pub fn run(ctx: &Context, args: InfoArgs) -> Result<i32> {
    let reports = if args.profiles.is_empty() {
        vec![one(ctx)]
    } else {
        // At the same time: an unreachable server's retries delay no other profile.
        std::thread::scope(|scope| {
            let running: Vec<_> = args
                .profiles
                .iter()
                .map(|name| scope.spawn(move || in_child(ctx, name)))
                .collect();
            running
                .into_iter()
                .zip(&args.profiles)
                .map(|(t, name)| {
                    t.join().unwrap_or_else(|_| {
                        Err(anyhow::anyhow!("the report on profile {name} failed"))
                    })
                })
                .collect::<Result<Vec<_>>>()
        })?
    };
    for (i, r) in reports.iter().enumerate() {
        if ctx.json() {
            print_json(r)?;
        } else {
            if i > 0 {
                outln!("");
            }
            print_human(r)?;
        }
    }
    let failed = reports.iter().map(|r| r.code).find(|c| *c != 0);
    Ok(match (failed, args.profiles.is_empty()) {
        (None, _) => 0,
        (Some(code), true) => code,
        (Some(_), false) => EXIT_FAILURE,
    })
}

/// The report on the repository `ctx` names; a failure is part of the report.
fn one(ctx: &Context) -> Report {
    let mut r = Report {
        profile: ctx.global.profile.clone(),
        location: configured_location(ctx),
        tenant: ctx.global.tenant.clone(),
        status: "ok".into(),
        ..Default::default()
    };
    if let Err(e) = fill(ctx, &mut r) {
        r.status = status_of(&e).into();
        r.error = Some(crate::error_text(&e));
        r.code = crate::exit_code(&e);
        return r;
    }
    if !r.problems.is_empty() {
        r.status = "problems".into();
        r.code = EXIT_FAILURE;
    }
    r
}

/// Where the repository is, as given (a password in a URL left out).
fn configured_location(ctx: &Context) -> String {
    let given = match (&ctx.global.repo, &ctx.global.repository_file) {
        (Some(r), _) => r.clone(),
        (None, Some(f)) => format!("(from {})", f.display()),
        (None, None) => match crate::context::default_repo() {
            Ok(d) => d.repo.display().to_string(),
            Err(_) => "(default)".into(),
        },
    };
    without_userinfo(&given)
}

fn without_userinfo(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => s.to_string(),
    }
}

fn kind_name(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::Files => "files",
        SnapshotKind::Stdin | SnapshotKind::Command => "stream",
        SnapshotKind::PgBasebackup => "pg-basebackup",
        SnapshotKind::Wal => "wal",
    }
}

fn newest(id: &Id, s: &Snapshot) -> Newest {
    Newest {
        id: id.to_hex(),
        short_id: id.short(),
        time: s
            .timestamp()
            .map(|t| t.to_string())
            .unwrap_or_else(|| s.time.clone()),
        host: s.host.clone(),
        user: s.user.clone(),
        paths: s.paths.clone(),
        tags: s.tags.clone(),
        incomplete: s.incomplete,
        total_bytes: s.summary.total_bytes,
    }
}

fn fill(ctx: &Context, r: &mut Report) -> Result<()> {
    let repo = ctx.open()?;
    r.location = without_userinfo(repo.root_description());
    r.tenant = Some(repo.tenant().to_string());
    let snaps = repo.snapshots()?;
    r.snapshots = Some(snaps.len());
    let mut newest_time: BTreeMap<&str, Option<jiff::Timestamp>> = BTreeMap::new();
    for (id, s) in &snaps {
        let kind = kind_name(s.kind);
        let t = s.timestamp();
        if newest_time.get(kind).is_none_or(|seen| t >= *seen) {
            newest_time.insert(kind, t);
            r.newest.insert(kind.to_string(), newest(id, s));
        }
    }
    let packs = repo.pack_stats()?;
    r.stored_bytes = Some(packs.bytes);
    r.packs = Some(packs.packs);
    let now = jiff::Timestamp::now();
    r.leases = Some(
        cairn_repo::lease::list(&repo)?
            .iter()
            .filter(|(_, l)| l.is_live(now))
            .count(),
    );
    let has_pg = snaps
        .iter()
        .any(|(_, s)| matches!(s.kind, SnapshotKind::Wal | SnapshotKind::PgBasebackup));
    if has_pg {
        let st = cairn_repo::pg::status::status(&repo)?;
        r.wal = Some(WalSummary {
            newest_segment: st
                .timelines
                .iter()
                .max_by_key(|t| t.timeline)
                .and_then(|t| t.ranges.last())
                .map(|run| run.last.clone()),
            timelines: st.timelines.len(),
            missing_segments: st
                .timelines
                .iter()
                .flat_map(|t| t.gaps.iter().map(|g| g.count))
                .sum(),
        });
        r.problems = st.problems;
        r.warnings = st.warnings;
    }
    Ok(())
}

/// A word for what went wrong.
fn status_of(e: &anyhow::Error) -> &'static str {
    if e.chain().any(|c| c.downcast_ref::<UsageError>().is_some()) {
        return "error";
    }
    for cause in e.chain() {
        if let Some(e) = cause.downcast_ref::<cairn_repo::Error>() {
            return match e.kind() {
                ErrorKind::WrongPassword => "wrong credentials",
                ErrorKind::NotARepository => "no repository",
                ErrorKind::Io => "unreachable",
                ErrorKind::PermissionDenied => "access denied",
                _ => "error",
            };
        }
    }
    "error"
}

/// Runs `cairn --json info` for one profile and reads its report.
fn in_child(ctx: &Context, profile: &str) -> Result<Report> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.env("CAIRN_PROFILE", profile)
        .stdin(std::process::Stdio::null());
    if let Some(c) = &ctx.global.config {
        cmd.env("CAIRN_CONFIG", std::path::absolute(c)?);
    }
    if ctx.global.no_cache {
        cmd.arg("--no-cache");
    }
    cmd.args(["--json", "info"]);
    let out = cmd
        .output()
        .with_context(|| format!("running cairn info for profile {profile}"))?;
    let code = out.status.code().unwrap_or(EXIT_FAILURE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(mut r) = stdout
        .lines()
        .find_map(|l| serde_json::from_str::<Report>(l).ok())
    {
        r.code = code;
        return Ok(r);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message = stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("no report")
        .trim_start_matches("error: ")
        .to_string();
    Ok(Report {
        profile: Some(profile.to_string()),
        status: "error".into(),
        error: Some(message),
        code: if code == 0 { EXIT_FAILURE } else { code },
        ..Default::default()
    })
}

fn print_human(r: &Report) -> Result<()> {
    match &r.profile {
        Some(p) => outln!("profile {p}"),
        None => outln!("repository"),
    }
    let tenant = r
        .tenant
        .as_deref()
        .map(|t| format!("  (tenant {t})"))
        .unwrap_or_default();
    if !r.location.is_empty() {
        outln!("  location       {}{tenant}", r.location);
    }
    outln!("  status         {}", r.status);
    if let Some(e) = &r.error {
        outln!("  error          {e}");
    }
    if let Some(n) = r.snapshots {
        outln!("  snapshots      {n}");
        for kind in ["files", "stream", "pg-basebackup", "wal"] {
            let Some(s) = r.newest.get(kind) else {
                continue;
            };
            let mut line = format!(
                "  {kind:<14} {}  {}  {}",
                s.short_id,
                human_time(&s.time),
                s.host
            );
            if kind == "wal" {
                if let Some(seg) = r.wal.as_ref().and_then(|w| w.newest_segment.as_ref()) {
                    line.push_str(&format!("  newest segment {seg}"));
                }
            } else {
                line.push_str(&format!(
                    "  {}  {}",
                    human_bytes(s.total_bytes),
                    s.paths.join(" ")
                ));
            }
            if s.incomplete {
                line.push_str("  (incomplete)");
            }
            outln!("{line}");
        }
    }
    if let Some(w) = r.wal.as_ref().filter(|w| w.missing_segments > 0) {
        outln!("  wal gaps       {} segments missing", w.missing_segments);
    }
    if let (Some(b), Some(p)) = (r.stored_bytes, r.packs) {
        outln!("  stored         {} in {p} packs", human_bytes(b));
    }
    if let Some(l) = r.leases {
        outln!("  leases         {l} held");
    }
    for p in &r.problems {
        outln!("  problem        {p}");
    }
    for w in &r.warnings {
        outln!("  warning        {w}");
    }
    Ok(())
}
