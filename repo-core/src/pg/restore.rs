//! `cairn pg restore`: a base backup written into an empty data directory, set up so that a
//! plain `pg_ctl start` replays archived WAL to the target (docs/postgresql.md).
//!
//! Order, and why:
//! 1. Choose the base backup and check the archive before anything is written
//!    (`archive_check`): the one given, or the newest complete one that stopped before the
//!    target and whose recovery the archive carries to the target along the target
//!    timeline without a gap (for a time target, up to a segment written after that time,
//!    so recovery can see that the target was passed; for the end of the archive, with no
//!    archived WAL cut off by a gap). A restore that could only stop early is refused with
//!    the first missing segment named.
//! 3. Refuse a data directory that is not empty: nothing of an existing cluster is touched.
//!    The one exception is a directory holding an interrupted restore of the same base
//!    backup (its marker, see `restorer`), which this restore finishes: its `pg_control`,
//!    if the interrupted run got that far, is removed first, so that it is again written
//!    last.
//! 4. Restore every file but `global/pg_control`, flush the file system, then restore
//!    `pg_control` and flush again: a restore interrupted before the end leaves a directory
//!    PostgreSQL refuses to start, never a cluster that starts on half its files.
//! 5. Append the recovery settings to `postgresql.auto.conf` and create `recovery.signal`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use super::archive_check::{choose, Choice, WalReach};
use super::target::{recovery_settings, replace_recovery_settings, Action, Target};
use crate::error::{Error, ErrorKind, Result};
use crate::format::snapshot::PgInfo;
use crate::id::Id;
use crate::progress::Progress;
use crate::repository::Repository;
use crate::restorer::{self, RestoreOptions};
use crate::walk::Excludes;

/// The most of an existing postgresql.auto.conf a restore reads (it is a few lines).
const MAX_AUTO_CONF: u64 = 1 << 20;
/// The control file, restored last.
const PG_CONTROL: &str = "/global/pg_control";

