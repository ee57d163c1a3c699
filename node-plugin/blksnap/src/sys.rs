//! Raw mirror of `kmod/include/uapi/linux/blksnap.h`: the only module of
//! the crate with `unsafe`.
//!
//! The structs keep the C names so that they can be read side by side with
//! the header; `tests/layout.rs` compiles the header and checks every size,
//! offset and request code against this file. Implicit C padding is spelled
//! out as `_pad*` fields so that Rust never hands the kernel uninitialised
//! bytes and so that a changed header shows up as a layout mismatch.
//!
//! Every ioctl that carries a user pointer inside its argument gets a safe
//! wrapper here that builds the argument from a Rust slice or reference, so
//! that the pointer and the length the kernel sees always describe live
//! memory of the caller.

#![allow(non_camel_case_types)]
#![allow(unsafe_code)]

use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::ioctl::ioctl_num_type;

/// Name of the control device below `/dev`.
pub const BLKSNAP_CTL: &str = "blksnap-control";
/// Prefix of the image block devices' names.
pub const BLKSNAP_IMAGE_NAME: &str = "blksnap-image";
/// The ioctl magic.
pub const BLKSNAP: u8 = b'V';
/// Interface version this crate was written against.
pub const BLKSNAP_VERSION_MAJOR: u16 = 1;
/// Minor interface version this crate was written against.
pub const BLKSNAP_VERSION_MINOR: u16 = 1;
/// Bytes of a UUID.
pub const UUID_SIZE: usize = 16;
/// Largest `count` of a `blksnap_cbtdirty`.
pub const BLKSNAP_CBTDIRTY_MAX_COUNT: u32 = 65536;
/// Bytes of `blksnap_snapshotinfo.image`, terminating NUL included.
pub const IMAGE_DISK_NAME_LEN: usize = 32;

/// `enum blkfilter_ctl_blksnap`: the per-device commands of `IOCTL_BLKSNAP_CTL`.
pub mod ctl_cmd {
    /// Fill a `blksnap_cbtinfo`.
    pub const CBTINFO: u32 = 0;
    /// Copy a window of the frozen change map.
    pub const CBTMAP: u32 = 1;
    /// Mark sector ranges changed.
    pub const CBTDIRTY: u32 = 2;
    /// Add the device to a snapshot.
    pub const SNAPSHOTADD: u32 = 3;
    /// Fill a `blksnap_snapshotinfo` for the newest taken snapshot.
    pub const SNAPSHOTINFO: u32 = 4;
    /// Fill a `blksnap_snapshotinfo_of` for a named snapshot (1.1).
    pub const SNAPSHOTINFO_OF: u32 = 5;
}

/// `enum blksnap_ioctl`: the command numbers (`_IOC_NR`).
pub mod nr {
    /// `IOCTL_BLKSNAP_VERSION`.
    pub const VERSION: u8 = 0;
    /// `IOCTL_BLKSNAP_SNAPSHOT_CREATE`.
    pub const SNAPSHOT_CREATE: u8 = 1;
    /// `IOCTL_BLKSNAP_SNAPSHOT_DESTROY`.
    pub const SNAPSHOT_DESTROY: u8 = 2;
    /// `IOCTL_BLKSNAP_SNAPSHOT_TAKE`.
    pub const SNAPSHOT_TAKE: u8 = 3;
    /// `IOCTL_BLKSNAP_SNAPSHOT_COLLECT`.
    pub const SNAPSHOT_COLLECT: u8 = 4;
    /// `IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT`.
    pub const SNAPSHOT_WAIT_EVENT: u8 = 5;
    /// `IOCTL_BLKSNAP_ATTACH`.
    pub const ATTACH: u8 = 16;
    /// `IOCTL_BLKSNAP_DETACH`.
    pub const DETACH: u8 = 17;
    /// `IOCTL_BLKSNAP_CTL`.
    pub const CTL: u8 = 18;
}

/// `enum blksnap_event_codes`.
pub mod event_code {
    /// Data is a `blksnap_event_corrupted`.
    pub const CORRUPTED: u32 = 0;
    /// Data is a `blksnap_event_low_space`.
    pub const LOW_SPACE: u32 = 1;
}

