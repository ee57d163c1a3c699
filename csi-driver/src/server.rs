//! The unix socket the CSI sidecars call.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use csi_proto::csi::v1 as csi;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::controller::ControllerService;
use crate::group_controller::GroupControllerService;
use crate::identity::IdentityService;
use crate::snapshot_metadata::SnapshotMetadataService;
use crate::{Error, Result};

/// The services on the socket.
#[derive(Clone)]
pub struct Services {
    pub identity: IdentityService,
    pub controller: ControllerService,
    pub group_controller: GroupControllerService,
    pub snapshot_metadata: SnapshotMetadataService,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Binds `socket` (replacing a stale one) with mode 0660.
pub fn bind(socket: &Path) -> Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("remove stale {}", socket.display()))(e)),
    }
    let listener = UnixListener::bind(socket).map_err(io(format!("bind {}", socket.display())))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(io(format!("chmod {}", socket.display())))?;
    Ok(listener)
}

/// Serves the services on `listener` until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    services: Services,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    Server::builder()
        .add_service(csi::identity_server::IdentityServer::new(services.identity))
        .add_service(csi::controller_server::ControllerServer::new(
            services.controller,
        ))
        .add_service(csi::group_controller_server::GroupControllerServer::new(
            services.group_controller,
        ))
        .add_service(services.snapshot_metadata)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| io("serve".to_owned())(std::io::Error::other(e)))
}
