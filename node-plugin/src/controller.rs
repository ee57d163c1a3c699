//! CSI Controller for this node's volumes, served on the node API: the
//! cluster's controller routes each call here by the node in the ids.

use std::collections::HashMap;
use std::sync::Arc;

use csi::controller_server::Controller;
use csi::controller_service_capability::rpc::Type as Cap;
use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::AccessType;
use csi_proto::csi::v1 as csi;
use tonic::{Request, Response, Status};

use crate::ids::VolumeId;
use crate::plugin::{CreateVolume, Plugin, SnapshotFilter};
use crate::server::blocking;
use crate::state::{BackendKind, SnapshotRecord, Source, VolumeRecord};
use crate::{Error, Result, TOPOLOGY_KEY};

/// StorageClass parameter naming the backend (`pool` or `device`).
pub const PARAM_BACKEND: &str = "backend";
/// Parameters with this prefix belong to the sidecars.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";
/// File systems the node formats.
pub const FS_TYPES: [&str; 2] = ["ext4", "xfs"];
/// Metadata key that carries why a listed snapshot is not ready:
/// `<snapshot id> <reason>` per lost snapshot (the CSI Snapshot message has
/// no field for it).
pub const LOST_METADATA: &str = "x-blksnap-lost";

/// How a volume is consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Block,
    Mount { fs_type: String, flags: Vec<String> },
}

/// Checks one volume capability: block or mount (ext4, xfs), single-node
/// access modes only (the volumes are node-local).
pub fn access_of(cap: &csi::VolumeCapability) -> Result<Access> {
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| m.mode())
        .ok_or(Error::Missing("volume_capability.access_mode"))?;
    match mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => {}
        other => {
            return Err(Error::invalid(
                "access_mode",
                format!(
                    "{} is not offered: volumes are node-local",
                    other.as_str_name()
                ),
            ))
        }
    }
    match &cap.access_type {
        Some(AccessType::Block(_)) => Ok(Access::Block),
        Some(AccessType::Mount(m)) => {
            let fs_type = if m.fs_type.is_empty() {
                FS_TYPES[0].to_owned()
            } else {
                m.fs_type.clone()
            };
            if !FS_TYPES.contains(&fs_type.as_str()) {
                return Err(Error::invalid(
                    "fs_type",
                    format!("{fs_type:?} is not offered (ext4, xfs)"),
                ));
            }
            Ok(Access::Mount {
                fs_type,
                flags: m.mount_flags.clone(),
            })
        }
        None => Err(Error::Missing("volume_capability.access_type")),
    }
}

fn backend_param(params: &HashMap<String, String>) -> Result<Option<BackendKind>> {
    for key in params.keys() {
        if key != PARAM_BACKEND && !key.starts_with(SIDECAR_PREFIX) {
            return Err(Error::invalid(
                "parameters",
                format!("unknown parameter {key:?} (known: {PARAM_BACKEND})"),
            ));
        }
    }
    match params.get(PARAM_BACKEND).map(String::as_str) {
        None => Ok(None),
        Some("pool") => Ok(Some(BackendKind::Pool)),
        Some("device") => Ok(Some(BackendKind::Device)),
        Some(other) => Err(Error::invalid(
            PARAM_BACKEND,
            format!("{other:?} is not a backend (pool, device)"),
        )),
    }
}

fn bytes(field: &'static str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::invalid(field, "must not be negative"))
}

/// The topology of this node's volumes.
pub fn topology(node: &str) -> csi::Topology {
    csi::Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), node.to_owned())]),
    }
}

fn timestamp(secs: i64, nanos: i32) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos,
    }
}

/// The CSI view of a snapshot record.
pub fn csi_snapshot(plugin: &Plugin, rec: &SnapshotRecord) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: i64::try_from(rec.capacity).unwrap_or(i64::MAX),
        snapshot_id: plugin.snapshot_id(rec).to_string(),
        source_volume_id: VolumeId {
            local: rec.volume.clone(),
            node: plugin.settings.node_id.clone(),
        }
        .to_string(),
        creation_time: Some(timestamp(rec.created_secs, rec.created_nanos)),
        ready_to_use: rec.lost.is_none(),
        group_snapshot_id: rec
            .group
            .map(|kernel| {
                crate::ids::GroupSnapshotId {
                    kernel,
                    node: plugin.settings.node_id.clone(),
                }
                .to_string()
            })
            .unwrap_or_default(),
    }
}

