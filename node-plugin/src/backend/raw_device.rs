//! Static raw devices: whole block devices the operator lists by name and
//! stable path (`fast-1=/dev/disk/by-id/nvme-...`); each is one volume.
//!
//! A device's content before its first volume is unknown, so a new volume
//! is not assumed to read as zeros. When a volume is deleted its device is
//! zeroed (`BLKZEROOUT`, which the kernel turns into WRITE ZEROES where the
//! device offers it) so that the next tenant never sees the last one's
//! data; the plugin runs that on a thread of its own, as it writes the
//! whole device.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{device_size, open_exclusive, Backend, Provisioned};
use crate::state::{BackendKind, VolumeRecord};
use crate::{Error, Result};
use blksnap_node_api::ids::is_local_name;

nix::ioctl_write_ptr_bad!(blkzeroout, 0x127f, [u64; 2]);

/// The configured devices.
#[derive(Debug)]
pub struct RawDevices {
    devices: BTreeMap<String, PathBuf>,
}

impl RawDevices {
    /// Parses `name=path` entries; names follow the volume-name rules.
    pub fn new(entries: &[String]) -> Result<Self> {
        let mut devices = BTreeMap::new();
        for e in entries {
            let Some((name, path)) = e.split_once('=') else {
                return Err(Error::Config(format!(
                    "static device {e:?} must be NAME=/dev/disk/by-id/..."
                )));
            };
            if !is_local_name(name) {
                return Err(Error::Config(format!(
                    "static device name {name:?} must be 1 to 16 characters of [a-z0-9-]"
                )));
            }
            let path = PathBuf::from(path);
            if !path.starts_with("/dev/disk/") {
                tracing::warn!(device = %path.display(),
                    "static device path is not under /dev/disk/: it may name another disk after a reboot");
            }
            if devices.insert(name.to_owned(), path).is_some() {
                return Err(Error::Config(format!(
                    "static device {name:?} listed twice"
                )));
            }
        }
        // Two names for one disk (its by-id and its by-path link, say)
        // would hand it to two volumes.
        let mut seen: BTreeMap<u64, &String> = BTreeMap::new();
        for (name, path) in &devices {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            if !meta.file_type().is_block_device() {
                continue;
            }
            if let Some(other) = seen.insert(meta.rdev(), name) {
                return Err(Error::Config(format!(
                    "static devices {other:?} and {name:?} are the same device"
                )));
            }
        }
        Ok(RawDevices { devices })
    }

    fn path(&self, name: &str) -> Result<&PathBuf> {
        self.devices
            .get(name)
            .ok_or_else(|| Error::not_found("static device", name))
    }

    fn size(path: &Path) -> Result<u64> {
        let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
        device_size(&f, path)
    }

    /// The size of a device that is no volume's, if nothing else holds it
    /// (mounted by the host, part of an md or dm device): a device in use
    /// elsewhere is neither handed out nor counted free.
    fn free_size(path: &Path) -> Result<u64> {
        let f = open_exclusive(path)?;
        device_size(&f, path)
    }
}

impl Backend for RawDevices {
    fn kind(&self) -> BackendKind {
        BackendKind::Device
    }

    fn create(&self, _local: &str, size: u64, taken: &BTreeSet<String>) -> Result<Provisioned> {
        // The smallest free device that is large enough.
        let mut best: Option<(u64, &String)> = None;
        for (name, path) in &self.devices {
            if taken.contains(name) {
                continue;
            }
            let cap = match Self::free_size(path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(device = %path.display(), error = %e, "static device unusable");
                    continue;
                }
            };
            if cap >= size && best.is_none_or(|(c, _)| cap < c) {
                best = Some((cap, name));
            }
        }
        let (capacity, name) = best.ok_or_else(|| {
            Error::Exhausted(format!("no free static device of {size} bytes or more"))
        })?;
        Ok(Provisioned {
            location: name.clone(),
            capacity,
        })
    }

    fn delete(&self, vol: &VolumeRecord) -> Result<()> {
        let path = self.path(&vol.location)?;
        // Held for the whole zeroing: nothing can mount the device meanwhile.
        let f = open_exclusive(path)?;
        let size = device_size(&f, path)?;
        let range = [0u64, size];
        // SAFETY: BLKZEROOUT reads two u64 (start, length) from the pointer.
        unsafe { blkzeroout(f.as_raw_fd(), &range) }
            .map_err(|e| Error::io("BLKZEROOUT", path, e.into()))?;
        Ok(())
    }

    fn deletes_slowly(&self) -> bool {
        true
    }

    fn device(&self, vol: &VolumeRecord) -> Result<PathBuf> {
        let path = self.path(&vol.location)?;
        if !path.exists() {
            return Err(Error::Unavailable(format!(
                "static device {} is missing",
                path.display()
            )));
        }
        Ok(path.clone())
    }

    fn expand(&self, vol: &VolumeRecord, size: u64) -> Result<u64> {
        let cap = Self::size(self.path(&vol.location)?)?;
        if size <= cap {
            Ok(cap)
        } else {
            Err(Error::OutOfRange(format!(
                "static device {} holds {cap} bytes; it cannot grow to {size}",
                vol.location
            )))
        }
    }

    fn allocated(&self, _vol: &VolumeRecord) -> Result<Option<Vec<Range<u64>>>> {
        Ok(None)
    }

    fn zeroed_on_create(&self) -> bool {
        false
    }

    fn available(&self, taken: &BTreeSet<String>) -> Result<u64> {
        Ok(self
            .devices
            .iter()
            .filter(|(n, _)| !taken.contains(*n))
            .filter_map(|(_, p)| Self::free_size(p).ok())
            .max()
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked() {
        assert!(RawDevices::new(&["fast-1=/dev/disk/by-id/x".into()]).is_ok());
        for bad in [
            vec!["nopath".to_owned()],
            vec!["UPPER=/dev/x".to_owned()],
            vec!["a=/dev/x".to_owned(), "a=/dev/y".to_owned()],
        ] {
            assert!(
                matches!(RawDevices::new(&bad), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn no_device_fits_is_resource_exhausted() {
        let devs = RawDevices::new(&["a=/nonexistent/disk".into()]).expect("parse");
        let r = devs.create("v", 1, &BTreeSet::new());
        assert!(matches!(r, Err(Error::Exhausted(_))), "{r:?}");
    }
}
