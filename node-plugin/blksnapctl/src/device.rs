//! Opening block devices, files and difference storages.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

fn open_with(path: &Path, opts: &OpenOptions) -> Result<File> {
    opts.open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Opens `path` read-only and checks that it is a block device: the kernel
/// names devices by such a descriptor.
pub fn open_block_device(path: &Path) -> Result<File> {
    let file = open_with(path, OpenOptions::new().read(true))?;
    let meta = file.metadata().map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.file_type().is_block_device() {
        return Err(Error::NotBlockDevice {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// Opens a block device or a regular file for reading.
pub fn open_source(path: &Path) -> Result<File> {
    open_with(path, OpenOptions::new().read(true))
}

/// Size in bytes of an open block device or file.
pub fn size_of(file: &mut File, path: &Path) -> Result<u64> {
    let size = file.seek(SeekFrom::End(0)).map_err(|source| Error::Io {
        op: "seek to the end of",
        path: path.to_path_buf(),
        offset: 0,
        source,
    })?;
    file.seek(SeekFrom::Start(0)).map_err(|source| Error::Io {
        op: "seek in",
        path: path.to_path_buf(),
        offset: 0,
        source,
    })?;
    Ok(size)
}

/// Where a snapshot's difference storage lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageSpec {
    /// A block device (opened `O_EXCL`) or a regular file (created if
    /// missing, mode 0600).
    Path(PathBuf),
    /// An unnamed `O_TMPFILE` file in this directory: nothing can reach it
    /// through the file system, and it vanishes with the snapshot.
    TmpfileIn(PathBuf),
}

/// An opened difference storage and what is known of its size.
#[derive(Debug)]
pub struct Storage {
    /// The descriptor handed to the kernel.
    pub file: File,
    /// Size of a block device storage; `None` for a file, which grows.
    pub device_size: Option<u64>,
}

/// Opens the storage as the kernel wants it: read-write, block devices
/// exclusively.
pub fn open_storage(spec: &StorageSpec) -> Result<Storage> {
    match spec {
        StorageSpec::TmpfileIn(dir) => {
            let file = open_with(
                dir,
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_TMPFILE),
            )?;
            Ok(Storage {
                file,
                device_size: None,
            })
        }
        StorageSpec::Path(path) => {
            let is_block = std::fs::metadata(path)
                .map(|m| m.file_type().is_block_device())
                .unwrap_or(false);
            if is_block {
                let mut file = open_with(
                    path,
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(nix::libc::O_EXCL),
                )?;
                let size = size_of(&mut file, path)?;
                return Ok(Storage {
                    file,
                    device_size: Some(size),
                });
            }
            let file = open_with(
                path,
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600),
            )?;
            let meta = file.metadata().map_err(|source| Error::Open {
                path: path.clone(),
                source,
            })?;
            if !meta.file_type().is_file() {
                return Err(Error::BadStorage { path: path.clone() });
            }
            Ok(Storage {
                file,
                device_size: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_not_block_devices() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let err = open_block_device(f.path()).unwrap_err();
        assert!(matches!(err, Error::NotBlockDevice { .. }), "{err}");
        assert_eq!(err.exit_code(), crate::exit::USAGE);
    }

    #[test]
    fn missing_paths_are_not_found() {
        let err = open_block_device(Path::new("/nonexistent/vdq")).unwrap_err();
        assert_eq!(err.exit_code(), crate::exit::NOT_FOUND);
    }

    #[test]
    fn file_storage_is_created_and_tmpfile_is_unnamed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let s = open_storage(&StorageSpec::Path(path.clone())).unwrap();
        assert!(s.device_size.is_none());
        assert!(path.exists());
        let s = open_storage(&StorageSpec::TmpfileIn(dir.path().to_path_buf()));
        // Some file systems (overlay in containers) lack O_TMPFILE.
        if let Ok(s) = s {
            assert!(s.device_size.is_none());
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }

    #[test]
    fn directory_is_no_storage() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_storage(&StorageSpec::Path(dir.path().to_path_buf())).unwrap_err();
        // Opening a directory read-write fails with EISDIR.
        assert!(matches!(err, Error::Open { .. } | Error::BadStorage { .. }));
    }
}
