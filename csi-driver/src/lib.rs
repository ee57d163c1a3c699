//! The blksnap-csi controller: serves CSI Identity, Controller,
//! GroupController and SnapshotMetadata on a unix socket for the CSI
//! sidecars, and routes every call to the node API of the node that owns
//! the volume or snapshot, over mutual TLS.
//!
//! Every id names its node ([`blksnap_node_api::ids`]); [`nodes`] turns a
//! node's name into a cached channel to its node API, through a
//! [`nodes::NodeDirectory`] (a static map here; Kubernetes discovery is
//! another implementation). The services ([`identity`], [`controller`],
//! [`group_controller`], [`snapshot_metadata`]) decide which node to ask,
//! and pass the SnapshotMetadata streams on still [`encoded`];
//! [`placement`] chooses the node of a new volume and [`paging`] spans a
//! listing over all nodes with one token. [`discovery`] finds the nodes'
//! endpoints in Kubernetes and [`reconciler`] keeps the snapshot API true
//! to what the nodes hold, asking them through [`node_snapshots`];
//! [`metrics`] counts and times every call to a node. This file owns [`Error`] and its one mapping to
//! CSI status codes.

pub mod config;
pub mod controller;
pub mod discovery;
pub mod encoded;
pub mod group_controller;
pub mod identity;
pub mod metrics;
pub mod node_snapshots;
pub mod nodes;
pub mod paging;
pub mod placement;
pub mod reconciler;
pub mod server;
pub mod snapshot_metadata;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can fail in the controller; each variant says which
/// CSI status code it becomes, in the single `From` impl below.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required request field is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A request that cannot be served as asked.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// An id that is not this driver's names nothing.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// The node an id names is not known: gone, or not discovered yet.
    #[error("node {0} is not known to the controller (gone, or not discovered yet)")]
    UnknownNode(String),
    /// No node is known at all.
    #[error("no node is known to the controller")]
    NoNodes,
    /// No node that the request allows can hold the volume.
    #[error("{0}")]
    Exhausted(String),
    /// A paging token this controller did not hand out.
    #[error("invalid starting_token {0:?}")]
    BadToken(String),
    /// A node answered with this status.
    #[error("node {node}: {}", status.message())]
    Node { node: String, status: tonic::Status },
    /// Start-up configuration that cannot work.
    #[error("configuration: {0}")]
    Config(String),
    /// A Kubernetes API call failed (discovery, the reconciler).
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A reconciler's call to a node got no answer.
    #[error(transparent)]
    NodeCall(#[from] reconciler::NodeError),
    /// A part that must run for good ended.
    #[error("{0} stopped")]
    Stopped(&'static str),
    /// Serving failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Invalid`] for `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// An [`Error::NotFound`].
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            id: id.into(),
        }
    }

    /// The status code of a node's answer, if this is one.
    pub fn node_code(&self) -> Option<tonic::Code> {
        match self {
            Error::Node { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        let code = match &e {
            Error::Missing(_) | Error::Invalid { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::UnknownNode(_) | Error::NoNodes => Code::Unavailable,
            // The spec's code for a topology that cannot hold the volume.
            Error::Exhausted(_) => Code::ResourceExhausted,
            Error::BadToken(_) => Code::Aborted,
            // The node's own code, passed on.
            Error::Node { status, .. } => status.code(),
            Error::NodeCall(reconciler::NodeError::Unavailable { .. }) => Code::Unavailable,
            Error::Config(_)
            | Error::Stopped(_)
            | Error::Io { .. }
            | Error::Kube(_)
            | Error::NodeCall(reconciler::NodeError::Failed { .. }) => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn errors_map_to_their_csi_codes() {
        let table: Vec<(Error, Code)> = vec![
            (Error::Missing("name"), Code::InvalidArgument),
            (Error::invalid("x", "bad"), Code::InvalidArgument),
            (Error::not_found("volume", "v"), Code::NotFound),
            (Error::UnknownNode("w1".into()), Code::Unavailable),
            (Error::NoNodes, Code::Unavailable),
            (Error::Exhausted("no".into()), Code::ResourceExhausted),
            (Error::BadToken("t".into()), Code::Aborted),
            (
                Error::Node {
                    node: "w1".into(),
                    status: tonic::Status::already_exists("taken"),
                },
                Code::AlreadyExists,
            ),
            (Error::Config("c".into()), Code::Internal),
            (Error::Stopped("the reconciler"), Code::Internal),
        ];
        for (e, code) in table {
            let text = e.to_string();
            let status = tonic::Status::from(e);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
        let named = tonic::Status::from(Error::UnknownNode("worker-9".into()));
        assert!(named.message().contains("worker-9"));
    }
}
