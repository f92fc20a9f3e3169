//! The registry: registration on shared leases, discovery from the watch hub's caches.
//!
//! A registry borrows a connected [`EtcdConnector`] and never closes it. Several registries
//! may share one connector (and so one watch stream and one cache per service).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::cache::{ServiceCache, Watch};
use crate::connector::EtcdConnector;
use crate::error::{Error, Result, Status};
use crate::etcd::{read_range, EtcdAccess};
use crate::instance::{validate_segment, ServiceInstance};
use crate::lease::{grant_seconds, LeaseContext, LeasePool};
use crate::lease_times::{read_lease_times, LeaseTime};
use crate::log_sink::Level;
use crate::native::{NativeScopes, NativeTarget};
use crate::stats::RegistryStats;
use crate::sync::lock;
use crate::xds::{ScopeOwner, TargetConfig};

/// etcd refuses requests above 1.5 MiB (`--max-request-bytes`); leave room for the
/// request's own framing.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024 * 3 / 2 - 4096;
/// The shortest TTL accepted.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest time `close()` spends revoking leases; after it, they expire on their own.
const CLOSE_BUDGET: Duration = Duration::from_secs(3);

static NEXT_REGISTRY_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Key prefix of every service, e.g. `/genesis/services`.
    pub namespace: String,
    /// TTL of a registration when none is given.
    pub default_ttl: Duration,
    /// First delay when re-registering after a lost lease; it grows with backoff.
    pub retry_interval: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.into(),
            default_ttl: Duration::from_secs(30),
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// The namespace of a registry configured with none, as in the Go component.
pub const DEFAULT_NAMESPACE: &str = "/genesis/services";

/// The namespace keys are built from, after checking it: `namespace` exactly as given, or
/// [`DEFAULT_NAMESPACE`] when it is empty.
///
/// Go builds keys as `Namespace + "/" + name + "/" + id` from the configured string, so a
/// trailing `/` (or any empty segment) is kept: normalising it away would put a Python
/// client and a Go service configured alike under different keys.
pub fn effective_namespace(namespace: &str) -> Result<String> {
    if namespace.is_empty() {
        return Ok(DEFAULT_NAMESPACE.to_string());
    }
    if namespace.chars().any(char::is_control) {
        return Err(Error::InvalidConfig(format!(
            "namespace must not contain control characters (got {namespace:?})"
        )));
    }
    // Like "." and ".." as ids and names: tools that treat keys as paths would resolve
    // them away and read or delete another namespace's keys.
    if namespace.split('/').any(|segment| segment == "." || segment == "..") {
        return Err(Error::InvalidConfig(format!(
            "namespace must not contain \".\" or \"..\" segments (got {namespace:?})"
        )));
    }
    Ok(namespace.to_string())
}

/// The TTL a registration with `ttl` gets under a registry whose default is
/// `default_ttl`: `ttl`, or the default for `None` and zero; at least [`MIN_TTL`].
///
/// # Errors
///
/// [`Error::InvalidTtl`] naming a TTL below one second.
pub fn effective_ttl(ttl: Option<Duration>, default_ttl: Duration) -> Result<Duration> {
    let ttl = match ttl {
        None => default_ttl,
        Some(t) if t.is_zero() => default_ttl,
        Some(t) => t,
    };
    if ttl < MIN_TTL {
        return Err(Error::InvalidTtl(format!(
            "TTL must be at least 1 second (got {:.3}s)",
            ttl.as_secs_f64()
        )));
    }
    Ok(ttl)
}

/// The whole seconds of the lease etcd is asked for by a registration with `ttl`
/// under a registry whose default is `default_ttl` (the effective TTL rounded up).
/// Needs no connection, so tools can check a TTL before connecting.
///
/// # Errors
///
/// As [`effective_ttl`].
pub fn lease_seconds(ttl: Option<Duration>, default_ttl: Duration) -> Result<i64> {
    effective_ttl(ttl, default_ttl).map(grant_seconds)
}

