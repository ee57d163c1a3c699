//! `blksnapctl attach DEV`: start change tracking.

use std::path::PathBuf;

use serde::Serialize;

use crate::units::Size;
use crate::{device, Ctx, Report, Result};

/// Arguments of `attach`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Block device to track (whole disk or partition); it stays in use.
    pub device: PathBuf,
}

/// An attached device and its tracking geometry.
#[derive(Debug, Serialize)]
pub struct Attached {
    pub device: PathBuf,
    pub block_size: u32,
    pub block_count: u32,
}

impl Report for Attached {
    fn human(&self) -> String {
        format!(
            "attached {}: {} tracking blocks of {}",
            self.device.display(),
            self.block_count,
            Size(u64::from(self.block_size))
        )
    }
}

/// Attaches the device and reports its tracking geometry.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    let ctl = ctx.control()?;
    let dev = device::open_block_device(&args.device)?;
    ctl.attach(&dev)?;
    let info = ctl.cbt_info(&dev)?;
    ctx.emit(&Attached {
        device: args.device.clone(),
        block_size: info.block_size,
        block_count: info.block_count,
    })
}
