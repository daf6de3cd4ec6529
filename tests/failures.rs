//! Redis failures under load: the server killed (SIGKILL) and restarted, and the network to it
//! cut (an iptables DROP on its loopback port) and restored.
//!
//! Both run the same load (a few clients saving unique keys and reading one key) against a
//! sidecar with `readTimeout`/`writeTimeout` of 2 s, i.e. a store deadline of 2 s
//! (sidecar/src/store/redis.rs), and check:
//! * during the outage every request is answered, with 500 and the endpoint's errorCode
//!   (`ERR_STATE_SAVE`, `ERR_STATE_GET`), within the deadline plus slack: nothing hangs;
//! * `/v1.0/healthz/outbound` is not 2xx while Redis is away;
//! * once Redis is reachable again (restarted and answering PING; the DROP rule removed), each
//!   kind of request succeeds again within 1 s (project issue 7);
//! * no acknowledged (2xx) save is missing afterwards;
//! * no panic, and no growth in memory or threads after a further load.
//!
//! Each test prints a `SCENARIO` line with its figures.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use statecar_tests::procfs::{self, mib, mib_delta};
use statecar_tests::{RedisServer, STORE, Sidecar, StoreKind, key_path, store_path};

/// `readTimeout` and `writeTimeout` of the store under test; the store's deadline for one call
/// is the larger of the two (at least 1.5 s).
const STORE_DEADLINE: Duration = Duration::from_secs(2);
/// What a busy 2-core machine may add to the deadline (scheduling, logging, HTTP).
const SLACK: Duration = Duration::from_millis(1500);
const CLIENTS: usize = 4;
/// Pause between two requests of one client, so that a dead Redis does not turn the load into a
/// busy loop.
const PAUSE: Duration = Duration::from_millis(5);
/// How long the load runs before the baseline measurement and again before the final one.
const STEADY_LOAD: Duration = Duration::from_secs(2);
/// Growth of resident memory accepted between the two measurements.
const RSS_BOUND: u64 = 5 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Save,
    Get,
}

#[derive(Debug, Clone)]
enum Outcome {
    /// An HTTP response: status and, for errors, the errorCode.
    Http(u16, Option<String>),
    /// No HTTP response at all (connection error, client timeout).
    Transport(String),
}

#[derive(Debug, Clone)]
struct Rec {
    op: Op,
    key: String,
    start: Instant,
    end: Instant,
    outcome: Outcome,
}

impl Rec {
    fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Http(s, _) if (200..300).contains(&s))
    }
    fn latency(&self) -> Duration {
        self.end - self.start
    }
}

/// The request load and what it saw.
struct Load {
    stop: AtomicBool,
    recs: Mutex<Vec<Rec>>,
}

impl Load {
    fn start(sc: &Arc<Sidecar>) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
        let load = Arc::new(Load {
            stop: AtomicBool::new(false),
            recs: Mutex::new(Vec::new()),
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let tasks = (0..CLIENTS)
            .map(|c| {
                let (load, sc, client) = (load.clone(), sc.clone(), client.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !load.stop.load(Ordering::Relaxed) {
                        n += 1;
                        let key = format!("w-{c}-{n}");
                        let body = json!([{"key": key, "value": n}]).to_string();
                        let rb = client.post(sc.url(&store_path(STORE))).body(body);
                        load.record(Op::Save, key, rb).await;
                        let rb = client.get(sc.url(&key_path("probe")));
                        load.record(Op::Get, "probe".into(), rb).await;
                        tokio::time::sleep(PAUSE).await;
                    }
                })
            })
            .collect();
        (load, tasks)
    }

