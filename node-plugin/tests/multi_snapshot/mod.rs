//! Several snapshots of one volume held at once, against the real module:
//! each record reads its own kernel snapshot (restore, delta, allocated),
//! deletes in any order, clones beside them, the module's limit and the
//! final code past it, and a restart that finds them all again. On a
//! module of interface 1.0 (run the suite with `--kmod-dir` at such a
//! source), one snapshot per volume and the same final code for a second.

use super::*;
use blksnap_node_api::ids::SnapshotId;
use blksnap_node_plugin::kernel::PerDevice;

/// Says that the running test is skipped, and why: written past libtest's
/// output capture, where the VM harness counts `skipped: ` lines.
fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

/// A world whose module serves `want`, a volume of `size` named `name`
/// in it, open, and the model of its blocks; `None`, after saying why,
/// for a module of the other interface.
fn setup(want: Interface, name: &str, size: u64) -> Option<(World, VolumeRecord, File, Model)> {
    let w = World::new();
    let have = w.interface();
    if have != want {
        skip(&format!(
            "this test is for a module of {want:?}; the loaded one is {have:?}"
        ));
        return None;
    }
    let vol = w.create(name, size, None, None);
    let dev = w.dev(&vol);
    Some((w, vol, dev, Model::new(size)))
}

/// The end of a test: no kernel snapshot is left, and the volume goes.
fn finish(w: &World, vol: &VolumeRecord) {
    assert!(w.control.snapshot_collect().expect("collect").is_empty());
    w.p().delete_volume(&w.vid(vol)).expect("delete volume");
}

/// One more snapshot of `vol`, and a clone of it, are refused with the
/// final code, by `limit`, with a message that says each of `says`; the
/// refused calls leave no kernel snapshot behind.
fn refused_past_the_limit(w: &World, vol: &VolumeRecord, limit: PerDevice, says: &[&str]) {
    let held = w.control.snapshot_collect().expect("collect").len();
    let refused = w
        .p()
        .create_snapshot("one-more", &w.p().volume_id(vol), &HashMap::new())
        .expect_err("past the limit");
    assert!(
        matches!(refused, Error::SnapshotLimit { limit: l, .. } if l == limit),
        "{refused:?}"
    );
    let status = tonic::Status::from(refused);
    // Final for csi-snapshotter (it retries RESOURCE_EXHAUSTED, ABORTED,
    // UNAVAILABLE and the like).
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    for want in says {
        assert!(status.message().contains(want), "{}", status.message());
    }
    let clone = w.p().create_volume(&CreateVolume {
        name: format!("{}-clone", vol.name),
        required: vol.capacity,
        limit: 0,
        backend: None,
        source: Some(Source::Volume(w.vid(vol))),
    });
    assert!(
        matches!(clone, Err(Error::SnapshotLimit { .. })),
        "{clone:?}"
    );
    assert_eq!(
        w.control.snapshot_collect().expect("collect").len(),
        held,
        "nothing left of the refused calls"
    );
}

/// What each 4 KiB block of a volume holds: a version of the test data
/// (`fill`) or zeros.
struct Model {
    blocks: Vec<Option<u8>>,
}

impl Model {
    fn new(size: u64) -> Model {
        Model {
            blocks: vec![None; (size / 4096) as usize],
        }
    }

    /// Writes version `v` over `range` of `dev`, and records it.
    fn write(&mut self, dev: &File, range: Range<u64>, v: u8) {
        fill(dev, range.clone(), v);
        for b in range.start / 4096..range.end / 4096 {
            self.blocks[b as usize] = Some(v);
        }
    }
}

/// Checks that `f` holds `moment` over `range`.
fn verify_moment(f: &File, range: Range<u64>, moment: &[Option<u8>]) {
    verify(f, range, |b| moment[b as usize]);
}

/// Restores `snap` into a new volume, checks it against `moment` and
/// deletes it again.
fn restore_is(w: &World, snap: &str, size: u64, moment: &[Option<u8>]) {
    let restored = w.create(
        &format!("r-{snap}"),
        size,
        Some(Source::Snapshot(snap.into())),
        None,
    );
    verify_moment(&reopen(&w.dev(&restored)), 0..size, moment);
    w.p()
        .delete_volume(&w.vid(&restored))
        .expect("delete restored");
}

fn kernel_of(snap: &str) -> blksnap::SnapshotId {
    blksnap::SnapshotId(snap.parse::<SnapshotId>().expect("snapshot id").kernel)
}

/// Tracking block size of `vol`'s change map.
fn block_size(w: &World, vol: &VolumeRecord) -> u64 {
    u64::from(
        w.control
            .cbt_info(&w.dev(vol))
            .expect("cbt info")
            .block_size,
    )
}

