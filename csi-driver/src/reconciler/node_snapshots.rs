//! How the reconciler asks a node about its snapshots. The router
//! implements this over each node's node API; the reconciler never dials a
//! node itself.

use std::future::Future;
use std::time::SystemTime;

use blksnap_node_api::lost::LostReason;

/// What a node says about one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// The node holds it and serves it.
    Ready,
    /// It can no longer be served; a snapshot the node does not know at all
    /// is `Lost(LostReason::Gone)`.
    Lost(LostReason),
}

/// A snapshot as a node lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// The CSI snapshot id.
    pub id: String,
    /// The CSI id of the snapshotted volume.
    pub source_volume: String,
    /// The CSI id of the group snapshot it is a member of.
    pub group: Option<String>,
    /// When the node took it, by the node's clock.
    pub created: SystemTime,
}

/// A call to a node that did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The node is not reachable (not discovered, down, refused).
    #[error("node {node} is unavailable: {reason}")]
    Unavailable { node: String, reason: String },
    /// The node answered with an error.
    #[error("node {node} failed the call: {message}")]
    Failed { node: String, message: String },
}

/// The nodes' snapshots, as the reconciler needs them. Every id names its
/// node (see [`crate::ids`]), so the implementation routes by id.
pub trait NodeSnapshots: Send + Sync + 'static {
    /// The nodes currently known (discovered or configured).
    fn nodes(&self) -> Vec<String>;

    /// Asks the owning node about snapshot `id`.
    fn snapshot(&self, id: &str) -> impl Future<Output = Result<SnapshotState, NodeError>> + Send;

    /// Every snapshot `node` holds, lost ones included.
    fn list(&self, node: &str)
        -> impl Future<Output = Result<Vec<NodeSnapshot>, NodeError>> + Send;

    /// Deletes snapshot or group snapshot `id` on its node; an unknown id
    /// is not an error.
    fn delete(&self, id: &str) -> impl Future<Output = Result<(), NodeError>> + Send;
}
