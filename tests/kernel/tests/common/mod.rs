//! Shared helpers of the kernel tests.
//!
//! # Device contract
//!
//! The tests run as root inside the VM with `blksnap.ko` loaded, one at a
//! time (`--test-threads=1`, and one test binary after another), because
//! they share the disks below. The harness provides:
//!
//! * `BLKSNAP_TEST_DISKS`: at least four whitespace-separated scratch
//!   block devices, in this order, whose contents the tests destroy:
//!   1. data disk A, 1 GiB (at least 256 MiB);
//!   2. data disk B, 1 GiB (at least 256 MiB);
//!   3. storage disk, 1.5 GiB: difference storage as a block device, or
//!      formatted ext4 to hold storage files;
//!   4. spare disk, 256 MiB: formatted and mounted by the tests that need a
//!      file system on an attached device.
//! * `BLKSNAP_KO`: path of the `blksnap.ko` under test, for the tests that
//!   unload the module and must load it again (with the parameters it had).
//!
//! A missing variable fails the test with a message naming it: a test that
//! cannot run never passes. Tests may also make their own devices: tmpfs
//! mounts for storage files ([`TmpMount`]) and null_blk devices through
//! configfs for hot removal ([`NullBlk`]); they need `mount`, `mkfs.ext4`
//! and `modprobe` from the guest's (the host's) root file system.
//!
//! Every test starts with [`setup`], which destroys leftover snapshots and
//! detaches the disks, so one failed test does not fail the next ones.
//!
//! # Data pattern
//!
//! Data is written in 4 KiB blocks; block `b` written by write number `seq`
//! holds `b`, `seq` and a magic in its first 16 bytes and an xorshift
//! stream seeded by both after that ([`fill_block`]). So the expected
//! content of any block is recomputed from one `u32` per block, and a
//! mismatch says which block and which write the data really came from.

#![allow(dead_code)] // Each test binary uses a different part of this.

pub mod raw;

/// `println!` that is shown even for passing tests (libtest captures
/// stdout): the amounts written and verified belong in the run's log.
macro_rules! say {
    ($($t:tt)*) => {
        $crate::common::progress(format_args!($($t)*))
    };
}

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use blksnap::{Control, Error, SnapshotId};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// Unit of the data pattern and of the tests' writes.
pub const BLOCK: u64 = 4096;
pub const SECTOR: u64 = 512;
const MAGIC: u32 = 0xb15a_5eed;

/// The scratch disks of the contract above.
#[derive(Debug, Clone)]
pub struct Disks {
    pub data_a: PathBuf,
    pub data_b: PathBuf,
    pub storage: PathBuf,
    pub spare: PathBuf,
}

impl Disks {
    pub fn all(&self) -> [&Path; 4] {
        [&self.data_a, &self.data_b, &self.storage, &self.spare]
    }
}

/// An environment variable the contract requires; fails the test without it.
pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "{name} is not set: these tests run only in the VM harness (tests/vm), \
             see the device contract in tests/kernel/tests/common/mod.rs"
        ),
    }
}

pub fn disks() -> Disks {
    let list = required_env("BLKSNAP_TEST_DISKS");
    let paths: Vec<PathBuf> = list.split_whitespace().map(PathBuf::from).collect();
    assert!(
        paths.len() >= 4,
        "BLKSNAP_TEST_DISKS must name 4 disks (data A, data B, storage, spare), got {list:?}"
    );
    for p in &paths[..4] {
        let meta = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()),
            "{} in BLKSNAP_TEST_DISKS is not a block device",
            p.display()
        );
    }
    Disks {
        data_a: paths[0].clone(),
        data_b: paths[1].clone(),
        storage: paths[2].clone(),
        spare: paths[3].clone(),
    }
}

/// What every test starts from: the control device, and no snapshots and
/// no attached test disks left over from an earlier (failed) test.
pub fn setup() -> (Control, Disks) {
    START.get_or_init(Instant::now);
    assert!(
        nix::unistd::geteuid().is_root(),
        "kernel tests must run as root"
    );
    let disks = disks();
    let ctl = control();
    cleanup(&ctl, &disks.all());
    (ctl, disks)
}

pub fn control() -> Control {
    Control::open().unwrap_or_else(|e| panic!("{e} (is blksnap.ko loaded?)"))
}

