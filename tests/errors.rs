//! Error statuses, codes and body shapes (spec §1.1, §1.3, §1.6, §1.7, §2.1, H1, H2, H4, H5;
//! contract 12).

use reqwest::Method;
use serde_json::{Value, json};
use statecar_tests::{STORE, Sidecar, StoreKind, store_path, store_tests};

store_tests!(
    unknown_store_is_400_not_found_everywhere,
    malformed_save_bodies_are_400,
    scalar_metadata_values_are_accepted,
    store_is_checked_before_body_and_key,
    accepted_save_bodies_are_204,
    invalid_json_on_bulk_and_transaction_is_400,
    etag_conflict_error_is_legacy_shape,
    default_body_limit_is_4mib,
    custom_body_limit,
);

async fn unknown_store_is_400_not_found_everywhere(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let item = json!([{"key": "a", "value": 1}]).to_string();
    let txn = json!({"operations": [{"operation": "upsert", "request": {"key": "a", "value": 1}}]})
        .to_string();
    let reqs: Vec<(Method, &str, String)> = vec![
        (Method::POST, "/v1.0/state/nope", item.clone()),
        (Method::PUT, "/v1.0/state/nope", item.clone()),
        (Method::GET, "/v1.0/state/nope/a", String::new()),
        (Method::DELETE, "/v1.0/state/nope/a", String::new()),
        (
            Method::POST,
            "/v1.0/state/nope/bulk",
            r#"{"keys":["a"]}"#.into(),
        ),
        (Method::POST, "/v1.0/state/nope/transaction", txn),
    ];
    for (m, path, body) in reqs {
        let r = sc.raw(m, path, body).await;
        let v = r.expect_rich_error(400, "ERR_STATE_STORE_NOT_FOUND", "DAPR_STATE_NOT_FOUND");
        assert_eq!(
            v["message"],
            "state store nope is not found",
            "{}",
            r.describe()
        );
        let details = v["details"].as_array().unwrap();
        assert_eq!(details.len(), 1, "exactly one detail: {}", r.describe());
        assert_eq!(
            details[0]["metadata"]["appID"],
            sc.app_id(),
            "ErrorInfo.metadata.appID: {}",
            r.describe()
        );
    }
}

