//! Process lifecycle: graceful shutdown, component loading and startup failures (spec §5;
//! contract "Binary").

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use statecar_tests::{
    Sidecar, StoreKind, component_yaml, component_yaml_ext, shared_redis, store_tests, store_yaml,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

store_tests!(sigterm_exits_zero);

const FAIL_TIMEOUT: Duration = Duration::from_secs(30);

async fn sigterm_exits_zero(kind: StoreKind) {
    let mut sc = Sidecar::start(kind).await;
    sc.put("k", json!(1)).await;
    // A pooled keep-alive connection is open while the signal arrives.
    sc.get("k").await.expect(200);
    let code = sc.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit code after SIGTERM\n{}", sc.logs());
}

/// What the clients of `sigterm_under_load_answers_every_accepted_request` saw.
#[derive(Default)]
struct ShutdownStats {
    /// Requests whose head was written.
    sent: AtomicU64,
    /// 2xx responses.
    acked: AtomicU64,
    /// Requests the server never took: written on a connection that the server closed before
    /// reading the head (no `100 Continue`).
    not_accepted: AtomicU64,
    /// Connections refused after SIGTERM (the listener is closed).
    refused: AtomicU64,
    /// Requests between `100 Continue` and their response.
    in_flight: AtomicI64,
    acked_keys: Mutex<Vec<String>>,
    /// Accepted requests that did not get a complete 2xx response.
    failures: Mutex<Vec<String>>,
}

/// Reads a response head: status and lower-cased headers; `None` if the connection ended
/// before the first byte.
async fn read_head(
    conn: &mut BufReader<TcpStream>,
) -> std::io::Result<Option<(u16, Vec<(String, String)>)>> {
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if conn.read_line(&mut h).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            return Ok(Some((status, headers)));
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase()));
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One client connection: saves unique keys one request at a time, each sent with
/// `Expect: 100-continue`. The server's `100 Continue` shows that it has read the request head
/// and is running the handler: from then on the request is accepted, and the server owes it a
/// complete response. A connection closed before that is a request the server never took.
async fn shutdown_client(
    addr: String,
    c: usize,
    stats: Arc<ShutdownStats>,
    terminating: Arc<AtomicBool>,
) {
    let fail = |msg: String| stats.failures.lock().expect("failures").push(msg);
    let mut conn: Option<BufReader<TcpStream>> = None;
    for n in 0.. {
        let mut stream = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect(&addr).await {
                Ok(s) => BufReader::new(s),
                Err(e) => {
                    if !terminating.load(Ordering::SeqCst) {
                        fail(format!("client {c}: connect failed before SIGTERM: {e}"));
                    }
                    stats.refused.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            },
        };
        let key = format!("sd-{c}-{n}");
        let body = json!([{"key": key, "value": n}]).to_string();
        let head = format!(
            "POST /v1.0/state/statestore HTTP/1.1\r\nHost: {addr}\r\nContent-Type: \
             application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        stats.sent.fetch_add(1, Ordering::SeqCst);
        let not_taken = |why: String| {
            if terminating.load(Ordering::SeqCst) {
                stats.not_accepted.fetch_add(1, Ordering::SeqCst);
            } else {
                fail(format!("client {c}: {why} before SIGTERM"));
            }
        };
        if let Err(e) = stream.get_mut().write_all(head.as_bytes()).await {
            not_taken(format!("writing the request head failed: {e}"));
            continue;
        }
        let first = tokio::time::timeout(Duration::from_secs(30), read_head(&mut stream)).await;
        let status = match first {
            Ok(Ok(Some((status, _)))) => status,
            Ok(Ok(None)) | Ok(Err(_)) => {
                not_taken("the connection closed before the server read the request".into());
                continue;
            }
            Err(_) => {
                fail(format!(
                    "client {c}: no answer to a request head within 30 s"
                ));
                return;
            }
        };
        if status != 100 {
            fail(format!("client {c}: {status} instead of 100 Continue"));
            return;
        }
        // Accepted: the handler is reading the body. Keep it busy for a moment.
        stats.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20 + (n % 4) * 15)).await;
        let response = async {
            stream.get_mut().write_all(body.as_bytes()).await?;
            let (status, headers) = read_head(&mut stream)
                .await?
                .ok_or(std::io::ErrorKind::UnexpectedEof)?;
            let len: usize = header(&headers, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut rest = vec![0; len];
            stream.read_exact(&mut rest).await?;
            Ok::<_, std::io::Error>((status, headers))
        };
        let response = tokio::time::timeout(Duration::from_secs(30), response).await;
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        match response {
            Ok(Ok((204, h))) => {
                stats.acked.fetch_add(1, Ordering::SeqCst);
                stats.acked_keys.lock().expect("keys").push(key);
                if header(&h, "connection") != Some("close") {
                    conn = Some(stream);
                }
            }
            Ok(Ok((status, _))) => {
                fail(format!(
                    "client {c}: accepted request {key} answered {status}"
                ));
                return;
            }
            Ok(Err(e)) => {
                fail(format!(
                    "client {c}: accepted request {key} got no complete response: {e}"
                ));
                return;
            }
            Err(_) => {
                fail(format!(
                    "client {c}: accepted request {key}: no response within 30 s"
                ));
                return;
            }
        }
    }
}

