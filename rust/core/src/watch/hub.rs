//! The hub's task: the one etcd watch stream, the range reads, and the loop that waits
//! on them. What to do with what etcd says is [`HubState`]'s call.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    EventType, GetOptions, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream,
};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::state::{
    decode_instance, Change, HubState, Liveness, ReadResult, Reply, ReplyAction, StreamStart,
};
use super::Command;
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::etcd::{read_range, EtcdAccess, Header};
use crate::instance::{instance_id, ServiceInstance};
use crate::log_sink::Level;

/// Range reads in flight at once (a data reset re-reads every watched service).
const CONCURRENT_READS: usize = 16;

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

pub(crate) struct HubTask {
    access: Arc<EtcdAccess>,
    commands: mpsc::UnboundedReceiver<Command>,
    state: HubState,
    sender: Option<WatchRequestSender>,
    responses: Option<WatchResponseStream>,
    opening: Option<tokio::task::JoinHandle<Result<Opened>>>,
    reads: JoinSet<ReadResult>,
    /// The read in flight per prefix, aborted when superseded or no longer wanted.
    reading: HashMap<String, AbortHandle>,
    read_slots: Arc<Semaphore>,
}

impl HubTask {
    pub(crate) fn new(access: Arc<EtcdAccess>, commands: mpsc::UnboundedReceiver<Command>) -> Self {
        let state = HubState::new(access.log.clone(), access.watch_stats.clone(), access.has_credentials);
        Self {
            access,
            commands,
            state,
            sender: None,
            responses: None,
            opening: None,
            reads: JoinSet::new(),
            reading: HashMap::new(),
            read_slots: Arc::new(Semaphore::new(CONCURRENT_READS)),
        }
    }

