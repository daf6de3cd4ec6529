//! Health, metadata and API-token handling (spec §1.2, §6; H19, H20; contract 12, 17).

use reqwest::Method;
use serde_json::{Value, json};
use statecar_tests::{Resp, Sidecar, StoreKind, key_path, store_tests, store_yaml};

store_tests!(metadata_describes_the_store, two_stores_are_independent);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints() {
    let sc = Sidecar::start(StoreKind::Memory).await;
    sc.get_path("/v1.0/healthz").await.expect_no_content();
    sc.get_path("/v1.0/healthz/outbound")
        .await
        .expect_no_content();
    sc.get_path(&format!("/v1.0/healthz?appid={}", sc.app_id()))
        .await
        .expect_no_content();
    let r = sc.get_path("/v1.0/healthz?appid=someone-else").await;
    let v = r.expect_legacy_error(500, "ERR_HEALTH_APPID_NOT_MATCH");
    assert_eq!(v["message"], "dapr app-id does not match");
}

fn is_version(s: &str) -> bool {
    if s == "edge" {
        return true;
    }
    let core = s.trim_start_matches('v');
    let core = core.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Contract 17 / H19.
async fn metadata_describes_the_store(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let r = sc.get_path("/v1.0/metadata").await;
    r.expect(200);
    assert!(
        r.content_type()
            .unwrap_or_default()
            .starts_with("application/json"),
        "{}",
        r.describe()
    );
    let v = r.json();
    assert_eq!(v["id"], sc.app_id(), "{}", r.describe());
    let rv = v["runtimeVersion"].as_str().unwrap_or_default();
    assert!(
        is_version(rv),
        "runtimeVersion {rv:?} must be edge or semver"
    );
    let drv = v["extended"]["daprRuntimeVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(is_version(drv), "extended.daprRuntimeVersion {drv:?}");
    let comps = v["components"].as_array().expect("components array");
    assert_eq!(comps.len(), 1, "{}", r.describe());
    let c = &comps[0];
    assert_eq!(c["name"], "statestore");
    assert_eq!(c["type"], kind.component_type());
    assert_eq!(c["version"], "v1");
    let caps: Vec<&str> = c["capabilities"]
        .as_array()
        .expect("capabilities array")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for cap in ["ETAG", "TRANSACTIONAL", "TTL"] {
        assert!(caps.contains(&cap), "capabilities {caps:?} lack {cap}");
    }

    // PUT /v1.0/metadata/<attr> => 204, shows under extended.
    sc.raw(Method::PUT, "/v1.0/metadata/foo", "bar")
        .await
        .expect_no_content();
    sc.raw(Method::PUT, "/v1.0/metadata/with%20space", "v 1")
        .await
        .expect_no_content();
    let v = sc.get_path("/v1.0/metadata").await.json();
    assert_eq!(v["extended"]["foo"], "bar", "{v}");
    assert_eq!(v["extended"]["with space"], "v 1", "{v}");
    sc.raw(Method::PUT, "/v1.0/metadata/foo", "baz")
        .await
        .expect_no_content();
    let v = sc.get_path("/v1.0/metadata").await.json();
    assert_eq!(v["extended"]["foo"], "baz", "{v}");
    assert!(is_version(
        v["extended"]["daprRuntimeVersion"]
            .as_str()
            .unwrap_or_default()
    ));
}

async fn two_stores_are_independent(kind: StoreKind) {
    let other = match kind {
        StoreKind::Redis => StoreKind::Memory,
        StoreKind::Memory => StoreKind::Redis,
    };
    let sc = Sidecar::builder()
        .store(kind)
        .file("second.yaml", &store_yaml("second", other, &[]))
        .start()
        .await;
    sc.put("k", json!("first")).await;
    sc.get_path("/v1.0/state/second/k")
        .await
        .expect_no_content();
    sc.post_json(
        "/v1.0/state/second",
        &json!([{"key": "k", "value": "second"}]),
    )
    .await
    .expect_no_content();
    sc.assert_value("k", r#""first""#, "1").await;
    let r = sc.get_path("/v1.0/state/second/k").await;
    r.expect(200);
    assert_eq!(r.text(), r#""second""#);
    let v = sc.get_path("/v1.0/metadata").await.json();
    let mut names: Vec<(String, String)> = v["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["type"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("second".to_string(), other.component_type().to_string()),
            ("statestore".to_string(), kind.component_type().to_string()),
        ]
    );
}

fn expect_401(r: &Resp) {
    r.expect(401);
    assert_eq!(r.text(), "invalid api token\n", "{}", r.describe());
    assert!(
        r.content_type()
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{}",
        r.describe()
    );
}

/// Spec §1.2 / H20 / contract: DAPR_API_TOKEN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_is_enforced() {
    const TOKEN: &str = "s3cret-token";
    let sc = Sidecar::builder()
        .store(StoreKind::Memory)
        .env("DAPR_API_TOKEN", TOKEN)
        .start()
        .await;
    let with = |rb: reqwest::RequestBuilder| rb.header("dapr-api-token", TOKEN);
    let wrong = |rb: reqwest::RequestBuilder| rb.header("dapr-api-token", "nope");

    // Health endpoints are exempt.
    for p in ["/v1.0/healthz", "/v1.0/healthz/outbound"] {
        sc.get_path(p).await.expect_no_content();
        sc.send(wrong(sc.request(Method::GET, p)))
            .await
            .expect_no_content();
    }
    let save_body = json!([{"key": "k", "value": 1}]).to_string();
    let txn_body =
        json!({"operations": [{"operation": "upsert", "request": {"key": "k", "value": 1}}]})
            .to_string();
    let cases: Vec<(Method, String, String)> = vec![
        (
            Method::POST,
            "/v1.0/state/statestore".into(),
            save_body.clone(),
        ),
        (Method::GET, key_path("k"), String::new()),
        (Method::DELETE, key_path("k"), String::new()),
        (
            Method::POST,
            "/v1.0/state/statestore/bulk".into(),
            r#"{"keys":["k"]}"#.into(),
        ),
        (
            Method::POST,
            "/v1.0/state/statestore/transaction".into(),
            txn_body,
        ),
        (Method::GET, "/v1.0/metadata".into(), String::new()),
        (Method::PUT, "/v1.0/metadata/foo".into(), "bar".into()),
        (Method::POST, "/v1.0/state/nope".into(), save_body.clone()),
    ];
    for (m, p, body) in &cases {
        expect_401(&sc.raw(m.clone(), p, body.clone()).await);
        expect_401(
            &sc.send(wrong(sc.request(m.clone(), p)).body(body.clone()))
                .await,
        );
        // Case matters (exact compare).
        expect_401(
            &sc.send(
                sc.request(m.clone(), p)
                    .header("dapr-api-token", TOKEN.to_uppercase())
                    .body(body.clone()),
            )
            .await,
        );
    }
    // Nothing was written by the rejected requests.
    sc.send(with(sc.request(Method::GET, &key_path("k"))))
        .await
        .expect_no_content();
    let v = sc
        .send(with(sc.request(Method::GET, "/v1.0/metadata")))
        .await
        .json();
    assert!(v["extended"].get("foo").is_none(), "{v}");

    // With the token, normal handling.
    sc.send(with(sc.request(Method::POST, "/v1.0/state/statestore")).body(save_body))
        .await
        .expect_no_content();
    let r = sc.send(with(sc.request(Method::GET, &key_path("k")))).await;
    r.expect(200);
    assert_eq!(r.text(), "1");
    sc.send(with(sc.request(Method::GET, "/v1.0/metadata")))
        .await
        .expect(200);
    sc.send(with(sc.request(Method::GET, "/v1.0/state/nope/k")))
        .await
        .expect_rich_error(400, "ERR_STATE_STORE_NOT_FOUND", "DAPR_STATE_NOT_FOUND");
    sc.send(with(sc.request(Method::DELETE, &key_path("k"))))
        .await
        .expect_no_content();
}

/// Spec §1.2: the token check covers every request on the API port, unknown routes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_applies_to_unknown_routes() {
    let sc = Sidecar::builder()
        .store(StoreKind::Memory)
        .env("DAPR_API_TOKEN", "tok")
        .start()
        .await;
    expect_401(&sc.get_path("/v1.0/no-such-route").await);
    expect_401(&sc.raw(Method::PATCH, "/v1.0/state/statestore", "[]").await);
    let r = sc
        .send(
            sc.request(Method::GET, "/v1.0/no-such-route")
                .header("dapr-api-token", "tok"),
        )
        .await;
    r.expect_legacy_error(404, "ERR_DIRECT_INVOKE");
}

/// Spec §1.1/§1.2/H19: the public port serves healthz and metadata without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_port_serves_health_and_metadata() {
    let public = statecar_tests::process::free_port();
    let sc = Sidecar::builder()
        .store(StoreKind::Memory)
        .env("DAPR_API_TOKEN", "tok")
        .arg("--dapr-public-port")
        .arg(&public.to_string())
        .start()
        .await;
    let base = format!("http://127.0.0.1:{public}");
    let get = |p: &str| sc.http().get(format!("{base}{p}"));
    let r = sc.send(get("/v1.0/healthz")).await;
    r.expect_no_content();
    let r = sc.send(get("/v1.0/healthz/outbound")).await;
    r.expect_no_content();
    let r = sc.send(get("/v1.0/metadata")).await;
    r.expect(200);
    let v = r.json();
    assert_eq!(v["id"], sc.app_id(), "{}", r.describe());
    assert_eq!(v["components"][0]["name"], "statestore", "{}", r.describe());
    // The state API is not served there.
    let r = sc
        .send(
            sc.http()
                .post(format!("{base}/v1.0/state/statestore"))
                .body(json!([{"key": "pub", "value": 1}]).to_string()),
        )
        .await;
    assert_eq!(
        r.status,
        404,
        "the state API is not served on the public port: {}",
        r.describe()
    );
    let r = sc
        .send(
            sc.request(Method::GET, &key_path("pub"))
                .header("dapr-api-token", "tok"),
        )
        .await;
    r.expect_no_content();
}

/// `--log-as-json`: every log line is a JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_as_json() {
    let mut sc = Sidecar::builder()
        .store(StoreKind::Memory)
        .arg("--log-as-json")
        .arg("--log-level")
        .arg("debug")
        .start()
        .await;
    sc.put("k", json!(1)).await;
    assert_eq!(sc.terminate(std::time::Duration::from_secs(10)), Some(0));
    let logs = format!("{}\n{}", sc.stderr(), sc.stdout());
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "expected some log output");
    for l in lines {
        let v: Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l:?}"));
        assert!(v.is_object(), "log line is not an object: {l:?}");
    }
}
