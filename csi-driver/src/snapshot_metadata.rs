//! CSI SnapshotMetadata: the node's stream passed on message by message,
//! never gathered. Dropping the caller's stream drops the node's, which
//! cancels the call there; the caller's deadline goes with the request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use blksnap_node_api::ids::SnapshotId;
use csi::snapshot_metadata_client::SnapshotMetadataClient;
use csi::snapshot_metadata_server::SnapshotMetadata;
use csi_proto::csi::v1 as csi;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::nodes::{deadline, node_error, request, Nodes};
use crate::{Error, Result};

/// A response stream passed on from a node.
pub type Relayed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The SnapshotMetadata service.
#[derive(Clone)]
pub struct SnapshotMetadataService {
    nodes: Arc<Nodes>,
}

/// The node of the snapshot `text` names (`field` for the error).
fn node_of(field: &'static str, text: &str) -> Result<String> {
    if text.is_empty() {
        return Err(Error::Missing(field));
    }
    text.parse::<SnapshotId>()
        .map(|s| s.node)
        .map_err(|_| Error::not_found("snapshot", text))
}

fn relay_stream<T: Send + 'static>(
    node: String,
    s: Streaming<T>,
    deadline: Option<Duration>,
) -> Relayed<T> {
    let relayed = s.map(move |m| m.map_err(|status| node_error(&node, status).into()));
    Box::pin(Deadline {
        inner: Some(Box::pin(relayed)),
        sleep: deadline.map(|d| Box::pin(tokio::time::sleep(d))),
    })
}

/// A stream ended with DEADLINE_EXCEEDED when the caller's deadline
/// passes: tonic enforces `grpc-timeout` only until the response headers,
/// so a stream would outlive it. Ending drops the node's stream, which
/// cancels the call on the node.
struct Deadline<T> {
    inner: Option<Relayed<T>>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Stream for Deadline<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(item) = inner.as_mut().poll_next(cx) {
            return Poll::Ready(item);
        }
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                self.inner = None;
                return Poll::Ready(Some(Err(Status::deadline_exceeded(
                    "the caller's deadline passed",
                ))));
            }
        }
        Poll::Pending
    }
}

impl SnapshotMetadataService {
    pub fn new(nodes: Arc<Nodes>) -> Self {
        SnapshotMetadataService { nodes }
    }
}

#[tonic::async_trait]
impl SnapshotMetadata for SnapshotMetadataService {
    type GetMetadataAllocatedStream = Relayed<csi::GetMetadataAllocatedResponse>;
    type GetMetadataDeltaStream = Relayed<csi::GetMetadataDeltaResponse>;

    async fn get_metadata_allocated(
        &self,
        request_in: Request<csi::GetMetadataAllocatedRequest>,
    ) -> Result<Response<Self::GetMetadataAllocatedStream>, Status> {
        let (meta, _, r) = request_in.into_parts();
        let node = node_of("snapshot_id", &r.snapshot_id)?;
        let deadline = deadline(&meta);
        let mut client = SnapshotMetadataClient::new(self.nodes.channel(&node)?);
        let call = client.get_metadata_allocated(request(&meta, r));
        let stream = self
            .nodes
            .timed(&node, "GetMetadataAllocated", call)
            .await
            .map_err(|s| Status::from(node_error(&node, s)))?
            .into_inner();
        Ok(Response::new(relay_stream(node, stream, deadline)))
    }

    async fn get_metadata_delta(
        &self,
        request_in: Request<csi::GetMetadataDeltaRequest>,
    ) -> Result<Response<Self::GetMetadataDeltaStream>, Status> {
        let (meta, _, r) = request_in.into_parts();
        if r.base_snapshot_id.is_empty() {
            return Err(Error::Missing("base_snapshot_id").into());
        }
        // The target's node answers; it checks the base is of its volume.
        let node = node_of("target_snapshot_id", &r.target_snapshot_id)?;
        let deadline = deadline(&meta);
        let mut client = SnapshotMetadataClient::new(self.nodes.channel(&node)?);
        let call = client.get_metadata_delta(request(&meta, r));
        let stream = self
            .nodes
            .timed(&node, "GetMetadataDelta", call)
            .await
            .map_err(|s| Status::from(node_error(&node, s)))?
            .into_inner();
        Ok(Response::new(relay_stream(node, stream, deadline)))
    }
}
