//! What the controller reads from the node plugin's ids and metadata.
//!
//! REPLACE with the contract crate (`node-api`) once it lands: it owns the
//! id formats (`v1:<local>:<node>`, `s1:<local>:<b64>:<node>`,
//! `g1:<b64>:<node>`) and the `x-blksnap-lost` reasons. Until then this is
//! the one place the reconciler parses them, and it parses only what it
//! needs: the node that owns an id, and why a snapshot was lost.

/// The node that holds the object named by a snapshot, group snapshot or
/// volume id of this driver; `None` for anything else.
pub fn node_of(id: &str) -> Option<&str> {
    let fields = match id.split_once(':')? {
        ("s1", _) => 4,
        ("g1" | "v1", _) => 3,
        _ => return None,
    };
    let parts: Vec<&str> = id.splitn(fields, ':').collect();
    let node = *parts.last()?;
    let ok = parts.len() == fields
        && parts.iter().all(|p| !p.is_empty())
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    ok.then_some(node)
}

/// Why a node says a snapshot can no longer be served: the reasons the node
/// plugin sends in `x-blksnap-lost`, plus the node not knowing the snapshot
/// at all. A fixed set, so it can label metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LostReason {
    /// The kernel no longer holds it: the node rebooted or the module was
    /// reloaded.
    KernelForgot,
    /// The difference storage overflowed.
    Overflow,
    /// Copy-on-write failed with an I/O error.
    IoError,
    /// The node has no record of it (its state was lost or wiped).
    Gone,
    /// A reason this controller does not know (a newer node plugin).
    Other,
}

impl LostReason {
    /// Parses the reason word of an `x-blksnap-lost` value.
    pub fn parse(word: &str) -> LostReason {
        match word {
            "kernel-forgot" => LostReason::KernelForgot,
            "overflow" => LostReason::Overflow,
            "io-error" => LostReason::IoError,
            _ => LostReason::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::KernelForgot => "kernel-forgot",
            LostReason::Overflow => "overflow",
            LostReason::IoError => "io-error",
            LostReason::Gone => "gone",
            LostReason::Other => "other",
        }
    }

    /// What a user reads in the VolumeSnapshot's status.
    pub fn explain(self) -> &'static str {
        match self {
            LostReason::KernelForgot => {
                "the node no longer holds the kernel snapshot (the node rebooted or blksnap.ko was reloaded)"
            }
            LostReason::Overflow => "the snapshot's difference storage overflowed",
            LostReason::IoError => "copy-on-write failed with an I/O error",
            LostReason::Gone => "the node has no record of the snapshot",
            LostReason::Other => "the node reports it lost",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_read_from_every_id_kind() {
        for (id, node) in [
            (
                "s1:vol-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA:node-a",
                Some("node-a"),
            ),
            ("g1:AAAAAAAAAAAAAAAAAAAAAA:n1.example", Some("n1.example")),
            ("v1:vol-1:worker-3", Some("worker-3")),
            ("s1:vol-1:node-a", None),
            ("g1::node-a", None),
            ("v1:vol-1:Node_A", None),
            ("x1:vol:node", None),
            ("", None),
            ("s1:a:b:c:d", None),
        ] {
            assert_eq!(node_of(id), node, "{id}");
        }
    }

    #[test]
    fn reasons_round_trip_and_unknown_ones_are_other() {
        for r in [
            LostReason::KernelForgot,
            LostReason::Overflow,
            LostReason::IoError,
        ] {
            assert_eq!(LostReason::parse(r.as_str()), r);
        }
        assert_eq!(LostReason::parse("meteor"), LostReason::Other);
    }
}