/// `struct blksnap_uuid`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct blksnap_uuid {
    pub b: [u8; UUID_SIZE],
}

/// `struct blksnap_cbtinfo`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_cbtinfo {
    pub device_capacity: u64,
    pub block_size: u32,
    pub block_count: u32,
    pub generation_id: blksnap_uuid,
    pub changes_number: u8,
    /// Implicit tail padding of the C struct (alignment of the `__u64`).
    pub _pad: [u8; 7],
}

/// `struct blksnap_cbtmap`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_cbtmap {
    pub offset: u32,
    pub length: u32,
    pub buffer: u64,
}

/// `struct blksnap_sectors`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct blksnap_sectors {
    pub offset: u64,
    pub count: u64,
}

/// `struct blksnap_cbtdirty`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_cbtdirty {
    pub count: u32,
    /// Implicit padding before the `__u64` pointer.
    pub _pad: u32,
    pub dirty_sectors: u64,
}

/// `struct blksnap_snapshotadd`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_snapshotadd {
    pub id: blksnap_uuid,
}

/// `struct blksnap_snapshotinfo`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_snapshotinfo {
    pub error_code: i32,
    pub image: [u8; IMAGE_DISK_NAME_LEN],
}

/// `struct blksnap_snapshotinfo_of` (1.1).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_snapshotinfo_of {
    pub id: blksnap_uuid,
    pub info: blksnap_snapshotinfo,
    pub storage_used_sect: u64,
    pub storage_filled_sect: u64,
}

/// `struct blksnap_version`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_version {
    pub major: u16,
    pub minor: u16,
    pub revision: u16,
    pub build: u16,
}

/// `struct blksnap_snapshot_create`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_snapshot_create {
    pub diff_storage_limit_sect: u64,
    pub diff_storage_fd: u32,
    pub id: blksnap_uuid,
    /// Implicit tail padding (28 bytes of fields, aligned to 8).
    pub _pad: u32,
}

/// `struct blksnap_snapshot_collect`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_snapshot_collect {
    pub count: u32,
    /// Implicit padding before the `__u64` pointer.
    pub _pad: u32,
    pub ids: u64,
}

/// Bytes of `blksnap_snapshot_event.data`.
pub const EVENT_DATA_LEN: usize = 4096 - 32;

/// `struct blksnap_snapshot_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct blksnap_snapshot_event {
    pub id: blksnap_uuid,
    pub timeout_ms: u32,
    pub code: u32,
    pub time_label: i64,
    pub data: [u8; EVENT_DATA_LEN],
}

impl Default for blksnap_snapshot_event {
    fn default() -> Self {
        Self {
            id: blksnap_uuid::default(),
            timeout_ms: 0,
            code: 0,
            time_label: 0,
            data: [0; EVENT_DATA_LEN],
        }
    }
}

/// `struct blksnap_event_corrupted`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_event_corrupted {
    pub dev_id_mj: u32,
    pub dev_id_mn: u32,
    pub err_code: i32,
}

/// `struct blksnap_event_low_space`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_event_low_space {
    pub free_sectors: u64,
    pub limit_sectors: u64,
}

/// `struct blksnap_bdev`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_bdev {
    pub fd: u32,
    pub flags: u32,
}

/// `struct blksnap_ctl`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct blksnap_ctl {
    pub fd: u32,
    pub cmd: u32,
    pub optlen: u32,
    pub reserved: u32,
    pub opt: u64,
}

// The request codes, computed from the same direction, number and type as
// the wrappers below use, so that the layout test checks what is sent.

/// `IOCTL_BLKSNAP_VERSION`.
pub const IOCTL_BLKSNAP_VERSION: ioctl_num_type =
    nix::request_code_read!(BLKSNAP, nr::VERSION, size_of::<blksnap_version>()) as ioctl_num_type;
