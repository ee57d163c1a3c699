//! Allocation failures on the copy-on-write path, through the kernel's
//! failslab. Debian's kernels are built without CONFIG_FAILSLAB: there the
//! test says so and returns; it is meant for the debug kernel, where the
//! harness runs it like any other.

#[macro_use]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

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

fn have_failslab() -> bool {
    if !Path::new("/sys/kernel/debug/failslab").exists() {
        let _ = Command::new("mount")
            .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
            .stderr(Stdio::null())
            .status();
    }
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
