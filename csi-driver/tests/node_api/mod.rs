//! An in-process node API for the host tests and benchmarks: small tonic
//! servers over real mutual TLS (certificates of blksnap_node_api::dev), each answering with
//! ids of its own node, and the real controller in front of them. The real
//! node plugin cannot run on the host, as it needs blksnap.ko
//! (csi-driver/tests/sanity runs the two real binaries together in the VM).
#![allow(dead_code)] // each test binary that includes it uses part of it

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blksnap_csi_driver::controller::ControllerService;
use blksnap_csi_driver::group_controller::GroupControllerService;
use blksnap_csi_driver::identity::IdentityService;
use blksnap_csi_driver::metrics::NodeCallMetrics;
use blksnap_csi_driver::nodes::{NodeTls, Nodes, StaticNodes};
use blksnap_csi_driver::server::{self, Services};
use blksnap_csi_driver::snapshot_metadata::SnapshotMetadataService;
use blksnap_node_api::identity::{controller_name, node_server_name};
use blksnap_node_api::ids::{GroupSnapshotId, SnapshotId, VolumeId};
use blksnap_node_api::lost::LOST_METADATA;
use csi_proto::csi::v1 as csi;
use prometheus_client::registry::Registry;
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Channel, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

pub const DRIVER: &str = "blksnap.csi.io";

pub use blksnap_node_api::dev::{Pki, Usage};

/// A certificate of `pki` for `dns`, as tonic takes it.
pub fn identity(pki: &Pki, dns: &str, usage: Usage) -> Identity {
    let (cert, key) = pki.leaf_pem(dns, usage);
    Identity::from_pem(cert, key)
}

/// What a test node saw.
#[derive(Default)]
pub struct Seen {
    pub calls: AtomicUsize,
    pub timeouts: Mutex<Vec<String>>,
    pub stream_dropped: AtomicBool,
    /// Snapshot and group snapshot ids deleted, in order.
    pub deleted: Mutex<Vec<String>>,
}

/// One node's API: volumes and snapshots named for its node.
#[derive(Clone)]
pub struct TestNode {
    pub name: String,
    /// Snapshot ids it lists, in order.
    pub snapshots: Vec<String>,
    /// Whether CreateVolume finds no room.
    pub full: bool,
    pub seen: Arc<Seen>,
    /// Snapshots it reports lost, with the reason word.
    pub lost: Arc<Mutex<HashMap<String, &'static str>>>,
    /// The whole delta it streams at once; without it, an endless slow one.
    pub delta: Option<DeltaShape>,
}

/// A finite delta: every `extent` bytes of a `capacity`-byte volume
/// changed, `per_message` extents to a message, sent as fast as the
/// transport takes them, then the status `end` if there is one.
#[derive(Clone, Copy, Debug)]
pub struct DeltaShape {
    pub capacity: i64,
    pub extent: i64,
    pub per_message: usize,
    pub end: Option<tonic::Code>,
}

impl DeltaShape {
    pub fn messages(&self) -> usize {
        let extents = (self.capacity / self.extent) as usize;
        extents.div_ceil(self.per_message)
    }

    fn stream(self) -> impl Stream<Item = Result<csi::GetMetadataDeltaResponse, Status>> + Send {
        let step = self.extent * self.per_message as i64;
        let end = self
            .end
            .map(|code| Err(Status::new(code, "the delta's store failed")));
        let messages = (0..self.capacity).step_by(step as usize).map(move |start| {
            let end = (start + step).min(self.capacity);
            Ok(csi::GetMetadataDeltaResponse {
                block_metadata_type: csi::BlockMetadataType::VariableLength as i32,
                volume_capacity_bytes: self.capacity,
                block_metadata: (start..end)
                    .step_by(self.extent as usize)
                    .map(|o| csi::BlockMetadata {
                        byte_offset: o,
                        size_bytes: self.extent,
                    })
                    .collect(),
            })
        });
        tokio_stream::iter(messages.chain(end))
    }
}

impl TestNode {
    fn saw<T>(&self, r: &Request<T>) {
        self.seen.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(t) = r.metadata().get("grpc-timeout") {
            let t = t.to_str().expect("ascii").to_owned();
            self.seen.timeouts.lock().expect("lock").push(t);
        }
    }

