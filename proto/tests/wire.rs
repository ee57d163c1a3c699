//! The generated messages put each field on the wire under the number the
//! CSI specification gives it. Every expectation below is written out byte by
//! byte from the protobuf encoding rules (tag = field number << 3 | wire
//! type), so a renumbered field or enum value fails here.

use std::collections::HashMap;

use csi_proto::csi::v1::{
    controller_service_capability, group_controller_service_capability, node_service_capability,
    plugin_capability, BlockMetadata, BlockMetadataType, ControllerServiceCapability,
    CreateSnapshotRequest, CreateVolumeGroupSnapshotRequest, GetMetadataAllocatedRequest,
    GetMetadataDeltaRequest, GetMetadataDeltaResponse, GroupControllerServiceCapability,
    NodeServiceCapability, PluginCapability, ProbeResponse, Snapshot, VolumeGroupSnapshot,
};
use prost::Message;

/// Encodes `msg`, compares with `expected`, and checks that decoding the
/// expected bytes gives the message back.
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, expected: &[u8]) {
    let encoded = msg.encode_to_vec();
    assert_eq!(encoded, expected, "encoding of {msg:?}");
    assert_eq!(&M::decode(expected).expect("expected bytes decode"), msg);
}

fn one_secret() -> HashMap<String, String> {
    HashMap::from([("k".to_owned(), "v".to_owned())])
}

#[test]
fn get_metadata_delta_request_field_numbers() {
    let req = GetMetadataDeltaRequest {
        base_snapshot_id: "a".into(),
        target_snapshot_id: "b".into(),
        starting_offset: 4096,
        max_results: 256,
        secrets: one_secret(),
    };
    assert_wire(
        &req,
        &[
            0x0a, 0x01, b'a', // 1: base_snapshot_id, length-delimited
            0x12, 0x01, b'b', // 2: target_snapshot_id
            0x18, 0x80, 0x20, // 3: starting_offset, varint 4096
            0x20, 0x80, 0x02, // 4: max_results, varint 256
            0x2a, 0x06, // 5: secrets, one map entry of 6 bytes
            0x0a, 0x01, b'k', 0x12, 0x01, b'v',
        ],
    );
}

#[test]
fn get_metadata_allocated_request_field_numbers() {
    let req = GetMetadataAllocatedRequest {
        snapshot_id: "s".into(),
        starting_offset: 1,
        max_results: 2,
        secrets: one_secret(),
    };
    assert_wire(
        &req,
        &[
            0x0a, 0x01, b's', // 1: snapshot_id
            0x10, 0x01, // 2: starting_offset
            0x18, 0x02, // 3: max_results
            0x22, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', // 4: secrets
        ],
    );
}

#[test]
fn get_metadata_delta_response_variable_length() {
    let resp = GetMetadataDeltaResponse {
        block_metadata_type: BlockMetadataType::VariableLength as i32,
        volume_capacity_bytes: 1 << 30,
        block_metadata: vec![BlockMetadata {
            byte_offset: 4096,
            size_bytes: 65536,
        }],
    };
    assert_wire(
        &resp,
        &[
            0x08, 0x02, // 1: block_metadata_type = VARIABLE_LENGTH (2)
            0x10, 0x80, 0x80, 0x80, 0x80, 0x04, // 2: volume_capacity_bytes = 2^30
            0x1a, 0x07, // 3: one BlockMetadata of 7 bytes
            0x08, 0x80, 0x20, // byte_offset = 4096
            0x10, 0x80, 0x80, 0x04, // size_bytes = 65536
        ],
    );
}

#[test]
fn block_metadata_type_values() {
    assert_eq!(BlockMetadataType::Unknown as i32, 0);
    assert_eq!(BlockMetadataType::FixedLength as i32, 1);
    assert_eq!(BlockMetadataType::VariableLength as i32, 2);
    assert_eq!(
        BlockMetadataType::VariableLength.as_str_name(),
        "VARIABLE_LENGTH"
    );
    assert_eq!(
        BlockMetadataType::from_str_name("FIXED_LENGTH"),
        Some(BlockMetadataType::FixedLength)
    );
}

#[test]
fn create_snapshot_request_field_numbers() {
    let req = CreateSnapshotRequest {
        source_volume_id: "vol".into(),
        name: "snap".into(),
        secrets: one_secret(),
        parameters: HashMap::from([("p".to_owned(), "q".to_owned())]),
    };
    assert_wire(
        &req,
        &[
            0x0a, 0x03, b'v', b'o', b'l', // 1: source_volume_id
            0x12, 0x04, b's', b'n', b'a', b'p', // 2: name
            0x1a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', // 3: secrets
            0x22, 0x06, 0x0a, 0x01, b'p', 0x12, 0x01, b'q', // 4: parameters
        ],
    );
}

