//! The router against node APIs over real mutual TLS: the nodes are the
//! in-process node APIs of `node_api`; the controller side is the real
//! one: its unix socket, routing, channels and TLS.

mod node_api;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use blksnap_csi_driver::node_snapshots::RoutedSnapshots;
use blksnap_csi_driver::reconciler::{NodeError, NodeSnapshots, SnapshotState};
use blksnap_node_api::ids::{GroupSnapshotId, SnapshotId, VolumeId};
use blksnap_node_api::lost::{LostReason, LOST_METADATA};
use csi_proto::csi::v1 as csi;
use node_api::*;
use tonic::{Code, Request};

#[tokio::test]
async fn calls_go_to_the_node_in_the_id_and_an_unknown_node_is_unavailable() {
    let pki = Pki::new("test CA");
    let (nodes, directory) = three_nodes(&pki, 0).await;
    let c = controller(&pki, &directory).await;
    let mut client = csi::controller_client::ControllerClient::new(c.channel.clone());

    // Identity answers without any node.
    let info = csi::identity_client::IdentityClient::new(c.channel.clone())
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.name, DRIVER);

    let r = client
        .create_snapshot(csi::CreateSnapshotRequest {
            name: "snap-1".into(),
            source_volume_id: vol("v1", "node-b"),
            ..Default::default()
        })
        .await
        .expect("routed");
    // The node's lost-snapshot metadata comes through.
    assert!(r.metadata().get(LOST_METADATA).is_some());
    let id: SnapshotId = r
        .into_inner()
        .snapshot
        .expect("snapshot")
        .snapshot_id
        .parse()
        .expect("id");
    assert_eq!(id.node, "node-b");
    assert_eq!(nodes[1].seen.calls.load(Ordering::SeqCst), 1);
    assert_eq!(nodes[0].seen.calls.load(Ordering::SeqCst), 0);

    let gone = client
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: vol("v1", "node-z"),
            ..Default::default()
        })
        .await
        .expect_err("unknown node");
    assert_eq!(gone.code(), Code::Unavailable);
    assert!(gone.message().contains("node-z"), "{}", gone.message());

    // Ids that are not ours: answered without a node.
    client
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "not-ours".into(),
            ..Default::default()
        })
        .await
        .expect("deleting an unknown id is OK");

    // A group across nodes is refused, saying why; on one node it is routed.
    let mut groups = csi::group_controller_client::GroupControllerClient::new(c.channel.clone());
    let refused = groups
        .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
            name: "g".into(),
            source_volume_ids: vec![vol("v1", "node-a"), vol("v2", "node-c")],
            ..Default::default()
        })
        .await
        .expect_err("two nodes");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("node-a, node-c"),
        "{}",
        refused.message()
    );
    let g = groups
        .create_volume_group_snapshot(csi::CreateVolumeGroupSnapshotRequest {
            name: "g".into(),
            source_volume_ids: vec![vol("v1", "node-c"), vol("v2", "node-c")],
            ..Default::default()
        })
        .await
        .expect("one node")
        .into_inner();
    let gid: GroupSnapshotId = g
        .group_snapshot
        .expect("group")
        .group_snapshot_id
        .parse()
        .expect("id");
    assert_eq!(gid.node, "node-c");
}

