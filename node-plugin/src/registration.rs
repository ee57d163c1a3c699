//! The kubelet's plugin registration API, which makes the kubelet find the
//! CSI socket without node-driver-registrar: the plugin serves
//! `Registration` on `<kubelet dir>/plugins_registry/<driver>-reg.sock`;
//! the kubelet's plugin watcher sees the socket, asks [`GetInfo`], connects
//! to the endpoint it names, calls NodeGetInfo (which fills the node's
//! CSINode) and reports the outcome with [`NotifyRegistrationStatus`].
//! Removing the socket at stop makes the kubelet unregister the driver.
//!
//! [`GetInfo`]: Registration::get_info
//! [`NotifyRegistrationStatus`]: Registration::notify_registration_status

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use csi_proto::pluginregistration as reg;
use reg::registration_server::Registration;
use tonic::{Request, Response, Status};

/// The plugin type the kubelet routes to its CSI handler.
pub const CSI_PLUGIN_TYPE: &str = "CSIPlugin";

/// The CSI versions this plugin tells the kubelet it speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

/// How long after a refusal the socket is made anew, which the kubelet's
/// plugin watcher takes as a new plugin and tries again (it does not retry
/// a refused one by itself; node-driver-registrar exits and is restarted).
/// A kubelet that starts with the plugin already running can refuse the
/// first try, while its Node object does not exist yet.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Where the registration socket of `driver` goes under the kubelet's
/// directory (the kubelet watches `plugins_registry`; the file name is the
/// one node-driver-registrar uses, so either can replace the other).
pub fn socket_path(kubelet_dir: &Path, driver: &str) -> PathBuf {
    kubelet_dir
        .join("plugins_registry")
        .join(format!("{driver}-reg.sock"))
}

/// The Registration service: names the driver and its CSI socket.
#[derive(Debug, Clone)]
pub struct RegistrationService {
    driver: String,
    endpoint: PathBuf,
    refused: Arc<Notify>,
}

impl RegistrationService {
    /// `endpoint` is the CSI socket's path as the kubelet sees it (on the
    /// host), which differs from the plugin's own path in a container.
    pub fn new(driver: impl Into<String>, endpoint: impl Into<PathBuf>) -> Self {
        RegistrationService {
            driver: driver.into(),
            endpoint: endpoint.into(),
            refused: Arc::new(Notify::new()),
        }
    }

    /// Signalled once for each registration the kubelet refused (a refusal
    /// before anyone waits is kept).
    pub fn refusals(&self) -> Arc<Notify> {
        Arc::clone(&self.refused)
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(
        &self,
        _request: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: CSI_PLUGIN_TYPE.to_owned(),
            name: self.driver.clone(),
            endpoint: self.endpoint.display().to_string(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!(driver = %self.driver, "registered with the kubelet");
        } else {
            // The reason is what an operator needs; the socket is made
            // anew after RETRY_AFTER, so the kubelet tries again.
            tracing::error!(driver = %self.driver, error = %status.error, "the kubelet refused the registration");
            self.refused.notify_one();
        }
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reg::registration_client::RegistrationClient;
    use reg::registration_server::RegistrationServer;
    use tokio_stream::wrappers::UnixListenerStream;
    use tonic::transport::{Endpoint, Server};

    #[test]
    fn the_socket_lies_in_the_kubelets_plugin_registry() {
        assert_eq!(
            socket_path(Path::new("/var/lib/kubelet"), "blksnap.csi.io"),
            PathBuf::from("/var/lib/kubelet/plugins_registry/blksnap.csi.io-reg.sock")
        );
    }

    #[tokio::test]
    async fn get_info_names_the_driver_and_its_socket_over_a_unix_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("reg.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let service = RegistrationService::new(
            "blksnap.csi.io",
            "/var/lib/kubelet/plugins/blksnap.csi.io/csi.sock",
        );
        let server = tokio::spawn(
            Server::builder()
                .add_service(RegistrationServer::new(service))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        let channel = Endpoint::from_shared(format!("unix://{}", socket.display()))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = RegistrationClient::new(channel);
        let info = client
            .get_info(reg::InfoRequest {})
            .await
            .expect("GetInfo")
            .into_inner();
        assert_eq!(info.r#type, "CSIPlugin");
        assert_eq!(info.name, "blksnap.csi.io");
        assert_eq!(
            info.endpoint,
            "/var/lib/kubelet/plugins/blksnap.csi.io/csi.sock"
        );
        assert_eq!(info.supported_versions, ["1.0.0"]);
        for registered in [true, false] {
            client
                .notify_registration_status(reg::RegistrationStatus {
                    plugin_registered: registered,
                    error: if registered { "" } else { "refused" }.to_owned(),
                })
                .await
                .expect("NotifyRegistrationStatus");
        }
        server.abort();
    }
}
