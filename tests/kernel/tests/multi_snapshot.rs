//! Several snapshots of one device at once (UAPI 1.1): taken at different
//! moments while random writes race with them, each image holds exactly
//! the device's content at its take, whatever the order of destroys;
//! writes to one image stay invisible to the others, and read back when
//! the other snapshot sharing their copies is destroyed meanwhile;
//! difference storage is used once per copy and given back; an overflow
//! corrupts only the snapshots it could not serve; the change map stays
//! exact between any two of them.

#[macro_use]
mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use blksnap::{Control, SnapshotId};
use common::*;
use nix::errno::Errno;

const WRITERS: u32 = 2;
/// The tested region of data disk A: 256 chunks of 256 KiB.
const REGION: u64 = 64 * MIB / BLOCK;
/// The region of the takes under racing writes: 64 chunks, so that every
/// image is read whole after every take and destroy.
const RACE_REGION: u64 = 16 * MIB / BLOCK;

/// One held snapshot of disk A and what its image must hold.
struct Held<'a> {
    snap: Snap<'a>,
    image: File,
    path: PathBuf,
    expect: Vec<u32>,
}

fn snapshot_of(record: &Record) -> Vec<u32> {
    (0..record.blocks()).map(|b| record.get(b)).collect()
}

/// Write numbers of one call of [`random_writes_after`] stay under this
/// many above its base: each call of a test gets its own range, so that a
/// block's numbers only grow.
const CALL_SEQS: u32 = 1 << 20;

/// Takes a snapshot of `dev` while `WRITERS` threads write at random, and
/// pins down what its image holds: every block as it was when the take
/// began or as a write in flight during it left it (a block's write
/// numbers only grow), and the same on every later read.
fn take_racing<'a>(
    ctl: &'a Control,
    dev: &File,
    storage: &File,
    limit: u64,
    record: &Record,
    call: u32,
) -> Held<'a> {
    let (snap, path, before, after) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            random_writes_after(
                dev,
                record,
                WRITERS,
                8 * MIB,
                u64::from(call),
                call * CALL_SEQS,
            )
        });
        // Let the writers get going, so that the take meets writes.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let before = snapshot_of(record);
        let snap = Snap::create(ctl, storage, limit);
        ctl.snapshot_add(snap.id, dev).expect("snapshot_add");
        ctl.snapshot_take(snap.id).expect("snapshot_take");
        // Read once no write is in flight: one that reached the device
        // before the take may complete after it returned.
        writer.join().expect("writer thread panicked");
        let after = snapshot_of(record);
        let info = ctl
            .snapshot_info_of(snap.id, dev)
            .expect("snapshot_info_of");
        assert_eq!(info.info.error, None, "fresh snapshot reports an error");
        let path = info.info.image_path().expect("taken snapshot has an image");
        wait_for_path(&path);
        (snap, path, before, after)
    });
    let image = open_direct_ro(&path);
    let expect = read_seqs(&image, record.blocks()).unwrap_or_else(|e| panic!("new image: {e}"));
    for b in 0..record.blocks() as usize {
        assert!(
            expect[b] >= before[b] && expect[b] <= after[b],
            "image block {b} holds write {}, not one between {} (take began) and {} (take ended)",
            expect[b],
            before[b],
            after[b]
        );
    }
    Held {
        snap,
        image,
        path,
        expect,
    }
}

fn verify_held(held: &[Held], what: &str) {
    for (i, h) in held.iter().enumerate() {
        verify_range(&h.image, 0, h.expect.len() as u64, |b| h.expect[b as usize])
            .unwrap_or_else(|e| panic!("{what}: image {i} ({}): {e}", h.path.display()));
    }
}

