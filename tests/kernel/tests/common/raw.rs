//! Raw ioctls for the bad-input tests: the only `unsafe` of the kernel
//! tests. They hand the kernel arguments that the `blksnap` crate never
//! would (wrong sizes, bogus pointers); the kernel must refuse them.
//!
//! Memory safety of the test process itself: a bogus pointer is only ever
//! an address that the process cannot use (the kernel must answer
//! `EFAULT`), and every valid buffer handed over is [`BIG`] bytes, larger
//! than any size field an ioctl number can encode, so even a kernel that
//! wrongly honours a request cannot write past it.

use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::libc::{c_ulong, c_void};
use nix::sys::ioctl::ioctl_num_type;
use nix::sys::mman::{MapFlags, ProtFlags};

/// Size of [`Buf`]: more than the 14-bit size field of an ioctl number.
pub const BIG: usize = 1 << 15;

/// Directions of `_IOC`.
#[derive(Clone, Copy, Debug)]
pub enum Dir {
    None,
    Read,
    Write,
    ReadWrite,
}

/// `_IOC(dir, 'V', nr, size)`.
pub fn req(dir: Dir, nr: u8, size: usize) -> ioctl_num_type {
    let magic = blksnap::sys::BLKSNAP;
    match dir {
        Dir::None => nix::request_code_none!(magic, nr),
        Dir::Read => nix::request_code_read!(magic, nr, size),
        Dir::Write => nix::request_code_write!(magic, nr, size),
        Dir::ReadWrite => nix::request_code_readwrite!(magic, nr, size),
    }
}

/// A zeroed, 8-aligned buffer of [`BIG`] bytes into which a struct is
/// placed at offset 0.
pub struct Buf(Vec<u64>);

impl Buf {
    pub fn new() -> Self {
        Buf(vec![0u64; BIG / 8])
    }

    /// A buffer starting with the bytes of `v`.
    pub fn with<T: Copy>(v: &T) -> Self {
        let mut b = Buf::new();
        b.put(v);
        b
    }

    pub fn put<T: Copy>(&mut self, v: &T) {
        assert!(std::mem::size_of::<T>() <= BIG);
        // SAFETY: the destination has BIG >= size_of::<T>() bytes, is
        // 8-aligned (T in the UAPI needs at most 8), and does not overlap v.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (v as *const T).cast::<u8>(),
                self.0.as_mut_ptr().cast::<u8>(),
                std::mem::size_of::<T>(),
            )
        }
    }

    /// The struct at offset 0, as the kernel left it.
    pub fn get<T: Copy + Default>(&self) -> T {
        let mut v = T::default();
        // SAFETY: as in `put`, in the other direction; the UAPI structs are
        // plain integers, valid for any bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.0.as_ptr().cast::<u8>(),
                (&mut v as *mut T).cast::<u8>(),
                std::mem::size_of::<T>(),
            )
        }
        v
    }

    pub fn addr(&mut self) -> u64 {
        self.0.as_mut_ptr() as u64
    }
}

/// `ioctl(fd, req, buf)` with a valid buffer of [`BIG`] bytes.
pub fn ioctl_buf(fd: BorrowedFd<'_>, req: ioctl_num_type, buf: &mut Buf) -> Result<i32, Errno> {
    // SAFETY: the buffer is live and large enough for any request size.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), req, buf.0.as_mut_ptr().cast::<c_void>()) };
    Errno::result(r)
}

/// `ioctl(fd, req, addr)` with an address the kernel must not use.
pub fn ioctl_addr(fd: BorrowedFd<'_>, req: ioctl_num_type, addr: u64) -> Result<i32, Errno> {
    // SAFETY: `addr` is, by the callers' contract, not memory of this
    // process that it relies on (NULL, low, unmapped, read-only, or a
    // kernel address); a correct kernel only fails with EFAULT.
    let r = unsafe { nix::libc::ioctl(fd.as_raw_fd(), req, addr as c_ulong) };
    Errno::result(r)
}

/// An address that was just unmapped, so nothing lives there.
pub fn unmapped_addr() -> u64 {
    let len = NonZeroUsize::new(4096).expect("non-zero");
    // SAFETY: a fresh anonymous mapping, unmapped at once; no Rust object
    // ever refers to it.
    unsafe {
        let p =
            nix::sys::mman::mmap_anonymous(None, len, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE)
                .expect("mmap");
        nix::sys::mman::munmap(p, 4096).expect("munmap");
        p.as_ptr() as u64
    }
}

/// A read-only page (never unmapped: the test process is short-lived), for
/// commands that must write their answer back.
pub fn read_only_page() -> u64 {
    let len = NonZeroUsize::new(4096).expect("non-zero");
    // SAFETY: a fresh anonymous read-only mapping that no Rust object
    // refers to; the kernel must fail to write into it.
    let p = unsafe {
        nix::sys::mman::mmap_anonymous(None, len, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE)
            .expect("mmap")
    };
    p.as_ptr() as u64
}

/// An address in the kernel's half of the address space.
pub const KERNEL_ADDR: u64 = 0xffff_8880_0000_0000;
