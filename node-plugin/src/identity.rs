//! CSI Identity, served on both sockets.

use std::sync::Arc;

use blksnap_node_api::capabilities;
use csi::identity_server::Identity;
use csi_proto::csi::v1 as csi;
use tonic::{Request, Response, Status};

use crate::plugin::Plugin;
use crate::server::blocking;

/// The Identity service.
#[derive(Debug, Clone)]
pub struct IdentityService {
    name: String,
    plugin: Arc<Plugin>,
}

impl IdentityService {
    pub fn new(name: impl Into<String>, plugin: Arc<Plugin>) -> Self {
        IdentityService {
            name: name.into(),
            plugin,
        }
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
        // Ready when the kernel module answers.
        let plugin = Arc::clone(&self.plugin);
        let ready = blocking(move || Ok(plugin.kernel_alive())).await?;
        Ok(Response::new(csi::ProbeResponse { ready: Some(ready) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Env;

    use csi::plugin_capability::service::Type as Service;

    #[tokio::test]
    async fn identity_answers() {
        let env = Env::new();
        let id = IdentityService::new("blksnap.csi.io", Arc::clone(&env.plugin));
        let info = id
            .get_plugin_info(Request::new(csi::GetPluginInfoRequest {}))
            .await
            .expect("info")
            .into_inner();
        assert_eq!(info.name, "blksnap.csi.io");
        assert!(!info.vendor_version.is_empty());
        let caps = id
            .get_plugin_capabilities(Request::new(csi::GetPluginCapabilitiesRequest {}))
            .await
            .expect("caps")
            .into_inner()
            .capabilities;
        let services: Vec<i32> = caps
            .iter()
            .filter_map(|c| match &c.r#type {
                Some(csi::plugin_capability::Type::Service(s)) => Some(s.r#type),
                _ => None,
            })
            .collect();
        for want in [
            Service::ControllerService,
            Service::VolumeAccessibilityConstraints,
            Service::GroupControllerService,
            Service::SnapshotMetadataService,
        ] {
            assert!(services.contains(&(want as i32)), "{want:?}");
        }
        assert_eq!(Service::SnapshotMetadataService as i32, 4);
        let probe = id
            .probe(Request::new(csi::ProbeRequest {}))
            .await
            .expect("probe")
            .into_inner();
        assert_eq!(probe.ready, Some(true));
    }
}
