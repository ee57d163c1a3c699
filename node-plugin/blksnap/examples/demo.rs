//! Demo of blksnap for the README, run as root inside the VM:
//!
//! ```text
//! demo /dev/vdb /dev/vdc            # storage: a block device (O_EXCL)
//! demo /dev/vdb --tmpfile /mnt/st   # storage: an O_TMPFILE file in /mnt/st
//! ```
//!
//! Fills the start of the scratch device with a recognisable pattern,
//! snapshots it, overwrites part of it and shows that the image still
//! holds the old content; then takes a second snapshot after more writes
//! and prints the changed byte ranges between the two. The device's
//! content is destroyed.

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;

use blksnap::{cbt, Control, SnapshotId};
use clap::Parser;

const MIB: u64 = 1 << 20;
const BLOCK: usize = 4096;

#[derive(Parser)]
#[command(about = "Snapshot a scratch block device and show what blksnap keeps")]
struct Args {
    /// Scratch block device; its first MiBs are overwritten.
    device: PathBuf,
    /// Block device for the difference storage (opened O_EXCL).
    #[arg(required_unless_present = "tmpfile", conflicts_with = "tmpfile")]
    storage: Option<PathBuf>,
    /// Put the difference storage in an unnamed O_TMPFILE file in DIR.
    #[arg(long, value_name = "DIR")]
    tmpfile: Option<PathBuf>,
    /// How many MiB of the device to fill and check.
    #[arg(long, default_value_t = 64)]
    mib: u64,
    /// Difference storage limit in MiB (default: the storage device's
    /// size, or 1024 for --tmpfile).
    #[arg(long)]
    limit_mib: Option<u64>,
}

/// A 4 KiB block that says in ASCII which block and which generation of
/// the demo's data it holds, so a hexdump line shows it.
fn pattern(block: u64, version: u8) -> Vec<u8> {
    let line = format!("blksnap demo v{version} block {block:08}  ");
    line.bytes().cycle().take(BLOCK).collect()
}

fn write_pattern(dev: &File, from: u64, to: u64, version: u8) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(MIB as usize);
    let mut off = from;
    while off < to {
        buf.clear();
        let end = to.min(off + MIB);
        for b in (off / BLOCK as u64)..(end / BLOCK as u64) {
            buf.extend_from_slice(&pattern(b, version));
        }
        dev.write_all_at(&buf, off)?;
        off = end;
    }
    dev.sync_all()
}

/// Checks `[from, to)` of `f` against the pattern `version_of(block)` says;
/// returns the first block that differs.
fn verify(
    f: &File,
    from: u64,
    to: u64,
    version_of: impl Fn(u64) -> u8,
) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; MIB as usize];
    let mut off = from;
    while off < to {
        let len = (to - off).min(MIB) as usize;
        f.read_exact_at(&mut buf[..len], off)?;
        for (i, blk) in buf[..len].chunks(BLOCK).enumerate() {
            let b = off / BLOCK as u64 + i as u64;
            if blk != pattern(b, version_of(b)).as_slice() {
                return Ok(Some(b));
            }
        }
        off += len as u64;
    }
    Ok(None)
}

fn hexdump_line(f: &File, off: u64) -> std::io::Result<String> {
    let mut b = [0u8; 16];
    f.read_exact_at(&mut b, off)?;
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    let text: String = b
        .iter()
        .map(|&c| {
            if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '.'
            }
        })
        .collect();
    Ok(format!("{off:08x}  {}  |{text}|", hex.join(" ")))
}

fn size_of(f: &mut File) -> std::io::Result<u64> {
    let size = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(size)
}

/// Destroys the snapshot and detaches the device on every exit path, so
/// that a failed demo leaves the module idle.
struct Cleanup<'a> {
    ctl: &'a Control,
    dev: &'a File,
    snapshot: Option<SnapshotId>,
}

impl Cleanup<'_> {
    fn destroy(&mut self) -> blksnap::Result<()> {
        match self.snapshot.take() {
            Some(id) => self.ctl.snapshot_destroy(id),
            None => Ok(()),
        }
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.destroy() {
            eprintln!("cleanup: destroy: {e}");
        }
        if let Err(e) = self.ctl.detach(self.dev) {
            eprintln!("cleanup: detach: {e}");
        }
    }
}

