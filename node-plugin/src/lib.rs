//! The blksnap-csi node plugin: node-local raw block volumes (and file
//! systems on them) with copy-on-write snapshots and changed block
//! tracking, driven through the blksnap kernel module.
//!
//! Two gRPC surfaces are served from one process:
//!
//! * the kubelet's unix socket: CSI Identity and Node ([`identity`],
//!   [`node`]);
//! * the node API over TCP with mutual TLS, for the cluster's controller:
//!   Identity, Controller, GroupController and SnapshotMetadata for the
//!   volumes of this node ([`controller`], [`group_controller`],
//!   [`snapshot_metadata`]).
//!
//! Optionally a third, the kubelet's plugin registration socket
//! ([`registration`], [`uds_authority`]), where node-driver-registrar is
//! not run.
//!
//! The services are thin: they validate requests and translate messages.
//! The work lives in [`plugin::Plugin`] (volumes, snapshots, recovery),
//! which drives the kernel through the [`kernel::Kernel`] trait and the
//! volume backends through [`backend::Backend`], and keeps its records in
//! [`state`]. This file owns the crate's vocabulary: [`Error`], the one
//! mapping of errors to CSI status codes, and [`Result`].

#![forbid(unsafe_op_in_unsafe_fn)]

use std::path::PathBuf;

pub mod backend;
pub mod block_volume;
pub mod config;
pub mod controller;
pub mod controller_identity;
pub mod csi_convert;
pub mod filesystem_volume;
pub mod format;
pub mod group_controller;
pub mod guard;
pub mod identity;
pub mod kernel;
pub mod kmod;
pub mod metrics;
pub mod mount;
pub mod node;
pub mod plugin;
pub mod ranges;
pub mod registration;
pub mod server;
pub mod snapshot_metadata;
pub mod state;
pub mod storage;
pub mod uds_authority;

#[cfg(test)]
mod testing;

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can fail in the plugin. Each variant says which CSI
/// status code it becomes; the mapping is the single `From` impl below.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required request field is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A request field is present but not acceptable.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The named object does not exist on this node.
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    /// The name is taken by an object made from other arguments.
    #[error("{kind} {name:?} already exists with different arguments")]
    AlreadyExists { kind: &'static str, name: String },
    /// Another call for the same object is in flight.
    #[error("an operation on {0} is already in progress")]
    Busy(String),
    /// A paging token this plugin did not hand out.
    #[error("invalid starting_token {0:?}")]
    BadToken(String),
    /// No room: pool space, a free static device, difference storage.
    #[error("{0}")]
    Exhausted(String),
    /// A capacity or offset outside what the object supports.
    #[error("{0}")]
    OutOfRange(String),
    /// The object is in a state that does not allow the call, and will not
    /// change by itself (a lost snapshot, a volume whose snapshots are
    /// held): a final code, which the sidecars do not retry.
    #[error("{0}")]
    Precondition(String),
    /// The volume is in as many snapshots as the module keeps of one device.
    /// Only a delete or a module reload changes that, so the code is final
    /// (FAILED_PRECONDITION): csi-snapshotter retries RESOURCE_EXHAUSTED,
    /// and a VolumeSnapshot it keeps retrying cannot be deleted.
    #[error(
        "volume {volume} is already in {} snapshots, the most blksnap.ko keeps of one \
         volume ({}); a snapshot or clone of it needs one more: delete one of its \
         snapshots, {}",
        .limit.count(), .limit.source(), .limit.remedy()
    )]
    SnapshotLimit {
        volume: String,
        limit: crate::kernel::PerDevice,
    },
    /// Cannot be served now: a static device that is missing (it may come
    /// back), or a snapshot the metadata calls cannot serve (the spec's
    /// answer for a snapshot that is not ready; the snapshot-metadata
    /// sidecar passes it to the backup client, which does not retry).
    #[error("{0}")]
    Unavailable(String),
    /// A call this plugin does not offer.
    #[error("{0} is not supported by this plugin")]
    Unsupported(&'static str),
    /// The kernel module refused or failed a command.
    #[error("kernel: {0}")]
    Kernel(#[from] blksnap::Error),
    /// A system call on a file or device failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An external program (mkfs, resize2fs, modprobe, ...) failed.
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: String,
        stderr: String,
    },
    /// The persisted state is unreadable.
    #[error("state record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// Start-up configuration that cannot work.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// An [`Error::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

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
}

impl From<blksnap_node_api::IdError> for Error {
    fn from(e: blksnap_node_api::IdError) -> Self {
        use blksnap_node_api::IdError;
        match &e {
            IdError::Malformed { field, .. } => Error::invalid(field, e.to_string()),
            IdError::NodeName(_) => Error::Config(e.to_string()),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        let code = match &e {
            Error::Missing(_) | Error::Invalid { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::Busy(_) | Error::BadToken(_) => Code::Aborted,
            Error::Exhausted(_) => Code::ResourceExhausted,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::Precondition(_) | Error::SnapshotLimit { .. } => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unsupported(_) => Code::Unimplemented,
            Error::Kernel(_)
            | Error::Io { .. }
            | Error::Command { .. }
            | Error::Corrupt { .. }
            | Error::Config(_) => Code::Internal,
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
            (
                Error::AlreadyExists {
                    kind: "snapshot",
                    name: "n".into(),
                },
                Code::AlreadyExists,
            ),
            (Error::Busy("snapshot n".into()), Code::Aborted),
            (Error::BadToken("t".into()), Code::Aborted),
            (Error::Exhausted("full".into()), Code::ResourceExhausted),
            (Error::OutOfRange("far".into()), Code::OutOfRange),
            (Error::Precondition("gen".into()), Code::FailedPrecondition),
            (
                Error::SnapshotLimit {
                    volume: "v1:v:n".into(),
                    limit: crate::kernel::PerDevice::Parameter(16),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::SnapshotLimit {
                    volume: "v1:v:n".into(),
                    limit: crate::kernel::PerDevice::Interface1_0,
                },
                Code::FailedPrecondition,
            ),
            (Error::Unavailable("lost".into()), Code::Unavailable),
            (Error::Unsupported("ListVolumes"), Code::Unimplemented),
            (
                Error::io("open", "/x", std::io::Error::other("boom")),
                Code::Internal,
            ),
        ];
        for (e, code) in table {
            let text = e.to_string();
            let status = tonic::Status::from(e);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
    }
}