#[tokio::test]
async fn create_volume_picks_the_same_node_on_retry_and_skips_full_ones() {
    let pki = Pki::new("test CA");
    let mut directory = vec![];
    let mut nodes = HashMap::new();
    for (name, full) in [("node-a", true), ("node-b", false), ("node-c", false)] {
        let node = test_node(name, 0, full);
        let addr = serve_node(node.clone(), node_cert(&pki, name), &pki.ca_pem).await;
        directory.push((name.to_owned(), addr));
        nodes.insert(name, node);
    }
    let c = controller(&pki, &directory).await;
    let mut client = csi::controller_client::ControllerClient::new(c.channel.clone());
    let create = |name: &str| csi::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 1 << 20,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    for name in ["pvc-1", "pvc-2", "pvc-3", "pvc-4"] {
        let mut landed = vec![];
        for _ in 0..2 {
            let v = client
                .create_volume(create(name))
                .await
                .expect("created")
                .into_inner()
                .volume
                .expect("volume");
            let id: VolumeId = v.volume_id.parse().expect("id");
            assert_ne!(id.node, "node-a", "a full node");
            landed.push(id.node);
        }
        assert_eq!(landed[0], landed[1], "{name}: a retry went to another node");
    }

    // Preferred topology first; a source's node decides, and a requisite
    // without it is refused.
    let on = |n: &str| csi::Topology {
        segments: HashMap::from([(blksnap_node_api::TOPOLOGY_KEY.to_owned(), n.to_owned())]),
    };
    let mut r = create("pvc-5");
    r.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![on("node-b"), on("node-c")],
        preferred: vec![on("node-c")],
    });
    let v = client.create_volume(r).await.expect("created").into_inner();
    assert!(v.volume.expect("v").volume_id.ends_with(":node-c"));
    let mut r = create("pvc-6");
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: vol("v0", "node-b"),
            },
        )),
    });
    r.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![on("node-c")],
        preferred: vec![],
    });
    let refused = client.create_volume(r).await.expect_err("source elsewhere");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("node-b"),
        "{}",
        refused.message()
    );
}

