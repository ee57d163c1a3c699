//! File system volumes: made on first stage, mounted at the staging path,
//! bind-mounted into each pod's target directory.

use std::path::Path;

use nix::mount::MsFlags;

use crate::format::Content;
use crate::mount::{bind, device_number, mount_at, mount_fs, split_flags, unmount_all};
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
    let readonly = split_flags(flags, readonly).0.contains(MsFlags::MS_RDONLY);
    if let Some(m) = mount_at(staging)? {
        return if m.device == device_number(device)?
            && m.fs_type == fs_type
            && m.readonly == readonly
        {
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
    unmount_all(staging)
}

/// Publishes the file system of `device`, staged at `staging`, at
/// `target` (a directory). A target that already holds it with the same
/// read-only mode is fine; anything else mounted there is refused.
pub fn publish(device: &Path, staging: &Path, target: &Path, readonly: bool) -> Result<()> {
    let dev = device_number(device)?;
    let staged = mount_at(staging)?
        .filter(|m| m.device == dev)
        .ok_or_else(|| {
            Error::Precondition(format!("the volume is not staged at {}", staging.display()))
        })?;
    if let Some(m) = mount_at(target)? {
        // A bind of a read-only stage is read-only whatever was asked.
        return if m.device == staged.device
            && m.root == staged.root
            && m.readonly == (readonly || staged.readonly)
        {
            Ok(())
        } else {
            Err(Error::AlreadyExists {
                kind: "target path",
                name: target.display().to_string(),
            })
        };
    }
    std::fs::create_dir_all(target).map_err(|e| Error::io("create", target, e))?;
    bind(staging, target, readonly)
}

/// Unpublishes `target` and removes the directory.
pub fn unpublish(target: &Path) -> Result<()> {
    unmount_all(target)?;
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
