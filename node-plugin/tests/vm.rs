//! The node plugin against the real blksnap.ko, in the VM harness.
//!
//! Run with `node-plugin/tests/run-vm` (builds this binary with the
//! `vm-tests` feature and hands it to `tests/vm/run --exec`). Needs root,
//! the module loaded, `BLKSNAP_TEST_DISKS` (the harness's scratch disks:
//! data A, data B, storage, spare) and mkfs/mount from the guest's root.
//!
//! Setup per test: data A carries an ext4 that holds the file-backed pool
//! (so volumes are loop devices over sparse files on a real disk), the
//! storage disk an ext4 for the difference storage, data B is a static
//! raw device. Every test cleans up after itself, and first after a
//! failed predecessor.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use blksnap::Control;
use blksnap_node_plugin::backend::{self, loop_device};
use blksnap_node_plugin::kernel::{Interface, Kernel, Module};
use blksnap_node_plugin::plugin::{CreateVolume, Plugin, Settings};
use blksnap_node_plugin::state::{BackendKind, LostReason, Source, VolumeRecord};
use blksnap_node_plugin::{ranges, Error};

mod backends;
mod guest;
mod multi_snapshot;
mod node_service;
mod snapshots;

use guest::{cleanup, mkfs_mount};

const MIB: u64 = 1 << 20;
const NODE: &str = "vm-node";

fn run(program: &str, args: &[&str]) {
    guest::run(program, args).unwrap_or_else(|e| panic!("{e}"));
}

/// A plugin over the real module and disks.
struct World {
    control: Arc<Control>,
    plugin: Option<Arc<Plugin>>,
    root: PathBuf,
    data_b: PathBuf,
    /// Pool directory of the plugin.
    pool_dir: PathBuf,
    /// Difference storage directory of the plugin.
    storage: PathBuf,
}

impl World {
    fn new() -> World {
        assert!(nix::unistd::geteuid().is_root(), "run as root in the VM");
        let _ = Command::new("modprobe").arg("loop").status();
        let d = guest::disks().unwrap_or_else(|e| panic!("{e} (node-plugin/tests/run-vm)"));
        let control = Arc::new(Control::open().expect("blksnap.ko loaded"));
        let root = PathBuf::from("/tmp/blksnap-plugin-vm");
        cleanup(&control, &root, &[&d[1]]);
        let _ = std::fs::remove_dir_all(&root);
        for sub in ["pool", "diff", "state"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        for (dev, dir) in [(&d[0], "pool"), (&d[2], "diff")] {
            mkfs_mount(dev, &root.join(dir)).unwrap_or_else(|e| panic!("{e}"));
        }
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "state",
                root.join("state").to_str().expect("utf-8"),
            ],
        );
        let mut w = World {
            control,
            plugin: None,
            storage: root.join("diff"),
            pool_dir: root.join("pool/volumes"),
            root,
            data_b: d[1].clone(),
        };
        w.start();
        w
    }

    /// Starts (or restarts) the plugin on the same state and kernel.
    fn start(&mut self) {
        self.plugin = None;
        let backends = backend::configured(
            Some(&self.pool_dir),
            &[format!("disk-b={}", self.data_b.display())],
        )
        .expect("backends");
        let plugin = Plugin::start(
            Settings {
                node_id: NODE.into(),
                storage_dir: self.storage.clone(),
                default_storage_percent: 50,
                default_backend: BackendKind::Pool,
                collect_orphans: true,
            },
            Arc::new(Module::new(Control::open().expect("control")).expect("module"))
                as Arc<dyn Kernel>,
            backends,
            &self.root.join("state"),
        )
        .expect("plugin");
        self.plugin = Some(plugin);
    }

    /// What the loaded module's version offers.
    fn interface(&self) -> Interface {
        Interface::of(self.control.version().expect("version")).expect("interface")
    }

    fn p(&self) -> &Arc<Plugin> {
        self.plugin.as_ref().expect("started")
    }

    fn create(
        &self,
        name: &str,
        size: u64,
        source: Option<Source>,
        backend: Option<BackendKind>,
    ) -> VolumeRecord {
        self.p()
            .create_volume(&CreateVolume {
                name: name.into(),
                required: size,
                limit: 0,
                backend,
                source,
            })
            .unwrap_or_else(|e| panic!("create volume {name}: {e}"))
    }

    fn dev(&self, vol: &VolumeRecord) -> File {
        let p = self.p().device_of(vol).expect("device");
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .expect("open device")
    }

    fn vid(&self, vol: &VolumeRecord) -> String {
        self.p().volume_id(vol).to_string()
    }

    fn snapshot(&self, name: &str, vol: &VolumeRecord, params: &[(&str, &str)]) -> String {
        let params: HashMap<String, String> = params
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let rec = self
            .p()
            .create_snapshot(name, &self.p().volume_id(vol), &params)
            .unwrap_or_else(|e| panic!("snapshot {name}: {e}"));
        self.p().snapshot_id(&rec).to_string()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.plugin = None;
        cleanup(&self.control, &self.root, &[&self.data_b]);
    }
}

