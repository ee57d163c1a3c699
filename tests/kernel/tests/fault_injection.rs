//! Faults under the module: allocation failures in its write, load, store
//! and image paths (the kernel's failslab and fail_function), I/O errors
//! under the difference storage (device-mapper's error and flakey targets)
//! and under the original device (fail_make_request), a buffer pool too
//! small for the writes, hot removal with writes in flight and during a
//! take, a take beside a suspended device, and one freezing the storage
//! of a snapshot destroyed with copies in flight. Whatever happens, the
//! device holds every write that succeeded, and the image reads the data
//! of the take or fails: it never serves other data while the snapshot
//! reports itself whole.
//!
//! Debian's kernels are built without fault injection (CONFIG_FAILSLAB,
//! CONFIG_FAIL_FUNCTION, CONFIG_FAIL_MAKE_REQUEST): the tests that need it
//! say `skipped: <why>` there and run on the debug kernel.

#[macro_use]
mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use blksnap::{Control, Error, Event};
use common::*;
use nix::errno::Errno;

const FAILSLAB: &str = "/sys/kernel/debug/failslab";
/// The xarray's nodes: a chunk's first insertion far from the others needs
/// one, allocated GFP_ATOMIC under the area's lock.
const NODE_CACHE: &str = "/sys/kernel/slab/radix_tree_node/failslab";

fn set(path: &str, value: &str) {
    std::fs::write(path, value).unwrap_or_else(|e| panic!("write {value:?} to {path}: {e}"));
}

fn failslab(attr: &str, value: &str) {
    set(&format!("{FAILSLAB}/{attr}"), value);
}

/// Makes every allocation of xarray nodes that may not sleep fail, and
/// only those, until dropped.
struct AtomicNodeFailures;

impl AtomicNodeFailures {
    fn start() -> Self {
        failslab("verbose", "0");
        failslab("task-filter", "N");
        failslab("ignore-gfp-wait", "Y");
        failslab("cache-filter", "Y");
        failslab("interval", "1");
        failslab("times", "-1");
        set(NODE_CACHE, "1");
        failslab("probability", "100");
        AtomicNodeFailures
    }
}

impl Drop for AtomicNodeFailures {
    fn drop(&mut self) {
        failslab("probability", "0");
        set(NODE_CACHE, "0");
    }
}

fn mount_debugfs() {
    if !Path::new("/sys/kernel/debug/kmemleak").exists()
        && !Path::new("/sys/kernel/debug/block").exists()
    {
        let _ = Command::new("mount")
            .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
            .stderr(Stdio::null())
            .status();
    }
}

fn have_failslab() -> bool {
    mount_debugfs();
    Path::new(FAILSLAB).exists() && Path::new(NODE_CACHE).exists()
}

/// First writes to chunks 64 chunks apart, each needing a new xarray node
/// whose atomic allocation fails: the writes are deferred to the worker,
/// which must still preserve every chunk (it may sleep for the node) or
/// else report the snapshot corrupted. Before the fix the worker retried
/// the same atomic insertion, and on its failure let the write through
/// unpreserved with the snapshot healthy: the image showed the new data.
#[test]
fn failed_atomic_chunk_insertions_never_pass_a_write_unpreserved() {
    if !have_failslab() {
        say!("skipped: this kernel has no failslab (CONFIG_FAILSLAB); run it on the debug kernel");
        return;
    }
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    let storage = open_excl(&disks.storage);
    // 64 chunks of 256 KiB (the default chunk for a 1 GiB disk) per node.
    let stride = 16 * MIB / BLOCK;
    let blocks: Vec<u64> = (0..size_of(&dev) / BLOCK)
        .step_by(stride as usize)
        .collect();
    for &b in &blocks {
        write_blocks(&dev, b, 1, |_| 0);
    }
    let _att = Attached::new(&ctl, &dev);
    let (snap, images) = Snap::take(&ctl, &storage, size_of(&storage) / SECTOR, &[&dev]);
    {
        let _fail = AtomicNodeFailures::start();
        for &b in &blocks {
            write_blocks(&dev, b, 1, |_| 1);
        }
    }
    for &b in &blocks {
        verify_range(&dev, b, b + 1, |_| 1).unwrap_or_else(|e| panic!("device: {e}"));
    }
    let info = ctl.snapshot_info(&dev).expect("snapshot_info");
    // Only atomic allocations failed: a worker that may sleep has no
    // reason to lose a chunk.
    assert_eq!(info.error, None, "snapshot corrupted by atomic failures");
    let image = open_direct_ro(&images[0]);
    for &b in &blocks {
        verify_range(&image, b, b + 1, |_| 0)
            .unwrap_or_else(|e| panic!("image healthy but not whole: {e}"));
    }
    drop(image);
    snap.destroy().expect("destroy");
    say!(
        "{} first writes under failing atomic node allocations; image whole",
        blocks.len()
    );
}

const FAIL_FUNCTION: &str = "/sys/kernel/debug/fail_function";

/// Whether fail_function can fail `func`, one of the module's helpers
/// marked ALLOW_ERROR_INJECTION.
fn injectable(func: &str) -> bool {
    mount_debugfs();
    std::fs::read_to_string(format!("{FAIL_FUNCTION}/injectable")).is_ok_and(|list| {
        list.lines()
            .any(|l| l.split_whitespace().next() == Some(func))
    })
}

