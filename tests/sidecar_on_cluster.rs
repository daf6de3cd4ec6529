//! The real sidecar in Kubernetes mode, fed by the real operator from a real API server, storing
//! in a real Redis: state works with a password resolved from a Secret, and component changes
//! (a new `redisDB`, a deletion) reach the running sidecar within 2 s, with no restart.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use statecar_tests::cluster::{
    Namespace, Operator, OperatorOptions, apply_component, cluster, components, delete_component,
    kubernetes_sidecar, kubernetes_sidecar_at, pod_identity, put_secret, wait_ready,
};
use statecar_tests::process::{Guarded, Spawn, free_port};
use statecar_tests::{RedisServer, unique, until_saves_land};

const PASSWORD: &str = "e2e-Secret-pw";
/// The bound on config propagation.
const PROPAGATION: Duration = Duration::from_secs(2);

fn redis_component(name: &str, redis: &RedisServer, db: u32) -> Value {
    json!({
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": {
            "type": "state.redis",
            "version": "v1",
            "metadata": [
                {"name": "redisHost", "value": redis.addr()},
                {"name": "redisDB", "value": db.to_string()},
                {"name": "redisPassword", "secretKeyRef": {"name": "redis-auth", "key": "password"}},
            ],
        },
    })
}

fn exists(redis: &RedisServer, db: u32, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<bool>(&mut redis.conn_db(db))
        .unwrap_or_else(|e| panic!("EXISTS {key} in db {db}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_serves_state_and_hot_reloads_operator_changes() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "e2e").await;
    let redis = RedisServer::start_with_password(PASSWORD);
    let operator = Operator::start(cluster, OperatorOptions::single()).await;

    put_secret(&client, &ns.name, "redis-auth", &[("password", PASSWORD)]).await;
    let api = components(&client, &ns.name);
    apply_component(&api, redis_component("statestore", &redis, 0)).await;
    wait_ready(&api, "statestore", "True", "Valid", Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("statestore not Ready: {e}\n{}", operator.logs()));

    let app_id = unique("cart");
    let id = pod_identity(&client, &ns.name, "cart", "cart-0", Some(&app_id)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &id.token).unwrap();
    let started = Instant::now();
    let sc = kubernetes_sidecar(&operator, &ns.name, &id.pod, &app_id, &token_file)
        .start()
        .await;
    eprintln!("sidecar healthy {:?} after exec", started.elapsed());

    // Save and get through the sidecar; the data is in db 0 under the app's prefix, written with
    // the password the operator resolved from the Secret.
    sc.post_json(
        "/v1.0/state/statestore",
        &json!([{"key": "order-1", "value": {"qty": 2}}]),
    )
    .await
    .expect_no_content();
    let got = sc.get_path("/v1.0/state/statestore/order-1").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json(), json!({"qty": 2}));
    assert!(exists(&redis, 0, &sc.redis_key("order-1")));
    let pid_before = sc.pid();

    // A new redisDB: saves land in db 5 within 2 s of the apply.
    let applied = Instant::now();
    apply_component(&api, redis_component("statestore", &redis, 5)).await;
    let took = until_saves_land(
        &sc,
        Duration::from_secs(10),
        "statestore",
        applied,
        "redisDB 0 -> 5",
        |k| exists(&redis, 5, k),
    )
    .await;
    eprintln!("redisDB change reached the sidecar in {took:?}");
    assert!(
        took < PROPAGATION,
        "redisDB change took {took:?}\n{}",
        sc.logs()
    );
    assert_eq!(sc.pid(), pid_before, "the sidecar must not restart");
    // The old data stays in db 0; the new store reads db 5.
    assert_eq!(
        sc.get_path("/v1.0/state/statestore/order-1").await.status,
        204
    );

    // A second component appears, then the first is deleted: each within 2 s.
    let applied = Instant::now();
    apply_component(&api, redis_component("cache", &redis, 7)).await;
    let took = until_saves_land(
        &sc,
        Duration::from_secs(10),
        "cache",
        applied,
        "new component",
        |k| exists(&redis, 7, k),
    )
    .await;
    eprintln!("new component reached the sidecar in {took:?}");
    assert!(took < PROPAGATION, "new component took {took:?}");

    let deleted = Instant::now();
    delete_component(&api, "statestore").await;
    loop {
        let r = sc.get_path("/v1.0/state/statestore/order-1").await;
        if r.status == 400 {
            assert_eq!(r.json()["errorCode"], "ERR_STATE_STORE_NOT_FOUND");
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(10),
            "statestore still served 10 s after its deletion: {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = deleted.elapsed();
    eprintln!("deletion reached the sidecar in {took:?}");
    assert!(took < PROPAGATION, "deletion took {took:?}");
    // The other component kept working throughout.
    sc.post_json("/v1.0/state/cache", &json!([{"key": "k", "value": 1}]))
        .await
        .expect_no_content();
    assert_eq!(sc.pid(), pid_before, "the sidecar must not restart");

    // Nothing secret in the sidecar's or the operator's logs.
    assert!(!sc.logs().contains(PASSWORD), "password in sidecar logs");
    assert!(
        !operator.logs().contains(PASSWORD),
        "password in operator logs"
    );
}

/// The operator's default: the config stream over HTTPS with the operator's own certificate;
/// the sidecar trusts the CA it is given (as the injector gives it, in STATECAR_TRUST_ANCHORS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_stream_over_tls_with_the_operators_ca() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "tls").await;
    let op_ns = Namespace::create(&client, "tls-op").await;
    let redis = RedisServer::start_with_password(PASSWORD);
    let secret = unique("sc-tls").to_ascii_lowercase();
    let mut opts = OperatorOptions::single();
    opts.config_tls = true;
    opts.extra_args = [
        "--namespace",
        &op_ns.name,
        "--webhook-secret",
        &secret,
        "--tls-san",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let operator = Operator::start(cluster, opts).await;
    put_secret(&client, &ns.name, "redis-auth", &[("password", PASSWORD)]).await;
    let api = components(&client, &ns.name);
    apply_component(&api, redis_component("statestore", &redis, 0)).await;

    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), &op_ns.name);
    let ca = secrets.get(&secret).await.unwrap().data.unwrap()["ca.crt"]
        .0
        .clone();
    let ca = String::from_utf8(ca).unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"));

    let app_id = unique("tls");
    let id = pod_identity(&client, &ns.name, "tls", "tls-0", Some(&app_id)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &id.token).unwrap();
    let https = format!("https://127.0.0.1:{}", operator.config_addr.port());

    // Without the CA the operator's certificate is not trusted: the sidecar stays unready.
    let port = free_port();
    let log_dir = tempfile::tempdir().unwrap();
    let bin = statecar_tests::statecar_bin();
    let mut untrusting = Guarded::spawn(Spawn {
        program: bin.as_os_str(),
        args: [
            "--mode",
            "kubernetes",
            "--app-id",
            &app_id,
            "--control-plane-address",
            &https,
            "--namespace",
            &ns.name,
            "--pod-name",
            &id.pod,
            "--dapr-http-port",
            &port.to_string(),
            "--dapr-grpc-port",
            &free_port().to_string(),
            "--token-file",
            &token_file.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        env: vec![],
        env_remove: vec!["STATECAR_TRUST_ANCHORS".into(), "SSL_CERT_FILE".into()],
        log_dir: log_dir.path(),
        log_name: "statecar",
        cleanup_dir: None,
    })
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let health = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1.0/healthz"))
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(health.ok(), Some(500), "{}", untrusting.logs());
    assert!(
        untrusting
            .logs()
            .to_ascii_lowercase()
            .contains("certificate"),
        "{}",
        untrusting.logs()
    );
    untrusting.kill();

    let sc = kubernetes_sidecar_at(&https, &ns.name, &id.pod, &app_id, &token_file)
        .env("STATECAR_TRUST_ANCHORS", &ca)
        .start()
        .await;
    sc.post_json("/v1.0/state/statestore", &json!([{"key": "k", "value": 1}]))
        .await
        .expect_no_content();
    let applied = Instant::now();
    apply_component(&api, redis_component("statestore", &redis, 4)).await;
    let took = until_saves_land(
        &sc,
        Duration::from_secs(10),
        "statestore",
        applied,
        "redisDB 0 -> 4 over TLS",
        |k| exists(&redis, 4, k),
    )
    .await;
    eprintln!("redisDB change over the TLS stream reached the sidecar in {took:?}");
    assert!(took < PROPAGATION, "took {took:?}");
    assert!(!sc.logs().contains(PASSWORD));
}