/// `IOCTL_BLKSNAP_SNAPSHOT_CREATE`.
pub const IOCTL_BLKSNAP_SNAPSHOT_CREATE: ioctl_num_type = nix::request_code_readwrite!(
    BLKSNAP,
    nr::SNAPSHOT_CREATE,
    size_of::<blksnap_snapshot_create>()
) as ioctl_num_type;
/// `IOCTL_BLKSNAP_SNAPSHOT_DESTROY`.
pub const IOCTL_BLKSNAP_SNAPSHOT_DESTROY: ioctl_num_type =
    nix::request_code_write!(BLKSNAP, nr::SNAPSHOT_DESTROY, size_of::<blksnap_uuid>())
        as ioctl_num_type;
/// `IOCTL_BLKSNAP_SNAPSHOT_TAKE`.
pub const IOCTL_BLKSNAP_SNAPSHOT_TAKE: ioctl_num_type =
    nix::request_code_write!(BLKSNAP, nr::SNAPSHOT_TAKE, size_of::<blksnap_uuid>())
        as ioctl_num_type;
/// `IOCTL_BLKSNAP_SNAPSHOT_COLLECT`.
pub const IOCTL_BLKSNAP_SNAPSHOT_COLLECT: ioctl_num_type = nix::request_code_readwrite!(
    BLKSNAP,
    nr::SNAPSHOT_COLLECT,
    size_of::<blksnap_snapshot_collect>()
) as ioctl_num_type;
/// `IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT`.
pub const IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT: ioctl_num_type = nix::request_code_readwrite!(
    BLKSNAP,
    nr::SNAPSHOT_WAIT_EVENT,
    size_of::<blksnap_snapshot_event>()
) as ioctl_num_type;
/// `IOCTL_BLKSNAP_ATTACH`.
pub const IOCTL_BLKSNAP_ATTACH: ioctl_num_type =
    nix::request_code_write!(BLKSNAP, nr::ATTACH, size_of::<blksnap_bdev>()) as ioctl_num_type;
/// `IOCTL_BLKSNAP_DETACH`.
pub const IOCTL_BLKSNAP_DETACH: ioctl_num_type =
    nix::request_code_write!(BLKSNAP, nr::DETACH, size_of::<blksnap_bdev>()) as ioctl_num_type;
/// `IOCTL_BLKSNAP_CTL`.
pub const IOCTL_BLKSNAP_CTL: ioctl_num_type =
    nix::request_code_readwrite!(BLKSNAP, nr::CTL, size_of::<blksnap_ctl>()) as ioctl_num_type;

/// The generated `unsafe fn`s; only the safe wrappers below call them.
mod raw {
    use super::*;

    nix::ioctl_read!(version, BLKSNAP, nr::VERSION, blksnap_version);
    nix::ioctl_readwrite!(
        snapshot_create,
        BLKSNAP,
        nr::SNAPSHOT_CREATE,
        blksnap_snapshot_create
    );
    nix::ioctl_write_ptr!(
        snapshot_destroy,
        BLKSNAP,
        nr::SNAPSHOT_DESTROY,
        blksnap_uuid
    );
    nix::ioctl_write_ptr!(snapshot_take, BLKSNAP, nr::SNAPSHOT_TAKE, blksnap_uuid);
    nix::ioctl_readwrite!(
        snapshot_collect,
        BLKSNAP,
        nr::SNAPSHOT_COLLECT,
        blksnap_snapshot_collect
    );
    nix::ioctl_readwrite!(
        snapshot_wait_event,
        BLKSNAP,
        nr::SNAPSHOT_WAIT_EVENT,
        blksnap_snapshot_event
    );
    nix::ioctl_write_ptr!(attach, BLKSNAP, nr::ATTACH, blksnap_bdev);
    nix::ioctl_write_ptr!(detach, BLKSNAP, nr::DETACH, blksnap_bdev);
    nix::ioctl_readwrite!(ctl, BLKSNAP, nr::CTL, blksnap_ctl);
}

/// A struct that is the payload of one `IOCTL_BLKSNAP_CTL` command and has
/// no pointers of its own, so that any value of it is safe to hand over.
pub trait CtlPayload: Copy {
    /// The `enum blkfilter_ctl_blksnap` value.
    const CMD: u32;
}

