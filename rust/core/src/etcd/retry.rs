//! The retry loop of every unary call: an attempt budget, backoff, and which errors are
//! worth another attempt.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::classify::classify;
use crate::backoff::Backoff;
use crate::error::{Error, Result, Status};

/// How long one attempt of a call may go unanswered before it is abandoned and retried:
/// a third of the call's budget, at least 1 s and at most 3 s (never more than the budget).
///
/// A member whose leader just died forwards a write to the dead leader, where it is lost;
/// the member answers only when its own request timeout (~7 s) ends, so without this a
/// write during a leader election used up the whole budget. A member partitioned away
/// holds calls the same way until the connection's keep-alive gives up. Every operation
/// the core retries is idempotent (puts of the same value, deletes, reads, revokes); a
/// retried lease grant may leave an unused lease behind, which expires after its TTL.
pub(crate) fn attempt_budget(budget: Duration) -> Duration {
    (budget / 3).clamp(Duration::from_secs(1), Duration::from_secs(3)).min(budget)
}

/// Runs `op` until it succeeds, fails with an error that is not worth retrying with
/// `members` members to pick from (see [`worth_retrying`]), or `budget` runs out, retrying
/// with backoff; each attempt gets at most `per_attempt` once it holds an in-flight permit
/// (time queued for a permit does not count against the attempt).
pub(crate) async fn retry_within<T, F, Fut>(
    what: &str,
    budget: Duration,
    per_attempt: Duration,
    closed: &CancellationToken,
    in_flight: &tokio::sync::Semaphore,
    members: usize,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + budget;
    let mut backoff = Backoff::new(Duration::from_millis(25), Duration::from_millis(500));
    let mut last: Option<Error> = None;
    loop {
        let attempt = tokio::select! {
            _ = closed.cancelled() => return Err(Error::Closed("etcd connector".into())),
            r = tokio::time::timeout_at(deadline, async {
                // Bounded in-flight calls: thousands of concurrent registrations queue
                // here instead of tripping etcd's "too many requests".
                let _permit = in_flight.acquire().await;
                tokio::time::timeout(per_attempt, op()).await
            }) => r,
        };
        let err = match attempt {
            Ok(Ok(Ok(value))) => return Ok(value),
            Ok(Ok(Err(e))) => classify(e, what),
            Ok(Err(_)) => {
                Error::Unavailable(format!("{what}: no answer from etcd within {per_attempt:?}").into())
            }
            Err(_) => {
                return Err(match last {
                    // Every member tried refused its certificate: that, not a timeout, is the news.
                    Some(e @ Error::CertificateRefused(_)) => e,
                    Some(e) => {
                        Error::Unavailable(Status::new(format!("{e} (gave up after {budget:?})"), e.code()))
                    }
                    None => Error::Unavailable(
                        format!("{what}: no answer from etcd within {budget:?} (queued or in flight)").into(),
                    ),
                });
            }
        };
        if !worth_retrying(&err, members) {
            return Err(err);
        }
        let delay = backoff.next_delay();
        if Instant::now() + delay >= deadline {
            return Err(err);
        }
        last = Some(err);
        tokio::select! {
            _ = closed.cancelled() => return Err(Error::Closed("etcd connector".into())),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Whether to try `err`'s call again. A certificate failure is final with one member;
/// with several, the balanced channel may have picked the one member whose certificate
/// is wrong, and another attempt may reach a good one (as long as the deadline allows).
pub(crate) fn worth_retrying(err: &Error, members: usize) -> bool {
    err.is_retryable() || (members > 1 && matches!(err, Error::CertificateRefused(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_gets_a_third_of_the_budget_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(attempt_budget(s(6)), s(2));
        assert_eq!(attempt_budget(s(30)), s(3));
        assert_eq!(attempt_budget(s(2)), s(1));
        assert_eq!(attempt_budget(Duration::from_millis(300)), Duration::from_millis(300));
    }

    /// The first attempt never answers (a write forwarded to a dead leader); the call must
    /// abandon it and succeed on the next attempt, well within its budget.
    #[tokio::test]
    async fn an_unanswered_attempt_is_abandoned_and_retried() {
        let closed = CancellationToken::new();
        let permits = tokio::sync::Semaphore::new(1);
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let started = Instant::now();
        let result = retry_within(
            "put",
            Duration::from_secs(10),
            Duration::from_millis(100),
            &closed,
            &permits,
            1,
            || {
                let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if n == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok::<u32, etcd_client::Error>(n)
                }
            },
        )
        .await;
        assert_eq!(result.unwrap(), 1);
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert_eq!(permits.available_permits(), 1, "the abandoned attempt's permit was returned");
    }

    #[tokio::test]
    async fn attempts_that_never_answer_end_in_unavailable_at_the_budget() {
        let closed = CancellationToken::new();
        let permits = tokio::sync::Semaphore::new(1);
        let result: Result<()> = retry_within(
            "put",
            Duration::from_millis(400),
            Duration::from_millis(100),
            &closed,
            &permits,
            1,
            || async { std::future::pending().await },
        )
        .await;
        match result {
            Err(Error::Unavailable(m)) => assert!(m.message.starts_with("put: no answer from etcd"), "{m}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
