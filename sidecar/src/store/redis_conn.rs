//! The Redis store's connections for each topology: a pool of multiplexed connections to one
//! node; one cluster connection that routes every command to the master of its key's slot; or,
//! with Sentinel, a pool to the current master that is rebuilt when the Sentinels name a new one.
//!
//! A pooled connection on which a call timed out is replaced. Behind a silent network cut (no
//! RST) the old TCP connection looks alive: its unanswered commands sit in the send queue and,
//! once the network is back, go out only at TCP's next retransmission, seconds later after a
//! long cut. Calls on a replaced connection wait for its successor, which comes from fresh
//! connection attempts started every few hundred milliseconds: the first one after the network
//! is back connects at once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, TlsMode, Value};
use statecar_crds::redis::{RedisMetadata, Topology};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// How often a Sentinel lookup may run while requests keep failing.
const REDISCOVER_EVERY: Duration = Duration::from_millis(200);
/// While a pooled connection is being replaced, a fresh connection attempt starts this often
/// (each may take `dialTimeout`); the first to connect wins.
const ATTEMPT_EVERY: Duration = Duration::from_millis(250);
/// At most this many attempts at once: with a long `dialTimeout` they start less often.
const MAX_ATTEMPTS: u32 = 16;

/// One connection to use for one request.
#[derive(Clone)]
pub enum Conn {
    Node(NodeConn),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => {
                Box::pin(async move { c.manager().await.send_packed_command(cmd).await })
            }
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => Box::pin(async move {
                c.manager()
                    .await
                    .send_packed_commands(cmd, offset, count)
                    .await
            }),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.slot.conn.load().get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A slot of a pool: its connection is read for every command, so a replacement applies to
/// requests already holding the slot.
#[derive(Clone)]
pub struct NodeConn {
    pool: Arc<Pool>,
    slot: Arc<Slot>,
}

impl NodeConn {
    /// The slot's connection, once it is not being replaced.
    async fn manager(&self) -> ConnectionManager {
        while self.slot.broken.load(Ordering::SeqCst) {
            let replaced = self.slot.replaced.notified();
            let mut replaced = std::pin::pin!(replaced);
            // Registered before the second check, so a replacement in between is not missed.
            replaced.as_mut().enable();
            if self.slot.broken.load(Ordering::SeqCst) {
                replaced.await;
            }
        }
        ConnectionManager::clone(&self.slot.conn.load())
    }
}

struct Slot {
    conn: ArcSwap<ConnectionManager>,
    /// A call timed out on `conn`: calls wait for its replacement.
    broken: AtomicBool,
    /// When `conn` was put in (nanoseconds since the pool's `epoch`); a call that began before
    /// then and timed out says nothing about the current connection.
    since: AtomicU64,
    replaced: Notify,
}

/// Multiplexed connections to one server, used round-robin.
pub struct Pool {
    /// The server's address, for messages and to notice a new master.
    addr: String,
    client: redis::Client,
    config: ConnectionManagerConfig,
    dial_timeout: Duration,
    slots: Vec<Arc<Slot>>,
    next: AtomicUsize,
    /// A task is replacing broken slots.
    repairing: AtomicBool,
    epoch: Instant,
}

impl Pool {
    async fn connect(
        client: redis::Client,
        config: &ConnectionManagerConfig,
        size: usize,
        dial_timeout: Duration,
    ) -> Result<Arc<Pool>, RedisError> {
        let addr = client.get_connection_info().addr().to_string();
        let mut slots = Vec::with_capacity(size);
        for _ in 0..size.max(1) {
            let conn = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
            slots.push(Arc::new(Slot {
                conn: ArcSwap::from_pointee(conn),
                broken: AtomicBool::new(false),
                since: AtomicU64::new(0),
                replaced: Notify::new(),
            }));
        }
        Ok(Arc::new(Pool {
            addr,
            client,
            config: config.clone(),
            dial_timeout,
            slots,
            next: AtomicUsize::new(0),
            repairing: AtomicBool::new(false),
            epoch: Instant::now(),
        }))
    }

    /// The next slot round-robin, passing over broken ones while there is a working one.
    fn conn(self: &Arc<Self>) -> NodeConn {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = (0..n)
            .map(|k| &self.slots[(start + k) % n])
            .find(|s| !s.broken.load(Ordering::Relaxed))
            .unwrap_or(&self.slots[start % n]);
        NodeConn {
            pool: self.clone(),
            slot: slot.clone(),
        }
    }

    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// A call that began at `began` timed out on `slot`: marks the slot broken (once per
    /// connection, however many calls time out) and starts the repair.
    ///
    /// `broken` and `repairing` are SeqCst: this sets one and reads the other, and so does the
    /// end of `repair`; weaker orderings could let both miss the other's write.
    fn timed_out(self: &Arc<Self>, slot: &Slot, began: Instant) {
        if slot.since.load(Ordering::SeqCst) > self.nanos(began)
            || slot.broken.swap(true, Ordering::SeqCst)
        {
            return;
        }
        tracing::warn!(server = %self.addr, "a call timed out; replacing its connection");
        if !self.repairing.swap(true, Ordering::SeqCst) {
            tokio::spawn(repair(Arc::downgrade(self)));
        }
    }

