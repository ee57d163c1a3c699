//! The subcommands: one module each, exposing `Args` and `run()`; groups
//! (`cbt`, `snapshot`, `image`) expose a `Command` enum and a `run()` that
//! dispatches to their own modules.

use clap::Subcommand;

use crate::{Ctx, Result};

pub mod attach;
pub mod cbt;
pub mod detach;
pub mod image;
pub mod snapshot;
pub mod version;

/// The top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the kernel module's interface version.
    Version(version::Args),
    /// Start change tracking on a block device (whole disk or partition).
    Attach(attach::Args),
    /// Stop change tracking on a block device (refused while it is in a
    /// snapshot).
    Detach(detach::Args),
    /// Changed block tracking: state, changed ranges, marking ranges.
    #[command(subcommand)]
    Cbt(cbt::Command),
    /// Snapshots: create, add devices, take, inspect, destroy.
    #[command(subcommand)]
    Snapshot(snapshot::Command),
    /// Snapshot images: compare with a reference, copy out.
    #[command(subcommand)]
    Image(image::Command),
}

/// Runs `cmd`.
pub fn run(cmd: &Command, ctx: &Ctx) -> Result<()> {
    match cmd {
        Command::Version(a) => version::run(a, ctx),
        Command::Attach(a) => attach::run(a, ctx),
        Command::Detach(a) => detach::run(a, ctx),
        Command::Cbt(c) => cbt::run(c, ctx),
        Command::Snapshot(c) => snapshot::run(c, ctx),
        Command::Image(c) => image::run(c, ctx),
    }
}
