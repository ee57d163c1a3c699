//! A snapshot its node reports lost: the content and its VolumeSnapshot
//! say `readyToUse: false` with the reason, and a Warning Event is on the
//! VolumeSnapshot.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use blksnap_csi_driver::reconciler::lost::{EVENT_REASON, LOST_PREFIX};
use blksnap_csi_driver::reconciler::resources::VolumeSnapshotContent;
use blksnap_csi_driver::reconciler::{self, Config, Context, Metrics};
use blksnap_node_api::lost::LostReason;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::nodes::Nodes;
use crate::support::*;

pub fn context(
    client: &Client,
    nodes: &Nodes,
    driver: &str,
    identity: &str,
    registry: &mut Registry,
) -> Arc<Context<Nodes>> {
    let mut config = Config::new(driver, identity);
    config.check_interval = Duration::from_secs(1);
    config.backoff_min = Duration::from_millis(200);
    config.backoff_max = Duration::from_secs(2);
    Arc::new(Context::new(
        client.clone(),
        nodes.clone(),
        config,
        Metrics::register(registry),
    ))
}

/// The Events on VolumeSnapshot `ns/name` with our reason.
pub async fn lost_events(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    api.list(&Default::default())
        .await
        .expect("events")
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(EVENT_REASON)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("VolumeSnapshot")
        })
        .collect()
}

pub fn lost_message(c: &VolumeSnapshotContent) -> Option<String> {
    let s = c.status.as_ref()?;
    (s.ready_to_use == Some(false)).then(|| s.error.as_ref()?.message.clone())?
}

#[tokio::test]
async fn a_lost_snapshot_marks_its_content_and_volume_snapshot_with_an_event() {
    let Some(client) = cluster().await else {
        return;
    };
    let ns = namespace(&client, "lost").await;
    let driver = driver_name();
    let nodes = Nodes::default();
    let held = nodes.take("n1", "vol-1", "a", SystemTime::now(), None);
    let lost_elsewhere = nodes.take("n1", "vol-2", "b", SystemTime::now(), None);

    let c = content(&client, &driver, &held, &ns, "snap").await;
    content_ready(&client, &c, &held).await;
    snapshot(&client, &ns, "snap", &c.name_any()).await;
    snapshot_ready(&client, &ns, "snap", &c.name_any()).await;
    // Another driver's content naming a snapshot the node reports lost: not
    // ours to touch.
    let foreign = content(
        &client,
        "other.example.com",
        &lost_elsewhere,
        &ns,
        "foreign",
    )
    .await;
    content_ready(&client, &foreign, &lost_elsewhere).await;
    nodes.lose(&lost_elsewhere, LostReason::Overflow);

    let mut registry = Registry::default();
    let ctx = context(&client, &nodes, &driver, "replica-0", &mut registry);
    let task = tokio::spawn(reconciler::run(ctx.clone()));

    // Checked and found held: stays ready over several check intervals.
    wait_for("a few reconciles", 60, || async {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .any(|l| {
                l.starts_with("reconciler_reconciles_total{kind=\"Content\"}")
                    && !l.ends_with(" 1")
                    && !l.ends_with(" 0")
            })
            .then_some(())
    })
    .await;
    let now = get_content(&client, &c.name_any()).await;
    assert_eq!(
        now.status.unwrap().ready_to_use,
        Some(true),
        "a held snapshot stays ready"
    );

    nodes.lose(&held, LostReason::Overflow);
    let message = wait_for("the content marked lost", 60, || async {
        lost_message(&get_content(&client, &c.name_any()).await)
    })
    .await;
    assert!(
        message.starts_with(LOST_PREFIX) && message.contains("overflow"),
        "{message}"
    );
    let vs = wait_for("the VolumeSnapshot marked lost", 30, || async {
        let vs = get_snapshot(&client, &ns, "snap").await;
        (vs.status.as_ref()?.ready_to_use == Some(false)).then_some(vs)
    })
    .await;
    let vs_error = vs.status.unwrap().error.unwrap();
    assert_eq!(vs_error.message.as_deref(), Some(message.as_str()));
    assert!(vs_error.time.is_some());
    let events = wait_for("the Event", 30, || async {
        let e = lost_events(&client, &ns, "snap").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events.len(), 1, "one Event: {events:?}");
    let e = &events[0];
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.note.as_deref(), Some(message.as_str()));
    assert_eq!(e.reporting_instance.as_deref(), Some("replica-0"));
    assert_eq!(
        e.related.as_ref().and_then(|r| r.name.as_deref()),
        Some(c.name_any().as_str()),
        "the content is the Event's related object"
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("reconciler_snapshots_lost_total{reason=\"overflow\"} 1"),
        "{text}"
    );
    let f = get_content(&client, &foreign.name_any()).await;
    assert_eq!(
        f.status.unwrap().ready_to_use,
        Some(true),
        "another driver's content untouched"
    );
    assert!(!task.is_finished());
    task.abort();

    delete_content(&client, &c.name_any()).await;
    delete_content(&client, &foreign.name_any()).await;
    delete_namespace(&client, &ns).await;
}

