//! `state.redis`: one hash per state key (`data` + `version`).
//!
//! Reads, and writes that check nothing (last-write, no etag), are plain commands in one
//! MULTI/EXEC: `HMGET key data version` + `PTTL key` per key read, `HSET` + `HINCRBY` +
//! `PERSIST`/`EXPIRE` per write. That is as atomic as a script and costs Redis about a third of
//! the CPU. Writes with a precondition (an etag, first-write), deletes and transactions are Lua
//! scripts that check and write in one atomic step; they run with EVALSHA and are loaded on
//! first use (and again after a server restart flushes the script cache). A key in another
//! layout (a plain string written by an older client) fails the plain commands with
//! WRONGTYPE, and the request then goes through the scripts, which handle every layout.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use redis::{RedisError, Script, Value};
use statecar_crds::redis::RedisMetadata;

use super::redis_conn::{Conn, Connections, slot};
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
    /// One node's pool, a cluster connection, or the pool of Sentinel's current master.
    conns: Connections,
    /// Upper bound for one call, so a dead server fails requests fast instead of hanging them.
    deadline: Duration,
    replicas: AtomicU64,
    replicas_checked: Mutex<Instant>,
}

impl RedisStore {
    /// Connects (every pooled connection), checks the server answers, and reads its replica
    /// count for strong consistency.
    pub async fn connect(md: &RedisMetadata) -> Result<Self, RedisInitError> {
        let connect = |source| RedisInitError::Connect {
            host: md.host.clone(),
            source,
        };
        let conns = Connections::connect(md).await.map_err(|e| {
            if e.kind() == redis::ErrorKind::InvalidClientConfig {
                RedisInitError::Address {
                    host: md.host.clone(),
                    source: e,
                }
            } else {
                connect(e)
            }
        })?;
        let deadline = md
            .read_timeout
            .max(md.write_timeout)
            .unwrap_or(Duration::from_secs(30))
            .max(Duration::from_millis(WAIT_TIMEOUT_MS + 500));
        let store = Self {
            host: md.host.clone(),
            conns,
            deadline,
            replicas: AtomicU64::new(0),
            replicas_checked: Mutex::new(Instant::now()),
        };
        let mut conn = store.conn();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(connect)?;
        if !store.conns.is_cluster() {
            let replicas = read_replicas(&mut conn).await.map_err(connect)?;
            store.replicas.store(replicas, Ordering::Relaxed);
        }
        Ok(store)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn conn(&self) -> Conn {
        self.conns.conn()
    }

    /// Runs `f` on a connection within the deadline.
    async fn call<T, F>(&self, f: impl FnOnce(Conn) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let conn = self.conn();
        let began = Instant::now();
        match tokio::time::timeout(self.deadline, f(conn.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(&conn, began, e).await),
            Err(_) => Err(self.expired(&conn, began).await),
        }
    }

    async fn replicas(&self) -> Result<u64, StoreError> {
        if self.conns.is_cluster() {
            // WAIT counts the replicas of the connection it runs on, and a cluster connection
            // routes a keyless command to any master: strong writes do not WAIT on a cluster.
            return Ok(0);
        }
        self.call(|mut c| async move { read_replicas(&mut c).await })
            .await
    }

    /// After a strong write: wait until the replicas have the write (when there are any).
    async fn wait_for_replicas(&self) -> Result<(), StoreError> {
        let stale = self
            .replicas_checked
            .lock()
            .map(|t| t.elapsed() > REPLICA_RECHECK)
            .unwrap_or(true);
        if stale {
            let n = self.replicas().await?;
            self.replicas.store(n, Ordering::Relaxed);
            if let Ok(mut t) = self.replicas_checked.lock() {
                *t = Instant::now();
            }
        }
        let replicas = self.replicas.load(Ordering::Relaxed);
        if replicas == 0 {
            return Ok(());
        }
        let acked = self
            .call(|mut c| async move {
                redis::cmd("WAIT")
                    .arg(replicas)
                    .arg(WAIT_TIMEOUT_MS)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await?;
        if acked > 0 {
            // At least one replica has the write, so a failover to it keeps it. Waiting for
            // all of them would make one slow replica fail every strong write.
            return Ok(());
        }
        // No acknowledgement: either the replicas are gone (a failover left this master
        // alone), or none kept up. Daprd ignores WAIT's answer; here a strong write that no
        // replica holds is reported, as it would not survive losing this master.
        let now = self.replicas().await?;
        self.replicas.store(now, Ordering::Relaxed);
        if let Ok(mut t) = self.replicas_checked.lock() {
            *t = Instant::now();
        }
        if now == 0 {
            return Ok(());
        }
        Err(StoreError::Unavailable(format!(
            "redis at {}: the write is done, but none of its {now} replicas acknowledged it \
             within {WAIT_TIMEOUT_MS} ms (consistency strong)",
            self.host
        )))
    }

    /// Reads keys in the hash layout in one MULTI/EXEC, one result per key. `Ok(None)` when
    /// Redis refused the plain commands (a key in another layout: WRONGTYPE); the caller then
    /// reads through get.lua.
    async fn read_hashes(
        &self,
        keys: &[&str],
    ) -> Result<Option<Vec<Result<Option<Item>, StoreError>>>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in keys {
            pipe.cmd("HMGET")
                .arg(*key)
                .arg("data")
                .arg("version")
                .cmd("PTTL")
                .arg(*key);
        }
        let read = self
            .plain(|mut c| async move { pipe.query_async::<Vec<Value>>(&mut c).await })
            .await?;
        let replies = match read {
            Some(replies) => replies,
            None => return Ok(None),
        };
        if replies.len() != 2 * keys.len() {
            return Err(StoreError::Backend(format!(
                "redis at {}: {} replies to a read of {} keys",
                self.host,
                replies.len(),
                keys.len()
            )));
        }
        let mut replies = replies.into_iter();
        let items = keys
            .iter()
            .map(|key| {
                let fields = replies.next().unwrap_or(Value::Nil);
                let pttl = replies.next().unwrap_or(Value::Nil);
                parse_hash(key, fields, pttl)
            })
            .collect();
        Ok(Some(items))
    }

    /// Runs plain commands: `Ok(None)` when Redis answered with an error reply (the caller
    /// falls back to a script), the store's error when Redis could not be reached.
    async fn plain<T, F>(&self, f: impl FnOnce(Conn) -> F) -> Result<Option<T>, StoreError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let conn = self.conn();
        let began = Instant::now();
        match tokio::time::timeout(self.deadline, f(conn.clone())).await {
            Ok(Ok(v)) => Ok(Some(v)),
            Ok(Err(e)) if unreachable(&e) || e.code() == Some("READONLY") => {
                Err(self.failed(&conn, began, e).await)
            }
            Ok(Err(_)) => Ok(None),
            Err(_) => Err(self.expired(&conn, began).await),
        }
    }

    /// A call that failed: lets the connections react (a timed-out connection is replaced,
    /// Sentinel may have a new master), then maps the error.
    async fn failed(&self, conn: &Conn, began: Instant, e: RedisError) -> StoreError {
        self.conns.after_error(conn, began, &e).await;
        map_error(&self.host, e)
    }

    /// A call that hit the deadline.
    async fn expired(&self, conn: &Conn, began: Instant) -> StoreError {
        self.conns.after_timeout(conn, began).await;
        self.timed_out()
    }

    fn timed_out(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "redis at {} did not answer within {:?}",
            self.host, self.deadline
        ))
    }

    async fn get_scripted(&self, key: &str) -> Result<Option<Item>, StoreError> {
        let reply: Value = self
            .call(|mut c| async move { GET.key(key).invoke_async(&mut c).await })
            .await?;
        parse_item(key, reply)
    }

    /// A write without a precondition as plain commands in one MULTI/EXEC. `Ok(false)` when
    /// Redis refused them (the key has another layout); the caller then writes with set.lua.
    async fn set_plain(&self, req: &SetRequest) -> Result<bool, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(&req.key)
            .arg("data")
            .arg(&req.value[..])
            .ignore()
            .cmd("HINCRBY")
            .arg(&req.key)
            .arg("version")
            .arg(1)
            .ignore();
        match req.ttl {
            Some(ttl) => pipe.cmd("EXPIRE").arg(&req.key).arg(ttl).ignore(),
            None => pipe.cmd("PERSIST").arg(&req.key).ignore(),
        };
        Ok(self
            .plain(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await?
            .is_some())
    }

    async fn set_one(&self, req: &SetRequest) -> Result<(), StoreError> {
        let unconditional = req.etag.is_none() && !req.first_write;
        if !(unconditional && self.set_plain(req).await?) {
            self.set_scripted(req).await?;
        }
        if req.strong {
            self.wait_for_replicas().await?;
        }
        Ok(())
    }

    async fn set_scripted(&self, req: &SetRequest) -> Result<(), StoreError> {
        let mut call = SET.prepare_invoke();
        call.key(&req.key)
            .arg(&req.value[..])
            .arg(req.etag.map(|e| e.to_string()).unwrap_or_default())
            .arg(if req.first_write { "1" } else { "0" })
            .arg(req.ttl.unwrap_or(0));
        let version: i64 = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        if version == 0 {
            return Err(conflict(&req.key, req.etag, req.first_write));
        }
        Ok(())
    }
}

