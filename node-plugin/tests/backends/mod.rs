//! The volume backends and their capacity against the real parts: loop
//! devices, ext4 free space, a static device (through device-mapper where
//! a test must hold its I/O still).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use blksnap::Control;
use blksnap_node_plugin::backend::{loop_device, raw_device::RawDevices};
use blksnap_node_plugin::plugin::CreateVolume;
use blksnap_node_plugin::state::BackendKind;
use blksnap_node_plugin::Error;

use super::{expected_delta, fill, reopen, verify, World, MIB};

/// Waits up to `secs` for `done`.
fn wait_for(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed().as_secs() < secs,
            "{what}: still not after {secs} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unbinds every loop device of `file`, its tracker first, as a reboot
/// would leave it.
fn unbind(control: &Control, file: &Path) {
    for dev in loop_device::find(file).expect("sysfs") {
        {
            // Closed before the unbind, which the loop driver defers while
            // the device is open elsewhere.
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&dev)
                .expect("open loop");
            match control.detach(&f) {
                Ok(()) | Err(blksnap::Error::NotAttached { .. }) => {}
                Err(e) => panic!("detach tracker of {}: {e}", dev.display()),
            }
        }
        loop_device::detach(&dev).expect("unbind loop");
    }
    wait_for(10, "loop devices unbound", || {
        loop_device::find(file).expect("sysfs").is_empty()
    });
}

/// Restores the working directory on drop.
struct Cwd(PathBuf);

impl Cwd {
    fn enter(dir: &Path) -> Cwd {
        let old = std::env::current_dir().expect("cwd");
        std::env::set_current_dir(dir).expect("chdir");
        Cwd(old)
    }
}

impl Drop for Cwd {
    fn drop(&mut self) {
        let _ = std::env::set_current_dir(&self.0);
    }
}

#[test]
fn a_relative_symlinked_pool_dir_binds_one_loop_device_and_tracks_its_writes() {
    let mut w = World::new();
    std::os::unix::fs::symlink("../pool/volumes", w.root.join("state/pool-link")).expect("symlink");
    let _cwd = Cwd::enter(&w.root);
    w.pool_dir = PathBuf::from("state/pool-link");
    w.start();
    let vol = w.create("pvc-link", 32 * MIB, None, None);
    let file = w.root.join("pool/volumes").join(&vol.location);
    let first = w.p().device_of(&vol).expect("device");
    for _ in 0..3 {
        assert_eq!(w.p().device_of(&vol).expect("device"), first);
    }
    assert_eq!(
        loop_device::find(&file).expect("sysfs"),
        vec![first.clone()]
    );

    // What the pod writes through that device is in the change map.
    let s1 = w.snapshot("link-1", &vol, &[]);
    w.p().delete_snapshot(&s1).expect("delete s1");
    let written = 4 * MIB..5 * MIB;
    fill(&w.dev(&vol), written.clone(), 3);
    let s2 = w.snapshot("link-2", &vol, &[]);
    let delta = w.p().metadata_delta(&s1, &s2, 0).expect("delta");
    let bs = u64::from(w.p().list_snapshots(&Default::default()).expect("list").0[0].block_size);
    assert_eq!(
        delta.ranges,
        expected_delta(std::slice::from_ref(&written), bs, vol.capacity)
    );
    // A restart finds the same device.
    w.start();
    assert_eq!(w.p().device_of(&vol).expect("device"), first);
    assert_eq!(loop_device::find(&file).expect("sysfs").len(), 1);
    w.p().delete_snapshot(&s2).expect("delete s2");
    w.p().delete_volume(&w.vid(&vol)).expect("delete volume");
    assert!(loop_device::find(&file).expect("sysfs").is_empty());
}

#[test]
fn concurrent_lookups_of_an_unbound_volume_bind_one_loop_device() {
    const CALLERS: usize = 6;
    let w = World::new();
    let vol = w.create("pvc-race", 16 * MIB, None, None);
    let file = w.root.join("pool/volumes").join(&vol.location);
    let p = w.p();
    for round in 0..4 {
        unbind(&w.control, &file);
        let start = Barrier::new(CALLERS);
        let got: Vec<PathBuf> = std::thread::scope(|s| {
            let callers: Vec<_> = (0..CALLERS)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        p.device_of(&vol).expect("device")
                    })
                })
                .collect();
            callers
                .into_iter()
                .map(|c| c.join().expect("caller"))
                .collect()
        });
        let bound = loop_device::find(&file).expect("sysfs");
        assert_eq!(bound.len(), 1, "round {round}: {bound:?}");
        assert!(got.iter().all(|d| *d == bound[0]), "round {round}: {got:?}");
    }
    w.p().delete_volume(&w.vid(&vol)).expect("delete volume");
}

