//! The Node service against real devices, file systems and mounts: what
//! must never be formatted, xfs copies beside their source, one call per
//! volume at a time, CSI answers for mounted targets, path safety.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blksnap_node_plugin::node::NodeService;
use blksnap_node_plugin::state::{Source, VolumeRecord};
use csi::node_server::Node;
use csi::volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume, MountVolume};
use csi_proto::csi::v1 as csi;
use tonic::{Code, Request};

use super::{run, World, MIB};

/// The Node service of `w`'s plugin, with `w`'s root as the kubelet's
/// directory.
fn node(w: &World) -> NodeService {
    NodeService::new(Arc::clone(w.p()), 0, &w.root).expect("node service")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

fn code<T>(r: Result<T, tonic::Status>) -> Code {
    r.err().map_or(Code::Ok, |s| s.code())
}

/// A call's outcome without its response.
fn done<T>(r: Result<T, tonic::Status>) -> Result<(), tonic::Status> {
    r.map(|_| ())
}

fn text(p: &Path) -> String {
    p.to_str().expect("utf-8").to_owned()
}

fn mount_cap(fs_type: &str, mode: Mode) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: fs_type.into(),
            mount_flags: vec![],
            volume_mount_group: String::new(),
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn block_cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn stage_req(
    vid: &str,
    staging: &Path,
    cap: csi::VolumeCapability,
) -> Request<csi::NodeStageVolumeRequest> {
    Request::new(csi::NodeStageVolumeRequest {
        volume_id: vid.into(),
        staging_target_path: text(staging),
        volume_capability: Some(cap),
        ..Default::default()
    })
}

fn unstage_req(vid: &str, staging: &Path) -> Request<csi::NodeUnstageVolumeRequest> {
    Request::new(csi::NodeUnstageVolumeRequest {
        volume_id: vid.into(),
        staging_target_path: text(staging),
    })
}

fn publish_req(
    vid: &str,
    staging: &Path,
    target: &Path,
    cap: csi::VolumeCapability,
    readonly: bool,
) -> Request<csi::NodePublishVolumeRequest> {
    Request::new(csi::NodePublishVolumeRequest {
        volume_id: vid.into(),
        staging_target_path: text(staging),
        target_path: text(target),
        volume_capability: Some(cap),
        readonly,
        ..Default::default()
    })
}

fn unpublish_req(vid: &str, target: &Path) -> Request<csi::NodeUnpublishVolumeRequest> {
    Request::new(csi::NodeUnpublishVolumeRequest {
        volume_id: vid.into(),
        target_path: text(target),
    })
}

fn expand_req(
    vid: &str,
    path: &Path,
    cap: csi::VolumeCapability,
) -> Request<csi::NodeExpandVolumeRequest> {
    Request::new(csi::NodeExpandVolumeRequest {
        volume_id: vid.into(),
        volume_path: text(path),
        volume_capability: Some(cap),
        ..Default::default()
    })
}

fn device_path(w: &World, vol: &VolumeRecord) -> PathBuf {
    w.p().device_of(vol).expect("device")
}

/// The first `len` bytes of `dev`, read past the page cache's copy.
fn head(dev: &Path, len: usize) -> Vec<u8> {
    let f = File::open(dev).expect("open device");
    let _ = nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, 0).expect("read device");
    buf
}

fn is_mounted(p: &Path) -> bool {
    blksnap_node_plugin::mount::mount_at(p)
        .expect("mountinfo")
        .is_some()
}

