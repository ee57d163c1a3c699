//! Loop devices through their ioctls (`linux/loop.h`): find a free one,
//! bind it to a file, grow it, release it, and find the one that serves a
//! file.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

const LOOP_CONTROL: &str = "/dev/loop-control";

/// `LO_FLAGS_DIRECT_IO`: the loop driver reads and writes the file with
/// direct I/O where it can, so pages are not cached twice.
const LO_FLAGS_DIRECT_IO: u32 = 16;
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

// The loop ioctl numbers are plain constants, not _IO() encodings.
nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
nix::ioctl_none_bad!(loop_set_capacity, 0x4C07);
nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);

/// How often a free device may be taken by someone else between
/// `LOOP_CTL_GET_FREE` and `LOOP_CONFIGURE` before we give up.
const ATTEMPTS: usize = 8;

/// Binds `backing` to a free loop device; returns the device's path.
pub fn attach(backing: &Path) -> Result<PathBuf> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(backing)
        .map_err(|e| Error::io("open", backing, e))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .map_err(|e| Error::io("open", LOOP_CONTROL, e))?;
    let mut name = [0u8; LO_NAME_SIZE];
    let text = backing.as_os_str().as_encoded_bytes();
    let n = text.len().min(LO_NAME_SIZE - 1);
    name[..n].copy_from_slice(&text[..n]);
    for _ in 0..ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let number = unsafe { loop_ctl_get_free(control.as_raw_fd()) }
            .map_err(|e| Error::io("LOOP_CTL_GET_FREE", LOOP_CONTROL, e.into()))?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        let config = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_DIRECT_IO,
                lo_file_name: name,
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; LO_KEY_SIZE],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `config` is a valid `struct loop_config` that outlives
        // the call; the kernel only reads it.
        match unsafe { loop_configure(dev.as_raw_fd(), &config) } {
            Ok(_) => {
                tracing::debug!(device = %path.display(), backing = %backing.display(), "loop device attached");
                return Ok(path);
            }
            // Someone else bound it first: ask for another.
            Err(nix::errno::Errno::EBUSY) => continue,
            Err(e) => return Err(Error::io("LOOP_CONFIGURE", &path, e.into())),
        }
    }
    Err(Error::Exhausted(
        "no free loop device could be bound (others kept taking them)".into(),
    ))
}

/// Makes the loop device see its file's new size.
pub fn refresh_capacity(dev: &Path) -> Result<()> {
    let f = File::open(dev).map_err(|e| Error::io("open", dev, e))?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument.
    unsafe { loop_set_capacity(f.as_raw_fd()) }
        .map_err(|e| Error::io("LOOP_SET_CAPACITY", dev, e.into()))?;
    Ok(())
}

/// Unbinds the loop device from its file; refused while the device is in
/// use (the loop driver would only defer the unbind until its last
/// close).
pub fn detach(dev: &Path) -> Result<()> {
    let f = super::open_exclusive(dev)?;
    // SAFETY: LOOP_CLR_FD takes no argument.
    match unsafe { loop_clr_fd(f.as_raw_fd()) } {
        Ok(_) | Err(nix::errno::Errno::ENXIO) => Ok(()),
        Err(e) => Err(Error::io("LOOP_CLR_FD", dev, e.into())),
    }
}

/// The loop devices bound to `backing`, from sysfs.
pub fn find(backing: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let sys = Path::new("/sys/block");
    let entries = std::fs::read_dir(sys).map_err(|e| Error::io("read", sys, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        // The kernel shows the path it opened (with " (deleted)" once the
        // file is gone).
        if Path::new(text.trim_end_matches('\n')) == backing {
            out.push(PathBuf::from("/dev").join(name));
        }
    }
    out.sort();
    Ok(out)
}
