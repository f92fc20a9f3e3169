//! The process's one xDS server: started when the first user (a registry) attaches, stopped
//! when the last one detaches. grpc reads its bootstrap, and so the server's address, once
//! per process for as long as any xds channel lives; so a server started again binds the
//! port its predecessor had whenever it can, and channels that outlived the old server
//! reconnect to the new one.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ads::AdsServer;
use super::source::CacheSource;
use crate::error::Result;
use crate::stats::XdsStats;
use crate::sync::lock;

/// How often endpoint host names are looked up again.
const HOST_REFRESH: Duration = Duration::from_secs(30);

static HOST: Mutex<Option<Arc<Host>>> = Mutex::new(None);

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
    let mut host = lock(&HOST);
    Arc::clone(host.get_or_insert_with(|| {
        Arc::new(Host { changing: tokio::sync::Mutex::new(()), state: Mutex::default() })
    }))
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

/// Stops counting `user`; the last user out stops the server, and this returns once its
/// port is closed.
pub async fn detach(user: u64) {
    let host = host();
    let _changing = host.changing.lock().await;
    let stopping = release(&host, user);
    if let Some(running) = stopping {
        running.server.stop().await;
    }
}

/// [`detach`] for code that cannot wait (a registry dropped without `close()`): a server
/// left without users is told to stop and stops on its own.
pub fn detach_now(user: u64) {
    let host = host();
    drop(release(&host, user));
}

fn release(host: &Host, user: u64) -> Option<Running> {
    let mut state = lock(&host.state);
    state.users.remove(&user);
    if state.users.is_empty() {
        state.running.take()
    } else {
        None
    }
}

/// The running server's address and counters, if one runs.
pub fn running() -> Option<(SocketAddr, Arc<XdsStats>)> {
    let host = lock(&HOST).clone()?;
    let state = lock(&host.state);
    state.running.as_ref().map(|running| (running.server.address(), Arc::clone(running.server.stats())))
}

/// What the running server serves, if one runs.
pub fn running_source() -> Option<Arc<CacheSource>> {
    let host = lock(&HOST).clone()?;
    let state = lock(&host.state);
    state.running.as_ref().map(|running| Arc::clone(&running.source))
}

/// In a forked child: the parent's server and its tasks do not exist here (and a lock may
/// be held by a thread that was not copied), so forget them without touching them; the
/// child's first user starts a server of its own.
pub fn forget_after_fork() {
    if let Ok(mut host) = HOST.try_lock() {
        if let Some(parent) = host.take() {
            std::mem::forget(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn port_open(address: SocketAddr) -> bool {
        tokio::net::TcpStream::connect(address).await.is_ok()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_server_for_every_user_stopped_by_the_last_and_started_again_on_its_port() {
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
}
