//! The owner of the etcd connection: endpoints, dial timeout, auth, TLS, and the retry
//! policy every call goes through. Registries borrow it and never close it.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::instance::split_endpoint;
use crate::log_sink::LogSink;
use crate::stats::WatchStats;
use crate::watch::WatchHub;

/// PEM material for TLS to etcd. All parts are optional: a CA alone verifies the server,
/// a certificate and key together authenticate the client.
#[derive(Clone, Default)]
pub struct TlsConfig {
    pub ca_pem: Option<Vec<u8>>,
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
    /// The name to verify the server certificate against, when it differs from the host.
    pub server_name: Option<String>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca", &self.ca_pem.is_some())
            .field("cert", &self.cert_pem.is_some())
            .field("key", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

#[derive(Clone)]
pub struct ConnectorConfig {
    /// `host:port`, optionally prefixed with `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// How long `connect()` may take to prove the cluster answers.
    pub dial_timeout: Duration,
    /// Deadline of each call, retries on other members included.
    pub request_timeout: Duration,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: Option<TlsConfig>,
}

impl fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectorConfig")
            .field("endpoints", &self.endpoints)
            .field("dial_timeout", &self.dial_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl ConnectorConfig {
    /// Checks the configuration and returns the endpoints without their scheme.
    fn normalized_endpoints(&self) -> Result<Vec<String>> {
        if self.endpoints.is_empty() {
            return Err(Error::InvalidConfig("etcd endpoints must not be empty".into()));
        }
        let mut out = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            let trimmed = endpoint.trim();
            let (scheme, rest) = match trimmed.split_once("://") {
                Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
                None => (None, trimmed),
            };
            match scheme.as_deref() {
                None => {}
                Some("http") if self.tls.is_some() => {
                    return Err(Error::InvalidConfig(format!(
                        "etcd endpoint {endpoint:?} says http:// but TLS is configured; use https:// or a bare host:port"
                    )))
                }
                Some("https") if self.tls.is_none() => {
                    return Err(Error::InvalidConfig(format!(
                        "etcd endpoint {endpoint:?} says https:// but no TLS configuration was given"
                    )))
                }
                Some("http") | Some("https") => {}
                Some(_) => {
                    return Err(Error::InvalidConfig(format!(
                        "etcd endpoint {endpoint:?} has an unsupported scheme; use host:port, http:// or https://"
                    )))
                }
            }
            let rest = rest.trim_end_matches('/');
            if split_endpoint(rest).is_none() || rest.contains("://") {
                return Err(Error::InvalidConfig(format!(
                    "etcd endpoint {endpoint:?} is not a valid host:port"
                )));
            }
            out.push(rest.to_string());
        }
        if self.dial_timeout.is_zero() {
            return Err(Error::InvalidConfig("dial_timeout must be positive".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::InvalidConfig("request_timeout must be positive".into()));
        }
        match (&self.username, &self.password) {
            (Some(u), Some(_)) if u.is_empty() => {
                return Err(Error::InvalidConfig("username must not be empty".into()))
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::InvalidConfig("username and password must be given together".into()))
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if tls.cert_pem.is_some() != tls.key_pem.is_some() {
                return Err(Error::InvalidConfig(
                    "TLS client certificate and key must be given together".into(),
                ));
            }
        }
        Ok(out)
    }

    fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.dial_timeout)
            // Detects a member that vanished without closing the connection (partition).
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false)
            // A partitioned member must fail our calls and watches, not hang them.
            .with_require_leader(true)
            .with_auto_token_refresh(true);
        if let (Some(user), Some(password)) = (&self.username, &self.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                t = t.ca_certificate(Certificate::from_pem(ca));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_pem, &tls.key_pem) {
                t = t.identity(Identity::from_pem(cert, key));
            }
            if let Some(name) = &tls.server_name {
                t = t.domain_name(name.clone());
            }
            options = options.with_tls(t);
        }
        options
    }
}

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
const MAX_IN_FLIGHT: usize = 128;

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

