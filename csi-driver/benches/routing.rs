//! The router's cost, side by side in one run: each call made through the
//! controller (its unix socket, routing, the mutual-TLS channel to the
//! node) and the same call made directly to the node's API over the same
//! mutual TLS. The nodes are the in-process node APIs of the host tests
//! (`tests/node_api`), which answer at once: what is measured is the
//! controller's own cost, an upper bound of the ratio against a real node
//! plugin, whose CreateSnapshot takes a kernel snapshot and writes its
//! state.
//!
//! - CreateSnapshot: latency per call, interleaved rounds; and the same
//!   call to a test node served bare on a unix socket (no TLS, no
//!   routing): the cost of one more gRPC hop, which any router adds.
//! - GetMetadataDelta: one whole delta of a 1 TiB volume (every MiB
//!   changed, 1024 extents a message), throughput.
//! - ListSnapshots without a filter over 1 to 100 nodes (10 snapshots
//!   each), against one direct ListSnapshots of one node.
//!
//! `cargo bench -p blksnap-csi-driver --bench routing`; BLKSNAP_BENCH_CALLS
//! sets the calls per measurement (default 2000).

#[path = "../tests/node_api/mod.rs"]
mod node_api;

use std::time::{Duration, Instant};

use blksnap_node_api::identity::{controller_name, node_server_name};
use csi::controller_client::ControllerClient;
use csi::snapshot_metadata_client::SnapshotMetadataClient;
use csi_proto::csi::v1 as csi;
use node_api::{
    controller, identity, node_cert, serve_node, test_node, vol, DeltaShape, Pki, Usage, DRIVER,
};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

fn main() {
    let calls = std::env::var("BLKSNAP_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000usize);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(calls));
}

/// A channel straight to `node`'s API, as the controller makes one.
async fn direct(pki: &Pki, node: &str, addr: &str) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .identity(identity(pki, &controller_name(DRIVER), Usage::Client))
        .domain_name(node_server_name(node, DRIVER));
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect")
}

