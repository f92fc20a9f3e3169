//! The process's one xDS server: started when the first user (a registry) attaches, stopped
//! once the last one has detached and no grpc xDS client is connected any more.
//!
//! Why both: grpc reads its bootstrap, and so the server's address, once per process, and
//! its xDS clients share one connection per server address. An xds channel that outlives
//! the registries (one the user made on a `native_target`) keeps that connection; if the
//! server stopped under it, a channel made later would share the connection's reconnect
//! backoff and wait for it, tens of seconds (seen with grpcio 1.85). So the server waits for
//! such channels to close. A server started again binds the port its predecessor had
//! whenever it can.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use super::ads::AdsServer;
use super::source::CacheSource;
use crate::error::Result;
use crate::stats::XdsStats;
use crate::sync::lock;

/// How often endpoint host names are looked up again.
const HOST_REFRESH: Duration = Duration::from_secs(30);
/// How often a server without users looks for its last xDS client to go.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Swapped without a lock, so that a forked child can drop the parent's host even when a
/// thread that was not copied held one of its locks at the fork.
static HOST: ArcSwapOption<Host> = ArcSwapOption::const_empty();

struct Host {
    /// Held while the server starts or stops, so that the two never interleave.
    changing: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    users: BTreeSet<u64>,
    /// The port of the last server started, tried first by the next one.
    last_port: u16,
    /// Whether a task waits for the last xDS client to go, to stop the server.
    stopping_when_idle: bool,
}

struct Running {
    server: AdsServer,
    source: Arc<CacheSource>,
}

/// What a user of the server needs: where clients reach it and what it serves.
#[derive(Clone)]
pub struct Attached {
    pub address: SocketAddr,
    pub source: Arc<CacheSource>,
}

fn host() -> Arc<Host> {
    if let Some(host) = HOST.load_full() {
        return host;
    }
    let fresh = Arc::new(Host { changing: tokio::sync::Mutex::new(()), state: Mutex::default() });
    HOST.rcu(|current| current.clone().or_else(|| Some(Arc::clone(&fresh))));
    HOST.load_full().unwrap_or(fresh)
}

/// Counts `user` among the server's users, starting the server if none runs. Must be
/// called within a tokio runtime, which then runs the server.
///
/// # Errors
///
/// [`crate::Error::XdsServer`] when no loopback port can be bound.
pub async fn attach(user: u64) -> Result<Attached> {
    let host = host();
    let _changing = host.changing.lock().await;
    let last_port = {
        let mut state = lock(&host.state);
        if let Some(running) = &state.running {
            let attached =
                Attached { address: running.server.address(), source: Arc::clone(&running.source) };
            state.users.insert(user);
            return Ok(attached);
        }
        state.last_port
    };
    let source = CacheSource::new();
    source.refresh_hosts_every(HOST_REFRESH);
    let server = match AdsServer::start(source.clone(), last_port).await {
        Ok(server) => server,
        Err(_) if last_port != 0 => AdsServer::start(source.clone(), 0).await?,
        Err(error) => return Err(error),
    };
    let attached = Attached { address: server.address(), source: Arc::clone(&source) };
    let mut state = lock(&host.state);
    state.last_port = attached.address.port();
    state.running = Some(Running { server, source });
    state.users.insert(user);
    Ok(attached)
}

/// Stops counting `user`. When no user is left, the server stops as soon as no xDS client
/// is connected: here, when none is (returning once the port is closed), else from a task
/// that waits for the last one to go.
pub async fn detach(user: u64) {
    let host = host();
    let _changing = host.changing.lock().await;
    if let Some(running) = release(&host, user) {
        running.server.stop().await;
    }
}

/// [`detach`] for code that cannot wait (a registry dropped without `close()`): a server
/// left without users is told to stop and stops on its own.
pub fn detach_now(user: u64) {
    let host = host();
    drop(release(&host, user));
}

