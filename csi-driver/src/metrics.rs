//! The controller's Prometheus metrics: the calls it makes to each node's
//! API, and the reconciler's ([`crate::reconciler::Metrics`]), in one
//! registry served as text on `GET /metrics`.
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client,
//! as the node plugin is: typed families in an explicit registry (no global
//! state), OpenMetrics text. Labels come from fixed sets: the method (a
//! literal at each call site), the status code, and the node, which is
//! only ever a node the directory knows (a call for an unknown node never
//! reaches a channel and is not counted), so ids from requests cannot grow
//! the label set.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::{Error, Result};

/// A gRPC status code as a label value (`OK`, `NotFound`, ...), as the
/// node plugin labels its calls.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct CodeLabel(pub tonic::Code);

impl EncodeLabelValue for CodeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(blksnap_daemon::metrics::code_name(self.0))
    }
}

/// Labels of one call to a node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeCallLabels {
    pub node: String,
    pub method: &'static str,
    pub code: CodeLabel,
}

fn call_histogram() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// The calls to the nodes' APIs.
#[derive(Clone)]
pub struct NodeCallMetrics {
    /// Latency by node, method and outcome; its `_count` is the number of
    /// calls. For the two streaming methods the time is to the stream's
    /// start (the node's response headers), the outcome that of the start.
    pub duration: Family<NodeCallLabels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for NodeCallMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCallMetrics").finish_non_exhaustive()
    }
}

impl Default for NodeCallMetrics {
    fn default() -> Self {
        NodeCallMetrics {
            duration: Family::new_with_constructor(call_histogram as fn() -> Histogram),
        }
    }
}

impl NodeCallMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> NodeCallMetrics {
        let m = NodeCallMetrics::default();
        registry.register(
            "node_call_duration_seconds",
            "Calls to the nodes' APIs by node, method and status code",
            m.duration.clone(),
        );
        m
    }

    /// Records one call to `node`.
    pub fn record(&self, node: &str, method: &'static str, code: tonic::Code, took: Duration) {
        self.duration
            .get_or_create(&NodeCallLabels {
                node: node.to_owned(),
                method,
                code: CodeLabel(code),
            })
            .observe(took.as_secs_f64());
    }
}

/// The registry every metric of the controller is registered in.
pub fn registry() -> Registry {
    Registry::with_prefix("blksnap_csi_controller")
}

pub use blksnap_daemon::metrics::encode;

/// Binds the metrics address, so that a wrong one fails at start.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Io {
            what: format!("bind the metrics address {addr}"),
            source,
        })
}

/// Serves `GET /metrics` on `listener`.
pub async fn serve_on(listener: tokio::net::TcpListener, registry: Arc<Registry>) -> Result<()> {
    blksnap_daemon::metrics::serve(listener, registry)
        .await
        .map_err(|source| Error::Io {
            what: "serve metrics".into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_calls_and_the_reconciler_are_encoded_from_one_registry() {
        let mut registry = registry();
        let calls = NodeCallMetrics::register(&mut registry);
        let reconciler = crate::reconciler::Metrics::register(&mut registry);
        calls.record(
            "worker-1",
            "CreateSnapshot",
            tonic::Code::Ok,
            Duration::from_millis(3),
        );
        calls.record(
            "worker-1",
            "CreateSnapshot",
            tonic::Code::Ok,
            Duration::from_millis(5),
        );
        calls.record(
            "worker-2",
            "GetSnapshot",
            tonic::Code::NotFound,
            Duration::from_micros(200),
        );
        reconciler.leader.set(1);

        // Served by blksnap_daemon::metrics::serve, tested there.
        let text = encode(&registry);
        for want in [
            "blksnap_csi_controller_node_call_duration_seconds_count{node=\"worker-1\",method=\"CreateSnapshot\",code=\"OK\"} 2",
            "blksnap_csi_controller_node_call_duration_seconds_count{node=\"worker-2\",method=\"GetSnapshot\",code=\"NotFound\"} 1",
            "blksnap_csi_controller_reconciler_leader 1",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }
}
