//! Hot removal and writes: a thread that makes null_blk disks through
//! configfs, hands them to the random threads (sometimes attached and in a
//! taken snapshot already), and removes them (`del_gendisk`) while they are
//! in use, keeping their descriptors open for a while as stale ones; and a
//! thread that writes to the pool's devices and reads its images.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blksnap::Control;

use crate::mem::{self, Arena, DATA, PAGE};
use crate::rng::Rng;
use crate::stats::Stats;
use crate::world::{open_dev, Dev, World};

const NULLB: &str = "/sys/kernel/config/nullb";

/// Loads null_blk without devices and mounts configfs; false when the
/// guest has neither (the run then has no hot removal, and says so).
pub fn available() -> bool {
    let ok = Command::new("modprobe")
        .args(["null_blk", "nr_devices=0"])
        .status()
        .is_ok_and(|s| s.success());
    if ok && !Path::new(NULLB).exists() {
        let _ = Command::new("mount")
            .args(["-t", "configfs", "none", "/sys/kernel/config"])
            .status();
    }
    ok && Path::new(NULLB).is_dir()
}

fn set(cfg: &Path, key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(cfg.join(key), value)
}

/// A powered null_blk disk of `mib` MiB named `name`, and its node.
pub fn make(name: &str, mib: u64) -> std::io::Result<(PathBuf, PathBuf)> {
    let cfg = Path::new(NULLB).join(name);
    std::fs::create_dir(&cfg)?;
    set(&cfg, "size", &mib.to_string())?;
    set(&cfg, "blocksize", "4096")?;
    set(&cfg, "memory_backed", "1")?;
    set(&cfg, "power", "1")?;
    let index = std::fs::read_to_string(cfg.join("index"))?;
    let nodes = [
        PathBuf::from("/dev").join(name),
        PathBuf::from(format!("/dev/nullb{}", index.trim())),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(n) = nodes.iter().find(|n| n.exists()) {
            return Ok((cfg, n.clone()));
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!("none of {nodes:?} appeared")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn unmake(cfg: &Path) {
    let _ = set(cfg, "power", "0");
    if let Err(e) = std::fs::remove_dir(cfg) {
        eprintln!("blksnap-fuzz: rmdir {}: {e}", cfg.display());
    }
}

/// Cycles of make, use, remove until the world stops; returns its calls.
pub fn run(w: &World, seed: u64) -> Stats {
    let mut stats = Stats::default();
    let mut rng = Rng::new(seed, 2000);
    let ctl = match Control::open() {
        Ok(c) => c,
        Err(e) => {
            w.violations.add(format!("hotplug: open: {e}"));
            return stats;
        }
    };
    // Removed disks whose descriptors are still in the pool.
    let mut stale: Vec<(Arc<Dev>, PathBuf)> = Vec::new();
    let mut n = 0u64;
    while !w.stopped() {
        n += 1;
        let name = format!("bsfuzz{}", n % 8);
        let (cfg, node) = match make(&name, 16 + rng.below(49)) {
            Ok(x) => x,
            Err(e) => {
                w.violations.add(format!("hotplug: null_blk {name}: {e}"));
                return stats;
            }
        };
        let Ok(file) = open_dev(node.to_str().expect("UTF-8 path")) else {
            unmake(&cfg);
            continue;
        };
        let dev = w.add_dev(file, name.clone(), true);
        // Often attached and in a taken snapshot when it goes.
        if rng.chance(70) {
            let r = ctl.attach(&dev.file);
            stats.record_api("hotplug attach", &r);
            if rng.chance(70) {
                if let Some(storage) = w.fresh_storage() {
                    let r = ctl.snapshot_create(&*storage, 4096 + rng.below(8192));
                    stats.record_api("hotplug create", &r);
                    if let Ok(id) = r {
                        w.snaps.lock().expect("snaps").live.push(*id.0.as_bytes());
                        let r = ctl.snapshot_add(id, &dev.file);
                        stats.record_api("hotplug add", &r);
                        let r = ctl.snapshot_take(id);
                        stats.record_api("hotplug take", &r);
                    }
                }
            }
        }
        let until = Instant::now() + Duration::from_millis(200 + rng.below(1500));
        while Instant::now() < until && !w.stopped() {
            std::thread::sleep(Duration::from_millis(20));
        }
        // del_gendisk with the disk open, maybe attached, maybe in use.
        let _ = set(&cfg, "power", "0");
        dev.removed.store(true, Ordering::Release);
        stats.record::<()>("hotplug remove", &Ok(()));
        stale.push((dev, cfg));
        if stale.len() > 2 {
            let (old, cfg) = stale.remove(0);
            w.drop_dev(&old);
            drop(old);
            unmake(&cfg);
        }
    }
    for (old, cfg) in stale {
        w.drop_dev(&old);
        drop(old);
        unmake(&cfg);
    }
    stats
}

/// Writes 4 KiB blocks to the pool's devices and reads its images until
/// the world stops; their errors (removed devices, corrupted images) are
/// counted, not judged.
pub fn writer(w: &World, seed: u64) -> Stats {
    let mut stats = Stats::default();
    let mut rng = Rng::new(seed, 3000);
    let arena = Arena::new();
    while !w.stopped() {
        if rng.chance(75) {
            if let Some(dev) = w.pick_dev(&mut rng) {
                let blocks = dev.sectors / 8;
                let off = (rng.below(blocks.max(1)) * PAGE as u64) as i64;
                arena.fill(DATA, PAGE, rng.next_u64() as u8);
                let r = mem::pwrite(dev.file.as_raw_fd(), arena.addr(DATA), PAGE, off);
                stats.record("device write", &r);
            }
        } else if let Some(image) = w.pick_image(&mut rng) {
            let blocks = image.bytes / PAGE as u64;
            let off = (rng.below(blocks.max(1)) * PAGE as u64) as i64;
            let r = mem::pread(image.file.as_raw_fd(), arena.addr(DATA), PAGE, off);
            stats.record("image read", &r);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stats
}
