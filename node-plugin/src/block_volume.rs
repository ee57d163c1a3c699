//! Raw block volumes: the device node bind-mounted on the file the kubelet
//! names as the target.

use std::fs::OpenOptions;
use std::path::Path;

use crate::mount::{bind, device_number, mount_at, unmount_all};
use crate::{Error, Result};

/// Publishes `device` at `target` (a file, created if missing). A target
/// that already holds it with the same read-only mode is fine; anything
/// else mounted there is refused.
pub fn publish(device: &Path, target: &Path, readonly: bool) -> Result<()> {
    if let Some(m) = mount_at(target)? {
        return if m.readonly == readonly && device_number(target)? == device_number(device)? {
            Ok(())
        } else {
            Err(Error::AlreadyExists {
                kind: "target path",
                name: target.display().to_string(),
            })
        };
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
    unmount_all(target)?;
    match std::fs::remove_file(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", target, e)),
    }
}
