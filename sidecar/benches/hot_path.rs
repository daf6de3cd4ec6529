//! Micro-benchmarks of the request path, so that a regression shows up in review: parsing the
//! request bodies, prefixing keys, building the GET and bulk answers, and whole requests through
//! the router against the in-memory store (no sockets). The end-to-end figures against Redis
//! and webdis come from bench/run.sh.
//!
//! `cargo bench -p sidecar --bench hot_path` (add `-- parse` to run one group).

use std::hint::black_box;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use statecar::api::{self, ApiConfig, AppState, body, state};
use statecar::components::{KeyPrefix, Registry, StoreEntry, Stores};
use statecar::store::{Item, MemoryStore, StoreError};
use tower::Service;

/// The 100-byte JSON value bench/run.sh stores under key number `n`.
fn value(n: usize) -> String {
    let head = format!(r#"{{"id":"key-{n:04}","pad":""#);
    format!("{head}{}\"}}", "x".repeat(100 - head.len() - 2))
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key-{i:04}")).collect()
}

fn parsing(c: &mut Criterion) {
    let save = format!(r#"[{{"key":"key-0042","value":{}}}]"#, value(42));
    let save_etag = format!(
        r#"[{{"key":"key-0042","value":{},"etag":"17","options":{{"concurrency":"first-write"}}}}]"#,
        value(42)
    );
    let bulk = serde_json::json!({ "keys": keys(10) }).to_string();
    let tx = format!(
        r#"{{"operations":[{{"operation":"upsert","request":{{"key":"a","value":{}}}}},
            {{"operation":"upsert","request":{{"key":"b","value":{}}}}}]}}"#,
        value(1),
        value(2)
    );
    let mut g = c.benchmark_group("parse");
    g.bench_function("save, 1 item", |b| {
        b.iter(|| body::parse_save(black_box(save.as_bytes())).map(|v| v.len()))
    });
    g.bench_function("save, 1 item, etag + first-write", |b| {
        b.iter(|| body::parse_save(black_box(save_etag.as_bytes())).map(|v| v.len()))
    });
    g.bench_function("bulk get, 10 keys", |b| {
        b.iter(|| body::parse_bulk(black_box(bulk.as_bytes())).map(|v| v.keys.len()))
    });
    g.bench_function("transaction, 2 upserts", |b| {
        b.iter(|| body::parse_transaction(black_box(tx.as_bytes())).map(|v| v.operations.len()))
    });
    g.finish();
}

fn prefixing(c: &mut Criterion) {
    let app = KeyPrefix::resolve("appid", "statestore", "myapp", None);
    let none = KeyPrefix::resolve("none", "statestore", "myapp", None);
    let mut g = c.benchmark_group("key prefix");
    g.bench_function("appid", |b| b.iter(|| app.apply(black_box("key-0042"))));
    g.bench_function("none", |b| b.iter(|| none.apply(black_box("key-0042"))));
    g.finish();
}

fn item(n: usize) -> Item {
    Item {
        data: Bytes::from(value(n)),
        etag: Some("17".to_string()),
        expires_at: None,
    }
}

fn responses(c: &mut Criterion) {
    let one = item(42);
    let keys = keys(10);
    let results: Vec<Result<Option<Item>, StoreError>> =
        (0..keys.len()).map(|n| Ok(Some(item(n)))).collect();
    let mut g = c.benchmark_group("response");
    g.bench_function("GET", |b| {
        b.iter(|| state::get_response(black_box(one.clone())).status())
    });
    g.bench_function("bulk get, 10 keys", |b| {
        b.iter(|| state::bulk_body(black_box(&keys), black_box(&results)).map(|v| v.len()))
    });
    g.finish();
}

/// Whole requests through the router (extractors, store lookup, prefixing, the in-memory
/// store, the answer), without sockets.
fn router(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let entry = StoreEntry {
        name: "statestore".to_string(),
        component_type: "state.in-memory".to_string(),
        version: "v1".to_string(),
        store: MemoryStore::new(),
        prefix: KeyPrefix::resolve("appid", "statestore", "bench", None),
        default_ttl: None,
    };
    let registry = Arc::new(Registry::new(Stores::new([entry])));
    let app = Arc::new(AppState::new(registry, "bench".to_string(), None));
    let config = ApiConfig {
        max_body_size: 4 << 20,
        api_token: None,
    };
    let router = api::router(app, &config);
    let save = format!(r#"[{{"key":"key-0042","value":{}}}]"#, value(42));
    let bulk = serde_json::json!({ "keys": keys(10) }).to_string();
    let send = |req: Request<Body>| {
        let mut r = router.clone();
        rt.block_on(r.call(req)).map(|res| res.status())
    };
    let post = |path: &str, body: &str| {
        Request::post(path)
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    for n in 0..10 {
        let body = format!(r#"[{{"key":"key-{n:04}","value":{}}}]"#, value(n));
        assert_eq!(
            send(post("/v1.0/state/statestore", &body)).ok(),
            Some(StatusCode::NO_CONTENT)
        );
    }
    let mut g = c.benchmark_group("router, in-memory store");
    g.bench_function("GET", |b| {
        b.iter(|| {
            send(
                Request::get("/v1.0/state/statestore/key-0001")
                    .body(Body::empty())
                    .expect("request"),
            )
        })
    });
    g.bench_function("SAVE one item", |b| {
        b.iter(|| send(post("/v1.0/state/statestore", &save)))
    });
    g.bench_function("bulk get, 10 keys", |b| {
        b.iter(|| send(post("/v1.0/state/statestore/bulk", &bulk)))
    });
    g.finish();
}

criterion_group!(benches, parsing, prefixing, responses, router);
criterion_main!(benches);