/// Destroys every snapshot and detaches `devices` (those that are not
/// attached are fine).
pub fn cleanup(ctl: &Control, devices: &[&Path]) {
    let ids = ctl.snapshot_collect().expect("snapshot_collect");
    for id in ids {
        match ctl.snapshot_destroy(id) {
            Ok(()) | Err(Error::NoSuchSnapshot { .. }) => {}
            Err(e) => panic!("cleanup: destroy {id}: {e}"),
        }
    }
    for dev in devices {
        let f = open_rw(dev);
        match ctl.detach(&f) {
            Ok(()) | Err(Error::NotAttached { .. }) => {}
            Err(e) => panic!("cleanup: detach {}: {e}", dev.display()),
        }
    }
}

pub fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Read-write with `O_DIRECT`, so that the tests' I/O really reaches the
/// block layer (and the filter) and reads never come from the page cache.
pub fn open_direct(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT: {e}", path.display()))
}

/// Read-only with `O_DIRECT` (for images).
pub fn open_direct_ro(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} O_DIRECT read-only: {e}", path.display()))
}

/// A block device opened read-write and `O_EXCL`, as a storage must be.
pub fn open_excl(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_EXCL)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} O_EXCL: {e}", path.display()))
}

/// An unnamed `O_TMPFILE` file in `dir`.
pub fn tmpfile_in(dir: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .unwrap_or_else(|e| panic!("O_TMPFILE in {}: {e}", dir.display()))
}

/// Size in bytes of a block device (or file).
pub fn size_of(f: &File) -> u64 {
    let mut f = f.try_clone().expect("dup");
    f.seek(SeekFrom::End(0)).expect("seek to end")
}

/// `(major, minor)` of an open block device.
pub fn dev_numbers(f: &File) -> (u32, u32) {
    let rdev = f.metadata().expect("fstat").rdev();
    (
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    )
}

/// A byte buffer aligned for `O_DIRECT`, without `unsafe`: an over-sized
/// vector and the aligned window inside it.
pub struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let mem = vec![0u8; len + BLOCK as usize];
        let start = mem.as_ptr().align_offset(BLOCK as usize);
        AlignedBuf { mem, start, len }
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

/// xorshift64: cheap, deterministic, good enough for test data and choices.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Never zero, and distinct seeds do not start alike.
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform enough in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn block_seed(block: u64, seq: u32) -> u64 {
    block.wrapping_mul(0x2545_f491_4f6c_dd1d)
        ^ (u64::from(seq) << 32 | u64::from(seq))
        ^ 0x5bd1_e995
}

/// Fills one 4 KiB block with the pattern of `(block, seq)`.
pub fn fill_block(buf: &mut [u8], block: u64, seq: u32) {
    debug_assert_eq!(buf.len(), BLOCK as usize);
    buf[..8].copy_from_slice(&block.to_le_bytes());
    buf[8..12].copy_from_slice(&seq.to_le_bytes());
    buf[12..16].copy_from_slice(&MAGIC.to_le_bytes());
    let mut x = Rng::new(block_seed(block, seq));
    for w in buf[16..].chunks_exact_mut(8) {
        w.copy_from_slice(&x.next_u64().to_le_bytes());
    }
}

/// Checks one block against the pattern of `(block, seq)`; on mismatch
/// says what the block holds instead.
pub fn check_block(buf: &[u8], block: u64, seq: u32) -> Result<(), String> {
    let mut expect = [0u8; BLOCK as usize];
    fill_block(&mut expect, block, seq);
    if buf == expect {
        return Ok(());
    }
    let word = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&buf[r]);
        u64::from_le_bytes(b)
    };
    let found = if word(12..16) == u64::from(MAGIC) {
        let (fb, fs) = (word(0..8), word(8..12) as u32);
        let mut again = [0u8; BLOCK as usize];
        fill_block(&mut again, fb, fs);
        if again == buf {
            format!("the data of block {fb} write {fs}")
        } else {
            format!("a damaged copy of block {fb} write {fs}")
        }
    } else if buf.iter().all(|&b| b == 0) {
        "zeroes".to_owned()
    } else {
        format!("foreign data starting {:02x?}", &buf[..16])
    };
    Err(format!(
        "block {block} (byte {:#x}): expected write {seq}, found {found}",
        block * BLOCK
    ))
}

