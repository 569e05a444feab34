//! Applying the selected profile of the configuration file ([`crate::config`]) to the parsed
//! command line.
//!
//! Precedence: command line > environment variable > profile > built-in default. clap has
//! already filled the options from the command line and their environment variables, so a
//! profile only fills what is still unset. Options that work as a group are filled as a
//! group: the repository (`repo`, `repository_file`) and the credentials (`key_file`,
//! `password_file`, `password_command`, and CAIRN_PASSWORD) come from the profile only when
//! none of the group was given otherwise, so that a profile's key file never wins over a
//! password file given on the command line. Excludes given both ways are joined; `forget` takes the profile's retention only when its command line names neither
//! snapshots nor `--keep-*` rules.

use anyhow::Result;

use crate::args::{BackupArgs, Cli, Command, ForgetArgs, Global, WalCommand};
use crate::config::{self, Profile};
use crate::pg_args::PgCommand;

/// Loads the configuration and applies the selected profile to `cli`. Must run before any
/// thread starts: credentials from the profile are put into the environment, where the
/// storage code and child processes (the WAL prefetcher) read them.
///
/// `cairn info` given neither a profile nor a repository gets the names of every profile
/// instead, to show each in a process of its own.
pub fn apply(cli: &mut Cli) -> Result<()> {
    // Commands that use no repository work whatever the files say.
    if matches!(cli.command, Command::Version | Command::Generate { .. }) {
        return Ok(());
    }
    // An empty CAIRN_PROFILE or CAIRN_CONFIG (a way to unset one in a unit file) is unset.
    let g = &mut cli.global;
    g.profile = g.profile.take().filter(|p| !p.is_empty());
    g.config = g.config.take().filter(|c| !c.as_os_str().is_empty());
    let config = config::load(cli.global.config.as_deref())?;
    let g = &cli.global;
    let nothing_named = g.profile.is_none() && g.repo.is_none() && g.repository_file.is_none();
    if let Command::Info(info) = &mut cli.command {
        if nothing_named && !config.profiles.is_empty() {
            info.profiles = config.names();
            return Ok(());
        }
    }
    let Some((name, profile)) = config.select(cli.global.profile.as_deref())? else {
        return Ok(());
    };
    fill_global(&mut cli.global, &profile);
    set_credentials(&profile);
    fill_command(&mut cli.command, &profile);
    cli.global.profile = Some(name);
    Ok(())
}

fn fill<T: Clone>(slot: &mut Option<T>, from: &Option<T>) {
    if slot.is_none() {
        slot.clone_from(from);
    }
}

fn fill_global(g: &mut Global, p: &Profile) {
    if g.repo.is_none() && g.repository_file.is_none() {
        g.repo.clone_from(&p.repo);
        g.repository_file.clone_from(&p.repository_file);
    }
    let credentials_given = g.key_file.is_some()
        || g.password_file.is_some()
        || g.password_command.is_some()
        || std::env::var_os("CAIRN_PASSWORD").is_some();
    if !credentials_given {
        g.key_file.clone_from(&p.key_file);
        g.password_file.clone_from(&p.password_file);
        g.password_command.clone_from(&p.password_command);
    }
    fill(&mut g.password_command_timeout, &p.password_command_timeout);
    fill(&mut g.tenant, &p.tenant);
    fill(&mut g.tls_ca, &p.tls_ca);
    fill(&mut g.cache_dir, &p.cache_dir);
    fill(&mut g.lease_ttl, &p.lease_ttl);
}

/// Remote credentials go where the rest of the program (and child processes) look for
/// them: the environment, unless it has them already.
fn set_credentials(p: &Profile) {
    for (var, value) in [
        ("CAIRN_REST_USERNAME", &p.rest_username),
        ("CAIRN_REST_PASSWORD", &p.rest_password),
        ("AWS_ACCESS_KEY_ID", &p.aws_access_key_id),
        ("AWS_SECRET_ACCESS_KEY", &p.aws_secret_access_key),
        ("AWS_SESSION_TOKEN", &p.aws_session_token),
        ("AWS_REGION", &p.aws_region),
    ] {
        if let Some(v) = value {
            if std::env::var_os(var).is_none() {
                // Single-threaded still (see `apply`).
                std::env::set_var(var, v);
            }
        }
    }
}

fn fill_command(command: &mut Command, p: &Profile) {
    match command {
        Command::Backup(a) => fill_backup(a, p),
        Command::Forget(a) => fill_forget(a, p),
        Command::Wal(WalCommand::Push { spool, .. } | WalCommand::Fetch { spool, .. }) => {
            fill(spool, &p.pg.wal_spool);
        }
        Command::Pg(PgCommand::Basebackup(a)) => {
            fill(&mut a.pghost, &p.pg.host);
            fill(&mut a.pgport, &p.pg.port);
            fill(&mut a.pguser, &p.pg.user);
            fill(&mut a.dbname, &p.pg.dbname);
            fill(&mut a.pg_bin, &p.pg.bin);
        }
        Command::Pg(PgCommand::Drill(a)) => fill(&mut a.pg_bin, &p.pg.bin),
        _ => {}
    }
}

fn fill_backup(a: &mut BackupArgs, p: &Profile) {
    let b = &p.backup;
    a.exclude.extend(b.exclude.iter().cloned());
    a.iexclude.extend(b.iexclude.iter().cloned());
    a.exclude_file.extend(b.exclude_file.iter().cloned());
    a.exclude_if_present
        .extend(b.exclude_if_present.iter().cloned());
    a.exclude_caches |= b.exclude_caches.unwrap_or(false);
    a.one_file_system |= b.one_file_system.unwrap_or(false);
    fill(&mut a.exclude_larger_than, &b.exclude_larger_than);
}

/// Whether the command line of `forget` says what to remove.
fn forget_given(a: &ForgetArgs) -> bool {
    !a.snapshots.is_empty()
        || !a.keep_tag.is_empty()
        || [
            a.keep_last,
            a.keep_hourly,
            a.keep_daily,
            a.keep_weekly,
            a.keep_monthly,
            a.keep_yearly,
        ]
        .iter()
        .any(Option::is_some)
        || [
            &a.keep_within,
            &a.keep_within_hourly,
            &a.keep_within_daily,
            &a.keep_within_weekly,
            &a.keep_within_monthly,
            &a.keep_within_yearly,
            &a.keep_within_pitr,
        ]
        .iter()
        .any(|v| v.is_some())
}

fn fill_forget(a: &mut ForgetArgs, p: &Profile) {
    if forget_given(a) {
        return;
    }
    let r = p.retention.clone();
    a.keep_last = r.keep_last;
    a.keep_hourly = r.keep_hourly;
    a.keep_daily = r.keep_daily;
    a.keep_weekly = r.keep_weekly;
    a.keep_monthly = r.keep_monthly;
    a.keep_yearly = r.keep_yearly;
    a.keep_within = r.keep_within;
    a.keep_within_hourly = r.keep_within_hourly;
    a.keep_within_daily = r.keep_within_daily;
    a.keep_within_weekly = r.keep_within_weekly;
    a.keep_within_monthly = r.keep_within_monthly;
    a.keep_within_yearly = r.keep_within_yearly;
    a.keep_within_pitr = r.keep_within_pitr;
    a.keep_tag = r.keep_tag;
}