/// A test node served on a unix socket without TLS and without a
/// router: one gRPC hop of the kind the controller adds in front of a
/// node, and nothing else.
async fn bare_hop() -> (tempfile::TempDir, Channel) {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("bare.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    let node = test_node("node-0", 10, false);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(csi::controller_server::ControllerServer::new(node))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let channel = Endpoint::from_shared(format!("unix://{}", socket.display()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    (dir, channel)
}

/// This process's CPU time so far (user and system, all threads), from
/// /proc/self/stat in clock ticks of 1/100 s (Linux's USER_HZ). Unlike
/// wall time it hardly moves with what else the machine runs, and as the
/// nodes, the router and the client are all in this process, CPU time
/// per unit of work compares the two paths even on a loaded machine.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_name = &stat[stat.rfind(')').expect("stat") + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15, the 12th and 13th after the name.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

fn micros(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

async fn create_snapshots(channel: &Channel, n: usize) -> Duration {
    let mut client = ControllerClient::new(channel.clone());
    let start = Instant::now();
    for i in 0..n {
        client
            .create_snapshot(csi::CreateSnapshotRequest {
                name: format!("snap-{i}"),
                source_volume_id: vol("v1", "node-0"),
                ..Default::default()
            })
            .await
            .expect("CreateSnapshot");
    }
    start.elapsed()
}

/// One whole delta stream; returns its time and the extents it held.
async fn delta(channel: &Channel) -> (Duration, usize) {
    let mut client = SnapshotMetadataClient::new(channel.clone());
    let start = Instant::now();
    let mut stream = client
        .get_metadata_delta(csi::GetMetadataDeltaRequest {
            base_snapshot_id: "base".into(),
            target_snapshot_id: node_api::snapshot_of("node-0", 0),
            ..Default::default()
        })
        .await
        .expect("GetMetadataDelta")
        .into_inner();
    let mut extents = 0;
    while let Some(m) = stream.next().await {
        extents += m.expect("message").block_metadata.len();
    }
    (start.elapsed(), extents)
}

async fn list(channel: &Channel, n: usize) -> (Duration, usize) {
    let mut client = ControllerClient::new(channel.clone());
    let start = Instant::now();
    let mut entries = 0;
    for _ in 0..n {
        entries = client
            .list_snapshots(csi::ListSnapshotsRequest::default())
            .await
            .expect("ListSnapshots")
            .into_inner()
            .entries
            .len();
    }
    (start.elapsed(), entries)
}

async fn run(calls: usize) {
    let pki = Pki::new("bench CA");
    let mut nodes = Vec::new();
    for i in 0..100 {
        let name = format!("node-{i}");
        let mut node = test_node(&name, 10, false);
        node.delta = Some(DeltaShape {
            capacity: 1 << 40,
            extent: 1 << 20,
            per_message: 1024,
            end: None,
        });
        let addr = serve_node(node.clone(), node_cert(&pki, &name), &pki.ca_pem).await;
        nodes.push((name, addr));
    }
    let one = controller(&pki, &nodes[..1]).await;
    let straight = direct(&pki, &nodes[0].0, &nodes[0].1).await;
    let (_hop_dir, hop) = bare_hop().await;
    println!("routing benchmark: {calls} calls per measurement, in-process nodes over mutual TLS");

    // Warm both paths (connections, TLS sessions, allocator).
    create_snapshots(&one.channel, calls / 10).await;
    create_snapshots(&straight, calls / 10).await;
    create_snapshots(&hop, calls / 10).await;
    let (mut via, mut to, mut bare) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut via_cpu, mut to_cpu) = (Duration::ZERO, Duration::ZERO);
    let rounds = 10;
    for _ in 0..rounds {
        let c = cpu_time();
        via += create_snapshots(&one.channel, calls / rounds).await;
        let c2 = cpu_time();
        to += create_snapshots(&straight, calls / rounds).await;
        to_cpu += cpu_time() - c2;
        via_cpu += c2 - c;
        bare += create_snapshots(&hop, calls / rounds).await;
    }
    let n = calls / rounds * rounds;
    let (v, d, h) = (micros(via, n), micros(to, n), micros(bare, n));
    println!(
        "CreateSnapshot: direct {d:.0} µs/call, through the controller {v:.0} µs/call: \
         ratio {:.2}x, {:.0} µs added per call; a bare unix-socket hop alone {h:.0} µs/call \
         (direct plus that hop: {:.2}x)",
        v / d,
        v - d,
        (d + h) / d
    );
    println!(
        "CreateSnapshot, CPU time: direct {:.0} µs/call, through the controller {:.0} µs/call: \
         ratio {:.2}x",
        micros(to_cpu, n),
        micros(via_cpu, n),
        via_cpu.as_secs_f64() / to_cpu.as_secs_f64()
    );

    delta(&one.channel).await;
    delta(&straight).await;
    let (mut via, mut to, mut extents) = (Duration::ZERO, Duration::ZERO, 0);
    let (mut via_cpu, mut to_cpu) = (Duration::ZERO, Duration::ZERO);
    let streams = 5;
    for _ in 0..streams {
        let c = cpu_time();
        let (t, e) = delta(&one.channel).await;
        let c2 = cpu_time();
        via += t;
        extents = e;
        to += delta(&straight).await.0;
        to_cpu += cpu_time() - c2;
        via_cpu += c2 - c;
    }
    let rate = |t: Duration| (extents * streams) as f64 / t.as_secs_f64();
    println!(
        "GetMetadataDelta of 1 TiB ({extents} extents of 1 MiB, {} messages): direct {:.0} \
         extents/s ({:.0} ms a stream), through the controller {:.0} extents/s ({:.0} ms): \
         throughput ratio {:.2}",
        extents.div_ceil(1024),
        rate(to),
        to.as_secs_f64() * 1000.0 / streams as f64,
        rate(via),
        via.as_secs_f64() * 1000.0 / streams as f64,
        rate(via) / rate(to)
    );
    println!(
        "GetMetadataDelta, CPU time: direct {:.0} ms a stream, through the controller {:.0} ms: \
         direct/through {:.2} (the throughput ratio where CPU is the limit)",
        to_cpu.as_secs_f64() * 1000.0 / streams as f64,
        via_cpu.as_secs_f64() * 1000.0 / streams as f64,
        to_cpu.as_secs_f64() / via_cpu.as_secs_f64()
    );

    let lists = (calls / 10).max(10);
    list(&straight, lists / 10).await;
    let (t, _) = list(&straight, lists).await;
    let base = micros(t, lists);
    println!(
        "ListSnapshots of one node, direct: {base:.0} µs/call; without a filter through \
         the controller ({lists} calls each):"
    );
    for count in [1, 10, 25, 50, 100] {
        let c = controller(&pki, &nodes[..count]).await;
        list(&c.channel, lists / 10).await;
        let (t, entries) = list(&c.channel, lists).await;
        assert_eq!(entries, count * 10, "every node's snapshots");
        let us = micros(t, lists);
        println!(
            "  {count:>3} nodes: {us:>7.0} µs/call, {:>6.2}x one direct node, {:>5.1} µs per node",
            us / base,
            us / count as f64
        );
    }
}
