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

/// What a device carries, as far as formatting is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// No signature blkid knows: the only state in which a device is
    /// formatted.
    Empty,
    /// blkid's `TYPE`: a file system, or a RAID, LVM, swap, LUKS, ...
    /// signature.
    Type(String),
    /// blkid's `PTTYPE` and no `TYPE`: a partition table.
    PartitionTable(String),
    /// Something blkid found but names neither way.
    Unnamed,
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Empty => f.write_str("no signature"),
            Content::Type(t) => write!(f, "a {t} signature"),
            Content::PartitionTable(t) => write!(f, "a {t} partition table"),
            Content::Unnamed => f.write_str("a signature blkid gives no type"),
        }
    }
}

/// What `dev` carries, by blkid's low-level probe (no cache) of both
/// superblocks and partition tables.
pub fn probe(dev: &Path) -> Result<Content> {
    let out = run(
        "blkid",
        &[
            "-p".as_ref(),
            "-o".as_ref(),
            "export".as_ref(),
            "-s".as_ref(),
            "TYPE".as_ref(),
            "-s".as_ref(),
            "PTTYPE".as_ref(),
            dev.as_os_str(),
        ],
    )?;
    match out.status.code() {
        Some(0) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let tag = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            };
            Ok(match (tag("TYPE"), tag("PTTYPE")) {
                (Some(t), _) => Content::Type(t),
                (None, Some(t)) => Content::PartitionTable(t),
                (None, None) => Content::Unnamed,
            })
        }
        // blkid: 2 means nothing was found.
        Some(2) => Ok(Content::Empty),
        // 8: signatures that contradict each other; certainly not empty.
        Some(8) => Err(Error::Precondition(format!(
            "{} carries several signatures (blkid: ambivalent result)",
            dev.display()
        ))),
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

    fn image() -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        f.as_file().set_len(16 << 20).expect("size");
        f
    }

    #[test]
    fn an_empty_file_has_no_signature() {
        assert_eq!(probe(image().path()).expect("blkid runs"), Content::Empty);
    }

    #[test]
    fn a_partition_table_alone_is_not_empty() {
        let f = image();
        let mut sfdisk = Command::new("sfdisk")
            .args(["-q", "--no-reread", "--no-tell-kernel"])
            .arg(f.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sfdisk");
        std::io::Write::write_all(sfdisk.stdin.as_mut().expect("stdin"), b"label: gpt\n,8M\n")
            .expect("script");
        drop(sfdisk.stdin.take());
        assert!(sfdisk.wait().expect("sfdisk").success());
        assert_eq!(
            probe(f.path()).expect("blkid runs"),
            Content::PartitionTable("gpt".into())
        );
    }

    #[test]
    fn swap_is_a_signature() {
        let f = image();
        let out = Command::new("mkswap")
            .arg(f.path())
            .output()
            .expect("mkswap");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            probe(f.path()).expect("blkid runs"),
            Content::Type("swap".into())
        );
    }
}
