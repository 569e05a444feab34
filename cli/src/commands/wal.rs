//! `cairn wal push` and `cairn wal fetch`: PostgreSQL's archive_command and restore_command.
//!
//! Exit codes follow what PostgreSQL does with them (docs/postgresql.md):
//! - push: 0 only when the file is durable in the repository; every failure is 1, never a
//!   code above 125 and never a signal, which would restart PostgreSQL's archiver and hide
//!   the failure;
//! - fetch: 0 when the whole file was written; 1 when the repository answered and holds no
//!   such file (PostgreSQL probes for files that do not exist, and 1 ends a recovery at the
//!   end of the archive); when it cannot tell (storage, keys, damage), 128, which stops a
//!   targeted recovery with an error instead of ending it early and silently losing every
//!   later commit. In standby mode (`standby.signal` in the data directory, the working
//!   directory of restore_command) it is 1, since a standby asks again.
//!
//! Both first look in the spool (`cairn_repo::pg::spool`), which can only say "done": a
//! push of a file pushed ahead with the same bytes, a fetch of a file prefetched and still
//! matching its digest. Everything else, and every failure to use the spool, goes through
//! the repository as before.

use std::path::{Path, PathBuf};

use anyhow::Result;

use cairn_repo::keys::read_key_file;
use cairn_repo::pg::prefetch::{prefetch, PrefetchLimits};
use cairn_repo::pg::push_ahead::{ready_after, AheadLimits};
use cairn_repo::pg::spool::{PushCheck, Record, Spool};
use cairn_repo::pg::wal::{self, Fetched, Pushed};
use cairn_repo::pg::WalFile;
use cairn_repo::repository::default_cache_dir;
use cairn_repo::Location;

use crate::args::WalCommand;
use crate::context::Context;
use crate::output::outln;

/// restore_command could not tell whether the file exists.
pub const EXIT_FETCH_UNKNOWN: i32 = 128;
/// Bytes a push takes ahead at most.
const AHEAD_BYTES: u64 = 256 << 20;
/// How long a fetch waits for the prefetcher to finish the file it asks for.
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Bytes the prefetcher keeps in the spool at most.
const PREFETCH_BYTES: u64 = 256 << 20;

pub fn run(ctx: &Context, cmd: WalCommand) -> Result<i32> {
    match cmd {
        WalCommand::Push { path, ahead, spool } => {
            Ok(push(ctx, &path, ahead, spool_for(ctx, spool).as_ref()))
        }
        WalCommand::Fetch {
            name,
            dest,
            prefetch,
            spool,
        } => Ok(fetch(
            ctx,
            &name,
            &dest,
            prefetch,
            spool_for(ctx, spool).as_ref(),
        )),
        WalCommand::Prefetch { spool, files } => {
            let spool = match archive_key(ctx) {
                Some(key) => Spool::new(spool).for_archive(key),
                None => Spool::new(spool),
            };
            run_prefetch(ctx, &spool, files)
        }
        WalCommand::List { timeline } => super::pg_status::list(ctx, timeline),
        WalCommand::Verify => super::pg_status::status(ctx),
        WalCommand::Merge => merge(ctx),
    }
}

/// `cairn wal merge`: every wal snapshot of the tenant merged into one.
fn merge(ctx: &Context) -> Result<i32> {
    let repo = ctx.open()?;
    let before = cairn_repo::pg::wal::Catalog::load(&repo)?.snapshots().len();
    if before <= 1 {
        if !ctx.quiet() {
            outln!("{before} wal snapshots: nothing to merge");
        }
        return Ok(0);
    }
    repo.require_deletes(
        cairn_repo::backend::FileType::Snapshot,
        "merging wal snapshots",
    )?;
    let id = cairn_repo::pg::consolidate::consolidate(&repo)?;
    if ctx.json() {
        outln!(
            "{}",
            serde_json::json!({ "merged": before, "snapshot": id.to_hex() })
        );
    } else if !ctx.quiet() {
        outln!("merged {before} wal snapshots into {}", id.short());
    }
    Ok(0)
}