    async fn record(&self, op: Op, key: String, rb: reqwest::RequestBuilder) {
        let start = Instant::now();
        let outcome = match rb.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap_or_default();
                let code = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["errorCode"].as_str().map(str::to_string));
                Outcome::Http(status, code)
            }
            Err(e) => Outcome::Transport(e.to_string()),
        };
        let rec = Rec {
            op,
            key,
            start,
            end: Instant::now(),
            outcome,
        };
        self.recs.lock().expect("recs").push(rec);
    }

    fn snapshot(&self) -> Vec<Rec> {
        self.recs.lock().expect("recs").clone()
    }

    /// The first 2xx of `op` that ended after `since`.
    fn first_ok_after(&self, op: Op, since: Instant) -> Option<Instant> {
        self.recs
            .lock()
            .expect("recs")
            .iter()
            .filter(|r| r.op == op && r.end > since && r.ok())
            .map(|r| r.end)
            .min()
    }
}

/// Polls `/v1.0/healthz/outbound` every 250 ms: (start, end, status or 0 for no response).
fn probe_outbound(
    sc: &Arc<Sidecar>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, Instant, u16)>> {
    let sc = sc.clone();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            let status = sc
                .http()
                .get(sc.url("/v1.0/healthz/outbound"))
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            seen.push((start, Instant::now(), status));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        seen
    })
}

