//! The configuration file: named profiles of options, so that `archive_command`, timers and
//! people all run `cairn --profile NAME ...` without repeating them (docs/user-guide.md,
//! "Configuration file and profiles").
//!
//! Where it is read from, in order:
//! - `--config FILE` or `CAIRN_CONFIG`: that file alone (missing is an error);
//! - else the system file (`/etc/cairn/config.toml`, or `CAIRN_SYSTEM_CONFIG`) and then the
//!   user file (`$XDG_CONFIG_HOME/cairn/config.toml`, else `~/.config/cairn/config.toml`),
//!   both optional (one this user may not read is skipped). A profile in the user file replaces the system file's profile of the
//!   same name as a whole (no key-wise merging: what a profile does is what one table says),
//!   and the user file's `default_profile` wins over the system file's.
//!
//! This file loads, validates and selects; [`crate::profile`] applies the selected profile
//! to the parsed command line (only to options still unset, so the command line and the
//! environment win over the file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

use crate::UsageError;

/// The system-wide file, unless `CAIRN_SYSTEM_CONFIG` names another (tests, or an install
/// under another prefix).
const SYSTEM_FILE: &str = "/etc/cairn/config.toml";

/// One configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default_profile: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, Profile>,
}

/// A named set of options. Every key is optional; paths relative to the file's folder.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub repo: Option<String>,
    pub repository_file: Option<PathBuf>,
    pub tenant: Option<String>,
    pub key_file: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub password_command_timeout: Option<u64>,
    pub tls_ca: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub lease_ttl: Option<u64>,
    /// For a `rest:` repository (as CAIRN_REST_USERNAME / CAIRN_REST_PASSWORD).
    pub rest_username: Option<String>,
    pub rest_password: Option<String>,
    /// For an `s3:` repository (as the AWS_* variables of the same names).
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub aws_session_token: Option<String>,
    pub aws_region: Option<String>,
    #[serde(default)]
    pub backup: BackupSettings,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub pg: PgSettings,
}

/// What `cairn backup` leaves out (added to the command line's own excludes).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub iexclude: Vec<String>,
    #[serde(default)]
    pub exclude_file: Vec<PathBuf>,
    #[serde(default)]
    pub exclude_if_present: Vec<String>,
    pub exclude_caches: Option<bool>,
    pub exclude_larger_than: Option<String>,
    pub one_file_system: Option<bool>,
}

/// The policy `cairn forget` applies when its command line names neither snapshots nor
/// `--keep-*` rules.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub keep_last: Option<usize>,
    pub keep_hourly: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_yearly: Option<usize>,
    pub keep_within: Option<String>,
    pub keep_within_hourly: Option<String>,
    pub keep_within_daily: Option<String>,
    pub keep_within_weekly: Option<String>,
    pub keep_within_monthly: Option<String>,
    pub keep_within_yearly: Option<String>,
    pub keep_within_pitr: Option<String>,
    #[serde(default)]
    pub keep_tag: Vec<String>,
}

/// PostgreSQL: how `pg basebackup` connects, where the programs are, the WAL spool.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSettings {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub dbname: Option<String>,
    pub bin: Option<PathBuf>,
    pub wal_spool: Option<PathBuf>,
}

/// The profiles of the files read, each with the file it came from.
#[derive(Debug, Default)]
pub struct Config {
    /// The files read, in the order read (an explicit file alone).
    pub files: Vec<PathBuf>,
    pub default_profile: Option<String>,
    pub profiles: BTreeMap<String, (Profile, PathBuf)>,
    /// Files that exist but this user may not read (a system file holding secrets, readable
    /// by root only), with the reason: skipped, and named when a profile is not found.
    pub unreadable: Vec<(PathBuf, String)>,
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

/// The user file: `$XDG_CONFIG_HOME/cairn/config.toml`, else `~/.config/cairn/config.toml`.
pub fn user_file() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => Path::new(&std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("cairn").join("config.toml"))
}

