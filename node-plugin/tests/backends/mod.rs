//! The volume backends and their capacity against the real parts: loop
//! devices, ext4 free space, a static device (through device-mapper where
//! a test must hold its I/O still).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use blksnap::Control;
use blksnap_node_plugin::backend::{loop_device, raw_device::RawDevices};
use blksnap_node_plugin::plugin::{CreateVolume, Plugin};
use blksnap_node_plugin::state::{BackendKind, VolumeRecord};
use blksnap_node_plugin::Error;

use super::guest::mkfs_mount;
use super::{expected_delta, fill, reopen, run, verify, World, MIB};

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

/// Whether ext4's magic is at its place on `dev`.
fn has_ext4(dev: &Path) -> bool {
    let f = std::fs::File::open(dev).expect("open");
    let mut magic = [0u8; 2];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut magic, 1024 + 56).expect("read");
    magic == [0x53, 0xef]
}

fn gone(p: &Plugin, vol: &VolumeRecord) -> bool {
    !p.state.read(|t| t.volumes.contains_key(&vol.local))
}

#[test]
fn deleting_a_mounted_volume_is_refused_and_touches_nothing() {
    let w = World::new();
    for (name, backend) in [
        ("pvc-busy-d", BackendKind::Device),
        ("pvc-busy-p", BackendKind::Pool),
    ] {
        let vol = w.create(name, 64 * MIB, None, Some(backend));
        let dev = w.p().device_of(&vol).expect("device");
        let mnt = w.root.join("state").join(name);
        std::fs::create_dir_all(&mnt).expect("mkdir");
        mkfs_mount(&dev, &mnt).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(mnt.join("keep"), b"mounted").expect("write");
        let r = w.p().delete_volume(&w.vid(&vol));
        assert!(matches!(r, Err(Error::Precondition(_))), "{name}: {r:?}");
        // Still tracked: a snapshot can be taken.
        let s = w.snapshot(&format!("{name}-s"), &vol, &[]);
        w.p().delete_snapshot(&s).expect("delete snapshot");
        run("umount", &[mnt.to_str().expect("utf-8")]);
        assert!(has_ext4(&dev), "{name}: the file system was destroyed");
        w.p().delete_volume(&w.vid(&vol)).expect("delete unmounted");
        wait_for(120, "zeroing done", || gone(w.p(), &vol));
    }
}

/// A device-mapper device over another, whose I/O can be held.
struct Dm {
    name: String,
    path: PathBuf,
}

impl Dm {
    fn linear(name: &str, over: &Path) -> Dm {
        let _ = std::process::Command::new("modprobe")
            .arg("dm-mod")
            .status();
        let f = std::fs::File::open(over).expect("open");
        let sectors = blksnap_node_plugin::backend::device_size(&f, over).expect("size") / 512;
        let table = format!("0 {sectors} linear {} 0", over.display());
        run(
            "dmsetup",
            &["create", name, "--noudevsync", "--table", &table],
        );
        let path = std::fs::read_dir("/sys/block")
            .expect("sysfs")
            .flatten()
            .find(|e| {
                std::fs::read_to_string(e.path().join("dm/name")).is_ok_and(|n| n.trim() == name)
            })
            .map(|e| PathBuf::from("/dev").join(e.file_name()))
            .expect("dm device in sysfs");
        Dm {
            name: name.into(),
            path,
        }
    }

    fn suspend(&self) {
        run("dmsetup", &["suspend", "--noudevsync", &self.name]);
    }
}

impl Drop for Dm {
    fn drop(&mut self) {
        let _ = std::process::Command::new("dmsetup")
            .args(["remove", "--retry", "--noudevsync", &self.name])
            .status();
    }
}

/// Resumes a suspended device on drop, so that a failed assertion does
/// not leave I/O held for the cleanup.
struct Resume<'a>(&'a Dm);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("dmsetup")
            .args(["resume", "--noudevsync", &self.0.name])
            .status();
    }
}

