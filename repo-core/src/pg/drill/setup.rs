//! How the drill's server is set up: who runs it, which programs, which settings.

use std::path::{Path, PathBuf};

use super::scratch::write_new;
use super::server::{Programs, RunAs};
use super::DrillOptions;
use crate::error::{Error, Result};

/// Who runs the server: the owner of the restored files when we are root (PostgreSQL
/// refuses root), with that user's home; ourselves otherwise.
pub(super) fn run_as(data: &Path) -> Result<RunAs> {
    if !crate::sys::is_root() {
        return Ok(RunAs {
            ids: None,
            env: Vec::new(),
        });
    }
    let meta = std::fs::metadata(data.join("PG_VERSION"))
        .map_err(|e| Error::io(format!("reading {}/PG_VERSION", data.display()), e))?;
    let (uid, gid) = (
        std::os::unix::fs::MetadataExt::uid(&meta),
        std::os::unix::fs::MetadataExt::gid(&meta),
    );
    if uid == 0 {
        return Err(Error::invalid(
            "the restored files belong to root, and PostgreSQL does not run as root: restore a base backup of a cluster run by another user, or run the drill as that user",
        ));
    }
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten();
    let mut env: Vec<(String, Option<String>)> = [
        "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_STATE_HOME",
        "XDG_RUNTIME_DIR",
    ]
    .iter()
    .map(|k| (k.to_string(), None))
    .collect();
    if let Some(u) = user {
        env.push(("HOME".into(), Some(u.dir.display().to_string())));
        env.push(("USER".into(), Some(u.name.clone())));
        env.push(("LOGNAME".into(), Some(u.name)));
    }
    Ok(RunAs {
        ids: Some((uid, gid)),
        env,
    })
}

/// Makes the restored data directory startable here: an empty `postgresql.conf` when the
/// backup had none (where it lives outside the data directory, as on Debian), and no
/// `standby.signal` (a standby would never promote).
pub(super) fn prepare_data(data: &Path, ids: Option<(u32, u32)>) -> Result<()> {
    let conf = data.join("postgresql.conf");
    if !conf.exists() {
        write_new(
            &conf,
            "# cairn pg drill: the base backup held no postgresql.conf\n",
        )?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&conf, Some(uid), Some(gid)).map_err(|e| {
                Error::io(
                    format!("giving {} to the cluster's owner", conf.display()),
                    e,
                )
            })?;
        }
    }
    match std::fs::remove_file(data.join("standby.signal")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(
            format!("removing {}/standby.signal", data.display()),
            e,
        )),
        _ => Ok(()),
    }
}

/// PostgreSQL's major version of the data directory (`PG_VERSION`).
pub(super) fn major_version(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("PG_VERSION"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The given folder; else the PATH when it has `postgres`; else the usual folder of this
/// major version (Debian's, then the PGDG RPMs').
pub(super) fn programs(given: Option<&Path>, version: Option<u32>) -> Programs {
    if let Some(d) = given {
        return Programs {
            dir: Some(d.to_path_buf()),
        };
    }
    let in_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("postgres").is_file()));
    let usual = version.into_iter().flat_map(|v| {
        [
            PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")),
            PathBuf::from(format!("/usr/pgsql-{v}/bin")),
        ]
    });
    Programs {
        dir: if in_path {
            None
        } else {
            usual.into_iter().find(|d| d.join("postgres").is_file())
        },
    }
}

/// The server's `-c` options: see the module's invariants.
pub(super) fn settings(
    opts: &DrillOptions,
    socket: &Path,
    pid_file: &Path,
    port: u16,
    hba: &Path,
    ident: &Path,
    version: Option<u32>,
) -> Vec<(String, String)> {
    let mut s: Vec<(String, String)> = [
        ("port", port.to_string()),
        ("listen_addresses", String::new()),
        ("unix_socket_directories", socket.display().to_string()),
        ("unix_socket_group", String::new()),
        ("unix_socket_permissions", "0700".into()),
        ("hba_file", hba.display().to_string()),
        ("ident_file", ident.display().to_string()),
        ("ssl", "off".into()),
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("recovery_end_command", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("synchronous_standby_names", String::new()),
        ("external_pid_file", pid_file.display().to_string()),
        ("hot_standby", "on".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        ("lc_messages", "C".into()),
        ("cluster_name", "cairn-drill".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if version.is_none_or(|v| v >= 15) {
        s.push(("archive_library".into(), String::new()));
    }
    s.extend(opts.settings.iter().cloned());
    s
}

pub(super) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(s: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        s.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn the_server_archives_nothing_and_reaches_nothing_and_given_settings_come_last() {
        let opts = DrillOptions {
            settings: vec![("shared_buffers".into(), "64MB".into())],
            ..DrillOptions::default()
        };
        let p = Path::new;
        let s = settings(
            &opts,
            p("/s/socket"),
            p("/s/pid"),
            5499,
            p("/s/hba"),
            p("/s/ident"),
            Some(15),
        );
        assert_eq!(value(&s, "archive_mode"), ["off"]);
        assert_eq!(value(&s, "archive_command"), [""]);
        assert_eq!(value(&s, "archive_library"), [""]);
        assert_eq!(value(&s, "listen_addresses"), [""]);
        assert_eq!(value(&s, "primary_conninfo"), [""]);
        assert_eq!(value(&s, "unix_socket_directories"), ["/s/socket"]);
        assert_eq!(value(&s, "port"), ["5499"]);
        assert_eq!(value(&s, "hba_file"), ["/s/hba"]);
        assert_eq!(s.last().map(|(k, _)| k.as_str()), Some("shared_buffers"));
        // archive_library does not exist before PostgreSQL 15 (an unknown setting is fatal).
        let s = settings(
            &opts,
            p("/s/socket"),
            p("/s/pid"),
            5499,
            p("/s/hba"),
            p("/s/ident"),
            Some(14),
        );
        assert!(value(&s, "archive_library").is_empty());
    }
}
