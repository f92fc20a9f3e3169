//! The watch hub's decisions, apart from its I/O: which phase each watched prefix is in,
//! where a watch resumes, what a compaction, a refusal or a reset of etcd's history
//! leads to, and when a silent stream is probed or given up. [`HubState`] never awaits
//! and never talks to etcd; the hub's task (`hub.rs`) feeds it what etcd said and carries
//! out what it answers, so every rule here is tested without an etcd.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::cache::{diff, Event, Position, ServiceCache};
use crate::etcd::Header;
use crate::instance::{instance_id, ServiceInstance};
use crate::log_sink::{Level, LogSink};
use crate::stats::WatchStats;

/// How long the watch stream may stay silent before etcd is asked for its progress.
pub(crate) const SILENCE_BEFORE_PROBE: Duration = Duration::from_secs(3);
/// How long an answer to a progress request may take before the stream is given up.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How old a stream must be before a refusal on it is blamed on an expired token
/// rather than on the user's permissions.
const TOKEN_SUSPECT_AGE: Duration = Duration::from_secs(1);

impl Header {
    /// Whether `self` comes from a different history than `seen` (the highest seen so
    /// far): another cluster, or revision or raft term going backwards, which a living
    /// cluster never does. Wiped data usually shows one of these; a wiped cluster that
    /// kept its id and already wrote past the old revision would not.
    pub(crate) fn is_new_history_since(&self, seen: &Header) -> bool {
        if seen.revision == 0 {
            return false;
        }
        (self.cluster_id != 0 && seen.cluster_id != 0 && self.cluster_id != seen.cluster_id)
            || self.revision < seen.revision
            || self.raft_term < seen.raft_term
    }
}

/// Where one watched prefix stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A range read is in flight; `ticket` identifies it.
    Reading { ticket: u64 },
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

/// The watch stream's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// No stream, and none being opened.
    Closed,
    /// Being opened in the background.
    Opening,
    /// Open: when it was opened (old streams may carry an expired auth token), when it
    /// last carried anything, and when a progress request went out unanswered.
    Open { opened_at: Instant, last_heard: Instant, probe_sent: Option<Instant> },
    /// Broken or refused; reopened at this time.
    Waiting { until: Instant },
}

/// A range read to start: the hub spawns it and hands its result to [`HubState::on_read`].
pub(crate) struct ReadStart {
    pub ticket: u64,
    /// The highest header seen when the read starts (see [`ReadResult::baseline`]).
    pub baseline: Header,
    pub cache: Arc<ServiceCache>,
    /// A watch the stream carried for this prefix, to cancel.
    pub cancel: Option<i64>,
}

/// What a completed range read found.
pub(crate) struct ReadResult {
    pub prefix: String,
    /// The highest header seen when the read started: a linearizable read can only
    /// return less if etcd's history was reset meanwhile.
    pub baseline: Header,
    /// Distinguishes this read from an older one for the same prefix.
    pub ticket: u64,
    pub header: Header,
    pub instances: BTreeMap<String, Arc<ServiceInstance>>,
    pub malformed: Vec<(String, String)>,
}

/// A stream to open, with its first watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamStart {
    pub prefix: String,
    /// The watch starts after this revision.
    pub revision: i64,
    pub watch_id: i64,
    /// What the probe after opening compares its header with.
    pub highest: Header,
    /// Fetch a new auth token first.
    pub refresh_token: bool,
}

/// One change of a watch reply, as etcd sent it.
pub(crate) struct Change<'a> {
    pub put: bool,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub mod_revision: i64,
}

/// A watch reply, as etcd sent it (the hub translates etcd-client's type into this).
pub(crate) struct Reply<'a> {
    pub watch_id: i64,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: &'a str,
    pub header: Header,
    pub changes: Vec<Change<'a>>,
}

/// What a reply asks of the hub.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReplyAction {
    Nothing,
    /// Re-read this prefix after this delay.
    Reread(String, Duration),
    /// Reopen the stream with a fresh auth token (the watches it carried wait for it).
    ReopenWithFreshToken,
}

/// What the stream's liveness check asks of the hub.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    Fine,
    /// Send a progress request (then report it with [`HubState::probe_sent`]).
    Probe,
    /// No answer came: give the stream up for this reason.
    GiveUp(String),
}