/// Makes `func` return `retval` (an errno, or NULL for a pointer) at
/// `percent` of its calls, from every task, until dropped.
struct FailFunction;

impl FailFunction {
    fn start(func: &str, retval: i64, percent: u32) -> Self {
        let dir = Path::new(FAIL_FUNCTION);
        set(&format!("{FAIL_FUNCTION}/inject"), func);
        // The retval file takes the register's 64 bits.
        set(
            &dir.join(func).join("retval").to_string_lossy(),
            &format!("{:#x}", retval as u64),
        );
        for (attr, value) in [
            ("verbose", "0"),
            ("task-filter", "N"),
            ("interval", "1"),
            ("times", "-1"),
            ("space", "0"),
            ("probability", &percent.to_string()),
        ] {
            set(&dir.join(attr).to_string_lossy(), value);
        }
        FailFunction
    }
}

impl Drop for FailFunction {
    fn drop(&mut self) {
        set(&format!("{FAIL_FUNCTION}/probability"), "0");
        // Blanks clear the list of functions to fail.
        set(&format!("{FAIL_FUNCTION}/inject"), "\n");
    }
}

const NULL: i64 = 0;
const ENOMEM: i64 = -12;

/// What an image may read: the data of the take while the snapshot
/// reports itself whole; only errors once it reports itself corrupted.
/// A read that fails (only broken storage makes one fail here) must leave
/// the snapshot corrupted: a chunk that cannot be read is lost. Returns a
/// word for the log.
fn check_image(ctl: &Control, dev: &File, image: &Path, region: u64) -> &'static str {
    let info = ctl.snapshot_info(dev).expect("snapshot_info");
    let image = open_direct_ro(image);
    match info.error {
        None => match verify_range(&image, 0, region, |_| 0) {
            Ok(_) => "whole",
            Err(e) if e.starts_with("read ") => {
                let after = ctl.snapshot_info(dev).expect("snapshot_info");
                assert!(
                    after.error.is_some(),
                    "image {e}, yet the snapshot still reports itself whole"
                );
                "corrupted"
            }
            Err(e) => panic!("image reported whole but: {e}"),
        },
        Some(err) => {
            let mut buf = AlignedBuf::new(MIB as usize);
            let read = image.read_exact_at(buf.as_mut_slice(), 0);
            assert!(
                read.is_err(),
                "image reported corrupted ({err}) but served a read"
            );
            "corrupted"
        }
    }
}

/// Fills `region` blocks of data disk A, takes a snapshot of it into
/// `storage` and runs `during` while two writers race over the region;
/// then checks the device and the image. Returns what the image was.
fn race_writes_under(
    ctl: &Control,
    disks: &Disks,
    storage: &File,
    limit: u64,
    during: impl FnOnce() -> Box<dyn std::any::Any>,
) -> &'static str {
    let dev = open_direct(&disks.data_a);
    let region = 32 * MIB / BLOCK;
    write_range(&dev, 0, region, |_| 0);
    let record = Record::new(region);
    let _att = Attached::new(ctl, &dev);
    let (snap, images) = Snap::take(ctl, storage, limit, &[&dev]);
    {
        let _fault = during();
        random_writes(&dev, &record, 2, 24 * MIB, 9);
    }
    verify_range(&dev, 0, region, |b| record.get(b)).unwrap_or_else(|e| panic!("device: {e}"));
    let what = check_image(ctl, &dev, &images[0], region);
    snap.destroy().expect("destroy");
    what
}

/// Allocation failures in every helper of the write, load and store
/// paths, a third of their calls, while writes race. Each case either
/// keeps the image whole (the worker retried) or reports it corrupted;
/// the device always holds every write.
#[test]
fn allocation_failures_in_the_write_load_and_store_paths() {
    // (helper, what it returns on failure, file storage?)
    let cases: [(&str, i64, bool); 5] = [
        ("chunk_new", NULL, false),
        ("diff_buffer_get", NULL, false),
        ("chunk_build_loads", ENOMEM, false),
        ("diff_storage_alloc", ENOMEM, false),
        ("diff_area_store_file", ENOMEM, true),
    ];
    if !cases.iter().all(|c| injectable(c.0)) {
        say!("skipped: this kernel has no fail_function (CONFIG_FAIL_FUNCTION) for the module's helpers; run it on the debug kernel");
        return;
    }
    let (ctl, disks) = setup();
    let mut outcomes = Vec::new();
    for (func, retval, file) in cases {
        let what = if file {
            let fs = TmpMount::ext4(&disks.storage);
            let storage = tmpfile_in(&fs.path);
            race_writes_under(&ctl, &disks, &storage, 256 * MIB / SECTOR, || {
                Box::new(FailFunction::start(func, retval, 33))
            })
        } else {
            let storage = open_excl(&disks.storage);
            let limit = size_of(&storage) / SECTOR;
            race_writes_under(&ctl, &disks, &storage, limit, || {
                Box::new(FailFunction::start(func, retval, 33))
            })
        };
        outcomes.push(format!("{func}: {what}"));
    }
    say!(
        "racing writes with failing helpers: {}",
        outcomes.join(", ")
    );
}

