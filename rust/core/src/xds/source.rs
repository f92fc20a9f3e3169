//! What the process's ADS server serves: the resources of every native target, built
//! from the registries' watch-fed caches and pushed whenever one of them changes.
//!
//! A *scope* is one namespace with one target configuration (policy, outlier detection,
//! zone); each service followed in a scope is one target. Every name of a well-formed
//! target is answered, followed or not: grpc waits 15 s for a name it never receives
//! before failing, while a target with no instances fails calls at once (UNAVAILABLE,
//! naming the service) and lets `wait_for_ready` calls wait for the first instance.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;

use super::ads::ResourceSource;
use super::hosts::HostCache;
use super::names::{ResourceKind, XdsTarget};
use super::resources::{build, TargetConfig};
use crate::cache::{ServiceCache, Watch};
use crate::instance::split_endpoint;
use crate::log_sink::{Level, LogSink};
use crate::sync::lock;

/// Events a follower may hold unread; it only needs to know that something changed.
const FOLLOW_CAPACITY: usize = 64;

/// Who a scope belongs to: where what goes wrong with its targets is logged.
#[derive(Clone)]
pub struct ScopeOwner {
    pub log: Arc<LogSink>,
    /// The registry's id, the origin of its log records.
    pub origin: u64,
}

struct Scope {
    config: TargetConfig,
    owner: ScopeOwner,
}

/// The resources of every native target, from the caches it follows.
pub struct CacheSource {
    state: Mutex<Scopes>,
    changes: watch::Sender<u64>,
    hosts: HostCache,
}

#[derive(Default)]
struct Scopes {
    scopes: HashMap<String, Scope>,
    /// (scope, service) → the cache served, and the subscription that reports its changes.
    followed: HashMap<(String, String), (Arc<ServiceCache>, Arc<Watch>)>,
}

impl CacheSource {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            changes: watch::Sender::new(0),
            hosts: HostCache::default(),
        })
    }

    /// What the targets of `scope` are made of, and who owns them; a changed configuration
    /// is pushed.
    pub fn set_scope(&self, scope: &str, config: TargetConfig, owner: ScopeOwner) {
        let previous =
            lock(&self.state).scopes.insert(scope.to_string(), Scope { config: config.clone(), owner });
        if previous.is_none_or(|previous| previous.config != config) {
            self.bump();
        }
    }

    /// Serves `cache` as the service of its name in `scope`, pushing whenever it changes
    /// (a no-op if it is served already). Must be called within a tokio runtime: a task
    /// follows the cache until [`CacheSource::drop_scope`] or the source is dropped. The
    /// host names its instances bring are resolved before the change is pushed.
    pub fn follow(self: &Arc<Self>, scope: &str, cache: Arc<ServiceCache>) {
        let key = (scope.to_string(), cache.name().to_string());
        let watch = {
            let mut state = lock(&self.state);
            if state.followed.contains_key(&key) {
                return;
            }
            let watch = cache.subscribe(FOLLOW_CAPACITY);
            state.followed.insert(key, (Arc::clone(&cache), watch.clone()));
            watch
        };
        let source: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            // The first reads replay the instances present now: one push at the start.
            while watch.next().await.is_some() {
                let Some(source) = source.upgrade() else { return };
                source.hosts.resolve(host_names(&cache).iter().map(String::as_str)).await;
                source.bump();
            }
        });
        self.bump();
    }

    /// Looks up every host name in use again each `period`, pushing what changed, for as
    /// long as the source lives. Must be called within a tokio runtime.
    pub fn refresh_hosts_every(self: &Arc<Self>, period: Duration) {
        let source: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(source) = source.upgrade() else { return };
                let caches: Vec<Arc<ServiceCache>> =
                    lock(&source.state).followed.values().map(|(cache, _)| Arc::clone(cache)).collect();
                let in_use: HashSet<String> = caches.iter().flat_map(|cache| host_names(cache)).collect();
                if source.hosts.refresh(&in_use).await {
                    source.bump();
                }
            }
        });
    }

    /// Stops serving `scope`: its followers end, and its targets answer as services with
    /// no instance (so a channel left on one fails at once rather than hanging).
    pub fn drop_scope(&self, scope: &str) {
        let dropped: Vec<Arc<Watch>> = {
            let mut state = lock(&self.state);
            state.scopes.remove(scope);
            let keys: Vec<_> = state.followed.keys().filter(|(s, _)| s == scope).cloned().collect();
            keys.into_iter().filter_map(|key| state.followed.remove(&key)).map(|(_, watch)| watch).collect()
        };
        for watch in &dropped {
            watch.close();
        }
        self.bump();
    }

    /// How many services are followed, in every scope.
    pub fn followed(&self) -> usize {
        lock(&self.state).followed.len()
    }

    fn bump(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }
}

