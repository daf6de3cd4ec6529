//! Transactions (spec §2.5, §7.1 items 16-21; contract 7, 8).

use reqwest::Method;
use serde_json::{Value, json};
use statecar_tests::{STORE, Sidecar, StoreKind, store_path, store_tests};

store_tests!(
    upserts_and_deletes_apply,
    operations_apply_in_order,
    etag_conflict_applies_nothing,
    later_ops_see_earlier_ops,
    first_write_conflict_applies_nothing,
    non_numeric_etag_is_400,
    etag_as_json_number,
    unknown_operation_is_400,
    missing_or_empty_key_is_400,
    empty_operations_are_204,
    invalid_options_are_400,
    header_and_query_defaults,
    put_transaction_and_missing_delete,
);

fn up(key: &str, value: Value) -> Value {
    json!({"operation": "upsert", "request": {"key": key, "value": value}})
}

fn del(key: &str) -> Value {
    json!({"operation": "delete", "request": {"key": key}})
}

fn txn_path() -> String {
    format!("{}/transaction", store_path(STORE))
}

/// §7.1 items 16-18.
async fn upserts_and_deletes_apply(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.txn(&json!({"operations": [
        up("trx-int", json!(123)),
        up("trx-bool", json!(true)),
        up("trx-string", json!("hello world")),
        up("trx-to-be-deleted", json!("bye")),
    ], "metadata": {"partitionKey": "myPartition"}}))
        .await
        .expect_no_content();
    sc.assert_value("trx-int", "123", "1").await;
    sc.assert_value("trx-bool", "true", "1").await;
    sc.assert_value("trx-string", r#""hello world""#, "1").await;
    sc.txn(&json!({"operations": [
        up("trx-struct", json!({"message": "test"})),
        del("trx-to-be-deleted"),
    ]}))
    .await
    .expect_no_content();
    sc.assert_value("trx-struct", r#"{"message":"test"}"#, "1")
        .await;
    sc.assert_missing("trx-to-be-deleted").await;
    sc.txn(&json!({"operations": [up("too", json!(1))]}))
        .await
        .expect_no_content();
    sc.txn(&json!({"operations": [del("too")]}))
        .await
        .expect_no_content();
    sc.assert_missing("too").await;
    // Upsert of an existing key bumps its version.
    sc.txn(&json!({"operations": [up("trx-int", json!(124))]}))
        .await
        .expect_no_content();
    sc.assert_value("trx-int", "124", "2").await;
}

/// §7.1 item 20.
async fn operations_apply_in_order(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("key1", json!("value1")).await;
    sc.txn(&json!({"operations": [
        del("key1"),
        up("key2", json!("value2")),
        del("key2"),
        up("key3", json!("value3")),
    ]}))
    .await
    .expect_no_content();
    sc.assert_missing("key1").await;
    sc.assert_missing("key2").await;
    sc.assert_value("key3", r#""value3""#, "1").await;
    // Same key upserted twice: the last one wins, two versions.
    sc.txn(&json!({"operations": [up("twice", json!("a")), up("twice", json!("b"))]}))
        .await
        .expect_no_content();
    sc.assert_value("twice", r#""b""#, "2").await;
}

/// Contract 7: any etag conflict => 409 ERR_STATE_TRANSACTION and nothing is applied.
async fn etag_conflict_applies_nothing(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("a", json!("a1")).await;
    sc.put("b", json!("b1")).await;
    let cases = [
        json!([
            up("new1", json!(1)),
            del("a"),
            {"operation": "upsert", "request": {"key": "b", "value": "b2", "etag": "9"}},
        ]),
        json!([
            up("new1", json!(1)),
            up("a", json!("a2")),
            {"operation": "delete", "request": {"key": "b", "etag": "5"}},
        ]),
        json!([
            {"operation": "upsert", "request": {"key": "ghost", "value": 1, "etag": "1"}},
            up("new1", json!(1)),
        ]),
        json!([
            up("new1", json!(1)),
            {"operation": "delete", "request": {"key": "ghost", "etag": "1"}},
        ]),
    ];
    for ops in cases {
        let r = sc.txn(&json!({ "operations": ops })).await;
        r.expect_legacy_error(409, "ERR_STATE_TRANSACTION");
        sc.assert_missing("new1").await;
        sc.assert_missing("ghost").await;
        sc.assert_value("a", r#""a1""#, "1").await;
        sc.assert_value("b", r#""b1""#, "1").await;
    }
}

/// Contract 7: etag checks see the effect of earlier ops in the same transaction.
async fn later_ops_see_earlier_ops(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("k", json!(1)).await;
    sc.txn(&json!({"operations": [
        {"operation": "upsert", "request": {"key": "k", "value": 2, "etag": "1"}},
        {"operation": "upsert", "request": {"key": "k", "value": 3, "etag": "2"}},
    ]}))
    .await
    .expect_no_content();
    sc.assert_value("k", "3", "3").await;
    // Stale etag for the second op (the first one already moved the version) => conflict.
    let r = sc
        .txn(&json!({"operations": [
            {"operation": "upsert", "request": {"key": "k", "value": 4, "etag": "3"}},
            {"operation": "upsert", "request": {"key": "k", "value": 5, "etag": "3"}},
        ]}))
        .await;
    r.expect_legacy_error(409, "ERR_STATE_TRANSACTION");
    sc.assert_value("k", "3", "3").await;
    // Delete then recreate: the version restarts; etag "1" refers to the new key.
    sc.txn(&json!({"operations": [
        {"operation": "delete", "request": {"key": "k", "etag": "3"}},
        up("k", json!("fresh")),
        {"operation": "upsert", "request": {"key": "k", "value": "fresher", "etag": "1"}},
    ]}))
    .await
    .expect_no_content();
    sc.assert_value("k", r#""fresher""#, "2").await;
    // Etag on a key created earlier in the same transaction.
    sc.txn(&json!({"operations": [
        up("n", json!(1)),
        {"operation": "delete", "request": {"key": "n", "etag": "1"}},
    ]}))
    .await
    .expect_no_content();
    sc.assert_missing("n").await;
}

async fn first_write_conflict_applies_nothing(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("exists", json!("orig")).await;
    let r = sc
        .txn(&json!({"operations": [
            up("side", json!(1)),
            {"operation": "upsert", "request": {"key": "exists", "value": "new",
                "options": {"concurrency": "first-write"}}},
        ]}))
        .await;
    r.expect_legacy_error(409, "ERR_STATE_TRANSACTION");
    sc.assert_missing("side").await;
    sc.assert_value("exists", r#""orig""#, "1").await;
    // First-write for a new key is fine.
    sc.txn(&json!({"operations": [
        {"operation": "upsert", "request": {"key": "fresh", "value": 1,
            "options": {"concurrency": "first-write"}}},
    ]}))
    .await
    .expect_no_content();
    sc.assert_value("fresh", "1", "1").await;
}

async fn non_numeric_etag_is_400(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("k", json!(1)).await;
    for op in ["upsert", "delete"] {
        let r = sc
            .txn(&json!({"operations": [
                up("side", json!(1)),
                {"operation": op, "request": {"key": "k", "value": 2, "etag": "abc"}},
            ]}))
            .await;
        r.expect_legacy_error(400, "ERR_STATE_TRANSACTION");
        sc.assert_missing("side").await;
        sc.assert_value("k", "1", "1").await;
    }
}

/// Contract 5: etag may be a JSON number in transaction requests.
async fn etag_as_json_number(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("k", json!(1)).await;
    let r = sc
        .raw(
            Method::POST,
            &txn_path(),
            r#"{"operations":[{"operation":"upsert","request":{"key":"k","value":2,"etag":1}}]}"#,
        )
        .await;
    r.expect_no_content();
    sc.assert_value("k", "2", "2").await;
    let r = sc
        .raw(
            Method::POST,
            &txn_path(),
            r#"{"operations":[{"operation":"delete","request":{"key":"k","etag":1}}]}"#,
        )
        .await;
    r.expect_legacy_error(409, "ERR_STATE_TRANSACTION");
    let r = sc
        .raw(
            Method::POST,
            &txn_path(),
            r#"{"operations":[{"operation":"delete","request":{"key":"k","etag":2}}]}"#,
        )
        .await;
    r.expect_no_content();
    sc.assert_missing("k").await;
}

async fn unknown_operation_is_400(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    for op in ["UPSERT", "get", "merge", ""] {
        let r = sc
            .txn(&json!({"operations": [
                up("side", json!(1)),
                {"operation": op, "request": {"key": "x", "value": 1}},
            ]}))
            .await;
        let v = r.expect_legacy_error(400, "ERR_NOT_SUPPORTED_STATE_OPERATION");
        assert!(
            v["message"].as_str().unwrap().contains("not supported"),
            "{}",
            r.describe()
        );
        sc.assert_missing("side").await;
        sc.assert_missing("x").await;
    }
}

/// Contract 7: empty/missing key in an op => 400 ERR_MALFORMED_REQUEST (Dapr QUIRK fixed).
async fn missing_or_empty_key_is_400(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let bad_ops = [
        json!({"operation": "upsert", "request": {"key": "", "value": 1}}),
        json!({"operation": "upsert", "request": {"value": 1}}),
        json!({"operation": "delete", "request": {"key": ""}}),
        json!({"operation": "delete", "request": {}}),
        json!({"operation": "upsert"}),
    ];
    for op in bad_ops {
        let r = sc
            .txn(&json!({"operations": [up("side", json!(1)), op]}))
            .await;
        r.expect_error(400, "ERR_MALFORMED_REQUEST");
        sc.assert_missing("side").await;
    }
}

async fn empty_operations_are_204(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    for body in ["{}", r#"{"operations":[]}"#, r#"{"metadata":{"a":"b"}}"#] {
        for m in [Method::POST, Method::PUT] {
            let r = sc.raw(m, &txn_path(), body).await;
            assert_eq!(r.status, 204, "body {body}: {}", r.describe());
            r.expect_no_content();
        }
    }
}

/// Contract 8: bad concurrency/consistency in a transaction => 400 ERR_STATE_TRANSACTION.
async fn invalid_options_are_400(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let bad = [
        json!({"operation": "upsert", "request": {"key": "x", "value": 1,
            "options": {"concurrency": "bogus"}}}),
        json!({"operation": "upsert", "request": {"key": "x", "value": 1,
            "options": {"consistency": "bogus"}}}),
        json!({"operation": "delete", "request": {"key": "x",
            "options": {"consistency": "bogus"}}}),
    ];
    for op in bad {
        let r = sc
            .txn(&json!({"operations": [up("side", json!(1)), op]}))
            .await;
        r.expect_legacy_error(400, "ERR_STATE_TRANSACTION");
        sc.assert_missing("side").await;
    }
    let body = json!({"operations": [up("side", json!(1))]}).to_string();
    for q in ["concurrency=bogus", "consistency=bogus"] {
        let r = sc
            .raw(Method::POST, &format!("{}?{q}", txn_path()), body.clone())
            .await;
        r.expect_legacy_error(400, "ERR_STATE_TRANSACTION");
    }
    let r = sc
        .send(
            sc.request(Method::POST, &txn_path())
                .header("consistency", "bogus")
                .body(body),
        )
        .await;
    r.expect_legacy_error(400, "ERR_STATE_TRANSACTION");
    sc.assert_missing("side").await;
}

/// Contract 8: header/query concurrency is the default for ops without options.
async fn header_and_query_defaults(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("e", json!("orig")).await;
    let body = json!({"operations": [up("side", json!(1)), up("e", json!("new"))]}).to_string();
    let r = sc
        .send(
            sc.request(Method::POST, &txn_path())
                .header("concurrency", "first-write")
                .body(body.clone()),
        )
        .await;
    r.expect_legacy_error(409, "ERR_STATE_TRANSACTION");
    let r = sc
        .raw(
            Method::POST,
            &format!("{}?concurrency=first-write", txn_path()),
            body.clone(),
        )
        .await;
    r.expect_legacy_error(409, "ERR_STATE_TRANSACTION");
    sc.assert_missing("side").await;
    sc.assert_value("e", r#""orig""#, "1").await;
    // An op with its own options is not affected by the default.
    let body = json!({"operations": [
        up("side", json!(1)),
        {"operation": "upsert", "request": {"key": "e", "value": "new",
            "options": {"concurrency": "last-write"}}},
    ]})
    .to_string();
    let r = sc
        .send(
            sc.request(Method::POST, &txn_path())
                .header("concurrency", "first-write")
                .header("consistency", "strong")
                .body(body),
        )
        .await;
    r.expect_no_content();
    sc.assert_value("e", r#""new""#, "2").await;
    sc.assert_value("side", "1", "1").await;
}

/// §7.1 item 19 and PUT.
async fn put_transaction_and_missing_delete(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.raw(
        Method::PUT,
        &txn_path(),
        json!({"operations": [del("non-existent-key")]}).to_string(),
    )
    .await
    .expect_no_content();
    sc.raw(
        Method::PUT,
        &txn_path(),
        json!({"operations": [up("p", json!({"x": [1, 2]}))]}).to_string(),
    )
    .await
    .expect_no_content();
    sc.assert_value("p", r#"{"x":[1,2]}"#, "1").await;
    // Values keep their raw text in transactions too.
    sc.raw(
        Method::POST,
        &txn_path(),
        r#"{"operations":[{"operation":"upsert","request":{"key":"raw","value":{"b":1,"a":0.30000000000000004}}}]}"#,
    )
    .await
    .expect_no_content();
    sc.assert_value("raw", r#"{"b":1,"a":0.30000000000000004}"#, "1")
        .await;
    // §7.1 item 21: per-op contentType metadata does not change what is stored.
    sc.txn(&json!({"operations": [
        {"operation": "upsert", "request": {"key": "key-json", "value": {"id": 1223, "name": "test"},
            "metadata": {"contentType": "application/json"}}},
        {"operation": "upsert", "request": {"key": "key-no-json", "value": {"id": 1223, "name": "test"}}},
    ]}))
    .await
    .expect_no_content();
    for k in ["key-json", "key-no-json"] {
        let r = sc.get(k).await;
        r.expect(200);
        assert_eq!(
            r.json(),
            json!({"id": 1223, "name": "test"}),
            "{}",
            r.describe()
        );
    }
}
