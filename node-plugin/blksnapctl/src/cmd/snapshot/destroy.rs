//! `blksnapctl snapshot destroy ID`.

use blksnap::SnapshotId;
use serde::Serialize;

use crate::{Ctx, Report, Result};

/// Arguments of `snapshot destroy`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot id.
    pub id: SnapshotId,
}

/// A destroyed snapshot.
#[derive(Debug, Serialize)]
pub struct Destroyed {
    pub id: String,
}

impl Report for Destroyed {
    fn human(&self) -> String {
        format!("destroyed snapshot {}", self.id)
    }
}

/// Destroys the snapshot.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    ctx.control()?.snapshot_destroy(args.id)?;
    ctx.emit(&Destroyed {
        id: args.id.to_string(),
    })
}
