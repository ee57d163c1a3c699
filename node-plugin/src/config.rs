//! Command-line flags (each also read from an environment variable, as a
//! DaemonSet sets them).

use std::net::SocketAddr;
use std::path::PathBuf;

use blksnap_daemon::{socket_path, LogFormat};
use clap::{Parser, ValueEnum};

use crate::state::BackendKind;

/// Backend choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Pool,
    Device,
}

impl From<BackendArg> for BackendKind {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Pool => BackendKind::Pool,
            BackendArg::Device => BackendKind::Device,
        }
    }
}

/// The blksnap-csi node plugin.
#[derive(Debug, Clone, Parser)]
#[command(name = "blksnap-node-plugin", version, about)]
pub struct Config {
    /// This node's name (the Kubernetes node name).
    #[arg(long, env = "NODE_ID")]
    pub node_id: String,

    /// CSI driver name reported by GetPluginInfo.
    #[arg(long, env = "DRIVER_NAME", default_value = "blksnap.csi.io")]
    pub driver_name: String,

    /// Unix socket for the kubelet (Identity, Node): an absolute path, or
    /// `unix://` and one, as the CSI sidecars write it.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "/csi/csi.sock", value_parser = socket_path)]
    pub csi_socket: PathBuf,

    /// The kubelet's directory (its `--root-dir`): the Node calls mount on,
    /// unmount and remove paths below it only.
    #[arg(long, env = "KUBELET_DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,

    /// The CSI socket's path as the kubelet sees it. When given, the plugin
    /// registers itself with the kubelet (the plugin registration API on
    /// `<kubelet-dir>/plugins_registry/<driver>-reg.sock`), in place of
    /// node-driver-registrar.
    #[arg(long, env = "KUBELET_REGISTRATION_PATH", value_parser = socket_path)]
    pub kubelet_registration_path: Option<PathBuf>,

    /// Address of the node API for the controller (mutual TLS only).
    #[arg(long, env = "NODE_API_ADDRESS",
          default_value_t = SocketAddr::from(([0, 0, 0, 0], blksnap_node_api::identity::NODE_API_PORT)))]
    pub node_api: SocketAddr,

    /// PEM certificate chain of the node API.
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: PathBuf,

    /// PEM private key of the node API.
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: PathBuf,

    /// PEM CA that signs the controller's client certificates.
    #[arg(long, env = "TLS_CLIENT_CA")]
    pub tls_client_ca: PathBuf,

    /// Address of the Prometheus endpoint (`/metrics`).
    #[arg(long, env = "METRICS_ADDRESS")]
    pub metrics: Option<SocketAddr>,

    /// Directory of the plugin's records.
    #[arg(long, env = "STATE_DIR", default_value = "/var/lib/blksnap-csi/state")]
    pub state_dir: PathBuf,

    /// Directory of the file-backed pool; no pool without it.
    #[arg(long, env = "POOL_DIR")]
    pub pool_dir: Option<PathBuf>,

    /// Static raw device, NAME=/dev/disk/by-id/... (repeatable).
    #[arg(long = "static-device", value_name = "NAME=PATH")]
    pub static_devices: Vec<String>,

    /// Backend of volumes whose StorageClass names none.
    #[arg(long, value_enum, default_value = "pool")]
    pub default_backend: BackendArg,

    /// Directory for the snapshots' difference storage (`O_TMPFILE`); must
    /// not be on a volume's device.
    #[arg(long, env = "STORAGE_DIR", default_value = "/var/lib/blksnap-csi/diff")]
    pub storage_dir: PathBuf,

    /// Difference storage limit in percent of the volume size, when the
    /// VolumeSnapshotClass gives none.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub default_storage_percent: u64,

    /// blksnap.ko to load with finit_module when the module is not loaded
    /// (default: `modprobe blksnap`).
    #[arg(long, env = "BLKSNAP_KO")]
    pub module_path: Option<PathBuf>,

    /// Module parameter NAME=VALUE for loading (repeatable).
    #[arg(long = "module-param", value_name = "NAME=VALUE")]
    pub module_params: Vec<String>,

    /// The module's control device.
    #[arg(long, default_value = blksnap::Control::DEFAULT_PATH)]
    pub control_device: PathBuf,

    /// Leave kernel snapshots that no record references alone at start
    /// (they are destroyed otherwise).
    #[arg(long)]
    pub keep_orphan_snapshots: bool,

    /// Maximum volumes on this node reported to the scheduler (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_volumes: i64,

    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_flags_parse() {
        let c = Config::try_parse_from([
            "blksnap-node-plugin",
            "--node-id=worker-1",
            "--tls-cert=c.pem",
            "--tls-key=k.pem",
            "--tls-client-ca=ca.pem",
            "--pool-dir=/pool",
            "--static-device=fast=/dev/disk/by-id/x",
            "--module-param=chunk_minimum_shift=16",
        ])
        .expect("parses");
        assert_eq!(c.node_id, "worker-1");
        assert_eq!(c.static_devices, vec!["fast=/dev/disk/by-id/x"]);
        assert_eq!(c.default_storage_percent, 50);
        assert!(c.metrics.is_none());
        assert_eq!(c.csi_socket, PathBuf::from("/csi/csi.sock"));
        assert_eq!(c.kubelet_dir, PathBuf::from("/var/lib/kubelet"));
        assert!(c.kubelet_registration_path.is_none());
    }

    #[test]
    fn csi_endpoints_in_either_form_name_one_absolute_socket() {
        let parse = |endpoint: &str| {
            Config::try_parse_from([
                "blksnap-node-plugin",
                "--node-id=worker-1",
                "--tls-cert=c.pem",
                "--tls-key=k.pem",
                "--tls-client-ca=ca.pem",
                &format!("--csi-socket={endpoint}"),
            ])
            .map(|c| c.csi_socket)
        };
        for ok in ["unix:///csi/csi.sock", "/csi/csi.sock"] {
            assert_eq!(parse(ok).expect(ok), PathBuf::from("/csi/csi.sock"), "{ok}");
        }
        for bad in ["unix://csi/csi.sock", "csi.sock", "tcp://127.0.0.1:10000"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_is_not_optional() {
        let r = Config::try_parse_from(["blksnap-node-plugin", "--node-id=worker-1"]);
        assert!(r.is_err(), "the node API has no plaintext mode");
    }
}
