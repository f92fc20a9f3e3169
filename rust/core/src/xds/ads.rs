//! A state-of-the-world ADS server on TCP loopback, serving what a [`ResourceSource`]
//! provides to grpc's xDS clients.
//!
//! Per stream and per resource type it keeps the names the client asked for and what it
//! last sent (version, nonce, resources). A response goes out only when that content
//! changes: after a request that names new resources, or when the source says something
//! changed. So an ACK gets no answer, and a NACK (reported to the source and counted) is not answered by
//! the same resources again; the next change is sent as usual. A request answering an
//! older nonce is ignored, as the protocol asks: the client will answer the newer one.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::names::ResourceKind;
use crate::error::{Error, Result};
use crate::stats::XdsStats;
use crate::sync::lock;

/// How long `stop` lets open connections close before cutting them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Responses buffered per stream; a client that reads none of them holds only its own
/// stream back.
const RESPONSE_BUFFER: usize = 16;

/// Where the server's resources come from.
pub trait ResourceSource: Send + Sync + 'static {
    /// The resource of `kind` named `name` as it is now, packed, with `name` as its name;
    /// `None` for a name that is not this source's (it is then left out of responses).
    /// Leaving out a name grpc has never received does not make it fail at once: grpc
    /// waits out its 15 s does-not-exist timer (checked with grpcio 1.85). A source that
    /// wants fast failures answers every name of its authority (e.g. a Listener whose
    /// cluster has no endpoints).
    /// Called for every name a client asks for, on each request and change, so a source
    /// may start following a name the first time it is asked. Must not block.
    fn resource(&self, kind: ResourceKind, name: &str) -> Option<Any>;

    /// A receiver whose value changes whenever any resource may have changed. Streams
    /// then rebuild what their clients asked for and send only what differs.
    fn changes(&self) -> watch::Receiver<u64>;

    /// A client refused a response of `kind` naming `names` (a NACK), for the reason in
    /// `message`; the source says so to whoever owns those names. It is counted anyway.
    fn rejected(
        &self,
        kind: ResourceKind,
        names: &[String],
        message: &str,
        fields: Vec<(&'static str, String)>,
    );
}