/// Runs the load around an outage: `cut` takes Redis away, `restore` brings it back, waits
/// until a fresh connection gets PONG, and returns when Redis became reachable again.
async fn outage_under_load(
    name: &str,
    what: &str,
    redis: &mut RedisServer,
    down_for: Duration,
    recovery_bound: Duration,
    cut: impl FnOnce(&mut RedisServer),
    restore: impl FnOnce(&mut RedisServer) -> Instant,
) {
    let sc = Arc::new(
        Sidecar::builder()
            .store_meta(
                StoreKind::Redis,
                &[
                    ("redisHost", &redis.addr()),
                    ("readTimeout", "2s"),
                    ("writeTimeout", "2s"),
                ],
            )
            .start()
            .await,
    );
    sc.put("probe", json!("p")).await;
    let pid = sc.pid();

    // Warm up, then take the baseline.
    let (load, tasks) = Load::start(&sc);
    tokio::time::sleep(STEADY_LOAD).await;
    let before = procfs::status(pid);

    let probe_stop = Arc::new(AtomicBool::new(false));
    let prober = probe_outbound(&sc, probe_stop.clone());
    tokio::task::block_in_place(|| cut(redis));
    // From here on Redis is unreachable (the cut has taken effect).
    let down_at = Instant::now();
    tokio::time::sleep(down_for).await;
    // Until here Redis is certainly away; `up_at` is when it is reachable again.
    let restore_at = Instant::now();
    let up_at = tokio::task::block_in_place(|| restore(redis));
    probe_stop.store(true, Ordering::Relaxed);

    // Recovery: the first 2xx of each kind after Redis is reachable again. The wait is bounded
    // well past `recovery_bound`, so that a slow recovery is measured and reported below.
    let wait = recovery_bound + Duration::from_secs(10);
    let (save_ok, get_ok) = loop {
        if let (Some(s), Some(g)) = (
            load.first_ok_after(Op::Save, up_at),
            load.first_ok_after(Op::Get, up_at),
        ) {
            break (s, g);
        }
        assert!(
            up_at.elapsed() < wait,
            "{name}: requests did not succeed again within {wait:?} of Redis being reachable\n{}",
            sc.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A further steady load, then the final measurement (under load, as the baseline).
    tokio::time::sleep(STEADY_LOAD).await;
    let after = procfs::status(pid);
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
    let probes = prober.await.expect("prober");
    let recs = load.snapshot();

    // Every request got an HTTP answer; every failure is a 500 with the endpoint's code.
    let transport: Vec<String> = recs
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Transport(e) => {
                Some(format!("{:?} {} after {:?}: {e}", r.op, r.key, r.latency()))
            }
            Outcome::Http(..) => None,
        })
        .collect();
    assert!(
        transport.is_empty(),
        "{name}: {} requests got no HTTP response, e.g. {:?}",
        transport.len(),
        transport.first()
    );
    for r in recs.iter().filter(|r| !r.ok()) {
        let want = match r.op {
            Op::Save => "ERR_STATE_SAVE",
            Op::Get => "ERR_STATE_GET",
        };
        let Outcome::Http(status, code) = &r.outcome else {
            unreachable!()
        };
        assert!(
            *status == 500 && code.as_deref() == Some(want),
            "{name}: a failed {:?} must be 500 {want}, got {status} {code:?}",
            r.op
        );
    }
    // Nothing hangs past the store's deadline.
    let during: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.end > down_at && r.start < restore_at)
        .collect();
    let failed = recs.iter().filter(|r| !r.ok()).count();
    assert!(failed > 0, "{name}: no request failed during the outage");
    let slowest = recs.iter().map(Rec::latency).max().unwrap_or_default();
    assert!(
        slowest <= STORE_DEADLINE + SLACK,
        "{name}: a request took {slowest:?}, more than the store deadline {STORE_DEADLINE:?} + {SLACK:?}"
    );
    let mut outage_latencies: Vec<Duration> = during.iter().map(|r| r.latency()).collect();
    outage_latencies.sort();
    let p50 = outage_latencies
        .get(outage_latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    // Outbound health is not 2xx while Redis is away.
    let outage_probes: Vec<_> = probes
        .iter()
        .filter(|(s, e, _)| *s > down_at && *e < restore_at)
        .collect();
    assert!(
        !outage_probes.is_empty(),
        "{name}: no /v1.0/healthz/outbound probe ran during the outage"
    );
    for (_, _, status) in &outage_probes {
        assert!(
            !(200..300).contains(status),
            "{name}: /v1.0/healthz/outbound answered {status} while Redis was away"
        );
    }
    // Recovery.
    let save_recovery = save_ok - up_at;
    let get_recovery = get_ok - up_at;
    // Acknowledged saves are all in Redis.
    let acked: Vec<&Rec> = recs.iter().filter(|r| r.op == Op::Save && r.ok()).collect();
    let failed_saves: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.op == Op::Save && !r.ok())
        .collect();
    let present = |key: &str| -> bool {
        let v: Option<String> = redis.query(redis::cmd("HGET").arg(sc.redis_key(key)).arg("data"));
        v.is_some()
    };
    let lost: Vec<&str> = acked
        .iter()
        .filter(|r| !present(&r.key))
        .map(|r| r.key.as_str())
        .collect();
    let failed_but_applied = failed_saves.iter().filter(|r| present(&r.key)).count();
    let stderr = sc.stderr();

    println!(
        "SCENARIO {name}: {what}; load {CLIENTS} clients (save unique key + get), outage {:.1} s | \
         requests sent {}, acknowledged {} ({} saves), failed {} (all 500 with the endpoint's \
         errorCode), lost {} of {} acknowledged saves, failed saves found applied afterwards {} | \
         latency during outage p50 {} ms, max {} ms (deadline {} ms) | outbound probes during \
         outage {} (all non-2xx) | recovery after Redis reachable again: save {} ms, get {} ms \
         (bound {} ms) | RSS {} -> {} \
         ({}), threads {} -> {}",
        (restore_at - down_at).as_secs_f64(),
        recs.len(),
        recs.iter().filter(|r| r.ok()).count(),
        acked.len(),
        failed,
        lost.len(),
        acked.len(),
        failed_but_applied,
        p50.as_millis(),
        slowest.as_millis(),
        STORE_DEADLINE.as_millis(),
        outage_probes.len(),
        save_recovery.as_millis(),
        get_recovery.as_millis(),
        recovery_bound.as_millis(),
        mib(before.rss),
        mib(after.rss),
        mib_delta(after.rss, before.rss),
        before.threads,
        after.threads,
    );

    assert!(
        !stderr.contains("panicked"),
        "{name}: the sidecar panicked\n{stderr}"
    );
    assert!(
        lost.is_empty(),
        "{name}: {} acknowledged saves are missing, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        save_recovery <= recovery_bound && get_recovery <= recovery_bound,
        "{name}: recovery took save {save_recovery:?} / get {get_recovery:?} after Redis \
         was reachable again (bound {recovery_bound:?})\n{}",
        sc.logs()
    );
    assert!(
        after.rss <= before.rss + RSS_BOUND,
        "{name}: resident memory grew from {} to {} across the outage and a further load",
        mib(before.rss),
        mib(after.rss)
    );
    assert!(
        after.threads <= before.threads,
        "{name}: threads grew from {} to {}",
        before.threads,
        after.threads
    );
}

