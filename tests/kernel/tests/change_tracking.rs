//! The change map marks exactly the blocks written since a given snapshot
//! number; cbtdirty marks ranges; the generation changes at the 255th take
//! and not before.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::fs::File;

use blksnap::{cbt, CbtInfo, Control, SectorRange};
use common::*;

/// Creates a snapshot of `dev`, takes it and destroys it again: the change
/// map advances, the snapshot is not needed.
fn take_once(ctl: &Control, storage: &File, dev: &File) -> CbtInfo {
    let (snap, _) = Snap::take(ctl, storage, size_of(storage) / SECTOR, &[dev]);
    let info = ctl.cbt_info(dev).expect("cbt_info");
    snap.destroy().expect("destroy");
    info
}

/// Tracking blocks to write: both ends of the device, a run of adjacent
/// ones, and random ones.
fn pick_blocks(count: u64, rng: &mut Rng, skip: &BTreeSet<u64>) -> BTreeSet<u64> {
    let mut s = BTreeSet::new();
    for b in [0, 1, 2, count / 2, count - 1] {
        s.insert(b);
    }
    while s.len() < 60 {
        s.insert(rng.below(count));
    }
    s.retain(|b| !skip.contains(b));
    s
}

/// Writes one 4 KiB block somewhere inside each tracking block of `set`.
fn write_in_blocks(dev: &File, info: &CbtInfo, set: &BTreeSet<u64>, rng: &mut Rng, seq: u32) {
    let per = u64::from(info.block_size) / BLOCK;
    let dev_blocks = info.device_capacity / BLOCK;
    for &tb in set {
        let first = tb * per;
        let last = (first + per).min(dev_blocks);
        let b = first + rng.below(last - first);
        write_blocks(dev, b, 1, |_| seq);
    }
}

fn ranges_of(set: &BTreeSet<u64>) -> Vec<std::ops::Range<u64>> {
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for &b in set {
        match out.last_mut() {
            Some(r) if r.end == b => r.end = b + 1,
            _ => out.push(b..b + 1),
        }
    }
    out
}

#[test]
fn change_map_marks_exactly_the_written_blocks() {
    let (ctl, disks) = setup();
    let storage = open_excl(&disks.storage);
    let dev = open_direct(&disks.data_a);
    let _att = Attached::new(&ctl, &dev);
    let info0 = ctl.cbt_info(&dev).expect("cbt_info");
    assert!(
        info0.block_size.is_power_of_two(),
        "block size {}",
        info0.block_size
    );
    assert_eq!(info0.device_capacity, size_of(&dev));
    assert_eq!(
        u64::from(info0.block_count),
        info0.device_capacity.div_ceil(u64::from(info0.block_size))
    );
    let count = u64::from(info0.block_count);
    let mut rng = Rng::new(5);

    // Written before snapshot N: must not count as changed since N.
    let before = pick_blocks(count, &mut rng, &BTreeSet::new());
    write_in_blocks(&dev, &info0, &before, &mut rng, 1);
    let n = take_once(&ctl, &storage, &dev);
    assert!(n.changes_number >= 1);

    let after = pick_blocks(count, &mut rng, &before);
    write_in_blocks(&dev, &info0, &after, &mut rng, 2);
    let n1 = take_once(&ctl, &storage, &dev);
    assert_eq!(n1.changes_number, n.changes_number + 1);
    assert_eq!(n1.generation_id, n.generation_id);

    let map = ctl.cbt_map_all(&dev).expect("cbt_map_all");
    assert_eq!(map.len() as u64, count);
    let changed: BTreeSet<u64> = (0..count)
        .filter(|&b| map[b as usize] > n.changes_number)
        .collect();
    let missing: Vec<_> = after.difference(&changed).collect();
    let extra: Vec<_> = changed.difference(&after).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "map since {}: written but unmarked {missing:?}, marked but unwritten {extra:?}",
        n.changes_number
    );
    for &b in &after {
        assert_eq!(map[b as usize], n1.changes_number, "byte of block {b}");
    }
    // Blocks written before N are changed since N-1 (the map keeps history).
    for &b in &before {
        assert_eq!(
            map[b as usize], n.changes_number,
            "byte of block {b} written before N"
        );
    }

    // The crate's byte ranges agree with the blocks written.
    let bs = u64::from(n1.block_size);
    let expect: Vec<_> = ranges_of(&after)
        .into_iter()
        .map(|r| r.start * bs..(r.end * bs).min(n1.device_capacity))
        .collect();
    assert_eq!(cbt::changed_ranges_for(&n1, &map, n.changes_number), expect);

    // A window read returns the same bytes as the whole map.
    let mut window = vec![0u8; 100];
    let off = (count / 3) as u32;
    let got = ctl.cbt_map(&dev, off, &mut window).expect("cbt_map window");
    assert_eq!(got, 100.min(count as usize - off as usize));
    assert_eq!(&window[..got], &map[off as usize..off as usize + got]);
    say!(
        "{} of {} blocks of {} KiB marked exactly",
        after.len(),
        count,
        bs / KIB
    );
}

