//! The node plugin's benchmark, inside the VM harness.
//!
//! Run with `tests/bench/plugin`, which builds this binary (`cargo bench
//! --no-run`), boots a kernel through `tests/vm/run` with the module
//! loaded and runs it there as root with `BLKSNAP_TEST_DISKS` (data A,
//! data B, storage). It writes its raw samples to `<out>/results.json`; the
//! driver turns them into the table. Nothing here judges a timing: the run
//! fails only when a step cannot run or a result is wrong.
//!
//! What it measures, in one process and one boot:
//!
//! * **Snapshot latency**: CreateSnapshot then DeleteSnapshot through the
//!   real node API (TCP, mutual TLS, tonic client), the same two calls on
//!   the [`Plugin`] directly (no gRPC), and the bare ioctls on the same
//!   devices (storage file, create, add, take, destroy), for a pool
//!   volume, a static virtio disk, a 1 TiB static `null_blk` device and a
//!   group of three pool volumes; the three paths take turns.
//! * **GetMetadataDelta over 1 TiB**: snapshot A of the `null_blk` device,
//!   1% of it written in scattered runs of 4 KiB to 4 MiB (seeded, direct
//!   I/O, nothing stored), snapshot B; the delta streamed through the
//!   node API, against [`FixedBaseline`]: the same delta reported as
//!   FIXED_LENGTH 4 KiB tuples over the same transport. The delta must be
//!   exactly the written bytes rounded out to the tracking block.

use std::collections::HashMap;
use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blksnap::Control;
use blksnap_node_api::dev::{Pki, Usage};
use blksnap_node_plugin::backend;
use blksnap_node_plugin::controller::ControllerService;
use blksnap_node_plugin::controller_identity::ControllerOnly;
use blksnap_node_plugin::group_controller::GroupControllerService;
use blksnap_node_plugin::identity::IdentityService;
use blksnap_node_plugin::kernel::{Kernel, Module};
use blksnap_node_plugin::plugin::{CreateVolume, Plugin, Settings};
use blksnap_node_plugin::server::{self, NodeApi, RpcLogLayer};
use blksnap_node_plugin::snapshot_metadata::{
    self, MetadataStream, SnapshotMetadataService, DEFAULT_BATCH,
};
use blksnap_node_plugin::state::{BackendKind, VolumeRecord};
use blksnap_node_plugin::{ranges, storage};
use clap::Parser;
use csi::controller_client::ControllerClient;
use csi::group_controller_client::GroupControllerClient;
use csi::snapshot_metadata_client::SnapshotMetadataClient;
use csi::snapshot_metadata_server::{SnapshotMetadata, SnapshotMetadataServer};
use csi_proto::csi::v1 as csi;
use prost::Message as _;
use serde::Serialize;
use tokio::runtime::Runtime;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use tonic::{Request, Response, Status};

#[path = "../tests/guest/mod.rs"]
mod guest;

type Fallible<T> = Result<T, Box<dyn Error + Send + Sync>>;

const MIB: u64 = 1 << 20;
const TIB: u64 = 1 << 40;
const NODE: &str = "bench-node";
/// Where the guest's scratch file systems and state go (a RAM overlay).
const ROOT: &str = "/tmp/blksnap-plugin-bench";
/// The configfs directory, and device name on newer kernels, of the 1 TiB
/// `null_blk` device.
const NULLB: &str = "bsbplugin";
/// The tuple size of the FIXED_LENGTH baseline.
const FIXED: u64 = 4096;

#[derive(Parser, Debug)]
#[command(about = "The node plugin's benchmark; run it through tests/bench/plugin")]
struct Args {
    /// Directory for results.json.
    #[arg(long)]
    out: PathBuf,
    /// CreateSnapshot/DeleteSnapshot pairs per path and case.
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Timed streams of the delta per report type.
    #[arg(long, default_value_t = 5)]
    delta_reps: usize,
    /// Percent of the 1 TiB device written between the two snapshots.
    #[arg(long, default_value_t = 1.0)]
    changed_percent: f64,
    /// Seed of the scattered writes.
    #[arg(long, default_value_t = 4242)]
    seed: u64,
}

fn say(t0: Instant, msg: impl std::fmt::Display) {
    println!("bench [{:6.1}s] {msg}", t0.elapsed().as_secs_f64());
    let _ = std::io::stdout().flush();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn open_rw(path: &Path) -> Fallible<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()).into())
}

// ---------------------------------------------------------------------------
// Results, as the driver reads them.

/// Samples of one latency case, in milliseconds, one per repetition.
#[derive(Serialize, Default)]
struct LatencyCase {
    key: &'static str,
    label: String,
    volumes: usize,
    capacity: u64,
    /// CreateSnapshot (or CreateVolumeGroupSnapshot) over the node API.
    grpc_create_ms: Vec<f64>,
    grpc_delete_ms: Vec<f64>,
    /// The same calls on the plugin, without gRPC.
    plugin_create_ms: Vec<f64>,
    plugin_delete_ms: Vec<f64>,
    /// Storage file, snapshot_create, snapshot_add per device, take.
    ioctl_seq_ms: Vec<f64>,
    ioctl_take_ms: Vec<f64>,
    ioctl_destroy_ms: Vec<f64>,
}

