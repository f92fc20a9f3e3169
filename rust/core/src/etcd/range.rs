//! The paged range read: every key under a prefix at one revision, a page at a time, so
//! a large range never exceeds a message limit.

use etcd_client::{GetOptions, KeyValue, SortOrder, SortTarget};

use super::EtcdAccess;
use crate::error::Result;

/// Keys per page of a range read.
const PAGE: i64 = 1000;

/// What a response header says about etcd's history at the time of the reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub cluster_id: u64,
    pub revision: i64,
    pub raft_term: u64,
}

impl Header {
    pub(crate) fn of(header: Option<&etcd_client::ResponseHeader>) -> Self {
        header.map_or_else(Header::default, |h| Header {
            cluster_id: h.cluster_id(),
            revision: h.revision(),
            raft_term: h.raft_term(),
        })
    }
}

/// Reads every key starting with `prefix`, in key order, handing each to `each`; every
/// page after the first is read at the first page's revision, so the whole range is one
/// consistent view. Returns the first page's header. `keys_only` leaves values out.
pub(crate) async fn read_range(
    access: &EtcdAccess,
    what: &str,
    prefix: &[u8],
    keys_only: bool,
    mut each: impl FnMut(&KeyValue),
) -> Result<Header> {
    let range_end = prefix_range_end(prefix);
    let mut from: Vec<u8> = prefix.to_vec();
    let mut pinned: Option<Header> = None;
    loop {
        let mut options = GetOptions::new()
            .with_range(range_end.clone())
            .with_limit(PAGE)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if keys_only {
            options = options.with_keys_only();
        }
        if let Some(header) = pinned {
            options = options.with_revision(header.revision);
        }
        let response = access
            .call(what, |mut c| {
                let (from, options) = (from.clone(), options.clone());
                async move { c.get(from, Some(options)).await }
            })
            .await?;
        let header = *pinned.get_or_insert_with(|| Header::of(response.header()));
        response.kvs().iter().for_each(&mut each);
        match (response.more(), response.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(header),
        }
    }
}

/// The end of the key range holding every key that starts with `prefix`.
fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_end_increments_the_last_byte() {
        assert_eq!(prefix_range_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
    }
}