/// How long one attempt of a call may go unanswered before it is abandoned and retried:
/// a third of the call's budget, at least 1 s and at most 3 s (never more than the budget).
///
/// A member whose leader just died forwards a write to the dead leader, where it is lost;
/// the member answers only when its own request timeout (~7 s) ends, so without this a
/// write during a leader election used up the whole budget. A member partitioned away
/// holds calls the same way until the connection's keep-alive gives up. Every operation
/// the core retries is idempotent (puts of the same value, deletes, reads, revokes); a
/// retried lease grant may leave an unused lease behind, which expires after its TTL.
pub(crate) fn attempt_budget(budget: Duration) -> Duration {
    (budget / 3).clamp(Duration::from_secs(1), Duration::from_secs(3)).min(budget)
}

/// Runs `op` until it succeeds, fails with an error that is not worth retrying with
/// `members` members to pick from (see [`worth_retrying`]), or `budget` runs out, retrying
/// with backoff; each attempt gets at most `per_attempt` once it holds an in-flight permit
/// (time queued for a permit does not count against the attempt).
pub(crate) async fn retry_within<T, F, Fut>(
    what: &str,
    budget: Duration,
    per_attempt: Duration,
    closed: &CancellationToken,
    in_flight: &tokio::sync::Semaphore,
    members: usize,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + budget;
    let mut backoff = Backoff::new(Duration::from_millis(25), Duration::from_millis(500));
    let mut last: Option<Error> = None;
    loop {
        let attempt = tokio::select! {
            _ = closed.cancelled() => return Err(Error::Closed("etcd connector".into())),
            r = tokio::time::timeout_at(deadline, async {
                // Bounded in-flight calls: thousands of concurrent registrations queue
                // here instead of tripping etcd's "too many requests".
                let _permit = in_flight.acquire().await;
                tokio::time::timeout(per_attempt, op()).await
            }) => r,
        };
        let err = match attempt {
            Ok(Ok(Ok(value))) => return Ok(value),
            Ok(Ok(Err(e))) => classify(e, what),
            Ok(Err(_)) => Error::Unavailable(format!("{what}: no answer from etcd within {per_attempt:?}")),
            Err(_) => {
                return Err(match last {
                    // Every member tried refused its certificate: that, not a timeout, is the news.
                    Some(e @ Error::CertificateRefused(_)) => e,
                    Some(e) => Error::Unavailable(format!("{e} (gave up after {budget:?})")),
                    None => Error::Unavailable(format!(
                        "{what}: no answer from etcd within {budget:?} (queued or in flight)"
                    )),
                });
            }
        };
        if !worth_retrying(&err, members) {
            return Err(err);
        }
        let delay = backoff.next_delay();
        if Instant::now() + delay >= deadline {
            return Err(err);
        }
        last = Some(err);
        tokio::select! {
            _ = closed.cancelled() => return Err(Error::Closed("etcd connector".into())),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Maps an etcd-client error onto the core's error enum, naming the operation.
pub(crate) fn classify(err: etcd_client::Error, what: &str) -> Error {
    use tonic::Code;
    if let Some(refused) = certificate_failure(&err, what) {
        return refused;
    }
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            let msg = status.message();
            match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Cancelled => {
                    Error::Unavailable(format!("{what}: etcd unavailable: {}", describe_status(&status)))
                }
                // etcd's back-pressure when its apply loop lags: retry after a pause.
                _ if msg.contains("too many requests") => {
                    Error::Unavailable(format!("{what}: etcd is overloaded: {msg}"))
                }
                // etcd's --max-request-bytes, or the gRPC message limit just above it: the
                // same request fails on every member, so say what is too large instead.
                _ if msg.contains("request is too large") || msg.contains("larger than max") => {
                    Error::InvalidInstance(format!(
                        "{what}: etcd refused the request as too large ({msg}); an instance must encode \
                         to less than etcd's --max-request-bytes"
                    ))
                }
                // Matched on the message whatever the code: an arm limited to InvalidArgument
                // missed it on the read behind a first get_service.
                _ if msg.contains("user name is empty") => Error::Authentication(format!(
                    "{what}: etcd requires authentication but no user name was given (set username and password)"
                )),
                Code::Unknown | Code::Internal if is_transport_message(msg) => {
                    Error::Unavailable(format!("{what}: etcd unavailable: {}", describe_status(&status)))
                }
                Code::Unauthenticated => {
                    Error::Authentication(format!("{what}: etcd rejected the credentials: {msg}"))
                }
                Code::PermissionDenied => {
                    Error::Authentication(format!("{what}: permission denied by etcd: {msg}"))
                }
                Code::InvalidArgument if msg.contains("authentication failed") => Error::Authentication(
                    format!("{what}: authentication failed: invalid user name or password"),
                ),
                Code::FailedPrecondition if msg.contains("authentication is not enabled") => {
                    Error::Authentication(format!(
                        "{what}: credentials were given but authentication is not enabled on this etcd cluster"
                    ))
                }
                Code::NotFound if msg.contains("lease not found") => {
                    Error::LeaseExpired(format!("{what}: {msg}"))
                }
                _ => Error::Etcd(format!("{what}: {}", describe_status(&status))),
            }
        }
        etcd_client::Error::TransportError(e) => {
            Error::Unavailable(format!("{what}: cannot reach etcd: {}", error_chain(&e)))
        }
        etcd_client::Error::IoError(e) => {
            Error::Unavailable(format!("{what}: cannot reach etcd: {}", error_chain(&e)))
        }
        etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found") => {
            Error::LeaseExpired(format!("{what}: {m}"))
        }
        etcd_client::Error::InvalidUri(e) => {
            Error::InvalidConfig(format!("{what}: invalid etcd endpoint: {e}"))
        }
        other => Error::Etcd(format!("{what}: {}", error_chain(&other))),
    }
}

