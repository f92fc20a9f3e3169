//! The three state-of-the-world resources grpc's xDS client needs for one target, built
//! from a service's instances and the target's configuration. Pure: host names are looked
//! up through a [`HostResolver`] the caller provides, so nothing here does I/O.
//!
//! What grpc refuses, and so what every builder here guarantees (see NOTES, "grpcio's xDS
//! client"): the Listener's connection manager ends with the router filter; every
//! locality group carries a locality and a weight above zero; every endpoint address is
//! an IP literal; priorities start at 0 without gaps.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::load_balancing_policy::Policy as LbPolicyEntry;
use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, LoadBalancingPolicy, OutlierDetection as EnvoyOutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality, SocketAddress,
    TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{Header, PolicySpecifier};
use envoy_types::pb::envoy::config::route::v3::route_action::{ClusterSpecifier, HashPolicy};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::pick_first::v3::PickFirst;
use envoy_types::pb::google::protobuf::{Any, Duration as ProtoDuration, UInt32Value};
use envoy_types::util::pack_any;

use super::names::{ResourceKind, XdsTarget};
use crate::error::{Error, Result};
use crate::instance::{split_endpoint, ServiceInstance};

/// The filter name grpc looks for at the end of the connection manager's filters.
const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// Instance metadata keys read here, shared with balanced mode.
const REGION_KEY: &str = "region";
const ZONE_KEY: &str = "zone";
const WEIGHT_KEY: &str = "weight";

/// Largest instance weight used: a locality's weight is the sum of its instances' and
/// must fit in 32 bits, which this keeps true up to 42,949 instances at the maximum.
pub const MAX_WEIGHT: u32 = 100_000;

/// How grpc spreads calls over a target's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Every endpoint in turn. Localities are split by their weights (the sum of their
    /// instances' `weight`); within one, grpc ignores endpoint weights.
    RoundRobin,
    /// The first endpoint that connects, in instance-id order, and only it.
    PickFirst,
    /// Consistent hashing on the value of one request header (affinity), weighted.
    RingHash { hash_header: String },
}

