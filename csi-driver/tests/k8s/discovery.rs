//! Discovery follows the node plugin's pods. No kubelet runs here, so the
//! test writes each pod's status through the status subresource, as a
//! kubelet would; the Node objects exist so that the controller-manager's
//! pod garbage collector does not delete pods of unknown nodes.

use std::net::SocketAddr;
use std::time::Duration;

use blksnap_csi_driver::discovery::{self, DiscoveredNodes, DiscoveryConfig, DEFAULT_SELECTOR};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::support::{cluster, delete_namespace, namespace, unique, wait_for};

const PORT: u16 = 9443;

pub async fn pod(client: &Client, ns: &str, name: &str, node: &str, labelled: bool) {
    let labels = if labelled {
        json!({"app.kubernetes.io/name": "blksnap-csi", "app.kubernetes.io/component": "node"})
    } else {
        json!({"app.kubernetes.io/name": "something-else"})
    };
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "containers": [{"name": "node-plugin", "image": "blksnap-csi:test"}],
        },
    }))
    .unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    // The namespace's default ServiceAccount appears shortly after the
    // namespace; admission refuses pods until then.
    wait_for("pod creation", 60, || async {
        api.create(&PostParams::default(), &p).await.ok()
    })
    .await;
}

/// Writes the status a kubelet writes for a running pod.
pub async fn pod_status(client: &Client, ns: &str, name: &str, ip: &str, ready: bool) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let ready = if ready { "True" } else { "False" };
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": ready}],
        }})),
    )
    .await
    .expect("pod status");
}

pub async fn node(client: &Client, name: &str) {
    let api: Api<Node> = Api::all(client.clone());
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &n).await.expect("node");
}

async fn until(dir: &DiscoveredNodes, what: &str, node: &str, want: Option<&str>) {
    let want: Option<SocketAddr> = want.map(|ip| format!("{ip}:{PORT}").parse().unwrap());
    let mut rx = dir.subscribe();
    let ok = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if dir.get(node) == want {
                return;
            }
            rx.changed().await.expect("discovery runs");
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "{what}: {node} is {:?}, want {want:?}",
        dir.get(node)
    );
}

#[tokio::test]
async fn discovery_follows_pods_created_readied_and_deleted() {
    let Some(client) = cluster().await else {
        return;
    };
    let ns = namespace(&client, "disc").await;
    let (n1, n2, n3) = (unique("node-a"), unique("node-b"), unique("node-c"));
    for n in [&n1, &n2, &n3] {
        node(&client, n).await;
    }
    let dir = DiscoveredNodes::default();
    let task = tokio::spawn(discovery::run(
        client.clone(),
        DiscoveryConfig {
            namespace: ns.clone(),
            selector: DEFAULT_SELECTOR.into(),
            port: PORT,
        },
        dir.clone(),
    ));

    pod(&client, &ns, "plugin-a", &n1, true).await;
    pod(&client, &ns, "other", &n3, false).await;
    pod_status(&client, &ns, "other", "10.9.0.3", true).await;
    // Scheduled but not started: no IP, not Ready.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        dir.get(&n1),
        None,
        "a pod that is not Ready is not an endpoint"
    );

    pod_status(&client, &ns, "plugin-a", "10.9.0.1", true).await;
    until(&dir, "a Ready pod", &n1, Some("10.9.0.1")).await;
    pod(&client, &ns, "plugin-b", &n2, true).await;
    pod_status(&client, &ns, "plugin-b", "10.9.0.2", true).await;
    until(&dir, "a second node", &n2, Some("10.9.0.2")).await;
    assert_eq!(
        dir.get(&n1),
        Some(format!("10.9.0.1:{PORT}").parse().unwrap())
    );
    assert_eq!(dir.get(&n3), None, "a pod without the selector's labels");

    pod_status(&client, &ns, "plugin-a", "10.9.0.1", false).await;
    until(&dir, "a pod that turned not Ready", &n1, None).await;
    pod_status(&client, &ns, "plugin-a", "10.9.0.1", true).await;
    until(&dir, "the same pod Ready again", &n1, Some("10.9.0.1")).await;

    // A deleted pod of a node with no kubelet stays, marked for deletion:
    // it must drop out at once.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.delete("plugin-b", &DeleteParams::default())
        .await
        .expect("delete");
    until(&dir, "a pod being deleted", &n2, None).await;
    pods.delete("plugin-b", &DeleteParams::default().grace_period(0))
        .await
        .expect("force delete");
    // The node comes back with a new pod and another IP: no restart.
    wait_for("the old pod to be gone", 30, || async {
        pods.get_opt("plugin-b")
            .await
            .ok()
            .and_then(|p| p.is_none().then_some(()))
    })
    .await;
    pod(&client, &ns, "plugin-b", &n2, true).await;
    pod_status(&client, &ns, "plugin-b", "10.9.0.22", true).await;
    until(&dir, "a node that came back", &n2, Some("10.9.0.22")).await;
    assert!(!task.is_finished(), "discovery still running");
    task.abort();

    for p in ["plugin-a", "plugin-b", "other"] {
        let _ = pods
            .delete(p, &DeleteParams::default().grace_period(0))
            .await;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    for n in [&n1, &n2, &n3] {
        let _ = nodes.delete(n, &DeleteParams::default()).await;
    }
    delete_namespace(&client, &ns).await;
}
