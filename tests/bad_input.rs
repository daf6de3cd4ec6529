//! Bad input: random requests over the HTTP API (proptest), bodies over the limit, slow and
//! idle connections, and hostile component files. The sidecar must answer every input error
//! with a documented status and a JSON error, never a 5xx, never panic, and keep its memory
//! bounded.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};
use statecar_tests::process::free_port;
use statecar_tests::procfs::{self, mib, mib_delta};
use statecar_tests::{Sidecar, StoreKind, component_yaml, esc, shared_redis, statecar_bin};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Property test over the HTTP API
// ---------------------------------------------------------------------------------------------

/// Every errorCode the state API documents (spec §1.7, health and routing).
const ERROR_CODES: &[&str] = &[
    "ERR_MALFORMED_REQUEST",
    "ERR_STATE_SAVE",
    "ERR_STATE_GET",
    "ERR_STATE_DELETE",
    "ERR_STATE_BULK_GET",
    "ERR_STATE_TRANSACTION",
    "ERR_NOT_SUPPORTED_STATE_OPERATION",
    "ERR_STATE_STORE_NOT_FOUND",
    "ERR_DIRECT_INVOKE",
];

#[derive(Debug, Clone)]
struct ApiRequest {
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        ".{0,12}".prop_map(Value::String),
        Just(json!("")),
        Just(json!("7")),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names: the real ones (in several cases) and anything else.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "key", "value", "etag", "metadata", "options", "concurrency", "consistency", "keys",
            "parallelism", "operations", "operation", "request", "KEY", "Value", "ETag",
            "ttlInSeconds", "contentType",
        ])
        .prop_map(str::to_string),
        1 => ".{0,8}",
    ]
}

/// Keys: unicode, separators, escapes, empty, 10 kB, and the route words.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => ".{0,16}",
        1 => Just(String::new()),
        1 => "[a-z]{0,4}\\|\\|[a-z]{0,4}",
        2 => "[a-z/%+ .2F]{1,12}",
        1 => Just("%2F".to_string()),
        1 => Just("a%2Fb".to_string()),
        1 => Just("k".repeat(10_000)),
        1 => prop::collection::vec(any::<char>(), 2_500..2_600)
            .prop_map(|v| v.into_iter().collect::<String>()),
        1 => prop::sample::select(vec!["bulk", "transaction", "query", ".", ".."])
            .prop_map(str::to_string),
    ]
}

/// A path segment for `key`: query-escaped (as clients do), or nearly raw so that `/`, `%`
/// and `+` reach the server as typed.
fn segment() -> impl Strategy<Value = String> {
    (key(), any::<bool>()).prop_map(|(k, escaped)| {
        if escaped {
            esc(&k)
        } else {
            k.replace('%', "%25")
                .replace("%252F", "%2F")
                .replace('?', "%3F")
                .replace('#', "%23")
                .replace(|c: char| c.is_control(), "")
        }
    })
}

fn option_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "first-write",
            "last-write",
            "strong",
            "eventual",
            "",
            "First-Write",
            "weak",
        ])
        .prop_map(|s| json!(s)),
        json_value(),
    ]
}

/// One item of a save body (or a transaction request): each field absent, right or wrong.
fn item() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![3 => key().prop_map(Value::String), 1 => json_value()]),
        prop::option::of(json_value()),
        prop::option::of(prop_oneof![
            "[0-9]{0,3}".prop_map(Value::String),
            any::<i64>().prop_map(|n| json!(n)),
            json_value(),
        ]),
        prop::option::of(prop_oneof![
            prop::collection::btree_map(
                prop::sample::select(vec!["ttlInSeconds", "contentType", "x"])
                    .prop_map(str::to_string),
                prop_oneof![
                    "-?[0-9]{0,4}".prop_map(Value::String),
                    Just(json!("foo")),
                    json_value()
                ],
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
            json_value(),
        ]),
        prop::option::of(prop_oneof![
            (option_value(), option_value())
                .prop_map(|(c, s)| json!({"concurrency": c, "consistency": s})),
            json_value(),
        ]),
    )
        .prop_map(|(k, v, e, m, o)| {
            let mut obj = serde_json::Map::new();
            for (name, field) in [
                ("key", k),
                ("value", v),
                ("etag", e),
                ("metadata", m),
                ("options", o),
            ] {
                if let Some(f) = field {
                    obj.insert(name.to_string(), f);
                }
            }
            Value::Object(obj)
        })
}

