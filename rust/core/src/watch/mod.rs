//! The watch hub: one etcd watch stream per connector, carrying one watch per service
//! prefix that anyone is interested in, and the single writer of every [`ServiceCache`].
//!
//! Per prefix: a linearizable (paginated) range read gives the instances at revision R
//! and the first snapshot; the watch starts at R + 1 with progress notifications (the
//! connector requires a leader on every call, so a partitioned member fails the stream
//! instead of stalling it). A stream silent for a few seconds is asked for its progress,
//! and given up when no answer comes: a member cut off from this client says nothing at
//! all. When the stream breaks every watch resumes from its last revision + 1, with
//! backoff. A compacted revision, a cancelled watch, or etcd data found reset (revision or
//! raft term going backwards) lead to a re-read whose difference from the cache is
//! published as events, so every view ends exact.

//!
//! `state.rs` holds every decision (phases, resume revisions, compaction, resets,
//! liveness) and is tested without etcd; `hub.rs` is the task that talks to etcd and
//! carries those decisions out. This file is the handle the connector owns.

mod hub;
mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use crate::cache::ServiceCache;
use crate::etcd::EtcdAccess;
use crate::sync::lock;

pub(crate) enum Command {
    Watch(Arc<ServiceCache>),
    Unwatch(String),
}

/// Handle to the hub task; owned by the connector.
pub struct WatchHub {
    commands: mpsc::UnboundedSender<Command>,
    /// Watched services by prefix. Copy-on-write: lookups never lock.
    services: ArcSwap<HashMap<String, Arc<ServiceCache>>>,
    /// How many holders each prefix has; the watch ends when the last lets go.
    interest: Mutex<HashMap<String, usize>>,
}

impl WatchHub {
    pub(crate) fn start(access: Arc<EtcdAccess>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(hub::HubTask::new(access, rx).run());
        Self { commands: tx, services: ArcSwap::default(), interest: Mutex::new(HashMap::new()) }
    }

    /// Registers one more holder of interest in `prefix` and returns its cache, which
    /// becomes ready once the first read completes.
    pub(crate) fn acquire(&self, name: &str, prefix: &str) -> Arc<ServiceCache> {
        let mut interest = lock(&self.interest);
        *interest.entry(prefix.to_string()).or_insert(0) += 1;
        if let Some(cache) = self.services.load().get(prefix) {
            return Arc::clone(cache);
        }
        let cache = ServiceCache::new(name, prefix);
        let mut services = HashMap::clone(&self.services.load());
        services.insert(prefix.to_string(), Arc::clone(&cache));
        self.services.store(Arc::new(services));
        let _ = self.commands.send(Command::Watch(Arc::clone(&cache)));
        cache
    }

    /// Watches (subscribers) open on every service of this hub.
    pub(crate) fn open_watches(&self) -> usize {
        self.services.load().values().map(|cache| cache.subscriber_count()).sum()
    }

    /// Drops one holder of interest; the last one ends the watch and closes its subscribers.
    pub(crate) fn release(&self, prefix: &str) {
        let mut interest = lock(&self.interest);
        let Some(count) = interest.get_mut(prefix) else { return };
        *count -= 1;
        if *count > 0 {
            return;
        }
        interest.remove(prefix);
        let mut services = HashMap::clone(&self.services.load());
        services.remove(prefix);
        self.services.store(Arc::new(services));
        let _ = self.commands.send(Command::Unwatch(prefix.to_string()));
    }
}
