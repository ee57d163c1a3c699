//! Typed resources of the snapshot APIs the pinned external-snapshotter
//! (v8.7.0) serves: `snapshot.storage.k8s.io/v1` VolumeSnapshotContent and
//! VolumeSnapshot, `groupsnapshot.storage.k8s.io/v1`
//! VolumeGroupSnapshotContent. Only the fields the reconciler reads or
//! writes; the CRDs are upstream's (installed by the test bed and the
//! chart), so no schema is generated here.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// `status.error` of contents and snapshots: what the snapshot-controller
/// copies from a content to its VolumeSnapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

#[derive(CustomResource, Debug, Clone, Serialize, Deserialize)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshotContent",
    status = "VolumeSnapshotContentStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentSpec {
    pub driver: String,
    pub deletion_policy: String,
    pub source: ContentSource,
    pub volume_snapshot_ref: ObjectReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

/// Exactly one is set: `volumeHandle` for a snapshot the sidecar takes,
/// `snapshotHandle` for a pre-provisioned one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotContentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// Nanoseconds since the epoch (an integer here, unlike the
    /// VolumeSnapshot's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SnapshotError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_handle: Option<String>,
}

impl VolumeSnapshotContent {
    /// The CSI snapshot id the content stands for, wherever it is written.
    pub fn handle(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.snapshot_handle.as_deref())
            .or(self.spec.source.snapshot_handle.as_deref())
    }
}

#[derive(CustomResource, Debug, Clone, Serialize, Deserialize)]
#[kube(
    group = "snapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeSnapshot",
    namespaced,
    status = "VolumeSnapshotStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    pub source: VolumeSnapshotSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_content_name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_snapshot_content_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SnapshotError>,
}

#[derive(CustomResource, Debug, Clone, Serialize, Deserialize)]
#[kube(
    group = "groupsnapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeGroupSnapshotContent",
    status = "VolumeGroupSnapshotContentStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotContentSpec {
    pub driver: String,
    pub deletion_policy: String,
    pub source: GroupContentSource,
    pub volume_group_snapshot_ref: ObjectReference,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupContentSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_handles: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_snapshot_handles: Option<GroupSnapshotHandles>,
}

/// A pre-provisioned group: its id and its members' ids.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupSnapshotHandles {
    pub volume_group_snapshot_handle: String,
    pub volume_snapshot_handles: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotContentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SnapshotError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_info_list: Option<Vec<VolumeSnapshotInfo>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
}

impl VolumeGroupSnapshotContent {
    /// The group's CSI id, wherever it is written.
    pub fn group_handle(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.volume_group_snapshot_handle.as_deref())
            .or(self
                .spec
                .source
                .group_snapshot_handles
                .as_ref()
                .map(|h| h.volume_group_snapshot_handle.as_str()))
    }

    /// The members' CSI snapshot ids, from the status and a pre-provisioned
    /// source.
    pub fn member_handles(&self) -> impl Iterator<Item = &str> {
        let listed = self
            .status
            .iter()
            .flat_map(|s| s.volume_snapshot_info_list.iter().flatten())
            .filter_map(|i| i.snapshot_handle.as_deref());
        let given = self
            .spec
            .source
            .group_snapshot_handles
            .iter()
            .flat_map(|h| h.volume_snapshot_handles.iter().map(String::as_str));
        listed.chain(given)
    }
}

/// The snapshot-controller's marks of a content whose (group) snapshot is
/// being deleted: csi-snapshotter deletes the snapshot on the node when it
/// sees them, before the content object goes.
const BEING_DELETED: [&str; 2] = [
    "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted",
    "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-deleted",
];

/// Whether a content is on its way out: deleted, or marked so by the
/// snapshot-controller. Its node may already have forgotten the snapshot,
/// which is then the delete, not a loss.
pub fn being_deleted(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
        || meta
            .annotations
            .as_ref()
            .is_some_and(|a| BEING_DELETED.iter().any(|k| a.contains_key(*k)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::being_deleted;

    #[test]
    fn a_content_is_being_deleted_when_deleted_or_marked_by_the_snapshot_controller() {
        let annotated = |k: &str| ObjectMeta {
            annotations: Some(BTreeMap::from([(k.to_owned(), "yes".to_owned())])),
            ..Default::default()
        };
        assert!(!being_deleted(&ObjectMeta::default()));
        assert!(!being_deleted(&annotated(
            "snapshot.storage.kubernetes.io/deletion-secret-name"
        )));
        assert!(being_deleted(&annotated(
            "snapshot.storage.kubernetes.io/volumesnapshot-being-deleted"
        )));
        assert!(being_deleted(&annotated(
            "groupsnapshot.storage.kubernetes.io/volumegroupsnapshot-being-deleted"
        )));
        assert!(being_deleted(&ObjectMeta {
            deletion_timestamp: Some(Time(Default::default())),
            ..Default::default()
        }));
    }
}