#[test]
fn static_device_delete_answers_at_once_and_zeroes_in_the_background() {
    // Made before the world, so that it goes after the world's cleanup.
    let disks = super::guest::disks().unwrap_or_else(|e| panic!("{e}"));
    let dm = Dm::linear("bs-zeroing", &disks[1]);
    let mut w = World::new();
    w.data_b = dm.path.clone();
    w.start();
    let vol = w.create("pvc-zero", 64 * MIB, None, Some(BackendKind::Device));
    fill(&w.dev(&vol), 0..4 * MIB, 9);
    let id = w.vid(&vol);

    // With the device's I/O held, zeroing cannot finish.
    dm.suspend();
    let resume = Resume(&dm);
    let (tx, rx) = mpsc::channel();
    let deleter = {
        let (p, id) = (Arc::clone(w.p()), id.clone());
        std::thread::spawn(move || tx.send(p.delete_volume(&id)))
    };
    let answer = rx.recv_timeout(Duration::from_secs(30));
    let Ok(answer) = answer else {
        drop(resume);
        let _ = deleter.join();
        panic!("DeleteVolume waited for the device to be zeroed");
    };
    answer.expect("delete");
    let _ = deleter.join();
    // Until it is zero the device is neither offered nor counted free,
    // and deleting again is fine.
    assert_eq!(
        w.p()
            .available(Some(BackendKind::Device))
            .expect("capacity"),
        0
    );
    let other = w.p().create_volume(&CreateVolume {
        name: "pvc-zero-2".into(),
        required: MIB,
        limit: 0,
        backend: Some(BackendKind::Device),
        source: None,
    });
    assert!(matches!(other, Err(Error::Exhausted(_))), "{other:?}");
    w.p().delete_volume(&id).expect("delete again");
    assert!(matches!(
        w.p().volume(&id.parse().expect("id")),
        Err(Error::NotFound { .. })
    ));

    drop(resume);
    wait_for(120, "zeroing done", || gone(w.p(), &vol));
    assert!(
        w.p()
            .available(Some(BackendKind::Device))
            .expect("capacity")
            >= 64 * MIB
    );
    let f = OpenOptions::new().read(true).open(&dm.path).expect("open");
    verify(&reopen(&f), 0..8 * MIB, |_| None);
}

#[test]
fn zeroing_is_resumed_after_a_restart() {
    let mut w = World::new();
    let vol = w.create("pvc-resume", 64 * MIB, None, Some(BackendKind::Device));
    fill(&w.dev(&vol), 0..4 * MIB, 6);
    // What a process that died while zeroing leaves: the record marked,
    // the old data still there.
    let mut rec = serde_json::to_value(&vol).expect("json");
    rec["zeroing"] = serde_json::Value::Bool(true);
    let rec: VolumeRecord = serde_json::from_value(rec).expect("record");
    w.p().state.put(&rec).expect("put");
    w.start();
    assert!(matches!(
        w.p().volume(&w.vid(&vol).parse().expect("id")),
        Err(Error::NotFound { .. })
    ));
    wait_for(120, "zeroing done", || gone(w.p(), &vol));
    let f = OpenOptions::new().read(true).open(&w.data_b).expect("open");
    verify(&reopen(&f), 0..8 * MIB, |_| None);
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

#[test]
fn a_static_device_in_use_elsewhere_is_neither_offered_nor_counted() {
    let w = World::new();
    let mnt = w.root.join("state/elsewhere");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    // The host mounted the disk the operator listed.
    mkfs_mount(&w.data_b, &mnt).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        w.p()
            .available(Some(BackendKind::Device))
            .expect("capacity"),
        0
    );
    let r = w.p().create_volume(&CreateVolume {
        name: "pvc-elsewhere".into(),
        required: MIB,
        limit: 0,
        backend: Some(BackendKind::Device),
        source: None,
    });
    assert!(matches!(r, Err(Error::Exhausted(_))), "{r:?}");
    run("umount", &[mnt.to_str().expect("utf-8")]);
    assert!(
        w.p()
            .available(Some(BackendKind::Device))
            .expect("capacity")
            >= 64 * MIB
    );
}