/// Content of 4 KiB block `b` in version `v` of the test data.
fn block(b: u64, v: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    let mut x = b.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(v).wrapping_mul(0xD1B5_4A32_D192_ED03)
        | 1;
    while out.len() < 4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Writes version `v` over the 4 KiB-aligned `range`, and syncs.
fn fill(f: &File, range: Range<u64>, v: u8) {
    let mut buf = Vec::with_capacity(MIB as usize);
    let mut off = range.start;
    while off < range.end {
        let end = range.end.min(off + MIB);
        buf.clear();
        for b in off / 4096..end / 4096 {
            buf.extend_from_slice(&block(b, v));
        }
        f.write_all_at(&buf, off).expect("write");
        off = end;
    }
    f.sync_all().expect("fsync");
}

/// Checks that `f` holds, block by block, what `expect(b)` says (`None`:
/// zeros) over `range`.
fn verify(f: &File, range: Range<u64>, expect: impl Fn(u64) -> Option<u8>) {
    let mut buf = vec![0u8; MIB as usize];
    let mut off = range.start;
    while off < range.end {
        let len = (range.end - off).min(MIB) as usize;
        f.read_exact_at(&mut buf[..len], off).expect("read");
        for (i, chunk) in buf[..len].chunks(4096).enumerate() {
            let b = off / 4096 + i as u64;
            let want = match expect(b) {
                Some(v) => block(b, v),
                None => vec![0u8; 4096],
            };
            assert!(
                chunk == want.as_slice(),
                "block {b} differs (expected {:?})",
                expect(b)
            );
        }
        off += len as u64;
    }
}

fn reopen(f: &File) -> File {
    // A fresh descriptor of the same device; its page cache is dropped so
    // that reads come from the device.
    let _ = nix::fcntl::posix_fadvise(f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    f.try_clone().expect("dup")
}

#[test]
fn restore_reads_back_the_snapshot() {
    let w = World::new();
    let vol = w.create("pvc-a", 64 * MIB, None, None);
    let dev = w.dev(&vol);
    fill(&dev, 0..8 * MIB, 1);
    fill(&dev, 40 * MIB..48 * MIB, 1);
    let snap = w.snapshot("snap-a", &vol, &[]);
    // Overwrite part of the snapshotted data, and a hole.
    fill(&dev, 4 * MIB..12 * MIB, 2);
    let was = |b: u64| {
        let off = b * 4096;
        ((0..8 * MIB).contains(&off) || (40 * MIB..48 * MIB).contains(&off)).then_some(1)
    };

    let restored = w.create(
        "pvc-r",
        64 * MIB,
        Some(Source::Snapshot(snap.clone())),
        None,
    );
    verify(&reopen(&w.dev(&restored)), 0..64 * MIB, was);
    // The source has the new data.
    verify(&reopen(&dev), 0..64 * MIB, |b| {
        let off = b * 4096;
        if (4 * MIB..12 * MIB).contains(&off) {
            Some(2)
        } else {
            was(b)
        }
    });
    // The restored pool file stayed sparse where the snapshot was empty.
    let alloc = w.p().backend_allocated(&restored).expect("extents");
    assert!(
        !alloc.iter().any(|r| r.contains(&(20 * MIB))),
        "hole at 20 MiB filled: {alloc:?}"
    );
    // Idempotent by name, and the restore is a volume of its own: the
    // snapshot can go.
    assert_eq!(
        w.create(
            "pvc-r",
            64 * MIB,
            Some(Source::Snapshot(snap.clone())),
            None
        )
        .local,
        restored.local
    );
    w.p().delete_snapshot(&snap).expect("delete snapshot");
    verify(&reopen(&w.dev(&restored)), 0..16 * MIB, was);
    w.p()
        .delete_volume(&w.vid(&restored))
        .expect("delete restored");
    w.p().delete_volume(&w.vid(&vol)).expect("delete source");
}

/// The tracking blocks of `writes`, as coalesced byte ranges.
fn expected_delta(writes: &[Range<u64>], block_size: u64, capacity: u64) -> Vec<Range<u64>> {
    ranges::coalesce(
        writes
            .iter()
            .map(|r| {
                (r.start / block_size * block_size)
                    ..(r.end.div_ceil(block_size) * block_size).min(capacity)
            })
            .collect(),
    )
}

#[test]
fn delta_is_exactly_the_blocks_written_between_even_after_the_base_is_deleted() {
    let mut w = World::new();
    let vol = w.create("pvc-d", 256 * MIB, None, None);
    let dev = w.dev(&vol);
    fill(&dev, 0..32 * MIB, 1);
    let s1 = w.snapshot("s1", &vol, &[]);
    // A backup tool that deletes each snapshot after its backup: the base
    // is gone before the target is taken.
    w.p().delete_snapshot(&s1).expect("delete base");

    let writes = [
        0..4096,
        5 * MIB..5 * MIB + 4096,
        (10 << 16)..(13 << 16),
        (13 << 16)..(14 << 16) + 4096,
        200 * MIB..201 * MIB,
        256 * MIB - 4096..256 * MIB,
    ];
    for (i, r) in writes.iter().enumerate() {
        fill(&dev, r.clone(), 10 + i as u8);
    }
    let s2 = w.snapshot("s2", &vol, &[]);
    let page = w.p().metadata_delta(&s1, &s2, 0).expect("delta");
    let rec = w
        .p()
        .list_snapshots(&Default::default())
        .expect("list")
        .0
        .into_iter()
        .next()
        .expect("s2 listed");
    let bs = u64::from(rec.block_size);
    assert_eq!(page.capacity, 256 * MIB);
    assert_eq!(
        page.ranges,
        expected_delta(&writes, bs, 256 * MIB),
        "block size {bs}"
    );

    // A plugin restart reads the kept map back from disk.
    w.start();
    let again = w
        .p()
        .metadata_delta(&s1, &s2, 0)
        .expect("delta after restart");
    assert_eq!(again.ranges, page.ranges);

    // Writes after s2 are not in the s1..s2 delta; s2..s3 has exactly them.
    w.p().delete_snapshot(&s2).expect("delete s2");
    fill(&dev, 100 * MIB..100 * MIB + 4096, 30);
    let s3 = w.snapshot("s3", &vol, &[]);
    let d23 = w.p().metadata_delta(&s2, &s3, 0).expect("delta s2..s3");
    assert_eq!(
        d23.ranges,
        expected_delta(
            std::slice::from_ref(&(100 * MIB..100 * MIB + 4096)),
            bs,
            256 * MIB
        )
    );
    let d13 = w.p().metadata_delta(&s1, &s3, 0).expect("delta s1..s3");
    let mut both = writes.to_vec();
    both.push(100 * MIB..100 * MIB + 4096);
    assert_eq!(d13.ranges, expected_delta(&both, bs, 256 * MIB));

    // Allocated: what was ever written, nothing of the untouched middle.
    let alloc = w.p().metadata_allocated(&s3, 0).expect("allocated");
    let covers = |o: u64| alloc.ranges.iter().any(|r| r.contains(&o));
    assert!(covers(0) && covers(31 * MIB) && covers(200 * MIB) && covers(100 * MIB));
    assert!(!covers(150 * MIB), "{:?}", alloc.ranges);

    w.p().delete_snapshot(&s3).expect("delete s3");
    w.p().delete_volume(&w.vid(&vol)).expect("delete volume");
}

#[test]
fn group_snapshot_is_one_instant_across_volumes() {
    let w = World::new();
    let a = w.create("pvc-ga", 32 * MIB, None, None);
    let b = w.create("pvc-gb", 32 * MIB, None, None);
    let (da, db) = (w.dev(&a), w.dev(&b));
    fill(&da, 0..16 * MIB, 1);
    fill(&db, 0..16 * MIB, 3);
    let (group, members) = w
        .p()
        .create_group("g1", &[w.vid(&a), w.vid(&b)], &HashMap::new())
        .expect("group snapshot");
    assert_eq!(
        w.control.snapshot_collect().expect("collect").len(),
        1,
        "one kernel snapshot"
    );
    assert_eq!(members.len(), 2);
    fill(&da, 0..16 * MIB, 2);
    fill(&db, 8 * MIB..24 * MIB, 4);
    for m in &members {
        let id = w.p().snapshot_id(m).to_string();
        let restored = w.create(
            &format!("r-{}", m.volume),
            32 * MIB,
            Some(Source::Snapshot(id)),
            None,
        );
        let v = if m.volume == a.local { 1 } else { 3 };
        verify(&reopen(&w.dev(&restored)), 0..32 * MIB, |blk| {
            (blk * 4096 < 16 * MIB).then_some(v)
        });
        w.p()
            .delete_volume(&w.vid(&restored))
            .expect("delete restored");
    }
    let gid = w.p().group_id(&group).to_string();
    // Members go with the group only.
    let member = w.p().snapshot_id(&members[0]).to_string();
    assert!(matches!(
        w.p().delete_snapshot(&member),
        Err(Error::Precondition(_))
    ));
    w.p().delete_group(&gid, &[]).expect("delete group");
    assert!(w.control.snapshot_collect().expect("collect").is_empty());
    w.p().delete_volume(&w.vid(&a)).expect("delete a");
    w.p().delete_volume(&w.vid(&b)).expect("delete b");
}

#[test]
fn clone_copies_one_instant_of_a_volume_in_use() {
    let w = World::new();
    let src = w.create("pvc-src", 32 * MIB, None, None);
    fill(&w.dev(&src), 0..32 * MIB, 5);
    let clone = w.create(
        "pvc-clone",
        32 * MIB,
        Some(Source::Volume(w.vid(&src))),
        None,
    );
    verify(&reopen(&w.dev(&clone)), 0..32 * MIB, |_| Some(5));
    assert!(
        w.control.snapshot_collect().expect("collect").is_empty(),
        "the temporary snapshot is released"
    );
    w.p().delete_volume(&w.vid(&clone)).expect("delete clone");
    w.p().delete_volume(&w.vid(&src)).expect("delete source");
}

#[test]
fn overflow_loses_the_snapshot_never_the_data() {
    let w = World::new();
    let vol = w.create("pvc-o", 256 * MIB, None, None);
    let dev = w.dev(&vol);
    fill(&dev, 0..200 * MIB, 1);
    let snap = w.snapshot("s-small", &vol, &[("diffStorageLimit", "64Mi")]);
    // Rewriting 200 MiB needs 200 MiB of copies; the storage holds 64.
    fill(&dev, 0..200 * MIB, 2);
    verify(&reopen(&dev), 0..200 * MIB, |_| Some(2));
    let (list, _) = w.p().list_snapshots(&Default::default()).expect("list");
    let lost = list[0].lost.as_ref().expect("lost after overflow");
    assert_eq!(lost.reason, LostReason::Overflow, "{lost:?}");
    assert!(matches!(
        w.p().metadata_allocated(&snap, 0),
        Err(Error::Unavailable(_))
    ));
    // The volume can be snapshotted again (the corrupted one is released),
    // and the lost record stays until deleted.
    let s2 = w.snapshot("s-next", &vol, &[]);
    w.p().delete_snapshot(&snap).expect("delete lost");
    w.p().delete_snapshot(&s2).expect("delete s2");
    w.p().delete_volume(&w.vid(&vol)).expect("delete volume");
}

#[test]
fn restart_recovers_held_snapshots_and_loop_devices() {
    let mut w = World::new();
    let vol = w.create("pvc-rs", 32 * MIB, None, None);
    fill(&w.dev(&vol), 0..4 * MIB, 1);
    let snap = w.snapshot("s", &vol, &[]);
    let before = w.p().device_of(&vol).expect("device");
    w.start();
    assert_eq!(
        w.p().device_of(&vol).expect("device"),
        before,
        "same loop device"
    );
    let (list, _) = w.p().list_snapshots(&Default::default()).expect("list");
    assert!(list[0].lost.is_none(), "still held by the kernel");
    let restored = w.create(
        "pvc-rs2",
        32 * MIB,
        Some(Source::Snapshot(snap.clone())),
        None,
    );
    verify(&reopen(&w.dev(&restored)), 0..8 * MIB, |b| {
        (b * 4096 < 4 * MIB).then_some(1)
    });
    w.p()
        .delete_volume(&w.vid(&restored))
        .expect("delete restored");
    w.p().delete_snapshot(&snap).expect("delete snapshot");
    w.p().delete_volume(&w.vid(&vol)).expect("delete volume");
}

#[test]
fn static_device_volume_snapshots_and_is_zeroed_on_delete() {
    let w = World::new();
    let vol = w.create("pvc-raw", 64 * MIB, None, Some(BackendKind::Device));
    assert_eq!(vol.location, "disk-b");
    let dev = w.dev(&vol);
    fill(&dev, 0..4 * MIB, 7);
    let s1 = w.snapshot("raw-1", &vol, &[]);
    w.p().delete_snapshot(&s1).expect("delete");
    fill(&dev, 8 * MIB..9 * MIB, 8);
    let s2 = w.snapshot("raw-2", &vol, &[]);
    let d = w.p().metadata_delta(&s1, &s2, 0).expect("delta");
    let bs = u64::from(w.p().list_snapshots(&Default::default()).expect("list").0[0].block_size);
    assert_eq!(
        d.ranges,
        expected_delta(std::slice::from_ref(&(8 * MIB..9 * MIB)), bs, vol.capacity)
    );
    // Nothing is known of a raw device's content before it became a
    // volume: allocated is the whole device.
    let a = w.p().metadata_allocated(&s2, 0).expect("allocated");
    assert_eq!(
        a.ranges,
        std::iter::once(0..vol.capacity).collect::<Vec<_>>()
    );
    // The only static device is taken.
    let other = w.p().create_volume(&CreateVolume {
        name: "pvc-raw-2".into(),
        required: MIB,
        limit: 0,
        backend: Some(BackendKind::Device),
        source: None,
    });
    assert!(matches!(other, Err(Error::Exhausted(_))), "{other:?}");
    w.p().delete_snapshot(&s2).expect("delete");
    w.p().delete_volume(&w.vid(&vol)).expect("delete volume");
    drop(dev);
    // The zeroing runs on a thread of its own and keeps the device taken:
    // it is handed out again only once zeroed, so the next volume on it
    // must read zeros.
    let again = std::iter::repeat_with(|| {
        w.p().create_volume(&CreateVolume {
            name: "pvc-raw-3".into(),
            required: MIB,
            limit: 0,
            backend: Some(BackendKind::Device),
            source: None,
        })
    })
    .take(600)
    .find_map(|r| match r {
        Err(Error::Exhausted(_)) => {
            std::thread::sleep(std::time::Duration::from_millis(100));
            None
        }
        other => Some(other),
    })
    .expect("the device zeroed within 60 s")
    .expect("create on the zeroed device");
    assert_eq!(again.location, "disk-b");
    verify(&reopen(&w.dev(&again)), 0..16 * MIB, |_| None);
}

#[test]
fn filesystem_stage_publish_and_expand() {
    use csi::node_server::Node;
    use csi::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
    use csi_proto::csi::v1 as csi;
    use tonic::Request;

    let w = World::new();
    let vol = w.create("pvc-fs", 64 * MIB, None, None);
    let vid = w.vid(&vol);
    let node = blksnap_node_plugin::node::NodeService::new(Arc::clone(w.p()), 0, &w.root)
        .expect("node service");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cap = csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            mount_flags: vec!["noatime".into()],
            volume_mount_group: String::new(),
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    };
    let staging = w.root.join("state/staging");
    let target = w.root.join("state/target");
    let s = |p: &Path| p.to_str().expect("utf-8").to_owned();
    let stage = csi::NodeStageVolumeRequest {
        volume_id: vid.clone(),
        staging_target_path: s(&staging),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    rt.block_on(node.node_stage_volume(Request::new(stage.clone())))
        .expect("stage");
    // Staging twice is fine.
    rt.block_on(node.node_stage_volume(Request::new(stage.clone())))
        .expect("stage again");
    let publish = csi::NodePublishVolumeRequest {
        volume_id: vid.clone(),
        staging_target_path: s(&staging),
        target_path: s(&target),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    rt.block_on(node.node_publish_volume(Request::new(publish.clone())))
        .expect("publish");
    std::fs::write(target.join("hello"), b"from a pod").expect("write through the bind mount");
    let stats = rt
        .block_on(
            node.node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
                volume_id: vid.clone(),
                volume_path: s(&target),
                staging_target_path: String::new(),
            })),
        )
        .expect("stats")
        .into_inner();
    let total_before = stats.usage[0].total;
    assert!(total_before > 0 && total_before <= 64 * MIB as i64);

    // Grow: the controller grows the device, the node the file system.
    w.p()
        .expand_volume(&vid.parse().expect("id"), 128 * MIB, 0)
        .expect("controller expand");
    rt.block_on(
        node.node_expand_volume(Request::new(csi::NodeExpandVolumeRequest {
            volume_id: vid.clone(),
            volume_path: s(&target),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })),
    )
    .expect("node expand");
    let stats = rt
        .block_on(
            node.node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
                volume_id: vid.clone(),
                volume_path: s(&target),
                staging_target_path: String::new(),
            })),
        )
        .expect("stats")
        .into_inner();
    assert!(
        stats.usage[0].total > total_before + 32 * MIB as i64,
        "file system grew: {} -> {}",
        total_before,
        stats.usage[0].total
    );
    assert_eq!(
        std::fs::read(target.join("hello")).expect("read"),
        b"from a pod"
    );

    rt.block_on(
        node.node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
            volume_id: vid.clone(),
            target_path: s(&target),
        })),
    )
    .expect("unpublish");
    assert!(!target.exists());
    rt.block_on(
        node.node_unstage_volume(Request::new(csi::NodeUnstageVolumeRequest {
            volume_id: vid.clone(),
            staging_target_path: s(&staging),
        })),
    )
    .expect("unstage");

    // The same volume as a raw block device.
    let block = csi::VolumeCapability {
        access_type: Some(AccessType::Block(csi::volume_capability::BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    };
    let dev_target = w.root.join("state/block-target");
    rt.block_on(
        node.node_publish_volume(Request::new(csi::NodePublishVolumeRequest {
            target_path: s(&dev_target),
            volume_capability: Some(block),
            ..publish
        })),
    )
    .expect("publish block");
    let meta = std::fs::metadata(&dev_target).expect("stat");
    assert!(std::os::unix::fs::FileTypeExt::is_block_device(
        &meta.file_type()
    ));
    let stats = rt
        .block_on(
            node.node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
                volume_id: vid.clone(),
                volume_path: s(&dev_target),
                staging_target_path: String::new(),
            })),
        )
        .expect("block stats")
        .into_inner();
    assert_eq!(stats.usage[0].total, 128 * MIB as i64);
    rt.block_on(
        node.node_unpublish_volume(Request::new(csi::NodeUnpublishVolumeRequest {
            volume_id: vid.clone(),
            target_path: s(&dev_target),
        })),
    )
    .expect("unpublish block");
    assert!(!dev_target.exists());
    w.p().delete_volume(&vid).expect("delete volume");
}