/// What one full stream of a delta delivered.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
struct StreamCount {
    messages: u64,
    tuples: u64,
}

#[derive(Serialize, Default)]
struct StreamRuns {
    /// Wall time of each timed stream, call to last message.
    ms: Vec<f64>,
    messages: u64,
    tuples: u64,
    /// Sum of the messages' encoded sizes plus gRPC's 5-byte frame header
    /// each: the payload before HTTP/2 and TLS framing.
    bytes: u64,
}

#[derive(Serialize, Default)]
struct DeltaResults {
    device: String,
    capacity: u64,
    block_size: u32,
    seed: u64,
    runs: u64,
    /// Bytes written, counting overlapping runs twice, and their union.
    written_bytes: u64,
    written_union_bytes: u64,
    /// 4 KiB blocks of the union: what an exact 4 KiB tracker would report.
    written_4k_blocks: u64,
    /// Bytes the delta covers: the union rounded out to the block size.
    delta_bytes: u64,
    delta_ranges: u64,
    write_s: f64,
    create_base_ms: f64,
    create_target_ms: f64,
    variable: StreamRuns,
    fixed: StreamRuns,
    allocated_ms: f64,
    allocated_tuples: u64,
}

#[derive(Serialize, Default)]
struct Results {
    kernel: String,
    cpus: usize,
    reps: usize,
    delta_reps: usize,
    changed_percent: f64,
    latency: Vec<LatencyCase>,
    /// One durable write of a plugin record (write, fsync, rename, fsync
    /// of the directory), once per repetition: what a take adds per record.
    record_write_ms: Vec<f64>,
    delta: Option<DeltaResults>,
    /// Correctness checks that passed, for the record.
    checks: Vec<String>,
    /// Steps that could not run or results that were wrong.
    errors: Vec<String>,
}

// ---------------------------------------------------------------------------
// Mutual TLS, as the cluster's controller and the node API use it.

/// A CA, the node API's certificate, and a client certificate, in PEM.
struct Tls {
    ca: String,
    server: (String, String),
    client: (String, String),
}

impl Tls {
    fn new() -> Tls {
        let pki = Pki::new("blksnap-csi bench CA");
        Tls {
            server: pki.leaf_pem("localhost", Usage::Server),
            client: pki.leaf_pem(
                &blksnap_node_api::identity::controller_name("blksnap.csi.io"),
                Usage::Client,
            ),
            ca: pki.ca_pem,
        }
    }

    /// Writes the server side where `server::tls_config` reads it, so the
    /// plugin's own loading path is used.
    fn server_tls(&self, dir: &Path) -> Fallible<tonic::transport::ServerTlsConfig> {
        let (cert, key, ca) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
        std::fs::write(&cert, &self.server.0)?;
        std::fs::write(&key, &self.server.1)?;
        std::fs::write(&ca, &self.ca)?;
        Ok(server::tls_config(&cert, &key, &ca)?)
    }

    async fn connect(&self, addr: std::net::SocketAddr) -> Fallible<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.client.0, &self.client.1))
            .domain_name("localhost");
        Ok(Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await?)
    }
}

// ---------------------------------------------------------------------------
// The FIXED_LENGTH baseline.

/// The comparison, not a feature: the plugin's own delta (the same call,
/// so the same ranges and the same work to find them), reported the way a
/// FIXED_LENGTH driver would, one 4 KiB tuple per block, in messages of
/// `max_results` tuples built as the stream is read.
struct FixedBaseline {
    plugin: Arc<Plugin>,
}

#[tonic::async_trait]
impl SnapshotMetadata for FixedBaseline {
    type GetMetadataAllocatedStream = MetadataStream<csi::GetMetadataAllocatedResponse>;
    type GetMetadataDeltaStream = MetadataStream<csi::GetMetadataDeltaResponse>;

    async fn get_metadata_allocated(
        &self,
        _request: Request<csi::GetMetadataAllocatedRequest>,
    ) -> Result<Response<Self::GetMetadataAllocatedStream>, Status> {
        Err(Status::unimplemented("the baseline reports deltas only"))
    }