/// Spec §1.7 "order of checks": the store must exist before the body or key is looked at.
async fn store_is_checked_before_body_and_key(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let reqs: Vec<(Method, &str, &str)> = vec![
        (Method::POST, "/v1.0/state/nope", "foobar"),
        (Method::POST, "/v1.0/state/nope", "[]"),
        (Method::POST, "/v1.0/state/nope", r#"[{"key":"a||b"}]"#),
        (Method::GET, "/v1.0/state/nope/a||b", ""),
        (Method::DELETE, "/v1.0/state/nope/a||b", ""),
        (Method::POST, "/v1.0/state/nope/bulk", "foobar"),
        (Method::POST, "/v1.0/state/nope/bulk", "{}"),
        (Method::POST, "/v1.0/state/nope/transaction", "foobar"),
        (
            Method::POST,
            "/v1.0/state/nope/transaction",
            r#"{"operations":[]}"#,
        ),
    ];
    for (m, path, body) in reqs {
        let r = sc.raw(m, path, body).await;
        r.expect_rich_error(400, "ERR_STATE_STORE_NOT_FOUND", "DAPR_STATE_NOT_FOUND");
    }
    // Key legality before the store call, body before keys.
    let r = sc.save_raw(r#"[{"key":"ok","value":1},{"key":""}]"#).await;
    r.expect_legacy_error(400, "ERR_MALFORMED_REQUEST");
}

/// H4 / spec §2.1 list, adjusted by contract 5 (a numeric etag is not malformed).
async fn malformed_save_bodies_are_400(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let bodies = [
        "",
        "{}",
        "foobar",
        r#""a string""#,
        "[1]",
        "[{}]",
        r#"[{"key":"key1","value":"value1"},]"#,
        r#"[{"ey":"key0","value":"value1"}]"#,
        r#"[{"key":"","value":"value1"}]"#,
        r#"[{"key":null,"value":"value1"}]"#,
        r#"[{"key":1,"value":"value1"}]"#,
        r#"[{"key":"k","value":"v","metadata":"x"}]"#,
        r#"[{"key":"k","value":"v","options":"first-write"}]"#,
        r#"[{"key":"k","value":"v","etag":{"a":1}}]"#,
        r#"[{"key":"k","value":"v","etag":true}]"#,
        r#"[{"key":"k","value":tru}]"#,
        r#"[{"key":"k","value":"v""#,
    ];
    for body in bodies {
        for m in [Method::POST, Method::PUT] {
            let r = sc.raw(m, &store_path(STORE), body).await;
            assert_eq!(r.status, 400, "body {body:?}: {}", r.describe());
            r.expect_legacy_error(400, "ERR_MALFORMED_REQUEST");
        }
    }
    sc.assert_missing("k").await;
    sc.assert_missing("key1").await;
    // `||` => rich variant of the same code.
    let r = sc.save_raw(r#"[{"key":"ke||y1","value":"value1"}]"#).await;
    r.expect_rich_error(400, "ERR_MALFORMED_REQUEST", "DAPR_STATE_ILLEGAL_KEY");
}

/// Spec §2.1: item `metadata` is an object of string -> string; other value types are a
/// malformed body.
/// Metadata values that are numbers or booleans are used as their text; objects and arrays
/// are rejected.
async fn scalar_metadata_values_are_accepted(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.save_raw(r#"[{"key":"k","value":"v","metadata":{"ttlInSeconds":60}}]"#)
        .await
        .expect_no_content();
    let r = sc.get("k").await;
    r.expect(200);
    assert!(
        r.header("metadata.ttlExpireTime").is_some(),
        "a numeric ttlInSeconds sets a TTL: {}",
        r.describe()
    );
    sc.save_raw(r#"[{"key":"b","value":"v","metadata":{"contentType":true}}]"#)
        .await
        .expect_no_content();
    for body in [
        r#"[{"key":"o","value":"v","metadata":{"a":{"b":"c"}}}]"#,
        r#"[{"key":"o","value":"v","metadata":{"a":[1]}}]"#,
    ] {
        let r = sc.save_raw(body).await;
        r.expect_legacy_error(400, "ERR_MALFORMED_REQUEST");
    }
    sc.assert_missing("o").await;
}

async fn accepted_save_bodies_are_204(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let bodies = [
        "[]",
        "null",
        " [ ] ",
        r#"[{"key":"key1","vae":"value1"}]"#,
        r#"[{"key":"key2","value":"value1"}]"#,
        r#"[{"key":"key3","value":"value1"},{"key":"key4","value":"value2"}]"#,
        r#"[{"key":"key5","value":"v","etag":null,"metadata":null,"options":null}]"#,
        r#"[{"key":"key6","value":"v","metadata":{},"options":{},"contentType":"application/json"}]"#,
    ];
    for body in bodies {
        let r = sc.save_raw(body).await;
        assert_eq!(r.status, 204, "body {body:?}: {}", r.describe());
        r.expect_no_content();
    }
    sc.assert_value("key1", "null", "1").await;
    for k in ["key2", "key3", "key4", "key5", "key6"] {
        let (_, e) = sc.must_get(k).await;
        assert_eq!(e, "1", "{k}");
    }
}

/// H5: invalid JSON on bulk and transaction, POST and PUT.
async fn invalid_json_on_bulk_and_transaction_is_400(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let bulk = format!("{}/bulk", store_path(STORE));
    let txn = format!("{}/transaction", store_path(STORE));
    let cases: Vec<(&str, &str)> = vec![
        (&bulk, "foobar"),
        (&bulk, r#"{"keys":"#),
        (&bulk, r#"{"keys":"k"}"#),
        (&bulk, r#"{"keys":[1]}"#),
        (&bulk, "[]"),
        (&bulk, ""),
        (&txn, "foobar"),
        (&txn, r#"{"operations":"#),
        (&txn, r#"{"operations":{}}"#),
        (
            &txn,
            r#"{"operations":[{"operation":"upsert","request":"k"}]}"#,
        ),
        (
            &txn,
            r#"{"operations":[{"operation":"upsert","request":{"key":1}}]}"#,
        ),
        (&txn, "[]"),
        (&txn, ""),
    ];
    for (path, body) in cases {
        for m in [Method::POST, Method::PUT] {
            let r = sc.raw(m, path, body).await;
            assert_eq!(r.status, 400, "{path} body {body:?}: {}", r.describe());
            r.expect_legacy_error(400, "ERR_MALFORMED_REQUEST");
        }
    }
}

/// Spec §1.6: conflict errors use the legacy shape (no details).
async fn etag_conflict_error_is_legacy_shape(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("c", json!(1)).await;
    let r = sc
        .save(&json!([{"key": "c", "value": 2, "etag": "7"}]))
        .await;
    let v: Value = r.expect_legacy_error(409, "ERR_STATE_SAVE");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("failed saving state in state store statestore"),
        "{}",
        r.describe()
    );
}

/// Spec §1.3 + contract 12: over the limit => 400 ERR_MALFORMED_REQUEST.
async fn default_body_limit_is_4mib(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let over = 4 * 1024 * 1024 + 1024;
    let body = format!(r#"[{{"key":"big","value":"{}"}}]"#, "x".repeat(over));
    let r = sc.save_raw(&body).await;
    r.expect_legacy_error(400, "ERR_MALFORMED_REQUEST");
    sc.assert_missing("big").await;
    let under = 4 * 1024 * 1024 - 1024;
    let body = format!(r#"[{{"key":"big","value":"{}"}}]"#, "x".repeat(under));
    sc.save_raw(&body).await.expect_no_content();
}

async fn custom_body_limit(kind: StoreKind) {
    let sc = Sidecar::builder()
        .store(kind)
        .arg("--max-body-size")
        .arg("1Mi")
        .start()
        .await;
    let mib = 1024 * 1024;
    let fits = format!(r#"[{{"key":"k","value":"{}"}}]"#, "y".repeat(mib - 1024));
    sc.save_raw(&fits).await.expect_no_content();
    let over = format!(r#"[{{"key":"k2","value":"{}"}}]"#, "y".repeat(mib + 100));
    sc.save_raw(&over)
        .await
        .expect_legacy_error(400, "ERR_MALFORMED_REQUEST");
    sc.assert_missing("k2").await;
    let txn = json!({"operations": [{"operation": "upsert",
        "request": {"key": "k3", "value": "z".repeat(mib + 100)}}]});
    sc.txn(&txn)
        .await
        .expect_legacy_error(400, "ERR_MALFORMED_REQUEST");
    sc.assert_missing("k3").await;
    let bulk = json!({"keys": vec!["k".repeat(1000); 1100]});
    sc.bulk(&bulk)
        .await
        .expect_legacy_error(400, "ERR_MALFORMED_REQUEST");
}

/// H2: no state store at all => 500 ERR_STATE_STORE_NOT_CONFIGURED (rich).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_configured_is_500() {
    let sc = Sidecar::builder().start().await;
    let item = json!([{"key": "a", "value": 1}]).to_string();
    let reqs: Vec<(Method, &str, String)> = vec![
        (Method::POST, "/v1.0/state/mystore", item.clone()),
        (Method::PUT, "/v1.0/state/mystore", item),
        (Method::GET, "/v1.0/state/mystore/a", String::new()),
        (Method::DELETE, "/v1.0/state/mystore/a", String::new()),
        (
            Method::POST,
            "/v1.0/state/mystore/bulk",
            r#"{"keys":["a"]}"#.into(),
        ),
        (
            Method::POST,
            "/v1.0/state/mystore/transaction",
            r#"{"operations":[]}"#.into(),
        ),
    ];
    for (m, path, body) in reqs {
        let r = sc.raw(m, path, body).await;
        let v = r.expect_rich_error(
            500,
            "ERR_STATE_STORE_NOT_CONFIGURED",
            "DAPR_STATE_NOT_CONFIGURED",
        );
        assert_eq!(
            v["message"],
            "state store mystore is not configured",
            "{}",
            r.describe()
        );
        assert_eq!(
            v["details"].as_array().unwrap().len(),
            1,
            "{}",
            r.describe()
        );
    }
}

/// H2, query path (spec §1.7: query also reports not-configured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_configured_query_is_500() {
    let sc = Sidecar::builder().start().await;
    let r = sc
        .raw(
            Method::POST,
            "/v1.0-alpha1/state/mystore/query",
            r#"{"filter":{}}"#,
        )
        .await;
    r.expect_rich_error(
        500,
        "ERR_STATE_STORE_NOT_CONFIGURED",
        "DAPR_STATE_NOT_CONFIGURED",
    );
}

/// Spec §1.1 + contract 12: unknown route / wrong method => 404 ERR_DIRECT_INVOKE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_404_direct_invoke() {
    let sc = Sidecar::start(StoreKind::Memory).await;
    let reqs: Vec<(Method, &str)> = vec![
        (Method::PATCH, "/v1.0/state/statestore"),
        (Method::POST, "/v1.0/state/statestore/somekey"),
        (Method::PUT, "/v1.0/state/statestore/somekey"),
        (Method::GET, "/v1.0/state/statestore"),
        (Method::DELETE, "/v1.0/state/statestore"),
        (Method::POST, "/v1.0/state/statestore/query"),
        (Method::PATCH, "/v1.0/state/statestore/k"),
        (Method::GET, "/v1.0/nothing-here"),
        (Method::GET, "/"),
        (Method::GET, "/v2.0/state/statestore/k"),
        (Method::POST, "/v1.0/healthz"),
    ];
    for (m, path) in reqs {
        let r = sc.raw(m, path, "[]").await;
        let v = r.expect_legacy_error(404, "ERR_DIRECT_INVOKE");
        assert_eq!(
            v["message"],
            "failed getting app id either from the URL path or the header dapr-app-id",
            "{}",
            r.describe()
        );
    }
}