#[test]
fn a_device_with_any_signature_is_never_formatted_nor_one_staged_read_only() {
    let w = World::new();
    let node = node(&w);
    let rt = runtime();
    let staging = w.root.join("state/fmt-staging");
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);

    // A restored snapshot of a partitioned block volume: a partition
    // table and nothing else that blkid names a TYPE.
    let parted = w.create("pvc-parted", 64 * MIB, None, None);
    let dev = device_path(&w, &parted);
    let mut sfdisk = std::process::Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&dev)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk");
    std::io::Write::write_all(
        sfdisk.stdin.as_mut().expect("stdin"),
        b"label: dos\n,32M,L\n",
    )
    .expect("partition script");
    drop(sfdisk.stdin.take());
    assert!(sfdisk.wait().expect("sfdisk").success(), "sfdisk failed");

    // A swap area.
    let swap = w.create("pvc-swap", 64 * MIB, None, None);
    let swap_dev = device_path(&w, &swap);
    run("mkswap", &[&text(&swap_dev)]);

    for (what, vol, dev) in [
        ("partition table", &parted, &dev),
        ("swap", &swap, &swap_dev),
    ] {
        let before = head(dev, MIB as usize);
        let got =
            rt.block_on(node.node_stage_volume(stage_req(&w.vid(vol), &staging, cap.clone())));
        assert_eq!(code(got), Code::FailedPrecondition, "{what}");
        assert!(
            before == head(dev, MIB as usize),
            "{what}: the device was written"
        );
        assert!(!is_mounted(&staging), "{what}: mounted");
    }

    // A read-only stage of an empty volume has nothing to mount and must
    // not make a file system on a volume it was given read-only.
    let empty = w.create("pvc-empty", 64 * MIB, None, None);
    let empty_dev = device_path(&w, &empty);
    let got = rt.block_on(node.node_stage_volume(stage_req(
        &w.vid(&empty),
        &staging,
        mount_cap("ext4", Mode::SingleNodeReaderOnly),
    )));
    assert_eq!(code(got), Code::FailedPrecondition, "read-only stage");
    assert!(
        head(&empty_dev, MIB as usize).iter().all(|b| *b == 0),
        "formatted"
    );
    assert!(!is_mounted(&staging));

    for v in [&parted, &swap, &empty] {
        w.p().delete_volume(&w.vid(v)).expect("delete volume");
    }
}

#[test]
fn xfs_restores_and_clones_mount_beside_their_source() {
    let w = World::new();
    let node = node(&w);
    let rt = runtime();
    let cap = mount_cap("xfs", Mode::SingleNodeWriter);
    // mkfs.xfs wants 300 MB at least.
    let size = 320 * MIB;
    let src = w.create("pvc-xfs", size, None, None);
    let src_staging = w.root.join("state/xfs-src");
    rt.block_on(node.node_stage_volume(stage_req(&w.vid(&src), &src_staging, cap.clone())))
        .expect("stage source");
    std::fs::write(src_staging.join("hello"), b"xfs data").expect("write");
    run("sync", &[]);

    let snap = w.snapshot("xfs-snap", &src, &[]);
    let restored = w.create(
        "pvc-xfs-r",
        size,
        Some(Source::Snapshot(snap.clone())),
        None,
    );
    // The clone's temporary snapshot is taken beside the held one.
    let clone = w.create("pvc-xfs-c", size, Some(Source::Volume(w.vid(&src))), None);
    w.p().delete_snapshot(&snap).expect("delete snapshot");
    for (what, vol) in [("restore", &restored), ("clone", &clone)] {
        let staging = w.root.join(format!("state/xfs-{what}"));
        rt.block_on(node.node_stage_volume(stage_req(&w.vid(vol), &staging, cap.clone())))
            .unwrap_or_else(|e| panic!("stage the {what} beside its source: {e}"));
        assert_eq!(
            std::fs::read(staging.join("hello")).expect("read"),
            b"xfs data",
            "{what}"
        );
        rt.block_on(node.node_unstage_volume(unstage_req(&w.vid(vol), &staging)))
            .expect("unstage");
    }
    rt.block_on(node.node_unstage_volume(unstage_req(&w.vid(&src), &src_staging)))
        .expect("unstage source");
    for v in [&restored, &clone, &src] {
        w.p().delete_volume(&w.vid(v)).expect("delete volume");
    }
}

