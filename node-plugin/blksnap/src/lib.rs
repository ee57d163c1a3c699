//! Safe API over the blksnap kernel module (`kmod/`): copy-on-write block
//! device snapshots and changed block tracking, driven through the control
//! device `/dev/blksnap-control`.
//!
//! [`Control`] is the only entry point; it owns the control device's file
//! descriptor and names block devices by file descriptors of the caller
//! (as the kernel interface does: no path races, and the caller proves it
//! can open the device). [`cbt`] turns change maps into byte ranges without
//! touching the kernel, so it can be tested anywhere.
//!
//! All kernel errors arrive as [`Error`]; the errnos that the interface
//! gives a meaning to get their own variant so that callers (the CSI node
//! plugin maps them to gRPC codes) can match on them.

// Only `sys` may use `unsafe`; it opts back in.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use nix::errno::Errno;

pub mod cbt;
mod control;
pub mod sys;

pub use control::Control;

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong between this crate and the kernel.
///
/// `op` names the operation (`"attach"`, `"snapshot_take"`, ...) so that a
/// message read in a log says what was attempted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control device could not be opened; `ENOENT` usually means that
    /// the module is not loaded.
    #[error("cannot open {}: {errno}", path.display())]
    Open { path: PathBuf, errno: Errno },
    /// `ENODEV`: the device is not attached to blksnap.
    #[error("{op}: the device is not attached to blksnap")]
    NotAttached { op: &'static str },
    /// `EALREADY`: attach of a device that is already tracked.
    #[error("{op}: the device is already attached to blksnap")]
    AlreadyAttached { op: &'static str },
    /// `EBUSY`: the object is in use (detach of a device held by a
    /// snapshot, a device already in a snapshot, a storage in use).
    #[error("{op}: busy")]
    Busy { op: &'static str },
    /// `ENOENT` for a command naming a snapshot: no snapshot has that id.
    #[error("{op}: no snapshot {id}")]
    NoSuchSnapshot { op: &'static str, id: SnapshotId },
    /// `EPERM`/`EACCES`: the control device is root only.
    #[error("{op}: permission denied ({errno})")]
    PermissionDenied { op: &'static str, errno: Errno },
    /// `ENOTTY`: the module does not know the command (too old a module,
    /// or the fd is not the control device).
    #[error("{op}: command not supported by the kernel module")]
    Unsupported { op: &'static str },
    /// `EINVAL`: the kernel refused an argument.
    #[error("{op}: invalid argument")]
    InvalidArgument { op: &'static str },
    /// An argument that this crate refuses before asking the kernel.
    #[error("{op}: {what}")]
    BadInput {
        op: &'static str,
        what: &'static str,
    },
    /// The kernel answered something the interface does not allow.
    #[error("{op}: unexpected answer from the kernel: {what}")]
    Protocol {
        op: &'static str,
        what: &'static str,
    },
    /// Any other errno.
    #[error("{op}: {errno}")]
    Ioctl { op: &'static str, errno: Errno },
}

impl Error {
    /// The errno behind this error, for the variants that come from one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Open { errno, .. }
            | Error::PermissionDenied { errno, .. }
            | Error::Ioctl { errno, .. } => Some(*errno),
            Error::NotAttached { .. } => Some(Errno::ENODEV),
            Error::AlreadyAttached { .. } => Some(Errno::EALREADY),
            Error::Busy { .. } => Some(Errno::EBUSY),
            Error::NoSuchSnapshot { .. } => Some(Errno::ENOENT),
            Error::Unsupported { .. } => Some(Errno::ENOTTY),
            Error::InvalidArgument { .. } => Some(Errno::EINVAL),
            Error::BadInput { .. } | Error::Protocol { .. } => None,
        }
    }
}

/// Maps an errno of a command to the variant the interface gives it.
/// `snapshot` is the id the command names, if any, so that `ENOENT` can
/// say which snapshot is missing.
pub(crate) fn from_errno(op: &'static str, errno: Errno, snapshot: Option<SnapshotId>) -> Error {
    match (errno, snapshot) {
        (Errno::ENODEV, _) => Error::NotAttached { op },
        (Errno::EALREADY, _) => Error::AlreadyAttached { op },
        (Errno::EBUSY, _) => Error::Busy { op },
        (Errno::ENOENT, Some(id)) => Error::NoSuchSnapshot { op, id },
        (Errno::EPERM | Errno::EACCES, _) => Error::PermissionDenied { op, errno },
        (Errno::ENOTTY, _) => Error::Unsupported { op },
        (Errno::EINVAL, _) => Error::InvalidArgument { op },
        _ => Error::Ioctl { op, errno },
    }
}

/// A snapshot's id, as the kernel generates it at create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(pub uuid::Uuid);

impl SnapshotId {
    pub(crate) fn to_sys(self) -> sys::blksnap_uuid {
        sys::blksnap_uuid {
            b: *self.0.as_bytes(),
        }
    }

    pub(crate) fn from_sys(u: &sys::blksnap_uuid) -> Self {
        SnapshotId(uuid::Uuid::from_bytes(u.b))
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for SnapshotId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(SnapshotId)
    }
}

/// Change tracking state of an attached device (`blksnap_cbtinfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CbtInfo {
    /// Device capacity in bytes.
    pub device_capacity: u64,
    /// Tracking block size in bytes, a power of two.
    pub block_size: u32,
    /// Number of tracking blocks, which is the length of the change map.
    pub block_count: u32,
    /// Changes when the map is reset; history from another generation is
    /// lost.
    pub generation_id: uuid::Uuid,
    /// Number of the last taken snapshot in this generation (0 before the
    /// first take).
    pub changes_number: u8,
}

/// Snapshot state of one device (`blksnap_snapshotinfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Why the device's image became unreadable (`ENOSPC`: the difference
    /// storage overflowed); `None` while the image is sound.
    pub error: Option<Errno>,
    /// Name of the image block device below `/dev`, once taken.
    pub image: Option<String>,
}

impl SnapshotInfo {
    /// Path of the image block device, once taken.
    pub fn image_path(&self) -> Option<PathBuf> {
        self.image
            .as_ref()
            .map(|name| PathBuf::from("/dev").join(name))
    }
}

/// State of a device in one named snapshot, from
/// [`Control::snapshot_info_of`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotState {
    /// The device's image in that snapshot.
    pub info: SnapshotInfo,
    /// Sectors of the snapshot's difference storage holding copies that
    /// a held snapshot still reads.
    pub storage_used_sectors: u64,
    /// Sectors of that storage handed out so far.
    pub storage_filled_sectors: u64,
}

/// An event of a snapshot, from [`Control::wait_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The image of device `major:minor` became unreadable.
    Corrupted {
        major: u32,
        minor: u32,
        errno: Errno,
    },
    /// The difference storage reached its limit and is running out.
    LowSpace {
        free_sectors: u64,
        limit_sectors: u64,
    },
    /// An event code newer than this crate; kept rather than dropped so a
    /// caller can log it.
    Unknown { code: u32 },
}

/// A range of 512-byte sectors of a block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorRange {
    /// First sector.
    pub offset: u64,
    /// Number of sectors.
    pub count: u64,
}

