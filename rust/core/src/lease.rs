//! The lease pool: every instance a registry registers with the same TTL shares one
//! lease and one keep-alive stream, however many instances there are.
//!
//! A group's task renews its lease at a third of the granted TTL. When the lease is lost
//! (a TTL-0 reply, "lease not found", no successful renewal for a whole TTL, etcd's data
//! wiped) the task grants a new lease and writes every key of the group again, with
//! backoff and jitter starting at `retry_interval`, for as long as the group has keys.
//! Once per TTL it also checks that its keys still exist, and writes back any that
//! someone else deleted. The key of an instance never changes.
//!
//! Locking: `lease` is a read-write lock. Writing one key (register) holds it for
//! reading, so registrations proceed concurrently. Deleting a key (deregister, or the
//! clean-up of a failed registration), replacing the lease and writing every key again,
//! and restoring deleted keys hold it for writing. So a deleted key is never written
//! back, and no key is written with a lease that is being replaced. The registry
//! serialises operations on one instance id, so a key is never written and deleted at
//! the same time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{Notify, RwLock};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::etcd::{classify, EtcdAccess};
use crate::log_sink::Level;
use crate::stats::RegistryStats;
use crate::sync::lock;

/// Operations per transaction when writing or checking many keys (etcd's default
/// `--max-txn-ops` is 128).
const TXN_BATCH: usize = 100;
/// Bytes of keys and values per transaction. etcd refuses requests over its
/// `--max-request-bytes` (1.5 MiB by default), so a hundred instances that are each
/// allowed (up to ~1.5 MiB) must not travel together; a larger one goes alone.
const TXN_BYTES: usize = 1024 * 1024;
/// The longest wait between two attempts to recover a lost lease.
const MAX_RECOVERY_DELAY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lease {
    id: i64,
    granted: Duration,
}

/// What the registry tells the pool about itself.
pub(crate) struct LeaseContext {
    pub access: Arc<EtcdAccess>,
    pub retry_interval: Duration,
    pub stats: Arc<RegistryStats>,
    /// Registry id, so log records reach that registry's logger.
    pub origin: u64,
    pub closed: CancellationToken,
}

impl LeaseContext {
    fn log(&self, level: Level, message: impl Into<String>, fields: Vec<(&'static str, String)>) {
        self.access.log.emit(level, self.origin, message, fields);
    }
}

/// The TTL as etcd takes it: whole seconds, rounded up so an instance never expires
/// sooner than asked.
pub(crate) fn grant_seconds(ttl: Duration) -> i64 {
    (ttl.as_secs_f64().ceil() as i64).max(1)
}

struct LeaseGroup {
    ttl: Duration,
    lease: RwLock<Option<Lease>>,
    /// How many leases this group has been granted; above 1 means recoveries.
    grants: Mutex<u64>,
    /// Every key on this group's lease, with the value to write back.
    keys: Mutex<BTreeMap<String, Arc<[u8]>>>,
    /// Keys that failed to register and may still exist in etcd: deleted as soon as
    /// etcd allows, so no instance lives on that nobody tracks.
    orphans: Mutex<BTreeSet<String>>,
    /// Leases found lost whose keys have not moved yet; revoked once they have.
    lost: Mutex<Vec<i64>>,
    /// Wakes the task when a lease appears or is reported lost.
    wake: Notify,
    stop: CancellationToken,
}

impl LeaseGroup {
    fn keys_snapshot(&self) -> Vec<(String, Arc<[u8]>)> {
        lock(&self.keys).iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect()
    }

    fn current(&self) -> Option<Lease> {
        self.lease.try_read().ok().and_then(|l| *l)
    }