    pub(crate) async fn run(mut self) {
        let closed = self.access.closed.clone();
        loop {
            let liveness_at = self.state.liveness_check_at();
            let reopen_at = self.state.reopen_at();
            tokio::select! {
                biased;
                _ = closed.cancelled() => break,
                command = self.commands.recv() => match command {
                    Some(Command::Watch(cache)) => {
                        let prefix = cache.prefix().to_string();
                        if self.state.watch(cache) {
                            self.start_read(&prefix, Duration::ZERO).await;
                        }
                    }
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
                            self.state.heard(Instant::now());
                            self.on_response(response).await
                        }
                        Ok(None) => self.stream_broken("etcd closed the watch stream"),
                        Err(e) => self.stream_broken(&e.to_string()),
                    }
                }
                opened = wait_opening(&mut self.opening), if self.opening.is_some() => {
                    self.opening = None;
                    self.on_opened(opened).await;
                }
                _ = sleep_until(reopen_at), if reopen_at.is_some() => {
                    self.state.reopen_due();
                    self.ensure_stream();
                }
                _ = sleep_until(liveness_at), if liveness_at.is_some() => self.check_liveness().await,
            }
        }
        self.reads.abort_all();
        if let Some(opening) = self.opening.take() {
            opening.abort();
        }
        self.state.close_all();
    }

    /// Cancels a watch the stream carries; best effort: a failed cancel only leaves a
    /// watch whose replies are ignored.
    async fn cancel(&mut self, watch_id: Option<i64>) {
        if let (Some(watch_id), Some(sender)) = (watch_id, self.sender.as_mut()) {
            let _ = sender.cancel(watch_id).await;
        }
    }

    async fn unwatch(&mut self, prefix: &str) {
        let Some(cancel) = self.state.unwatch(prefix) else { return };
        if let Some(read) = self.reading.remove(prefix) {
            read.abort();
        }
        self.cancel(cancel).await;
    }

    /// Starts a (re-)read of `prefix` after `delay`; an older read in flight is superseded.
    async fn start_read(&mut self, prefix: &str, delay: Duration) {
        let Some(start) = self.state.begin_read(prefix) else { return };
        self.cancel(start.cancel).await;
        if let Some(older) = self.reading.remove(prefix) {
            older.abort();
        }
        let access = Arc::clone(&self.access);
        let slots = Arc::clone(&self.read_slots);
        let (prefix_owned, ticket, baseline, cache) =
            (prefix.to_string(), start.ticket, start.baseline, start.cache);
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
        self.reading.insert(prefix.to_string(), task);
    }

    async fn on_read(&mut self, result: ReadResult) {
        let prefix = result.prefix.clone();
        let Some(reread) = self.state.on_read(result) else { return };
        self.reading.remove(&prefix);
        for other in reread {
            self.start_read(&other, Duration::ZERO).await;
        }
        self.ensure_stream();
        self.create_pending().await;
    }

    /// Opens the stream in the background if watches are waiting for one.
    fn ensure_stream(&mut self) {
        let Some(start) = self.state.open_stream() else { return };
        let access = Arc::clone(&self.access);
        self.opening = Some(tokio::spawn(open_stream(access, start)));
    }

    async fn on_opened(&mut self, opened: Result<Opened>) {
        match opened {
            Ok(Opened::Stream { sender, responses, first_watch, header }) => {
                self.sender = Some(sender);
                self.responses = Some(*responses);
                let cancel = self.state.opened(first_watch, header, Instant::now());
                self.cancel(cancel).await;
                self.create_pending().await;
            }
            Ok(Opened::Reset(header, baseline)) => {
                self.drop_stream();
                for prefix in self.state.opened_into_reset(header, baseline) {
                    self.start_read(&prefix, Duration::ZERO).await;
                }
            }
            Err(Error::Closed(_)) => {}
            Err(e) => {
                self.drop_stream();
                self.state.open_failed(&e.to_string(), Instant::now());
            }
        }
    }

    /// Sends a create request for every watch waiting for the stream.
    async fn create_pending(&mut self) {
        for (prefix, revision, watch_id) in self.state.pending_creates() {
            let sent = match self.sender.as_mut() {
                Some(sender) => sender.watch(prefix, Some(watch_options(revision, watch_id))).await,
                None => return,
            };
            if let Err(e) = sent {
                self.stream_broken(&format!("sending a watch request failed: {e}"));
                return;
            }
        }
    }

    /// Forgets the stream's handles (the state decides what its watches do next).
    fn drop_stream(&mut self) {
        self.sender = None;
        self.responses = None;
    }

    fn stream_broken(&mut self, reason: &str) {
        self.drop_stream();
        self.state.stream_broken(reason, Instant::now());
    }

    async fn check_liveness(&mut self) {
        let now = Instant::now();
        match self.state.check_liveness(now) {
            Liveness::Fine => {}
            Liveness::GiveUp(reason) => self.stream_broken(&reason),
            Liveness::Probe => {
                let Some(sender) = self.sender.as_mut() else { return };
                match sender.request_progress().await {
                    Ok(()) => self.state.probe_sent(now),
                    Err(e) => self.stream_broken(&format!("sending a progress request failed: {e}")),
                }
            }
        }
    }

    async fn on_response(&mut self, response: WatchResponse) {
        let changes = response
            .events()
            .iter()
            .filter_map(|event| {
                let kv = event.kv()?;
                Some(Change {
                    put: event.event_type() == EventType::Put,
                    key: kv.key(),
                    value: kv.value(),
                    mod_revision: kv.mod_revision(),
                })
            })
            .collect();
        let reply = Reply {
            watch_id: response.watch_id(),
            created: response.created(),
            canceled: response.canceled(),
            compact_revision: response.compact_revision(),
            cancel_reason: response.cancel_reason(),
            header: Header::of(response.header()),
            changes,
        };
        match self.state.on_reply(&reply, Instant::now()) {
            ReplyAction::Nothing => {}
            ReplyAction::Reread(prefix, delay) => self.start_read(&prefix, delay).await,
            ReplyAction::ReopenWithFreshToken => {
                self.drop_stream();
                self.ensure_stream();
            }
        }
    }
}

/// Opens the watch stream with its first watch, then probes etcd's revision: after a
/// wipe, a watch resuming at an old revision would wait for a future that never comes.
/// Probing after the watch exists also catches a wipe that happened while the stream
/// was being opened.
async fn open_stream(access: Arc<EtcdAccess>, start: StreamStart) -> Result<Opened> {
    let StreamStart { prefix, revision, watch_id, highest, refresh_token } = start;
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
    Ok(Opened::Stream { sender, responses: Box::new(responses), first_watch: (prefix, watch_id), header })
}

fn watch_options(revision: i64, watch_id: i64) -> WatchOptions {
    WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1)
        .with_progress_notify()
        .with_watch_id(watch_id)
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
            Err(e) => Err(Error::Etcd(format!("opening the watch stream failed: {e}").into())),
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
