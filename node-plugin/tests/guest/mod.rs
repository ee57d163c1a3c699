//! Cleanup of the VM guest, shared by the VM tests (`tests/vm.rs`) and the
//! VM benchmark (`benches/vm.rs`, which includes this file by path): the
//! library has no place for it, as it only undoes what those runs set up.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

use blksnap::Control;
use blksnap_node_plugin::backend::loop_device;

/// Unmounts everything mounted under `root`, deepest first.
fn unmount_under(root: &Path) {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = blksnap_node_plugin::mount::parse_mountinfo(&text)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(root))
        .collect();
    points.sort();
    for p in points.iter().rev() {
        let _ = Command::new("umount").arg(p).status();
    }
}

/// Leaves the module as the harness expects before `rmmod`, and `root`
/// free: no snapshots, no loop devices over files in `root/pool`, no
/// tracking on them or on `devices`, nothing mounted under `root`. Best
/// effort, as it also runs after a failure that may have undone any of it.
pub fn cleanup(control: &Control, root: &Path, devices: &[&Path]) {
    for id in control.snapshot_collect().unwrap_or_default() {
        let _ = control.snapshot_destroy(id);
    }
    // Volumes mounted under `root` keep their loop devices busy.
    unmount_under(root);
    let pool = root.join("pool");
    let open = |dev: &Path| OpenOptions::new().read(true).write(true).open(dev);
    for entry in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(backing.trim()).starts_with(&pool) {
            let dev = PathBuf::from("/dev").join(entry.file_name());
            if let Ok(f) = open(&dev) {
                let _ = control.detach(&f);
            }
            let _ = loop_device::detach(&dev);
        }
    }
    for dev in devices {
        if let Ok(f) = open(dev) {
            let _ = control.detach(&f);
        }
    }
    // The pool's own file system, once no loop device holds its files.
    unmount_under(root);
}
