//! Transports: the kubelet's unix socket and the node API over TCP with
//! mutual TLS, and the logging layer both share.
//!
//! The node API has no plaintext mode: a client must present a
//! certificate signed by the configured CA, or the TLS handshake fails
//! before any call is read; and a call is served only if that certificate
//! names the controller ([`ControllerOnly`]).
//!
//! [`RpcLogLayer`] logs and times every call by method and status code,
//! when the call ends: a stream, when its last message is sent.
//! It sees only the HTTP/2 request head (the method path) and the response
//! status, never a message body, where the CSI `secrets` maps travel, and
//! never a metadata value, so it cannot log a secret.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use csi_proto::csi::v1 as csi;
use csi_proto::pluginregistration::registration_server::RegistrationServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::controller::ControllerService;
use crate::controller_identity::ControllerOnly;
use crate::group_controller::GroupControllerService;
use crate::identity::IdentityService;
use crate::metrics::{Metrics, RpcTimer};
use crate::node::NodeService;
use crate::registration::RegistrationService;
use crate::snapshot_metadata::SnapshotMetadataService;
use crate::uds_authority::AuthorityFix;
use crate::{Error, Result};

/// Runs `f` on the blocking pool (ioctls, copies and fsyncs block) and
/// turns its error into a CSI status.
pub async fn blocking<T, F>(f: F) -> Result<T, tonic::Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(tonic::Status::from),
        Err(e) => Err(tonic::Status::internal(format!("call failed: {e}"))),
    }
}

/// The CSI methods, the fixed label set of the RPC metrics.
const METHODS: &[&str] = &[
    "GetPluginInfo",
    "GetPluginCapabilities",
    "Probe",
    "CreateVolume",
    "DeleteVolume",
    "ControllerPublishVolume",
    "ControllerUnpublishVolume",
    "ValidateVolumeCapabilities",
    "ListVolumes",
    "GetCapacity",
    "ControllerGetCapabilities",
    "CreateSnapshot",
    "DeleteSnapshot",
    "ListSnapshots",
    "GetSnapshot",
    "ControllerExpandVolume",
    "ControllerGetVolume",
    "ControllerModifyVolume",
    "GroupControllerGetCapabilities",
    "CreateVolumeGroupSnapshot",
    "DeleteVolumeGroupSnapshot",
    "GetVolumeGroupSnapshot",
    "GetMetadataAllocated",
    "GetMetadataDelta",
    "NodeStageVolume",
    "NodeUnstageVolume",
    "NodePublishVolume",
    "NodeUnpublishVolume",
    "NodeGetVolumeStats",
    "NodeExpandVolume",
    "NodeGetCapabilities",
    "NodeGetInfo",
];

/// The metric label of a gRPC path such as `/csi.v1.Node/NodeGetInfo`.
pub fn method_label(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or("");
    let known = path.starts_with("/csi.v1.");
    METHODS
        .iter()
        .find(|m| known && **m == name)
        .copied()
        .unwrap_or("other")
}

/// Logs and times each call; see the module docs.
#[derive(Debug, Clone)]
pub struct RpcLogLayer {
    metrics: Arc<Metrics>,
    surface: &'static str,
}

impl RpcLogLayer {
    /// `surface` names the listener in the logs (`kubelet`, `node-api`).
    pub fn new(metrics: Arc<Metrics>, surface: &'static str) -> Self {
        RpcLogLayer { metrics, surface }
    }
}

impl<S> tower::Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;

    fn layer(&self, inner: S) -> RpcLog<S> {
        RpcLog {
            inner,
            metrics: Arc::clone(&self.metrics),
            surface: self.surface,
        }
    }
}

/// The service [`RpcLogLayer`] wraps around each server.
#[derive(Debug, Clone)]
pub struct RpcLog<S> {
    inner: S,
    metrics: Arc<Metrics>,
    surface: &'static str,
}

