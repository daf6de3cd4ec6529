//! The Redis store's connections for each topology: a pool of multiplexed connections to one
//! node; one cluster connection that routes every command to the master of its key's slot; or,
//! with Sentinel, a pool to the current master that is rebuilt when the Sentinels name a new one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, TlsMode, Value};
use statecar_crds::redis::{RedisMetadata, Topology};

/// How often a Sentinel lookup may run while requests keep failing.
const REDISCOVER_EVERY: Duration = Duration::from_millis(200);

/// One connection to use for one request.
#[derive(Clone)]
pub enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
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
            Conn::Node(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Multiplexed connections to one server, used round-robin.
pub struct Pool {
    /// The server's address, for messages and to notice a new master.
    addr: String,
    conns: Vec<ConnectionManager>,
    next: AtomicUsize,
}

impl Pool {
    async fn connect(
        client: redis::Client,
        config: &ConnectionManagerConfig,
        size: usize,
    ) -> Result<Pool, RedisError> {
        let addr = client.get_connection_info().addr().to_string();
        let mut conns = Vec::with_capacity(size);
        for _ in 0..size.max(1) {
            conns.push(ConnectionManager::new_with_config(client.clone(), config.clone()).await?);
        }
        Ok(Pool {
            addr,
            conns,
            next: AtomicUsize::new(0),
        })
    }

    fn conn(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }
}

/// The current master's pool, and how to find the next one.
pub struct SentinelPool {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<Arc<Pool>>,
    last_lookup: std::sync::Mutex<Instant>,
    config: ConnectionManagerConfig,
    size: usize,
}

pub enum Connections {
    Node(Pool),
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
                    Pool::connect(client, &config, md.pool_size).await?,
                ))
            }
            Topology::Cluster { hosts } => {
                let nodes = hosts
                    .iter()
                    .map(|h| node_info(md, h))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut builder = ClusterClientBuilder::new(nodes)
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
                    .set_redis_connection_info(redis_settings(md));
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
                let pool = Pool::connect(client, &config, md.pool_size).await?;
                Ok(Connections::Sentinel(Box::new(SentinelPool {
                    sentinel: tokio::sync::Mutex::new(sentinel),
                    current: RwLock::new(Arc::new(pool)),
                    last_lookup: std::sync::Mutex::new(Instant::now()),
                    config,
                    size: md.pool_size,
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

    /// After a failed call: with Sentinel, an unreachable or read-only server may mean the
    /// master moved, so the Sentinels are asked (at most every 200 ms) and, if they name a new
    /// master, the pool is rebuilt there. Requests in flight finish on the old pool.
    pub async fn after_error(&self, e: &RedisError) {
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

    /// After a call that timed out (the future was dropped, so there is no error to inspect).
    pub async fn after_timeout(&self) {
        if let Connections::Sentinel(s) = self {
            s.rediscover().await;
        }
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
        match Pool::connect(client, &self.config, self.size).await {
            Ok(pool) => {
                tracing::info!(from = %current, to = %addr, "following the Sentinels to a new master");
                if let Ok(mut p) = self.current.write() {
                    *p = Arc::new(pool);
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
        .set_redis_settings(settings))
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
