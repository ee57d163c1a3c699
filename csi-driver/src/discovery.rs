//! Where each node's node API listens, discovered from the node plugin's
//! pods: a node is reachable at its Ready pod's IP. Kept current by a
//! watch, so a node whose pod comes back is routed to again without a
//! restart, and a node whose pod is gone or not Ready is dropped.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

/// The node plugin's pods, by the chart's labels.
pub const DEFAULT_SELECTOR: &str =
    "app.kubernetes.io/name=blksnap-csi,app.kubernetes.io/component=node";

/// Node name -> node API address.
pub type NodeMap = BTreeMap<String, SocketAddr>;

/// The current node API address of each node, shared by the router and
/// the reconciler; cheap to clone.
#[derive(Clone, Debug)]
pub struct DiscoveredNodes {
    map: Arc<watch::Sender<NodeMap>>,
}

impl Default for DiscoveredNodes {
    fn default() -> Self {
        DiscoveredNodes {
            map: Arc::new(watch::Sender::new(NodeMap::new())),
        }
    }
}

impl DiscoveredNodes {
    /// Where `node`'s node API listens, if the node is known.
    pub fn get(&self, node: &str) -> Option<SocketAddr> {
        self.map.borrow().get(node).copied()
    }

    /// The names of the known nodes.
    pub fn nodes(&self) -> Vec<String> {
        self.map.borrow().keys().cloned().collect()
    }

    /// A receiver that wakes on every change of the map (e.g. to drop a
    /// cached connection to an address that changed).
    pub fn subscribe(&self) -> watch::Receiver<NodeMap> {
        self.map.subscribe()
    }

    /// Replaces the map; subscribers wake only if it changed.
    fn set(&self, next: NodeMap) {
        self.map.send_if_modified(|cur| {
            if *cur == next {
                return false;
            }
            for (node, addr) in next.iter() {
                if cur.get(node) != Some(addr) {
                    info!(node, %addr, "node API discovered");
                }
            }
            for node in cur.keys().filter(|n| !next.contains_key(*n)) {
                info!(node, "node API gone");
            }
            *cur = next;
            true
        });
    }
}

/// The router's view: where a node's API is, as discovered.
impl crate::nodes::NodeDirectory for DiscoveredNodes {
    fn address(&self, node: &str) -> Option<String> {
        self.get(node).map(|a| a.to_string())
    }

    fn nodes(&self) -> Vec<String> {
        DiscoveredNodes::nodes(self)
    }
}

/// Which pods to watch.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// The namespace the node plugin's DaemonSet runs in.
    pub namespace: String,
    /// Label selector of the node plugin's pods.
    pub selector: String,
    /// The port the node API listens on in those pods.
    pub port: u16,
}

/// Keeps `directory` in step with the node plugin's pods until the watch
/// stream ends (it retries API errors with backoff, so only on shutdown).
pub async fn run(client: Client, config: DiscoveryConfig, directory: DiscoveredNodes) {
    let pods: Api<Pod> = Api::namespaced(client, &config.namespace);
    let (reader, writer) = reflector::store();
    let watch = watcher(pods, watcher::Config::default().labels(&config.selector))
        .default_backoff()
        .reflect(writer);
    let mut watch = std::pin::pin!(watch);
    while let Some(event) = watch.next().await {
        match event {
            // The store is updated before the event is yielded.
            Ok(_) => directory.set(node_map(&reader, config.port)),
            Err(e) => warn!(error = %e, "watching the node plugin's pods"),
        }
    }
}

/// The map the pods in `store` give: the Ready pod of each node. During a
/// rolling update two pods of one node can both be Ready; the newest wins
/// (the old one is about to go).
fn node_map(store: &Store<Pod>, port: u16) -> NodeMap {
    let mut best: BTreeMap<String, (Option<k8s_openapi::jiff::Timestamp>, SocketAddr)> =
        BTreeMap::new();
    for pod in store.state() {
        let Some((node, ip)) = endpoint(&pod) else {
            continue;
        };
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let addr = SocketAddr::new(ip, port);
        match best.get(&node) {
            Some((seen, _)) if *seen >= created => {}
            _ => {
                best.insert(node, (created, addr));
            }
        }
    }
    best.into_iter().map(|(n, (_, a))| (n, a)).collect()
}

/// The node and IP of a pod that can serve: scheduled, Ready, not being
/// deleted, with an IP.
fn endpoint(pod: &Pod) -> Option<(String, IpAddr)> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let node = pod.spec.as_ref()?.node_name.clone()?;
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip = status.pod_ip.as_deref()?.parse().ok()?;
    ready.then_some((node, ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    fn pod(node: &str, ip: &str, ready: &str) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_ready_scheduled_pods_with_an_ip_are_endpoints() {
        assert_eq!(
            endpoint(&pod("n1", "10.0.0.1", "True")),
            Some(("n1".into(), "10.0.0.1".parse().unwrap()))
        );
        assert_eq!(endpoint(&pod("n1", "10.0.0.1", "False")), None);
        assert_eq!(endpoint(&pod("n1", "not-an-ip", "True")), None);
        let mut unscheduled = pod("n1", "10.0.0.1", "True");
        unscheduled.spec.as_mut().unwrap().node_name = None;
        assert_eq!(endpoint(&unscheduled), None);
        let mut deleting = pod("n1", "10.0.0.1", "True");
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert_eq!(endpoint(&deleting), None);
    }

    #[test]
    fn subscribers_wake_only_on_a_change() {
        let dir = DiscoveredNodes::default();
        let mut rx = dir.subscribe();
        let a: SocketAddr = "10.0.0.1:9000".parse().unwrap();
        dir.set(NodeMap::from([("n1".into(), a)]));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        dir.set(NodeMap::from([("n1".into(), a)]));
        assert!(!rx.has_changed().unwrap(), "same map, no wake-up");
        assert_eq!(dir.get("n1"), Some(a));
        dir.set(NodeMap::new());
        assert!(rx.has_changed().unwrap());
        assert_eq!(dir.get("n1"), None);
    }
}