/// Removes `user`; the server to stop now if it has neither users nor clients left.
fn release(host: &Arc<Host>, user: u64) -> Option<Running> {
    let mut state = lock(&host.state);
    state.users.remove(&user);
    if !state.users.is_empty() {
        return None;
    }
    if state.running.as_ref().is_none_or(|running| !running.has_clients()) {
        return state.running.take();
    }
    if !state.stopping_when_idle {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            state.stopping_when_idle = true;
            runtime.spawn(stop_when_idle(Arc::clone(host)));
        }
    }
    None
}

/// Stops the server once it has neither users nor xDS clients; ends early if a user attaches.
async fn stop_when_idle(host: Arc<Host>) {
    loop {
        tokio::time::sleep(IDLE_CHECK).await;
        let _changing = host.changing.lock().await;
        let stopping = {
            let mut state = lock(&host.state);
            if state.running.as_ref().is_some_and(Running::has_clients) && state.users.is_empty() {
                continue;
            }
            state.stopping_when_idle = false;
            if !state.users.is_empty() {
                return;
            }
            state.running.take()
        };
        if let Some(running) = stopping {
            running.server.stop().await;
        }
        return;
    }
}

impl Running {
    /// Whether a grpc xDS client is connected.
    fn has_clients(&self) -> bool {
        self.server.stats().streams.get() > 0
    }
}

/// The running server's address and counters, if one runs.
pub fn running() -> Option<(SocketAddr, Arc<XdsStats>)> {
    let host = HOST.load_full()?;
    let state = lock(&host.state);
    state.running.as_ref().map(|running| (running.server.address(), Arc::clone(running.server.stats())))
}

/// What the running server serves, if one runs.
pub fn running_source() -> Option<Arc<CacheSource>> {
    let host = HOST.load_full()?;
    let state = lock(&host.state);
    state.running.as_ref().map(|running| Arc::clone(&running.source))
}

/// In a forked child: the parent's server and its tasks do not exist here, and its locks
/// may be held by threads that were not copied, so it is forgotten without being touched;
/// the child's first user starts a server of its own.
pub fn forget_after_fork() {
    if let Some(parent) = HOST.swap(None) {
        std::mem::forget(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server is the process's: tests that start and stop it take turns.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    async fn port_open(address: SocketAddr) -> bool {
        tokio::net::TcpStream::connect(address).await.is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_server_for_every_user_stopped_by_the_last_and_started_again_on_its_port() {
        let _serial = SERIAL.lock().await;
        let first = attach(1_000_001).await.unwrap();
        let second = attach(1_000_002).await.unwrap();
        assert_eq!(first.address, second.address);
        assert!(Arc::ptr_eq(&first.source, &second.source));
        assert_eq!(running().map(|(address, _)| address), Some(first.address));

        detach(1_000_001).await;
        assert!(port_open(first.address).await, "a user remains");
        detach(1_000_002).await;
        assert!(running().is_none());
        assert!(!port_open(first.address).await, "the last user out stops the server");

        let again = attach(1_000_003).await.unwrap();
        assert_eq!(again.address, first.address, "the port is reused");
        detach(1_000_003).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_without_users_waits_for_its_last_client_to_go() {
        use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

        let _serial = SERIAL.lock().await;
        let attached = attach(2_000_001).await.unwrap();
        let mut client =
            AggregatedDiscoveryServiceClient::connect(format!("http://{}", attached.address)).await.unwrap();
        let (requests, outgoing) = tokio::sync::mpsc::channel::<DiscoveryRequest>(1);
        let stream = client
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await
            .unwrap();
        let (_, stats) = running().unwrap();
        wait_for(|| stats.streams.get() == 1).await;

        detach(2_000_001).await;
        assert!(port_open(attached.address).await, "a client is still connected");
        assert!(running().is_some());

        drop((requests, stream, client));
        wait_for(|| running().is_none()).await;
        assert!(!port_open(attached.address).await, "stopped once the client went");
    }

    async fn wait_for(condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "not within 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
