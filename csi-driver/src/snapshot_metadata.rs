//! CSI SnapshotMetadata: the node's stream passed on message by message,
//! never gathered, and never decoded: each message goes on as the bytes
//! the node encoded ([`encoded`](crate::encoded)), so the router's cost
//! does not grow with what a message holds. Dropping the caller's stream
//! drops the node's, which cancels the call there; the caller's deadline
//! goes with the request and ends the relayed stream when it passes.
//!
//! tonic's generated server would decode and encode every message, so
//! this service answers its two paths itself.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use blksnap_node_api::ids::SnapshotId;
use csi_proto::csi::v1 as csi;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{http, BoxFuture, Bytes, Service, StdError};
use tonic::server::{Grpc, NamedService, ServerStreamingService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::prost;

use crate::encoded::{FromCaller, ToNode};
use crate::nodes::{deadline, lost_of, node_error, request, with_lost, Nodes};
use crate::{Error, Result};

/// A node's response stream passed on, each message still encoded.
pub type Relayed = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// The SnapshotMetadata service, a tower service for tonic's router.
#[derive(Clone)]
pub struct SnapshotMetadataService {
    nodes: Arc<Nodes>,
}

impl SnapshotMetadataService {
    pub fn new(nodes: Arc<Nodes>) -> Self {
        SnapshotMetadataService { nodes }
    }
}

impl NamedService for SnapshotMetadataService {
    const NAME: &'static str = csi::snapshot_metadata_server::SERVICE_NAME;
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

fn allocated_node(r: &csi::GetMetadataAllocatedRequest) -> Result<String> {
    node_of("snapshot_id", &r.snapshot_id)
}

/// The target's node answers; it checks the base is of its volume.
fn delta_node(r: &csi::GetMetadataDeltaRequest) -> Result<String> {
    if r.base_snapshot_id.is_empty() {
        return Err(Error::Missing("base_snapshot_id"));
    }
    node_of("target_snapshot_id", &r.target_snapshot_id)
}

/// One streaming method: its path on the node's API (the same as on the
/// socket), its name in the metrics, and which node a request goes to.
struct Method<Req> {
    nodes: Arc<Nodes>,
    path: &'static str,
    name: &'static str,
    node: fn(&Req) -> Result<String>,
}

const ALLOCATED: &str = "/csi.v1.SnapshotMetadata/GetMetadataAllocated";
const DELTA: &str = "/csi.v1.SnapshotMetadata/GetMetadataDelta";

impl<Req: prost::Message + Send + Sync + 'static> Method<Req> {
    async fn relay(self, request_in: Request<Req>) -> Result<Response<Relayed>, Status> {
        let (meta, _, r) = request_in.into_parts();
        let node = (self.node)(&r)?;
        let deadline = deadline(&meta);
        let mut grpc = tonic::client::Grpc::new(self.nodes.channel(&node)?);
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
            grpc.server_streaming(
                request(&meta, r),
                PathAndQuery::from_static(self.path),
                ToNode::default(),
            )
            .await
        };
        let answer = self
            .nodes
            .timed(&node, self.name, call)
            .await
            .map_err(|s| Status::from(node_error(&node, s)))?;
        let lost = lost_of(answer.metadata());
        let stream = relay_stream(node, answer.into_inner(), deadline);
        Ok(with_lost(Response::new(stream), lost))
    }
}

impl<Req: prost::Message + Send + Sync + 'static> ServerStreamingService<Req> for Method<Req> {
    type Response = Bytes;
    type ResponseStream = Relayed;
    type Future = BoxFuture<Response<Relayed>, Status>;

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        let method = Method {
            nodes: Arc::clone(&self.nodes),
            ..*self
        };
        Box::pin(method.relay(request))
    }
}

impl<B> Service<http::Request<B>> for SnapshotMetadataService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let nodes = Arc::clone(&self.nodes);
        match req.uri().path() {
            ALLOCATED => Box::pin(async move {
                let method = Method {
                    nodes,
                    path: ALLOCATED,
                    name: "GetMetadataAllocated",
                    node: allocated_node,
                };
                Ok(Grpc::new(FromCaller::default())
                    .server_streaming(method, req)
                    .await)
            }),
            DELTA => Box::pin(async move {
                let method = Method {
                    nodes,
                    path: DELTA,
                    name: "GetMetadataDelta",
                    node: delta_node,
                };
                Ok(Grpc::new(FromCaller::default())
                    .server_streaming(method, req)
                    .await)
            }),
            path => {
                let status = Status::unimplemented(format!("{path} is not offered"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

fn relay_stream(node: String, s: Streaming<Bytes>, deadline: Option<Duration>) -> Relayed {
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
struct Deadline {
    inner: Option<Relayed>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for Deadline {
    type Item = Result<Bytes, Status>;

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
