//! The `x-blksnap-lost` response metadata: why a snapshot the node API
//! returns is not ready (the CSI Snapshot message has no field for it).
//!
//! One entry per lost snapshot, the value `<snapshot id> <reason>`; the
//! reason is one word such as `overflow` or `kernel-forgot`.

/// The metadata key.
pub const LOST_METADATA: &str = "x-blksnap-lost";

/// The value of one entry.
pub fn lost_value(snapshot_id: &str, reason: &str) -> String {
    format!("{snapshot_id} {reason}")
}

/// The snapshot id and reason of one entry; `None` for a value this
/// contract does not write.
pub fn parse_lost_value(value: &str) -> Option<(&str, &str)> {
    let (id, reason) = value.split_once(' ')?;
    (!id.is_empty() && !reason.is_empty()).then_some((id, reason))
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
    fn values_round_trip() {
        let v = lost_value("s1:a:AAAA:n", "overflow");
        assert_eq!(v, "s1:a:AAAA:n overflow");
        assert_eq!(parse_lost_value(&v), Some(("s1:a:AAAA:n", "overflow")));
        for bad in ["", "s1:a:AAAA:n", " overflow", "s1:a:AAAA:n "] {
            assert_eq!(parse_lost_value(bad), None, "{bad:?}");
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