/// `k` snapshots taken one after another under racing writes, verified
/// (concurrently with more writes) after every take, then destroyed in a
/// random order with the others verified after each destroy.
fn several(k: usize, seed: u64) {
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    write_range(&dev, 0, RACE_REGION, |_| 0);
    let fs = TmpMount::ext4(&disks.storage);
    // A file storage grows by diff_storage_minimum at a time, up to its
    // limit: the limits share what the file system holds.
    let limit = size_of(&open_rw(&disks.storage)) / SECTOR * 8 / 10 / k as u64;
    let storages: Vec<File> = (0..k).map(|_| tmpfile_in(&fs.path)).collect();
    let _att = Attached::new(&ctl, &dev);
    let record = Record::new(RACE_REGION);

    let mut held: Vec<Held> = Vec::new();
    let mut call = (seed as u32 & 0xf) * 64;
    let mut next_call = || {
        call += 1;
        call
    };
    for storage in &storages {
        held.push(take_racing(
            &ctl,
            &dev,
            storage,
            limit,
            &record,
            next_call(),
        ));
        // Writes and image reads of every held snapshot race.
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let readers: Vec<_> = held
                .iter()
                .enumerate()
                .map(|(j, h)| {
                    let stop = &stop;
                    s.spawn(move || {
                        random_verify(&h.image, RACE_REGION, stop, seed ^ j as u64, |b| {
                            h.expect[b as usize]
                        })
                    })
                })
                .collect();
            let c = next_call();
            random_writes_after(&dev, &record, WRITERS, 4 * MIB, u64::from(c), c * CALL_SEQS);
            stop.store(true, Ordering::Relaxed);
            for (j, r) in readers.into_iter().enumerate() {
                r.join()
                    .expect("reader panicked")
                    .unwrap_or_else(|e| panic!("image {j} changed under writes: {e}"));
            }
        });
    }
    verify_held(&held, &format!("{k} held"));
    verify_range(&dev, 0, RACE_REGION, |b| record.get(b)).unwrap_or_else(|e| panic!("device: {e}"));
    say!("{k} snapshots taken under racing writes, all exact");

    let mut rng = Rng::new(seed);
    let mut order = Vec::new();
    while !held.is_empty() {
        let i = rng.below(held.len() as u64) as usize;
        order.push(i);
        let h = held.remove(i);
        drop(h.image);
        h.snap.destroy().expect("destroy");
        let c = next_call();
        random_writes_after(&dev, &record, WRITERS, MIB, u64::from(c), c * CALL_SEQS);
        verify_held(&held, "after a destroy");
    }
    verify_range(&dev, 0, RACE_REGION, |b| record.get(b)).unwrap_or_else(|e| panic!("device: {e}"));
    say!("destroyed in the order {order:?}, the others exact after each");
}

#[test]
fn held_one_snapshot_taken_under_racing_writes_holds_content_at_take() {
    several(1, 0x51);
}

#[test]
fn held_two_snapshots_taken_under_racing_writes_hold_content_at_take() {
    several(2, 0x52);
}

#[test]
fn held_eight_snapshots_taken_under_racing_writes_hold_content_at_take() {
    several(8, 0x58);
}

#[test]
fn held_the_limit_of_snapshots_holds_content_at_take_and_one_more_is_refused() {
    let limit: usize = module_param("snapshots_per_device_maximum")
        .expect("snapshots_per_device_maximum parameter")
        .parse()
        .expect("a number");
    assert!(limit >= 16, "default limit {limit} under 16");
    several(limit, 0x5f);

    let (ctl, disks) = setup();
    let dev = open_rw(&disks.data_a);
    let fs = TmpMount::tmpfs(64 * MIB);
    let _att = Attached::new(&ctl, &dev);
    let storages: Vec<File> = (0..=limit).map(|_| tmpfile_in(&fs.path)).collect();
    let snaps: Vec<Snap> = storages[..limit]
        .iter()
        .map(|s| Snap::create(&ctl, s, MIB / SECTOR))
        .collect();
    for s in &snaps {
        ctl.snapshot_add(s.id, &dev).expect("add up to the limit");
    }
    let extra = Snap::create(&ctl, &storages[limit], MIB / SECTOR);
    match ctl.snapshot_add(extra.id, &dev) {
        Err(e) if e.errno() == Some(Errno::EBUSY) => {}
        other => panic!("a device joined {} snapshots: {other:?}", limit + 1),
    }
    say!("a device joins {limit} snapshots, not {}", limit + 1);
}

