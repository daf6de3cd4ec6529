//! Optimistic concurrency under contention: 20 clients x 25 increments of one counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use statecar_tests::{STORE, Sidecar, StoreKind, key_path, store_path, store_tests};

store_tests!(
    concurrent_first_write_increments_are_exact,
    parallel_independent_keys,
    concurrent_transactions_are_atomic,
);

const CLIENTS: u64 = 20;
const INCREMENTS: u64 = 25;
const MAX_ATTEMPTS: u64 = 10_000;

async fn save_status(sc: &Sidecar, body: serde_json::Value) -> u16 {
    let r = sc
        .send(
            sc.request(Method::POST, &store_path(STORE))
                .body(body.to_string()),
        )
        .await;
    match r.status {
        204 => 204,
        409 => {
            r.expect_legacy_error(409, "ERR_STATE_SAVE");
            409
        }
        _ => panic!("unexpected save response: {}", r.describe()),
    }
}

/// One increment: read (value + etag), write value+1 with the etag and first-write; retry on
/// 409. A missing counter is created with first-write and no etag.
async fn increment(sc: &Sidecar, key: &str, conflicts: &AtomicU64) {
    for _ in 0..MAX_ATTEMPTS {
        let r = sc.send(sc.request(Method::GET, &key_path(key))).await;
        let status = match r.status {
            204 => {
                save_status(
                    sc,
                    json!([{"key": key, "value": 1,
                        "options": {"concurrency": "first-write"}}]),
                )
                .await
            }
            200 => {
                let n: u64 = r
                    .text()
                    .parse()
                    .unwrap_or_else(|_| panic!("counter is not a number: {}", r.describe()));
                let etag = r
                    .etag()
                    .unwrap_or_else(|| panic!("no ETag: {}", r.describe()));
                save_status(
                    sc,
                    json!([{"key": key, "value": n + 1, "etag": etag,
                        "options": {"concurrency": "first-write"}}]),
                )
                .await
            }
            _ => panic!("unexpected GET: {}", r.describe()),
        };
        if status == 204 {
            return;
        }
        conflicts.fetch_add(1, Ordering::Relaxed);
    }
    panic!("increment did not succeed in {MAX_ATTEMPTS} attempts");
}

async fn concurrent_first_write_increments_are_exact(kind: StoreKind) {
    let sc = Arc::new(Sidecar::start(kind).await);
    let conflicts = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let sc = sc.clone();
        let conflicts = conflicts.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                increment(&sc, "counter", &conflicts).await;
            }
        }));
    }
    let all = async {
        for t in tasks {
            t.await.expect("client task panicked");
        }
    };
    tokio::time::timeout(Duration::from_secs(240), all)
        .await
        .expect("increments did not finish within 240 s");
    let (value, etag) = sc.must_get("counter").await;
    assert_eq!(
        value,
        (CLIENTS * INCREMENTS).to_string(),
        "lost or duplicated increments ({} conflicts, {:?})",
        conflicts.load(Ordering::Relaxed),
        start.elapsed()
    );
    assert_eq!(
        etag,
        (CLIENTS * INCREMENTS).to_string(),
        "one version per increment"
    );
}

/// Many clients writing distinct keys at once all succeed.
async fn parallel_independent_keys(kind: StoreKind) {
    let sc = Arc::new(Sidecar::start(kind).await);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let sc = sc.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let key = format!("c{c}-k{i}");
                sc.put(&key, json!(i)).await;
                sc.save(&json!([{"key": key, "value": i + 1, "etag": "1"}]))
                    .await
                    .expect_no_content();
                sc.assert_value(&key, &(i + 1).to_string(), "2").await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task panicked");
    }
}

/// Contract 7 under contention: transfers between two counters in etag-checked transactions
/// keep the total constant and lose no transfer.
async fn concurrent_transactions_are_atomic(kind: StoreKind) {
    const TOTAL: i64 = 1000;
    const WORKERS: i64 = 10;
    const TRANSFERS: i64 = 10;
    let sc = Arc::new(Sidecar::start(kind).await);
    sc.save(&json!([{"key": "a", "value": TOTAL}, {"key": "b", "value": 0}]))
        .await
        .expect_no_content();
    let conflicts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let sc = sc.clone();
        let conflicts = conflicts.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..TRANSFERS {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    assert!(attempts < MAX_ATTEMPTS, "transfer never succeeded");
                    let (va, ea) = sc.must_get("a").await;
                    let (vb, eb) = sc.must_get("b").await;
                    let va: i64 = va.parse().expect("a is a number");
                    let vb: i64 = vb.parse().expect("b is a number");
                    let r = sc
                        .txn(&json!({"operations": [
                            {"operation": "upsert", "request": {"key": "a", "value": va - 1, "etag": ea}},
                            {"operation": "upsert", "request": {"key": "b", "value": vb + 1, "etag": eb}},
                        ]}))
                        .await;
                    match r.status {
                        204 => break,
                        409 => {
                            r.expect_legacy_error(409, "ERR_STATE_TRANSACTION");
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => panic!("unexpected transaction response: {}", r.describe()),
                    }
                }
            }
        }));
    }
    let all = async {
        for t in tasks {
            t.await.expect("worker panicked");
        }
    };
    tokio::time::timeout(Duration::from_secs(240), all)
        .await
        .expect("transfers did not finish within 240 s");
    let (va, ea) = sc.must_get("a").await;
    let (vb, eb) = sc.must_get("b").await;
    let moved = WORKERS * TRANSFERS;
    assert_eq!(
        (va.parse::<i64>().unwrap(), vb.parse::<i64>().unwrap()),
        (TOTAL - moved, moved),
        "{} conflicts",
        conflicts.load(Ordering::Relaxed)
    );
    // One version per committed transfer (plus the initial write).
    assert_eq!(ea, (moved + 1).to_string());
    assert_eq!(eb, (moved + 1).to_string());
}