impl CtlPayload for blksnap_cbtinfo {
    const CMD: u32 = ctl_cmd::CBTINFO;
}
impl CtlPayload for blksnap_snapshotadd {
    const CMD: u32 = ctl_cmd::SNAPSHOTADD;
}
impl CtlPayload for blksnap_snapshotinfo {
    const CMD: u32 = ctl_cmd::SNAPSHOTINFO;
}
impl CtlPayload for blksnap_snapshotinfo_of {
    const CMD: u32 = ctl_cmd::SNAPSHOTINFO_OF;
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // A BorrowedFd is never negative.
    fd.as_raw_fd() as u32
}

fn len_u32(len: usize) -> Result<u32, Errno> {
    u32::try_from(len).map_err(|_| Errno::EINVAL)
}

/// `IOCTL_BLKSNAP_VERSION`.
pub fn version(ctl: BorrowedFd<'_>) -> Result<blksnap_version, Errno> {
    let mut v = blksnap_version::default();
    // SAFETY: `v` is a live, writable value of the type the request encodes.
    unsafe { raw::version(ctl.as_raw_fd(), &mut v) }?;
    Ok(v)
}

/// `IOCTL_BLKSNAP_SNAPSHOT_CREATE`; fills `arg.id`.
pub fn snapshot_create(
    ctl: BorrowedFd<'_>,
    arg: &mut blksnap_snapshot_create,
) -> Result<(), Errno> {
    // SAFETY: `arg` is a live exclusive reference of the encoded type.
    unsafe { raw::snapshot_create(ctl.as_raw_fd(), arg) }?;
    Ok(())
}

/// `IOCTL_BLKSNAP_SNAPSHOT_DESTROY`.
pub fn snapshot_destroy(ctl: BorrowedFd<'_>, id: &blksnap_uuid) -> Result<(), Errno> {
    // SAFETY: `id` is a live reference of the encoded type, only read.
    unsafe { raw::snapshot_destroy(ctl.as_raw_fd(), id) }?;
    Ok(())
}

/// `IOCTL_BLKSNAP_SNAPSHOT_TAKE`.
pub fn snapshot_take(ctl: BorrowedFd<'_>, id: &blksnap_uuid) -> Result<(), Errno> {
    // SAFETY: `id` is a live reference of the encoded type, only read.
    unsafe { raw::snapshot_take(ctl.as_raw_fd(), id) }?;
    Ok(())
}

/// `IOCTL_BLKSNAP_SNAPSHOT_COLLECT` with room for `ids.len()` ids.
///
/// Returns the kernel's count: on success the number of ids written; with
/// `Err(ENODATA)` the caller learns nothing more than that the room was too
/// small, so the count is returned alongside in that case.
pub fn snapshot_collect(
    ctl: BorrowedFd<'_>,
    ids: &mut [blksnap_uuid],
) -> Result<u32, (Errno, u32)> {
    let mut arg = blksnap_snapshot_collect {
        count: len_u32(ids.len()).map_err(|e| (e, 0))?,
        _pad: 0,
        // An empty slice's pointer is dangling but never dereferenced: the
        // kernel writes at most `count` (0) elements.
        ids: ids.as_mut_ptr() as u64,
    };
    // SAFETY: `arg` is live; `arg.ids` points to `arg.count` writable
    // elements of `ids`, which outlives the call.
    match unsafe { raw::snapshot_collect(ctl.as_raw_fd(), &mut arg) } {
        Ok(_) => Ok(arg.count),
        Err(e) => Err((e, arg.count)),
    }
}

/// `IOCTL_BLKSNAP_SNAPSHOT_WAIT_EVENT`; fills `code`, `time_label`, `data`.
pub fn snapshot_wait_event(
    ctl: BorrowedFd<'_>,
    arg: &mut blksnap_snapshot_event,
) -> Result<(), Errno> {
    // SAFETY: `arg` is a live exclusive reference of the encoded type.
    unsafe { raw::snapshot_wait_event(ctl.as_raw_fd(), arg) }?;
    Ok(())
}

/// `IOCTL_BLKSNAP_ATTACH`.
pub fn attach(ctl: BorrowedFd<'_>, dev: BorrowedFd<'_>) -> Result<(), Errno> {
    let arg = blksnap_bdev {
        fd: fd_u32(dev),
        flags: 0,
    };
    // SAFETY: `arg` is a live value of the encoded type, only read.
    unsafe { raw::attach(ctl.as_raw_fd(), &arg) }?;
    Ok(())
}

