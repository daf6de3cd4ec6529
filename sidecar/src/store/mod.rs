//! State store backends behind one async trait. Keys arrive already prefixed; stores know
//! nothing about apps or HTTP.
//!
//! Both backends share one set of semantics (see [`check_set`] and [`check_delete`]), so a
//! single conformance suite runs against each of them.

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub mod memory;
pub mod redis;
pub mod redis_conn;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// A stored value.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The stored bytes (JSON text for values written over HTTP).
    pub data: Bytes,
    /// The current version as a decimal string. `None` only for legacy plain-string keys.
    pub etag: Option<String>,
    pub expires_at: Option<SystemTime>,
}

/// One write. `etag` is the parsed version the caller expects, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct SetRequest {
    pub key: String,
    pub value: Bytes,
    pub etag: Option<u64>,
    /// Insert-only when no etag is given.
    pub first_write: bool,
    /// Seconds until expiry; `None` makes the value persistent.
    pub ttl: Option<u64>,
    pub strong: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeleteRequest {
    pub key: String,
    pub etag: Option<u64>,
    pub strong: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    Upsert(SetRequest),
    Delete(DeleteRequest),
}

impl Operation {
    pub fn key(&self) -> &str {
        match self {
            Operation::Upsert(r) => &r.key,
            Operation::Delete(r) => &r.key,
        }
    }
    pub fn strong(&self) -> bool {
        match self {
            Operation::Upsert(r) => r.strong,
            Operation::Delete(r) => r.strong,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The precondition of a write failed: wrong etag, an etag for a missing key, or a
    /// first-write on an existing key.
    #[error("possible etag mismatch: {0}")]
    Conflict(String),
    /// The backend cannot be reached right now.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// Any other backend failure.
    #[error("{0}")]
    Backend(String),
    /// A request this store cannot run as asked, whatever its state: e.g. a transaction over
    /// keys in different Redis Cluster slots.
    #[error("{0}")]
    Unsupported(String),
}

/// Capabilities reported by `/v1.0/metadata`, named as Dapr names them.
pub const FEATURES: &[&str] = &["ETAG", "TRANSACTIONAL", "TTL", "ACTOR"];

#[async_trait]
pub trait Store: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Item>, StoreError>;

    /// One result per key, in order. Never fails as a whole.
    async fn bulk_get(&self, keys: &[String]) -> Vec<Result<Option<Item>, StoreError>>;

    async fn set(&self, req: SetRequest) -> Result<(), StoreError>;

    /// Independent writes (not atomic); one result per request, in order.
    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Vec<Result<(), StoreError>>;

    async fn delete(&self, req: DeleteRequest) -> Result<(), StoreError>;

    /// Applies every operation in order, or none: all preconditions are checked first.
    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StoreError>;

    fn features(&self) -> &'static [&'static str] {
        FEATURES
    }

    /// Whether the backend answers right now.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The precondition of a write, given the current version (`None` = key absent).
pub fn check_set(current: Option<u64>, etag: Option<u64>, first_write: bool) -> Result<(), String> {
    match (etag, current) {
        (Some(want), Some(have)) if want == have => Ok(()),
        (Some(want), Some(have)) => Err(format!("expected etag {want}, current etag is {have}")),
        (Some(want), None) => Err(format!("expected etag {want}, but the key does not exist")),
        (None, Some(_)) if first_write => {
            Err("first-write without an etag, but the key already exists".into())
        }
        (None, _) => Ok(()),
    }
}

/// The precondition of a delete, given the current version (`None` = key absent).
pub fn check_delete(current: Option<u64>, etag: Option<u64>) -> Result<(), String> {
    match (etag, current) {
        (None, _) => Ok(()),
        (Some(want), Some(have)) if want == have => Ok(()),
        (Some(want), Some(have)) => Err(format!("expected etag {want}, current etag is {have}")),
        (Some(want), None) => Err(format!("expected etag {want}, but the key does not exist")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_preconditions() {
        assert!(check_set(None, None, false).is_ok());
        assert!(check_set(Some(3), None, false).is_ok());
        assert!(check_set(None, None, true).is_ok());
        assert!(check_set(Some(3), None, true).is_err());
        assert!(check_set(Some(3), Some(3), true).is_ok());
        assert!(check_set(Some(3), Some(2), false).is_err());
        assert!(check_set(None, Some(1), false).is_err());
    }

    #[test]
    fn delete_preconditions() {
        assert!(check_delete(None, None).is_ok());
        assert!(check_delete(Some(1), None).is_ok());
        assert!(check_delete(Some(1), Some(1)).is_ok());
        assert!(check_delete(Some(2), Some(1)).is_err());
        assert!(check_delete(None, Some(1)).is_err());
    }
}
