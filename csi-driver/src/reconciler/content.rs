//! Reconciling one VolumeSnapshotContent of this driver: a ready snapshot
//! is checked with its node every `check_interval`; one the node reports
//! lost is marked not ready with the reason (see [`super::lost`]).

use std::sync::Arc;

use kube::runtime::controller::Action;
use tracing::{debug, warn};

use super::lost;
use super::metrics::Kind;
use super::resources::{being_deleted, VolumeSnapshotContent};
use super::{Context, NodeSnapshots, SnapshotState};
use crate::Result;
use blksnap_node_api::ids;

pub async fn reconcile<N: NodeSnapshots>(
    content: Arc<VolumeSnapshotContent>,
    ctx: Arc<Context<N>>,
) -> Result<Action> {
    if content.spec.driver != ctx.config.driver || being_deleted(&content.metadata) {
        return Ok(Action::await_change());
    }
    let _timer = ctx.metrics.reconcile(Kind::Content);
    let name = content.metadata.name.as_deref().unwrap_or_default();
    let status = content.status.as_ref();
    let Some(handle) = content.handle() else {
        // Not cut yet: the status update that brings the handle wakes us.
        return Ok(Action::await_change());
    };
    let Some(node) = ids::node_of(handle) else {
        warn!(
            content = name,
            handle, "content of this driver with a foreign snapshot id; ignored"
        );
        return Ok(Action::await_change());
    };
    match status.and_then(|s| s.ready_to_use) {
        Some(true) => {}
        Some(false) if lost::is_marked(status.and_then(|s| s.error.as_ref())) => {
            // Marked by an earlier pass; finish what it may not have.
            let message = status
                .and_then(|s| s.error.as_ref()?.message.clone())
                .unwrap_or_default();
            lost::mark_snapshot(&ctx, &content, &message).await?;
            return Ok(Action::await_change());
        }
        // Being created, or not ready for a reason of csi-snapshotter's.
        _ => return Ok(Action::await_change()),
    }
    match ctx.nodes.snapshot(handle).await? {
        SnapshotState::Ready => {
            debug!(content = name, node, "snapshot held by its node");
            Ok(Action::requeue(ctx.config.check_interval))
        }
        SnapshotState::Lost(reason) => {
            warn!(
                content = name,
                node,
                reason = reason.as_str(),
                "snapshot lost on its node"
            );
            let message = lost::message(handle, reason);
            lost::mark_content(&ctx, &content, &message).await?;
            ctx.metrics.lost(reason);
            lost::mark_snapshot(&ctx, &content, &message).await?;
            Ok(Action::await_change())
        }
    }
}