#[derive(Debug, Clone, Default)]
pub struct PgRestoreOptions {
    pub target: Target,
    /// Restore this base backup instead of choosing one.
    pub snapshot: Option<Id>,
    pub action: Action,
    /// `recovery_target_timeline`: `latest`, `current` or a number.
    pub timeline: String,
    /// Stop just before the target instead of just after.
    pub exclusive: bool,
    /// The program and global options restore_command runs (`wal fetch %f %p` is added).
    /// When a restore runs as root, the cluster's owner must be able to read the program
    /// and a `--key-file` or `--password-file` it names, or recovery would stop at its
    /// first fetch: that is checked before anything is written.
    pub command: Vec<String>,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct PgRestored {
    pub snapshot: Id,
    pub base: PgInfo,
    pub files: u64,
    pub bytes: u64,
    /// What the archive holds for this recovery.
    pub wal: WalReach,
    pub duration_secs: f64,
}

/// Restores a base backup into `pgdata` for recovery to `opts.target`.
pub fn restore(
    repo: &Repository,
    pgdata: &Path,
    opts: &PgRestoreOptions,
    progress: &dyn Progress,
) -> Result<PgRestored> {
    let started = Instant::now();
    let Choice { id, snapshot, wal } =
        choose(repo, &opts.target, &opts.timeline, opts.snapshot.as_ref())?;
    let base = snapshot.pg.clone().unwrap_or_default();
    if crate::sys::is_root() {
        check_owner_can_fetch(repo, &snapshot, &fetch_needs(&opts.command))?;
    }
    if prepare_dir(pgdata, &id)? {
        remove_control(pgdata)?;
    }

    // The in-progress marker stays until the recovery settings are written too, so that a
    // restore interrupted at any step is finished by running it again.
    let all_but_control = RestoreOptions {
        exclude: Excludes::new(&[PG_CONTROL.to_string()], &[])?,
        keep_marker: true,
        ..RestoreOptions::default()
    };
    let first = restorer::restore(repo, &id, pgdata, &all_but_control, progress)?;
    sync_fs(pgdata)?;
    let control = RestoreOptions {
        include: Some(Excludes::new(&[PG_CONTROL.to_string()], &[])?),
        overwrite: restorer::Overwrite::IfChanged,
        keep_marker: true,
        ..RestoreOptions::default()
    };
    let second = restorer::restore(repo, &id, pgdata, &control, progress)?;
    if !pgdata.join("global/pg_control").is_file() {
        return Err(Error::corrupt(format!(
            "base backup {} holds no global/pg_control",
            id.short()
        )));
    }
    write_recovery(pgdata, opts)?;
    give_to_cluster_owner(pgdata)?;
    sync_fs(pgdata)?;
    restorer::remove_marker(pgdata)?;
    Ok(PgRestored {
        snapshot: id,
        base,
        files: first.files + second.files,
        bytes: first.bytes_written + second.bytes_written,
        wal,
        duration_secs: started.elapsed().as_secs_f64(),
    })
}

/// Creates `dir` (owner only, as PostgreSQL requires) or accepts it when empty, or when it
/// holds an interrupted restore of the same base backup (which this one then finishes).
/// Returns whether it finishes an interrupted restore.
fn prepare_dir(dir: &Path, snapshot: &Id) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                match restorer::interrupted_restore(dir)? {
                    // A server that has run here (or runs) writes these; no base backup
                    // holds them. Restoring under it would corrupt what it wrote.
                    Some(other) if other == *snapshot => {
                        return match ["postmaster.pid", "postmaster.opts"]
                            .iter()
                            .find(|f| dir.join(f).exists())
                        {
                            None => Ok(true),
                            Some(f) => Err(Error::new(
                                ErrorKind::AlreadyExists,
                                format!(
                                    "{} holds an interrupted restore, but PostgreSQL has run in it since ({f} is there): nothing was touched; move the folder aside and restore again",
                                    dir.display()
                                ),
                            )),
                        };
                    }
                    Some(other) => {
                        return Err(Error::new(
                            ErrorKind::AlreadyExists,
                            format!(
                                "{} holds an interrupted restore of base backup {}, not of {}: restore that one again to finish it, or move the folder aside",
                                dir.display(),
                                other.short(),
                                snapshot.short()
                            ),
                        ))
                    }
                    None => {}
                }
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!(
                        "{} is not empty: a restore writes only into an empty data directory (move the old one aside first)",
                        dir.display()
                    ),
                ));
            }
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| Error::io(format!("setting the mode of {}", dir.display()), e))?;
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map(|()| false)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e)),
        Err(e) => Err(Error::io(format!("reading {}", dir.display()), e)),
    }
}

/// When finishing an interrupted restore, removes a `pg_control` it may have written, so
/// that the files restored now are all in place before it is.
fn remove_control(pgdata: &Path) -> Result<()> {
    let control = pgdata.join(PG_CONTROL.trim_start_matches('/'));
    match std::fs::remove_file(&control) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", control.display()), e)),
    }
}

/// PostgreSQL starts only in a data directory its own user owns. When a restore runs as
/// root, the directory it created takes the owner of the restored files (`PG_VERSION`'s);
/// so do the files this restore wrote itself.
fn give_to_cluster_owner(pgdata: &Path) -> Result<()> {
    if !crate::sys::is_root() {
        return Ok(());
    }
    let meta = std::fs::metadata(pgdata.join("PG_VERSION"))
        .map_err(|e| Error::io(format!("reading {}/PG_VERSION", pgdata.display()), e))?;
    let owner = (
        Some(std::os::unix::fs::MetadataExt::uid(&meta)),
        Some(std::os::unix::fs::MetadataExt::gid(&meta)),
    );
    for p in [
        pgdata.to_path_buf(),
        pgdata.join("postgresql.auto.conf"),
        pgdata.join("recovery.signal"),
    ] {
        std::os::unix::fs::chown(&p, owner.0, owner.1)
            .map_err(|e| Error::io(format!("giving {} to the cluster's owner", p.display()), e))?;
    }
    Ok(())
}