impl Policy {
    /// The names accepted by [`Policy::from_name`].
    pub const NAMES: [&'static str; 3] = ["round_robin", "pick_first", "ring_hash"];

    /// The policy called `name`; `hash_header` is ring_hash's request header (required by
    /// it, refused by the others), matched case-insensitively as HTTP/2 headers are.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the unknown policy or the unusable header.
    pub fn from_name(name: &str, hash_header: Option<&str>) -> Result<Self> {
        match (name, hash_header) {
            ("round_robin", None) => Ok(Policy::RoundRobin),
            ("pick_first", None) => Ok(Policy::PickFirst),
            ("ring_hash", Some(header)) => Ok(Policy::RingHash { hash_header: checked_header(header)? }),
            ("ring_hash", None) => Err(Error::InvalidConfig(
                "policy 'ring_hash' needs hash_header, the request header whose value picks the backend"
                    .into(),
            )),
            ("round_robin" | "pick_first", Some(header)) => Err(Error::InvalidConfig(format!(
                "hash_header {header:?} applies to policy 'ring_hash' only (got policy {name:?})"
            ))),
            _ => Err(Error::InvalidConfig(format!(
                "unknown policy {name:?} for native mode; expected one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// A header a hash policy can read: a plain ASCII name, not a pseudo-header, not binary
/// (grpc does not hash `-bin` headers), lower-cased.
fn checked_header(header: &str) -> Result<String> {
    let lower = header.to_ascii_lowercase();
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    if lower.is_empty()
        || !lower.chars().all(allowed)
        || lower.ends_with("-bin")
        || lower.starts_with("grpc-")
    {
        return Err(Error::InvalidConfig(format!(
            "hash_header {header:?} is not a usable request header name \
             (letters, digits, '-', '_', '.'; not ending in -bin; not grpc-*)"
        )));
    }
    Ok(lower)
}

/// Outlier detection with grpc's xDS fields and defaults (gRFC A50): success-rate
/// ejection is on by default, failure-percentage ejection off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub success_rate: Option<SuccessRateEjection>,
    pub failure_percentage: Option<FailurePercentageEjection>,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            success_rate: Some(SuccessRateEjection::default()),
            failure_percentage: None,
        }
    }
}

impl OutlierDetection {
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first field out of range: a zero interval or
    /// base ejection time, a maximum ejection time below the base, a percentage above 100.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: String, rule: &str| {
            Err(Error::InvalidConfig(format!("outlier_detection.{field} {rule} (got {value})")))
        };
        if self.interval.is_zero() {
            return bad("interval", format!("{:?}", self.interval), "must be positive");
        }
        if self.base_ejection_time.is_zero() {
            return bad("base_ejection_time", format!("{:?}", self.base_ejection_time), "must be positive");
        }
        if self.max_ejection_time < self.base_ejection_time {
            return bad(
                "max_ejection_time",
                format!("{:?}", self.max_ejection_time),
                "must be at least base_ejection_time",
            );
        }
        let mut percentages = vec![("max_ejection_percent", self.max_ejection_percent)];
        if let Some(rate) = &self.success_rate {
            percentages.push(("success_rate.enforcement_percentage", rate.enforcement_percentage));
        }
        if let Some(failures) = &self.failure_percentage {
            percentages.push(("failure_percentage.threshold", failures.threshold));
            percentages.push(("failure_percentage.enforcement_percentage", failures.enforcement_percentage));
        }
        match percentages.into_iter().find(|(_, value)| *value > 100) {
            Some((field, value)) => bad(field, value.to_string(), "is a percentage, at most 100"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccessRateEjection {
    /// In thousandths: 1900 ejects below mean − 1.9 × stdev.
    pub stdev_factor: u32,
    pub enforcement_percentage: u32,
    pub minimum_hosts: u32,
    pub request_volume: u32,
}

impl Default for SuccessRateEjection {
    fn default() -> Self {
        Self { stdev_factor: 1900, enforcement_percentage: 100, minimum_hosts: 5, request_volume: 100 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailurePercentageEjection {
    pub threshold: u32,
    pub enforcement_percentage: u32,
    pub minimum_hosts: u32,
    pub request_volume: u32,
}

impl Default for FailurePercentageEjection {
    fn default() -> Self {
        Self { threshold: 85, enforcement_percentage: 100, minimum_hosts: 5, request_volume: 50 }
    }
}

/// Everything about one target besides its service's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    pub policy: Policy,
    pub outlier_detection: Option<OutlierDetection>,
    /// Prefer instances whose `zone` metadata equals this one; the others take calls only
    /// when none of these can (EDS priority 1).
    pub zone: Option<String>,
}

impl Default for TargetConfig {
    fn default() -> Self {
        Self { policy: Policy::RoundRobin, outlier_detection: None, zone: None }
    }
}

/// Turns an endpoint's host name into addresses. grpc accepts only IP literals, so the
/// core resolves names itself; implementations answer from what they have already resolved
/// and must not block, since resources are built on the xDS server's tasks.
pub trait HostResolver {
    fn lookup(&self, host: &str) -> Vec<IpAddr>;
}

/// Resolves nothing: endpoints given by host name are left out.
#[derive(Debug, Clone, Copy, Default)]
pub struct IpLiteralsOnly;

impl HostResolver for IpLiteralsOnly {
    fn lookup(&self, _host: &str) -> Vec<IpAddr> {
        Vec::new()
    }
}

/// The resource of `kind` for `target`, named `name` (the name the client asked for, kept
/// as it was written), packed for a discovery response.
pub fn build(
    kind: ResourceKind,
    name: &str,
    target: &XdsTarget,
    config: &TargetConfig,
    instances: &[Arc<ServiceInstance>],
    resolver: &dyn HostResolver,
) -> Any {
    match kind {
        ResourceKind::Listener => {
            pack_any(listener(name, &target.resource_name(ResourceKind::Cluster), config))
        }
        ResourceKind::Cluster => {
            pack_any(cluster(name, &target.resource_name(ResourceKind::ClusterLoadAssignment), config))
        }
        ResourceKind::ClusterLoadAssignment => pack_any(load_assignment(name, instances, config, resolver)),
    }
}

/// A client-side Listener: an API listener whose connection manager routes every call to
/// `cluster_name`, hashing on the policy's header for ring_hash.
pub fn listener(name: &str, cluster_name: &str, config: &TargetConfig) -> Listener {
    let hash_policy = match &config.policy {
        Policy::RingHash { hash_header } => vec![HashPolicy {
            policy_specifier: Some(PolicySpecifier::Header(Header {
                header_name: hash_header.clone(),
                ..Default::default()
            })),
            ..Default::default()
        }],
        Policy::RoundRobin | Policy::PickFirst => Vec::new(),
    };
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(String::new())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster_name.to_string())),
            hash_policy,
            ..Default::default()
        })),
        ..Default::default()
    };
    let route_config = RouteConfiguration {
        name: name.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_string(),
            domains: vec!["*".to_string()],
            routes: vec![route],
            ..Default::default()
        }],
        ..Default::default()
    };
    let manager = HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::RouteConfig(route_config)),
        http_filters: vec![HttpFilter {
            name: ROUTER_FILTER.to_string(),
            config_type: Some(ConfigType::TypedConfig(pack_any(Router::default()))),
            ..Default::default()
        }],
        ..Default::default()
    };
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener { api_listener: Some(pack_any(manager)) }),
        ..Default::default()
    }
}

