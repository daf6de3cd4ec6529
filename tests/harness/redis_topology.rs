//! Scale-out Redis on loopback: a Redis Cluster of N masters (`redis-cli --cluster create`), and
//! a master + replica watched by 3 Sentinels. Every process is a guarded child of the test.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{Guarded, Spawn, free_port};

const REDIS_BIN: &str = "/usr/bin/redis-server";
const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// One redis-server (data node or sentinel) with its own directory.
pub struct Node {
    pub port: u16,
    pub proc: Option<Guarded>,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A synchronous connection (no cluster redirection).
    pub fn conn(&self) -> redis::Connection {
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("redis client");
        let c = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connecting to 127.0.0.1:{}: {e}", self.port));
        c.set_read_timeout(Some(Duration::from_secs(5))).ok();
        c
    }

    pub fn try_query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        let mut c = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        cmd.query(&mut c).ok()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn logs(&self) -> String {
        self.proc.as_ref().map(|p| p.logs()).unwrap_or_default()
    }
}

fn spawn_node(dir: &Path, name: &str, args: Vec<String>) -> Node {
    for _ in 0..5 {
        let port = free_port();
        let mut full = vec!["--port".to_string(), port.to_string()];
        full.extend(args.iter().cloned());
        let mut proc = Guarded::spawn(Spawn {
            program: OsStr::new(REDIS_BIN),
            args: full,
            env: vec![],
            env_remove: vec![],
            log_dir: dir,
            log_name: &format!("{name}-{port}"),
            cleanup_dir: None,
        })
        .expect("spawning redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        let node = loop {
            if proc.try_status().is_some() {
                break None;
            }
            let probe = Node { port, proc: None };
            if probe.try_query::<String>(&redis::cmd("PING")).as_deref() == Some("PONG") {
                break Some(port);
            }
            if Instant::now() >= deadline {
                panic!("{name} on port {port} did not answer PING\n{}", proc.logs());
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        if let Some(port) = node {
            return Node {
                port,
                proc: Some(proc),
            };
        }
    }
    panic!("could not start {name}");
}

fn data_node_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--logfile",
        "",
        "--dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(dir.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Redis Cluster of `masters` nodes, no replicas, every slot assigned.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
    _dirs: Vec<tempfile::TempDir>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..masters {
            let dir = tempfile::Builder::new()
                .prefix("statecar-cluster-")
                .tempdir()
                .expect("temp dir");
            let args = data_node_args(
                dir.path(),
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            );
            nodes.push(spawn_node(dir.path(), &format!("cluster{i}"), args));
            dirs.push(dir);
        }
        let mut cmd = Command::new(REDIS_CLI);
        cmd.arg("--cluster").arg("create");
        for n in &nodes {
            cmd.arg(n.addr());
        }
        cmd.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = cmd.output().expect("running redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dirs: dirs };
        wait_until(
            "cluster_state:ok on every node",
            Duration::from_secs(20),
            || {
                cluster.nodes.iter().all(|n| {
                    n.try_query::<String>(redis::cmd("CLUSTER").arg("INFO"))
                        .map(|i| i.contains("cluster_state:ok"))
                        .unwrap_or(false)
                })
            },
        );
        cluster
    }

    /// The `redisHost` value: every node, comma-separated.
    pub fn hosts(&self) -> String {
        self.nodes
            .iter()
            .map(Node::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node that serves `key`'s slot.
    pub fn node_for(&self, key: &str) -> &Node {
        let slot: i64 = self.nodes[0]
            .try_query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .expect("CLUSTER KEYSLOT");
        let slots: redis::Value = self.nodes[0]
            .try_query(redis::cmd("CLUSTER").arg("SLOTS"))
            .expect("CLUSTER SLOTS");
        let redis::Value::Array(ranges) = slots else {
            panic!("CLUSTER SLOTS: {slots:?}")
        };
        for r in ranges {
            let redis::Value::Array(parts) = r else {
                continue;
            };
            let (redis::Value::Int(lo), redis::Value::Int(hi)) = (&parts[0], &parts[1]) else {
                continue;
            };
            if (*lo..=*hi).contains(&slot) {
                let redis::Value::Array(master) = &parts[2] else {
                    break;
                };
                let redis::Value::Int(port) = master[1] else {
                    break;
                };
                return self
                    .nodes
                    .iter()
                    .find(|n| i64::from(n.port) == port)
                    .expect("slot owner is one of ours");
            }
        }
        panic!("no node serves slot {slot}");
    }
}

/// A master, one replica and three Sentinels monitoring them as `master_name`.
pub struct SentinelSetup {
    pub master: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    pub master_name: String,
    _dirs: Vec<tempfile::TempDir>,
}

impl SentinelSetup {
    pub fn start(master_name: &str) -> SentinelSetup {
        let mut dirs = Vec::new();
        let mut dir = || {
            let d = tempfile::Builder::new()
                .prefix("statecar-sentinel-")
                .tempdir()
                .expect("temp dir");
            let p = d.path().to_path_buf();
            dirs.push(d);
            p
        };
        let mdir = dir();
        let master = spawn_node(&mdir, "master", data_node_args(&mdir, &[]));
        let rdir = dir();
        let replica = spawn_node(
            &rdir,
            "replica",
            data_node_args(
                &rdir,
                &[
                    "--replicaof",
                    "127.0.0.1",
                    &master.port.to_string(),
                    "--repl-diskless-load",
                    "disabled",
                ],
            ),
        );
        wait_until(
            "replica linked to the master",
            Duration::from_secs(15),
            || {
                replica
                    .try_query::<String>(redis::cmd("INFO").arg("replication"))
                    .map(|i| i.contains("master_link_status:up"))
                    .unwrap_or(false)
            },
        );
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let sdir = dir();
            let conf = sdir.join("sentinel.conf");
            let port = free_port();
            // Sentinel rewrites its own config file, so each gets a writable one.
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {master_name} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {master_name} 1000\n\
                     sentinel failover-timeout {master_name} 5000\n\
                     sentinel parallel-syncs {master_name} 1\n",
                    sdir.display(),
                    master.port
                ),
            )
            .expect("write sentinel.conf");
            let proc = Guarded::spawn(Spawn {
                program: OsStr::new(REDIS_BIN),
                args: vec![conf.display().to_string(), "--sentinel".into()],
                env: vec![],
                env_remove: vec![],
                log_dir: &sdir,
                log_name: &format!("sentinel{i}"),
                cleanup_dir: None,
            })
            .expect("spawning redis-server --sentinel");
            let node = Node {
                port,
                proc: Some(proc),
            };
            wait_until(
                &format!("sentinel {i} on port {port} answers"),
                Duration::from_secs(10),
                || node.try_query::<String>(&redis::cmd("PING")).as_deref() == Some("PONG"),
            );
            sentinels.push(node);
        }
        let setup = SentinelSetup {
            master,
            replica,
            sentinels,
            master_name: master_name.to_string(),
            _dirs: dirs,
        };
        // Every sentinel must know the replica and the other sentinels before a failover works.
        wait_until(
            "sentinels see the replica and each other",
            Duration::from_secs(30),
            || {
                setup.sentinels.iter().all(|s| {
                    let info: Option<Vec<std::collections::HashMap<String, String>>> = s
                        .try_query(redis::cmd("SENTINEL").arg("MASTERS"))
                        .map(|v: Vec<Vec<String>>| {
                            v.into_iter()
                                .map(|flat| {
                                    flat.chunks(2)
                                        .filter_map(|kv| {
                                            Some((kv.first()?.clone(), kv.get(1)?.clone()))
                                        })
                                        .collect()
                                })
                                .collect()
                        });
                    info.and_then(|m| m.into_iter().next())
                        .map(|m| {
                            m.get("num-slaves").map(String::as_str) == Some("1")
                                && m.get("num-other-sentinels").map(String::as_str) == Some("2")
                        })
                        .unwrap_or(false)
                })
            },
        );
        setup
    }

    /// The `redisHost` value for `failover: true`: every sentinel, comma-separated.
    pub fn sentinel_hosts(&self) -> String {
        self.sentinels
            .iter()
            .map(Node::addr)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port as the sentinels currently report it.
    pub fn current_master_port(&self) -> Option<u16> {
        for s in &self.sentinels {
            let addr: Option<Vec<String>> = s.try_query(
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.master_name),
            );
            if let Some(port) = addr.and_then(|a| a.get(1).and_then(|p| p.parse().ok())) {
                return Some(port);
            }
        }
        None
    }
}
