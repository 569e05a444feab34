//! `cairn tenant add|list`.

use anyhow::Result;
use cairn_repo::repository::list_tenants;
use cairn_repo::InitOptions;

use crate::args::TenantCommand;
use crate::commands::init::{create_tenant, NewCredential};
use crate::context::Context;
use crate::output::{outln, print_json};

pub fn run(ctx: &Context, cmd: TenantCommand) -> Result<i32> {
    match cmd {
        TenantCommand::Add {
            name,
            new_password_file,
            new_key_file,
        } => {
            let (location, _) = ctx.location()?;
            // The repository must exist already; `init` creates new ones.
            list_tenants(&location)?;
            let opts = InitOptions {
                kdf: ctx.kdf()?,
                ..Default::default()
            };
            // The global credential options belong to the current tenant: a new tenant's
            // credential comes only from the options that name it, or a prompt.
            let credential = match (&new_password_file, &new_key_file) {
                (_, Some(kf)) => NewCredential::KeyFile(kf),
                (file, None) => NewCredential::Password(ctx.new_password(
                    file.as_deref(),
                    false,
                    "use --new-password-file F or --new-key-file F (a new tenant never gets the current tenant's password or key)",
                )?),
            };
            create_tenant(ctx, &name, &opts, credential)
        }
        TenantCommand::List => {
            let (location, _) = ctx.location()?;
            let tenants = list_tenants(&location)?;
            if ctx.json() {
                print_json(&tenants)?;
            } else {
                for t in tenants {
                    outln!("{t}");
                }
            }
            Ok(0)
        }
    }
}