/// With the real snapshot-controller (external-snapshotter v8.7.0, from
/// the test bed's cache; this test starts it and stops it, so the other
/// tests see none: run-k8s runs one test at a time): it binds the
/// VolumeSnapshot and makes it ready from the content. It does not carry a
/// content that turns not ready to a ready VolumeSnapshot (hence the
/// reconciler writes both); once the VolumeSnapshot is not ready it keeps
/// it in step with the content (here: a later error message on the
/// content reaches the VolumeSnapshot) and never turns it ready again.
#[tokio::test]
async fn the_snapshot_controller_carries_the_loss_to_the_volume_snapshot() {
    let Some(client) = cluster().await else {
        return;
    };
    let Some(bin) = std::env::var_os("BLKSNAP_SNAPSHOT_CONTROLLER") else {
        println!("skipped: BLKSNAP_SNAPSHOT_CONTROLLER (the snapshot-controller binary) unset; csi-driver/tests/run-k8s sets it");
        return;
    };
    let log = std::env::temp_dir().join(format!("snapshot-controller-{}.log", std::process::id()));
    println!("snapshot-controller log: {}", log.display());
    let _controller = tokio::process::Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig().unwrap())
        .args([
            "--leader-election=false",
            "--feature-gates",
            "CSIVolumeGroupSnapshot=true",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("snapshot-controller starts");
    let ns = namespace(&client, "sc").await;
    let driver = driver_name();
    let nodes = Nodes::default();
    let id = nodes.take("n1", "vol-1", "a", SystemTime::now(), None);
    let c = content(&client, &driver, &id, &ns, "snap").await;
    content_ready(&client, &c, &id).await;
    snapshot(&client, &ns, "snap", &c.name_any()).await;

    // The snapshot-controller binds and readies it, from the content.
    let vs = wait_for(
        "the snapshot-controller to make the VolumeSnapshot ready",
        60,
        || async {
            let vs = get_snapshot(&client, &ns, "snap").await;
            (vs.status.as_ref()?.ready_to_use == Some(true)).then_some(vs)
        },
    )
    .await;
    let status = vs.status.unwrap();
    assert_eq!(
        status.bound_volume_snapshot_content_name.as_deref(),
        Some(c.name_any().as_str())
    );
    assert!(
        status.creation_time.is_some(),
        "creationTime copied from the content"
    );
    let bound = get_content(&client, &c.name_any()).await;
    assert_eq!(
        bound.spec.volume_snapshot_ref.uid, vs.metadata.uid,
        "content bound to it"
    );
    // Let the controller finish with the new object (its finalizer, then
    // an idle queue), so that what follows is not carried by a sync that
    // was already under way while the VolumeSnapshot was not ready.
    wait_for("the snapshot-controller's finalizers", 30, || async {
        let vs = get_snapshot(&client, &ns, "snap")
            .await
            .metadata
            .finalizers?;
        let c = get_content(&client, &c.name_any())
            .await
            .metadata
            .finalizers?;
        (!vs.is_empty() && c.iter().any(|f| f.ends_with("bound-protection"))).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = get_snapshot(&client, &ns, "snap").await.status.unwrap();
    assert_eq!(settled.ready_to_use, Some(true), "still ready once settled");

    let mut registry = Registry::default();
    let task = tokio::spawn(reconciler::run(context(
        &client,
        &nodes,
        &driver,
        "replica-0",
        &mut registry,
    )));
    nodes.lose(&id, LostReason::KernelForgot);
    let message = wait_for("the content marked lost", 60, || async {
        lost_message(&get_content(&client, &c.name_any()).await)
    })
    .await;
    assert!(message.contains("kernel-forgot"), "{message}");
    wait_for(
        "the VolumeSnapshot not ready with the reason",
        60,
        || async {
            let s = get_snapshot(&client, &ns, "snap").await.status?;
            (s.ready_to_use == Some(false) && s.error?.message.as_deref() == Some(message.as_str()))
                .then_some(())
        },
    )
    .await;
    // The reconciler is stopped: what follows is the snapshot-controller's.
    task.abort();

    // A new error on the content (as csi-snapshotter writes when its retry
    // fails) is carried to the VolumeSnapshot, which stays not ready.
    let api: Api<VolumeSnapshotContent> = Api::all(client.clone());
    let later = format!("{message} (checked again)");
    api.patch_status(
        &c.name_any(),
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"error": {"message": later, "time": "2030-01-01T00:00:00Z"}}}),
        ),
    )
    .await
    .expect("content status");
    wait_for(
        "the snapshot-controller to carry the content's error",
        60,
        || async {
            let s = get_snapshot(&client, &ns, "snap").await.status?;
            (s.ready_to_use == Some(false) && s.error?.message.as_deref() == Some(later.as_str()))
                .then_some(())
        },
    )
    .await;

    delete_content(&client, &c.name_any()).await;
    delete_namespace(&client, &ns).await;
}
