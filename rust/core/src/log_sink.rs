//! Log records from background tasks, handed to whoever drains them (the Python bindings
//! run one thread per connector that forwards them to the `logging` module).
//!
//! Background tasks must never block on logging, so the queue is bounded and records
//! that do not fit are counted and dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::sync::lock;

const CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

/// One log line with structured fields (service, instance id, lease id, revision...).
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub level: Level,
    pub message: String,
    pub fields: Vec<(&'static str, String)>,
    /// 0 for the connector itself, otherwise the id of the registry the record is about,
    /// so that it reaches that registry's logger.
    pub origin: u64,
}

/// What [`LogSink::drain`] found.
#[derive(Debug)]
pub enum Drained {
    Records(Vec<LogRecord>),
    /// Nothing arrived within the timeout.
    Idle,
    /// The sink was closed and is empty; no record will come any more.
    Closed,
}

#[derive(Default)]
struct Queue {
    records: VecDeque<LogRecord>,
    closed: bool,
}

#[derive(Default)]
pub struct LogSink {
    queue: Mutex<Queue>,
    ready: Condvar,
    dropped: AtomicU64,
    /// Set by `close` even when the queue's lock cannot be taken (in a forked child a
    /// thread that no longer exists may hold it); drainers check it on each wake-up.
    closed: AtomicBool,
}

impl LogSink {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        lock(&self.queue)
    }

    pub fn emit(
        &self,
        level: Level,
        origin: u64,
        message: impl Into<String>,
        fields: Vec<(&'static str, String)>,
    ) {
        let mut queue = self.lock();
        if queue.closed || self.closed.load(Ordering::Relaxed) || queue.records.len() >= CAPACITY {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.records.push_back(LogRecord { level, message: message.into(), fields, origin });
        drop(queue);
        self.ready.notify_one();
    }

    /// Records dropped because nobody drained the queue fast enough.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Ends the sink: the drainer gets what is queued, then [`Drained::Closed`].
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut queue) = self.queue.try_lock() {
            queue.closed = true;
        }
        self.ready.notify_all();
    }

    /// Blocks up to `timeout` for records; returns at most `max` of them at once.
    pub fn drain(&self, timeout: Duration, max: usize) -> Drained {
        let queue = self.lock();
        let closed = |q: &Queue| q.closed || self.closed.load(Ordering::Acquire);
        let (mut queue, _) = self
            .ready
            .wait_timeout_while(queue, timeout, |q| q.records.is_empty() && !closed(q))
            .unwrap_or_else(|e| e.into_inner());
        if queue.records.is_empty() {
            return if closed(&queue) { Drained::Closed } else { Drained::Idle };
        }
        let n = queue.records.len().min(max.max(1));
        Drained::Records(queue.records.drain(..n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_in_order_and_reports_close() {
        let sink = LogSink::default();
        sink.emit(Level::Info, 0, "a", vec![]);
        sink.emit(Level::Warning, 7, "b", vec![("lease_id", "1".into())]);
        match sink.drain(Duration::from_millis(10), 10) {
            Drained::Records(r) => {
                assert_eq!(r.len(), 2);
                assert_eq!(r[0].message, "a");
                assert_eq!(r[1].origin, 7);
                assert_eq!(r[1].fields, vec![("lease_id", "1".to_string())]);
            }
            other => panic!("expected records, got {other:?}"),
        }
        assert!(matches!(sink.drain(Duration::from_millis(1), 10), Drained::Idle));
        sink.emit(Level::Info, 0, "last", vec![]);
        sink.close();
        assert!(matches!(sink.drain(Duration::from_millis(10), 10), Drained::Records(r) if r.len() == 1));
        assert!(matches!(sink.drain(Duration::from_secs(10), 10), Drained::Closed));
    }

    #[test]
    fn close_wakes_a_waiting_drainer() {
        let sink = std::sync::Arc::new(LogSink::default());
        let waiter = {
            let sink = sink.clone();
            std::thread::spawn(move || sink.drain(Duration::from_secs(30), 10))
        };
        sink.close();
        assert!(matches!(waiter.join().unwrap(), Drained::Closed));
    }

    #[test]
    fn overflow_is_counted_not_blocking() {
        let sink = LogSink::default();
        for _ in 0..CAPACITY + 5 {
            sink.emit(Level::Debug, 0, "x", vec![]);
        }
        assert_eq!(sink.dropped(), 5);
    }
}
