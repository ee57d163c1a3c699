//! Writes to the image, destroy and re-take cycles, attach/detach rules,
//! and hot removal of an attached device.

#[macro_use]
mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use blksnap::Error;
use common::*;

/// Image blocks 100..200 get write 5; then the device gets write 6 on
/// 150..250, which the image must not see.
fn image_writes_land_in(
    ctl: &blksnap::Control,
    disks: &Disks,
    storage: &std::fs::File,
    limit: u64,
    what: &str,
) {
    let dev = open_direct(&disks.data_a);
    let region = 64 * MIB / BLOCK;
    write_range(&dev, 0, region, |_| 0);
    let _att = Attached::new(ctl, &dev);
    let (snap, images) = Snap::take(ctl, storage, limit, &[&dev]);
    let image = open_direct(&images[0]);

    write_range(&image, 100, 200, |_| 5);
    write_range(&dev, 150, 250, |_| 6);
    let in_image = |b: u64| if (100..200).contains(&b) { 5 } else { 0 };
    let on_dev = |b: u64| if (150..250).contains(&b) { 6 } else { 0 };
    verify_range(&image, 0, region, in_image).unwrap_or_else(|e| panic!("{what}: image: {e}"));
    verify_range(&dev, 0, region, on_dev).unwrap_or_else(|e| panic!("{what}: device: {e}"));
    drop(image);
    snap.destroy().expect("destroy");
    verify_range(&dev, 0, region, on_dev)
        .unwrap_or_else(|e| panic!("{what}: device after destroy: {e}"));
}

#[test]
fn image_writes_land_in_the_image_and_not_on_the_device() {
    let (ctl, disks) = setup();
    let storage = open_excl(&disks.storage);
    image_writes_land_in(
        &ctl,
        &disks,
        &storage,
        size_of(&storage) / SECTOR,
        "block device storage",
    );
    drop(storage);
    let fs = TmpMount::ext4(&disks.storage);
    let storage = tmpfile_in(&fs.path);
    image_writes_land_in(&ctl, &disks, &storage, 256 * MIB / SECTOR, "file storage");
}

#[test]
fn destroy_and_retake_cycles() {
    const CYCLES: u32 = 20;
    let (ctl, disks) = setup();
    let storage = open_excl(&disks.storage);
    let limit = size_of(&storage) / SECTOR;
    let dev = open_direct(&disks.data_a);
    // Small, as every cycle verifies all of it twice.
    let region = 32 * MIB / BLOCK;
    write_range(&dev, 0, region, |_| 0);
    let record = Record::new(region);
    let _att = Attached::new(&ctl, &dev);
    let mut rng = Rng::new(20);
    for cycle in 1..=CYCLES {
        let at_take: Vec<u32> = (0..region).map(|b| record.get(b)).collect();
        let (snap, images) = Snap::take(&ctl, &storage, limit, &[&dev]);
        let image = open_direct_ro(&images[0]);
        // 2 MiB in 32 random writes of 64 KiB.
        for _ in 0..32 {
            let first = rng.below(region - 16);
            write_blocks(&dev, first, 16, |_| cycle);
            for b in first..first + 16 {
                record.set(b, cycle);
            }
        }
        verify_range(&image, 0, region, |b| at_take[b as usize])
            .unwrap_or_else(|e| panic!("cycle {cycle}: image: {e}"));
        verify_range(&dev, 0, region, |b| record.get(b))
            .unwrap_or_else(|e| panic!("cycle {cycle}: device: {e}"));
        drop(image);
        snap.destroy()
            .unwrap_or_else(|e| panic!("cycle {cycle}: destroy: {e}"));
        assert!(
            ctl.snapshot_collect().expect("collect").is_empty(),
            "cycle {cycle}: a snapshot survived destroy"
        );
    }
    say!("{CYCLES} take/verify/destroy cycles");
}