    /// A live lease, granting one (and writing every key on it) when there is none.
    /// `true` with it means every key of the group was just written with it.
    async fn ensure_lease(&self, ctx: &LeaseContext) -> Result<(Lease, bool)> {
        if let Some(lease) = *self.lease.read().await {
            return Ok((lease, false));
        }
        let mut slot = self.lease.write().await;
        if let Some(lease) = *slot {
            return Ok((lease, false));
        }
        if self.stop.is_cancelled() {
            return Err(Error::Closed("registry".into()));
        }
        let seconds = grant_seconds(self.ttl);
        let granted =
            ctx.access.call("grant lease", |mut c| async move { c.lease_grant(seconds, None).await }).await?;
        let lease = Lease { id: granted.id(), granted: Duration::from_secs(granted.ttl().max(1) as u64) };
        let keys = self.keys_snapshot();
        if let Err(e) = put_all(&ctx.access, &keys, lease.id).await {
            revoke_in_background(&ctx.access, lease.id);
            return Err(e);
        }
        *slot = Some(lease);
        let grants = {
            let mut grants = lock(&self.grants);
            *grants += 1;
            *grants
        };
        drop(slot);
        self.wake.notify_one();
        // The keys have moved: the old leases may still exist (etcd extends leases over a
        // restart), so revoke them now that nothing needed is on them.
        for old in std::mem::take(&mut *lock(&self.lost)) {
            revoke_in_background(&ctx.access, old);
        }
        if grants > 1 {
            ctx.stats.lease_recoveries.inc();
            ctx.log(
                Level::Info,
                format!(
                    "lease recovered: granted lease {:x} and registered {} instance(s) again",
                    lease.id,
                    keys.len()
                ),
                vec![("lease_id", lease.id.to_string()), ("ttl", format!("{:?}", self.ttl))],
            );
        }
        Ok((lease, true))
    }

    /// Forgets `lease` if it is still the current one; true if this call did.
    async fn mark_lost(&self, ctx: &LeaseContext, lease: Lease, reason: &str) -> bool {
        let mut slot = self.lease.write().await;
        if *slot != Some(lease) {
            return false;
        }
        *slot = None;
        drop(slot);
        lock(&self.lost).push(lease.id);
        ctx.stats.lease_failures.inc();
        ctx.log(
            Level::Warning,
            format!("lease {:x} lost ({reason}); registering its instances again", lease.id),
            vec![("lease_id", lease.id.to_string()), ("ttl", format!("{:?}", self.ttl))],
        );
        self.wake.notify_one();
        true
    }

