//! File system volumes: made on first stage, mounted at the staging path,
//! bind-mounted into each pod's target directory.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::format::Content;
use crate::mount::{bind, mount_at, mount_fs, unmount};
use crate::{format, Error, Result};

/// Stages `device` at `staging`: makes `fs_type` if the device carries no
/// signature at all, and mounts it with `flags`. A device that carries
/// anything else (a partition table, RAID, LVM, swap, another file
/// system) is refused, as is formatting for a read-only stage.
pub fn stage(
    device: &Path,
    staging: &Path,
    fs_type: &str,
    flags: &[String],
    readonly: bool,
) -> Result<()> {
    let rdev = std::fs::metadata(device)
        .map_err(|e| Error::io("stat", device, e))?
        .rdev();
    if let Some(m) = mount_at(staging)? {
        let dev = (
            u64::from(nix::sys::stat::major(rdev) as u32),
            u64::from(nix::sys::stat::minor(rdev) as u32),
        );
        return if m.device == dev {
            Ok(())
        } else {
            Err(Error::AlreadyExists {
                kind: "staging path",
                name: staging.display().to_string(),
            })
        };
    }
    match format::probe(device)? {
        Content::Empty if readonly => {
            return Err(Error::Precondition(format!(
                "{} has no file system, and a read-only stage does not make one",
                device.display()
            )))
        }
        Content::Empty => format::make(device, fs_type)?,
        Content::Type(t) if t == fs_type => {}
        other => {
            return Err(Error::Precondition(format!(
                "{} holds {other}, not {fs_type}; it is not formatted over",
                device.display()
            )))
        }
    }
    let mut flags = flags.to_vec();
    // A restore or a clone of an xfs volume has its source's UUID, and xfs
    // refuses a second mount of one UUID on the node.
    if fs_type == "xfs"
        && !flags
            .iter()
            .flat_map(|f| f.split(','))
            .any(|f| f == "nouuid")
    {
        flags.push("nouuid".to_owned());
    }
    std::fs::create_dir_all(staging).map_err(|e| Error::io("create", staging, e))?;
    mount_fs(device, staging, fs_type, &flags, readonly)
}

/// Unstages: unmounts the staging path.
pub fn unstage(staging: &Path) -> Result<()> {
    while mount_at(staging)?.is_some() {
        unmount(staging)?;
    }
    Ok(())
}

/// Publishes the staged file system at `target` (a directory).
pub fn publish(staging: &Path, target: &Path, readonly: bool) -> Result<()> {
    if mount_at(staging)?.is_none() {
        return Err(Error::Precondition(format!(
            "{} is not staged",
            staging.display()
        )));
    }
    if mount_at(target)?.is_some() {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|e| Error::io("create", target, e))?;
    bind(staging, target, readonly)
}

/// Unpublishes `target` and removes the directory.
pub fn unpublish(target: &Path) -> Result<()> {
    unmount(target)?;
    match std::fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", target, e)),
    }
}

/// Bytes and inodes of the file system mounted at `path`:
/// `(available, total, used)` for each.
pub fn usage(path: &Path) -> Result<[(u64, u64, u64); 2]> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| Error::io("statvfs", path, e.into()))?;
    let f = st.fragment_size();
    let bytes = (
        st.blocks_available() * f,
        st.blocks() * f,
        (st.blocks() - st.blocks_free()) * f,
    );
    let inodes = (
        st.files_available(),
        st.files(),
        st.files() - st.files_free(),
    );
    Ok([bytes, inodes])
}