/// The host names (not IP literals) of the endpoints of `cache`'s instances.
fn host_names(cache: &ServiceCache) -> Vec<String> {
    let snapshot = cache.load();
    snapshot
        .instances
        .iter()
        .flat_map(|instance| instance.endpoints.iter())
        .filter_map(|endpoint| split_endpoint(endpoint))
        .filter(|(host, _)| host.parse::<IpAddr>().is_err())
        .map(|(host, _)| host.to_string())
        .collect()
}

impl ResourceSource for CacheSource {
    fn resource(&self, kind: ResourceKind, name: &str) -> Option<Any> {
        let target = XdsTarget::from_resource_name(kind, name)?;
        let (config, instances) = {
            let state = lock(&self.state);
            let config =
                state.scopes.get(target.scope()).map(|scope| scope.config.clone()).unwrap_or_default();
            let key = (target.scope().to_string(), target.service().to_string());
            let instances = state.followed.get(&key).map(|(cache, _)| cache.load().instances.clone());
            (config, instances.unwrap_or_default())
        };
        Some(build(kind, name, &target, &config, &instances, &self.hosts))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Logged once by each registry owning one of the refused names.
    fn rejected(
        &self,
        kind: ResourceKind,
        names: &[String],
        message: &str,
        fields: Vec<(&'static str, String)>,
    ) {
        let scopes: BTreeSet<String> = names
            .iter()
            .filter_map(|name| XdsTarget::from_resource_name(kind, name))
            .map(|target| target.scope().to_string())
            .collect();
        let owners: Vec<ScopeOwner> = {
            let state = lock(&self.state);
            scopes
                .iter()
                .filter_map(|scope| state.scopes.get(scope))
                .map(|scope| scope.owner.clone())
                .collect()
        };
        for owner in owners {
            owner.log.emit(Level::Warning, owner.origin, message, fields.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;

    use super::*;
    use crate::cache::{Event, Position};
    use crate::instance::{fixtures, ServiceInstance};
    use crate::log_sink::Drained;
    use crate::xds::Policy;

    fn instance(id: &str, endpoint: &str) -> Arc<ServiceInstance> {
        Arc::new(fixtures::instance(id, "svc", "", &[], &[endpoint]))
    }

    fn owner() -> ScopeOwner {
        ScopeOwner { log: Arc::new(LogSink::default()), origin: 7 }
    }

    fn publish(cache: &ServiceCache, revision: i64, instances: Vec<Arc<ServiceInstance>>) {
        let events: Vec<Event> = instances.iter().cloned().map(Event::put).collect();
        cache.publish(Position { epoch: 0, revision }, instances, &events);
    }

    fn endpoints_of(source: &CacheSource, scope: &str) -> usize {
        let target = XdsTarget::new(Some("genesis-registry"), scope, "svc").unwrap();
        let name = target.resource_name(ResourceKind::ClusterLoadAssignment);
        let any =
            source.resource(ResourceKind::ClusterLoadAssignment, &name).expect("every name is answered");
        let assignment = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
        assignment.endpoints.iter().map(|group| group.lb_endpoints.len()).sum()
    }

    async fn changed(changes: &mut watch::Receiver<u64>) {
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("a push in time")
            .unwrap();
    }

    #[tokio::test]
    async fn a_followed_cache_is_served_and_its_changes_are_pushed() {
        let source = CacheSource::new();
        let cache = ServiceCache::new("svc", "/ns/svc/");
        publish(&cache, 1, vec![instance("a", "grpc://127.0.0.1:9001")]);
        let mut changes = source.changes();
        source.set_scope("s1", TargetConfig::default(), owner());
        source.follow("s1", cache.clone());
        assert_eq!(source.followed(), 1);
        changed(&mut changes).await;
        assert_eq!(endpoints_of(&source, "s1"), 1);
        changes.mark_unchanged();
        publish(
            &cache,
            2,
            vec![instance("a", "grpc://127.0.0.1:9001"), instance("b", "grpc://127.0.0.1:9002")],
        );
        changed(&mut changes).await;
        assert_eq!(endpoints_of(&source, "s1"), 2);
    }

    #[tokio::test]
    async fn every_well_formed_name_is_answered_and_foreign_names_are_not() {
        let source = CacheSource::new();
        // A scope nobody defined, a service nobody follows: an answer with no endpoints.
        assert_eq!(endpoints_of(&source, "unknown"), 0);
        let listener = XdsTarget::new(Some("genesis-registry"), "unknown", "svc").unwrap();
        assert!(source
            .resource(ResourceKind::Listener, &listener.resource_name(ResourceKind::Listener))
            .is_some());
        assert!(source
            .resource(ResourceKind::Listener, "xdstp://other/envoy.config.listener.v3.Listener")
            .is_none());
    }

    #[tokio::test]
    async fn a_dropped_scope_answers_as_a_service_with_no_instance() {
        let source = CacheSource::new();
        let cache = ServiceCache::new("svc", "/ns/svc/");
        publish(&cache, 1, vec![instance("a", "grpc://127.0.0.1:9001")]);
        source.set_scope(
            "s1",
            TargetConfig { policy: Policy::PickFirst, ..TargetConfig::default() },
            owner(),
        );
        source.follow("s1", cache.clone());
        source.follow("s1", cache.clone()); // followed once
        assert_eq!((source.followed(), endpoints_of(&source, "s1")), (1, 1));
        let mut changes = source.changes();
        source.drop_scope("s1");
        changed(&mut changes).await;
        assert_eq!((source.followed(), endpoints_of(&source, "s1")), (0, 0));
        assert_eq!(cache.subscriber_count(), 0, "the follower's subscription is closed");
    }

    #[tokio::test]
    async fn host_names_are_resolved_before_the_push_that_brings_them() {
        let source = CacheSource::new();
        let cache = ServiceCache::new("svc", "/ns/svc/");
        let mut changes = source.changes();
        source.set_scope("s1", TargetConfig::default(), owner());
        source.follow("s1", cache.clone());
        changes.mark_unchanged();
        publish(&cache, 1, vec![instance("a", "grpc://localhost:9001")]);
        changed(&mut changes).await;
        assert!(endpoints_of(&source, "s1") >= 1, "localhost is served as an IP literal");
    }

    #[tokio::test]
    async fn a_refusal_is_logged_by_the_registry_owning_the_names() {
        let source = CacheSource::new();
        let (mine, theirs) = (owner(), ScopeOwner { log: Arc::new(LogSink::default()), origin: 8 });
        source.set_scope("s1", TargetConfig::default(), mine.clone());
        source.set_scope("s2", TargetConfig::default(), theirs.clone());
        let name = XdsTarget::new(Some("genesis-registry"), "s1", "svc")
            .unwrap()
            .resource_name(ResourceKind::ClusterLoadAssignment);
        source.rejected(ResourceKind::ClusterLoadAssignment, &[name], "duplicate address", vec![]);
        let Drained::Records(records) = mine.log.drain(Duration::from_secs(1), 10) else {
            panic!("the owner logs the refusal")
        };
        assert_eq!((records.len(), records[0].origin), (1, 7));
        assert_eq!(records[0].message, "duplicate address");
        assert!(matches!(theirs.log.drain(Duration::from_millis(10), 10), Drained::Idle));
    }
}
