//! Node snapshots that no content refers to are deleted after the grace
//! period; referenced ones and ones of a volume whose snapshot is being
//! created are kept.

use std::time::{Duration, SystemTime};

use blksnap_csi_driver::reconciler::{self, Metrics};
use kube::ResourceExt;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::nodes::{group_id, Nodes};
use crate::support::*;

#[tokio::test]
async fn unreferenced_snapshots_are_deleted_after_the_grace_period() {
    let Some(client) = cluster().await else {
        return;
    };
    let ns = namespace(&client, "orph").await;
    let driver = driver_name();
    let hour = Duration::from_secs(3600);
    let ago = SystemTime::now() - hour;
    let nodes = Nodes::default();
    let referenced = nodes.take("n1", "vol-1", "a", ago, None);
    let orphan = nodes.take("n1", "vol-1", "b", ago, None);
    let on_other_node = nodes.take("n2", "vol-9", "c", ago, None);
    let fresh = nodes.take("n1", "vol-1", "d", SystemTime::now(), None);
    // Taken "in an hour" by a node whose clock is ahead: not old enough
    // by its own clock, so kept however long it is seen unreferenced.
    let ahead = nodes.take("n1", "vol-5", "g", SystemTime::now() + hour, None);
    let creating = nodes.take("n1", "vol-2", "e", ago, None);
    let member1 = nodes.take("n1", "vol-3", "f", ago, Some("grp"));
    let member2 = nodes.take("n1", "vol-4", "f", ago, Some("grp"));
    // A content of another driver does not keep ours.
    let other = content(&client, "other.example.com", &orphan, &ns, "x").await;

    let c = content(&client, &driver, &referenced, &ns, "snap").await;
    let being = content_being_created(&client, &driver, "v1:vol-2:n1", &ns).await;

    let grace = Duration::from_secs(4);
    let mut registry = Registry::default();
    let mut config = reconciler::Config::new(&driver, "replica-0");
    config.orphan_grace = grace;
    config.orphan_interval = Duration::from_millis(500);
    let ctx = std::sync::Arc::new(reconciler::Context::new(
        client.clone(),
        nodes.clone(),
        config,
        Metrics::register(&mut registry),
    ));
    let start = Instant::now();
    let task = tokio::spawn(reconciler::run(ctx));

    wait_for("the orphans to go", 60, || async {
        (!nodes.holds(&orphan)
            && !nodes.holds(&on_other_node)
            && !nodes.holds(&member1)
            && !nodes.holds(&fresh))
        .then_some(())
    })
    .await;
    for (id, at) in nodes.deleted() {
        assert!(
            at.duration_since(start) >= grace,
            "{id} deleted {:?} after start, before the grace period",
            at - start
        );
    }
    assert!(!nodes.holds(&member2), "a group goes as a whole");
    let deleted: Vec<String> = nodes.deleted().into_iter().map(|(id, _)| id).collect();
    assert!(
        deleted.contains(&group_id("n1", "grp")),
        "by its group id: {deleted:?}"
    );

    // Two more sweeps: the referenced one and the one being created stay.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(nodes.holds(&referenced), "a snapshot a content refers to");
    assert!(
        nodes.holds(&creating),
        "a snapshot of a volume whose content has no handle yet"
    );

    // Its CreateSnapshot was abandoned: the content goes, and after the
    // grace period so does the snapshot.
    let gone_at = Instant::now();
    delete_content(&client, &being.name_any()).await;
    wait_for("the abandoned snapshot to go", 60, || async {
        (!nodes.holds(&creating)).then_some(())
    })
    .await;
    let at = nodes
        .deleted()
        .into_iter()
        .find(|(id, _)| *id == creating)
        .unwrap()
        .1;
    assert!(
        at.duration_since(gone_at) >= grace,
        "grace counted from when it became unreferenced"
    );
    assert!(nodes.holds(&referenced));
    assert!(nodes.holds(&ahead), "not old enough by the node's clock");

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("reconciler_orphans_deleted_total 5"),
        "{text}"
    );
    task.abort();

    for n in [c.name_any(), other.name_any()] {
        delete_content(&client, &n).await;
    }
    delete_namespace(&client, &ns).await;
}
