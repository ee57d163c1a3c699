//! The strict thread: a valid life cycle on a device and storage no random
//! call can name (its descriptors never enter the shared pool, its ids are
//! never published), through the `blksnap` crate. Every step must succeed,
//! and the image must read the device's content at take, while the random
//! threads and hot removal run beside it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use blksnap::{Control, Error};
use nix::libc;

use crate::mem::{Arena, DATA, PAGE};
use crate::rng::Rng;
use crate::stats::Stats;
use crate::world::World;

/// What one scenario thread did: its calls, and its cycles.
pub struct Outcome {
    pub stats: Stats,
    pub cycles: u64,
}

/// Runs cycles on `dev` with storage files in `dir` until the world stops;
/// with `second` (a private null_blk disk), every third cycle also offers
/// the first snapshot's storage to a second snapshot of `second`.
pub fn run(w: &World, dev_path: &Path, second: Option<&Path>, dir: &Path, seed: u64) -> Outcome {
    let mut out = Outcome {
        stats: Stats::default(),
        cycles: 0,
    };
    let mut rng = Rng::new(seed, 1000);
    let arena = Arena::new();
    let fail = |what: String| w.violations.add(format!("scenario: {what}"));
    let ctl = match Control::open() {
        Ok(c) => c,
        Err(e) => {
            fail(format!("open: {e}"));
            return out;
        }
    };
    let dev = crate::world::open_dev(dev_path.to_str().expect("UTF-8 path"))
        .expect("open scenario device");
    let blocks = crate::world::sectors_of(&dev) / 8;
    let second = second.map(|p| {
        crate::world::open_dev(p.to_str().expect("UTF-8 path")).expect("open second device")
    });
    while !w.stopped() {
        out.cycles += 1;
        let c = out.cycles;
        let other = second.as_ref().filter(|_| c % 3 == 0);
        let mut made = Vec::new();
        let r = cycle(
            &ctl,
            &dev,
            other,
            dir,
            blocks,
            c,
            &mut rng,
            &arena,
            &mut out.stats,
            &mut made,
        );
        if let Err(e) = r {
            fail(format!("cycle {c}: {e}"));
            // Leave a clean slate for the next cycle.
            for id in made {
                let _ = ctl.snapshot_destroy(id);
            }
            let _ = ctl.detach(&dev);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let Some(o) = &second {
        let _ = ctl.detach(o);
    }
    let r = ctl.detach(&dev);
    out.stats.record_api("scenario detach", &r);
    if let Err(e) = r {
        if !matches!(e, Error::NotAttached { .. }) {
            fail(format!("final detach: {e}"));
        }
    }
    out
}

/// A 4 KiB block whose bytes say which block and which cycle wrote it.
fn stamp(block: u64, cycle: u64, after: bool) -> [u8; PAGE] {
    let mut b = [0u8; PAGE];
    for (i, w) in b.chunks_exact_mut(8).enumerate() {
        let v = block.wrapping_mul(0x9e37_79b9) ^ cycle << 20 ^ (i as u64) << 48 ^ u64::from(after);
        w.copy_from_slice(&v.to_le_bytes());
    }
    b
}

fn write_block(f: &File, arena: &Arena, block: u64, data: &[u8; PAGE]) -> Result<(), String> {
    arena.write(DATA, data);
    crate::mem::pwrite(
        std::os::fd::AsRawFd::as_raw_fd(f),
        arena.addr(DATA),
        PAGE,
        (block * PAGE as u64) as i64,
    )
    .map_err(|e| format!("write block {block}: {e}"))
    .and_then(|n| {
        if n as usize == PAGE {
            Ok(())
        } else {
            Err(format!("short write {n}"))
        }
    })
}

fn read_block(f: &File, arena: &Arena, block: u64) -> Result<Vec<u8>, String> {
    crate::mem::pread(
        std::os::fd::AsRawFd::as_raw_fd(f),
        arena.addr(DATA),
        PAGE,
        (block * PAGE as u64) as i64,
    )
    .map_err(|e| format!("read block {block}: {e}"))?;
    Ok(arena.read(DATA, PAGE))
}

#[allow(clippy::too_many_arguments)]
fn cycle(
    ctl: &Control,
    dev: &File,
    other: Option<&File>,
    dir: &Path,
    blocks: u64,
    c: u64,
    rng: &mut Rng,
    arena: &Arena,
    stats: &mut Stats,
    made: &mut Vec<blksnap::SnapshotId>,
) -> Result<(), String> {
    macro_rules! step {
        ($name:literal, $e:expr) => {{
            let r = $e;
            stats.record_api($name, &r);
            r.map_err(|e| format!("{}: {e}", $name))?
        }};
    }
    // Attached from the last cycle, or not (every fourth one detaches).
    match ctl.attach(dev) {
        Ok(()) | Err(Error::AlreadyAttached { .. }) => {
            stats.record::<()>("scenario attach", &Ok(()))
        }
        Err(e) => return Err(format!("attach: {e}")),
    }
    let info = step!("scenario cbtinfo", ctl.cbt_info(dev));
    if info.device_capacity != blocks * PAGE as u64 {
        return Err(format!(
            "cbtinfo capacity {} for {} blocks",
            info.device_capacity, blocks
        ));
    }
    let picked: Vec<u64> = (0..4).map(|_| rng.below(blocks)).collect();
    for &b in &picked {
        write_block(dev, arena, b, &stamp(b, c, false))?;
    }
    let storage = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .map_err(|e| format!("O_TMPFILE: {e}"))?;
    let id = step!("scenario create", ctl.snapshot_create(&storage, 8192));
    made.push(id);
    step!("scenario add", ctl.snapshot_add(id, dev));
    step!("scenario take", ctl.snapshot_take(id));
    let si = step!("scenario snapshotinfo", ctl.snapshot_info(dev));
    if si.error.is_some() {
        return Err(format!("fresh snapshot reports {:?}", si.error));
    }
    let path = si.image_path().ok_or("taken snapshot without an image")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let image = loop {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        {
            Ok(f) => break f,
            Err(e) if Instant::now() > deadline => {
                return Err(format!("open {}: {e}", path.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    for &b in &picked {
        write_block(dev, arena, b, &stamp(b, c, true))?;
    }
    let second = match other {
        Some(o) => shared_storage(ctl, o, &storage, c, arena, stats, made)?,
        None => None,
    };
    for &b in &picked {
        if read_block(&image, arena, b)? != stamp(b, c, false) {
            return Err(format!("image block {b} is not the content at take"));
        }
        if read_block(dev, arena, b)? != stamp(b, c, true) {
            return Err(format!("device block {b} lost its write"));
        }
    }
    let ids = step!("scenario collect", ctl.snapshot_collect());
    if !ids.contains(&id) {
        return Err(format!("collect misses {id}"));
    }
    let after = step!("scenario cbtinfo", ctl.cbt_info(dev));
    if after.generation_id == info.generation_id
        && after.changes_number != info.changes_number.wrapping_add(1)
    {
        return Err(format!(
            "take moved changes_number {} -> {}",
            info.changes_number, after.changes_number
        ));
    }
    let map = step!("scenario cbtmap", ctl.cbt_map_all(dev));
    if map.len() != after.block_count as usize {
        return Err(format!(
            "map of {} bytes, {} blocks",
            map.len(),
            after.block_count
        ));
    }
    drop(image);
    if let Some(id2) = second {
        step!("scenario destroy", ctl.snapshot_destroy(id2));
    }
    step!("scenario destroy", ctl.snapshot_destroy(id));
    match ctl.snapshot_destroy(id) {
        Err(Error::NoSuchSnapshot { .. }) => {
            stats.record::<()>("scenario destroy again", &Err(nix::errno::Errno::ENOENT))
        }
        other => return Err(format!("second destroy of {id}: {other:?}")),
    }
    if c % 4 == 0 {
        step!("scenario detach", ctl.detach(dev));
    }
    Ok(())
}

/// Offers the storage of the taken snapshot to a second snapshot of
/// `other`: refused as busy, or accepted and then its copy-on-write of
/// `other` must not land on the first snapshot's chunks (which the caller
/// checks by reading the first image after this). Returns the second
/// snapshot to destroy.
fn shared_storage(
    ctl: &Control,
    other: &File,
    storage: &File,
    c: u64,
    arena: &Arena,
    stats: &mut Stats,
    made: &mut Vec<blksnap::SnapshotId>,
) -> Result<Option<blksnap::SnapshotId>, String> {
    match ctl.attach(other) {
        Ok(()) | Err(Error::AlreadyAttached { .. }) => {}
        Err(e) => return Err(format!("attach the second device: {e}")),
    }
    let r = ctl.snapshot_create(storage, 8192);
    stats.record_api("scenario create on a used storage", &r);
    let id2 = match r {
        Ok(id) => id,
        Err(Error::Busy { .. }) => return Ok(None),
        Err(e) => return Err(format!("create on a used storage: {e}")),
    };
    made.push(id2);
    let r = ctl
        .snapshot_add(id2, other)
        .and_then(|()| ctl.snapshot_take(id2));
    stats.record_api("scenario take on a used storage", &r);
    r.map_err(|e| format!("take on a used storage: {e}"))?;
    // One block in each of the first chunks: each write copies a chunk.
    for i in 0..8 {
        write_block(other, arena, i * 64, &stamp(i * 64, c, true))?;
    }
    Ok(Some(id2))
}