/// Bytes free for unprivileged use in `dir`'s file system.
fn free(dir: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).expect("statvfs");
    st.blocks_available() * st.fragment_size()
}

#[test]
fn pool_volumes_are_reserved_whole_and_capacity_says_so() {
    let w = World::new();
    let p = w.p();
    let pool = || p.available(Some(BackendKind::Pool)).expect("capacity");
    let free0 = pool();
    let a = w.create("pvc-thick", free0 / 2 / MIB * MIB, None, None);
    let free1 = pool();
    assert!(
        free0 - free1 >= a.capacity,
        "{} bytes given, capacity {free0} -> {free1}",
        a.capacity
    );
    // What is left is all a new volume may get.
    let too_big = p.create_volume(&CreateVolume {
        name: "pvc-thick-2".into(),
        required: free1 + MIB,
        limit: 0,
        backend: None,
        source: None,
    });
    assert!(matches!(too_big, Err(Error::Exhausted(_))), "{too_big:?}");
    let id = p.volume_id(&a);
    let grow = p.expand_volume(&id, a.capacity + free1 + MIB, 0);
    assert!(matches!(grow, Err(Error::Exhausted(_))), "{grow:?}");
    let grown = p
        .expand_volume(&id, a.capacity + 64 * MIB, 0)
        .expect("expand");
    assert!(free1 - pool() >= grown - a.capacity, "expansion reserved");
    // The last bytes of the volume can be written.
    let dev = w.dev(&p.volume(&id).expect("volume"));
    fill(&dev, grown - 8 * MIB..grown, 4);
    verify(&reopen(&dev), grown - 8 * MIB..grown, |_| Some(4));
    drop(dev);
    p.delete_volume(&id.to_string()).expect("delete");
}

#[test]
fn difference_storage_is_reserved_at_the_take() {
    let mut w = World::new();
    let vol = w.create("pvc-res", 64 * MIB, None, None);
    let store = free(&w.storage);
    let limit = |b: u64| [("diffStorageLimit".to_owned(), b.to_string())];
    let params = |b: u64| limit(b).into_iter().collect::<HashMap<_, _>>();
    // More than the storage's file system holds is refused at the take,
    // not found out as an overflow while the volume is written.
    let r = w
        .p()
        .create_snapshot("res-big", &w.p().volume_id(&vol), &params(2 * store));
    assert!(matches!(r, Err(Error::Exhausted(_))), "{r:?}");
    assert!(w.control.snapshot_collect().expect("collect").is_empty());
    let s = w
        .p()
        .create_snapshot("res", &w.p().volume_id(&vol), &params(256 * MIB))
        .expect("snapshot");
    assert!(
        store - free(&w.storage) >= 256 * MIB,
        "the limit is reserved"
    );
    w.p()
        .delete_snapshot(&w.p().snapshot_id(&s).to_string())
        .expect("delete");

    // Difference storage on the pool's file system: GetCapacity counts
    // what a held snapshot may still take.
    let shared = w.root.join("pool/diff");
    std::fs::create_dir_all(&shared).expect("mkdir");
    w.storage = shared;
    w.start();
    let before = w.p().available(Some(BackendKind::Pool)).expect("capacity");
    let s = w
        .p()
        .create_snapshot("res-shared", &w.p().volume_id(&vol), &params(256 * MIB))
        .expect("snapshot");
    let after = w.p().available(Some(BackendKind::Pool)).expect("capacity");
    assert!(before - after >= 256 * MIB, "capacity {before} -> {after}");
    w.p()
        .delete_snapshot(&w.p().snapshot_id(&s).to_string())
        .expect("delete");
    w.p().delete_volume(&w.vid(&vol)).expect("delete volume");
}

#[test]
fn one_disk_under_two_static_device_names_is_refused() {
    let disks = super::guest::disks().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("by-id-link");
    std::os::unix::fs::symlink(&disks[1], &link).expect("symlink");
    let r = RawDevices::new(&[
        format!("disk-b={}", disks[1].display()),
        format!("disk-b2={}", link.display()),
    ]);
    assert!(matches!(r, Err(Error::Config(_))), "{r:?}");
    assert!(RawDevices::new(&[
        format!("disk-a={}", disks[0].display()),
        format!("disk-b={}", disks[1].display()),
    ])
    .is_ok());
}
