//! How the node API is addressed and how both ends of its mutual TLS are
//! identified.
//!
//! One CA signs every certificate; the names in them decide who may talk
//! to whom:
//!
//! * node `N`'s node-API server certificate carries the DNS name
//!   `N.node.<driver name>` ([`node_server_name`]); the controller
//!   connects to node `N` with exactly that TLS server name, so another
//!   node's certificate (same CA) is refused by the handshake;
//! * the controller's client certificate carries the DNS name
//!   `controller.<driver name>` ([`controller_name`]); the node plugin
//!   serves a client only if its verified certificate is valid for that
//!   name, so one node's key cannot drive another node.

/// The port the node plugin serves its node API on unless told otherwise.
pub const NODE_API_PORT: u16 = 9820;

/// The DNS name in node `node`'s node-API server certificate, and the TLS
/// server name the controller asks for when it connects to that node.
pub fn node_server_name(node: &str, driver_name: &str) -> String {
    format!("{node}.node.{driver_name}")
}

/// The DNS name in the controller's client certificate.
pub fn controller_name(driver_name: &str) -> String {
    format!("controller.{driver_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules_the_chart_issues_certificates_by() {
        assert_eq!(
            node_server_name("worker-1", "blksnap.csi.io"),
            "worker-1.node.blksnap.csi.io"
        );
        assert_eq!(
            controller_name("blksnap.csi.io"),
            "controller.blksnap.csi.io"
        );
        // A node named "controller" cannot pass for the controller.
        assert_ne!(
            node_server_name("controller", "blksnap.csi.io"),
            controller_name("blksnap.csi.io")
        );
    }
}