#[test]
fn three_snapshots_taken_at_different_moments_each_restore_to_their_own() {
    let size = 32 * MIB;
    let Some((w, vol, dev, mut m)) = setup(Interface::SeveralSnapshotsPerDevice, "pvc-m3", size)
    else {
        return;
    };
    m.write(&dev, 0..8 * MIB, 1);
    m.write(&dev, 20 * MIB..22 * MIB, 1);
    let s1 = w.snapshot("m1", &vol, &[]);
    let at1 = m.blocks.clone();
    let w12 = [
        2 * MIB..3 * MIB,
        10 * MIB..10 * MIB + 4096,
        21 * MIB..23 * MIB,
    ];
    for r in &w12 {
        m.write(&dev, r.clone(), 2);
    }
    let s2 = w.snapshot("m2", &vol, &[]);
    let at2 = m.blocks.clone();
    let w23 = [0..4096, 2 * MIB..2 * MIB + 8192, 30 * MIB..32 * MIB];
    for r in &w23 {
        m.write(&dev, r.clone(), 3);
    }
    let s3 = w.snapshot("m3", &vol, &[]);
    let at3 = m.blocks.clone();
    // After the last take: rewrites under all three.
    m.write(&dev, 0..16 * MIB, 4);
    assert_eq!(w.control.snapshot_collect().expect("collect").len(), 3);

    for (s, at) in [(&s1, &at1), (&s2, &at2), (&s3, &at3)] {
        restore_is(&w, s, size, at);
    }
    verify_moment(&reopen(&dev), 0..size, &m.blocks);

    // Deltas between any two of them, each from its own records.
    let bs = block_size(&w, &vol);
    let delta = |a: &str, b: &str| w.p().metadata_delta(a, b, 0).expect("delta").ranges;
    let mut w13 = w12.to_vec();
    w13.extend(w23.iter().cloned());
    assert_eq!(delta(&s1, &s3), expected_delta(&w13, bs, size), "1..3");
    assert_eq!(delta(&s1, &s2), expected_delta(&w12, bs, size), "1..2");
    assert_eq!(delta(&s2, &s3), expected_delta(&w23, bs, size), "2..3");
    // Allocated, each as of its own take: 30 MiB was first written after
    // the second.
    let covers = |s: &str, off: u64| {
        w.p()
            .metadata_allocated(s, 0)
            .expect("allocated")
            .ranges
            .iter()
            .any(|r| r.contains(&off))
    };
    assert!(!covers(&s1, 30 * MIB) && !covers(&s2, 30 * MIB) && covers(&s3, 30 * MIB));
    assert!(!covers(&s1, 10 * MIB) && covers(&s2, 10 * MIB));

    // Deleted in another order than taken: the middle one, then the
    // oldest; the others read on unchanged.
    w.p().delete_snapshot(&s2).expect("delete s2");
    restore_is(&w, &s1, size, &at1);
    restore_is(&w, &s3, size, &at3);
    assert_eq!(
        delta(&s1, &s3),
        expected_delta(&w13, bs, size),
        "1..3 without 2"
    );
    w.p().delete_snapshot(&s1).expect("delete s1");
    restore_is(&w, &s3, size, &at3);
    assert_eq!(
        delta(&s1, &s3),
        expected_delta(&w13, bs, size),
        "1..3 with the base deleted"
    );
    w.p().delete_snapshot(&s3).expect("delete s3");
    finish(&w, &vol);
}