fn save_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(item(), 0..4).prop_map(|v| Value::Array(v).to_string().into_bytes()),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => raw_body(),
    ]
}

fn bulk_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (
            prop_oneof![
                3 => prop::collection::vec(key(), 0..5).prop_map(|k| json!(k)),
                1 => json_value()
            ],
            prop::option::of(json_value()),
            prop::option::of(json_value()),
        )
            .prop_map(|(keys, par, md)| {
                let mut o = json!({"keys": keys});
                if let Some(p) = par {
                    o["parallelism"] = p;
                }
                if let Some(m) = md {
                    o["metadata"] = m;
                }
                o.to_string().into_bytes()
            }),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => raw_body(),
    ]
}

fn transaction_body() -> impl Strategy<Value = Vec<u8>> {
    let op = (
        prop_oneof![
            3 => prop::sample::select(vec!["upsert", "delete", "Upsert", "merge", ""])
                .prop_map(|s| json!(s)),
            1 => json_value()
        ],
        prop::option::of(prop_oneof![3 => item(), 1 => json_value()]),
    )
        .prop_map(|(operation, request)| {
            let mut o = json!({"operation": operation});
            if let Some(r) = request {
                o["request"] = r;
            }
            o
        });
    prop_oneof![
        3 => (
            prop_oneof![
                3 => prop::collection::vec(op, 0..4).prop_map(Value::Array),
                1 => json_value()
            ],
            prop::option::of(json_value()),
        )
            .prop_map(|(ops, md)| {
                let mut o = json!({"operations": ops});
                if let Some(m) = md {
                    o["metadata"] = m;
                }
                o.to_string().into_bytes()
            }),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => raw_body(),
    ]
}

/// Bytes that are not JSON, or JSON cut short.
fn raw_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (json_value(), any::<prop::sample::Index>()).prop_map(|(v, i)| {
            let s = v.to_string().into_bytes();
            let cut = i.index(s.len() + 1);
            s[..cut].to_vec()
        }),
        Just(b"[{\"key\":\"k\",\"value\":1},]".to_vec()),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        prop::sample::select(vec![
            "60",
            "-1",
            "0",
            "foo",
            "first-write",
            "last-write",
            "strong",
            "eventual",
            "",
            "1e3",
        ])
        .prop_map(str::to_string),
        ".{0,6}",
    ];
    prop::collection::vec(
        (
            prop::sample::select(vec![
                "metadata.ttlInSeconds",
                "metadata.contentType",
                "concurrency",
                "consistency",
                "other",
            ]),
            value,
        ),
        0..3,
    )
    .prop_map(|pairs| {
        let q: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", esc(v)))
            .collect();
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    })
}

fn store_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("statestore".to_string()),
        3 => Just("redisstore".to_string()),
        1 => Just("nostore".to_string()),
        1 => ".{0,6}".prop_map(|s| esc(&s)),
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{0,3}",
        prop::sample::select(vec!["first-write", "strong", "bogus", ""]).prop_map(str::to_string),
        "[ -~]{0,12}",
    ]
}