#[test]
fn plugin_capability_snapshot_metadata_service() {
    use plugin_capability::service::Type;
    assert_eq!(Type::ControllerService as i32, 1);
    assert_eq!(Type::VolumeAccessibilityConstraints as i32, 2);
    assert_eq!(Type::GroupControllerService as i32, 3);
    assert_eq!(Type::SnapshotMetadataService as i32, 4);
    assert_eq!(
        Type::SnapshotMetadataService.as_str_name(),
        "SNAPSHOT_METADATA_SERVICE"
    );

    let cap = PluginCapability {
        r#type: Some(plugin_capability::Type::Service(
            plugin_capability::Service {
                r#type: Type::SnapshotMetadataService as i32,
            },
        )),
    };
    // 1: service (length 2) { 1: type = 4 }
    assert_wire(&cap, &[0x0a, 0x02, 0x08, 0x04]);
}

#[test]
fn capability_enum_values() {
    use controller_service_capability::rpc::Type as C;
    assert_eq!(C::CreateDeleteVolume as i32, 1);
    assert_eq!(C::CreateDeleteSnapshot as i32, 5);
    assert_eq!(C::ListSnapshots as i32, 6);
    assert_eq!(C::CloneVolume as i32, 7);
    assert_eq!(C::ExpandVolume as i32, 9);
    assert_eq!(C::ModifyVolume as i32, 14);
    assert_eq!(C::GetSnapshot as i32, 15);

    use node_service_capability::rpc::Type as N;
    assert_eq!(N::StageUnstageVolume as i32, 1);
    assert_eq!(N::GetVolumeStats as i32, 2);
    assert_eq!(N::ExpandVolume as i32, 3);

    use group_controller_service_capability::rpc::Type as G;
    assert_eq!(G::CreateDeleteGetVolumeGroupSnapshot as i32, 1);

    let cap = ControllerServiceCapability {
        r#type: Some(controller_service_capability::Type::Rpc(
            controller_service_capability::Rpc {
                r#type: C::CreateDeleteSnapshot as i32,
            },
        )),
    };
    assert_wire(&cap, &[0x0a, 0x02, 0x08, 0x05]);

    let cap = NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(
            node_service_capability::Rpc {
                r#type: N::StageUnstageVolume as i32,
            },
        )),
    };
    assert_wire(&cap, &[0x0a, 0x02, 0x08, 0x01]);

    let cap = GroupControllerServiceCapability {
        r#type: Some(group_controller_service_capability::Type::Rpc(
            group_controller_service_capability::Rpc {
                r#type: G::CreateDeleteGetVolumeGroupSnapshot as i32,
            },
        )),
    };
    assert_wire(&cap, &[0x0a, 0x02, 0x08, 0x01]);
}

#[test]
fn volume_group_snapshot_field_numbers() {
    let member = Snapshot {
        size_bytes: 1,
        snapshot_id: "s".into(),
        source_volume_id: "v".into(),
        creation_time: Some(prost_types::Timestamp {
            seconds: 3,
            nanos: 4,
        }),
        ready_to_use: true,
        group_snapshot_id: "g".into(),
    };
    let member_bytes: &[u8] = &[
        0x08, 0x01, // 1: size_bytes
        0x12, 0x01, b's', // 2: snapshot_id
        0x1a, 0x01, b'v', // 3: source_volume_id
        0x22, 0x04, 0x08, 0x03, 0x10, 0x04, // 4: creation_time {seconds 3, nanos 4}
        0x28, 0x01, // 5: ready_to_use
        0x32, 0x01, b'g', // 6: group_snapshot_id
    ];
    assert_wire(&member, member_bytes);

    let group = VolumeGroupSnapshot {
        group_snapshot_id: "g".into(),
        snapshots: vec![member],
        creation_time: Some(prost_types::Timestamp {
            seconds: 5,
            nanos: 0,
        }),
        ready_to_use: true,
    };
    let mut expected = vec![0x0a, 0x01, b'g']; // 1: group_snapshot_id
    expected.extend([0x12, member_bytes.len() as u8]); // 2: snapshots
    expected.extend(member_bytes);
    expected.extend([0x1a, 0x02, 0x08, 0x05]); // 3: creation_time {seconds 5}
    expected.extend([0x20, 0x01]); // 4: ready_to_use
    assert_wire(&group, &expected);

    let req = CreateVolumeGroupSnapshotRequest {
        name: "n".into(),
        source_volume_ids: vec!["a".into(), "b".into()],
        secrets: one_secret(),
        parameters: HashMap::new(),
    };
    assert_wire(
        &req,
        &[
            0x0a, 0x01, b'n', // 1: name
            0x12, 0x01, b'a', 0x12, 0x01, b'b', // 2: source_volume_ids, repeated
            0x1a, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', // 3: secrets
        ],
    );
}

#[test]
fn bool_value_wrapper_keeps_presence() {
    // ProbeResponse.ready is a google.protobuf.BoolValue: unset, false and
    // true are three different encodings.
    assert_wire(&ProbeResponse { ready: None }, &[]);
    assert_wire(&ProbeResponse { ready: Some(false) }, &[0x0a, 0x00]);
    assert_wire(
        &ProbeResponse { ready: Some(true) },
        &[0x0a, 0x02, 0x08, 0x01],
    );
}
