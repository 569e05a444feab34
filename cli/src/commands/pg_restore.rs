//! `cairn pg restore`.

use anyhow::{bail, Result};

use crate::context::Context;
use crate::pg_args::RestoreArgs;

pub fn run(_ctx: &Context, _args: RestoreArgs) -> Result<i32> {
    bail!("not yet")
}
