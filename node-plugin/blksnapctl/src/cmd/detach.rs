//! `blksnapctl detach DEV`: stop change tracking.

use std::path::PathBuf;

use serde::Serialize;

use crate::{device, Ctx, Report, Result};

/// Arguments of `detach`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Attached block device; refused (exit 4) while it is in a snapshot.
    pub device: PathBuf,
}

/// A detached device.
#[derive(Debug, Serialize)]
pub struct Detached {
    pub device: PathBuf,
}

impl Report for Detached {
    fn human(&self) -> String {
        format!("detached {}", self.device.display())
    }
}

/// Detaches the device.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    let ctl = ctx.control()?;
    let dev = device::open_block_device(&args.device)?;
    ctl.detach(&dev)?;
    ctx.emit(&Detached {
        device: args.device.clone(),
    })
}