#[tokio::test]
async fn list_snapshots_pages_across_nodes_and_filters_ask_one_node() {
    let pki = Pki::new("test CA");
    let (nodes, directory) = three_nodes(&pki, 3).await;
    let c = controller(&pki, &directory).await;
    let mut client = csi::controller_client::ControllerClient::new(c.channel.clone());
    let want: Vec<String> = nodes.iter().flat_map(|n| n.snapshots.clone()).collect();
    for max in [1, 2, 4, 9, 0] {
        let mut got = vec![];
        let mut token = String::new();
        loop {
            let page = client
                .list_snapshots(csi::ListSnapshotsRequest {
                    max_entries: max,
                    starting_token: token.clone(),
                    ..Default::default()
                })
                .await
                .expect("page")
                .into_inner();
            assert!(max == 0 || page.entries.len() <= max as usize);
            got.extend(
                page.entries
                    .into_iter()
                    .map(|e| e.snapshot.expect("s").snapshot_id),
            );
            if page.next_token.is_empty() {
                break;
            }
            token = page.next_token;
        }
        assert_eq!(got, want, "max_entries {max}");
    }
    let bad = client
        .list_snapshots(csi::ListSnapshotsRequest {
            starting_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad token");
    assert_eq!(bad.code(), Code::Aborted);

    let before: Vec<usize> = nodes
        .iter()
        .map(|n| n.seen.calls.load(Ordering::SeqCst))
        .collect();
    client
        .list_snapshots(csi::ListSnapshotsRequest {
            source_volume_id: vol("v1", "node-b"),
            ..Default::default()
        })
        .await
        .expect("filtered");
    let after: Vec<usize> = nodes
        .iter()
        .map(|n| n.seen.calls.load(Ordering::SeqCst))
        .collect();
    assert_eq!(
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect::<Vec<_>>(),
        [0, 1, 0]
    );
}

#[tokio::test]
async fn a_node_is_trusted_only_with_its_own_certificate_from_the_ca() {
    let pki = Pki::new("test CA");
    let foreign = Pki::new("someone else's CA");
    let honest = test_node("node-b", 1, false);
    let b_addr = serve_node(honest.clone(), node_cert(&pki, "node-b"), &pki.ca_pem).await;
    // A server with a foreign CA's certificate for the right name.
    let impostor = test_node("node-c", 1, false);
    let c_addr = serve_node(impostor.clone(), node_cert(&foreign, "node-c"), &pki.ca_pem).await;
    // node-a's address leads to node-b (same CA, another node's name).
    let directory = vec![
        ("node-a".to_owned(), b_addr.clone()),
        ("node-b".to_owned(), b_addr),
        ("node-c".to_owned(), c_addr),
    ];
    let c = controller(&pki, &directory).await;
    let mut client = csi::controller_client::ControllerClient::new(c.channel.clone());
    let list = |volume: String| csi::ListSnapshotsRequest {
        source_volume_id: volume,
        ..Default::default()
    };
    client
        .list_snapshots(list(vol("v0", "node-b")))
        .await
        .expect("the right node");
    for node in ["node-a", "node-c"] {
        let refused = client
            .list_snapshots(list(vol("v0", node)))
            .await
            .expect_err(node);
        assert_eq!(refused.code(), Code::Unavailable, "{node}: {refused:?}");
        assert!(refused.message().contains(node), "{}", refused.message());
    }
    assert_eq!(
        honest.seen.calls.load(Ordering::SeqCst),
        1,
        "node-b served as node-a"
    );
    assert_eq!(impostor.seen.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn metadata_streams_are_relayed_and_cancellation_and_deadlines_reach_the_node() {
    let pki = Pki::new("test CA");
    let (nodes, directory) = three_nodes(&pki, 1).await;
    let c = controller(&pki, &directory).await;
    let mut client = csi::snapshot_metadata_client::SnapshotMetadataClient::new(c.channel.clone());
    let target = nodes[2].snapshots[0].clone();
    let mut r = Request::new(csi::GetMetadataDeltaRequest {
        base_snapshot_id: target.clone(),
        target_snapshot_id: target,
        ..Default::default()
    });
    r.set_timeout(Duration::from_secs(60));
    let mut stream = client
        .get_metadata_delta(r)
        .await
        .expect("stream")
        .into_inner();
    let mut offsets = vec![];
    for _ in 0..5 {
        let m = stream.message().await.expect("message").expect("not ended");
        offsets.push(m.block_metadata[0].byte_offset);
    }
    // Message by message, in the node's order.
    assert_eq!(offsets, [4096, 8192, 12288, 16384, 20480]);
    let timeouts = nodes[2].seen.timeouts.lock().expect("lock").clone();
    assert_eq!(timeouts.len(), 1, "the deadline went to the node");
    assert!(!nodes[2].seen.stream_dropped.load(Ordering::SeqCst));
    drop(stream);
    let mut waited = 0;
    while !nodes[2].seen.stream_dropped.load(Ordering::SeqCst) {
        assert!(waited < 500, "the node's stream outlived the caller's");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    // A deadline that passes ends the stream at the node too.
    nodes[2].seen.stream_dropped.store(false, Ordering::SeqCst);
    let target = nodes[2].snapshots[0].clone();
    let mut r = Request::new(csi::GetMetadataDeltaRequest {
        base_snapshot_id: target.clone(),
        target_snapshot_id: target,
        ..Default::default()
    });
    r.set_timeout(Duration::from_millis(300));
    let mut stream = client
        .get_metadata_delta(r)
        .await
        .expect("stream")
        .into_inner();
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = end.expect_err("the deadline ends it");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    let mut waited = 0;
    while !nodes[2].seen.stream_dropped.load(Ordering::SeqCst) {
        assert!(waited < 500, "the node's stream outlived the deadline");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
}

#[tokio::test]
async fn relayed_streams_keep_every_message_and_the_nodes_status_named_with_the_node() {
    let pki = Pki::new("test CA");
    let mut node = test_node("node-a", 1, false);
    node.delta = Some(DeltaShape {
        capacity: 10 << 20,
        extent: 1 << 20,
        per_message: 3,
        end: Some(Code::DataLoss),
    });
    let addr = serve_node(node.clone(), node_cert(&pki, "node-a"), &pki.ca_pem).await;
    let c = controller(&pki, &[("node-a".to_owned(), addr)]).await;
    let mut client = csi::snapshot_metadata_client::SnapshotMetadataClient::new(c.channel.clone());
    let mut stream = client
        .get_metadata_delta(csi::GetMetadataDeltaRequest {
            base_snapshot_id: node.snapshots[0].clone(),
            target_snapshot_id: node.snapshots[0].clone(),
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner();
    let mut messages = vec![];
    let end = loop {
        match stream.message().await {
            Ok(Some(m)) => messages.push(m),
            other => break other,
        }
    };
    // Passed on as the node encoded them: each message whole, in order.
    let offsets: Vec<Vec<i64>> = messages
        .iter()
        .map(|m| {
            m.block_metadata
                .iter()
                .map(|b| b.byte_offset >> 20)
                .collect()
        })
        .collect();
    assert_eq!(
        offsets,
        [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![9]]
    );
    assert!(messages
        .iter()
        .all(|m| m.volume_capacity_bytes == 10 << 20 && m.block_metadata[0].size_bytes == 1 << 20));
    let status = end.expect_err("the node's status ends it");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().contains("node-a"), "{status:?}");

    // A status before any message, and bad requests, as for a unary call.
    let status = client
        .get_metadata_allocated(csi::GetMetadataAllocatedRequest {
            snapshot_id: node.snapshots[0].clone(),
            ..Default::default()
        })
        .await
        .expect_err("the test node does not offer it");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("node-a"), "{status:?}");
    let status = client
        .get_metadata_delta(csi::GetMetadataDeltaRequest {
            target_snapshot_id: node.snapshots[0].clone(),
            ..Default::default()
        })
        .await
        .expect_err("no base");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = client
        .get_metadata_allocated(csi::GetMetadataAllocatedRequest {
            snapshot_id: "not-ours".into(),
            ..Default::default()
        })
        .await
        .expect_err("not ours");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn the_reconciler_asks_the_nodes_through_the_router_and_every_call_is_counted() {
    let pki = Pki::new("test CA");
    let (nodes, directory) = three_nodes(&pki, 3).await;
    let c = controller(&pki, &directory).await;
    let routed = RoutedSnapshots::new(std::sync::Arc::clone(&c.nodes));
    assert_eq!(routed.nodes(), ["node-a", "node-b", "node-c"]);

    let b = &nodes[1];
    let (held, lost) = (&b.snapshots[0], &b.snapshots[1]);
    b.lost.lock().unwrap().insert(lost.clone(), "overflow");
    assert_eq!(routed.snapshot(held).await.unwrap(), SnapshotState::Ready);
    assert_eq!(
        routed.snapshot(lost).await.unwrap(),
        SnapshotState::Lost(LostReason::Overflow)
    );
    let unknown = SnapshotId {
        volume: "v9".into(),
        node: "node-b".into(),
        kernel: Default::default(),
        generation: Default::default(),
        number: 1,
    }
    .to_string();
    assert_eq!(
        routed.snapshot(&unknown).await.unwrap(),
        SnapshotState::Lost(LostReason::Gone),
        "NOT_FOUND: the node has no record"
    );
    let elsewhere = unknown.replace("node-b", "node-z");
    assert!(matches!(
        routed.snapshot(&elsewhere).await,
        Err(NodeError::Unavailable { node, .. }) if node == "node-z"
    ));

    // Listed over pages (of 500: all three at once here), lost ones too.
    let listed = routed.list("node-b").await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        b.snapshots.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(listed.iter().all(
        |s| s.created == std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    ));

    let group = GroupSnapshotId {
        kernel: Default::default(),
        node: "node-c".into(),
    }
    .to_string();
    routed.delete(held).await.unwrap();
    routed.delete(&group).await.unwrap();
    assert_eq!(
        b.seen.deleted.lock().unwrap().as_slice(),
        std::slice::from_ref(held)
    );
    assert_eq!(
        *nodes[2].seen.deleted.lock().unwrap(),
        [group],
        "a group id is deleted with DeleteVolumeGroupSnapshot"
    );
    // Each reconciler call carries its own deadline.
    assert!(!b.seen.timeouts.lock().unwrap().is_empty());

    let text = blksnap_csi_driver::metrics::encode(&c.registry);
    let count = |node: &str, method: &str, code: &str| {
        let key = format!(
            "blksnap_csi_controller_node_call_duration_seconds_count{{node=\"{node}\",method=\"{method}\",code=\"{code}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .map(|n| n.parse::<u64>().expect("a count"))
    };
    assert_eq!(count("node-b", "GetSnapshot", "OK"), Some(2), "{text}");
    assert_eq!(
        count("node-b", "GetSnapshot", "NotFound"),
        Some(1),
        "{text}"
    );
    assert_eq!(count("node-b", "ListSnapshots", "OK"), Some(1), "{text}");
    assert_eq!(count("node-b", "DeleteSnapshot", "OK"), Some(1), "{text}");
    assert_eq!(
        count("node-c", "DeleteVolumeGroupSnapshot", "OK"),
        Some(1),
        "{text}"
    );
    assert!(
        !text.contains("node-z"),
        "an unknown node is no label: {text}"
    );
}
