//! `fixed-rate`: sends GET requests at a fixed total rate over N connections to an HTTP server
//! (statecar, webdis) or straight to Redis, and prints latency percentiles as one JSON line.
//!
//! ```text
//! fixed-rate --target http://127.0.0.1:3500/v1.0/state/statestore/key-{n} --rate 1000 \
//!            --connections 16 --duration 10
//! fixed-rate --target redis://127.0.0.1:6379/plain:key-{n} --rate 1000 --connections 16
//! ```
//!
//! `{n}` becomes a random key number, zero-padded to 4 digits, below `--keys`. Each connection
//! is a blocking socket on its own thread; request `i` of the whole run is due at
//! `start + i / rate` and goes out on connection `i % connections`. A request's latency runs
//! from the moment it is written (or from when it was due, if the connection was still busy
//! with the previous answer, so a stall is not hidden) until its answer is fully read. The
//! same code measures every server, so differences between servers are the servers'.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Clone)]
enum Target {
    /// `GET path` over HTTP/1.1 keep-alive; the answer must have this status.
    Http {
        addr: SocketAddr,
        path: String,
        expect: u16,
    },
    /// `GET key` over RESP; the key must exist.
    Redis { addr: SocketAddr, key: String },
}

struct Config {
    target: Target,
    rate: f64,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    keys: u32,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: fixed-rate --target http://HOST:PORT/PATH-{{n}} | redis://HOST:PORT/KEY-{{n}} \
         [--rate 1000] [--connections 16] [--duration 10] [--warmup 1] [--keys 10000] \
         [--expect-status 200]"
    );
    ExitCode::from(2)
}

fn parse_args() -> Result<Config, String> {
    let mut target = None;
    let (mut rate, mut connections, mut duration, mut warmup, mut keys, mut expect) =
        (1000.0, 16usize, 10.0, 1.0, 10_000u32, 200u16);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--target" => target = Some(value),
            "--rate" => rate = value.parse().map_err(|e| bad(&e))?,
            "--connections" => connections = value.parse().map_err(|e| bad(&e))?,
            "--duration" => duration = value.parse().map_err(|e| bad(&e))?,
            "--warmup" => warmup = value.parse().map_err(|e| bad(&e))?,
            "--keys" => keys = value.parse().map_err(|e| bad(&e))?,
            "--expect-status" => expect = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let target = target.ok_or("--target is required")?;
    if rate <= 0.0 || connections == 0 || keys == 0 || duration <= 0.0 || warmup < 0.0 {
        return Err("rate, connections, keys and duration must be positive".into());
    }
    let (scheme, rest) = target.split_once("://").ok_or("--target needs a scheme")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr: SocketAddr = host
        .parse()
        .map_err(|e| format!("{host}: {e} (give IP:PORT)"))?;
    let target = match scheme {
        "http" => Target::Http {
            addr,
            path: format!("/{path}"),
            expect,
        },
        "redis" => Target::Redis {
            addr,
            key: path.to_string(),
        },
        other => return Err(format!("unknown scheme {other}")),
    };
    Ok(Config {
        target,
        rate,
        connections,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        keys,
    })
}

/// xorshift64*: cheap, and good enough to spread keys.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % u64::from(n)) as u32
    }
}

/// The template with `{n}` replaced by a 4-digit key number.
fn fill(template: &str, n: u32) -> String {
    template.replace("{n}", &format!("{n:04}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Reads one HTTP/1.1 response with a Content-Length (or none, for 204) and returns its status.
fn read_http(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<u16> {
    buf.clear();
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).map_err(|_| invalid("non-UTF-8 head"))?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| invalid("no status"))?;
            let mut length = None;
            for line in head.split("\r\n").skip(1) {
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse::<usize>().ok();
                    } else if name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(invalid("chunked responses are not supported"));
                    }
                }
            }
            let length = match (length, status) {
                (Some(n), _) => n,
                (None, 204 | 304) => 0,
                (None, _) => return Err(invalid("no Content-Length")),
            };
            while buf.len() < end + 4 + length {
                read_more(stream, buf)?;
            }
            return Ok(status);
        }
        read_more(stream, buf)?;
    }
}

