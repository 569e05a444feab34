//! `cairn init`: create a repository, or a new tenant in an existing one.

use std::path::Path;

use anyhow::{bail, Result};
use cairn_repo::format::config::ChunkerConfig;
use cairn_repo::{Credentials, InitOptions, Repository};
use serde_json::json;

use crate::args::InitArgs;
use crate::commands::backup::parse_compression;
use crate::context::Context;
use crate::output::{outln, print_json};

pub fn parse_chunker(s: &str) -> Result<ChunkerConfig> {
    let v: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--chunker expects MIN,AVG,MAX in bytes"))?;
    match v.as_slice() {
        [min, avg, max] => Ok(ChunkerConfig {
            min: *min,
            avg: *avg,
            max: *max,
        }),
        _ => crate::bail_usage!("--chunker expects MIN,AVG,MAX in bytes"),
    }
}

pub fn run(ctx: &Context, args: InitArgs) -> Result<i32> {
    let mut opts = InitOptions {
        kdf: ctx.kdf()?,
        ..Default::default()
    };
    if let Some(c) = &args.chunker {
        opts.chunker = parse_chunker(c)?;
    }
    opts.compression = parse_compression(&args.compression)?;
    // The global credential options name the tenant being created: init has no other.
    let credential = match &ctx.global.key_file {
        Some(kf) => NewCredential::KeyFile(kf),
        None => NewCredential::Password(ctx.new_password(
            None,
            true,
            "use --password-file, --password-command, CAIRN_PASSWORD_FILE, CAIRN_PASSWORD_COMMAND, or --key-file naming a new file",
        )?),
    };
    create_tenant(ctx, &ctx.tenant(), &opts, credential)
}

/// The credential a new tenant is created with.
pub enum NewCredential<'a> {
    Password(Vec<u8>),
    /// A new master key, written to this file, which must not exist yet.
    KeyFile(&'a Path),
}

/// Creates a tenant with a new password, or with a new key written to a new key file.
pub fn create_tenant(
    ctx: &Context,
    tenant: &str,
    opts: &InitOptions,
    credential: NewCredential<'_>,
) -> Result<i32> {
    let (location, default) = ctx.location()?;
    let mut key_file = None;
    let creds = match credential {
        NewCredential::KeyFile(kf) if !kf.exists() => {
            let key = cairn_repo::crypto::MasterKey::generate()?;
            cairn_repo::keys::write_key_file(kf, tenant, &key)?;
            key_file = Some(kf);
            Credentials::Key(key)
        }
        NewCredential::KeyFile(kf) => bail!(
            "key file {} already exists: a new tenant gets a new key; name a new file",
            kf.display()
        ),
        NewCredential::Password(pw) => Credentials::Password(pw),
    };
    let repo = Repository::init(&location, tenant, &creds, opts, &ctx.open_options())?;
    if ctx.json() {
        print_json(
            &json!({"repository": repo.root_description(), "tenant": tenant, "config_id": repo.config().id, "default_repository": default.is_some()}),
        )?;
    } else if !ctx.quiet() {
        outln!(
            "created tenant {tenant:?} in repository {}",
            repo.root_description()
        );
        if let Some(kf) = key_file {
            outln!("its key is in {}: keep a copy somewhere safe", kf.display());
        }
    }
    Ok(0)
}
