//! The nodes' API endpoints: which address a node has ([`NodeDirectory`]),
//! and one lazily made mutual-TLS channel per node ([`Nodes`]).
//!
//! Nothing here dials at start or when asked for a channel: a channel
//! connects on its first call, so the unix socket answers the sidecars at
//! once whatever the nodes do. A channel is kept per node and made again
//! when the directory gives the node another address.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blksnap_node_api::identity::node_server_name;
use blksnap_node_api::lost::LOST_METADATA;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status};

use crate::metrics::NodeCallMetrics;
use crate::{Error, Result};

/// Where each node's API is. The static map of `--node` is one
/// implementation; discovery from Kubernetes is another.
pub trait NodeDirectory: Send + Sync + 'static {
    /// The `host:port` of `node`'s API, or `None` for a node not known.
    fn address(&self, node: &str) -> Option<String>;
    /// Every known node, sorted by name.
    fn nodes(&self) -> Vec<String>;
}

/// A fixed map of nodes, from `--node NAME=ADDR` flags: for a run without
/// a cluster, such as csi-sanity's.
#[derive(Debug, Clone, Default)]
pub struct StaticNodes(BTreeMap<String, String>);

impl StaticNodes {
    /// Parses `NAME=HOST[:PORT]` entries; a missing port is `default_port`.
    pub fn parse(entries: &[String], default_port: u16) -> Result<Self> {
        let mut map = BTreeMap::new();
        for entry in entries {
            let (name, addr) = entry
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("--node {entry:?} is not NAME=ADDR")))?;
            blksnap_node_api::ids::check_node(name)
                .map_err(|e| Error::Config(format!("--node {entry:?}: {e}")))?;
            if addr.is_empty() {
                return Err(Error::Config(format!("--node {entry:?} has no address")));
            }
            let has_port = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.ends_with(':') && port.parse::<u16>().is_ok())
                && !addr.ends_with(']');
            let addr = if has_port {
                addr.to_owned()
            } else {
                format!("{addr}:{default_port}")
            };
            if map.insert(name.to_owned(), addr).is_some() {
                return Err(Error::Config(format!("--node {name} is given twice")));
            }
        }
        Ok(StaticNodes(map))
    }
}

impl NodeDirectory for StaticNodes {
    fn address(&self, node: &str) -> Option<String> {
        self.0.get(node).cloned()
    }

    fn nodes(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

/// The controller's side of the node API's mutual TLS.
#[derive(Debug, Clone)]
pub struct NodeTls {
    /// CA of the nodes' certificates.
    pub ca: Certificate,
    /// The controller's client certificate and key.
    pub identity: Identity,
    pub driver_name: String,
}

impl NodeTls {
    /// Reads the PEM files of `--tls-cert`, `--tls-key` and `--tls-ca`.
    pub fn from_files(cert: &Path, key: &Path, ca: &Path, driver_name: &str) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| Error::Io {
                what: format!("read {}", p.display()),
                source,
            })
        };
        Ok(NodeTls {
            ca: Certificate::from_pem(read(ca)?),
            identity: Identity::from_pem(read(cert)?, read(key)?),
            driver_name: driver_name.to_owned(),
        })
    }
}

/// Channels to the nodes' APIs, made on demand and cached per node.
pub struct Nodes {
    directory: Arc<dyn NodeDirectory>,
    tls: NodeTls,
    /// Node name to the address its channel was made for, and the channel.
    channels: Mutex<HashMap<String, (String, Channel)>>,
    metrics: NodeCallMetrics,
}