#[test]
fn cbt_dirty_marks_the_given_ranges() {
    let (ctl, disks) = setup();
    let storage = open_excl(&disks.storage);
    let dev = open_direct(&disks.data_a);
    let _att = Attached::new(&ctl, &dev);
    let n = take_once(&ctl, &storage, &dev);
    let bs = u64::from(n.block_size);
    let spb = bs / SECTOR;
    let count = u64::from(n.block_count);
    // One sector in block 3; blocks 10..13 exactly; a range straddling the
    // boundary of blocks 20 and 21; the last sector of the device.
    let ranges = [
        SectorRange {
            offset: 3 * spb + 1,
            count: 1,
        },
        SectorRange {
            offset: 10 * spb,
            count: 3 * spb,
        },
        SectorRange {
            offset: 21 * spb - 1,
            count: 2,
        },
        SectorRange {
            offset: n.device_capacity / SECTOR - 1,
            count: 1,
        },
    ];
    ctl.cbt_dirty(&dev, &ranges).expect("cbt_dirty");
    let n1 = take_once(&ctl, &storage, &dev);
    let map = ctl.cbt_map_all(&dev).expect("cbt_map_all");
    let changed: BTreeSet<u64> = (0..count)
        .filter(|&b| map[b as usize] > n.changes_number)
        .collect();
    let expect: BTreeSet<u64> = [3, 10, 11, 12, 20, 21, count - 1].into_iter().collect();
    assert_eq!(changed, expect, "blocks marked by cbtdirty");
    assert_eq!(n1.changes_number, n.changes_number + 1);
}

#[test]
fn generation_changes_at_the_255th_take_and_not_before() {
    let (ctl, disks) = setup();
    let storage = open_excl(&disks.storage);
    let dev = open_direct(&disks.data_b);
    let _att = Attached::new(&ctl, &dev);
    let fresh = ctl.cbt_info(&dev).expect("cbt_info");
    assert_eq!(
        fresh.changes_number, 0,
        "a freshly attached device has no snapshot number"
    );
    for k in 1..=254u32 {
        let info = take_once(&ctl, &storage, &dev);
        assert_eq!(u32::from(info.changes_number), k, "number after take {k}");
        assert_eq!(
            info.generation_id, fresh.generation_id,
            "generation changed at take {k}, before the 255th"
        );
    }
    // Mark a block so that the reset is visible in the map as well.
    write_blocks(&dev, 0, 1, |_| 9);
    let info = take_once(&ctl, &storage, &dev);
    assert_ne!(
        info.generation_id, fresh.generation_id,
        "no new generation at the 255th take"
    );
    assert_eq!(
        info.changes_number, 1,
        "numbering restarts at 1 in the new generation"
    );
    let map = ctl.cbt_map_all(&dev).expect("cbt_map_all");
    assert!(
        map.iter().all(|&b| b == 0),
        "the frozen map of a new generation holds old history"
    );
    say!(
        "255 takes: generation {} -> {}",
        fresh.generation_id,
        info.generation_id
    );
}
