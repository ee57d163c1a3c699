//! The reconciler: keeps this driver's VolumeSnapshotContents and
//! VolumeGroupSnapshotContents true to what the nodes still hold, raises
//! Events on the VolumeSnapshots of lost snapshots, and collects node
//! snapshots no content refers to. Run it under [`leader::lead`] so that
//! of several replicas one acts.

mod content;
mod group_content;
pub mod leader;
pub mod lost;
mod metrics;
mod node_snapshots;
mod orphans;
pub mod resources;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

pub use metrics::{Kind, Metrics};
pub use node_snapshots::{NodeError, NodeSnapshot, NodeSnapshots, SnapshotState};

use crate::{Error, Result};

/// What the reconciler is told.
#[derive(Clone, Debug)]
pub struct Config {
    /// The CSI driver name: contents of other drivers are left alone.
    pub driver: String,
    /// Names this replica in Events (the pod name).
    pub identity: String,
    /// How often a ready snapshot is checked with its node.
    pub check_interval: Duration,
    /// How long a node snapshot must be unreferenced, and old, before it
    /// is deleted (see [`orphans`]).
    pub orphan_grace: Duration,
    /// How often the nodes are swept for orphans.
    pub orphan_interval: Duration,
    /// First retry after a failed reconcile; doubles per failure.
    pub backoff_min: Duration,
    /// Longest wait between retries.
    pub backoff_max: Duration,
}

impl Config {
    pub fn new(driver: &str, identity: &str) -> Config {
        Config {
            driver: driver.into(),
            identity: identity.into(),
            check_interval: Duration::from_secs(60),
            orphan_grace: Duration::from_secs(600),
            orphan_interval: Duration::from_secs(60),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// What every reconcile sees.
pub struct Context<N> {
    pub client: Client,
    pub nodes: N,
    pub config: Config,
    pub metrics: Metrics,
    recorder: Recorder,
    /// Consecutive failures per object, for the backoff; cleared by a
    /// success.
    failures: Mutex<HashMap<(Kind, String), u32>>,
}

impl<N: NodeSnapshots> Context<N> {
    pub fn new(client: Client, nodes: N, config: Config, metrics: Metrics) -> Context<N> {
        let reporter = Reporter {
            controller: "blksnap-csi-reconciler".into(),
            instance: Some(config.identity.clone()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            nodes,
            config,
            metrics,
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(Kind, String), u32>> {
        // A panic while holding it leaves only counters behind.
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The wait before retrying `name` after its latest failure.
    fn backoff(&self, kind: Kind, name: String) -> Duration {
        let mut failures = self.failures();
        let n = failures.entry((kind, name)).or_insert(0);
        *n = n.saturating_add(1);
        backoff_after(*n, self.config.backoff_min, self.config.backoff_max)
    }

    fn succeeded(&self, kind: Kind, name: &str) {
        self.failures().remove(&(kind, name.to_owned()));
    }
}

/// Runs the two controllers and the orphan collector until cancelled (drop
/// the future) or a watch fails for good.
pub async fn run<N: NodeSnapshots>(ctx: Arc<Context<N>>) -> Result<()> {
    tokio::select! {
        () = control(ctx.clone(), Kind::Content, content::reconcile::<N>) => {}
        () = control(ctx.clone(), Kind::GroupContent, group_content::reconcile::<N>) => {}
        () = orphans::run(ctx.clone()) => {}
    }
    Ok(())
}

/// One controller over every object of `K`, with the per-object backoff.
async fn control<K, N, F, Fut>(ctx: Arc<Context<N>>, kind: Kind, reconcile: F)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    N: NodeSnapshots,
    F: Fn(Arc<K>, Arc<Context<N>>) -> Fut,
    Fut: Future<Output = Result<Action>> + Send + 'static,
{
    Controller::new(
        Api::<K>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .run(
        |obj, ctx: Arc<Context<N>>| {
            let name = obj.name_any();
            let pass = reconcile(obj, ctx.clone());
            async move {
                let r = pass.await;
                if r.is_ok() {
                    ctx.succeeded(kind, &name);
                }
                r
            }
        },
        move |obj, e, ctx| error_policy(kind, obj.name_any(), e, &ctx),
        ctx.clone(),
    )
    .for_each(|r| async move { log(r.map(|(o, a)| (o.name, a))) })
    .await
}

/// `min` doubled per failure after the first, at most `max`.
fn backoff_after(failures: u32, min: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    min.saturating_mul(factor).min(max)
}

fn error_policy<N: NodeSnapshots>(kind: Kind, name: String, e: &Error, ctx: &Context<N>) -> Action {
    ctx.metrics.error(kind, e);
    let wait = ctx.backoff(kind, name.clone());
    warn!(?kind, object = name, error = %e, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

fn log<E: std::fmt::Display>(r: Result<(String, Action), E>) {
    match r {
        Ok((name, action)) => debug!(object = name, ?action, "reconciled"),
        // Reconcile errors are logged by the error policy; what is left is
        // the controller's own (watch, queue).
        Err(e) => debug!(error = %e, "controller"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_failure_up_to_the_maximum() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(10));
        let waits: Vec<u64> = (1..=6)
            .map(|n| backoff_after(n, min, max).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff_after(40, min, max), max, "no overflow");
    }
}