/// Whether a process named `comm` runs with `arg` among its arguments.
fn running(comm: &str, arg: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let p = e.path();
        std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == comm)
            && std::fs::read(p.join("cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
    })
}

#[test]
fn node_calls_of_one_volume_exclude_each_other() {
    let w = World::new();
    let node = Arc::new(node(&w));
    let rt = runtime();

    // While NodeStage makes the file system, the volume's other calls wait.
    let vol = w.create("pvc-busy", 320 * MIB, None, None);
    let vid = w.vid(&vol);
    let dev = text(&device_path(&w, &vol));
    let staging = w.root.join("state/busy-staging");
    let target = w.root.join("state/busy-target");
    let cap = mount_cap("xfs", Mode::SingleNodeWriter);
    let stage = {
        let (node, vid, staging, cap) =
            (Arc::clone(&node), vid.clone(), staging.clone(), cap.clone());
        std::thread::spawn(move || {
            runtime().block_on(node.node_stage_volume(stage_req(&vid, &staging, cap)))
        })
    };
    let start = Instant::now();
    while !running("mkfs.xfs", &dev) {
        assert!(!stage.is_finished(), "the stage ended before mkfs was seen");
        assert!(start.elapsed() < Duration::from_secs(60), "no mkfs");
        std::thread::sleep(Duration::from_millis(1));
    }
    let unstage = rt.block_on(node.node_unstage_volume(unstage_req(&vid, &staging)));
    let unpublish = rt.block_on(node.node_unpublish_volume(unpublish_req(&vid, &target)));
    let publish = rt.block_on(node.node_publish_volume(publish_req(
        &vid,
        &staging,
        &target,
        cap.clone(),
        false,
    )));
    assert!(!stage.is_finished(), "the calls did not overlap the stage");
    assert_eq!(code(unstage), Code::Aborted, "unstage during the stage");
    assert_eq!(code(unpublish), Code::Aborted, "unpublish during the stage");
    assert_eq!(code(publish), Code::Aborted, "publish during the stage");
    stage.join().expect("stage thread").expect("stage");
    assert!(is_mounted(&staging), "the stage's mount stayed");
    rt.block_on(node.node_unstage_volume(unstage_req(&vid, &staging)))
        .expect("unstage");
    w.p().delete_volume(&vid).expect("delete volume");
}

