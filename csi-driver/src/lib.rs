//! blksnap-csi's controller: routes CSI calls to the node that owns them
//! and reconciles the snapshot API with what the nodes hold.

pub mod discovery;
pub mod ids;
pub mod reconciler;

use reconciler::NodeError;

/// Errors of the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Node(#[from] NodeError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