/// Adds a [`LOST_METADATA`] entry per lost snapshot.
pub fn annotate_lost<T>(plugin: &Plugin, response: &mut Response<T>, recs: &[SnapshotRecord]) {
    for rec in recs {
        if let Some(lost) = &rec.lost {
            let value = format!("{} {}", plugin.snapshot_id(rec), lost.reason.as_str());
            if let Ok(v) = value.parse() {
                response.metadata_mut().append(LOST_METADATA, v);
            }
        }
    }
}

fn csi_volume(
    plugin: &Plugin,
    vol: &VolumeRecord,
    source: Option<csi::VolumeContentSource>,
) -> csi::Volume {
    csi::Volume {
        capacity_bytes: i64::try_from(vol.capacity).unwrap_or(i64::MAX),
        volume_id: plugin.volume_id(vol).to_string(),
        volume_context: HashMap::from([(PARAM_BACKEND.to_owned(), vol.backend.name().to_owned())]),
        content_source: source,
        accessible_topology: vec![topology(&plugin.settings.node_id)],
    }
}

/// The Controller service.
#[derive(Debug, Clone)]
pub struct ControllerService {
    plugin: Arc<Plugin>,
}

impl ControllerService {
    pub fn new(plugin: Arc<Plugin>) -> Self {
        ControllerService { plugin }
    }