#[test]
fn attach_detach_rules() {
    let (ctl, disks) = setup();
    let storage = open_excl(&disks.storage);
    let dev = open_rw(&disks.data_a);

    assert!(matches!(ctl.cbt_info(&dev), Err(Error::NotAttached { .. })));
    assert!(matches!(ctl.detach(&dev), Err(Error::NotAttached { .. })));
    let snap = Snap::create(&ctl, &storage, size_of(&storage) / SECTOR);
    assert!(
        matches!(
            ctl.snapshot_add(snap.id, &dev),
            Err(Error::NotAttached { .. })
        ),
        "a device that is not attached was added to a snapshot"
    );
    drop(snap);

    ctl.attach(&dev).expect("attach");
    assert!(matches!(
        ctl.attach(&dev),
        Err(Error::AlreadyAttached { .. })
    ));
    // Another descriptor of the same device is the same device.
    let again = open_rw(&disks.data_a);
    assert!(matches!(
        ctl.attach(&again),
        Err(Error::AlreadyAttached { .. })
    ));
    ctl.cbt_info(&again)
        .expect("cbt_info through another descriptor");

    let (snap, _) = Snap::take(&ctl, &storage, size_of(&storage) / SECTOR, &[&dev]);
    assert!(
        matches!(ctl.detach(&dev), Err(Error::Busy { .. })),
        "detach of a device in a snapshot"
    );
    snap.destroy().expect("destroy");

    ctl.detach(&dev).expect("detach");
    assert!(matches!(ctl.cbt_info(&dev), Err(Error::NotAttached { .. })));
    assert!(matches!(ctl.detach(&dev), Err(Error::NotAttached { .. })));
    // And attach works again, with a fresh map.
    ctl.attach(&dev).expect("re-attach");
    assert_eq!(ctl.cbt_info(&dev).expect("cbt_info").changes_number, 0);
    ctl.detach(&dev).expect("detach");
}

#[test]
fn hot_removal_of_an_attached_device_in_a_snapshot() {
    let (ctl, _disks) = setup();
    let mut nullb = NullBlk::new("blksnap_test", 128 * MIB);
    let dev = open_direct(&nullb.dev);
    let region = 16 * MIB / BLOCK;
    write_range(&dev, 0, region, |_| 0);
    let fs = TmpMount::tmpfs(64 * MIB);
    let storage = tmpfile_in(&fs.path);
    ctl.attach(&dev).expect("attach null_blk");
    let (snap, images) = Snap::take(&ctl, &storage, 48 * MIB / SECTOR, &[&dev]);
    let image = open_direct_ro(&images[0]);
    write_range(&dev, 0, region / 2, |_| 1);
    verify_range(&image, 0, region, |_| 0).unwrap_or_else(|e| panic!("image before removal: {e}"));

    nullb.power_off();
    say!("null_blk removed while attached and in a snapshot");

    // The disk is gone: the image is corrupted (-ENODEV) and fails every
    // read, block 0 included, which was never written after the take; the
    // device is no longer attached, so neither its map nor its snapshot
    // state is served; and nothing may hang or crash.
    let mut buf = AlignedBuf::new(MIB as usize);
    let err = image
        .read_exact_at(buf.as_mut_slice(), 0)
        .expect_err("image of a removed device served a read");
    assert_eq!(
        err.raw_os_error(),
        Some(nix::libc::EIO),
        "image read after removal: {err}"
    );
    let info = ctl.cbt_info(&dev);
    assert!(
        matches!(info, Err(Error::NotAttached { .. })),
        "cbt_info after removal: {info:?}"
    );
    let info = ctl.snapshot_info(&dev);
    assert!(
        matches!(info, Err(Error::NotAttached { .. })),
        "snapshot_info after removal: {info:?}"
    );
    // The snapshot outlives its device until it is destroyed.
    assert_eq!(
        ctl.snapshot_collect().expect("collect"),
        vec![snap.id],
        "snapshots after removal"
    );
    drop(image);
    snap.destroy().expect("destroy after removal");
    assert!(ctl.snapshot_collect().expect("collect").is_empty());
    drop(dev);
    drop(nullb);

    // The module still works on a new device.
    let nullb = NullBlk::new("blksnap_test2", 64 * MIB);
    let dev = open_rw(&nullb.dev);
    ctl.attach(&dev).expect("attach after a removal");
    ctl.cbt_info(&dev).expect("cbt_info");
    ctl.detach(&dev).expect("detach");
}

