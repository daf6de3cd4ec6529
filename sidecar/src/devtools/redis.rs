//! Is a Redis answering at an address, and the private `redis-server` of `statecar init
//! --start-redis`: bound to 127.0.0.1, its files under `~/.statecar/redis`, managed through
//! the pid file redis-server writes itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{self, SIGKILL, SIGTERM};
use super::{DevError, Layout, tilde};

/// How long to wait for an answer when probing.
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// How long a started redis-server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped redis-server may take to exit (it saves its data first).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A `HOST:PORT` Redis address as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAddress {
    pub host: String,
    pub port: u16,
}

impl RedisAddress {
    pub fn parse(s: &str) -> Result<Self, DevError> {
        let bad = || DevError::BadAddress(s.to_string());
        let (host, port) = s.trim().rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(RedisAddress {
            host: host.to_string(),
            port,
        })
    }

    /// Whether a server bound to 127.0.0.1 is reachable under this name.
    pub fn is_local(&self) -> bool {
        matches!(self.host.as_str(), "localhost" | "127.0.0.1")
    }
}

impl std::fmt::Display for RedisAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What answers at an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Nothing accepts connections.
    Nothing,
    /// A Redis answered PING (`+PONG`).
    Redis,
    /// A Redis that wants a password (`-NOAUTH`) or refuses us otherwise (another `-` reply).
    RedisRefused(String),
    /// Something accepted the connection but did not speak RESP.
    NotRedis,
}

impl Probe {
    pub fn is_redis(&self) -> bool {
        matches!(self, Probe::Redis | Probe::RedisRefused(_))
    }
}

/// Connects to `addr` and sends a RESP `PING`.
pub fn probe(addr: &RedisAddress) -> Probe {
    let Ok(addrs) = (addr.host.as_str(), addr.port).to_socket_addrs() else {
        return Probe::Nothing;
    };
    let mut seen = Probe::Nothing;
    for a in addrs {
        match probe_one(a) {
            Probe::Nothing => continue,
            Probe::NotRedis => seen = Probe::NotRedis,
            redis => return redis,
        }
    }
    seen
}

fn probe_one(addr: SocketAddr) -> Probe {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
        return Probe::Nothing;
    };
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = s.set_write_timeout(Some(PROBE_TIMEOUT));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return Probe::NotRedis;
    }
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !got.contains(&b'\n') {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&got);
    let line = line.lines().next().unwrap_or_default().trim();
    if line == "+PONG" {
        Probe::Redis
    } else if let Some(err) = line.strip_prefix('-') {
        Probe::RedisRefused(err.to_string())
    } else {
        Probe::NotRedis
    }
}

/// The pid in the private redis-server's pid file, if that process is alive and really is a
/// redis-server (not an unrelated process that got the pid since).
pub fn private_redis_pid(layout: &Layout) -> Option<i32> {
    let text = std::fs::read_to_string(layout.redis_pid_file()).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    if pid <= 1 || !process::is_alive(pid) {
        return None;
    }
    let cmdline = process::cmdline(pid);
    // redis-server shows its address in its command line: it must be the port init used.
    let port_matches =
        private_address(layout).is_none_or(|a| cmdline.contains(&format!(":{}", a.port)));
    (is_redis_server(&cmdline) && port_matches).then_some(pid)
}

/// Whether a command line is redis-server's (it rewrites its own, e.g. to
/// `/usr/bin/redis-server 127.0.0.1:6379`).
fn is_redis_server(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .next()
        .and_then(|argv0| Path::new(argv0).file_name())
        .is_some_and(|name| name == "redis-server")
}

