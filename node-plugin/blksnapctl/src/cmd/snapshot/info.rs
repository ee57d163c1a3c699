//! `blksnapctl snapshot info [--snapshot ID] DEV`.

use std::path::PathBuf;

use blksnap::SnapshotId;
use serde::Serialize;

use crate::{device, Ctx, Report, Result};

/// Arguments of `snapshot info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Attached block device.
    pub device: PathBuf,
    /// The snapshot to report, one of several the device may be in
    /// (default: its newest taken one).
    #[arg(long)]
    pub snapshot: Option<SnapshotId>,
}

/// The snapshot state of a device.
#[derive(Debug, Serialize)]
pub struct SnapshotState {
    pub device: PathBuf,
    /// `/dev/blksnap-imageN` once the snapshot is taken.
    pub image: Option<PathBuf>,
    /// Symbolic errno (e.g. `ENOSPC`) that corrupted the image.
    pub error: Option<String>,
    /// With `--snapshot`: sectors of that snapshot's difference storage
    /// holding copies still read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_used_sectors: Option<u64>,
}

impl SnapshotState {
    /// The state from the kernel's answer.
    pub fn new(device: PathBuf, info: &blksnap::SnapshotInfo) -> Self {
        SnapshotState {
            device,
            image: info.image_path(),
            error: info.error.map(|e| format!("{e:?}")),
            storage_used_sectors: None,
        }
    }
}

impl Report for SnapshotState {
    fn human(&self) -> String {
        let image = self.image.as_ref().map_or_else(
            || "no image (not in a taken snapshot)".to_owned(),
            |p| format!("image {}", p.display()),
        );
        let state = match &self.error {
            None if self.image.is_some() => ", ok".to_owned(),
            None => String::new(),
            Some(e) => format!(", CORRUPTED ({e})"),
        };
        let used = self.storage_used_sectors.map_or_else(String::new, |s| {
            format!(", storage holds {s} sectors of copies")
        });
        format!("{}: {image}{state}{used}", self.device.display())
    }
}

/// Prints the device's snapshot state.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    let ctl = ctx.control()?;
    let dev = device::open_block_device(&args.device)?;
    let state = match args.snapshot {
        None => SnapshotState::new(args.device.clone(), &ctl.snapshot_info(&dev)?),
        Some(id) => {
            let of = ctl.snapshot_info_of(id, &dev)?;
            SnapshotState {
                storage_used_sectors: Some(of.storage_used_sectors),
                ..SnapshotState::new(args.device.clone(), &of.info)
            }
        }
    };
    ctx.emit(&state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{render, Format};
    use nix::errno::Errno;

    #[test]
    fn table() {
        let cases = [
            (None, None, "/dev/vda: no image (not in a taken snapshot)"),
            (
                Some("blksnap-image0"),
                None,
                "/dev/vda: image /dev/blksnap-image0, ok",
            ),
            (
                Some("blksnap-image0"),
                Some(Errno::ENOSPC),
                "/dev/vda: image /dev/blksnap-image0, CORRUPTED (ENOSPC)",
            ),
        ];
        for (image, error, want) in cases {
            let info = blksnap::SnapshotInfo {
                error,
                image: image.map(str::to_owned),
            };
            let s = SnapshotState::new("/dev/vda".into(), &info);
            assert_eq!(render(&s, Format::Human), want);
            let json: serde_json::Value = serde_json::from_str(&render(&s, Format::Json)).unwrap();
            assert_eq!(json["image"].is_null(), image.is_none());
            assert_eq!(json["error"].is_null(), error.is_none());
        }
    }
}
