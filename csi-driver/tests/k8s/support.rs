//! What the tests share: the cluster, unique names, waiting, and the
//! snapshot objects as the sidecars would make them.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use blksnap_csi_driver::reconciler::resources::{
    ContentSource, VolumeSnapshot, VolumeSnapshotContent, VolumeSnapshotContentSpec,
    VolumeSnapshotContentStatus, VolumeSnapshotSource, VolumeSnapshotSpec,
};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::json;

/// The cluster's kubeconfig, if one is given.
pub fn kubeconfig() -> Option<std::ffi::OsString> {
    std::env::var_os("BLKSNAP_K8S_KUBECONFIG").or_else(|| std::env::var_os("KUBECONFIG"))
}

/// The cluster's client, or `None` after printing `skipped: <why>`.
pub async fn cluster() -> Option<Client> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let Some(path) = kubeconfig() else {
        println!(
            "skipped: no cluster (set BLKSNAP_K8S_KUBECONFIG, or run csi-driver/tests/run-k8s)"
        );
        return None;
    };
    let kubeconfig = Kubeconfig::read_from(&path).expect("kubeconfig readable");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid");
    Some(Client::try_from(config).expect("client"))
}

/// A name unique to this run and call, valid as a DNS label.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a fresh namespace.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = unique(prefix);
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    name
}

/// Polls `check` until it returns `Some`, at most `secs` seconds; panics
/// with `what` otherwise.
pub async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates a content of `driver` (Retain, so deleting it needs no
/// sidecar) from `source`, bound to VolumeSnapshot `ns/vs`.
async fn create_content(
    client: &Client,
    driver: &str,
    source: ContentSource,
    ns: &str,
    vs: &str,
) -> VolumeSnapshotContent {
    let api: Api<VolumeSnapshotContent> = Api::all(client.clone());
    let c = VolumeSnapshotContent::new(
        &unique("content"),
        VolumeSnapshotContentSpec {
            driver: driver.into(),
            deletion_policy: "Retain".into(),
            source,
            volume_snapshot_ref: ObjectReference {
                name: Some(vs.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            volume_snapshot_class_name: None,
        },
    );
    api.create(&PostParams::default(), &c)
        .await
        .expect("content")
}

/// A pre-provisioned content for snapshot `handle`, bound to
/// VolumeSnapshot `ns/vs`.
pub async fn content(
    client: &Client,
    driver: &str,
    handle: &str,
    ns: &str,
    vs: &str,
) -> VolumeSnapshotContent {
    let source = ContentSource {
        snapshot_handle: Some(handle.into()),
        volume_handle: None,
    };
    create_content(client, driver, source, ns, vs).await
}

/// A content of a snapshot being taken of `volume`: made, as the
/// snapshot-controller makes it, before the CreateSnapshot call; no handle.
pub async fn content_being_created(
    client: &Client,
    driver: &str,
    volume: &str,
    ns: &str,
) -> VolumeSnapshotContent {
    let source = ContentSource {
        volume_handle: Some(volume.into()),
        snapshot_handle: None,
    };
    create_content(client, driver, source, ns, &unique("vs")).await
}

/// Writes a ready status into `content` as csi-snapshotter does once the
/// driver reports the snapshot ready (no csi-snapshotter runs on the
/// host: it needs the controller's CSI socket, which the VM tests give it).
pub async fn content_ready(client: &Client, content: &VolumeSnapshotContent, handle: &str) {
    let api: Api<VolumeSnapshotContent> = Api::all(client.clone());
    let status = VolumeSnapshotContentStatus {
        snapshot_handle: Some(handle.into()),
        ready_to_use: Some(true),
        creation_time: Some(1_700_000_000_000_000_000),
        restore_size: Some(1 << 30),
        ..Default::default()
    };
    api.patch_status(
        &content.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .expect("content status");
}

/// A VolumeSnapshot of pre-provisioned `content`.
pub async fn snapshot(client: &Client, ns: &str, name: &str, content: &str) -> VolumeSnapshot {
    let api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), ns);
    let vs = VolumeSnapshot::new(
        name,
        VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                volume_snapshot_content_name: Some(content.into()),
                persistent_volume_claim_name: None,
            },
            volume_snapshot_class_name: None,
        },
    );
    api.create(&PostParams::default(), &vs)
        .await
        .expect("volumesnapshot")
}

/// Writes the ready status the snapshot-controller writes for a bound,
/// ready content (for tests that do not run it).
pub async fn snapshot_ready(client: &Client, ns: &str, name: &str, content: &str) {
    let api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"readyToUse": true, "boundVolumeSnapshotContentName": content}}),
        ),
    )
    .await
    .expect("volumesnapshot status");
}

pub async fn get_content(client: &Client, name: &str) -> VolumeSnapshotContent {
    let api: Api<VolumeSnapshotContent> = Api::all(client.clone());
    api.get(name).await.expect("content")
}

pub async fn get_snapshot(client: &Client, ns: &str, name: &str) -> VolumeSnapshot {
    let api: Api<VolumeSnapshot> = Api::namespaced(client.clone(), ns);
    api.get(name).await.expect("volumesnapshot")
}

/// Deletes a content, dropping finalizers first (no sidecar runs to
/// remove them).
pub async fn delete_content(client: &Client, name: &str) {
    let api: Api<VolumeSnapshotContent> = Api::all(client.clone());
    let _ = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// Deletes a namespace's VolumeSnapshots (dropping finalizers) and the
/// namespace.
pub async fn delete_namespace(client: &Client, ns: &str) {
    let vss: Api<VolumeSnapshot> = Api::namespaced(client.clone(), ns);
    if let Ok(list) = vss.list(&Default::default()).await {
        for vs in list {
            let _ = vss
                .patch(
                    &vs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
            let _ = vss.delete(&vs.name_any(), &DeleteParams::default()).await;
        }
    }
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(ns, &DeleteParams::default()).await;
}

/// A driver name of its own per test: contents are cluster-scoped, and a
/// reconciler leaves other drivers' alone.
pub fn driver_name() -> String {
    format!("{}.blksnap.test", unique("d"))
}
