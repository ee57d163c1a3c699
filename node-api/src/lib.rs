//! The contract between blksnap-csi's two binaries: the controller
//! (`csi-driver`), which routes CSI calls, and the node plugin, which
//! serves them for its node's volumes on the node API.
//!
//! Both sides parse and name things only through this crate: the ids
//! ([`ids`]), the metadata that says why a snapshot is lost ([`lost`]),
//! how a node's API is addressed and how both ends of its mutual TLS are
//! identified ([`identity`]), and what the node API offers
//! ([`capabilities`]). It does no I/O. With the feature `dev`, [`dev`]
//! holds the test certificates both binaries' tests use.

pub mod capabilities;
#[cfg(feature = "dev")]
pub mod dev;
pub mod identity;
pub mod ids;
pub mod lost;

/// Topology segment key naming the node that holds a volume (what the
/// node plugin reports in NodeGetInfo and on every volume).
pub const TOPOLOGY_KEY: &str = "topology.blksnap.csi/node";

/// Why a text is not one of this contract's names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The text of an id field is not an id this driver hands out.
    #[error("{text:?} is not an id of this driver")]
    Malformed { field: &'static str, text: String },
    /// A node name that ids cannot carry.
    #[error("node name {0:?} must be 1 to {max} characters of [a-z0-9.-]", max = ids::MAX_NODE_LEN)]
    NodeName(String),
}
