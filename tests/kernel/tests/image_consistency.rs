//! The image reads back exactly the device's content at take while
//! concurrent random writes hit the device, for one device and for two
//! devices in one snapshot, with the difference storage on a block device
//! and in an O_TMPFILE file (what the node plugin uses); the device reads
//! back exactly what was written.

#[macro_use]
mod common;

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use common::*;

/// Writer threads per device: the VM has 2 CPUs, and COW waits leave room
/// for more writers than CPUs.
const WRITERS: u32 = 2;

/// Where the old data goes.
#[derive(Clone, Copy)]
enum Storage {
    /// The storage disk itself, opened exclusively.
    Disk,
    /// An O_TMPFILE file in an ext4 made on the storage disk.
    File,
}

fn stress(devs: &[&Path], region_per_dev: u64, kind: Storage) {
    let (ctl, disks) = setup();
    let total = stress_bytes();
    let (_fs, storage, limit) = match kind {
        Storage::Disk => {
            let storage = open_excl(&disks.storage);
            let limit = size_of(&storage) / SECTOR;
            (None, storage, limit)
        }
        Storage::File => {
            let fs = TmpMount::ext4(&disks.storage);
            let storage = tmpfile_in(&fs.path);
            // What the file system can hold, less a margin for its metadata.
            let limit = size_of(&open_rw(&disks.storage)) / SECTOR * 9 / 10;
            (Some(fs), storage, limit)
        }
    };

    let files: Vec<File> = devs.iter().map(|p| open_direct(p)).collect();
    let blocks: Vec<u64> = files
        .iter()
        .map(|f| {
            let size = size_of(f).min(region_per_dev);
            assert!(size >= 64 * MIB, "data disk smaller than 64 MiB");
            size / BLOCK / STRIPE_BLOCKS * STRIPE_BLOCKS
        })
        .collect();
    // Copy-on-write of every chunk of every region must fit the storage.
    let needed: u64 = blocks.iter().map(|b| b * BLOCK).sum();
    assert!(
        limit * SECTOR >= needed,
        "storage disk {} ({} MiB) cannot hold {} MiB of copies",
        disks.storage.display(),
        limit * SECTOR / MIB,
        needed / MIB
    );

    let t = Instant::now();
    progress(format_args!(
        "filling {} device(s) before take",
        files.len()
    ));
    for (f, &b) in files.iter().zip(&blocks) {
        write_range(f, 0, b, |_| 0);
    }
    say!(
        "filled {} MiB before take in {:.1?}",
        blocks.iter().sum::<u64>() * BLOCK / MIB,
        t.elapsed()
    );

    let _attached: Vec<Attached> = files.iter().map(|f| Attached::new(&ctl, f)).collect();
    let refs: Vec<&File> = files.iter().collect();
    let (snap, image_paths) = Snap::take(&ctl, &storage, limit, &refs);
    let images: Vec<File> = image_paths.iter().map(|p| open_direct_ro(p)).collect();
    for (img, f) in images.iter().zip(&files) {
        assert_eq!(size_of(img), size_of(f), "image and device sizes differ");
    }

    let records: Vec<Record> = blocks.iter().map(|&b| Record::new(b)).collect();
    let per_dev = total / devs.len() as u64;
    progress(format_args!("taken; writing {} MiB at random", total / MIB));
    let t = Instant::now();
    let results: Vec<(u64, Result<u64, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..devs.len())
            .map(|i| {
                let (dev, img, rec, nblocks) = (&files[i], &images[i], &records[i], blocks[i]);
                s.spawn(move || {
                    let stop = AtomicBool::new(false);
                    std::thread::scope(|s2| {
                        let reader =
                            s2.spawn(|| random_verify(img, nblocks, &stop, 77 + i as u64, |_| 0));
                        let written = random_writes(dev, rec, WRITERS, per_dev, 1000 + i as u64);
                        stop.store(true, Ordering::Relaxed);
                        let verified = reader.join().expect("reader thread panicked");
                        (written, verified)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("device thread panicked"))
            .collect()
    });
    let elapsed = t.elapsed();
    let mut written = 0;
    let mut verified_during = 0;
    for (i, (w, v)) in results.into_iter().enumerate() {
        written += w;
        match v {
            Ok(v) => verified_during += v,
            Err(e) => panic!(
                "image of {} changed under concurrent writes: {e}",
                devs[i].display()
            ),
        }
    }
    say!(
        "wrote {} MiB at random in {:.1?} ({} writer threads) while verifying {} MiB of image",
        written / MIB,
        elapsed,
        WRITERS as usize * devs.len(),
        verified_during / MIB
    );
    assert!(written >= total, "wrote less than asked");
    assert!(
        verified_during > 0,
        "the concurrent reader verified nothing"
    );

    progress(format_args!("final verify"));
    let mut verified_after = 0;
    for i in 0..devs.len() {
        let info = ctl.snapshot_info(&files[i]).expect("snapshot_info");
        assert_eq!(
            info.error,
            None,
            "snapshot of {} corrupted",
            devs[i].display()
        );
        verified_after += verify_range(&images[i], 0, blocks[i], |_| 0)
            .unwrap_or_else(|e| panic!("image of {}: {e}", devs[i].display()));
        let rec = &records[i];
        verified_after += verify_range(&files[i], 0, blocks[i], |b| rec.get(b))
            .unwrap_or_else(|e| panic!("device {}: {e}", devs[i].display()));
    }
    say!(
        "final verify: {} MiB of images and devices",
        verified_after / MIB
    );
    drop(images);
    snap.destroy().expect("destroy");
}

#[test]
fn one_device_image_holds_content_at_take_under_random_writes() {
    let disks = disks();
    stress(&[&disks.data_a], GIB, Storage::Disk);
}

#[test]
fn image_in_file_storage_holds_content_at_take_under_random_writes() {
    let disks = disks();
    // Half the disk: the copies must fit the file system on the storage disk.
    stress(&[&disks.data_a], GIB / 2, Storage::File);
}

#[test]
fn two_devices_in_one_snapshot_hold_content_at_take_under_random_writes() {
    let disks = disks();
    // Half of each disk, so that copies of both fit the 1.5 GiB storage.
    stress(&[&disks.data_a, &disks.data_b], GIB / 2, Storage::Disk);
}
