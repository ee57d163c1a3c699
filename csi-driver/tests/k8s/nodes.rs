//! The node side of the host tests: an in-process implementation of
//! [`NodeSnapshots`] whose snapshots the test sets. The real node plugin
//! needs blksnap.ko, which loads only in the VM harness; the router's
//! implementation over the node API is tested there. Everything on the
//! Kubernetes side of these tests is real.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use blksnap_csi_driver::reconciler::{NodeError, NodeSnapshot, NodeSnapshots, SnapshotState};
use blksnap_node_api::ids::{node_of, GroupSnapshotId, SnapshotId, VolumeId};
use blksnap_node_api::lost::LostReason;
use tokio::time::Instant;
use uuid::Uuid;

/// A kernel snapshot id named by `name` (at most 16 bytes), so a test can
/// write the ids it expects.
fn named_uuid(name: &str) -> Uuid {
    let mut bytes = [0; 16];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    Uuid::from_bytes(bytes)
}

/// The id of group snapshot `group` on `node`, as [`Nodes::take`] gives
/// its members.
pub fn group_id(node: &str, group: &str) -> String {
    GroupSnapshotId {
        kernel: named_uuid(group),
        node: node.into(),
    }
    .to_string()
}

#[derive(Default)]
struct State {
    /// node -> snapshot id -> (listing, state)
    held: BTreeMap<String, BTreeMap<String, (NodeSnapshot, SnapshotState)>>,
    /// Ids deleted, with when.
    deleted: Vec<(String, Instant)>,
}

#[derive(Clone, Default)]
pub struct Nodes(Arc<Mutex<State>>);

impl Nodes {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// Puts snapshot `local` of volume `volume` on `node`, taken at
    /// `created` by the node's clock, optionally in group `group`; returns
    /// its id.
    pub fn take(
        &self,
        node: &str,
        volume: &str,
        local: &str,
        created: SystemTime,
        group: Option<&str>,
    ) -> String {
        let id = SnapshotId {
            volume: volume.into(),
            node: node.into(),
            kernel: named_uuid(local),
            generation: named_uuid(volume),
            number: 1,
        }
        .to_string();
        let snap = NodeSnapshot {
            id: id.clone(),
            source_volume: VolumeId {
                local: volume.into(),
                node: node.into(),
            }
            .to_string(),
            group: group.map(|g| group_id(node, g)),
            created,
        };
        self.state()
            .held
            .entry(node.into())
            .or_default()
            .insert(id.clone(), (snap, SnapshotState::Ready));
        id
    }

    pub fn lose(&self, id: &str, reason: LostReason) {
        let node = node_of(id).unwrap();
        let mut st = self.state();
        let entry = st
            .held
            .get_mut(&node)
            .and_then(|m| m.get_mut(id))
            .expect("held");
        entry.1 = SnapshotState::Lost(reason);
    }

    pub fn holds(&self, id: &str) -> bool {
        let node = node_of(id).unwrap();
        self.state()
            .held
            .get(&node)
            .is_some_and(|m| m.contains_key(id))
    }

    pub fn deleted(&self) -> Vec<(String, Instant)> {
        self.state().deleted.clone()
    }
}

impl NodeSnapshots for Nodes {
    fn nodes(&self) -> Vec<String> {
        self.state().held.keys().cloned().collect()
    }

    async fn snapshot(&self, id: &str) -> Result<SnapshotState, NodeError> {
        let node = node_of(id).ok_or_else(|| NodeError::Failed {
            node: "?".into(),
            message: format!("{id} is not an id"),
        })?;
        let st = self.state();
        let m = st.held.get(&node).ok_or_else(|| NodeError::Unavailable {
            node: node.clone(),
            reason: "not discovered".into(),
        })?;
        Ok(m.get(id)
            .map(|e| e.1)
            .unwrap_or(SnapshotState::Lost(LostReason::Gone)))
    }

    async fn list(&self, node: &str) -> Result<Vec<NodeSnapshot>, NodeError> {
        let st = self.state();
        Ok(st
            .held
            .get(node)
            .map(|m| m.values().map(|e| e.0.clone()).collect())
            .unwrap_or_default())
    }

    async fn delete(&self, id: &str) -> Result<(), NodeError> {
        let node = node_of(id).unwrap();
        let mut st = self.state();
        if let Some(m) = st.held.get_mut(&node) {
            // A group id deletes its members, as DeleteVolumeGroupSnapshot does.
            m.retain(|sid, e| sid != id && e.0.group.as_deref() != Some(id));
        }
        st.deleted.push((id.to_owned(), Instant::now()));
        Ok(())
    }
}
