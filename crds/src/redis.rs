//! Typed metadata of a `state.redis` component: one parser shared by the sidecar's loader, the
//! operator's reconciler and the validating webhook, so all three report the same messages.

use std::time::Duration;

use crate::metadata::{MetadataError, MetadataMap};

pub const DEFAULT_PORT: u16 = 6379;

/// Every metadata name a Dapr `state.redis` manifest may carry. Names statecar does not act on
/// (pool tuning of Dapr's Go client, pub/sub settings shared in one manifest, RedisJSON query
/// indexes) are accepted and ignored, so existing manifests load unchanged.
pub const KNOWN_NAMES: &[&str] = &[
    "redisHost",
    "redisPort",
    "redisPassword",
    "redisUsername",
    "redisDB",
    "redisType",
    "enableTLS",
    "insecureSkipTLSVerify",
    "clientCert",
    "clientKey",
    "failover",
    "sentinelMasterName",
    "sentinelUsername",
    "sentinelPassword",
    "redisMaxRetries",
    "maxRetries",
    "redisMinRetryInterval",
    "redisMaxRetryInterval",
    "maxRetryBackoff",
    "dialTimeout",
    "readTimeout",
    "writeTimeout",
    "poolSize",
    "minIdleConns",
    "maxConnAge",
    "poolTimeout",
    "idleTimeout",
    "idleCheckFrequency",
    "queryIndexes",
    "useEntraID",
    "useAzureAD",
    "useOIDC",
    "oidcTokenEndpoint",
    "oidcClientID",
    "oidcClientSecret",
    "oidcScopes",
    "oidcAudience",
    "consumerID",
    "processingTimeout",
    "redeliverInterval",
    "queueDepth",
    "concurrency",
    "maxLenApprox",
    "streamTTL",
    "enableCache",
];

#[derive(Clone, PartialEq, Eq)]
pub struct RedisMetadata {
    /// `redisHost` as normalised `host:port` entries, comma-separated (for messages).
    pub host: String,
    /// What `host` points at: one node, the seed nodes of a cluster, or Sentinels.
    pub topology: Topology,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    pub enable_tls: bool,
    pub insecure_skip_tls_verify: bool,
    /// How often a failed command or reconnect is retried; 0 disables retries.
    pub max_retries: usize,
    pub min_retry_interval: Duration,
    pub max_retry_interval: Duration,
    pub dial_timeout: Duration,
    /// Deadline for a reply; `None` waits forever.
    pub read_timeout: Option<Duration>,
    pub write_timeout: Option<Duration>,
    /// Default TTL for writes that carry none.
    pub ttl_in_seconds: Option<i64>,
    /// Number of multiplexed connections requests are spread over.
    pub pool_size: usize,
}

/// The shape of the Redis deployment a component talks to.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (`redisType: node`, the default).
    Node,
    /// Redis Cluster (`redisType: cluster`): `hosts` are seed nodes; the slot map is read
    /// from them.
    Cluster { hosts: Vec<String> },
    /// Redis Sentinel (`failover: true`): `hosts` are Sentinels, asked for the current
    /// master of `master_name`.
    Sentinel {
        hosts: Vec<String>,
        master_name: String,
        username: Option<String>,
        password: Option<String>,
    },
}

// Sentinel credentials are left out, like the password below.
impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topology::Node => f.write_str("Node"),
            Topology::Cluster { hosts } => f.debug_struct("Cluster").field("hosts", hosts).finish(),
            Topology::Sentinel {
                hosts, master_name, ..
            } => f
                .debug_struct("Sentinel")
                .field("hosts", hosts)
                .field("master_name", master_name)
                .finish_non_exhaustive(),
        }
    }
}

