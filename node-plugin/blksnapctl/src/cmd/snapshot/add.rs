//! `blksnapctl snapshot add ID DEV`.

use std::path::PathBuf;

use blksnap::SnapshotId;
use serde::Serialize;

use crate::{device, Ctx, Report, Result};

/// Arguments of `snapshot add`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshot id, as printed by `snapshot create`.
    pub id: SnapshotId,
    /// Attached block device to add.
    pub device: PathBuf,
}

/// A device added to a snapshot.
#[derive(Debug, Serialize)]
pub struct Added {
    pub id: String,
    pub device: PathBuf,
}

impl Report for Added {
    fn human(&self) -> String {
        format!("added {} to snapshot {}", self.device.display(), self.id)
    }
}

/// Adds the device.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    let ctl = ctx.control()?;
    let dev = device::open_block_device(&args.device)?;
    ctl.snapshot_add(args.id, &dev)?;
    ctx.emit(&Added {
        id: args.id.to_string(),
        device: args.device.clone(),
    })
}
