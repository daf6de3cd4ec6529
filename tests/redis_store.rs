//! Redis store specifics checked directly in Redis (spec §3.5, §4.3; contract 9, 14).

use serde_json::json;
use statecar_tests::{RedisServer, Sidecar, StoreKind, shared_redis, unique};

use std::collections::HashMap;

fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Contract 14: a HASH with exactly `data` and `version`; TTL is the key's TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_layout_has_exactly_data_and_version() {
    let redis = shared_redis();
    let sc = Sidecar::start(StoreKind::Redis).await;
    sc.put("name", json!("Bruce Wayne")).await;
    let key = sc.redis_key("name");
    let t: String = redis.query(redis::cmd("TYPE").arg(&key));
    assert_eq!(t, "hash");
    assert_eq!(
        redis.hgetall(&key),
        fields(&[("data", r#""Bruce Wayne""#), ("version", "1")])
    );
    assert_eq!(redis.ttl(&key), -1, "no TTL requested => no expiry");

    sc.save_raw(r#"[{"key":"name","value":{"b":1, "a":2.50}}]"#)
        .await
        .expect_no_content();
    assert_eq!(
        redis.hgetall(&key),
        fields(&[("data", r#"{"b":1, "a":2.50}"#), ("version", "2")])
    );

    // first-write leaves no marker field.
    sc.save(&json!([{"key": "fw", "value": 1, "options": {"concurrency": "first-write"}}]))
        .await
        .expect_no_content();
    assert_eq!(
        redis.hgetall(&sc.redis_key("fw")),
        fields(&[("data", "1"), ("version", "1")])
    );
    // Transactions write the same layout.
    sc.txn(&json!({"operations": [
        {"operation": "upsert", "request": {"key": "tx", "value": [1]}},
        {"operation": "upsert", "request": {"key": "tx", "value": [2]}},
    ]}))
    .await
    .expect_no_content();
    assert_eq!(
        redis.hgetall(&sc.redis_key("tx")),
        fields(&[("data", "[2]"), ("version", "2")])
    );
    // Omitted value => "null".
    sc.save(&json!([{"key": "nul"}])).await.expect_no_content();
    assert_eq!(
        redis.hgetall(&sc.redis_key("nul")),
        fields(&[("data", "null"), ("version", "1")])
    );
    // Delete removes the Redis key.
    sc.delete("name", None).await.expect_no_content();
    assert!(!redis.exists(&key));
    sc.txn(&json!({"operations": [{"operation": "delete", "request": {"key": "tx"}}]}))
        .await
        .expect_no_content();
    assert!(!redis.exists(&sc.redis_key("tx")));
    // Nothing else was written for this app.
    let mut expect = vec![sc.redis_key("fw"), sc.redis_key("nul")];
    expect.sort();
    assert_eq!(redis.keys(&format!("{}||*", sc.app_id())), expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_is_the_redis_key_ttl() {
    let redis = shared_redis();
    let sc = Sidecar::start(StoreKind::Redis).await;
    sc.save(&json!([{"key": "t", "value": 1, "metadata": {"ttlInSeconds": "60"}}]))
        .await
        .expect_no_content();
    let key = sc.redis_key("t");
    let ttl = redis.ttl(&key);
    assert!((50..=60).contains(&ttl), "TTL {ttl}");
    assert_eq!(
        redis.hgetall(&key),
        fields(&[("data", "1"), ("version", "1")])
    );
    // A write without TTL removes it (contract 9).
    sc.put("t", json!(2)).await;
    assert_eq!(redis.ttl(&key), -1);
    // -1 removes it too.
    sc.save(&json!([{"key": "t", "value": 3, "metadata": {"ttlInSeconds": "100"}}]))
        .await
        .expect_no_content();
    assert!(redis.ttl(&key) > 60);
    sc.save(&json!([{"key": "t", "value": 4, "metadata": {"ttlInSeconds": "-1"}}]))
        .await
        .expect_no_content();
    assert_eq!(redis.ttl(&key), -1);
    // Transactions set the TTL too.
    sc.txn(&json!({"operations": [{"operation": "upsert",
        "request": {"key": "t", "value": 5, "metadata": {"ttlInSeconds": "30"}}}]}))
        .await
        .expect_no_content();
    let ttl = redis.ttl(&key);
    assert!((20..=30).contains(&ttl), "TTL {ttl}");
}

/// Contract 9: the component's `ttlInSeconds` is the default for writes without a TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_default_ttl() {
    let redis = shared_redis();
    let sc = Sidecar::builder()
        .store_meta(StoreKind::Redis, &[("ttlInSeconds", "60")])
        .start()
        .await;
    sc.put("d", json!(1)).await;
    let key = sc.redis_key("d");
    let ttl = redis.ttl(&key);
    assert!((50..=60).contains(&ttl), "default TTL applied: {ttl}");
    let r = sc.get("d").await;
    r.expect(200);
    assert!(
        r.header("metadata.ttlExpireTime").is_some(),
        "{}",
        r.describe()
    );
    // An explicit request TTL wins; <= 0 means no expiry.
    sc.save(&json!([{"key": "d", "value": 2, "metadata": {"ttlInSeconds": "-1"}}]))
        .await
        .expect_no_content();
    assert_eq!(redis.ttl(&key), -1);
    sc.save(&json!([{"key": "d", "value": 3, "metadata": {"ttlInSeconds": "500"}}]))
        .await
        .expect_no_content();
    assert!(redis.ttl(&key) > 400);
    sc.txn(&json!({"operations": [{"operation": "upsert", "request": {"key": "tx", "value": 1}}]}))
        .await
        .expect_no_content();
    let ttl = redis.ttl(&sc.redis_key("tx"));
    assert!(
        (50..=60).contains(&ttl),
        "default TTL in transactions: {ttl}"
    );
}

/// Contract 14 / spec §3.5: keyPrefix strategies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefix_strategies() {
    let redis = shared_redis();
    type Expected = fn(&str, &str) -> String;
    let cases: Vec<(Option<&str>, Option<&str>, Expected)> = vec![
        (None, None, |app, k| format!("{app}||{k}")),
        (Some("appid"), None, |app, k| format!("{app}||{k}")),
        (Some("name"), None, |_, k| format!("statestore||{k}")),
        (Some("none"), None, |_, k| k.to_string()),
        (Some("MyPfx"), None, |_, k| format!("mypfx||{k}")),
        (Some("namespace"), Some("ns1"), |app, k| {
            format!("ns1.{app}||{k}")
        }),
        (Some("namespace"), None, |app, k| format!("{app}||{k}")),
    ];
    for (prefix, namespace, expected) in cases {
        let meta: Vec<(&str, &str)> = prefix.iter().map(|p| ("keyPrefix", *p)).collect();
        let mut b = Sidecar::builder().store_meta(StoreKind::Redis, &meta);
        if let Some(ns) = namespace {
            b = b.env("NAMESPACE", ns);
        }
        let sc = b.start().await;
        let key = unique("pk");
        sc.put(&key, json!({"p": prefix})).await;
        let rkey = expected(sc.app_id(), &key);
        assert_eq!(
            redis.hgetall(&rkey),
            fields(&[
                ("data", &json!({"p": prefix}).to_string()),
                ("version", "1")
            ]),
            "keyPrefix {prefix:?} namespace {namespace:?}: expected Redis key {rkey:?}"
        );
        // Keys come back un-prefixed from bulk get.
        let r = sc.bulk(&json!({"keys": [key]})).await;
        r.expect(200);
        assert_eq!(r.json()[0]["key"], key.as_str(), "{}", r.describe());
        // Transactions and deletes use the same prefix.
        sc.txn(&json!({"operations": [{"operation": "upsert",
            "request": {"key": key, "value": 2}}]}))
            .await
            .expect_no_content();
        assert_eq!(
            redis.hgetall(&rkey).get("version").map(String::as_str),
            Some("2")
        );
        sc.delete(&key, None).await.expect_no_content();
        assert!(!redis.exists(&rkey), "keyPrefix {prefix:?}: delete");
    }
}

/// Spec §3.5: keyPrefix `name` shares state across apps; `appid` isolates them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_name_shares_and_appid_isolates() {
    let a = Sidecar::builder()
        .store_meta(StoreKind::Redis, &[("keyPrefix", "name")])
        .start()
        .await;
    let b = Sidecar::builder()
        .store_meta(StoreKind::Redis, &[("keyPrefix", "name")])
        .start()
        .await;
    let key = unique("shared");
    a.put(&key, json!("from-a")).await;
    b.assert_value(&key, r#""from-a""#, "1").await;

    let c = Sidecar::start(StoreKind::Redis).await;
    let d = Sidecar::start(StoreKind::Redis).await;
    c.put("mine", json!("c")).await;
    d.assert_missing("mine").await;
}

/// Data written directly in the documented layout is served with its version as ETag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_hashes_written_directly() {
    let redis = shared_redis();
    let sc = Sidecar::start(StoreKind::Redis).await;
    let key = sc.redis_key("ext");
    let _: i64 = redis.query(
        redis::cmd("HSET")
            .arg(&key)
            .arg("data")
            .arg(r#"{"x":1}"#)
            .arg("version")
            .arg("7"),
    );
    sc.assert_value("ext", r#"{"x":1}"#, "7").await;
    sc.save(&json!([{"key": "ext", "value": 2, "etag": "7"}]))
        .await
        .expect_no_content();
    assert_eq!(
        redis.hgetall(&key),
        fields(&[("data", "2"), ("version", "8")])
    );
    let r = sc.bulk(&json!({"keys": ["ext"]})).await;
    r.expect(200);
    assert_eq!(r.json(), json!([{"key": "ext", "data": 2, "etag": "8"}]));
}

/// Keys in another layout: a plain string (as older clients wrote) reads without an etag and
/// is turned into the hash layout by the next save, with or without an etag check; a list is
/// an error, and a save replaces it. (Reads and unconditional saves use plain commands that
/// Redis refuses on these keys; statecar then falls back to its scripts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_layouts() {
    let redis = shared_redis();
    let sc = Sidecar::start(StoreKind::Redis).await;
    let plain = sc.redis_key("plain");
    let _: () = redis.query(redis::cmd("SET").arg(&plain).arg(r#"{"old":1}"#));
    let _: i64 = redis.query(redis::cmd("EXPIRE").arg(&plain).arg(600));
    let r = sc.get("plain").await;
    r.expect(200);
    assert_eq!(r.text(), r#"{"old":1}"#);
    assert!(r.header("etag").is_none(), "{}", r.describe());
    assert!(
        r.header("metadata.ttlexpiretime").is_some(),
        "{}",
        r.describe()
    );
    let r = sc.bulk(&json!({"keys": ["plain", "missing"]})).await;
    r.expect(200);
    assert_eq!(r.json()[0]["data"], json!({"old": 1}));
    assert!(r.json()[0].get("etag").is_none());
    assert_eq!(r.json()[1], json!({"key": "missing"}));
    sc.save(&json!([{"key": "plain", "value": 2}]))
        .await
        .expect_no_content();
    assert_eq!(
        redis.hgetall(&plain),
        fields(&[("data", "2"), ("version", "1")])
    );
    assert_eq!(redis.ttl(&plain), -1, "a save without TTL leaves no expiry");

    let other = sc.redis_key("other");
    let _: () = redis.query(redis::cmd("SET").arg(&other).arg("x"));
    sc.save(&json!([{"key": "other", "value": 3, "options": {"concurrency": "first-write"}}]))
        .await
        .expect_legacy_error(409, "ERR_STATE_SAVE");

    let list = sc.redis_key("list");
    let _: i64 = redis.query(redis::cmd("RPUSH").arg(&list).arg("a"));
    sc.get("list")
        .await
        .expect_legacy_error(500, "ERR_STATE_GET");
    let r = sc.bulk(&json!({"keys": ["list", "plain"]})).await;
    r.expect(200);
    assert!(
        r.json()[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("list"))
    );
    assert_eq!(r.json()[1]["data"], json!(2));
    assert_eq!(r.json()[1]["etag"], json!("1"));
    sc.save(&json!([{"key": "list", "value": 4}]))
        .await
        .expect_no_content();
    assert_eq!(
        redis.hgetall(&list),
        fields(&[("data", "4"), ("version", "1")])
    );
}

/// Spec §4.1/§5.1: `redisPassword`, `redisDB`, `envRef` and non-string YAML scalars.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_db_env_ref_and_scalar_values() {
    let redis = RedisServer::start_with_password("pw-123");
    let yaml = String::from(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    envRef: STATECAR_TEST_REDIS_HOST\n  - name: redisPassword\n    value: pw-123\n  - name: redisDB\n    value: 3\n  - name: ttlInSeconds\n    value: 60\n",
    );
    let sc = Sidecar::builder()
        .file("statestore.yaml", &yaml)
        .env("STATECAR_TEST_REDIS_HOST", &redis.addr())
        .start()
        .await;
    sc.put("k", json!("in-db-3")).await;
    sc.assert_value("k", r#""in-db-3""#, "1").await;
    let key = sc.redis_key("k");
    let mut db3 = redis.conn_db(3);
    let h: HashMap<String, String> = redis::cmd("HGETALL").arg(&key).query(&mut db3).unwrap();
    assert_eq!(h, fields(&[("data", r#""in-db-3""#), ("version", "1")]));
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut db3).unwrap();
    assert!(
        (50..=60).contains(&ttl),
        "ttlInSeconds: 60 (YAML integer) applies: {ttl}"
    );
    assert!(!redis.exists(&key), "nothing in db 0");

    // Wrong password => startup fails, naming the component.
    let yaml = statecar_tests::component_yaml(
        "authstore",
        "state.redis",
        &[
            ("redisHost", &redis.addr()),
            ("redisPassword", "wr0ng-Pa55-xyz"),
        ],
    );
    let f = Sidecar::builder()
        .file("auth.yaml", &yaml)
        .start_expect_failure(std::time::Duration::from_secs(30))
        .await;
    assert_ne!(f.code, 0);
    assert!(f.stderr.contains("authstore"), "{}", f.stderr);
    assert!(
        !f.output().contains("wr0ng-Pa55-xyz"),
        "password must not be logged:\n{}",
        f.output()
    );
}

/// State lives in Redis: a new sidecar with the same app id sees it, with the same etag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_sidecar_restart() {
    let app = unique("restart");
    let mut first = Sidecar::builder()
        .app_id(&app)
        .store(StoreKind::Redis)
        .start()
        .await;
    first.put("k", json!({"v": 1})).await;
    first.put("k", json!({"v": 2})).await;
    assert_eq!(first.terminate(std::time::Duration::from_secs(10)), Some(0));
    let second = Sidecar::builder()
        .app_id(&app)
        .store(StoreKind::Redis)
        .start()
        .await;
    second.assert_value("k", r#"{"v":2}"#, "2").await;
}