impl RegistryConfig {
    /// The namespace keys are built from, after checking every field.
    fn validated_namespace(&self) -> Result<String> {
        let namespace = effective_namespace(&self.namespace)?;
        if self.default_ttl < MIN_TTL {
            return Err(Error::InvalidConfig(format!(
                "default_ttl must be at least 1 second (got {:?})",
                self.default_ttl
            )));
        }
        if self.retry_interval.is_zero() {
            return Err(Error::InvalidConfig(format!(
                "retry_interval must be positive (got {:?})",
                self.retry_interval
            )));
        }
        Ok(namespace)
    }
}

#[derive(Debug, Clone)]
struct Registration {
    key: String,
    ttl: Duration,
    /// Held by whichever register or deregister of this id is under way, so operations
    /// on one id never overlap.
    op: Arc<tokio::sync::Mutex<()>>,
    /// True once the registration completed (and until it is deregistered).
    registered: bool,
}

struct Inner {
    id: u64,
    connector: EtcdConnector,
    access: Arc<EtcdAccess>,
    namespace: String,
    config: RegistryConfig,
    registrations: Mutex<HashMap<String, Registration>>,
    leases: LeasePool,
    /// Services this registry holds interest in, by name.
    services: Mutex<HashMap<String, Arc<ServiceCache>>>,
    subscribers: Mutex<Vec<Weak<Watch>>>,
    stats: Arc<RegistryStats>,
    /// The `xds:` targets served for this registry (native mode).
    native: NativeScopes,
    closed: CancellationToken,
    close_done: OnceCell<()>,
}

/// The result of a spawned operation.
async fn join<T>(task: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Err(Error::Closed("runtime".into())),
        Err(e) => Err(Error::Etcd(format!("internal error: {e}").into())),
    }
}

impl Drop for Inner {
    /// A registry dropped without `close()` stops renewing its leases (they expire after
    /// their TTL) and lets go of the services it watched.
    fn drop(&mut self) {
        self.closed.cancel();
        self.native.close_now(self.id);
        let services: Vec<Arc<ServiceCache>> = lock(&self.services).drain().map(|(_, c)| c).collect();
        if let Some(hub) = self.connector.started_hub() {
            for cache in services {
                hub.release(cache.prefix());
            }
        }
    }
}

