//! Command-line flags (each also read from an environment variable where
//! a Deployment sets it).

use std::net::SocketAddr;
use std::path::PathBuf;

use blksnap_daemon::{socket_path, LogFormat};
use clap::Parser;

/// The blksnap-csi controller.
#[derive(Debug, Clone, Parser)]
#[command(name = "blksnap-csi-driver", version, about)]
pub struct Config {
    /// Unix socket for the CSI sidecars: `unix:///path` or an absolute path.
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock", value_parser = socket_path)]
    pub endpoint: PathBuf,

    /// CSI driver name: GetPluginInfo's answer and the suffix of the
    /// node-API TLS names.
    #[arg(long, env = "DRIVER_NAME", default_value = "blksnap.csi.io")]
    pub driver_name: String,

    /// PEM client certificate of the controller (DNS name
    /// `controller.<driver name>`).
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: PathBuf,

    /// PEM private key of that certificate.
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: PathBuf,

    /// PEM CA of the nodes' node-API certificates.
    #[arg(long, env = "TLS_CA")]
    pub tls_ca: PathBuf,

    /// A node's API address, NAME=HOST[:PORT] (repeatable): a static node
    /// map for a run without a cluster, such as csi-sanity.
    #[arg(long = "node", value_name = "NAME=ADDR")]
    pub nodes: Vec<String>,

    /// Port of the node API where an address gives none.
    #[arg(long, env = "NODE_API_PORT", default_value_t = blksnap_node_api::identity::NODE_API_PORT)]
    pub node_api_port: u16,

    /// Namespace of the node plugin's pods, watched to find each node's
    /// API when no `--node` is given.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Label selector of the node plugin's pods.
    #[arg(long, default_value = crate::discovery::DEFAULT_SELECTOR)]
    pub node_selector: String,

    /// Address of the Prometheus endpoint (not served yet).
    #[arg(long, env = "METRICS_ADDRESS")]
    pub metrics_address: Option<SocketAddr>,

    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, clap::Error> {
        let mut args = vec![
            "blksnap-csi-driver",
            "--tls-cert=c.pem",
            "--tls-key=k.pem",
            "--tls-ca=ca.pem",
        ];
        args.extend_from_slice(extra);
        Config::try_parse_from(args)
    }

    #[test]
    fn defaults_and_the_static_node_map() {
        let c = parse(&["--node=w1=127.0.0.1:9820", "--node", "w2=10.0.0.2"]).expect("parses");
        assert_eq!(c.endpoint, PathBuf::from("/csi/csi.sock"));
        assert_eq!(c.driver_name, "blksnap.csi.io");
        assert_eq!(c.node_api_port, 9820);
        assert_eq!(c.nodes, ["w1=127.0.0.1:9820", "w2=10.0.0.2"]);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn endpoints_in_either_form_and_tls_required() {
        for ok in ["unix:///csi/csi.sock", "/csi/csi.sock"] {
            let c = parse(&["--endpoint", ok]).expect(ok);
            assert_eq!(c.endpoint, PathBuf::from("/csi/csi.sock"));
        }
        for bad in ["unix://csi.sock", "csi.sock", "tcp://127.0.0.1:1"] {
            assert!(parse(&["--endpoint", bad]).is_err(), "{bad}");
        }
        assert!(Config::try_parse_from(["blksnap-csi-driver"]).is_err());
    }
}
