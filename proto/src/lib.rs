//! The Container Storage Interface, version 1.12 (protobuf package `csi.v1`),
//! compiled from this crate's `csi.proto` with prost and tonic.
//!
//! Everything lives in [`csi::v1`]: the messages (for example
//! [`csi::v1::CreateSnapshotRequest`], [`csi::v1::GetMetadataDeltaRequest`]),
//! and for each service a client module and a server module:
//!
//! | service            | server                                          | client                                          |
//! |--------------------|-------------------------------------------------|-------------------------------------------------|
//! | `Identity`         | [`csi::v1::identity_server::IdentityServer`]    | [`csi::v1::identity_client::IdentityClient`]    |
//! | `Controller`       | [`csi::v1::controller_server::ControllerServer`] | [`csi::v1::controller_client::ControllerClient`] |
//! | `Node`             | [`csi::v1::node_server::NodeServer`]            | [`csi::v1::node_client::NodeClient`]            |
//! | `GroupController`  | [`csi::v1::group_controller_server::GroupControllerServer`] | [`csi::v1::group_controller_client::GroupControllerClient`] |
//! | `SnapshotMetadata` | [`csi::v1::snapshot_metadata_server::SnapshotMetadataServer`] | [`csi::v1::snapshot_metadata_client::SnapshotMetadataClient`] |
//!
//! Well-known types map to `prost-types` and plain Rust: `Timestamp` is
//! [`prost_types::Timestamp`], `BoolValue` and `Int64Value` are
//! `Option<bool>` and `Option<i64>`.
//!
//! The specification marks fields that carry secrets with the `csi_secret`
//! option; prost does not keep custom options, so code that logs requests
//! must redact the `secrets` maps itself (every secret-carrying field is
//! named `secrets`).

/// Protobuf package `csi`.
pub mod csi {
    /// Protobuf package `csi.v1`: generated messages, clients and servers.
    #[allow(
        missing_docs,
        clippy::all,
        clippy::pedantic,
        clippy::nursery,
        rustdoc::all
    )]
    pub mod v1 {
        tonic::include_proto!("csi.v1");
    }
}

/// The kubelet's plugin registration API v1 (protobuf package
/// `pluginregistration`), which a CSI node plugin serves in the kubelet's
/// `plugins_registry` directory so the kubelet finds its socket:
/// [`pluginregistration::registration_server::RegistrationServer`] and the
/// client beside it.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    rustdoc::all
)]
pub mod pluginregistration {
    tonic::include_proto!("pluginregistration");
}

/// The CSI version this crate declares.
pub const CSI_VERSION: &str = "1.12.0";

/// Encoded `google.protobuf.FileDescriptorSet` of `csi.proto` and its
/// imports, for gRPC server reflection (for example `tonic-reflection`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/csi_v1_descriptor.bin"));