/// Writes blocks `first..first + count` with the pattern of `seq_of(block)`
/// in one `O_DIRECT` write.
pub fn write_blocks(f: &File, first: u64, count: u64, seq_of: impl Fn(u64) -> u32) {
    let mut buf = AlignedBuf::new((count * BLOCK) as usize);
    for (i, chunk) in buf
        .as_mut_slice()
        .chunks_exact_mut(BLOCK as usize)
        .enumerate()
    {
        let b = first + i as u64;
        fill_block(chunk, b, seq_of(b));
    }
    f.write_all_at(buf.as_slice(), first * BLOCK)
        .unwrap_or_else(|e| panic!("write {count} blocks at block {first}: {e}"));
}

/// Writes blocks `from..to` with `seq_of(block)`, 1 MiB at a time.
pub fn write_range(f: &File, from: u64, to: u64, seq_of: impl Fn(u64) -> u32) {
    let step = MIB / BLOCK;
    let mut b = from;
    while b < to {
        let n = step.min(to - b);
        write_blocks(f, b, n, &seq_of);
        b += n;
    }
}

/// Reads blocks `from..to` 1 MiB at a time and checks each against
/// `seq_of(block)`; returns the bytes verified or the first mismatch.
pub fn verify_range(
    f: &File,
    from: u64,
    to: u64,
    seq_of: impl Fn(u64) -> u32,
) -> Result<u64, String> {
    scan_blocks(f, from, to, |blk, buf| check_block(buf, blk, seq_of(blk)))?;
    Ok((to - from) * BLOCK)
}

/// The write number each block holds, checking its whole pattern.
pub fn read_seqs(f: &File, blocks: u64) -> Result<Vec<u32>, String> {
    let mut seqs = Vec::with_capacity(blocks as usize);
    scan_blocks(f, 0, blocks, |block, buf| {
        let seq = u32::from_le_bytes(buf[8..12].try_into().unwrap());
        check_block(buf, block, seq)?;
        seqs.push(seq);
        Ok(())
    })?;
    Ok(seqs)
}

/// Reads blocks `from..to` 1 MiB at a time and hands each, with its
/// number, to `check`, up to the first error.
fn scan_blocks(
    f: &File,
    from: u64,
    to: u64,
    mut check: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let step = MIB / BLOCK;
    let mut buf = AlignedBuf::new(MIB as usize);
    let mut b = from;
    while b < to {
        let n = step.min(to - b);
        let slice = &mut buf.as_mut_slice()[..(n * BLOCK) as usize];
        f.read_exact_at(slice, b * BLOCK)
            .map_err(|e| format!("read {n} blocks at block {b}: {e}"))?;
        for (i, blk) in slice.chunks_exact(BLOCK as usize).enumerate() {
            check(b + i as u64, blk)?;
        }
        b += n;
    }
    Ok(())
}

/// What the last write to each block of a region was: the per-block `seq`
/// the device must read back.
pub struct Record(Vec<AtomicU32>);

impl Record {
    pub fn new(blocks: u64) -> Self {
        Record((0..blocks).map(|_| AtomicU32::new(0)).collect())
    }
    pub fn get(&self, block: u64) -> u32 {
        self.0[block as usize].load(Ordering::Acquire)
    }
    pub fn set(&self, block: u64, seq: u32) {
        self.0[block as usize].store(seq, Ordering::Release)
    }
    pub fn blocks(&self) -> u64 {
        self.0.len() as u64
    }
}

/// Blocks per stripe in [`random_writes`]: a write never crosses a stripe,
/// and each stripe belongs to one writer, so two writers never race for a
/// block and [`Record`] stays exact.
pub const STRIPE_BLOCKS: u64 = 64;

/// Random `O_DIRECT` writes of 4 KiB..256 KiB into `0..record.blocks()`
/// from `writers` threads until `total` bytes are written; every write is
/// recorded after it completed. Returns the bytes written.
pub fn random_writes(dev: &File, record: &Record, writers: u32, total: u64, seed: u64) -> u64 {
    random_writes_after(dev, record, writers, total, seed, 0)
}