fn open_storage(args: &Args) -> Result<(File, u64), Box<dyn Error>> {
    let (file, default_limit) = match (&args.storage, &args.tmpfile) {
        (Some(dev), _) => {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(nix::libc::O_EXCL)
                .open(dev)
                .map_err(|e| format!("open storage {}: {e}", dev.display()))?;
            let size = size_of(&mut f)?;
            println!(
                "   storage: block device {} ({} MiB)",
                dev.display(),
                size / MIB
            );
            (f, size)
        }
        (None, Some(dir)) => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(nix::libc::O_TMPFILE)
                .mode(0o600)
                .open(dir)
                .map_err(|e| format!("O_TMPFILE in {}: {e}", dir.display()))?;
            println!("   storage: unnamed O_TMPFILE file in {}", dir.display());
            (f, 1024 * MIB)
        }
        (None, None) => return Err("give a storage device or --tmpfile DIR".into()),
    };
    let limit = args.limit_mib.map_or(default_limit, |m| m * MIB);
    Ok((file, limit / 512))
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let mib = args.mib.max(4);
    let region = mib * MIB;

    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&args.device)
        .map_err(|e| format!("open {}: {e}", args.device.display()))?;
    let dev_size = size_of(&mut dev)?;
    if dev_size < region + 8 * MIB {
        return Err(format!(
            "{} has {} MiB; the demo needs {} MiB",
            args.device.display(),
            dev_size / MIB,
            mib + 8
        )
        .into());
    }
    let ctl = Control::open()?;
    let version = ctl.version()?;
    println!("blksnap module version {version}");

    println!(
        "1. filling the first {mib} MiB of {} with pattern v0",
        args.device.display()
    );
    write_pattern(&dev, 0, region, 0)?;

    ctl.attach(&dev)?;
    let mut guard = Cleanup {
        ctl: &ctl,
        dev: &dev,
        snapshot: None,
    };
    let info = ctl.cbt_info(&dev)?;
    println!(
        "2. attached: {} MiB, tracking block {} KiB, {} blocks",
        info.device_capacity / MIB,
        info.block_size / 1024,
        info.block_count
    );

    let (storage, limit_sectors) = open_storage(&args)?;
    let id = ctl.snapshot_create(&storage, limit_sectors)?;
    guard.snapshot = Some(id);
    ctl.snapshot_add(id, &dev)?;
    ctl.snapshot_take(id)?;
    let snap = ctl.snapshot_info(&dev)?;
    let image_path = snap.image_path().ok_or("snapshot taken but no image")?;
    let first = ctl.cbt_info(&dev)?;
    println!(
        "3. snapshot {id} taken (number {}), image {}",
        first.changes_number,
        image_path.display()
    );

    let half = region / 2;
    println!(
        "4. overwriting the first {} MiB of the device with pattern v1",
        half / MIB
    );
    write_pattern(&dev, 0, half, 1)?;

    let mut image = File::open(&image_path)?;
    let image_size = size_of(&mut image)?;
    println!("   device {}", hexdump_line(&dev, 0)?);
    println!("   image  {}", hexdump_line(&image, 0)?);
    if image_size != dev_size {
        return Err(format!("image has {image_size} bytes, device {dev_size}").into());
    }
    if let Some(b) = verify(&image, 0, region, |_| 0)? {
        return Err(format!("image differs from the content at take in block {b}").into());
    }
    let half_blocks = half / BLOCK as u64;
    if let Some(b) = verify(&dev, 0, region, |b| u8::from(b < half_blocks))? {
        return Err(format!("device does not hold what was written, block {b}").into());
    }
    println!("5. image matches content at take: {mib} MiB verified");
    println!("   device holds the new data: {mib} MiB verified");
    if let Some(e) = ctl.snapshot_info(&dev)?.error {
        return Err(format!("snapshot reports an error: {e}").into());
    }
    drop(image);

    guard.destroy()?;
    let more = [(half + 3 * MIB, half + 5 * MIB), (region - MIB, region)];
    for &(from, to) in &more {
        write_pattern(&dev, from, to, 2)?;
    }
    let id2 = ctl.snapshot_create(&storage, limit_sectors)?;
    guard.snapshot = Some(id2);
    ctl.snapshot_add(id2, &dev)?;
    ctl.snapshot_take(id2)?;
    let second = ctl.cbt_info(&dev)?;
    println!(
        "6. destroyed the first snapshot, wrote [{}, {}) and [{}, {}) MiB, took {id2} (number {})",
        more[0].0 / MIB,
        more[0].1 / MIB,
        more[1].0 / MIB,
        more[1].1 / MIB,
        second.changes_number
    );
    if second.generation_id != first.generation_id {
        println!("   the change map was reset in between: no delta to show");
    } else {
        let map = ctl.cbt_map_all(&dev)?;
        let ranges = cbt::changed_ranges_for(&second, &map, first.changes_number);
        println!(
            "7. changed since snapshot {} (tracking blocks of {} KiB):",
            first.changes_number,
            second.block_size / 1024
        );
        for r in &ranges {
            println!(
                "   bytes {:#012x}..{:#012x}  ({} KiB)",
                r.start,
                r.end,
                (r.end - r.start) / 1024
            );
        }
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        println!(
            "   {} range(s), {} MiB to copy for an incremental backup of {} MiB",
            ranges.len(),
            total / MIB,
            dev_size / MIB
        );
    }

    guard.destroy()?;
    drop(guard);
    println!("8. snapshot destroyed, device detached");
    drop(storage);
    Ok(())
}
