//! blksnap-node-plugin: parses flags, starts logging, loads the kernel
//! module, recovers the state and serves the kubelet socket, the node API
//! and the metrics endpoint until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use blksnap_node_plugin::backend;
use blksnap_node_plugin::config::Config;
use blksnap_node_plugin::controller::ControllerService;
use blksnap_node_plugin::controller_identity::ControllerOnly;
use blksnap_node_plugin::group_controller::GroupControllerService;
use blksnap_node_plugin::identity::IdentityService;
use blksnap_node_plugin::kmod::{self, ModuleSource};
use blksnap_node_plugin::metrics::{self, Metrics};
use blksnap_node_plugin::node::NodeService;
use blksnap_node_plugin::plugin::{Plugin, Settings};
use blksnap_node_plugin::registration::{self, RegistrationService};
use blksnap_node_plugin::server::{self, NodeApi};
use blksnap_node_plugin::snapshot_metadata::SnapshotMetadataService;
use blksnap_node_plugin::{Error, Result};
use clap::Parser;
use tokio::sync::watch;

fn main() -> ExitCode {
    let config = Config::parse();
    blksnap_daemon::init_logging(config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line saying why, for `kubectl logs` and the pod status.
            eprintln!("blksnap-node-plugin: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<()> {
    let module = kmod::ensure_loaded(&ModuleSource {
        control: config.control_device.clone(),
        ko: config.module_path.clone(),
        params: config.module_params.clone(),
    })?;
    let backends = backend::configured(config.pool_dir.as_deref(), &config.static_devices)?;
    std::fs::create_dir_all(&config.storage_dir)
        .map_err(|e| Error::io("create", &config.storage_dir, e))?;
    let tls = server::tls_config(&config.tls_cert, &config.tls_key, &config.tls_client_ca)?;
    let plugin = Plugin::start(
        Settings {
            node_id: config.node_id.clone(),
            storage_dir: config.storage_dir.clone(),
            default_storage_percent: config.default_storage_percent,
            default_backend: config.default_backend.into(),
            collect_orphans: !config.keep_orphan_snapshots,
        },
        Arc::new(module),
        backends,
        &config.state_dir,
    )?;
    let metrics = Arc::clone(&plugin.metrics);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start", "tokio runtime", e))?;
    runtime.block_on(serve(config, plugin, metrics, tls))
}

async fn serve(
    config: Config,
    plugin: Arc<Plugin>,
    metrics: Arc<Metrics>,
    tls: tonic::transport::ServerTlsConfig,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let identity = IdentityService::new(&config.driver_name, Arc::clone(&plugin));
    let node = NodeService::new(Arc::clone(&plugin), config.max_volumes, &config.kubelet_dir)?;
    let api = NodeApi {
        clients: ControllerOnly::new(&config.driver_name)?,
        identity: identity.clone(),
        controller: ControllerService::new(Arc::clone(&plugin)),
        group_controller: GroupControllerService::new(Arc::clone(&plugin)),
        snapshot_metadata: SnapshotMetadataService::new(Arc::clone(&plugin)),
    };
    let listener = tokio::net::TcpListener::bind(config.node_api)
        .await
        .map_err(|e| Error::io("bind", config.node_api.to_string(), e))?;

    let mut tasks = tokio::task::JoinSet::new();
    {
        let (m, rx, socket) = (
            Arc::clone(&metrics),
            stop_rx.clone(),
            config.csi_socket.clone(),
        );
        tasks.spawn(
            async move { server::serve_kubelet(&socket, identity, node, m, stopped(rx)).await },
        );
    }
    {
        let (m, rx) = (Arc::clone(&metrics), stop_rx.clone());
        tasks
            .spawn(async move { server::serve_node_api(listener, tls, api, m, stopped(rx)).await });
    }
    let registration_socket = config
        .kubelet_registration_path
        .as_ref()
        .map(|_| registration::socket_path(&config.kubelet_dir, &config.driver_name));
    if let (Some(endpoint), Some(socket)) =
        (&config.kubelet_registration_path, &registration_socket)
    {
        let (m, rx, socket) = (Arc::clone(&metrics), stop_rx.clone(), socket.clone());
        let service = RegistrationService::new(&config.driver_name, endpoint);
        tasks.spawn(async move {
            server::serve_registration(&socket, service, registration::RETRY_AFTER, m, stopped(rx))
                .await
        });
    }
    if let Some(addr) = config.metrics {
        let m = Arc::clone(&metrics);
        tasks.spawn(async move { metrics::serve(addr, m).await });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("install", "SIGTERM handler", e))?;
    let result = tokio::select! {
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        done = tasks.join_next() => match done {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(Error::io("run", "server task", std::io::Error::other(e))),
            None => Ok(()),
        },
    };
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    tasks.abort_all();
    // Gone from the registry, the kubelet unregisters the driver.
    if let Some(socket) = &registration_socket {
        server::remove_socket(socket)?;
    }
    result
}