    async fn get_metadata_delta(
        &self,
        request: Request<csi::GetMetadataDeltaRequest>,
    ) -> Result<Response<Self::GetMetadataDeltaStream>, Status> {
        let r = request.into_inner();
        let batch = snapshot_metadata::batch(r.max_results).map_err(Status::from)?;
        let plugin = Arc::clone(&self.plugin);
        let page = server::blocking(move || {
            plugin.metadata_delta(
                &r.base_snapshot_id,
                &r.target_snapshot_id,
                r.starting_offset,
            )
        })
        .await?;
        let capacity = i64::try_from(page.capacity).unwrap_or(i64::MAX);
        let mut blocks = page
            .ranges
            .into_iter()
            .flat_map(|r| (r.start..r.end).step_by(FIXED as usize));
        // The first message goes out even when empty: it carries the
        // capacity.
        let mut first = true;
        let messages = std::iter::from_fn(move || {
            let tuples: Vec<csi::BlockMetadata> = blocks
                .by_ref()
                .take(batch)
                .map(|offset| csi::BlockMetadata {
                    byte_offset: offset as i64,
                    size_bytes: FIXED as i64,
                })
                .collect();
            if tuples.is_empty() && !first {
                return None;
            }
            first = false;
            Some(Ok(csi::GetMetadataDeltaResponse {
                block_metadata_type: csi::BlockMetadataType::FixedLength as i32,
                volume_capacity_bytes: capacity,
                block_metadata: tuples,
            }))
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }
}

// ---------------------------------------------------------------------------
// The guest: file systems, the 1 TiB device, the plugin and its servers.

/// A 1 TiB `null_blk` device that stores nothing (`memory_backed=0`), made
/// through configfs; removed on drop.
struct NullBlk {
    dir: PathBuf,
    dev: PathBuf,
}

impl NullBlk {
    fn new() -> Fallible<NullBlk> {
        let cfg = Path::new("/sys/kernel/config");
        if !cfg.join("nullb").is_dir() {
            guest::run("modprobe", &["null_blk", "nr_devices=0"])?;
            // The guest does not mount configfs by itself.
            if !cfg.join("nullb").is_dir() {
                guest::run("mount", &["-t", "configfs", "none", "/sys/kernel/config"])?;
            }
        }
        let dir = cfg.join("nullb").join(NULLB);
        std::fs::create_dir(&dir)?;
        let mut me = NullBlk {
            dir,
            dev: PathBuf::new(),
        };
        for (key, value) in [
            ("size", (TIB / MIB).to_string()),
            ("memory_backed", "0".into()),
            ("blocksize", "4096".into()),
            ("power", "1".into()),
        ] {
            std::fs::write(me.dir.join(key), value)?;
        }
        let index = std::fs::read_to_string(me.dir.join("index"))?;
        // Newer kernels name a configfs device after its directory.
        let names = [
            PathBuf::from("/dev").join(NULLB),
            PathBuf::from(format!("/dev/nullb{}", index.trim())),
        ];
        let start = Instant::now();
        loop {
            if let Some(dev) = names.iter().find(|n| n.exists()) {
                me.dev = dev.clone();
                return Ok(me);
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("none of {names:?} appeared").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NullBlk {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("power"), "0");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The scratch file systems and devices of the run. Dropping it leaves the
/// module as the harness expects before `rmmod`: no snapshots, no trackers.
struct Guest {
    control: Arc<Control>,
    root: PathBuf,
    data_b: PathBuf,
    nullb: Option<NullBlk>,
}

impl Guest {
    fn new() -> Fallible<Guest> {
        if !nix::unistd::geteuid().is_root() {
            return Err("run as root in the VM (tests/bench/plugin)".into());
        }
        let disks = guest::disks()?;
        let _ = Command::new("modprobe").arg("loop").status();
        let control = Arc::new(Control::open()?);
        let root = PathBuf::from(ROOT);
        let _ = std::fs::remove_dir_all(&root);
        for sub in ["pool", "disk"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let mut guest = Guest {
            control,
            root,
            data_b: disks[1].clone(),
            nullb: None,
        };
        // The pool on data A; difference storage and the plugin's records
        // on the storage disk, so that record fsyncs cost what a disk costs.
        for (dev, dir) in [(&disks[0], "pool"), (&disks[2], "disk")] {
            guest::mkfs_mount(dev, &guest.root.join(dir))?;
        }
        for sub in ["disk/diff", "disk/state", "disk/tls"] {
            std::fs::create_dir_all(guest.root.join(sub))?;
        }
        guest.nullb = Some(NullBlk::new()?);
        Ok(guest)
    }

    fn nullb(&self) -> &Path {
        self.nullb
            .as_ref()
            .map_or(Path::new(""), |n| n.dev.as_path())
    }

    fn storage_dir(&self) -> PathBuf {
        self.root.join("disk/diff")
    }

    fn plugin(&self) -> Fallible<Arc<Plugin>> {
        let backends = backend::configured(
            Some(&self.root.join("pool/volumes")),
            &[
                format!("disk-b={}", self.data_b.display()),
                format!("tib={}", self.nullb().display()),
            ],
        )?;
        Ok(Plugin::start(
            Settings {
                node_id: NODE.into(),
                storage_dir: self.storage_dir(),
                default_storage_percent: 50,
                default_backend: BackendKind::Pool,
                collect_orphans: true,
            },
            Arc::new(Module::new(Control::open()?)?) as Arc<dyn Kernel>,
            backends,
            &self.root.join("disk/state"),
        )?)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        guest::cleanup(&self.control, &self.root, &[&self.data_b, self.nullb()]);
        self.nullb = None;
    }
}

/// The plugin served on its node API, the baseline beside it, and clients.
struct Served {
    plugin: Arc<Plugin>,
    controller: ControllerClient<Channel>,
    groups: GroupControllerClient<Channel>,
    metadata: SnapshotMetadataClient<Channel>,
    baseline: SnapshotMetadataClient<Channel>,
}

impl Served {
    fn start(rt: &Runtime, guest: &Guest, plugin: Arc<Plugin>) -> Fallible<Served> {
        let tls_files = Tls::new();
        let tls_dir = guest.root.join("disk/tls");
        let api = NodeApi {
            clients: ControllerOnly::new("blksnap.csi.io")?,
            identity: IdentityService::new("blksnap.csi.io", Arc::clone(&plugin)),
            controller: ControllerService::new(Arc::clone(&plugin)),
            group_controller: GroupControllerService::new(Arc::clone(&plugin)),
            snapshot_metadata: SnapshotMetadataService::new(Arc::clone(&plugin)),
        };
        let tls = tls_files.server_tls(&tls_dir)?;
        let baseline_tls = tls.clone();
        let metrics = Arc::clone(&plugin.metrics);
        let baseline = FixedBaseline {
            plugin: Arc::clone(&plugin),
        };
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let m = Arc::clone(&metrics);
            tokio::spawn(async move {
                if let Err(e) =
                    server::serve_node_api(listener, tls, api, m, std::future::pending()).await
                {
                    eprintln!("bench: the node API stopped: {e}");
                }
            });
            // The baseline behind the same TLS and logging layer as the
            // node API, so only the report type differs.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let baseline_addr = listener.local_addr()?;
            let router = Server::builder()
                .tls_config(baseline_tls)?
                .layer(RpcLogLayer::new(metrics, "baseline"))
                .add_service(SnapshotMetadataServer::with_interceptor(
                    baseline,
                    ControllerOnly::new("blksnap.csi.io")?,
                ));
            tokio::spawn(async move {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    eprintln!("bench: the baseline server stopped: {e}");
                }
            });
            let channel = tls_files.connect(addr).await?;
            let baseline_channel = tls_files.connect(baseline_addr).await?;
            Ok::<_, Box<dyn Error + Send + Sync>>(Served {
                plugin,
                controller: ControllerClient::new(channel.clone()),
                groups: GroupControllerClient::new(channel.clone()),
                metadata: SnapshotMetadataClient::new(channel),
                baseline: SnapshotMetadataClient::new(baseline_channel),
            })
        })
    }
}

// ---------------------------------------------------------------------------
// Snapshot latency.

/// A latency case: one volume or a group, and its devices opened once for
/// the bare ioctls.
struct Case {
    vids: Vec<String>,
    devices: Vec<File>,
    /// Snapshot class parameters of every path: a storage limit the
    /// storage disk holds, as limits are reserved at the take (the default
    /// percentage of 1 TiB would not fit).
    params: HashMap<String, String>,
    /// The storage limit the plugin computes from them.
    limit: u64,
    result: LatencyCase,
}

impl Case {
    fn new(
        key: &'static str,
        label: String,
        plugin: &Plugin,
        vols: &[VolumeRecord],
    ) -> Fallible<Case> {
        let capacity: u64 = vols.iter().map(|v| v.capacity).sum();
        let params = HashMap::from([(storage::PARAM_LIMIT.to_owned(), "256Mi".to_owned())]);
        let mut devices = Vec::with_capacity(vols.len());
        for v in vols {
            devices.push(open_rw(&plugin.device_of(v)?)?);
        }
        Ok(Case {
            vids: vols
                .iter()
                .map(|v| plugin.volume_id(v).to_string())
                .collect(),
            devices,
            limit: storage::limit(&params, capacity, plugin.settings.default_storage_percent)?,
            params,
            result: LatencyCase {
                key,
                label,
                volumes: vols.len(),
                capacity,
                ..Default::default()
            },
        })
    }

    fn group(&self) -> bool {
        self.vids.len() > 1
    }

    fn grpc(&mut self, rt: &Runtime, s: &mut Served, name: &str) -> Fallible<()> {
        let t0 = Instant::now();
        let t1 = if self.group() {
            let g = rt
                .block_on(s.groups.create_volume_group_snapshot(
                    csi::CreateVolumeGroupSnapshotRequest {
                        name: name.into(),
                        source_volume_ids: self.vids.clone(),
                        parameters: self.params.clone(),
                        ..Default::default()
                    },
                ))?
                .into_inner()
                .group_snapshot
                .ok_or("no group snapshot in the response")?;
            let t1 = Instant::now();
            if !g.ready_to_use || g.snapshots.len() != self.vids.len() {
                return Err(format!("group snapshot {name} not ready: {g:?}").into());
            }
            rt.block_on(s.groups.delete_volume_group_snapshot(
                csi::DeleteVolumeGroupSnapshotRequest {
                    group_snapshot_id: g.group_snapshot_id,
                    ..Default::default()
                },
            ))?;
            t1
        } else {
            let snap = rt
                .block_on(s.controller.create_snapshot(csi::CreateSnapshotRequest {
                    source_volume_id: self.vids[0].clone(),
                    name: name.into(),
                    parameters: self.params.clone(),
                    ..Default::default()
                }))?
                .into_inner()
                .snapshot
                .ok_or("no snapshot in the response")?;
            let t1 = Instant::now();
            if !snap.ready_to_use || snap.size_bytes as u64 != self.result.capacity {
                return Err(format!("snapshot {name} not as expected: {snap:?}").into());
            }
            rt.block_on(s.controller.delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: snap.snapshot_id,
                ..Default::default()
            }))?;
            t1
        };
        self.result.grpc_create_ms.push(ms(t1 - t0));
        self.result.grpc_delete_ms.push(ms(t1.elapsed()));
        Ok(())
    }

    fn direct(&mut self, plugin: &Arc<Plugin>, name: &str) -> Fallible<()> {
        let t0 = Instant::now();
        let t1 = if self.group() {
            let (g, _) = plugin.create_group(name, &self.vids, &self.params)?;
            let t1 = Instant::now();
            plugin.delete_group(&plugin.group_id(&g).to_string(), &[])?;
            t1
        } else {
            let rec = plugin.create_snapshot(name, &self.vids[0].parse()?, &self.params)?;
            let t1 = Instant::now();
            plugin.delete_snapshot(&plugin.snapshot_id(&rec).to_string())?;
            t1
        };
        self.result.plugin_create_ms.push(ms(t1 - t0));
        self.result.plugin_delete_ms.push(ms(t1.elapsed()));
        Ok(())
    }

    fn ioctl(&mut self, control: &Control, storage_dir: &Path) -> Fallible<()> {
        let t0 = Instant::now();
        let file = storage::open_tmpfile(storage_dir, self.limit)?;
        let id = control.snapshot_create(&file, self.limit.div_ceil(512))?;
        let taken = self.add_and_take(control, id);
        // Destroyed whatever happened after the create, so that a failure
        // leaves nothing in the kernel.
        let t3 = Instant::now();
        control.snapshot_destroy(id)?;
        let destroy = t3.elapsed();
        let (t1, t2) = taken?;
        self.result.ioctl_seq_ms.push(ms(t2 - t0));
        self.result.ioctl_take_ms.push(ms(t2 - t1));
        self.result.ioctl_destroy_ms.push(ms(destroy));
        Ok(())
    }

    /// Adds the devices and takes; returns when the take started and ended.
    fn add_and_take(
        &self,
        control: &Control,
        id: blksnap::SnapshotId,
    ) -> Fallible<(Instant, Instant)> {
        for d in &self.devices {
            control.snapshot_add(id, d)?;
        }
        let t1 = Instant::now();
        control.snapshot_take(id)?;
        let t2 = Instant::now();
        if control.snapshot_info(&self.devices[0])?.image.is_none() {
            return Err("no snapshot image after the bare take".into());
        }
        Ok((t1, t2))
    }
}

/// Fills the first `len` bytes of a volume once, so that the pool file has
/// extents for the plugin to list at take, as a used volume would.
fn prefill(plugin: &Plugin, vol: &VolumeRecord, len: u64) -> Fallible<()> {
    let dev = open_rw(&plugin.device_of(vol)?)?;
    let buf = vec![0x5a_u8; MIB as usize];
    for off in (0..len.min(vol.capacity)).step_by(MIB as usize) {
        dev.write_all_at(&buf, off)?;
    }
    dev.sync_all()?;
    Ok(())
}

/// Runs every case through the three paths, `reps` times, rotating the
/// order of cases and of paths from one repetition to the next so that a
/// change of the host's load spreads over all of them.
fn latency(
    t0: Instant,
    rt: &Runtime,
    guest: &Guest,
    s: &mut Served,
    cases: &mut [Case],
    reps: usize,
    record_write_ms: &mut Vec<f64>,
) -> Fallible<()> {
    let storage_dir = guest.storage_dir();
    // A record rewritten unchanged: the cost of the state store alone.
    let record = s
        .plugin
        .state
        .read(|t| t.volumes.values().next().cloned())
        .ok_or("the plugin has no volume record")?;
    for rep in 0..reps {
        let t = Instant::now();
        s.plugin.state.put(&record)?;
        record_write_ms.push(ms(t.elapsed()));
        let n = cases.len();
        for k in 0..n {
            let case = &mut cases[(rep + k) % n];
            for p in 0..3 {
                let name = format!("lat-{}-{rep}-{p}", case.result.key);
                match (rep + p) % 3 {
                    0 => case.grpc(rt, s, &name),
                    1 => case.direct(&s.plugin, &name),
                    _ => case.ioctl(&guest.control, &storage_dir),
                }
                .map_err(|e| format!("{} (repetition {rep}): {e}", case.result.label))?;
            }
        }
        if rep % 5 == 4 || rep + 1 == reps {
            say(t0, format!("latency: {} of {reps} repetitions", rep + 1));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// GetMetadataDelta over 1 TiB.

/// splitmix64: a small seeded generator, so a run's writes can be repeated.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Scattered runs over `capacity` until `target` bytes are written: random
/// 4 KiB-aligned offsets, lengths log-uniform from 4 KiB to 4 MiB.
fn scattered_runs(seed: u64, capacity: u64, target: u64) -> Vec<Range<u64>> {
    let mut rng = Rng(seed);
    let pages = capacity / FIXED;
    let mut runs = Vec::new();
    let mut total = 0;
    while total < target {
        let order = rng.next_u64() % 10;
        let len = (1 << order) + rng.next_u64() % (1 << order);
        let start = rng.next_u64() % (pages - len) * FIXED;
        runs.push(start..start + len * FIXED);
        total += len * FIXED;
    }
    runs
}

/// The tracking blocks of `writes`, as the coalesced byte ranges a delta
/// must report.
fn rounded_out(writes: &[Range<u64>], block: u64, capacity: u64) -> Vec<Range<u64>> {
    ranges::coalesce(
        writes
            .iter()
            .map(|r| r.start / block * block..(r.end.div_ceil(block) * block).min(capacity))
            .collect(),
    )
}

/// Writes `runs` with direct I/O (the device stores nothing, so this costs
/// only the I/O path and the change tracker).
fn write_runs(dev: &Path, runs: &[Range<u64>]) -> Fallible<()> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(dev)?;
    let longest = runs.iter().map(|r| r.end - r.start).max().unwrap_or(0) as usize;
    // O_DIRECT wants an aligned buffer: take the aligned part of a larger one.
    let raw = vec![0xa5_u8; longest + FIXED as usize];
    let skip = raw.as_ptr().align_offset(FIXED as usize);
    let buf = &raw[skip..skip + longest];
    for r in runs {
        f.write_all_at(&buf[..(r.end - r.start) as usize], r.start)?;
    }
    f.sync_all()?;
    Ok(())
}

/// CreateSnapshot over the node API; the snapshot's id and the call's time.
fn create_snapshot(
    rt: &Runtime,
    client: &mut ControllerClient<Channel>,
    vid: &str,
    name: &str,
    parameters: &HashMap<String, String>,
) -> Fallible<(String, f64)> {
    let t = Instant::now();
    let snap = rt
        .block_on(client.create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: vid.into(),
            name: name.into(),
            parameters: parameters.clone(),
            ..Default::default()
        }))?
        .into_inner()
        .snapshot
        .ok_or("no snapshot in the response")?;
    let took = ms(t.elapsed());
    if !snap.ready_to_use {
        return Err(format!("snapshot {name} is not ready: {snap:?}").into());
    }
    Ok((snap.snapshot_id, took))
}

fn delta_request(base: &str, target: &str, from: i64) -> csi::GetMetadataDeltaRequest {
    csi::GetMetadataDeltaRequest {
        base_snapshot_id: base.into(),
        target_snapshot_id: target.into(),
        starting_offset: from,
        max_results: 0,
        ..Default::default()
    }
}

/// Streams a delta to its end, handing each message to `each`.
async fn stream_delta(
    client: &mut SnapshotMetadataClient<Channel>,
    request: csi::GetMetadataDeltaRequest,
    mut each: impl FnMut(csi::GetMetadataDeltaResponse) -> Fallible<()>,
) -> Fallible<StreamCount> {
    let mut stream = client.get_metadata_delta(request).await?.into_inner();
    let mut count = StreamCount::default();
    while let Some(m) = stream.next().await {
        let m = m?;
        count.messages += 1;
        count.tuples += m.block_metadata.len() as u64;
        each(m)?;
    }
    Ok(count)
}

/// Checks one stream against `want`: constant type and capacity, at most
/// `DEFAULT_BATCH` tuples a message, and tuples that are exactly `want`
/// (VARIABLE_LENGTH) or `want` cut into 4 KiB blocks (FIXED_LENGTH).
/// Returns the stream's counts and payload bytes.
async fn verify_stream(
    client: &mut SnapshotMetadataClient<Channel>,
    request: csi::GetMetadataDeltaRequest,
    kind: csi::BlockMetadataType,
    capacity: u64,
    want: &[Range<u64>],
) -> Fallible<(StreamCount, u64)> {
    let mut bytes = 0u64;
    let mut got: Vec<Range<u64>> = Vec::new();
    let count = stream_delta(client, request, |m| {
        bytes += m.encoded_len() as u64 + 5;
        if m.block_metadata_type != kind as i32 || m.volume_capacity_bytes as u64 != capacity {
            return Err(format!(
                "message of type {} and capacity {}, want {kind:?} and {capacity}",
                m.block_metadata_type, m.volume_capacity_bytes
            )
            .into());
        }
        if m.block_metadata.len() > DEFAULT_BATCH {
            return Err(format!("{} tuples in one message", m.block_metadata.len()).into());
        }
        for b in &m.block_metadata {
            let (start, size) = (b.byte_offset as u64, b.size_bytes as u64);
            if kind == csi::BlockMetadataType::FixedLength && size != FIXED {
                return Err(format!("FIXED_LENGTH tuple of {size} bytes").into());
            }
            // Merged as they come, so FIXED blocks compare as ranges.
            match got.last_mut() {
                Some(last) if last.end == start => last.end = start + size,
                Some(last) if last.end > start => {
                    return Err(format!("tuple at {start} overlaps or goes back").into())
                }
                _ => got.push(start..start + size),
            }
        }
        Ok(())
    })
    .await?;
    if kind == csi::BlockMetadataType::VariableLength && count.tuples != want.len() as u64 {
        return Err(format!(
            "{} tuples, want {}: adjacent ranges not merged?",
            count.tuples,
            want.len()
        )
        .into());
    }
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(g, w)| g != w)
            .unwrap_or(got.len().min(want.len()));
        return Err(format!(
            "{kind:?} delta differs from the blocks written: {} ranges, want {}; first \
             difference at #{first}: {:?} against {:?}",
            got.len(),
            want.len(),
            got.get(first),
            want.get(first)
        )
        .into());
    }
    Ok((count, bytes))
}