/// The file storage must grow under first writes (a small growth step,
/// twice its size copied) while every growth fails for lack of memory:
/// the copies that find no room corrupt the snapshot with ENOMEM, its
/// event is queued, the image reads fail and the device holds every write.
#[test]
fn a_failed_storage_growth_corrupts_the_snapshot_not_the_device() {
    if !injectable("__diff_storage_grow") {
        say!("skipped: this kernel has no fail_function (CONFIG_FAIL_FUNCTION) for __diff_storage_grow; run it on the debug kernel");
        return;
    }
    const MINIMUM: u64 = 32 * MIB / SECTOR;
    let _restore = reload_module_with(&[&format!("diff_storage_minimum={MINIMUM}")]);
    let (ctl, disks) = setup();
    let fs = TmpMount::ext4(&disks.storage);
    let storage = tmpfile_in(&fs.path);
    let dev = open_direct(&disks.data_a);
    let (major, minor) = dev_numbers(&dev);
    let region = 2 * MINIMUM * SECTOR / BLOCK;
    write_range(&dev, 0, region, |_| 0);
    let _att = Attached::new(&ctl, &dev);
    let (snap, images) = Snap::take(&ctl, &storage, 1024 * MIB / SECTOR, &[&dev]);
    let held = storage.metadata().expect("fstat").len();
    {
        let _fault = FailFunction::start("__diff_storage_grow", ENOMEM, 100);
        write_range(&dev, 0, region, |_| 1);
        let event = loop {
            match ctl.wait_event(snap.id, Duration::from_secs(30)) {
                Ok(Some(Event::LowSpace { .. })) => continue,
                Ok(Some(e)) => break e,
                other => panic!("no corrupted event: {other:?}"),
            }
        };
        assert_eq!(
            event,
            Event::Corrupted {
                major,
                minor,
                errno: Errno::ENOMEM
            }
        );
    }
    let info = ctl.snapshot_info(&dev).expect("snapshot_info");
    assert_eq!(info.error, Some(Errno::ENOMEM), "snapshotinfo");
    assert_eq!(
        storage.metadata().expect("fstat").len(),
        held,
        "the storage grew while every growth failed"
    );
    let image = open_direct_ro(&images[0]);
    let mut buf = AlignedBuf::new(MIB as usize);
    let err = image
        .read_exact_at(buf.as_mut_slice(), 0)
        .expect_err("a corrupted image served a read");
    assert_eq!(
        err.raw_os_error(),
        Some(nix::libc::EIO),
        "image read: {err}"
    );
    verify_range(&dev, 0, region, |_| 1).unwrap_or_else(|e| panic!("device: {e}"));
    drop(image);
    snap.destroy().expect("destroy");
    say!(
        "storage of {} MiB, {} MiB of first writes, every growth failing: corrupted (ENOMEM), device whole",
        held / MIB,
        region * BLOCK / MIB
    );
}

