//! Reconciling one VolumeGroupSnapshotContent of this driver: a ready
//! group is checked member by member with its node; if any member is lost
//! the group is marked not ready, naming the member and the reason, with an
//! Event on the VolumeGroupSnapshot. Each member also has its own
//! VolumeSnapshotContent, which [`super::content`] marks.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource};
use serde_json::json;
use tracing::{debug, warn};

use super::lost;
use super::metrics::Kind;
use super::resources::{being_deleted, SnapshotError, VolumeGroupSnapshotContent};
use super::{Context, NodeSnapshots, SnapshotState};
use crate::Result;
use blksnap_node_api::ids;

pub async fn reconcile<N: NodeSnapshots>(
    group: Arc<VolumeGroupSnapshotContent>,
    ctx: Arc<Context<N>>,
) -> Result<Action> {
    if group.spec.driver != ctx.config.driver || being_deleted(&group.metadata) {
        return Ok(Action::await_change());
    }
    let _timer = ctx.metrics.reconcile(Kind::GroupContent);
    let name = group.metadata.name.clone().unwrap_or_default();
    let status = group.status.as_ref();
    if status.and_then(|s| s.ready_to_use) != Some(true) {
        return Ok(Action::await_change());
    }
    for member in group.member_handles() {
        if ids::node_of(member).is_none() {
            warn!(
                group = name,
                member, "group content with a foreign snapshot id; ignored"
            );
            return Ok(Action::await_change());
        }
        let SnapshotState::Lost(reason) = ctx.nodes.snapshot(member).await? else {
            continue;
        };
        warn!(
            group = name,
            member,
            reason = reason.as_str(),
            "group member lost on its node"
        );
        let message = lost::message(member, reason);
        let error = SnapshotError {
            message: Some(message.clone()),
            time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            )),
        };
        // The Event first: once the status says not ready this is not
        // reconciled again, so a failed Event would never be retried.
        if let Some(regarding) = group_snapshot_ref(&group) {
            lost::publish(&ctx, &regarding, Some(group.object_ref(&())), &message).await?;
        }
        let api: Api<VolumeGroupSnapshotContent> = Api::all(ctx.client.clone());
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyToUse": false, "error": error}})),
        )
        .await?;
        ctx.metrics.lost(reason);
        return Ok(Action::await_change());
    }
    debug!(group = name, "every member held by its node");
    Ok(Action::requeue(ctx.config.check_interval))
}

/// The VolumeGroupSnapshot the content is bound to, as an Event's subject.
fn group_snapshot_ref(group: &VolumeGroupSnapshotContent) -> Option<ObjectReference> {
    let r = &group.spec.volume_group_snapshot_ref;
    r.name.as_ref()?;
    Some(ObjectReference {
        api_version: Some("groupsnapshot.storage.k8s.io/v1".into()),
        kind: Some("VolumeGroupSnapshot".into()),
        name: r.name.clone(),
        namespace: r.namespace.clone(),
        uid: r.uid.clone(),
        ..Default::default()
    })
}