/// The status code in `grpc-status`, if the headers carry one.
fn status_in(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// One call in flight, logged and timed once its status is known.
struct Call {
    surface: &'static str,
    method: &'static str,
    timer: RpcTimer,
}

impl Call {
    fn ms(&self) -> f64 {
        self.timer.elapsed().as_secs_f64() * 1000.0
    }

    fn end(mut self, code: tonic::Code) {
        self.timer.code(code);
        let (surface, method, ms) = (self.surface, self.method, self.ms());
        let code_name = crate::metrics::code_name(code);
        match code {
            tonic::Code::Ok => tracing::debug!(surface, method, ms, "call"),
            tonic::Code::Internal | tonic::Code::Unknown => {
                tracing::error!(surface, method, code = code_name, ms, "call")
            }
            _ => tracing::info!(surface, method, code = code_name, ms, "call"),
        }
    }

    /// Ends a call that failed below gRPC, with no status sent.
    fn failed(mut self, error: &dyn std::fmt::Display) {
        self.timer.code(tonic::Code::Internal);
        let (surface, method, ms) = (self.surface, self.method, self.ms());
        tracing::warn!(surface, method, error = %error, ms, "call failed in transport");
    }
}

/// A response body that ends its [`Call`] when the status comes: in the
/// trailers after the last message, so that a stream failing after its
/// first message is logged with its error, not with the OK of its
/// headers.
pub struct LoggedBody<B> {
    inner: B,
    /// `None` once the call is logged.
    call: Option<Call>,
}

impl<B> LoggedBody<B> {
    fn end(&mut self, code: tonic::Code) {
        if let Some(call) = self.call.take() {
            call.end(code);
        }
    }
}

impl<B> http_body::Body for LoggedBody<B>
where
    B: http_body::Body<Error = tonic::Status> + Unpin,
{
    type Data = B::Data;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_in) {
                    self.end(code);
                }
            }
            Poll::Ready(Some(Err(status))) => self.end(status.code()),
            // gRPC always ends with trailers; a body without them failed.
            Poll::Ready(None) => self.end(tonic::Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        // The client went away before the status was sent.
        self.end(tonic::Code::Cancelled);
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcLog<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = http::Response<LoggedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_label(request.uri().path());
        let call = Call {
            surface: self.surface,
            method,
            timer: self.metrics.time(method),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            match future.await {
                Err(e) => {
                    call.failed(&e);
                    Err(e)
                }
                Ok(response) => {
                    // An error before any message comes as a trailers-only
                    // response, with the status in the headers.
                    let call = match status_in(response.headers()) {
                        Some(code) => {
                            call.end(code);
                            None
                        }
                        None => Some(call),
                    };
                    Ok(response.map(|inner| LoggedBody { inner, call }))
                }
            }
        })
    }
}

/// Reads the node API's certificate, key and client CA (PEM).
pub fn tls_config(cert: &Path, key: &Path, client_ca: &Path) -> Result<ServerTlsConfig> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io("read", p, e));
    let identity = Identity::from_pem(read(cert)?, read(key)?);
    Ok(ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(read(client_ca)?))
        .client_auth_optional(false))
}

/// Serves Identity and Node on the kubelet's unix socket until `shutdown`.
pub async fn serve_kubelet(
    socket: &Path,
    identity: IdentityService,
    node: NodeService,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let listener = bind_unix(socket)?;
    tracing::info!(socket = %socket.display(), "serving Identity and Node for the kubelet");
    Server::builder()
        .layer(RpcLogLayer::new(metrics, "kubelet"))
        .add_service(csi::identity_server::IdentityServer::new(identity))
        .add_service(csi::node_server::NodeServer::new(node))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::io("serve", socket, std::io::Error::other(e)))
}

