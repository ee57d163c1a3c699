//! The node side of the host tests: an in-process implementation of
//! [`NodeSnapshots`] whose snapshots the test sets. The real node plugin
//! needs blksnap.ko, which loads only in the VM harness; the router's
//! implementation over the node API is tested there. Everything on the
//! Kubernetes side of these tests is real.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use blksnap_csi_driver::ids::{self, LostReason};
use blksnap_csi_driver::reconciler::{NodeError, NodeSnapshot, NodeSnapshots, SnapshotState};
use tokio::time::Instant;

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
        // The payload's form does not matter to the controller: it reads
        // only the node.
        let id = format!("s1:{volume}:{local}:{node}");
        let snap = NodeSnapshot {
            id: id.clone(),
            source_volume: format!("v1:{volume}:{node}"),
            group: group.map(|g| format!("g1:{g}:{node}")),
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
        let node = ids::node_of(id).unwrap().to_owned();
        let mut st = self.state();
        let entry = st
            .held
            .get_mut(&node)
            .and_then(|m| m.get_mut(id))
            .expect("held");
        entry.1 = SnapshotState::Lost(reason);
    }

    pub fn holds(&self, id: &str) -> bool {
        let node = ids::node_of(id).unwrap();
        self.state()
            .held
            .get(node)
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
        let node = ids::node_of(id).ok_or_else(|| NodeError::Failed {
            node: "?".into(),
            message: format!("{id} is not an id"),
        })?;
        let st = self.state();
        let m = st.held.get(node).ok_or_else(|| NodeError::Unavailable {
            node: node.into(),
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
        let node = ids::node_of(id).unwrap().to_owned();
        let mut st = self.state();
        if let Some(m) = st.held.get_mut(&node) {
            // A group id deletes its members, as DeleteVolumeGroupSnapshot does.
            m.retain(|sid, e| sid != id && e.0.group.as_deref() != Some(id));
        }
        st.deleted.push((id.to_owned(), Instant::now()));
        Ok(())
    }
}