/// Register, deregister, discover and watch services in one namespace. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("id", &self.inner.id)
            .field("namespace", &self.inner.namespace)
            .field("registered", &lock(&self.inner.registrations).len())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Registry {
    /// A registry over a connected connector.
    pub fn new(connector: &EtcdConnector, config: RegistryConfig) -> Result<Self> {
        let namespace = config.validated_namespace()?;
        let access = connector.access()?;
        let id = NEXT_REGISTRY_ID.fetch_add(1, Ordering::Relaxed);
        let closed = connector.closed_token().child_token();
        let stats = Arc::new(RegistryStats::default());
        let leases = LeasePool::new(LeaseContext {
            access: Arc::clone(&access),
            retry_interval: config.retry_interval,
            stats: Arc::clone(&stats),
            origin: id,
            closed: closed.clone(),
        });
        Ok(Self {
            inner: Arc::new(Inner {
                id,
                connector: connector.clone(),
                access,
                namespace,
                config,
                registrations: Mutex::new(HashMap::new()),
                leases,
                services: Mutex::new(HashMap::new()),
                subscribers: Mutex::new(Vec::new()),
                stats,
                native: NativeScopes::default(),
                closed,
                close_done: OnceCell::new(),
            }),
        })
    }

    /// Identifies this registry in log records ([`crate::LogRecord::origin`]).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    pub fn connector(&self) -> &EtcdConnector {
        &self.inner.connector
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// This registry's counters followed by its connector's watch counters.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let mut stats = self.inner.stats.snapshot();
        stats.extend(self.inner.connector.watch_stats().snapshot());
        let open_watches = self.inner.connector.started_hub().map_or(0, |hub| hub.open_watches());
        stats.push(("open_watches", open_watches as u64));
        stats.push(("log_records_dropped", self.inner.access.log.dropped()));
        stats
    }

    /// The etcd key of an instance: `<namespace>/<name>/<id>`.
    pub fn key_of(&self, name: &str, id: &str) -> String {
        format!("{}/{}/{}", self.inner.namespace, name, id)
    }

    fn prefix_of(&self, name: &str) -> String {
        format!("{}/{}/", self.inner.namespace, name)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed("registry".into()))
        } else {
            Ok(())
        }
    }

    /// Runs `fut` unless the registry closes first.
    async fn unless_closed<T>(&self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            _ = self.inner.closed.cancelled() => Err(Error::Closed("registry".into())),
            r = fut => r,
        }
    }

    /// The TTL a registration gets: `ttl`, or the default for `None` and zero.
    pub fn effective_ttl(&self, ttl: Option<Duration>) -> Result<Duration> {
        effective_ttl(ttl, self.inner.config.default_ttl)
    }

    /// Registers `instance` under `<namespace>/<name>/<id>` and keeps it alive until
    /// [`Registry::deregister`] or [`Registry::close`], re-registering it if its lease is lost.
    ///
    /// The work runs in its own task: a caller that stops waiting (a cancelled awaitable,
    /// Ctrl-C) never leaves a registration half done.
    pub async fn register(&self, instance: ServiceInstance, ttl: Option<Duration>) -> Result<()> {
        self.register_many(vec![instance], ttl).await
    }

    /// Registers many instances with one TTL at once: a transaction per 100 instances on
    /// their shared lease. All or nothing: the instances are all checked first (an error
    /// names the first bad one), and if writing fails none stays registered.
    pub async fn register_many(&self, instances: Vec<ServiceInstance>, ttl: Option<Duration>) -> Result<()> {
        self.check_open()?;
        let ttl = self.effective_ttl(ttl)?;
        let mut entries = Vec::with_capacity(instances.len());
        let mut ids = std::collections::HashSet::with_capacity(instances.len());
        for instance in &instances {
            instance.validate()?;
            if !ids.insert(instance.id.as_str()) {
                return Err(Error::InvalidInstance(
                    format!("service instance {:?} appears twice in one registration", instance.id).into(),
                ));
            }
            let key = self.key_of(&instance.name, &instance.id);
            let value = instance.to_json();
            if key.len() + value.len() > MAX_VALUE_BYTES {
                return Err(Error::InvalidInstance(format!(
                    "service instance {:?} encodes to {} bytes; etcd accepts at most {MAX_VALUE_BYTES} per value",
                    instance.id,
                    key.len() + value.len()
                ).into()));
            }
            entries.push((key, value));
        }
        if instances.is_empty() {
            return Ok(());
        }
        let guards = {
            let mut registrations = lock(&self.inner.registrations);
            if let Some(taken) = instances.iter().find(|i| registrations.contains_key(&i.id)) {
                return Err(Error::AlreadyRegistered(taken.id.clone()));
            }
            let mut guards = Vec::with_capacity(instances.len());
            for (instance, (key, _)) in instances.iter().zip(&entries) {
                let op = Arc::new(tokio::sync::Mutex::new(()));
                guards.push(Arc::clone(&op).try_lock_owned().expect("a new mutex is free"));
                registrations.insert(
                    instance.id.clone(),
                    Registration { key: key.clone(), ttl, op, registered: false },
                );
            }
            guards
        };
        let this = self.clone();
        let work = tokio::spawn(async move {
            let attached = this.inner.leases.attach(ttl, entries).await;
            {
                let mut registrations = lock(&this.inner.registrations);
                for instance in &instances {
                    match (&attached, registrations.get_mut(&instance.id)) {
                        (Ok(_), Some(registration)) => registration.registered = true,
                        _ => {
                            registrations.remove(&instance.id);
                        }
                    }
                }
            }
            drop(guards);
            let lease_id = attached.map_err(|e| match (e, instances.as_slice()) {
                // etcd's "permission denied" names no key; a role is a key prefix, so the
                // key is what tells the user which permission is missing.
                (Error::Authentication(m), [one]) => Error::Authentication(Status::new(
                    format!("cannot register {}: {m}", this.key_of(&one.name, &one.id)),
                    m.code,
                )),
                (Error::Authentication(m), [first, ..]) => Error::Authentication(Status::new(
                    format!(
                        "cannot register {} instances (the first at {}): {m}",
                        instances.len(),
                        this.key_of(&first.name, &first.id)
                    ),
                    m.code,
                )),
                (other, _) => other,
            })?;
            let count = instances.len() as u64;
            this.inner.stats.registrations.add(count);
            this.inner.stats.registered.add(count);
            match instances.as_slice() {
                [one] => this.log(
                    Level::Info,
                    format!("registered {}", this.key_of(&one.name, &one.id)),
                    vec![
                        ("service", one.name.clone()),
                        ("instance_id", one.id.clone()),
                        ("lease_id", lease_id.to_string()),
                    ],
                ),
                many => this.log(
                    Level::Info,
                    format!("registered {} instances", many.len()),
                    vec![("lease_id", lease_id.to_string())],
                ),
            }
            Ok(())
        });
        self.unless_closed(join(work)).await
    }

    /// Deletes the key of an instance this registry registered and stops renewing it.
    /// Succeeds when the key is already gone (for instance, its lease expired). Waits for
    /// a registration of the same id still under way. Like `register`, runs to the end
    /// even if the caller stops waiting.
    pub async fn deregister(&self, id: &str) -> Result<()> {
        self.check_open()?;
        let op = lock(&self.inner.registrations)
            .get(id)
            .map(|r| Arc::clone(&r.op))
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let this = self.clone();
        let id = id.to_string();
        let work = tokio::spawn(async move {
            let _guard = Arc::clone(&op).lock_owned().await;
            // The registration may have failed, or been deregistered, while we waited.
            let registration = match lock(&this.inner.registrations).get(&id) {
                Some(r) if r.registered && Arc::ptr_eq(&r.op, &op) => r.clone(),
                _ => return Err(Error::NotFound(id)),
            };
            this.inner.leases.detach(registration.ttl, &registration.key).await?;
            lock(&this.inner.registrations).remove(&id);
            this.inner.stats.deregistrations.inc();
            this.inner.stats.registered.sub(1);
            this.log(
                Level::Info,
                format!("deregistered {}", registration.key),
                vec![("instance_id", id.clone())],
            );
            Ok(())
        });
        self.unless_closed(join(work)).await
    }

    /// The ids this registry has registered.
    pub fn registered_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.inner.registrations)
            .iter()
            .filter(|(_, r)| r.registered)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The cache of service `name`, reading it from etcd and starting its watch on first
    /// use. Fails if the first read does not complete within the request timeout (the
    /// read goes on in the background; a later call may succeed).
    pub async fn service(&self, name: &str) -> Result<Arc<ServiceCache>> {
        self.check_open()?;
        validate_segment("service name", name)?;
        let existing = lock(&self.inner.services).get(name).cloned();
        let cache = match existing {
            Some(cache) => cache,
            None => {
                let hub = self.inner.connector.hub()?;
                let mut services = lock(&self.inner.services);
                match services.get(name) {
                    Some(cache) => Arc::clone(cache),
                    None => {
                        let cache = hub.acquire(name, &self.prefix_of(name));
                        services.insert(name.to_string(), Arc::clone(&cache));
                        cache
                    }
                }
            }
        };
        if cache.is_ready() {
            return Ok(cache);
        }
        let timeout = self.inner.access.request_timeout;
        let ready = self.unless_closed(async {
            tokio::time::timeout(timeout, cache.wait_ready()).await.unwrap_or_else(|_| {
                let cause = cache.last_error().map(|e| format!(": {e}")).unwrap_or_default();
                Err(Error::Unavailable(
                    format!("could not read service {name:?} from etcd within {timeout:?}{cause}").into(),
                ))
            })
        });
        ready.await?;
        Ok(cache)
    }

    /// Every service in the namespace with its number of instances, sorted by name
    /// (a keys-only read of the namespace, a page at a time).
    pub async fn list_services(&self) -> Result<Vec<(String, u64)>> {
        self.check_open()?;
        let prefix = format!("{}/", self.inner.namespace);
        let mut counts: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        let read = read_range(&self.inner.access, "list services", prefix.as_bytes(), true, |kv| {
            let Ok(key) = std::str::from_utf8(kv.key()) else { return };
            let Some((name, id)) = key[prefix.len()..].split_once('/') else { return };
            if !name.is_empty() && !id.is_empty() && !id.contains('/') {
                *counts.entry(name.to_string()).or_insert(0) += 1;
            }
        });
        self.unless_closed(read).await?;
        Ok(counts.into_iter().collect())
    }

    /// The lease behind every instance key of service `name`, with the time etcd gives it
    /// left, sorted by id: whoever registered the instances (read from etcd, not cached).
    pub async fn lease_times(&self, name: &str) -> Result<Vec<LeaseTime>> {
        self.check_open()?;
        validate_segment("service name", name)?;
        let prefix = self.prefix_of(name);
        self.unless_closed(read_lease_times(&self.inner.access, &prefix)).await
    }

    /// Deletes the key of any instance of service `name`, registered here or not (an
    /// operator's tool: a live owner elsewhere writes its key back within its TTL). An
    /// instance this registry registered is deregistered. True if a key was deleted.
    pub async fn remove(&self, name: &str, id: &str) -> Result<bool> {
        self.check_open()?;
        validate_segment("service name", name)?;
        validate_segment("id", id)?;
        let key = self.key_of(name, id);
        let ours = lock(&self.inner.registrations).get(id).is_some_and(|r| r.key == key && r.registered);
        if ours {
            self.deregister(id).await?;
            return Ok(true);
        }
        let deleted = self
            .unless_closed(self.inner.access.call("delete instance", |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            }))
            .await?;
        Ok(deleted.deleted() > 0)
    }

    /// The `xds:` target through which grpc's own resolver and balancer follow service
    /// `name` under `config` (native mode), reading the service first if needed and
    /// starting the process's xDS server on first use.
    ///
    /// # Errors
    ///
    /// As [`Registry::service`]; [`Error::InvalidConfig`] for a configuration grpc would
    /// refuse; [`Error::XdsServer`] when the server cannot start.
    pub async fn native_target(&self, name: &str, config: TargetConfig) -> Result<NativeTarget> {
        let cache = self.service(name).await?;
        let owner = ScopeOwner { log: Arc::clone(&self.inner.access.log), origin: self.inner.id };
        let target = self.inner.native.target(self.inner.id, owner, cache, config).await?;
        if self.is_closed() {
            // close() ran meanwhile and may have missed the scope just made.
            self.inner.native.close(self.inner.id).await;
            return Err(Error::Closed("registry".into()));
        }
        Ok(target)
    }

    /// Figures about every service this registry watches, sorted by name.
    pub fn service_stats(&self) -> Vec<crate::cache::CacheStats> {
        let mut stats: Vec<_> = lock(&self.inner.services).values().map(|c| c.stats()).collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// The cache of service `name` if this registry already read it; never waits.
    pub fn ready_service(&self, name: &str) -> Option<Arc<ServiceCache>> {
        lock(&self.inner.services).get(name).filter(|c| c.is_ready()).cloned()
    }

    /// Events of service `name`: first a PUT per current instance (sorted by id), then
    /// changes. `capacity` bounds the queue; a subscriber that falls further behind is
    /// resynced from the snapshot.
    pub async fn watch(&self, name: &str, capacity: usize) -> Result<Arc<Watch>> {
        let cache = self.service(name).await?;
        let subscriber = cache.subscribe(capacity);
        let mut subscribers = lock(&self.inner.subscribers);
        subscribers.retain(|s| s.upgrade().is_some_and(|s| !s.is_closed()));
        subscribers.push(Arc::downgrade(&subscriber));
        if self.is_closed() {
            subscriber.close();
        }
        Ok(subscriber)
    }

    /// Ends watches, revokes every lease (within a few seconds; leases left unrevoked
    /// expire by themselves) and releases the services this registry watched.
    /// Idempotent; concurrent callers all return once it is done.
    pub async fn close(&self) {
        self.inner
            .close_done
            .get_or_init(|| async {
                self.inner.closed.cancel();
                for subscriber in lock(&self.inner.subscribers).drain(..) {
                    if let Some(subscriber) = subscriber.upgrade() {
                        subscriber.close();
                    }
                }
                let services: Vec<Arc<ServiceCache>> =
                    lock(&self.inner.services).drain().map(|(_, cache)| cache).collect();
                if let Some(hub) = self.inner.connector.started_hub() {
                    for cache in &services {
                        hub.release(cache.prefix());
                    }
                }
                self.inner.native.close(self.inner.id).await;
                let budget = CLOSE_BUDGET.min(self.inner.access.request_timeout);
                self.inner.leases.close(budget).await;
                let count = {
                    let mut registrations = lock(&self.inner.registrations);
                    let count = registrations.len();
                    registrations.clear();
                    count
                };
                self.inner.stats.registered.set(0);
                self.log(Level::Debug, format!("registry closed; {count} instance(s) deregistered"), vec![]);
            })
            .await;
    }

    fn log(&self, level: Level, message: String, fields: Vec<(&'static str, String)>) {
        self.inner.access.log.emit(level, self.inner.id, message, fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_seconds_takes_the_default_for_none_and_zero_and_rounds_up() {
        let default = Duration::from_secs(30);
        assert_eq!(lease_seconds(None, default).unwrap(), 30);
        assert_eq!(lease_seconds(Some(Duration::ZERO), default).unwrap(), 30);
        assert_eq!(lease_seconds(Some(Duration::from_millis(2500)), default).unwrap(), 3);
        assert_eq!(lease_seconds(Some(Duration::from_secs(1)), default).unwrap(), 1);
        let refused = lease_seconds(Some(Duration::from_millis(500)), default).unwrap_err();
        assert_eq!(refused.to_string(), "TTL must be at least 1 second (got 0.500s)");
        assert!(matches!(refused, Error::InvalidTtl(_)));
    }

    #[test]
    fn namespace_is_kept_as_configured_like_go() {
        for (given, used) in [
            ("/genesis/services", "/genesis/services"),
            ("/team/services/", "/team/services/"),
            ("/a//b", "/a//b"),
            ("/", "/"),
            ("team", "team"),
            ("", DEFAULT_NAMESPACE),
        ] {
            let config = RegistryConfig { namespace: given.into(), ..Default::default() };
            assert_eq!(config.validated_namespace().unwrap(), used, "{given:?}");
        }
    }

    #[test]
    fn namespace_that_could_escape_is_refused_naming_it() {
        for bad in ["/a\u{0}b", "/a\nb", "/a/../b", "/a/./b", "..", "/ns/..", "./x"] {
            let config = RegistryConfig { namespace: bad.into(), ..Default::default() };
            let err = config.validated_namespace().unwrap_err();
            assert!(matches!(err, Error::InvalidConfig(_)), "{bad:?}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{bad:?}: {err}");
        }
    }

    #[test]
    fn durations_are_checked() {
        let short = RegistryConfig { default_ttl: Duration::from_millis(999), ..Default::default() };
        assert!(short.validated_namespace().unwrap_err().to_string().contains("999ms"));
    }
}
