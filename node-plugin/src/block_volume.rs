//! Raw block volumes: the device node bind-mounted on the file the kubelet
//! names as the target.

use std::fs::OpenOptions;
use std::path::Path;

use crate::mount::{bind, mount_at, unmount};
use crate::{Error, Result};

/// Publishes `device` at `target` (a file, created if missing).
pub fn publish(device: &Path, target: &Path, readonly: bool) -> Result<()> {
    if mount_at(target)?.is_some() {
        return Ok(());
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(target)
        .map_err(|e| Error::io("create", target, e))?;
    bind(device, target, readonly)
}

/// Unpublishes `target` and removes the file.
pub fn unpublish(target: &Path) -> Result<()> {
    unmount(target)?;
    match std::fs::remove_file(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", target, e)),
    }
}
