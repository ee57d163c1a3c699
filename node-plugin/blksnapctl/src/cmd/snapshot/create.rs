//! `blksnapctl snapshot create`.

use std::path::PathBuf;

use serde::Serialize;

use crate::device::{self, StorageSpec};
use crate::units::{self, Size, SECTOR};
use crate::{Ctx, Error, Report, Result};

/// Arguments of `snapshot create`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("store").required(true).args(["storage", "storage_dir"])))]
pub struct Args {
    /// Difference storage: a block device (opened O_EXCL; its data is
    /// overwritten) or a regular file (created 0600 if missing).
    #[arg(long, value_name = "PATH")]
    pub storage: Option<PathBuf>,
    /// Put the difference storage in an unnamed O_TMPFILE file in DIR
    /// (unreachable through the file system, gone with the snapshot).
    #[arg(long, value_name = "DIR")]
    pub storage_dir: Option<PathBuf>,
    /// Largest size the storage may reach (e.g. 2G); whole sectors.
    /// Required for a file; defaults to the size of a storage device.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_sector_size)]
    pub limit: Option<u64>,
}

impl Args {
    /// Where the storage goes.
    pub fn storage_spec(&self) -> StorageSpec {
        match (&self.storage, &self.storage_dir) {
            (Some(p), _) => StorageSpec::Path(p.clone()),
            // clap's group guarantees one of the two.
            (None, Some(d)) => StorageSpec::TmpfileIn(d.clone()),
            (None, None) => unreachable!("clap requires --storage or --storage-dir"),
        }
    }
}

/// A new snapshot.
#[derive(Debug, Serialize)]
pub struct Created {
    pub id: String,
    pub limit: u64,
}

impl Report for Created {
    /// Only the id, so that `id=$(blksnapctl snapshot create ...)` works.
    fn human(&self) -> String {
        self.id.clone()
    }
}

/// The storage limit in bytes: the one asked for, else a storage device's
/// size; a file needs an explicit limit.
pub fn resolve_limit(asked: Option<u64>, device_size: Option<u64>) -> Result<u64> {
    let limit = match (asked, device_size) {
        (Some(l), _) => l,
        (None, Some(size)) => size - size % SECTOR,
        (None, None) => {
            return Err(Error::Usage {
                what: "--limit is required for a file storage",
            })
        }
    };
    if limit < SECTOR {
        return Err(Error::Usage {
            what: "--limit must be at least one sector",
        });
    }
    Ok(limit)
}

/// Opens the storage, creates the snapshot and prints its id.
pub fn run(args: &Args, ctx: &Ctx) -> Result<()> {
    // Check the limit before touching the storage, but after we know
    // whether it is a device.
    if args.storage_dir.is_some() {
        resolve_limit(args.limit, None)?;
    }
    let ctl = ctx.control()?;
    let storage = device::open_storage(&args.storage_spec())?;
    let limit = resolve_limit(args.limit, storage.device_size)?;
    let id = ctl.snapshot_create(&storage.file, limit / SECTOR)?;
    // The kernel holds its own reference to the storage: closing ours is
    // fine. With several snapshots of a device the storage stays in use
    // after this snapshot's destroy while older ones read copies in it
    // (README, "Limits of the module").
    drop(storage);
    if ctx.format == crate::Format::Human && ctx.progress {
        eprintln!("created snapshot {id}, storage limit {}", Size(limit));
    }
    ctx.emit(&Created {
        id: id.to_string(),
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(resolve_limit(Some(1 << 30), None).unwrap(), 1 << 30);
        assert_eq!(resolve_limit(Some(1 << 30), Some(4096)).unwrap(), 1 << 30);
        assert_eq!(resolve_limit(None, Some((1 << 30) + 100)).unwrap(), 1 << 30);
        let e = resolve_limit(None, None).unwrap_err();
        assert_eq!(e.exit_code(), crate::exit::USAGE);
        assert!(resolve_limit(Some(0), None).is_err());
    }
}
