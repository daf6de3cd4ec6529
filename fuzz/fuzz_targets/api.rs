//! The whole request path of the state API, in process: URI and header parsing (the `http`
//! crate, as hyper does it), path normalisation, routing, path and query decoding, body
//! decoding and the handlers, over an in-memory store.
//!
//! An input is up to four requests separated by a line `===`, each written as
//!
//! ```text
//! METHOD /path?query
//! header: value
//!
//! body
//! ```
//!
//! so that the corpus is readable and the fuzzer can combine a save with a later read.
//! Checked for every response: no panic, no 5xx but the documented ones (the unsupported query
//! API, the health endpoints), errors are JSON with a string `errorCode` and `message`, a 204
//! has no body.

#![no_main]

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use statecar::api::{self, ApiConfig, AppState};
use statecar::components::{KeyPrefix, Registry, StoreEntry, Stores};
use statecar::store::MemoryStore;
use tower::ServiceExt;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
});

const MAX_REQUESTS: usize = 4;

/// The 500s Dapr documents for requests that reach a healthy in-memory store: the query API
/// it does not support, and the health endpoints' answers.
const DOCUMENTED_500: &[&str] = &[
    "ERR_STATE_STORE_NOT_SUPPORTED",
    "ERR_HEALTH_APPID_NOT_MATCH",
    "ERR_HEALTH_NOT_READY",
    "ERR_OUTBOUND_HEALTH_NOT_READY",
];

fn parse_request(text: &[u8]) -> Option<Request<Body>> {
    let split = text.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&text[..i], &text[i + 2..]),
        None => (text, &b""[..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n');
    let (method, target) = lines.next()?.split_once(' ')?;
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let uri: Uri = target.parse().ok()?;
    uri.path_and_query()?;
    let mut req = Request::builder().method(method).uri(uri);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) else {
            continue;
        };
        req = req.header(name, value);
    }
    req.body(Body::from(body.to_vec())).ok()
}

/// The API router, behind the server's path checks, over a fresh in-memory store.
fn router() -> api::Gate {
    // Made outside the runtime, so the store starts no expiry task.
    let entry = StoreEntry {
        name: "statestore".into(),
        component_type: "state.in-memory".into(),
        version: "v1".into(),
        store: MemoryStore::new(),
        prefix: KeyPrefix::resolve("", "statestore", "fuzzapp", None),
        default_ttl: None,
    };
    let registry = Arc::new(Registry::new(Stores::new([entry])));
    let state = Arc::new(AppState::new(registry, "fuzzapp".into(), None));
    let config = ApiConfig {
        max_body_size: 64 << 10,
        api_token: None,
    };
    api::router(state, &config)
}

fn check(what: &str, status: u16, content_type: Option<&str>, body: &[u8]) {
    let json = content_type == Some("application/json");
    match status {
        204 => assert!(body.is_empty(), "{what}: 204 with a body"),
        200..=299 => assert!(json, "{what}: {status} without application/json"),
        _ => {
            assert!(json, "{what}: error {status} is not JSON: {body:?}");
            let v: Value = serde_json::from_slice(body)
                .unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {body:?}"));
            let code = v["errorCode"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: no errorCode in {v}"));
            assert!(v["message"].is_string(), "{what}: no message in {v}");
            assert!(
                status < 500 || DOCUMENTED_500.contains(&code),
                "{what}: {status} {v}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let service = router();
    let mut rest = data;
    for _ in 0..MAX_REQUESTS {
        let (this, next) = match rest.windows(5).position(|w| w == b"\n===\n") {
            Some(i) => (&rest[..i], Some(&rest[i + 5..])),
            None => (rest, None),
        };
        if let Some(req) = parse_request(this) {
            let what = format!("{} {}", req.method(), req.uri());
            RUNTIME.block_on(async {
                let resp = service.clone().oneshot(req).await.expect("infallible");
                let status = resp.status().as_u16();
                let ct = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .expect("response body")
                    .to_bytes();
                check(&what, status, ct.as_deref(), &body);
            });
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
});
