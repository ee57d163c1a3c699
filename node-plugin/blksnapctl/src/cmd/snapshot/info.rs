//! `blksnapctl snapshot info DEV`.

use std::path::PathBuf;

use serde::Serialize;

use crate::{device, Ctx, Report, Result};

/// Arguments of `snapshot info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Attached block device.
    pub device: PathBuf,
}

/// The snapshot state of a device.
#[derive(Debug, Serialize)]
pub struct SnapshotState {
    pub device: PathBuf,
    /// `/dev/blksnap-imageN` once the snapshot is taken.
    pub image: Option<PathBuf>,
    /// Symbolic errno (e.g. `ENOSPC`) that corrupted the image.
    pub error: Option<String>,
}

impl SnapshotState {
    /// The state from the kernel's answer.
    pub fn new(device: PathBuf, info: &blksnap::SnapshotInfo) -> Self {
        SnapshotState {
            device,
            image: info.image_path(),
            error: info.error.map(|e| format!("{e:?}")),
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
        format!("{}: {image}{state}", self.device.display())
    }
}

/// Prints the device's snapshot state.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    let ctl = ctx.control()?;
    let dev = device::open_block_device(&args.device)?;
    let info = ctl.snapshot_info(&dev)?;
    ctx.emit(&SnapshotState::new(args.device.clone(), &info))
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
