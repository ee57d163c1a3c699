//! Memory the kernel is handed, and the raw system calls that hand it over:
//! the only `unsafe` of the fuzzer.
//!
//! Memory safety of the fuzzer itself rests on one rule: every address a
//! call passes, in its argument or inside it, is either in a thread's
//! [`Arena`] (an `mmap` that no Rust object lives in, followed by an
//! inaccessible guard page) or an address the process cannot use (NULL,
//! low, `PROT_NONE`, kernel half, non-canonical). So even a kernel that
//! writes more than it should, or at a length the fuzzer made up, writes
//! into the arena or faults on the guard, never into the fuzzer's data.

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::libc;

pub const PAGE: usize = 4096;
/// Bytes of an arena: room for the largest cbtdirty array (65536 ranges of
/// 16 bytes) and the largest map window the fuzzer asks for.
pub const ARENA: usize = 4 << 20;

/// Offsets in an arena: the ioctl's argument, the structure it points to,
/// and the buffer that structure points to.
pub const ARG: usize = 0;
pub const OPT: usize = 2 * PAGE;
pub const DATA: usize = 4 * PAGE;

fn map(len: usize, prot: i32) -> *mut u8 {
    // SAFETY: a fresh anonymous private mapping; no Rust object refers to it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert!(p != libc::MAP_FAILED, "mmap of {len} bytes failed");
    p.cast()
}

/// `ARENA` read-write bytes, then one `PROT_NONE` page; never unmapped (a
/// fuzzer thread lives as long as the run).
pub struct Arena {
    base: *mut u8,
}

// SAFETY: the arena is plain memory reached only through raw pointers, by
// the one thread that owns it.
unsafe impl Send for Arena {}

impl Arena {
    pub fn new() -> Self {
        let base = map(ARENA + PAGE, libc::PROT_READ | libc::PROT_WRITE);
        // SAFETY: the last page of the mapping just made.
        let r = unsafe { libc::mprotect(base.add(ARENA).cast(), PAGE, libc::PROT_NONE) };
        assert_eq!(r, 0, "mprotect of the guard page failed");
        Arena { base }
    }

    pub fn addr(&self, off: usize) -> u64 {
        assert!(off <= ARENA);
        self.base as u64 + off as u64
    }

    /// First byte past the arena: the guard page.
    pub fn end(&self) -> u64 {
        self.addr(ARENA)
    }

    pub fn write(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= ARENA);
        // SAFETY: in bounds (checked), and no Rust reference aliases it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(off), bytes.len()) }
    }

    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= ARENA);
        let mut v = vec![0u8; len];
        // SAFETY: in bounds; the kernel wrote it, if at all, during a call
        // that has returned.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off), v.as_mut_ptr(), len) }
        v
    }

    pub fn fill(&self, off: usize, len: usize, byte: u8) {
        assert!(off + len <= ARENA);
        // SAFETY: in bounds (checked).
        unsafe { std::ptr::write_bytes(self.base.add(off), byte, len) }
    }

    /// Places the bytes of `v` at `off`.
    pub fn put<T: Copy>(&self, off: usize, v: &T) {
        let size = std::mem::size_of::<T>();
        // SAFETY: `v` is a live value of `size` bytes; the UAPI structs have
        // their padding spelled out, so every byte is initialised.
        let bytes = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size) };
        self.write(off, bytes);
    }

    /// The `T` at `off`; for the UAPI structs, plain integers valid for
    /// any bytes.
    pub fn get<T: Copy + Default>(&self, off: usize) -> T {
        let size = std::mem::size_of::<T>();
        assert!(off + size <= ARENA);
        let mut v = T::default();
        // SAFETY: in bounds; `T` is a plain-integer struct (see above).
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.add(off), (&mut v as *mut T).cast::<u8>(), size)
        }
        v
    }
}

/// Pages no call may read or write: one `PROT_NONE`, one read-only (zero
/// filled), made once for the process and never unmapped.
pub struct Pages {
    pub none: u64,
    pub read_only: u64,
}

impl Pages {
    pub fn new() -> Self {
        Pages {
            none: map(PAGE, libc::PROT_NONE) as u64,
            read_only: map(PAGE, libc::PROT_READ) as u64,
        }
    }
}

/// Addresses in the kernel's half, and around the top of user space.
pub const KERNEL_ADDRS: [u64; 6] = [
    0xffff_8880_0000_0000, // the direct map
    0xffff_ffff_8100_0000, // kernel text
    0xffff_ffff_ffff_f000,
    u64::MAX,
    0x8000_0000_0000_0000, // non-canonical
    0x0000_7fff_ffff_fff8, // straddles the end of user space
];

/// `ioctl(fd, req, arg)`.
pub fn ioctl(fd: RawFd, req: u64, arg: u64) -> Result<i32, Errno> {
    // SAFETY: `arg`, and every address inside what it points to, follow
    // the rule of this module (arena or unusable), checked by construction
    // in the callers: they only take addresses from `Arena`, `Pages` and
    // the constants above.
    let r = unsafe { libc::ioctl(fd, req as libc::c_ulong, arg as libc::c_ulong) };
    Errno::result(r)
}

/// `pread(fd, addr, len, off)` into an arena or an unusable address.
pub fn pread(fd: RawFd, addr: u64, len: usize, off: i64) -> Result<isize, Errno> {
    // SAFETY: as for `ioctl`: `addr..addr+len` is arena memory (the guard
    // page ends it) or unusable.
    let r = unsafe { libc::pread(fd, addr as *mut libc::c_void, len, off) };
    Errno::result(r)
}

/// `pwrite(fd, addr, len, off)` from an arena or an unusable address.
pub fn pwrite(fd: RawFd, addr: u64, len: usize, off: i64) -> Result<isize, Errno> {
    // SAFETY: as for `pread`; the kernel only reads the memory.
    let r = unsafe { libc::pwrite(fd, addr as *const libc::c_void, len, off) };
    Errno::result(r)
}
