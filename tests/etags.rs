//! ETags and concurrency modes on save and delete (spec §3.2, §7.1 items 22-32, H7, H9;
//! contract 1-6, 8, 10).

use reqwest::Method;
use serde_json::json;
use statecar_tests::{STORE, Sidecar, StoreKind, key_path, store_path, store_tests};

store_tests!(
    save_with_matching_etag,
    save_with_wrong_etag_is_409_and_changes_nothing,
    etag_for_missing_key_is_409,
    non_numeric_etag_is_400,
    etag_is_compared_numerically,
    etag_may_be_a_json_number,
    last_write_still_honours_etag,
    first_write_without_etag,
    first_write_with_etag,
    first_write_from_query_and_header,
    item_options_override_request_defaults,
    multi_item_save_partial_failure,
    delete_with_if_match,
    conformance_etag_flow,
);

async fn save_with_matching_etag(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("k", json!("first-value")).await;
    let (_, e1) = sc.must_get("k").await;
    assert_eq!(e1, "1");
    sc.save(&json!([{"key": "k", "value": "second-value", "etag": e1}]))
        .await
        .expect_no_content();
    sc.assert_value("k", r#""second-value""#, "2").await;
}

async fn save_with_wrong_etag_is_409_and_changes_nothing(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("k", json!("v1")).await;
    for bad in ["2", "9999999", "0"] {
        let r = sc
            .save(&json!([{"key": "k", "value": "v2", "etag": bad}]))
            .await;
        let v = r.expect_legacy_error(409, "ERR_STATE_SAVE");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("failed saving state in state store {STORE}")),
            "message: {msg}"
        );
        sc.assert_value("k", r#""v1""#, "1").await;
    }
}

/// Contract 2: an etag for a key that does not exist is a conflict (both stores).
async fn etag_for_missing_key_is_409(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let r = sc
        .save(&json!([{"key": "ghost", "value": "v", "etag": "1"}]))
        .await;
    r.expect_legacy_error(409, "ERR_STATE_SAVE");
    sc.assert_missing("ghost").await;
    // Also after a delete.
    sc.put("gone", json!(1)).await;
    sc.delete("gone", None).await.expect_no_content();
    let r = sc
        .save(&json!([{"key": "gone", "value": 2, "etag": "1"}]))
        .await;
    r.expect_legacy_error(409, "ERR_STATE_SAVE");
    sc.assert_missing("gone").await;
}

