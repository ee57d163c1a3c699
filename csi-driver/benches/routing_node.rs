//! The router's cost against a real node plugin: CreateSnapshot (and
//! DeleteSnapshot) of a real volume, through the controller and straight to
//! the node's API over the same mutual TLS, in alternating calls. Unlike
//! `routing`, whose in-process nodes answer at once, each call here takes a
//! kernel snapshot (freeze, take, image device) and writes the node's state,
//! so the ratio is what a cluster sees.
//!
//! Run in the VM guest beside the node plugin and blksnap-csi-driver by
//! `csi-driver/benches/run-vm`, which sets:
//!
//! - `BLKSNAP_BENCH_CONTROLLER`: the controller's CSI socket path;
//! - `BLKSNAP_BENCH_NODE_API`: the node API's `host:port`;
//! - `BLKSNAP_BENCH_NODE`: the node's name;
//! - `BLKSNAP_BENCH_TLS`: a directory with `ca.crt`, `controller.crt` and
//!   `controller.key`;
//! - `BLKSNAP_BENCH_CALLS` (optional): calls per path (default 200).

use std::time::{Duration, Instant};

use blksnap_node_api::identity::node_server_name;
use csi::controller_client::ControllerClient;
use csi_proto::csi::v1 as csi;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const DRIVER: &str = "blksnap.csi.io";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (see the file's header)"))
}

fn main() {
    let calls = std::env::var("BLKSNAP_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200usize);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(calls));
}

async fn channels() -> (Channel, Channel) {
    let tls = env("BLKSNAP_BENCH_TLS");
    let read =
        |f: &str| std::fs::read(format!("{tls}/{f}")).unwrap_or_else(|e| panic!("{tls}/{f}: {e}"));
    let node = env("BLKSNAP_BENCH_NODE");
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.crt")))
        .identity(Identity::from_pem(
            read("controller.crt"),
            read("controller.key"),
        ))
        .domain_name(node_server_name(&node, DRIVER));
    let direct = Endpoint::from_shared(format!("https://{}", env("BLKSNAP_BENCH_NODE_API")))
        .expect("endpoint")
        .tls_config(client_tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect to the node API");
    let controller = Endpoint::from_shared(format!("unix://{}", env("BLKSNAP_BENCH_CONTROLLER")))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the controller");
    (direct, controller)
}

/// One CreateSnapshot and its DeleteSnapshot; their latencies.
async fn snapshot_once(
    client: &mut ControllerClient<Channel>,
    volume: &str,
    name: String,
) -> (Duration, Duration) {
    let start = Instant::now();
    let snapshot = client
        .create_snapshot(csi::CreateSnapshotRequest {
            name,
            source_volume_id: volume.into(),
            ..Default::default()
        })
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .expect("a snapshot");
    let created = start.elapsed();
    let start = Instant::now();
    client
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: snapshot.snapshot_id,
            ..Default::default()
        })
        .await
        .expect("DeleteSnapshot");
    (created, start.elapsed())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(calls: usize) {
    let (direct, controller) = channels().await;
    let mut direct = ControllerClient::new(direct);
    let mut controller = ControllerClient::new(controller);
    let volume = controller
        .create_volume(csi::CreateVolumeRequest {
            name: "routing-bench".into(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 64 << 20,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![csi::VolumeCapability {
                access_type: Some(csi::volume_capability::AccessType::Block(
                    csi::volume_capability::BlockVolume {},
                )),
                access_mode: Some(csi::volume_capability::AccessMode {
                    mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
                }),
            }],
            ..Default::default()
        })
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("a volume")
        .volume_id;
    println!("routing benchmark against the real node plugin: {calls} calls per path");

    // Warm both paths (connections, TLS sessions, the node's state files).
    for i in 0..calls.div_ceil(10) {
        snapshot_once(&mut direct, &volume, format!("warm-d-{i}")).await;
        snapshot_once(&mut controller, &volume, format!("warm-c-{i}")).await;
    }
    // Alternating calls, so both paths see the same load over time.
    let (mut create_d, mut delete_d, mut create_c, mut delete_c) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..calls {
        let (c, d) = snapshot_once(&mut direct, &volume, format!("d-{i}")).await;
        create_d.push(c);
        delete_d.push(d);
        let (c, d) = snapshot_once(&mut controller, &volume, format!("c-{i}")).await;
        create_c.push(c);
        delete_c.push(d);
    }
    let sum = |v: &[Duration]| v.iter().sum::<Duration>();
    for (what, d, c) in [
        ("CreateSnapshot", &mut create_d, &mut create_c),
        ("DeleteSnapshot", &mut delete_d, &mut delete_c),
    ] {
        let (mean_d, mean_c) = (sum(d) / calls as u32, sum(c) / calls as u32);
        let (med_d, med_c) = (median(d), median(c));
        println!(
            "{what} of a real volume: direct median {:.2} ms (mean {:.2}), through the \
             controller median {:.2} ms (mean {:.2}): ratio {:.3}x of medians, {:.3}x of means",
            ms(med_d),
            ms(mean_d),
            ms(med_c),
            ms(mean_c),
            med_c.as_secs_f64() / med_d.as_secs_f64(),
            mean_c.as_secs_f64() / mean_d.as_secs_f64()
        );
    }
    controller
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: volume,
            ..Default::default()
        })
        .await
        .expect("DeleteVolume");
}