/// Writes through one image land in that image only.
#[test]
fn held_image_writes_to_one_snapshot_are_invisible_to_the_others() {
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    write_range(&dev, 0, REGION, |_| 0);
    // Each storage grows to its limit at once.
    let fs = TmpMount::tmpfs(256 * MIB);
    let storages: Vec<File> = (0..3).map(|_| tmpfile_in(&fs.path)).collect();
    let limit = 80 * MIB / SECTOR;
    let _att = Attached::new(&ctl, &dev);

    // A: all zeros. B: first half rewritten. C: taken right after B.
    let (a, pa) = Snap::take(&ctl, &storages[0], limit, &[&dev]);
    write_range(&dev, 0, REGION / 2, |_| 1);
    let (b, pb) = Snap::take(&ctl, &storages[1], limit, &[&dev]);
    let (c, pc) = Snap::take(&ctl, &storages[2], limit, &[&dev]);
    // Chunks never written since A are read from the device by all three;
    // the quarter written here is shared by A, B and C's copies.
    write_range(&dev, REGION / 2, REGION * 3 / 4, |_| 2);

    let ia = open_direct(&pa[0]);
    let ib = open_direct(&pb[0]);
    let ic = open_direct(&pc[0]);
    // B's image gets writes over all four quarters: into copies shared
    // with A and C, and into chunks still on the device.
    write_range(&ib, 0, REGION, |_| 7);
    let a_expect = |_| 0;
    let c_expect = |blk| if blk < REGION / 2 { 1 } else { 0 };
    verify_range(&ia, 0, REGION, a_expect).unwrap_or_else(|e| panic!("A after B's writes: {e}"));
    verify_range(&ic, 0, REGION, c_expect).unwrap_or_else(|e| panic!("C after B's writes: {e}"));
    verify_range(&ib, 0, REGION, |_| 7).unwrap_or_else(|e| panic!("B's own writes: {e}"));
    // The device goes on; B keeps its writes, A and C their content.
    write_range(&dev, 0, REGION, |_| 3);
    verify_range(&ia, 0, REGION, a_expect).unwrap_or_else(|e| panic!("A: {e}"));
    verify_range(&ib, 0, REGION, |_| 7).unwrap_or_else(|e| panic!("B: {e}"));
    verify_range(&ic, 0, REGION, c_expect).unwrap_or_else(|e| panic!("C: {e}"));
    // And the other way: A's writes stay out of B and C.
    write_range(&ia, 0, REGION / 4, |_| 9);
    verify_range(&ib, 0, REGION, |_| 7).unwrap_or_else(|e| panic!("B after A's: {e}"));
    verify_range(&ic, 0, REGION, c_expect).unwrap_or_else(|e| panic!("C after A's: {e}"));
    verify_range(&ia, 0, REGION, |blk| if blk < REGION / 4 { 9 } else { 0 })
        .unwrap_or_else(|e| panic!("A's own writes: {e}"));
    verify_range(&dev, 0, REGION, |_| 3).unwrap_or_else(|e| panic!("device: {e}"));
    drop((ia, ib, ic));
    b.destroy().expect("destroy B");
    a.destroy().expect("destroy A");
    c.destroy().expect("destroy C");
    say!("image writes to A and B seen by that image only");
}

