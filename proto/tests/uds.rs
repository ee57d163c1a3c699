//! The generated servers and clients talk to each other over a unix socket,
//! the transport the kubelet and the CSI sidecars use.

use std::path::Path;
use std::time::Duration;

use csi_proto::csi::v1::identity_client::IdentityClient;
use csi_proto::csi::v1::identity_server::{Identity, IdentityServer};
use csi_proto::csi::v1::snapshot_metadata_client::SnapshotMetadataClient;
use csi_proto::csi::v1::snapshot_metadata_server::{SnapshotMetadata, SnapshotMetadataServer};
use csi_proto::csi::v1::{
    plugin_capability, BlockMetadata, BlockMetadataType, GetMetadataAllocatedRequest,
    GetMetadataAllocatedResponse, GetMetadataDeltaRequest, GetMetadataDeltaResponse,
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse,
};
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};

const DRIVER: &str = "blksnap.csi.example.org";
const BLOCK: i64 = 64 * 1024;
/// Bound on every exchange, so a broken transport fails instead of hanging.
const LIMIT: Duration = Duration::from_secs(20);

/// Test-only Identity: a fixed name and the snapshot-metadata capability.
struct TestIdentity;

#[tonic::async_trait]
impl Identity for TestIdentity {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER.to_owned(),
            vendor_version: "0.1.0".to_owned(),
            manifest: [("csi".to_owned(), csi_proto::CSI_VERSION.to_owned())].into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let service = |t: plugin_capability::service::Type| PluginCapability {
            r#type: Some(plugin_capability::Type::Service(
                plugin_capability::Service { r#type: t as i32 },
            )),
        };
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![
                service(plugin_capability::service::Type::ControllerService),
                service(plugin_capability::service::Type::SnapshotMetadataService),
            ],
        }))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}

/// Test-only SnapshotMetadata: a delta of three blocks in two batches, and
/// the "history is gone" answer for Allocated.
struct TestMetadata;

type Batches<T> = tokio_stream::Iter<std::vec::IntoIter<Result<T, Status>>>;

#[tonic::async_trait]
impl SnapshotMetadata for TestMetadata {
    type GetMetadataAllocatedStream = Batches<GetMetadataAllocatedResponse>;
    type GetMetadataDeltaStream = Batches<GetMetadataDeltaResponse>;

    async fn get_metadata_allocated(
        &self,
        _request: Request<GetMetadataAllocatedRequest>,
    ) -> Result<Response<Self::GetMetadataAllocatedStream>, Status> {
        Err(Status::failed_precondition("change map generation differs"))
    }

    async fn get_metadata_delta(
        &self,
        request: Request<GetMetadataDeltaRequest>,
    ) -> Result<Response<Self::GetMetadataDeltaStream>, Status> {
        let req = request.into_inner();
        if req.base_snapshot_id.is_empty() || req.target_snapshot_id.is_empty() {
            return Err(Status::invalid_argument("snapshot ids are required"));
        }
        let batch = |offsets: &[i64]| {
            Ok(GetMetadataDeltaResponse {
                block_metadata_type: BlockMetadataType::FixedLength as i32,
                volume_capacity_bytes: 16 * BLOCK,
                block_metadata: offsets
                    .iter()
                    .map(|&o| BlockMetadata {
                        byte_offset: o * BLOCK,
                        size_bytes: BLOCK,
                    })
                    .collect(),
            })
        };
        Ok(Response::new(tokio_stream::iter(vec![
            batch(&[1, 2]),
            batch(&[7]),
        ])))
    }
}

/// Serves both test services on a fresh socket in `dir` until `stop` fires.
async fn serve(dir: &Path) -> (Channel, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let socket = dir.join("csi.sock");
    let listener = UnixListener::bind(&socket).expect("bind unix socket");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        Server::builder()
            .add_service(IdentityServer::new(TestIdentity))
            .add_service(SnapshotMetadataServer::new(TestMetadata))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
    });
    let channel = Endpoint::from_shared(format!("unix://{}", socket.display()))
        .expect("unix endpoint")
        .connect()
        .await
        .expect("connect over the unix socket");
    (channel, stop, server)
}

#[tokio::test]
async fn identity_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    tokio::time::timeout(LIMIT, async {
        let (channel, stop, server) = serve(dir.path()).await;
        let mut client = IdentityClient::new(channel);

        let info = client
            .get_plugin_info(GetPluginInfoRequest {})
            .await
            .expect("GetPluginInfo")
            .into_inner();
        assert_eq!(info.name, DRIVER);
        assert_eq!(info.vendor_version, "0.1.0");
        assert_eq!(info.manifest["csi"], "1.12.0");

        let caps = client
            .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
            .await
            .expect("GetPluginCapabilities")
            .into_inner();
        let types: Vec<i32> = caps
            .capabilities
            .iter()
            .map(|c| match &c.r#type {
                Some(plugin_capability::Type::Service(s)) => s.r#type,
                other => panic!("unexpected capability {other:?}"),
            })
            .collect();
        assert_eq!(types, [1, 4]);

        let probe = client
            .probe(ProbeRequest {})
            .await
            .expect("Probe")
            .into_inner();
        assert_eq!(probe.ready, Some(true));

        stop.send(()).unwrap();
        server.await.unwrap();
    })
    .await
    .expect("identity exchange finished in time");
}

#[tokio::test]
async fn snapshot_metadata_streams_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    tokio::time::timeout(LIMIT, async {
        let (channel, stop, server) = serve(dir.path()).await;
        let mut client = SnapshotMetadataClient::new(channel);

        let mut stream = client
            .get_metadata_delta(GetMetadataDeltaRequest {
                base_snapshot_id: "base".into(),
                target_snapshot_id: "target".into(),
                ..Default::default()
            })
            .await
            .expect("GetMetadataDelta")
            .into_inner();
        let mut offsets = Vec::new();
        let mut batches = 0;
        while let Some(batch) = stream.message().await.expect("stream item") {
            batches += 1;
            assert_eq!(batch.block_metadata_type(), BlockMetadataType::FixedLength);
            assert_eq!(batch.volume_capacity_bytes, 16 * BLOCK);
            offsets.extend(batch.block_metadata.iter().map(|b| b.byte_offset / BLOCK));
        }
        assert_eq!(batches, 2);
        assert_eq!(offsets, [1, 2, 7]);

        let err = client
            .get_metadata_delta(GetMetadataDeltaRequest::default())
            .await
            .expect_err("missing ids are refused");
        assert_eq!(err.code(), Code::InvalidArgument);

        let err = client
            .get_metadata_allocated(GetMetadataAllocatedRequest::default())
            .await
            .expect_err("the test server refuses Allocated");
        assert_eq!(err.code(), Code::FailedPrecondition);

        stop.send(()).unwrap();
        server.await.unwrap();
    })
    .await
    .expect("snapshot metadata exchange finished in time");
}
