//! Setup and cleanup of the VM guest, shared by the VM tests
//! (`tests/vm.rs`) and the VM benchmark (`benches/vm.rs`, which includes
//! this file by path): the library has no place for it, as it only
//! prepares and undoes what those runs use.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

use blksnap::Control;
use blksnap_node_plugin::backend::loop_device;

/// Runs a command; fails with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The harness's scratch disks (`BLKSNAP_TEST_DISKS`): data A, data B and
/// storage, at least.
pub fn disks() -> Result<Vec<PathBuf>, String> {
    let list = std::env::var("BLKSNAP_TEST_DISKS")
        .map_err(|_| "BLKSNAP_TEST_DISKS is not set: run through the VM harness")?;
    let disks: Vec<PathBuf> = list.split_whitespace().map(PathBuf::from).collect();
    if disks.len() < 3 {
        return Err(format!("need data A, data B and storage disks: {list}"));
    }
    Ok(disks)
}

/// A fresh ext4 on `dev`, mounted at `dir`.
pub fn mkfs_mount(dev: &Path, dir: &Path) -> Result<(), String> {
    let utf8 = |p: &Path| {
        p.to_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{} is not UTF-8", p.display()))
    };
    let dev = utf8(dev)?;
    run("mkfs.ext4", &["-q", "-F", "-E", "nodiscard", &dev])?;
    run("mount", &[&dev, &utf8(dir)?])
}

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