/// The running server. Dropping it stops it too, without waiting.
pub struct AdsServer {
    address: SocketAddr,
    stats: Arc<XdsStats>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("address", &self.address)
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl AdsServer {
    /// Listens on 127.0.0.1 at `port` (0: one the system picks) and serves on the current
    /// tokio runtime until [`AdsServer::stop`].
    ///
    /// # Errors
    ///
    /// [`Error::XdsServer`] when the loopback listener cannot be bound.
    pub async fn start(source: Arc<dyn ResourceSource>, port: u16) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|e| Error::XdsServer(format!("the xDS server could not listen on 127.0.0.1: {e}")))?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::XdsServer(format!("the xDS server's listener has no address: {e}")))?;
        let stats = Arc::new(XdsStats::default());
        let stop = CancellationToken::new();
        let service = AdsService { source, stats: Arc::clone(&stats), stop: stop.clone() };
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            // The listener lives in this task: when it ends, the port is free again.
            // Pushes are small writes that must leave at once: without TCP_NODELAY, Nagle's
            // algorithm holds one back until the client's delayed ACK of the previous one.
            let incoming = TcpListenerStream::new(listener).map(|accepted| {
                if let Ok(stream) = &accepted {
                    let _ = stream.set_nodelay(true);
                }
                accepted
            });
            let served = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(service))
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await;
            drop(served);
        });
        Ok(Self { address, stats, stop, task: Mutex::new(Some(task)) })
    }

    /// The loopback address clients put in their bootstrap's `server_uri`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn stats(&self) -> &Arc<XdsStats> {
        &self.stats
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Ends every stream and the listener, and returns once the port is free (connections
    /// that do not close within a short grace period are cut). Idempotent.
    pub async fn stop(&self) {
        self.stop.cancel();
        let task = lock(&self.task).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct AdsService {
    source: Arc<dyn ResourceSource>,
    stats: Arc<XdsStats>,
    stop: CancellationToken,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> std::result::Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        if self.stop.is_cancelled() {
            return Err(Status::unavailable("the xDS server is stopping"));
        }
        let (responses, receiver) = mpsc::channel(RESPONSE_BUFFER);
        let stream = StreamState::new(Arc::clone(&self.source), Arc::clone(&self.stats));
        tokio::spawn(stream.run(request.into_inner(), responses, self.stop.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> std::result::Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        // grpc uses state-of-the-world ADS unless told otherwise; nothing here asks it to.
        Err(Status::unimplemented("incremental xDS is not served; use state-of-the-world ADS"))
    }
}

/// What one stream last sent for one resource type.
struct Sent {
    nonce: String,
    resources: Vec<Any>,
}

#[derive(Default)]
struct Subscription {
    names: BTreeSet<String>,
    sent: Option<Sent>,
}

/// One ADS stream's protocol state; `on_request` and `on_change` decide, `run` does I/O.
struct StreamState {
    source: Arc<dyn ResourceSource>,
    stats: Arc<XdsStats>,
    subscriptions: HashMap<ResourceKind, Subscription>,
    /// Versions and nonces count up per stream: a client only compares them for equality.
    last_version: u64,
    last_nonce: u64,
}

impl StreamState {
    fn new(source: Arc<dyn ResourceSource>, stats: Arc<XdsStats>) -> Self {
        Self { source, stats, subscriptions: HashMap::new(), last_version: 0, last_nonce: 0 }
    }

    async fn run(
        mut self,
        mut requests: Streaming<DiscoveryRequest>,
        responses: mpsc::Sender<std::result::Result<DiscoveryResponse, Status>>,
        stop: CancellationToken,
    ) {
        self.stats.streams.inc();
        let mut changes = Some(self.source.changes());
        'stream: loop {
            let outgoing = tokio::select! {
                () = stop.cancelled() => break 'stream,
                request = requests.message() => match request {
                    Ok(Some(request)) => self.on_request(request).into_iter().collect(),
                    // The client closed its side or the connection broke: nothing to answer.
                    Ok(None) | Err(_) => break 'stream,
                },
                changed = next_change(&mut changes) => {
                    if !changed {
                        changes = None;
                    }
                    self.on_change()
                }
            };
            for response in outgoing {
                if responses.send(Ok(response)).await.is_err() {
                    break 'stream;
                }
                self.stats.responses.inc();
            }
        }
        self.stats.streams.sub(1);
    }

    fn on_request(&mut self, request: DiscoveryRequest) -> Option<DiscoveryResponse> {
        self.stats.requests.inc();
        let Some(kind) = ResourceKind::from_type_url(&request.type_url) else {
            self.stats.unknown_types.inc();
            return None;
        };
        let subscription = self.subscriptions.entry(kind).or_default();
        let last_nonce = subscription.sent.as_ref().map(|sent| sent.nonce.as_str());
        if !request.response_nonce.is_empty() && Some(request.response_nonce.as_str()) != last_nonce {
            self.stats.stale_requests.inc();
            return None;
        }
        if let Some(error) = &request.error_detail {
            self.stats.nacks.inc();
            self.source.rejected(
                kind,
                &request.resource_names,
                &format!(
                    "an xDS client refused the server's {} resources: {}",
                    kind.message_name(),
                    error.message
                ),
                vec![
                    ("type_url", request.type_url.clone()),
                    ("nonce", request.response_nonce.clone()),
                    ("accepted_version", request.version_info.clone()),
                ],
            );
        } else if !request.response_nonce.is_empty() {
            self.stats.acks.inc();
        }
        subscription.names = request.resource_names.into_iter().collect();
        self.respond_if_changed(kind)
    }

    fn on_change(&mut self) -> Vec<DiscoveryResponse> {
        ResourceKind::ALL.into_iter().filter_map(|kind| self.respond_if_changed(kind)).collect()
    }

    /// A response for `kind` when what the client asked for differs from what it was last
    /// sent (or it was sent nothing yet and asks for something). Names the source does not
    /// know are left out (see [`ResourceSource::resource`] for what grpc makes of that).
    fn respond_if_changed(&mut self, kind: ResourceKind) -> Option<DiscoveryResponse> {
        let subscription = self.subscriptions.get_mut(&kind)?;
        let resources: Vec<Any> =
            subscription.names.iter().filter_map(|name| self.source.resource(kind, name)).collect();
        match &subscription.sent {
            None if subscription.names.is_empty() => return None,
            Some(sent) if sent.resources == resources => return None,
            _ => {}
        }
        self.last_version += 1;
        self.last_nonce += 1;
        let nonce = self.last_nonce.to_string();
        subscription.sent = Some(Sent { nonce: nonce.clone(), resources: resources.clone() });
        Some(DiscoveryResponse {
            version_info: self.last_version.to_string(),
            resources,
            type_url: kind.type_url(),
            nonce,
            ..Default::default()
        })
    }
}

/// Waits for the source's next change; `false` once the source has gone (then never
/// again ready, so the stream goes on answering requests).
async fn next_change(changes: &mut Option<watch::Receiver<u64>>) -> bool {
    match changes {
        Some(receiver) => receiver.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::google::rpc::Status as RpcStatus;
    use tokio::time::timeout;

    use super::*;

    /// Resources held in memory, changed by the test.
    struct MemorySource {
        resources: Mutex<HashMap<(ResourceKind, String), Any>>,
        changes: watch::Sender<u64>,
        /// (kind, names, message) of every NACK reported.
        rejections: Mutex<Vec<(ResourceKind, Vec<String>, String)>>,
    }

    impl MemorySource {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                resources: Mutex::new(HashMap::new()),
                changes: watch::channel(0).0,
                rejections: Mutex::new(Vec::new()),
            })
        }

        fn set(&self, kind: ResourceKind, name: &str, body: &[u8]) {
            let any = Any { type_url: kind.type_url(), value: body.to_vec() };
            lock(&self.resources).insert((kind, name.to_string()), any);
            self.changes.send_modify(|generation| *generation += 1);
        }
    }

    impl ResourceSource for MemorySource {
        fn resource(&self, kind: ResourceKind, name: &str) -> Option<Any> {
            lock(&self.resources).get(&(kind, name.to_string())).cloned()
        }

        fn changes(&self) -> watch::Receiver<u64> {
            self.changes.subscribe()
        }

        fn rejected(
            &self,
            kind: ResourceKind,
            names: &[String],
            message: &str,
            _: Vec<(&'static str, String)>,
        ) {
            lock(&self.rejections).push((kind, names.to_vec(), message.to_string()));
        }
    }

    /// One ADS stream seen from the client side.
    struct Client {
        requests: mpsc::Sender<DiscoveryRequest>,
        responses: Streaming<DiscoveryResponse>,
    }

    impl Client {
        async fn connect(server: &AdsServer) -> Self {
            let mut client =
                AggregatedDiscoveryServiceClient::connect(format!("http://{}", server.address()))
                    .await
                    .expect("the server listens on loopback");
            let (requests, outgoing) = mpsc::channel(16);
            let responses = client
                .stream_aggregated_resources(ReceiverStream::new(outgoing))
                .await
                .expect("the stream opens")
                .into_inner();
            Self { requests, responses }
        }

        async fn send(&self, kind: ResourceKind, names: &[&str], answering: Option<&DiscoveryResponse>) {
            let request = DiscoveryRequest {
                type_url: kind.type_url(),
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                version_info: answering.map(|r| r.version_info.clone()).unwrap_or_default(),
                response_nonce: answering.map(|r| r.nonce.clone()).unwrap_or_default(),
                ..Default::default()
            };
            self.requests.send(request).await.unwrap();
        }

        async fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
            let kind = ResourceKind::from_type_url(&response.type_url).unwrap();
            self.send(kind, names, Some(response)).await;
        }

        /// Refuses `response`, keeping `accepted` as the version in use.
        async fn nack(&self, response: &DiscoveryResponse, accepted: &str, names: &[&str]) {
            let request = DiscoveryRequest {
                type_url: response.type_url.clone(),
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                version_info: accepted.to_string(),
                response_nonce: response.nonce.clone(),
                error_detail: Some(RpcStatus { code: 3, message: "bad resource".into(), details: vec![] }),
                ..Default::default()
            };
            self.requests.send(request).await.unwrap();
        }

        async fn next(&mut self) -> DiscoveryResponse {
            timeout(Duration::from_secs(5), self.responses.message())
                .await
                .expect("a response within 5 s")
                .expect("the stream is healthy")
                .expect("the stream is open")
        }

        async fn expect_silence(&mut self) {
            let got = timeout(Duration::from_millis(200), self.responses.message()).await;
            assert!(got.is_err(), "expected no response, got {got:?}");
        }
    }

    fn bodies(response: &DiscoveryResponse) -> Vec<&[u8]> {
        response.resources.iter().map(|r| r.value.as_slice()).collect()
    }

    #[tokio::test]
    async fn serves_subscriptions_pushes_changes_and_counts_nacks() {
        let source = MemorySource::new();
        source.set(ResourceKind::Listener, "s/a", b"L-a");
        source.set(ResourceKind::Listener, "s/b", b"L-b");
        source.set(ResourceKind::Cluster, "s/a", b"C-a");
        source.set(ResourceKind::ClusterLoadAssignment, "s/a", b"E-a1");
        let server = AdsServer::start(source.clone(), 0).await.unwrap();
        assert!(server.address().ip().is_loopback());
        let mut client = Client::connect(&server).await;

        // LDS, then CDS, then EDS, each acknowledged: an ACK gets no answer.
        client.send(ResourceKind::Listener, &["s/a"], None).await;
        let lds = client.next().await;
        assert_eq!(lds.type_url, ResourceKind::Listener.type_url());
        assert_eq!(bodies(&lds), [b"L-a"]);
        assert!(!lds.version_info.is_empty() && !lds.nonce.is_empty());
        client.ack(&lds, &["s/a"]).await;
        client.send(ResourceKind::Cluster, &["s/a"], None).await;
        let cds = client.next().await;
        assert_eq!(bodies(&cds), [b"C-a"]);
        assert_ne!(cds.nonce, lds.nonce);
        client.ack(&cds, &["s/a"]).await;
        client.send(ResourceKind::ClusterLoadAssignment, &["s/a"], None).await;
        let eds = client.next().await;
        assert_eq!(bodies(&eds), [b"E-a1"]);
        client.ack(&eds, &["s/a"]).await;
        client.expect_silence().await;

        // A second name: the answer holds every name asked for, not just the new one.
        client.send(ResourceKind::Listener, &["s/a", "s/b"], Some(&lds)).await;
        let lds2 = client.next().await;
        assert_eq!(bodies(&lds2), [b"L-a".as_slice(), b"L-b"]);
        assert_ne!(lds2.version_info, lds.version_info);
        client.ack(&lds2, &["s/a", "s/b"]).await;

        // A change pushes only the type whose resources changed, with a new version.
        source.set(ResourceKind::ClusterLoadAssignment, "s/a", b"E-a2");
        let push = client.next().await;
        assert_eq!(push.type_url, ResourceKind::ClusterLoadAssignment.type_url());
        assert_eq!(bodies(&push), [b"E-a2"]);
        assert_ne!(push.version_info, eds.version_info);
        client.expect_silence().await;

        // A NACK is counted and not answered with the same resources again.
        client.nack(&push, &eds.version_info, &["s/a"]).await;
        client.expect_silence().await;
        assert_eq!(server.stats().nacks.get(), 1);
        let rejections = lock(&source.rejections).clone();
        assert_eq!(rejections.len(), 1);
        assert_eq!(
            (rejections[0].0, rejections[0].1.clone()),
            (ResourceKind::ClusterLoadAssignment, vec!["s/a".into()])
        );
        assert!(rejections[0].2.contains("bad resource"), "{}", rejections[0].2);
        // A change of a resource nobody asked for pushes nothing.
        source.set(ResourceKind::ClusterLoadAssignment, "s/zzz", b"E-z");
        client.expect_silence().await;
        // The next change of a watched resource is sent as usual.
        source.set(ResourceKind::ClusterLoadAssignment, "s/a", b"E-a3");
        let fixed = client.next().await;
        assert_eq!(bodies(&fixed), [b"E-a3"]);

        // A request answering a superseded response is ignored.
        client.ack(&push, &["s/a"]).await;
        client.ack(&fixed, &["s/a"]).await;
        client.expect_silence().await;
        assert_eq!(server.stats().stale_requests.get(), 1);
        // Six: three first ACKs, the request adding a name (it acknowledges too), two more.
        assert_eq!(server.stats().acks.get(), 6);
        assert_eq!(server.stats().streams.get(), 1);

        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_names_are_answered_without_them_and_other_types_ignored() {
        let source = MemorySource::new();
        let server = AdsServer::start(source.clone(), 0).await.unwrap();
        let mut client = Client::connect(&server).await;
        // The name is left out of the answer (grpc then waits for it: see ResourceSource).
        client.send(ResourceKind::Listener, &["s/nothing"], None).await;
        let empty = client.next().await;
        assert!(empty.resources.is_empty());
        client.ack(&empty, &["s/nothing"]).await;
        // Once it exists, it is pushed.
        source.set(ResourceKind::Listener, "s/nothing", b"L");
        assert_eq!(bodies(&client.next().await), [b"L"]);

        let routes = DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration".into(),
            resource_names: vec!["r".into()],
            ..Default::default()
        };
        client.requests.send(routes).await.unwrap();
        client.expect_silence().await;
        assert_eq!(server.stats().unknown_types.get(), 1);
        server.stop().await;
    }

    #[tokio::test]
    async fn stopping_ends_streams_and_frees_the_port() {
        let source = MemorySource::new();
        source.set(ResourceKind::Listener, "s/a", b"L");
        let server = AdsServer::start(source, 0).await.unwrap();
        let address = server.address();
        let mut client = Client::connect(&server).await;
        client.send(ResourceKind::Listener, &["s/a"], None).await;
        client.next().await;

        timeout(Duration::from_secs(5), server.stop()).await.expect("stop returns promptly");
        assert!(server.is_stopped());
        let end = timeout(Duration::from_secs(5), client.responses.message()).await.expect("the stream ends");
        assert!(!matches!(end, Ok(Some(_))), "no response after stop: {end:?}");
        assert_eq!(server.stats().streams.get(), 0);
        tokio::net::TcpListener::bind(address).await.expect("a stopped server frees its port");
        server.stop().await;
    }
}