    fn broken(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.broken.load(Ordering::SeqCst))
            .count()
    }

    /// Puts a fresh connection in the first broken slot; false if none is left.
    fn install(&self, conn: ConnectionManager) -> bool {
        let Some(slot) = self.slots.iter().find(|s| s.broken.load(Ordering::SeqCst)) else {
            return false;
        };
        slot.conn.store(Arc::new(conn));
        slot.since
            .store(self.nanos(Instant::now()), Ordering::SeqCst);
        slot.broken.store(false, Ordering::SeqCst);
        slot.replaced.notify_waiters();
        tracing::info!(server = %self.addr, "replaced a timed-out connection");
        true
    }

    fn attempt(
        &self,
    ) -> impl Future<Output = Result<ConnectionManager, RedisError>> + Send + 'static {
        let (client, config, dial) = (self.client.clone(), self.config.clone(), self.dial_timeout);
        async move {
            tokio::time::timeout(dial, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
        }
    }
}

/// Replaces the pool's broken slots with fresh connections. Attempts overlap, so one that
/// started during an outage and waits on TCP's SYN backoff does not hold up the others; they
/// are cancelled once every slot is replaced, or when the pool is gone.
async fn repair(pool: Weak<Pool>) {
    let Some(every) = pool
        .upgrade()
        .map(|p| ATTEMPT_EVERY.max(p.dial_timeout / MAX_ATTEMPTS))
    else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut attempts = JoinSet::new();
    loop {
        let Some(p) = pool.upgrade() else {
            return;
        };
        if p.broken() == 0 {
            p.repairing.store(false, Ordering::SeqCst);
            // A slot marked broken just before the store found `repairing` still set.
            if p.broken() == 0 || p.repairing.swap(true, Ordering::SeqCst) {
                return;
            }
            continue;
        }
        drop(p);
        tokio::select! {
            _ = tick.tick() => {
                if let Some(p) = pool.upgrade() {
                    attempts.spawn(p.attempt());
                }
            }
            Some(done) = attempts.join_next() => {
                let Some(p) = pool.upgrade() else {
                    return;
                };
                match done {
                    Ok(Ok(conn)) => {
                        // The server is reachable: one attempt for each other broken slot.
                        if p.install(conn) {
                            for _ in 0..p.broken() {
                                attempts.spawn(p.attempt());
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(server = %p.addr, error = %e, "reconnect attempt failed")
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

/// The current master's pool, and how to find the next one.
pub struct SentinelPool {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<Arc<Pool>>,
    last_lookup: std::sync::Mutex<Instant>,
    config: ConnectionManagerConfig,
    size: usize,
    dial_timeout: Duration,
}

pub enum Connections {
    Node(Arc<Pool>),
    Cluster(ClusterConnection),
    Sentinel(Box<SentinelPool>),
}

impl Connections {
    pub async fn connect(md: &RedisMetadata) -> Result<Connections, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(md.max_retries)
            .set_min_delay(md.min_retry_interval)
            .set_max_delay(md.max_retry_interval)
            .set_connection_timeout(Some(md.dial_timeout))
            .set_response_timeout(md.read_timeout);
        let tls = md.enable_tls.then_some(if md.insecure_skip_tls_verify {
            TlsMode::Insecure
        } else {
            TlsMode::Secure
        });
        match &md.topology {
            Topology::Node => {
                let client = redis::Client::open(node_info(md, &md.host)?)?;
                Ok(Connections::Node(
                    Pool::connect(client, &config, md.pool_size, md.dial_timeout).await?,
                ))
            }
            Topology::Cluster { hosts } => {
                let nodes = hosts
                    .iter()
                    .map(|h| node_info(md, h))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut builder = ClusterClientBuilder::new(nodes)
                    .tcp_settings(tcp_settings())
                    .connection_timeout(md.dial_timeout)
                    .retries(md.max_retries as u32)
                    .min_retry_wait(md.min_retry_interval.as_millis() as u64)
                    .max_retry_wait(md.max_retry_interval.as_millis() as u64);
                if let Some(t) = md.read_timeout {
                    builder = builder.response_timeout(t);
                }
                if let Some(mode) = tls {
                    builder = builder.tls(mode);
                }
                let conn = builder.build()?.get_async_connection().await?;
                Ok(Connections::Cluster(conn))
            }
            Topology::Sentinel {
                hosts,
                master_name,
                username,
                password,
            } => {
                let sentinels = hosts
                    .iter()
                    .map(|h| {
                        let mut settings = redis::RedisConnectionInfo::default();
                        if let Some(u) = username {
                            settings = settings.set_username(u);
                        }
                        if let Some(p) = password {
                            settings = settings.set_password(p);
                        }
                        Ok(format!("redis://{h}")
                            .into_connection_info()?
                            .set_redis_settings(settings))
                    })
                    .collect::<Result<Vec<_>, RedisError>>()?;
                let mut node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(redis_settings(md))
                    .set_tcp_settings(tcp_settings());
                if let Some(mode) = tls {
                    node = node.set_tls_mode(mode);
                }
                let mut sentinel = SentinelClient::build(
                    sentinels,
                    master_name.as_str(),
                    Some(node),
                    SentinelServerType::Master,
                )?;
                let client = sentinel.async_get_client().await?;
                let pool = Pool::connect(client, &config, md.pool_size, md.dial_timeout).await?;
                Ok(Connections::Sentinel(Box::new(SentinelPool {
                    sentinel: tokio::sync::Mutex::new(sentinel),
                    current: RwLock::new(pool),
                    last_lookup: std::sync::Mutex::new(Instant::now()),
                    config,
                    size: md.pool_size,
                    dial_timeout: md.dial_timeout,
                })))
            }
        }
    }

    pub fn conn(&self) -> Conn {
        match self {
            Connections::Node(p) => Conn::Node(p.conn()),
            Connections::Cluster(c) => Conn::Cluster(c.clone()),
            Connections::Sentinel(s) => match s.current.read() {
                Ok(p) => Conn::Node(p.conn()),
                Err(poisoned) => Conn::Node(poisoned.into_inner().conn()),
            },
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Connections::Cluster(_))
    }

    /// After a failed call (begun at `began` on `conn`): a timeout replaces the connection;
    /// with Sentinel, an unreachable or read-only server may mean the master moved, so the
    /// Sentinels are asked (at most every 200 ms) and, if they name a new master, the pool is
    /// rebuilt there. Requests in flight finish on the old pool.
    pub async fn after_error(&self, conn: &Conn, began: Instant, e: &RedisError) {
        if e.is_timeout() {
            timed_out(conn, began);
        }
        let Connections::Sentinel(s) = self else {
            return;
        };
        let moved = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.code() == Some("READONLY");
        if moved {
            s.rediscover().await;
        }
    }

    /// After a call that hit the store's deadline (the future was dropped, so there is no
    /// error to inspect).
    pub async fn after_timeout(&self, conn: &Conn, began: Instant) {
        timed_out(conn, began);
        if let Connections::Sentinel(s) = self {
            s.rediscover().await;
        }
    }
}

/// A cluster connection handles its own reconnects; a pooled one is replaced.
fn timed_out(conn: &Conn, began: Instant) {
    if let Conn::Node(c) = conn {
        c.pool.timed_out(&c.slot, began);
    }
}

impl SentinelPool {
    async fn rediscover(&self) {
        {
            let Ok(mut last) = self.last_lookup.lock() else {
                return;
            };
            if last.elapsed() < REDISCOVER_EVERY {
                return;
            }
            *last = Instant::now();
        }
        // One lookup at a time; others carry on with the current pool.
        let Ok(mut sentinel) = self.sentinel.try_lock() else {
            return;
        };
        let client = match sentinel.async_get_client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "asking the Sentinels for the current master failed");
                return;
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        let current = self
            .current
            .read()
            .map(|p| p.addr.clone())
            .unwrap_or_default();
        if addr == current {
            return;
        }
        match Pool::connect(client, &self.config, self.size, self.dial_timeout).await {
            Ok(pool) => {
                tracing::info!(from = %current, to = %addr, "following the Sentinels to a new master");
                if let Ok(mut p) = self.current.write() {
                    *p = pool;
                }
            }
            Err(e) => {
                tracing::warn!(master = %addr, error = %e, "connecting to the new master failed")
            }
        }
    }
}

fn redis_settings(md: &RedisMetadata) -> redis::RedisConnectionInfo {
    let mut settings = redis::RedisConnectionInfo::default().set_db(md.db);
    if let Some(user) = &md.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &md.password {
        settings = settings.set_password(password);
    }
    settings
}

fn node_info(md: &RedisMetadata, host: &str) -> Result<redis::ConnectionInfo, RedisError> {
    let scheme = if md.enable_tls { "rediss" } else { "redis" };
    let fragment = if md.enable_tls && md.insecure_skip_tls_verify {
        "/#insecure"
    } else {
        ""
    };
    let mut settings = redis_settings(md);
    if !matches!(md.topology, Topology::Node) {
        // A cluster has only database 0.
        settings = settings.set_db(0);
    }
    Ok(format!("{scheme}://{host}{fragment}")
        .into_connection_info()?
        .set_redis_settings(settings)
        .set_tcp_settings(tcp_settings()))
}

/// TCP_NODELAY on every connection to Redis, as Redis clients and daprd's Go client set it.
/// redis-rs leaves Nagle's algorithm on, which holds back the tail of a write while earlier data
/// is unacknowledged: commands queued behind a large value, or behind a batch still in flight
/// to a distant Redis, would wait up to a round trip for it.
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// The cluster slot of a key (CRC16/XMODEM of the key, or of its first non-empty `{...}` hash
/// tag, modulo 16384), to refuse multi-key operations across slots with a clear message.
pub fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from Redis's CLUSTER KEYSLOT.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"app||{order-7}.head"), slot(b"app||{order-7}.lines"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }
}
