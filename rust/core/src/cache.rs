//! Per-service snapshots and the subscribers fed from them.
//!
//! The watch hub is the single writer of each [`ServiceCache`]: it publishes a new
//! immutable [`Snapshot`] per event batch (arc-swap), then hands the batch's events to
//! every [`Watch`]. Readers load the current snapshot without locking.
//!
//! A subscriber's queue is bounded. When it overflows the queue is dropped and the
//! subscriber is marked lagged; its next read computes the difference between what it has
//! delivered so far and the current snapshot, so a slow consumer skips intermediate
//! states but still ends with an exact view, and never slows the hub or anyone else.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::instance::ServiceInstance;
use crate::sync::lock;

/// Where in etcd's history a snapshot or event sits. `epoch` grows when etcd's data is
/// found reset (revisions start over), so positions stay ordered across a wipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub epoch: u64,
    pub revision: i64,
}

/// One immutable view of a service: its instances sorted by id.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub position: Position,
    /// Grows with every publication; lets readers cache what they derive from a snapshot.
    pub generation: u64,
    pub instances: Vec<Arc<ServiceInstance>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Put => "PUT",
            EventKind::Delete => "DELETE",
        }
    }
}

/// A change to a service. A DELETE carries an instance with only `id` and `name` set.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub instance: Arc<ServiceInstance>,
}

impl Event {
    pub fn put(instance: Arc<ServiceInstance>) -> Self {
        Self { kind: EventKind::Put, instance }
    }

    pub fn delete(name: &str, id: &str) -> Self {
        let instance = ServiceInstance { id: id.to_string(), name: name.to_string(), ..Default::default() };
        Self { kind: EventKind::Delete, instance: Arc::new(instance) }
    }
}

/// The events that turn `from` into `to`, sorted by id: PUT for new or changed
/// instances, DELETE for vanished ones. Both inputs are sorted by id.
pub fn diff<'a, I, J>(name: &str, from: I, to: J) -> Vec<Event>
where
    I: IntoIterator<Item = &'a Arc<ServiceInstance>>,
    J: IntoIterator<Item = &'a Arc<ServiceInstance>>,
{
    let mut from = from.into_iter().peekable();
    let mut to = to.into_iter().peekable();
    let mut events = Vec::new();
    loop {
        match (from.peek(), to.peek()) {
            (None, None) => break,
            (Some(old), None) => {
                events.push(Event::delete(name, &old.id));
                from.next();
            }
            (None, Some(new)) => {
                events.push(Event::put(Arc::clone(new)));
                to.next();
            }
            (Some(old), Some(new)) => match old.id.cmp(&new.id) {
                std::cmp::Ordering::Less => {
                    events.push(Event::delete(name, &old.id));
                    from.next();
                }
                std::cmp::Ordering::Greater => {
                    events.push(Event::put(Arc::clone(new)));
                    to.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(old, new) && old != new {
                        events.push(Event::put(Arc::clone(new)));
                    }
                    from.next();
                    to.next();
                }
            },
        }
    }
    events
}

/// The cached state of one service (one key prefix), shared by everyone interested in it.
pub struct ServiceCache {
    name: String,
    prefix: String,
    snapshot: ArcSwap<Snapshot>,
    generation: AtomicU64,
    ready: AtomicBool,
    ready_notify: Notify,
    /// Why the last read failed, for callers waiting on the first snapshot.
    last_error: Mutex<Option<crate::Error>>,
    subscribers: Mutex<Vec<Arc<Watch>>>,
    /// When etcd last confirmed this view current (an event, a read, a progress
    /// notification): milliseconds since the Unix epoch.
    confirmed_at_ms: AtomicU64,
    /// How long the latest event waited between arriving and being read by a
    /// subscriber, and the longest such wait, in microseconds.
    lag_last_us: AtomicU64,
    lag_max_us: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Figures about one cached service, for stats and metrics.
#[derive(Debug, Clone)]
pub struct CacheStats {
    pub name: String,
    pub instances: usize,
    /// Time since etcd last confirmed the view current.
    pub age: Duration,
    pub event_lag_last: Duration,
    pub event_lag_max: Duration,
}

impl std::fmt::Debug for ServiceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCache")
            .field("prefix", &self.prefix)
            .field("ready", &self.is_ready())
            .field("instances", &self.snapshot.load().instances.len())
            .finish()
    }
}