/// The module's version (`blksnap_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Incompatible interface changes.
    pub major: u16,
    /// Compatible additions.
    pub minor: u16,
    /// Fixes.
    pub revision: u16,
    /// Always 0 for now.
    pub build: u16,
}

impl Version {
    /// Whether this crate can drive a module of this version: the same
    /// major. A 1.0 module lacks 1.1's additions
    /// ([`Version::keeps_several_per_device`]); its commands are the same.
    pub fn is_compatible(&self) -> bool {
        self.major == sys::BLKSNAP_VERSION_MAJOR
    }

    /// Whether the module keeps several snapshots of one device and
    /// answers [`Control::snapshot_info_of`] (interface 1.1 on).
    pub fn keeps_several_per_device(&self) -> bool {
        self.is_compatible() && self.minor >= 1
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.major, self.minor, self.revision, self.build
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_id_round_trips_through_text() {
        let id = SnapshotId(uuid::Uuid::new_v4());
        let back: SnapshotId = id.to_string().parse().expect("parses");
        assert_eq!(back, id);
        assert!("not-a-uuid".parse::<SnapshotId>().is_err());
    }

    #[test]
    fn snapshot_id_round_trips_through_sys() {
        let id = SnapshotId(uuid::Uuid::new_v4());
        assert_eq!(SnapshotId::from_sys(&id.to_sys()), id);
    }

    #[test]
    fn errnos_map_to_their_variants() {
        let id = SnapshotId(uuid::Uuid::nil());
        assert!(matches!(
            from_errno("x", Errno::ENODEV, None),
            Error::NotAttached { .. }
        ));
        assert!(matches!(
            from_errno("x", Errno::ENOENT, Some(id)),
            Error::NoSuchSnapshot { .. }
        ));
        // Without a snapshot in the command, ENOENT has no special meaning.
        assert!(matches!(
            from_errno("x", Errno::ENOENT, None),
            Error::Ioctl {
                errno: Errno::ENOENT,
                ..
            }
        ));
        for e in [
            Errno::ENODEV,
            Errno::EALREADY,
            Errno::EBUSY,
            Errno::EPERM,
            Errno::ENOTTY,
            Errno::EINVAL,
            Errno::EIO,
        ] {
            assert_eq!(from_errno("x", e, Some(id)).errno(), Some(e));
        }
    }

    #[test]
    fn version_compatibility() {
        let v = |major, minor| Version {
            major,
            minor,
            revision: 0,
            build: 0,
        };
        // 1.0 has the same commands but one snapshot per device and no
        // snapshotinfo_of; 1.1 added them.
        assert!(v(1, 0).is_compatible());
        assert!(!v(1, 0).keeps_several_per_device());
        assert!(v(1, 1).is_compatible() && v(1, 1).keeps_several_per_device());
        assert!(v(1, 3).is_compatible() && v(1, 3).keeps_several_per_device());
        assert!(!v(2, 0).is_compatible() && !v(2, 0).keeps_several_per_device());
        assert!(!v(0, 9).is_compatible());
        assert_eq!(v(1, 2).to_string(), "1.2.0.0");
    }
}
