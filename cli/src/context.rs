//! Turning global options and the environment into an open repository: where it is, which
//! tenant, which credentials, which cache.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use cairn_repo::keys::{read_key_file, KdfParams};
use cairn_repo::repository::{default_cache_dir, exists};
use cairn_repo::{Credentials, ErrorKind, Location, OpenOptions, Repository};

use crate::args::Global;
use crate::password;

pub struct Context {
    pub global: Global,
}

/// Where the default repository and its key file live when nothing is configured.
pub struct DefaultRepo {
    pub repo: PathBuf,
    pub key_file: PathBuf,
}

fn xdg(var: &str, fallback: &str) -> Option<PathBuf> {
    if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(v));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(fallback))
}

pub fn default_repo() -> Result<DefaultRepo> {
    let data = xdg("XDG_DATA_HOME", ".local/share")
        .ok_or_else(|| anyhow!("neither XDG_DATA_HOME nor HOME is set; give --repo"))?;
    let config = xdg("XDG_CONFIG_HOME", ".config")
        .ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set; give --repo"))?;
    Ok(DefaultRepo {
        repo: data.join("cairn").join("repository"),
        key_file: config.join("cairn").join("default-repository.key"),
    })
}

impl Context {
    pub fn json(&self) -> bool {
        self.global.json
    }

    pub fn quiet(&self) -> bool {
        self.global.quiet || self.global.json
    }

    pub fn kdf(&self) -> Result<KdfParams> {
        match &self.global.kdf_params {
            Some(s) => Ok(KdfParams::parse(s)?),
            None => Ok(KdfParams::default()),
        }
    }

