//! What the node API offers, which the controller advertises as its own:
//! it routes each of these calls to the node that owns the object.

use csi_proto::csi::v1 as csi;

use csi::controller_service_capability::rpc::Type as ControllerCap;
use csi::group_controller_service_capability::rpc::Type as GroupCap;

/// The Controller RPCs offered.
pub const CONTROLLER: [ControllerCap; 8] = [
    ControllerCap::CreateDeleteVolume,
    ControllerCap::CreateDeleteSnapshot,
    ControllerCap::ListSnapshots,
    ControllerCap::GetSnapshot,
    ControllerCap::ListVolumes,
    ControllerCap::CloneVolume,
    ControllerCap::ExpandVolume,
    ControllerCap::GetCapacity,
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
