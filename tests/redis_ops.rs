//! Redis operational behaviour with private servers: strong consistency via WAIT, and Redis
//! going down and coming back (contract 15, 16).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use statecar_tests::{RedisServer, Resp, STORE, Sidecar, StoreKind, key_path, store_path};

/// Contract 15: strong consistency issues WAIT on a master with replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_consistency_waits_for_replicas() {
    let master = RedisServer::start();
    let replica = RedisServer::start_replica_of(&master);
    assert_eq!(master.connected_replicas(), 1);
    let host = master.addr();
    let sc = Sidecar::builder()
        .store_meta(StoreKind::Redis, &[("redisHost", &host)])
        .start()
        .await;

    let w0 = master.command_calls("wait");
    sc.put("ev", json!("eventual")).await;
    sc.save(&json!([{"key": "ev", "value": "e2", "options": {"consistency": "eventual"}}]))
        .await
        .expect_no_content();
    assert_eq!(
        master.command_calls("wait"),
        w0,
        "eventual writes must not WAIT"
    );

    sc.save(&json!([{"key": "strong", "value": "s1", "options": {"consistency": "strong"}}]))
        .await
        .expect_no_content();
    let w1 = master.command_calls("wait");
    assert!(
        w1 > w0,
        "strong save must WAIT (cmdstat_wait calls {w0} -> {w1})"
    );
    // WAIT returned, so the replica has the write.
    let on_replica = replica.hgetall(&sc.redis_key("strong"));
    assert_eq!(
        on_replica.get("data").map(String::as_str),
        Some(r#""s1""#),
        "value on replica: {on_replica:?}"
    );

    // Header form.
    let r = sc
        .send(
            sc.request(Method::POST, &store_path(STORE))
                .header("consistency", "strong")
                .body(json!([{"key": "strong", "value": "s2"}]).to_string()),
        )
        .await;
    r.expect_no_content();
    let w2 = master.command_calls("wait");
    assert!(w2 > w1, "consistency header: WAIT calls {w1} -> {w2}");

    // Delete with consistency=strong.
    sc.raw(
        Method::DELETE,
        &format!("{}?consistency=strong", key_path("strong")),
        "",
    )
    .await
    .expect_no_content();
    let w3 = master.command_calls("wait");
    assert!(w3 > w2, "strong delete: WAIT calls {w2} -> {w3}");
    assert!(!replica.exists(&sc.redis_key("strong")));

    // Transaction with a strong op.
    sc.txn(&json!({"operations": [{"operation": "upsert",
        "request": {"key": "tx", "value": 1, "options": {"consistency": "strong"}}}]}))
        .await
        .expect_no_content();
    let w4 = master.command_calls("wait");
    assert!(w4 > w3, "strong transaction: WAIT calls {w3} -> {w4}");
    assert_eq!(
        replica
            .hgetall(&sc.redis_key("tx"))
            .get("version")
            .map(String::as_str),
        Some("1")
    );
    // GET with consistency=strong reads fine.
    sc.get_path(&format!("{}?consistency=strong", key_path("tx")))
        .await
        .expect(200);
}

/// Sends a request that must complete within 5 s.
async fn timed(sc: &Sidecar, rb: reqwest::RequestBuilder) -> Resp {
    let start = Instant::now();
    let r = sc
        .try_send(rb.timeout(Duration::from_secs(10)))
        .await
        .unwrap_or_else(|e| panic!("request failed after {:?}: {e}", start.elapsed()));
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "request must fail fast while Redis is down, took {took:?}: {}",
        r.describe()
    );
    r
}

/// Polls `probe` until it returns true or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(()) => return,
            Err(e) if start.elapsed() >= timeout => {
                panic!("{what} did not happen within {timeout:?}; last: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Contract 16: Redis down => fast 500s with the endpoint's code; back up => recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_and_back_up() {
    let mut redis = RedisServer::start();
    let host = redis.addr();
    let sc = Sidecar::builder()
        .store_meta(StoreKind::Redis, &[("redisHost", &host)])
        .start()
        .await;
    sc.put("k", json!("before")).await;
    sc.get_path("/v1.0/healthz/outbound")
        .await
        .expect_no_content();

    redis.stop();

    let save = || {
        sc.request(Method::POST, &store_path(STORE))
            .body(json!([{"key": "k", "value": "during"}]).to_string())
    };
    // Twice each: the first request may be the one that notices the broken connection.
    for _ in 0..2 {
        timed(&sc, save())
            .await
            .expect_legacy_error(500, "ERR_STATE_SAVE");
        timed(&sc, sc.request(Method::GET, &key_path("k")))
            .await
            .expect_legacy_error(500, "ERR_STATE_GET");
        timed(&sc, sc.request(Method::DELETE, &key_path("k")))
            .await
            .expect_legacy_error(500, "ERR_STATE_DELETE");
        let txn = json!({"operations": [{"operation": "upsert",
            "request": {"key": "k", "value": 1}}]});
        timed(
            &sc,
            sc.request(Method::POST, &format!("{}/transaction", store_path(STORE)))
                .body(txn.to_string()),
        )
        .await
        .expect_legacy_error(500, "ERR_STATE_TRANSACTION");
        let r = timed(
            &sc,
            sc.request(Method::POST, &format!("{}/bulk", store_path(STORE)))
                .body(json!({"keys": ["k"]}).to_string()),
        )
        .await;
        // Either per-item errors (spec §2.3) or a whole-call ERR_STATE_BULK_GET.
        if r.status == 200 {
            let v = r.json();
            assert!(
                v[0]["error"]
                    .as_str()
                    .map(|e| !e.is_empty())
                    .unwrap_or(false)
                    && v[0].get("data").is_none(),
                "bulk item must carry an error while Redis is down: {}",
                r.describe()
            );
        } else {
            r.expect_legacy_error(500, "ERR_STATE_BULK_GET");
        }
    }
    sc.get_path("/v1.0/healthz").await.expect_no_content();
    eventually(
        Duration::from_secs(5),
        "healthz/outbound -> 500",
        || async {
            let r = sc.get_path("/v1.0/healthz/outbound").await;
            if r.status == 500 {
                r.expect_error(500, "ERR_OUTBOUND_HEALTH_NOT_READY");
                Ok(())
            } else {
                Err(r.describe())
            }
        },
    )
    .await;

    redis.restart();

    eventually(
        Duration::from_secs(10),
        "save succeeding after restart",
        || async {
            let r = sc.send(save()).await;
            if r.status == 204 {
                Ok(())
            } else {
                Err(r.describe())
            }
        },
    )
    .await;
    // Redis lost its data (no persistence): this is the first version again.
    sc.assert_value("k", r#""during""#, "1").await;
    assert_eq!(
        redis
            .hgetall(&sc.redis_key("k"))
            .get("version")
            .map(String::as_str),
        Some("1")
    );
    eventually(
        Duration::from_secs(10),
        "healthz/outbound -> 204",
        || async {
            let r = sc.get_path("/v1.0/healthz/outbound").await;
            if r.status == 204 {
                Ok(())
            } else {
                Err(r.describe())
            }
        },
    )
    .await;
    sc.delete("k", None).await.expect_no_content();
    sc.assert_missing("k").await;
}
