//! Difference storage kinds: an O_TMPFILE file (on ext4 and on tmpfs), a
//! regular named file, a block device; growth of a file storage while the
//! snapshot is held; a device cannot be snapshotted into storage on itself.

#[macro_use]
mod common;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;

use blksnap::Control;
use common::*;

/// Takes a snapshot of 64 MiB of data disk A into `storage`, overwrites
/// half of it and checks image and device.
fn snapshot_into(ctl: &Control, disks: &Disks, storage: &File, limit_sectors: u64, what: &str) {
    let dev = open_direct(&disks.data_a);
    let region = 64 * MIB / BLOCK;
    write_range(&dev, 0, region, |_| 0);
    let _att = Attached::new(ctl, &dev);
    let (snap, images) = Snap::take(ctl, storage, limit_sectors, &[&dev]);
    // Every other MiB.
    let mib = MIB / BLOCK;
    let new = |b: u64| u32::from((b / mib) % 2 == 0);
    for m in (0..region).step_by(2 * mib as usize) {
        write_range(&dev, m, m + mib, |_| 1);
    }
    let image = open_direct_ro(&images[0]);
    verify_range(&image, 0, region, |_| 0).unwrap_or_else(|e| panic!("{what}: image: {e}"));
    verify_range(&dev, 0, region, new).unwrap_or_else(|e| panic!("{what}: device: {e}"));
    assert_eq!(ctl.snapshot_info(&dev).expect("info").error, None, "{what}");
    drop(image);
    snap.destroy().expect("destroy");
    say!("{what}: image and device verified");
}

#[test]
fn storage_as_tmpfile_on_ext4() {
    let (ctl, disks) = setup();
    let fs = TmpMount::ext4(&disks.storage);
    let storage = tmpfile_in(&fs.path);
    snapshot_into(
        &ctl,
        &disks,
        &storage,
        256 * MIB / SECTOR,
        "O_TMPFILE on ext4",
    );
}

#[test]
fn storage_as_tmpfile_on_tmpfs() {
    let (ctl, disks) = setup();
    let fs = TmpMount::tmpfs(128 * MIB);
    let storage = tmpfile_in(&fs.path);
    snapshot_into(
        &ctl,
        &disks,
        &storage,
        96 * MIB / SECTOR,
        "O_TMPFILE on tmpfs",
    );
}

#[test]
fn storage_as_named_regular_file() {
    let (ctl, disks) = setup();
    let fs = TmpMount::ext4(&disks.storage);
    let path = fs.path.join("diff-storage");
    let storage = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create storage file");
    snapshot_into(&ctl, &disks, &storage, 256 * MIB / SECTOR, "named file");
    drop(storage);
    std::fs::remove_file(&path).expect("remove storage file");
}

#[test]
fn storage_as_block_device() {
    let (ctl, disks) = setup();
    let storage = open_excl(&disks.storage);
    let limit = size_of(&storage) / SECTOR;
    snapshot_into(&ctl, &disks, &storage, limit, "block device");
}

#[test]
fn storage_that_is_not_a_file_or_disk_is_refused() {
    let (ctl, _disks) = setup();
    let (r, _w) = nix::unistd::pipe().expect("pipe");
    assert!(
        ctl.snapshot_create(&r, 1 << 20).is_err(),
        "a pipe was accepted as storage"
    );
    let dir = File::open("/").expect("open /");
    assert!(
        ctl.snapshot_create(&dir, 1 << 20).is_err(),
        "a directory was accepted as storage"
    );
}