impl Nodes {
    pub fn new(directory: Arc<dyn NodeDirectory>, tls: NodeTls, metrics: NodeCallMetrics) -> Self {
        Nodes {
            directory,
            tls,
            channels: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Awaits `call`, a call of `method` to `node` (a node whose channel
    /// was made, so a known one), and records its latency and outcome.
    pub async fn timed<T>(
        &self,
        node: &str,
        method: &'static str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let answer = call.await;
        let code = answer
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics.record(node, method, code, start.elapsed());
        answer
    }

    /// Calls `node`'s API: `call` gets the node's channel and `message`
    /// with the caller's deadline; timed as `method`. A status of the
    /// node comes back named with the node.
    pub async fn call<Req, Resp, Fut>(
        &self,
        node: &str,
        method: &'static str,
        incoming: &MetadataMap,
        message: Req,
        call: impl FnOnce(Channel, Request<Req>) -> Fut,
    ) -> Result<Response<Resp>>
    where
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let channel = self.channel(node)?;
        self.timed(node, method, call(channel, request(incoming, message)))
            .await
            .map_err(|status| node_error(node, status))
    }

    /// Every known node, sorted by name.
    pub fn known(&self) -> Vec<String> {
        self.directory.nodes()
    }

    /// The channel to `node`'s API. Its TLS server name is the node's own
    /// (`<node>.node.<driver>`), so a certificate of any other node is
    /// refused by the handshake.
    pub fn channel(&self, node: &str) -> Result<Channel> {
        let addr = self
            .directory
            .address(node)
            .ok_or_else(|| Error::UnknownNode(node.to_owned()))?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, channel)) = channels.get(node) {
            if *cached == addr {
                return Ok(channel.clone());
            }
        }
        let tls = ClientTlsConfig::new()
            .ca_certificate(self.tls.ca.clone())
            .identity(self.tls.identity.clone())
            .domain_name(node_server_name(node, &self.tls.driver_name));
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .and_then(|e| e.tls_config(tls))
            .map_err(|e| Error::Config(format!("node {node} at {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            // A node that vanished without closing its connections is
            // noticed, and the channel connects anew on the next call.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .connect_lazy();
        tracing::debug!(node, address = %addr, "channel to node");
        channels.insert(node.to_owned(), (addr, channel.clone()));
        Ok(channel)
    }
}

/// The request to a node for `message`, carrying the caller's deadline
/// (`grpc-timeout`), so the node stops when the caller gives up.
pub fn request<T>(incoming: &MetadataMap, message: T) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(t) = incoming.get("grpc-timeout") {
        r.metadata_mut().insert("grpc-timeout", t.clone());
    }
    r
}

/// The caller's deadline, from `grpc-timeout` (digits and a unit: H, M,
/// S, m, u, n); `None` without one or for one that does not parse.
pub fn deadline(incoming: &MetadataMap) -> Option<Duration> {
    let text = incoming.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `x-blksnap-lost` entries of a node's response.
pub fn lost_of(metadata: &MetadataMap) -> Vec<AsciiMetadataValue> {
    metadata.get_all(LOST_METADATA).iter().cloned().collect()
}

/// `response` with the `x-blksnap-lost` entries `lost` added.
pub fn with_lost<T>(mut response: Response<T>, lost: Vec<AsciiMetadataValue>) -> Response<T> {
    for v in lost {
        response.metadata_mut().append(LOST_METADATA, v);
    }
    response
}

/// A node's answer passed on: the message and its `x-blksnap-lost`
/// entries (none of the node's other metadata), or the error as a status.
pub fn relay<T>(answer: Result<Response<T>>) -> Result<Response<T>, Status> {
    let r = answer?;
    let lost = lost_of(r.metadata());
    Ok(with_lost(Response::new(r.into_inner()), lost))
}

/// A node's status as this crate's error.
pub fn node_error(node: &str, status: Status) -> Error {
    Error::Node {
        node: node.to_owned(),
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_read_from_grpc_timeout() {
        let with = |v: &'static str| {
            let mut m = MetadataMap::new();
            m.insert("grpc-timeout", v.parse().expect("ascii"));
            deadline(&m)
        };
        assert_eq!(with("300m"), Some(Duration::from_millis(300)));
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("5x"), None);
        assert_eq!(with("S"), None);
        assert_eq!(deadline(&MetadataMap::new()), None);
    }

    #[test]
    fn static_nodes_parse_with_and_without_a_port() {
        let nodes = StaticNodes::parse(
            &[
                "worker-1=127.0.0.1:9820".to_owned(),
                "worker-2=10.0.0.2".to_owned(),
                "worker-0=node0.example:1234".to_owned(),
            ],
            9820,
        )
        .expect("parses");
        assert_eq!(nodes.nodes(), ["worker-0", "worker-1", "worker-2"]);
        assert_eq!(nodes.address("worker-2").as_deref(), Some("10.0.0.2:9820"));
        assert_eq!(
            nodes.address("worker-0").as_deref(),
            Some("node0.example:1234")
        );
        assert_eq!(nodes.address("worker-3"), None);
        for bad in ["worker-1", "Worker=1.2.3.4", "w=", "a=1.1.1.1,a=2.2.2.2"] {
            let entries: Vec<String> = bad.split(',').map(str::to_owned).collect();
            assert!(StaticNodes::parse(&entries, 9820).is_err(), "{bad}");
        }
    }
}