fn delta(
    t0: Instant,
    rt: &Runtime,
    guest: &Guest,
    s: &mut Served,
    tib: &VolumeRecord,
    args: &Args,
    out: &mut Results,
) -> Fallible<()> {
    let vid = s.plugin.volume_id(tib).to_string();
    let dev = open_rw(&s.plugin.device_of(tib)?)?;
    let info = guest.control.cbt_info(&dev)?;
    let (capacity, block) = (tib.capacity, u64::from(info.block_size));
    let mut d = DeltaResults {
        device: format!("null_blk memory_backed=0, {}", guest.nullb().display()),
        capacity,
        block_size: info.block_size,
        seed: args.seed,
        ..Default::default()
    };
    // No COW: the base is deleted before the writes (a backup tool keeps
    // only the id), so the difference storage stays small.
    let params = HashMap::from([(storage::PARAM_LIMIT.to_owned(), "512Mi".to_owned())]);
    let (base, base_ms) = create_snapshot(rt, &mut s.controller, &vid, "delta-a", &params)?;
    d.create_base_ms = base_ms;
    rt.block_on(s.controller.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: base.clone(),
        ..Default::default()
    }))?;

    let target_bytes = (capacity as f64 * args.changed_percent / 100.0) as u64;
    let runs = scattered_runs(args.seed, capacity, target_bytes);
    let union = ranges::coalesce(runs.clone());
    d.runs = runs.len() as u64;
    d.written_bytes = runs.iter().map(|r| r.end - r.start).sum();
    d.written_union_bytes = union.iter().map(|r| r.end - r.start).sum();
    d.written_4k_blocks = d.written_union_bytes / FIXED;
    say(
        t0,
        format!(
            "delta: writing {} runs, {} MiB, over 1 TiB (tracking block {} KiB)",
            d.runs,
            d.written_bytes / MIB,
            block / 1024
        ),
    );
    let t = Instant::now();
    write_runs(guest.nullb(), &runs)?;
    d.write_s = t.elapsed().as_secs_f64();
    let (target, target_ms) = create_snapshot(rt, &mut s.controller, &vid, "delta-b", &params)?;
    d.create_target_ms = target_ms;
    let want = rounded_out(&runs, block, capacity);
    d.delta_ranges = want.len() as u64;
    d.delta_bytes = want.iter().map(|r| r.end - r.start).sum();
    say(
        t0,
        format!(
            "delta: written in {:.1} s; the delta should be {} ranges, {} MiB",
            d.write_s,
            d.delta_ranges,
            d.delta_bytes / MIB
        ),
    );

    // Correctness first, untimed: both reports against the writes, and a
    // resumed stream (an unaligned offset inside a range rounds down to
    // its block) against the rest.
    let variable = csi::BlockMetadataType::VariableLength;
    let fixed = csi::BlockMetadataType::FixedLength;
    let request = delta_request(&base, &target, 0);
    let (vc, vbytes) = rt.block_on(verify_stream(
        &mut s.metadata,
        request.clone(),
        variable,
        capacity,
        &want,
    ))?;
    out.checks.push(format!(
        "VARIABLE_LENGTH delta is exactly the {} written runs rounded out to {} KiB blocks",
        d.runs,
        block / 1024
    ));
    let (fc, fbytes) = rt.block_on(verify_stream(
        &mut s.baseline,
        request.clone(),
        fixed,
        capacity,
        &want,
    ))?;
    out.checks
        .push("FIXED_LENGTH baseline covers the same bytes in 4 KiB tuples".into());
    let middle = want
        .get(want.len() / 2)
        .map_or(0, |r| r.start + (r.end - r.start) / 2 + 1234);
    let rest = ranges::from_offset(&want, middle, block);
    rt.block_on(verify_stream(
        &mut s.metadata,
        delta_request(&base, &target, middle as i64),
        variable,
        capacity,
        &rest,
    ))?;
    out.checks.push(format!(
        "a delta resumed at unaligned offset {middle} starts at its block and holds the rest"
    ));
    d.variable = StreamRuns {
        messages: vc.messages,
        tuples: vc.tuples,
        bytes: vbytes,
        ..Default::default()
    };
    d.fixed = StreamRuns {
        messages: fc.messages,
        tuples: fc.tuples,
        bytes: fbytes,
        ..Default::default()
    };
    say(
        t0,
        format!(
            "delta: verified; VARIABLE {} tuples in {} messages, FIXED {} tuples in {} messages",
            vc.tuples, vc.messages, fc.tuples, fc.messages
        ),
    );

    // Timed, alternating which report goes first.
    for rep in 0..args.delta_reps {
        for k in 0..2 {
            let (client, runs, want_count) = if (rep + k) % 2 == 0 {
                (&mut s.metadata, &mut d.variable, vc)
            } else {
                (&mut s.baseline, &mut d.fixed, fc)
            };
            let t = Instant::now();
            let got = rt.block_on(stream_delta(client, request.clone(), |_| Ok(())))?;
            runs.ms.push(ms(t.elapsed()));
            if got != want_count {
                return Err(
                    format!("stream {got:?} differs from the verified {want_count:?}").into(),
                );
            }
        }
        say(
            t0,
            format!("delta: {} of {} timed pairs", rep + 1, args.delta_reps),
        );
    }

    // Allocated of a static device: the whole device by design (its content
    // before it became a volume is unknown); one tuple, timed once.
    let t = Instant::now();
    let mut stream = rt
        .block_on(
            s.metadata
                .get_metadata_allocated(csi::GetMetadataAllocatedRequest {
                    snapshot_id: target.clone(),
                    ..Default::default()
                }),
        )?
        .into_inner();
    let mut tuples = Vec::new();
    while let Some(m) = rt.block_on(stream.next()) {
        tuples.extend(m?.block_metadata);
    }
    d.allocated_ms = ms(t.elapsed());
    d.allocated_tuples = tuples.len() as u64;
    if tuples.len() != 1 || tuples[0].size_bytes as u64 != capacity {
        return Err(format!("allocated of the static device: {tuples:?}").into());
    }

    rt.block_on(s.controller.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: target,
        ..Default::default()
    }))?;
    out.delta = Some(d);
    Ok(())
}

// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    // Before parsing: `cargo bench` on a host passes arguments of its own.
    if std::env::var_os("BLKSNAP_TEST_DISKS").is_none() {
        eprintln!("bench: this runs in the VM harness, as root: use tests/bench/plugin");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    let mut results = Results {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        reps: args.reps,
        delta_reps: args.delta_reps,
        changed_percent: args.changed_percent,
        ..Default::default()
    };
    if let Err(e) = bench(&args, &mut results) {
        results.errors.push(e.to_string());
    }
    if let Err(e) = write_results(&args.out, &results) {
        eprintln!("bench: cannot write the results: {e}");
        return ExitCode::FAILURE;
    }
    for e in &results.errors {
        eprintln!("bench: FAILED: {e}");
    }
    if results.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn write_results(dir: &Path, results: &Results) -> Fallible<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(results)?,
    )?;
    Ok(())
}

/// Sets up the guest and runs both parts; the part that fails is recorded
/// and the other still runs.
fn bench(args: &Args, out: &mut Results) -> Fallible<()> {
    let t0 = Instant::now();
    let guest = Guest::new()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let plugin = guest.plugin()?;
    let mut served = Served::start(&rt, &guest, Arc::clone(&plugin))?;
    let volume = |name: &str, size: u64, backend| {
        plugin.create_volume(&CreateVolume {
            name: name.into(),
            required: size,
            limit: 0,
            backend: Some(backend),
            source: None,
        })
    };
    let pool = volume("bench-pool", 256 * MIB, BackendKind::Pool)?;
    let disk = volume("bench-disk", 512 * MIB, BackendKind::Device)?;
    let tib = volume("bench-tib", TIB, BackendKind::Device)?;
    let members = (0..3)
        .map(|i| volume(&format!("bench-g{i}"), 64 * MIB, BackendKind::Pool))
        .collect::<Result<Vec<_>, _>>()?;
    if disk.location != "disk-b" || tib.location != "tib" {
        return Err(format!("static devices mixed up: {disk:?} {tib:?}").into());
    }
    for v in std::iter::once(&pool).chain(&members) {
        prefill(&plugin, v, 32 * MIB)?;
    }
    say(t0, "set up: plugin served with mutual TLS, volumes made");

    // The delta first, so that the 1 TiB volume's map holds its thousands
    // of changed runs during the latency part, as a used volume's would.
    if let Err(e) = delta(t0, &rt, &guest, &mut served, &tib, args, out) {
        out.errors.push(format!("GetMetadataDelta: {e}"));
    }

    let mut cases = vec![
        Case::new("pool", "pool volume (loop)".into(), &plugin, &[pool])?,
        Case::new(
            "disk",
            "static device (virtio disk)".into(),
            &plugin,
            &[disk],
        )?,
        Case::new(
            "tib",
            format!(
                "static device (null_blk, {}% changed)",
                args.changed_percent
            ),
            &plugin,
            &[tib],
        )?,
        Case::new("group", "group of 3 pool volumes".into(), &plugin, &members)?,
    ];
    let timed = latency(
        t0,
        &rt,
        &guest,
        &mut served,
        &mut cases,
        args.reps,
        &mut out.record_write_ms,
    );
    out.latency = cases.into_iter().map(|c| c.result).collect();
    if let Err(e) = timed {
        out.errors.push(format!("snapshot latency: {e}"));
    }
    say(t0, "done");
    drop(served);
    drop(plugin);
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
