//! TTL (spec §3.4, §7.1 items 33-38, H15; contract 9).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use statecar_tests::time::{now_unix, parse_rfc3339};
use statecar_tests::{Resp, STORE, Sidecar, StoreKind, store_path, store_tests};

store_tests!(
    ttl_expires_and_etag_restarts,
    ttl_expire_time_is_reported,
    ttl_from_query_param_overrides_item,
    non_positive_ttl_and_plain_write_remove_expiry,
    invalid_ttl_is_400,
    ttl_in_transactions,
);

const HDR: &str = "metadata.ttlExpireTime";

/// Asserts the `metadata.ttlExpireTime` header is RFC 3339 and within `slack` s of now+`ttl`.
fn assert_expiry_header(r: &Resp, ttl: f64, slack: f64) {
    r.expect(200);
    let h = r
        .header(HDR)
        .unwrap_or_else(|| panic!("missing {HDR} header: {}", r.describe()));
    let t = parse_rfc3339(&h).unwrap_or_else(|| panic!("{HDR} {h:?} is not RFC 3339"));
    assert!(h.ends_with('Z'), "{HDR} must be UTC (Z suffix): {h:?}");
    let want = now_unix() + ttl;
    assert!(
        (t - want).abs() <= slack,
        "{HDR} {h} is {:.1} s away from now+{ttl}",
        t - want
    );
}

fn assert_item_expiry(item: &Value, ttl: f64, slack: f64) {
    let h = item["metadata"]["ttlExpireTime"]
        .as_str()
        .unwrap_or_else(|| panic!("bulk item lacks metadata.ttlExpireTime: {item}"));
    let t = parse_rfc3339(h).unwrap_or_else(|| panic!("{h:?} is not RFC 3339"));
    let want = now_unix() + ttl;
    assert!((t - want).abs() <= slack, "ttlExpireTime {h} vs now+{ttl}");
}

