//! A difference storage that is too small corrupts the snapshot, never the
//! device: snapshotinfo and wait_event report it, the image fails reads,
//! and the device holds every write.

#[macro_use]
mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use blksnap::Event;
use common::*;
use nix::errno::Errno;

#[test]
fn overflow_corrupts_the_snapshot_and_not_the_device() {
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    let (major, minor) = dev_numbers(&dev);
    let region = 64 * MIB / BLOCK;
    write_range(&dev, 0, region, |_| 0);

    let fs = TmpMount::tmpfs(32 * MIB);
    let storage = tmpfile_in(&fs.path);
    let limit = 4 * MIB / SECTOR;
    let _att = Attached::new(&ctl, &dev);
    let (snap, images) = Snap::take(&ctl, &storage, limit, &[&dev]);

    // 16 times the limit of first writes: the storage must overflow, and
    // every write must still succeed.
    write_range(&dev, 0, region, |_| 1);
    let info = ctl.snapshot_info(&dev).expect("snapshot_info");
    assert_eq!(
        info.error,
        Some(Errno::ENOSPC),
        "snapshotinfo after overflow"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no corrupted event within 30 s");
        match ctl.wait_event(snap.id, left).expect("wait_event") {
            Some(Event::LowSpace { .. }) => continue,
            Some(e) => break e,
            None => panic!("wait_event timed out without a corrupted event"),
        }
    };
    assert_eq!(
        event,
        Event::Corrupted {
            major,
            minor,
            errno: Errno::ENOSPC
        }
    );

    let image = open_direct_ro(&images[0]);
    let mut buf = AlignedBuf::new(MIB as usize);
    let err = image
        .read_exact_at(buf.as_mut_slice(), 0)
        .expect_err("a corrupted image must not be readable");
    assert_eq!(
        err.raw_os_error(),
        Some(nix::libc::EIO),
        "image read: {err}"
    );

    verify_range(&dev, 0, region, |_| 1).unwrap_or_else(|e| panic!("device after overflow: {e}"));
    // Still writable while the corrupted snapshot exists.
    write_range(&dev, 0, region / 2, |_| 2);
    verify_range(&dev, 0, region, |b| if b < region / 2 { 2 } else { 1 })
        .unwrap_or_else(|e| panic!("device after rewrite: {e}"));
    drop(image);
    snap.destroy().expect("destroy a corrupted snapshot");
    write_range(&dev, region / 2, region, |_| 3);
    verify_range(&dev, 0, region, |b| if b < region / 2 { 2 } else { 3 })
        .unwrap_or_else(|e| panic!("device after destroy: {e}"));
    say!(
        "overflowed a {} MiB storage; device verified",
        limit * SECTOR / MIB
    );
}
