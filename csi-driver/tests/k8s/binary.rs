//! Two `blksnap-csi-driver` processes with `--leader-election`, as the
//! chart runs them: one holds the Lease and reconciles, finding the node
//! by its pod and asking the node's API (an in-process one over mutual TLS,
//! see `node_api`) about each snapshot; the other only waits. Killed
//! without releasing the Lease, the leader is replaced once the Lease
//! expires; stopped with SIGTERM, it releases the Lease at once. Each
//! replica's `/metrics` says whether it leads and which node calls it made.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use blksnap_csi_driver::reconciler::leader::lease_name;
use blksnap_node_api::identity::{controller_name, node_server_name};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::DeleteParams;
use kube::{Api, Client, ResourceExt};

use crate::discovery::{node, pod, pod_status};
use crate::lost::{lost_events, lost_message};
use crate::node_api::{identity, serve_node, test_node, Pki, TestNode, Usage};
use crate::support::*;

/// One replica: the process, its name and its metrics address.
struct Replica {
    name: String,
    child: Child,
    metrics: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released: the replica binds it next).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn start(dir: &Path, name: &str, driver: &str, ns: &str, node_port: u16) -> Replica {
    let metrics = free_port();
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_blksnap-csi-driver"))
        .arg(format!(
            "--endpoint=unix://{}",
            dir.join(format!("{name}.sock")).display()
        ))
        .arg(format!("--driver-name={driver}"))
        .arg(format!(
            "--tls-cert={}",
            dir.join("controller.crt").display()
        ))
        .arg(format!(
            "--tls-key={}",
            dir.join("controller.key").display()
        ))
        .arg(format!("--tls-ca={}", dir.join("ca.crt").display()))
        .arg(format!("--namespace={ns}"))
        .arg(format!("--node-api-port={node_port}"))
        .arg(format!("--metrics-address={metrics}"))
        .args([
            "--leader-election",
            "--leader-election-lease-duration=4s",
            "--leader-election-renew-deadline=3s",
            "--leader-election-retry-period=500ms",
            "--snapshot-check-interval=1s",
        ])
        .arg(format!("--leader-election-namespace={ns}"))
        .arg(format!("--leader-election-identity={name}"))
        .env("KUBECONFIG", kubeconfig().expect("a cluster"))
        .stdout(Stdio::from(out.try_clone().expect("log")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start blksnap-csi-driver");
    Replica {
        name: name.into(),
        child,
        metrics,
        log,
    }
}

/// The replica's `/metrics` text, once it answers.
async fn scrape(r: &Replica) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    wait_for(&format!("{}'s metrics", r.name), 30, || async {
        let mut s = tokio::net::TcpStream::connect(r.metrics).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.starts_with("HTTP/1.1 200").then_some(out)
    })
    .await
}

/// The value of the sample whose line starts with `key` (name and labels).
fn sample(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Sends SIGTERM and waits for a clean exit; returns the replica's log.
async fn terminate(mut r: Replica) -> String {
    let pid = r.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(sent.expect("kill").success());
    let status = wait_for(&format!("{} to exit", r.name), 30, || {
        let done = r.child.try_wait().expect("wait");
        async move { done }
    })
    .await;
    let log = std::fs::read_to_string(&r.log).unwrap_or_default();
    assert!(status.success(), "{} exited with {status}:\n{log}", r.name);
    log
}

async fn holder(client: &Client, ns: &str, lease: &str) -> Option<(Option<String>, i32)> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let spec = api.get_opt(lease).await.ok()??.spec?;
    Some((spec.holder_identity, spec.lease_transitions.unwrap_or(0)))
}

/// A ready content and VolumeSnapshot of the node's snapshot `id`; the
/// node then reports it lost; returns the VolumeSnapshot's and the
/// content's names once a replica has marked the content.
async fn lose(
    client: &Client,
    node: &TestNode,
    driver: &str,
    ns: &str,
    id: &str,
) -> (String, String) {
    let vs = unique("snap");
    let c = content(client, driver, id, ns, &vs).await;
    content_ready(client, &c, id).await;
    snapshot(client, ns, &vs, &c.name_any()).await;
    snapshot_ready(client, ns, &vs, &c.name_any()).await;
    node.lost.lock().unwrap().insert(id.to_owned(), "overflow");
    let message = wait_for("the leader to mark the content lost", 60, || async {
        lost_message(&get_content(client, &c.name_any()).await)
    })
    .await;
    assert!(message.contains("overflow"), "{message}");
    (vs, c.name_any())
}

async fn reporter(client: &Client, ns: &str, vs: &str) -> String {
    let events = wait_for("the Event", 30, || async {
        let e = lost_events(client, ns, vs).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(events.len(), 1, "one replica reported it: {events:?}");
    events[0].reporting_instance.clone().unwrap_or_default()
}

#[tokio::test]
async fn two_driver_processes_one_lease_holder_reconciles_and_killing_it_hands_over() {
    let Some(client) = cluster().await else {
        return;
    };
    let ns = namespace(&client, "bin").await;
    let driver = driver_name();
    let lease = lease_name(&driver);
    let dir = tempfile::tempdir().expect("tempdir");

    // The node: its API in process, found through its pod as in a cluster.
    let pki = Pki::new("test CA");
    let (cert, key) = pki.leaf_pem(&controller_name(&driver), Usage::Client);
    for (file, text) in [
        ("controller.crt", &cert),
        ("controller.key", &key),
        ("ca.crt", &pki.ca_pem),
    ] {
        std::fs::write(dir.path().join(file), text).expect("write");
    }
    let name = unique("worker");
    let n = test_node(&name, 2, false);
    let identity = identity(&pki, &node_server_name(&name, &driver), Usage::Server);
    let addr: SocketAddr = serve_node(n.clone(), identity, &pki.ca_pem)
        .await
        .parse()
        .expect("addr");
    node(&client, &name).await;
    pod(&client, &ns, "plugin", &name, true).await;
    pod_status(&client, &ns, "plugin", "127.0.0.1", true).await;

    let mut replicas = vec![
        start(dir.path(), "replica-a", &driver, &ns, addr.port()),
        start(dir.path(), "replica-b", &driver, &ns, addr.port()),
    ];
    let (first, transitions) = wait_for("a leader", 60, || async {
        match holder(&client, &ns, &lease).await {
            Some((Some(h), t)) => Some((h, t)),
            _ => None,
        }
    })
    .await;
    let at = replicas.iter().position(|r| r.name == first).expect("ours");
    let leader = replicas.remove(at);
    let follower = replicas.remove(0);

    let (vs1, c1) = lose(&client, &n, &driver, &ns, &n.snapshots[0]).await;
    assert_eq!(reporter(&client, &ns, &vs1).await, first);
    let gauge = "blksnap_csi_controller_reconciler_leader";
    let calls = format!(
        "blksnap_csi_controller_node_call_duration_seconds_count{{node=\"{name}\",method=\"GetSnapshot\",code=\"OK\"}}"
    );
    let (l, f) = (scrape(&leader).await, scrape(&follower).await);
    assert_eq!(sample(&l, gauge), Some(1.0), "{l}");
    assert_eq!(sample(&f, gauge), Some(0.0), "{f}");
    assert!(sample(&l, &calls).is_some_and(|n| n >= 1.0), "{l}");
    assert_eq!(sample(&f, &calls), None, "the follower asked no node: {f}");
    assert!(
        !f.contains("blksnap_csi_controller_reconciler_reconciles_total{"),
        "the follower reconciled nothing: {f}"
    );

    // Killed: no release; the other takes over once the Lease expires.
    drop(leader);
    let second = wait_for("the other replica to take over", 60, || async {
        match holder(&client, &ns, &lease).await {
            Some((Some(h), t)) if h != first => Some((h, t)),
            _ => None,
        }
    })
    .await;
    assert_eq!(second.0, follower.name);
    assert_eq!(second.1, transitions + 1, "one more transition");
    let (vs2, c2) = lose(&client, &n, &driver, &ns, &n.snapshots[1]).await;
    assert_eq!(reporter(&client, &ns, &vs2).await, follower.name);
    let f = scrape(&follower).await;
    assert_eq!(sample(&f, gauge), Some(1.0), "{f}");

    // SIGTERM: a candidate just goes; the leader stops and releases the
    // Lease.
    let candidate = start(dir.path(), "replica-c", &driver, &ns, addr.port());
    scrape(&candidate).await;
    terminate(candidate).await;
    let (still, _) = holder(&client, &ns, &lease).await.expect("the Lease");
    assert_eq!(still.as_deref(), Some(follower.name.as_str()));
    let log = terminate(follower).await;
    let (released, _) = holder(&client, &ns, &lease).await.expect("the Lease");
    assert_eq!(released, None, "released on SIGTERM:\n{log}");

    for c in [c1, c2] {
        delete_content(&client, &c).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let _ = pods
        .delete("plugin", &DeleteParams::default().grace_period(0))
        .await;
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(&name, &DeleteParams::default()).await;
    delete_namespace(&client, &ns).await;
}
