//! Counters the background tasks keep, read by the bindings for `stats()` and metrics.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub(&self, n: u64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What a connector's watch hub has seen.
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Watch events applied to a service cache.
    pub events: Counter,
    /// Times the watch stream broke and was reopened.
    pub restarts: Counter,
    /// Times a compacted revision forced a re-read of a service.
    pub compaction_resyncs: Counter,
    /// Times etcd's data was found reset (revision or raft term went backwards).
    pub data_resets: Counter,
    /// Values under a service prefix that did not decode, or whose id disagreed with the key.
    pub malformed_values: Counter,
    /// Service prefixes currently watched.
    pub watched_services: Counter,
}

impl WatchStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("watch_events", self.events.get()),
            ("watch_restarts", self.restarts.get()),
            ("compaction_resyncs", self.compaction_resyncs.get()),
            ("data_resets", self.data_resets.get()),
            ("malformed_values", self.malformed_values.get()),
            ("watched_services", self.watched_services.get()),
        ]
    }
}

/// What one registry has done with its registrations.
#[derive(Debug, Default)]
pub struct RegistryStats {
    pub registrations: Counter,
    pub deregistrations: Counter,
    /// Leases found lost (expired, revoked, TTL 0, data wiped).
    pub lease_failures: Counter,
    /// Lost leases replaced, with every key on them written again.
    pub lease_recoveries: Counter,
    /// Keys written again because they had disappeared while their lease lived.
    pub re_registrations: Counter,
    /// Keep-alive streams that broke and were reopened.
    pub keepalive_restarts: Counter,
    /// Instances currently registered.
    pub registered: Counter,
    /// Leases currently held (one per distinct TTL).
    pub leases: Counter,
}

impl RegistryStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("registrations", self.registrations.get()),
            ("deregistrations", self.deregistrations.get()),
            ("lease_failures", self.lease_failures.get()),
            ("lease_recoveries", self.lease_recoveries.get()),
            ("re_registrations", self.re_registrations.get()),
            ("keepalive_restarts", self.keepalive_restarts.get()),
            ("registered", self.registered.get()),
            ("leases", self.leases.get()),
        ]
    }
}

/// What the core's xDS server has seen, over all its streams.
#[derive(Debug, Default)]
pub struct XdsStats {
    /// ADS streams currently open (one per grpc xDS client, i.e. per process and server).
    pub streams: Counter,
    pub requests: Counter,
    /// Responses sent: answers to requests and pushes on changes.
    pub responses: Counter,
    pub acks: Counter,
    /// Responses a client refused (error_detail set); each is also logged.
    pub nacks: Counter,
    /// Requests answering a response that a newer one has superseded: ignored, as the
    /// protocol says, since the client will answer the newer one.
    pub stale_requests: Counter,
    /// Requests for a resource type this server does not serve.
    pub unknown_types: Counter,
}

impl XdsStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("xds_streams", self.streams.get()),
            ("xds_requests", self.requests.get()),
            ("xds_responses", self.responses.get()),
            ("xds_acks", self.acks.get()),
            ("xds_nacks", self.nacks.get()),
            ("xds_stale_requests", self.stale_requests.get()),
            ("xds_unknown_types", self.unknown_types.get()),
        ]
    }
}
