//! Save / get / delete basics over HTTP (spec §2.1, §2.2, §2.4, §3.1; contract 1, 8, 11, 13).

use reqwest::Method;
use serde_json::json;
use statecar_tests::{STORE, Sidecar, StoreKind, detail, esc, key_path, store_path, store_tests};

store_tests!(
    save_then_get_returns_value_verbatim,
    omitted_value_reads_as_null,
    get_missing_key_is_204_empty,
    save_via_put_and_trailing_slash,
    duplicate_slashes_are_collapsed,
    etag_counts_writes_and_restarts_after_delete,
    delete_without_etag_is_unconditional,
    multi_item_save_with_duplicate_keys,
    path_keys_are_query_unescaped,
    reserved_words_are_plain_keys,
    illegal_key_is_rejected_everywhere,
    consistency_and_concurrency_values_are_validated,
    metadata_query_params_are_accepted,
    large_values_round_trip,
    unicode_and_odd_store_names,
);

/// Contract 13: the raw JSON text of `value` is stored and returned verbatim (no re-encoding:
/// key order, number precision and inner whitespace are kept).
async fn save_then_get_returns_value_verbatim(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let cases: &[(&str, &str)] = &[
        ("str", r#""hello world""#),
        ("empty-str", r#""""#),
        ("json-in-str", r#""{\"a\":\"b\"}""#),
        ("int", "123"),
        ("neg-float", "-0.5"),
        ("bool", "true"),
        ("null", "null"),
        ("array", r#"[1,"two",{"three":3}]"#),
        (
            "object",
            r#"{"z":1,"a":3.14159265,"big":12345678901234567890,"html":"<&>"}"#,
        ),
        ("spaced", r#"{"a": [1, 2], "b" : "c"}"#),
        ("unicode", r#""h\u00e9llo ⏱️""#),
    ];
    for (key, raw) in cases {
        let body = format!(r#"[{{"key":"{key}","value":{raw}}}]"#);
        sc.save_raw(&body).await.expect_no_content();
        let r = sc.get(key).await;
        r.expect(200);
        assert_eq!(
            r.text(),
            *raw,
            "value of {key} must come back verbatim: {}",
            r.describe()
        );
        assert!(
            r.content_type()
                .unwrap_or_default()
                .starts_with("application/json"),
            "GET 200 must be application/json: {}",
            r.describe()
        );
        assert_eq!(r.etag().as_deref(), Some("1"), "{}", r.describe());
    }
}

async fn omitted_value_reads_as_null(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.save(&json!([{"key": "nov"}])).await.expect_no_content();
    let r = sc.get("nov").await;
    r.expect(200);
    assert_eq!(r.text(), "null", "{}", r.describe());
    assert_eq!(r.etag().as_deref(), Some("1"));
}

async fn get_missing_key_is_204_empty(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let r = sc.get("never-written").await;
    r.expect_no_content();
    assert!(r.etag().is_none(), "{}", r.describe());
    // consistency=strong is accepted on GET.
    let r = sc
        .get_path(&format!("{}?consistency=strong", key_path("never-written")))
        .await;
    r.expect_no_content();
}

async fn save_via_put_and_trailing_slash(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let body = json!([{"key": "p", "value": "via-put"}]).to_string();
    sc.raw(Method::PUT, &store_path(STORE), body)
        .await
        .expect_no_content();
    sc.assert_value("p", r#""via-put""#, "1").await;
    // Spec §1.1: a single trailing slash is ignored.
    let body = json!([{"key": "p", "value": "slash"}]).to_string();
    sc.raw(Method::POST, &format!("{}/", store_path(STORE)), body)
        .await
        .expect_no_content();
    sc.assert_value("p", r#""slash""#, "2").await;
}

/// Spec §1.1: duplicate slashes are collapsed before routing.
async fn duplicate_slashes_are_collapsed(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let body = json!([{"key": "ds", "value": "v"}]).to_string();
    sc.raw(Method::POST, "/v1.0//state/statestore", body)
        .await
        .expect_no_content();
    let r = sc.get_path("/v1.0/state//statestore//ds").await;
    r.expect(200);
    assert_eq!(r.text(), r#""v""#);
}

/// Contract 1: "1" after the first write, +1 per write, "1" again after delete.
async fn etag_counts_writes_and_restarts_after_delete(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    for i in 1..=3 {
        sc.put("e", json!(i)).await;
        sc.assert_value("e", &i.to_string(), &i.to_string()).await;
    }
    sc.delete("e", None).await.expect_no_content();
    sc.assert_missing("e").await;
    sc.put("e", json!("again")).await;
    sc.assert_value("e", r#""again""#, "1").await;
}

async fn delete_without_etag_is_unconditional(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("d", json!("x")).await;
    sc.put("d", json!("y")).await;
    sc.delete("d", None).await.expect_no_content();
    sc.assert_missing("d").await;
    // Missing key: still 204.
    sc.delete("d", None).await.expect_no_content();
    sc.delete("never-existed", None).await.expect_no_content();
    // Empty If-Match counts as no etag.
    sc.put("d2", json!("x")).await;
    sc.delete("d2", Some("")).await.expect_no_content();
    sc.assert_missing("d2").await;
}

async fn multi_item_save_with_duplicate_keys(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.save(&json!([
        {"key": "m1", "value": "a"},
        {"key": "m2", "value": {"n": 2}},
    ]))
    .await
    .expect_no_content();
    sc.assert_value("m1", r#""a""#, "1").await;
    sc.assert_value("m2", r#"{"n":2}"#, "1").await;
    // Spec §2.1: four items with duplicate keys => 204.
    sc.save(&json!([
        {"key": "dup", "value": 1},
        {"key": "dup", "value": 2},
        {"key": "dup2", "value": 3},
        {"key": "dup2", "value": 4},
    ]))
    .await
    .expect_no_content();
    let (v, etag) = sc.must_get("dup").await;
    assert!(v == "1" || v == "2", "dup = {v}");
    assert_eq!(etag, "2", "two writes to dup");
    let (v, _) = sc.must_get("dup2").await;
    assert!(v == "3" || v == "4", "dup2 = {v}");
}

/// Spec §1.1 + contract 11: path keys are query-unescaped, except that `+` stays literal.
async fn path_keys_are_query_unescaped(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("a/b", json!("slash")).await;
    sc.put("a b", json!("space")).await;
    sc.put("a+b", json!("plus")).await;
    sc.put("ü-ключ-🔑", json!("unicode")).await;
    sc.put("q?x=1&y#z", json!("query-chars")).await;
    sc.put("100%", json!("percent")).await;

    let expect = |path: &'static str, body: &'static str| {
        let sc = &sc;
        async move {
            let r = sc.get_path(&format!("/v1.0/state/{STORE}/{path}")).await;
            r.expect(200);
            assert_eq!(r.text(), body, "GET {path}: {}", r.describe());
        }
    };
    expect("a%2Fb", r#""slash""#).await;
    expect("a%2fb", r#""slash""#).await;
    expect("a%20b", r#""space""#).await;
    expect("a+b", r#""plus""#).await;
    expect("a%2Bb", r#""plus""#).await;
    expect("q%3Fx%3D1%26y%23z", r#""query-chars""#).await;
    expect("100%25", r#""percent""#).await;
    let r = sc.get("ü-ключ-🔑").await;
    r.expect(200);
    assert_eq!(r.text(), r#""unicode""#);

    // Deleting through an escaped path removes the right key only.
    sc.raw(Method::DELETE, "/v1.0/state/statestore/a%2Bb", "")
        .await
        .expect_no_content();
    sc.assert_missing("a+b").await;
    sc.assert_value("a b", r#""space""#, "1").await;
    sc.raw(Method::DELETE, "/v1.0/state/statestore/a%2Fb", "")
        .await
        .expect_no_content();
    sc.assert_missing("a/b").await;
}

/// Spec §1.1: GET/DELETE of `bulk`, `transaction`, `query` are plain keys.
async fn reserved_words_are_plain_keys(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    for k in ["bulk", "transaction", "query"] {
        sc.get(k).await.expect_no_content();
        sc.put(k, json!(k)).await;
        sc.assert_value(k, &format!("\"{k}\""), "1").await;
        sc.delete(k, None).await.expect_no_content();
        sc.assert_missing(k).await;
    }
}

/// Spec §1.7 / H3 + contract 11: `||` in any key is a rich 400 ERR_MALFORMED_REQUEST.
async fn illegal_key_is_rejected_everywhere(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let check = |r: &statecar_tests::Resp, key: &str, with_field: bool| {
        let v = r.expect_rich_error(400, "ERR_MALFORMED_REQUEST", "DAPR_STATE_ILLEGAL_KEY");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("input key/keyPrefix '{key}' can't contain '||'")),
            "message: {}",
            r.describe()
        );
        let ri = detail(&v, "ResourceInfo")
            .unwrap_or_else(|| panic!("ResourceInfo detail missing: {}", r.describe()));
        assert_eq!(ri["resource_type"], "state", "{}", r.describe());
        assert_eq!(ri["resource_name"], STORE, "{}", r.describe());
        let br = detail(&v, "BadRequest")
            .unwrap_or_else(|| panic!("BadRequest detail missing: {}", r.describe()));
        if with_field {
            assert_eq!(br["field_violations"][0]["field"], key, "{}", r.describe());
        }
        assert_eq!(
            v["details"].as_array().unwrap().len(),
            3,
            "{}",
            r.describe()
        );
    };
    let r = sc
        .save(&json!([{"key": "ke||y1", "value": "value1"}]))
        .await;
    check(&r, "ke||y1", true);
    let r = sc.get_path("/v1.0/state/statestore/ke%7C%7Cy1").await;
    check(&r, "ke||y1", true);
    let r = sc.get_path("/v1.0/state/statestore/ke||y1").await;
    check(&r, "ke||y1", true);
    let r = sc
        .raw(Method::DELETE, "/v1.0/state/statestore/ke%7C%7Cy1", "")
        .await;
    check(&r, "ke||y1", true);
    let r = sc.bulk(&json!({"keys": ["fine", "a||b"]})).await;
    check(&r, "a||b", true);
    let r = sc
        .txn(&json!({"operations": [
            {"operation": "upsert", "request": {"key": "ok", "value": 1}},
            {"operation": "upsert", "request": {"key": "x||y", "value": 1}},
        ]}))
        .await;
    check(&r, "x||y", false);
    sc.assert_missing("ok").await;
    // A single `|` is fine.
    sc.put("a|b", json!(1)).await;
    sc.assert_value("a|b", "1", "1").await;
}

/// Contract 8: only first-write/last-write and strong/eventual; anything else is a 400 with the
/// endpoint's errorCode, whether given in options, query or header.
async fn consistency_and_concurrency_values_are_validated(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("cv", json!("orig")).await;
    let kp = key_path("cv");

    // GET
    sc.get_path(&format!("{kp}?consistency=eventual"))
        .await
        .expect(200);
    sc.get_path(&format!("{kp}?consistency=bogus"))
        .await
        .expect_legacy_error(400, "ERR_STATE_GET");
    let r = sc
        .send(sc.request(Method::GET, &kp).header("consistency", "bogus"))
        .await;
    r.expect_legacy_error(400, "ERR_STATE_GET");
    let r = sc
        .send(sc.request(Method::GET, &kp).header("consistency", "strong"))
        .await;
    r.expect(200);

    // SAVE: options, query, header
    let r = sc
        .save(&json!([{"key": "cv", "value": 1, "options": {"concurrency": "bogus"}}]))
        .await;
    r.expect_legacy_error(400, "ERR_STATE_SAVE");
    let r = sc
        .save(&json!([{"key": "cv", "value": 1, "options": {"consistency": "STRONG"}}]))
        .await;
    r.expect_legacy_error(400, "ERR_STATE_SAVE");
    let body = json!([{"key": "cv", "value": 1}]).to_string();
    sc.raw(
        Method::POST,
        &format!("{}?consistency=bogus", store_path(STORE)),
        body.clone(),
    )
    .await
    .expect_legacy_error(400, "ERR_STATE_SAVE");
    sc.raw(
        Method::POST,
        &format!("{}?concurrency=bogus", store_path(STORE)),
        body.clone(),
    )
    .await
    .expect_legacy_error(400, "ERR_STATE_SAVE");
    let r = sc
        .send(
            sc.request(Method::POST, &store_path(STORE))
                .header("concurrency", "bogus")
                .body(body.clone()),
        )
        .await;
    r.expect_legacy_error(400, "ERR_STATE_SAVE");
    sc.assert_value("cv", r#""orig""#, "1").await;
    // Valid values everywhere => 204.
    let r = sc
        .save(&json!([{"key": "cv", "value": 2,
            "options": {"concurrency": "last-write", "consistency": "strong"}}]))
        .await;
    r.expect_no_content();
    let r = sc
        .send(
            sc.request(Method::POST, &store_path(STORE))
                .header("consistency", "eventual")
                .header("concurrency", "last-write")
                .body(json!([{"key": "cv", "value": 3}]).to_string()),
        )
        .await;
    r.expect_no_content();
    sc.assert_value("cv", "3", "3").await;

    // DELETE: query and header
    for q in ["concurrency=bogus", "consistency=bogus"] {
        sc.raw(Method::DELETE, &format!("{kp}?{q}"), "")
            .await
            .expect_legacy_error(400, "ERR_STATE_DELETE");
    }
    for h in ["concurrency", "consistency"] {
        let r = sc
            .send(sc.request(Method::DELETE, &kp).header(h, "bogus"))
            .await;
        r.expect_legacy_error(400, "ERR_STATE_DELETE");
    }
    sc.assert_value("cv", "3", "3").await;
    sc.raw(
        Method::DELETE,
        &format!("{kp}?concurrency=last-write&consistency=strong"),
        "",
    )
    .await
    .expect_no_content();
    sc.assert_missing("cv").await;
}

/// Spec §1.4: `metadata.*` query params are accepted on every endpoint; unknown ones are ignored.
async fn metadata_query_params_are_accepted(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let body = json!([{"key": "mq", "value": {"a": 1}, "metadata": {"foo": "bar"}}]).to_string();
    sc.raw(
        Method::POST,
        &format!(
            "{}?metadata.contentType=application/json&metadata.foo=baz&unknown=1",
            store_path(STORE)
        ),
        body,
    )
    .await
    .expect_no_content();
    let r = sc
        .get_path(&format!("{}?metadata.foo=bar&other=2", key_path("mq")))
        .await;
    r.expect(200);
    assert_eq!(r.text(), r#"{"a":1}"#);
    let r = sc
        .post_json(
            &format!("{}/bulk?metadata.foo=bar", store_path(STORE)),
            &json!({"keys": ["mq"], "metadata": {"x": "y"}}),
        )
        .await;
    r.expect(200);
    sc.raw(
        Method::DELETE,
        &format!("{}?metadata.foo=bar", key_path("mq")),
        "",
    )
    .await
    .expect_no_content();
    sc.assert_missing("mq").await;
}

/// H18: 3 MiB values are saved, read, transacted and deleted (default body limit is 4 MiB).
async fn large_values_round_trip(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let big = "x".repeat(3 * 1024 * 1024);
    for round in 0..3 {
        let key = format!("big{round}");
        sc.save(&json!([{"key": key, "value": big}]))
            .await
            .expect_no_content();
        let r = sc.get(&key).await;
        r.expect(200);
        assert_eq!(r.body.len(), big.len() + 2, "GET {key} length");
        sc.txn(&json!({"operations": [
            {"operation": "upsert", "request": {"key": key, "value": big}},
        ]}))
        .await
        .expect_no_content();
        assert_eq!(sc.etag_of(&key).await.as_deref(), Some("2"));
        sc.delete(&key, None).await.expect_no_content();
        sc.assert_missing(&key).await;
    }
}

/// H16: store names and keys with arbitrary characters, escaped in the path.
async fn unicode_and_odd_store_names(kind: StoreKind) {
    let store = "my-store_1.x";
    let sc = Sidecar::builder()
        .file("s.yaml", &statecar_tests::store_yaml(store, kind, &[]))
        .start()
        .await;
    let keys = [
        "k 1",
        "k/2",
        "k+3",
        "k%4",
        "k?5",
        "k#6",
        "ключ",
        "日本",
        "emoji😀",
        "k'\"7",
    ];
    let sp = format!("/v1.0/state/{}", esc(store));
    for k in keys {
        let body = json!([{"key": k, "value": "value1"}]).to_string();
        sc.raw(Method::POST, &sp, body).await.expect_no_content();
        let r = sc.get_path(&format!("{sp}/{}", esc(k))).await;
        r.expect(200);
        assert_eq!(r.text(), r#""value1""#, "key {k:?}: {}", r.describe());
        let r = sc
            .get_path(&format!("{sp}/{}", esc(&format!("{k}-never"))))
            .await;
        r.expect_no_content();
    }
}
