//! CSI Identity of the controller, answered without asking any node.

use csi::identity_server::Identity;
use csi::plugin_capability::service::Type as Service;
use csi_proto::csi::v1 as csi;
use tonic::{Request, Response, Status};

/// The Identity service.
#[derive(Debug, Clone)]
pub struct IdentityService {
    name: String,
}

impl IdentityService {
    pub fn new(name: impl Into<String>) -> Self {
        IdentityService { name: name.into() }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use csi::plugin_capability::{volume_expansion, Type, VolumeExpansion};
        let services = [
            Service::ControllerService,
            Service::VolumeAccessibilityConstraints,
            Service::GroupControllerService,
            Service::SnapshotMetadataService,
        ];
        let mut capabilities: Vec<csi::PluginCapability> = services
            .into_iter()
            .map(|s| csi::PluginCapability {
                r#type: Some(Type::Service(csi::plugin_capability::Service {
                    r#type: s as i32,
                })),
            })
            .collect();
        // Pool volumes grow while in use (the node plugin's answer).
        capabilities.push(csi::PluginCapability {
            r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                r#type: volume_expansion::Type::Online as i32,
            })),
        });
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        // Ready once serving: nodes are asked per call, and one node being
        // down must not restart the controller.
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}
