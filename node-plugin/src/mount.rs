//! Mounts: bind mounts of device nodes and directories, file system
//! mounts with CSI mount flags, unmounts, and reading the mount table.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::{Error, Result};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted file system's device.
    pub device: (u64, u64),
    /// Path inside that file system that is mounted (a bind's source).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// The mount itself is read-only (its own `ro`, not the file system's).
    pub readonly: bool,
    pub fs_type: String,
    pub source: String,
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct.iter().fold(0u32, |a, b| a * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let (left, right) = match line.split_once(" - ") {
            Some(p) => p,
            None => continue,
        };
        let f: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if f.len() < 6 || r.len() < 2 {
            continue;
        }
        let Some((ma, mi)) = f[2].split_once(':') else {
            continue;
        };
        let (Ok(ma), Ok(mi)) = (ma.parse(), mi.parse()) else {
            continue;
        };
        out.push(MountEntry {
            device: (ma, mi),
            root: PathBuf::from(unescape(f[3])),
            mount_point: PathBuf::from(unescape(f[4])),
            readonly: f[5].split(',').any(|o| o == "ro"),
            fs_type: r[0].to_owned(),
            source: unescape(r[1]),
        });
    }
    out
}

/// The current mount table.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let p = "/proc/self/mountinfo";
    let text = std::fs::read_to_string(p).map_err(|e| Error::io("read", p, e))?;
    Ok(parse_mountinfo(&text))
}

/// The topmost mount at exactly `path`, if any.
pub fn mount_at(path: &Path) -> Result<Option<MountEntry>> {
    let path = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("resolve", path, e)),
    };
    Ok(mounts()?.into_iter().rev().find(|m| m.mount_point == path))
}

/// A `dev_t` as mountinfo's `(major, minor)`.
fn split_dev(dev: u64) -> (u64, u64) {
    (
        u64::from(nix::sys::stat::major(dev) as u32),
        u64::from(nix::sys::stat::minor(dev) as u32),
    )
}

/// `(major, minor)` of the device node at `path` (following a bind mount
/// to the node mounted there), as mountinfo names devices.
pub fn device_number(path: &Path) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    Ok(split_dev(meta.rdev()))
}

/// The mount points below `root` that hold the block device node
/// `device`: mounts of its file system (mountinfo names the device) and
/// binds of the node itself (mountinfo names the file system that holds
/// the node, `/dev`'s). Only mounts of that second kind are stat'ed, to
/// see which node they hold: a stat of another driver's mount (a server
/// gone) could hang.
pub fn publications(root: &Path, device: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(device).map_err(|e| Error::io("stat", device, e))?;
    let dev = split_dev(meta.rdev());
    let holder = split_dev(meta.dev());
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(root) && m.mount_point != root)
        .filter(|m| {
            m.device == dev
                || (m.device == holder
                    && std::fs::metadata(&m.mount_point).is_ok_and(|t| {
                        t.file_type().is_block_device() && split_dev(t.rdev()) == dev
                    }))
        })
        .map(|m| m.mount_point)
        .collect())
}

/// Bind-mounts `src` (a device node or a directory) on `target`,
/// read-only if asked (which takes a second, remounting call).
pub fn bind(src: &Path, target: &Path, readonly: bool) -> Result<()> {
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Error::io("bind mount onto", target, e.into()))?;
    if readonly {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, target, None::<&str>, flags, None::<&str>) {
            // Best effort: the remount's error is the one to report.
            let _ = umount2(target, MntFlags::empty());
            return Err(Error::io("remount read-only", target, e.into()));
        }
    }
    Ok(())
}

/// Splits CSI mount flags into mount(2) flags and file system options.
pub fn split_flags(flags: &[String], readonly: bool) -> (MsFlags, String) {
    let mut ms = MsFlags::empty();
    let mut data = Vec::new();
    for f in flags
        .iter()
        .flat_map(|f| f.split(','))
        .filter(|f| !f.is_empty())
    {
        match f {
            "ro" => ms |= MsFlags::MS_RDONLY,
            "rw" => {}
            "noatime" => ms |= MsFlags::MS_NOATIME,
            "nodiratime" => ms |= MsFlags::MS_NODIRATIME,
            "relatime" => ms |= MsFlags::MS_RELATIME,
            "nodev" => ms |= MsFlags::MS_NODEV,
            "nosuid" => ms |= MsFlags::MS_NOSUID,
            "noexec" => ms |= MsFlags::MS_NOEXEC,
            "sync" => ms |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => ms |= MsFlags::MS_DIRSYNC,
            other => data.push(other.to_owned()),
        }
    }
    if readonly {
        ms |= MsFlags::MS_RDONLY;
    }
    (ms, data.join(","))
}

/// Mounts file system `fs_type` of `dev` on `target`.
pub fn mount_fs(
    dev: &Path,
    target: &Path,
    fs_type: &str,
    flags: &[String],
    readonly: bool,
) -> Result<()> {
    let (ms, data) = split_flags(flags, readonly);
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(dev), target, Some(fs_type), ms, data)
        .map_err(|e| Error::io("mount onto", target, e.into()))
}

/// Unmounts every mount stacked at `target`; a path that is not mounted
/// (or not there) is fine. Each round must remove a mount the table lists:
/// one whose path now leads elsewhere (a mount above hides it) is an
/// error, never a retry.
pub fn unmount_all(target: &Path) -> Result<()> {
    while mount_at(target)?.is_some() {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EINVAL) => {
                return Err(Error::io(
                    "unmount",
                    target,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "listed as a mount point, but the path leads to none \
                         (hidden by a mount above it?)",
                    ),
                ))
            }
            Err(e) => return Err(Error::io("unmount", target, e.into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse() {
        let text = "36 35 98:0 /mnt1 /mnt/parent\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    40 22 0:5 /loop3 /var/lib/kubelet/pods/x/volumeDevices/v ro,nosuid shared:2 - devtmpfs udev rw\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].device, (98, 0));
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/parent dir"));
        assert!(!m[0].readonly);
        assert!(m[1].readonly);
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[1].root, PathBuf::from("/loop3"));
        assert_eq!(m[1].source, "udev");
    }

    #[test]
    fn flags_split_into_mount_flags_and_options() {
        let (ms, data) = split_flags(
            &[
                "noatime,discard".to_owned(),
                "nodev".to_owned(),
                "commit=60".to_owned(),
            ],
            true,
        );
        assert!(ms.contains(MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_RDONLY));
        assert_eq!(data, "discard,commit=60");
    }

    #[test]
    fn the_root_is_a_mount_point_and_a_fresh_dir_is_not() {
        assert!(mount_at(Path::new("/")).expect("mountinfo").is_some());
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(mount_at(dir.path()).expect("mountinfo").is_none());
        assert!(mount_at(&dir.path().join("missing"))
            .expect("missing")
            .is_none());
    }
}
