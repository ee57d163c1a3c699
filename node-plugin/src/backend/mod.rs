//! Volume backends: where a volume's blocks live.
//!
//! * [`file_pool::FilePool`]: sparse files in a pool directory, each bound
//!   to a loop device (bound again after a reboot);
//! * [`raw_device::RawDevices`]: whole block devices the operator lists by
//!   stable path (`/dev/disk/by-id/...`), one volume each.
//!
//! The plugin sees both through [`Backend`]; change tracking and snapshots
//! work on the block device either one hands out.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::state::{BackendKind, VolumeRecord};
use crate::{Error, Result};

pub mod file_pool;
pub mod loop_device;
pub mod raw_device;

/// What a backend made for a new volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// Where the volume lives, as [`VolumeRecord::location`].
    pub location: String,
    /// Its usable size in bytes (at least the requested size).
    pub capacity: u64,
}

/// A place volumes are carved from.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Makes volume `local` of at least `size` bytes. `taken` lists the
    /// locations of existing volumes of this backend.
    fn create(&self, local: &str, size: u64, taken: &BTreeSet<String>) -> Result<Provisioned>;

    /// Releases the volume's storage; storage already gone is fine, a
    /// device in use is refused (see [`open_exclusive`]).
    fn delete(&self, vol: &VolumeRecord) -> Result<()>;

    /// Whether [`delete`](Backend::delete) writes the whole volume (zeroes
    /// a device), too long for one call: the plugin runs it in the
    /// background.
    fn deletes_slowly(&self) -> bool;

    /// The volume's block device, bound first if it is not (a loop device
    /// after a reboot).
    fn device(&self, vol: &VolumeRecord) -> Result<PathBuf>;

    /// Grows the volume to at least `size` bytes; returns its capacity.
    fn expand(&self, vol: &VolumeRecord, size: u64) -> Result<u64>;

    /// Byte ranges the backing store has allocated, if it can tell.
    fn allocated(&self, vol: &VolumeRecord) -> Result<Option<Vec<Range<u64>>>>;

    /// Whether a new volume reads as zeros, so that filling it may skip
    /// zero blocks.
    fn zeroed_on_create(&self) -> bool;

    /// Bytes a new volume may still get.
    fn available(&self, taken: &BTreeSet<String>) -> Result<u64>;
}

/// The backends a node is given: the pool in `pool_dir`, if any, and the
/// static devices (`NAME=PATH`), if any.
pub fn configured(
    pool_dir: Option<&Path>,
    static_devices: &[String],
) -> Result<Vec<Arc<dyn Backend>>> {
    let mut backends: Vec<Arc<dyn Backend>> = Vec::new();
    if let Some(dir) = pool_dir {
        backends.push(Arc::new(file_pool::FilePool::new(dir)?));
    }
    if !static_devices.is_empty() {
        backends.push(Arc::new(raw_device::RawDevices::new(static_devices)?));
    }
    Ok(backends)
}

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

/// Opens block device `path` read-write and exclusively (`O_EXCL`), which
/// the kernel refuses while the device is mounted or claimed by another
/// exclusive opener: `Precondition` then, so that nothing is released or
/// zeroed under a file system that is still in use.
pub fn open_exclusive(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_EXCL)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::EBUSY) {
                Error::Precondition(format!(
                    "{} is in use (mounted or held open); unpublish and unstage the volume first",
                    path.display()
                ))
            } else {
                Error::io("open", path, e)
            }
        })
}

/// Size in bytes of the block device open at `f`.
pub fn device_size(f: &File, path: &Path) -> Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which is valid.
    unsafe { blkgetsize64(f.as_raw_fd(), &mut size) }
        .map_err(|e| Error::io("BLKGETSIZE64", path, e.into()))?;
    Ok(size)
}

/// Rounds `n` up to a multiple of `to` (a power of two).
pub fn round_up(n: u64, to: u64) -> Option<u64> {
    debug_assert!(to.is_power_of_two());
    n.checked_add(to - 1).map(|v| v & !(to - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_up_to_powers_of_two() {
        assert_eq!(round_up(0, 4096), Some(0));
        assert_eq!(round_up(1, 4096), Some(4096));
        assert_eq!(round_up(4096, 4096), Some(4096));
        assert_eq!(round_up(u64::MAX, 4096), None);
    }

    #[test]
    fn size_of_a_non_device_is_an_error() {
        let f = tempfile::tempfile().expect("tempfile");
        assert!(device_size(&f, Path::new("tmp")).is_err());
    }
}
