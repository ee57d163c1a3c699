//! What the node API offers, which the controller advertises as its own:
//! it routes each of these calls to the node that owns the object. Both
//! binaries answer GetPluginInfo and GetPluginCapabilities alike, so the
//! sidecars of either see one driver.

use csi_proto::csi::v1 as csi;

use csi::controller_service_capability::rpc::Type as ControllerCap;
use csi::group_controller_service_capability::rpc::Type as GroupCap;
use csi::plugin_capability::service::Type as Service;
use csi::plugin_capability::{volume_expansion, Type, VolumeExpansion};

/// The plugin services offered: the node plugin serves them for its own
/// volumes, the controller by routing.
pub const SERVICES: [Service; 4] = [
    Service::ControllerService,
    Service::VolumeAccessibilityConstraints,
    Service::GroupControllerService,
    Service::SnapshotMetadataService,
];

/// The GetPluginInfo answer of driver `name`.
pub fn plugin_info(name: &str) -> csi::GetPluginInfoResponse {
    csi::GetPluginInfoResponse {
        name: name.to_owned(),
        vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
        manifest: Default::default(),
    }
}

/// The GetPluginCapabilities answer.
pub fn plugin_response() -> csi::GetPluginCapabilitiesResponse {
    let mut capabilities: Vec<csi::PluginCapability> = SERVICES
        .into_iter()
        .map(|s| csi::PluginCapability {
            r#type: Some(Type::Service(csi::plugin_capability::Service {
                r#type: s as i32,
            })),
        })
        .collect();
    // Pool volumes grow while in use; the file system grows on the node.
    capabilities.push(csi::PluginCapability {
        r#type: Some(Type::VolumeExpansion(VolumeExpansion {
            r#type: volume_expansion::Type::Online as i32,
        })),
    });
    csi::GetPluginCapabilitiesResponse { capabilities }
}

/// The Controller RPCs offered.
pub const CONTROLLER: [ControllerCap; 9] = [
    ControllerCap::CreateDeleteVolume,
    ControllerCap::CreateDeleteSnapshot,
    ControllerCap::ListSnapshots,
    ControllerCap::GetSnapshot,
    ControllerCap::ListVolumes,
    ControllerCap::CloneVolume,
    ControllerCap::ExpandVolume,
    ControllerCap::GetCapacity,
    // SINGLE_NODE_SINGLE_WRITER and _MULTI_WRITER: ReadWriteOncePod is
    // enforced on the node, one target per volume.
    ControllerCap::SingleNodeMultiWriter,
];

/// The GroupController RPCs offered.
pub const GROUP_CONTROLLER: [GroupCap; 1] = [GroupCap::CreateDeleteGetVolumeGroupSnapshot];

/// The ControllerGetCapabilities answer.
pub fn controller_response() -> csi::ControllerGetCapabilitiesResponse {
    csi::ControllerGetCapabilitiesResponse {
        capabilities: CONTROLLER
            .into_iter()
            .map(|t| csi::ControllerServiceCapability {
                r#type: Some(csi::controller_service_capability::Type::Rpc(
                    csi::controller_service_capability::Rpc { r#type: t as i32 },
                )),
            })
            .collect(),
    }
}

/// The GroupControllerGetCapabilities answer.
pub fn group_controller_response() -> csi::GroupControllerGetCapabilitiesResponse {
    csi::GroupControllerGetCapabilitiesResponse {
        capabilities: GROUP_CONTROLLER
            .into_iter()
            .map(|t| csi::GroupControllerServiceCapability {
                r#type: Some(csi::group_controller_service_capability::Type::Rpc(
                    csi::group_controller_service_capability::Rpc { r#type: t as i32 },
                )),
            })
            .collect(),
    }
}