/// Issue 7: SIGTERM while 64 connections are busy. Every request the server accepted gets a
/// complete response, nothing acknowledged is lost, and the exit code is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_accepted_request() {
    const CONNECTIONS: usize = 64;
    let mut sc = Sidecar::start(StoreKind::Redis).await;
    let addr = format!("127.0.0.1:{}", sc.port());
    let stats = Arc::new(ShutdownStats::default());
    let terminating = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            tokio::spawn(shutdown_client(
                addr.clone(),
                c,
                stats.clone(),
                terminating.clone(),
            ))
        })
        .collect();
    // Let every connection carry a few requests, then signal while most are mid-request.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.acked.load(Ordering::SeqCst) < 3 * CONNECTIONS as u64
        || stats.in_flight.load(Ordering::SeqCst) < (CONNECTIONS / 2) as i64
    {
        assert!(
            Instant::now() < deadline,
            "the load did not get going within 30 s: {:?}\n{}",
            stats.failures.lock().expect("failures"),
            sc.logs()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    terminating.store(true, Ordering::SeqCst);
    let in_flight_at_term = stats.in_flight.load(Ordering::SeqCst);
    let acked_at_term = stats.acked.load(Ordering::SeqCst);
    let term_at = Instant::now();
    // SAFETY: kill(2) on the sidecar we started; it has not been reaped.
    unsafe {
        libc::kill(sc.pid(), libc::SIGTERM);
    }
    let all = async {
        for c in clients {
            c.await.expect("client task panicked");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("clients did not finish within 60 s of SIGTERM");
    let code = tokio::task::block_in_place(|| sc.terminate(Duration::from_secs(20)));
    let exit_after = term_at.elapsed();

    let failures = stats.failures.lock().expect("failures").clone();
    let keys = stats.acked_keys.lock().expect("keys").clone();
    let redis = shared_redis();
    let lost = keys
        .iter()
        .filter(|k| !redis.exists(&sc.redis_key(k)))
        .count();
    let acked = stats.acked.load(Ordering::SeqCst);
    println!(
        "SCENARIO sigterm-under-load: SIGTERM to the sidecar (Redis store) while {CONNECTIONS} \
         keep-alive connections were saving, {in_flight_at_term} of them mid-request | requests \
         sent {}, acknowledged {acked} ({} after SIGTERM), not accepted {} (closed by the server \
         before it read the request) + {} connections refused, accepted without a complete \
         response {}, lost {lost} of {acked} acknowledged | exit code {code:?} {:.2} s after \
         SIGTERM",
        stats.sent.load(Ordering::SeqCst),
        acked - acked_at_term,
        stats.not_accepted.load(Ordering::SeqCst),
        stats.refused.load(Ordering::SeqCst),
        failures.len(),
        exit_after.as_secs_f64(),
    );
    assert!(
        failures.is_empty(),
        "{} accepted requests did not get a complete 2xx response: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        sc.logs()
    );
    assert!(
        in_flight_at_term > 0,
        "no request was in flight at SIGTERM; the test proved nothing"
    );
    assert_eq!(code, Some(0), "exit code after SIGTERM\n{}", sc.logs());
    assert_eq!(lost, 0, "acknowledged saves missing from Redis");
    let stderr = sc.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !stderr.contains("still in flight"),
        "in-flight requests must finish within the grace period\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_start_exits_zero() {
    let mut sc = Sidecar::start(StoreKind::Memory).await;
    let code = sc.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit code after SIGTERM\n{}", sc.logs());
}

fn assert_mentions(out: &str, needles: &[&str]) {
    for n in needles {
        assert!(
            out.contains(n),
            "startup error output must mention {n:?}; got:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_component_name_fails() {
    let f = Sidecar::builder()
        .file(
            "first.yaml",
            &component_yaml("twin", "state.in-memory", &[]),
        )
        .file(
            "second.yaml",
            &component_yaml("twin", "state.in-memory", &[]),
        )
        .start_expect_failure(FAIL_TIMEOUT)
        .await;
    assert_ne!(f.code, 0, "{}", f.output());
    assert_mentions(&f.stderr, &["twin"]);
    assert!(
        f.stderr.contains("first.yaml") || f.stderr.contains("second.yaml"),
        "stderr must name the file:\n{}",
        f.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_component_type_fails() {
    let f = Sidecar::builder()
        .file(
            "weird.yaml",
            &component_yaml("weirdstore", "state.bogus", &[]),
        )
        .start_expect_failure(FAIL_TIMEOUT)
        .await;
    assert_ne!(f.code, 0, "{}", f.output());
    assert_mentions(&f.stderr, &["weird.yaml", "weirdstore", "state.bogus"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_metadata_fails() {
    let host = shared_redis().addr();
    let f = Sidecar::builder()
        .file(
            "baddb.yaml",
            &component_yaml(
                "baddbstore",
                "state.redis",
                &[("redisHost", &host), ("redisDB", "abc")],
            ),
        )
        .start_expect_failure(FAIL_TIMEOUT)
        .await;
    assert_ne!(f.code, 0, "{}", f.output());
    assert_mentions(&f.stderr, &["baddb.yaml", "baddbstore", "redisDB"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefix_with_separator_fails() {
    let host = shared_redis().addr();
    let f = Sidecar::builder()
        .file(
            "pfx.yaml",
            &component_yaml(
                "pfxstore",
                "state.redis",
                &[("redisHost", &host), ("keyPrefix", "a||b")],
            ),
        )
        .start_expect_failure(FAIL_TIMEOUT)
        .await;
    assert_ne!(f.code, 0, "{}", f.output());
    assert_mentions(&f.stderr, &["pfx.yaml", "pfxstore", "keyPrefix"]);
}

/// Spec §4.2: PING failure at init is an init error (daprd exits unless ignoreErrors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_startup() {
    let port = statecar_tests::process::free_port();
    let f = Sidecar::builder()
        .file(
            "down.yaml",
            &component_yaml(
                "downstore",
                "state.redis",
                &[("redisHost", &format!("127.0.0.1:{port}"))],
            ),
        )
        .start_expect_failure(FAIL_TIMEOUT)
        .await;
    assert_ne!(f.code, 0, "{}", f.output());
    assert_mentions(&f.stderr, &["downstore"]);
}

/// `ignoreErrors: true` skips the failing component; the rest loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_errors_skips_bad_component() {
    let host = shared_redis().addr();
    let port = statecar_tests::process::free_port();
    let down = format!("127.0.0.1:{port}");
    let sc = Sidecar::builder()
        .file(
            "bad.yaml",
            &component_yaml_ext(
                "badstore",
                "state.redis",
                &[("redisHost", &host), ("redisDB", "abc")],
                &["ignoreErrors: true"],
                &[],
            ),
        )
        .file(
            "down.yaml",
            &component_yaml_ext(
                "downstore",
                "state.redis",
                &[("redisHost", &down)],
                &["ignoreErrors: true", "initTimeout: 2s"],
                &[],
            ),
        )
        .file(
            "weird.yaml",
            &component_yaml_ext("weird", "state.bogus", &[], &["ignoreErrors: true"], &[]),
        )
        .store(StoreKind::Memory)
        .start()
        .await;
    for name in ["badstore", "downstore", "weird"] {
        sc.get_path(&format!("/v1.0/state/{name}/k"))
            .await
            .expect_rich_error(400, "ERR_STATE_STORE_NOT_FOUND", "DAPR_STATE_NOT_FOUND");
    }
    sc.put("k", json!(1)).await;
    sc.assert_value("k", "1", "1").await;
    let r = sc.get_path("/v1.0/metadata").await;
    r.expect(200);
    let names: Vec<String> = r.json()["components"]
        .as_array()
        .expect("components array")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["statestore"], "{}", r.describe());
}

/// Contract: no --resources-path (and no ~/.statecar/components) => in-memory `statestore`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_in_memory_store_without_resources_path() {
    let sc = Sidecar::builder().no_resources_path().start().await;
    sc.put("k", json!("mem")).await;
    sc.assert_value("k", r#""mem""#, "1").await;
    let r = sc.get_path("/v1.0/metadata").await;
    r.expect(200);
    let comps = r.json()["components"].clone();
    assert_eq!(comps.as_array().map(Vec::len), Some(1), "{}", r.describe());
    assert_eq!(comps[0]["name"], "statestore");
    assert_eq!(comps[0]["type"], "state.in-memory");
}

/// Spec §5.2: only *.yaml/*.yml files; multi-document files; other kinds ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_directory_loading_rules() {
    let multi = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: cfg\nspec: {{}}\n---\n{}---\n{}",
        component_yaml("s1", "state.in-memory", &[]),
        store_yaml("s2", StoreKind::Redis, &[])
    );
    let sc = Sidecar::builder()
        .file("multi.yaml", &multi)
        .file("other.yml", &component_yaml("s3", "state.in-memory", &[]))
        .file("UPPER.YAML", &component_yaml("s4", "state.in-memory", &[]))
        .file("README.txt", "this is not yaml: [")
        .file(
            "ignored.json",
            &component_yaml("s5", "state.in-memory", &[]),
        )
        .start()
        .await;
    for store in ["s1", "s2", "s3", "s4"] {
        let r = sc
            .post_json(
                &format!("/v1.0/state/{store}"),
                &json!([{"key": "k", "value": store}]),
            )
            .await;
        r.expect_no_content();
        let r = sc.get_path(&format!("/v1.0/state/{store}/k")).await;
        r.expect(200);
        assert_eq!(r.text(), format!("\"{store}\""), "stores are independent");
    }
    sc.get_path("/v1.0/state/s5/k").await.expect_rich_error(
        400,
        "ERR_STATE_STORE_NOT_FOUND",
        "DAPR_STATE_NOT_FOUND",
    );
    sc.get_path("/v1.0/state/cfg/k").await.expect_rich_error(
        400,
        "ERR_STATE_STORE_NOT_FOUND",
        "DAPR_STATE_NOT_FOUND",
    );
}

/// Spec §5.1: `scopes` limits which app ids load a component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_components() {
    let sc = Sidecar::builder()
        .app_id("scoped-app")
        .file(
            "mine.yaml",
            &component_yaml_ext(
                "mine",
                "state.in-memory",
                &[],
                &[],
                &["scopes:", "- scoped-app"],
            ),
        )
        .file(
            "theirs.yaml",
            &component_yaml_ext(
                "theirs",
                "state.in-memory",
                &[],
                &[],
                &["scopes:", "- other-app"],
            ),
        )
        .start()
        .await;
    sc.get_path("/v1.0/state/mine/k").await.expect_no_content();
    sc.get_path("/v1.0/state/theirs/k").await.expect_rich_error(
        400,
        "ERR_STATE_STORE_NOT_FOUND",
        "DAPR_STATE_NOT_FOUND",
    );
}
