//! Conversions between the plugin's records and the CSI messages that
//! more than one service speaks: volume capabilities, topology, snapshots
//! and the metadata that tells why a snapshot is lost (its format is the
//! contract's, [`blksnap_node_api::lost`]).

use std::collections::HashMap;

use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::AccessType;
use csi_proto::csi::v1 as csi;
use tonic::Response;

use crate::plugin::Plugin;
use crate::state::SnapshotRecord;
use crate::{Error, Result};
use blksnap_node_api::ids::{GroupSnapshotId, VolumeId};
use blksnap_node_api::lost::{lost_value, LOST_METADATA};
use blksnap_node_api::TOPOLOGY_KEY;

/// File systems the node formats.
pub const FS_TYPES: [&str; 2] = ["ext4", "xfs"];

/// How a volume is consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Block,
    Mount { fs_type: String, flags: Vec<String> },
}

/// Checks one volume capability: block or mount (ext4, xfs), single-node
/// access modes only (the volumes are node-local).
pub fn access_of(cap: &csi::VolumeCapability) -> Result<Access> {
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| m.mode())
        .ok_or(Error::Missing("volume_capability.access_mode"))?;
    match mode {
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => {}
        other => {
            return Err(Error::invalid(
                "access_mode",
                format!(
                    "{} is not offered: volumes are node-local",
                    other.as_str_name()
                ),
            ))
        }
    }
    match &cap.access_type {
        Some(AccessType::Block(_)) => Ok(Access::Block),
        Some(AccessType::Mount(m)) => {
            let fs_type = if m.fs_type.is_empty() {
                FS_TYPES[0].to_owned()
            } else {
                m.fs_type.clone()
            };
            if !FS_TYPES.contains(&fs_type.as_str()) {
                return Err(Error::invalid(
                    "fs_type",
                    format!("{fs_type:?} is not offered (ext4, xfs)"),
                ));
            }
            Ok(Access::Mount {
                fs_type,
                flags: m.mount_flags.clone(),
            })
        }
        None => Err(Error::Missing("volume_capability.access_type")),
    }
}

/// The topology of this node's volumes.
pub fn topology(node: &str) -> csi::Topology {
    csi::Topology {
        segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), node.to_owned())]),
    }
}

pub fn timestamp(secs: i64, nanos: i32) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos,
    }
}

/// The CSI view of a snapshot record.
pub fn csi_snapshot(plugin: &Plugin, rec: &SnapshotRecord) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: i64::try_from(rec.capacity).unwrap_or(i64::MAX),
        snapshot_id: plugin.snapshot_id(rec).to_string(),
        source_volume_id: VolumeId {
            local: rec.volume.clone(),
            node: plugin.settings.node_id.clone(),
        }
        .to_string(),
        creation_time: Some(timestamp(rec.created_secs, rec.created_nanos)),
        ready_to_use: rec.lost.is_none(),
        group_snapshot_id: rec
            .group
            .map(|kernel| {
                GroupSnapshotId {
                    kernel,
                    node: plugin.settings.node_id.clone(),
                }
                .to_string()
            })
            .unwrap_or_default(),
    }
}

/// Adds a [`LOST_METADATA`] entry per lost snapshot.
pub fn annotate_lost<T>(plugin: &Plugin, response: &mut Response<T>, recs: &[SnapshotRecord]) {
    for rec in recs {
        if let Some(lost) = &rec.lost {
            let value = lost_value(&plugin.snapshot_id(rec).to_string(), lost.reason.as_str());
            if let Ok(v) = value.parse() {
                response.metadata_mut().append(LOST_METADATA, v);
            }
        }
    }
}