async fn non_numeric_etag_is_400(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("k", json!("v1")).await;
    for bad in ["abc", "1a", "x1"] {
        let r = sc
            .save(&json!([{"key": "k", "value": "v2", "etag": bad}]))
            .await;
        r.expect_legacy_error(400, "ERR_STATE_SAVE");
    }
    // Also for a missing key.
    let r = sc
        .save(&json!([{"key": "nope", "value": "v2", "etag": "abc"}]))
        .await;
    r.expect_legacy_error(400, "ERR_STATE_SAVE");
    sc.assert_missing("nope").await;
    sc.assert_value("k", r#""v1""#, "1").await;
}

/// Contract 2: "007" matches version 7.
async fn etag_is_compared_numerically(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    for i in 0..7 {
        sc.put("n", json!(i)).await;
    }
    sc.save(&json!([{"key": "n", "value": "eight", "etag": "007"}]))
        .await
        .expect_no_content();
    sc.assert_value("n", r#""eight""#, "8").await;
}

/// Contract 5: etag may be a JSON number.
async fn etag_may_be_a_json_number(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("num", json!("a")).await;
    sc.save_raw(r#"[{"key":"num","value":"b","etag":1}]"#)
        .await
        .expect_no_content();
    sc.assert_value("num", r#""b""#, "2").await;
    let r = sc.save_raw(r#"[{"key":"num","value":"c","etag":1}]"#).await;
    r.expect_legacy_error(409, "ERR_STATE_SAVE");
    // Spec §2.1's malformed example `"etag":123` on a missing key: a conflict, not malformed.
    let r = sc
        .save_raw(r#"[{"key":"key1","value":"value1","etag":123}]"#)
        .await;
    r.expect_legacy_error(409, "ERR_STATE_SAVE");
    sc.assert_missing("key1").await;
}

/// Contract 2: the etag is honoured even with concurrency last-write (Dapr's Redis QUIRK fixed).
async fn last_write_still_honours_etag(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("lw", json!(1)).await;
    let r = sc
        .save(&json!([{"key": "lw", "value": 2, "etag": "5",
            "options": {"concurrency": "last-write"}}]))
        .await;
    r.expect_legacy_error(409, "ERR_STATE_SAVE");
    sc.assert_value("lw", "1", "1").await;
    sc.save(&json!([{"key": "lw", "value": 3, "etag": "1",
        "options": {"concurrency": "last-write"}}]))
        .await
        .expect_no_content();
    sc.assert_value("lw", "3", "2").await;
    // Without etag: unconditional.
    sc.save(&json!([{"key": "lw", "value": 4, "options": {"concurrency": "last-write"}}]))
        .await
        .expect_no_content();
    sc.assert_value("lw", "4", "3").await;
}

/// §7.1 item 31 + contract 3: first-write without etag (absent, null or "") inserts only.
async fn first_write_without_etag(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let variants = [
        json!({"key": "fw", "value": "value1", "options": {"concurrency": "first-write", "consistency": "strong"}}),
        json!({"key": "fw", "value": "value1", "etag": "", "options": {"concurrency": "first-write", "consistency": "strong"}}),
        json!({"key": "fw", "value": "value1", "etag": null, "options": {"concurrency": "first-write"}}),
    ];
    for item in variants {
        sc.delete("fw", None).await.expect_no_content();
        sc.save(&json!([item.clone()])).await.expect_no_content();
        sc.assert_value("fw", r#""value1""#, "1").await;
        let mut second = item.clone();
        second["value"] = json!("value2");
        let r = sc.save(&json!([second])).await;
        r.expect_legacy_error(409, "ERR_STATE_SAVE");
        sc.assert_value("fw", r#""value1""#, "1").await;
    }
    // A later last-write save without etag is unconditional again (no sticky marker).
    sc.put("fw", json!("value3")).await;
    sc.assert_value("fw", r#""value3""#, "2").await;
}

/// §7.1 item 32.
async fn first_write_with_etag(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("fwe", json!("value1")).await;
    let (_, e) = sc.must_get("fwe").await;
    sc.save(&json!([{"key": "fwe", "value": "value2", "etag": e,
        "options": {"concurrency": "first-write"}}]))
        .await
        .expect_no_content();
    let (v, e2) = sc.must_get("fwe").await;
    assert_eq!(v, r#""value2""#);
    assert_ne!(e2, e);
    let r = sc
        .save(&json!([{"key": "fwe", "value": "value3", "etag": e,
            "options": {"concurrency": "first-write"}}]))
        .await;
    r.expect_legacy_error(409, "ERR_STATE_SAVE");
    sc.assert_value("fwe", r#""value2""#, &e2).await;
}

/// Contract 8: `concurrency` as query param or header is the default for items.
async fn first_write_from_query_and_header(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("q", json!("orig")).await;
    let body = json!([{"key": "q", "value": "new"}]).to_string();
    let r = sc
        .raw(
            Method::POST,
            &format!("{}?concurrency=first-write", store_path(STORE)),
            body.clone(),
        )
        .await;
    r.expect_legacy_error(409, "ERR_STATE_SAVE");
    let r = sc
        .send(
            sc.request(Method::POST, &store_path(STORE))
                .header("concurrency", "first-write")
                .body(body.clone()),
        )
        .await;
    r.expect_legacy_error(409, "ERR_STATE_SAVE");
    sc.assert_value("q", r#""orig""#, "1").await;
    // For a new key the first-write default inserts.
    let r = sc
        .send(
            sc.request(Method::PUT, &store_path(STORE))
                .header("concurrency", "first-write")
                .body(json!([{"key": "q-new", "value": 1}]).to_string()),
        )
        .await;
    r.expect_no_content();
    sc.assert_value("q-new", "1", "1").await;
}

/// Contract 8: header/query values apply only to items without their own options.
async fn item_options_override_request_defaults(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("o", json!("orig")).await;
    let body = json!([{"key": "o", "value": "new",
        "options": {"concurrency": "last-write"}}])
    .to_string();
    let r = sc
        .send(
            sc.request(Method::POST, &store_path(STORE))
                .header("concurrency", "first-write")
                .body(body),
        )
        .await;
    r.expect_no_content();
    sc.assert_value("o", r#""new""#, "2").await;
}

/// Contract 10 / H7 / §7.1 item 25: items are independent; the etag failure decides the status.
async fn multi_item_save_partial_failure(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("k2", json!("first")).await;
    sc.put("k3", json!("first")).await;
    let r = sc
        .save(&json!([
            {"key": "k2", "value": "second", "etag": "9999999"},
            {"key": "k3", "value": "second", "etag": "1"},
        ]))
        .await;
    r.expect_legacy_error(409, "ERR_STATE_SAVE");
    sc.assert_value("k2", r#""first""#, "1").await;
    sc.assert_value("k3", r#""second""#, "2").await;

    let r = sc
        .save(&json!([
            {"key": "k4", "value": "x", "etag": "not-a-number"},
            {"key": "k5", "value": "y"},
        ]))
        .await;
    // Input errors are found before anything is written: no item of the request applies.
    r.expect_legacy_error(400, "ERR_STATE_SAVE");
    sc.assert_missing("k4").await;
    sc.assert_missing("k5").await;

    // Correct etags on both => 204.
    sc.save(&json!([
        {"key": "k2", "value": "third", "etag": "1"},
        {"key": "k3", "value": "third", "etag": "2"},
    ]))
    .await
    .expect_no_content();
    sc.assert_value("k2", r#""third""#, "2").await;
    sc.assert_value("k3", r#""third""#, "3").await;
}

/// Contract 6 / H9 / §7.1 items 27-28.
async fn delete_with_if_match(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("d", json!("v")).await;
    sc.put("d", json!("v2")).await;
    let r = sc.delete("d", Some("1")).await;
    let v = r.expect_legacy_error(409, "ERR_STATE_DELETE");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("failed deleting state with key d"),
        "{}",
        r.describe()
    );
    sc.assert_value("d", r#""v2""#, "2").await;
    let r = sc.delete("d", Some("9999999")).await;
    r.expect_legacy_error(409, "ERR_STATE_DELETE");
    let r = sc.delete("d", Some("abc")).await;
    r.expect_legacy_error(400, "ERR_STATE_DELETE");
    sc.assert_value("d", r#""v2""#, "2").await;
    sc.delete("d", Some("2")).await.expect_no_content();
    sc.assert_missing("d").await;
    // Missing key with If-Match => 409; non-numeric => 400.
    sc.delete("d", Some("2"))
        .await
        .expect_legacy_error(409, "ERR_STATE_DELETE");
    sc.delete("d", Some("xyz"))
        .await
        .expect_legacy_error(400, "ERR_STATE_DELETE");
    // Matching etag with concurrency=first-write query is still fine.
    sc.put("d", json!(1)).await;
    let r = sc
        .send(
            sc.request(
                Method::DELETE,
                &format!("{}?concurrency=first-write", key_path("d")),
            )
            .header("If-Match", "1"),
        )
        .await;
    r.expect_no_content();
    sc.assert_missing("d").await;
}

/// §7.1 items 22-30 over HTTP (bulk set = multi-item save, bulk delete = deletes).
async fn conformance_etag_flow(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let keys = ["etag1", "etag2", "etag3", "etag4"];
    let items: Vec<_> = keys
        .iter()
        .map(|k| json!({"key": k, "value": "first-value"}))
        .collect();
    sc.save(&json!(items)).await.expect_no_content();
    let (v, e1) = sc.must_get("etag1").await;
    assert_eq!(v, r#""first-value""#);
    assert!(!e1.is_empty());
    let r = sc.bulk(&json!({"keys": ["etag2", "etag3", "etag4"]})).await;
    r.expect(200);
    let arr = r.json();
    let arr = arr.as_array().unwrap();
    assert_eq!(arr.len(), 3, "{}", r.describe());
    let etags: Vec<String> = arr
        .iter()
        .map(|i| i["etag"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(etags.iter().all(|e| !e.is_empty()), "{}", r.describe());
    // 23-24
    sc.save(&json!([{"key": "etag1", "value": "second-value", "etag": "9999999"}]))
        .await
        .expect(409);
    sc.save(&json!([{"key": "etag1", "value": "second-value", "etag": e1}]))
        .await
        .expect_no_content();
    let (v, e1b) = sc.must_get("etag1").await;
    assert_eq!(v, r#""second-value""#);
    assert_ne!(e1b, e1);
    // 27-28
    sc.delete("etag1", Some("9999999")).await.expect(409);
    sc.delete("etag1", Some(&e1b)).await.expect_no_content();
    sc.assert_missing("etag1").await;
    // 29: bulk delete [etag2 correct, etag3 bad]
    sc.delete("etag2", Some(&etags[0]))
        .await
        .expect_no_content();
    sc.delete("etag3", Some("9999999")).await.expect(409);
    sc.assert_missing("etag2").await;
    sc.assert_value("etag3", r#""first-value""#, &etags[1])
        .await;
    // 30
    sc.delete("etag3", Some(&etags[1]))
        .await
        .expect_no_content();
    sc.delete("etag4", Some(&etags[2]))
        .await
        .expect_no_content();
    let r = sc.bulk(&json!({"keys": ["etag3", "etag4"]})).await;
    r.expect(200);
    assert_eq!(r.json(), json!([{"key": "etag3"}, {"key": "etag4"}]));
}