/// The image's disk is added while the take still drains the device, so a
/// reader (udev's probe, a backup tool polling for the node) can open it
/// before the take ends. Its reads must wait for the take, then show the
/// data of the take, not the writes that follow it.
#[test]
fn image_opened_during_the_take_reads_the_data_of_the_take() {
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (ctl, disks) = setup();
    let storage = open_excl(&disks.storage);
    let dev = open_direct(&disks.data_a);
    let region = 16 * MIB / BLOCK;
    // No other image exists, so the snapshot's gets the lowest number.
    let path = std::path::PathBuf::from("/dev/blksnap-image0");
    let mut early = 0;
    for round in 1..=5u32 {
        write_range(&dev, 0, region, |_| round);
        let att = Attached::new(&ctl, &dev);
        let snap = Snap::create(&ctl, &storage, size_of(&storage) / SECTOR);
        ctl.snapshot_add(snap.id, &dev).expect("snapshot_add");
        let taken = AtomicBool::new(false);
        let (opened_early, read) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let image = loop {
                    match OpenOptions::new()
                        .read(true)
                        .custom_flags(nix::libc::O_DIRECT)
                        .open(&path)
                    {
                        Ok(f) => break f,
                        Err(_) => std::thread::yield_now(),
                    }
                };
                let early = !taken.load(Ordering::SeqCst);
                (early, verify_range(&image, 0, region, |_| round))
            });
            ctl.snapshot_take(snap.id).expect("snapshot_take");
            taken.store(true, Ordering::SeqCst);
            write_range(&dev, 0, region, |_| round + 100);
            reader.join().expect("reader thread panicked")
        });
        read.unwrap_or_else(|e| panic!("round {round}: image read: {e}"));
        early += u32::from(opened_early);
        snap.destroy().expect("destroy");
        drop(att);
    }
    say!("image opened before the take returned in {early} of 5 rounds; all read the data of the take");
}

/// Collect lists every snapshot, however many: past the 4096 ids that
/// one answer of the module used to hold, its -ENODATA asked for a room
/// that it then never filled. The snapshots are only created (one small
/// file storage shared by all), which costs no take.
#[test]
fn collect_lists_more_than_4096_snapshots() {
    const COUNT: usize = 4097 + 3;
    let ctl = control();
    // A storage each (a page of tmpfs at least): the module refuses one
    // that a live snapshot uses.
    let fs = TmpMount::tmpfs(64 * MIB);
    // The module keeps its own reference, so the descriptor can go.
    let snaps: Vec<Snap> = (0..COUNT)
        .map(|_| Snap::create(&ctl, &tmpfile_in(&fs.path), 8))
        .collect();
    let mut listed = ctl
        .snapshot_collect()
        .unwrap_or_else(|e| panic!("collect of {COUNT} snapshots: {e}"));
    let mut created: Vec<_> = snaps.iter().map(|s| s.id).collect();
    listed.sort_unstable();
    created.sort_unstable();
    assert_eq!(listed.len(), COUNT, "ids collected");
    assert!(listed == created, "collect listed other ids than created");
    for s in snaps {
        s.destroy().expect("destroy");
    }
    assert!(ctl.snapshot_collect().expect("collect").is_empty());
    say!("collected {COUNT} snapshots");
}

/// A take waits for the writes in flight to its own devices, never for
/// those of another one. Device B, attached but in no snapshot, completes
/// each write after `STALL` and has one tag: of two writers, one waits for
/// the device and the other for the tag, inside the submission. The take
/// of A must not wait for either. Before the fix every write held one
/// module-wide SRCU across its submission and the take waited for all of
/// them (for the second writer: until the first completed).
#[test]
fn take_does_not_wait_for_writes_stuck_on_another_device() {
    use std::time::{Duration, Instant};
    const STALL: Duration = Duration::from_secs(16);

    let (ctl, disks) = setup();
    let slow = slow_null_blk("blksnap_slow", STALL);
    let b = open_direct(&slow.dev);
    let _att_b = Attached::new(&ctl, &b);
    let a = open_direct(&disks.data_a);
    let _att_a = Attached::new(&ctl, &a);
    let storage = open_excl(&disks.storage);
    let snap = Snap::create(&ctl, &storage, size_of(&storage) / SECTOR);
    ctl.snapshot_add(snap.id, &a).expect("snapshot_add");

    let took = std::thread::scope(|s| {
        let started = Instant::now();
        for i in 0..2 {
            let b = &b;
            s.spawn(move || write_blocks(b, i, 1, |_| 1));
        }
        // Both writers are in: one on the device, one waiting for its tag.
        std::thread::sleep(Duration::from_secs(1));
        let t = Instant::now();
        assert!(
            t - started < STALL,
            "the writes to B were not stuck any more"
        );
        ctl.snapshot_take(snap.id).expect("snapshot_take");
        t.elapsed()
    });
    assert!(
        took < STALL / 2,
        "take of A took {took:?} while writes to B were stuck for {STALL:?}"
    );
    verify_range(&b, 0, 2, |_| 1).unwrap_or_else(|e| panic!("B: {e}"));
    snap.destroy().expect("destroy");
    say!("take of A took {took:?} with writes to B stuck for {STALL:?}");
}

