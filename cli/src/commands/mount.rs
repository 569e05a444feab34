//! `cairn mount MOUNTPOINT`: mounts the snapshots read-only (see `crate::mount`) and stays in
//! the foreground until the mount is unmounted (`fusermount3 -u`, `umount`) or the process
//! gets SIGINT, SIGTERM or SIGHUP, which unmount it. Either way it exits 0.
//!
//! The mount takes no lock and no lease, and works from a private copy of the cache, so
//! backups and prunes run as usual beside it (docs/mount.md).

use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use fuser::{MountOption, SessionACL};

use crate::args::MountArgs;
use crate::context::Context;
use crate::interrupt;
use crate::mount::fs::{Lister, MountFs};
use crate::mount::mountpoint::{self, SOURCE_PREFIX, SUBTYPE};

/// FUSE requests answered at once.
const THREADS: usize = 4;

pub fn run(ctx: &Context, args: MountArgs) -> Result<i32> {
    let point = mountpoint::prepare(&args.mountpoint)?;
    mountpoint::require_fuse()?;
    let mut repo = ctx.open()?;
    repo.use_private_cache()?;
    let repo = Arc::new(repo);
    let filter = args.filter.clone();
    let lister: Lister = Box::new(move |repo| {
        Ok(repo
            .snapshots()?
            .into_iter()
            .filter(|(_, s)| super::snapshots::matches(&filter, s))
            .collect())
    });
    let fs = MountFs::new(
        repo.clone(),
        lister,
        Duration::from_secs(args.refresh.max(1)),
    )?;
    let shown = fs.snapshot_count();

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!(
            "{SOURCE_PREFIX}{}",
            &repo.config().id.to_hex()[..12]
        )),
        MountOption::Subtype(SUBTYPE.into()),
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    if args.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(THREADS);
    config.clone_fd = true;
    let signals = interrupt::wait_for_signal()?;
    let session = fuser::spawn_mount(fs, &point, &config)
        .map_err(|e| anyhow!("mounting on {}: {e}", point.display()))?;
    eprintln!(
        "{} snapshot(s) of {} mounted on {}; unmount with `fusermount3 -u {}` or Ctrl-C",
        shown,
        repo.description(),
        point.display(),
        point.display()
    );
    loop {
        if session.guard.is_finished() {
            // Unmounted from outside.
            session
                .join()
                .map_err(|e| anyhow!("the mount on {} ended: {e}", point.display()))?;
            break;
        }
        match signals.recv_timeout(Duration::from_millis(200)) {
            Ok(signal) => {
                tracing::info!("{}: unmounting {}", signal.as_str(), point.display());
                if let Err(e) = session.umount_and_join() {
                    // Busy (a file is open, or a shell sits in it): detach it, so it goes
                    // when the last user leaves; reads in it fail once this process is gone.
                    tracing::info!("unmounting {}: {e}; detaching it", point.display());
                    mountpoint::detach(&point)?;
                }
                break;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    eprintln!("{} unmounted", point.display());
    Ok(0)
}
