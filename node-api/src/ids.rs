//! The ids the node plugin hands out, and their text form.
//!
//! Every id names its node so that the controller can route a call to the
//! node that holds the object. A snapshot id also carries the kernel
//! snapshot's id and the change-map coordinates at take time (generation
//! UUID and snapshot number): with them a delta between two snapshots of a
//! volume is answered from the target's frozen map alone, after the base
//! snapshot was deleted, and refused when the generations differ.
//!
//! ```text
//! volume           v1:<local>:<node>
//! snapshot         s1:<local>:<base64url(kernel id | generation | number)>:<node>
//! group snapshot   g1:<base64url(kernel id)>:<node>
//! ```
//!
//! `<local>` is the volume's name on the node (`[a-z0-9-]`, at most
//! [`MAX_LOCAL_LEN`]), `<node>` a Kubernetes node name (`[a-z0-9.-]`, at
//! most [`MAX_NODE_LEN`]). With those bounds every id fits the 128 bytes
//! the CSI spec allows a string field.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use uuid::Uuid;

use crate::IdError;

/// Longest volume name on a node.
pub const MAX_LOCAL_LEN: usize = 16;
/// Longest node name: the DNS label length, and what keeps a snapshot id
/// within 128 bytes.
pub const MAX_NODE_LEN: usize = 63;
/// The CSI spec's limit for a string field.
pub const MAX_ID_LEN: usize = 128;

const SNAPSHOT_PAYLOAD: usize = 16 + 16 + 1;

/// Checks a node name for use in ids.
pub fn check_node(node: &str) -> Result<(), IdError> {
    let ok = !node.is_empty()
        && node.len() <= MAX_NODE_LEN
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(IdError::NodeName(node.to_owned()))
    }
}

/// Whether `local` can name a volume on a node.
pub fn is_local_name(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= MAX_LOCAL_LEN
        && local
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A volume: its name on the node, and the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeId {
    pub local: String,
    pub node: String,
}

/// A snapshot of one volume.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotId {
    /// The snapshotted volume's name on the node.
    pub volume: String,
    pub node: String,
    /// The kernel snapshot (shared by the members of a group snapshot).
    pub kernel: Uuid,
    /// Change-map generation of the volume at take.
    pub generation: Uuid,
    /// Number of this snapshot in that generation.
    pub number: u8,
}

/// A group snapshot: one kernel snapshot across several volumes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupSnapshotId {
    pub kernel: Uuid,
    pub node: String,
}

impl SnapshotId {
    /// The id of the volume this snapshot was taken of.
    pub fn volume_id(&self) -> VolumeId {
        VolumeId {
            local: self.volume.clone(),
            node: self.node.clone(),
        }
    }
}

/// The node that holds the object a volume, snapshot or group snapshot id
/// names; `None` for a text that is no id of this driver.
pub fn node_of(id: &str) -> Option<String> {
    id.parse::<VolumeId>()
        .map(|v| v.node)
        .or_else(|_| id.parse::<SnapshotId>().map(|s| s.node))
        .or_else(|_| id.parse::<GroupSnapshotId>().map(|g| g.node))
        .ok()
}

fn bad(field: &'static str, s: &str) -> IdError {
    IdError::Malformed {
        field,
        text: s.to_owned(),
    }
}

fn node_ok(node: &str) -> bool {
    check_node(node).is_ok()
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v1:{}:{}", self.local, self.node)
    }
}

impl FromStr for VolumeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let mut parts = s.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("v1"), Some(local), Some(node)) if is_local_name(local) && node_ok(node) => {
                Ok(VolumeId {
                    local: local.to_owned(),
                    node: node.to_owned(),
                })
            }
            _ => Err(bad("volume_id", s)),
        }
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut payload = [0u8; SNAPSHOT_PAYLOAD];
        payload[..16].copy_from_slice(self.kernel.as_bytes());
        payload[16..32].copy_from_slice(self.generation.as_bytes());
        payload[32] = self.number;
        write!(
            f,
            "s1:{}:{}:{}",
            self.volume,
            URL_SAFE_NO_PAD.encode(payload),
            self.node
        )
    }
}

impl FromStr for SnapshotId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let mut parts = s.splitn(4, ':');
        let (Some("s1"), Some(volume), Some(payload), Some(node)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("snapshot_id", s));
        };
        if !is_local_name(volume) || !node_ok(node) {
            return Err(bad("snapshot_id", s));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| bad("snapshot_id", s))?;
        let bytes: [u8; SNAPSHOT_PAYLOAD] = bytes.try_into().map_err(|_| bad("snapshot_id", s))?;
        let uuid_at = |o: usize| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&bytes[o..o + 16]);
            Uuid::from_bytes(b)
        };
        Ok(SnapshotId {
            volume: volume.to_owned(),
            node: node.to_owned(),
            kernel: uuid_at(0),
            generation: uuid_at(16),
            number: bytes[32],
        })
    }
}

