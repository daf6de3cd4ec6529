//! Scale-out Redis with real servers on loopback: Redis Cluster (3 masters, made with
//! `redis-cli --cluster create`) and Sentinel (master + replica + 3 Sentinels), including a
//! failover under a strong-consistency write load.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use statecar_tests::redis_topology::{RedisCluster, SentinelSetup};
use statecar_tests::{Sidecar, StoreKind};

fn prefixed(sc: &Sidecar, key: &str) -> String {
    format!("{}||{key}", sc.app_id())
}

/// A 3-master cluster and a sidecar whose store is on it.
async fn cluster_with_sidecar() -> (RedisCluster, Sidecar) {
    let cluster = RedisCluster::start(3);
    let hosts = cluster.hosts();
    let sc = Sidecar::builder()
        .store_meta(
            StoreKind::Redis,
            &[("redisHost", &hosts), ("redisType", "cluster")],
        )
        .start()
        .await;
    (cluster, sc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_serves_every_operation_and_spreads_keys_over_the_masters() {
    let (cluster, sc) = cluster_with_sidecar().await;

    let items: Vec<_> = (0..60)
        .map(|i| json!({"key": format!("k{i}"), "value": {"n": i}}))
        .collect();
    sc.save(&json!(items)).await.expect_no_content();
    let mut owners = HashSet::new();
    for i in 0..60 {
        let key = format!("k{i}");
        let r = sc.get(&key).await;
        r.expect(200);
        assert_eq!(r.json(), json!({"n": i}));
        let owner = cluster.node_for(&prefixed(&sc, &key));
        let exists: i64 = owner
            .try_query(redis::cmd("EXISTS").arg(prefixed(&sc, &key)))
            .expect("EXISTS on the slot owner");
        assert_eq!(exists, 1, "{key} is not on the node that owns its slot");
        owners.insert(owner.port);
    }
    assert_eq!(owners.len(), 3, "60 keys should land on all 3 masters");

    // Bulk get across slots, etag conflict, delete.
    let r = sc
        .bulk(&json!({"keys": ["k1", "k2", "k3", "missing"]}))
        .await;
    r.expect(200);
    let got = r.json();
    assert_eq!(got.as_array().map(Vec::len), Some(4), "{got}");
    assert_eq!(got[0]["data"], json!({"n": 1}));
    assert!(got[3].get("data").is_none(), "{got}");

    sc.save(&json!([{"key": "k1", "value": 2, "etag": "99", "options": {"concurrency": "first-write"}}]))
        .await
        .expect(409);
    sc.delete("k2", None).await.expect_no_content();
    sc.get("k2").await.expect_no_content();
    println!(
        "cluster: 60 keys over {} masters, bulk get, etag 409, delete: ok",
        owners.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_transactions_need_one_slot_and_say_so() {
    let (cluster, sc) = cluster_with_sidecar().await;
    // Same hash tag: one slot, so the transaction runs atomically on one master.
    sc.txn(&json!({"operations": [
        {"operation": "upsert", "request": {"key": "{order-7}.head", "value": "h"}},
        {"operation": "upsert", "request": {"key": "{order-7}.lines", "value": [1, 2]}},
    ]}))
    .await
    .expect_no_content();
    assert_eq!(sc.get("{order-7}.head").await.json(), json!("h"));
    assert_eq!(sc.get("{order-7}.lines").await.json(), json!([1, 2]));

    // Keys in different slots: refused with a 400 that names the rule, nothing written.
    let a = "alpha".to_string();
    let a_port = cluster.node_for(&prefixed(&sc, &a)).port;
    let b = (0..100)
        .map(|i| format!("beta-{i}"))
        .find(|b| cluster.node_for(&prefixed(&sc, b)).port != a_port)
        .expect("a key on another master");
    let (a, b) = (a.as_str(), b.as_str());
    let r = sc
        .txn(&json!({"operations": [
            {"operation": "upsert", "request": {"key": a, "value": 1}},
            {"operation": "upsert", "request": {"key": b, "value": 2}},
        ]}))
        .await;
    r.expect(400);
    let body = r.json();
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("slot") && message.contains('{'),
        "the message should name the one-slot rule and hash tags: {body}"
    );
    sc.get(a).await.expect_no_content();
    sc.get(b).await.expect_no_content();
    println!("cluster: same-slot transaction ok; cross-slot refused: {message}");
}

/// Kills the master under a strong-consistency write load; every acknowledged write must be on
/// the new master afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_failover_under_strong_writes_loses_no_acknowledged_write() {
    let mut setup = SentinelSetup::start("statecar-master");
    let sentinels = setup.sentinel_hosts();
    let sc = Arc::new(
        Sidecar::builder()
            .store_meta(
                StoreKind::Redis,
                &[
                    ("redisHost", &sentinels),
                    ("failover", "true"),
                    ("sentinelMasterName", "statecar-master"),
                    ("readTimeout", "1s"),
                ],
            )
            .start()
            .await,
    );
    let old_master = setup.master.port;
    assert_eq!(setup.current_master_port(), Some(old_master));

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let first_ok_after_kill = Arc::new(Mutex::new(None::<Instant>));
    let killed_at = Arc::new(Mutex::new(None::<Instant>));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (sc, acked, sent, stop) = (sc.clone(), acked.clone(), sent.clone(), stop.clone());
        let (first_ok, killed_at) = (first_ok_after_kill.clone(), killed_at.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("w{w}-{i}");
                i += 1;
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let r = sc
                    .save(&json!([{"key": key, "value": i, "options": {"consistency": "strong"}}]))
                    .await;
                if r.status == 204 {
                    let killed = *killed_at.lock().unwrap();
                    if killed.is_some() {
                        first_ok.lock().unwrap().get_or_insert(Instant::now());
                    }
                    acked.lock().unwrap().push(key);
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = acked.lock().unwrap().len();
    assert!(before_kill > 0, "no write succeeded before the failover");
    setup.master.kill();
    *killed_at.lock().unwrap() = Some(Instant::now());
    let kill_time = Instant::now();

    // Wait for the Sentinels to promote the replica and for writes to succeed again.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let promoted = setup.current_master_port() == Some(setup.replica.port);
        let recovered = first_ok_after_kill.lock().unwrap().is_some();
        if promoted && recovered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failover within 45 s (promoted: {promoted}, writes recovered: {recovered})\n{}",
            sc.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovery = first_ok_after_kill
        .lock()
        .unwrap()
        .map(|t| t.duration_since(kill_time))
        .unwrap_or_default();
    // A little more load on the new master, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer task");
    }

    let acked = acked.lock().unwrap().clone();
    let mut conn = setup.replica.conn();
    let mut missing = Vec::new();
    for key in &acked {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(prefixed(&sc, key))
            .query(&mut conn)
            .expect("EXISTS on the new master");
        if exists != 1 {
            missing.push(key.clone());
        }
    }
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "sentinel failover: sent {sent} strong writes, acknowledged {}, found on the new master {}, \
         lost {}; writes succeeded again {:.2} s after the master was killed",
        acked.len(),
        acked.len() - missing.len(),
        missing.len(),
        recovery.as_secs_f64()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged writes are missing on the new master: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}