/// The image's own allocations fail while it is read and the device
/// written: each read returns the data of the take or an error. With a
/// file storage, whose image reads of preserved chunks need an allocation
/// each, and image writes whose chunk cannot be made.
#[test]
fn allocation_failures_in_the_image_path() {
    if !injectable("diff_area_file_io") || !injectable("chunk_new") {
        say!("skipped: this kernel has no fail_function (CONFIG_FAIL_FUNCTION) for the module's helpers; run it on the debug kernel");
        return;
    }
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    let region = 16 * MIB / BLOCK;
    write_range(&dev, 0, region, |_| 0);
    let fs = TmpMount::ext4(&disks.storage);
    let storage = tmpfile_in(&fs.path);
    let _att = Attached::new(&ctl, &dev);
    let (snap, images) = Snap::take(&ctl, &storage, 256 * MIB / SECTOR, &[&dev]);
    // Half the chunks preserved in the file before the faults begin.
    write_range(&dev, 0, region / 2, |_| 1);
    let image = open_direct_ro(&images[0]);
    let (good, failed) = {
        let _fault = FailFunction::start("diff_area_file_io", ENOMEM, 50);
        let stop = AtomicBool::new(false);
        let (good, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut rng = Rng::new(3);
                // Never in the last two chunks: the image write below needs
                // a chunk not preserved yet.
                for _ in 0..400 {
                    let first = rng.below(region - 128 - 16);
                    write_blocks(&dev, first, 16, |_| 2);
                }
                stop.store(true, Ordering::SeqCst);
            });
            let mut rng = Rng::new(4);
            let mut buf = AlignedBuf::new(MIB as usize);
            while !stop.load(Ordering::SeqCst) {
                let first = rng.below(region - 256);
                let slice = buf.as_mut_slice();
                match image.read_exact_at(slice, first * BLOCK) {
                    Ok(()) => {
                        for (i, blk) in slice.chunks_exact(BLOCK as usize).enumerate() {
                            check_block(blk, first + i as u64, 0)
                                .unwrap_or_else(|e| panic!("image read under faults: {e}"));
                        }
                        good.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // The failed allocation's own error, or EIO.
                        assert!(
                            matches!(e.raw_os_error(), Some(nix::libc::EIO | nix::libc::ENOMEM)),
                            "image read: {e}"
                        );
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        (good.into_inner(), failed.into_inner())
    };
    assert!(
        failed > 0,
        "no image read failed: the fault was not injected"
    );
    // A failed image read is not a lost chunk: the image is still whole.
    assert_eq!(check_image(&ctl, &dev, &images[0], region), "whole");

    // Image writes to chunks not preserved yet: each needs a chunk.
    let image_rw = open_direct(&images[0]);
    let written = {
        let _fault = FailFunction::start("chunk_new", NULL, 100);
        let mut buf = AlignedBuf::new(BLOCK as usize);
        fill_block(buf.as_mut_slice(), region - 1, 7);
        image_rw.write_all_at(buf.as_slice(), (region - 1) * BLOCK)
    };
    assert!(written.is_err(), "an image write without a chunk succeeded");
    let what = check_image(&ctl, &dev, &images[0], region);
    drop(image_rw);
    drop(image);
    snap.destroy().expect("destroy");
    say!("image reads under failing file I/O allocations: {good} whole, {failed} failed; image write without a chunk failed, image then {what}");
}

/// Failed allocations at attach and take fail the command cleanly: no
/// tracker, no snapshot state is left half made, and the same command
/// succeeds once the fault is gone.
#[test]
fn allocation_failures_at_attach_and_take_fail_cleanly() {
    let funcs = ["cbt_map_new", "diff_area_new", "snapimage_new"];
    if !funcs.iter().all(|f| injectable(f)) {
        say!("skipped: this kernel has no fail_function (CONFIG_FAIL_FUNCTION) for the module's helpers; run it on the debug kernel");
        return;
    }
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    {
        let _fault = FailFunction::start("cbt_map_new", ENOMEM, 100);
        let r = ctl.attach(&dev);
        assert_eq!(
            r.err().and_then(|e| e.errno()),
            Some(Errno::ENOMEM),
            "attach"
        );
    }
    assert!(matches!(ctl.cbt_info(&dev), Err(Error::NotAttached { .. })));
    let _att = Attached::new(&ctl, &dev);
    let storage = open_excl(&disks.storage);
    let snap = Snap::create(&ctl, &storage, size_of(&storage) / SECTOR);
    ctl.snapshot_add(snap.id, &dev).expect("snapshot_add");
    for func in ["diff_area_new", "snapimage_new"] {
        let _fault = FailFunction::start(func, ENOMEM, 100);
        let r = ctl.snapshot_take(snap.id);
        assert_eq!(
            r.err().and_then(|e| e.errno()),
            Some(Errno::ENOMEM),
            "take with {func} failing"
        );
        let info = ctl.snapshot_info(&dev).expect("snapshot_info");
        assert_eq!(info.image, None, "an image after a failed take");
    }
    ctl.snapshot_take(snap.id)
        .expect("take once the faults are gone");
    write_blocks(&dev, 0, 1, |_| 1);
    let info = ctl.snapshot_info(&dev).expect("snapshot_info");
    let path = info.image_path().expect("image");
    wait_for_path(&path);
    verify_range(&open_direct_ro(&path), 1, 2, |_| 0).expect("image after the retried take");
    snap.destroy().expect("destroy");
}

/// A device-mapper device over the storage disk, removed on drop.
struct DmDev {
    name: String,
    pub path: std::path::PathBuf,
}

impl DmDev {
    fn new(name: &str, table: &str) -> Self {
        let _ = Command::new("modprobe").arg("dm_mod").status();
        run("dmsetup", &["create", name, "--table", table]);
        let path = std::path::PathBuf::from(format!("/dev/mapper/{name}"));
        wait_for_path(&path);
        DmDev {
            name: name.to_owned(),
            path,
        }
    }

    /// Replaces the table, as one suspend and resume. A file system on
    /// the device is not frozen for it: its thaw would write the super
    /// block, which fails under the error table, and so the resume.
    fn swap(&self, table: &str) {
        run("dmsetup", &["reload", &self.name, "--table", table]);
        run("dmsetup", &["resume", "--nolockfs", &self.name]);
    }
}

impl Drop for DmDev {
    fn drop(&mut self) {
        let _ = Command::new("dmsetup")
            .args(["resume", &self.name])
            .status();
        let _ = Command::new("dmsetup")
            .args(["remove", "--retry", &self.name])
            .status();
    }
}

fn have_dmsetup() -> bool {
    Command::new("dmsetup")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Chunks stored while the storage (`dm`, a block device itself or under
/// the file system of a file storage) works; then it fails every I/O. An
/// image read of a stored chunk fails, and must have marked the snapshot
/// corrupted, with its event, before the read returned; it stays so once
/// the storage works again. The device keeps every write.
fn read_stored_chunks_through_failing_storage(
    ctl: &Control,
    disks: &Disks,
    dm: &DmDev,
    storage: &File,
    limit: u64,
    (bad, good): (&str, &str),
) {
    let dev = open_direct(&disks.data_a);
    let region = 8 * MIB / BLOCK;
    write_range(&dev, 0, region, |_| 0);
    let _att = Attached::new(ctl, &dev);
    let (snap, images) = Snap::take(ctl, storage, limit, &[&dev]);
    write_range(&dev, 0, region, |_| 1);
    let image = open_direct_ro(&images[0]);
    // A read of a chunk still being stored waits for it: after this
    // every chunk of the region is in the storage.
    verify_range(&image, 0, region, |_| 0).expect("image before the fault");
    // Nothing of a file system on the storage is left to write while it
    // fails (its mount has noatime: the reads write nothing either).
    run("sync", &[]);
    dm.swap(bad);
    let read = verify_range(&image, 0, region, |_| 0);
    let info = ctl.snapshot_info(&dev).expect("snapshot_info");
    dm.swap(good);
    match read {
        Err(e) if e.starts_with("read ") => {}
        other => panic!("image read of chunks on a failing storage: {other:?}"),
    }
    assert!(
        info.error.is_some(),
        "a stored chunk could not be read, yet the snapshot reports itself whole"
    );
    match ctl.wait_event(snap.id, Duration::from_secs(5)) {
        Ok(Some(Event::Corrupted { .. })) => {}
        other => panic!("event after the failed read: {other:?}"),
    }
    let mut buf = AlignedBuf::new(MIB as usize);
    assert!(
        image.read_exact_at(buf.as_mut_slice(), 0).is_err(),
        "the image served a read once corrupted"
    );
    verify_range(&dev, 0, region, |_| 1).unwrap_or_else(|e| panic!("device: {e}"));
    drop(image);
    snap.destroy().expect("destroy");
}

/// The difference storage starts failing I/O while writes race, for good
/// (the error target) or by turns (flakey): the image serves the data of
/// the take or fails, the device holds every write. Then the storage
/// fails under chunks already stored in it, a block device and a file
/// storage: reading them corrupts the snapshot.
#[test]
fn storage_io_errors_never_serve_other_data_nor_harm_the_device() {
    if !have_dmsetup() {
        say!("skipped: no dmsetup in the guest");
        return;
    }
    let (ctl, disks) = setup();
    let sectors = {
        let f = open_rw(&disks.storage);
        size_of(&f) / SECTOR
    };
    let disk = disks.storage.to_str().expect("UTF-8 path");
    let linear = format!("0 {sectors} linear {disk} 0");
    let mut outcomes = Vec::new();
    for (kind, bad) in [
        ("error", format!("0 {sectors} error")),
        ("flakey", format!("0 {sectors} flakey {disk} 0 1 1")),
    ] {
        let dm = DmDev::new("blksnap_store", &linear);
        let storage = open_excl(&dm.path);
        let what = race_writes_under(&ctl, &disks, &storage, sectors, || {
            if kind == "flakey" {
                let _ = Command::new("modprobe").arg("dm_flakey").status();
            }
            dm.swap(&bad);
            Box::new(())
        });
        // check_image has refused any data but the take's. Whole is
        // right too: copies still in the module's buffers are served from
        // memory, and the race may make none; which one is timing.
        outcomes.push(format!("{kind}: {what}"));
        drop(storage);
    }
    let error = format!("0 {sectors} error");
    {
        let dm = DmDev::new("blksnap_store", &linear);
        let storage = open_excl(&dm.path);
        read_stored_chunks_through_failing_storage(
            &ctl,
            &disks,
            &dm,
            &storage,
            sectors,
            (&error, &linear),
        );
    }
    {
        let dm = DmDev::new("blksnap_store", &linear);
        let fs = TmpMount::ext4(&dm.path);
        let storage = tmpfile_in(&fs.path);
        read_stored_chunks_through_failing_storage(
            &ctl,
            &disks,
            &dm,
            &storage,
            256 * MIB / SECTOR,
            (&error, &linear),
        );
    }
    say!(
        "storage I/O errors: {}; stored chunks read through a failing storage: corrupted (block device, file)",
        outcomes.join(", ")
    );
}

const FAIL_MAKE_REQUEST: &str = "/sys/kernel/debug/fail_make_request";

/// Fails `percent` of the bios submitted to `disk` (a whole disk's name
/// below /sys/block), until dropped.
struct FailRequests(String);

impl FailRequests {
    fn start(disk: &str, percent: u32) -> Self {
        let dir = Path::new(FAIL_MAKE_REQUEST);
        for (attr, value) in [
            ("verbose", "0"),
            ("task-filter", "N"),
            ("interval", "1"),
            ("times", "-1"),
            ("space", "0"),
            ("probability", &percent.to_string()),
        ] {
            set(&dir.join(attr).to_string_lossy(), value);
        }
        set(&format!("/sys/block/{disk}/make-it-fail"), "1");
        FailRequests(disk.to_owned())
    }
}

impl Drop for FailRequests {
    fn drop(&mut self) {
        set(&format!("/sys/block/{}/make-it-fail", self.0), "0");
        set(&format!("{FAIL_MAKE_REQUEST}/probability"), "0");
    }
}

/// Bios to the original device fail while single-block writes race: the
/// copy-on-write reads among them, so the snapshot is corrupted, and
/// writes, which then leave their block as it was. The device holds every
/// write that succeeded; the image never serves other data.
#[test]
fn io_errors_under_the_original_device() {
    mount_debugfs();
    if !Path::new(FAIL_MAKE_REQUEST).exists() {
        say!("skipped: this kernel has no fail_make_request (CONFIG_FAIL_MAKE_REQUEST); run it on the debug kernel");
        return;
    }
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    let disk = disks
        .data_a
        .file_name()
        .expect("disk name")
        .to_string_lossy()
        .into_owned();
    let region = 16 * MIB / BLOCK;
    write_range(&dev, 0, region, |_| 0);
    let record = Record::new(region);
    let storage = open_excl(&disks.storage);
    let _att = Attached::new(&ctl, &dev);
    let (snap, images) = Snap::take(&ctl, &storage, size_of(&storage) / SECTOR, &[&dev]);
    let (mut ok, mut failed) = (0u32, 0u32);
    {
        let _fault = FailRequests::start(&disk, 10);
        let mut rng = Rng::new(11);
        let mut buf = AlignedBuf::new(BLOCK as usize);
        for seq in 1..=1500u32 {
            let b = rng.below(region);
            fill_block(buf.as_mut_slice(), b, seq);
            // One block, one bio: it fails whole or lands whole.
            match dev.write_all_at(buf.as_slice(), b * BLOCK) {
                Ok(()) => {
                    record.set(b, seq);
                    ok += 1;
                }
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(nix::libc::EIO), "write: {e}");
                    failed += 1;
                }
            }
        }
    }
    assert!(failed > 0, "no write failed: the fault was not injected");
    verify_range(&dev, 0, region, |b| record.get(b)).unwrap_or_else(|e| panic!("device: {e}"));
    let what = check_image(&ctl, &dev, &images[0], region);
    snap.destroy().expect("destroy");
    say!("{ok} writes landed, {failed} failed under failing requests; image {what}");
}

/// The smallest buffer pool (4 chunks) under two writers on two devices
/// in one snapshot: most first writes find no free buffer and wait in the
/// deferral path. The images still read the data of the take.
#[test]
fn a_small_buffer_pool_defers_writes_and_keeps_the_images_whole() {
    let restore = reload_module_with(&["free_diff_buffer_pool_size=4"]);
    assert_eq!(
        module_param("free_diff_buffer_pool_size").as_deref(),
        Some("4")
    );
    {
        let (ctl, disks) = setup();
        let a = open_direct(&disks.data_a);
        let b = open_direct(&disks.data_b);
        let region = 32 * MIB / BLOCK;
        write_range(&a, 0, region, |_| 0);
        write_range(&b, 0, region, |_| 0);
        let (ra, rb) = (Record::new(region), Record::new(region));
        let _att_a = Attached::new(&ctl, &a);
        let _att_b = Attached::new(&ctl, &b);
        let storage = open_excl(&disks.storage);
        let (snap, images) = Snap::take(&ctl, &storage, size_of(&storage) / SECTOR, &[&a, &b]);
        std::thread::scope(|s| {
            s.spawn(|| random_writes(&a, &ra, 2, 24 * MIB, 21));
            s.spawn(|| random_writes(&b, &rb, 2, 24 * MIB, 22));
        });
        verify_range(&a, 0, region, |x| ra.get(x)).unwrap_or_else(|e| panic!("A: {e}"));
        verify_range(&b, 0, region, |x| rb.get(x)).unwrap_or_else(|e| panic!("B: {e}"));
        for (dev, image) in [(&a, &images[0]), (&b, &images[1])] {
            assert_eq!(check_image(&ctl, dev, image, region), "whole");
        }
        snap.destroy().expect("destroy");
    }
    drop(restore);
    say!("2 x 24 MiB of racing writes through a pool of 4 buffers; images whole");
}

/// Writers keep writing to an attached null_blk in a snapshot while it is
/// removed: nothing hangs, the writes fail once it is gone, the image
/// fails its reads, the snapshot can be destroyed.
#[test]
fn hot_removal_with_writes_in_flight() {
    let (ctl, _disks) = setup();
    let mut nullb = NullBlk::new("blksnap_inflight", 128 * MIB);
    let dev = open_direct(&nullb.dev);
    let region = 32 * MIB / BLOCK;
    write_range(&dev, 0, region, |_| 0);
    let fs = TmpMount::tmpfs(96 * MIB);
    let storage = tmpfile_in(&fs.path);
    ctl.attach(&dev).expect("attach");
    let (snap, images) = Snap::take(&ctl, &storage, 80 * MIB / SECTOR, &[&dev]);
    let image = open_direct_ro(&images[0]);
    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let (dev, stop, writes) = (&dev, &stop, &writes);
            s.spawn(move || {
                let mut rng = Rng::new(30 + w);
                let mut buf = AlignedBuf::new(64 * KIB as usize);
                while !stop.load(Ordering::SeqCst) {
                    let first = rng.below(region - 16);
                    for (i, blk) in buf
                        .as_mut_slice()
                        .chunks_exact_mut(BLOCK as usize)
                        .enumerate()
                    {
                        fill_block(blk, first + i as u64, 1);
                    }
                    if dev.write_all_at(buf.as_slice(), first * BLOCK).is_err() {
                        break;
                    }
                    writes.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs(2));
        nullb.power_off();
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::SeqCst);
    });
    let mut buf = AlignedBuf::new(MIB as usize);
    assert!(
        image.read_exact_at(buf.as_mut_slice(), 0).is_err(),
        "the image of a removed device served a read"
    );
    assert!(matches!(
        ctl.snapshot_info(&dev),
        Err(Error::NotAttached { .. })
    ));
    drop(image);
    snap.destroy().expect("destroy after removal");
    say!(
        "null_blk removed under {} completed 64 KiB writes",
        writes.load(Ordering::Relaxed)
    );
}

/// The device is removed while a take drains it (a write it completes
/// only after `STALL` holds the take): the take ends, in error or with an
/// image that reports the device lost, and nothing hangs.
#[test]
fn hot_removal_during_a_take() {
    // Short: every read of the partition scan at creation waits as long.
    const STALL: Duration = Duration::from_secs(4);
    let (ctl, _disks) = setup();
    let nanos = STALL.as_nanos().to_string();
    let mut slow = NullBlk::with(
        "blksnap_slowrm",
        64 * MIB,
        &[
            ("irqmode", "2"),
            ("completion_nsec", &nanos),
            ("submit_queues", "1"),
            ("hw_queue_depth", "1"),
        ],
    );
    let name = slow
        .dev
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    for (attr, value) in [("scheduler", "none"), ("io_timeout", "600000")] {
        let path = format!("/sys/block/{name}/queue/{attr}");
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let dev = open_direct(&slow.dev);
    ctl.attach(&dev).expect("attach");
    let fs = TmpMount::tmpfs(64 * MIB);
    let storage = tmpfile_in(&fs.path);
    let snap = Snap::create(&ctl, &storage, 48 * MIB / SECTOR);
    ctl.snapshot_add(snap.id, &dev).expect("snapshot_add");
    let taken = std::thread::scope(|s| {
        s.spawn(|| {
            let _ = dev.write_all_at(AlignedBuf::new(BLOCK as usize).as_slice(), 0);
        });
        std::thread::sleep(Duration::from_secs(1));
        let take = s.spawn(|| ctl.snapshot_take(snap.id));
        std::thread::sleep(Duration::from_secs(1));
        slow.power_off();
        take.join().expect("take thread panicked")
    });
    match &taken {
        Ok(()) => {
            // The image exists but its device is gone: never readable.
            let path = std::path::PathBuf::from("/dev/blksnap-image0");
            if let Ok(image) = std::fs::File::open(&path) {
                let mut buf = vec![0u8; 4096];
                assert!(
                    image.read_exact_at(&mut buf, 0).is_err(),
                    "the image of a device removed during its take served a read"
                );
            }
        }
        Err(e) => assert_eq!(e.errno(), Some(Errno::ENODEV), "take: {e}"),
    }
    assert!(matches!(
        ctl.snapshot_info(&dev),
        Err(Error::NotAttached { .. })
    ));
    snap.destroy().expect("destroy");
    say!("device removed during its take; take: {taken:?}");
}

/// A take of A while B, an attached dm device, is suspended with a write
/// queued in it: the take does not wait for B.
#[test]
fn take_beside_a_suspended_device() {
    if !have_dmsetup() {
        say!("skipped: no dmsetup in the guest");
        return;
    }
    let (ctl, disks) = setup();
    let sectors = {
        let f = open_rw(&disks.data_b);
        size_of(&f) / SECTOR
    };
    let disk = disks.data_b.to_str().expect("UTF-8 path");
    let dm = DmDev::new("blksnap_susp", &format!("0 {sectors} linear {disk} 0"));
    let b = open_direct(&dm.path);
    let _att_b = Attached::new(&ctl, &b);
    let a = open_direct(&disks.data_a);
    let _att_a = Attached::new(&ctl, &a);
    let storage = open_excl(&disks.storage);
    let snap = Snap::create(&ctl, &storage, size_of(&storage) / SECTOR);
    ctl.snapshot_add(snap.id, &a).expect("snapshot_add");
    run("dmsetup", &["suspend", "--nolockfs", "blksnap_susp"]);
    let taken = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            write_blocks(&b, 0, 1, |_| 1);
            taken.load(Ordering::SeqCst)
        });
        std::thread::sleep(Duration::from_secs(1));
        ctl.snapshot_take(snap.id).expect("snapshot_take");
        taken.store(true, Ordering::SeqCst);
        run("dmsetup", &["resume", "blksnap_susp"]);
        assert!(
            writer.join().expect("writer panicked"),
            "the write to the suspended B completed before the take of A"
        );
    });
    verify_range(&b, 0, 1, |_| 1).unwrap_or_else(|e| panic!("B: {e}"));
    snap.destroy().expect("destroy");
}

