//! blksnap-csi-driver: parses flags, starts logging, finds the nodes
//! (the `--node` map, or the node plugin's pods in Kubernetes), starts the
//! reconciler (in Kubernetes; under the leader Lease with
//! `--leader-election`) and the metrics endpoint, and serves the CSI
//! socket until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use blksnap_csi_driver::config::Config;
use blksnap_csi_driver::controller::ControllerService;
use blksnap_csi_driver::discovery::{self, DiscoveredNodes, DiscoveryConfig};
use blksnap_csi_driver::group_controller::GroupControllerService;
use blksnap_csi_driver::identity::IdentityService;
use blksnap_csi_driver::metrics::{self, NodeCallMetrics};
use blksnap_csi_driver::node_snapshots::RoutedSnapshots;
use blksnap_csi_driver::nodes::{NodeDirectory, NodeTls, Nodes, StaticNodes};
use blksnap_csi_driver::reconciler::leader::{self, LeaseConfig};
use blksnap_csi_driver::reconciler::{self, Context};
use blksnap_csi_driver::server::{self, Services};
use blksnap_csi_driver::snapshot_metadata::SnapshotMetadataService;
use blksnap_csi_driver::{Error, Result};
use clap::Parser;
use tokio::sync::watch;
use tokio::task::JoinHandle;

fn main() -> ExitCode {
    let config = Config::parse();
    blksnap_daemon::init_logging(config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blksnap-csi-driver: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<()> {
    let static_nodes = StaticNodes::parse(&config.nodes, config.node_api_port)?;
    if config.leader_election && !config.nodes.is_empty() {
        return Err(Error::Config(
            "--leader-election needs the node map from Kubernetes, not --node".into(),
        ));
    }
    let tls = NodeTls::from_files(
        &config.tls_cert,
        &config.tls_key,
        &config.tls_ca,
        &config.driver_name,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "start the tokio runtime".into(),
            source,
        })?;
    runtime.block_on(serve(config, static_nodes, tls))
}

async fn serve(config: Config, static_nodes: StaticNodes, tls: NodeTls) -> Result<()> {
    let mut registry = metrics::registry();
    let node_calls = NodeCallMetrics::register(&mut registry);
    let reconciler_metrics = reconciler::Metrics::register(&mut registry);
    let (directory, client): (Arc<dyn NodeDirectory>, _) = if config.nodes.is_empty() {
        // Reads the in-cluster configuration only: the watch connects in
        // the background, so the socket answers at once.
        let client = kube::Client::try_default().await?;
        let found = DiscoveredNodes::default();
        let watch = DiscoveryConfig {
            namespace: config.namespace.clone(),
            selector: config.node_selector.clone(),
            port: config.node_api_port,
        };
        tracing::info!(namespace = %watch.namespace, selector = %watch.selector, "discovering nodes");
        tokio::spawn(discovery::run(client.clone(), watch, found.clone()));
        (Arc::new(found), Some(client))
    } else if config.reconcile {
        (
            Arc::new(static_nodes),
            Some(kube::Client::try_default().await?),
        )
    } else {
        (Arc::new(static_nodes), None)
    };
    let nodes = Arc::new(Nodes::new(directory, tls, node_calls));
    if let Some(addr) = config.metrics_address {
        let listener = metrics::bind(addr).await?;
        tracing::info!(%addr, "serving metrics");
        let registry = Arc::new(registry);
        tokio::spawn(async move {
            if let Err(e) = metrics::serve_on(listener, registry).await {
                tracing::error!(error = %e, "metrics endpoint");
            }
        });
    }

    let (stop, stopping) = watch::channel(false);
    let mut reconciling = client.map(|client| {
        reconcile(
            &config,
            client,
            Arc::clone(&nodes),
            reconciler_metrics,
            stopping.clone(),
        )
    });

    let services = Services {
        identity: IdentityService::new(&config.driver_name),
        controller: ControllerService::new(Arc::clone(&nodes)),
        group_controller: GroupControllerService::new(Arc::clone(&nodes)),
        snapshot_metadata: SnapshotMetadataService::new(nodes),
    };
    let listener = server::bind(&config.endpoint)?;
    tracing::info!(socket = %config.endpoint.display(), static_nodes = config.nodes.len(), "serving CSI");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| Error::Io {
            what: "install the SIGTERM handler".into(),
            source,
        })?;
    let csi = server::serve(listener, services, stopped(stopping));
    tokio::pin!(csi);
    let ended = async {
        match reconciling.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = &mut csi => return r.and(Err(Error::Stopped("the CSI server"))),
        r = ended => {
            // Without its reconciler the controller would keep serving
            // while snapshots go unchecked: exit, and be restarted.
            return match r {
                Ok(Err(e)) => Err(e),
                _ => Err(Error::Stopped("the reconciler")),
            };
        }
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping");
    let _ = stop.send(true);
    csi.await?;
    if let Some(task) = reconciling {
        // Releases the Lease, so the other replica takes over at once.
        let _ = task.await;
    }
    Ok(())
}

/// Resolves once `stopping` says so.
async fn stopped(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// Starts the reconciler: under the Lease with `--leader-election`, else
/// at once. It ends when `stopping` says so (releasing the Lease if held),
/// or on an error of its own.
fn reconcile(
    config: &Config,
    client: kube::Client,
    nodes: Arc<Nodes>,
    metrics: reconciler::Metrics,
    stopping: watch::Receiver<bool>,
) -> JoinHandle<Result<()>> {
    let identity = config
        .leader_election_identity
        .clone()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| format!("blksnap-csi-driver-{}", std::process::id()));
    let settings = reconciler::Config {
        check_interval: config.snapshot_check_interval,
        orphan_grace: config.orphan_grace_period,
        ..reconciler::Config::new(&config.driver_name, &identity)
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        RoutedSnapshots::new(nodes),
        settings,
        metrics.clone(),
    ));
    if !config.leader_election {
        tracing::info!(identity, "reconciling (no leader election)");
        metrics.leader.set(1);
        return tokio::spawn(async move {
            tokio::select! {
                r = reconciler::run(ctx) => r,
                () = stopped(stopping) => Ok(()),
            }
        });
    }
    let lease = LeaseConfig {
        namespace: config
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| config.namespace.clone()),
        name: leader::lease_name(&config.driver_name),
        identity,
        lease_duration: config.leader_election_lease_duration,
        renew_deadline: config.leader_election_renew_deadline,
        retry_period: config.leader_election_retry_period,
    };
    tracing::info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "electing the reconciler's leader");
    tokio::spawn(leader::lead(
        client,
        lease,
        metrics,
        stopped(stopping),
        move || reconciler::run(Arc::clone(&ctx)),
    ))
}
