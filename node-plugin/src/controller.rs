//! CSI Controller for this node's volumes, served on the node API: the
//! cluster's controller routes each call here by the node in the ids.

use std::collections::HashMap;
use std::sync::Arc;

use csi::controller_server::Controller;
use csi_proto::csi::v1 as csi;
use tonic::{Request, Response, Status};

use crate::csi_convert::{access_of, annotate_lost, csi_snapshot, topology, Access};
use crate::plugin::{CreateVolume, Plugin, SnapshotFilter};
use crate::server::blocking;
use crate::state::{BackendKind, Source, VolumeRecord};
use crate::{Error, Result};
use blksnap_node_api::ids::VolumeId;
use blksnap_node_api::TOPOLOGY_KEY;

/// StorageClass parameter naming the backend (`pool` or `device`).
pub const PARAM_BACKEND: &str = "backend";
/// Parameters with this prefix belong to the sidecars.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";
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

fn csi_volume(plugin: &Plugin, vol: &VolumeRecord) -> csi::Volume {
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let source = vol.source.as_ref().map(|s| csi::VolumeContentSource {
        r#type: Some(match s {
            Source::Snapshot(id) => Type::Snapshot(SnapshotSource {
                snapshot_id: id.clone(),
            }),
            Source::Volume(id) => Type::Volume(VolumeSource {
                volume_id: id.clone(),
            }),
        }),
    });
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
                if s.snapshot_id
                    .parse::<blksnap_node_api::ids::SnapshotId>()
                    .is_err()
                {
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
            volume: Some(csi_volume(&self.plugin, &vol)),
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
        request: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        let r = request.into_inner();
        let plugin = Arc::clone(&self.plugin);
        let (vols, next_token) =
            blocking(move || plugin.list_volumes(r.max_entries, &r.starting_token)).await?;
        Ok(Response::new(csi::ListVolumesResponse {
            entries: vols
                .iter()
                .map(|v| csi::list_volumes_response::Entry {
                    volume: Some(csi_volume(&self.plugin, v)),
                    // Neither LIST_VOLUMES_PUBLISHED_NODES nor
                    // VOLUME_CONDITION is offered.
                    status: None,
                })
                .collect(),
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        let r = request.into_inner();
        for cap in &r.volume_capabilities {
            access_of(cap)?;
        }
        let kind = backend_param(&r.parameters)?;
        let elsewhere = r.accessible_topology.as_ref().is_some_and(|t| {
            t.segments
                .get(TOPOLOGY_KEY)
                .is_some_and(|n| *n != self.plugin.settings.node_id)
        });
        let bytes = if elsewhere {
            0
        } else {
            let plugin = Arc::clone(&self.plugin);
            blocking(move || plugin.available(kind)).await?
        };
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: bytes,
            maximum_volume_size: Some(bytes),
            minimum_volume_size: None,
        }))
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
        request: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        let r = request.into_inner();
        if r.name.is_empty() {
            return Err(Error::Missing("name").into());
        }
        let source = parse_volume(&r.source_volume_id)?;
        let plugin = Arc::clone(&self.plugin);
        let rec = blocking(move || plugin.create_snapshot(&r.name, &source, &r.parameters)).await?;
        let mut response = Response::new(csi::CreateSnapshotResponse {
            snapshot: Some(csi_snapshot(&self.plugin, &rec)),
        });
        annotate_lost(&self.plugin, &mut response, std::slice::from_ref(&rec));
        Ok(response)
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

#[cfg(test)]
pub(crate) mod tests {
    //! Every Controller RPC against the status codes the CSI spec gives,
    //! each case on a fresh plugin and state directory (see `testing` for
    //! the scope of the stand-ins).

    use super::*;
    use crate::guard::name_key;
    use crate::testing::{Env, FAKE_SNAPSHOTS_PER_DEVICE, NODE};
    use blksnap_node_api::lost::LOST_METADATA;
    use csi::controller_service_capability::rpc::Type as Cap;
    use csi::volume_capability::access_mode::Mode;
    use csi::volume_capability::AccessType;
    use tonic::Code;

    pub(crate) fn block_cap() -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_type: Some(AccessType::Block(csi::volume_capability::BlockVolume {})),
            access_mode: Some(csi::volume_capability::AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        }
    }

    fn mount_cap(fs: &str, mode: Mode) -> csi::VolumeCapability {
        csi::VolumeCapability {
            access_type: Some(AccessType::Mount(csi::volume_capability::MountVolume {
                fs_type: fs.into(),
                mount_flags: vec![],
                volume_mount_group: String::new(),
            })),
            access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
        }
    }

    pub(crate) fn volume_request(name: &str, bytes: i64) -> csi::CreateVolumeRequest {
        csi::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![block_cap()],
            ..Default::default()
        }
    }

    pub(crate) fn new_volume(env: &Env, name: &str, bytes: i64) -> String {
        let vol = env
            .plugin
            .create_volume(&CreateVolume {
                name: name.into(),
                required: bytes as u64,
                limit: 0,
                backend: None,
                source: None,
            })
            .expect("create volume");
        env.plugin.volume_id(&vol).to_string()
    }

    pub(crate) fn snapshot_request(name: &str, source: &str) -> csi::CreateSnapshotRequest {
        csi::CreateSnapshotRequest {
            source_volume_id: source.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    pub(crate) fn new_snapshot(env: &Env, name: &str, source: &str) -> csi::Snapshot {
        let rec = env
            .plugin
            .create_snapshot(name, &source.parse().expect("volume id"), &HashMap::new())
            .expect("create snapshot");
        csi_snapshot(&env.plugin, &rec)
    }

    pub(crate) fn delete_snapshot(env: &Env, id: &str) {
        env.plugin.delete_snapshot(id).expect("delete snapshot");
    }

    fn code<T>(r: Result<T, Status>) -> Code {
        match r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        }
    }

    const MIB: i64 = 1 << 20;

    /// A case's preparation: makes what the call needs, returns the request.
    type Setup<R> = Box<dyn Fn(&Env) -> R>;

    macro_rules! setup {
        (|$env:ident| $body:expr) => {
            Box::new(|$env: &Env| $body) as Setup<_>
        };
    }

    #[tokio::test]
    async fn create_volume_codes() {
        let cases: Vec<(&str, Setup<csi::CreateVolumeRequest>, Code)> = vec![
            (
                "empty volume",
                setup!(|_e| volume_request("pvc-1", MIB)),
                Code::Ok,
            ),
            (
                "no capacity range",
                setup!(|_e| csi::CreateVolumeRequest {
                    capacity_range: None,
                    ..volume_request("pvc-1", 0)
                }),
                Code::Ok,
            ),
            (
                "name of 128 characters",
                setup!(|_e| volume_request(&"n".repeat(128), MIB)),
                Code::Ok,
            ),
            (
                "missing name",
                setup!(|_e| volume_request("", MIB)),
                Code::InvalidArgument,
            ),
            (
                "missing capabilities",
                setup!(|_e| csi::CreateVolumeRequest {
                    volume_capabilities: vec![],
                    ..volume_request("pvc-1", MIB)
                }),
                Code::InvalidArgument,
            ),
            (
                "multi-node access",
                setup!(|_e| csi::CreateVolumeRequest {
                    volume_capabilities: vec![mount_cap("ext4", Mode::MultiNodeMultiWriter)],
                    ..volume_request("pvc-1", MIB)
                }),
                Code::InvalidArgument,
            ),
            (
                "unsupported file system",
                setup!(|_e| csi::CreateVolumeRequest {
                    volume_capabilities: vec![mount_cap("btrfs", Mode::SingleNodeWriter)],
                    ..volume_request("pvc-1", MIB)
                }),
                Code::InvalidArgument,
            ),
            (
                "xfs mount",
                setup!(|_e| csi::CreateVolumeRequest {
                    volume_capabilities: vec![mount_cap("xfs", Mode::SingleNodeWriter)],
                    ..volume_request("pvc-1", MIB)
                }),
                Code::Ok,
            ),
            (
                "unknown parameter",
                setup!(|_e| csi::CreateVolumeRequest {
                    parameters: HashMap::from([("color".into(), "blue".into())]),
                    ..volume_request("pvc-1", MIB)
                }),
                Code::InvalidArgument,
            ),
            (
                "sidecar parameters are fine",
                setup!(|_e| csi::CreateVolumeRequest {
                    parameters: HashMap::from([("csi.storage.k8s.io/pvc/name".into(), "x".into())]),
                    ..volume_request("pvc-1", MIB)
                }),
                Code::Ok,
            ),
            (
                "backend not configured",
                setup!(|_e| csi::CreateVolumeRequest {
                    parameters: HashMap::from([(PARAM_BACKEND.into(), "device".into())]),
                    ..volume_request("pvc-1", MIB)
                }),
                Code::InvalidArgument,
            ),
            (
                "negative size",
                setup!(|_e| volume_request("pvc-1", -1)),
                Code::InvalidArgument,
            ),
            (
                "limit below required",
                setup!(|_e| csi::CreateVolumeRequest {
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes: 2 * MIB,
                        limit_bytes: MIB
                    }),
                    ..volume_request("pvc-1", MIB)
                }),
                Code::OutOfRange,
            ),
            (
                "too large for the pool",
                setup!(|_e| volume_request("pvc-1", 1 << 50)),
                Code::ResourceExhausted,
            ),
            (
                "same name, same arguments",
                setup!(|e| {
                    new_volume(e, "pvc-1", MIB);
                    volume_request("pvc-1", MIB)
                }),
                Code::Ok,
            ),
            (
                "same name, larger size",
                setup!(|e| {
                    new_volume(e, "pvc-1", MIB);
                    volume_request("pvc-1", 64 * MIB)
                }),
                Code::AlreadyExists,
            ),
            (
                "same name in flight",
                setup!(|e| {
                    std::mem::forget(
                        e.plugin
                            .locks
                            .try_lock([name_key("volume", "pvc-1")])
                            .expect("free"),
                    );
                    volume_request("pvc-1", MIB)
                }),
                Code::Aborted,
            ),
            (
                "source snapshot id not ours",
                setup!(|_e| csi::CreateVolumeRequest {
                    volume_content_source: Some(csi::VolumeContentSource {
                        r#type: Some(csi::volume_content_source::Type::Snapshot(
                            csi::volume_content_source::SnapshotSource {
                                snapshot_id: "foreign".into()
                            }
                        )),
                    }),
                    ..volume_request("pvc-1", MIB)
                }),
                Code::NotFound,
            ),
            (
                "source snapshot unknown",
                setup!(|e| {
                    let v = new_volume(e, "pvc-0", MIB);
                    let s = new_snapshot(e, "snap", &v);
                    delete_snapshot(e, &s.snapshot_id);
                    csi::CreateVolumeRequest {
                        volume_content_source: Some(csi::VolumeContentSource {
                            r#type: Some(csi::volume_content_source::Type::Snapshot(
                                csi::volume_content_source::SnapshotSource {
                                    snapshot_id: s.snapshot_id,
                                },
                            )),
                        }),
                        ..volume_request("pvc-1", MIB)
                    }
                }),
                Code::NotFound,
            ),
            (
                "source snapshot lost",
                setup!(|e| {
                    let v = new_volume(e, "pvc-0", MIB);
                    let s = new_snapshot(e, "snap", &v);
                    let id: blksnap_node_api::ids::SnapshotId = s.snapshot_id.parse().expect("id");
                    e.kernel.corrupt(id.kernel);
                    csi::CreateVolumeRequest {
                        volume_content_source: Some(csi::VolumeContentSource {
                            r#type: Some(csi::volume_content_source::Type::Snapshot(
                                csi::volume_content_source::SnapshotSource {
                                    snapshot_id: s.snapshot_id,
                                },
                            )),
                        }),
                        ..volume_request("pvc-1", MIB)
                    }
                }),
                Code::FailedPrecondition,
            ),
            (
                "source snapshot larger than the limit",
                setup!(|e| {
                    let v = new_volume(e, "pvc-0", 8 * MIB);
                    let s = new_snapshot(e, "snap", &v);
                    csi::CreateVolumeRequest {
                        capacity_range: Some(csi::CapacityRange {
                            required_bytes: MIB,
                            limit_bytes: 2 * MIB,
                        }),
                        volume_content_source: Some(csi::VolumeContentSource {
                            r#type: Some(csi::volume_content_source::Type::Snapshot(
                                csi::volume_content_source::SnapshotSource {
                                    snapshot_id: s.snapshot_id,
                                },
                            )),
                        }),
                        ..volume_request("pvc-1", MIB)
                    }
                }),
                Code::OutOfRange,
            ),
            (
                "source volume unknown",
                setup!(|_e| csi::CreateVolumeRequest {
                    volume_content_source: Some(csi::VolumeContentSource {
                        r#type: Some(csi::volume_content_source::Type::Volume(
                            csi::volume_content_source::VolumeSource {
                                volume_id: format!("v1:nothere:{NODE}")
                            }
                        )),
                    }),
                    ..volume_request("pvc-1", MIB)
                }),
                Code::NotFound,
            ),
            (
                "requisite topology elsewhere",
                setup!(|_e| csi::CreateVolumeRequest {
                    accessibility_requirements: Some(csi::TopologyRequirement {
                        requisite: vec![topology("node-b")],
                        preferred: vec![]
                    }),
                    ..volume_request("pvc-1", MIB)
                }),
                Code::ResourceExhausted,
            ),
            (
                "requisite topology here",
                setup!(|_e| csi::CreateVolumeRequest {
                    accessibility_requirements: Some(csi::TopologyRequirement {
                        requisite: vec![topology("node-b"), topology(NODE)],
                        preferred: vec![]
                    }),
                    ..volume_request("pvc-1", MIB)
                }),
                Code::Ok,
            ),
        ];
        for (name, setup, want) in cases {
            let env = Env::new();
            let req = setup(&env);
            let got = env.controller.create_volume(Request::new(req)).await;
            if let Ok(r) = &got {
                let v = r.get_ref().volume.as_ref().expect("volume");
                assert!(v.volume_id.ends_with(&format!(":{NODE}")), "{name}");
                assert_eq!(v.accessible_topology, vec![topology(NODE)], "{name}");
            }
            assert_eq!(code(got), want, "case {name:?}");
        }
    }

    #[tokio::test]
    async fn create_volume_is_idempotent() {
        let env = Env::new();
        let a = new_volume(&env, "pvc-1", MIB);
        let b = new_volume(&env, "pvc-1", MIB);
        assert_eq!(a, b);
        // Also after a restart.
        let env = env.restart();
        assert_eq!(new_volume(&env, "pvc-1", MIB), a);
    }

    #[tokio::test]
    async fn delete_volume_codes() {
        let cases: Vec<(&str, Setup<String>, Code)> = vec![
            (
                "missing id",
                setup!(|_e| String::new()),
                Code::InvalidArgument,
            ),
            (
                "unknown id",
                setup!(|_e| format!("v1:nothere:{NODE}")),
                Code::Ok,
            ),
            (
                "not our id format",
                setup!(|_e| "whatever".to_owned()),
                Code::Ok,
            ),
            (
                "other node",
                setup!(|_e| "v1:abc:node-b".to_owned()),
                Code::InvalidArgument,
            ),
            (
                "existing",
                setup!(|e| new_volume(e, "pvc-1", MIB)),
                Code::Ok,
            ),
            (
                "with a held snapshot",
                setup!(|e| {
                    let v = new_volume(e, "pvc-1", MIB);
                    new_snapshot(e, "snap", &v);
                    v
                }),
                Code::FailedPrecondition,
            ),
            (
                "with only a lost snapshot",
                setup!(|e| {
                    let v = new_volume(e, "pvc-1", MIB);
                    let s = new_snapshot(e, "snap", &v);
                    let id: blksnap_node_api::ids::SnapshotId = s.snapshot_id.parse().expect("id");
                    e.kernel.corrupt(id.kernel);
                    // Listing notices the loss.
                    e.plugin
                        .list_snapshots(&SnapshotFilter::default())
                        .expect("list");
                    v
                }),
                Code::Ok,
            ),
        ];
        for (name, setup, want) in cases {
            let env = Env::new();
            let volume_id = setup(&env);
            let got = env
                .controller
                .delete_volume(Request::new(csi::DeleteVolumeRequest {
                    volume_id: volume_id.clone(),
                    ..Default::default()
                }))
                .await;
            assert_eq!(code(got), want, "case {name:?}");
            if want == Code::Ok && volume_id.starts_with("v1:") && volume_id.ends_with(NODE) {
                let id: VolumeId = volume_id.parse().expect("id");
                assert!(env.plugin.volume(&id).is_err(), "{name}: volume gone");
            }
        }
    }

    #[tokio::test]
    async fn create_snapshot_codes() {
        let cases: Vec<(&str, Setup<csi::CreateSnapshotRequest>, Code)> = vec![
            (
                "snapshot",
                setup!(|e| snapshot_request("snap", &new_volume(e, "pvc", MIB))),
                Code::Ok,
            ),
            (
                "name of 128 characters",
                setup!(|e| { snapshot_request(&"s".repeat(128), &new_volume(e, "pvc", MIB)) }),
                Code::Ok,
            ),
            (
                "missing name",
                setup!(|e| snapshot_request("", &new_volume(e, "pvc", MIB))),
                Code::InvalidArgument,
            ),
            (
                "missing source",
                setup!(|_e| snapshot_request("snap", "")),
                Code::InvalidArgument,
            ),
            (
                "source not our id",
                setup!(|_e| snapshot_request("snap", "some-volume")),
                Code::NotFound,
            ),
            (
                "source unknown",
                setup!(|_e| snapshot_request("snap", &format!("v1:nothere:{NODE}"))),
                Code::NotFound,
            ),
            (
                "source on another node",
                setup!(|_e| snapshot_request("snap", "v1:abc:node-b")),
                Code::NotFound,
            ),
            (
                "same name and source again",
                setup!(|e| {
                    let v = new_volume(e, "pvc", MIB);
                    new_snapshot(e, "snap", &v);
                    snapshot_request("snap", &v)
                }),
                Code::Ok,
            ),
            (
                "same name, other source",
                setup!(|e| {
                    let v = new_volume(e, "pvc", MIB);
                    let w = new_volume(e, "pvc-2", MIB);
                    new_snapshot(e, "snap", &v);
                    snapshot_request("snap", &w)
                }),
                Code::AlreadyExists,
            ),
            (
                "second snapshot while one is held",
                setup!(|e| {
                    let v = new_volume(e, "pvc", MIB);
                    new_snapshot(e, "snap-1", &v);
                    snapshot_request("snap-2", &v)
                }),
                Code::Ok,
            ),
            (
                "one past the module's snapshots per volume",
                setup!(|e| {
                    let v = new_volume(e, "pvc", MIB);
                    for i in 0..FAKE_SNAPSHOTS_PER_DEVICE {
                        new_snapshot(e, &format!("held-{i}"), &v);
                    }
                    snapshot_request("one-more", &v)
                }),
                Code::FailedPrecondition,
            ),
            (
                "after the held one is deleted",
                setup!(|e| {
                    let v = new_volume(e, "pvc", MIB);
                    let s = new_snapshot(e, "snap-1", &v);
                    delete_snapshot(e, &s.snapshot_id);
                    snapshot_request("snap-2", &v)
                }),
                Code::Ok,
            ),
            (
                "same name in flight",
                setup!(|e| {
                    let v = new_volume(e, "pvc", MIB);
                    std::mem::forget(
                        e.plugin
                            .locks
                            .try_lock([name_key("snapshot", "snap")])
                            .expect("free"),
                    );
                    snapshot_request("snap", &v)
                }),
                Code::Aborted,
            ),
            (
                "bad storage parameter",
                setup!(|e| csi::CreateSnapshotRequest {
                    parameters: HashMap::from([(crate::storage::PARAM_PERCENT.into(), "0".into())]),
                    ..snapshot_request("snap", &new_volume(e, "pvc", MIB))
                }),
                Code::InvalidArgument,
            ),
        ];
        for (name, setup, want) in cases {
            let env = Env::new();
            let req = setup(&env);
            let got = env
                .controller
                .create_snapshot(Request::new(req.clone()))
                .await;
            if let Ok(r) = &got {
                let s = r.get_ref().snapshot.as_ref().expect("snapshot");
                assert!(s.ready_to_use, "{name}: cut means ready");
                assert_eq!(s.source_volume_id, req.source_volume_id, "{name}");
                assert!(
                    s.snapshot_id.len() <= blksnap_node_api::ids::MAX_ID_LEN,
                    "{name}"
                );
                assert!(s.creation_time.is_some(), "{name}");
            }
            assert_eq!(code(got), want, "case {name:?}");
        }
    }

    #[tokio::test]
    async fn create_snapshot_is_idempotent_by_name() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", MIB);
        let a = new_snapshot(&env, "snap", &v);
        let b = new_snapshot(&env, "snap", &v);
        assert_eq!(a, b);
        assert_eq!(env.kernel.held().len(), 1, "one kernel snapshot");
    }

    #[tokio::test]
    async fn delete_snapshot_codes() {
        let cases: Vec<(&str, Setup<String>, Code)> = vec![
            (
                "missing id",
                setup!(|_e| String::new()),
                Code::InvalidArgument,
            ),
            (
                "unknown id",
                setup!(|e| {
                    let v = new_volume(e, "pvc", MIB);
                    let s = new_snapshot(e, "snap", &v);
                    delete_snapshot(e, &s.snapshot_id);
                    s.snapshot_id
                }),
                Code::Ok,
            ),
            (
                "not our id",
                setup!(|_e| "some-snapshot".to_owned()),
                Code::Ok,
            ),
            (
                "existing",
                setup!(|e| {
                    let v = new_volume(e, "pvc", MIB);
                    new_snapshot(e, "snap", &v).snapshot_id
                }),
                Code::Ok,
            ),
            (
                "lost",
                setup!(|e| {
                    let v = new_volume(e, "pvc", MIB);
                    let s = new_snapshot(e, "snap", &v);
                    e.kernel.reboot();
                    s.snapshot_id
                }),
                Code::Ok,
            ),
            (
                "member of a group",
                setup!(|e| {
                    let v = new_volume(e, "pvc", MIB);
                    let (_, members) = e
                        .plugin
                        .create_group("g", &[v], &HashMap::new())
                        .expect("group");
                    e.plugin.snapshot_id(&members[0]).to_string()
                }),
                Code::FailedPrecondition,
            ),
        ];
        for (name, setup, want) in cases {
            let env = Env::new();
            let id = setup(&env);
            let got = env
                .controller
                .delete_snapshot(Request::new(csi::DeleteSnapshotRequest {
                    snapshot_id: id,
                    ..Default::default()
                }))
                .await;
            assert_eq!(code(got), want, "case {name:?}");
            if want == Code::Ok {
                let left = env
                    .plugin
                    .list_snapshots(&SnapshotFilter::default())
                    .expect("list")
                    .0;
                assert!(left.is_empty(), "{name}: nothing left");
                assert!(env.kernel.held().is_empty(), "{name}: kernel released");
            }
        }
    }

    async fn list(
        env: &Env,
        req: csi::ListSnapshotsRequest,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        env.controller.list_snapshots(Request::new(req)).await
    }

    #[tokio::test]
    async fn list_snapshots_filters_and_pages() {
        let env = Env::new();
        let mut ids = Vec::new();
        let mut vols = Vec::new();
        for i in 0..3 {
            let v = new_volume(&env, &format!("pvc-{i}"), MIB);
            ids.push(new_snapshot(&env, &format!("snap-{i}"), &v).snapshot_id);
            vols.push(v);
        }
        // Paging: 2 + 1, every snapshot exactly once.
        let first = list(
            &env,
            csi::ListSnapshotsRequest {
                max_entries: 2,
                ..Default::default()
            },
        )
        .await
        .expect("page 1")
        .into_inner();
        assert_eq!(first.entries.len(), 2);
        assert!(!first.next_token.is_empty());
        let second = list(
            &env,
            csi::ListSnapshotsRequest {
                max_entries: 2,
                starting_token: first.next_token.clone(),
                ..Default::default()
            },
        )
        .await
        .expect("page 2")
        .into_inner();
        assert_eq!(second.entries.len(), 1);
        assert!(second.next_token.is_empty());
        let mut seen: Vec<String> = first
            .entries
            .iter()
            .chain(&second.entries)
            .map(|e| e.snapshot.as_ref().expect("snapshot").snapshot_id.clone())
            .collect();
        seen.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(seen, want);

        let all = list(&env, csi::ListSnapshotsRequest::default())
            .await
            .expect("all")
            .into_inner();
        assert_eq!(all.entries.len(), 3);
        assert!(all.next_token.is_empty());

        // Filters.
        let by_id = list(
            &env,
            csi::ListSnapshotsRequest {
                snapshot_id: ids[1].clone(),
                ..Default::default()
            },
        )
        .await
        .expect("by id")
        .into_inner();
        assert_eq!(by_id.entries.len(), 1);
        assert_eq!(
            by_id.entries[0].snapshot.as_ref().expect("s").snapshot_id,
            ids[1]
        );
        let by_source = list(
            &env,
            csi::ListSnapshotsRequest {
                source_volume_id: vols[2].clone(),
                ..Default::default()
            },
        )
        .await
        .expect("by source")
        .into_inner();
        assert_eq!(by_source.entries.len(), 1);
        assert_eq!(
            by_source.entries[0]
                .snapshot
                .as_ref()
                .expect("s")
                .source_volume_id,
            vols[2]
        );

        // Unknown filters: empty, not an error.
        for req in [
            csi::ListSnapshotsRequest {
                snapshot_id: "nope".into(),
                ..Default::default()
            },
            csi::ListSnapshotsRequest {
                source_volume_id: "nope".into(),
                ..Default::default()
            },
            csi::ListSnapshotsRequest {
                source_volume_id: format!("v1:nothere:{NODE}"),
                ..Default::default()
            },
        ] {
            let r = list(&env, req.clone())
                .await
                .expect("empty list")
                .into_inner();
            assert!(r.entries.is_empty(), "{req:?}");
        }

        // A token we did not hand out, and a negative page size.
        for (req, want) in [
            (
                csi::ListSnapshotsRequest {
                    starting_token: "garbage!".into(),
                    ..Default::default()
                },
                Code::Aborted,
            ),
            (
                csi::ListSnapshotsRequest {
                    starting_token: "Zm9v".into(),
                    ..Default::default()
                },
                Code::Aborted,
            ),
            (
                csi::ListSnapshotsRequest {
                    max_entries: -1,
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
        ] {
            assert_eq!(code(list(&env, req.clone()).await), want, "{req:?}");
        }
    }

    #[tokio::test]
    async fn lost_snapshots_are_listed_not_ready_with_a_reason() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", MIB);
        let s = new_snapshot(&env, "snap", &v);
        let id: blksnap_node_api::ids::SnapshotId = s.snapshot_id.parse().expect("id");
        env.kernel.corrupt(id.kernel);
        let r = list(&env, csi::ListSnapshotsRequest::default())
            .await
            .expect("list");
        let reason = r
            .metadata()
            .get(LOST_METADATA)
            .expect("reason metadata")
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(reason, format!("{} overflow", s.snapshot_id));
        let entry = r.into_inner().entries.remove(0).snapshot.expect("snapshot");
        assert!(!entry.ready_to_use);
        assert_eq!(env.plugin.metrics.snapshots_lost.get(), 1);
    }

    #[tokio::test]
    async fn a_volume_whose_creation_did_not_finish_is_undone_at_start() {
        let env = Env::new();
        let id: VolumeId = new_volume(&env, "pvc", MIB).parse().expect("id");
        let mut vol = env.plugin.volume(&id).expect("volume");
        let file = env.plugin.device_of(&vol).expect("device");
        // The process died while the volume was being made (its source
        // being copied): the record still says so.
        vol.creating = true;
        env.plugin.state.put(&vol).expect("put");
        let env = env.restart();
        assert!(env.plugin.volume(&id).is_err(), "record removed");
        assert!(!file.exists(), "storage removed");
        new_volume(&env, "pvc", MIB);
    }

    #[tokio::test]
    async fn reboot_loses_snapshots_and_orphans_are_collected() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", MIB);
        let s = new_snapshot(&env, "snap", &v);
        env.kernel.reboot();
        // A kernel snapshot no record knows (a crash between create and
        // record) is destroyed at start.
        let storage = tempfile::tempfile().expect("storage");
        let orphan = crate::kernel::Kernel::snapshot_create(env.kernel.as_ref(), &storage, 1)
            .expect("orphan");
        let env = env.restart();
        assert!(!env.kernel.held().contains(&orphan.0), "orphan collected");
        let r = list(&env, csi::ListSnapshotsRequest::default())
            .await
            .expect("list");
        let reason = r
            .metadata()
            .get(LOST_METADATA)
            .expect("reason")
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(reason, format!("{} kernel-forgot", s.snapshot_id));
        assert!(
            !r.into_inner().entries[0]
                .snapshot
                .as_ref()
                .expect("s")
                .ready_to_use
        );
        // The volume is tracked again and can be snapshotted anew.
        new_snapshot(&env, "snap-2", &v);
        let replay = env
            .controller
            .create_snapshot(Request::new(snapshot_request("snap", &v)))
            .await
            .expect("the lost one, answered")
            .into_inner()
            .snapshot
            .expect("snapshot");
        assert!(!replay.ready_to_use, "the lost one is never served");
    }

    #[tokio::test]
    async fn get_snapshot_codes() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", MIB);
        let s = new_snapshot(&env, "snap", &v);
        for (id, want) in [
            (s.snapshot_id.clone(), Code::Ok),
            (String::new(), Code::InvalidArgument),
            ("nope".to_owned(), Code::NotFound),
        ] {
            let got = env
                .controller
                .get_snapshot(Request::new(csi::GetSnapshotRequest {
                    snapshot_id: id.clone(),
                    ..Default::default()
                }))
                .await;
            assert_eq!(code(got), want, "{id}");
        }
    }

    #[tokio::test]
    async fn expand_volume_codes() {
        let cases: Vec<(&str, Setup<csi::ControllerExpandVolumeRequest>, Code)> = vec![
            (
                "grow",
                setup!(|e| csi::ControllerExpandVolumeRequest {
                    volume_id: new_volume(e, "pvc", MIB),
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes: 4 * MIB,
                        limit_bytes: 0
                    }),
                    ..Default::default()
                }),
                Code::Ok,
            ),
            (
                "missing id",
                setup!(|_e| csi::ControllerExpandVolumeRequest {
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes: 4 * MIB,
                        limit_bytes: 0
                    }),
                    ..Default::default()
                }),
                Code::InvalidArgument,
            ),
            (
                "missing range",
                setup!(|e| csi::ControllerExpandVolumeRequest {
                    volume_id: new_volume(e, "pvc", MIB),
                    ..Default::default()
                }),
                Code::InvalidArgument,
            ),
            (
                "unknown volume",
                setup!(|_e| csi::ControllerExpandVolumeRequest {
                    volume_id: format!("v1:nothere:{NODE}"),
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes: 4 * MIB,
                        limit_bytes: 0
                    }),
                    ..Default::default()
                }),
                Code::NotFound,
            ),
            (
                "limit below required",
                setup!(|e| csi::ControllerExpandVolumeRequest {
                    volume_id: new_volume(e, "pvc", MIB),
                    capacity_range: Some(csi::CapacityRange {
                        required_bytes: 4 * MIB,
                        limit_bytes: 2 * MIB
                    }),
                    ..Default::default()
                }),
                Code::OutOfRange,
            ),
            (
                "held snapshot",
                setup!(|e| {
                    let v = new_volume(e, "pvc", MIB);
                    new_snapshot(e, "snap", &v);
                    csi::ControllerExpandVolumeRequest {
                        volume_id: v,
                        capacity_range: Some(csi::CapacityRange {
                            required_bytes: 4 * MIB,
                            limit_bytes: 0,
                        }),
                        ..Default::default()
                    }
                }),
                Code::FailedPrecondition,
            ),
        ];
        for (name, setup, want) in cases {
            let env = Env::new();
            let req = setup(&env);
            let got = env
                .controller
                .controller_expand_volume(Request::new(req))
                .await;
            if let Ok(r) = &got {
                assert_eq!(r.get_ref().capacity_bytes, 4 * MIB, "{name}");
                assert!(r.get_ref().node_expansion_required, "{name}");
            }
            assert_eq!(code(got), want, "case {name:?}");
        }
    }

    #[tokio::test]
    async fn validate_capabilities_and_unoffered_calls() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", MIB);
        let ok = env
            .controller
            .validate_volume_capabilities(Request::new(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: v.clone(),
                volume_capabilities: vec![block_cap()],
                ..Default::default()
            }))
            .await
            .expect("validate")
            .into_inner();
        assert!(ok.confirmed.is_some());
        let no = env
            .controller
            .validate_volume_capabilities(Request::new(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: v.clone(),
                volume_capabilities: vec![mount_cap("ext4", Mode::MultiNodeReaderOnly)],
                ..Default::default()
            }))
            .await
            .expect("validate")
            .into_inner();
        assert!(no.confirmed.is_none() && !no.message.is_empty());
        for (req, want) in [
            (
                csi::ValidateVolumeCapabilitiesRequest {
                    volume_id: format!("v1:nothere:{NODE}"),
                    volume_capabilities: vec![block_cap()],
                    ..Default::default()
                },
                Code::NotFound,
            ),
            (
                csi::ValidateVolumeCapabilitiesRequest {
                    volume_id: String::new(),
                    volume_capabilities: vec![block_cap()],
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
            (
                csi::ValidateVolumeCapabilitiesRequest {
                    volume_id: v.clone(),
                    ..Default::default()
                },
                Code::InvalidArgument,
            ),
        ] {
            assert_eq!(
                code(
                    env.controller
                        .validate_volume_capabilities(Request::new(req))
                        .await
                ),
                want
            );
        }
        let here = env
            .controller
            .get_capacity(Request::new(csi::GetCapacityRequest {
                volume_capabilities: vec![block_cap()],
                accessible_topology: Some(topology(NODE)),
                ..Default::default()
            }))
            .await
            .expect("capacity")
            .into_inner();
        assert_eq!(here.available_capacity, 1 << 40);
        let elsewhere = env
            .controller
            .get_capacity(Request::new(csi::GetCapacityRequest {
                accessible_topology: Some(topology("node-b")),
                ..Default::default()
            }))
            .await
            .expect("capacity")
            .into_inner();
        assert_eq!(elsewhere.available_capacity, 0);
        // A backend this node lacks has no room here; that is not an error.
        let lacking = env
            .controller
            .get_capacity(Request::new(csi::GetCapacityRequest {
                parameters: HashMap::from([(PARAM_BACKEND.into(), "device".into())]),
                accessible_topology: Some(topology(NODE)),
                ..Default::default()
            }))
            .await
            .expect("capacity of a backend not configured")
            .into_inner();
        assert_eq!(lacking.available_capacity, 0);
        assert_eq!(lacking.maximum_volume_size, Some(0));
        for parameters in [
            HashMap::from([(PARAM_BACKEND.into(), "tape".into())]),
            HashMap::from([("colour".into(), "blue".into())]),
        ] {
            assert_eq!(
                code(
                    env.controller
                        .get_capacity(Request::new(csi::GetCapacityRequest {
                            parameters,
                            ..Default::default()
                        }))
                        .await
                ),
                Code::InvalidArgument
            );
        }
        assert_eq!(
            code(
                env.controller
                    .controller_publish_volume(Request::new(Default::default()))
                    .await
            ),
            Code::Unimplemented
        );
        let caps = env
            .controller
            .controller_get_capabilities(Request::new(csi::ControllerGetCapabilitiesRequest {}))
            .await
            .expect("caps")
            .into_inner()
            .capabilities;
        let kinds: Vec<i32> = caps
            .iter()
            .filter_map(|c| {
                c.r#type
                    .as_ref()
                    .map(|csi::controller_service_capability::Type::Rpc(r)| r.r#type)
            })
            .collect();
        for want in [
            Cap::CreateDeleteVolume,
            Cap::CreateDeleteSnapshot,
            Cap::ListSnapshots,
            Cap::GetSnapshot,
            Cap::ListVolumes,
            Cap::CloneVolume,
            Cap::ExpandVolume,
            Cap::GetCapacity,
        ] {
            assert!(kinds.contains(&(want as i32)), "{want:?}");
        }
    }

    /// Every held snapshot of `v`, as ListSnapshots gives them.
    async fn held_of(env: &Env, v: &str) -> Vec<csi::Snapshot> {
        list(
            env,
            csi::ListSnapshotsRequest {
                source_volume_id: v.into(),
                ..Default::default()
            },
        )
        .await
        .expect("list")
        .into_inner()
        .entries
        .into_iter()
        .filter_map(|e| e.snapshot)
        .filter(|s| s.ready_to_use)
        .collect()
    }

    #[tokio::test]
    async fn snapshots_of_a_volume_up_to_the_limit_then_a_final_code_that_says_why() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", MIB);
        let limit = FAKE_SNAPSHOTS_PER_DEVICE;
        let mut ids = Vec::new();
        for i in 0..limit {
            ids.push(new_snapshot(&env, &format!("snap-{i}"), &v).snapshot_id);
        }
        let kernels: std::collections::BTreeSet<uuid::Uuid> = ids
            .iter()
            .map(|id| {
                id.parse::<blksnap_node_api::ids::SnapshotId>()
                    .expect("id")
                    .kernel
            })
            .collect();
        assert_eq!(kernels.len(), limit as usize, "a kernel snapshot each");
        assert_eq!(held_of(&env, &v).await.len(), limit as usize);

        let refused = env
            .controller
            .create_snapshot(Request::new(snapshot_request("one-more", &v)))
            .await
            .expect_err("past the limit");
        // Not RESOURCE_EXHAUSTED: csi-snapshotter retries that without end,
        // and the VolumeSnapshot cannot be deleted meanwhile.
        assert_eq!(refused.code(), Code::FailedPrecondition);
        let msg = refused.message();
        assert!(
            msg.contains(&v)
                && msg.contains(&format!("{limit} snapshots"))
                && msg.contains("snapshots_per_device_maximum")
                && msg.contains("delete one of its snapshots"),
            "{msg}"
        );
        assert_eq!(env.kernel.held().len(), limit as usize, "nothing left over");

        // A clone needs a temporary snapshot of its source: refused the same
        // way at the limit.
        let clone = csi::CreateVolumeRequest {
            volume_content_source: Some(csi::VolumeContentSource {
                r#type: Some(csi::volume_content_source::Type::Volume(
                    csi::volume_content_source::VolumeSource {
                        volume_id: v.clone(),
                    },
                )),
            }),
            ..volume_request("clone", MIB)
        };
        let refused = env
            .controller
            .create_volume(Request::new(clone))
            .await
            .expect_err("clone at the limit");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(
            refused.message().contains("snapshots_per_device_maximum"),
            "{}",
            refused.message()
        );

        // Deleted in another order than made: the second, then the first.
        // (A clone below the limit copies an image, which the fake kernel
        // has not: the VM tests clone while snapshots are held.)
        delete_snapshot(&env, &ids[1]);
        delete_snapshot(&env, &ids[0]);
        let again = new_snapshot(&env, "snap-again", &v);
        let mut now: Vec<String> = held_of(&env, &v)
            .await
            .into_iter()
            .map(|s| s.snapshot_id)
            .collect();
        now.sort();
        let mut want: Vec<String> = ids[2..].to_vec();
        want.push(again.snapshot_id);
        want.sort();
        assert_eq!(now, want);
    }

    #[tokio::test]
    async fn a_1_0_module_keeps_one_snapshot_per_volume_and_refuses_a_second_finally() {
        let env = Env::over(crate::testing::FakeKernel::interface_1_0());
        let v = new_volume(&env, "pvc", MIB);
        let first = new_snapshot(&env, "snap-1", &v).snapshot_id;
        let refused = env
            .controller
            .create_snapshot(Request::new(snapshot_request("snap-2", &v)))
            .await
            .expect_err("a second on 1.0");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        let msg = refused.message();
        assert!(
            msg.contains(&v)
                && msg.contains("1 snapshots")
                && msg.contains("interface 1.0")
                && msg.contains("delete one of its snapshots")
                && !msg.contains("snapshots_per_device_maximum"),
            "{msg}"
        );
        assert_eq!(env.kernel.held().len(), 1, "nothing left over");

        // Recovery after a restart finds the held one, and the limit holds.
        let env = env.restart();
        let held: Vec<String> = held_of(&env, &v)
            .await
            .into_iter()
            .map(|s| s.snapshot_id)
            .collect();
        assert_eq!(held, std::slice::from_ref(&first));
        let refused = env
            .controller
            .create_snapshot(Request::new(snapshot_request("snap-2", &v)))
            .await
            .expect_err("still one");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        delete_snapshot(&env, &first);
        new_snapshot(&env, "snap-2", &v);
    }

    #[tokio::test]
    async fn the_kernels_refusal_past_the_limit_is_the_same_final_answer() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", MIB);
        // A kernel snapshot no record names (an operator's blksnapctl, with
        // orphans kept) takes one place: the plugin's count passes, the
        // kernel's add refuses.
        let k: &dyn crate::kernel::Kernel = env.kernel.as_ref();
        let storage = tempfile::tempfile().expect("storage");
        let dev = env.device(&v);
        let orphan = k.snapshot_create(&storage, 1 << 20).expect("create");
        k.snapshot_add(orphan, &dev).expect("add");
        k.snapshot_take(orphan).expect("take");
        for i in 1..FAKE_SNAPSHOTS_PER_DEVICE {
            new_snapshot(&env, &format!("snap-{i}"), &v);
        }
        let refused = env
            .controller
            .create_snapshot(Request::new(snapshot_request("one-more", &v)))
            .await
            .expect_err("the kernel refuses");
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert!(
            refused.message().contains("snapshots_per_device_maximum"),
            "{}",
            refused.message()
        );
        assert_eq!(
            env.kernel.held().len(),
            FAKE_SNAPSHOTS_PER_DEVICE as usize,
            "the refused take is rolled back"
        );
    }

    #[tokio::test]
    async fn a_replayed_create_of_a_lost_snapshot_returns_it_not_ready() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", MIB);
        let s = new_snapshot(&env, "snap", &v);
        let id: blksnap_node_api::ids::SnapshotId = s.snapshot_id.parse().expect("id");
        env.kernel.corrupt(id.kernel);
        // The first answer was lost on the way; the sidecar asks again.
        let replay = env
            .controller
            .create_snapshot(Request::new(snapshot_request("snap", &v)))
            .await
            .expect("answered, not UNAVAILABLE");
        let reason = replay
            .metadata()
            .get(LOST_METADATA)
            .expect("reason metadata")
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(reason, format!("{} overflow", s.snapshot_id));
        let got = replay.into_inner().snapshot.expect("snapshot");
        assert_eq!(got.snapshot_id, s.snapshot_id);
        assert!(!got.ready_to_use);
    }

    #[tokio::test]
    async fn one_unreadable_volume_does_not_fail_the_listing() {
        let env = Env::new();
        let a = new_volume(&env, "pvc-a", MIB);
        let b = new_volume(&env, "pvc-b", MIB);
        let sa = new_snapshot(&env, "snap-a", &a);
        let sb = new_snapshot(&env, "snap-b", &b);
        // b's device cannot be opened any more (a static device unplugged).
        let vol_b = env.plugin.volume(&b.parse().expect("id")).expect("b");
        std::fs::remove_file(env.plugin.device_of(&vol_b).expect("device")).expect("remove");
        let all = list(&env, csi::ListSnapshotsRequest::default())
            .await
            .expect("the others are listed")
            .into_inner();
        let mut seen: Vec<(String, bool)> = all
            .entries
            .iter()
            .map(|e| {
                let s = e.snapshot.as_ref().expect("snapshot");
                (s.snapshot_id.clone(), s.ready_to_use)
            })
            .collect();
        seen.sort();
        let mut want = vec![(sa.snapshot_id.clone(), true), (sb.snapshot_id, true)];
        want.sort();
        assert_eq!(seen, want, "b as recorded, a checked");
        env.controller
            .get_snapshot(Request::new(csi::GetSnapshotRequest {
                snapshot_id: sa.snapshot_id,
                ..Default::default()
            }))
            .await
            .expect("get a");
    }

    async fn list_vols(
        env: &Env,
        max_entries: i32,
        starting_token: &str,
    ) -> Result<csi::ListVolumesResponse, Status> {
        env.controller
            .list_volumes(Request::new(csi::ListVolumesRequest {
                max_entries,
                starting_token: starting_token.into(),
            }))
            .await
            .map(Response::into_inner)
    }

    #[tokio::test]
    async fn list_volumes_pages_through_the_finished_volumes() {
        let env = Env::new();
        let mut ids: Vec<String> = (0..5)
            .map(|i| new_volume(&env, &format!("pvc-{i}"), MIB))
            .collect();
        let s = new_snapshot(&env, "snap", &ids[0]);
        // A restored volume (the stand-ins have no images to copy).
        let restored_id = new_volume(&env, "restored", MIB);
        let mut restored = env
            .plugin
            .volume(&restored_id.parse().expect("id"))
            .expect("volume");
        restored.source = Some(Source::Snapshot(s.snapshot_id.clone()));
        env.plugin.state.put(&restored).expect("put");
        ids.push(restored_id);
        // A volume still being made is not one yet.
        let mut unfinished = restored.clone();
        unfinished.local = "0000000000000000".into();
        unfinished.name = "unfinished".into();
        unfinished.creating = true;
        env.plugin.state.put(&unfinished).expect("put");

        let all = list_vols(&env, 0, "").await.expect("all");
        assert!(all.next_token.is_empty());
        let mut listed: Vec<String> = all
            .entries
            .iter()
            .map(|e| e.volume.as_ref().expect("volume").volume_id.clone())
            .collect();
        listed.sort();
        ids.sort();
        assert_eq!(listed, ids);
        let r = all
            .entries
            .iter()
            .filter_map(|e| e.volume.clone())
            .find(|v| v.volume_id == env.plugin.volume_id(&restored).to_string())
            .expect("restored listed");
        assert_eq!(r.capacity_bytes, restored.capacity as i64);
        assert_eq!(r.accessible_topology, vec![topology(NODE)]);
        assert_eq!(
            r.content_source.and_then(|c| c.r#type).map(|t| match t {
                csi::volume_content_source::Type::Snapshot(s) => s.snapshot_id,
                csi::volume_content_source::Type::Volume(v) => v.volume_id,
            }),
            Some(s.snapshot_id.clone())
        );

        // Pages of 2; the last volume of a page is deleted before the next
        // call, and its token still works. The snapshot goes first: the
        // volume it holds may be that one, as the names are random.
        delete_snapshot(&env, &s.snapshot_id);
        let first = list_vols(&env, 2, "").await.expect("page 1");
        assert_eq!(first.entries.len(), 2);
        assert!(!first.next_token.is_empty());
        let last = first.entries[1]
            .volume
            .as_ref()
            .expect("v")
            .volume_id
            .clone();
        env.plugin.delete_volume(&last).expect("delete");
        let mut seen: Vec<String> = first
            .entries
            .iter()
            .map(|e| e.volume.as_ref().expect("v").volume_id.clone())
            .collect();
        let mut token = first.next_token;
        while !token.is_empty() {
            let page = list_vols(&env, 2, &token).await.expect("next page");
            assert!(page.entries.len() <= 2);
            seen.extend(
                page.entries
                    .iter()
                    .map(|e| e.volume.as_ref().expect("v").volume_id.clone()),
            );
            token = page.next_token;
        }
        seen.sort();
        assert_eq!(seen, ids, "every volume once");

        for (max, token, want) in [
            (0, "garbage!", Code::Aborted),
            (0, "Zm9v.", Code::Aborted),
            (0, "10", Code::Aborted),
            (-1, "", Code::InvalidArgument),
        ] {
            assert_eq!(code(list_vols(&env, max, token).await), want, "{token:?}");
        }
    }

    #[tokio::test]
    async fn a_snapshot_the_kernel_no_longer_holds_does_not_keep_its_volume_busy() {
        let env = Env::new();
        let v = new_volume(&env, "pvc", MIB);
        let s = new_snapshot(&env, "snap-1", &v);
        let id: blksnap_node_api::ids::SnapshotId = s.snapshot_id.parse().expect("id");
        // Destroyed behind the plugin's back (an operator's blksnapctl).
        crate::kernel::Kernel::snapshot_destroy(
            env.kernel.as_ref(),
            blksnap::SnapshotId(id.kernel),
        )
        .expect("destroy");
        env.controller
            .create_snapshot(Request::new(snapshot_request("snap-2", &v)))
            .await
            .expect("the volume is free");
        let r = list(
            &env,
            csi::ListSnapshotsRequest {
                snapshot_id: s.snapshot_id,
                ..Default::default()
            },
        )
        .await
        .expect("list")
        .into_inner();
        assert!(!r.entries[0].snapshot.as_ref().expect("s").ready_to_use);
    }
}
