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
}