    /// The configured location, or `None` when the default repository applies.
    pub fn configured_location(&self) -> Result<Option<Location>> {
        let from_file;
        let r = match (&self.global.repo, &self.global.repository_file) {
            (Some(r), _) => r,
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the repository file {}", f.display()))?;
                from_file = text.lines().next().unwrap_or("").trim().to_string();
                if from_file.is_empty() {
                    bail!("the repository file {} is empty", f.display());
                }
                &from_file
            }
            (None, None) => return Ok(None),
        };
        let mut location = Location::parse(r)?;
        if let Location::Rest(target) = &mut location {
            if target.username.is_none() {
                target.username = std::env::var("CAIRN_REST_USERNAME").ok();
            }
            if target.password.is_none() {
                target.password = std::env::var("CAIRN_REST_PASSWORD").ok();
            }
            target.ca_file = self.global.tls_ca.clone();
        }
        Ok(Some(location))
    }

    pub fn location(&self) -> Result<(Location, Option<DefaultRepo>)> {
        match self.configured_location()? {
            Some(l) => Ok((l, None)),
            None => {
                let d = default_repo()?;
                Ok((Location::Local(d.repo.clone()), Some(d)))
            }
        }
    }

    pub fn open_options(&self) -> OpenOptions {
        let cache_dir = if self.global.no_cache {
            None
        } else {
            self.global.cache_dir.clone().or_else(default_cache_dir)
        };
        OpenOptions {
            cache_dir,
            lease_ttl: self.global.lease_ttl.map(std::time::Duration::from_secs),
        }
    }

    /// A password from the configured sources, without prompting.
    pub fn configured_password(&self) -> Result<Option<Vec<u8>>> {
        if let Some(p) = &self.global.password_file {
            return Ok(Some(password::from_file(p)?));
        }
        if let Some(cmd) = &self.global.password_command {
            let timeout = self
                .global
                .password_command_timeout
                .map(std::time::Duration::from_secs)
                .unwrap_or(password::DEFAULT_COMMAND_TIMEOUT);
            return Ok(Some(password::from_command(cmd, timeout)?));
        }
        password::from_env()
    }

    fn prompt(&self, prompt: &str, confirm: bool) -> Result<Vec<u8>> {
        if !std::io::stdin().is_terminal() {
            bail!("no password given: use --password-file, --password-command, CAIRN_PASSWORD_FILE, CAIRN_PASSWORD_COMMAND or --key-file");
        }
        password::prompt(prompt, confirm)
    }

    /// A new password: from `file` when given, else from the global password options when
    /// `use_configured` (init, whose new tenant is the one those options name), else a prompt
    /// with confirmation on a terminal. `without_terminal` says which options to use when
    /// there is no terminal.
    pub fn new_password(
        &self,
        file: Option<&Path>,
        use_configured: bool,
        without_terminal: &str,
    ) -> Result<Vec<u8>> {
        if let Some(p) = file {
            return password::from_file(p);
        }
        if use_configured {
            if let Some(pw) = self.configured_password()? {
                return Ok(pw);
            }
        }
        if !std::io::stdin().is_terminal() {
            bail!("no new password given and no terminal to ask on: {without_terminal}");
        }
        password::prompt("Enter the new password: ", true)
    }

    /// The tenant and the credentials for opening it.
    pub fn credentials(&self, default: Option<&DefaultRepo>) -> Result<(String, Credentials)> {
        let key_file = self.global.key_file.clone().or_else(|| {
            default.map(|d| d.key_file.clone()).filter(|p| {
                p.exists()
                    && self.global.password_file.is_none()
                    && self.global.password_command.is_none()
            })
        });
        if let Some(kf) = key_file {
            let (file_tenant, key) = read_key_file(&kf)?;
            let tenant = self.global.tenant.clone().unwrap_or(file_tenant.clone());
            if tenant != file_tenant {
                return Err(cairn_repo::Error::new(
                    ErrorKind::WrongPassword,
                    format!(
                        "key file {} is for tenant {file_tenant:?}, not {tenant:?}",
                        kf.display()
                    ),
                )
                .into());
            }
            return Ok((tenant, Credentials::Key(key)));
        }
        let tenant = self.tenant();
        let pw = match self.configured_password()? {
            Some(pw) => pw,
            None => self.prompt(&format!("Password for tenant {tenant}: "), false)?,
        };
        Ok((tenant, Credentials::Password(pw)))
    }

    pub fn tenant(&self) -> String {
        self.global
            .tenant
            .clone()
            .unwrap_or_else(|| "default".to_string())
    }

    /// Opens the configured (or default) repository.
    pub fn open(&self) -> Result<Repository> {
        let (location, default) = self.location()?;
        if default.is_some() && !exists(&location)? {
            return Err(cairn_repo::Error::new(
                ErrorKind::NotARepository,
                format!("no repository configured and the default one ({}) does not exist yet: run `cairn backup PATH` to create it, or set --repo / CAIRN_REPOSITORY", default_repo()?.repo.display()),
            )
            .into());
        }
        let (tenant, creds) = self.credentials(default.as_ref())?;
        match Repository::open(&location, &tenant, &creds, &self.open_options()) {
            Ok(repo) => Ok(repo),
            // A password given for the default repository, which starts with a key file only.
            Err(e)
                if e.kind() == ErrorKind::WrongPassword
                    && matches!(creds, Credentials::Password(_)) =>
            {
                match default.as_ref().filter(|d| d.key_file.exists()) {
                    Some(d) => Err(cairn_repo::Error::new(
                        ErrorKind::WrongPassword,
                        format!(
                            "{e}. No repository is configured, so this is the default one, whose key file is {}: drop the password option to use it, or add this password with `cairn key add` (run without the password option)",
                            d.key_file.display()
                        ),
                    )
                    .into()),
                    None => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the repository, creating the default one on first use (backup only).
    pub fn open_or_create_default(&self) -> Result<Repository> {
        let (location, default) = self.location()?;
        let Some(d) = default else { return self.open() };
        if exists(&location)? {
            return self.open();
        }
        if self.global.key_file.is_some()
            || self.global.password_file.is_some()
            || self.global.password_command.is_some()
        {
            bail!("the default repository {} does not exist; create it with `cairn init` to use a password", d.repo.display());
        }
        if d.key_file.exists() {
            bail!("the default key file {} exists but the default repository {} does not: refusing to create a repository that the old key cannot open; move the key file away or set --repo", d.key_file.display(), d.repo.display());
        }
        let key = cairn_repo::crypto::MasterKey::generate()?;
        let tenant = self.tenant();
        cairn_repo::keys::write_key_file(&d.key_file, &tenant, &key)?;
        let repo = Repository::init(
            &location,
            &tenant,
            &Credentials::Key(key),
            &cairn_repo::InitOptions::default(),
            &self.open_options(),
        )?;
        eprintln!("Created a new repository at {}", d.repo.display());
        eprintln!(
            "Its key is in {}. Keep a copy of that file somewhere safe:",
            d.key_file.display()
        );
        eprintln!(
            "without it, nobody can read these backups. (`cairn key add` also adds a password.)"
        );
        Ok(repo)
    }
}