#[test]
fn a_clone_holds_off_none_of_its_sources_node_calls() {
    let w = World::new();
    let node = node(&w);
    let rt = runtime();
    let src = w.create("pvc-busy-src", 256 * MIB, None, None);
    let src_vid = w.vid(&src);
    let src_staging = w.root.join("state/src-staging");
    let src_target = w.root.join("state/src-target");
    let ext4 = mount_cap("ext4", Mode::SingleNodeWriter);
    rt.block_on(node.node_stage_volume(stage_req(&src_vid, &src_staging, ext4.clone())))
        .expect("stage source");
    {
        // Most of the volume in use, so the copy has much to read and write.
        let f = File::create(src_staging.join("data")).expect("create");
        let buf = vec![0xa5u8; MIB as usize];
        for off in (0..192 * MIB).step_by(MIB as usize) {
            f.write_all_at(&buf, off).expect("write");
        }
        f.sync_all().expect("fsync");
    }
    let copy = {
        let (p, src_vid) = (Arc::clone(w.p()), src_vid.clone());
        std::thread::spawn(move || {
            p.create_volume(&blksnap_node_plugin::plugin::CreateVolume {
                name: "pvc-busy-clone".into(),
                required: 256 * MIB,
                limit: 0,
                backend: None,
                source: Some(Source::Volume(src_vid)),
            })
        })
    };
    let start = Instant::now();
    while w.control.snapshot_collect().expect("collect").is_empty() {
        assert!(
            !copy.is_finished(),
            "the clone ended before its snapshot was seen"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no temporary snapshot"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let calls = [
        (
            "unstage",
            done(rt.block_on(node.node_unstage_volume(unstage_req(&src_vid, &src_staging)))),
        ),
        (
            "stage",
            done(rt.block_on(node.node_stage_volume(stage_req(
                &src_vid,
                &src_staging,
                ext4.clone(),
            )))),
        ),
        (
            "publish",
            done(rt.block_on(node.node_publish_volume(publish_req(
                &src_vid,
                &src_staging,
                &src_target,
                ext4.clone(),
                false,
            )))),
        ),
        (
            "expand",
            done(rt.block_on(node.node_expand_volume(expand_req(
                &src_vid,
                &src_target,
                ext4.clone(),
            )))),
        ),
        (
            "unpublish",
            done(rt.block_on(node.node_unpublish_volume(unpublish_req(&src_vid, &src_target)))),
        ),
    ];
    assert!(!copy.is_finished(), "the calls did not overlap the copy");
    for (what, got) in calls {
        if let Err(e) = got {
            panic!("{what} of the source during the clone: {e}");
        }
    }
    let clone = copy.join().expect("clone thread").expect("clone");
    rt.block_on(node.node_unstage_volume(unstage_req(&src_vid, &src_staging)))
        .expect("unstage source");
    for v in [&clone, &src] {
        w.p().delete_volume(&w.vid(v)).expect("delete volume");
    }
}

#[test]
fn publish_answers_already_exists_for_another_volume_or_mode_at_the_target() {
    let w = World::new();
    let node = node(&w);
    let rt = runtime();
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let a = w.create("pvc-pa", 64 * MIB, None, None);
    let b = w.create("pvc-pb", 64 * MIB, None, None);
    let (va, vb) = (w.vid(&a), w.vid(&b));
    let (sa, sb) = (
        w.root.join("state/pa-staging"),
        w.root.join("state/pb-staging"),
    );
    let target = w.root.join("state/p-target");
    for (v, s) in [(&va, &sa), (&vb, &sb)] {
        rt.block_on(node.node_stage_volume(stage_req(v, s, cap.clone())))
            .expect("stage");
    }
    rt.block_on(node.node_publish_volume(publish_req(&va, &sa, &target, cap.clone(), false)))
        .expect("publish a");
    // The same again is fine.
    rt.block_on(node.node_publish_volume(publish_req(&va, &sa, &target, cap.clone(), false)))
        .expect("publish a again");
    for (what, req) in [
        (
            "another volume",
            publish_req(&vb, &sb, &target, cap.clone(), false),
        ),
        (
            "read-only",
            publish_req(&va, &sa, &target, cap.clone(), true),
        ),
    ] {
        assert_eq!(
            code(rt.block_on(node.node_publish_volume(req))),
            Code::AlreadyExists,
            "{what}"
        );
    }
    // A staging path that holds another volume is not this one's.
    let other_target = w.root.join("state/p-target-2");
    assert_eq!(
        code(rt.block_on(node.node_publish_volume(publish_req(
            &va,
            &sb,
            &other_target,
            cap.clone(),
            false
        )))),
        Code::FailedPrecondition,
        "staging path of another volume"
    );
    // Staging again at a staged path with another mode is no match either.
    assert_eq!(
        code(rt.block_on(node.node_stage_volume(stage_req(
            &va,
            &sa,
            mount_cap("ext4", Mode::SingleNodeReaderOnly)
        )))),
        Code::AlreadyExists,
        "stage read-only over a writable stage"
    );

    // Nor does NodeExpand of one volume grow what another has mounted.
    assert_eq!(
        code(rt.block_on(node.node_expand_volume(expand_req(&vb, &target, cap.clone())))),
        Code::NotFound,
        "expand at another volume's target"
    );

    // The same for raw block targets.
    let block_target = w.root.join("state/p-block");
    rt.block_on(node.node_publish_volume(publish_req(&va, &sa, &block_target, block_cap(), false)))
        .expect("publish block");
    for (what, req) in [
        (
            "another volume",
            publish_req(&vb, &sb, &block_target, block_cap(), false),
        ),
        (
            "read-only",
            publish_req(&va, &sa, &block_target, block_cap(), true),
        ),
    ] {
        assert_eq!(
            code(rt.block_on(node.node_publish_volume(req))),
            Code::AlreadyExists,
            "block {what}"
        );
    }

    for (v, t) in [(&va, &target), (&va, &block_target)] {
        rt.block_on(node.node_unpublish_volume(unpublish_req(v, t)))
            .expect("unpublish");
    }
    for (v, s) in [(&va, &sa), (&vb, &sb)] {
        rt.block_on(node.node_unstage_volume(unstage_req(v, s)))
            .expect("unstage");
    }
    for v in [&va, &vb] {
        w.p().delete_volume(v).expect("delete volume");
    }
}

#[test]
fn single_node_single_writer_allows_one_target_and_multi_writer_several() {
    let w = World::new();
    let node = node(&w);
    let rt = runtime();
    let single = mount_cap("ext4", Mode::SingleNodeSingleWriter);
    let multi = mount_cap("ext4", Mode::SingleNodeMultiWriter);
    let v = w.create("pvc-sw", 64 * MIB, None, None);
    let vid = w.vid(&v);
    let staging = w.root.join("state/sw-staging");
    let [t1, t2, t3] = ["sw-1", "sw-2", "sw-3"].map(|t| w.root.join("state").join(t));
    rt.block_on(node.node_stage_volume(stage_req(&vid, &staging, single.clone())))
        .expect("stage");
    let publish = |t: &Path, cap: &csi::VolumeCapability| {
        done(rt.block_on(node.node_publish_volume(publish_req(
            &vid,
            &staging,
            t,
            cap.clone(),
            false,
        ))))
    };
    publish(&t1, &single).expect("first target");
    publish(&t1, &single).expect("the same target again");
    assert_eq!(
        code(publish(&t2, &single)),
        Code::FailedPrecondition,
        "a second target of a single-writer volume"
    );
    assert!(!is_mounted(&t2), "the refused target is left unmounted");
    // Multi-writer: as many targets as asked.
    publish(&t2, &multi).expect("a second target, multi-writer");
    publish(&t3, &multi).expect("a third target, multi-writer");
    for t in [&t2, &t3] {
        rt.block_on(node.node_unpublish_volume(unpublish_req(&vid, t)))
            .expect("unpublish");
    }
    // Once the only other target is gone, a single-writer one is fine.
    rt.block_on(node.node_unpublish_volume(unpublish_req(&vid, &t1)))
        .expect("unpublish");
    publish(&t2, &single).expect("the one target after the other went");
    rt.block_on(node.node_unpublish_volume(unpublish_req(&vid, &t2)))
        .expect("unpublish");
    rt.block_on(node.node_unstage_volume(unstage_req(&vid, &staging)))
        .expect("unstage");

    // Raw block: the device node's binds are the publications.
    let block = |mode: Mode| csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        ..block_cap()
    };
    let [b1, b2] = ["sw-b1", "sw-b2"].map(|t| w.root.join("state").join(t));
    publish(&b1, &block(Mode::SingleNodeSingleWriter)).expect("first block target");
    // The kubelet binds a published raw block node once more for the pod
    // (its volumeDevices/.../dev/<pod> file); a publish again at the
    // target is still a repeat.
    let kubelet_bind = w.root.join("state/sw-kubelet-bind");
    File::create(&kubelet_bind).expect("bind target");
    blksnap_node_plugin::mount::bind(&b1, &kubelet_bind, false).expect("the kubelet's bind");
    publish(&b1, &block(Mode::SingleNodeSingleWriter)).expect("the block target again");
    assert_eq!(
        code(publish(&b2, &block(Mode::SingleNodeSingleWriter))),
        Code::FailedPrecondition,
        "a second block target of a single-writer volume"
    );
    rt.block_on(node.node_unpublish_volume(unpublish_req(&vid, &b1)))
        .expect("unpublish block");
    assert_eq!(
        code(publish(&b2, &block(Mode::SingleNodeSingleWriter))),
        Code::FailedPrecondition,
        "the kubelet's bind of the other target still holds the volume"
    );
    blksnap_node_plugin::mount::unmount_all(&kubelet_bind).expect("unmount the kubelet's bind");
    publish(&b2, &block(Mode::SingleNodeSingleWriter)).expect("the one block target");
    rt.block_on(node.node_unpublish_volume(unpublish_req(&vid, &b2)))
        .expect("unpublish block");
    w.p().delete_volume(&vid).expect("delete volume");
}

