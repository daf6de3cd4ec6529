//! Private `redis-server` instances on loopback ports.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::process::{Guarded, Spawn, free_port};

const REDIS_BIN: &str = "/usr/bin/redis-server";

/// A `redis-server` bound to 127.0.0.1 with persistence disabled. Killed on drop (and by the
/// watchdog if the test process dies).
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    replica_of: Option<u16>,
    password: Option<String>,
    /// Let the watchdog delete `dir` when the server dies (only for servers never restarted).
    cleanup_on_exit: bool,
    /// Appended to the command line (later options win, e.g. `--appendonly yes`).
    extra_args: Vec<String>,
    proc: Option<Guarded>,
    starts: u32,
}

impl RedisServer {
    /// Starts a standalone server on a free port.
    pub fn start() -> RedisServer {
        Self::start_inner(None, None, false)
    }

    /// Starts a standalone server with extra command-line options, which override the
    /// defaults: `&["--appendonly", "yes", "--appendfsync", "always"]` makes every
    /// acknowledged write survive a SIGKILL and `restart`.
    pub fn start_with_args(extra: &[&str]) -> RedisServer {
        Self::start_full(None, None, false, extra)
    }

    /// Starts a standalone server that requires `AUTH <password>` (`--requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_inner(None, Some(password.to_string()), false)
    }

    /// Starts a replica of `master` and waits until the master reports the replica connected.
    pub fn start_replica_of(master: &RedisServer) -> RedisServer {
        let before = master.connected_replicas();
        let replica = Self::start_inner(Some(master.port), None, false);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let link_up = replica
                .info("replication")
                .get("master_link_status")
                .map(|s| s == "up")
                .unwrap_or(false);
            if link_up && master.connected_replicas() > before {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "replica on port {} did not connect to master {} within 15 s\n{}",
                replica.port,
                master.port,
                replica.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_inner(
        replica_of: Option<u16>,
        password: Option<String>,
        cleanup_on_exit: bool,
    ) -> RedisServer {
        Self::start_full(replica_of, password, cleanup_on_exit, &[])
    }

    fn start_full(
        replica_of: Option<u16>,
        password: Option<String>,
        cleanup_on_exit: bool,
        extra: &[&str],
    ) -> RedisServer {
        let mut last_err = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(),
                dir: tempfile::Builder::new()
                    .prefix("statecar-redis-")
                    .tempdir()
                    .expect("temp dir for redis"),
                replica_of,
                password: password.clone(),
                cleanup_on_exit,
                extra_args: extra.iter().map(|a| a.to_string()).collect(),
                proc: None,
                starts: 0,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.proc.is_none(), "redis-server already running");
        let mut args: Vec<String> = vec![
            "--port".into(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--daemonize".into(),
            "no".into(),
            "--logfile".into(),
            "".into(),
        ];
        if let Some(pw) = &self.password {
            args.extend(["--requirepass".into(), pw.clone()]);
        }
        if let Some(master) = self.replica_of {
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.to_string(),
                "--repl-diskless-load".into(),
                "disabled".into(),
            ]);
        }
        args.extend(self.extra_args.iter().cloned());
        self.starts += 1;
        let log_name = format!("redis-{}", self.starts);
        let mut proc = Guarded::spawn(Spawn {
            program: OsStr::new(REDIS_BIN),
            args,
            env: vec![],
            env_remove: vec![],
            log_dir: self.dir.path(),
            log_name: &log_name,
            cleanup_dir: self.cleanup_on_exit.then(|| self.dir.path()),
        })
        .map_err(|e| format!("spawning {REDIS_BIN}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = proc.try_status() {
                return Err(format!(
                    "redis-server exited early ({st}) on port {}\n{}",
                    self.port,
                    proc.logs()
                ));
            }
            // The server answering must be ours (not another process that won the port).
            if self.ping().is_ok() {
                let pid = self.info("server").get("process_id").cloned();
                if pid == Some(proc.pid().to_string()) {
                    self.proc = Some(proc);
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server on port {} did not answer PING within 10 s\n{}",
                    self.port,
                    proc.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>` (the form used for `redisHost`).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// URL selecting database `db` (with the password, if any).
    pub fn url_db(&self, db: u32) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/{db}", self.port),
            None => format!("redis://127.0.0.1:{}/{db}", self.port),
        }
    }

    fn ping(&self) -> Result<(), String> {
        let mut c = self.try_conn().map_err(|e| e.to_string())?;
        let pong: String = redis::cmd("PING")
            .query(&mut c)
            .map_err(|e| e.to_string())?;
        if pong == "PONG" { Ok(()) } else { Err(pong) }
    }

    fn try_conn(&self) -> redis::RedisResult<redis::Connection> {
        self.try_conn_db(0)
    }

    fn try_conn_db(&self, db: u32) -> redis::RedisResult<redis::Connection> {
        let client = redis::Client::open(self.url_db(db))?;
        let c = client.get_connection_with_timeout(Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(c)
    }

    /// A new synchronous connection (panics if the server does not answer).
    pub fn conn(&self) -> redis::Connection {
        self.try_conn()
            .unwrap_or_else(|e| panic!("connecting to redis on port {}: {e}", self.port))
    }

    /// A new synchronous connection to database `db`.
    pub fn conn_db(&self, db: u32) -> redis::Connection {
        self.try_conn_db(db)
            .unwrap_or_else(|e| panic!("connecting to redis on port {} db {db}: {e}", self.port))
    }

    /// Runs one command and converts the reply.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        cmd.query(&mut self.conn())
            .unwrap_or_else(|e| panic!("redis command on port {} failed: {e}", self.port))
    }

    /// `HGETALL key` as a map.
    pub fn hgetall(&self, key: &str) -> HashMap<String, String> {
        self.query(redis::cmd("HGETALL").arg(key))
    }

    /// `TTL key` (-2 missing, -1 no expiry).
    pub fn ttl(&self, key: &str) -> i64 {
        self.query(redis::cmd("TTL").arg(key))
    }

    pub fn exists(&self, key: &str) -> bool {
        let n: i64 = self.query(redis::cmd("EXISTS").arg(key));
        n == 1
    }

    /// `KEYS pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut v: Vec<String> = self.query(redis::cmd("KEYS").arg(pattern));
        v.sort();
        v
    }

    /// `INFO <section>` parsed into `name -> value`.
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        let text: String = self.query(redis::cmd("INFO").arg(section));
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    }

    pub fn connected_replicas(&self) -> u32 {
        self.info("replication")
            .get("connected_slaves")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Number of calls of `command` in `INFO commandstats` (0 if never called).
    pub fn command_calls(&self, command: &str) -> u64 {
        let stats = self.info("commandstats");
        stats
            .get(&format!("cmdstat_{}", command.to_ascii_lowercase()))
            .and_then(|v| {
                v.split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Kills the server (the port becomes free; data is lost).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        // Wait until the port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "redis port still open after stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => panic!("restarting redis: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().map(|p| p.is_running()).unwrap_or(false)
    }

    pub fn logs(&self) -> String {
        self.proc.as_ref().map(|p| p.logs()).unwrap_or_default()
    }
}

/// One redis-server shared by all tests of a test binary (tests isolate by app id, which is the
/// key prefix). Never dropped: it dies with the test process through the watchdog.
pub fn shared_redis() -> &'static RedisServer {
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    // Statics are never dropped, so the watchdog removes its directory.
    SHARED.get_or_init(|| RedisServer::start_inner(None, None, true))
}