/// Every watched prefix and the stream that carries them; see the module's doc.
pub(crate) struct HubState {
    log: Arc<LogSink>,
    stats: Arc<WatchStats>,
    /// Whether the client authenticates (so a refusal may be an expired token).
    has_credentials: bool,
    watched: HashMap<String, Watched>,
    by_watch_id: HashMap<i64, String>,
    stream: Stream,
    /// Refresh the auth token before opening the next stream.
    refresh_token: bool,
    stream_backoff: Backoff,
    next_ticket: u64,
    next_watch_id: i64,
    epoch: u64,
    highest: Header,
}

impl HubState {
    pub(crate) fn new(log: Arc<LogSink>, stats: Arc<WatchStats>, has_credentials: bool) -> Self {
        Self {
            log,
            stats,
            has_credentials,
            watched: HashMap::new(),
            by_watch_id: HashMap::new(),
            stream: Stream::Closed,
            refresh_token: false,
            stream_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            next_ticket: 0,
            next_watch_id: 1,
            epoch: 0,
            highest: Header::default(),
        }
    }

    fn log(&self, level: Level, message: impl Into<String>, fields: Vec<(&'static str, String)>) {
        self.log.emit(level, 0, message, fields);
    }

    pub(crate) fn phase(&self, prefix: &str) -> Option<Phase> {
        self.watched.get(prefix).map(|w| w.phase)
    }

    /// Whether the stream is open (the hub holds its sender and replies).
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.stream, Stream::Open { .. })
    }

    /// Every watched prefix.
    pub(crate) fn prefixes(&self) -> Vec<String> {
        self.watched.keys().cloned().collect()
    }

    /// Starts watching `cache`'s prefix; true if it was new (then read it).
    pub(crate) fn watch(&mut self, cache: Arc<ServiceCache>) -> bool {
        let prefix = cache.prefix().to_string();
        if self.watched.contains_key(&prefix) {
            return false;
        }
        let watched = Watched {
            cache,
            instances: BTreeMap::new(),
            revision: 0,
            phase: Phase::Pending,
            refused: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
        };
        self.watched.insert(prefix, watched);
        self.stats.watched_services.set(self.watched.len() as u64);
        true
    }

    /// Stops watching `prefix` and closes its subscribers; returns the watch id the
    /// stream carried for it, to cancel. None if it was not watched.
    pub(crate) fn unwatch(&mut self, prefix: &str) -> Option<Option<i64>> {
        let watched = self.watched.remove(prefix)?;
        self.stats.watched_services.set(self.watched.len() as u64);
        let cancel = match watched.phase {
            Phase::Watching { watch_id } => {
                self.by_watch_id.remove(&watch_id);
                Some(watch_id)
            }
            _ => None,
        };
        watched.cache.close_subscribers();
        Some(cancel)
    }

    /// A (re-)read of `prefix` begins; an older read in flight is superseded.
    pub(crate) fn begin_read(&mut self, prefix: &str) -> Option<ReadStart> {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let watched = self.watched.get_mut(prefix)?;
        let cancel = match watched.phase {
            Phase::Watching { watch_id } => {
                self.by_watch_id.remove(&watch_id);
                Some(watch_id)
            }
            _ => None,
        };
        watched.phase = Phase::Reading { ticket };
        Some(ReadStart { ticket, baseline: self.highest, cache: Arc::clone(&watched.cache), cancel })
    }

    /// A read completed: its instances become the view (the difference published as
    /// events) and the watch waits for the stream. Returns None when the read was
    /// superseded, else the other prefixes to re-read (all of them when the read found
    /// etcd's history reset).
    pub(crate) fn on_read(&mut self, result: ReadResult) -> Option<Vec<String>> {
        let ReadResult { prefix, baseline, ticket, header, instances, malformed } = result;
        // A superseded read (one started before a reset or a newer resync) says nothing
        // about the current history.
        if self.phase(&prefix) != Some(Phase::Reading { ticket }) {
            return None;
        }
        let reread = if self.detect_reset(header, baseline) {
            // Every other watch now points at revisions of a history that is gone.
            self.watched.keys().filter(|p| **p != prefix).cloned().collect()
        } else {
            Vec::new()
        };
        let epoch = self.epoch;
        let watched = self.watched.get_mut(&prefix).expect("checked above");
        let name = watched.cache.name().to_string();
        for (key, reason) in &malformed {
            self.stats.malformed_values.inc();
            self.log.emit(
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
        let was_ready = watched.cache.is_ready();
        let events = diff(&name, watched.instances.values(), instances.values());
        watched.instances = instances;
        watched.revision = header.revision;
        watched.phase = Phase::Pending;
        let position = Position { epoch, revision: header.revision };
        watched.cache.publish(position, watched.instances.values().cloned().collect(), &events);
        if was_ready && !events.is_empty() {
            self.log(
                Level::Info,
                format!("resynced service {name}: {} change(s) found by re-reading", events.len()),
                vec![("service", name.clone()), ("revision", header.revision.to_string())],
            );
        }
        Some(reread)
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
            self.stats.data_resets.inc();
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

    /// The stream to open, if watches wait for one and none is open, being opened or
    /// waited for. Its first watch counts as sent.
    pub(crate) fn open_stream(&mut self) -> Option<StreamStart> {
        if self.stream != Stream::Closed {
            return None;
        }
        let (prefix, revision) = self
            .watched
            .iter()
            .find(|(_, w)| w.phase == Phase::Pending)
            .map(|(p, w)| (p.clone(), w.revision))?;
        let watch_id = self.take_watch_id();
        self.mark_watching(&prefix, watch_id);
        self.stream = Stream::Opening;
        let refresh_token = std::mem::take(&mut self.refresh_token);
        Some(StreamStart { prefix, revision, watch_id, highest: self.highest, refresh_token })
    }

    /// The stream opened, its probe answered with `header`. Returns its first watch's
    /// id if that watch was unwatched or superseded meanwhile, to cancel.
    pub(crate) fn opened(&mut self, first: (String, i64), header: Header, now: Instant) -> Option<i64> {
        self.stream = Stream::Open { opened_at: now, last_heard: now, probe_sent: None };
        self.note_header(header);
        let (prefix, watch_id) = first;
        if self.phase(&prefix) == Some(Phase::Watching { watch_id }) {
            return None;
        }
        self.by_watch_id.remove(&watch_id);
        Some(watch_id)
    }

    /// The probe after opening found etcd's history reset: the stream was dropped and
    /// every watched prefix is to be re-read (returned).
    pub(crate) fn opened_into_reset(&mut self, header: Header, baseline: Header) -> Vec<String> {
        self.detect_reset(header, baseline);
        self.drop_stream();
        self.prefixes()
    }

    /// Opening the stream failed; it is tried again after a backoff.
    pub(crate) fn open_failed(&mut self, error: &str, now: Instant) {
        self.drop_stream();
        let delay = self.stream_backoff.next_delay();
        self.log(
            Level::Warning,
            format!("cannot open the etcd watch stream, retrying in {delay:.1?}: {error}"),
            vec![],
        );
        self.stream = Stream::Waiting { until: now + delay };
    }

    /// When the stream is to be reopened, if it waits for that.
    pub(crate) fn reopen_at(&self) -> Option<Instant> {
        match self.stream {
            Stream::Waiting { until } => Some(until),
            _ => None,
        }
    }

    /// The wait before reopening is over.
    pub(crate) fn reopen_due(&mut self) {
        if matches!(self.stream, Stream::Waiting { .. }) {
            self.stream = Stream::Closed;
        }
    }

    /// The create requests to send for every watch waiting for the open stream (each
    /// counts as sent: if sending fails the stream breaks and they wait again).
    pub(crate) fn pending_creates(&mut self) -> Vec<(String, i64, i64)> {
        if !self.is_open() {
            return Vec::new();
        }
        let pending: Vec<(String, i64)> = self
            .watched
            .iter()
            .filter(|(_, w)| w.phase == Phase::Pending)
            .map(|(p, w)| (p.clone(), w.revision))
            .collect();
        pending
            .into_iter()
            .map(|(prefix, revision)| {
                let watch_id = self.take_watch_id();
                self.mark_watching(&prefix, watch_id);
                (prefix, revision, watch_id)
            })
            .collect()
    }

    fn mark_watching(&mut self, prefix: &str, watch_id: i64) {
        self.by_watch_id.insert(watch_id, prefix.to_string());
        if let Some(watched) = self.watched.get_mut(prefix) {
            watched.phase = Phase::Watching { watch_id };
        }
    }

    fn take_watch_id(&mut self) -> i64 {
        let id = self.next_watch_id;
        self.next_watch_id += 1;
        id
    }

    /// Forgets the stream; the watches it carried wait for the next one. Returns how many.
    fn drop_stream(&mut self) -> usize {
        self.stream = Stream::Closed;
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

    /// The stream broke: every watch it carried resumes from its last revision on the
    /// next stream, opened after a backoff.
    pub(crate) fn stream_broken(&mut self, reason: &str, now: Instant) {
        let resumable = self.drop_stream();
        self.stats.restarts.inc();
        let delay = self.stream_backoff.next_delay();
        self.log(
            Level::Warning,
            format!("etcd watch stream broke ({reason}); resuming {resumable} watch(es) in {delay:.1?}"),
            vec![],
        );
        self.stream = Stream::Waiting { until: now + delay };
    }

    /// Drops the stream to reopen it at once with a fresh auth token.
    pub(crate) fn restart_with_fresh_token(&mut self) {
        self.drop_stream();
        self.refresh_token = true;
    }

    /// The stream carried something: it is alive.
    pub(crate) fn heard(&mut self, now: Instant) {
        if let Stream::Open { last_heard, probe_sent, .. } = &mut self.stream {
            *last_heard = now;
            *probe_sent = None;
        }
    }

    /// A progress request went out.
    pub(crate) fn probe_sent(&mut self, now: Instant) {
        if let Stream::Open { probe_sent, .. } = &mut self.stream {
            *probe_sent = Some(now);
        }
    }

    /// When the stream's liveness is next due for a look: a silent stream gets a progress
    /// request, an unanswered request breaks the stream. None without a stream.
    pub(crate) fn liveness_check_at(&self) -> Option<Instant> {
        match self.stream {
            Stream::Open { probe_sent: Some(sent), .. } => Some(sent + PROBE_TIMEOUT),
            Stream::Open { last_heard, .. } => Some(last_heard + SILENCE_BEFORE_PROBE),
            _ => None,
        }
    }

    /// A member cut off from this client (a partition, a host gone) answers nothing and
    /// closes nothing: require-leader cannot help, since its "no leader" never arrives, and
    /// HTTP/2 keep-alive notices only after 15 s. etcd answers a progress request at once
    /// (from any member with a leader), so a stream silent for SILENCE_BEFORE_PROBE gets
    /// one, and one unanswered for PROBE_TIMEOUT is given up and resumed elsewhere.
    pub(crate) fn check_liveness(&self, now: Instant) -> Liveness {
        match self.stream {
            Stream::Open { probe_sent: Some(sent), .. } if now >= sent + PROBE_TIMEOUT => {
                Liveness::GiveUp(format!(
                    "no answer to a progress request within {PROBE_TIMEOUT:?}; the member may be cut off"
                ))
            }
            Stream::Open { probe_sent: None, last_heard, .. } if now >= last_heard + SILENCE_BEFORE_PROBE => {
                Liveness::Probe
            }
            _ => Liveness::Fine,
        }
    }

    /// Takes in one reply of the stream (after [`HubState::heard`]).
    pub(crate) fn on_reply(&mut self, reply: &Reply<'_>, now: Instant) -> ReplyAction {
        let watch_id = reply.watch_id;
        if reply.created && !reply.canceled {
            self.stream_backoff.reset();
            if let Some(w) = self.by_watch_id.get(&watch_id).and_then(|p| self.watched.get_mut(p)) {
                w.refused.reset();
            }
        }
        if reply.canceled {
            return self.on_cancel(reply, now);
        }
        if watch_id == -1 {
            // The answer to a progress request (check_liveness): proof the stream is alive,
            // and nothing more. etcd before 3.5.8 could send it ahead of events not yet
            // delivered, so its revision is not trusted as a resume point.
            return ReplyAction::Nothing;
        }
        if reply.changes.is_empty() && !reply.created {
            // Progress notification of one watch: nothing happened under its prefix up to
            // this revision, so a resume may start after it.
            if let Some(w) = self.by_watch_id.get(&watch_id).and_then(|p| self.watched.get_mut(p)) {
                if matches!(w.phase, Phase::Watching { .. }) {
                    w.revision = w.revision.max(reply.header.revision);
                    w.cache.touch();
                }
            }
            return ReplyAction::Nothing;
        }
        if reply.changes.is_empty() {
            return ReplyAction::Nothing;
        }
        if let Some(prefix) = self.by_watch_id.get(&watch_id).cloned() {
            self.apply_changes(&prefix, &reply.changes);
        }
        ReplyAction::Nothing
    }

    fn on_cancel(&mut self, reply: &Reply<'_>, now: Instant) -> ReplyAction {
        let Some(prefix) = self.by_watch_id.remove(&reply.watch_id) else { return ReplyAction::Nothing };
        let compacted = reply.compact_revision;
        let name = self.watched.get(&prefix).map(|w| w.cache.name().to_string()).unwrap_or_default();
        let aged = match self.stream {
            Stream::Open { opened_at, .. } => now.saturating_duration_since(opened_at) >= TOKEN_SUSPECT_AGE,
            _ => false,
        };
        if compacted > 0 {
            self.stats.compaction_resyncs.inc();
            self.log(
                Level::Info,
                format!(
                    "watch of service {name} fell behind compaction (revision {compacted}); re-reading it"
                ),
                vec![("service", name), ("revision", compacted.to_string())],
            );
            ReplyAction::Reread(prefix, Duration::ZERO)
        } else if self.has_credentials && is_auth_refusal(reply.cancel_reason) && aged {
            // A stream keeps the auth token it was opened with; once that expires
            // etcd refuses new watches on it. Reopen it with a fresh token.
            self.log(
                Level::Info,
                format!(
                    "etcd refused a watch on an aged stream ({}); reopening it with a fresh auth token",
                    reply.cancel_reason
                ),
                vec![("service", name)],
            );
            if let Some(w) = self.watched.get_mut(&prefix) {
                w.phase = Phase::Pending;
            }
            self.restart_with_fresh_token();
            ReplyAction::ReopenWithFreshToken
        } else {
            let delay = match self.watched.get_mut(&prefix) {
                Some(w) => w.refused.next_delay(),
                None => return ReplyAction::Nothing,
            };
            self.log(
                Level::Warning,
                format!(
                    "etcd cancelled the watch of service {name}: {}; re-reading it in {delay:.1?}",
                    reply.cancel_reason
                ),
                vec![("service", name)],
            );
            ReplyAction::Reread(prefix, delay)
        }
    }

    fn apply_changes(&mut self, prefix: &str, changes: &[Change<'_>]) {
        let epoch = self.epoch;
        let Some(watched) = self.watched.get_mut(prefix) else { return };
        let name = watched.cache.name().to_string();
        let mut events = Vec::with_capacity(changes.len());
        let mut malformed = Vec::new();
        let mut revision = watched.revision;
        for change in changes {
            revision = revision.max(change.mod_revision);
            let Some(id) = instance_id(prefix, change.key) else { continue };
            if !change.put {
                if watched.instances.remove(id).is_some() {
                    events.push(Event::delete(&name, id));
                }
                continue;
            }
            match decode_instance(&name, id, change.value) {
                // Re-written unchanged (a lease recovery, a restore): not a change.
                Ok(instance) if watched.instances.get(id).is_some_and(|old| **old == instance) => {}
                Ok(instance) => {
                    let instance = Arc::new(instance);
                    watched.instances.insert(id.to_string(), Arc::clone(&instance));
                    events.push(Event::put(instance));
                }
                Err(reason) => {
                    malformed.push((String::from_utf8_lossy(change.key).into_owned(), reason));
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
        self.stats.events.add(changes.len() as u64);
        for (key, reason) in malformed {
            self.stats.malformed_values.inc();
            self.log(
                Level::Warning,
                format!("skipping malformed value at {key}: {reason}"),
                vec![("service", name.clone()), ("key", key), ("revision", revision.to_string())],
            );
        }
    }

    /// Closes the subscribers of every watched prefix (the hub is ending).
    pub(crate) fn close_all(&self) {
        for watched in self.watched.values() {
            watched.cache.close_subscribers();
        }
    }
}

/// Whether a watch cancel reason says etcd refused the credentials.
fn is_auth_refusal(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    reason.contains("permission denied")
        || reason.contains("auth token")
        || reason.contains("unauthenticated")
}

/// Decodes a stored value; the id inside must agree with the key's.
pub(crate) fn decode_instance(
    name: &str,
    id: &str,
    value: &[u8],
) -> std::result::Result<ServiceInstance, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_sink::Drained;

    const PREFIX: &str = "/genesis/services/user/";

    fn state() -> (HubState, Arc<LogSink>, Arc<WatchStats>) {
        let (log, stats) = (Arc::new(LogSink::default()), Arc::new(WatchStats::default()));
        (HubState::new(Arc::clone(&log), Arc::clone(&stats), true), log, stats)
    }

    fn header(revision: i64, raft_term: u64) -> Header {
        Header { cluster_id: 7, revision, raft_term }
    }

    fn value(id: &str) -> Vec<u8> {
        format!(r#"{{"id":"{id}","name":"user","endpoints":["grpc://10.0.0.1:1"]}}"#).into_bytes()
    }

    fn key(id: &str) -> Vec<u8> {
        format!("{PREFIX}{id}").into_bytes()
    }

    fn messages(log: &LogSink) -> Vec<String> {
        match log.drain(Duration::ZERO, 100) {
            Drained::Records(records) => records.into_iter().map(|r| r.message).collect(),
            _ => Vec::new(),
        }
    }

    fn ids(cache: &ServiceCache) -> Vec<String> {
        cache.snapshot().instances.iter().map(|i| i.id.clone()).collect()
    }

    /// Watches PREFIX and completes its first read at `revision` with these instances.
    fn watched_at(state: &mut HubState, revision: i64, ids: &[&str]) -> Arc<ServiceCache> {
        let cache = ServiceCache::new("user", PREFIX);
        assert!(state.watch(Arc::clone(&cache)));
        read(state, PREFIX, header(revision, 2), ids).expect("current read");
        cache
    }

    fn read(state: &mut HubState, prefix: &str, header: Header, ids: &[&str]) -> Option<Vec<String>> {
        let start = state.begin_read(prefix).expect("watched");
        let instances = ids
            .iter()
            .map(|id| (id.to_string(), Arc::new(decode_instance("user", id, &value(id)).unwrap())))
            .collect();
        let result = ReadResult {
            prefix: prefix.to_string(),
            baseline: start.baseline,
            ticket: start.ticket,
            header,
            instances,
            malformed: Vec::new(),
        };
        state.on_read(result)
    }

    fn reply<'a>(watch_id: i64, revision: i64, changes: Vec<Change<'a>>) -> Reply<'a> {
        Reply {
            watch_id,
            created: false,
            canceled: false,
            compact_revision: 0,
            cancel_reason: "",
            header: header(revision, 2),
            changes,
        }
    }

    /// Opens the stream for PREFIX and returns its watch id.
    fn open(state: &mut HubState, now: Instant) -> i64 {
        let start = state.open_stream().expect("a watch waits for the stream");
        assert_eq!(state.opened((start.prefix, start.watch_id), header(start.revision, 2), now), None);
        start.watch_id
    }

    #[test]
    fn a_first_read_publishes_and_the_watch_resumes_after_its_revision() {
        let (mut state, _, _) = state();
        let cache = watched_at(&mut state, 10, &["u-1", "u-2"]);
        assert!(cache.is_ready());
        assert_eq!(ids(&cache), ["u-1", "u-2"]);
        assert_eq!(state.phase(PREFIX), Some(Phase::Pending));
        let start = state.open_stream().unwrap();
        assert_eq!((start.prefix.as_str(), start.revision, start.refresh_token), (PREFIX, 10, false));
        assert_eq!(state.phase(PREFIX), Some(Phase::Watching { watch_id: start.watch_id }));
        // One stream at a time: a second call while it opens asks for nothing.
        assert_eq!(state.open_stream(), None);
    }

    #[test]
    fn a_superseded_read_is_ignored() {
        let (mut state, _, _) = state();
        let cache = watched_at(&mut state, 10, &["u-1"]);
        let older = state.begin_read(PREFIX).unwrap();
        let newer = state.begin_read(PREFIX).unwrap();
        assert!(newer.ticket > older.ticket);
        let stale = ReadResult {
            prefix: PREFIX.into(),
            baseline: older.baseline,
            ticket: older.ticket,
            header: header(11, 2),
            instances: BTreeMap::new(),
            malformed: Vec::new(),
        };
        assert!(state.on_read(stale).is_none());
        assert_eq!(ids(&cache), ["u-1"]);
        assert_eq!(state.phase(PREFIX), Some(Phase::Reading { ticket: newer.ticket }));
    }

    #[test]
    fn a_read_older_than_what_preceded_it_is_a_reset_that_rereads_everything_else() {
        let (mut state, log, stats) = state();
        let user = watched_at(&mut state, 100, &["u-1"]);
        let order = ServiceCache::new("order", "/genesis/services/order/");
        state.watch(Arc::clone(&order));
        // The revision went backwards: etcd's data was wiped or restored.
        let reread = read(&mut state, "/genesis/services/order/", header(5, 2), &[]).unwrap();
        assert_eq!(reread, [PREFIX.to_string()]);
        assert_eq!(stats.data_resets.get(), 1);
        assert!(messages(&log).iter().any(|m| m.contains("data was reset")));
        assert_eq!(order.snapshot().position.epoch, 1, "a new epoch begins");
        assert_eq!(user.snapshot().position.epoch, 0);
        // A later read of the new history is not a reset again.
        assert_eq!(read(&mut state, PREFIX, header(6, 2), &[]).unwrap(), Vec::<String>::new());
        assert_eq!(stats.data_resets.get(), 1);
    }

    #[test]
    fn a_raft_term_going_backwards_or_another_cluster_is_a_new_history() {
        let seen = header(10, 5);
        assert!(header(10, 4).is_new_history_since(&seen));
        assert!(header(9, 5).is_new_history_since(&seen));
        assert!(Header { cluster_id: 8, ..header(11, 5) }.is_new_history_since(&seen));
        assert!(!header(11, 6).is_new_history_since(&seen));
        assert!(!header(1, 1).is_new_history_since(&Header::default()), "nothing seen yet");
    }

    #[test]
    fn events_update_the_view_and_the_resume_revision() {
        let (mut state, log, stats) = state();
        let cache = watched_at(&mut state, 10, &["u-1"]);
        let id = open(&mut state, Instant::now());
        let (k1, k2, v2) = (key("u-1"), key("u-2"), value("u-2"));
        let (v1, bad) = (value("u-1"), b"garbage".to_vec());
        // Re-written unchanged: not a change.
        let same = vec![Change { put: true, key: &k1, value: &v1, mod_revision: 11 }];
        assert_eq!(state.on_reply(&reply(id, 11, same), Instant::now()), ReplyAction::Nothing);
        assert_eq!(cache.snapshot().position.revision, 10, "nothing published");
        let changes = vec![
            Change { put: true, key: &k2, value: &v2, mod_revision: 12 },
            Change { put: false, key: &k1, value: b"", mod_revision: 13 },
        ];
        state.on_reply(&reply(id, 13, changes), Instant::now());
        assert_eq!(ids(&cache), ["u-2"]);
        assert_eq!(cache.snapshot().position.revision, 13);
        // A malformed value removes the instance it replaces, and is reported.
        let malformed = vec![Change { put: true, key: &k2, value: &bad, mod_revision: 14 }];
        state.on_reply(&reply(id, 14, malformed), Instant::now());
        assert!(ids(&cache).is_empty());
        assert_eq!((stats.events.get(), stats.malformed_values.get()), (4, 1));
        assert!(messages(&log).iter().any(|m| m.starts_with("skipping malformed value")));
        // After a break the watch resumes after the last revision it reflected.
        state.stream_broken("test", Instant::now());
        state.reopen_due();
        assert_eq!(state.open_stream().unwrap().revision, 14);
    }

    #[test]
    fn progress_of_a_watch_moves_its_resume_point_but_a_progress_answer_does_not() {
        let (mut state, _, _) = state();
        watched_at(&mut state, 10, &[]);
        let id = open(&mut state, Instant::now());
        state.on_reply(&reply(-1, 50, Vec::new()), Instant::now());
        state.stream_broken("test", Instant::now());
        state.reopen_due();
        let id2 = state.open_stream().unwrap();
        assert_eq!(id2.revision, 10, "a progress answer is not a resume point");
        state.opened((id2.prefix, id2.watch_id), header(10, 2), Instant::now());
        state.on_reply(&reply(id2.watch_id, 40, Vec::new()), Instant::now());
        state.stream_broken("test", Instant::now());
        state.reopen_due();
        assert_eq!(state.open_stream().unwrap().revision, 40);
        assert_ne!(id, id2.watch_id, "watch ids are never reused");
    }

    #[test]
    fn a_compacted_watch_is_reread_at_once() {
        let (mut state, log, stats) = state();
        watched_at(&mut state, 10, &[]);
        let id = open(&mut state, Instant::now());
        let cancel = Reply { canceled: true, compact_revision: 30, ..reply(id, 40, Vec::new()) };
        assert_eq!(
            state.on_reply(&cancel, Instant::now()),
            ReplyAction::Reread(PREFIX.into(), Duration::ZERO)
        );
        assert_eq!(stats.compaction_resyncs.get(), 1);
        assert!(messages(&log).iter().any(|m| m.contains("fell behind compaction")));
    }

    /// A watched PREFIX on a stream opened now, and etcd's refusal of that watch.
    fn refused_watch(state: &mut HubState) -> (Instant, Reply<'static>) {
        watched_at(state, 10, &[]);
        let opened_at = Instant::now();
        let id = open(state, opened_at);
        let refused = Reply {
            canceled: true,
            cancel_reason: "etcdserver: permission denied",
            ..reply(id, 10, Vec::new())
        };
        (opened_at, refused)
    }

    #[test]
    fn a_refusal_on_an_aged_stream_reopens_it_with_a_fresh_token() {
        let (mut state, _, _) = state();
        let (opened_at, refused) = refused_watch(&mut state);
        let later = opened_at + TOKEN_SUSPECT_AGE;
        assert_eq!(state.on_reply(&refused, later), ReplyAction::ReopenWithFreshToken);
        let start = state.open_stream().unwrap();
        assert!(start.refresh_token);
        assert!(!state.open_stream().is_some_and(|s| s.refresh_token), "the token is refreshed once");
    }

    #[test]
    fn a_refusal_on_a_young_stream_is_retried_with_backoff() {
        let (mut state, log, _) = state();
        let (opened_at, refused) = refused_watch(&mut state);
        match state.on_reply(&refused, opened_at) {
            ReplyAction::Reread(prefix, delay) => {
                assert_eq!(prefix, PREFIX);
                assert!(delay >= Duration::from_millis(80), "{delay:?}");
            }
            other => panic!("expected a delayed re-read, got {other:?}"),
        }
        assert!(messages(&log).iter().any(|m| m.starts_with("etcd cancelled the watch of service user")));
    }

    #[test]
    fn a_silent_stream_is_probed_then_given_up() {
        let (mut state, _, stats) = state();
        watched_at(&mut state, 10, &[]);
        assert_eq!(state.liveness_check_at(), None, "no stream, nothing to check");
        let t0 = Instant::now();
        open(&mut state, t0);
        assert_eq!(state.liveness_check_at(), Some(t0 + SILENCE_BEFORE_PROBE));
        assert_eq!(state.check_liveness(t0 + Duration::from_secs(1)), Liveness::Fine);
        let t1 = t0 + SILENCE_BEFORE_PROBE;
        assert_eq!(state.check_liveness(t1), Liveness::Probe);
        state.probe_sent(t1);
        assert_eq!(state.liveness_check_at(), Some(t1 + PROBE_TIMEOUT));
        assert_eq!(state.check_liveness(t1 + Duration::from_secs(1)), Liveness::Fine);
        assert!(matches!(state.check_liveness(t1 + PROBE_TIMEOUT), Liveness::GiveUp(_)));
        // An answer in time makes the stream live again.
        state.heard(t1 + Duration::from_secs(1));
        assert_eq!(state.liveness_check_at(), Some(t1 + Duration::from_secs(1) + SILENCE_BEFORE_PROBE));
        // Given up: the watch waits for a new stream, opened after a backoff.
        state.stream_broken("no answer", t1 + PROBE_TIMEOUT);
        assert_eq!(stats.restarts.get(), 1);
        assert_eq!(state.phase(PREFIX), Some(Phase::Pending));
        assert!(state.reopen_at().is_some_and(|at| at > t1 + PROBE_TIMEOUT));
        assert_eq!(state.open_stream(), None, "not before the backoff ends");
        state.reopen_due();
        assert!(state.open_stream().is_some());
    }

    #[test]
    fn an_unwatched_first_watch_is_cancelled_once_the_stream_opens() {
        let (mut state, _, _) = state();
        let cache = watched_at(&mut state, 10, &[]);
        let start = state.open_stream().unwrap();
        let subscriber = cache.subscribe(8);
        assert_eq!(state.unwatch(PREFIX), Some(Some(start.watch_id)));
        assert!(subscriber.is_closed());
        assert_eq!(
            state.opened((start.prefix, start.watch_id), header(10, 2), Instant::now()),
            Some(start.watch_id)
        );
        assert!(state.pending_creates().is_empty());
    }

    #[test]
    fn watches_waiting_for_an_open_stream_are_created_on_it() {
        let (mut state, _, _) = state();
        watched_at(&mut state, 10, &[]);
        assert!(state.pending_creates().is_empty(), "no stream yet");
        let order = ServiceCache::new("order", "/genesis/services/order/");
        state.watch(order);
        let reading = state.begin_read("/genesis/services/order/").unwrap();
        open(&mut state, Instant::now());
        let result = ReadResult {
            prefix: "/genesis/services/order/".into(),
            baseline: reading.baseline,
            ticket: reading.ticket,
            header: header(12, 2),
            instances: BTreeMap::new(),
            malformed: Vec::new(),
        };
        state.on_read(result).unwrap();
        let creates = state.pending_creates();
        assert_eq!(creates.len(), 1);
        assert_eq!((creates[0].0.as_str(), creates[0].1), ("/genesis/services/order/", 12));
        assert!(state.pending_creates().is_empty(), "each is sent once");
    }

    #[test]
    fn a_reset_found_when_opening_rereads_every_watch() {
        let (mut state, _, stats) = state();
        watched_at(&mut state, 100, &[]);
        let start = state.open_stream().unwrap();
        assert_eq!(state.opened_into_reset(header(3, 1), start.highest), [PREFIX.to_string()]);
        assert_eq!(stats.data_resets.get(), 1);
        assert_eq!(state.phase(PREFIX), Some(Phase::Pending));
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
