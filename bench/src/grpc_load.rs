//! `grpc-load`: a closed-loop load of gRPC `GetState` or `SaveState` calls, the gRPC
//! counterpart of the wrk runs: N connections, one call in flight on each, for a fixed time.
//! Prints one JSON line: requests, errors, seconds, rps.
//!
//! ```text
//! grpc-load --addr http://127.0.0.1:50001 --op get --connections 16 --duration 10
//! ```
//!
//! Keys are `key-0000` ... below `--keys`, as bench/wrk/workloads.lua uses; SAVE writes the
//! same 100-byte JSON values (last-write). Each connection is its own HTTP/2 channel, so the
//! server sees as many connections as wrk opens.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dapr::dapr::proto::common::v1::StateItem;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use dapr::dapr::proto::runtime::v1::{GetStateRequest, SaveStateRequest};
use tonic::transport::Endpoint;

const STORE: &str = "statestore";
const VALUE_SIZE: usize = 100;

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Get,
    Save,
}

struct Config {
    addr: String,
    op: Op,
    connections: usize,
    duration: Duration,
    keys: u32,
}

fn parse_args() -> Result<Config, String> {
    let mut cfg = Config {
        addr: String::new(),
        op: Op::Get,
        connections: 16,
        duration: Duration::from_secs(10),
        keys: 10_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--addr" => cfg.addr = value,
            "--op" => {
                cfg.op = match value.as_str() {
                    "get" => Op::Get,
                    "save" => Op::Save,
                    _ => return Err(format!("--op {value}: expected get or save")),
                }
            }
            "--connections" => cfg.connections = value.parse().map_err(|e| bad(&e))?,
            "--duration" => {
                cfg.duration = Duration::from_secs_f64(value.parse().map_err(|e| bad(&e))?)
            }
            "--keys" => cfg.keys = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if cfg.addr.is_empty() || cfg.connections == 0 || cfg.keys == 0 {
        return Err("--addr is required; --connections and --keys must be positive".into());
    }
    Ok(cfg)
}

/// The value stored under key number n (the same bytes workloads.lua and bench.py write).
fn value(n: u32) -> Vec<u8> {
    let head = format!("{{\"id\":\"key-{n:04}\",\"pad\":\"");
    let mut v = head.into_bytes();
    v.resize(VALUE_SIZE - 2, b'x');
    v.extend_from_slice(b"\"}");
    v
}

/// A small xorshift, so that every connection walks the key space differently.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

async fn connection(cfg: Arc<Config>, i: usize, counters: Arc<Counters>) -> Result<(), String> {
    let channel = Endpoint::from_shared(cfg.addr.clone())
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connecting to {}: {e}", cfg.addr))?;
    let mut client = DaprClient::new(channel);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    while !counters.stop.load(Ordering::Relaxed) {
        let n = (next(&mut rng) % u64::from(cfg.keys)) as u32;
        let key = format!("key-{n:04}");
        let ok = match cfg.op {
            Op::Get => client
                .get_state(GetStateRequest {
                    store_name: STORE.into(),
                    key,
                    ..Default::default()
                })
                .await
                .is_ok_and(|r| !r.get_ref().data.is_empty()),
            Op::Save => client
                .save_state(SaveStateRequest {
                    store_name: STORE.into(),
                    states: vec![StateItem {
                        key,
                        value: value(n),
                        ..Default::default()
                    }],
                })
                .await
                .is_ok(),
        };
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cfg = match parse_args() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!(
                "grpc-load: {e}\nusage: grpc-load --addr http://HOST:PORT [--op get|save] \
                 [--connections 16] [--duration 10] [--keys 10000]"
            );
            return ExitCode::from(2);
        }
    };
    // Two workers, as wrk runs two threads.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("grpc-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let counters = Arc::new(Counters {
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let result = rt.block_on(async {
        let start = Instant::now();
        let tasks: Vec<_> = (0..cfg.connections)
            .map(|i| tokio::spawn(connection(cfg.clone(), i, counters.clone())))
            .collect();
        tokio::time::sleep(cfg.duration).await;
        counters.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(start.elapsed())
    });
    match result {
        Ok(elapsed) => {
            let n = counters.requests.load(Ordering::Relaxed);
            let secs = elapsed.as_secs_f64();
            println!(
                "{{\"requests\":{n},\"errors\":{},\"seconds\":{secs:.3},\"rps\":{:.1}}}",
                counters.errors.load(Ordering::Relaxed),
                n as f64 / secs
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("grpc-load: {e}");
            ExitCode::FAILURE
        }
    }
}