/// Reads one RESP reply to GET; true when it is a value (not nil, not an error).
fn read_redis(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    loop {
        if let Some(eol) = find(buf, b"\r\n") {
            return match buf[0] {
                b'$' => {
                    let len: i64 = std::str::from_utf8(&buf[1..eol])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad length"))?;
                    if len < 0 {
                        return Ok(false);
                    }
                    while buf.len() < eol + 2 + len as usize + 2 {
                        read_more(stream, buf)?;
                    }
                    Ok(true)
                }
                b'-' => Ok(false),
                _ => Ok(true),
            };
        }
        read_more(stream, buf)?;
    }
}

#[derive(Default)]
struct Outcome {
    /// Latencies of the measured requests, in nanoseconds.
    latencies: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// One connection's share of the schedule.
fn run_connection(cfg: &Config, index: usize, start: Instant) -> Outcome {
    let mut out = Outcome::default();
    let addr = match &cfg.target {
        Target::Http { addr, .. } | Target::Redis { addr, .. } => *addr,
    };
    let connect = || -> io::Result<TcpStream> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(s)
    };
    let mut stream = match connect() {
        Ok(s) => s,
        Err(e) => {
            out.errors += 1;
            out.first_error = Some(format!("connect {addr}: {e}"));
            return out;
        }
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((index as u64 + 1) << 17));
    let interval = 1.0 / cfg.rate;
    let measured_from = start + cfg.warmup;
    let end = measured_from + cfg.duration;
    let mut request = Vec::with_capacity(256);
    let mut buf = Vec::with_capacity(8192);
    for i in (index..).step_by(cfg.connections) {
        let due = start + Duration::from_secs_f64(i as f64 * interval);
        if due >= end {
            break;
        }
        let now = Instant::now();
        // Late because the previous answer took longer than the interval: count from `due`.
        let sent = if now < due {
            std::thread::sleep(due - now);
            Instant::now()
        } else {
            due
        };
        let n = rng.below(cfg.keys);
        request.clear();
        let result = match &cfg.target {
            Target::Http { path, expect, .. } => {
                let _ = write!(
                    request,
                    "GET {} HTTP/1.1\r\nHost: {addr}\r\n\r\n",
                    fill(path, n)
                );
                stream
                    .write_all(&request)
                    .and_then(|()| read_http(&mut stream, &mut buf))
                    .map(|status| {
                        (status == *expect)
                            .then_some(())
                            .ok_or(format!("status {status}, expected {expect}"))
                    })
            }
            Target::Redis { key, .. } => {
                let key = fill(key, n);
                let _ = write!(request, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
                stream
                    .write_all(&request)
                    .and_then(|()| read_redis(&mut stream, &mut buf))
                    .map(|found| found.then_some(()).ok_or(format!("GET {key}: no value")))
            }
        };
        let done = Instant::now();
        match result {
            Ok(Ok(())) => {
                if due >= measured_from {
                    out.latencies.push((done - sent).as_nanos() as u64);
                }
            }
            Ok(Err(e)) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(format!("{e}"));
                match connect() {
                    Ok(s) => stream = s,
                    Err(_) => break,
                }
            }
        }
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1e6
}

fn main() -> ExitCode {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fixed-rate: {e}");
            return usage();
        }
    };
    // Connections start a little after the threads, so every one is up before the first is due.
    let start = Instant::now() + Duration::from_millis(100);
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.connections)
            .map(|c| {
                let cfg = &cfg;
                s.spawn(move || run_connection(cfg, c, start))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut all: Vec<u64> = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for o in outcomes {
        all.extend(o.latencies);
        errors += o.errors;
        first_error = first_error.or(o.first_error);
    }
    all.sort_unstable();
    let mean = if all.is_empty() {
        0.0
    } else {
        all.iter().sum::<u64>() as f64 / all.len() as f64 / 1e6
    };
    println!(
        "{{\"requests\":{},\"errors\":{},\"rate\":{},\"achieved_rate\":{:.1},\"connections\":{},\
         \"p50_ms\":{:.4},\"p90_ms\":{:.4},\"p99_ms\":{:.4},\"p999_ms\":{:.4},\"max_ms\":{:.4},\
         \"mean_ms\":{:.4},\"first_error\":{}}}",
        all.len(),
        errors,
        cfg.rate,
        all.len() as f64 / cfg.duration.as_secs_f64(),
        cfg.connections,
        percentile(&all, 50.0),
        percentile(&all, 90.0),
        percentile(&all, 99.0),
        percentile(&all, 99.9),
        percentile(&all, 100.0),
        mean,
        first_error.map_or("null".to_string(), |e| format!("{e:?}")),
    );
    if errors > 0 || all.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