impl fmt::Display for GroupSnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "g1:{}:{}",
            URL_SAFE_NO_PAD.encode(self.kernel.as_bytes()),
            self.node
        )
    }
}

impl FromStr for GroupSnapshotId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let mut parts = s.splitn(3, ':');
        let (Some("g1"), Some(payload), Some(node)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("group_snapshot_id", s));
        };
        if !node_ok(node) {
            return Err(bad("group_snapshot_id", s));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| bad("group_snapshot_id", s))?;
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| bad("group_snapshot_id", s))?;
        Ok(GroupSnapshotId {
            kernel: Uuid::from_bytes(bytes),
            node: node.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9.-]{0,62}"
    }

    fn local() -> impl Strategy<Value = String> {
        "[a-z0-9-]{1,16}"
    }

    fn uuid() -> impl Strategy<Value = Uuid> {
        any::<[u8; 16]>().prop_map(Uuid::from_bytes)
    }

    #[test]
    fn the_node_is_read_from_every_id_kind() {
        let kernel = Uuid::from_bytes([7; 16]);
        let snapshot = SnapshotId {
            volume: "vol-1".into(),
            node: "node-a".into(),
            kernel,
            generation: Uuid::from_bytes([9; 16]),
            number: 3,
        };
        let group = GroupSnapshotId {
            kernel,
            node: "n1.example".into(),
        };
        let volume = VolumeId {
            local: "vol-1".into(),
            node: "worker-3".into(),
        };
        assert_eq!(node_of(&snapshot.to_string()).as_deref(), Some("node-a"));
        assert_eq!(node_of(&group.to_string()).as_deref(), Some("n1.example"));
        assert_eq!(node_of(&volume.to_string()).as_deref(), Some("worker-3"));
        for bad in [
            "",
            "s1:vol-1:node-a",
            "g1::node-a",
            "v1:vol-1:Node_A",
            "x1:vol:node",
        ] {
            assert_eq!(node_of(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn volume_ids_round_trip(local in local(), node in node()) {
            let id = VolumeId { local, node };
            let text = id.to_string();
            prop_assert!(text.len() <= MAX_ID_LEN);
            prop_assert_eq!(text.parse::<VolumeId>().expect("parses"), id);
        }

        #[test]
        fn snapshot_ids_round_trip(
            volume in local(),
            node in node(),
            kernel in uuid(),
            generation in uuid(),
            number in any::<u8>(),
        ) {
            let id = SnapshotId { volume, node, kernel, generation, number };
            let text = id.to_string();
            prop_assert!(text.len() <= MAX_ID_LEN, "{} is {} bytes", text, text.len());
            prop_assert!(text.is_ascii());
            prop_assert_eq!(text.parse::<SnapshotId>().expect("parses"), id);
            // An id of one kind is never taken for another.
            prop_assert!(text.parse::<VolumeId>().is_err());
            prop_assert!(text.parse::<GroupSnapshotId>().is_err());
        }

        #[test]
        fn group_ids_round_trip(kernel in uuid(), node in node()) {
            let id = GroupSnapshotId { kernel, node };
            let text = id.to_string();
            prop_assert!(text.len() <= MAX_ID_LEN);
            prop_assert_eq!(text.parse::<GroupSnapshotId>().expect("parses"), id);
            prop_assert!(text.parse::<SnapshotId>().is_err());
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,160}") {
            let _ = s.parse::<VolumeId>();
            let _ = s.parse::<SnapshotId>();
            let _ = s.parse::<GroupSnapshotId>();
        }
    }

    #[test]
    fn malformed_ids_are_invalid_arguments() {
        for s in [
            "",
            "v1",
            "v1::node",
            "v1:UPPER:node",
            "v1:a:",
            "v2:a:node",
            "v1:aaaaaaaaaaaaaaaaa:node",
            "s1:a:!!!:node",
            "s1:a:AAAA:node",
            "g1:AAAA:node",
        ] {
            assert!(
                matches!(s.parse::<VolumeId>(), Err(IdError::Malformed { .. })),
                "{s}"
            );
            assert!(s.parse::<SnapshotId>().is_err(), "{s}");
            assert!(s.parse::<GroupSnapshotId>().is_err(), "{s}");
        }
    }

    #[test]
    fn node_names_are_checked() {
        assert!(check_node("worker-1.example").is_ok());
        assert!(check_node("").is_err());
        assert!(check_node("Node").is_err());
        assert!(check_node("a:b").is_err());
        assert!(check_node(&"a".repeat(64)).is_err());
    }
}
