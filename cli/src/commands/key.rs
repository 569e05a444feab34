//! `cairn key add|list|remove|passwd`: a tenant's passwords (key slots).

use anyhow::{bail, Result};
use cairn_repo::Credentials;
use serde_json::json;

use crate::args::KeyCommand;
use crate::context::Context;
use crate::output::{outln, print_json};

pub fn run(ctx: &Context, cmd: KeyCommand) -> Result<i32> {
    let repo = ctx.open()?;
    let (location, default) = ctx.location()?;
    let _ = location;
    let (_, creds) = ctx.credentials(default.as_ref())?;
    match cmd {
        KeyCommand::Add { new_password_file } => {
            let (master, _) = repo.master_key(&creds)?;
            let pw = ctx.new_password(
                new_password_file.as_deref(),
                false,
                "use --new-password-file F",
            )?;
            let id = repo.add_key(&master, &pw, ctx.kdf()?)?;
            if ctx.json() {
                print_json(&json!({"added": id}))?;
            } else if !ctx.quiet() {
                outln!("added key slot {}", &id[..8]);
            }
        }
        KeyCommand::List => {
            let (_, current) = repo.master_key(&creds)?;
            let slots = repo.key_slots()?;
            if ctx.json() {
                let v: Vec<_> = slots
                    .iter()
                    .map(|(id, s)| json!({"id": id, "current": Some(id) == current.as_ref(), "created": s.created, "host": s.hostname, "user": s.username, "kdf": s.kdf, "params": s.params}))
                    .collect();
                print_json(&v)?;
            } else {
                outln!("  {:<10} {:<32} {:<20} user", "id", "created", "host");
                for (id, s) in &slots {
                    let mark = if Some(id) == current.as_ref() {
                        "*"
                    } else {
                        " "
                    };
                    outln!(
                        "{mark} {:<10} {:<32} {:<20} {}",
                        &id[..8],
                        s.created,
                        s.hostname,
                        s.username
                    );
                }
            }
        }
        KeyCommand::Remove { id } => {
            let removed = repo.remove_key(&id)?;
            if ctx.json() {
                print_json(&json!({"removed": removed}))?;
            } else if !ctx.quiet() {
                outln!("removed key slot {}", &removed[..8]);
            }
        }
        KeyCommand::Passwd { new_password_file } => {
            let Credentials::Password(_) = &creds else {
                bail!("the repository was opened with a key file, not a password: use `cairn key add` to add a password");
            };
            let (master, current) = repo.master_key(&creds)?;
            let pw = ctx.new_password(
                new_password_file.as_deref(),
                false,
                "use --new-password-file F",
            )?;
            let id = repo.add_key(&master, &pw, ctx.kdf()?)?;
            if let Some(old) = current {
                repo.remove_key(&old)?;
            }
            if ctx.json() {
                print_json(&json!({"added": id}))?;
            } else if !ctx.quiet() {
                outln!("password changed (new key slot {})", &id[..8]);
            }
        }
    }
    Ok(0)
}