/// H15 / §7.1 item 34: expires within a few seconds; the etag restarts after expiry.
async fn ttl_expires_and_etag_restarts(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("key0", json!("other")).await;
    sc.save(&json!([{"key": "key1", "value": "value1", "metadata": {"ttlInSeconds": "2"}}]))
        .await
        .expect_no_content();
    let r = sc.get("key1").await;
    assert_eq!(r.text(), r#""value1""#, "{}", r.describe());
    assert_expiry_header(&r, 2.0, 1.5);
    let waited = sc.wait_missing("key1", Duration::from_secs(5)).await;
    assert!(
        waited >= Duration::from_millis(900),
        "expired too early: {waited:?}"
    );
    let r = sc.bulk(&json!({"keys": ["key1", "key0"]})).await;
    r.expect(200);
    assert_eq!(r.json()[0], json!({"key": "key1"}), "{}", r.describe());
    sc.put("key1", json!("again")).await;
    sc.assert_value("key1", r#""again""#, "1").await;
    assert!(sc.get("key1").await.header(HDR).is_none());
}

/// §7.1 items 35, 36, 38: expiry metadata present exactly when a TTL is set.
async fn ttl_expire_time_is_reported(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("plain", json!("123")).await;
    let r = sc.get("plain").await;
    r.expect(200);
    assert!(
        r.header(HDR).is_none(),
        "no TTL => no {HDR}: {}",
        r.describe()
    );
    sc.save(&json!([
        {"key": "t1", "value": "123", "metadata": {"ttlInSeconds": "3600"}},
        {"key": "t2", "value": "234", "metadata": {"ttlInSeconds": "3600"}},
    ]))
    .await
    .expect_no_content();
    assert_expiry_header(&sc.get("t1").await, 3600.0, 600.0);
    let r = sc.bulk(&json!({"keys": ["t1", "t2", "plain"]})).await;
    r.expect(200);
    let v = r.json();
    assert_eq!(v[0]["data"], "123");
    assert_eq!(v[1]["data"], "234");
    assert_item_expiry(&v[0], 3600.0, 600.0);
    assert_item_expiry(&v[1], 3600.0, 600.0);
    assert!(
        v[2].get("metadata").is_none(),
        "no TTL => no metadata in bulk item: {}",
        r.describe()
    );
}

/// Spec §1.4: URL `metadata.ttlInSeconds` applies to every item and overrides item metadata.
async fn ttl_from_query_param_overrides_item(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let body = json!([
        {"key": "q1", "value": 1},
        {"key": "q2", "value": 2, "metadata": {"ttlInSeconds": "3600"}},
    ])
    .to_string();
    sc.raw(
        Method::POST,
        &format!("{}?metadata.ttlInSeconds=1", store_path(STORE)),
        body,
    )
    .await
    .expect_no_content();
    assert_expiry_header(&sc.get("q1").await, 1.0, 1.5);
    assert_expiry_header(&sc.get("q2").await, 1.0, 1.5);
    sc.wait_missing("q1", Duration::from_secs(4)).await;
    sc.wait_missing("q2", Duration::from_secs(4)).await;
}

/// §7.1 item 37 + contract 9: ttl <= 0 removes the expiry, and so does a write without TTL.
async fn non_positive_ttl_and_plain_write_remove_expiry(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let keys = ["neg", "zero", "plain"];
    let items: Vec<Value> = keys
        .iter()
        .map(|k| json!({"key": k, "value": k, "metadata": {"ttlInSeconds": "2"}}))
        .collect();
    sc.save(&json!(items)).await.expect_no_content();
    for k in keys {
        assert_expiry_header(&sc.get(k).await, 2.0, 1.5);
    }
    sc.save(&json!([
        {"key": "neg", "value": "neg2", "metadata": {"ttlInSeconds": "-1"}},
        {"key": "zero", "value": "zero2", "metadata": {"ttlInSeconds": "0"}},
        {"key": "plain", "value": "plain2"},
    ]))
    .await
    .expect_no_content();
    for k in keys {
        let r = sc.get(k).await;
        r.expect(200);
        assert!(
            r.header(HDR).is_none(),
            "{k}: expiry must be removed: {}",
            r.describe()
        );
    }
    tokio::time::sleep(Duration::from_millis(3000)).await;
    for k in keys {
        sc.assert_value(k, &format!("\"{k}2\""), "2").await;
    }
}

/// §7.1 item 33 + contract 9: a non-integer TTL is 400 ERR_STATE_SAVE, nothing written.
async fn invalid_ttl_is_400(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    for bad in ["foo", "1.5", "10s", "1e3"] {
        let r = sc
            .save(&json!([{"key": "bad", "value": 1, "metadata": {"ttlInSeconds": bad}}]))
            .await;
        r.expect_legacy_error(400, "ERR_STATE_SAVE");
        let r = sc
            .raw(
                Method::POST,
                &format!("{}?metadata.ttlInSeconds={bad}", store_path(STORE)),
                json!([{"key": "bad", "value": 1}]).to_string(),
            )
            .await;
        r.expect_legacy_error(400, "ERR_STATE_SAVE");
    }
    sc.assert_missing("bad").await;
}

async fn ttl_in_transactions(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let txn = |ops: Value| json!({ "operations": ops });
    sc.txn(&txn(json!([
        {"operation": "upsert", "request": {"key": "t1", "value": 1,
            "metadata": {"ttlInSeconds": "1"}}},
        {"operation": "upsert", "request": {"key": "t2", "value": 2}},
    ])))
    .await
    .expect_no_content();
    assert_expiry_header(&sc.get("t1").await, 1.0, 1.5);
    assert!(sc.get("t2").await.header(HDR).is_none());
    // URL metadata applies to each op.
    let path = format!("{}/transaction?metadata.ttlInSeconds=1", store_path(STORE));
    sc.post_json(
        &path,
        &txn(json!([{"operation": "upsert", "request": {"key": "t3", "value": 3}}])),
    )
    .await
    .expect_no_content();
    assert_expiry_header(&sc.get("t3").await, 1.0, 1.5);
    // Invalid TTL => 400 ERR_STATE_TRANSACTION, nothing applied.
    let r = sc
        .txn(&txn(json!([
            {"operation": "upsert", "request": {"key": "side", "value": 1}},
            {"operation": "upsert", "request": {"key": "t4", "value": 4,
                "metadata": {"ttlInSeconds": "soon"}}},
        ])))
        .await;
    r.expect_legacy_error(400, "ERR_STATE_TRANSACTION");
    sc.assert_missing("side").await;
    sc.assert_missing("t4").await;
    sc.wait_missing("t1", Duration::from_secs(4)).await;
    sc.wait_missing("t3", Duration::from_secs(4)).await;
    sc.assert_value("t2", "2", "1").await;
    // Removing the TTL inside a transaction.
    sc.txn(&txn(json!([
        {"operation": "upsert", "request": {"key": "t5", "value": 5,
            "metadata": {"ttlInSeconds": "1"}}},
        {"operation": "upsert", "request": {"key": "t5", "value": 6,
            "metadata": {"ttlInSeconds": "-1"}}},
    ])))
    .await
    .expect_no_content();
    tokio::time::sleep(Duration::from_millis(1800)).await;
    sc.assert_value("t5", "6", "2").await;
}
