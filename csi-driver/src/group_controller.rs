//! CSI GroupController: a group snapshot is one kernel snapshot on one
//! node, so its volumes must all be on that node.

use std::collections::BTreeSet;
use std::sync::Arc;

use blksnap_node_api::ids::{GroupSnapshotId, VolumeId};
use csi::group_controller_client::GroupControllerClient;
use csi::group_controller_server::GroupController;
use csi_proto::csi::v1 as csi;
use tonic::{Request, Response, Status};

use crate::nodes::{relay, Nodes};
use crate::{Error, Result};

/// The GroupController service.
#[derive(Clone)]
pub struct GroupControllerService {
    nodes: Arc<Nodes>,
}

fn group_node(text: &str) -> Option<String> {
    text.parse::<GroupSnapshotId>().ok().map(|g| g.node)
}

impl GroupControllerService {
    pub fn new(nodes: Arc<Nodes>) -> Self {
        GroupControllerService { nodes }
    }
}

/// The one node all `volumes` are on.
fn members_node(volumes: &[String]) -> Result<String> {
    let mut nodes = BTreeSet::new();
    for v in volumes {
        let id: VolumeId = v.parse().map_err(|_| Error::not_found("volume", v))?;
        nodes.insert(id.node);
    }
    let mut it = nodes.iter();
    match (it.next(), it.next()) {
        (Some(node), None) => Ok(node.clone()),
        (None, _) => Err(Error::Missing("source_volume_ids")),
        _ => Err(Error::invalid(
            "source_volume_ids",
            format!(
                "the volumes are on nodes {}: a group snapshot is one kernel snapshot on one \
                 node, so its volumes must all be on the same node",
                nodes.into_iter().collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

#[tonic::async_trait]
impl GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _request: Request<csi::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::GroupControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(
            blksnap_node_api::capabilities::group_controller_response(),
        ))
    }

    async fn create_volume_group_snapshot(
        &self,
        request_in: Request<csi::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::CreateVolumeGroupSnapshotResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        if r.name.is_empty() {
            return Err(Error::Missing("name").into());
        }
        let node = members_node(&r.source_volume_ids)?;
        let answer = self
            .nodes
            .call(
                &node,
                "CreateVolumeGroupSnapshot",
                &meta,
                r,
                |c, r| async move {
                    GroupControllerClient::new(c)
                        .create_volume_group_snapshot(r)
                        .await
                },
            )
            .await;
        relay(answer)
    }

    async fn delete_volume_group_snapshot(
        &self,
        request_in: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::DeleteVolumeGroupSnapshotResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        if r.group_snapshot_id.is_empty() {
            return Err(Error::Missing("group_snapshot_id").into());
        }
        let Some(node) = group_node(&r.group_snapshot_id) else {
            return Ok(Response::new(csi::DeleteVolumeGroupSnapshotResponse {}));
        };
        let answer = self
            .nodes
            .call(
                &node,
                "DeleteVolumeGroupSnapshot",
                &meta,
                r,
                |c, r| async move {
                    GroupControllerClient::new(c)
                        .delete_volume_group_snapshot(r)
                        .await
                },
            )
            .await;
        relay(answer)
    }

    async fn get_volume_group_snapshot(
        &self,
        request_in: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::GetVolumeGroupSnapshotResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        if r.group_snapshot_id.is_empty() {
            return Err(Error::Missing("group_snapshot_id").into());
        }
        let node = group_node(&r.group_snapshot_id)
            .ok_or_else(|| Error::not_found("group snapshot", &r.group_snapshot_id))?;
        let answer = self
            .nodes
            .call(
                &node,
                "GetVolumeGroupSnapshot",
                &meta,
                r,
                |c, r| async move {
                    GroupControllerClient::new(c)
                        .get_volume_group_snapshot(r)
                        .await
                },
            )
            .await;
        relay(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_must_share_a_node() {
        let v = |local: &str, node: &str| {
            VolumeId {
                local: local.into(),
                node: node.into(),
            }
            .to_string()
        };
        assert_eq!(
            members_node(&[v("a", "w1"), v("b", "w1")]).expect("one"),
            "w1"
        );
        let e = members_node(&[v("a", "w1"), v("b", "w2")]).expect_err("two nodes");
        let s = Status::from(e);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("w1, w2"), "{}", s.message());
        let e = members_node(&["nope".into()]).expect_err("not ours");
        assert_eq!(Status::from(e).code(), tonic::Code::NotFound);
    }
}