/// How every certificate failure's message starts (see [`certificate_failure`]).
const TLS_REFUSED: &str = "TLS handshake with etcd failed";

/// Whether to try `err`'s call again. A certificate failure is final with one member;
/// with several, the balanced channel may have picked the one member whose certificate
/// is wrong, and another attempt may reach a good one (as long as the deadline allows).
fn worth_retrying(err: &Error, members: usize) -> bool {
    err.is_retryable() || (members > 1 && matches!(err, Error::CertificateRefused(_)))
}

/// A TLS handshake that failed over a certificate, as [`Error::CertificateRefused`].
///
/// etcd-client reports these as an unavailable channel, which the retry loops would
/// retry until the dial timeout; but an untrusted server certificate, a name it does
/// not cover, or a client certificate etcd refuses stay so on every attempt. Failing
/// at once, with the cause and what to check, beats a timeout that hides it.
fn certificate_failure(err: &etcd_client::Error, what: &str) -> Option<Error> {
    let text = match err {
        etcd_client::Error::GRpcStatus(status) => describe_status(status),
        etcd_client::Error::TransportError(e) => error_chain(e),
        _ => return None,
    };
    let cause = text.split(": transport error").next().unwrap_or(&text);
    let hint = if text.contains("invalid peer certificate") {
        if text.contains("not valid for name") {
            "etcd's certificate does not cover the name it was reached by (set server_name to a name it covers)"
        } else {
            "etcd's certificate is not trusted (check the CA file: it must have signed etcd's certificate)"
        }
    } else if text.contains("received fatal alert: CertificateRequired")
        || (text.contains("received fatal alert:")
            && [
                "BadCertificate",
                "UnknownCA",
                "UnsupportedCertificate",
                "CertificateUnknown",
                "AccessDenied",
            ]
            .iter()
            .any(|alert| text.contains(alert)))
    {
        "etcd refused the client certificate, or wanted one and got none (set cert_file and key_file to a certificate its CA signed)"
    } else {
        return None;
    };
    Some(Error::CertificateRefused(format!("{what}: {TLS_REFUSED}: {hint}: {cause}")))
}

