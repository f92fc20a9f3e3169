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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use etcd_client::{
    EventType, GetOptions, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream,
};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::cache::{diff, Event, Position, ServiceCache};
use crate::error::{Error, Result};
use crate::etcd::{read_range, EtcdAccess, Header};
use crate::instance::ServiceInstance;
use crate::log_sink::Level;
use crate::sync::lock;

/// Range reads in flight at once (a data reset re-reads every watched service).
const CONCURRENT_READS: usize = 16;

enum Command {
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
        let task = HubTask::new(access, rx);
        tokio::spawn(task.run());
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

/// What a completed range read found.
struct ReadResult {
    prefix: String,
    /// The highest header seen when the read started: a linearizable read can only
    /// return less if etcd's history was reset meanwhile.
    baseline: Header,
    /// Distinguishes this read from an older one for the same prefix.
    ticket: u64,
    header: Header,
    instances: BTreeMap<String, Arc<ServiceInstance>>,
    malformed: Vec<(String, String)>,
}

impl Header {
    /// Whether `self` comes from a different history than `seen` (the highest seen so
    /// far): another cluster, or revision or raft term going backwards, which a living
    /// cluster never does. Wiped data usually shows one of these; a wiped cluster that
    /// kept its id and already wrote past the old revision would not.
    fn is_new_history_since(&self, seen: &Header) -> bool {
        if seen.revision == 0 {
            return false;
        }
        (self.cluster_id != 0 && seen.cluster_id != 0 && self.cluster_id != seen.cluster_id)
            || self.revision < seen.revision
            || self.raft_term < seen.raft_term
    }
}

enum Phase {
    /// A range read is in flight; `ticket` identifies it.
    Reading { ticket: u64, task: tokio::task::AbortHandle },
    /// Read done; waiting for the stream to carry the watch.
    Pending,
    /// A create request went out with this watch id.
    Watching { watch_id: i64 },
}

struct Watched {
    cache: Arc<ServiceCache>,
    instances: BTreeMap<String, Arc<ServiceInstance>>,
    /// Last revision reflected in `instances`; the watch resumes after it.
    revision: i64,
    phase: Phase,
    /// Delays between attempts after etcd refused this watch.
    refused: Backoff,
}

enum Opened {
    Stream {
        sender: WatchRequestSender,
        responses: Box<WatchResponseStream>,
        first_watch: (String, i64),
        header: Header,
    },
    /// The probe found etcd's history reset (header, and the baseline it was compared to);
    /// the stream was dropped.
    Reset(Header, Header),
}

struct HubTask {
    access: Arc<EtcdAccess>,
    commands: mpsc::UnboundedReceiver<Command>,
    watched: HashMap<String, Watched>,
    by_watch_id: HashMap<i64, String>,
    sender: Option<WatchRequestSender>,
    responses: Option<WatchResponseStream>,
    opening: Option<tokio::task::JoinHandle<Result<Opened>>>,
    /// When the current stream was opened; old streams may carry an expired auth token.
    stream_opened_at: Option<Instant>,
    /// When the stream last carried anything; a silent stream is asked for its progress.
    last_heard: Instant,
    /// When a progress request went out that has not been answered yet.
    probe_sent: Option<Instant>,
    /// Refresh the auth token before opening the next stream.
    refresh_token: bool,
    reconnect_at: Option<Instant>,
    stream_backoff: Backoff,
    reads: JoinSet<ReadResult>,
    read_slots: Arc<Semaphore>,
    next_ticket: u64,
    next_watch_id: i64,
    epoch: u64,
    highest: Header,
}

impl HubTask {
    fn new(access: Arc<EtcdAccess>, commands: mpsc::UnboundedReceiver<Command>) -> Self {
        Self {
            access,
            commands,
            watched: HashMap::new(),
            by_watch_id: HashMap::new(),
            sender: None,
            responses: None,
            opening: None,
            stream_opened_at: None,
            last_heard: Instant::now(),
            probe_sent: None,
            refresh_token: false,
            reconnect_at: None,
            stream_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            reads: JoinSet::new(),
            read_slots: Arc::new(Semaphore::new(CONCURRENT_READS)),
            next_ticket: 0,
            next_watch_id: 1,
            epoch: 0,
            highest: Header::default(),
        }
    }