/// Image writes of a snapshot race with destroys of the only other one
/// that shares their copies. While the image's worker makes the writer's
/// private copy of a chunk from the shared one, the other snapshot goes
/// and the shared copy becomes the writer's alone: a write to that chunk
/// sent on at once would land in the shared copy and be hidden by the
/// private one, made from the old data. Every image write must read back.
#[test]
fn held_image_writes_racing_destroys_of_the_sharing_snapshot_all_read_back() {
    const ROUNDS: u32 = 12;
    const THREADS: u64 = 4;
    /// Blocks each thread writes per chunk, one at a time.
    const PER_THREAD: u64 = 4;
    let chunk_blocks = 256 * KIB / BLOCK;
    let chunks = RACE_REGION / chunk_blocks;
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    // Block device storages: image I/O to a stored copy is sent on from
    // the submitter's context only there (a file storage's always goes
    // through the worker, in order).
    let nulls: Vec<NullBlk> = (0..2)
        .map(|i| NullBlk::new(&format!("krace{i}"), 64 * MIB))
        .collect();
    let _att = Attached::new(&ctl, &dev);
    let mut rng = Rng::new(0x6b32);
    let mut mid_writes = 0;
    for round in 0..ROUNDS {
        let (at_take, after_take, image_seq) = (10 * round + 1, 10 * round + 2, 10 * round + 5);
        write_range(&dev, 0, RACE_REGION, |_| at_take);
        let storages: Vec<File> = nulls.iter().map(|n| open_excl(&n.dev)).collect();
        let limit = size_of(&storages[0]) / SECTOR;
        // Back to back: every copy made after them serves both, in B's
        // storage, so B's image writes need private copies while A lives.
        let (a, _) = Snap::take(&ctl, &storages[0], limit, &[&dev]);
        let (b, pb) = Snap::take(&ctl, &storages[1], limit, &[&dev]);
        drop(storages);
        write_range(&dev, 0, RACE_REGION, |_| after_take);
        let ib = open_direct(&pb[0]);
        // A goes once the writers are this far, somewhere in the middle.
        let destroy_at = chunks / 8 + rng.below(chunks * 3 / 4);
        let done = std::sync::atomic::AtomicU64::new(0);
        let seeds: Vec<u64> = (0..THREADS).map(|_| rng.next_u64()).collect();
        let reached = std::thread::scope(|s| {
            for (t, seed) in seeds.iter().enumerate() {
                let (ib, done) = (&ib, &done);
                let mut r = Rng::new(*seed);
                s.spawn(move || {
                    for c in 0..chunks {
                        for i in 0..PER_THREAD {
                            // Spread over the time a private copy takes.
                            std::thread::sleep(Duration::from_micros(r.below(1500)));
                            let blk = c * chunk_blocks + t as u64 * PER_THREAD + i;
                            write_blocks(ib, blk, 1, |_| image_seq);
                        }
                        done.fetch_max(c, Ordering::Relaxed);
                    }
                });
            }
            // Bounded, should a writer fail and stop early.
            let deadline = Instant::now() + Duration::from_secs(300);
            while done.load(Ordering::Relaxed) < destroy_at && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
            a.destroy().expect("destroy A");
            done.load(Ordering::Relaxed)
        });
        if reached < chunks - 1 {
            mid_writes += 1;
        }
        let written = |blk: u64| blk % chunk_blocks < THREADS * PER_THREAD;
        verify_range(&ib, 0, RACE_REGION, |blk| {
            if written(blk) {
                image_seq
            } else {
                at_take
            }
        })
        .unwrap_or_else(|e| panic!("round {round}: B's image after A's destroy: {e}"));
        verify_range(&dev, 0, RACE_REGION, |_| after_take)
            .unwrap_or_else(|e| panic!("round {round}: device: {e}"));
        drop(ib);
        b.destroy().expect("destroy B");
    }
    assert!(
        mid_writes > 0,
        "no destroy landed while the image writes were going on"
    );
    say!(
        "{ROUNDS} rounds, {mid_writes} destroys during the image writes: every image write read back"
    );
}

