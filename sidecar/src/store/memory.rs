//! `state.in-memory`: an embedded store with the same semantics as the Redis one, for local use
//! and tests. Data lives in one map behind a mutex; every operation holds it only briefly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use super::{
    DeleteRequest, Item, Operation, SetRequest, Store, StoreError, check_delete, check_set,
};

#[derive(Debug, Clone)]
struct Entry {
    data: bytes::Bytes,
    version: u64,
    expires: Option<(Instant, SystemTime)>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|(at, _)| at > now)
    }
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    map: Mutex<HashMap<String, Entry>>,
}

/// How often expired entries are swept out of memory (reads already hide them).
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

impl MemoryStore {
    /// A new store with a background task that frees expired entries. The task ends when the
    /// store is dropped.
    pub fn new() -> Arc<Self> {
        let store = Arc::new(Self::default());
        let weak: Weak<Self> = Arc::downgrade(&store);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                loop {
                    tokio::time::sleep(SWEEP_INTERVAL).await;
                    let Some(store) = weak.upgrade() else { break };
                    let now = Instant::now();
                    store.lock().retain(|_, e| e.live(now));
                }
            });
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave an entry half-written (each mutation is a
        // single insert/remove), so a poisoned map is still consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(map: &HashMap<String, Entry>, key: &str, now: Instant) -> Option<u64> {
        map.get(key).filter(|e| e.live(now)).map(|e| e.version)
    }

    fn read(map: &HashMap<String, Entry>, key: &str, now: Instant) -> Option<Item> {
        map.get(key).filter(|e| e.live(now)).map(|e| Item {
            data: e.data.clone(),
            etag: Some(e.version.to_string()),
            expires_at: e.expires.map(|(_, at)| at),
        })
    }

    fn write(map: &mut HashMap<String, Entry>, req: &SetRequest, current: Option<u64>) {
        let expires = req.ttl.map(|secs| {
            let d = Duration::from_secs(secs);
            (Instant::now() + d, SystemTime::now() + d)
        });
        map.insert(
            req.key.clone(),
            Entry {
                data: req.value.clone(),
                version: current.unwrap_or(0) + 1,
                expires,
            },
        );
    }

    fn set_locked(&self, req: &SetRequest) -> Result<(), StoreError> {
        let mut map = self.lock();
        let current = Self::current(&map, &req.key, Instant::now());
        check_set(current, req.etag, req.first_write)
            .map_err(|m| StoreError::Conflict(format!("key {}: {m}", req.key)))?;
        Self::write(&mut map, req, current);
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Item>, StoreError> {
        Ok(Self::read(&self.lock(), key, Instant::now()))
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<Result<Option<Item>, StoreError>> {
        let map = self.lock();
        let now = Instant::now();
        keys.iter().map(|k| Ok(Self::read(&map, k, now))).collect()
    }

    async fn set(&self, req: SetRequest) -> Result<(), StoreError> {
        self.set_locked(&req)
    }

    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Vec<Result<(), StoreError>> {
        reqs.iter().map(|r| self.set_locked(r)).collect()
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StoreError> {
        let mut map = self.lock();
        let current = Self::current(&map, &req.key, Instant::now());
        check_delete(current, req.etag)
            .map_err(|m| StoreError::Conflict(format!("key {}: {m}", req.key)))?;
        map.remove(&req.key);
        Ok(())
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StoreError> {
        let mut map = self.lock();
        let now = Instant::now();
        // Check every precondition against the state the earlier operations would leave.
        let mut versions: HashMap<&str, Option<u64>> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            let key = op.key();
            let current = *versions
                .entry(key)
                .or_insert_with(|| Self::current(&map, key, now));
            let checked = match op {
                Operation::Upsert(r) => check_set(current, r.etag, r.first_write),
                Operation::Delete(r) => check_delete(current, r.etag),
            };
            checked.map_err(|m| {
                StoreError::Conflict(format!("operation {} on key {key}: {m}", i + 1))
            })?;
            let next = match op {
                Operation::Upsert(_) => Some(current.unwrap_or(0) + 1),
                Operation::Delete(_) => None,
            };
            versions.insert(key, next);
        }
        for op in &ops {
            match op {
                Operation::Upsert(r) => {
                    let current = Self::current(&map, &r.key, now);
                    Self::write(&mut map, r, current);
                }
                Operation::Delete(r) => {
                    map.remove(&r.key);
                }
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str, etag: Option<u64>) -> SetRequest {
        SetRequest {
            key: key.into(),
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
            etag,
            first_write: false,
            ttl: None,
            strong: false,
        }
    }

    #[tokio::test]
    async fn versions_count_from_one_and_restart_after_delete() {
        let s = MemoryStore::new();
        s.set(set("k", "1", None)).await.unwrap();
        s.set(set("k", "2", Some(1))).await.unwrap();
        assert_eq!(
            s.get("k").await.unwrap().unwrap().etag.as_deref(),
            Some("2")
        );
        let del = DeleteRequest {
            key: "k".into(),
            etag: Some(2),
            strong: false,
        };
        s.delete(del).await.unwrap();
        assert_eq!(s.get("k").await.unwrap(), None);
        s.set(set("k", "3", None)).await.unwrap();
        assert_eq!(
            s.get("k").await.unwrap().unwrap().etag.as_deref(),
            Some("1")
        );
    }

    #[tokio::test]
    async fn failed_transaction_applies_nothing() {
        let s = MemoryStore::new();
        s.set(set("a", "1", None)).await.unwrap();
        let ops = vec![
            Operation::Upsert(set("b", "x", None)),
            Operation::Upsert(set("a", "y", Some(7))),
        ];
        assert!(matches!(
            s.transact(ops).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.get("b").await.unwrap(), None);
        assert_eq!(&s.get("a").await.unwrap().unwrap().data[..], b"1");
    }

    #[tokio::test]
    async fn transaction_sees_its_own_earlier_operations() {
        let s = MemoryStore::new();
        let ops = vec![
            Operation::Upsert(set("a", "1", None)),
            Operation::Upsert(set("a", "2", Some(1))),
        ];
        s.transact(ops).await.unwrap();
        let item = s.get("a").await.unwrap().unwrap();
        assert_eq!(
            (&item.data[..], item.etag.as_deref()),
            (&b"2"[..], Some("2"))
        );
    }
}