/// The files a fetch command reads: the program, and a key or password file.
fn fetch_needs(command: &[String]) -> Vec<std::path::PathBuf> {
    let mut needs: Vec<std::path::PathBuf> = command
        .first()
        .map(std::path::PathBuf::from)
        .into_iter()
        .collect();
    for pair in command.windows(2) {
        if pair[0] == "--key-file" || pair[0] == "--password-file" {
            needs.push(std::path::PathBuf::from(&pair[1]));
        }
    }
    needs
}

/// Refuses a restore whose restore_command the cluster's owner (the owner of the base
/// backup's `PG_VERSION`) could not run: a program or key file it cannot reach. Checked from
/// the mode bits of each file and the folders above it (supplementary groups are not
/// considered, so a file reachable only through one is refused too; give it to the owner).
fn check_owner_can_fetch(
    repo: &Repository,
    snapshot: &crate::format::snapshot::Snapshot,
    needs: &[std::path::PathBuf],
) -> Result<()> {
    let Some(version) = repo.resolve_path(&snapshot.tree, b"PG_VERSION")? else {
        return Ok(());
    };
    let (uid, gid) = (version.uid, version.gid);
    if uid == 0 {
        return Ok(());
    }
    for path in needs {
        if let Err(why) = reachable(path, uid, gid) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "PostgreSQL's restore_command runs as the cluster's owner (uid {uid}), who cannot read {}: {why}. \
                     Nothing was restored; put it where that user can read it (a key file must be the user's own, mode 0600), \
                     or run the restore as that user",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `uid`/`gid` can read `path` (and search every folder above it), by mode bits.
fn reachable(path: &Path, uid: u32, gid: u32) -> std::result::Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let allowed = |meta: &std::fs::Metadata, bit: u32| {
        let mode = meta.mode();
        if meta.uid() == uid {
            mode & (bit << 6) != 0
        } else if meta.gid() == gid {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        }
    };
    let abs = std::path::absolute(path).map_err(|e| e.to_string())?;
    for dir in abs.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !allowed(&meta, 0o1) {
            return Err(format!("it cannot enter {}", dir.display()));
        }
    }
    let meta = std::fs::metadata(&abs).map_err(|e| e.to_string())?;
    if !allowed(&meta, 0o4) {
        return Err("it cannot read the file".to_string());
    }
    Ok(())
}

/// Flushes the file system holding `dir`.
fn sync_fs(dir: &Path) -> Result<()> {
    let f =
        std::fs::File::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
    nix::unistd::syncfs(&f).map_err(|e| {
        Error::io(
            format!("flushing {}", dir.display()),
            std::io::Error::from_raw_os_error(e as i32),
        )
    })
}

/// Adds the recovery settings to `postgresql.auto.conf` and creates `recovery.signal`.
fn write_recovery(pgdata: &Path, opts: &PgRestoreOptions) -> Result<()> {
    let text = recovery_settings(
        &opts.command,
        &opts.target,
        opts.action,
        &opts.timeline,
        opts.exclusive,
    );
    // The file is rewritten whole (under a temporary name, then renamed): an earlier
    // restore's recovery settings in it are commented out, the rest kept.
    let conf = pgdata.join("postgresql.auto.conf");
    let old = match std::fs::File::open(&conf) {
        Ok(f) => {
            let len = f
                .metadata()
                .map_err(|e| Error::io(format!("reading {}", conf.display()), e))?
                .len();
            if len > MAX_AUTO_CONF {
                return Err(Error::corrupt(format!(
                    "{} is {len} bytes, more than a settings file holds",
                    conf.display()
                )));
            }
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_AUTO_CONF), &mut text)
                .map_err(|e| Error::io(format!("reading {}", conf.display()), e))?;
            text
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(format!("reading {}", conf.display()), e)),
    };
    let tmp = pgdata.join("postgresql.auto.conf.cairn-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(format!("opening {}", tmp.display()), e))?;
    f.write_all(replace_recovery_settings(&old, &text).as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &conf))
        .map_err(|e| Error::io(format!("writing {}", conf.display()), e))?;
    let signal = pgdata.join("recovery.signal");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&signal)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("creating {}", signal.display()), e))
}