// The password is deliberately left out so that the settings can be logged.
impl std::fmt::Debug for RedisMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMetadata")
            .field("host", &self.host)
            .field("topology", &self.topology)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("enable_tls", &self.enable_tls)
            .field("max_retries", &self.max_retries)
            .field("dial_timeout", &self.dial_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("ttl_in_seconds", &self.ttl_in_seconds)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl RedisMetadata {
    pub fn parse(md: &MetadataMap) -> Result<Self, MetadataError> {
        let hosts = parse_hosts(md)?;
        let host = hosts.join(",");
        let cluster = match md.get_nonempty("redisType").map(str::to_ascii_lowercase) {
            None => false,
            Some(t) if t == "node" => false,
            Some(t) if t == "cluster" => true,
            Some(t) => {
                return Err(MetadataError::new(
                    "redisType",
                    format!("unknown value {t:?}: expected node or cluster"),
                ));
            }
        };
        let failover = md.get_bool("failover")? == Some(true);
        let topology = match (cluster, failover) {
            (true, true) => {
                return Err(MetadataError::new(
                    "failover",
                    "Sentinel and redisType cluster cannot be combined: a cluster fails over by itself",
                ));
            }
            (true, false) => Topology::Cluster {
                hosts: hosts.clone(),
            },
            (false, true) => {
                let Some(master_name) = md.get_nonempty("sentinelMasterName") else {
                    return Err(MetadataError::new(
                        "sentinelMasterName",
                        "required with failover: true (the name the Sentinels monitor)",
                    ));
                };
                Topology::Sentinel {
                    hosts: hosts.clone(),
                    master_name: master_name.trim().to_string(),
                    username: md.get_nonempty("sentinelUsername").map(str::to_string),
                    password: md.get_nonempty("sentinelPassword").map(str::to_string),
                }
            }
            (false, false) if hosts.len() > 1 => {
                return Err(MetadataError::new(
                    "redisHost",
                    "several hosts need redisType: cluster or failover: true (Sentinel)",
                ));
            }
            (false, false) => Topology::Node,
        };
        for field in ["clientCert", "clientKey"] {
            if md.get_nonempty(field).is_some() {
                return Err(MetadataError::new(
                    field,
                    "TLS client certificates are not supported yet",
                ));
            }
        }

        let db = md.get_i64("redisDB")?.unwrap_or(0);
        if db < 0 {
            return Err(MetadataError::new(
                "redisDB",
                format!("invalid value \"{db}\": must be 0 or more"),
            ));
        }

        // redisMaxRetries wins over the legacy maxRetries; -1 disables retries.
        let retries = match md.get_i64("redisMaxRetries")? {
            Some(n) => Some(n),
            None => md.get_i64("maxRetries")?,
        };
        let max_retries = match retries {
            None => 3,
            Some(n) if n < 0 => 0,
            Some(n) => n as usize,
        };

        let min_retry_interval = md
            .get_duration("redisMinRetryInterval")?
            .map(Option::unwrap_or_default)
            .unwrap_or(Duration::from_millis(8));
        // Dapr documents maxRetryBackoff as the longest pause between retries; a plain integer
        // there is nanoseconds (the form Dapr's examples use).
        let legacy_backoff = match md.get_nonempty("maxRetryBackoff") {
            Some(v) if v.trim().parse::<i64>().is_ok() => {
                let ns = v.trim().parse::<i64>().unwrap_or(0);
                Some(Duration::from_nanos(ns.max(0) as u64))
            }
            Some(_) => md
                .get_duration("maxRetryBackoff")?
                .map(Option::unwrap_or_default),
            None => None,
        };
        let max_retry_interval = md
            .get_duration("redisMaxRetryInterval")?
            .map(Option::unwrap_or_default)
            .or(legacy_backoff)
            .unwrap_or(Duration::from_millis(512))
            .max(min_retry_interval);

        let dial_timeout = md
            .get_duration("dialTimeout")?
            .map(|d| d.unwrap_or(Duration::from_secs(5)))
            .unwrap_or(Duration::from_secs(5));
        let read_timeout = md
            .get_duration("readTimeout")?
            .unwrap_or(Some(Duration::from_secs(3)));
        let write_timeout = md.get_duration("writeTimeout")?.unwrap_or(read_timeout);

        let ttl_in_seconds = md.get_i64("ttlInSeconds")?;

        let pool_size = match md.get_i64("poolSize")? {
            None => 1,
            Some(n) if n >= 1 => n.min(64) as usize,
            Some(n) => {
                return Err(MetadataError::new(
                    "poolSize",
                    format!("invalid value \"{n}\": must be 1 or more"),
                ));
            }
        };

        Ok(Self {
            host,
            topology,
            username: md.get_nonempty("redisUsername").map(str::to_string),
            password: md.get_nonempty("redisPassword").map(str::to_string),
            db,
            enable_tls: md.get_bool("enableTLS")?.unwrap_or(false),
            insecure_skip_tls_verify: md.get_bool("insecureSkipTLSVerify")?.unwrap_or(false),
            max_retries,
            min_retry_interval,
            max_retry_interval,
            dial_timeout,
            read_timeout,
            write_timeout,
            ttl_in_seconds,
            pool_size,
        })
    }
}

/// `redisHost` as normalised `host:port` entries (a comma-separated list for a cluster's
/// seed nodes or for Sentinels; `redisPort` applies to entries without a port).
fn parse_hosts(md: &MetadataMap) -> Result<Vec<String>, MetadataError> {
    let Some(raw) = md.get_nonempty("redisHost") else {
        return Err(MetadataError::new(
            "redisHost",
            "required: the host:port of the Redis server",
        ));
    };
    let port_field = match md.get_nonempty("redisPort") {
        None => None,
        Some(p) => Some(p.trim().parse::<u16>().map_err(|_| {
            MetadataError::new("redisPort", format!("invalid value {p:?}: expected a port"))
        })?),
    };
    let mut hosts = Vec::new();
    for entry in raw.split(',').map(str::trim) {
        let (name, port) = split_host_port(entry)
            .ok_or_else(|| MetadataError::new("redisHost", format!("invalid host {entry:?}")))?;
        let port = match (port, port_field) {
            (Some(a), Some(b)) if a != b => {
                return Err(MetadataError::new(
                    "redisPort",
                    format!("conflicts with the port {a} given in redisHost"),
                ));
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => DEFAULT_PORT,
        };
        hosts.push(if name.contains(':') {
            format!("[{name}]:{port}")
        } else {
            format!("{name}:{port}")
        });
    }
    Ok(hosts)
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => Some((s, None)), // bare IPv6
        Some((h, p)) if !h.is_empty() => Some((h, Some(p.parse().ok()?))),
        Some(_) => None,
        None if !s.is_empty() => Some((s, None)),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> MetadataMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let m = RedisMetadata::parse(&md(&[("redisHost", "localhost:6379")])).unwrap();
        assert_eq!(m.host, "localhost:6379");
        assert_eq!(m.db, 0);
        assert_eq!(m.max_retries, 3);
        assert_eq!(m.read_timeout, Some(Duration::from_secs(3)));
        assert_eq!(m.write_timeout, m.read_timeout);
        assert!(!m.enable_tls);
        assert_eq!(m.pool_size, 1);
    }

    #[test]
    fn host_and_port() {
        let h = |pairs| RedisMetadata::parse(&md(pairs)).map(|m| m.host);
        assert_eq!(h(&[("redisHost", "redis")]).unwrap(), "redis:6379");
        assert_eq!(
            h(&[("redisHost", "redis"), ("redisPort", "7000")]).unwrap(),
            "redis:7000"
        );
        assert_eq!(h(&[("redisHost", "[::1]:7000")]).unwrap(), "[::1]:7000");
        assert_eq!(
            h(&[("redisHost", "r:1"), ("redisPort", "2")])
                .unwrap_err()
                .field,
            "redisPort"
        );
        assert_eq!(
            h(&[("redisHost", "r:notaport")]).unwrap_err().field,
            "redisHost"
        );
        assert_eq!(h(&[]).unwrap_err().field, "redisHost");
        assert_eq!(
            h(&[("redisHost", "a:1,b:2")]).unwrap_err().field,
            "redisHost"
        );
    }

    #[test]
    fn all_documented_fields() {
        let m = RedisMetadata::parse(&md(&[
            ("redisHost", "r:1"),
            ("redisPassword", "pw"),
            ("redisUsername", "u"),
            ("redisDB", "2"),
            ("enableTLS", "true"),
            ("maxRetries", "-1"),
            ("maxRetryBackoff", "2000000000"),
            ("dialTimeout", "2s"),
            ("readTimeout", "-1"),
            ("writeTimeout", "750ms"),
            ("ttlInSeconds", "60"),
            ("poolSize", "4"),
        ]))
        .unwrap();
        assert_eq!(m.password.as_deref(), Some("pw"));
        assert_eq!(m.username.as_deref(), Some("u"));
        assert_eq!(m.db, 2);
        assert!(m.enable_tls);
        assert_eq!(m.max_retries, 0);
        assert_eq!(m.max_retry_interval, Duration::from_secs(2));
        assert_eq!(m.dial_timeout, Duration::from_secs(2));
        assert_eq!(m.read_timeout, None);
        assert_eq!(m.write_timeout, Some(Duration::from_millis(750)));
        assert_eq!(m.ttl_in_seconds, Some(60));
        assert_eq!(m.pool_size, 4);
        assert!(!format!("{m:?}").contains("pw\""));
    }

    #[test]
    fn invalid_fields_are_named() {
        let field = |pairs| RedisMetadata::parse(&md(pairs)).unwrap_err().field;
        assert_eq!(field(&[("redisHost", "r"), ("redisDB", "abc")]), "redisDB");
        assert_eq!(
            field(&[("redisHost", "r"), ("enableTLS", "yes")]),
            "enableTLS"
        );
        assert_eq!(
            field(&[("redisHost", "r"), ("dialTimeout", "soon")]),
            "dialTimeout"
        );
        assert_eq!(
            field(&[("redisHost", "r"), ("ttlInSeconds", "1.5")]),
            "ttlInSeconds"
        );
        assert_eq!(field(&[("redisHost", "r"), ("poolSize", "0")]), "poolSize");
        assert_eq!(
            field(&[("redisHost", "r"), ("redisType", "ring")]),
            "redisType"
        );
        assert_eq!(
            field(&[("redisHost", "r"), ("failover", "true")]),
            "sentinelMasterName"
        );
        assert_eq!(
            field(&[
                ("redisHost", "r"),
                ("failover", "true"),
                ("redisType", "cluster")
            ]),
            "failover"
        );
        assert_eq!(field(&[("redisHost", "a:1,b:2")]), "redisHost");
        assert_eq!(field(&[("redisHost", "a:1,,b:2")]), "redisHost");
    }

    #[test]
    fn cluster_and_sentinel_topologies() {
        let m = RedisMetadata::parse(&md(&[
            ("redisHost", "a:7000, b:7001,c"),
            ("redisType", "Cluster"),
        ]))
        .unwrap();
        assert_eq!(
            m.topology,
            Topology::Cluster {
                hosts: vec!["a:7000".into(), "b:7001".into(), "c:6379".into()]
            }
        );
        assert_eq!(m.host, "a:7000,b:7001,c:6379");
        let m = RedisMetadata::parse(&md(&[
            ("redisHost", "s1:26379,s2:26379"),
            ("failover", "true"),
            ("sentinelMasterName", "mymaster"),
            ("sentinelPassword", "sekret"),
        ]))
        .unwrap();
        let Topology::Sentinel {
            hosts,
            master_name,
            password,
            ..
        } = &m.topology
        else {
            panic!("{:?}", m.topology)
        };
        assert_eq!(hosts.len(), 2);
        assert_eq!(master_name, "mymaster");
        assert_eq!(password.as_deref(), Some("sekret"));
        assert!(!format!("{m:?}").contains("sekret"));
        let m = RedisMetadata::parse(&md(&[("redisHost", "r")])).unwrap();
        assert_eq!(m.topology, Topology::Node);
    }
}