    fn snapshot(&self, id: &str) -> csi::Snapshot {
        csi::Snapshot {
            snapshot_id: id.to_owned(),
            ready_to_use: !self.lost.lock().expect("lock").contains_key(id),
            creation_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    /// `response` with an `x-blksnap-lost` entry per lost one of `ids`.
    fn mark_lost<'a, T>(
        &self,
        mut response: Response<T>,
        ids: impl IntoIterator<Item = &'a String>,
    ) -> Response<T> {
        let lost = self.lost.lock().expect("lock");
        for id in ids {
            if let Some(reason) = lost.get(id) {
                let v = format!("{id} {reason}").parse().expect("ascii");
                response.metadata_mut().append(LOST_METADATA, v);
            }
        }
        response
    }

    fn deleted(&self, id: String) {
        self.seen.deleted.lock().expect("lock").push(id);
    }
}

pub fn unoffered<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this test node"))
}

#[tonic::async_trait]
impl csi::controller_server::Controller for TestNode {
    async fn create_volume(
        &self,
        r: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        self.saw(&r);
        if self.full {
            return Err(Status::resource_exhausted("pool full"));
        }
        let id = VolumeId {
            local: "v0".into(),
            node: self.name.clone(),
        };
        Ok(Response::new(csi::CreateVolumeResponse {
            volume: Some(csi::Volume {
                volume_id: id.to_string(),
                capacity_bytes: r
                    .into_inner()
                    .capacity_range
                    .map_or(0, |c| c.required_bytes),
                ..Default::default()
            }),
        }))
    }
    async fn delete_volume(
        &self,
        r: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        self.saw(&r);
        Ok(Response::new(csi::DeleteVolumeResponse {}))
    }
    async fn controller_publish_volume(
        &self,
        _: Request<csi::ControllerPublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerPublishVolumeResponse>, Status> {
        unoffered()
    }
    async fn controller_unpublish_volume(
        &self,
        _: Request<csi::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<csi::ControllerUnpublishVolumeResponse>, Status> {
        unoffered()
    }
    async fn validate_volume_capabilities(
        &self,
        _: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        unoffered()
    }
    async fn list_volumes(
        &self,
        _: Request<csi::ListVolumesRequest>,
    ) -> Result<Response<csi::ListVolumesResponse>, Status> {
        unoffered()
    }
    async fn get_capacity(
        &self,
        r: Request<csi::GetCapacityRequest>,
    ) -> Result<Response<csi::GetCapacityResponse>, Status> {
        self.saw(&r);
        Ok(Response::new(csi::GetCapacityResponse {
            available_capacity: if self.full { 0 } else { 1 << 30 },
            ..Default::default()
        }))
    }
    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        unoffered()
    }
    async fn create_snapshot(
        &self,
        r: Request<csi::CreateSnapshotRequest>,
    ) -> Result<Response<csi::CreateSnapshotResponse>, Status> {
        self.saw(&r);
        let r = r.into_inner();
        let volume: VolumeId = r.source_volume_id.parse().expect("routed with a volume id");
        assert_eq!(volume.node, self.name, "routed to the wrong node");
        let id = SnapshotId {
            volume: volume.local,
            node: self.name.clone(),
            kernel: Default::default(),
            generation: Default::default(),
            number: 1,
        }
        .to_string();
        let mut response = Response::new(csi::CreateSnapshotResponse {
            snapshot: Some(self.snapshot(&id)),
        });
        let lost = format!("{id} overflow").parse().expect("ascii");
        response.metadata_mut().append(LOST_METADATA, lost);
        Ok(response)
    }
    async fn delete_snapshot(
        &self,
        r: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        self.saw(&r);
        self.deleted(r.into_inner().snapshot_id);
        Ok(Response::new(csi::DeleteSnapshotResponse {}))
    }
    async fn list_snapshots(
        &self,
        r: Request<csi::ListSnapshotsRequest>,
    ) -> Result<Response<csi::ListSnapshotsResponse>, Status> {
        self.saw(&r);
        let r = r.into_inner();
        let from: usize = if r.starting_token.is_empty() {
            0
        } else {
            r.starting_token
                .parse()
                .map_err(|_| Status::aborted("not my token"))?
        };
        let max = if r.max_entries == 0 {
            usize::MAX
        } else {
            r.max_entries as usize
        };
        let to = from.saturating_add(max).min(self.snapshots.len());
        let page = &self.snapshots[from..to];
        Ok(self.mark_lost(
            Response::new(csi::ListSnapshotsResponse {
                entries: page
                    .iter()
                    .map(|id| csi::list_snapshots_response::Entry {
                        snapshot: Some(self.snapshot(id)),
                    })
                    .collect(),
                next_token: if to < self.snapshots.len() {
                    to.to_string()
                } else {
                    String::new()
                },
            }),
            page,
        ))
    }
    async fn get_snapshot(
        &self,
        r: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        self.saw(&r);
        let id = r.into_inner().snapshot_id;
        if !self.snapshots.contains(&id) {
            return Err(Status::not_found(format!("snapshot {id} not found")));
        }
        let response = Response::new(csi::GetSnapshotResponse {
            snapshot: Some(self.snapshot(&id)),
        });
        Ok(self.mark_lost(response, [&id]))
    }
    async fn controller_expand_volume(
        &self,
        _: Request<csi::ControllerExpandVolumeRequest>,
    ) -> Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        unoffered()
    }
    async fn controller_get_volume(
        &self,
        _: Request<csi::ControllerGetVolumeRequest>,
    ) -> Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        unoffered()
    }
    async fn controller_modify_volume(
        &self,
        _: Request<csi::ControllerModifyVolumeRequest>,
    ) -> Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        unoffered()
    }
}

