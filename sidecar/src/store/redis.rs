//! `state.redis`: one hash per state key (`data` + `version`), written by Lua scripts that check
//! the etag and write in one atomic step. Scripts run with EVALSHA and are loaded on first use
//! (and again after a server restart flushes the script cache).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, RedisError, Script, Value};
use statecar_crds::redis::RedisMetadata;

use super::{DeleteRequest, Item, Operation, SetRequest, Store, StoreError};

static GET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/get.lua")));
static SET: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/set.lua")));
static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/delete.lua")));
static TRANSACT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/transact.lua")));

/// How long `WAIT` may block for replica acknowledgements after a strong write.
const WAIT_TIMEOUT_MS: u64 = 1000;
/// How stale the cached replica count may get before a strong write refreshes it.
const REPLICA_RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RedisInitError {
    #[error("invalid redis address {host}: {source}")]
    Address { host: String, source: RedisError },
    #[error("error connecting to redis at {host}: {source}")]
    Connect { host: String, source: RedisError },
}

pub struct RedisStore {
    host: String,
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
    /// Upper bound for one call, so a dead server fails requests fast instead of hanging them.
    deadline: Duration,
    replicas: AtomicU64,
    replicas_checked: Mutex<Instant>,
}

impl RedisStore {
    /// Connects (every pooled connection), checks the server answers, and reads its replica
    /// count for strong consistency.
    pub async fn connect(md: &RedisMetadata) -> Result<Self, RedisInitError> {
        let scheme = if md.enable_tls { "rediss" } else { "redis" };
        let fragment = if md.enable_tls && md.insecure_skip_tls_verify {
            "/#insecure"
        } else {
            ""
        };
        let address = |source| RedisInitError::Address {
            host: md.host.clone(),
            source,
        };
        let mut settings = redis::RedisConnectionInfo::default().set_db(md.db);
        if let Some(user) = &md.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &md.password {
            settings = settings.set_password(password);
        }
        let info = format!("{scheme}://{}{fragment}", md.host)
            .into_connection_info()
            .map_err(address)?
            .set_redis_settings(settings);
        let client = redis::Client::open(info).map_err(address)?;

        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(md.max_retries)
            .set_min_delay(md.min_retry_interval)
            .set_max_delay(md.max_retry_interval)
            .set_connection_timeout(Some(md.dial_timeout))
            .set_response_timeout(md.read_timeout);
        let connect = |source| RedisInitError::Connect {
            host: md.host.clone(),
            source,
        };
        let mut conns = Vec::with_capacity(md.pool_size);
        for _ in 0..md.pool_size {
            let conn = ConnectionManager::new_with_config(client.clone(), config.clone())
                .await
                .map_err(connect)?;
            conns.push(conn);
        }
        let deadline = md
            .read_timeout
            .max(md.write_timeout)
            .unwrap_or(Duration::from_secs(30))
            .max(Duration::from_millis(WAIT_TIMEOUT_MS + 500));
        let store = Self {
            host: md.host.clone(),
            conns,
            next: AtomicUsize::new(0),
            deadline,
            replicas: AtomicU64::new(0),
            replicas_checked: Mutex::new(Instant::now()),
        };
        let mut conn = store.conn();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(connect)?;
        let replicas = store.read_replicas().await.map_err(connect)?;
        store.replicas.store(replicas, Ordering::Relaxed);
        Ok(store)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn conn(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    async fn call<T>(
        &self,
        f: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.deadline, f).await {
            Ok(result) => result.map_err(|e| map_error(&self.host, e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis at {} did not answer within {:?}",
                self.host, self.deadline
            ))),
        }
    }

    async fn read_replicas(&self) -> Result<u64, RedisError> {
        let mut conn = self.conn();
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0))
    }

    /// After a strong write: wait until the replicas have the write (when there are any).
    async fn wait_for_replicas(&self) -> Result<(), StoreError> {
        let stale = self
            .replicas_checked
            .lock()
            .map(|t| t.elapsed() > REPLICA_RECHECK)
            .unwrap_or(true);
        if stale {
            let n = self.call(self.read_replicas()).await?;
            self.replicas.store(n, Ordering::Relaxed);
            if let Ok(mut t) = self.replicas_checked.lock() {
                *t = Instant::now();
            }
        }
        let replicas = self.replicas.load(Ordering::Relaxed);
        if replicas == 0 {
            return Ok(());
        }
        let mut conn = self.conn();
        // The number of acknowledgements is not checked: a slow replica is not a failed write.
        self.call(
            redis::cmd("WAIT")
                .arg(replicas)
                .arg(WAIT_TIMEOUT_MS)
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    async fn set_one(&self, req: &SetRequest) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let mut call = SET.prepare_invoke();
        call.key(&req.key)
            .arg(&req.value[..])
            .arg(req.etag.map(|e| e.to_string()).unwrap_or_default())
            .arg(if req.first_write { "1" } else { "0" })
            .arg(req.ttl.unwrap_or(0));
        let version: i64 = self.call(call.invoke_async(&mut conn)).await?;
        if version == 0 {
            return Err(conflict(&req.key, req.etag, req.first_write));
        }
        if req.strong {
            self.wait_for_replicas().await?;
        }
        Ok(())
    }
}