/// [`random_writes`] whose write numbers all exceed `base`, so that the
/// numbers a block holds grow over several calls.
pub fn random_writes_after(
    dev: &File,
    record: &Record,
    writers: u32,
    total: u64,
    seed: u64,
    base: u32,
) -> u64 {
    let stripes = record.blocks() / STRIPE_BLOCKS;
    assert!(
        stripes >= u64::from(writers),
        "region too small for {writers} writers"
    );
    let written = AtomicU64::new(0);
    std::thread::scope(|s| {
        for w in 0..writers {
            let written = &written;
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ (u64::from(w) << 48) ^ 0xabcd);
                let mine = (stripes - u64::from(w)).div_ceil(u64::from(writers));
                let mut n: u32 = 0;
                while written.load(Ordering::Relaxed) < total {
                    let stripe = rng.below(mine) * u64::from(writers) + u64::from(w);
                    let len = 1 + rng.below(STRIPE_BLOCKS);
                    let first = stripe * STRIPE_BLOCKS + rng.below(STRIPE_BLOCKS - len + 1);
                    n += 1;
                    // Unique per write, never 0 (the fill before take).
                    let seq = base + n * writers + w + 1;
                    write_blocks(dev, first, len, |_| seq);
                    for b in first..first + len {
                        record.set(b, seq);
                    }
                    let before = written.fetch_add(len * BLOCK, Ordering::Relaxed);
                    let step = 128 * MIB;
                    if before / step != (before + len * BLOCK) / step {
                        progress(format_args!("{} MiB written", (before + len * BLOCK) / MIB));
                    }
                }
            });
        }
    });
    written.into_inner()
}

/// Reads random windows of `image` until `stop` and checks them against
/// `seq_of`; returns the bytes verified.
pub fn random_verify(
    image: &File,
    blocks: u64,
    stop: &AtomicBool,
    seed: u64,
    seq_of: impl Fn(u64) -> u32,
) -> Result<u64, String> {
    let mut rng = Rng::new(seed);
    let mut verified = 0;
    while !stop.load(Ordering::Relaxed) {
        let len = 1 + rng.below(256);
        let first = rng.below(blocks - len.min(blocks) + 1);
        let to = (first + len).min(blocks);
        verified += verify_range(image, first, to, &seq_of)?;
    }
    Ok(verified)
}

/// A snapshot destroyed when dropped (tests that destroy it themselves
/// call [`Snap::destroy`]).
pub struct Snap<'a> {
    pub ctl: &'a Control,
    pub id: SnapshotId,
    alive: bool,
}

impl<'a> Snap<'a> {
    pub fn create(ctl: &'a Control, storage: &impl AsFd, limit_sectors: u64) -> Self {
        let id = ctl
            .snapshot_create(storage, limit_sectors)
            .unwrap_or_else(|e| panic!("snapshot_create: {e}"));
        Snap {
            ctl,
            id,
            alive: true,
        }
    }

    /// Creates, adds `devs` and takes; returns the snapshot and each
    /// device's image path.
    pub fn take(
        ctl: &'a Control,
        storage: &impl AsFd,
        limit_sectors: u64,
        devs: &[&File],
    ) -> (Self, Vec<PathBuf>) {
        let snap = Snap::create(ctl, storage, limit_sectors);
        for d in devs {
            ctl.snapshot_add(snap.id, *d)
                .unwrap_or_else(|e| panic!("snapshot_add: {e}"));
        }
        ctl.snapshot_take(snap.id)
            .unwrap_or_else(|e| panic!("snapshot_take: {e}"));
        let images = devs
            .iter()
            .map(|d| {
                let info = ctl.snapshot_info(*d).expect("snapshot_info");
                assert_eq!(info.error, None, "fresh snapshot reports an error");
                let path = info.image_path().expect("taken snapshot has an image");
                wait_for_path(&path);
                path
            })
            .collect();
        (snap, images)
    }

    pub fn destroy(mut self) -> blksnap::Result<()> {
        self.alive = false;
        self.ctl.snapshot_destroy(self.id)
    }
}

impl Drop for Snap<'_> {
    fn drop(&mut self) {
        if self.alive {
            if let Err(e) = self.ctl.snapshot_destroy(self.id) {
                eprintln!("destroying snapshot {} on drop: {e}", self.id);
            }
        }
    }
}

