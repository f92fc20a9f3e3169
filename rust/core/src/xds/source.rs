//! What the process's ADS server serves: the resources of every native target, built
//! from the registries' watch-fed caches and pushed whenever one of them changes.
//!
//! A *scope* is one namespace with one target configuration (policy, outlier detection,
//! zone); each service followed in a scope is one target. Every name of a well-formed
//! target is answered, followed or not: grpc waits 15 s for a name it never receives
//! before failing, while a target with no instances fails calls at once (UNAVAILABLE,
//! naming the service) and lets `wait_for_ready` calls wait for the first instance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use envoy_types::pb::google::protobuf::Any;
use tokio::sync::watch;

use super::ads::ResourceSource;
use super::names::{ResourceKind, XdsTarget};
use super::resources::{build, HostResolver, TargetConfig};
use crate::cache::{ServiceCache, Watch};
use crate::sync::lock;

/// Events a follower may hold unread; it only needs to know that something changed.
const FOLLOW_CAPACITY: usize = 64;

/// The resources of every native target, from the caches it follows.
pub struct CacheSource {
    state: Mutex<Scopes>,
    changes: watch::Sender<u64>,
    resolver: Arc<dyn HostResolver + Send + Sync>,
}

#[derive(Default)]
struct Scopes {
    configs: HashMap<String, TargetConfig>,
    /// (scope, service) → the cache served, and the subscription that reports its changes.
    followed: HashMap<(String, String), (Arc<ServiceCache>, Arc<Watch>)>,
}

impl CacheSource {
    /// A source that resolves endpoint host names with `resolver`.
    pub fn new(resolver: Arc<dyn HostResolver + Send + Sync>) -> Arc<Self> {
        Arc::new(Self { state: Mutex::default(), changes: watch::Sender::new(0), resolver })
    }

    /// What the targets of `scope` are made of; a changed configuration is pushed.
    pub fn set_scope(&self, scope: &str, config: TargetConfig) {
        let changed = lock(&self.state).configs.insert(scope.to_string(), config.clone()) != Some(config);
        if changed {
            self.bump();
        }
    }

    /// Serves `cache` as the service of its name in `scope`, pushing whenever it changes
    /// (a no-op if it is served already). Must be called within a tokio runtime: a task
    /// follows the cache until [`CacheSource::drop_scope`] or the source is dropped.
    pub fn follow(self: &Arc<Self>, scope: &str, cache: Arc<ServiceCache>) {
        let key = (scope.to_string(), cache.name().to_string());
        let watch = {
            let mut state = lock(&self.state);
            if state.followed.contains_key(&key) {
                return;
            }
            let watch = cache.subscribe(FOLLOW_CAPACITY);
            state.followed.insert(key, (cache, watch.clone()));
            watch
        };
        let source: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            // The first reads replay the instances present now: one push at the start.
            while watch.next().await.is_some() {
                match source.upgrade() {
                    Some(source) => source.bump(),
                    None => return,
                }
            }
        });
        self.bump();
    }

    /// Stops serving `scope`: its followers end, and its targets answer as services with
    /// no instance (so a channel left on one fails at once rather than hanging).
    pub fn drop_scope(&self, scope: &str) {
        let dropped: Vec<Arc<Watch>> = {
            let mut state = lock(&self.state);
            state.configs.remove(scope);
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

impl ResourceSource for CacheSource {
    fn resource(&self, kind: ResourceKind, name: &str) -> Option<Any> {
        let target = XdsTarget::from_resource_name(kind, name)?;
        let (config, instances) = {
            let state = lock(&self.state);
            let config = state.configs.get(target.scope()).cloned().unwrap_or_default();
            let key = (target.scope().to_string(), target.service().to_string());
            let instances = state.followed.get(&key).map(|(cache, _)| cache.load().instances.clone());
            (config, instances.unwrap_or_default())
        };
        Some(build(kind, name, &target, &config, &instances, &*self.resolver))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
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
    use crate::xds::resources::IpLiteralsOnly;
    use crate::xds::Policy;

    fn instance(id: &str, endpoint: &str) -> Arc<ServiceInstance> {
        Arc::new(fixtures::instance(id, "svc", "", &[], &[endpoint]))
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
        let source = CacheSource::new(Arc::new(IpLiteralsOnly));
        let cache = ServiceCache::new("svc", "/ns/svc/");
        publish(&cache, 1, vec![instance("a", "grpc://127.0.0.1:9001")]);
        let mut changes = source.changes();
        source.set_scope("s1", TargetConfig::default());
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
        let source = CacheSource::new(Arc::new(IpLiteralsOnly));
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
        let source = CacheSource::new(Arc::new(IpLiteralsOnly));
        let cache = ServiceCache::new("svc", "/ns/svc/");
        publish(&cache, 1, vec![instance("a", "grpc://127.0.0.1:9001")]);
        source.set_scope("s1", TargetConfig { policy: Policy::PickFirst, ..TargetConfig::default() });
        source.follow("s1", cache.clone());
        source.follow("s1", cache.clone()); // followed once
        assert_eq!((source.followed(), endpoints_of(&source, "s1")), (1, 1));
        let mut changes = source.changes();
        source.drop_scope("s1");
        changed(&mut changes).await;
        assert_eq!((source.followed(), endpoints_of(&source, "s1")), (0, 0));
        assert_eq!(cache.subscriber_count(), 0, "the follower's subscription is closed");
    }
}