#[test]
fn unpublish_removes_nothing_outside_the_kubelet_directory() {
    let w = World::new();
    let node = node(&w);
    let rt = runtime();
    let vol = w.create("pvc-paths", 64 * MIB, None, None);
    let vid = w.vid(&vol);

    // Files outside the kubelet's directory, or reached through `..`,
    // are not the plugin's to remove.
    let outside = PathBuf::from("/tmp/blksnap-outside");
    let _ = std::fs::remove_dir_all(&outside);
    std::fs::create_dir_all(outside.join("dir")).expect("mkdir");
    std::fs::write(outside.join("file"), b"keep").expect("write");
    let dotdot = w.root.join("state/../../blksnap-outside/file");
    for p in [outside.join("file"), outside.join("dir"), dotdot] {
        assert_eq!(
            code(rt.block_on(node.node_unpublish_volume(unpublish_req(&vid, &p)))),
            Code::InvalidArgument,
            "{}",
            p.display()
        );
    }
    assert!(outside.join("file").exists() && outside.join("dir").exists());
    std::fs::remove_dir_all(&outside).expect("clean up");
    w.p().delete_volume(&vid).expect("delete volume");
}

#[test]
fn unstage_of_a_hidden_mount_fails_instead_of_spinning() {
    let w = World::new();
    let node = node(&w);
    let rt = runtime();
    let vol = w.create("pvc-hidden", 64 * MIB, None, None);
    let vid = w.vid(&vol);

    // A staging mount another mount now hides: mountinfo lists it, but
    // its path leads into the covering file system, where umount finds
    // no mount point. Unstage must say so, not spin.
    let parent = w.root.join("state/hidden");
    let staging = parent.join("staging");
    rt.block_on(node.node_stage_volume(stage_req(
        &vid,
        &staging,
        mount_cap("ext4", Mode::SingleNodeWriter),
    )))
    .expect("stage");
    run("mount", &["-t", "tmpfs", "cover", &text(&parent)]);
    std::fs::create_dir(&staging).expect("mkdir in the cover");
    let unstage = {
        let (node, vid, staging) = (node.clone(), vid.clone(), staging.clone());
        std::thread::spawn(move || {
            runtime().block_on(node.node_unstage_volume(unstage_req(&vid, &staging)))
        })
    };
    let start = Instant::now();
    while !unstage.is_finished() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let finished = unstage.is_finished();
    // Uncovering lets a spinning unstage end too.
    run("umount", &[&text(&parent)]);
    assert!(finished, "unstage of a hidden mount does not return");
    assert_eq!(
        code(unstage.join().expect("unstage thread")),
        Code::Internal
    );
    assert!(is_mounted(&staging), "the hidden mount is still there");
    rt.block_on(node.node_unstage_volume(unstage_req(&vid, &staging)))
        .expect("unstage once uncovered");
    w.p().delete_volume(&vid).expect("delete volume");
}