    fn log(&self, level: Level, message: impl Into<String>, fields: Vec<(&'static str, String)>) {
        self.access.log.emit(level, 0, message, fields);
    }

    async fn run(mut self) {
        let closed = self.access.closed.clone();
        loop {
            let liveness_at = self.liveness_check_at();
            tokio::select! {
                biased;
                _ = closed.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(Command::Watch(cache)) => self.watch(cache).await,
                    Some(Command::Unwatch(prefix)) => self.unwatch(&prefix).await,
                    None => break,
                },
                Some(done) = self.reads.join_next(), if !self.reads.is_empty() => {
                    if let Ok(result) = done {
                        self.on_read(result).await;
                    }
                }
                message = next_message(&mut self.responses), if self.responses.is_some() => {
                    match message {
                        Ok(Some(response)) => {
                            self.last_heard = Instant::now();
                            self.probe_sent = None;
                            self.on_response(response).await
                        }
                        Ok(None) => self.stream_broken("etcd closed the watch stream".into()),
                        Err(e) => self.stream_broken(e.to_string()),
                    }
                }
                opened = wait_opening(&mut self.opening), if self.opening.is_some() => {
                    self.opening = None;
                    self.on_opened(opened).await;
                }
                _ = sleep_until(self.reconnect_at), if self.reconnect_at.is_some() => {
                    self.reconnect_at = None;
                    self.ensure_stream();
                }
                _ = sleep_until(liveness_at), if liveness_at.is_some() => self.check_liveness().await,
            }
        }
        self.reads.abort_all();
        if let Some(opening) = self.opening.take() {
            opening.abort();
        }
        for watched in self.watched.values() {
            watched.cache.close_subscribers();
        }
    }

    async fn watch(&mut self, cache: Arc<ServiceCache>) {
        let prefix = cache.prefix().to_string();
        if self.watched.contains_key(&prefix) {
            return;
        }
        let watched = Watched {
            cache,
            instances: BTreeMap::new(),
            revision: 0,
            phase: Phase::Pending,
            refused: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
        };
        self.watched.insert(prefix.clone(), watched);
        self.access.watch_stats.watched_services.set(self.watched.len() as u64);
        self.start_read(&prefix, Duration::ZERO).await;
    }

    async fn unwatch(&mut self, prefix: &str) {
        let Some(watched) = self.watched.remove(prefix) else { return };
        self.access.watch_stats.watched_services.set(self.watched.len() as u64);
        if let Phase::Reading { task, .. } = &watched.phase {
            task.abort();
        }
        if let Phase::Watching { watch_id } = watched.phase {
            self.by_watch_id.remove(&watch_id);
            if let Some(sender) = self.sender.as_mut() {
                let _ = sender.cancel(watch_id).await;
            }
        }
        watched.cache.close_subscribers();
    }

