//! Snapshots against the real module: a record reads only the kernel
//! snapshot it names.

use super::*;
use blksnap_node_api::ids::SnapshotId;

/// A CreateVolume that read the record of `s1` before `s1` was deleted
/// and `s2` taken of the same volume still holds that record (put back
/// here, as such a call has it): the restore must refuse it, not copy the
/// image the device holds now, and listing must show `s1` lost.
#[test]
fn a_stale_snapshot_record_never_reads_a_later_snapshot() {
    let w = World::new();
    let vol = w.create("pvc-stale", 32 * MIB, None, None);
    let dev = w.dev(&vol);
    fill(&dev, 0..8 * MIB, 1);
    let s1 = w.snapshot("s1", &vol, &[]);
    let id: SnapshotId = s1.parse().expect("snapshot id");
    let stale = w.p().snapshot_record(&id).expect("record of s1");
    w.p().delete_snapshot(&s1).expect("delete s1");
    fill(&dev, 0..8 * MIB, 2);
    let s2 = w.snapshot("s2", &vol, &[]);
    w.p().state.put(&stale).expect("put the stale record back");

    let restore = w.p().create_volume(&CreateVolume {
        name: "from-s1".into(),
        required: 32 * MIB,
        limit: 0,
        backend: None,
        source: Some(Source::Snapshot(s1.clone())),
    });
    assert!(
        matches!(restore, Err(Error::Precondition(_))),
        "restored from the kernel snapshot of s2: {restore:?}"
    );
    let (list, _) = w.p().list_snapshots(&Default::default()).expect("list");
    let listed = |want: &str| {
        list.iter()
            .find(|r| w.p().snapshot_id(r).to_string() == want)
            .unwrap_or_else(|| panic!("{want} listed"))
            .lost
            .as_ref()
            .map(|l| l.reason)
    };
    assert_eq!(listed(&s1), Some(LostReason::KernelForgot));
    assert_eq!(listed(&s2), None);

    let from_s2 = w.create(
        "from-s2",
        32 * MIB,
        Some(Source::Snapshot(s2.clone())),
        None,
    );
    verify(&reopen(&w.dev(&from_s2)), 0..8 * MIB, |_| Some(2));
    w.p()
        .delete_volume(&w.vid(&from_s2))
        .expect("delete restored");
    w.p().delete_snapshot(&s1).expect("delete s1 again");
    w.p().delete_snapshot(&s2).expect("delete s2");
    w.p().delete_volume(&w.vid(&vol)).expect("delete volume");
}