/// An EDS cluster whose endpoints come over the same ADS stream, under
/// `load_assignment_name` (always set: grpc requires it for `xdstp:` cluster names).
pub fn cluster(name: &str, load_assignment_name: &str, config: &TargetConfig) -> Cluster {
    let (lb_policy, load_balancing_policy) = match config.policy {
        Policy::RoundRobin => (LbPolicy::RoundRobin, None),
        Policy::RingHash { .. } => (LbPolicy::RingHash, None),
        // The enum has no pick_first; grpc takes it from the typed policy list, which wins
        // over `lb_policy` when present (gRFC A52/A62).
        Policy::PickFirst => (
            LbPolicy::RoundRobin,
            Some(LoadBalancingPolicy {
                policies: vec![LbPolicyEntry {
                    typed_extension_config: Some(TypedExtensionConfig {
                        name: "envoy.load_balancing_policies.pick_first".to_string(),
                        typed_config: Some(pack_any(PickFirst { shuffle_address_list: false })),
                    }),
                }],
            }),
        ),
    };
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
                resource_api_version: ApiVersion::V3 as i32,
                ..Default::default()
            }),
            service_name: load_assignment_name.to_string(),
        }),
        lb_policy: lb_policy as i32,
        load_balancing_policy,
        outlier_detection: config.outlier_detection.as_ref().map(outlier_detection),
        ..Default::default()
    }
}

fn outlier_detection(config: &OutlierDetection) -> EnvoyOutlierDetection {
    let number = |value: u32| Some(UInt32Value { value });
    let success = config.success_rate.clone();
    let failure = config.failure_percentage.clone();
    // An enforcement of 0 is how xDS turns an ejection algorithm off.
    EnvoyOutlierDetection {
        interval: Some(proto_duration(config.interval)),
        base_ejection_time: Some(proto_duration(config.base_ejection_time)),
        max_ejection_time: Some(proto_duration(config.max_ejection_time)),
        max_ejection_percent: number(config.max_ejection_percent),
        enforcing_success_rate: number(success.as_ref().map_or(0, |s| s.enforcement_percentage)),
        success_rate_stdev_factor: success.as_ref().and_then(|s| number(s.stdev_factor)),
        success_rate_minimum_hosts: success.as_ref().and_then(|s| number(s.minimum_hosts)),
        success_rate_request_volume: success.as_ref().and_then(|s| number(s.request_volume)),
        enforcing_failure_percentage: number(failure.as_ref().map_or(0, |f| f.enforcement_percentage)),
        failure_percentage_threshold: failure.as_ref().and_then(|f| number(f.threshold)),
        failure_percentage_minimum_hosts: failure.as_ref().and_then(|f| number(f.minimum_hosts)),
        failure_percentage_request_volume: failure.as_ref().and_then(|f| number(f.request_volume)),
        ..Default::default()
    }
}