    /// Starts a (re-)read of `prefix` after `delay`; an older read in flight is superseded.
    async fn start_read(&mut self, prefix: &str, delay: Duration) {
        let Some(watched) = self.watched.get_mut(prefix) else { return };
        if let Phase::Watching { watch_id } = watched.phase {
            self.by_watch_id.remove(&watch_id);
            if let Some(sender) = self.sender.as_mut() {
                // Best effort: a failed cancel only leaves a watch whose replies we ignore.
                let _ = sender.cancel(watch_id).await;
            }
        }
        let Some(watched) = self.watched.get_mut(prefix) else { return };
        if let Phase::Reading { task, .. } = &watched.phase {
            task.abort();
        }
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let baseline = self.highest;
        let access = Arc::clone(&self.access);
        let slots = Arc::clone(&self.read_slots);
        let prefix_owned = prefix.to_string();
        let cache = Arc::clone(&watched.cache);
        let task = self.reads.spawn(async move {
            let prefix = prefix_owned;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            let mut failures = 0u32;
            loop {
                let attempt = {
                    let _slot = slots.acquire().await;
                    read_prefix(&access, cache.name(), &prefix).await
                };
                match attempt {
                    Ok((header, instances, malformed)) => {
                        cache.set_last_error(None);
                        return ReadResult { prefix, baseline, ticket, header, instances, malformed };
                    }
                    Err(e) => {
                        if failures == 0 {
                            access.log.emit(
                                Level::Warning,
                                0,
                                format!("reading service {} failed, retrying: {e}", cache.name()),
                                vec![("service", cache.name().to_string())],
                            );
                        }
                        failures += 1;
                        cache.set_last_error(Some(e));
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        });
        if let Some(watched) = self.watched.get_mut(prefix) {
            watched.phase = Phase::Reading { ticket, task };
        }
    }

    async fn on_read(&mut self, result: ReadResult) {
        let ReadResult { prefix, baseline, ticket, header, instances, malformed } = result;
        // A superseded read (one started before a reset or a newer resync) says nothing
        // about the current history.
        let current = self.watched.get(&prefix).map(|w| &w.phase);
        if !matches!(current, Some(Phase::Reading { ticket: t, .. }) if *t == ticket) {
            return;
        }
        if self.detect_reset(header, baseline) {
            // Every other watch now points at revisions of a history that is gone.
            let others: Vec<String> = self.watched.keys().filter(|p| **p != prefix).cloned().collect();
            for other in others {
                self.start_read(&other, Duration::ZERO).await;
            }
        }
        let Some(watched) = self.watched.get_mut(&prefix) else { return };
        let name = watched.cache.name().to_string();
        for (key, reason) in &malformed {
            self.access.watch_stats.malformed_values.inc();
            self.access.log.emit(
                Level::Warning,
                0,
                format!("skipping malformed value at {key}: {reason}"),
                vec![
                    ("service", name.clone()),
                    ("key", key.clone()),
                    ("revision", header.revision.to_string()),
                ],
            );
        }
        let watched = self.watched.get_mut(&prefix).expect("checked above");
        let was_ready = watched.cache.is_ready();
        let events = diff(&name, watched.instances.values(), instances.values());
        watched.instances = instances;
        watched.revision = header.revision;
        watched.phase = Phase::Pending;
        let position = Position { epoch: self.epoch, revision: header.revision };
        watched.cache.publish(position, watched.instances.values().cloned().collect(), &events);
        if was_ready && !events.is_empty() {
            self.log(
                Level::Info,
                format!("resynced service {name}: {} change(s) found by re-reading", events.len()),
                vec![("service", name.clone()), ("revision", header.revision.to_string())],
            );
        }
        self.ensure_stream();
        self.create_pending().await;
    }

    /// Re-reads every watched service (after etcd's history was found reset).
    async fn reread_all(&mut self) {
        let all: Vec<String> = self.watched.keys().cloned().collect();
        for prefix in all {
            self.start_read(&prefix, Duration::ZERO).await;
        }
    }

    /// Whether `header` shows etcd's history restarted (data wiped or restored); if so
    /// a new epoch begins.
    ///
    /// `baseline` is what was known when the request that produced `header` was sent:
    /// replies of different requests (and members) are not ordered among themselves, so
    /// only a linearizable reply older than what preceded its request proves a reset.
    fn detect_reset(&mut self, header: Header, baseline: Header) -> bool {
        if header.revision == 0 {
            return false;
        }
        let reset = header.is_new_history_since(&baseline);
        if reset {
            self.epoch += 1;
            self.highest = header;
            self.access.watch_stats.data_resets.inc();
            self.log(
                Level::Warning,
                "etcd's data was reset (revision or raft term went backwards); re-reading every watched service",
                vec![("revision", header.revision.to_string())],
            );
        } else {
            self.note_header(header);
        }
        reset
    }

    /// Raises what is known of etcd's history to include `header`.
    fn note_header(&mut self, header: Header) {
        if header.revision == 0 {
            return;
        }
        self.highest.cluster_id = header.cluster_id;
        self.highest.revision = self.highest.revision.max(header.revision);
        self.highest.raft_term = self.highest.raft_term.max(header.raft_term);
    }

    /// Opens the stream in the background if watches are waiting for one.
    fn ensure_stream(&mut self) {
        if self.sender.is_some() || self.opening.is_some() || self.reconnect_at.is_some() {
            return;
        }
        let Some((prefix, revision)) = self
            .watched
            .iter()
            .find(|(_, w)| matches!(w.phase, Phase::Pending))
            .map(|(p, w)| (p.clone(), w.revision))
        else {
            return;
        };
        let watch_id = self.take_watch_id();
        if let Some(watched) = self.watched.get_mut(&prefix) {
            watched.phase = Phase::Watching { watch_id };
        }
        self.by_watch_id.insert(watch_id, prefix.clone());
        let access = Arc::clone(&self.access);
        let highest = self.highest;
        let refresh_token = std::mem::take(&mut self.refresh_token);
        self.opening = Some(tokio::spawn(async move {
            if refresh_token {
                access.refresh_token().await?;
            }
            let options = watch_options(revision, watch_id);
            let stream = access
                .call("open watch stream", |mut c| {
                    let (prefix, options) = (prefix.clone(), options.clone());
                    async move { c.watch(prefix, Some(options)).await }
                })
                .await?;
            // Then probe: after a wipe, a watch resuming at an old revision would wait for
            // a future that never comes. Probing after the watch exists also catches a
            // wipe that happened while the stream was being opened.
            let probe = access
                .call("probe etcd revision", |mut c| {
                    let prefix = prefix.clone();
                    async move { c.get(prefix, Some(GetOptions::new().with_prefix().with_count_only())).await }
                })
                .await?;
            let header = Header::of(probe.header());
            if header.is_new_history_since(&highest) {
                return Ok(Opened::Reset(header, highest));
            }
            let (sender, responses) = stream.split();
            Ok(Opened::Stream {
                sender,
                responses: Box::new(responses),
                first_watch: (prefix, watch_id),
                header,
            })
        }));
    }

    async fn on_opened(&mut self, opened: Result<Opened>) {
        match opened {
            Ok(Opened::Stream { sender, responses, first_watch, header }) => {
                self.sender = Some(sender);
                self.responses = Some(*responses);
                self.stream_opened_at = Some(Instant::now());
                self.last_heard = Instant::now();
                self.probe_sent = None;
                self.note_header(header);
                // The first watch may have been unwatched or superseded meanwhile.
                let (prefix, watch_id) = first_watch;
                let current = self.watched.get(&prefix).map(|w| &w.phase);
                if !matches!(current, Some(Phase::Watching { watch_id: id }) if *id == watch_id) {
                    self.by_watch_id.remove(&watch_id);
                    if let Some(sender) = self.sender.as_mut() {
                        let _ = sender.cancel(watch_id).await;
                    }
                }
                self.create_pending().await;
            }
            Ok(Opened::Reset(header, baseline)) => {
                self.detect_reset(header, baseline);
                self.drop_stream();
                self.reread_all().await;
            }
            Err(Error::Closed(_)) => {}
            Err(e) => {
                self.drop_stream();
                let delay = self.stream_backoff.next_delay();
                self.log(
                    Level::Warning,
                    format!("cannot open the etcd watch stream, retrying in {delay:.1?}: {e}"),
                    vec![],
                );
                self.reconnect_at = Some(Instant::now() + delay);
            }
        }
    }

    /// Sends a create request for every watch waiting for the stream.
    async fn create_pending(&mut self) {
        if self.sender.is_none() {
            return;
        }
        let pending: Vec<(String, i64)> = self
            .watched
            .iter()
            .filter(|(_, w)| matches!(w.phase, Phase::Pending))
            .map(|(p, w)| (p.clone(), w.revision))
            .collect();
        for (prefix, revision) in pending {
            let watch_id = self.take_watch_id();
            let sent = match self.sender.as_mut() {
                Some(sender) => sender.watch(prefix.clone(), Some(watch_options(revision, watch_id))).await,
                None => return,
            };
            if let Err(e) = sent {
                self.stream_broken(format!("sending a watch request failed: {e}"));
                return;
            }
            self.by_watch_id.insert(watch_id, prefix.clone());
            if let Some(watched) = self.watched.get_mut(&prefix) {
                watched.phase = Phase::Watching { watch_id };
            }
        }
    }

    fn take_watch_id(&mut self) -> i64 {
        let id = self.next_watch_id;
        self.next_watch_id += 1;
        id
    }

    /// Forgets the stream; the watches it carried wait for the next one. Returns how many.
    fn drop_stream(&mut self) -> usize {
        self.sender = None;
        self.responses = None;
        self.stream_opened_at = None;
        self.probe_sent = None;
        self.by_watch_id.clear();
        let mut carried = 0;
        for watched in self.watched.values_mut() {
            if matches!(watched.phase, Phase::Watching { .. }) {
                watched.phase = Phase::Pending;
                carried += 1;
            }
        }
        carried
    }

    /// Drops the stream and opens a new one for every watch it carried.
    fn restart_stream(&mut self, refresh_token: bool) {
        self.drop_stream();
        self.refresh_token |= refresh_token;
        self.ensure_stream();
    }

    fn stream_broken(&mut self, reason: String) {
        let resumable = self.drop_stream();
        self.access.watch_stats.restarts.inc();
        let delay = self.stream_backoff.next_delay();
        self.log(
            Level::Warning,
            format!("etcd watch stream broke ({reason}); resuming {resumable} watch(es) in {delay:.1?}"),
            vec![],
        );
        self.reconnect_at = Some(Instant::now() + delay);
    }

    /// When the stream's liveness is next due for a look: a silent stream gets a progress
    /// request, an unanswered request breaks the stream. None without a stream.
    fn liveness_check_at(&self) -> Option<Instant> {
        self.sender.as_ref()?;
        Some(match self.probe_sent {
            Some(sent) => sent + PROBE_TIMEOUT,
            None => self.last_heard + SILENCE_BEFORE_PROBE,
        })
    }

    /// A member cut off from this client (a partition, a host gone) answers nothing and
    /// closes nothing: require-leader cannot help, since its "no leader" never arrives, and
    /// HTTP/2 keep-alive notices only after 15 s. etcd answers a progress request at once
    /// (from any member with a leader), so a stream silent for SILENCE_BEFORE_PROBE gets
    /// one, and one unanswered for PROBE_TIMEOUT is given up and resumed elsewhere.
    async fn check_liveness(&mut self) {
        let now = Instant::now();
        match self.probe_sent {
            Some(sent) if now >= sent + PROBE_TIMEOUT => {
                self.stream_broken(format!(
                    "no answer to a progress request within {PROBE_TIMEOUT:?}; the member may be cut off"
                ));
            }
            Some(_) => {}
            None if now >= self.last_heard + SILENCE_BEFORE_PROBE => {
                let Some(sender) = self.sender.as_mut() else { return };
                match sender.request_progress().await {
                    Ok(()) => self.probe_sent = Some(now),
                    Err(e) => self.stream_broken(format!("sending a progress request failed: {e}")),
                }
            }
            None => {}
        }
    }

    async fn on_response(&mut self, response: WatchResponse) {
        let header = Header::of(response.header());
        let watch_id = response.watch_id();
        if response.created() && !response.canceled() {
            self.stream_backoff.reset();
            if let Some(w) = self.by_watch_id.get(&watch_id).and_then(|p| self.watched.get_mut(p)) {
                w.refused.reset();
            }
        }
        if response.canceled() {
            let Some(prefix) = self.by_watch_id.remove(&watch_id) else { return };
            let compacted = response.compact_revision();
            let name = self.watched.get(&prefix).map(|w| w.cache.name().to_string()).unwrap_or_default();
            if compacted > 0 {
                self.access.watch_stats.compaction_resyncs.inc();
                self.log(
                    Level::Info,
                    format!("watch of service {name} fell behind compaction (revision {compacted}); re-reading it"),
                    vec![("service", name), ("revision", compacted.to_string())],
                );
                self.start_read(&prefix, Duration::ZERO).await;
            } else if self.access.has_credentials
                && is_auth_refusal(response.cancel_reason())
                && self.stream_opened_at.is_some_and(|t| t.elapsed() >= TOKEN_SUSPECT_AGE)
            {
                // A stream keeps the auth token it was opened with; once that expires
                // etcd refuses new watches on it. Reopen it with a fresh token.
                self.log(
                    Level::Info,
                    format!(
                        "etcd refused a watch on an aged stream ({}); reopening it with a fresh auth token",
                        response.cancel_reason()
                    ),
                    vec![("service", name)],
                );
                if let Some(w) = self.watched.get_mut(&prefix) {
                    w.phase = Phase::Pending;
                }
                self.restart_stream(true);
            } else {
                let delay = match self.watched.get_mut(&prefix) {
                    Some(w) => w.refused.next_delay(),
                    None => return,
                };
                self.log(
                    Level::Warning,
                    format!(
                        "etcd cancelled the watch of service {name}: {}; re-reading it in {delay:.1?}",
                        response.cancel_reason()
                    ),
                    vec![("service", name)],
                );
                self.start_read(&prefix, delay).await;
            }
            return;
        }
        if watch_id == -1 {
            // The answer to a progress request (check_liveness): proof the stream is alive,
            // and nothing more. etcd before 3.5.8 could send it ahead of events not yet
            // delivered, so its revision is not trusted as a resume point.
            return;
        }
        if response.events().is_empty() && !response.created() {
            // Progress notification of one watch: nothing happened under its prefix up to
            // this revision, so a resume may start after it.
            let targets: Vec<String> = self.by_watch_id.get(&watch_id).cloned().into_iter().collect();
            for prefix in targets {
                if let Some(w) = self.watched.get_mut(&prefix) {
                    if matches!(w.phase, Phase::Watching { .. }) {
                        w.revision = w.revision.max(header.revision);
                        w.cache.touch();
                    }
                }
            }
            return;
        }
        if response.events().is_empty() {
            return;
        }
        let Some(prefix) = self.by_watch_id.get(&watch_id).cloned() else { return };
        self.apply_events(&prefix, &response);
    }

    fn apply_events(&mut self, prefix: &str, response: &WatchResponse) {
        let epoch = self.epoch;
        let Some(watched) = self.watched.get_mut(prefix) else { return };
        let name = watched.cache.name().to_string();
        let mut events = Vec::with_capacity(response.events().len());
        let mut malformed = Vec::new();
        let mut revision = watched.revision;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            revision = revision.max(kv.mod_revision());
            let Some(id) = instance_id(prefix, kv.key()) else { continue };
            match event.event_type() {
                EventType::Put => match decode_instance(&name, id, kv.value()) {
                    // Re-written unchanged (a lease recovery, a restore): not a change.
                    Ok(instance) if watched.instances.get(id).is_some_and(|old| **old == instance) => {}
                    Ok(instance) => {
                        let instance = Arc::new(instance);
                        watched.instances.insert(id.to_string(), Arc::clone(&instance));
                        events.push(Event::put(instance));
                    }
                    Err(reason) => {
                        malformed.push((String::from_utf8_lossy(kv.key()).into_owned(), reason));
                        if watched.instances.remove(id).is_some() {
                            events.push(Event::delete(&name, id));
                        }
                    }
                },
                EventType::Delete => {
                    if watched.instances.remove(id).is_some() {
                        events.push(Event::delete(&name, id));
                    }
                }
            }
        }
        watched.revision = revision;
        if events.is_empty() {
            watched.cache.touch();
        } else {
            let position = Position { epoch, revision };
            watched.cache.publish(position, watched.instances.values().cloned().collect(), &events);
        }
        self.access.watch_stats.events.add(response.events().len() as u64);
        for (key, reason) in malformed {
            self.access.watch_stats.malformed_values.inc();
            self.log(
                Level::Warning,
                format!("skipping malformed value at {key}: {reason}"),
                vec![("service", name.clone()), ("key", key), ("revision", revision.to_string())],
            );
        }
    }
}

/// How long the watch stream may stay silent before etcd is asked for its progress.
const SILENCE_BEFORE_PROBE: Duration = Duration::from_secs(3);
/// How long an answer to a progress request may take before the stream is given up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How old a stream must be before a refusal on it is blamed on an expired token
/// rather than on the user's permissions.
const TOKEN_SUSPECT_AGE: Duration = Duration::from_secs(1);

/// Whether a watch cancel reason says etcd refused the credentials.
fn is_auth_refusal(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    reason.contains("permission denied")
        || reason.contains("auth token")
        || reason.contains("unauthenticated")
}

fn watch_options(revision: i64, watch_id: i64) -> WatchOptions {
    WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1)
        .with_progress_notify()
        .with_watch_id(watch_id)
}

/// The instance id a key under `prefix` names: its last segment. Keys nested deeper
/// (another `/` after the prefix) or not valid UTF-8 are not instance keys.
fn instance_id<'k>(prefix: &str, key: &'k [u8]) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    let id = std::str::from_utf8(rest).ok()?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Decodes a stored value; the id inside must agree with the key's.
fn decode_instance(name: &str, id: &str, value: &[u8]) -> std::result::Result<ServiceInstance, String> {
    let instance = ServiceInstance::from_json(value).map_err(|e| e.to_string())?;
    if instance.id != id {
        return Err(format!("the value's id {:?} disagrees with the key's {id:?}", instance.id));
    }
    // Otherwise a value under one service's prefix could pose as another service's
    // instance to everyone who lists or dials this one. A missing name is tolerated,
    // like every missing field: the key says which service it is.
    if !instance.name.is_empty() && instance.name != name {
        return Err(format!(
            "the value's name {:?} disagrees with the key's service {name:?}",
            instance.name
        ));
    }
    Ok(instance)
}

/// Reads every instance under `prefix` at one revision, a page at a time.
async fn read_prefix(
    access: &EtcdAccess,
    name: &str,
    prefix: &str,
) -> Result<(Header, BTreeMap<String, Arc<ServiceInstance>>, Vec<(String, String)>)> {
    let mut instances = BTreeMap::new();
    let mut malformed = Vec::new();
    let header = read_range(access, "read service instances", prefix.as_bytes(), false, |kv| {
        let Some(id) = instance_id(prefix, kv.key()) else { return };
        match decode_instance(name, id, kv.value()) {
            Ok(instance) => {
                instances.insert(id.to_string(), Arc::new(instance));
            }
            Err(reason) => malformed.push((String::from_utf8_lossy(kv.key()).into_owned(), reason)),
        }
    })
    .await?;
    Ok((header, instances, malformed))
}

async fn next_message(
    responses: &mut Option<WatchResponseStream>,
) -> Result<Option<WatchResponse>, etcd_client::Error> {
    match responses.as_mut() {
        Some(r) => r.message().await,
        None => std::future::pending().await,
    }
}

async fn wait_opening(opening: &mut Option<tokio::task::JoinHandle<Result<Opened>>>) -> Result<Opened> {
    match opening.as_mut() {
        Some(handle) => match handle.await {
            Ok(result) => result,
            Err(e) => Err(Error::Etcd(format!("opening the watch stream failed: {e}"))),
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_come_from_the_last_key_segment() {
        let prefix = "/genesis/services/user/";
        assert_eq!(instance_id(prefix, b"/genesis/services/user/u-1"), Some("u-1"));
        assert_eq!(instance_id(prefix, b"/genesis/services/user/"), None);
        assert_eq!(instance_id(prefix, b"/genesis/services/user/a/b"), None);
        assert_eq!(instance_id(prefix, b"/genesis/services/other/u-1"), None);
        assert_eq!(instance_id(prefix, b"/genesis/services/user/\xff"), None);
    }

    #[test]
    fn values_must_agree_with_their_key() {
        let ok = br#"{"id":"u-1","name":"user","endpoints":["grpc://127.0.0.1:1"]}"#;
        assert_eq!(decode_instance("user", "u-1", ok).unwrap().name, "user");
        let err = decode_instance("user", "u-2", ok).unwrap_err();
        assert!(err.contains("u-1") && err.contains("u-2"), "{err}");
        let err = decode_instance("order", "u-1", ok).unwrap_err();
        assert!(err.contains("\"user\"") && err.contains("\"order\""), "{err}");
        assert!(decode_instance("user", "u-1", b"garbage").is_err());
        assert!(decode_instance("user", "u-1", br#"{"id":"u-1"}"#).is_ok());
    }
}
