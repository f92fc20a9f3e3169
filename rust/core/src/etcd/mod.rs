//! Access to etcd for everything that talks to it: a client with its deadlines and
//! in-flight bound ([`EtcdAccess`]), the retry loop every call goes through ([`retry`]),
//! how etcd's errors become the core's ([`classify`]), and the paged range read
//! ([`range`]). The connector builds an [`EtcdAccess`]; the watch hub, the lease pool and
//! the registry use it. Nothing here knows about either of them.

mod classify;
mod range;
mod retry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::log_sink::LogSink;
use crate::stats::WatchStats;

pub(crate) use classify::classify;
pub(crate) use range::{read_range, Header};
pub(crate) use retry::worth_retrying;
use retry::{attempt_budget, retry_within};

/// What background tasks and registries need to talk to etcd: a client, the deadlines,
/// and the token that ends everything when the connector closes.
#[derive(Clone)]
pub struct EtcdAccess {
    pub(crate) client: Client,
    /// Whether the client authenticates (so a token may expire and need refreshing).
    pub(crate) has_credentials: bool,
    /// How many members the client may pick from (see [`worth_retrying`]).
    pub(crate) members: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) closed: CancellationToken,
    pub(crate) log: Arc<LogSink>,
    pub(crate) watch_stats: Arc<WatchStats>,
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
}

/// Unary calls in flight at once per connector.
pub(crate) const MAX_IN_FLIGHT: usize = 128;

impl EtcdAccess {
    /// Runs `op` with a fresh client handle, retrying with backoff while etcd is
    /// unavailable (the balanced channel then tries another member), within
    /// `request_timeout`. `what` names the operation in errors.
    pub async fn call<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.call_within(what, self.request_timeout, op).await
    }

    /// Fetches a new auth token (streams keep the token they were opened with).
    pub async fn refresh_token(&self) -> Result<()> {
        if !self.has_credentials {
            return Ok(());
        }
        self.call("refresh auth token", |c| async move { c.refresh_token().await }).await
    }

    pub async fn call_within<T, F, Fut>(&self, what: &str, budget: Duration, mut op: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let client = &self.client;
        retry_within(
            what,
            budget,
            attempt_budget(budget),
            &self.closed,
            &self.in_flight,
            self.members,
            || op(client.clone()),
        )
        .await
    }
}
