//! The router against node APIs over real mutual TLS (rcgen certificates).
//!
//! The nodes here are small in-process tonic servers that speak the node
//! API, each answering with ids of its own node: the real node plugin
//! cannot run on the host, as it needs blksnap.ko (csi-driver/tests/sanity
//! runs the two real binaries together in the VM). The controller side is
//! the real one: its unix socket, routing, channels and TLS.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blksnap_csi_driver::controller::ControllerService;
use blksnap_csi_driver::group_controller::GroupControllerService;
use blksnap_csi_driver::identity::IdentityService;
use blksnap_csi_driver::nodes::{NodeTls, Nodes, StaticNodes};
use blksnap_csi_driver::server::{self, Services};
use blksnap_csi_driver::snapshot_metadata::SnapshotMetadataService;
use blksnap_node_api::identity::{controller_name, node_server_name};
use blksnap_node_api::ids::{GroupSnapshotId, SnapshotId, VolumeId};
use blksnap_node_api::lost::LOST_METADATA;
use csi_proto::csi::v1 as csi;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::Stream;
use tonic::transport::{Certificate, Channel, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};

const DRIVER: &str = "blksnap.csi.io";

/// A CA and the certificates it signs.
struct Pki {
    ca_pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("key"))
                .expect("CA");
        Pki {
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    fn leaf(&self, dns: &str, usage: rcgen::ExtendedKeyUsagePurpose) -> Identity {
        let mut params = rcgen::CertificateParams::new(vec![dns.to_owned()]).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, dns);
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Identity::from_pem(cert.pem(), key.serialize_pem())
    }
}

/// What a test node saw.
#[derive(Default)]
struct Seen {
    calls: AtomicUsize,
    timeouts: Mutex<Vec<String>>,
    stream_dropped: AtomicBool,
}

/// One node's API: volumes and snapshots named for its node.
#[derive(Clone)]
struct TestNode {
    name: String,
    /// Snapshot ids it lists, in order.
    snapshots: Vec<String>,
    /// Whether CreateVolume finds no room.
    full: bool,
    seen: Arc<Seen>,
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
            ready_to_use: true,
            ..Default::default()
        }
    }
}

fn unoffered<T>() -> Result<Response<T>, Status> {
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
        _: Request<csi::DeleteSnapshotRequest>,
    ) -> Result<Response<csi::DeleteSnapshotResponse>, Status> {
        unoffered()
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
        Ok(Response::new(csi::ListSnapshotsResponse {
            entries: self.snapshots[from..to]
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
        }))
    }
    async fn get_snapshot(
        &self,
        _: Request<csi::GetSnapshotRequest>,
    ) -> Result<Response<csi::GetSnapshotResponse>, Status> {
        unoffered()
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
        _: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::DeleteVolumeGroupSnapshotResponse>, Status> {
        unoffered()
    }
    async fn get_volume_group_snapshot(
        &self,
        _: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> Result<Response<csi::GetVolumeGroupSnapshotResponse>, Status> {
        unoffered()
    }
}

type Delta = Pin<Box<dyn Stream<Item = Result<csi::GetMetadataDeltaResponse, Status>> + Send>>;

/// An endless delta stream that records when the node's side is dropped.
struct Endless {
    n: i64,
    seen: Arc<Seen>,
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
        Ok(Response::new(Box::pin(Endless {
            n: 0,
            seen: Arc::clone(&self.seen),
            tick: tokio::time::interval(Duration::from_millis(5)),
        })))
    }
}

/// Serves `node` over mutual TLS with `cert`, trusting `client_ca`.
async fn serve_node(node: TestNode, cert: Identity, client_ca: &str) -> String {
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
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    addr
}

fn test_node(name: &str, snapshots: usize, full: bool) -> TestNode {
    TestNode {
        name: name.into(),
        snapshots: (0..snapshots)
            .map(|i| {
                SnapshotId {
                    volume: format!("v{i}"),
                    node: name.into(),
                    kernel: Default::default(),
                    generation: Default::default(),
                    number: 1,
                }
                .to_string()
            })
            .collect(),
        full,
        seen: Arc::default(),
    }
}

/// The controller, serving its unix socket, with `directory` as its nodes.
struct Controller {
    _dir: tempfile::TempDir,
    channel: Channel,
}

async fn controller(pki: &Pki, directory: &[(String, String)]) -> Controller {
    let entries: Vec<String> = directory.iter().map(|(n, a)| format!("{n}={a}")).collect();
    let tls = NodeTls {
        ca: Certificate::from_pem(&pki.ca_pem),
        identity: pki.leaf(
            &controller_name(DRIVER),
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ),
        driver_name: DRIVER.into(),
    };
    let nodes = Arc::new(Nodes::new(
        Arc::new(StaticNodes::parse(&entries, 9820).expect("nodes")),
        tls,
    ));
    let services = Services {
        identity: IdentityService::new(DRIVER),
        controller: ControllerService::new(Arc::clone(&nodes)),
        group_controller: GroupControllerService::new(Arc::clone(&nodes)),
        snapshot_metadata: SnapshotMetadataService::new(nodes),
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
    Controller { _dir: dir, channel }
}

fn node_cert(pki: &Pki, node: &str) -> Identity {
    pki.leaf(
        &node_server_name(node, DRIVER),
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    )
}

fn vol(local: &str, node: &str) -> String {
    VolumeId {
        local: local.into(),
        node: node.into(),
    }
    .to_string()
}

/// Nodes a, b, c, each serving with its own certificate.
async fn three_nodes(pki: &Pki, snapshots: usize) -> (Vec<TestNode>, Vec<(String, String)>) {
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
