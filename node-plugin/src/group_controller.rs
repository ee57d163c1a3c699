//! CSI GroupController: one kernel snapshot across several volumes of
//! this node, taken at one instant.

use std::sync::Arc;

use csi::group_controller_server::GroupController;
use csi_proto::csi::v1 as csi;
use tonic::{Request, Response, Status};

use crate::controller::{annotate_lost, csi_snapshot};
use crate::plugin::Plugin;
use crate::server::blocking;
use crate::state::{GroupRecord, SnapshotRecord};
use crate::Error;

/// The GroupController service.
#[derive(Debug, Clone)]
pub struct GroupControllerService {
    plugin: Arc<Plugin>,
}

impl GroupControllerService {
    pub fn new(plugin: Arc<Plugin>) -> Self {
        GroupControllerService { plugin }
    }

    fn csi_group(&self, g: &GroupRecord, members: &[SnapshotRecord]) -> csi::VolumeGroupSnapshot {
        csi::VolumeGroupSnapshot {
            group_snapshot_id: self.plugin.group_id(g).to_string(),
            snapshots: members
                .iter()
                .map(|m| csi_snapshot(&self.plugin, m))
                .collect(),
            creation_time: Some(prost_types::Timestamp {
                seconds: g.created_secs,
                nanos: g.created_nanos,
            }),
            ready_to_use: !members.is_empty() && members.iter().all(|m| m.lost.is_none()),
        }
    }
}

#[tonic::async_trait]
impl GroupController for GroupControllerService {
    async fn group_controller_get_capabilities(
        &self,
        _request: Request<csi::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::GroupControllerGetCapabilitiesResponse>, Status> {
        use csi::group_controller_service_capability::{rpc::Type, Rpc, Type as Kind};
        Ok(Response::new(csi::GroupControllerGetCapabilitiesResponse {
            capabilities: vec![csi::GroupControllerServiceCapability {
                r#type: Some(Kind::Rpc(Rpc {
                    r#type: Type::CreateDeleteGetVolumeGroupSnapshot as i32,
                })),
            }],
        }))
    }

    async fn create_volume_group_snapshot(
        &self,
        request: Request<csi::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::CreateVolumeGroupSnapshotResponse>, Status> {
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Error::Missing("name").into());
        }
        if r.source_volume_ids.is_empty() {
            return Err(Error::Missing("source_volume_ids").into());
        }
        let plugin = Arc::clone(&self.plugin);
        let (g, members) =
            blocking(move || plugin.create_group(&r.name, &r.source_volume_ids, &r.parameters))
                .await?;
        let mut response = Response::new(csi::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(self.csi_group(&g, &members)),
        });
        annotate_lost(&self.plugin, &mut response, &members);
        Ok(response)
    }

    async fn delete_volume_group_snapshot(
        &self,
        request: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::DeleteVolumeGroupSnapshotResponse>, Status> {
        let r = request.into_inner();
        if r.group_snapshot_id.is_empty() {
            return Err(Error::Missing("group_snapshot_id").into());
        }
        let plugin = Arc::clone(&self.plugin);
        blocking(move || plugin.delete_group(&r.group_snapshot_id, &r.snapshot_ids)).await?;
        Ok(Response::new(csi::DeleteVolumeGroupSnapshotResponse {}))
    }

    async fn get_volume_group_snapshot(
        &self,
        request: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::GetVolumeGroupSnapshotResponse>, Status> {
        let r = request.into_inner();
        if r.group_snapshot_id.is_empty() {
            return Err(Error::Missing("group_snapshot_id").into());
        }
        let plugin = Arc::clone(&self.plugin);
        let (g, members) =
            blocking(move || plugin.get_group(&r.group_snapshot_id, &r.snapshot_ids)).await?;
        let mut response = Response::new(csi::GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(self.csi_group(&g, &members)),
        });
        annotate_lost(&self.plugin, &mut response, &members);
        Ok(response)
    }
}