/// Three sidecar processes of one app on one Redis, 20 clients each: etag read-modify-write
/// increments with retry on 409 lose nothing; the same increments without an etag
/// (last-write-wins) do lose updates, which shows that this test would notice lost updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_on_one_redis() {
    const SIDECARS: usize = 3;
    const PER_SIDECAR: usize = 20;
    const EACH: u64 = 4;
    let app = statecar_tests::unique("multi");
    let mut sidecars = Vec::new();
    for _ in 0..SIDECARS {
        let sc = Sidecar::builder()
            .app_id(&app)
            .store(StoreKind::Redis)
            .start()
            .await;
        sidecars.push(Arc::new(sc));
    }
    let total = SIDECARS as u64 * PER_SIDECAR as u64 * EACH;

    // With etags: every increment lands exactly once.
    let conflicts = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for sc in &sidecars {
        for _ in 0..PER_SIDECAR {
            let (sc, conflicts) = (sc.clone(), conflicts.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..EACH {
                    increment(&sc, "shared-counter", &conflicts).await;
                }
            }));
        }
    }
    let all = async {
        for t in tasks {
            t.await.expect("client task panicked");
        }
    };
    tokio::time::timeout(Duration::from_secs(240), all)
        .await
        .expect("etag increments did not finish within 240 s");
    let etag_time = start.elapsed();
    let (value, _) = sidecars[0].must_get("shared-counter").await;
    let conflicts = conflicts.load(Ordering::Relaxed);
    // One GET and one save per attempt; every 409 is one more attempt.
    let sent = 2 * (total + conflicts);
    println!(
        "SCENARIO multi-sidecar-etag: {SIDECARS} sidecar processes x {PER_SIDECAR} clients on one \
         Redis, {EACH} etag read-modify-write increments each, retry on 409 | requests sent \
         {sent}, acknowledged increments {total}, 409 retries {conflicts}, lost {} (final count \
         {value}) | {:.1} s",
        total as i64 - value.parse::<i64>().unwrap_or(0),
        etag_time.as_secs_f64()
    );
    assert_eq!(
        value,
        total.to_string(),
        "etag increments from {SIDECARS} sidecars lost or duplicated updates ({conflicts} conflicts)"
    );

    // Without etags: read, add one, write back. Concurrent clients overwrite each other.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for sc in &sidecars {
        for _ in 0..PER_SIDECAR {
            let sc = sc.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..EACH {
                    let r = sc.get("lw-counter").await;
                    let n: u64 = match r.status {
                        204 => 0,
                        200 => r.text().parse().expect("counter is a number"),
                        _ => panic!("unexpected GET: {}", r.describe()),
                    };
                    sc.save(&json!([{"key": "lw-counter", "value": n + 1}]))
                        .await
                        .expect_no_content();
                }
            }));
        }
    }
    let all = async {
        for t in tasks {
            t.await.expect("client task panicked");
        }
    };
    tokio::time::timeout(Duration::from_secs(240), all)
        .await
        .expect("last-write increments did not finish within 240 s");
    let (value, _) = sidecars[0].must_get("lw-counter").await;
    let final_count: u64 = value.parse().expect("counter is a number");
    println!(
        "SCENARIO multi-sidecar-last-write: the same without etags (last-write-wins) | requests \
         sent {}, acknowledged increments {total}, lost {} (final count {final_count}) | {:.1} s",
        2 * total,
        total - final_count,
        start.elapsed().as_secs_f64()
    );
    assert!(
        final_count < total,
        "last-write-wins increments from {} concurrent clients lost no update (final \
         {final_count} of {total}): the test cannot tell lost updates apart",
        SIDECARS * PER_SIDECAR
    );
}
