//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! replicas exactly one reconciles. kube-runtime 5 has no elector, so this
//! is the client-go protocol, small:
//!
//! - A candidate takes the Lease when it does not exist (create), names no
//!   holder, or names a holder that has not renewed it for the Lease's
//!   duration. "Not renewed" is judged by this process's monotonic clock
//!   from when it last saw the Lease change (its resourceVersion), never by
//!   comparing timestamps from another machine's clock.
//! - Every write carries the resourceVersion it read; the apiserver refuses
//!   a stale one (409), so of two candidates racing only one wins.
//! - The leader renews every `retry_period`, and stops its work if it has
//!   not renewed for `renew_deadline`, which is shorter than the Lease's
//!   duration: it has stopped before anyone else may take over.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::{sleep, timeout_at, Instant};
use tracing::{info, warn};

use crate::reconciler::Metrics;
use crate::Result;

/// Which Lease, who we are, and the timing (client-go's defaults).
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per replica (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// The Lease of `driver`'s reconciler (one per driver in a namespace).
pub fn lease_name(driver: &str) -> String {
    format!("{}-reconciler", driver.replace('.', "-"))
}

impl LeaseConfig {
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Runs `work` whenever this replica leads: waits for the Lease, runs one
/// `work()` while it is held, and drops (cancels) it when the Lease is lost,
/// then competes again. Returns when a `work()` returns or `stop`
/// resolves, after releasing the Lease if held, so that another replica
/// takes over at once.
pub async fn lead<F, Fut>(
    client: Client,
    config: LeaseConfig,
    metrics: Metrics,
    stop: impl Future<Output = ()>,
    mut work: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut lease = Elector::new(client, config);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = lease.acquire() => {}
            () = &mut stop => return Ok(()),
        }
        metrics.leader.set(1);
        info!(lease = %lease.config.name, identity = %lease.config.identity, "leading");
        let outcome = tokio::select! {
            r = work() => Some(r),
            () = &mut stop => Some(Ok(())),
            () = lease.keep() => None,
        };
        metrics.leader.set(0);
        match outcome {
            Some(r) => {
                lease.release().await;
                return r;
            }
            None => warn!(lease = %lease.config.name, "lost the lease; work stopped"),
        }
    }
}

struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The resourceVersion of the Lease as last seen held by another
    /// replica, and when it was first seen so.
    observed: Option<(String, Instant)>,
}

impl Elector {
    fn new(client: Client, config: LeaseConfig) -> Elector {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    /// Returns once this replica holds the Lease.
    async fn acquire(&mut self) {
        loop {
            // Bounded, so that a hung request cannot hold a candidate.
            let period = self.config.retry_period;
            match tokio::time::timeout(period, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => return,
                Ok(Ok(false)) | Err(_) => {}
                Ok(Err(e)) => warn!(error = %e, lease = %self.config.name, "taking the lease"),
            }
            sleep(self.config.retry_period).await;
        }
    }

    /// Renews until a renewal fails to land within `renew_deadline` of the
    /// last one, or another replica holds the Lease; then returns.
    async fn keep(&mut self) {
        let mut renewed = Instant::now();
        loop {
            let deadline = renewed + self.config.renew_deadline;
            let attempt = Instant::now() + self.config.retry_period;
            let period = self.config.retry_period;
            let result = timeout_at(deadline, async {
                sleep(period).await;
                tokio::time::timeout(period, self.try_acquire_or_renew()).await
            })
            .await;
            match result {
                Ok(Ok(Ok(true))) => renewed = attempt,
                Ok(Ok(Ok(false))) => return,
                Ok(Ok(Err(e))) => {
                    warn!(error = %e, lease = %self.config.name, "renewing the lease")
                }
                // A hung request: try again while the deadline allows.
                Ok(Err(_)) => warn!(lease = %self.config.name, "renewing the lease timed out"),
                Err(_) => return,
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        if holder != Some(self.config.identity.as_str()) {
            if holder.is_some() {
                let version = lease.metadata.resource_version.clone().unwrap_or_default();
                let since = match &self.observed {
                    Some((seen, at)) if *seen == version => *at,
                    _ => {
                        let at = Instant::now();
                        self.observed = Some((version, at));
                        at
                    }
                };
                let held_for = spec.lease_duration_seconds.unwrap_or(0).max(0);
                if since.elapsed() < Duration::from_secs(held_for as u64) {
                    return Ok(false);
                }
            }
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        conflict_is_false(
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Gives the Lease up if this replica still holds it: no holder and a
    /// duration of one second, as client-go does. A write that loses a
    /// race (a renewal that was in flight when the work stopped may land
    /// after the read) is tried again, within the retry period.
    async fn release(&mut self) {
        let released = async {
            loop {
                let mut lease = self.api.get(&self.config.name).await?;
                let spec = lease.spec.get_or_insert_with(Default::default);
                if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                    return Ok::<_, crate::Error>(false);
                }
                spec.holder_identity = None;
                spec.lease_duration_seconds = Some(1);
                spec.renew_time = Some(MicroTime(Timestamp::now()));
                let put = self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await;
                if conflict_is_false(put)? {
                    return Ok(true);
                }
            }
        };
        match tokio::time::timeout(self.config.retry_period, released).await {
            Ok(Ok(true)) => info!(lease = %self.config.name, "released the lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, lease = %self.config.name, "releasing the lease"),
            Err(_) => warn!(lease = %self.config.name, "releasing the lease timed out"),
        }
    }
}

/// A write that lost a race (409) is "not ours", not an error.
fn conflict_is_false<T>(r: kube::Result<T>) -> Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}
