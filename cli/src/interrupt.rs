//! Ctrl-C (SIGINT), SIGTERM and SIGHUP: one line saying what was interrupted and that the
//! repository is consistent, the progress line cleared, this process's leases removed, and
//! exit code 130, as restic does.
//!
//! Why the repository is consistent: every command writes in an order that makes each step
//! complete on its own (packs, then index files, then the snapshot; a prune's condemned record
//! before any delete), so stopping between any two writes leaves nothing referenced that is
//! missing. What an interrupted backup stored but no snapshot names is removed by the next
//! prune; an interrupted prune is simply run again.
//!
//! The signals are blocked in the main thread before any other thread starts, so every
//! thread inherits the block and only the waiting thread here receives them. Programs
//! started later (pg_basebackup, a password command) start with no signal blocked: the
//! standard library resets the mask in the child.

use std::io::IsTerminal;

use nix::sys::signal::{SigSet, Signal};

/// Installs the handler for a command described as `what` (e.g. "backup"). Call it before
/// any thread starts. Returns false (and installs nothing) when the signals cannot be
/// blocked; the default action (ending the process) then applies.
pub fn exit_130_on_signals(what: &'static str) -> bool {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return false;
    }
    let spawned = std::thread::Builder::new()
        .name("cairn-signals".into())
        .spawn(move || {
            let Ok(signal) = set.wait() else { return };
            if std::io::stderr().is_terminal() {
                // The progress bar's line, and the `^C` the terminal echoed.
                eprint!("\r\x1b[2K");
                // A password prompt turns the terminal's echo off and would not get to turn
                // it back on: leave the terminal as the user had it.
                if let Ok(tty) = std::fs::File::open("/dev/tty") {
                    let _ = std::process::Command::new("stty")
                        .arg("echo")
                        .stdin(tty)
                        .status();
                }
            }
            eprintln!(
                "interrupted ({}): {what} stopped; the repository is consistent \
                 (anything it stored that no snapshot uses is removed by the next prune)",
                signal.as_str()
            );
            cairn_repo::lease::remove_held_leases();
            std::process::exit(130);
        });
    if spawned.is_err() {
        let _ = set.thread_unblock();
        return false;
    }
    true
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and every thread started after, for a
/// command that waits for them itself ([`wait_for_signal`]). Call it before any thread
/// starts.
pub fn block_signals() {
    let _ = stop_signals().thread_block();
}

fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// A channel that receives the first SIGINT, SIGTERM or SIGHUP (blocked before by
/// [`block_signals`]).
pub fn wait_for_signal() -> std::io::Result<std::sync::mpsc::Receiver<Signal>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("cairn-signals".into())
        .spawn(move || {
            if let Ok(signal) = stop_signals().wait() {
                let _ = tx.send(signal);
            }
        })?;
    Ok(rx)
}
