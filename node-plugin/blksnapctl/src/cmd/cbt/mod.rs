//! `blksnapctl cbt ...`: changed block tracking of an attached device.

use clap::Subcommand;

use crate::{Ctx, Result};

pub mod changes;
pub mod dirty;
pub mod info;

/// The `cbt` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Tracking state: capacity, block size, generation, changes number.
    Info(info::Args),
    /// Byte ranges changed since snapshot number N, from the map frozen at
    /// the last take, coalesced.
    Changes(changes::Args),
    /// Mark byte ranges as changed (writes the tracker could not see).
    Dirty(dirty::Args),
}

/// Runs a `cbt` subcommand.
pub fn run(cmd: &Command, ctx: &Ctx) -> Result<()> {
    match cmd {
        Command::Info(a) => info::run(a, ctx),
        Command::Changes(a) => changes::run(a, ctx),
        Command::Dirty(a) => dirty::run(a, ctx),
    }
}