    /// Writes `keys` (already in `keys`) with the current lease, replacing a lost lease
    /// on the way. Returns the lease id the keys are on.
    async fn write_keys(&self, ctx: &LeaseContext, keys: &[String]) -> Result<i64> {
        for _ in 0..3 {
            let (lease, fresh) = self.ensure_lease(ctx).await?;
            if fresh {
                return Ok(lease.id);
            }
            let slot = self.lease.read().await;
            if *slot != Some(lease) {
                continue;
            }
            let entries: Vec<(String, Arc<[u8]>)> = {
                let known = lock(&self.keys);
                keys.iter().filter_map(|k| known.get(k).map(|v| (k.clone(), Arc::clone(v)))).collect()
            };
            let written = match entries.as_slice() {
                [(key, value)] => put_one(&ctx.access, key, value, lease.id).await,
                _ => put_all(&ctx.access, &entries, lease.id).await,
            };
            drop(slot);
            match written {
                Ok(()) => return Ok(lease.id),
                Err(Error::LeaseExpired(_)) => {
                    self.mark_lost(ctx, lease, "etcd no longer knows it").await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::LeaseExpired("the lease kept disappearing while writing the instances".into()))
    }

    /// Deletes keys left by failed registrations.
    async fn delete_orphans(&self, ctx: &LeaseContext) -> Result<()> {
        let orphans: Vec<String> = lock(&self.orphans).iter().cloned().collect();
        if orphans.is_empty() {
            return Ok(());
        }
        let _slot = self.lease.write().await;
        for key in orphans {
            if !lock(&self.orphans).contains(&key) {
                continue;
            }
            delete_key(&ctx.access, &key).await?;
            lock(&self.orphans).remove(&key);
        }
        Ok(())
    }

    /// Checks that every key still exists and writes back those that do not.
    async fn restore_deleted_keys(&self, ctx: &LeaseContext, lease: Lease) -> Result<()> {
        let keys: Vec<String> = lock(&self.keys).keys().cloned().collect();
        let mut missing = Vec::new();
        for batch in keys.chunks(TXN_BATCH) {
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|k| TxnOp::get(k.as_str(), Some(GetOptions::new().with_keys_only())))
                .collect();
            let response = ctx
                .access
                .call("check registered keys", |mut c| {
                    let txn = Txn::new().and_then(ops.clone());
                    async move { c.txn(txn).await }
                })
                .await?;
            for (key, op) in batch.iter().zip(response.op_responses()) {
                if let TxnOpResponse::Get(get) = op {
                    if get.kvs().is_empty() {
                        missing.push(key.clone());
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let slot = self.lease.write().await;
        if *slot != Some(lease) {
            return Ok(());
        }
        let restore: Vec<(String, Arc<[u8]>)> = {
            let keys = lock(&self.keys);
            missing.iter().filter_map(|k| keys.get(k).map(|v| (k.clone(), Arc::clone(v)))).collect()
        };
        put_all(&ctx.access, &restore, lease.id).await?;
        drop(slot);
        ctx.stats.re_registrations.add(restore.len() as u64);
        for (key, _) in &restore {
            ctx.log(
                Level::Warning,
                format!("{key} was deleted from etcd while its lease lived; registered it again"),
                vec![("key", key.clone()), ("lease_id", lease.id.to_string())],
            );
        }
        Ok(())
    }
}

enum KeepAliveEnd {
    Stopped,
    /// Another path replaced or dropped the lease; start over with the current one.
    Replaced,
    Lost(String),
}

async fn keep_alive_task(group: Arc<LeaseGroup>, ctx: Arc<LeaseContext>) {
    let mut recovery = Backoff::new(ctx.retry_interval, MAX_RECOVERY_DELAY.max(ctx.retry_interval));
    loop {
        if group.stop.is_cancelled() {
            return;
        }
        let current = *group.lease.read().await;
        let lease = match current {
            Some(lease) => lease,
            None if lock(&group.keys).is_empty() => {
                tokio::select! {
                    _ = group.stop.cancelled() => return,
                    _ = group.wake.notified() => continue,
                }
            }
            None => match group.ensure_lease(&ctx).await {
                Ok((lease, _)) => {
                    recovery.reset();
                    lease
                }
                Err(Error::Closed(_)) => return,
                Err(e) => {
                    let delay = recovery.next_delay();
                    ctx.log(
                        Level::Warning,
                        format!("cannot replace lost lease yet, retrying in {delay:.1?}: {e}"),
                        vec![("ttl", format!("{:?}", group.ttl))],
                    );
                    tokio::select! {
                        _ = group.stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            },
        };
        match keep_alive(&group, &ctx, lease).await {
            KeepAliveEnd::Stopped => return,
            KeepAliveEnd::Replaced => continue,
            KeepAliveEnd::Lost(reason) => {
                group.mark_lost(&ctx, lease, &reason).await;
            }
        }
    }
}

/// Renews `lease` until it is lost, replaced, or the group stops.
async fn keep_alive(group: &LeaseGroup, ctx: &LeaseContext, lease: Lease) -> KeepAliveEnd {
    let interval = (lease.granted / 3).max(Duration::from_millis(100));
    let mut last_ok = Instant::now();
    let mut check_keys_at = Instant::now() + lease.granted;
    let mut reopen = Backoff::new(Duration::from_millis(100), interval);
    loop {
        let mut leases = ctx.access.client.lease_client();
        let opened = tokio::select! {
            _ = group.stop.cancelled() => return KeepAliveEnd::Stopped,
            r = tokio::time::timeout(interval, leases.keep_alive(lease.id)) => r,
        };
        match opened {
            Ok(Ok((mut keeper, mut replies))) => {
                last_ok = Instant::now();
                reopen.reset();
                loop {
                    tokio::select! {
                        _ = group.stop.cancelled() => return KeepAliveEnd::Stopped,
                        _ = group.wake.notified() => {}
                        _ = tokio::time::sleep(interval) => {}
                    }
                    if group.current() != Some(lease) && *group.lease.read().await != Some(lease) {
                        return KeepAliveEnd::Replaced;
                    }
                    if keeper.keep_alive().await.is_err() {
                        break;
                    }
                    match tokio::time::timeout(interval, replies.message()).await {
                        Ok(Ok(Some(reply))) if reply.ttl() > 0 => last_ok = Instant::now(),
                        Ok(Ok(Some(_))) => {
                            return KeepAliveEnd::Lost("etcd reports it expired (TTL 0)".into())
                        }
                        _ => break,
                    }
                    if !lock(&group.orphans).is_empty() {
                        // Best effort; failures are retried on the next renewal.
                        let _ = group.delete_orphans(ctx).await;
                    }
                    if Instant::now() >= check_keys_at {
                        check_keys_at = Instant::now() + lease.granted;
                        if let Err(e) = group.restore_deleted_keys(ctx, lease).await {
                            if matches!(e, Error::LeaseExpired(_)) {
                                return KeepAliveEnd::Lost("etcd no longer knows it".into());
                            }
                        }
                    }
                }
            }
            Ok(Err(e)) => {
                if let Error::LeaseExpired(_) = classify(e, "keep-alive") {
                    return KeepAliveEnd::Lost("etcd no longer knows it".into());
                }
            }
            Err(_) => {}
        }
        ctx.stats.keepalive_restarts.inc();
        let silent_for = last_ok.elapsed();
        if silent_for >= lease.granted {
            return KeepAliveEnd::Lost(format!(
                "no keep-alive reply for {silent_for:.1?}, longer than its TTL"
            ));
        }
        let delay = reopen.next_delay().min(lease.granted - silent_for);
        tokio::select! {
            _ = group.stop.cancelled() => return KeepAliveEnd::Stopped,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn put_one(access: &EtcdAccess, key: &str, value: &Arc<[u8]>, lease: i64) -> Result<()> {
    access
        .call("write instance", |mut c| {
            let value = value.to_vec();
            async move { c.put(key, value, Some(PutOptions::new().with_lease(lease))).await }
        })
        .await
        .map(|_| ())
}

async fn delete_key(access: &EtcdAccess, key: &str) -> Result<()> {
    access.call("delete instance", |mut c| async move { c.delete(key, None).await }).await.map(|_| ())
}

/// Deletes many keys, a transaction per batch.
async fn delete_keys(access: &EtcdAccess, keys: &[String]) -> Result<()> {
    for batch in keys.chunks(TXN_BATCH) {
        let ops: Vec<TxnOp> = batch.iter().map(|k| TxnOp::delete(k.as_str(), None)).collect();
        access
            .call("delete instances", |mut c| {
                let txn = Txn::new().and_then(ops.clone());
                async move { c.txn(txn).await }
            })
            .await?;
    }
    Ok(())
}

/// A key and the value written at it.
type Entry = (String, Arc<[u8]>);

/// Splits `entries` into runs of at most [`TXN_BATCH`] entries and [`TXN_BYTES`] bytes
/// (an entry larger than that alone makes a run).
fn batches(entries: &[Entry]) -> Vec<&[Entry]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (key, value)) in entries.iter().enumerate() {
        let size = key.len() + value.len();
        if i > start && (i - start == TXN_BATCH || bytes + size > TXN_BYTES) {
            out.push(&entries[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

/// Writes many keys with `lease`, a transaction per batch.
async fn put_all(access: &EtcdAccess, keys: &[(String, Arc<[u8]>)], lease: i64) -> Result<()> {
    for batch in batches(keys) {
        let ops: Vec<TxnOp> = batch
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.to_vec(), Some(PutOptions::new().with_lease(lease))))
            .collect();
        access
            .call("write instances", |mut c| {
                let txn = Txn::new().and_then(ops.clone());
                async move { c.txn(txn).await }
            })
            .await?;
    }
    Ok(())
}

fn revoke_in_background(access: &Arc<EtcdAccess>, lease: i64) {
    let access = Arc::clone(access);
    tokio::spawn(async move {
        let _ = access.call("revoke lease", |mut c| async move { c.lease_revoke(lease).await }).await;
    });
}

/// All of a registry's lease groups, keyed by TTL in milliseconds.
pub(crate) struct LeasePool {
    ctx: Arc<LeaseContext>,
    groups: Mutex<HashMap<u64, Arc<LeaseGroup>>>,
}

fn ttl_key(ttl: Duration) -> u64 {
    ttl.as_millis() as u64
}

impl LeasePool {
    pub(crate) fn new(ctx: LeaseContext) -> Self {
        Self { ctx: Arc::new(ctx), groups: Mutex::new(HashMap::new()) }
    }

    /// Writes every `(key, value)` on the shared lease for `ttl` (a transaction per 100
    /// keys); returns the lease id. On failure no key is left behind in etcd (each is
    /// deleted now, or as soon as etcd allows).
    pub(crate) async fn attach(&self, ttl: Duration, entries: Vec<(String, Vec<u8>)>) -> Result<i64> {
        let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
        let group = {
            let mut groups = lock(&self.groups);
            let group = groups.entry(ttl_key(ttl)).or_insert_with(|| {
                let group = Arc::new(LeaseGroup {
                    ttl,
                    lease: RwLock::new(None),
                    grants: Mutex::new(0),
                    keys: Mutex::new(BTreeMap::new()),
                    orphans: Mutex::new(BTreeSet::new()),
                    lost: Mutex::new(Vec::new()),
                    wake: Notify::new(),
                    stop: self.ctx.closed.child_token(),
                });
                tokio::spawn(keep_alive_task(Arc::clone(&group), Arc::clone(&self.ctx)));
                self.ctx.stats.leases.inc();
                group
            });
            // Inserted under the pool lock, so a concurrent detach never sees the group
            // empty and retires it under us.
            let mut known = lock(&group.keys);
            let mut orphans = lock(&group.orphans);
            for (key, value) in entries {
                orphans.remove(&key);
                known.insert(key, value.into());
            }
            drop((known, orphans));
            Arc::clone(group)
        };
        let written = group.write_keys(&self.ctx, &keys).await;
        if written.is_err() {
            // The writes may have landed (a timeout is ambiguous), or a concurrent re-put
            // of the whole group may have written the keys: make sure they go away.
            let slot = group.lease.write().await;
            lock(&group.keys).retain(|k, _| !keys.contains(k));
            if delete_keys(&self.ctx.access, &keys).await.is_err() {
                lock(&group.orphans).extend(keys.iter().cloned());
            }
            drop(slot);
            self.retire_if_empty(&group).await;
        }
        written
    }

    /// Deletes `key` from etcd, then from its group; the last key of a group revokes
    /// the lease. On failure nothing changes, so the caller may try again.
    pub(crate) async fn detach(&self, ttl: Duration, key: &str) -> Result<()> {
        let group = lock(&self.groups).get(&ttl_key(ttl)).cloned();
        let Some(group) = group else {
            // No lease group (it was retired): the key can only be a leftover.
            return delete_key(&self.ctx.access, key).await;
        };
        {
            // Exclusive: no re-put of the group can write the key back meanwhile, and the
            // key stays in the group (keeping it alive) until etcd confirmed the delete.
            let _slot = group.lease.write().await;
            delete_key(&self.ctx.access, key).await?;
            lock(&group.keys).remove(key);
        }
        self.retire_if_empty(&group).await;
        Ok(())
    }

    /// Stops and revokes a group that has no keys left.
    async fn retire_if_empty(&self, group: &Arc<LeaseGroup>) {
        {
            let mut groups = lock(&self.groups);
            if !lock(&group.keys).is_empty() {
                return;
            }
            let key = ttl_key(group.ttl);
            if !groups.get(&key).is_some_and(|g| Arc::ptr_eq(g, group)) {
                return;
            }
            groups.remove(&key);
        }
        self.ctx.stats.leases.sub(1);
        group.stop.cancel();
        // Revoking also deletes any orphan still on the lease.
        if let Some(lease) = group.lease.write().await.take() {
            let _ = self
                .ctx
                .access
                .call("revoke lease", |mut c| async move { c.lease_revoke(lease.id).await })
                .await;
        }
    }

    /// Stops every keep-alive and revokes every lease, all within `budget`.
    pub(crate) async fn close(&self, budget: Duration) {
        let deadline = Instant::now() + budget;
        let groups: Vec<Arc<LeaseGroup>> = lock(&self.groups).drain().map(|(_, g)| g).collect();
        self.ctx.stats.leases.set(0);
        for group in &groups {
            group.stop.cancel();
        }
        let mut revokes = tokio::task::JoinSet::new();
        for group in groups {
            let access = Arc::clone(&self.ctx.access);
            revokes.spawn(async move {
                // The keep-alive task may hold the lock while etcd is unreachable.
                let Ok(mut slot) = tokio::time::timeout_at(deadline, group.lease.write()).await else {
                    return;
                };
                if let Some(lease) = slot.take() {
                    let budget = deadline.saturating_duration_since(Instant::now());
                    let _ =
                        access
                            .call_within("revoke lease", budget, |mut c| async move {
                                c.lease_revoke(lease.id).await
                            })
                            .await;
                }
            });
        }
        let _ =
            tokio::time::timeout_at(deadline, async { while revokes.join_next().await.is_some() {} }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_second_ttls_round_up_never_down() {
        assert_eq!(grant_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(grant_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(grant_seconds(Duration::from_millis(30_000)), 30);
        assert_eq!(grant_seconds(Duration::from_millis(30_001)), 31);
    }

    #[test]
    fn transactions_stay_under_etcds_request_limit() {
        let entry = |n: usize| (format!("k{n}"), Arc::<[u8]>::from(vec![b'v'; n]));
        let small: Vec<_> = (0..250).map(|_| entry(10)).collect();
        assert_eq!(batches(&small).iter().map(|b| b.len()).collect::<Vec<_>>(), vec![100, 100, 50]);
        let big: Vec<_> = (0..3).map(|_| entry(TXN_BYTES - 100)).collect();
        assert_eq!(batches(&big).iter().map(|b| b.len()).collect::<Vec<_>>(), vec![1, 1, 1]);
        let mixed = vec![entry(600_000), entry(600_000), entry(10), entry(2_000_000), entry(10)];
        assert_eq!(batches(&mixed).iter().map(|b| b.len()).collect::<Vec<_>>(), vec![1, 2, 1, 1]);
        assert!(batches(&[]).is_empty());
    }
}