fn api_request() -> impl Strategy<Value = ApiRequest> {
    let save = (
        prop::sample::select(vec![Method::POST, Method::PUT]),
        store_name(),
        query(),
        save_body(),
    )
        .prop_map(|(method, store, q, body)| ApiRequest {
            method,
            path: format!("/v1.0/state/{store}{q}"),
            headers: vec![],
            body,
        });
    let by_key = (
        prop::sample::select(vec![
            Method::GET,
            Method::DELETE,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::OPTIONS,
        ]),
        store_name(),
        segment(),
        query(),
        prop::option::of(header_value()),
        prop::option::of(header_value()),
        raw_body(),
    )
        .prop_map(|(method, store, key, q, if_match, conc, body)| {
            let mut headers = vec![];
            if let Some(v) = if_match {
                headers.push(("if-match".to_string(), v));
            }
            if let Some(v) = conc {
                headers.push(("concurrency".to_string(), v));
            }
            ApiRequest {
                method,
                path: format!("/v1.0/state/{store}/{key}{q}"),
                headers,
                body,
            }
        });
    let bulk = (
        prop::sample::select(vec![Method::POST, Method::PUT]),
        store_name(),
        query(),
        bulk_body(),
    )
        .prop_map(|(method, store, q, body)| ApiRequest {
            method,
            path: format!("/v1.0/state/{store}/bulk{q}"),
            headers: vec![],
            body,
        });
    let transaction = (
        prop::sample::select(vec![Method::POST, Method::PUT]),
        store_name(),
        query(),
        transaction_body(),
    )
        .prop_map(|(method, store, q, body)| ApiRequest {
            method,
            path: format!("/v1.0/state/{store}/transaction{q}"),
            headers: vec![],
            body,
        });
    prop_oneof![3 => save, 3 => by_key, 2 => bulk, 2 => transaction]
}