/// The spool: the one given, else a folder per repository location and tenant in the cache
/// folder; either way it trusts only records written for this repository location and
/// tenant (a folder given may be shared by pushes to several repositories). Found without
/// opening the repository (that is its point), so the tenant comes from `--tenant` or the
/// key file's header. `None` when there is none to use (an in-memory repository, no cache
/// folder, an unreadable key file): everything then goes through the repository.
fn spool_for(ctx: &Context, given: Option<PathBuf>) -> Option<Spool> {
    let (repo, tenant) = archive_of(ctx)?;
    let key = Spool::archive_key(&repo, &tenant);
    if let Some(dir) = given {
        return Some(Spool::new(std::path::absolute(&dir).unwrap_or(dir)).for_archive(key));
    }
    let cache = ctx.global.cache_dir.clone().or_else(default_cache_dir)?;
    let cache = std::path::absolute(&cache).ok()?;
    Some(Spool::new(Spool::default_dir(&cache, &repo, &tenant)).for_archive(key))
}

/// The key naming this command's repository location and tenant in spool records.
fn archive_key(ctx: &Context) -> Option<String> {
    archive_of(ctx).map(|(repo, tenant)| Spool::archive_key(&repo, &tenant))
}

/// The absolute location of the local repository and the tenant, found without opening the
/// repository.
fn archive_of(ctx: &Context) -> Option<(String, String)> {
    let (location, default) = ctx.location().ok()?;
    let Location::Local(repo) = location else {
        return None;
    };
    let tenant = match (&ctx.global.tenant, &ctx.global.key_file) {
        (Some(t), _) => t.clone(),
        (None, Some(kf)) => read_key_file(kf).ok()?.0,
        (None, None) => match default.filter(|d| d.key_file.exists()) {
            Some(d) => read_key_file(&d.key_file).ok()?.0,
            None => ctx.tenant(),
        },
    };
    let repo = std::path::absolute(&repo).ok()?;
    Some((repo.to_string_lossy().into_owned(), tenant))
}

fn push(ctx: &Context, path: &Path, ahead: usize, spool: Option<&Spool>) -> i32 {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some(spool) = spool {
        if pushed_before(spool, name, path) {
            return 0;
        }
    }
    let limits = AheadLimits {
        files: if spool.is_some() { ahead } else { 0 },
        bytes: AHEAD_BYTES,
    };
    let result = ctx.open().and_then(|repo| {
        let extras = ready_after(path, limits, |n| {
            spool.is_some_and(|s| s.has_push_record(n))
        });
        wal::push_with_ahead(&repo, path, &extras).map_err(anyhow::Error::from)
    });
    match result {
        Ok(report) => {
            match report.pushed {
                Pushed::Stored { snapshot, bytes } => tracing::info!(
                    "archived {} ({bytes} bytes) in snapshot {}",
                    path.display(),
                    snapshot.short()
                ),
                Pushed::AlreadyArchived { snapshot } => tracing::info!(
                    "{} was archived before with the same content (snapshot {})",
                    path.display(),
                    snapshot.short()
                ),
            }
            if let Some(spool) = spool {
                spool.forget_pushed(name);
                // The snapshot is saved: these files are durable, and may be recorded.
                for a in &report.ahead {
                    let record = Record {
                        name: a.name.clone(),
                        size: a.size,
                        digest: a.digest,
                        snapshot: Some(a.snapshot),
                    };
                    match spool.record_pushed(&record) {
                        Ok(()) => tracing::info!("archived {} ahead", a.name),
                        Err(e) => tracing::warn!("cannot record {} as pushed ahead: {e}", a.name),
                    }
                }
                spool.clean_pushed();
            }
            0
        }
        Err(e) => {
            eprintln!(
                "error: cairn wal push {}: {}",
                path.display(),
                crate::error_text(&e)
            );
            1
        }
    }
}

