//! The owner of the etcd connection: endpoints, dial timeout, auth, TLS, and the retry
//! policy every call goes through. Registries borrow it and never close it.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::{Code, Error, Result, Status};
use crate::etcd::{classify, worth_retrying, EtcdAccess, MAX_IN_FLIGHT};
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
pub struct EtcdConfig {
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

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("dial_timeout", &self.dial_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

impl EtcdConfig {
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

struct Shared {
    config: EtcdConfig,
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
pub struct EtcdConnector {
    shared: Arc<Shared>,
}

impl fmt::Debug for EtcdConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConnector")
            .field("endpoints", &self.shared.endpoints)
            .field("connected", &self.is_connected())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl EtcdConnector {
    pub fn new(config: EtcdConfig) -> Result<Self> {
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
            Err(Error::Authentication(Status { code: Some(Code::PermissionDenied), .. })) => {}
            Err(e) => return Err(naming_the_user(unreachable_error(e, &endpoints_text, budget), config)),
        }
        shared.access.store(Some(Arc::new(access)));
        Ok(())
    }

    /// The client and deadlines, or an error saying why there are none.
    pub(crate) fn access(&self) -> Result<Arc<EtcdAccess>> {
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
fn naming_the_user(err: Error, config: &EtcdConfig) -> Error {
    match (err, &config.username) {
        (Error::Authentication(m), Some(user)) if m.message.contains("user name or password") => {
            Error::Authentication(Status::new(format!("{m} (user {user:?})"), m.code))
        }
        (other, _) => other,
    }
}

fn unreachable_error(err: Error, endpoints: &str, budget: Duration) -> Error {
    match err {
        Error::Unavailable(m) => Error::Unavailable(Status::new(
            format!("etcd at {endpoints} did not answer within the dial timeout ({budget:?}): {m}"),
            m.code,
        )),
        Error::CertificateRefused(m) => {
            Error::CertificateRefused(Status::new(format!("etcd at {endpoints}: {m}"), m.code))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoints: &[&str]) -> EtcdConfig {
        EtcdConfig {
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
}
