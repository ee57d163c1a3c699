//! `blksnapctl cbt dirty DEV OFFSET:LEN...`: mark ranges changed.

use std::path::PathBuf;

use serde::Serialize;

use crate::units::{ByteRange, Size};
use crate::{device, Ctx, Report, Result};

/// Arguments of `cbt dirty`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Attached block device.
    pub device: PathBuf,
    /// Byte ranges OFFSET:LENGTH, whole 512-byte sectors, units allowed
    /// (e.g. 1M:64K).
    #[arg(required = true, value_name = "OFFSET:LEN")]
    pub ranges: Vec<ByteRange>,
}

/// Ranges marked as changed.
#[derive(Debug, Serialize)]
pub struct Dirtied {
    pub device: PathBuf,
    pub ranges: usize,
    pub bytes: u64,
}

impl Report for Dirtied {
    fn human(&self) -> String {
        format!(
            "{}: marked {} range(s), {}, as changed",
            self.device.display(),
            self.ranges,
            Size(self.bytes)
        )
    }
}

/// Marks the ranges.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    let ctl = ctx.control()?;
    let dev = device::open_block_device(&args.device)?;
    let sectors: Vec<blksnap::SectorRange> = args.ranges.iter().map(ByteRange::sectors).collect();
    ctl.cbt_dirty(&dev, &sectors)?;
    ctx.emit(&Dirtied {
        device: args.device.clone(),
        ranges: args.ranges.len(),
        bytes: args.ranges.iter().map(|r| r.length).sum(),
    })
}
