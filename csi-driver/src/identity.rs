//! CSI Identity of the controller, answered without asking any node.

use blksnap_node_api::capabilities;
use csi::identity_server::Identity;
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
        Ok(Response::new(capabilities::plugin_info(&self.name)))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(capabilities::plugin_response()))
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