/// Serves the kubelet's plugin registration API on `socket` until
/// `shutdown`, each connection through [`AuthorityFix`] (the kubelet sends
/// the socket's path as the HTTP/2 authority). After the kubelet refused
/// the registration, the socket is made anew `retry_after` later, which
/// makes the kubelet try again; [`remove_socket`] at stop unregisters the
/// driver.
pub async fn serve_registration(
    socket: &Path,
    registration: RegistrationService,
    retry_after: Duration,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let refused = registration.refusals();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let listener = bind_unix(socket)?;
        tracing::info!(socket = %socket.display(), "serving plugin registration for the kubelet");
        let again = async {
            refused.notified().await;
            tokio::time::sleep(retry_after).await;
        };
        let served = Server::builder()
            .layer(RpcLogLayer::new(Arc::clone(&metrics), "registration"))
            .add_service(RegistrationServer::new(registration.clone()))
            .serve_with_incoming(
                UnixListenerStream::new(listener).map(|s| s.map(AuthorityFix::new)),
            );
        // Not a graceful shutdown on a retry: a connection the kubelet
        // left open must not keep the old socket alive.
        tokio::select! {
            served = served => served.map_err(|e| Error::io("serve", socket, std::io::Error::other(e)))?,
            () = again => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}

/// A unix listener on `socket` (its directory made, a stale socket
/// removed), readable and writable by owner and group only.
fn bind_unix(socket: &Path) -> Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    }
    remove_socket(socket)?;
    let listener = UnixListener::bind(socket).map_err(|e| Error::io("bind", socket, e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io("chmod", socket, e))?;
    Ok(listener)
}

/// Removes `socket`; one that is not there is fine.
pub fn remove_socket(socket: &Path) -> Result<()> {
    match std::fs::remove_file(socket) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", socket, e)),
    }
}

/// The services of the node API, and who may call them.
#[derive(Debug, Clone)]
pub struct NodeApi {
    pub clients: ControllerOnly,
    pub identity: IdentityService,
    pub controller: ControllerService,
    pub group_controller: GroupControllerService,
    pub snapshot_metadata: SnapshotMetadataService,
}