/// A device attached for the test's duration.
pub struct Attached<'a> {
    ctl: &'a Control,
    dev: &'a File,
}

impl<'a> Attached<'a> {
    pub fn new(ctl: &'a Control, dev: &'a File) -> Self {
        ctl.attach(dev).unwrap_or_else(|e| panic!("attach: {e}"));
        Attached { ctl, dev }
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        match self.ctl.detach(self.dev) {
            Ok(()) | Err(Error::NotAttached { .. }) => {}
            Err(e) => eprintln!("detach on drop: {e}"),
        }
    }
}

/// Waits (up to 10 s) for a device node that udev/devtmpfs creates.
pub fn wait_for_path(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command and fails the test if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unique_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "blksnap-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    dir
}

/// A file system mounted on a fresh directory, unmounted on drop.
pub struct TmpMount {
    pub path: PathBuf,
}

impl TmpMount {
    /// A tmpfs of `size` bytes.
    pub fn tmpfs(size: u64) -> Self {
        let path = unique_dir("tmpfs");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={}k", size / KIB),
                "blksnap-test",
                path.to_str().expect("UTF-8 path"),
            ],
        );
        TmpMount { path }
    }

    /// A fresh ext4 on `dev`, mounted noatime: reading a file writes
    /// nothing, so that a test may fail the device under it for reads.
    pub fn ext4(dev: &Path) -> Self {
        let dev = dev.to_str().expect("UTF-8 path");
        run("mkfs.ext4", &["-q", "-F", "-E", "nodiscard", dev]);
        let path = unique_dir("ext4");
        run(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                "noatime",
                dev,
                path.to_str().expect("UTF-8 path"),
            ],
        );
        TmpMount { path }
    }
}

impl Drop for TmpMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            let _ = std::fs::remove_dir(&self.path);
        } else {
            eprintln!("umount {} failed", self.path.display());
        }
    }
}

/// A memory-backed null_blk device made through configfs, for hot removal.
pub struct NullBlk {
    cfg: PathBuf,
    pub dev: PathBuf,
    powered: bool,
}

impl NullBlk {
    pub fn new(name: &str, size: u64) -> Self {
        Self::with(name, size, &[])
    }

    /// With configfs attributes `attrs` (name, value) set before power-on.
    pub fn with(name: &str, size: u64, attrs: &[(&str, &str)]) -> Self {
        run("modprobe", &["null_blk", "nr_devices=0"]);
        let root = Path::new("/sys/kernel/config");
        if !root.join("nullb").exists() {
            let _ = Command::new("mount")
                .args(["-t", "configfs", "none", "/sys/kernel/config"])
                .status();
        }
        let cfg = root.join("nullb").join(name);
        assert!(
            root.join("nullb").is_dir(),
            "null_blk configfs not available at {}",
            root.join("nullb").display()
        );
        if cfg.exists() {
            let _ = std::fs::write(cfg.join("power"), "0");
            let _ = std::fs::remove_dir(&cfg);
        }
        std::fs::create_dir(&cfg).unwrap_or_else(|e| panic!("mkdir {}: {e}", cfg.display()));
        let set = |k: &str, v: &str| {
            std::fs::write(cfg.join(k), v).unwrap_or_else(|e| panic!("nullb {k}={v}: {e}"))
        };
        set("size", &(size / MIB).to_string());
        set("blocksize", "4096");
        set("memory_backed", "1");
        for (k, v) in attrs {
            set(k, v);
        }
        set("power", "1");
        // Kernels since 5.x name a configfs-made disk after its directory;
        // older ones "nullb<index>".
        let index = std::fs::read_to_string(cfg.join("index")).expect("nullb index");
        let candidates = [
            PathBuf::from("/dev").join(name),
            PathBuf::from(format!("/dev/nullb{}", index.trim())),
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        let dev = loop {
            if let Some(p) = candidates.iter().find(|p| p.exists()) {
                break p.clone();
            }
            assert!(Instant::now() < deadline, "none of {candidates:?} appeared");
            std::thread::sleep(Duration::from_millis(20));
        };
        NullBlk {
            cfg,
            dev,
            powered: true,
        }
    }

    /// Removes the disk (`del_gendisk`) while it may be open and attached.
    pub fn power_off(&mut self) {
        std::fs::write(self.cfg.join("power"), "0").expect("nullb power=0");
        self.powered = false;
    }
}

impl Drop for NullBlk {
    fn drop(&mut self) {
        if self.powered {
            let _ = std::fs::write(self.cfg.join("power"), "0");
        }
        if let Err(e) = std::fs::remove_dir(&self.cfg) {
            eprintln!("rmdir {}: {e}", self.cfg.display());
        }
    }
}

pub const MODULE: &str = "blksnap";

/// The module's current parameters as `name=value` for insmod.
pub fn module_params() -> Vec<String> {
    let dir = Path::new("/sys/module").join(MODULE).join("parameters");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut params: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = std::fs::read_to_string(e.path()).ok()?;
            Some(format!("{}={}", e.file_name().to_string_lossy(), v.trim()))
        })
        .collect();
    params.sort();
    params
}

