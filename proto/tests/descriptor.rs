//! `FILE_DESCRIPTOR_SET` describes package `csi.v1` with the specification's
//! services, streaming shapes and option markers, so gRPC reflection shows
//! clients the real interface.

use csi_proto::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

fn csi_file() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let names: Vec<_> = set.file.iter().map(|f| f.name().to_owned()).collect();
    for dep in [
        "google/protobuf/descriptor.proto",
        "google/protobuf/timestamp.proto",
        "google/protobuf/wrappers.proto",
    ] {
        assert!(
            names.iter().any(|n| n == dep),
            "{dep} missing from {names:?}"
        );
    }
    set.file
        .into_iter()
        .find(|f| f.name() == "csi.proto")
        .expect("csi.proto in the set")
}

#[test]
fn services_and_methods() {
    let file = csi_file();
    assert_eq!(file.package(), "csi.v1");
    let services: Vec<_> = file.service.iter().map(|s| s.name()).collect();
    assert_eq!(
        services,
        [
            "Identity",
            "Controller",
            "GroupController",
            "SnapshotMetadata",
            "Node"
        ]
    );

    let methods = |service: &str| -> Vec<(String, bool)> {
        file.service
            .iter()
            .find(|s| s.name() == service)
            .unwrap()
            .method
            .iter()
            .map(|m| (m.name().to_owned(), m.server_streaming()))
            .collect()
    };
    assert_eq!(
        methods("SnapshotMetadata"),
        [
            ("GetMetadataAllocated".to_owned(), true),
            ("GetMetadataDelta".to_owned(), true)
        ]
    );
    let group: Vec<_> = methods("GroupController")
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(
        group,
        [
            "GroupControllerGetCapabilities",
            "CreateVolumeGroupSnapshot",
            "DeleteVolumeGroupSnapshot",
            "GetVolumeGroupSnapshot"
        ]
    );
    assert_eq!(methods("Controller").len(), 15);
    assert_eq!(methods("Node").len(), 8);
    assert_eq!(methods("Identity").len(), 3);
}

#[test]
fn option_extensions_are_declared_as_in_the_spec() {
    let file = csi_file();
    let ext: Vec<_> = file
        .extension
        .iter()
        .map(|e| (e.name(), e.number(), e.extendee()))
        .collect();
    assert_eq!(
        ext,
        [
            ("alpha_enum", 1060, ".google.protobuf.EnumOptions"),
            (
                "alpha_enum_value",
                1060,
                ".google.protobuf.EnumValueOptions"
            ),
            ("csi_secret", 1059, ".google.protobuf.FieldOptions"),
            ("alpha_field", 1060, ".google.protobuf.FieldOptions"),
            ("alpha_message", 1060, ".google.protobuf.MessageOptions"),
            ("alpha_method", 1060, ".google.protobuf.MethodOptions"),
            ("alpha_service", 1060, ".google.protobuf.ServiceOptions"),
        ]
    );
}

/// Every `secrets` field carries options (`csi_secret`), and the only other
/// fields with options are the specification's three alpha fields.
#[test]
fn secret_fields_are_marked() {
    fn walk(prefix: &str, msg: &DescriptorProto, secrets: &mut usize, other: &mut Vec<String>) {
        let name = format!("{prefix}{}", msg.name());
        for field in &msg.field {
            if field.name() == "secrets" {
                assert!(field.options.is_some(), "{name}.secrets lacks csi_secret");
                *secrets += 1;
            } else if field.options.is_some() {
                other.push(format!("{name}.{}", field.name()));
            }
        }
        for nested in &msg.nested_type {
            walk(&format!("{name}."), nested, secrets, other);
        }
    }
    let file = csi_file();
    let (mut secrets, mut other) = (0, Vec::new());
    for msg in &file.message_type {
        walk("", msg, &mut secrets, &mut other);
    }
    assert_eq!(secrets, 19);
    assert_eq!(
        other,
        [
            "ListVolumesResponse.VolumeStatus.volume_condition",
            "GetCapacityResponse.minimum_volume_size",
            "NodeGetVolumeStatsResponse.volume_condition",
        ]
    );
}
