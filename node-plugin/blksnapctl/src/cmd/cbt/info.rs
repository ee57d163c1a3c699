//! `blksnapctl cbt info DEV`.

use std::path::PathBuf;

use serde::Serialize;

use crate::units::Size;
use crate::{device, Ctx, Report, Result};

/// Arguments of `cbt info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Attached block device.
    pub device: PathBuf,
}

/// The tracking state of a device.
#[derive(Debug, Serialize)]
pub struct CbtInfoReport {
    pub device: PathBuf,
    pub capacity: u64,
    pub block_size: u32,
    pub block_count: u32,
    pub generation_id: String,
    pub changes_number: u8,
}

impl CbtInfoReport {
    /// The report of `info` for `device`.
    pub fn new(device: PathBuf, info: &blksnap::CbtInfo) -> Self {
        CbtInfoReport {
            device,
            capacity: info.device_capacity,
            block_size: info.block_size,
            block_count: info.block_count,
            generation_id: info.generation_id.hyphenated().to_string(),
            changes_number: info.changes_number,
        }
    }
}

impl Report for CbtInfoReport {
    fn human(&self) -> String {
        format!(
            "device:          {}\n\
             capacity:        {} ({} bytes)\n\
             tracking block:  {}\n\
             blocks:          {}\n\
             generation:      {}\n\
             changes number:  {}",
            self.device.display(),
            Size(self.capacity),
            self.capacity,
            Size(u64::from(self.block_size)),
            self.block_count,
            self.generation_id,
            self.changes_number
        )
    }
}

/// Prints the device's tracking state.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    let ctl = ctx.control()?;
    let dev = device::open_block_device(&args.device)?;
    let info = ctl.cbt_info(&dev)?;
    ctx.emit(&CbtInfoReport::new(args.device.clone(), &info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{render, Format};

    #[test]
    fn renders_both_ways() {
        let r = CbtInfoReport {
            device: "/dev/vda".into(),
            capacity: 1 << 30,
            block_size: 65536,
            block_count: 16384,
            generation_id: "0b5e7c4e-1f43-4b6a-9d35-0d3a2f5c9e11".into(),
            changes_number: 3,
        };
        let human = render(&r, Format::Human);
        assert!(human.contains("capacity:        1 GiB (1073741824 bytes)"));
        assert!(human.contains("tracking block:  64 KiB"));
        assert!(human.ends_with("changes number:  3"));
        let json: serde_json::Value = serde_json::from_str(&render(&r, Format::Json)).unwrap();
        assert_eq!(json["block_count"], 16384);
        assert_eq!(json["changes_number"], 3);
        assert_eq!(json["device"], "/dev/vda");
    }
}
