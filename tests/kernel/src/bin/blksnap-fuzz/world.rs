//! The state the fuzzer's calls act on, shared by its threads: devices
//! (with the ones hot removed kept open), snapshot ids (live and stale),
//! image devices, storage candidates and descriptors that are no block
//! device at all. Every descriptor a call names is held in an `Arc` for
//! the call's duration, so its number is never reused by another open
//! while the kernel looks at it; and every descriptor here is the fuzzer's
//! own, so a random call never touches the strict scenario's devices.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use nix::libc;

use crate::rng::Rng;
use crate::stats::Violations;

/// Live snapshots of the random threads beyond which create is only given
/// storage that cannot work.
pub const LIVE_CAP: usize = 8;
const STALE_CAP: usize = 64;
const IMAGE_CAP: usize = 8;

/// A block device the random threads use.
pub struct Dev {
    pub file: File,
    pub name: String,
    pub sectors: u64,
    /// Set once `del_gendisk` has returned for it.
    pub removed: AtomicBool,
    /// The change map's block count, once a cbtinfo told it (0 before).
    pub blocks: AtomicU32,
    /// A null_blk disk of the hot removal thread.
    pub removable: bool,
}

pub struct Image {
    pub file: File,
    pub bytes: u64,
}

#[derive(Default)]
pub struct Snaps {
    pub live: Vec<[u8; 16]>,
    /// Ids destroyed with success: the kernel must never know them again.
    pub stale: Vec<[u8; 16]>,
}

impl Snaps {
    pub fn known(&self, id: &[u8; 16]) -> bool {
        self.live.contains(id) || self.stale.contains(id)
    }

    pub fn forget(&mut self, id: &[u8; 16]) {
        self.live.retain(|l| l != id);
        if self.stale.len() == STALE_CAP {
            self.stale.remove(0);
        }
        self.stale.push(*id);
    }
}

/// A descriptor chosen for a call, held until the call returned.
pub enum Fd {
    Dev(Arc<Dev>),
    Image(Arc<Image>),
    /// Open, but not a block device.
    Other(Arc<File>),
    /// A number no descriptor of the process has.
    Closed(u32),
}

impl Fd {
    pub fn raw(&self) -> u32 {
        match self {
            Fd::Dev(d) => d.file.as_raw_fd() as u32,
            Fd::Image(i) => i.file.as_raw_fd() as u32,
            Fd::Other(f) => f.as_raw_fd() as u32,
            Fd::Closed(n) => *n,
        }
    }
}

pub struct World {
    pub ctl: File,
    pub devs: Mutex<Vec<Arc<Dev>>>,
    pub others: Vec<Arc<File>>,
    /// Storage candidates used again and again (so also by two snapshots
    /// at once): O_TMPFILE files, the spare disk opened O_EXCL.
    pub storages: Mutex<Vec<Arc<File>>>,
    /// Where fresh O_TMPFILE storage files are made.
    pub storage_dir: PathBuf,
    pub snaps: Mutex<Snaps>,
    pub images: Mutex<Vec<Arc<Image>>>,
    pub stop: AtomicBool,
    pub violations: Violations,
}

pub fn open_dev(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Size in sectors of an open block device.
pub fn sectors_of(f: &File) -> u64 {
    use std::io::{Seek, SeekFrom};
    let mut f = f.try_clone().expect("dup");
    f.seek(SeekFrom::End(0)).expect("seek to end") / 512
}

impl World {
    pub fn add_dev(&self, file: File, name: String, removable: bool) -> Arc<Dev> {
        let dev = Arc::new(Dev {
            sectors: sectors_of(&file),
            file,
            name,
            removed: AtomicBool::new(false),
            blocks: AtomicU32::new(0),
            removable,
        });
        self.devs.lock().expect("devs").push(dev.clone());
        dev
    }

    pub fn drop_dev(&self, dev: &Arc<Dev>) {
        self.devs
            .lock()
            .expect("devs")
            .retain(|d| !Arc::ptr_eq(d, dev));
    }

    /// Whether `f` is (another descriptor of) the control device.
    pub fn is_control(&self, f: &File) -> bool {
        use std::os::unix::fs::MetadataExt;
        let rdev = |f: &File| f.metadata().map(|m| m.rdev()).ok();
        rdev(f).is_some() && rdev(f) == rdev(&self.ctl)
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn fresh_storage(&self) -> Option<Arc<File>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(&self.storage_dir)
            .ok()?;
        let f = Arc::new(f);
        let mut pool = self.storages.lock().expect("storages");
        if pool.len() < 4 {
            pool.push(f.clone());
        }
        Some(f)
    }

    pub fn pick_dev(&self, rng: &mut Rng) -> Option<Arc<Dev>> {
        let devs = self.devs.lock().expect("devs");
        (!devs.is_empty()).then(|| rng.pick(&devs).clone())
    }

    pub fn pick_image(&self, rng: &mut Rng) -> Option<Arc<Image>> {
        let images = self.images.lock().expect("images");
        (!images.is_empty()).then(|| rng.pick(&images).clone())
    }

    pub fn add_image(&self, rng: &mut Rng, file: File, bytes: u64) {
        let mut images = self.images.lock().expect("images");
        let image = Arc::new(Image { file, bytes });
        if images.len() < IMAGE_CAP {
            images.push(image);
        } else {
            let i = rng.below(IMAGE_CAP as u64) as usize;
            images[i] = image;
        }
    }

    /// A descriptor for a call that names a block device: mostly a pool
    /// device, else an image, a non-device or a closed number.
    pub fn pick_fd(&self, rng: &mut Rng) -> Fd {
        let r = rng.below(100);
        if r < 70 {
            if let Some(d) = self.pick_dev(rng) {
                return Fd::Dev(d);
            }
        }
        if r < 80 {
            if let Some(i) = self.pick_image(rng) {
                return Fd::Image(i);
            }
        }
        if r < 90 {
            return Fd::Other(rng.pick(&self.others).clone());
        }
        Fd::Closed(closed_fd(rng))
    }
}

/// A descriptor number no open file has: the process holds far fewer than
/// 2000, and the kernel hands out the lowest free number.
pub fn closed_fd(rng: &mut Rng) -> u32 {
    match rng.below(4) {
        0 => u32::MAX,
        1 => i32::MAX as u32,
        _ => 2000 + rng.below(1000) as u32,
    }
}
