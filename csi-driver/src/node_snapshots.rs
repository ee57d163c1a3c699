//! The reconciler's questions to the nodes ([`NodeSnapshots`]), asked over
//! the router's channels: GetSnapshot, ListSnapshots, DeleteSnapshot and
//! DeleteVolumeGroupSnapshot of each node's API, each with a deadline so a
//! node that hangs cannot hold a reconcile.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use blksnap_node_api::ids::{self, GroupSnapshotId};
use blksnap_node_api::lost::{parse_lost_value, LostReason, LOST_METADATA};
use csi::controller_client::ControllerClient;
use csi::group_controller_client::GroupControllerClient;
use csi_proto::csi::v1 as csi;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status};

use crate::nodes::Nodes;
use crate::reconciler::{NodeError, NodeSnapshot, NodeSnapshots, SnapshotState};
use crate::Error;

/// How long one call to a node may take.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// Entries asked for per ListSnapshots page.
const PAGE: i32 = 500;

/// [`NodeSnapshots`] over the nodes' APIs.
#[derive(Clone)]
pub struct RoutedSnapshots {
    nodes: Arc<Nodes>,
}

impl RoutedSnapshots {
    pub fn new(nodes: Arc<Nodes>) -> Self {
        RoutedSnapshots { nodes }
    }

    fn controller(
        &self,
        node: &str,
    ) -> Result<ControllerClient<tonic::transport::Channel>, NodeError> {
        Ok(ControllerClient::new(
            self.nodes.channel(node).map_err(|e| unreachable(node, e))?,
        ))
    }
}

fn with_deadline<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(CALL_DEADLINE);
    r
}

/// The node of `id`, which the reconciler took from a content of this
/// driver.
fn node_of(id: &str) -> Result<String, NodeError> {
    ids::node_of(id).ok_or_else(|| NodeError::Failed {
        node: "?".into(),
        message: format!("{id:?} is not an id of this driver"),
    })
}

fn unreachable(node: &str, e: Error) -> NodeError {
    NodeError::Unavailable {
        node: node.to_owned(),
        reason: e.to_string(),
    }
}

/// A node's error status: no answer (unreachable, timed out) or a refusal.
fn failed(node: &str, status: Status) -> NodeError {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => NodeError::Unavailable {
            node: node.to_owned(),
            reason: status.message().to_owned(),
        },
        _ => NodeError::Failed {
            node: node.to_owned(),
            message: format!("{:?}: {}", status.code(), status.message()),
        },
    }
}

