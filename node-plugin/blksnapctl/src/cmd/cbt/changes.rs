//! `blksnapctl cbt changes DEV --since N`: changed byte ranges.

use std::ops::Range;
use std::path::PathBuf;

use serde::Serialize;

use crate::units::Size;
use crate::{device, Ctx, Report, Result};

/// Arguments of `cbt changes`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Attached block device.
    pub device: PathBuf,
    /// Snapshot number (0-255) of the last backup; ranges changed after it
    /// are listed. 0 lists everything written since tracking started.
    #[arg(long, value_name = "N")]
    pub since: u8,
}

/// One changed range, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

/// The changed ranges of a device.
#[derive(Debug, Serialize)]
pub struct Changes {
    pub device: PathBuf,
    pub since: u8,
    pub changes_number: u8,
    pub generation_id: String,
    pub block_size: u32,
    pub capacity: u64,
    pub changed_bytes: u64,
    pub ranges: Vec<Extent>,
}

impl Changes {
    /// The report for `ranges` of `device`.
    pub fn new(device: PathBuf, since: u8, info: &blksnap::CbtInfo, ranges: &[Range<u64>]) -> Self {
        let ranges: Vec<Extent> = ranges
            .iter()
            .map(|r| Extent {
                offset: r.start,
                length: r.end - r.start,
            })
            .collect();
        Changes {
            device,
            since,
            changes_number: info.changes_number,
            generation_id: info.generation_id.hyphenated().to_string(),
            block_size: info.block_size,
            capacity: info.device_capacity,
            changed_bytes: ranges.iter().map(|e| e.length).sum(),
            ranges,
        }
    }
}

impl Report for Changes {
    fn human(&self) -> String {
        let mut out = format!(
            "{}: {} range(s), {} of {} changed since snapshot {} \
             (map of snapshot {}, blocks of {}, generation {})",
            self.device.display(),
            self.ranges.len(),
            Size(self.changed_bytes),
            Size(self.capacity),
            self.since,
            self.changes_number,
            Size(u64::from(self.block_size)),
            self.generation_id
        );
        if !self.ranges.is_empty() {
            out.push_str(&format!("\n{:>16} {:>16}", "OFFSET", "LENGTH"));
            for e in &self.ranges {
                out.push_str(&format!("\n{:>16} {:>16}", e.offset, e.length));
            }
        }
        out
    }
}

/// Reads the frozen map and prints its changed ranges.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    let ctl = ctx.control()?;
    let dev = device::open_block_device(&args.device)?;
    let info = ctl.cbt_info(&dev)?;
    let map = ctl.cbt_map_all(&dev)?;
    let ranges = blksnap::cbt::changed_ranges_for(&info, &map, args.since);
    ctx.emit(&Changes::new(
        args.device.clone(),
        args.since,
        &info,
        &ranges,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{render, Format};

    fn info() -> blksnap::CbtInfo {
        blksnap::CbtInfo {
            device_capacity: 4 << 20,
            block_size: 65536,
            block_count: 64,
            generation_id: Default::default(),
            changes_number: 2,
        }
    }

    #[test]
    fn table() {
        let cases: &[(&[Range<u64>], &str, u64)] = &[
            (
                &[],
                "/dev/vda: 0 range(s), 0 B of 4 MiB changed since snapshot 1",
                0,
            ),
            (
                &[0..65536, (1 << 20)..(1 << 20) + 131072],
                "/dev/vda: 2 range(s), 192 KiB of 4 MiB changed since snapshot 1",
                196608,
            ),
        ];
        for &(ranges, first_line, total) in cases {
            let c = Changes::new("/dev/vda".into(), 1, &info(), ranges);
            assert_eq!(c.changed_bytes, total);
            let human = render(&c, Format::Human);
            assert!(human.starts_with(first_line), "{human}");
            assert_eq!(
                human.lines().count(),
                if ranges.is_empty() {
                    1
                } else {
                    2 + ranges.len()
                }
            );
            let json: serde_json::Value = serde_json::from_str(&render(&c, Format::Json)).unwrap();
            assert_eq!(json["ranges"].as_array().unwrap().len(), ranges.len());
            assert_eq!(json["changed_bytes"], total);
        }
        let one = std::slice::from_ref(&(4096..8192));
        let c = Changes::new("/dev/vda".into(), 1, &info(), one);
        let human = render(&c, Format::Human);
        assert_eq!(
            human
                .lines()
                .last()
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["4096", "4096"]
        );
    }
}