    fn create_volume_request(&self, r: &csi::CreateVolumeRequest) -> Result<CreateVolume> {
        if r.name.is_empty() {
            return Err(Error::Missing("name"));
        }
        if r.volume_capabilities.is_empty() {
            return Err(Error::Missing("volume_capabilities"));
        }
        for cap in &r.volume_capabilities {
            access_of(cap)?;
        }
        let backend = backend_param(&r.parameters)?;
        let (required, limit) = match &r.capacity_range {
            Some(c) => (
                bytes("required_bytes", c.required_bytes)?,
                bytes("limit_bytes", c.limit_bytes)?,
            ),
            None => (0, 0),
        };
        if let Some(req) = &r.accessibility_requirements {
            let here = topology(&self.plugin.settings.node_id);
            let fits = |t: &csi::Topology| {
                t.segments
                    .get(TOPOLOGY_KEY)
                    .is_none_or(|n| *n == self.plugin.settings.node_id)
            };
            if !req.requisite.is_empty() && !req.requisite.iter().any(fits) {
                return Err(Error::Exhausted(format!(
                    "the volume would be on {:?}, which no requisite topology allows",
                    here.segments
                )));
            }
        }
        use csi::volume_content_source::Type as Src;
        let source = match r
            .volume_content_source
            .as_ref()
            .and_then(|s| s.r#type.as_ref())
        {
            None => None,
            Some(Src::Snapshot(s)) if s.snapshot_id.is_empty() => {
                return Err(Error::Missing("volume_content_source.snapshot.snapshot_id"))
            }
            Some(Src::Volume(v)) if v.volume_id.is_empty() => {
                return Err(Error::Missing("volume_content_source.volume.volume_id"))
            }
            Some(Src::Snapshot(s)) => {
                // An id that is not ours cannot name an existing snapshot.
                if s.snapshot_id.parse::<crate::ids::SnapshotId>().is_err() {
                    return Err(Error::not_found("snapshot", &s.snapshot_id));
                }
                Some(Source::Snapshot(s.snapshot_id.clone()))
            }
            Some(Src::Volume(v)) => {
                if v.volume_id.parse::<VolumeId>().is_err() {
                    return Err(Error::not_found("volume", &v.volume_id));
                }
                Some(Source::Volume(v.volume_id.clone()))
            }
        };
        Ok(CreateVolume {
            name: r.name.clone(),
            required,
            limit,
            backend,
            source,
        })
    }
}

fn parse_volume(text: &str) -> Result<VolumeId> {
    if text.is_empty() {
        return Err(Error::Missing("volume_id"));
    }
    // An id that is not ours names no volume here.
    text.parse().map_err(|_| Error::not_found("volume", text))
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let r = request.into_inner();
        let req = self.create_volume_request(&r)?;
        let plugin = Arc::clone(&self.plugin);
        let vol = blocking(move || plugin.create_volume(&req)).await?;
        Ok(Response::new(csi::CreateVolumeResponse {
            volume: Some(csi_volume(&self.plugin, &vol, r.volume_content_source)),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let id = request.into_inner().volume_id;
        if id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        let plugin = Arc::clone(&self.plugin);
        blocking(move || plugin.delete_volume(&id)).await?;
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        Err(Error::Unsupported("ControllerPublishVolume").into())
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        Err(Error::Unsupported("ControllerUnpublishVolume").into())
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let r = request.into_inner();
        let id = parse_volume(&r.volume_id)?;
        if r.volume_capabilities.is_empty() {
            return Err(Error::Missing("volume_capabilities").into());
        }
        self.plugin.volume(&id)?;
        let unsupported = r
            .volume_capabilities
            .iter()
            .find_map(|c| access_of(c).err());
        let response = match unsupported {
            Some(e) => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: e.to_string(),
            },
            None => csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: r.volume_context,
                    volume_capabilities: r.volume_capabilities,
                    parameters: r.parameters,
                    mutable_parameters: r.mutable_parameters,
                }),
                message: String::new(),
            },
        };
        Ok(Response::new(response))
    }

    async fn list_volumes(
        &self,
        _request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        Err(Error::Unsupported("ListVolumes").into())
    }

    async fn get_capacity(
        &self,
        _request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        Err(Error::Unsupported("GetCapacity").into())
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        let caps = [
            Cap::CreateDeleteVolume,
            Cap::CreateDeleteSnapshot,
            Cap::ListSnapshots,
            Cap::CloneVolume,
            Cap::ExpandVolume,
        ];
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities: caps
                .into_iter()
                .map(|t| csi::ControllerServiceCapability {
                    r#type: Some(csi::controller_service_capability::Type::Rpc(
                        csi::controller_service_capability::Rpc { r#type: t as i32 },
                    )),
                })
                .collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Error::Missing("name").into());
        }
        let source = parse_volume(&r.source_volume_id)?;
        let plugin = Arc::clone(&self.plugin);
        let rec = blocking(move || plugin.create_snapshot(&r.name, &source, &r.parameters)).await?;
        Ok(Response::new(csi::CreateSnapshotResponse {
            snapshot: Some(csi_snapshot(&self.plugin, &rec)),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        let id = request.into_inner().snapshot_id;
        if id.is_empty() {
            return Err(Error::Missing("snapshot_id").into());
        }
        let plugin = Arc::clone(&self.plugin);
        blocking(move || plugin.delete_snapshot(&id)).await?;
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        let r = request.into_inner();
        let filter = SnapshotFilter {
            snapshot_id: r.snapshot_id,
            source_volume_id: r.source_volume_id,
            max_entries: r.max_entries,
            starting_token: r.starting_token,
        };
        let plugin = Arc::clone(&self.plugin);
        let (recs, next_token) = blocking(move || plugin.list_snapshots(&filter)).await?;
        let mut response = Response::new(csi::ListSnapshotsResponse {
            entries: recs
                .iter()
                .map(|rec| csi::list_snapshots_response::Entry {
                    snapshot: Some(csi_snapshot(&self.plugin, rec)),
                })
                .collect(),
            next_token,
        });
        annotate_lost(&self.plugin, &mut response, &recs);
        Ok(response)
    }

    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        let id = request.into_inner().snapshot_id;
        if id.is_empty() {
            return Err(Error::Missing("snapshot_id").into());
        }
        let filter = SnapshotFilter {
            snapshot_id: id.clone(),
            ..SnapshotFilter::default()
        };
        let plugin = Arc::clone(&self.plugin);
        let (recs, _) = blocking(move || plugin.list_snapshots(&filter)).await?;
        let rec = recs
            .first()
            .ok_or_else(|| Status::from(Error::not_found("snapshot", id)))?;
        let mut response = Response::new(csi::GetSnapshotResponse {
            snapshot: Some(csi_snapshot(&self.plugin, rec)),
        });
        annotate_lost(&self.plugin, &mut response, &recs);
        Ok(response)
    }

    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        let r = request.into_inner();
        let id = parse_volume(&r.volume_id)?;
        let range = r.capacity_range.ok_or(Error::Missing("capacity_range"))?;
        let required = bytes("required_bytes", range.required_bytes)?;
        let limit = bytes("limit_bytes", range.limit_bytes)?;
        let block = match &r.volume_capability {
            Some(cap) => access_of(cap)? == Access::Block,
            None => false,
        };
        let plugin = Arc::clone(&self.plugin);
        let capacity = blocking(move || plugin.expand_volume(&id, required, limit)).await?;
        Ok(Response::new(csi::ControllerExpandVolumeResponse {
            capacity_bytes: i64::try_from(capacity).unwrap_or(i64::MAX),
            node_expansion_required: !block,
        }))
    }

    async fn controller_get_volume(
        &self,
        _request: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        Err(Error::Unsupported("ControllerGetVolume").into())
    }

    async fn controller_modify_volume(
        &self,
        _request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        Err(Error::Unsupported("ControllerModifyVolume").into())
    }
}
