//! Two replicas, one Lease: one reconciles; when it dies without releasing
//! the Lease, the other takes over once the Lease has expired.

use std::time::{Duration, SystemTime};

use blksnap_csi_driver::reconciler::leader::{self, LeaseConfig};
use blksnap_csi_driver::reconciler::{self, Metrics};
use blksnap_node_api::lost::LostReason;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::lost::{context, lost_events, lost_message};
use crate::nodes::Nodes;
use crate::support::*;

struct Replica {
    metrics: Metrics,
    task: JoinHandle<blksnap_csi_driver::Result<()>>,
}

fn replica(
    client: &Client,
    nodes: &Nodes,
    driver: &str,
    ns: &str,
    lease: &str,
    identity: &str,
) -> Replica {
    let mut registry = Registry::default();
    let ctx = context(client, nodes, driver, identity, &mut registry);
    let metrics = ctx.metrics.clone();
    let mut cfg = LeaseConfig::new(ns, lease, identity);
    cfg.lease_duration = Duration::from_secs(4);
    cfg.renew_deadline = Duration::from_secs(3);
    cfg.retry_period = Duration::from_millis(500);
    let task = tokio::spawn(leader::lead(
        client.clone(),
        cfg,
        metrics.clone(),
        std::future::pending(),
        move || reconciler::run(ctx.clone()),
    ));
    Replica { metrics, task }
}

async fn holder(client: &Client, ns: &str, lease: &str) -> Option<(String, i32)> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let spec = api.get_opt(lease).await.ok()??.spec?;
    Some((spec.holder_identity?, spec.lease_transitions.unwrap_or(0)))
}

/// Marks snapshot `local` of a fresh content lost and waits until a
/// replica has marked the content; returns the VolumeSnapshot's name.
async fn lose_one(
    client: &Client,
    nodes: &Nodes,
    driver: &str,
    ns: &str,
    local: &str,
) -> (String, String) {
    let id = nodes.take("n1", "vol-1", local, SystemTime::now(), None);
    let vs = format!("snap-{local}");
    let c = content(client, driver, &id, ns, &vs).await;
    content_ready(client, &c, &id).await;
    snapshot(client, ns, &vs, &c.name_any()).await;
    snapshot_ready(client, ns, &vs, &c.name_any()).await;
    nodes.lose(&id, LostReason::IoError);
    wait_for("the leader to mark the content lost", 60, || async {
        lost_message(&get_content(client, &c.name_any()).await)
    })
    .await;
    (vs, c.name_any())
}

#[tokio::test]
async fn of_two_replicas_one_leads_and_the_other_takes_over_when_it_dies() {
    let Some(client) = cluster().await else {
        return;
    };
    let ns = namespace(&client, "lease").await;
    let driver = driver_name();
    let lease = "blksnap-csi-reconciler";
    let nodes = Nodes::default();
    let a = replica(&client, &nodes, &driver, &ns, lease, "replica-a");
    let b = replica(&client, &nodes, &driver, &ns, lease, "replica-b");

    let (first, transitions) = wait_for("a leader", 60, || async {
        holder(&client, &ns, lease).await
    })
    .await;
    let (leader, follower) = if first == "replica-a" { (a, b) } else { (b, a) };
    // Over a few renewals: the holder stays, and only it says it leads.
    for _ in 0..8 {
        let (h, _) = holder(&client, &ns, lease).await.unwrap();
        assert_eq!(h, first, "the lease stays with its holder");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            follower.metrics.leader.get(),
            0,
            "the follower does not lead"
        );
    }
    assert_eq!(leader.metrics.leader.get(), 1);

    let (vs, c1) = lose_one(&client, &nodes, &driver, &ns, "a").await;
    let events = wait_for("the Event", 30, || async {
        let e = lost_events(&client, &ns, &vs).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events.len(), 1, "one replica reported it: {events:?}");
    assert_eq!(
        events[0].reporting_instance.as_deref(),
        Some(first.as_str())
    );
    assert!(events[0].series.is_none(), "reported once");

    // The leader dies without releasing the lease.
    leader.task.abort();
    let _ = leader.task.await;
    let (second, after) = wait_for("the other replica to take over", 60, || async {
        holder(&client, &ns, lease)
            .await
            .filter(|(h, _)| *h != first)
    })
    .await;
    assert_eq!(after, transitions + 1, "one more transition");
    wait_for("the new leader's gauge", 10, || async {
        (follower.metrics.leader.get() == 1).then_some(())
    })
    .await;

    // The new leader reconciles.
    let (vs2, c2) = lose_one(&client, &nodes, &driver, &ns, "b").await;
    let events = wait_for("the new leader's Event", 30, || async {
        let e = lost_events(&client, &ns, &vs2).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(
        events[0].reporting_instance.as_deref(),
        Some(second.as_str())
    );
    follower.task.abort();

    for c in [c1, c2] {
        delete_content(&client, &c).await;
    }
    delete_namespace(&client, &ns).await;
}
