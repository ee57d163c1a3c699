//! File systems on volumes: detect, make (first stage), grow (expansion),
//! with the distribution's own tools (util-linux blkid, e2fsprogs,
//! xfsprogs).

use std::path::Path;
use std::process::Command;

use crate::{Error, Result};

fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<std::process::Output> {
    Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::io("run", program, e))
}

fn failed(program: &str, out: &std::process::Output) -> Error {
    Error::Command {
        program: program.to_owned(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    }
}

/// The file system type on `dev`, or `None` when it carries no signature.
pub fn probe(dev: &Path) -> Result<Option<String>> {
    let out = run(
        "blkid",
        &[
            "-p".as_ref(),
            "-o".as_ref(),
            "value".as_ref(),
            "-s".as_ref(),
            "TYPE".as_ref(),
            dev.as_os_str(),
        ],
    )?;
    match out.status.code() {
        Some(0) => {
            let t = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            Ok((!t.is_empty()).then_some(t))
        }
        // blkid: 2 means nothing was found.
        Some(2) => Ok(None),
        _ => Err(failed("blkid", &out)),
    }
}

/// Makes file system `fs_type` (ext4 or xfs) on `dev`.
pub fn make(dev: &Path, fs_type: &str) -> Result<()> {
    let (program, args): (&str, Vec<&std::ffi::OsStr>) = match fs_type {
        "ext4" => (
            "mkfs.ext4",
            vec!["-q".as_ref(), "-F".as_ref(), dev.as_os_str()],
        ),
        "xfs" => ("mkfs.xfs", vec!["-q".as_ref(), dev.as_os_str()]),
        other => {
            return Err(Error::invalid(
                "fs_type",
                format!("{other:?} is not offered (ext4, xfs)"),
            ))
        }
    };
    let out = run(program, &args)?;
    if out.status.success() {
        tracing::info!(device = %dev.display(), fs_type, "file system made");
        Ok(())
    } else {
        Err(failed(program, &out))
    }
}

/// Grows the file system `fs_type` of `dev`, mounted at `mount_point`, to
/// the device's size.
pub fn grow(dev: &Path, mount_point: &Path, fs_type: &str) -> Result<()> {
    let (program, arg) = match fs_type {
        "ext4" | "ext3" | "ext2" => ("resize2fs", dev.as_os_str()),
        "xfs" => ("xfs_growfs", mount_point.as_os_str()),
        other => {
            return Err(Error::Precondition(format!(
                "cannot grow a {other} file system"
            )))
        }
    };
    let out = run(program, &[arg])?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(program, &out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_file_systems_are_refused_without_running_anything() {
        assert!(matches!(
            make(Path::new("/nonexistent"), "btrfs"),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            grow(Path::new("/nonexistent"), Path::new("/"), "vfat"),
            Err(Error::Precondition(_))
        ));
    }

    #[test]
    fn an_empty_file_has_no_file_system() {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        f.as_file().set_len(1 << 20).expect("size");
        assert_eq!(probe(f.path()).expect("blkid runs"), None);
    }
}