fn conflict(key: &str, etag: Option<u64>, first_write: bool) -> StoreError {
    StoreError::Conflict(match etag {
        Some(e) => format!("key {key}: etag {e} does not match the current etag"),
        None if first_write => format!("key {key}: first-write, but the key already exists"),
        None => format!("key {key}: precondition failed"),
    })
}

fn map_error(host: &str, e: RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StoreError::Unavailable(format!("redis at {host}: {e}"))
    } else {
        StoreError::Backend(format!("redis at {host}: {e}"))
    }
}

fn bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::BulkString(b) => Some(Bytes::from(b)),
        Value::SimpleString(s) => Some(Bytes::from(s.into_bytes())),
        _ => None,
    }
}

/// Decodes the reply of `get.lua`.
fn parse_item(key: &str, reply: Value) -> Result<Option<Item>, StoreError> {
    let corrupt = || {
        StoreError::Backend(format!(
            "key {key}: required hash field 'data' or 'version' was not found"
        ))
    };
    let Value::Array(fields) = reply else {
        return Ok(None);
    };
    let [data, version, pttl]: [Value; 3] = fields.try_into().map_err(|_| corrupt())?;
    let data = bytes(data).ok_or_else(corrupt)?;
    let etag = match version {
        Value::Nil | Value::Boolean(false) => None,
        v => Some(String::from_utf8_lossy(&bytes(v).ok_or_else(corrupt)?).into_owned()),
    };
    let expires_at = match pttl {
        Value::Int(ms) if ms >= 0 => Some(SystemTime::now() + Duration::from_millis(ms as u64)),
        _ => None,
    };
    Ok(Some(Item {
        data,
        etag,
        expires_at,
    }))
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Item>, StoreError> {
        let mut conn = self.conn();
        let reply: Value = self.call(GET.key(key).invoke_async(&mut conn)).await?;
        parse_item(key, reply)
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<Result<Option<Item>, StoreError>> {
        // The multiplexed connection pipelines these calls on the wire.
        let calls = keys.iter().map(|k| self.get(k));
        futures_util::future::join_all(calls).await
    }

    async fn set(&self, req: SetRequest) -> Result<(), StoreError> {
        self.set_one(&req).await
    }

    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Vec<Result<(), StoreError>> {
        futures_util::future::join_all(reqs.iter().map(|r| self.set_one(r))).await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let mut call = DELETE.prepare_invoke();
        call.key(&req.key)
            .arg(req.etag.map(|e| e.to_string()).unwrap_or_default());
        let deleted: i64 = self.call(call.invoke_async(&mut conn)).await?;
        if deleted == 0 {
            return Err(conflict(&req.key, req.etag, false));
        }
        if req.strong {
            self.wait_for_replicas().await?;
        }
        Ok(())
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut call = TRANSACT.prepare_invoke();
        for op in &ops {
            match op {
                Operation::Upsert(r) => call
                    .key(&r.key)
                    .arg("u")
                    .arg(&r.value[..])
                    .arg(r.etag.map(|e| e.to_string()).unwrap_or_default())
                    .arg(format!(
                        "{}:{}",
                        u8::from(r.first_write),
                        r.ttl.unwrap_or(0)
                    )),
                Operation::Delete(r) => call
                    .key(&r.key)
                    .arg("d")
                    .arg("")
                    .arg(r.etag.map(|e| e.to_string()).unwrap_or_default())
                    .arg("0:0"),
            };
        }
        let mut conn = self.conn();
        let failed: i64 = self.call(call.invoke_async(&mut conn)).await?;
        if failed > 0 {
            let op = &ops[(failed as usize - 1).min(ops.len() - 1)];
            let (etag, first_write) = match op {
                Operation::Upsert(r) => (r.etag, r.first_write),
                Operation::Delete(r) => (r.etag, false),
            };
            let StoreError::Conflict(m) = conflict(op.key(), etag, first_write) else {
                unreachable!("conflict() builds a Conflict")
            };
            return Err(StoreError::Conflict(format!("operation {failed}: {m}")));
        }
        if ops.iter().any(Operation::strong) {
            self.wait_for_replicas().await?;
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        self.call(redis::cmd("PING").query_async::<()>(&mut conn))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_replies() {
        assert_eq!(parse_item("k", Value::Nil).unwrap(), None);
        let item = parse_item(
            "k",
            Value::Array(vec![
                Value::BulkString(b"\"v\"".to_vec()),
                Value::BulkString(b"3".to_vec()),
                Value::Int(-1),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(&item.data[..], b"\"v\"");
        assert_eq!(item.etag.as_deref(), Some("3"));
        assert_eq!(item.expires_at, None);
        let legacy = parse_item(
            "k",
            Value::Array(vec![
                Value::BulkString(b"raw".to_vec()),
                Value::Nil,
                Value::Int(5000),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(legacy.etag, None);
        assert!(legacy.expires_at.is_some());
        let corrupt = parse_item(
            "k",
            Value::Array(vec![
                Value::Nil,
                Value::BulkString(b"1".to_vec()),
                Value::Int(-1),
            ]),
        );
        assert!(matches!(corrupt, Err(StoreError::Backend(_))));
    }
}
