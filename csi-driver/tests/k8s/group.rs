//! A group snapshot with a member its node reports lost: the group content
//! says `readyToUse: false` naming the member and the reason, with an
//! Event on the VolumeGroupSnapshot.

use std::time::{Duration, SystemTime};

use blksnap_csi_driver::reconciler;
use blksnap_csi_driver::reconciler::lost::EVENT_REASON;
use blksnap_csi_driver::reconciler::resources::VolumeGroupSnapshotContent;
use blksnap_node_api::lost::LostReason;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::Api;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::lost::context;
use crate::nodes::{group_id, Nodes};
use crate::support::*;

#[tokio::test]
async fn a_lost_member_marks_its_group_content_with_an_event() {
    let Some(client) = cluster().await else {
        return;
    };
    let ns = namespace(&client, "grp").await;
    let driver = driver_name();
    let nodes = Nodes::default();
    let now = SystemTime::now();
    let m1 = nodes.take("n1", "vol-1", "k", now, Some("k"));
    let m2 = nodes.take("n1", "vol-2", "k", now, Some("k"));
    let group_id = group_id("n1", "k");
    let group_id = group_id.as_str();

    // Pre-provisioned, with the status csi-snapshotter writes for a ready
    // group (no csi-snapshotter runs on the host).
    let name = unique("group-content");
    let api: Api<VolumeGroupSnapshotContent> = Api::all(client.clone());
    let gc: VolumeGroupSnapshotContent = serde_json::from_value(json!({
        "apiVersion": "groupsnapshot.storage.k8s.io/v1",
        "kind": "VolumeGroupSnapshotContent",
        "metadata": {"name": name},
        "spec": {
            "driver": driver,
            "deletionPolicy": "Retain",
            "source": {"groupSnapshotHandles": {
                "volumeGroupSnapshotHandle": group_id,
                "volumeSnapshotHandles": [m1, m2],
            }},
            "volumeGroupSnapshotRef": {"name": "group", "namespace": ns},
        },
    }))
    .unwrap();
    api.create(&PostParams::default(), &gc)
        .await
        .expect("group content");
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "volumeGroupSnapshotHandle": group_id,
            "readyToUse": true,
            "volumeSnapshotInfoList": [
                {"volumeHandle": "v1:vol-1:n1", "snapshotHandle": m1, "readyToUse": true},
                {"volumeHandle": "v1:vol-2:n1", "snapshotHandle": m2, "readyToUse": true},
            ],
        }})),
    )
    .await
    .expect("group content status");

    let mut registry = Registry::default();
    let task = tokio::spawn(reconciler::run(context(
        &client,
        &nodes,
        &driver,
        "replica-0",
        &mut registry,
    )));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = api.get(&name).await.unwrap();
    assert_eq!(
        held.status.unwrap().ready_to_use,
        Some(true),
        "all members held: ready"
    );

    nodes.lose(&m2, LostReason::KernelForgot);
    let message = wait_for("the group content marked lost", 60, || async {
        let s = api.get(&name).await.ok()?.status?;
        (s.ready_to_use == Some(false)).then(|| s.error?.message)?
    })
    .await;
    assert!(
        message.contains(&m2) && message.contains("kernel-forgot"),
        "{message}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    wait_for("the Event on the VolumeGroupSnapshot", 30, || async {
        events
            .list(&Default::default())
            .await
            .ok()?
            .into_iter()
            .find(|e| {
                let r = e.regarding.as_ref();
                e.reason.as_deref() == Some(EVENT_REASON)
                    && r.and_then(|r| r.kind.as_deref()) == Some("VolumeGroupSnapshot")
                    && r.and_then(|r| r.name.as_deref()) == Some("group")
                    && e.note.as_deref() == Some(message.as_str())
            })
    })
    .await;
    task.abort();

    let _ = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    let _ = api.delete(&name, &DeleteParams::default()).await;
    delete_namespace(&client, &ns).await;
}