fn is_transport_message(msg: &str) -> bool {
    [
        "transport",
        "connection",
        "broken pipe",
        "h2 protocol",
        "tcp connect",
        "goaway",
        "stream no longer needed",
    ]
    .iter()
    .any(|needle| msg.to_ascii_lowercase().contains(needle))
}

fn describe_status(status: &tonic::Status) -> String {
    let mut text = if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    };
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(": ");
        text.push_str(&error_chain(source));
    }
    text
}

/// An error and its causes, joined, so that TLS and socket failures say what happened.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

struct Shared {
    config: ConnectorConfig,
    endpoints: Vec<String>,
    access: ArcSwapOption<EtcdAccess>,
    connecting: tokio::sync::Mutex<()>,
    closed: CancellationToken,
    log: Arc<LogSink>,
    watch_stats: Arc<WatchStats>,
    hub: OnceLock<WatchHub>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.closed.cancel();
        self.log.close();
    }
}

/// Owns one etcd client (one balanced channel over all endpoints) and the watch hub
/// that every registry on this connector shares. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    shared: Arc<Shared>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("endpoints", &self.shared.endpoints)
            .field("connected", &self.is_connected())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connector {
    pub fn new(config: ConnectorConfig) -> Result<Self> {
        let endpoints = config.normalized_endpoints()?;
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                endpoints,
                access: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
                closed: CancellationToken::new(),
                log: Arc::new(LogSink::default()),
                watch_stats: Arc::new(WatchStats::default()),
                hub: OnceLock::new(),
            }),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.shared.endpoints
    }

    pub fn log_sink(&self) -> &Arc<LogSink> {
        &self.shared.log
    }

    pub fn watch_stats(&self) -> &Arc<WatchStats> {
        &self.shared.watch_stats
    }

    pub fn is_connected(&self) -> bool {
        self.shared.access.load().is_some() && !self.is_closed()
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    pub(crate) fn closed_token(&self) -> &CancellationToken {
        &self.shared.closed
    }

    /// Builds the client and proves that the cluster answers (with a leader) within
    /// `dial_timeout`. Idempotent: a connected connector returns at once.
    pub async fn connect(&self) -> Result<()> {
        let shared = &self.shared;
        if self.is_closed() {
            return Err(Error::Closed("etcd connector".into()));
        }
        let _guard = shared.connecting.lock().await;
        if shared.access.load().is_some() {
            return Ok(());
        }
        let config = &shared.config;
        let budget = config.dial_timeout;
        let deadline = Instant::now() + budget;
        let endpoints_text = shared.endpoints.join(", ");
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        let mut last_error: Option<Error> = None;

        let client = loop {
            let attempt = tokio::select! {
                _ = shared.closed.cancelled() => return Err(Error::Closed("etcd connector".into())),
                r = tokio::time::timeout_at(deadline, Client::connect(&shared.endpoints, Some(config.connect_options()))) => r,
            };
            let err = match attempt {
                Ok(Ok(client)) => break client,
                Ok(Err(e)) => classify(e, "connect"),
                Err(_) => last_error.unwrap_or_else(|| Error::Unavailable("connect: timed out".into())),
            };
            if !worth_retrying(&err, shared.endpoints.len())
                || Instant::now() + Duration::from_millis(50) >= deadline
            {
                return Err(naming_the_user(unreachable_error(err, &endpoints_text, budget), config));
            }
            last_error = Some(err);
            tokio::select! {
                _ = shared.closed.cancelled() => return Err(Error::Closed("etcd connector".into())),
                _ = tokio::time::sleep(backoff.next_delay().min(deadline - Instant::now())) => {}
            }
        };

        let access = EtcdAccess {
            client,
            has_credentials: config.username.is_some(),
            members: shared.endpoints.len(),
            request_timeout: config.request_timeout,
            closed: shared.closed.clone(),
            log: shared.log.clone(),
            watch_stats: shared.watch_stats.clone(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let probe = access
            .call_within("connect", remaining.max(Duration::from_millis(1)), |mut c| async move {
                c.status().await
            })
            .await;
        match probe {
            Ok(_) => {}
            // The cluster answered; this user may just not be allowed to ask for status.
            Err(Error::Authentication(m)) if m.contains("permission denied") => {}
            Err(e) => return Err(naming_the_user(unreachable_error(e, &endpoints_text, budget), config)),
        }
        shared.access.store(Some(Arc::new(access)));
        Ok(())
    }

    /// The client and deadlines, or an error saying why there are none.
    pub fn access(&self) -> Result<Arc<EtcdAccess>> {
        if self.is_closed() {
            return Err(Error::Closed("etcd connector".into()));
        }
        self.shared.access.load_full().ok_or_else(|| {
            Error::Unavailable("the etcd connector is not connected; call connect() first".into())
        })
    }

    /// The watch hub shared by every registry on this connector, started on first use.
    /// Must be called from within a tokio runtime.
    pub(crate) fn hub(&self) -> Result<&WatchHub> {
        let access = self.access()?;
        Ok(self.shared.hub.get_or_init(|| WatchHub::start(access)))
    }

    /// The watch hub if it was started; never starts it.
    pub(crate) fn started_hub(&self) -> Option<&WatchHub> {
        self.shared.hub.get()
    }

    /// Ends the hub and every call in flight. Idempotent.
    pub fn close(&self) {
        self.shared.closed.cancel();
        self.shared.access.store(None);
        self.shared.log.close();
    }
}

/// Credentials refused at connect: say whose, since the cause is usually the wrong user or
/// password in a deployment's configuration (the password itself is never shown).
fn naming_the_user(err: Error, config: &ConnectorConfig) -> Error {
    match (err, &config.username) {
        (Error::Authentication(m), Some(user)) if m.contains("user name or password") => {
            Error::Authentication(format!("{m} (user {user:?})"))
        }
        (other, _) => other,
    }
}

fn unreachable_error(err: Error, endpoints: &str, budget: Duration) -> Error {
    match err {
        Error::Unavailable(m) => Error::Unavailable(format!(
            "etcd at {endpoints} did not answer within the dial timeout ({budget:?}): {m}"
        )),
        Error::CertificateRefused(m) => Error::CertificateRefused(format!("etcd at {endpoints}: {m}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoints: &[&str]) -> ConnectorConfig {
        ConnectorConfig {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            dial_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            username: None,
            password: None,
            tls: None,
        }
    }

    #[test]
    fn endpoints_are_normalized_and_checked() {
        let c = config(&["127.0.0.1:2379", "http://localhost:2380", "[::1]:2381"]);
        assert_eq!(c.normalized_endpoints().unwrap(), vec!["127.0.0.1:2379", "localhost:2380", "[::1]:2381"]);
        for bad in ["", "localhost", "ftp://h:1", "https://h:1", "h:99999"] {
            let err = config(&[bad]).normalized_endpoints().unwrap_err();
            assert!(matches!(err, Error::InvalidConfig(_)), "{bad}: {err}");
        }
        assert!(config(&[]).normalized_endpoints().is_err());
    }

    #[test]
    fn credentials_come_in_pairs_and_are_never_printed() {
        let mut c = config(&["h:1"]);
        c.username = Some("root".into());
        assert!(c.normalized_endpoints().is_err());
        c.password = Some("s3cret".into());
        assert!(c.normalized_endpoints().is_ok());
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn an_attempt_gets_a_third_of_the_budget_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(attempt_budget(s(6)), s(2));
        assert_eq!(attempt_budget(s(30)), s(3));
        assert_eq!(attempt_budget(s(2)), s(1));
        assert_eq!(attempt_budget(Duration::from_millis(300)), Duration::from_millis(300));
    }

    /// The first attempt never answers (a write forwarded to a dead leader); the call must
    /// abandon it and succeed on the next attempt, well within its budget.
    #[tokio::test]
    async fn an_unanswered_attempt_is_abandoned_and_retried() {
        let closed = CancellationToken::new();
        let permits = tokio::sync::Semaphore::new(1);
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let started = Instant::now();
        let result = retry_within(
            "put",
            Duration::from_secs(10),
            Duration::from_millis(100),
            &closed,
            &permits,
            1,
            || {
                let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if n == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok::<u32, etcd_client::Error>(n)
                }
            },
        )
        .await;
        assert_eq!(result.unwrap(), 1);
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert_eq!(permits.available_permits(), 1, "the abandoned attempt's permit was returned");
    }

    #[tokio::test]
    async fn attempts_that_never_answer_end_in_unavailable_at_the_budget() {
        let closed = CancellationToken::new();
        let permits = tokio::sync::Semaphore::new(1);
        let result: Result<()> = retry_within(
            "put",
            Duration::from_millis(400),
            Duration::from_millis(100),
            &closed,
            &permits,
            1,
            || async { std::future::pending().await },
        )
        .await;
        match result {
            Err(Error::Unavailable(m)) => assert!(m.starts_with("put: no answer from etcd"), "{m}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn status_codes_map_to_errors() {
        let unavailable = classify(tonic::Status::unavailable("etcdserver: no leader").into(), "put");
        assert!(
            matches!(unavailable, Error::Unavailable(ref m) if m.contains("no leader") && m.starts_with("put"))
        );
        let auth = classify(
            tonic::Status::invalid_argument("etcdserver: authentication failed, invalid user ID or password")
                .into(),
            "connect",
        );
        assert!(matches!(auth, Error::Authentication(_)));
        let anonymous =
            classify(tonic::Status::invalid_argument("etcdserver: user name is empty").into(), "list");
        assert!(matches!(anonymous, Error::Authentication(ref m) if m.contains("no user name")));
        let lease = classify(tonic::Status::not_found("etcdserver: requested lease not found").into(), "put");
        assert!(matches!(lease, Error::LeaseExpired(_)));
        let denied =
            classify(tonic::Status::permission_denied("etcdserver: permission denied").into(), "put");
        assert!(matches!(denied, Error::Authentication(ref m) if m.contains("permission denied")));
    }

    #[test]
    fn refused_credentials_name_the_user_not_the_password() {
        let mut c = config(&["h:1"]);
        c.username = Some("app".into());
        c.password = Some("s3cret".into());
        let refused = classify(
            tonic::Status::invalid_argument("etcdserver: authentication failed, invalid user ID or password")
                .into(),
            "connect",
        );
        let named = naming_the_user(refused, &c).to_string();
        assert!(named.contains("\"app\"") && !named.contains("s3cret"), "{named}");
        let denied = Error::Authentication("put: permission denied by etcd".into());
        assert_eq!(naming_the_user(denied.clone(), &c), denied);
    }

    #[test]
    fn certificate_failures_are_not_retried() {
        let untrusted =
            classify(tonic::Status::unavailable("invalid peer certificate: UnknownIssuer").into(), "connect");
        assert!(
            matches!(untrusted, Error::CertificateRefused(ref m) if m.contains("not trusted") && m.contains("UnknownIssuer")),
            "{untrusted}"
        );
        assert!(!untrusted.is_retryable());
        assert!(!worth_retrying(&untrusted, 1) && worth_retrying(&untrusted, 3));
        let denied = Error::Authentication("put: permission denied by etcd".into());
        assert!(!worth_retrying(&denied, 3));
        let name = classify(
            tonic::Status::unavailable(
                "invalid peer certificate: certificate not valid for name \"x\"; certificate is only valid for ...",
            )
            .into(),
            "connect",
        );
        assert!(matches!(name, Error::CertificateRefused(ref m) if m.contains("server_name")), "{name}");
        let refused =
            classify(tonic::Status::unavailable("received fatal alert: BadCertificate").into(), "connect");
        assert!(
            matches!(refused, Error::CertificateRefused(ref m) if m.contains("client certificate")),
            "{refused}"
        );
        // A handshake cut short is not a certificate problem: it may be a member restarting.
        let eof = classify(tonic::Status::unavailable("tls handshake eof").into(), "connect");
        assert!(eof.is_retryable(), "{eof}");
    }
}