/// Asserts that the storage of snapshot `id` comes to hold `expect`
/// sectors of copies: copies are counted once stored, after the writes
/// that made them returned.
fn assert_used(ctl: &Control, id: SnapshotId, dev: &File, expect: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let used = ctl
            .snapshot_info_of(id, dev)
            .expect("snapshot_info_of")
            .storage_used_sectors;
        if used == expect {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {used} sectors of copies, expected {expect}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One copy per chunk for all snapshots that need it; a destroy gives back
/// the copies no other snapshot reads; a storage is released once nothing
/// reads it.
#[test]
fn held_storage_holds_one_copy_per_chunk_and_is_given_back() {
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    write_range(&dev, 0, REGION, |_| 0);
    // Block device storages, opened exclusively: reopening one succeeds
    // only once the module let it go.
    let nulls: Vec<NullBlk> = (0..3)
        .map(|i| NullBlk::new(&format!("msnap{i}"), 128 * MIB))
        .collect();
    let _att = Attached::new(&ctl, &dev);
    let chunk = 256 * KIB / SECTOR;
    let chunks = |blocks: u64| blocks * BLOCK / SECTOR / chunk;
    let mut snaps = Vec::new();
    let mut ids = Vec::new();
    for (i, n) in nulls.iter().enumerate() {
        let storage = open_excl(&n.dev);
        let limit = size_of(&storage) / SECTOR;
        let (s, _) = Snap::take(&ctl, &storage, limit, &[&dev]);
        ids.push(s.id);
        snaps.push(s);
        drop(storage);
        // Quarter i of the region, then all earlier quarters again.
        write_range(&dev, 0, REGION * (i as u64 + 1) / 4, |_| 1 + i as u32);
    }
    // Snapshot 0 copied quarter 0; 1 copied quarters 0-1 (quarter 1 serves
    // 0 and 1 at once); 2 copied quarters 0-2: one copy each, whatever the
    // number of snapshots that read it.
    let q = chunks(REGION / 4) * chunk;
    assert_used(&ctl, ids[0], &dev, q, "storage of snapshot 0");
    assert_used(&ctl, ids[1], &dev, 2 * q, "storage of snapshot 1");
    assert_used(&ctl, ids[2], &dev, 3 * q, "storage of snapshot 2");

    // Without snapshot 1, its copy of quarter 0 is read by nobody; its
    // copy of quarter 1 is still snapshot 0's.
    snaps.remove(1).destroy().expect("destroy 1");
    assert_used(&ctl, ids[0], &dev, q, "storage 0 after destroy 1");
    assert_used(&ctl, ids[2], &dev, 3 * q, "storage 2 after destroy 1");
    assert!(
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(&nulls[1].dev)
            .is_err(),
        "storage 1 was let go while snapshot 0 reads a copy in it"
    );
    // Without snapshot 2: quarters 1 and 2 of storage 2 were its own.
    snaps.pop().unwrap().destroy().expect("destroy 2");
    assert_used(&ctl, ids[0], &dev, q, "storage 0 after destroy 2");
    snaps.pop().unwrap().destroy().expect("destroy 0");
    for n in &nulls {
        open_excl(&n.dev);
    }
    verify_range(&dev, 0, REGION / 4, |_| 3).unwrap_or_else(|e| panic!("device: {e}"));
    say!("one copy per chunk; storages given back after the last destroy");
}

/// A storage that overflows corrupts the snapshots that needed the copies
/// it could not take, and no other.
#[test]
fn held_overflow_with_several_held_corrupts_only_those_it_could_not_serve() {
    overflow_setting(384 * MIB, |ctl, dev, fs, big, small| {
        // A copies the whole region into its own roomy storage.
        let (a, pa) = Snap::take(ctl, big, 128 * MIB / SECTOR, &[dev]);
        write_range(dev, 0, REGION, |_| 1);
        // B's storage holds 4 MiB: its first writes overflow it.
        let (b, pb) = Snap::take(ctl, small, 4 * MIB / SECTOR, &[dev]);
        write_range(dev, 0, REGION, |_| 2);
        let ia = assert_only_b_overflowed(ctl, dev, (&a, &pa[0]), (&b, &pb[0]));
        // A later snapshot with room works again, next to both.
        let roomy = tmpfile_in(&fs.path);
        let (c, pc) = Snap::take(ctl, &roomy, 128 * MIB / SECTOR, &[dev]);
        write_range(dev, 0, REGION, |_| 3);
        let ic = open_direct_ro(&pc[0]);
        verify_range(&ic, 0, REGION, |_| 2).unwrap_or_else(|e| panic!("C: {e}"));
        verify_range(&ia, 0, REGION, |_| 0).unwrap_or_else(|e| panic!("A at the end: {e}"));
        verify_range(dev, 0, REGION, |_| 3).unwrap_or_else(|e| panic!("device: {e}"));
        drop((ia, ic));
        b.destroy().expect("destroy B");
        c.destroy().expect("destroy C");
        a.destroy().expect("destroy A");
        say!("B overflowed; A and C exact");
    });
}

/// The overflow tests' setting: data disk A zeroed over the region and
/// attached, and two storage files on a tmpfs of `fs_size` bytes, one to
/// be given room and one not.
fn overflow_setting(fs_size: u64, test: impl FnOnce(&Control, &File, &TmpMount, &File, &File)) {
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    write_range(&dev, 0, REGION, |_| 0);
    let fs = TmpMount::tmpfs(fs_size);
    let big = tmpfile_in(&fs.path);
    let small = tmpfile_in(&fs.path);
    let _att = Attached::new(&ctl, &dev);
    test(&ctl, &dev, &fs, &big, &small);
}

/// After B's storage overflowed: B is corrupted and its image unreadable,
/// A (a snapshot and its image) still whole and all zeros. Returns A's
/// image.
fn assert_only_b_overflowed(
    ctl: &Control,
    dev: &File,
    (a, pa): (&Snap, &PathBuf),
    (b, pb): (&Snap, &PathBuf),
) -> File {
    let info_b = ctl.snapshot_info_of(b.id, dev).expect("info B");
    assert_eq!(info_b.info.error, Some(Errno::ENOSPC), "B after overflow");
    let info_a = ctl.snapshot_info_of(a.id, dev).expect("info A");
    assert_eq!(
        info_a.info.error, None,
        "A, which had its copies, after B's overflow"
    );
    let ia = open_direct_ro(pa);
    verify_range(&ia, 0, REGION, |_| 0).unwrap_or_else(|e| panic!("A after B's overflow: {e}"));
    let ib = open_direct_ro(pb);
    let mut buf = AlignedBuf::new(MIB as usize);
    let err = ib
        .read_exact_at(buf.as_mut_slice(), 0)
        .expect_err("B's image must not be readable");
    assert_eq!(err.raw_os_error(), Some(nix::libc::EIO), "B read: {err}");
    ia
}

/// Two snapshots taken back to back share every copy made after them, in
/// the newer one's storage. When that storage is full, the newer one is
/// corrupted and the copies the older one still needs go to the older
/// one's storage instead: it stays whole, each copy in one storage.
#[test]
fn held_overflow_of_the_newest_storage_leaves_the_older_snapshot_whole() {
    overflow_setting(256 * MIB, |ctl, dev, _fs, big, small| {
        let (a, pa) = Snap::take(ctl, big, 128 * MIB / SECTOR, &[dev]);
        let (b, pb) = Snap::take(ctl, small, 4 * MIB / SECTOR, &[dev]);
        write_range(dev, 0, REGION, |_| 1);
        // Every chunk copied once, in one storage or the other, once stored.
        let region = REGION * BLOCK / SECTOR;
        let deadline = Instant::now() + Duration::from_secs(20);
        let (used_a, used_b) = loop {
            let used = |id| {
                ctl.snapshot_info_of(id, dev)
                    .expect("snapshot_info_of")
                    .storage_used_sectors
            };
            let (ua, ub) = (used(a.id), used(b.id));
            if ua + ub == region || Instant::now() > deadline {
                break (ua, ub);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            used_a + used_b,
            region,
            "sectors of copies in A's storage ({used_a}) and B's ({used_b})"
        );
        assert!(
            used_b <= 4 * MIB / SECTOR,
            "B's storage holds {used_b} sectors"
        );
        let ia = assert_only_b_overflowed(ctl, dev, (&a, &pa[0]), (&b, &pb[0]));
        // A still reads the copies kept in B's storage once B is gone.
        b.destroy().expect("destroy B");
        write_range(dev, 0, REGION, |_| 2);
        verify_range(&ia, 0, REGION, |_| 0).unwrap_or_else(|e| panic!("A after B's destroy: {e}"));
        verify_range(dev, 0, REGION, |_| 2).unwrap_or_else(|e| panic!("device: {e}"));
        drop(ia);
        a.destroy().expect("destroy A");
        say!(
            "B overflowed with {} MiB of copies, A took the other {} MiB and stayed exact",
            used_b * SECTOR / MIB,
            used_a * SECTOR / MIB
        );
    });
}

/// The change map between any two held snapshots, and a group take of two
/// devices next to snapshots of one of them.
#[test]
fn held_change_maps_stay_exact_and_group_takes_work_with_several_held() {
    let (ctl, disks) = setup();
    let da = open_direct(&disks.data_a);
    let db = open_direct(&disks.data_b);
    write_range(&da, 0, REGION, |_| 0);
    write_range(&db, 0, REGION, |_| 0);
    let fs = TmpMount::tmpfs(256 * MIB);
    let limit = 80 * MIB / SECTOR;
    let _aa = Attached::new(&ctl, &da);
    let _ab = Attached::new(&ctl, &db);
    let info0 = ctl.cbt_info(&da).expect("cbt_info");
    let bs = u64::from(info0.block_size) / BLOCK;

    let s1 = tmpfile_in(&fs.path);
    let (n1, _) = Snap::take(&ctl, &s1, limit, &[&da]);
    let num1 = ctl.cbt_info(&da).expect("cbt_info").changes_number;
    write_range(&da, 0, bs, |_| 1);
    // A group snapshot of both devices while A's first one is held.
    let s2 = tmpfile_in(&fs.path);
    let (n2, p2) = Snap::take(&ctl, &s2, limit, &[&da, &db]);
    let num2 = ctl.cbt_info(&da).expect("cbt_info").changes_number;
    write_range(&da, 4 * bs, 5 * bs, |_| 2);
    write_range(&db, 0, REGION, |_| 2);
    let s3 = tmpfile_in(&fs.path);
    let (n3, _) = Snap::take(&ctl, &s3, limit, &[&da]);
    let map = ctl.cbt_map_all(&da).expect("cbt_map");
    // Changed since 1: blocks 0 and 4; since 2: block 4 only.
    let since = |n: u8| -> Vec<usize> {
        map.iter()
            .enumerate()
            .filter(|(_, &v)| v > n)
            .map(|(i, _)| i)
            .collect()
    };
    assert_eq!(since(num1), vec![0, 4], "changed since snapshot 1");
    assert_eq!(since(num2), vec![4], "changed since snapshot 2");
    let ia = open_direct_ro(&p2[0]);
    let ib = open_direct_ro(&p2[1]);
    verify_range(&ia, 0, REGION, |b| u32::from(b < bs))
        .unwrap_or_else(|e| panic!("group image of A: {e}"));
    verify_range(&ib, 0, REGION, |_| 0).unwrap_or_else(|e| panic!("group image of B: {e}"));
    drop((ia, ib));
    n2.destroy().expect("destroy group");
    n1.destroy().expect("destroy 1");
    n3.destroy().expect("destroy 3");
    say!("change maps exact between held snapshots; group take beside them");
}

/// A destroyed snapshot's storage that an older snapshot still reads is
/// refused to a new snapshot, which would overwrite the copies there,
/// until the older one goes too.
#[test]
fn held_storage_of_a_destroyed_snapshot_is_refused_while_an_older_one_reads_it() {
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    write_range(&dev, 0, REGION, |_| 0);
    let fs = TmpMount::ext4(&disks.storage);
    let (path1, path2) = (fs.path.join("f1"), fs.path.join("f2"));
    let open = |path: &PathBuf| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
    };
    let limit = 128 * MIB / SECTOR;
    let _att = Attached::new(&ctl, &dev);
    let (a, pa) = Snap::take(&ctl, &open(&path1), limit, &[&dev]);
    let (b, _) = Snap::take(&ctl, &open(&path2), limit, &[&dev]);
    // The copies A and B share go to B's storage, F2.
    write_range(&dev, 0, REGION, |_| 1);
    b.destroy().expect("destroy B");
    match ctl.snapshot_create(&open(&path2), limit) {
        Err(e) if e.errno() == Some(Errno::EBUSY) => {}
        Ok(id) => {
            ctl.snapshot_destroy(id).expect("destroy C");
            panic!("snapshot C was given F2, where A reads its copies");
        }
        Err(e) => panic!("snapshot C on F2: {e}, not EBUSY"),
    }
    write_range(&dev, 0, REGION, |_| 2);
    let ia = open_direct_ro(&pa[0]);
    verify_range(&ia, 0, REGION, |_| 0).unwrap_or_else(|e| panic!("A: {e}"));
    assert_eq!(
        ctl.snapshot_info_of(a.id, &dev).expect("info A").info.error,
        None,
        "A"
    );
    drop(ia);
    a.destroy().expect("destroy A");
    // Nothing reads F2 any more: it serves a new snapshot.
    let (c, pc) = Snap::take(&ctl, &open(&path2), limit, &[&dev]);
    write_range(&dev, 0, REGION, |_| 3);
    let ic = open_direct_ro(&pc[0]);
    verify_range(&ic, 0, REGION, |_| 2).unwrap_or_else(|e| panic!("C: {e}"));
    drop(ic);
    c.destroy().expect("destroy C");
    say!("F2 refused while A read copies in it, usable once A was gone");
}

/// A take beside a snapshot whose image is read without pause: a write
/// waits for those reads (they could see its data otherwise), and the
/// take, which drains such writes, makes new reads wait for it instead of
/// waiting for the readers to stop.
#[test]
fn held_take_completes_while_an_older_image_is_read_without_pause() {
    const READERS: usize = 8;
    const READING: Duration = Duration::from_secs(120);
    let (ctl, disks) = setup();
    let dev = open_direct(&disks.data_a);
    write_range(&dev, 0, RACE_REGION, |_| 0);
    let fs = TmpMount::tmpfs(128 * MIB);
    let storages: Vec<File> = (0..2).map(|_| tmpfile_in(&fs.path)).collect();
    let limit = 48 * MIB / SECTOR;
    let _att = Attached::new(&ctl, &dev);
    let (a, pa) = Snap::take(&ctl, &storages[0], limit, &[&dev]);
    let taken = AtomicBool::new(false);
    let (b, pb, reads) = std::thread::scope(|s| {
        // Each reads the whole region, from the device, over and over.
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                s.spawn(|| -> Result<(), String> {
                    let image = open_direct_ro(&pa[0]);
                    let mut buf = AlignedBuf::new((RACE_REGION * BLOCK) as usize);
                    let start = Instant::now();
                    while !taken.load(Ordering::Relaxed) {
                        if start.elapsed() > READING {
                            return Err(format!("no take after {READING:?} of reading"));
                        }
                        image
                            .read_exact_at(buf.as_mut_slice(), 0)
                            .map_err(|e| format!("read: {e}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let writer = s.spawn(|| write_range(&dev, 0, 1, |_| 1));
        std::thread::sleep(Duration::from_secs(1));
        let (b, pb) = Snap::take(&ctl, &storages[1], limit, &[&dev]);
        taken.store(true, Ordering::Relaxed);
        writer.join().expect("writer panicked");
        let reads: Vec<_> = readers
            .into_iter()
            .map(|r| r.join().expect("reader panicked"))
            .collect();
        (b, pb, reads)
    });
    for (i, r) in reads.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("reader {i}: {e}"));
    }
    let ia = open_direct_ro(&pa[0]);
    verify_range(&ia, 0, RACE_REGION, |_| 0).unwrap_or_else(|e| panic!("A: {e}"));
    let ib = open_direct_ro(&pb[0]);
    verify_range(&ib, 0, RACE_REGION, |blk| u32::from(blk == 0))
        .unwrap_or_else(|e| panic!("B: {e}"));
    drop((ia, ib));
    b.destroy().expect("destroy B");
    a.destroy().expect("destroy A");
    say!("B taken while {READERS} readers read A's image without pause");
}
