//! The `cairn` command-line client. Each command lives in `commands/<name>.rs`; the library
//! (`cairn-repo`) does the work.
//!
//! Exit codes:
//! - 0: success
//! - 1: failure (nothing was committed by a failed backup)
//! - 2: invalid command line, or a configuration file error
//! - 3: backup saved, but some files could not be read (the snapshot is marked incomplete)
//! - 10: the repository does not exist or is not a Cairn repository
//! - 12: wrong password or key
//!
//! Options not given on the command line or in the environment may come from a profile of
//! the configuration file (`config.rs`, applied by `profile.rs` before anything else runs).
//!
//! A closed standard output (`cairn snapshots | head -1`) ends any command quietly with 0:
//! see [`exit_quietly_when_stdout_closes`] and [`output::outln`].

mod args;
mod commands;
mod config;
mod context;
mod examples;
mod interrupt;
mod mount;
mod output;
mod password;
mod pg_args;
mod profile;
mod progress_bar;
mod restic_p;
mod zip;

use std::io::IsTerminal;

use clap::Parser;

pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_INCOMPLETE: i32 = 3;
pub const EXIT_NO_REPOSITORY: i32 = 10;
pub const EXIT_WRONG_PASSWORD: i32 = 12;

pub const EXIT_USAGE: i32 = 2;

/// A bad option value found after parsing (a size, a duration, a pattern): exit 2, as for
/// the command line errors clap finds itself.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Fails with a [`UsageError`] (exit 2).
#[macro_export]
macro_rules! bail_usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::UsageError(format!($($arg)*))))
    };
}

pub(crate) fn exit_code(err: &anyhow::Error) -> i32 {
    if err
        .chain()
        .any(|c| c.downcast_ref::<UsageError>().is_some())
    {
        return EXIT_USAGE;
    }
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<cairn_repo::Error>() {
            return match e.kind() {
                cairn_repo::ErrorKind::NotARepository => EXIT_NO_REPOSITORY,
                cairn_repo::ErrorKind::WrongPassword => EXIT_WRONG_PASSWORD,
                _ => EXIT_FAILURE,
            };
        }
    }
    EXIT_FAILURE
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes, each piece once. A `cairn_repo::Error` shows its source after
/// its message, and so do many other errors; printing every cause of the chain as well would
/// repeat them ("... (os error 2): ... (os error 2)"). A cause whose text the text before it
/// already ends with has been shown.
pub(crate) fn error_text(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|last| last.ends_with(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// Rust ignores SIGPIPE, so a write to a closed pipe returns EPIPE, which `println!` turns
/// into a panic and other writers into errors far from the output. Instead, SIGPIPE runs this
/// handler: when standard output is the pipe that has no reader any more, the command has
/// nowhere left to report to and ends with 0 at once, whatever was writing (a command's own
/// lines, a tar stream, a library). A SIGPIPE from any other pipe or socket returns here and
/// the write fails with EPIPE as before, to be handled as an error where it happened.
#[allow(unsafe_code)]
fn exit_quietly_when_stdout_closes() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    use libc::__errno_location as errno_location;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    use libc::__error as errno_location;
    extern "C" fn on_sigpipe(_: libc::c_int) {
        // SAFETY: only async-signal-safe calls (poll, _exit); errno is restored for the
        // interrupted code.
        unsafe {
            let errno = *errno_location();
            let mut fd = libc::pollfd {
                fd: libc::STDOUT_FILENO,
                events: libc::POLLOUT,
                revents: 0,
            };
            if libc::poll(&mut fd, 1, 0) == 1 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                libc::_exit(0);
            }
            *errno_location() = errno;
        }
    }
    // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C" fn(c_int)` as
    // SA_SIGINFO is not set; this runs before any other thread exists.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigpipe as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGPIPE, &action, std::ptr::null_mut());
    }
}

/// Colour in log lines only on a terminal, and never when NO_COLOR is set (no-color.org).
fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// glibc gives every thread that allocates its own malloc arena; with the rayon, tokio and
/// upload threads that fragments memory and inflates the peak RSS of a backup by about 40%.
/// Two arenas keep memory flat at no measurable cost in speed (docs/performance.md).
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any other thread
    // exists, and M_ARENA_MAX accepts any positive value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The command line. A usage error exits 2, except for `wal fetch`: PostgreSQL takes any
/// exit code below 126 from restore_command for "no such file" and would end recovery there
/// (promoting the cluster without the rest of the archive), so a restore_command it cannot
/// even parse exits as one that cannot tell ([`commands::wal::fetch_unknown_exit`]).
fn parse_args() -> args::Cli {
    match args::Cli::try_parse_from(restic_p::with_restic_p(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => {
            let words: Vec<String> = std::env::args().skip(1).collect();
            let is_fetch = words.windows(2).any(|w| w[0] == "wal" && w[1] == "fetch");
            if is_fetch && e.use_stderr() {
                let _ = e.print();
                std::process::exit(commands::wal::fetch_unknown_exit());
            }
            e.exit()
        }
    }
}

/// The command's name, for the line an interrupted command prints.
fn command_name(command: &args::Command) -> &'static str {
    use args::Command as C;
    match command {
        C::Backup(_) => "the backup",
        C::Restore(_) => "the restore",
        C::Prune(_) => "the prune",
        C::Forget(_) => "forget",
        C::Check(_) => "the check",
        C::Pg(_) => "the PostgreSQL command",
        _ => "the command",
    }
}

fn main() {
    limit_malloc_arenas();
    let mut cli = parse_args();
    // `-p FILE` is given on the command line, so it wins over CAIRN_PASSWORD_FILE.
    if let Some(file) = cli.password_file_short.take() {
        cli.global.password_file = Some(file);
    }
    // Before any thread starts: a profile may set credentials in the environment.
    if let Err(e) = profile::apply(&mut cli) {
        eprintln!("error: {}", error_text(&e));
        // PostgreSQL takes a restore_command's 2 for "no such file" (see parse_args), and
        // `wal push` exits 1 on every failure.
        std::process::exit(match cli.command {
            args::Command::Wal(args::WalCommand::Fetch { .. }) => {
                commands::wal::fetch_unknown_exit()
            }
            args::Command::Wal(_) => EXIT_FAILURE,
            _ => exit_code(&e),
        });
    }
    // Before any thread starts (see interrupt.rs). WAL commands answer PostgreSQL, which
    // handles their signals itself, and a drill stops its own server on them.
    match &cli.command {
        args::Command::Wal(_) | args::Command::Pg(pg_args::PgCommand::Drill(_)) => {}
        // A mount unmounts on them and exits 0.
        args::Command::Mount(_) => interrupt::block_signals(),
        command => {
            interrupt::exit_130_on_signals(command_name(command));
        }
    }
    // A WAL command's exit code is its whole answer to PostgreSQL: a closed stdout must
    // never turn a failed or unfinished push into 0.
    if !matches!(cli.command, args::Command::Wal(_)) {
        exit_quietly_when_stdout_closes();
    }
    // -v and -vv are for what a command does (phases, decisions, a line per file); the
    // libraries' own debug logs come only with CAIRN_LOG (e.g. CAIRN_LOG=debug).
    let level = match (cli.global.quiet, cli.global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, _) => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                // fuser's own warnings (an unmount from outside, requests a read-only
                // mount does not answer) are not the user's concern.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(format!("{level},fuser=error"))
                }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour_on_stderr())
        .without_time()
        .with_target(false)
        .init();
    let ctx = context::Context {
        global: cli.global.clone(),
    };
    let code = match commands::run(&ctx, cli.command) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            exit_code(&e)
        }
    };
    std::process::exit(code);
}
