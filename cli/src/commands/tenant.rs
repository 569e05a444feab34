//! `cairn tenant add|list`.

use anyhow::Result;
use cairn_repo::repository::list_tenants;
use cairn_repo::InitOptions;

use crate::args::TenantCommand;
use crate::context::Context;
use crate::output::{outln, print_json};

pub fn run(ctx: &Context, cmd: TenantCommand) -> Result<i32> {
    match cmd {
        TenantCommand::Add { name } => {
            let (location, _) = ctx.location()?;
            // The repository must exist already; `init` creates new ones.
            list_tenants(&location)?;
            let opts = InitOptions {
                kdf: ctx.kdf()?,
                ..Default::default()
            };
            super::init::create_tenant(ctx, &name, &opts)
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