/// `IOCTL_BLKSNAP_DETACH`.
pub fn detach(ctl: BorrowedFd<'_>, dev: BorrowedFd<'_>) -> Result<(), Errno> {
    let arg = blksnap_bdev {
        fd: fd_u32(dev),
        flags: 0,
    };
    // SAFETY: `arg` is a live value of the encoded type, only read.
    unsafe { raw::detach(ctl.as_raw_fd(), &arg) }?;
    Ok(())
}

/// `IOCTL_BLKSNAP_CTL` whose `opt` points to `opt` bytes of `len` bytes.
///
/// # Safety
/// `opt` must be valid for reads and writes of `len` bytes for the whole
/// call, and any pointers inside it must be valid for what the command
/// does with them.
unsafe fn ctl_raw(
    ctl: BorrowedFd<'_>,
    dev: BorrowedFd<'_>,
    cmd: u32,
    opt: *mut u8,
    len: usize,
) -> Result<i32, Errno> {
    let mut arg = blksnap_ctl {
        fd: fd_u32(dev),
        cmd,
        optlen: len_u32(len)?,
        reserved: 0,
        opt: opt as u64,
    };
    // SAFETY: `arg` is live; the caller vouches for `opt`.
    unsafe { raw::ctl(ctl.as_raw_fd(), &mut arg) }
}

/// `IOCTL_BLKSNAP_CTL` with a pointer-free payload, read and written in place.
pub fn ctl<T: CtlPayload>(
    ctl: BorrowedFd<'_>,
    dev: BorrowedFd<'_>,
    opt: &mut T,
) -> Result<i32, Errno> {
    // SAFETY: `opt` is a live exclusive reference of `size_of::<T>()` bytes
    // and, by `CtlPayload`, holds no pointers.
    unsafe { ctl_raw(ctl, dev, T::CMD, (opt as *mut T).cast(), size_of::<T>()) }
}

/// `blkfilter_ctl_blksnap_cbtmap`: copies the frozen map from block
/// `offset` into `buf`; returns the number of bytes copied.
pub fn ctl_cbtmap(
    ctl: BorrowedFd<'_>,
    dev: BorrowedFd<'_>,
    offset: u32,
    buf: &mut [u8],
) -> Result<usize, Errno> {
    let mut map = blksnap_cbtmap {
        offset,
        length: len_u32(buf.len())?,
        buffer: buf.as_mut_ptr() as u64,
    };
    // SAFETY: `map` is live for the call and its buffer/length describe the
    // writable slice `buf`.
    let n = unsafe {
        ctl_raw(
            ctl,
            dev,
            ctl_cmd::CBTMAP,
            (&mut map as *mut blksnap_cbtmap).cast(),
            size_of::<blksnap_cbtmap>(),
        )
    }?;
    let n = usize::try_from(n).map_err(|_| Errno::EINVAL)?;
    if n > buf.len() {
        // The kernel claims to have written past the buffer it was given.
        return Err(Errno::EOVERFLOW);
    }
    Ok(n)
}

/// `blkfilter_ctl_blksnap_cbtdirty` for at most
/// `BLKSNAP_CBTDIRTY_MAX_COUNT` ranges.
pub fn ctl_cbtdirty(
    ctl: BorrowedFd<'_>,
    dev: BorrowedFd<'_>,
    ranges: &[blksnap_sectors],
) -> Result<(), Errno> {
    let mut dirty = blksnap_cbtdirty {
        count: len_u32(ranges.len())?,
        _pad: 0,
        dirty_sectors: ranges.as_ptr() as u64,
    };
    // SAFETY: `dirty` is live for the call; its pointer/count describe the
    // slice `ranges`, which the kernel only reads.
    unsafe {
        ctl_raw(
            ctl,
            dev,
            ctl_cmd::CBTDIRTY,
            (&mut dirty as *mut blksnap_cbtdirty).cast(),
            size_of::<blksnap_cbtdirty>(),
        )
    }?;
    Ok(())
}
