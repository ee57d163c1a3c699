//! The file-backed pool: one sparse file per volume in a directory,
//! attached as a loop device.
//!
//! A file is `<dir>/<local>.img`. Its loop device is found again through
//! sysfs after a plugin restart, and bound anew after a reboot.
//!
//! The pool is thick: a file is allocated whole (`fallocate`) when it is
//! made or grown, so a volume never meets a full host file system under
//! its pod, and the free space a new volume may get is the file system's
//! less what the pool's files are still owed (a range a pod discarded
//! through the loop device is punched out of its file, and stays that
//! volume's). Allocated ranges that were never written are unwritten
//! extents, which read as zeros and count as holes for
//! `SEEK_DATA`/`SEEK_HOLE`, so [`extents`] still tells written data.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};
use nix::unistd::{lseek, Whence};

use super::{loop_device, round_up, Backend, Provisioned};
use crate::state::{BackendKind, VolumeRecord};
use crate::{Error, Result};

/// Volume sizes are whole MiB, so a loop device never ends in a partial
/// tracking or chunk block smaller than the file system's.
const GRANULE: u64 = 1 << 20;

/// The pool.
#[derive(Debug)]
pub struct FilePool {
    /// Canonical (no symlink, absolute): sysfs names a loop device's
    /// backing file by its canonical path, which is how a volume's device
    /// is found again.
    dir: PathBuf,
    /// Loop device of each volume seen bound in this process. Held from
    /// looking a device up to binding one, and while unbinding, so that
    /// one file is never bound to two loop devices.
    devices: Mutex<HashMap<String, PathBuf>>,
}

impl FilePool {
    /// A pool in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| Error::io("resolve", &dir, e))?;
        Ok(FilePool {
            dir,
            devices: Mutex::new(HashMap::new()),
        })
    }

    fn file(&self, location: &str) -> PathBuf {
        self.dir.join(location)
    }

    fn devices(&self) -> MutexGuard<'_, HashMap<String, PathBuf>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes the pool's files may still allocate within their sizes.
    fn owed(&self) -> Result<u64> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io("read", &self.dir, e))?;
        let mut owed = 0u64;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read", &self.dir, e))?;
            // A file removed meanwhile owes nothing.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_file() {
                owed = owed.saturating_add(meta.len().saturating_sub(meta.blocks() * 512));
            }
        }
        Ok(owed)
    }

    /// Refuses `bytes` more than the pool can give.
    fn check_room(&self, bytes: u64) -> Result<()> {
        let available = self.available(&BTreeSet::new())?;
        if bytes > available {
            return Err(Error::Exhausted(format!(
                "the pool has {available} bytes free, {bytes} wanted"
            )));
        }
        Ok(())
    }
}

/// Allocates the first `len` bytes of the pool file `f`.
fn allocate(f: &File, path: &Path, len: u64) -> Result<()> {
    let len =
        i64::try_from(len).map_err(|_| Error::OutOfRange(format!("{len} bytes is too large")))?;
    match fallocate(f, FallocateFlags::empty(), 0, len) {
        Ok(()) => f.sync_all().map_err(|e| Error::io("fsync", path, e)),
        // Another writer of the host file system came first.
        Err(Errno::ENOSPC) => Err(Error::Exhausted(format!(
            "the pool's file system has no room for {len} bytes"
        ))),
        Err(e) => Err(Error::io("fallocate", path, e.into())),
    }
}

/// The loop device bound to `file`, if any: the one this process bound
/// when it is still bound, else the first sysfs names.
fn bound(
    devices: &HashMap<String, PathBuf>,
    vol: &VolumeRecord,
    file: &Path,
) -> Result<Option<PathBuf>> {
    let found = loop_device::find(file)?;
    if let Some(dev) = devices.get(&vol.local) {
        if found.contains(dev) {
            return Ok(Some(dev.clone()));
        }
    }
    Ok(found.into_iter().next())
}

impl Backend for FilePool {
    fn kind(&self) -> BackendKind {
        BackendKind::Pool
    }

    fn create(&self, local: &str, size: u64, _taken: &BTreeSet<String>) -> Result<Provisioned> {
        let capacity = round_up(size.max(GRANULE), GRANULE)
            .ok_or_else(|| Error::OutOfRange(format!("{size} bytes is too large")))?;
        self.check_room(capacity)?;
        let location = format!("{local}.img");
        let path = self.file(&location);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        if let Err(e) = allocate(&f, &path, capacity) {
            if let Err(rm) = std::fs::remove_file(&path) {
                tracing::error!(file = %path.display(), error = %rm, "pool file not removed");
            }
            return Err(e);
        }
        Ok(Provisioned { location, capacity })
    }