/// Whether the spool records `name` as archived with the bytes at `path` (then the record,
/// whose work is done, is removed). Any other answer leaves the decision to the repository.
fn pushed_before(spool: &Spool, name: &str, path: &Path) -> bool {
    match spool.check_pushed(name, path) {
        Ok(PushCheck::Archived(r)) => {
            spool.forget_pushed(name);
            tracing::info!(
                "{} was archived ahead (snapshot {})",
                path.display(),
                r.snapshot.map(|s| s.short()).unwrap_or_default()
            );
            true
        }
        Ok(PushCheck::NoRecord) => false,
        Ok(PushCheck::Damaged) => {
            tracing::warn!("the spool's record of {name} is damaged; asking the repository");
            spool.forget_pushed(name);
            false
        }
        Ok(PushCheck::OtherArchive) => {
            tracing::info!(
                "the spool's record of {name} was written for another repository or tenant; asking the repository"
            );
            false
        }
        Ok(PushCheck::Differs) => {
            tracing::warn!(
                "{} differs from what was archived ahead under its name; asking the repository",
                path.display()
            );
            false
        }
        Err(e) => {
            tracing::warn!("cannot use the spool ({e}); asking the repository");
            false
        }
    }
}

fn fetch(ctx: &Context, name: &str, dest: &Path, ahead: usize, spool: Option<&Spool>) -> i32 {
    if let Some(spool) = spool {
        match from_spool(spool, name, dest) {
            Ok(Some(bytes)) => {
                tracing::info!("restored {name} ({bytes} bytes) from the spool");
                start_prefetch(ctx, spool, name, bytes, ahead);
                return 0;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot use the spool ({e}); asking the repository"),
        }
    }
    let result = ctx
        .open()
        .and_then(|repo| wal::fetch(&repo, name, dest).map_err(anyhow::Error::from));
    match result {
        Ok(Fetched::Written { bytes }) => {
            tracing::info!("restored {name} ({bytes} bytes)");
            if let Some(spool) = spool {
                start_prefetch(ctx, spool, name, bytes, ahead);
            }
            0
        }
        Ok(Fetched::Absent) => {
            tracing::info!("{name} is not in the archive");
            1
        }
        Err(e) => {
            let standby = in_standby();
            eprintln!(
                "error: cairn wal fetch {name}: {} ({})",
                crate::error_text(&e),
                if standby {
                    "standby mode: PostgreSQL asks again"
                } else {
                    "recovery stops here rather than end before the archive does"
                }
            );
            if standby {
                1
            } else {
                EXIT_FETCH_UNKNOWN
            }
        }
    }
}

/// Whether restore_command runs for a standby (`standby.signal` in its working directory,
/// the data directory).
fn in_standby() -> bool {
    std::path::Path::new("standby.signal").exists()
}

/// The exit code of a fetch that cannot tell whether the file exists: 128, or 1 in standby
/// mode (a standby asks again).
pub fn fetch_unknown_exit() -> i32 {
    if in_standby() {
        1
    } else {
        EXIT_FETCH_UNKNOWN
    }
}

/// The prefetched file `name` moved to `dest`, when the spool has it whole and matching.
/// When the prefetcher is writing it right now, waits (a bounded time) for it rather than
/// read the same blobs from the repository beside it.
fn from_spool(spool: &Spool, name: &str, dest: &Path) -> cairn_repo::Result<Option<u64>> {
    let cluster = data_dir_system_id();
    if let Some(bytes) = spool.take_fetched(name, dest, cluster)? {
        return Ok(Some(bytes));
    }
    let deadline = std::time::Instant::now() + IN_FLIGHT_WAIT;
    while spool.in_flight(name) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    spool.take_fetched(name, dest, cluster)
}

/// The system identifier of the cluster whose data directory is the working directory
/// (restore_command runs there): the first field of `global/pg_control`, in the machine's
/// byte order. `None` when there is no such file.
fn data_dir_system_id() -> Option<u64> {
    use std::io::Read;
    let mut first = [0u8; 8];
    std::fs::File::open("global/pg_control")
        .and_then(|mut f| f.read_exact(&mut first))
        .ok()?;
    Some(u64::from_ne_bytes(first))
}

/// Notes `name` as the last one asked for and starts a detached prefetcher for the segments
/// after it. The fetch's answer never depends on this: a failure is only logged.
fn start_prefetch(ctx: &Context, spool: &Spool, name: &str, size: u64, ahead: usize) {
    if ahead == 0 || !matches!(WalFile::parse(name), Ok(WalFile::Segment(_))) {
        return;
    }
    if let Err(e) = spool.set_wanted(name, size) {
        tracing::warn!("cannot prefetch: {e}");
        return;
    }
    if let Err(e) = spawn_prefetcher(ctx, spool.dir(), ahead) {
        tracing::warn!("cannot start the prefetcher: {e}");
    }
}

/// Starts `cairn wal prefetch` in a session of its own, with no standard streams, and does
/// not wait for it. It gets this command's global options through the environment (those it
/// inherited, overridden by the ones given on the command line) and keeps the working
/// directory, so relative paths mean the same; it writes only into the spool.
#[allow(unsafe_code)]
fn spawn_prefetcher(ctx: &Context, spool: &Path, ahead: usize) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let g = &ctx.global;
    let mut cmd = Command::new(std::env::current_exe()?);
    let vars: [(&str, Option<std::ffi::OsString>); 13] = [
        ("CAIRN_CONFIG", g.config.clone().map(Into::into)),
        ("CAIRN_PROFILE", g.profile.clone().map(Into::into)),
        ("CAIRN_REPOSITORY", g.repo.clone().map(Into::into)),
        (
            "CAIRN_REPOSITORY_FILE",
            g.repository_file.clone().map(Into::into),
        ),
        ("CAIRN_TLS_CA", g.tls_ca.clone().map(Into::into)),
        ("CAIRN_TENANT", g.tenant.clone().map(Into::into)),
        (
            "CAIRN_PASSWORD_FILE",
            g.password_file.clone().map(Into::into),
        ),
        (
            "CAIRN_PASSWORD_COMMAND",
            g.password_command.clone().map(Into::into),
        ),
        (
            "CAIRN_PASSWORD_COMMAND_TIMEOUT",
            g.password_command_timeout.map(|t| t.to_string().into()),
        ),
        ("CAIRN_KEY_FILE", g.key_file.clone().map(Into::into)),
        ("CAIRN_CACHE_DIR", g.cache_dir.clone().map(Into::into)),
        ("CAIRN_LEASE_TTL", g.lease_ttl.map(|t| t.to_string().into())),
        ("CAIRN_KDF_PARAMS", g.kdf_params.clone().map(Into::into)),
    ];
    for (var, value) in vars {
        if let Some(v) = value {
            cmd.env(var, v);
        }
    }
    if g.no_cache {
        cmd.arg("--no-cache");
    }
    cmd.args(["wal", "prefetch", "--spool"])
        .arg(spool)
        .arg("--files")
        .arg(ahead.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Not waited for: it outlives this process and is reaped by init.
    cmd.spawn().map(drop)
}

fn run_prefetch(ctx: &Context, spool: &Spool, files: usize) -> Result<i32> {
    let limits = PrefetchLimits {
        files,
        bytes: PREFETCH_BYTES,
    };
    // Another prefetcher at work: it follows the same note, so there is nothing to do.
    if spool.try_lock_prefetch()?.is_none() {
        return Ok(0);
    }
    let repo = ctx.open()?;
    let done = prefetch(&repo, spool, limits)?;
    tracing::info!("prefetched {} files", done.files.len());
    Ok(0)
}
