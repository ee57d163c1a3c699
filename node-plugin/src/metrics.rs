//! Prometheus metrics of the node plugin, served as text on `/metrics`.
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client:
//! typed metric families registered once in an explicit registry (no
//! global state to reset between tests), OpenMetrics text output, and no
//! dependencies beyond what the plugin already has.
//!
//! Labels come from fixed sets only, never from object names or ids: the
//! RPC method (one of the CSI methods, or `other`) and the status code
//! name. Difference storage is reported as node totals; a snapshot's own
//! limit is in its record, and its low-space and overflow events are logged
//! with its kernel id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::{Error, Result};

/// Labels of an RPC latency sample.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: &'static str,
    pub code: &'static str,
}

fn rpc_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The plugin's metrics, registered once.
pub struct Metrics {
    registry: Arc<Registry>,
    pub snapshots_held: Gauge,
    pub snapshots_lost: Gauge,
    pub storage_used: Gauge,
    pub storage_limit: Gauge,
    pub overflow_events: Counter,
    pub low_space_events: Counter,
    pub rpc_duration: Family<RpcLabels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("blksnap_csi");
        let m = Metrics {
            snapshots_held: Gauge::default(),
            snapshots_lost: Gauge::default(),
            storage_used: Gauge::default(),
            storage_limit: Gauge::default(),
            overflow_events: Counter::default(),
            low_space_events: Counter::default(),
            rpc_duration: Family::new_with_constructor(rpc_histogram as fn() -> Histogram),
            registry: Arc::default(),
        };
        registry.register(
            "snapshots_held",
            "Snapshots the kernel holds for this node's volumes",
            m.snapshots_held.clone(),
        );
        registry.register(
            "snapshots_lost",
            "Snapshots that can no longer be served (reboot, overflow), until deleted",
            m.snapshots_lost.clone(),
        );
        registry.register(
            "snapshot_storage_used_bytes",
            "Difference storage written, over the held snapshots this process took",
            m.storage_used.clone(),
        );
        registry.register(
            "snapshot_storage_limit_bytes",
            "Difference storage reserved (the limits), over the held snapshots this process took",
            m.storage_limit.clone(),
        );
        registry.register(
            "snapshot_overflow_events",
            "Snapshots the kernel reported corrupted (storage overflow or I/O error)",
            m.overflow_events.clone(),
        );
        registry.register(
            "snapshot_low_space_events",
            "Low difference storage space events",
            m.low_space_events.clone(),
        );
        registry.register(
            "rpc_duration_seconds",
            "CSI call latency by method and status code",
            m.rpc_duration.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        blksnap_daemon::metrics::encode(&self.registry)
    }

    /// Starts timing a call of `method`; the sample is recorded when the
    /// timer is dropped, with the code set by [`RpcTimer::code`] (or
    /// `Unknown` if the call never finished, e.g. the client went away).
    pub fn time(self: &Arc<Self>, method: &'static str) -> RpcTimer {
        RpcTimer {
            metrics: Arc::clone(self),
            method,
            code: "Unknown",
            start: Instant::now(),
        }
    }
}

/// Records one RPC's latency on drop.
#[derive(Debug)]
pub struct RpcTimer {
    metrics: Arc<Metrics>,
    method: &'static str,
    code: &'static str,
    start: Instant,
}

impl RpcTimer {
    /// Sets the status code the call ended with.
    pub fn code(&mut self, code: tonic::Code) {
        self.code = code_name(code);
    }

    /// Time since the call started.
    pub fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }
}

impl Drop for RpcTimer {
    fn drop(&mut self) {
        self.metrics
            .rpc_duration
            .get_or_create(&RpcLabels {
                method: self.method,
                code: self.code,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

pub use blksnap_daemon::metrics::code_name;

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io("bind", addr.to_string(), e))?;
    tracing::info!(%addr, "serving metrics");
    serve_on(listener, metrics).await
}

/// Serves `GET /metrics` on `listener`.
pub async fn serve_on(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "metrics".to_owned(), |a| a.to_string());
    blksnap_daemon::metrics::serve(listener, Arc::clone(&metrics.registry))
        .await
        .map_err(|e| Error::io("serve", addr, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_appear_in_the_text() {
        let m = Arc::new(Metrics::new());
        m.snapshots_held.set(2);
        m.overflow_events.inc();
        m.storage_used.set(4096);
        {
            let mut t = m.time("CreateSnapshot");
            t.code(tonic::Code::Aborted);
        }
        let text = m.encode();
        assert!(text.contains("blksnap_csi_snapshots_held 2"), "{text}");
        assert!(
            text.contains("blksnap_csi_snapshot_overflow_events_total 1"),
            "{text}"
        );
        assert!(
            text.contains("blksnap_csi_snapshot_storage_used_bytes 4096"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"blksnap_csi_rpc_duration_seconds_count{method="CreateSnapshot",code="Aborted"} 1"#
            ),
            "{text}"
        );
    }
}
