//! Difference storage: where a snapshot keeps the old content of the
//! chunks written after its take.
//!
//! Each snapshot gets an unnamed `O_TMPFILE` file in the configured
//! directory (nobody can open it through the file system, and it vanishes
//! with the snapshot), refused if that directory lives on a device being
//! snapshotted. Its limit comes from the VolumeSnapshotClass parameters:
//!
//! * `diffStorageLimit`: a size (`512Mi`, `2G`, `1073741824`);
//! * `diffStoragePercent`: a percentage of the snapshotted volumes' size.
//!
//! Without either, the node's default percentage applies.
//!
//! A limit is a reservation: the file is allocated to its limit before
//! the take (`fallocate`; unwritten extents, which the kernel then fills
//! from the start), so a take that does not fit is refused at once with
//! `RESOURCE_EXHAUSTED` rather than overflowing later, and the space is
//! taken from anything else on that file system, the pool included.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::{Error, Result};

/// Parameter: an absolute limit.
pub const PARAM_LIMIT: &str = "diffStorageLimit";
/// Parameter: a limit relative to the volumes' size.
pub const PARAM_PERCENT: &str = "diffStoragePercent";
/// Parameters with this prefix are the sidecars' own, never ours to judge.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";
/// No storage smaller than this: the kernel's chunks are up to 64 MiB.
const MIN_LIMIT: u64 = 64 << 20;

/// Parses a Kubernetes-style quantity of bytes (integers only).
pub fn parse_quantity(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "P" => 1000u64.pow(5),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The storage limit in bytes for snapshotting `volume_bytes` of volumes
/// under `params`.
pub fn limit(
    params: &HashMap<String, String>,
    volume_bytes: u64,
    default_percent: u64,
) -> Result<u64> {
    for key in params.keys() {
        if key != PARAM_LIMIT && key != PARAM_PERCENT && !key.starts_with(SIDECAR_PREFIX) {
            return Err(Error::invalid(
                "parameters",
                format!("unknown parameter {key:?} (known: {PARAM_LIMIT}, {PARAM_PERCENT})"),
            ));
        }
    }
    let by_percent = |p: u64| volume_bytes.saturating_mul(p) / 100;
    let bytes = match (params.get(PARAM_LIMIT), params.get(PARAM_PERCENT)) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "parameters",
                format!("give {PARAM_LIMIT} or {PARAM_PERCENT}, not both"),
            ))
        }
        (Some(q), None) => parse_quantity(q).ok_or_else(|| {
            Error::invalid(PARAM_LIMIT, format!("{q:?} is not a size such as 512Mi"))
        })?,
        (None, Some(p)) => match p.parse::<u64>() {
            Ok(p @ 1..=1000) => by_percent(p),
            _ => {
                return Err(Error::invalid(
                    PARAM_PERCENT,
                    format!("{p:?} is not a whole percentage from 1 to 1000"),
                ))
            }
        },
        (None, None) => by_percent(default_percent),
    };
    Ok(bytes.max(MIN_LIMIT))
}

/// Whole-disk device number of block device `dev` (itself unless it is a
/// partition), from sysfs.
fn whole_disk(dev: u64) -> u64 {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.join("partition").exists() {
        return dev;
    }
    let Ok(parent) = std::fs::read_to_string(sys.join("../dev")) else {
        return dev;
    };
    let mut parts = parent.trim().splitn(2, ':');
    match (
        parts.next().and_then(|m| m.parse::<u64>().ok()),
        parts.next().and_then(|m| m.parse::<u64>().ok()),
    ) {
        (Some(ma), Some(mi)) => nix::sys::stat::makedev(ma, mi),
        _ => dev,
    }
}

