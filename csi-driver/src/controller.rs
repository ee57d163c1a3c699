//! CSI Controller: each call goes to the node its ids name; CreateVolume
//! to the node [`placement`](crate::placement) chooses; GetCapacity,
//! ListVolumes and an unfiltered ListSnapshots to every node.

use std::sync::Arc;

use blksnap_node_api::ids::{SnapshotId, VolumeId};
use blksnap_node_api::TOPOLOGY_KEY;
use csi::controller_client::ControllerClient;
use csi::controller_server::Controller;
use csi_proto::csi::v1 as csi;
use futures::stream::{self, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::nodes::{lost_of, relay, with_lost, Nodes};
use crate::paging::{self, Page};
use crate::{placement, Error, Result};

/// The Controller service.
#[derive(Clone)]
pub struct ControllerService {
    nodes: Arc<Nodes>,
}

/// The node of a volume id; `None` for an id that is not this driver's.
fn volume_node(text: &str) -> Option<String> {
    text.parse::<VolumeId>().ok().map(|v| v.node)
}

fn snapshot_node(text: &str) -> Option<String> {
    text.parse::<SnapshotId>().ok().map(|s| s.node)
}

async fn get_capacity(
    channel: Channel,
    r: Request<csi::GetCapacityRequest>,
) -> Result<Response<csi::GetCapacityResponse>, Status> {
    ControllerClient::new(channel).get_capacity(r).await
}

impl ControllerService {
    pub fn new(nodes: Arc<Nodes>) -> Self {
        ControllerService { nodes }
    }

    /// The node a CreateVolume's content source is on.
    fn source_node(r: &csi::CreateVolumeRequest) -> Result<Option<String>> {
        use csi::volume_content_source::Type as Src;
        match r
            .volume_content_source
            .as_ref()
            .and_then(|s| s.r#type.as_ref())
        {
            None => Ok(None),
            Some(Src::Snapshot(s)) if s.snapshot_id.is_empty() => {
                Err(Error::Missing("volume_content_source.snapshot.snapshot_id"))
            }
            Some(Src::Volume(v)) if v.volume_id.is_empty() => {
                Err(Error::Missing("volume_content_source.volume.volume_id"))
            }
            Some(Src::Snapshot(s)) => snapshot_node(&s.snapshot_id)
                .map(Some)
                .ok_or_else(|| Error::not_found("snapshot", &s.snapshot_id)),
            Some(Src::Volume(v)) => volume_node(&v.volume_id)
                .map(Some)
                .ok_or_else(|| Error::not_found("volume", &v.volume_id)),
        }
    }

    /// One ListSnapshots page of `node`.
    async fn snapshots_of(
        nodes: Arc<Nodes>,
        node: String,
        meta: tonic::metadata::MetadataMap,
        r: csi::ListSnapshotsRequest,
    ) -> Result<Page<csi::list_snapshots_response::Entry>> {
        let answer = nodes
            .call(&node, "ListSnapshots", &meta, r, |c, r| async move {
                ControllerClient::new(c).list_snapshots(r).await
            })
            .await?;
        let lost = lost_of(answer.metadata());
        let a = answer.into_inner();
        Ok(Page {
            entries: a.entries,
            next_token: a.next_token,
            lost,
        })
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request_in: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        if r.name.is_empty() {
            return Err(Error::Missing("name").into());
        }
        let source = Self::source_node(&r)?;
        let order = placement::candidates(
            &r.name,
            source.as_deref(),
            r.accessibility_requirements.as_ref(),
            &self.nodes.known(),
        )?;
        let mut full = Vec::new();
        for node in order {
            let answer = self
                .nodes
                .call(&node, "CreateVolume", &meta, r.clone(), |c, r| async move {
                    ControllerClient::new(c).create_volume(r).await
                })
                .await;
            match answer {
                Err(Error::Node { status, .. }) if status.code() == Code::ResourceExhausted => {
                    full.push(format!("{node}: {}", status.message()));
                }
                answer => {
                    if answer.is_ok() {
                        tracing::info!(name = %r.name, node, "volume created");
                    }
                    return relay(answer);
                }
            }
        }
        Err(Error::Exhausted(format!(
            "no node the request allows has room for {:?}: {}",
            r.name,
            full.join("; ")
        ))
        .into())
    }

    async fn delete_volume(
        &self,
        request_in: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        if r.volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        // An id that is not ours names no volume: already gone.
        let Some(node) = volume_node(&r.volume_id) else {
            return Ok(Response::new(csi::DeleteVolumeResponse {}));
        };
        let answer = self
            .nodes
            .call(&node, "DeleteVolume", &meta, r, |c, r| async move {
                ControllerClient::new(c).delete_volume(r).await
            })
            .await;
        relay(answer)
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerPublishVolume is not offered",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerUnpublishVolume is not offered",
        ))
    }

    async fn validate_volume_capabilities(
        &self,
        request_in: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        if r.volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        let node =
            volume_node(&r.volume_id).ok_or_else(|| Error::not_found("volume", &r.volume_id))?;
        let answer = self
            .nodes
            .call(
                &node,
                "ValidateVolumeCapabilities",
                &meta,
                r,
                |c, r| async move {
                    ControllerClient::new(c)
                        .validate_volume_capabilities(r)
                        .await
                },
            )
            .await;
        relay(answer)
    }

    async fn list_volumes(
        &self,
        request_in: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        let page = paging::across(
            &self.nodes.known(),
            r.max_entries,
            &r.starting_token,
            |node, max_entries, starting_token| {
                let (nodes, meta) = (Arc::clone(&self.nodes), meta.clone());
                async move {
                    let r = csi::ListVolumesRequest {
                        max_entries,
                        starting_token,
                    };
                    let a = nodes
                        .call(&node, "ListVolumes", &meta, r, |c, r| async move {
                            ControllerClient::new(c).list_volumes(r).await
                        })
                        .await?
                        .into_inner();
                    Ok(Page {
                        entries: a.entries,
                        next_token: a.next_token,
                        lost: vec![],
                    })
                }
            },
        )
        .await?;
        Ok(Response::new(csi::ListVolumesResponse {
            entries: page.entries,
            next_token: page.next_token,
        }))
    }

    async fn get_capacity(
        &self,
        request_in: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        let segment = r
            .accessible_topology
            .as_ref()
            .and_then(|t| t.segments.get(TOPOLOGY_KEY))
            .cloned();
        if let Some(node) = segment {
            let answer = self
                .nodes
                .call(&node, "GetCapacity", &meta, r, get_capacity)
                .await;
            return relay(answer);
        }
        // No node named: the capacity over all of them.
        let known = self.nodes.known();
        let asks: Vec<_> = known
            .iter()
            .map(|node| {
                let (meta, r) = (meta.clone(), r.clone());
                async move {
                    let answer = self.nodes.call(node, "GetCapacity", &meta, r, get_capacity);
                    answer.await.map(Response::into_inner)
                }
            })
            .collect();
        // As many at once as an unpaged listing asks.
        let answers: Vec<_> = stream::iter(asks)
            .buffer_unordered(paging::FAN_OUT)
            .collect()
            .await;
        let mut total = csi::GetCapacityResponse::default();
        for a in answers {
            let a = a?;
            total.available_capacity = total
                .available_capacity
                .saturating_add(a.available_capacity);
            total.maximum_volume_size = total.maximum_volume_size.max(a.maximum_volume_size);
            total.minimum_volume_size = match (total.minimum_volume_size, a.minimum_volume_size) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            };
        }
        Ok(Response::new(total))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(
            blksnap_node_api::capabilities::controller_response(),
        ))
    }

    async fn create_snapshot(
        &self,
        request_in: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        if r.name.is_empty() {
            return Err(Error::Missing("name").into());
        }
        if r.source_volume_id.is_empty() {
            return Err(Error::Missing("source_volume_id").into());
        }
        let node = volume_node(&r.source_volume_id)
            .ok_or_else(|| Error::not_found("volume", &r.source_volume_id))?;
        let answer = self
            .nodes
            .call(&node, "CreateSnapshot", &meta, r, |c, r| async move {
                ControllerClient::new(c).create_snapshot(r).await
            })
            .await;
        relay(answer)
    }

    async fn delete_snapshot(
        &self,
        request_in: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        if r.snapshot_id.is_empty() {
            return Err(Error::Missing("snapshot_id").into());
        }
        let Some(node) = snapshot_node(&r.snapshot_id) else {
            return Ok(Response::new(csi::DeleteSnapshotResponse {}));
        };
        let answer = self
            .nodes
            .call(&node, "DeleteSnapshot", &meta, r, |c, r| async move {
                ControllerClient::new(c).delete_snapshot(r).await
            })
            .await;
        relay(answer)
    }

    async fn list_snapshots(
        &self,
        request_in: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        let by_snapshot = (!r.snapshot_id.is_empty()).then(|| snapshot_node(&r.snapshot_id));
        let by_volume = (!r.source_volume_id.is_empty()).then(|| volume_node(&r.source_volume_id));
        let filtered = match (by_snapshot, by_volume) {
            (None, None) => None,
            (Some(a), None) | (None, Some(a)) => Some(a),
            (Some(a), Some(b)) => Some(a.filter(|a| b.as_ref() == Some(a))),
        };
        let page = match filtered {
            // A filter of an id that is not ours, or of two nodes: nothing.
            Some(None) => Page {
                entries: vec![],
                next_token: String::new(),
                lost: vec![],
            },
            Some(Some(node)) => Self::snapshots_of(Arc::clone(&self.nodes), node, meta, r).await?,
            None => {
                paging::across(
                    &self.nodes.known(),
                    r.max_entries,
                    &r.starting_token,
                    |node, max_entries, starting_token| {
                        Self::snapshots_of(
                            Arc::clone(&self.nodes),
                            node,
                            meta.clone(),
                            csi::ListSnapshotsRequest {
                                max_entries,
                                starting_token,
                                ..r.clone()
                            },
                        )
                    },
                )
                .await?
            }
        };
        Ok(with_lost(
            Response::new(csi::ListSnapshotsResponse {
                entries: page.entries,
                next_token: page.next_token,
            }),
            page.lost,
        ))
    }

    async fn get_snapshot(
        &self,
        request_in: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        if r.snapshot_id.is_empty() {
            return Err(Error::Missing("snapshot_id").into());
        }
        let node = snapshot_node(&r.snapshot_id)
            .ok_or_else(|| Error::not_found("snapshot", &r.snapshot_id))?;
        let answer = self
            .nodes
            .call(&node, "GetSnapshot", &meta, r, |c, r| async move {
                ControllerClient::new(c).get_snapshot(r).await
            })
            .await;
        relay(answer)
    }

    async fn controller_expand_volume(
        &self,
        request_in: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let (meta, _, r) = request_in.into_parts();
        if r.volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        let node =
            volume_node(&r.volume_id).ok_or_else(|| Error::not_found("volume", &r.volume_id))?;
        let answer = self
            .nodes
            .call(
                &node,
                "ControllerExpandVolume",
                &meta,
                r,
                |c, r| async move { ControllerClient::new(c).controller_expand_volume(r).await },
            )
            .await;
        relay(answer)
    }

    async fn controller_get_volume(
        &self,
        _request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented("ControllerGetVolume is not offered"))
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerModifyVolume is not offered",
        ))
    }
}