/// Checks one response against the contract: documented status, JSON errors, no 5xx.
fn check_response(
    req: &ApiRequest,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(), String> {
    let what = format!(
        "{} {}",
        req.method,
        &req.path[..req.path.floor_char_boundary(200)]
    );
    let json_ct = content_type.is_some_and(|c| c.starts_with("application/json"));
    match status {
        204 => {
            if !body.is_empty() {
                return Err(format!("{what}: 204 with a body"));
            }
            Ok(())
        }
        200 => {
            if !json_ct {
                return Err(format!("{what}: 200 without application/json"));
            }
            Ok(())
        }
        400 | 404 | 409 => {
            if !json_ct {
                return Err(format!(
                    "{what}: {status} is not JSON ({content_type:?}): {:?}",
                    String::from_utf8_lossy(body)
                ));
            }
            let v: Value = serde_json::from_slice(body).map_err(|e| {
                format!(
                    "{what}: error body is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(body)
                )
            })?;
            let code = v["errorCode"].as_str().unwrap_or_default();
            if !ERROR_CODES.contains(&code) || !v["message"].is_string() {
                return Err(format!(
                    "{what}: {status} with an undocumented error body {v}"
                ));
            }
            if status == 409
                && ![
                    "ERR_STATE_SAVE",
                    "ERR_STATE_DELETE",
                    "ERR_STATE_TRANSACTION",
                ]
                .contains(&code)
            {
                return Err(format!("{what}: 409 with {code}"));
            }
            Ok(())
        }
        _ => Err(format!(
            "{what}: undocumented status {status} (input errors must be 4xx): {:?}",
            String::from_utf8_lossy(body)
        )),
    }
}

/// Random requests (save, get, delete, bulk, transaction; keys with unicode, `%2F`, `||`,
/// empty, 10 kB; random JSON bodies with wrong types) against the real binary with an
/// in-memory store and a Redis store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_get_documented_answers() {
    let redis_host = shared_redis().addr();
    let mut sc = Sidecar::builder()
        .store(StoreKind::Memory)
        .file(
            "redis.yaml",
            &component_yaml("redisstore", "state.redis", &[("redisHost", &redis_host)]),
        )
        .start()
        .await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let base = sc.base_url().to_string();
    let handle = tokio::runtime::Handle::current();
    let started = Instant::now();
    let statuses: std::cell::RefCell<BTreeMap<u16, u32>> = Default::default();
    let mut runner = TestRunner::new(Config {
        cases: 1500,
        failure_persistence: None,
        max_shrink_iters: 300,
        ..Config::default()
    });
    let result = tokio::task::block_in_place(|| {
        runner.run(&api_request(), |req| {
            let (status, ct, body) = handle.block_on(async {
                let mut rb = client
                    .request(req.method.clone(), format!("{base}{}", req.path))
                    .body(req.body.clone());
                for (k, v) in &req.headers {
                    rb = rb.header(k, v);
                }
                let r = rb.send().await.map_err(|e| {
                    TestCaseError::fail(format!("{} {}: {e}", req.method, req.path))
                })?;
                let status = r.status().as_u16();
                let ct = r
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = r
                    .bytes()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                Ok::<_, TestCaseError>((status, ct, body))
            })?;
            *statuses.borrow_mut().entry(status).or_default() += 1;
            check_response(&req, status, ct.as_deref(), &body).map_err(TestCaseError::fail)
        })
    });
    let statuses = statuses.into_inner();
    println!(
        "BAD-INPUT proptest: {} requests in {:.1} s, statuses {statuses:?}",
        runner_cases(&statuses),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{e}\n{}", sc.logs());
    }
    assert!(sc.is_running(), "the sidecar died\n{}", sc.logs());
    sc.get_path("/v1.0/healthz").await.expect(204);
    let stderr = sc.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn runner_cases(statuses: &BTreeMap<u16, u32>) -> u32 {
    statuses.values().sum()
}

// ---------------------------------------------------------------------------------------------
// Bodies over --max-body-size
// ---------------------------------------------------------------------------------------------

const HUGE: usize = 64 << 20;

/// Sends a 64 MiB save body (with Content-Length, or chunked) to a sidecar whose limit is the
/// default 4 MiB. The answer must come before the body is through, as a 400
/// ERR_MALFORMED_REQUEST (or 413), and the sidecar's peak memory must stay far below the body.
async fn oversized_body(chunked: bool) {
    let mut sc = Sidecar::start(StoreKind::Memory).await;
    sc.put("warm", json!(1)).await;
    let before = procfs::status(sc.pid());
    let stream = TcpStream::connect(("127.0.0.1", sc.port()))
        .await
        .expect("connect");
    let (read_half, mut write_half) = stream.into_split();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {HUGE}")
    };
    let head = format!(
        "POST /v1.0/state/statestore HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n"
    );
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let w = written.clone();
    let writer = tokio::spawn(async move {
        write_half.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0;
        write_half
            .write_all(b"[{\"key\":\"big\",\"value\":\"")
            .await?;
        while sent < HUGE {
            if chunked {
                write_half
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
            }
            write_half.write_all(&chunk).await?;
            if chunked {
                write_half.write_all(b"\r\n").await?;
            }
            sent += chunk.len();
            w.store(sent, std::sync::atomic::Ordering::Relaxed);
        }
        Ok::<_, std::io::Error>(())
    });
    let mut reader = BufReader::new(read_half);
    let mut conn = ReadOnly(&mut reader);
    let response = tokio::time::timeout(Duration::from_secs(60), conn.response()).await;
    let sent_when_answered = written.load(std::sync::atomic::Ordering::Relaxed);
    writer.abort();
    let (status, body) = response
        .expect("no answer within 60 s")
        .unwrap_or_else(|e| panic!("no response to the oversized body: {e}\n{}", sc.logs()));
    let after = procfs::status(sc.pid());
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    println!(
        "BAD-INPUT oversized body ({}): answered {status} {} after {} of {} MiB were written; \
         sidecar RSS {} before, peak {} ({})",
        if chunked { "chunked" } else { "Content-Length" },
        v["errorCode"],
        sent_when_answered >> 20,
        HUGE >> 20,
        mib(before.rss),
        mib(after.peak_rss),
        mib_delta(after.peak_rss, before.rss),
    );
    assert!(
        (status == 400 && v["errorCode"] == "ERR_MALFORMED_REQUEST") || status == 413,
        "an oversized body must get 400 ERR_MALFORMED_REQUEST or 413, got {status} {v}"
    );
    assert!(
        sent_when_answered < HUGE,
        "the answer came only after the whole body was written"
    );
    assert!(
        after.peak_rss < before.rss + (24 << 20),
        "the sidecar's memory peaked at {} (from {}) for a body it refuses",
        mib(after.peak_rss),
        mib(before.rss)
    );
    sc.get_path("/v1.0/healthz").await.expect(204);
    assert!(sc.is_running());
    assert!(!sc.stderr().contains("panicked"), "{}", sc.stderr());
}