/// Refuses a storage directory that lives on one of `devices` (or on
/// another partition of the same disk).
pub fn check_not_on(dir: &Path, devices: &[(PathBuf, File)]) -> Result<()> {
    let st = std::fs::metadata(dir).map_err(|e| Error::io("stat", dir, e))?;
    let here = whole_disk(st.dev());
    for (path, f) in devices {
        let meta = f.metadata().map_err(|e| Error::io("stat", path, e))?;
        if st.dev() == meta.rdev() || here == whole_disk(meta.rdev()) {
            return Err(Error::Precondition(format!(
                "the difference storage directory {} is on {}, which is being snapshotted",
                dir.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

/// A new unnamed storage file in `dir`, `limit` bytes allocated.
pub fn open_tmpfile(dir: &Path, limit: u64) -> Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .map_err(|e| Error::io("O_TMPFILE in", dir, e))?;
    let len = i64::try_from(limit)
        .map_err(|_| Error::OutOfRange(format!("a storage limit of {limit} bytes")))?;
    match nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(f),
        Err(Errno::ENOSPC | Errno::EFBIG) => Err(Error::Exhausted(format!(
            "the difference storage directory {} has no room for {limit} bytes",
            dir.display()
        ))),
        Err(e) => Err(Error::io("fallocate in", dir, e.into())),
    }
}

/// Bytes of difference storage the kernel has written to `f`: its data
/// extents, the rest of the reservation being unwritten.
pub fn used_bytes(f: &File) -> Result<u64> {
    let extents = crate::backend::file_pool::extents(f, Path::new("difference storage"))?;
    Ok(extents.iter().map(|r| r.end - r.start).sum())
}

/// Bytes free in `dir`'s file system.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| Error::io("statvfs", dir, e.into()))?;
    Ok(st.blocks_available() * st.fragment_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("512Mi"), Some(512 << 20));
        assert_eq!(parse_quantity("2G"), Some(2_000_000_000));
        assert_eq!(parse_quantity("4096"), Some(4096));
        for bad in ["", "Mi", "1.5Gi", "-1", "1X", "99999999999999999999Ki"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn limits_from_parameters() {
        let gib = 1u64 << 30;
        assert_eq!(limit(&params(&[]), 10 * gib, 50).expect("default"), 5 * gib);
        assert_eq!(
            limit(&params(&[(PARAM_PERCENT, "200")]), gib, 50).expect("percent"),
            2 * gib
        );
        assert_eq!(
            limit(&params(&[(PARAM_LIMIT, "3Gi")]), gib, 50).expect("limit"),
            3 * gib
        );
        // Tiny volumes still get room for a few chunks.
        assert_eq!(limit(&params(&[]), 1 << 20, 50).expect("min"), MIN_LIMIT);
        // The sidecars' own parameters are not ours to refuse.
        assert!(limit(
            &params(&[("csi.storage.k8s.io/volumesnapshot/name", "x")]),
            gib,
            50
        )
        .is_ok());
        for bad in [
            params(&[(PARAM_LIMIT, "1Gi"), (PARAM_PERCENT, "5")]),
            params(&[(PARAM_PERCENT, "0")]),
            params(&[(PARAM_PERCENT, "1001")]),
            params(&[(PARAM_PERCENT, "ten")]),
            params(&[(PARAM_LIMIT, "lots")]),
            params(&[("color", "blue")]),
        ] {
            assert!(
                matches!(limit(&bad, gib, 50), Err(Error::Invalid { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tmpfile_is_unnamed_and_reserves_its_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = open_tmpfile(dir.path(), 64 << 20).expect("O_TMPFILE");
        assert_eq!(std::fs::read_dir(dir.path()).expect("read").count(), 0);
        assert!(f.metadata().expect("stat").blocks() * 512 >= 64 << 20);
        // Reserved is not written.
        assert_eq!(used_bytes(&f).expect("used"), 0);
        std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 8192], 1 << 20).expect("write");
        f.sync_all().expect("sync");
        assert!((8192..=1 << 20).contains(&used_bytes(&f).expect("used")));
        let free = free_bytes(dir.path()).expect("free");
        let r = open_tmpfile(dir.path(), free + (1 << 30));
        assert!(matches!(r, Err(Error::Exhausted(_))), "{r:?}");
    }

    #[test]
    fn a_directory_is_not_on_an_unrelated_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = tempfile::tempfile().expect("tempfile");
        check_not_on(dir.path(), &[(PathBuf::from("x"), f)]).expect("regular file has no rdev");
    }
}
