//! `blksnapctl snapshot ...`. Snapshots live in the kernel until destroyed,
//! whatever process created them, so each step is its own invocation.

use clap::Subcommand;

use crate::{Ctx, Result};

pub mod add;
pub mod create;
pub mod destroy;
pub mod events;
pub mod info;
pub mod list;
pub mod take;

/// The `snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an empty snapshot with its difference storage; prints its id.
    Create(create::Args),
    /// Add an attached device to a snapshot that is not taken yet.
    Add(add::Args),
    /// Take a snapshot: freeze its devices, switch their change maps and
    /// create their images at one instant.
    Take(take::Args),
    /// Snapshot state of a device: its image and whether it is corrupted.
    Info(info::Args),
    /// Wait for a snapshot's events (corruption, low space).
    Events(events::Args),
    /// Destroy a snapshot, its images and its storage; tracking goes on.
    Destroy(destroy::Args),
    /// List the ids of all snapshots.
    List(list::Args),
}

/// Runs a `snapshot` subcommand.
pub fn run(cmd: &Command, ctx: &Ctx) -> Result<()> {
    match cmd {
        Command::Create(a) => create::run(a, ctx),
        Command::Add(a) => add::run(a, ctx),
        Command::Take(a) => take::run(a, ctx),
        Command::Info(a) => info::run(a, ctx),
        Command::Events(a) => events::run(a, ctx),
        Command::Destroy(a) => destroy::run(a, ctx),
        Command::List(a) => list::run(a, ctx),
    }
}
