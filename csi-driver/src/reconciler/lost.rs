//! Telling Kubernetes that a snapshot is lost: the content's status, the
//! VolumeSnapshot's status and an Event on the VolumeSnapshot.
//!
//! Why the reconciler writes the VolumeSnapshot's status too: the
//! snapshot-controller (external-snapshotter v8.7.0) copies `readyToUse`,
//! `error`, `creationTime` and `restoreSize` from a content to its
//! VolumeSnapshot only while the VolumeSnapshot is not yet ready
//! (`syncUnreadySnapshot`); for a ready one it only checks the binding
//! (`syncReadySnapshot`), so a content that turns not ready never reaches a
//! ready VolumeSnapshot. Once the VolumeSnapshot says `readyToUse: false`
//! the snapshot-controller takes it up again and keeps it in step with the
//! content (readyToUse and error). Hence the order: content first (the
//! source of truth the snapshot-controller copies from), then the Event,
//! then the VolumeSnapshot; a retry after a failure in between finds the
//! content marked and completes the rest.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};
use serde_json::json;
use tracing::info;

use super::resources::{SnapshotError, VolumeSnapshot, VolumeSnapshotContent};
use super::{Context, NodeSnapshots};
use crate::Result;
use blksnap_node_api::lost::LostReason;

/// Starts every error message this reconciler writes, so that it knows its
/// own mark when it sees the object again.
pub const LOST_PREFIX: &str = "blksnap-csi: snapshot lost: ";

/// Event reason on the VolumeSnapshot (and VolumeGroupSnapshot).
pub const EVENT_REASON: &str = "SnapshotLost";

/// The error message for snapshot `id` lost for `reason`.
pub fn message(id: &str, reason: LostReason) -> String {
    format!(
        "{LOST_PREFIX}{} ({}; snapshot {id})",
        reason.explain(),
        reason.as_str()
    )
}

/// Whether `error` is this reconciler's mark.
pub fn is_marked(error: Option<&SnapshotError>) -> bool {
    error
        .and_then(|e| e.message.as_deref())
        .is_some_and(|m| m.starts_with(LOST_PREFIX))
}

fn status_patch(message: &str) -> serde_json::Value {
    json!({
        "status": {
            "readyToUse": false,
            "error": SnapshotError {
                message: Some(message.to_owned()),
                time: Some(Time(Timestamp::now())),
            },
        }
    })
}

/// Marks `content` lost (its status subresource).
pub async fn mark_content<N: NodeSnapshots>(
    ctx: &Context<N>,
    content: &VolumeSnapshotContent,
    message: &str,
) -> Result<()> {
    let api: Api<VolumeSnapshotContent> = Api::all(ctx.client.clone());
    api.patch_status(
        &content.metadata.name.clone().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(status_patch(message)),
    )
    .await?;
    Ok(())
}

/// Marks the VolumeSnapshot that `content` is bound to lost, with an Event,
/// unless it is already not ready or is another object of the same name.
pub async fn mark_snapshot<N: NodeSnapshots>(
    ctx: &Context<N>,
    content: &VolumeSnapshotContent,
    message: &str,
) -> Result<()> {
    let r = &content.spec.volume_snapshot_ref;
    let (Some(namespace), Some(name)) = (r.namespace.as_deref(), r.name.as_deref()) else {
        return Ok(());
    };
    let api: Api<VolumeSnapshot> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(vs) = api.get_opt(name).await? else {
        return Ok(());
    };
    let same = r.uid.is_none() || vs.metadata.uid == r.uid;
    let ready = vs.status.as_ref().and_then(|s| s.ready_to_use) == Some(true);
    if !same || !ready {
        return Ok(());
    }
    publish(
        ctx,
        &vs.object_ref(&()),
        Some(content.object_ref(&())),
        message,
    )
    .await?;
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(status_patch(message)),
    )
    .await?;
    info!(snapshot = %format!("{namespace}/{name}"), "VolumeSnapshot marked lost");
    Ok(())
}

/// A Warning Event `SnapshotLost` on `regarding`.
pub async fn publish<N: NodeSnapshots>(
    ctx: &Context<N>,
    regarding: &ObjectReference,
    related: Option<ObjectReference>,
    message: &str,
) -> Result<()> {
    ctx.recorder
        .publish(
            &Event {
                type_: EventType::Warning,
                reason: EVENT_REASON.into(),
                note: Some(message.into()),
                action: "CheckSnapshot".into(),
                secondary: related,
            },
            regarding,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_recognised_and_names_the_reason() {
        let m = message("s1:v:x:n1", LostReason::Overflow);
        assert!(m.contains("overflow") && m.contains("s1:v:x:n1"), "{m}");
        let e = SnapshotError {
            message: Some(m),
            time: None,
        };
        assert!(is_marked(Some(&e)));
        let other = SnapshotError {
            message: Some("Failed to check and update snapshot content".into()),
            time: None,
        };
        assert!(!is_marked(Some(&other)));
        assert!(!is_marked(None));
    }
}
