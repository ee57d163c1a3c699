//! Command-line flags (each also read from an environment variable where
//! a Deployment sets it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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

    /// With `--node`: run the reconciler too, against the cluster of
    /// `KUBECONFIG` (or the in-cluster one), for a test bed whose node
    /// plugins run outside pods (tests/e2e). Without `--node` the
    /// reconciler always runs.
    #[arg(long, requires = "nodes")]
    pub reconcile: bool,

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

    /// Address to serve Prometheus metrics on (`GET /metrics`), e.g.
    /// `0.0.0.0:9821`; none without it.
    #[arg(long, env = "METRICS_ADDRESS")]
    pub metrics_address: Option<SocketAddr>,

    /// Run the reconciler only while this replica holds the leader Lease
    /// (for more than one replica). Without it, a replica that finds its
    /// nodes in Kubernetes reconciles on its own.
    #[arg(long)]
    pub leader_election: bool,

    /// Namespace of the Lease (default: `--namespace`).
    #[arg(long)]
    pub leader_election_namespace: Option<String>,

    /// This replica's name in the Lease and in Events (default: the host
    /// name, which is the pod's name).
    #[arg(long, env = "POD_NAME")]
    pub leader_election_identity: Option<String>,

    /// How long a Lease not renewed keeps others from taking it.
    #[arg(long, default_value = "15s", value_parser = duration)]
    pub leader_election_lease_duration: Duration,

    /// How long the leader keeps trying to renew before it stops its work.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub leader_election_renew_deadline: Duration,

    /// How often candidates try to take, and the leader to renew, the Lease.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub leader_election_retry_period: Duration,

    /// How often a ready snapshot is checked with its node.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub snapshot_check_interval: Duration,

    /// How long a node snapshot no content refers to is kept before it is
    /// deleted.
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub orphan_grace_period: Duration,

    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// A duration as the sidecars write one: digits and a unit, `ms`, `s`,
/// `m` or `h` (`500ms`, `15s`, `10m`).
pub fn duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m or h)"))?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let secs = |k: u64| {
        n.checked_mul(k)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        _ => Err(format!("{text:?}: the unit must be ms, s, m or h")),
    }
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
        assert!(!c.reconcile);
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(!c.leader_election);
        assert_eq!(c.leader_election_lease_duration, Duration::from_secs(15));
        assert_eq!(c.leader_election_renew_deadline, Duration::from_secs(10));
        assert_eq!(c.leader_election_retry_period, Duration::from_secs(5));
        assert_eq!(c.orphan_grace_period, Duration::from_secs(600));
    }

    #[test]
    fn the_sidecars_leader_election_flags() {
        let c = parse(&[
            "--leader-election",
            "--leader-election-namespace=kube-system",
            "--leader-election-lease-duration=30s",
            "--leader-election-renew-deadline=20s",
            "--leader-election-retry-period=500ms",
            "--orphan-grace-period=1h",
        ])
        .expect("parses");
        assert!(c.leader_election);
        assert_eq!(c.leader_election_namespace.as_deref(), Some("kube-system"));
        assert_eq!(c.leader_election_lease_duration, Duration::from_secs(30));
        assert_eq!(c.leader_election_renew_deadline, Duration::from_secs(20));
        assert_eq!(c.leader_election_retry_period, Duration::from_millis(500));
        assert_eq!(c.orphan_grace_period, Duration::from_secs(3600));
        for bad in ["15", "s", "1.5s", "3d", "-1s", "99999999999999999h"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
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

    #[test]
    fn reconcile_is_only_for_a_static_node_map() {
        assert!(
            parse(&["--node=w1=127.0.0.1", "--reconcile"])
                .expect("parses")
                .reconcile
        );
        // Without --node the reconciler runs anyway: the flag would mislead.
        assert!(parse(&["--reconcile"]).is_err());
    }
}