    fn delete(&self, vol: &VolumeRecord) -> Result<()> {
        let file = self.file(&vol.location);
        let mut devices = self.devices();
        for dev in loop_device::find(&file)? {
            loop_device::detach(&dev)?;
        }
        devices.remove(&vol.local);
        match std::fs::remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &file, e)),
        }
    }

    fn deletes_slowly(&self) -> bool {
        false
    }

    fn device(&self, vol: &VolumeRecord) -> Result<PathBuf> {
        let file = self.file(&vol.location);
        let mut devices = self.devices();
        let dev = match bound(&devices, vol, &file)? {
            Some(dev) => dev,
            None => {
                if !file.exists() {
                    return Err(Error::not_found("backing file", file.display().to_string()));
                }
                loop_device::attach(&file)?
            }
        };
        devices.insert(vol.local.clone(), dev.clone());
        Ok(dev)
    }

    fn expand(&self, vol: &VolumeRecord, size: u64) -> Result<u64> {
        let capacity = round_up(size, GRANULE)
            .ok_or_else(|| Error::OutOfRange(format!("{size} bytes is too large")))?;
        if capacity <= vol.capacity {
            return Ok(vol.capacity);
        }
        self.check_room(capacity - vol.capacity)?;
        let path = self.file(&vol.location);
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        if let Err(e) = allocate(&f, &path, capacity) {
            // What a failed fallocate allocated past the old end is freed
            // by cutting the file back.
            if let Err(cut) = f.set_len(vol.capacity) {
                tracing::error!(file = %path.display(), error = %cut, "pool file not cut back");
            }
            return Err(e);
        }
        let dev = self.device(vol)?;
        loop_device::refresh_capacity(&dev)?;
        Ok(capacity)
    }

    fn allocated(&self, vol: &VolumeRecord) -> Result<Option<Vec<Range<u64>>>> {
        let path = self.file(&vol.location);
        let f = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        extents(&f, &path).map(Some)
    }

    fn zeroed_on_create(&self) -> bool {
        true
    }

    /// The file system's free space (where difference storage shares it,
    /// its reservations are allocated, so already subtracted) less what
    /// the pool's files are owed.
    fn available(&self, _taken: &BTreeSet<String>) -> Result<u64> {
        Ok(crate::storage::free_bytes(&self.dir)?.saturating_sub(self.owed()?))
    }
}

/// The data extents of a (sparse) file, by `SEEK_DATA`/`SEEK_HOLE`.
pub fn extents(f: &File, path: &Path) -> Result<Vec<Range<u64>>> {
    let len = f.metadata().map_err(|e| Error::io("stat", path, e))?.len();
    let fd = f.as_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        let data = match lseek(fd, pos as i64, Whence::SeekData) {
            Ok(o) => o as u64,
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(Error::io("SEEK_DATA", path, e.into())),
        };
        let hole = match lseek(fd, data as i64, Whence::SeekHole) {
            Ok(o) => o as u64,
            Err(e) => return Err(Error::io("SEEK_HOLE", path, e.into())),
        };
        let end = hole.min(len);
        if end > data {
            out.push(data..end);
        }
        if hole <= pos {
            break;
        }
        pos = hole;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn extents_of_a_sparse_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create");
        f.set_len(64 << 20).expect("truncate");
        assert!(extents(&f, &path).expect("extents").is_empty());
        f.write_all_at(&[1u8; 4096], 8 << 20).expect("write");
        f.write_all_at(&[1u8; 4096], 40 << 20).expect("write");
        f.sync_all().expect("sync");
        let e = extents(&f, &path).expect("extents");
        // File systems may allocate more than was written, never less.
        let covers = |off: u64| e.iter().any(|r| r.contains(&off));
        assert!(covers(8 << 20) && covers((8 << 20) + 4095), "{e:?}");
        assert!(covers(40 << 20), "{e:?}");
        assert!(!covers(20 << 20), "{e:?}");
        for w in e.windows(2) {
            assert!(w[0].end <= w[1].start);
        }
    }

    #[test]
    fn the_pool_dir_is_kept_canonical() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("real")).expect("mkdir");
        std::os::unix::fs::symlink("real", dir.path().join("link")).expect("symlink");
        let pool = FilePool::new(dir.path().join("link/./")).expect("pool");
        let real = dir.path().join("real").canonicalize().expect("canonical");
        assert_eq!(pool.dir, real);
        assert_eq!(pool.file("v.img"), real.join("v.img"));
    }

    #[test]
    fn pool_files_are_allocated_whole_and_what_they_lack_is_owed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = FilePool::new(dir.path()).expect("pool");
        let p = pool
            .create("vol-a", 64 << 20, &BTreeSet::new())
            .expect("create");
        let path = dir.path().join(&p.location);
        let meta = std::fs::metadata(&path).expect("file");
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 >= 64 << 20, "{} blocks", meta.blocks());
        assert_eq!(pool.owed().expect("owed"), 0);
        // What a discard through the loop device punches out stays the
        // volume's.
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        fallocate(&f, punch, 0, 32 << 20).expect("punch");
        assert_eq!(pool.owed().expect("owed"), 32 << 20);
    }

    #[test]
    fn create_rounds_up_and_refuses_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = FilePool::new(dir.path()).expect("pool");
        let taken = BTreeSet::new();
        let p = pool.create("vol-a", 1000, &taken).expect("create");
        assert_eq!(p.capacity, GRANULE);
        assert_eq!(p.location, "vol-a.img");
        let meta = std::fs::metadata(dir.path().join("vol-a.img")).expect("file");
        assert_eq!(meta.len(), GRANULE);
        assert!(pool.create("vol-a", 1000, &taken).is_err());
        let huge = pool.create("vol-b", u64::MAX / 2, &taken);
        assert!(matches!(huge, Err(Error::Exhausted(_))), "{huge:?}");
    }
}