#[test]
fn after_a_reboot_loops_are_bound_again_and_old_snapshots_are_lost() {
    let mut w = World::new();
    let vol = w.create("pvc-rb", 32 * MIB, None, None);
    fill(&w.dev(&vol), 0..8 * MIB, 1);
    let before = w.snapshot("before", &vol, &[]);

    // What a reboot leaves: no kernel snapshots, no trackers, no loop
    // devices; the pool files and the plugin's records stay.
    w.plugin = None;
    cleanup(&w.control, &w.root.join("none"), &[&w.data_b]);
    let file = w.root.join("pool/volumes").join(&vol.location);
    for dev in loop_device::find(&file).expect("sysfs") {
        {
            // Closed before the unbind: the loop driver defers LOOP_CLR_FD
            // while anyone else has the device open.
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&dev)
                .expect("open loop");
            match w.control.detach(&f) {
                Ok(()) | Err(blksnap::Error::NotAttached { .. }) => {}
                Err(e) => panic!("detach tracker of {}: {e}", dev.display()),
            }
        }
        loop_device::detach(&dev).expect("unbind loop");
    }
    let start = std::time::Instant::now();
    while !loop_device::find(&file).expect("sysfs").is_empty() {
        assert!(start.elapsed().as_secs() < 10, "loop device still bound");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    w.start();

    // Bound and tracked again, content intact.
    assert_eq!(loop_device::find(&file).expect("sysfs").len(), 1);
    verify(&reopen(&w.dev(&vol)), 0..16 * MIB, |b| {
        (b * 4096 < 8 * MIB).then_some(1)
    });
    let (list, _) = w.p().list_snapshots(&Default::default()).expect("list");
    let lost = list[0].lost.as_ref().expect("lost across the reboot");
    assert_eq!(lost.reason, LostReason::KernelForgot);
    assert!(matches!(
        w.p().create_volume(&CreateVolume {
            name: "from-lost".into(),
            required: 32 * MIB,
            limit: 0,
            backend: None,
            source: Some(Source::Snapshot(before.clone())),
        }),
        Err(Error::Precondition(_))
    ));
    // A new snapshot works; a delta from before the reboot is refused (the
    // tracker's new generation), so a backup tool falls back to a full one.
    let after = w.snapshot("after", &vol, &[]);
    assert!(matches!(
        w.p().metadata_delta(&before, &after, 0),
        Err(Error::Precondition(_))
    ));
    w.p().delete_snapshot(&before).expect("delete lost");
    w.p().delete_snapshot(&after).expect("delete");
    w.p().delete_volume(&w.vid(&vol)).expect("delete volume");
}

#[test]
fn difference_storage_on_the_snapshotted_device_is_refused() {
    let mut w = World::new();
    let vol = w.create("pvc-st", 64 * MIB, None, Some(BackendKind::Device));
    let dev = w.p().device_of(&vol).expect("device");
    // The operator points the storage directory at a file system on the
    // very device that becomes a volume.
    let mnt = w.root.join("state/on-volume");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    mkfs_mount(&dev, &mnt).unwrap_or_else(|e| panic!("{e}"));
    w.storage = mnt.clone();
    w.start();
    let r = w
        .p()
        .create_snapshot("s", &w.p().volume_id(&vol), &HashMap::new());
    assert!(matches!(r, Err(Error::Precondition(_))), "{r:?}");
    assert!(w.control.snapshot_collect().expect("collect").is_empty());
    run("umount", &[mnt.to_str().expect("utf-8")]);
    w.storage = w.root.join("diff");
    w.start();
    w.p().delete_volume(&w.vid(&vol)).expect("delete volume");
}
