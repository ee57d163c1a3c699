//! blksnap-csi-driver: parses flags, starts logging, finds the nodes
//! (the `--node` map, or the node plugin's pods in Kubernetes) and serves
//! the CSI socket until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use blksnap_csi_driver::config::Config;
use blksnap_csi_driver::controller::ControllerService;
use blksnap_csi_driver::discovery::{self, DiscoveredNodes, DiscoveryConfig};
use blksnap_csi_driver::group_controller::GroupControllerService;
use blksnap_csi_driver::identity::IdentityService;
use blksnap_csi_driver::nodes::{NodeDirectory, NodeTls, Nodes, StaticNodes};
use blksnap_csi_driver::server::{self, Services};
use blksnap_csi_driver::snapshot_metadata::SnapshotMetadataService;
use blksnap_csi_driver::{Error, Result};
use clap::Parser;

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
    let tls = NodeTls::from_files(
        &config.tls_cert,
        &config.tls_key,
        &config.tls_ca,
        &config.driver_name,
    )?;
    if config.metrics_address.is_some() {
        tracing::warn!("--metrics-address: metrics are not served yet");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "start the tokio runtime".into(),
            source,
        })?;
    runtime.block_on(async {
        let directory: Arc<dyn NodeDirectory> = if config.nodes.is_empty() {
            // Reads the in-cluster configuration only: the watch connects
            // in the background, so the socket answers at once.
            let client = kube::Client::try_default().await?;
            let found = DiscoveredNodes::default();
            let watch = DiscoveryConfig {
                namespace: config.namespace.clone(),
                selector: config.node_selector.clone(),
                port: config.node_api_port,
            };
            tracing::info!(namespace = %watch.namespace, selector = %watch.selector, "discovering nodes");
            tokio::spawn(discovery::run(client, watch, found.clone()));
            Arc::new(found)
        } else {
            Arc::new(static_nodes)
        };
        let nodes = Arc::new(Nodes::new(directory, tls));
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
        server::serve(listener, services, async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping");
        })
        .await
    })
}