/// Why `id` is lost, from the `x-blksnap-lost` entries of an answer.
fn lost_reason(metadata: &MetadataMap, id: &str) -> Option<LostReason> {
    metadata
        .get_all(LOST_METADATA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(parse_lost_value)
        .find(|(of, _)| *of == id)
        .map(|(_, reason)| LostReason::parse(reason))
}

/// The state a GetSnapshot answer gives `id`.
fn state_of(
    id: &str,
    answer: Result<tonic::Response<csi::GetSnapshotResponse>, Status>,
) -> Result<SnapshotState, Status> {
    let response = match answer {
        Ok(r) => r,
        // The node has no record of it.
        Err(s) if s.code() == Code::NotFound => return Ok(SnapshotState::Lost(LostReason::Gone)),
        Err(s) => return Err(s),
    };
    if let Some(reason) = lost_reason(response.metadata(), id) {
        return Ok(SnapshotState::Lost(reason));
    }
    match response.into_inner().snapshot {
        Some(s) if s.ready_to_use => Ok(SnapshotState::Ready),
        // Not ready and no reason given: a node plugin marks every
        // snapshot it cannot serve with one, so this one is of a node that
        // says less; still lost.
        Some(_) => Ok(SnapshotState::Lost(LostReason::Other)),
        None => Err(Status::internal("GetSnapshot answered without a snapshot")),
    }
}

/// A listed snapshot as the reconciler sees it.
fn listed(s: csi::Snapshot) -> NodeSnapshot {
    let created = s
        .creation_time
        .and_then(|t| {
            let secs = u64::try_from(t.seconds).ok()?;
            let nanos = u32::try_from(t.nanos).ok()?;
            SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        })
        // Without a time it never looks old, so it is never collected.
        .unwrap_or_else(SystemTime::now);
    NodeSnapshot {
        id: s.snapshot_id,
        source_volume: s.source_volume_id,
        group: (!s.group_snapshot_id.is_empty()).then_some(s.group_snapshot_id),
        created,
    }
}

impl NodeSnapshots for RoutedSnapshots {
    fn nodes(&self) -> Vec<String> {
        self.nodes.known()
    }

    async fn snapshot(&self, id: &str) -> Result<SnapshotState, NodeError> {
        let node = node_of(id)?;
        let mut client = self.controller(&node)?;
        let call = client.get_snapshot(with_deadline(csi::GetSnapshotRequest {
            snapshot_id: id.to_owned(),
            secrets: Default::default(),
        }));
        let answer = self.nodes.timed(&node, "GetSnapshot", call).await;
        state_of(id, answer).map_err(|s| failed(&node, s))
    }

    async fn list(&self, node: &str) -> Result<Vec<NodeSnapshot>, NodeError> {
        let mut client = self.controller(node)?;
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let call = client.list_snapshots(with_deadline(csi::ListSnapshotsRequest {
                max_entries: PAGE,
                starting_token: std::mem::take(&mut token),
                ..Default::default()
            }));
            let page = self
                .nodes
                .timed(node, "ListSnapshots", call)
                .await
                .map_err(|s| failed(node, s))?
                .into_inner();
            all.extend(
                page.entries
                    .into_iter()
                    .filter_map(|e| e.snapshot)
                    .map(listed),
            );
            if page.next_token.is_empty() {
                return Ok(all);
            }
            token = page.next_token;
        }
    }

    async fn delete(&self, id: &str) -> Result<(), NodeError> {
        let node = node_of(id)?;
        let channel = self
            .nodes
            .channel(&node)
            .map_err(|e| unreachable(&node, e))?;
        let answer = if id.parse::<GroupSnapshotId>().is_ok() {
            // The members go with the group (the node finds them itself;
            // none given means all of them).
            let mut client = GroupControllerClient::new(channel);
            let call = client.delete_volume_group_snapshot(with_deadline(
                csi::DeleteVolumeGroupSnapshotRequest {
                    group_snapshot_id: id.to_owned(),
                    ..Default::default()
                },
            ));
            self.nodes
                .timed(&node, "DeleteVolumeGroupSnapshot", call)
                .await
                .map(drop)
        } else {
            let mut client = ControllerClient::new(channel);
            let call = client.delete_snapshot(with_deadline(csi::DeleteSnapshotRequest {
                snapshot_id: id.to_owned(),
                ..Default::default()
            }));
            self.nodes
                .timed(&node, "DeleteSnapshot", call)
                .await
                .map(drop)
        };
        match answer {
            // Already gone.
            Err(s) if s.code() == Code::NotFound => Ok(()),
            other => other.map_err(|s| failed(&node, s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(
        ready: bool,
        lost: &[&str],
    ) -> Result<tonic::Response<csi::GetSnapshotResponse>, Status> {
        let mut r = tonic::Response::new(csi::GetSnapshotResponse {
            snapshot: Some(csi::Snapshot {
                snapshot_id: "s1".into(),
                ready_to_use: ready,
                ..Default::default()
            }),
        });
        for v in lost {
            r.metadata_mut()
                .append(LOST_METADATA, v.parse().expect("ascii"));
        }
        Ok(r)
    }

    #[test]
    fn a_get_snapshot_answer_is_ready_lost_with_its_reason_or_gone() {
        assert_eq!(
            state_of("s1", answer(true, &[])).unwrap(),
            SnapshotState::Ready
        );
        assert_eq!(
            state_of("s1", answer(false, &["s0 io-error", "s1 overflow"])).unwrap(),
            SnapshotState::Lost(LostReason::Overflow)
        );
        assert_eq!(
            state_of("s1", answer(false, &["s1 kernel-forgot"])).unwrap(),
            SnapshotState::Lost(LostReason::KernelForgot)
        );
        assert_eq!(
            state_of("s1", answer(false, &[])).unwrap(),
            SnapshotState::Lost(LostReason::Other)
        );
        assert_eq!(
            state_of("s1", Err(Status::not_found("no such snapshot"))).unwrap(),
            SnapshotState::Lost(LostReason::Gone)
        );
        let e = state_of("s1", Err(Status::unavailable("down"))).unwrap_err();
        assert!(matches!(failed("w1", e), NodeError::Unavailable { .. }));
        let e = state_of("s1", Err(Status::internal("broken"))).unwrap_err();
        assert!(matches!(failed("w1", e), NodeError::Failed { .. }));
    }

    #[test]
    fn a_listed_snapshot_keeps_its_group_and_time() {
        let s = listed(csi::Snapshot {
            snapshot_id: "s1".into(),
            source_volume_id: "v1".into(),
            group_snapshot_id: "g1".into(),
            creation_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            ..Default::default()
        });
        assert_eq!(s.group.as_deref(), Some("g1"));
        assert_eq!(
            s.created,
            SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)
        );
        let before = SystemTime::now();
        let untimed = listed(csi::Snapshot::default());
        assert_eq!(untimed.group, None);
        assert!(untimed.created >= before, "no time: never old");
    }
}