/// Serves the node API with mutual TLS on `listener` until `shutdown`.
pub async fn serve_node_api(
    listener: TcpListener,
    tls: ServerTlsConfig,
    api: NodeApi,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let name = addr.map_or_else(|| "node API".to_owned(), |a| a.to_string());
    let builder = Server::builder()
        .tls_config(tls)
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    tracing::info!(address = %name, "serving the node API (mutual TLS)");
    builder
        .layer(RpcLogLayer::new(metrics, "node-api"))
        .add_service(csi::identity_server::IdentityServer::with_interceptor(
            api.identity,
            api.clients.clone(),
        ))
        .add_service(csi::controller_server::ControllerServer::with_interceptor(
            api.controller,
            api.clients.clone(),
        ))
        .add_service(
            csi::group_controller_server::GroupControllerServer::with_interceptor(
                api.group_controller,
                api.clients.clone(),
            ),
        )
        .add_service(
            csi::snapshot_metadata_server::SnapshotMetadataServer::with_interceptor(
                api.snapshot_metadata,
                api.clients,
            ),
        )
        // TCP_NODELAY, tonic's default where it binds the address itself:
        // a bare listener leaves Nagle's algorithm on, which can hold a
        // unary answer's last small write (the trailers) until the
        // controller's delayed ACK.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(|e| Error::io("serve", name, std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot_metadata::MetadataStream;
    use blksnap_node_api::dev::{Pki, Usage};

    #[tokio::test]
    async fn a_refused_registration_makes_the_socket_anew_and_stop_ends_the_server() {
        use csi_proto::pluginregistration as reg;
        use reg::registration_client::RegistrationClient;
        use std::os::unix::fs::MetadataExt;

        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("plugins_registry/d-reg.sock");
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let server = {
            let socket = socket.clone();
            tokio::spawn(async move {
                serve_registration(
                    &socket,
                    RegistrationService::new("d", "/k/plugins/d/csi.sock"),
                    Duration::from_millis(50),
                    Arc::new(Metrics::new()),
                    async move {
                        let _ = stop_rx.wait_for(|s| *s).await;
                    },
                )
                .await
            })
        };
        let client = || async {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
                    .expect("endpoint")
                    .connect()
                    .await
                    .expect("connect");
            RegistrationClient::new(channel)
        };
        let inode = || std::fs::metadata(&socket).map(|m| m.ino()).ok();
        for _ in 0..200 {
            if inode().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first = inode().expect("the socket is there");
        let mut c = client().await;
        assert_eq!(
            c.get_info(reg::InfoRequest {})
                .await
                .expect("GetInfo")
                .into_inner()
                .name,
            "d"
        );
        c.notify_registration_status(reg::RegistrationStatus {
            plugin_registered: false,
            error: "no node yet".into(),
        })
        .await
        .expect("NotifyRegistrationStatus");
        let mut again = None;
        for _ in 0..500 {
            match inode() {
                Some(i) if i != first => {
                    again = Some(i);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        assert!(
            again.is_some(),
            "the socket was not made anew after the refusal"
        );
        let info = client()
            .await
            .get_info(reg::InfoRequest {})
            .await
            .expect("GetInfo again");
        assert_eq!(info.into_inner().endpoint, "/k/plugins/d/csi.sock");
        stop_tx.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops")
            .expect("task")
            .expect("served");
    }

    #[test]
    fn method_labels_come_from_a_fixed_set() {
        assert_eq!(method_label("/csi.v1.Node/NodeGetInfo"), "NodeGetInfo");
        assert_eq!(
            method_label("/csi.v1.SnapshotMetadata/GetMetadataDelta"),
            "GetMetadataDelta"
        );
        assert_eq!(method_label("/csi.v1.Node/pvc-1234"), "other");
        assert_eq!(method_label("/evil.Service/CreateVolume"), "other");
        assert_eq!(method_label(""), "other");
    }

    #[test]
    fn status_is_read_from_grpc_status() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_in(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("10"));
        assert_eq!(status_in(&headers), Some(tonic::Code::Aborted));
    }

    /// SnapshotMetadata whose Allocated fails at once and whose Delta
    /// fails after its first message.
    struct FailingMidStream;

    #[tonic::async_trait]
    impl csi::snapshot_metadata_server::SnapshotMetadata for FailingMidStream {
        type GetMetadataAllocatedStream = MetadataStream<csi::GetMetadataAllocatedResponse>;
        type GetMetadataDeltaStream = MetadataStream<csi::GetMetadataDeltaResponse>;

        async fn get_metadata_allocated(
            &self,
            _request: tonic::Request<csi::GetMetadataAllocatedRequest>,
        ) -> Result<tonic::Response<Self::GetMetadataAllocatedStream>, tonic::Status> {
            Err(tonic::Status::not_found("no such snapshot"))
        }

        async fn get_metadata_delta(
            &self,
            _request: tonic::Request<csi::GetMetadataDeltaRequest>,
        ) -> Result<tonic::Response<Self::GetMetadataDeltaStream>, tonic::Status> {
            Ok(tonic::Response::new(Box::pin(tokio_stream::iter([
                Ok(csi::GetMetadataDeltaResponse::default()),
                Err(tonic::Status::internal("change map unreadable")),
            ]))))
        }
    }

    /// Log lines, captured.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stream_failing_after_its_first_message_is_logged_with_its_code() {
        let log = Captured::default();
        let writer = log.clone();
        let _logging = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish(),
        );
        let metrics = Arc::new(Metrics::new());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            Server::builder()
                .layer(RpcLogLayer::new(Arc::clone(&metrics), "test"))
                .add_service(csi::snapshot_metadata_server::SnapshotMetadataServer::new(
                    FailingMidStream,
                ))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = csi::snapshot_metadata_client::SnapshotMetadataClient::new(channel);

        let mut delta = client
            .get_metadata_delta(csi::GetMetadataDeltaRequest::default())
            .await
            .expect("the stream starts")
            .into_inner();
        assert!(delta.message().await.expect("first message").is_some());
        let failed = delta.message().await.expect_err("then the error");
        assert_eq!(failed.code(), tonic::Code::Internal);
        let refused = client
            .get_metadata_allocated(csi::GetMetadataAllocatedRequest::default())
            .await
            .expect_err("refused at once");
        assert_eq!(refused.code(), tonic::Code::NotFound);

        let text = metrics.encode();
        for (method, code) in [
            ("GetMetadataDelta", "Internal"),
            ("GetMetadataAllocated", "NotFound"),
        ] {
            let sample = format!(
                r#"blksnap_csi_rpc_duration_seconds_count{{method="{method}",code="{code}"}} 1"#
            );
            assert!(text.contains(&sample), "no {sample} in {text}");
        }
        assert!(!text.contains(r#"code="OK""#), "{text}");
        let lines = String::from_utf8(log.0.lock().expect("log buffer").clone()).expect("utf-8");
        let delta_lines: Vec<&str> = lines
            .lines()
            .filter(|l| l.contains(r#"method="GetMetadataDelta""#))
            .collect();
        assert_eq!(delta_lines.len(), 1, "{lines}");
        assert!(
            delta_lines[0].contains("ERROR") && delta_lines[0].contains(r#"code="Internal""#),
            "{lines}"
        );
        let _ = stop.send(());
        server.await.expect("join").expect("served");
    }

    async fn start(
        pki: &Pki,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        crate::testing::Env,
    ) {
        let env = crate::testing::Env::new();
        let (cert, key) = pki.leaf_pem("localhost", Usage::Server);
        let dir = env.dir.path();
        std::fs::write(dir.join("tls.crt"), cert).expect("write");
        std::fs::write(dir.join("tls.key"), key).expect("write");
        std::fs::write(dir.join("ca.crt"), &pki.ca_pem).expect("write");
        let tls = tls_config(
            &dir.join("tls.crt"),
            &dir.join("tls.key"),
            &dir.join("ca.crt"),
        )
        .expect("tls config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let api = NodeApi {
            clients: ControllerOnly::new("blksnap.csi.io").expect("name"),
            identity: IdentityService::new("blksnap.csi.io", Arc::clone(&env.plugin)),
            controller: ControllerService::new(Arc::clone(&env.plugin)),
            group_controller: GroupControllerService::new(Arc::clone(&env.plugin)),
            snapshot_metadata: SnapshotMetadataService::new(Arc::clone(&env.plugin)),
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let metrics = Arc::clone(&env.plugin.metrics);
        tokio::spawn(async move {
            serve_node_api(listener, tls, api, metrics, async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        (addr, tx, env)
    }

    /// GetPluginInfo over TLS with the given client identity.
    async fn call(
        addr: std::net::SocketAddr,
        ca_pem: &str,
        client: Option<(String, String)>,
    ) -> Result<String, String> {
        use tonic::transport::{ClientTlsConfig, Endpoint};
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = client {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let endpoint = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(std::time::Duration::from_secs(5));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let mut client = csi::identity_client::IdentityClient::new(channel);
        client
            .get_plugin_info(csi::GetPluginInfoRequest {})
            .await
            .map(|r| r.into_inner().name)
            .map_err(|s| format!("call: {s:?}"))
    }

    #[tokio::test]
    async fn node_api_requires_a_client_certificate_from_its_ca() {
        let pki = Pki::new("blksnap-csi test CA");
        let (addr, stop, _env) = start(&pki).await;
        let controller = blksnap_node_api::identity::controller_name("blksnap.csi.io");

        // The controller's certificate, from the node API's CA: served.
        let good = pki.leaf_pem(&controller, Usage::Client);
        assert_eq!(
            call(addr, &pki.ca_pem, Some(good))
                .await
                .expect("trusted client"),
            "blksnap.csi.io"
        );

        // A certificate from another CA: refused.
        let foreign = Pki::new("someone else's CA");
        let stranger = foreign.leaf_pem(&controller, Usage::Client);
        let refused = call(addr, &pki.ca_pem, Some(stranger)).await;
        assert!(refused.is_err(), "foreign client served: {refused:?}");

        // Another node's certificate from the same CA, used as a client:
        // the handshake passes, the call is refused, saying why.
        let node = blksnap_node_api::identity::node_server_name("worker-2", "blksnap.csi.io");
        for (who, cert) in [
            ("a node", pki.leaf_pem(&node, Usage::Client)),
            (
                "a client of another name",
                pki.leaf_pem("blksnap-csi-controller", Usage::Client),
            ),
        ] {
            let refused = call(addr, &pki.ca_pem, Some(cert)).await;
            let message = refused.expect_err(who);
            assert!(
                message.contains("PermissionDenied") && message.contains(&controller),
                "{who}: {message}"
            );
        }

        // No certificate at all: refused.
        let anonymous = call(addr, &pki.ca_pem, None).await;
        assert!(anonymous.is_err(), "anonymous client served: {anonymous:?}");

        // Plaintext HTTP/2 is not spoken either.
        let plain =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", addr.port()))
                .expect("endpoint")
                .connect()
                .await;
        if let Ok(channel) = plain {
            let r = csi::identity_client::IdentityClient::new(channel)
                .get_plugin_info(csi::GetPluginInfoRequest {})
                .await;
            assert!(r.is_err(), "plaintext client served");
        }
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn kubelet_socket_serves_identity_and_node_and_is_not_world_accessible() {
        let env = crate::testing::Env::new();
        let socket = env.dir.path().join("csi/csi.sock");
        // A stale socket from an earlier run is replaced.
        std::fs::create_dir_all(socket.parent().expect("parent")).expect("mkdir");
        std::fs::write(&socket, b"stale").expect("stale file");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let identity = IdentityService::new("blksnap.csi.io", Arc::clone(&env.plugin));
        let node =
            NodeService::new(Arc::clone(&env.plugin), 7, env.dir.path()).expect("node service");
        let metrics = Arc::clone(&env.plugin.metrics);
        let path = socket.clone();
        let server = tokio::spawn(async move {
            serve_kubelet(&path, identity, node, metrics, async {
                let _ = rx.await;
            })
            .await
        });
        let mut tries = 0;
        let channel = loop {
            let ep =
                tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
                    .expect("endpoint");
            match ep.connect().await {
                Ok(c) => break c,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("connect: {e}"),
            }
        };
        let mode = std::fs::metadata(&socket)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o007, 0, "socket mode {mode:o}");
        let info = csi::node_client::NodeClient::new(channel.clone())
            .node_get_info(csi::NodeGetInfoRequest {})
            .await
            .expect("NodeGetInfo")
            .into_inner();
        assert_eq!(info.node_id, crate::testing::NODE);
        assert_eq!(info.max_volumes_per_node, 7);
        let name = csi::identity_client::IdentityClient::new(channel.clone())
            .get_plugin_info(csi::GetPluginInfoRequest {})
            .await
            .expect("GetPluginInfo")
            .into_inner()
            .name;
        assert_eq!(name, "blksnap.csi.io");
        // The controller services are not on the kubelet's socket.
        let r = csi::controller_client::ControllerClient::new(channel)
            .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
            .await;
        assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::Unimplemented));
        // Calls are timed by method and code.
        let text = env.plugin.metrics.encode();
        assert!(
            text.contains(
                r#"blksnap_csi_rpc_duration_seconds_count{method="NodeGetInfo",code="OK"} 1"#
            ),
            "{text}"
        );
        let _ = tx.send(());
        server.await.expect("join").expect("served");
    }
}