#[test]
fn file_storage_grows_while_the_snapshot_is_held() {
    // A small growth step, so that growth comes after little copying.
    const MINIMUM: u64 = 32 * MIB / SECTOR;
    let current: u64 = module_param("diff_storage_minimum")
        .expect("blksnap has no diff_storage_minimum parameter")
        .parse()
        .expect("diff_storage_minimum is a number");
    let _restore = (current > MINIMUM)
        .then(|| reload_module_with(&[&format!("diff_storage_minimum={MINIMUM}")]));
    let minimum: u64 = module_param("diff_storage_minimum")
        .and_then(|v| v.parse().ok())
        .expect("diff_storage_minimum after reload");
    assert!(
        minimum <= MINIMUM,
        "module kept diff_storage_minimum={minimum}"
    );

    let (ctl, disks) = setup();
    let fs = TmpMount::ext4(&disks.storage);
    let storage = tmpfile_in(&fs.path);
    let limit = 1024 * MIB / SECTOR;
    let dev = open_direct(&disks.data_a);
    // Four growth steps' worth of copies.
    let region = 8 * minimum * SECTOR / BLOCK;
    write_range(&dev, 0, region, |_| 0);
    let _att = Attached::new(&ctl, &dev);
    let (snap, images) = Snap::take(&ctl, &storage, limit, &[&dev]);
    let held = storage.metadata().expect("fstat").blocks() * 512;
    write_range(&dev, 0, region, |_| 1);
    let grown = storage.metadata().expect("fstat").blocks() * 512;
    say!(
        "storage allocated {} MiB at take, {} MiB after {} MiB of copies (step {} MiB, limit {} MiB)",
        held / MIB,
        grown / MIB,
        region * BLOCK / MIB,
        minimum * SECTOR / MIB,
        limit * SECTOR / MIB
    );
    assert!(held < region * BLOCK, "storage was not small at take");
    assert!(grown > held, "storage did not grow");
    assert!(
        grown >= region * BLOCK,
        "storage smaller than the data copied into it"
    );
    assert_eq!(ctl.snapshot_info(&dev).expect("info").error, None);
    let image = open_direct_ro(&images[0]);
    verify_range(&image, 0, region, |_| 0).unwrap_or_else(|e| panic!("image: {e}"));
    verify_range(&dev, 0, region, |_| 1).unwrap_or_else(|e| panic!("device: {e}"));
    drop(image);
    snap.destroy().expect("destroy");
    drop(_att);
    drop(ctl);
}

#[test]
fn device_holding_the_storage_is_refused_as_source() {
    let (ctl, disks) = setup();
    let other = open_direct(&disks.data_a);
    let _att_other = Attached::new(&ctl, &other);

    // Storage file on a file system on the spare disk.
    {
        let fs = TmpMount::ext4(&disks.spare);
        let storage = tmpfile_in(&fs.path);
        let spare = open_rw(&disks.spare);
        let _att = Attached::new(&ctl, &spare);
        let snap = Snap::create(&ctl, &storage, 64 * MIB / SECTOR);
        let refused =
            ctl.snapshot_add(snap.id, &spare).is_err() || ctl.snapshot_take(snap.id).is_err();
        assert!(
            refused,
            "a device was snapshotted into a storage file on itself"
        );
        drop(snap);
        // The same storage serves another device.
        let (snap, _) = Snap::take(&ctl, &storage, 64 * MIB / SECTOR, &[&other]);
        snap.destroy().expect("destroy");
    }

    // The spare disk itself as block device storage.
    let storage = open_excl(&disks.spare);
    let spare = open_rw(&disks.spare);
    let _att = Attached::new(&ctl, &spare);
    let snap = Snap::create(&ctl, &storage, size_of(&storage) / SECTOR);
    let refused = ctl.snapshot_add(snap.id, &spare).is_err() || ctl.snapshot_take(snap.id).is_err();
    assert!(refused, "a device was snapshotted into itself as storage");
    drop(snap);
    let (snap, _) = Snap::take(&ctl, &storage, size_of(&storage) / SECTOR, &[&other]);
    snap.destroy().expect("destroy");
}

/// A take is refused while a held snapshot of one of its devices keeps its
/// storage on another device of the take: the take freezes that device
/// while copies for the held snapshot go there.
#[test]
fn take_is_refused_while_a_held_snapshot_keeps_its_storage_on_a_device_of_it() {
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    let spare = open_rw(&disks.spare);
    let spare_fs = TmpMount::ext4(&disks.spare);
    let on_spare = tmpfile_in(&spare_fs.path);
    let fs = TmpMount::ext4(&disks.storage);
    let elsewhere = tmpfile_in(&fs.path);
    let limit = 64 * MIB / SECTOR;
    let _att = Attached::new(&ctl, &dev);
    let _att_spare = Attached::new(&ctl, &spare);
    let (a, _) = Snap::take(&ctl, &on_spare, limit, &[&dev]);
    let b = Snap::create(&ctl, &elsewhere, limit);
    ctl.snapshot_add(b.id, &dev).expect("add data disk");
    ctl.snapshot_add(b.id, &spare).expect("add spare disk");
    match ctl.snapshot_take(b.id) {
        Err(e) if e.errno() == Some(nix::errno::Errno::EBUSY) => {}
        other => panic!("a take froze the disk holding A's storage: {other:?}"),
    }
    drop(b);
    // Without the spare disk the take works beside A.
    let (c, _) = Snap::take(&ctl, &elsewhere, limit, &[&dev]);
    c.destroy().expect("destroy C");
    a.destroy().expect("destroy A");
    // Once A is gone, so is the refusal.
    let (d, _) = Snap::take(&ctl, &elsewhere, limit, &[&dev, &spare]);
    d.destroy().expect("destroy D");
    say!("group take refused while A's storage was on one of its disks");
}