/// A partition held by a tracker cannot be deleted (BLKPG refuses an open
/// partition), and a partition of a removed disk cannot be attached: the
/// attach must see the disk's removal, whether it ended (this test) or
/// runs alongside. Before the fix the attach succeeded on the dead disk's
/// partition and left a tracker that nothing would ever remove.
#[test]
fn partitions_of_a_removed_disk_are_not_attached() {
    let ctl = control();
    let mut nullb = NullBlk::new("blksnap_part", 64 * MIB);
    let disk = nullb.dev.to_str().expect("UTF-8 path").to_owned();
    let mut sfdisk = Command::new("sfdisk")
        .args(["-q", &disk])
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk");
    sfdisk
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"label: dos\nstart=1MiB, size=32MiB, type=83\n")
        .expect("partition table");
    assert!(sfdisk.wait().expect("sfdisk").success(), "sfdisk failed");
    let part_path = PathBuf::from(format!("{disk}1"));
    wait_for_path(&part_path);
    let part = open_rw(&part_path);

    ctl.attach(&part).expect("attach the partition");
    let del = Command::new("partx")
        .args(["-d", "--nr", "1", &disk])
        .status()
        .expect("partx");
    assert!(!del.success(), "an attached partition was deleted");
    ctl.cbt_info(&part)
        .expect("cbt_info after a refused delete");
    ctl.detach(&part).expect("detach");

    nullb.power_off();
    let attach = ctl.attach(&part);
    let left = ctl.detach(&part);
    assert!(
        attach.is_err(),
        "attach to a partition of a removed disk succeeded"
    );
    assert!(
        matches!(left, Err(Error::NotAttached { .. })),
        "left attached: {left:?}"
    );
}

/// A slow null_blk: one tag, every request completed after `stall`, no
/// scheduler and no request timeout before the completion comes.
fn slow_null_blk(name: &str, stall: std::time::Duration) -> NullBlk {
    let nanos = stall.as_nanos().to_string();
    let slow = NullBlk::with(
        name,
        64 * MIB,
        &[
            ("irqmode", "2"),
            ("completion_nsec", &nanos),
            ("submit_queues", "1"),
            ("hw_queue_depth", "1"),
        ],
    );
    let dev = slow.dev.file_name().expect("name").to_string_lossy();
    for (attr, value) in [("scheduler", "none"), ("io_timeout", "600000")] {
        let path = format!("/sys/block/{dev}/queue/{attr}");
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    slow
}

/// The removal of a disk waits for its own trackers only, never for a
/// control operation. A take of A drains a write that A (a slow null_blk)
/// completes after `STALL`; meanwhile C, another attached disk, is
/// removed, and its removal must return while the take still drains.
/// Before the fix the removal took the module-wide control mutex, which
/// the take holds throughout, and returned only after the take.
#[test]
fn removal_of_a_disk_does_not_wait_for_a_take_of_another() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    // Short: every read of the partition scan at creation waits as long.
    const STALL: Duration = Duration::from_secs(8);

    let (ctl, _disks) = setup();
    let slow = slow_null_blk("blksnap_slow", STALL);
    let a = open_direct(&slow.dev);
    let _att_a = Attached::new(&ctl, &a);
    let mut other = NullBlk::new("blksnap_other", 64 * MIB);
    let c = open_direct(&other.dev);
    ctl.attach(&c).expect("attach C");
    let fs = TmpMount::tmpfs(64 * MIB);
    let storage = tmpfile_in(&fs.path);
    let snap = Snap::create(&ctl, &storage, 48 * MIB / SECTOR);
    ctl.snapshot_add(snap.id, &a).expect("snapshot_add");

    let taken = AtomicBool::new(false);
    let removed_during_take = std::thread::scope(|s| {
        s.spawn(|| write_blocks(&a, 0, 1, |_| 1));
        // The write is on A, holding its only tag until STALL is over.
        std::thread::sleep(Duration::from_secs(1));
        let take = s.spawn(|| {
            let r = ctl.snapshot_take(snap.id);
            taken.store(true, Ordering::SeqCst);
            r
        });
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            !taken.load(Ordering::SeqCst),
            "the take did not wait for the write in flight on A"
        );
        other.power_off();
        let during = !taken.load(Ordering::SeqCst);
        take.join()
            .expect("take thread panicked")
            .expect("snapshot_take");
        during
    });
    assert!(
        removed_during_take,
        "the removal of C waited for the take of A"
    );
    let left = ctl.cbt_info(&c);
    assert!(
        matches!(left, Err(Error::NotAttached { .. })),
        "C after its removal: {left:?}"
    );
    verify_range(&a, 0, 1, |_| 1).unwrap_or_else(|e| panic!("A: {e}"));
    snap.destroy().expect("destroy");
    say!("C removed while the take of A drained a write stuck for {STALL:?}");
}
