//! How long each instance of a service has left: the lease behind every key and what
//! etcd says of it. Operators' views (the console) want this; discovery never does, so
//! it is read on demand and never cached.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::error::Result;
use crate::etcd::{read_range, EtcdAccess};
use crate::instance::instance_id;

/// Lease lookups in flight at once: a mesh service may have an instance (and a lease) per process.
const CONCURRENT_LOOKUPS: usize = 16;

/// The lease of one instance's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTime {
    /// The instance id (the last segment of its key).
    pub id: String,
    /// The key's lease; 0 when the key was written without one (it never expires).
    pub lease: i64,
    /// The TTL the lease was granted with, in seconds; `None` without a live lease.
    pub granted_seconds: Option<i64>,
    /// Seconds until the lease expires unless kept alive; `None` without a live lease.
    pub remaining_seconds: Option<i64>,
}

/// The lease of every key under `prefix` (`<namespace>/<service>/`), sorted by id; each
/// distinct lease is asked about once.
pub(crate) async fn read_lease_times(access: &Arc<EtcdAccess>, prefix: &str) -> Result<Vec<LeaseTime>> {
    let mut leases_by_id: BTreeMap<String, i64> = BTreeMap::new();
    read_range(access, "read instance leases", prefix.as_bytes(), true, |kv| {
        if let Some(id) = instance_id(prefix, kv.key()) {
            leases_by_id.insert(id.to_string(), kv.lease());
        }
    })
    .await?;
    let mut distinct: Vec<i64> = leases_by_id.values().copied().filter(|&lease| lease != 0).collect();
    distinct.sort_unstable();
    distinct.dedup();

    let slots = Arc::new(Semaphore::new(CONCURRENT_LOOKUPS));
    let mut lookups = JoinSet::new();
    for lease in distinct {
        let (access, slots) = (Arc::clone(access), Arc::clone(&slots));
        lookups.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let answer = access
                .call(
                    "read lease time-to-live",
                    |mut c| async move { c.lease_time_to_live(lease, None).await },
                )
                .await?;
            Ok::<_, crate::Error>((lease, (answer.granted_ttl(), answer.ttl())))
        });
    }
    let mut times: HashMap<i64, (i64, i64)> = HashMap::new();
    while let Some(done) = lookups.join_next().await {
        match done {
            Ok(answer) => {
                let (lease, time) = answer?;
                times.insert(lease, time);
            }
            Err(e) => return Err(crate::Error::Etcd(format!("reading a lease failed: {e}").into())),
        }
    }
    Ok(leases_by_id
        .into_iter()
        .map(|(id, lease)| lease_time(id, lease, times.get(&lease).copied()))
        .collect())
}

/// What a key's lease comes to, given etcd's (granted, remaining) answer for it: etcd
/// answers a remaining time of -1 for a lease that expired or was revoked.
fn lease_time(id: String, lease: i64, answer: Option<(i64, i64)>) -> LeaseTime {
    match answer {
        Some((granted, remaining)) if remaining >= 0 => {
            LeaseTime { id, lease, granted_seconds: Some(granted), remaining_seconds: Some(remaining) }
        }
        _ => LeaseTime { id, lease, granted_seconds: None, remaining_seconds: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_lease_gives_its_times() {
        let time = lease_time("a".into(), 7, Some((30, 21)));
        assert_eq!(time.granted_seconds, Some(30));
        assert_eq!(time.remaining_seconds, Some(21));
    }

    #[test]
    fn an_expired_or_absent_lease_gives_no_times() {
        assert_eq!(lease_time("a".into(), 7, Some((30, -1))).remaining_seconds, None);
        let no_lease = lease_time("b".into(), 0, None);
        assert_eq!((no_lease.lease, no_lease.granted_seconds, no_lease.remaining_seconds), (0, None, None));
    }
}
