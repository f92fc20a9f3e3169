//! The core's xDS server: what lets grpc's own resolver and balancer (an `xds:` target)
//! follow the registry with no Python per call.
//!
//! - `names`: the target a channel dials and the resource names it leads to.
//! - `resources`: the Listener, Cluster and ClusterLoadAssignment of a target, built from
//!   a service's instances (pure).
//! - `ads`: a state-of-the-world ADS server on TCP loopback that serves whatever a
//!   [`ResourceSource`] provides.

mod ads;
mod names;
mod resources;

pub use ads::{AdsServer, ResourceSource};
pub use names::{ResourceKind, XdsTarget};
pub use resources::{
    build, cluster, instance_weight, listener, load_assignment, FailurePercentageEjection, HostResolver,
    IpLiteralsOnly, OutlierDetection, Policy, SuccessRateEjection, TargetConfig, MAX_WEIGHT,
};