fn proto_duration(duration: Duration) -> ProtoDuration {
    ProtoDuration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// An instance's `weight` metadata when it is a whole number above zero (capped at
/// [`MAX_WEIGHT`]), else 1.
pub fn instance_weight(instance: &ServiceInstance) -> u32 {
    instance
        .metadata
        .get(WEIGHT_KEY)
        .and_then(|w| w.trim().parse::<u32>().ok())
        .filter(|&w| w > 0)
        .map_or(1, |w| w.min(MAX_WEIGHT))
}

/// One locality group being filled: where it sits and what it holds.
#[derive(Default)]
struct Group {
    region: Option<String>,
    zone: Option<String>,
    weight: u32,
    endpoints: Vec<LbEndpoint>,
}

impl Group {
    /// A group's locality is what all its instances share; a value they disagree on is
    /// left empty (only pick_first groups mix localities).
    fn narrow(field: &mut Option<String>, value: &str, first: bool) {
        if first {
            *field = Some(value.to_string());
        } else if field.as_deref() != Some(value) {
            *field = Some(String::new());
        }
    }
}

/// Every endpoint of every instance, by priority and locality.
///
/// Endpoints follow instance-id order then the instance's own order, so pick_first tries
/// them in that order; for pick_first each priority is one locality group, because grpc
/// orders localities by name, which would reorder the endpoints. An endpoint the grammar
/// refuses, a host name the resolver does not know, or an address already listed (grpc
/// refuses duplicates) is left out. No instance gives no endpoint group at all, which grpc
/// answers with UNAVAILABLE at once.
pub fn load_assignment(
    name: &str,
    instances: &[Arc<ServiceInstance>],
    config: &TargetConfig,
    resolver: &dyn HostResolver,
) -> ClusterLoadAssignment {
    let mut sorted: Vec<&Arc<ServiceInstance>> = instances.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));

    let metadata =
        |instance: &ServiceInstance, key: &str| instance.metadata.get(key).cloned().unwrap_or_default();
    let in_preferred_zone = |instance: &ServiceInstance| {
        config
            .zone
            .as_deref()
            .is_some_and(|zone| instance.metadata.get(ZONE_KEY).map(String::as_str) == Some(zone))
    };
    // Priorities must start at 0: with no instance in the preferred zone, all are at 0.
    let split_by_zone =
        sorted.iter().any(|i| in_preferred_zone(i)) && sorted.iter().any(|i| !in_preferred_zone(i));

    let mut seen: HashSet<SocketAddr> = HashSet::new();
    let mut groups: BTreeMap<(u32, String, String), Group> = BTreeMap::new();
    for instance in sorted {
        let addresses: Vec<SocketAddr> = instance
            .endpoints
            .iter()
            .filter_map(|endpoint| split_endpoint(endpoint))
            .flat_map(|(host, port)| match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => resolver.lookup(host).into_iter().map(|ip| SocketAddr::new(ip, port)).collect(),
            })
            .filter(|address| seen.insert(*address))
            .collect();
        if addresses.is_empty() {
            continue;
        }
        let priority = u32::from(split_by_zone && !in_preferred_zone(instance));
        let (region, zone) = (metadata(instance, REGION_KEY), metadata(instance, ZONE_KEY));
        let key = match config.policy {
            Policy::PickFirst => (priority, String::new(), String::new()),
            Policy::RoundRobin | Policy::RingHash { .. } => (priority, region.clone(), zone.clone()),
        };
        let weight = instance_weight(instance);
        let group = groups.entry(key).or_default();
        let first = group.endpoints.is_empty();
        Group::narrow(&mut group.region, &region, first);
        Group::narrow(&mut group.zone, &zone, first);
        group.weight = group.weight.saturating_add(weight);
        group.endpoints.extend(addresses.into_iter().map(|address| lb_endpoint(address, weight)));
    }

    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: groups
            .into_iter()
            .map(|((priority, _, _), group)| LocalityLbEndpoints {
                locality: Some(Locality {
                    region: group.region.unwrap_or_default(),
                    zone: group.zone.unwrap_or_default(),
                    sub_zone: String::new(),
                }),
                lb_endpoints: group.endpoints,
                load_balancing_weight: Some(UInt32Value { value: group.weight.max(1) }),
                priority,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn lb_endpoint(address: SocketAddr, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(Address {
                address: Some(AddressKind::SocketAddress(SocketAddress {
                    address: address.ip().to_string(),
                    port_specifier: Some(PortSpecifier::PortValue(u32::from(address.port()))),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        // The registry knows an instance is registered, not that it is healthy; grpc sends
        // calls to UNKNOWN endpoints as to HEALTHY ones.
        health_status: HealthStatus::Unknown as i32,
        load_balancing_weight: Some(UInt32Value { value: weight }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::{Message, Name};

    use super::*;
    use crate::instance::fixtures;

    fn inst(id: &str, metadata: &[(&str, &str)], endpoints: &[&str]) -> Arc<ServiceInstance> {
        Arc::new(fixtures::instance(id, "svc", "", metadata, endpoints))
    }

    struct Table(HashMap<&'static str, Vec<IpAddr>>);

    impl HostResolver for Table {
        fn lookup(&self, host: &str) -> Vec<IpAddr> {
            self.0.get(host).cloned().unwrap_or_default()
        }
    }

    fn unpack<T: Message + Name + Default>(any: &Any) -> T {
        assert_eq!(any.type_url, T::type_url());
        T::decode(any.value.as_slice()).unwrap()
    }

    /// (priority, region, zone, locality weight, ["ip:port" with endpoint weight])
    fn groups(cla: &ClusterLoadAssignment) -> Vec<(u32, String, String, u32, Vec<String>)> {
        cla.endpoints
            .iter()
            .map(|group| {
                let locality = group.locality.clone().expect("grpc requires a locality on every group");
                let endpoints = group
                    .lb_endpoints
                    .iter()
                    .map(|e| {
                        assert!(e.health_status == HealthStatus::Unknown as i32);
                        let Some(HostIdentifier::Endpoint(endpoint)) = &e.host_identifier else { panic!() };
                        let Some(AddressKind::SocketAddress(socket)) =
                            endpoint.address.clone().unwrap().address
                        else {
                            panic!()
                        };
                        assert!(
                            socket.address.parse::<IpAddr>().is_ok(),
                            "{} is not an IP literal",
                            socket.address
                        );
                        let Some(PortSpecifier::PortValue(port)) = socket.port_specifier else { panic!() };
                        let weight = e.load_balancing_weight.unwrap().value;
                        format!("{} {port} w{weight}", socket.address)
                    })
                    .collect();
                let weight = group.load_balancing_weight.expect("grpc requires a locality weight").value;
                assert!(weight > 0);
                (group.priority, locality.region, locality.zone, weight, endpoints)
            })
            .collect()
    }

    #[test]
    fn listener_routes_everything_to_the_cluster_through_the_router_filter() {
        let config = TargetConfig::default();
        let listener = listener("s/svc", "s/svc-cluster", &config);
        assert_eq!(listener.name, "s/svc");
        let manager: HttpConnectionManager =
            unpack(listener.api_listener.unwrap().api_listener.as_ref().unwrap());
        let last = manager.http_filters.last().expect("grpc requires the router filter");
        assert_eq!(last.name, "envoy.filters.http.router");
        let Some(ConfigType::TypedConfig(router)) = &last.config_type else {
            panic!("router config missing")
        };
        let _: Router = unpack(router);
        let Some(RouteSpecifier::RouteConfig(routes)) = manager.route_specifier else {
            panic!("no inline routes")
        };
        let host = &routes.virtual_hosts[0];
        assert_eq!(host.domains, ["*"]);
        let route = &host.routes[0];
        assert_eq!(
            route.r#match.as_ref().unwrap().path_specifier,
            Some(PathSpecifier::Prefix(String::new()))
        );
        let Some(Action::Route(action)) = &route.action else { panic!() };
        assert_eq!(action.cluster_specifier, Some(ClusterSpecifier::Cluster("s/svc-cluster".into())));
        assert!(action.hash_policy.is_empty());
    }

    #[test]
    fn ring_hash_hashes_on_the_named_header() {
        let config = TargetConfig {
            policy: Policy::RingHash { hash_header: "x-user-id".into() },
            ..Default::default()
        };
        let listener = listener("l", "c", &config);
        let manager: HttpConnectionManager =
            unpack(listener.api_listener.unwrap().api_listener.as_ref().unwrap());
        let Some(RouteSpecifier::RouteConfig(routes)) = manager.route_specifier else { panic!() };
        let Some(Action::Route(action)) = &routes.virtual_hosts[0].routes[0].action else { panic!() };
        let Some(PolicySpecifier::Header(header)) = &action.hash_policy[0].policy_specifier else { panic!() };
        assert_eq!(header.header_name, "x-user-id");
        assert_eq!(cluster("c", "e", &config).lb_policy, LbPolicy::RingHash as i32);
    }

    #[test]
    fn clusters_are_eds_over_ads_with_the_policy() {
        let round_robin = cluster("c", "e", &TargetConfig::default());
        assert_eq!(
            round_robin.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        );
        let eds = round_robin.eds_cluster_config.unwrap();
        assert_eq!(eds.service_name, "e");
        assert_eq!(
            eds.eds_config.unwrap().config_source_specifier,
            Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {}))
        );
        assert_eq!(round_robin.lb_policy, LbPolicy::RoundRobin as i32);
        assert!(round_robin.load_balancing_policy.is_none() && round_robin.outlier_detection.is_none());

        let pick_first = cluster("c", "e", &TargetConfig { policy: Policy::PickFirst, ..Default::default() });
        let entry = &pick_first.load_balancing_policy.unwrap().policies[0];
        let typed = entry.typed_extension_config.as_ref().unwrap().typed_config.as_ref().unwrap();
        assert_eq!(
            typed.type_url,
            "type.googleapis.com/envoy.extensions.load_balancing_policies.pick_first.v3.PickFirst"
        );
        assert!(!unpack::<PickFirst>(typed).shuffle_address_list);
    }

    #[test]
    fn outlier_detection_carries_grpc_defaults_and_off_switches() {
        let config =
            TargetConfig { outlier_detection: Some(OutlierDetection::default()), ..Default::default() };
        let od = cluster("c", "e", &config).outlier_detection.unwrap();
        assert_eq!(od.interval, Some(ProtoDuration { seconds: 10, nanos: 0 }));
        assert_eq!(od.base_ejection_time, Some(ProtoDuration { seconds: 30, nanos: 0 }));
        assert_eq!(od.max_ejection_time, Some(ProtoDuration { seconds: 300, nanos: 0 }));
        assert_eq!(od.max_ejection_percent.unwrap().value, 10);
        assert_eq!(od.enforcing_success_rate.unwrap().value, 100);
        assert_eq!(od.success_rate_stdev_factor.unwrap().value, 1900);
        assert_eq!(od.enforcing_failure_percentage.unwrap().value, 0, "failure percentage is off by default");

        let failing = OutlierDetection {
            interval: Duration::from_millis(250),
            success_rate: None,
            failure_percentage: Some(FailurePercentageEjection { threshold: 50, ..Default::default() }),
            ..Default::default()
        };
        let od = cluster("c", "e", &TargetConfig { outlier_detection: Some(failing), ..Default::default() })
            .outlier_detection
            .unwrap();
        assert_eq!(od.interval, Some(ProtoDuration { seconds: 0, nanos: 250_000_000 }));
        assert_eq!(od.enforcing_success_rate.unwrap().value, 0);
        assert_eq!(od.enforcing_failure_percentage.unwrap().value, 100);
        assert_eq!(od.failure_percentage_threshold.unwrap().value, 50);
        assert_eq!(od.failure_percentage_request_volume.unwrap().value, 50);
    }

    #[test]
    fn every_endpoint_of_every_instance_by_locality_as_ip_literals() {
        let instances = [
            inst(
                "b",
                &[("region", "eu"), ("zone", "eu-1"), ("weight", "3")],
                &["grpc://10.0.0.2:80", "[::1]:81"],
            ),
            inst("a", &[("region", "eu"), ("zone", "eu-1")], &["10.0.0.1:80"]),
            inst("c", &[("weight", "0")], &["grpc://[2001:db8::1]:443"]),
            inst("d", &[("region", "us"), ("zone", "us-1"), ("weight", "999999999")], &["backend.local:90"]),
        ];
        let resolver = Table(HashMap::from([("backend.local", vec!["10.1.0.1".parse().unwrap()])]));
        let cla = load_assignment("e", &instances, &TargetConfig::default(), &resolver);
        assert_eq!(cla.cluster_name, "e");
        assert_eq!(
            groups(&cla),
            vec![
                (0, "".into(), "".into(), 1, vec!["2001:db8::1 443 w1".into()]),
                (
                    0,
                    "eu".into(),
                    "eu-1".into(),
                    4,
                    vec!["10.0.0.1 80 w1".into(), "10.0.0.2 80 w3".into(), "::1 81 w3".into()]
                ),
                (0, "us".into(), "us-1".into(), MAX_WEIGHT, vec!["10.1.0.1 90 w100000".into()]),
            ]
        );
    }

    #[test]
    fn unresolved_refused_and_duplicate_endpoints_are_left_out() {
        let instances = [
            inst("a", &[], &["10.0.0.1:80", "unknown.host:80", "http://10.0.0.9:80", "10.1:80"]),
            inst("b", &[], &["10.0.0.1:80", "10.0.0.2:80"]),
            inst("c", &[], &["only.a.name:80"]),
        ];
        let cla = load_assignment("e", &instances, &TargetConfig::default(), &IpLiteralsOnly);
        // "c" contributes nothing, so its weight is not counted.
        assert_eq!(
            groups(&cla),
            vec![(0, "".into(), "".into(), 2, vec!["10.0.0.1 80 w1".into(), "10.0.0.2 80 w1".into()])]
        );
    }

    #[test]
    fn no_instance_gives_an_assignment_without_endpoints() {
        let cla = load_assignment("e", &[], &TargetConfig::default(), &IpLiteralsOnly);
        assert_eq!(cla.cluster_name, "e");
        assert!(cla.endpoints.is_empty());
    }

    #[test]
    fn zone_preference_puts_other_zones_at_priority_one() {
        let instances = [
            inst("a", &[("zone", "z1")], &["10.0.0.1:80"]),
            inst("b", &[("zone", "z2")], &["10.0.0.2:80"]),
            inst("c", &[], &["10.0.0.3:80"]),
        ];
        let config = TargetConfig { zone: Some("z2".into()), ..Default::default() };
        let cla = load_assignment("e", &instances, &config, &IpLiteralsOnly);
        let priorities: Vec<_> = groups(&cla).into_iter().map(|(p, _, zone, _, _)| (p, zone)).collect();
        assert_eq!(priorities, vec![(0, "z2".into()), (1, "".into()), (1, "z1".into())]);

        // No instance in the preferred zone: everything at priority 0 (no gap for grpc).
        let config = TargetConfig { zone: Some("z9".into()), ..Default::default() };
        let cla = load_assignment("e", &instances, &config, &IpLiteralsOnly);
        assert!(cla.endpoints.iter().all(|g| g.priority == 0));
    }

    #[test]
    fn pick_first_keeps_instance_id_order_in_one_group_per_priority() {
        let instances = [
            inst("c", &[("zone", "z1")], &["10.0.0.3:80"]),
            inst("a", &[("zone", "z9")], &["10.0.0.1:80", "10.0.0.4:80"]),
            inst("b", &[("zone", "z1")], &["10.0.0.2:80"]),
        ];
        let config = TargetConfig { policy: Policy::PickFirst, ..Default::default() };
        let cla = load_assignment("e", &instances, &config, &IpLiteralsOnly);
        let got = groups(&cla);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].2, "", "zones differ, so the group names none");
        assert_eq!(got[0].4, ["10.0.0.1 80 w1", "10.0.0.4 80 w1", "10.0.0.2 80 w1", "10.0.0.3 80 w1"]);

        let config =
            TargetConfig { policy: Policy::PickFirst, zone: Some("z1".into()), ..Default::default() };
        let got = groups(&load_assignment("e", &instances, &config, &IpLiteralsOnly));
        assert_eq!(got[0].0, 0);
        assert_eq!(got[0].2, "z1");
        assert_eq!(got[0].4, ["10.0.0.2 80 w1", "10.0.0.3 80 w1"]);
        assert_eq!(got[1].0, 1);
    }

    #[test]
    fn build_names_the_resource_as_asked_and_links_the_target_names() {
        let target = XdsTarget::new(Some("genesis-registry"), "s", "svc").unwrap();
        let config = TargetConfig::default();
        let asked = "xdstp://genesis-registry/envoy.config.listener.v3.Listener/s/%73vc";
        let listener: Listener =
            unpack(&build(ResourceKind::Listener, asked, &target, &config, &[], &IpLiteralsOnly));
        assert_eq!(listener.name, asked);
        let cluster_name = target.resource_name(ResourceKind::Cluster);
        let cluster: Cluster =
            unpack(&build(ResourceKind::Cluster, &cluster_name, &target, &config, &[], &IpLiteralsOnly));
        assert_eq!(
            cluster.eds_cluster_config.unwrap().service_name,
            target.resource_name(ResourceKind::ClusterLoadAssignment)
        );
        let cla: ClusterLoadAssignment =
            unpack(&build(ResourceKind::ClusterLoadAssignment, "x", &target, &config, &[], &IpLiteralsOnly));
        assert_eq!(cla.cluster_name, "x");
    }

    #[test]
    fn weights_are_positive_whole_numbers() {
        for (value, weight) in
            [("5", 5), (" 7 ", 7), ("0", 1), ("-3", 1), ("1.5", 1), ("x", 1), ("4294967295", MAX_WEIGHT)]
        {
            assert_eq!(instance_weight(&inst("a", &[("weight", value)], &[])), weight, "{value}");
        }
        assert_eq!(instance_weight(&inst("a", &[], &[])), 1);
    }
}