impl ServiceCache {
    pub fn new(name: impl Into<String>, prefix: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            prefix: prefix.into(),
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            generation: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            ready_notify: Notify::new(),
            last_error: Mutex::new(None),
            subscribers: Mutex::new(Vec::new()),
            confirmed_at_ms: AtomicU64::new(0),
            lag_last_us: AtomicU64::new(0),
            lag_max_us: AtomicU64::new(0),
        })
    }

    /// etcd confirmed that nothing changed up to now (a progress notification).
    pub(crate) fn touch(&self) {
        self.confirmed_at_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn record_lag(&self, lag: Duration) {
        let us = lag.as_micros() as u64;
        self.lag_last_us.store(us, Ordering::Relaxed);
        self.lag_max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn stats(&self) -> CacheStats {
        let confirmed = self.confirmed_at_ms.load(Ordering::Relaxed);
        CacheStats {
            name: self.name.clone(),
            instances: self.load().instances.len(),
            age: Duration::from_millis(now_ms().saturating_sub(confirmed)),
            event_lag_last: Duration::from_micros(self.lag_last_us.load(Ordering::Relaxed)),
            event_lag_max: Duration::from_micros(self.lag_max_us.load(Ordering::Relaxed)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The current snapshot; lock-free.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// A cheaper borrow of the current snapshot for short reads.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Waits until the first snapshot is published, or until etcd refuses the read for want
    /// of credentials or permission: waiting longer would not help that caller, so the error
    /// is returned (the read goes on retrying, in case permissions change).
    pub async fn wait_ready(&self) -> crate::Result<()> {
        loop {
            let notified = self.ready_notify.notified();
            if self.is_ready() {
                return Ok(());
            }
            if let Some(refused) = self.last_error().filter(crate::Error::is_refusal) {
                return Err(refused);
            }
            notified.await;
        }
    }

    pub fn last_error(&self) -> Option<crate::Error> {
        lock(&self.last_error).clone()
    }

    pub(crate) fn set_last_error(&self, error: Option<crate::Error>) {
        let refused = error.as_ref().is_some_and(crate::Error::is_refusal);
        *lock(&self.last_error) = error;
        if refused {
            self.ready_notify.notify_waiters();
        }
    }

    /// Publishes a new snapshot, then gives `events` to every subscriber. Only the watch
    /// hub calls this; snapshot first, so a subscriber resyncing concurrently never
    /// misses what the events say.
    pub(crate) fn publish(&self, position: Position, instances: Vec<Arc<ServiceInstance>>, events: &[Event]) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.snapshot.store(Arc::new(Snapshot { position, generation, instances }));
        self.touch();
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.ready_notify.notify_waiters();
        }
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|s| !s.is_closed());
        if !events.is_empty() {
            for subscriber in subscribers.iter() {
                subscriber.push(position, events);
            }
        }
    }

    /// A new subscriber whose first reads are one PUT per instance present now, sorted by
    /// id, followed by every change published after that.
    pub fn subscribe(self: &Arc<Self>, capacity: usize) -> Arc<Watch> {
        // Holding the subscriber list while reading the snapshot orders this against
        // `publish`: its events are either already in the snapshot (and filtered out by
        // position) or pushed to this subscriber afterwards.
        let mut subscribers = lock(&self.subscribers);
        let snapshot = self.snapshot();
        let initial: VecDeque<Event> = snapshot.instances.iter().map(|i| Event::put(Arc::clone(i))).collect();
        let subscriber = Arc::new(Watch {
            cache: Arc::clone(self),
            state: Mutex::new(SubscriberState {
                resync: initial,
                queue: VecDeque::new(),
                lagged: false,
                resynced_at: snapshot.position,
                view: BTreeMap::new(),
                capacity: capacity.max(1),
                overflows: 0,
            }),
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        });
        subscribers.push(Arc::clone(&subscriber));
        subscriber
    }

    /// Closes every subscriber (their reads end). Used when interest ends.
    pub(crate) fn close_subscribers(&self) {
        for subscriber in lock(&self.subscribers).drain(..) {
            subscriber.close();
        }
    }

    pub fn subscriber_count(&self) -> usize {
        lock(&self.subscribers).iter().filter(|s| !s.is_closed()).count()
    }
}

struct SubscriberState {
    /// Diff events of the last resync; delivered before anything in `queue`.
    resync: VecDeque<Event>,
    /// Live events from the hub, with the position of their batch and when they came.
    queue: VecDeque<(Position, Event, Instant)>,
    lagged: bool,
    /// Live events at or before this position are already reflected by the last resync.
    resynced_at: Position,
    /// What this subscriber has delivered so far, by id.
    view: BTreeMap<String, Arc<ServiceInstance>>,
    capacity: usize,
    overflows: u64,
}

/// One consumer's bounded queue of events for one service.
pub struct Watch {
    cache: Arc<ServiceCache>,
    state: Mutex<SubscriberState>,
    notify: Notify,
    closed: AtomicBool,
}

impl Watch {
    pub fn cache(&self) -> &Arc<ServiceCache> {
        &self.cache
    }

    fn push(&self, position: Position, events: &[Event]) {
        {
            let mut state = lock(&self.state);
            if state.lagged {
                // The next read resyncs from the snapshot, which already holds these.
                return;
            }
            if state.queue.len() + events.len() > state.capacity {
                state.queue.clear();
                state.lagged = true;
                state.overflows += 1;
            } else {
                let now = Instant::now();
                state.queue.extend(events.iter().map(|e| (position, e.clone(), now)));
            }
        }
        self.notify.notify_waiters();
    }

    /// The next event if one is ready; never blocks.
    pub fn try_next(&self) -> Option<Event> {
        if self.is_closed() {
            return None;
        }
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        if state.lagged {
            let snapshot = self.cache.snapshot();
            state.resync = diff(&self.cache.name, state.view.values(), snapshot.instances.iter()).into();
            state.queue.clear();
            state.resynced_at = snapshot.position;
            state.lagged = false;
        }
        let event = match state.resync.pop_front() {
            Some(event) => event,
            None => loop {
                let (position, event, arrived) = state.queue.pop_front()?;
                if position > state.resynced_at {
                    self.cache.record_lag(arrived.elapsed());
                    break event;
                }
            },
        };
        match event.kind {
            EventKind::Put => {
                state.view.insert(event.instance.id.clone(), Arc::clone(&event.instance));
            }
            EventKind::Delete => {
                state.view.remove(&event.instance.id);
            }
        }
        Some(event)
    }

    /// Whether a read may find an event now (it may still find none: queued events
    /// already covered by a resync are skipped).
    fn may_have_next(&self) -> bool {
        let state = lock(&self.state);
        state.lagged || !state.resync.is_empty() || !state.queue.is_empty()
    }

    /// Waits until an event may be ready or the subscriber is closed, without taking
    /// it: a waiter that gives up (a timeout, a cancelled task) loses nothing.
    pub async fn ready(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_closed() || self.may_have_next() {
                return;
            }
            notified.await;
        }
    }

    /// Waits for the next event; `None` once the subscriber is closed. Cancel-safe.
    pub async fn next(&self) -> Option<Event> {
        loop {
            if let Some(event) = self.try_next() {
                return Some(event);
            }
            if self.is_closed() {
                return None;
            }
            self.ready().await;
        }
    }

    /// Times this subscriber fell behind and was resynced from a snapshot.
    pub fn overflows(&self) -> u64 {
        lock(&self.state).overflows
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends the subscription: pending and future reads return `None`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
        let mut state = lock(&self.state);
        state.resync.clear();
        state.queue.clear();
        state.view.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, version: &str) -> Arc<ServiceInstance> {
        Arc::new(ServiceInstance {
            id: id.into(),
            name: "svc".into(),
            version: version.into(),
            ..Default::default()
        })
    }

    fn pos(revision: i64) -> Position {
        Position { epoch: 0, revision }
    }

    fn kinds(events: &[Event]) -> Vec<(EventKind, String)> {
        events.iter().map(|e| (e.kind, e.instance.id.clone())).collect()
    }

    #[test]
    fn diff_puts_new_and_changed_deletes_gone_in_id_order() {
        let (a, b1, b2, c, d) =
            (inst("a", "1"), inst("b", "1"), inst("b", "2"), inst("c", "1"), inst("d", "1"));
        let events = diff("svc", &[a.clone(), b1, c.clone()], &[a, b2, d]);
        assert_eq!(
            kinds(&events),
            vec![(EventKind::Put, "b".into()), (EventKind::Delete, "c".into()), (EventKind::Put, "d".into())]
        );
        assert_eq!(events[0].instance.version, "2");
        assert_eq!(events[1].instance.name, "svc");
        let same = [c];
        assert!(diff("svc", &same, &same).is_empty());
    }

    #[test]
    fn a_subscriber_starts_with_the_state_at_subscription_then_follows_changes() {
        let cache = ServiceCache::new("svc", "/ns/svc/");
        cache.publish(pos(5), vec![inst("b", "1"), inst("a", "1")], &[]);
        let sub = cache.subscribe(8);
        // Published after subscribing: delivered after the initial PUTs.
        let c = inst("c", "1");
        cache.publish(pos(6), vec![inst("a", "1"), inst("b", "1"), c.clone()], &[Event::put(c)]);
        let got: Vec<_> = std::iter::from_fn(|| sub.try_next()).collect();
        assert_eq!(
            kinds(&got),
            vec![(EventKind::Put, "b".into()), (EventKind::Put, "a".into()), (EventKind::Put, "c".into())]
        );
    }

    #[test]
    fn events_already_in_the_subscription_snapshot_are_not_repeated() {
        let cache = ServiceCache::new("svc", "/ns/svc/");
        cache.publish(pos(5), vec![inst("a", "1")], &[]);
        let sub = cache.subscribe(8);
        sub.push(pos(5), &[Event::put(inst("a", "1"))]);
        let got: Vec<_> = std::iter::from_fn(|| sub.try_next()).collect();
        assert_eq!(kinds(&got), vec![(EventKind::Put, "a".into())]);
    }

    #[test]
    fn an_overflowing_subscriber_is_resynced_to_an_exact_view() {
        let cache = ServiceCache::new("svc", "/ns/svc/");
        cache.publish(pos(1), vec![inst("keep", "1"), inst("gone", "1")], &[]);
        let sub = cache.subscribe(2);
        assert_eq!(sub.try_next().unwrap().instance.id, "keep");
        assert_eq!(sub.try_next().unwrap().instance.id, "gone");
        let mut state = vec![inst("keep", "1"), inst("gone", "1")];
        for (rev, id) in (2..10).zip(["n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"]) {
            state.push(inst(id, "1"));
            state.sort_by(|a, b| a.id.cmp(&b.id));
            cache.publish(pos(rev), state.clone(), &[Event::put(inst(id, "1"))]);
        }
        state.retain(|i| i.id != "gone");
        cache.publish(pos(10), state.clone(), &[Event::delete("svc", "gone")]);
        assert_eq!(sub.overflows(), 1);
        let mut view: BTreeMap<String, Arc<ServiceInstance>> = BTreeMap::new();
        view.insert("keep".into(), inst("keep", "1"));
        view.insert("gone".into(), inst("gone", "1"));
        while let Some(event) = sub.try_next() {
            match event.kind {
                EventKind::Put => view.insert(event.instance.id.clone(), event.instance.clone()),
                EventKind::Delete => view.remove(&event.instance.id),
            };
        }
        let expected: Vec<String> = state.iter().map(|i| i.id.clone()).collect();
        assert_eq!(view.keys().cloned().collect::<Vec<_>>(), expected);
    }

    #[tokio::test]
    async fn waiting_for_the_first_view_ends_on_a_refusal_but_not_on_an_outage() {
        let cache = ServiceCache::new("svc", "/ns/svc/");
        cache.set_last_error(Some(crate::Error::Unavailable("no leader".into())));
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), cache.wait_ready());
        assert!(waiting.await.is_err(), "an outage keeps the caller waiting");
        let waiter = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.wait_ready().await })
        };
        tokio::task::yield_now().await;
        cache.set_last_error(Some(crate::Error::Authentication("user name is empty".into())));
        assert!(matches!(waiter.await.unwrap(), Err(crate::Error::Authentication(_))));
        cache.publish(pos(1), vec![inst("a", "1")], &[]);
        assert!(cache.wait_ready().await.is_ok());
    }

    #[test]
    fn closing_ends_reads() {
        let cache = ServiceCache::new("svc", "/ns/svc/");
        cache.publish(pos(1), vec![inst("a", "1")], &[]);
        let sub = cache.subscribe(8);
        sub.close();
        assert!(sub.try_next().is_none());
        assert_eq!(cache.subscriber_count(), 0);
    }
}
