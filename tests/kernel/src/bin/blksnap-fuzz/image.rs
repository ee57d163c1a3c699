//! Calls on the snapshot image devices the random threads found: the block
//! layer's own ioctls (sizes, flush, discard, zero-out, partitions, read-only
//! flag), reads and writes at random places, and the control device's
//! requests, which an image must not know.

use blksnap::sys;
use nix::errno::Errno::*;
use std::os::fd::AsRawFd;

use crate::control::{ioc, Fuzzer, Ptr};
use crate::mem::{self, DATA, PAGE};

const BLKROSET: u64 = 0x125d;
const BLKRRPART: u64 = 0x125f;
const BLKFLSBUF: u64 = 0x1261;
const BLKSSZGET: u64 = 0x1268;
const BLKPG: u64 = 0x1269;
const BLKDISCARD: u64 = 0x1277;
const BLKZEROOUT: u64 = 0x127f;
const BLKGETSIZE64: u64 = 0x8008_1272;

/// Errnos a block device may answer to a request it refuses, or to I/O on
/// an image whose snapshot is gone or corrupted.
const BLOCK_ERRNOS: [nix::errno::Errno; 14] = [
    EFAULT, EINVAL, EOPNOTSUPP, EIO, ENXIO, ENODEV, EBADF, ENOSPC, EBUSY, ENOTTY, EACCES, EPERM,
    ENOMEM, EROFS,
];

pub fn one(f: &mut Fuzzer<'_>) {
    let Some(image) = f.w.pick_image(&mut f.rng) else {
        // No image yet: a per-device command instead.
        f.ctl();
        return;
    };
    let fd = image.file.as_raw_fd();
    let bytes = image.bytes;
    let (addr, p) = f.ptr(16);
    // A byte range in or around the image, 512-aligned or not.
    let range = |f: &mut Fuzzer<'_>| -> (u64, u64) {
        let start = match f.rng.below(5) {
            0 | 4 => f.rng.below(bytes.max(1)) & !4095,
            1 => f.rng.below(bytes.max(1)),
            2 => bytes.saturating_sub(4096),
            _ => f.rng.boundary_u64(),
        };
        let len = match f.rng.below(5) {
            0 => 4096,
            1 => 512 * (1 + f.rng.below(512)),
            4 => 4096 * (1 + f.rng.below(64)),
            2 => f.rng.below(1 << 20),
            _ => f.rng.boundary_u64(),
        };
        (start, len)
    };
    match f.rng.below(12) {
        0 => {
            let r = mem::ioctl(fd, BLKGETSIZE64, addr);
            f.expect("image BLKGETSIZE64", &r, &[EFAULT], &|| format!("{p:?}"));
            if let (Ok(_), Ptr::Ok(off)) = (r, p) {
                let size: u64 = f.arena.get(off);
                // Zero once the image is gone (its disk marked dead).
                if size != bytes && size != 0 {
                    f.violation(
                        "image BLKGETSIZE64",
                        format!("{size} bytes, the origin has {bytes}"),
                    );
                }
            }
        }
        1 => {
            let r = mem::ioctl(fd, BLKSSZGET, addr);
            f.expect("image BLKSSZGET", &r, &[EFAULT], &|| format!("{p:?}"));
            if let (Ok(_), Ptr::Ok(off)) = (r, p) {
                let size: u32 = f.arena.get(off);
                if !size.is_power_of_two() || size < 512 {
                    f.violation("image BLKSSZGET", format!("sector size {size}"));
                }
            }
        }
        2 => {
            let r = mem::ioctl(fd, BLKFLSBUF, 0);
            f.expect("image BLKFLSBUF", &r, &BLOCK_ERRNOS, &String::new);
        }
        3 | 4 => {
            let (start, len) = range(f);
            if let Ptr::Ok(off) = p {
                f.arena.put(off, &[start, len]);
            }
            let (cmd, code) = if f.rng.chance(50) {
                ("image BLKDISCARD", BLKDISCARD)
            } else {
                ("image BLKZEROOUT", BLKZEROOUT)
            };
            let r = mem::ioctl(fd, code, addr);
            f.expect(cmd, &r, &BLOCK_ERRNOS, &|| format!("{start:#x}+{len:#x}"));
        }
        5 => {
            let r = mem::ioctl(fd, BLKRRPART, 0);
            f.expect("image BLKRRPART", &r, &BLOCK_ERRNOS, &String::new);
        }
        6 => {
            // struct blkpg_ioctl_arg { int op, flags, datalen; void *data; }
            // with a struct blkpg_partition of random bytes behind it.
            let op = f.rng.below(5) as i32;
            let r = f.rng.next_u64() as i32;
            let datalen = *f.rng.pick(&[0, 152, 153, r]);
            let data = if f.rng.chance(80) {
                f.arena.addr(DATA)
            } else {
                f.bad_addr(152)
            };
            let junk: [u64; 19] = std::array::from_fn(|_| f.rng.boundary_u64());
            f.arena.put(DATA, &junk);
            let arg: [u64; 3] = [op as u32 as u64, datalen as u32 as u64, data];
            if let Ptr::Ok(off) = p {
                f.arena.put(off, &arg);
            }
            let r = mem::ioctl(fd, BLKPG, addr);
            f.expect("image BLKPG", &r, &BLOCK_ERRNOS, &|| format!("op {op}"));
        }
        7 => {
            // Read-only on and off (mostly off: writes should still land).
            let ro: i32 = i32::from(f.rng.chance(20));
            if let Ptr::Ok(off) = p {
                f.arena.put(off, &ro);
            }
            let r = mem::ioctl(fd, BLKROSET, addr);
            f.expect("image BLKROSET", &r, &BLOCK_ERRNOS, &String::new);
        }
        8 | 9 => {
            let (start, _) = range(f);
            let len = *f.rng.pick(&[512, 4096, 4096, 8192, 65536, 3 * PAGE + 1]);
            let buf = if f.rng.chance(90) {
                f.arena.addr(DATA)
            } else {
                f.bad_addr(len)
            };
            let off = start.min(i64::MAX as u64) as i64;
            let (cmd, r) = if f.rng.chance(70) {
                ("image read", mem::pread(fd, buf, len, off))
            } else {
                ("image write", mem::pwrite(fd, buf, len, off))
            };
            f.expect(cmd, &r, &BLOCK_ERRNOS, &|| format!("{len} at {off:#x}"));
            if let Ok(n) = r {
                if n as usize > len {
                    f.violation(cmd, format!("{n} bytes of {len}"));
                }
            }
        }
        _ => {
            let code = ioc(
                3,
                sys::BLKSNAP,
                f.rng.below(20) as u8,
                f.rng.below(64) as usize,
            );
            let r = mem::ioctl(fd, code, addr);
            f.expect("image blksnap request", &r, &[ENOTTY], &|| {
                format!("{code:#x}")
            });
        }
    }
}