pub fn system_file() -> PathBuf {
    std::env::var_os("CAIRN_SYSTEM_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SYSTEM_FILE))
}

/// Reads the configuration: `explicit` alone when given (`--config` / `CAIRN_CONFIG`), else
/// the system and user files that exist.
pub fn load(explicit: Option<&Path>) -> Result<Config> {
    let mut config = Config::default();
    if let Some(path) = explicit {
        if !path.exists() {
            return Err(usage(format!(
                "the configuration file {} does not exist",
                path.display()
            )));
        }
        config.add(path)?;
        return Ok(config);
    }
    config.add_if_present(&system_file())?;
    if let Some(user) = user_file() {
        config.add_if_present(&user)?;
    }
    Ok(config)
}

impl Config {
    fn add_if_present(&mut self, path: &Path) -> Result<()> {
        match std::fs::File::open(path) {
            Ok(_) => self.add(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                self.unreadable.push((path.to_path_buf(), e.to_string()));
                Ok(())
            }
            Err(e) => Err(usage(format!(
                "cannot read the configuration file {}: {e}",
                path.display()
            ))),
        }
    }

    /// Reads one file; its profiles replace those of the same name read before.
    fn add(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            usage(format!(
                "cannot read the configuration file {}: {e}",
                path.display()
            ))
        })?;
        let file: File = toml::from_str(&text).map_err(|e| {
            // toml's message starts with "TOML parse error at line L, column C" and shows
            // the line; the unknown key is named in it.
            usage(format!(
                "configuration file {}: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        check_secrets(path, &file)?;
        for (name, mut profile) in file.profiles {
            if name.is_empty() {
                return Err(usage(format!(
                    "configuration file {}: a profile needs a name",
                    path.display()
                )));
            }
            profile.resolve_paths(dir);
            self.profiles.insert(name, (profile, path.to_path_buf()));
        }
        if file.default_profile.is_some() {
            self.default_profile = file.default_profile;
        }
        self.files.push(path.to_path_buf());
        Ok(())
    }

    /// The names of the profiles, sorted.
    pub fn names(&self) -> Vec<String> {
        self.profiles.keys().cloned().collect()
    }

    /// The profile `name` (from `--profile` / `CAIRN_PROFILE`), or the `default_profile`
    /// when none is named; `None` when neither is.
    pub fn select(&self, name: Option<&str>) -> Result<Option<(String, Profile)>> {
        let (name, what) = match (name, &self.default_profile) {
            (Some(n), _) => (n, "profile"),
            (None, Some(d)) => (d.as_str(), "default_profile"),
            (None, None) => return Ok(None),
        };
        match self.profiles.get(name) {
            Some((p, _)) => Ok(Some((name.to_string(), p.clone()))),
            None => Err(usage(format!(
                "{what} {name:?} is not defined: {}; {}",
                match self.profiles.len() {
                    0 => "no profiles are defined".to_string(),
                    _ => format!("the profiles are {}", self.names().join(", ")),
                },
                self.files_read()
            ))),
        }
    }

    /// Which files were read, or looked for when none was found.
    pub fn files_read(&self) -> String {
        let skipped: String = self
            .unreadable
            .iter()
            .map(|(f, e)| format!("; {} cannot be read ({e})", f.display()))
            .collect();
        if !self.files.is_empty() {
            let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
            return format!("files read: {}{skipped}", files.join(", "));
        }
        if !skipped.is_empty() {
            return format!("no configuration file read{skipped}");
        }
        let mut looked = vec![system_file().display().to_string()];
        if let Some(u) = user_file() {
            looked.push(u.display().to_string());
        }
        format!(
            "no configuration file found (looked for {}; or give --config FILE)",
            looked.join(" and ")
        )
    }
}

impl Profile {
    /// Makes relative paths relative to the folder of the file that named them, so that a
    /// profile means the same from any working directory.
    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.as_mut() {
                if path.is_relative() {
                    *path = dir.join(&*path);
                }
            }
        };
        fix(&mut self.repository_file);
        fix(&mut self.key_file);
        fix(&mut self.password_file);
        fix(&mut self.tls_ca);
        fix(&mut self.cache_dir);
        fix(&mut self.pg.bin);
        fix(&mut self.pg.wal_spool);
        for f in &mut self.backup.exclude_file {
            if f.is_relative() {
                *f = dir.join(&*f);
            }
        }
        if let Some(r) = &self.repo {
            let is_url = r.starts_with("rest:") || r.starts_with("s3:");
            let path = Path::new(r.strip_prefix("file:").unwrap_or(r));
            if !is_url && path.is_relative() {
                self.repo = Some(dir.join(path).display().to_string());
            }
        }
    }

    /// The keys of this profile that hold secrets.
    fn secrets(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.rest_password.is_some() {
            keys.push("rest_password");
        }
        if self.aws_secret_access_key.is_some() {
            keys.push("aws_secret_access_key");
        }
        if self.aws_session_token.is_some() {
            keys.push("aws_session_token");
        }
        if self.repo.as_deref().is_some_and(has_password_in_url) {
            keys.push("repo (a password in the URL)");
        }
        keys
    }
}

/// `rest:http://USER:PASS@HOST/`: the location itself holds a password.
fn has_password_in_url(repo: &str) -> bool {
    let Some((_, rest)) = repo.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .is_some_and(|(user, _)| user.contains(':'))
}

/// A file holding secrets must be readable by its owner only, as a key file must.
fn check_secrets(path: &Path, file: &File) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some((name, keys)) = file
        .profiles
        .iter()
        .map(|(n, p)| (n, p.secrets()))
        .find(|(_, keys)| !keys.is_empty())
    else {
        return Ok(());
    };
    let mode = std::fs::metadata(path)
        .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(usage(format!(
            "configuration file {} holds secrets (profile {name:?} sets {}) but others may read it (mode {:04o}): run `chmod 600 {}`, or move the secrets to a password file",
            path.display(),
            keys.join(", "),
            mode & 0o7777,
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_a_url_is_a_secret() {
        assert!(has_password_in_url("rest:https://u:p@host:8000/"));
        assert!(!has_password_in_url("rest:https://u@host:8000/"));
        assert!(!has_password_in_url("rest:https://host/a@b"));
        assert!(!has_password_in_url("/srv/backups"));
    }

    #[test]
    fn unknown_keys_are_refused_at_any_depth() {
        for text in [
            "[profiles.a]\nrepository = \"/x\"\n",
            "[profiles.a.retention]\nkeep_dayly = 3\n",
            "defualt_profile = \"a\"\n",
        ] {
            let e = toml::from_str::<File>(text).unwrap_err().to_string();
            assert!(e.contains("unknown field"), "{text}: {e}");
        }
    }

    #[test]
    fn relative_paths_are_the_files_folder() {
        let mut p: Profile = toml::from_str(
            "repo = \"backups\"\nkey_file = \"k.key\"\n[backup]\nexclude_file = [\"ex\"]\n",
        )
        .unwrap();
        p.resolve_paths(Path::new("/etc/cairn"));
        assert_eq!(p.repo.as_deref(), Some("/etc/cairn/backups"));
        assert_eq!(p.key_file.unwrap(), PathBuf::from("/etc/cairn/k.key"));
        assert_eq!(p.backup.exclude_file[0], PathBuf::from("/etc/cairn/ex"));
        let mut p: Profile = toml::from_str("repo = \"rest:http://h/\"\n").unwrap();
        p.resolve_paths(Path::new("/etc/cairn"));
        assert_eq!(p.repo.as_deref(), Some("rest:http://h/"));
    }
}
