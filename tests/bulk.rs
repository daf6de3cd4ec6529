//! Bulk get (spec §2.3, H10, H18, §7.1 items 12-14; contract 18).

use reqwest::Method;
use serde_json::{Value, json};
use statecar_tests::{STORE, Sidecar, StoreKind, store_path, store_tests};

store_tests!(
    bulk_returns_items_in_request_order,
    bulk_empty_requests_return_empty_array,
    bulk_parallelism_values,
    bulk_embeds_data_raw,
    bulk_via_put,
    bulk_of_ten_thousand_keys,
);

fn bulk_path() -> String {
    format!("{}/bulk", store_path(STORE))
}

async fn bulk_returns_items_in_request_order(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("b1", json!("one")).await;
    sc.put("b2", json!({"two": 2})).await;
    sc.put("b2", json!({"two": 22})).await;
    sc.put("b3", json!(3)).await;
    let r = sc
        .bulk(&json!({"keys": ["b3", "missing", "b1", "b2", "b1"], "parallelism": 10}))
        .await;
    r.expect(200);
    assert!(
        r.content_type()
            .unwrap_or_default()
            .starts_with("application/json"),
        "{}",
        r.describe()
    );
    assert_eq!(
        r.json(),
        json!([
            {"key": "b3", "data": 3, "etag": "1"},
            {"key": "missing"},
            {"key": "b1", "data": "one", "etag": "1"},
            {"key": "b2", "data": {"two": 22}, "etag": "2"},
            {"key": "b1", "data": "one", "etag": "1"},
        ]),
        "{}",
        r.describe()
    );
}

async fn bulk_empty_requests_return_empty_array(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    for body in ["{}", r#"{"keys":[]}"#, r#"{"parallelism":3}"#] {
        for m in [Method::POST, Method::PUT] {
            let r = sc.raw(m, &bulk_path(), body).await;
            r.expect(200);
            assert_eq!(r.json(), json!([]), "body {body}: {}", r.describe());
        }
    }
}

async fn bulk_parallelism_values(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let keys: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
    let items: Vec<Value> = keys.iter().map(|k| json!({"key": k, "value": k})).collect();
    sc.save(&json!(items)).await.expect_no_content();
    for p in [json!(1), json!(0), json!(-1), json!(7), json!(1000)] {
        let r = sc.bulk(&json!({"keys": keys, "parallelism": p})).await;
        r.expect(200);
        let arr = r.json();
        let arr = arr.as_array().unwrap();
        assert_eq!(arr.len(), keys.len(), "parallelism {p}");
        for (item, k) in arr.iter().zip(&keys) {
            assert_eq!(item["key"], k.as_str(), "parallelism {p}: order");
            assert_eq!(item["data"], k.as_str());
            assert_eq!(item["etag"], "1");
        }
    }
}

/// Contract 13: bulk `data` embeds the stored JSON text raw (not base64, not a string wrapper).
async fn bulk_embeds_data_raw(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let raw_obj = r#"{"z":1,"a":3.14159265,"big":12345678901234567890}"#;
    sc.save_raw(&format!(
        r#"[{{"key":"obj","value":{raw_obj}}},{{"key":"s","value":"{{\"a\":\"b\"}}"}},{{"key":"e","value":""}},{{"key":"f","value":false}},{{"key":"arr","value":[1,[2]]}}]"#
    ))
    .await
    .expect_no_content();
    let r = sc
        .bulk(&json!({"keys": ["obj", "s", "e", "f", "arr"]}))
        .await;
    r.expect(200);
    let text = r.text();
    assert!(
        text.contains(raw_obj),
        "object data must be embedded verbatim: {}",
        r.describe()
    );
    let v = r.json();
    assert_eq!(v[1]["data"], json!("{\"a\":\"b\"}"), "{}", r.describe());
    assert_eq!(v[2]["data"], json!(""), "{}", r.describe());
    assert_eq!(v[3]["data"], json!(false), "{}", r.describe());
    assert_eq!(v[4]["data"], json!([1, [2]]), "{}", r.describe());
    for item in v.as_array().unwrap() {
        let obj = item.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["data", "etag", "key"],
            "item fields: {}",
            r.describe()
        );
    }
}

async fn bulk_via_put(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    sc.put("x", json!("y")).await;
    let r = sc
        .raw(
            Method::PUT,
            &bulk_path(),
            json!({"keys": ["x", "nope"]}).to_string(),
        )
        .await;
    r.expect(200);
    assert_eq!(
        r.json(),
        json!([{"key": "x", "data": "y", "etag": "1"}, {"key": "nope"}])
    );
}

/// H18: bulk get of 10 000 keys.
async fn bulk_of_ten_thousand_keys(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let keys: Vec<String> = (0..10_000).map(|i| format!("many-{i}")).collect();
    for chunk in keys.chunks(1000).take(5) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|k| json!({"key": k, "value": 1}))
            .collect();
        sc.save(&json!(items)).await.expect_no_content();
    }
    let r = sc.bulk(&json!({"keys": keys, "parallelism": 50})).await;
    r.expect(200);
    let v = r.json();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 10_000);
    for (i, item) in arr.iter().enumerate() {
        assert_eq!(item["key"], keys[i].as_str());
        if i < 5000 {
            assert_eq!(item["data"], 1, "item {i}");
            assert_eq!(item["etag"], "1", "item {i}");
        } else {
            assert_eq!(item, &json!({"key": keys[i]}), "item {i}");
        }
    }
}
