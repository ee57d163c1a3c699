//! Prometheus metrics of the reconciler, registered once into the
//! controller's registry. Labels come from fixed sets only (the kind of
//! object, the error class, the loss reason), never from object names.

use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::Error;
use blksnap_node_api::lost::LostReason;

/// What a reconcile was about.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Kind {
    Content,
    GroupContent,
}

/// Why a reconcile failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ErrorClass {
    /// The Kubernetes API refused or failed a call.
    Api,
    /// The node was not reachable.
    NodeUnavailable,
    /// The node answered with an error.
    Node,
}

impl ErrorClass {
    pub fn of(e: &Error) -> ErrorClass {
        use crate::reconciler::NodeError;
        match e {
            Error::Kube(_) => ErrorClass::Api,
            Error::NodeCall(NodeError::Unavailable { .. }) => ErrorClass::NodeUnavailable,
            Error::NodeCall(NodeError::Failed { .. }) => ErrorClass::Node,
            // The reconciler makes no other errors; the router's land here
            // should they ever reach it.
            _ => ErrorClass::Node,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: Kind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: Kind,
    pub error: ErrorClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    pub reason: &'static str,
}

fn reconcile_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The reconciler's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    pub errors: Family<ErrorLabels, Counter>,
    pub lost: Family<LostLabels, Counter>,
    pub orphans_deleted: Counter,
    pub leader: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_duration: Family::new_with_constructor(
                reconcile_histogram as fn() -> Histogram,
            ),
            errors: Family::default(),
            lost: Family::default(),
            orphans_deleted: Counter::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("reconciler");
        r.register("reconciles", "Reconciles run", m.reconciles.clone());
        r.register(
            "reconcile_duration_seconds",
            "Time a reconcile took",
            m.reconcile_duration.clone(),
        );
        r.register("errors", "Reconciles that failed", m.errors.clone());
        r.register(
            "snapshots_lost",
            "Snapshots found lost on their node and marked not ready",
            m.lost.clone(),
        );
        r.register(
            "orphans_deleted",
            "Node snapshots deleted because no content referred to them",
            m.orphans_deleted.clone(),
        );
        r.register(
            "leader",
            "1 while this replica reconciles (holds the leader Lease, or runs without leader election)",
            m.leader.clone(),
        );
        m
    }

    /// Counts a reconcile of `kind`; its duration is recorded when the
    /// guard drops.
    pub fn reconcile(&self, kind: Kind) -> ReconcileTimer<'_> {
        self.reconciles.get_or_create(&KindLabels { kind }).inc();
        ReconcileTimer {
            metrics: self,
            kind,
            start: Instant::now(),
        }
    }

    pub fn error(&self, kind: Kind, e: &Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind,
                error: ErrorClass::of(e),
            })
            .inc();
    }

    pub fn lost(&self, reason: LostReason) {
        self.lost
            .get_or_create(&LostLabels {
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// Records a reconcile's duration on drop.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: Kind,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&KindLabels { kind: self.kind })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_fixed_labels() {
        let mut registry = Registry::with_prefix("blksnap_csi");
        let m = Metrics::register(&mut registry);
        drop(m.reconcile(Kind::Content));
        m.lost(LostReason::Overflow);
        m.error(
            Kind::GroupContent,
            &Error::NodeCall(crate::reconciler::NodeError::Unavailable {
                node: "n1".into(),
                reason: "down".into(),
            }),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for want in [
            "blksnap_csi_reconciler_reconciles_total{kind=\"Content\"} 1",
            "blksnap_csi_reconciler_snapshots_lost_total{reason=\"overflow\"} 1",
            "blksnap_csi_reconciler_errors_total{kind=\"GroupContent\",error=\"NodeUnavailable\"} 1",
            "blksnap_csi_reconciler_reconcile_duration_seconds_count{kind=\"Content\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        assert!(!text.contains("n1"), "no node name in a label");
    }
}