pub fn module_param(name: &str) -> Option<String> {
    let p = Path::new("/sys/module")
        .join(MODULE)
        .join("parameters")
        .join(name);
    std::fs::read_to_string(p).ok().map(|v| v.trim().to_owned())
}

pub fn module_loaded() -> bool {
    Path::new("/sys/module").join(MODULE).exists()
}

/// `delete_module("blksnap", O_NONBLOCK)`.
pub fn unload_module() -> nix::Result<()> {
    // udev probes each image a take adds; an image it still has open after
    // its snapshot is destroyed holds the module until udev closes it.
    let _ = Command::new("udevadm").arg("settle").status();
    let name = CString::new(MODULE).expect("no NUL");
    nix::kmod::delete_module(&name, nix::kmod::DeleteModuleFlags::O_NONBLOCK)
}

/// The module's reference count as sysfs tells it, for failure messages.
pub fn module_refcnt() -> String {
    std::fs::read_to_string(format!("/sys/module/{MODULE}/refcnt"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Loads `$BLKSNAP_KO` with `params` and waits for the control device.
pub fn load_module(params: &[String]) {
    let ko = required_env("BLKSNAP_KO");
    let f = File::open(&ko).unwrap_or_else(|e| panic!("open {ko}: {e}"));
    let params = CString::new(params.join(" ")).expect("no NUL in params");
    nix::kmod::finit_module(&f, &params, nix::kmod::ModuleInitFlags::empty())
        .unwrap_or_else(|e| panic!("finit_module {ko} {params:?}: {e}"));
    wait_for_path(Path::new(Control::DEFAULT_PATH));
}

/// Reloads the module with `params` replacing its current ones (no
/// `Control` of the test may be open); the returned guard restores the
/// original parameters.
pub fn reload_module_with(params: &[&str]) -> ModuleRestore {
    let original = module_params();
    let mut new: Vec<String> = original
        .iter()
        .filter(|p| {
            let name = p.split('=').next().unwrap_or_default();
            !params.iter().any(|q| q.split('=').next() == Some(name))
        })
        .cloned()
        .collect();
    new.extend(params.iter().map(|p| p.to_string()));
    unload_module().unwrap_or_else(|e| {
        panic!(
            "unload {MODULE} to change parameters: {e}, reference count {}",
            module_refcnt()
        )
    });
    load_module(&new);
    ModuleRestore { original }
}

pub struct ModuleRestore {
    original: Vec<String>,
}

impl Drop for ModuleRestore {
    fn drop(&mut self) {
        if let Err(e) = unload_module() {
            eprintln!("cannot unload {MODULE} to restore its parameters: {e}");
            return;
        }
        load_module(&self.original);
    }
}

/// When this test binary's first [`setup`] ran: the origin of [`progress`]
/// times.
static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// A progress line for long tests, written past libtest's output capture
/// so that a slow run under TCG shows where it is.
pub fn progress(msg: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let t = START.get_or_init(Instant::now).elapsed();
    let _ = writeln!(std::io::stderr(), "  [{:7.1}s] {msg}", t.as_secs_f64());
}

/// Bytes of write traffic for the stress tests: 1 GiB unless
/// `BLKSNAP_TEST_WRITE_MIB` says otherwise (for quicker local runs).
pub fn stress_bytes() -> u64 {
    std::env::var("BLKSNAP_TEST_WRITE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(GIB, |m| m * MIB)
}