/// Starts a private `redis-server` (`program`) on 127.0.0.1:`port`, daemonized, with its data,
/// config, log and pid file under `~/.statecar/redis`, and waits until it answers PING.
/// Returns its pid.
pub fn start_private(
    layout: &Layout,
    program: &Path,
    addr: &RedisAddress,
) -> Result<i32, DevError> {
    let port = addr.port;
    let dir = layout.redis_dir();
    std::fs::create_dir_all(&dir).map_err(|e| DevError::io("cannot create", &dir, e))?;
    let conf = layout.redis_conf_file();
    let pid_file = layout.redis_pid_file();
    let log_file = layout.redis_log_file();
    let _ = std::fs::remove_file(&pid_file);
    std::fs::write(&conf, config_text(&dir, &pid_file, &log_file, addr))
        .map_err(|e| DevError::io("cannot write", &conf, e))?;
    // daemonize: the server forks and the first process exits once the child is set up, so it
    // outlives `statecar init`. Every standard stream is /dev/null: it logs to its log file.
    let status = Command::new(program)
        .arg(&conf)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| DevError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    let failed = |why: String| {
        DevError::RedisStart(format!(
            "{why}\n--- {} ---\n{}",
            tilde(&log_file),
            log_tail(&log_file)
        ))
    };
    if !status.success() {
        return Err(failed(format!(
            "{} ended ({})",
            program.display(),
            process::describe(status)
        )));
    }
    let local = RedisAddress {
        host: "127.0.0.1".into(),
        port,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let pid = private_redis_pid(layout);
        if let Some(pid) = pid
            && probe(&local) == Probe::Redis
        {
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            return Err(failed(format!(
                "it did not answer PING on 127.0.0.1:{port} within {}s",
                START_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first line names the address init was given, for [`private_address`].
fn config_text(dir: &Path, pid_file: &Path, log_file: &Path, addr: &RedisAddress) -> String {
    format!(
        "{ADDRESS_MARK}{addr}\n\
         # The private Redis of `statecar init --start-redis`. `statecar init --stop` or\n\
         # `statecar uninstall` stops it.\n\
         bind 127.0.0.1\n\
         port {port}\n\
         protected-mode yes\n\
         daemonize yes\n\
         dir {dir}\n\
         pidfile {pid}\n\
         logfile {log}\n\
         save 3600 1 300 100 60 10000\n\
         appendonly no\n",
        port = addr.port,
        dir = quoted(dir),
        pid = quoted(pid_file),
        log = quoted(log_file),
    )
}

const ADDRESS_MARK: &str = "# statecar init --start-redis --redis-address ";

/// The address the private redis-server was started for (from its config), if init started
/// one.
pub fn private_address(layout: &Layout) -> Option<RedisAddress> {
    let conf = std::fs::read_to_string(layout.redis_conf_file()).ok()?;
    let given = conf.lines().next()?.strip_prefix(ADDRESS_MARK)?;
    RedisAddress::parse(given).ok()
}

/// A path as a double-quoted redis.conf argument.
fn quoted(p: &Path) -> String {
    let s = p.display().to_string();
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// What [`stop_private`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// It was running and has exited.
    Stopped(i32),
    /// No pid file: nothing to stop.
    NotRunning,
    /// A pid file whose process is gone, or is not a redis-server: removed, nothing signalled.
    StalePidFile(PathBuf),
}

/// Stops the private redis-server: SIGTERM (it saves its data and exits), then waits; SIGKILL
/// if it is still there after a while. Removes the pid file.
pub fn stop_private(layout: &Layout) -> Result<Stopped, DevError> {
    let pid_file = layout.redis_pid_file();
    if !pid_file.exists() {
        return Ok(Stopped::NotRunning);
    }
    let Some(pid) = private_redis_pid(layout) else {
        std::fs::remove_file(&pid_file).map_err(|e| DevError::io("cannot remove", &pid_file, e))?;
        return Ok(Stopped::StalePidFile(pid_file));
    };
    process::signal(pid, SIGTERM);
    if !wait_gone(pid, STOP_TIMEOUT) {
        process::signal(pid, SIGKILL);
        if !wait_gone(pid, Duration::from_secs(5)) {
            return Err(DevError::RedisStop(format!(
                "redis-server (pid {pid}) is still running after SIGTERM and SIGKILL"
            )));
        }
    }
    match std::fs::remove_file(&pid_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DevError::io("cannot remove", &pid_file, e)),
    }
    Ok(Stopped::Stopped(pid))
}

fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process::is_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = RedisAddress::parse("localhost:6379").expect("valid");
        assert_eq!(
            (a.host.as_str(), a.port, a.is_local()),
            ("localhost", 6379, true)
        );
        assert_eq!(a.to_string(), "localhost:6379");
        let a = RedisAddress::parse("[::1]:7000").expect("ipv6");
        assert_eq!((a.host.as_str(), a.port), ("::1", 7000));
        assert_eq!(a.to_string(), "[::1]:7000");
        assert!(
            !RedisAddress::parse("redis.example:6379")
                .expect("valid")
                .is_local()
        );
        for bad in [
            "localhost",
            "localhost:",
            ":6379",
            "localhost:0",
            "h:99999",
            "h:x",
        ] {
            assert!(RedisAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn probe_tells_nothing_from_not_redis_from_redis() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = free.local_addr().expect("addr").port();
        drop(free);
        let addr = |port| RedisAddress {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(probe(&addr(port)), Probe::Nothing);

        let fake = |reply: &'static [u8]| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = l.local_addr().expect("addr").port();
            std::thread::spawn(move || {
                if let Ok((mut s, _)) = l.accept() {
                    let mut buf = [0u8; 64];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(reply);
                }
            });
            port
        };
        assert_eq!(probe(&addr(fake(b"+PONG\r\n"))), Probe::Redis);
        assert_eq!(
            probe(&addr(fake(b"-NOAUTH Authentication required.\r\n"))),
            Probe::RedisRefused("NOAUTH Authentication required.".into())
        );
        assert_eq!(
            probe(&addr(fake(b"HTTP/1.1 400 Bad Request\r\n"))),
            Probe::NotRedis
        );
    }

    #[test]
    fn redis_server_command_lines() {
        assert!(is_redis_server("/usr/bin/redis-server 127.0.0.1:6379"));
        assert!(is_redis_server("redis-server *:6379"));
        assert!(!is_redis_server("python3 redis-server.py"));
        assert!(!is_redis_server(""));
    }

    #[test]
    fn no_pid_file_means_not_running() {
        let home = tempfile::tempdir().expect("tempdir");
        let layout = Layout::under_home(home.path());
        assert_eq!(stop_private(&layout).expect("stop"), Stopped::NotRunning);
        // A pid file naming a process that is not redis-server is removed, never signalled.
        std::fs::create_dir_all(layout.redis_dir()).expect("mkdir");
        std::fs::write(layout.redis_pid_file(), std::process::id().to_string()).expect("write");
        assert_eq!(
            stop_private(&layout).expect("stop"),
            Stopped::StalePidFile(layout.redis_pid_file())
        );
        assert!(!layout.redis_pid_file().exists());
    }
}