#[test]
fn a_destroyed_snapshots_storage_counts_while_an_older_one_may_read_it() {
    let size = 32 * MIB;
    let Some((w, vol, dev, mut m)) = setup(Interface::SeveralSnapshotsPerDevice, "pvc-mg", size)
    else {
        return;
    };
    let gauges = || {
        let metrics = &w.p().metrics;
        (metrics.storage_used.get(), metrics.storage_limit.get())
    };
    let s1 = w.snapshot("g1", &vol, &[]);
    let at1 = m.blocks.clone();
    let s2 = w.snapshot("g2", &vol, &[]);
    let (_, limit) = gauges();
    assert!(limit > 0, "two storages reserved");
    // First writes after the newest take: their copies go to its storage
    // and serve both snapshots. The gauge is sampled by the event watch.
    m.write(&dev, 0..8 * MIB, 1);
    let start = std::time::Instant::now();
    while gauges().0 == 0 {
        assert!(start.elapsed().as_secs() < 60, "no copy counted after 60 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let used = gauges().0;

    // The newer one goes; the older one still reads those copies, so its
    // storage still counts, and nothing of it was freed.
    w.p().delete_snapshot(&s2).expect("delete s2");
    let (used_after, limit_after) = gauges();
    assert!(
        used_after >= used && limit_after == limit,
        "after the newer one's delete ({used_after}, {limit_after}), before ({used}, {limit})"
    );
    restore_is(&w, &s1, size, &at1);
    w.p().delete_snapshot(&s1).expect("delete s1");
    assert_eq!(gauges(), (0, 0), "nothing counted once both are gone");
    finish(&w, &vol);
}

#[test]
fn a_clone_while_snapshots_are_held_copies_now_and_leaves_them_be() {
    let size = 32 * MIB;
    let Some((w, vol, dev, mut m)) = setup(Interface::SeveralSnapshotsPerDevice, "pvc-mc", size)
    else {
        return;
    };
    m.write(&dev, 0..16 * MIB, 1);
    let s1 = w.snapshot("c1", &vol, &[]);
    let at1 = m.blocks.clone();
    m.write(&dev, 8 * MIB..24 * MIB, 2);
    let s2 = w.snapshot("c2", &vol, &[]);
    let at2 = m.blocks.clone();
    let w23 = [0..4 * MIB, 28 * MIB..29 * MIB];
    m.write(&dev, w23[0].clone(), 3);

    let clone = w.create(
        "pvc-mc-clone",
        size,
        Some(Source::Volume(w.vid(&vol))),
        None,
    );
    verify_moment(&reopen(&w.dev(&clone)), 0..size, &m.blocks);
    assert_eq!(
        w.control.snapshot_collect().expect("collect").len(),
        2,
        "the clone's temporary snapshot is released, the held ones stay"
    );
    restore_is(&w, &s1, size, &at1);
    restore_is(&w, &s2, size, &at2);

    // The clone's take used a change number: deltas stay exact across it.
    m.write(&dev, w23[1].clone(), 4);
    let s3 = w.snapshot("c3", &vol, &[]);
    let bs = block_size(&w, &vol);
    assert_eq!(
        w.p().metadata_delta(&s2, &s3, 0).expect("delta").ranges,
        expected_delta(&w23, bs, size)
    );
    assert_eq!(
        w.p().metadata_delta(&s1, &s2, 0).expect("delta").ranges,
        expected_delta(std::slice::from_ref(&(8 * MIB..24 * MIB)), bs, size)
    );
    for s in [&s3, &s1, &s2] {
        w.p().delete_snapshot(s).expect("delete snapshot");
    }
    w.p().delete_volume(&w.vid(&clone)).expect("delete clone");
    w.p().delete_volume(&w.vid(&vol)).expect("delete volume");
}

/// The i-th of the regions the limit test writes: 64 KiB every 256 KiB.
fn region(i: usize) -> Range<u64> {
    let start = i as u64 * 256 * 1024;
    start..start + 64 * 1024
}

#[test]
fn snapshots_up_to_the_module_limit_then_a_final_code_that_says_so() {
    let size = 16 * MIB;
    let Some((w, vol, dev, mut m)) = setup(Interface::SeveralSnapshotsPerDevice, "pvc-ml", size)
    else {
        return;
    };
    let limit = blksnap_node_plugin::kmod::parameter("snapshots_per_device_maximum")
        .expect("module parameter");
    let n = limit as usize;
    assert!(region(n).end <= size, "limit {limit} fits the test volume");
    let mut held: Vec<(String, Vec<Option<u8>>)> = Vec::new();
    for i in 0..n {
        // Region 0 is rewritten before every take, so each older snapshot
        // needs its own copy of it; region i+1 is new each time.
        let v = i as u8 + 1;
        m.write(&dev, region(0), v);
        m.write(&dev, region(i + 1), v);
        let s = w.snapshot(&format!("l{i}"), &vol, &[]);
        held.push((s, m.blocks.clone()));
    }
    m.write(&dev, region(0), 200);
    assert_eq!(w.control.snapshot_collect().expect("collect").len(), n);

    refused_past_the_limit(
        &w,
        &vol,
        PerDevice::Parameter(limit),
        &[
            &format!("{limit} snapshots"),
            "snapshots_per_device_maximum",
        ],
    );

    // Deleted in an order unlike the takes' (odd ones from the newest
    // down, then the even ones from the oldest up); after each delete
    // every remaining image still reads its moment.
    let mut order: Vec<usize> = (0..n).filter(|i| i % 2 == 1).rev().collect();
    order.extend((0..n).filter(|i| i % 2 == 0));
    let checked = 0..region(n).end;
    for (k, i) in order.iter().enumerate() {
        w.p().delete_snapshot(&held[*i].0).expect("delete");
        held[*i].0.clear();
        for (s, at) in held.iter().filter(|(s, _)| !s.is_empty()) {
            let info = w
                .control
                .snapshot_info_of(kernel_of(s), &dev)
                .expect("info of a held snapshot");
            let image = info.info.image_path().expect("image");
            let f = File::open(&image).expect("open image");
            verify_moment(&reopen(&f), checked.clone(), at);
        }
        if k == 0 {
            // One place is free again: a take fits, and goes again.
            let again = w.snapshot("again", &vol, &[]);
            w.p().delete_snapshot(&again).expect("delete again");
        }
    }
    finish(&w, &vol);
}

#[test]
fn a_restart_matches_several_held_snapshots_of_a_volume_to_their_own() {
    let size = 32 * MIB;
    let Some((mut w, vol, dev, mut m)) =
        setup(Interface::SeveralSnapshotsPerDevice, "pvc-mr", size)
    else {
        return;
    };
    let mut snaps = Vec::new();
    let mut writes: Vec<Vec<Range<u64>>> = Vec::new();
    for i in 0..4u8 {
        let r = vec![
            u64::from(i) * 4 * MIB..u64::from(i) * 4 * MIB + MIB,
            30 * MIB..30 * MIB + 4096 * (u64::from(i) + 1),
        ];
        for x in &r {
            m.write(&dev, x.clone(), i + 1);
        }
        writes.push(r);
        snaps.push((w.snapshot(&format!("r{i}"), &vol, &[]), m.blocks.clone()));
    }
    m.write(&dev, 0..8 * MIB, 9);

    // While the plugin is down, an operator destroys the second one.
    w.plugin = None;
    w.control
        .snapshot_destroy(kernel_of(&snaps[1].0))
        .expect("destroy behind the plugin's back");
    w.start();

    let (list, _) = w.p().list_snapshots(&Default::default()).expect("list");
    let lost = |s: &str| {
        list.iter()
            .find(|r| w.p().snapshot_id(r).to_string() == s)
            .unwrap_or_else(|| panic!("{s} listed"))
            .lost
            .as_ref()
            .map(|l| l.reason)
    };
    assert_eq!(lost(&snaps[0].0), None);
    assert_eq!(lost(&snaps[1].0), Some(LostReason::KernelForgot));
    assert_eq!(lost(&snaps[2].0), None);
    assert_eq!(lost(&snaps[3].0), None);
    for i in [0, 2, 3] {
        restore_is(&w, &snaps[i].0, size, &snaps[i].1);
    }
    assert!(matches!(
        w.p().metadata_allocated(&snaps[1].0, 0),
        Err(Error::Unavailable(_))
    ));
    let bs = block_size(&w, &vol);
    let since0: Vec<Range<u64>> = writes[1..].iter().flatten().cloned().collect();
    assert_eq!(
        w.p()
            .metadata_delta(&snaps[0].0, &snaps[3].0, 0)
            .expect("delta after restart")
            .ranges,
        expected_delta(&since0, bs, size)
    );
    // A new one after the restart counts beside the recovered ones.
    let after = w.snapshot("after-restart", &vol, &[]);
    assert_eq!(w.control.snapshot_collect().expect("collect").len(), 4);
    for s in [&after, &snaps[3].0, &snaps[1].0, &snaps[0].0, &snaps[2].0] {
        w.p().delete_snapshot(s).expect("delete");
    }
    finish(&w, &vol);
}

#[test]
fn a_1_0_module_keeps_one_snapshot_per_volume_and_a_second_is_refused_finally() {
    let size = 16 * MIB;
    let Some((mut w, vol, dev, mut m)) = setup(Interface::OneSnapshotPerDevice, "pvc-10", size)
    else {
        return;
    };
    m.write(&dev, 0..4 * MIB, 1);
    let s1 = w.snapshot("one", &vol, &[]);
    let at1 = m.blocks.clone();
    m.write(&dev, 2 * MIB..6 * MIB, 2);

    refused_past_the_limit(&w, &vol, PerDevice::Interface1_0, &["interface 1.0"]);

    // A restart finds the held snapshot by its id and reads its image.
    w.start();
    let (list, _) = w.p().list_snapshots(&Default::default()).expect("list");
    assert_eq!(list.len(), 1);
    assert!(list[0].lost.is_none(), "{:?}", list[0].lost);
    restore_is(&w, &s1, size, &at1);
    assert!(matches!(
        w.p()
            .create_snapshot("two", &w.p().volume_id(&vol), &HashMap::new()),
        Err(Error::SnapshotLimit { .. })
    ));

    // Deleted, the next one fits and reads its own moment.
    w.p().delete_snapshot(&s1).expect("delete one");
    let s2 = w.snapshot("two", &vol, &[]);
    restore_is(&w, &s2, size, &m.blocks);
    let bs = block_size(&w, &vol);
    assert_eq!(
        w.p().metadata_delta(&s1, &s2, 0).expect("delta").ranges,
        expected_delta(std::slice::from_ref(&(2 * MIB..6 * MIB)), bs, size)
    );
    w.p().delete_snapshot(&s2).expect("delete two");
    finish(&w, &vol);
}