async fn read_replicas(conn: &mut Conn) -> Result<u64, RedisError> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(conn)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("connected_slaves:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

/// Keys per MULTI/EXEC in a bulk read, so that one huge request does not hold Redis for long.
const READ_CHUNK: usize = 128;

fn conflict(key: &str, etag: Option<u64>, first_write: bool) -> StoreError {
    StoreError::Conflict(match etag {
        Some(e) => format!("key {key}: etag {e} does not match the current etag"),
        None if first_write => format!("key {key}: first-write, but the key already exists"),
        None => format!("key {key}: precondition failed"),
    })
}

/// The server could not be reached (as opposed to an error reply from it).
fn unreachable(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// Redis Cluster runs a script on one node, so a transaction's keys must share a hash slot.
fn one_slot(ops: &[Operation]) -> Result<(), StoreError> {
    let Some(first) = ops.first() else {
        return Ok(());
    };
    let want = slot(first.key().as_bytes());
    match ops.iter().find(|op| slot(op.key().as_bytes()) != want) {
        None => Ok(()),
        Some(other) => Err(StoreError::Unsupported(format!(
            "on Redis Cluster a transaction's keys must all be in one hash slot, but {} (slot \
             {want}) and {} (slot {}) are not; give the keys a common hash tag, e.g. \
             {{order-7}}.head and {{order-7}}.lines",
            first.key(),
            other.key(),
            slot(other.key().as_bytes())
        ))),
    }
}

fn map_error(host: &str, e: RedisError) -> StoreError {
    if unreachable(&e) {
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

/// Decodes the replies to `HMGET key data version` and `PTTL key`.
fn parse_hash(key: &str, fields: Value, pttl: Value) -> Result<Option<Item>, StoreError> {
    if pttl == Value::Int(-2) {
        return Ok(None);
    }
    let Value::Array(mut fields) = fields else {
        return parse_item(key, Value::Array(Vec::new()));
    };
    fields.push(pttl);
    parse_item(key, Value::Array(fields))
}

#[async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Item>, StoreError> {
        match self.read_hashes(&[key]).await? {
            Some(mut items) => items.pop().unwrap_or(Ok(None)),
            None => self.get_scripted(key).await,
        }
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<Result<Option<Item>, StoreError>> {
        // The chunks go out together: the multiplexed connection pipelines them on the wire.
        // A cluster serves each key from its slot's master, so keys are read one by one there.
        let size = if self.conns.is_cluster() {
            1
        } else {
            READ_CHUNK
        };
        let chunks = keys.chunks(size).map(|chunk| async move {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            match self.read_hashes(&refs).await {
                Ok(Some(items)) => items,
                Ok(None) => {
                    let calls = chunk.iter().map(|k| self.get_scripted(k));
                    futures_util::future::join_all(calls).await
                }
                Err(e) => chunk.iter().map(|_| Err(e.clone())).collect(),
            }
        });
        futures_util::future::join_all(chunks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn set(&self, req: SetRequest) -> Result<(), StoreError> {
        self.set_one(&req).await
    }

    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Vec<Result<(), StoreError>> {
        futures_util::future::join_all(reqs.iter().map(|r| self.set_one(r))).await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StoreError> {
        let mut call = DELETE.prepare_invoke();
        call.key(&req.key)
            .arg(req.etag.map(|e| e.to_string()).unwrap_or_default());
        let deleted: i64 = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
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
        if self.conns.is_cluster() {
            one_slot(&ops)?;
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
        let failed: i64 = self
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
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
        self.call(|mut c| async move { redis::cmd("PING").query_async::<()>(&mut c).await })
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

    #[test]
    fn hash_replies() {
        let fields = |data: Option<&[u8]>, version: Option<&[u8]>| {
            let v = |x: Option<&[u8]>| x.map_or(Value::Nil, |b| Value::BulkString(b.to_vec()));
            Value::Array(vec![v(data), v(version)])
        };
        // PTTL -2: the key does not exist.
        assert_eq!(
            parse_hash("k", fields(None, None), Value::Int(-2)).unwrap(),
            None
        );
        let item = parse_hash("k", fields(Some(b"1"), Some(b"4")), Value::Int(-1))
            .unwrap()
            .unwrap();
        assert_eq!(
            (&item.data[..], item.etag.as_deref()),
            (&b"1"[..], Some("4"))
        );
        assert_eq!(item.expires_at, None);
        let expiring = parse_hash("k", fields(Some(b"1"), Some(b"4")), Value::Int(9000))
            .unwrap()
            .unwrap();
        assert!(expiring.expires_at.is_some());
        // A hash without `data` is not state.
        assert!(matches!(
            parse_hash("k", fields(None, Some(b"4")), Value::Int(-1)),
            Err(StoreError::Backend(_))
        ));
        assert!(matches!(
            parse_hash("k", Value::Nil, Value::Int(-1)),
            Err(StoreError::Backend(_))
        ));
    }
}