/// Writers of [`take_freezing_a_destroyed_snapshots_storage`]: writer `w`
/// writes the first block of chunks `w`, `w + 16`, ... once each.
const FREEZE_WRITERS: u64 = 16;
/// Blocks per chunk at the module's default chunk size (256 KiB).
const CHUNK_BLOCKS: u64 = 64;

/// A, then B, snapshots of D, B's storage in a file system on X. B is
/// destroyed while copies for it are in flight (D's reads are slow, X's
/// writes too), and at once C takes D and X, freezing X's file system:
/// a copy still bound for B's storage would then wait for the thaw while
/// holding one of the few buffers the writes the take drains wait for.
/// The take must end, and every image hold its take's data.
#[test]
fn take_freezing_a_destroyed_snapshots_storage() {
    if !have_dmsetup() {
        say!("skipped: no dmsetup in the guest");
        return;
    }
    let restore = reload_module_with(&["free_diff_buffer_pool_size=8"]);
    let (written, destroy_took, take_took) = {
        let (ctl, disks) = setup();
        let _ = Command::new("modprobe").arg("dm_delay").status();
        let disk_of = |p: &Path| p.to_str().expect("UTF-8 path").to_owned();
        let (a_disk, b_disk) = (disk_of(&disks.data_a), disk_of(&disks.data_b));
        let sectors_of = |p: &Path| size_of(&open_rw(p)) / SECTOR;
        let (a_sectors, b_sectors) = (sectors_of(&disks.data_a), sectors_of(&disks.data_b));
        // D's reads (the copies' loads) take 500 ms; its writes none.
        let dm_d = DmDev::new(
            "blksnap_slowread",
            &format!("0 {a_sectors} delay {a_disk} 0 500 {a_disk} 0 0"),
        );
        let dm_x = DmDev::new(
            "blksnap_slowwrite",
            &format!("0 {b_sectors} linear {b_disk} 0"),
        );
        let fs_x = TmpMount::ext4(&dm_x.path);
        // X's writes (the copies' stores) take 100 ms, once its file system is made.
        dm_x.swap(&format!("0 {b_sectors} delay {b_disk} 0 0 {b_disk} 0 100"));
        let fs_y = TmpMount::tmpfs(256 * MIB);
        let d = open_direct(&dm_d.path);
        let x = open_direct(&dm_x.path);
        let region = 32 * MIB / BLOCK;
        write_range(&d, 0, region, |_| 0);
        let record = Record::new(region);
        let _att_d = Attached::new(&ctl, &d);
        let _att_x = Attached::new(&ctl, &x);
        let limit = 128 * MIB / SECTOR;
        let (snap_a, images_a) = Snap::take(&ctl, &tmpfile_in(&fs_y.path), limit, &[&d]);
        let (snap_b, _) = Snap::take(&ctl, &tmpfile_in(&fs_x.path), limit, &[&d]);
        let snap_c = Snap::create(&ctl, &tmpfile_in(&fs_y.path), limit);
        ctl.snapshot_add(snap_c.id, &d).expect("snapshot_add D");
        ctl.snapshot_add(snap_c.id, &x).expect("snapshot_add X");

        let stop = AtomicBool::new(false);
        let (before, destroy_took, take_took) = std::thread::scope(|s| {
            for w in 0..FREEZE_WRITERS {
                let (d, record, stop) = (&d, &record, &stop);
                s.spawn(move || {
                    let mut chunk = w;
                    while chunk * CHUNK_BLOCKS < region && !stop.load(Ordering::SeqCst) {
                        write_blocks(d, chunk * CHUNK_BLOCKS, 1, |_| 1);
                        record.set(chunk * CHUNK_BLOCKS, 1);
                        chunk += FREEZE_WRITERS;
                    }
                });
            }
            std::thread::sleep(Duration::from_secs(2));
            let t0 = std::time::Instant::now();
            snap_b.destroy().expect("destroy B");
            let destroy_took = t0.elapsed();
            let before: Vec<u32> = (0..region).map(|b| record.get(b)).collect();
            let (tx, rx) = std::sync::mpsc::channel();
            let id = snap_c.id;
            let t0 = std::time::Instant::now();
            std::thread::spawn(move || {
                let _ = tx.send(control().snapshot_take(id));
            });
            let taken = rx.recv_timeout(Duration::from_secs(300));
            let take_took = t0.elapsed();
            if taken.is_err() {
                say!("the take of C did not end in 300 s; thawing X");
                let _ = Command::new("fsfreeze")
                    .args(["--unfreeze", fs_x.path.to_str().expect("UTF-8 path")])
                    .status();
                stop.store(true, Ordering::SeqCst);
                panic!("the take of C did not end in 300 s");
            }
            taken.expect("take").expect("snapshot_take C");
            stop.store(true, Ordering::SeqCst);
            (before, destroy_took, take_took)
        });

        dm_d.swap(&format!("0 {a_sectors} linear {a_disk} 0"));
        verify_range(&d, 0, region, |b| record.get(b)).unwrap_or_else(|e| panic!("D: {e}"));
        verify_range(&open_direct_ro(&images_a[0]), 0, region, |_| 0)
            .unwrap_or_else(|e| panic!("A's image: {e}"));
        let info = ctl
            .snapshot_info_of(snap_c.id, &d)
            .expect("snapshot_info_of C");
        assert_eq!(info.info.error, None, "C reports an error");
        let path = info.info.image_path().expect("C has an image of D");
        wait_for_path(&path);
        let seqs = read_seqs(&open_direct_ro(&path), region).unwrap_or_else(|e| panic!("C: {e}"));
        let mut written = 0;
        for b in 0..region {
            let (held, then, now) = (seqs[b as usize], before[b as usize], record.get(b));
            assert!(
                held >= then && held <= now,
                "C's image of block {b} holds write {held}, not one between {then} and {now}"
            );
            written += u64::from(now);
        }
        let info = ctl
            .snapshot_info_of(snap_a.id, &d)
            .expect("snapshot_info_of A");
        assert_eq!(info.info.error, None, "A reports an error");
        snap_c.destroy().expect("destroy C");
        snap_a.destroy().expect("destroy A");
        (written, destroy_took, take_took)
    };
    drop(restore);
    say!(
        "{written} chunks written; destroy of B took {:.1} s, the take of C freezing X {:.1} s",
        destroy_took.as_secs_f64(),
        take_took.as_secs_f64()
    );
}
