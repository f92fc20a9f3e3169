//! The core's xDS server: what lets grpc's own resolver and balancer (an `xds:` target)
//! follow the registry with no Python per call.
//!
//! - `names`: the target a channel dials and the resource names it leads to.
//! - `resources`: the Listener, Cluster and ClusterLoadAssignment of a target, built from
//!   a service's instances (pure).
//! - `ads`: a state-of-the-world ADS server on TCP loopback that serves whatever a
//!   [`ResourceSource`] provides.
//! - `host`: the process's one server, started by its first user and stopped by its last.
//! - `hosts`: endpoint host names, resolved ahead of time (grpc takes only IP literals).
//! - `source`: the [`ResourceSource`] of the process, fed by the registries' caches.

mod ads;
pub mod host;
mod hosts;
mod names;
mod resources;
mod source;

pub use ads::{AdsServer, ResourceSource};
pub use hosts::HostCache;
pub use names::{ResourceKind, XdsTarget, AUTHORITY};
pub use resources::{
    build, cluster, instance_weight, listener, load_assignment, FailurePercentageEjection, HostResolver,
    IpLiteralsOnly, OutlierDetection, Policy, SuccessRateEjection, TargetConfig, MAX_WEIGHT,
};
pub use source::{CacheSource, ScopeOwner};

/// The builders behind the ADS server, as grpc's client uses them: a Listener names its
/// cluster, the cluster names its endpoints, each fetched by the name the previous one gave.
#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;
    use tokio::sync::{mpsc, watch};
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::instance::{fixtures, ServiceInstance};
    use crate::sync::lock;

    /// Targets of one scope with one configuration, over instances the test changes.
    struct Services {
        config: TargetConfig,
        instances: Mutex<HashMap<String, Vec<Arc<ServiceInstance>>>>,
        changes: watch::Sender<u64>,
    }

    impl Services {
        fn set(&self, service: &str, instances: Vec<Arc<ServiceInstance>>) {
            lock(&self.instances).insert(service.to_string(), instances);
            self.changes.send_modify(|generation| *generation += 1);
        }
    }

    impl ResourceSource for Services {
        fn resource(&self, kind: ResourceKind, name: &str) -> Option<Any> {
            let target = XdsTarget::from_resource_name(kind, name)?;
            let instances = lock(&self.instances).get(target.service()).cloned().unwrap_or_default();
            Some(build(kind, name, &target, &self.config, &instances, &IpLiteralsOnly))
        }

        fn changes(&self) -> watch::Receiver<u64> {
            self.changes.subscribe()
        }

        fn rejected(&self, _: ResourceKind, names: &[String], message: &str, _: Vec<(&'static str, String)>) {
            panic!("grpc's client would not refuse these: {names:?}: {message}");
        }
    }

    fn instance(id: &str, endpoint: &str) -> Arc<ServiceInstance> {
        Arc::new(fixtures::instance(id, "svc", "", &[], &[endpoint]))
    }

    fn addresses(cla: &ClusterLoadAssignment) -> Vec<String> {
        cla.endpoints
            .iter()
            .flat_map(|group| &group.lb_endpoints)
            .map(|endpoint| format!("{:?}", endpoint.host_identifier))
            .collect()
    }

    async fn ask(
        requests: &mpsc::Sender<DiscoveryRequest>,
        responses: &mut tonic::Streaming<DiscoveryResponse>,
        kind: ResourceKind,
        name: &str,
    ) -> DiscoveryResponse {
        let request = DiscoveryRequest {
            type_url: kind.type_url(),
            resource_names: vec![name.into()],
            ..Default::default()
        };
        requests.send(request).await.unwrap();
        let response = next(responses).await;
        let ack = DiscoveryRequest {
            type_url: kind.type_url(),
            resource_names: vec![name.into()],
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        requests.send(ack).await.unwrap();
        response
    }

    async fn next(responses: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), responses.message()).await.unwrap().unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_client_follows_listener_to_cluster_to_endpoints_and_sees_changes() {
        let services = Arc::new(Services {
            config: TargetConfig::default(),
            instances: Mutex::new(HashMap::new()),
            changes: watch::channel(0).0,
        });
        let server = AdsServer::start(services.clone(), 0).await.unwrap();
        let mut client =
            AggregatedDiscoveryServiceClient::connect(format!("http://{}", server.address())).await.unwrap();
        let (requests, outgoing) = mpsc::channel(16);
        let mut responses =
            client.stream_aggregated_resources(ReceiverStream::new(outgoing)).await.unwrap().into_inner();

        let target = XdsTarget::new(Some("genesis-registry"), "r1", "svc").unwrap();
        let listener_name = target.resource_name(ResourceKind::Listener);
        let lds = ask(&requests, &mut responses, ResourceKind::Listener, &listener_name).await;
        let listener = Listener::decode(lds.resources[0].value.as_slice()).unwrap();
        assert_eq!(listener.name, listener_name);
        let manager = HttpConnectionManager::decode(
            listener.api_listener.unwrap().api_listener.unwrap().value.as_slice(),
        )
        .unwrap();
        let Some(RouteSpecifier::RouteConfig(routes)) = manager.route_specifier else { panic!() };
        let Some(Action::Route(action)) = &routes.virtual_hosts[0].routes[0].action else { panic!() };
        let Some(ClusterSpecifier::Cluster(cluster_name)) = &action.cluster_specifier else { panic!() };

        let cds = ask(&requests, &mut responses, ResourceKind::Cluster, cluster_name).await;
        let cluster = Cluster::decode(cds.resources[0].value.as_slice()).unwrap();
        let endpoints_name = cluster.eds_cluster_config.unwrap().service_name;

        // No instance yet: an assignment with no endpoints, not a missing resource.
        let eds = ask(&requests, &mut responses, ResourceKind::ClusterLoadAssignment, &endpoints_name).await;
        let empty = ClusterLoadAssignment::decode(eds.resources[0].value.as_slice()).unwrap();
        assert_eq!(empty.cluster_name, endpoints_name);
        assert!(empty.endpoints.is_empty());

        // An instance registers: only the endpoints are pushed.
        services.set("svc", vec![instance("a", "grpc://127.0.0.1:9001")]);
        let push = next(&mut responses).await;
        assert_eq!(push.type_url, ResourceKind::ClusterLoadAssignment.type_url());
        assert_ne!(push.version_info, eds.version_info);
        let assignment = ClusterLoadAssignment::decode(push.resources[0].value.as_slice()).unwrap();
        assert_eq!(addresses(&assignment).len(), 1);
        assert!(addresses(&assignment)[0].contains("127.0.0.1"));
        server.stop().await;
    }
}