#[tonic::async_trait]
impl csi::group_controller_server::GroupController for TestNode {
    async fn group_controller_get_capabilities(
        &self,
        _: Request<csi::GroupControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::GroupControllerGetCapabilitiesResponse>, Status> {
        unoffered()
    }
    async fn create_volume_group_snapshot(
        &self,
        r: Request<csi::CreateVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::CreateVolumeGroupSnapshotResponse>, Status> {
        self.saw(&r);
        Ok(Response::new(csi::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(csi::VolumeGroupSnapshot {
                group_snapshot_id: GroupSnapshotId {
                    kernel: Default::default(),
                    node: self.name.clone(),
                }
                .to_string(),
                ..Default::default()
            }),
        }))
    }
    async fn delete_volume_group_snapshot(
        &self,
        r: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::DeleteVolumeGroupSnapshotResponse>, Status> {
        self.saw(&r);
        self.deleted(r.into_inner().group_snapshot_id);
        Ok(Response::new(csi::DeleteVolumeGroupSnapshotResponse {}))
    }
    async fn get_volume_group_snapshot(
        &self,
        _: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::GetVolumeGroupSnapshotResponse>, Status> {
        unoffered()
    }
}

pub type Delta = Pin<Box<dyn Stream<Item = Result<csi::GetMetadataDeltaResponse, Status>> + Send>>;

/// An endless delta stream that records when the node's side is dropped.
pub struct Endless {
    n: i64,
    pub seen: Arc<Seen>,
    tick: tokio::time::Interval,
}

impl Stream for Endless {
    type Item = Result<csi::GetMetadataDeltaResponse, Status>;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.tick.poll_tick(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(_) => {
                self.n += 1;
                let offset = self.n * 4096;
                std::task::Poll::Ready(Some(Ok(csi::GetMetadataDeltaResponse {
                    block_metadata_type: csi::BlockMetadataType::VariableLength as i32,
                    volume_capacity_bytes: 1 << 40,
                    block_metadata: vec![csi::BlockMetadata {
                        byte_offset: offset,
                        size_bytes: 4096,
                    }],
                })))
            }
        }
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        self.seen.stream_dropped.store(true, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl csi::snapshot_metadata_server::SnapshotMetadata for TestNode {
    type GetMetadataAllocatedStream =
        Pin<Box<dyn Stream<Item = Result<csi::GetMetadataAllocatedResponse, Status>> + Send>>;
    type GetMetadataDeltaStream = Delta;

    async fn get_metadata_allocated(
        &self,
        _: Request<csi::GetMetadataAllocatedRequest>,
    ) -> Result<Response<Self::GetMetadataAllocatedStream>, Status> {
        unoffered()
    }
    async fn get_metadata_delta(
        &self,
        r: Request<csi::GetMetadataDeltaRequest>,
    ) -> Result<Response<Delta>, Status> {
        self.saw(&r);
        if let Some(shape) = self.delta {
            return Ok(Response::new(Box::pin(shape.stream())));
        }
        Ok(Response::new(Box::pin(Endless {
            n: 0,
            seen: Arc::clone(&self.seen),
            tick: tokio::time::interval(Duration::from_millis(5)),
        })))
    }
}

/// Serves `node` over mutual TLS with `cert`, trusting `client_ca`.
pub async fn serve_node(node: TestNode, cert: Identity, client_ca: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let tls = ServerTlsConfig::new()
        .identity(cert)
        .client_ca_root(Certificate::from_pem(client_ca));
    let router = Server::builder()
        .tls_config(tls)
        .expect("tls")
        .add_service(csi::controller_server::ControllerServer::new(node.clone()))
        .add_service(csi::group_controller_server::GroupControllerServer::new(
            node.clone(),
        ))
        .add_service(csi::snapshot_metadata_server::SnapshotMetadataServer::new(
            node,
        ));
    // TCP_NODELAY, as the node plugin serves its node API.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(router.serve_with_incoming(incoming));
    addr
}

/// The id of the `i`th snapshot a [`test_node`] of `node` lists.
pub fn snapshot_of(node: &str, i: usize) -> String {
    SnapshotId {
        volume: format!("v{i}"),
        node: node.into(),
        kernel: Default::default(),
        generation: Default::default(),
        number: 1,
    }
    .to_string()
}

pub fn test_node(name: &str, snapshots: usize, full: bool) -> TestNode {
    TestNode {
        name: name.into(),
        snapshots: (0..snapshots).map(|i| snapshot_of(name, i)).collect(),
        full,
        seen: Arc::default(),
        lost: Arc::default(),
        delta: None,
    }
}

/// The controller, serving its unix socket, with `directory` as its nodes.
pub struct Controller {
    pub _dir: tempfile::TempDir,
    pub channel: Channel,
    /// The router's channels to the nodes.
    pub nodes: Arc<Nodes>,
    /// Where the router's metrics are registered.
    pub registry: Registry,
}

pub async fn controller(pki: &Pki, directory: &[(String, String)]) -> Controller {
    let entries: Vec<String> = directory.iter().map(|(n, a)| format!("{n}={a}")).collect();
    let tls = NodeTls {
        ca: Certificate::from_pem(&pki.ca_pem),
        identity: identity(pki, &controller_name(DRIVER), Usage::Client),
        driver_name: DRIVER.into(),
    };
    let mut registry = blksnap_csi_driver::metrics::registry();
    let nodes = Arc::new(Nodes::new(
        Arc::new(StaticNodes::parse(&entries, 9820).expect("nodes")),
        tls,
        NodeCallMetrics::register(&mut registry),
    ));
    let services = Services {
        identity: IdentityService::new(DRIVER),
        controller: ControllerService::new(Arc::clone(&nodes)),
        group_controller: GroupControllerService::new(Arc::clone(&nodes)),
        snapshot_metadata: SnapshotMetadataService::new(Arc::clone(&nodes)),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let socket: PathBuf = dir.path().join("csi.sock");
    let listener = server::bind(&socket).expect("bind");
    tokio::spawn(server::serve(listener, services, std::future::pending()));
    let channel = Endpoint::from_shared(format!("unix://{}", socket.display()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    Controller {
        _dir: dir,
        channel,
        nodes,
        registry,
    }
}

pub fn node_cert(pki: &Pki, node: &str) -> Identity {
    identity(pki, &node_server_name(node, DRIVER), Usage::Server)
}

pub fn vol(local: &str, node: &str) -> String {
    VolumeId {
        local: local.into(),
        node: node.into(),
    }
    .to_string()
}

/// Nodes a, b, c, each serving with its own certificate.
pub async fn three_nodes(pki: &Pki, snapshots: usize) -> (Vec<TestNode>, Vec<(String, String)>) {
    let mut nodes = vec![];
    let mut directory = vec![];
    for name in ["node-a", "node-b", "node-c"] {
        let node = test_node(name, snapshots, false);
        let addr = serve_node(node.clone(), node_cert(pki, name), &pki.ca_pem).await;
        directory.push((name.to_owned(), addr));
        nodes.push(node);
    }
    (nodes, directory)
}
