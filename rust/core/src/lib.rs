//! The core of genesis-registry: everything that talks to etcd, with no Python in it.
//!
//! - [`connector::EtcdConnector`] owns the etcd client (endpoints, auth, TLS) and the
//!   watch hub; every call goes through `etcd` (retries, error classification, the
//!   paged range read), which knows neither of them.
//! - [`registry::Registry`] registers instances on shared leases ([`lease`]) and serves
//!   discovery from per-service snapshots ([`cache`]) that the connector's watch hub
//!   ([`watch`]: an I/O loop over a state machine) keeps current.
//! - [`native`] gives a registry `xds:` targets that grpc's own balancer follows, served by
//!   the process's xDS server ([`xds`]) from the same caches.
//! - [`instance::ServiceInstance`] is the stored value, encoded as Go's `json.Marshal` does.
//! - [`lease_times`] reads how long each instance's lease has left, for operators' views.
//!
//! Dependencies run one way: registry → connector → watch → cache → instance → error,
//! and connector, watch, lease, lease_times and registry → etcd → error; the key grammar
//! (`instance::instance_id`) is the instance module's.
//!
//! Background work (keep-alive, watches) runs on the caller's tokio runtime and reports
//! through [`log_sink::LogSink`] and [`stats`] counters, which the bindings read; nothing
//! here ever calls back into the host language.

pub mod backoff;
pub mod cache;
pub mod connector;
pub mod error;
mod etcd;
pub mod instance;
pub mod lease;
pub mod lease_times;
pub mod log_sink;
pub mod native;
pub mod registry;
pub mod stats;
pub mod sync;
pub mod watch;
pub mod xds;

pub use cache::{CacheStats, Event, EventKind, ServiceCache, Snapshot, Watch};
pub use connector::{EtcdConfig, EtcdConnector, TlsConfig};
pub use error::{Error, Result};
pub use instance::{endpoint_target, ServiceInstance};
pub use lease_times::LeaseTime;
pub use log_sink::{Level, LogRecord, LogSink};
pub use registry::{effective_namespace, lease_seconds, Registry, RegistryConfig, DEFAULT_NAMESPACE};