/// Polls Redis with fresh connections until it answers PING (30 s at most).
fn wait_for_ping(redis: &RedisServer) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = redis::Client::open(redis.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
            .and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_millis(500)))?;
                redis::cmd("PING").query::<String>(&mut c)
            })
            .is_ok();
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "redis did not answer PING again");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() {
    // Every acknowledged write is on disk before Redis answers, so a SIGKILL loses none.
    let mut redis =
        RedisServer::start_with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    outage_under_load(
        "redis-kill-restart",
        "redis-server killed with SIGKILL, restarted on the same port and data dir after 3 s \
         (appendonly, appendfsync always)",
        &mut redis,
        Duration::from_secs(3),
        // The bound: requests succeed again within 1 s of Redis answering.
        Duration::from_secs(1),
        |r| r.stop(),
        |r| {
            r.restart();
            wait_for_ping(r);
            Instant::now()
        },
    )
    .await;
}

/// An iptables rule dropping TCP packets to one local port, removed on drop (also when the
/// test panics). Its comment names this test process, so that cleanup is exact and a rule
/// left behind by a killed test process can be recognised and removed.
struct DropRule {
    spec: Vec<String>,
    active: bool,
}

const RULE_PREFIX: &str = "statecar-test-";

impl DropRule {
    fn spec(port: u16, comment: &str) -> Vec<String> {
        [
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-m",
            "comment",
            "--comment",
            comment,
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn insert(port: u16) -> DropRule {
        let version = Command::new("iptables").arg("-V").output();
        match version {
            Ok(o) if o.status.success() => {}
            other => panic!(
                "the network-cut test needs iptables (run as root; Debian package iptables): \
                 `iptables -V` gave {other:?}"
            ),
        }
        remove_stale_rules();
        let comment = format!("{RULE_PREFIX}{}", std::process::id());
        let spec = Self::spec(port, &comment);
        let out = Command::new("iptables")
            .arg("-I")
            .args(&spec)
            .output()
            .expect("running iptables");
        assert!(
            out.status.success(),
            "iptables -I {} failed: {}",
            spec.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        DropRule { spec, active: true }
    }

    fn remove(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        let out = Command::new("iptables").arg("-D").args(&self.spec).output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!(
                "removing iptables rule {} failed: {out:?}",
                self.spec.join(" ")
            );
        }
    }
}

impl Drop for DropRule {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Deletes INPUT rules left by test processes that no longer exist.
fn remove_stale_rules() {
    let Ok(out) = Command::new("iptables").args(["-S", "INPUT"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(pid) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(RULE_PREFIX))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if alive || !line.starts_with("-A ") {
            continue;
        }
        let args: Vec<&str> = line["-A ".len()..].split_whitespace().collect();
        let _ = Command::new("iptables").arg("-D").args(&args).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cut_to_redis_under_load() {
    let mut redis = RedisServer::start();
    let rule: Arc<Mutex<Option<DropRule>>> = Arc::new(Mutex::new(None));
    let (r1, r2) = (rule.clone(), rule.clone());
    outage_under_load(
        "redis-network-cut",
        "TCP to redis-server's loopback port dropped (iptables DROP) for 10 s, then restored; \
         Redis itself kept running",
        &mut redis,
        Duration::from_secs(10),
        // The bound, from the rule's removal. Connections open through the cut would
        // wait seconds for TCP's retransmission backoff: the store replaces them.
        Duration::from_secs(1),
        move |r| *r1.lock().expect("rule") = Some(DropRule::insert(r.port())),
        move |r| {
            if let Some(mut rule) = r2.lock().expect("rule").take() {
                rule.remove();
            }
            let reachable = Instant::now();
            wait_for_ping(r);
            reachable
        },
    )
    .await;
    drop(rule);
}