/// A reader for the response of a request still being written.
struct ReadOnly<'a>(&'a mut BufReader<tokio::net::tcp::OwnedReadHalf>);

impl ReadOnly<'_> {
    async fn response(&mut self) -> std::io::Result<(u16, Vec<u8>)> {
        let mut line = String::new();
        if self.0.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0;
        loop {
            let mut h = String::new();
            if self.0.read_line(&mut h).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        self.0.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_with_content_length() {
    oversized_body(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_chunked_body() {
    oversized_body(true).await;
}

// ---------------------------------------------------------------------------------------------
// Slow and idle connections
// ---------------------------------------------------------------------------------------------

/// Slowloris: a request head trickled one byte per second. The connection is closed once the
/// header timeout (`--http-header-timeout`, here 2 s) has passed since the server began
/// waiting for the head, however steadily bytes keep coming; other clients are served
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off_at_the_header_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let sc = Sidecar::builder()
        .store(StoreKind::Memory)
        .arg("--http-header-timeout")
        .arg("2s")
        .start()
        .await;
    let connected = Instant::now();
    let stream = TcpStream::connect(("127.0.0.1", sc.port()))
        .await
        .expect("connect");
    let (mut read_half, mut write_half) = stream.into_split();
    let head = b"GET /v1.0/healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let trickle = tokio::spawn(async move {
        for b in head {
            if write_half.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    // Others are served while the slow client trickles.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sc.get_path("/v1.0/healthz").await.expect(204);
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(20), read_half.read(&mut buf)).await;
    let closed_after = connected.elapsed();
    trickle.abort();
    let n = read
        .expect("the slow connection was not closed within 20 s")
        .unwrap_or(0);
    println!(
        "BAD-INPUT slowloris: head trickled at 1 byte/s; connection closed after {:.2} s \
         (--http-header-timeout {TIMEOUT:?}), {} bytes of response",
        closed_after.as_secs_f64(),
        n
    );
    assert_eq!(n, 0, "the slow request must get no response, only a close");
    assert!(
        closed_after >= TIMEOUT - Duration::from_millis(200)
            && closed_after <= TIMEOUT + Duration::from_secs(3),
        "closed after {closed_after:?}, expected about {TIMEOUT:?}"
    );
}

/// 10,000 idle connections: the sidecar's memory grows by a bounded amount, it keeps serving,
/// and it closes them itself once the default header timeout (10 s) has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections() {
    const CONNECTIONS: usize = 10_000;
    let limit = procfs::raise_nofile(CONNECTIONS as u64 + 2_000);
    assert!(
        limit >= CONNECTIONS as u64 + 2_000,
        "this test needs {} open files (ulimit -n), the limit is {limit} and could not be raised",
        CONNECTIONS + 2_000
    );
    // Started after raising the limit, so the sidecar inherits it.
    let mut sc = Sidecar::start(StoreKind::Memory).await;
    let pid = sc.pid();
    sc.put("k", json!(1)).await;
    let before = procfs::status(pid);
    let fds_before = procfs::open_fds(pid);
    let opened = Instant::now();
    let mut conns = Vec::with_capacity(CONNECTIONS);
    let port = sc.port();
    while conns.len() < CONNECTIONS {
        let batch = (CONNECTIONS - conns.len()).min(500);
        let connects = (0..batch).map(|_| TcpStream::connect(("127.0.0.1", port)));
        for c in futures::future::join_all(connects).await {
            conns.push(c.expect("connect"));
        }
    }
    let open_time = opened.elapsed();
    // Wait until the sidecar has accepted them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    while procfs::open_fds(pid) < fds_before + CONNECTIONS {
        assert!(
            Instant::now() < deadline,
            "the sidecar accepted only {} of {CONNECTIONS} connections within 30 s",
            procfs::open_fds(pid).saturating_sub(fds_before)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let loaded = procfs::status(pid);
    // Still serving, promptly.
    let t = Instant::now();
    sc.get("k").await.expect(200);
    let serve_time = t.elapsed();
    let growth = loaded.rss.saturating_sub(before.rss);
    // The server closes idle connections after the header timeout.
    let deadline = Instant::now() + Duration::from_secs(40);
    while procfs::open_fds(pid) > fds_before + 10 {
        assert!(
            Instant::now() < deadline,
            "{} idle connections still open {:?} after they were opened",
            procfs::open_fds(pid).saturating_sub(fds_before),
            opened.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed_after = opened.elapsed();
    drop(conns);
    let after = procfs::status(pid);
    println!(
        "BAD-INPUT idle connections: {CONNECTIONS} opened in {:.1} s; sidecar RSS {} -> {} \
         ({}, {} bytes per connection), threads {} -> {}; a GET meanwhile took {} ms; the \
         sidecar closed them all {:.1} s after they were opened (default --http-header-timeout \
         10s); RSS afterwards {}",
        open_time.as_secs_f64(),
        mib(before.rss),
        mib(loaded.rss),
        mib_delta(loaded.rss, before.rss),
        growth / CONNECTIONS as u64,
        before.threads,
        loaded.threads,
        serve_time.as_millis(),
        closed_after.as_secs_f64(),
        mib(after.rss),
    );
    assert!(
        growth < 40 << 20,
        "10k idle connections grew the sidecar by {}",
        mib(growth)
    );
    assert!(
        serve_time < Duration::from_secs(2),
        "a GET took {serve_time:?}"
    );
    assert!(
        closed_after >= Duration::from_secs(9),
        "idle connections closed after only {closed_after:?}"
    );
    assert!(sc.is_running());
    assert!(!sc.stderr().contains("panicked"), "{}", sc.stderr());
}

// ---------------------------------------------------------------------------------------------
// Hostile component files
// ---------------------------------------------------------------------------------------------

struct Outcome {
    code: i32,
    stderr: String,
    elapsed: Duration,
    max_rss: u64,
}

/// Runs a command and prints `<exit code> <peak RSS in KiB> <seconds>`. The peak is that of the
/// command alone (RUSAGE_CHILDREN of this small process): the rusage of a child of the test
/// process itself would count the test process's own memory, which fork copies.
const MEASURE: &str = r#"
import resource, subprocess, sys, time
start = time.monotonic()
try:
    p = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, timeout=20)
    code = p.returncode if p.returncode >= 0 else 128 - p.returncode
except subprocess.TimeoutExpired:
    code = -1
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.monotonic() - start)
"#;

/// Starts the sidecar on a resources directory holding `file` and waits (20 s at most) for it
/// to exit; returns its exit code (-1: still running after 20 s), stderr, run time and peak
/// memory.
fn start_with_file(name: &str, content: &[u8]) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let resources = dir.path().join("components");
    std::fs::create_dir_all(&resources).expect("mkdir");
    std::fs::write(resources.join(name), content).expect("write component file");
    let stderr_path = dir.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let out = Command::new("python3")
        .arg("-c")
        .arg(MEASURE)
        .arg(statecar_bin())
        .args(["--app-id", "hostile", "--dapr-http-port"])
        .arg(free_port().to_string())
        .arg("--resources-path")
        .arg(&resources)
        .env("HOME", dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(stderr)
        .output()
        .expect("running python3 (needed to measure the peak memory of the sidecar)");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let mut fields = report.split_whitespace();
    let mut next = || fields.next().unwrap_or_default().to_string();
    let (code, rss_kib, secs) = (next(), next(), next());
    let mut stderr = String::new();
    std::fs::File::open(&stderr_path)
        .and_then(|mut f| f.read_to_string(&mut stderr))
        .expect("reading stderr");
    Outcome {
        code: code
            .parse()
            .unwrap_or_else(|_| panic!("measuring {name}: {report:?}\n{stderr}")),
        stderr,
        elapsed: Duration::from_secs_f64(secs.parse().unwrap_or(f64::MAX)),
        max_rss: rss_kib.parse::<u64>().unwrap_or(u64::MAX) * 1024,
    }
}

const HEAD: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.in-memory\n  version: v1\n";

fn hostile_files() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut laughs = format!(
        "{HEAD}  extra:\n    a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
    );
    for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
        let refs = vec![format!("*{prev}"); 9].join(",");
        laughs.push_str(&format!("    {name}: &{name} [{refs}]\n"));
    }
    let n = 50_000;
    let quadratic = format!(
        "{HEAD}  extra:\n    x: &x [{}]\n    y: [{}]\n",
        vec!["1"; n].join(","),
        vec!["*x"; n].join(",")
    );
    let big_string = format!(
        "{HEAD}  metadata:\n  - name: keyPrefix\n    value: \"{}\"\n",
        "x".repeat(50_000_000)
    );
    let deep_flow = format!(
        "{HEAD}  extra: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let deep_block = format!("{HEAD}  extra:\n    {}x\n", "- ".repeat(100_000));
    let many_docs = format!("{HEAD}---\n").repeat(20_000);
    vec![
        (
            "laughs.yaml",
            "billion laughs (9 levels of 9 aliases)",
            laughs.into_bytes(),
        ),
        (
            "quadratic.yaml",
            "one 50,000-item anchor referenced 50,000 times",
            quadratic.into_bytes(),
        ),
        ("huge.yaml", "a 50 MB value", big_string.into_bytes()),
        (
            "deepflow.yaml",
            "100,000 nested flow sequences",
            deep_flow.into_bytes(),
        ),
        (
            "deepblock.yaml",
            "100,000 nested block sequences",
            deep_block.into_bytes(),
        ),
        (
            "manydocs.yaml",
            "20,000 documents defining one name",
            many_docs.into_bytes(),
        ),
        (
            "binary.yaml",
            "bytes that are not UTF-8",
            vec![0xff, 0xfe, b'a', b':', 0x80],
        ),
    ]
}

/// Hostile component files make the sidecar exit non-zero with a message naming the file,
/// quickly and without much memory.
#[test]
fn hostile_component_files_fail_cleanly() {
    for (name, what, content) in hostile_files() {
        let size = content.len();
        let out = start_with_file(name, &content);
        let first_error = out
            .stderr
            .lines()
            .find(|l| l.contains("ERROR"))
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect::<String>();
        println!(
            "BAD-INPUT component file {name} ({what}, {size} bytes): exit {} after {} ms, peak \
             RSS {}: {first_error}",
            out.code,
            out.elapsed.as_millis(),
            mib(out.max_rss)
        );
        assert!(
            out.code > 0,
            "{name}: the sidecar must refuse it and exit (exit {})\n{}",
            out.code,
            out.stderr
        );
        assert!(
            out.stderr.contains(name),
            "{name}: the error must name the file\n{}",
            out.stderr
        );
        assert!(
            out.elapsed < Duration::from_secs(5),
            "{name}: took {:?} to fail",
            out.elapsed
        );
        assert!(
            out.max_rss < 128 << 20,
            "{name}: peak memory {}",
            mib(out.max_rss)
        );
        assert!(!out.stderr.contains("panicked"), "{name}\n{}", out.stderr);
    }
}

/// The limits leave ordinary files alone: a component file just under the size limit, with
/// an anchor and an alias used as people do, loads and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_component_files_still_load() {
    let padding = format!("# {}\n", "p".repeat(1000)).repeat(900);
    let text = format!(
        "{padding}meta: &meta\n  - name: keyPrefix\n    value: name\n---\napiVersion: \
         dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: \
         state.in-memory\n  version: v1\n  metadata:\n  - name: keyPrefix\n    value: none\n"
    );
    assert!(text.len() < 1 << 20 && text.len() > 900_000);
    let sc = Sidecar::builder().file("ok.yaml", &text).start().await;
    sc.put("k", json!(1)).await;
    sc.assert_value("k", "1", "1").await;
}
