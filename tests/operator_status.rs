//! statecar-operator against a real Kubernetes API server: Dapr manifests apply unchanged, and
//! every component gets a `Ready` condition (server-side applied, observedGeneration kept)
//! with the exact reason, plus an Event whenever the verdict changes.
//!
//! One operator (single replica, no election) serves the whole test binary, so nothing else
//! writes status while these tests watch it. Needs `cargo build -p operator` (or
//! `STATECAR_OPERATOR_BIN`) and the local cluster of `tests/cluster/up.sh`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;
use statecar_tests::cluster::{
    Namespace, Operator, OperatorOptions, apply_component, block_on_fresh, cluster, components,
    events_about, put_secret, ready_condition, wait_event, wait_ready,
};

/// Generous bound for a verdict to show up (the operator is local; it takes well under 1 s).
const VERDICT: Duration = Duration::from_secs(15);

/// The operator of this test binary, started once.
fn operator() -> &'static Operator {
    static OP: OnceLock<Operator> = OnceLock::new();
    OP.get_or_init(|| {
        let cluster = cluster();
        block_on_fresh(async move { Operator::start(cluster, OperatorOptions::single()).await })
    })
}

fn redis(name: &str, extra_meta: serde_json::Value) -> serde_json::Value {
    let mut metadata = vec![json!({"name": "redisHost", "value": "redis-master:6379"})];
    if let Some(items) = extra_meta.as_array() {
        metadata.extend(items.iter().cloned());
    }
    json!({
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": {"type": "state.redis", "version": "v1", "metadata": metadata},
    })
}

/// Every example manifest applies as it is (server-side, with kubectl), and gets a verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_manifests_apply_unchanged() {
    let cluster = cluster();
    let op = operator();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "examples").await;
    let api = components(&client, &ns.name);

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/components");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());

    for file in &files {
        let file = file.to_str().unwrap();
        let out = cluster.kubectl_ok(&[
            "apply",
            "--server-side",
            "--field-manager=statecar-tests",
            "-n",
            &ns.name,
            "-f",
            file,
        ]);
        assert!(out.contains("serverside-applied"), "{file}: {out}");

        let manifest: statecar_crds::Component =
            serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let stored = api
            .get(&manifest.metadata.name)
            .await
            .unwrap_or_else(|e| panic!("{file} applied but cannot be read back: {e}"));
        assert_eq!(
            stored.spec, manifest.spec,
            "{file}: spec changed on the way"
        );
        assert_eq!(stored.scopes, manifest.scopes, "{file}: scopes changed");
    }

    // Known examples get known verdicts: the Redis one needs the Secret its comment mentions.
    let expect = [
        ("scratch", "True", "Valid"),
        ("shared-cache", "True", "Valid"),
        ("statestore", "False", "SecretNotFound"),
    ];
    for (name, status, reason) in expect {
        let c = wait_ready(&api, name, status, reason, VERDICT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
        if reason == "SecretNotFound" {
            let msg = &ready_condition(&c).unwrap().message;
            assert!(msg.contains("\"redis\""), "message names the secret: {msg}");
        }
    }
    put_secret(
        &client,
        &ns.name,
        "redis",
        &[("redis-password", "example-pw")],
    )
    .await;
    wait_ready(&api, "statestore", "True", "Valid", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
}

/// A valid component is Ready=True/Valid for its generation, and kubectl shows the printer
/// columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_component_becomes_ready_with_printer_columns() {
    let cluster = cluster();
    let op = operator();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "valid").await;
    let api = components(&client, &ns.name);

    let created = apply_component(&api, redis("statestore", json!([]))).await;
    assert_eq!(created.metadata.generation, Some(1));
    let c = wait_ready(&api, "statestore", "True", "Valid", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
    let cond = ready_condition(&c).unwrap();
    assert_eq!(cond.observed_generation, Some(1));
    assert!(cond.message.contains("state.redis"), "{}", cond.message);
    assert!(!cond.last_transition_time.is_empty());
    // Status is server-side applied by the operator's own field manager.
    let managers: Vec<_> = c
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.as_deref())
        .collect();
    assert!(
        managers.contains(&"statecar-operator"),
        "managed fields: {managers:?}"
    );

    // A spec change bumps the generation; the verdict follows it.
    let updated = apply_component(
        &api,
        redis("statestore", json!([{"name": "redisDB", "value": 3}])),
    )
    .await;
    assert_eq!(updated.metadata.generation, Some(2));
    let c = wait_ready(&api, "statestore", "True", "Valid", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
    let again = ready_condition(&c).unwrap();
    assert_eq!(again.observed_generation, Some(2));
    assert_eq!(
        again.last_transition_time, cond.last_transition_time,
        "the status did not change, so neither does lastTransitionTime"
    );

    let out = cluster.kubectl_ok(&["get", "comp", "-n", &ns.name]);
    let mut lines = out.lines();
    let header: Vec<_> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "TYPE", "READY", "AGE"], "{out}");
    let row: Vec<_> = lines
        .find(|l| l.starts_with("statestore "))
        .unwrap_or_else(|| panic!("no statestore row:\n{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(&row[..3], ["statestore", "state.redis", "True"], "{out}");
}

/// redisDB: abc is InvalidMetadata naming the field, with a Warning Event; fixing it makes the
/// component Ready again with a Normal Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_metadata_is_reported_and_recovers() {
    let cluster = cluster();
    let op = operator();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "invalid").await;
    let api = components(&client, &ns.name);

    apply_component(
        &api,
        redis("orders", json!([{"name": "redisDB", "value": "abc"}])),
    )
    .await;
    let c = wait_ready(&api, "orders", "False", "InvalidMetadata", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
    let bad = ready_condition(&c).unwrap().clone();
    assert!(
        bad.message.contains("spec.metadata.redisDB"),
        "message names the field: {}",
        bad.message
    );
    let event = wait_event(
        &client,
        &ns.name,
        "orders",
        "Warning",
        "InvalidMetadata",
        VERDICT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
    let note = event.note.clone().unwrap_or_default();
    assert!(note.contains("spec.metadata.redisDB"), "event note: {note}");
    assert_eq!(
        event.reporting_controller.as_deref(),
        Some("statecar-operator")
    );
    assert_eq!(event.action.as_deref(), Some("Validate"));
    let regarding = event.regarding.as_ref().unwrap();
    assert_eq!(regarding.api_version.as_deref(), Some("dapr.io/v1alpha1"));
    assert_eq!(regarding.namespace.as_deref(), Some(ns.name.as_str()));

    apply_component(
        &api,
        redis("orders", json!([{"name": "redisDB", "value": "4"}])),
    )
    .await;
    let c = wait_ready(&api, "orders", "True", "Valid", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
    let good = ready_condition(&c).unwrap();
    assert_eq!(good.observed_generation, Some(2));
    assert_ne!(
        good.last_transition_time, "",
        "a transition has a timestamp"
    );
    wait_event(&client, &ns.name, "orders", "Normal", "Valid", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
    // Exactly one event per verdict: the fix does not repeat the warning.
    let events = events_about(&client, &ns.name, "Component", "orders").await;
    let reasons: Vec<_> = events.iter().filter_map(|e| e.reason.as_deref()).collect();
    assert_eq!(
        reasons.iter().filter(|r| **r == "InvalidMetadata").count(),
        1,
        "{reasons:?}"
    );
}

/// Types statecar does not implement and malformed specs get their own reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_type_and_invalid_spec() {
    let cluster = cluster();
    let op = operator();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "unsupported").await;
    let api = components(&client, &ns.name);

    apply_component(
        &api,
        json!({
            "apiVersion": "dapr.io/v1alpha1",
            "kind": "Component",
            "metadata": {"name": "mongo"},
            "spec": {"type": "state.mongodb", "version": "v1", "metadata": [
                {"name": "host", "value": "mongo:27017"}
            ]},
        }),
    )
    .await;
    let mut bad_version = redis("versioned", json!([]));
    bad_version["spec"]["version"] = json!("v2");
    apply_component(&api, bad_version).await;
    let mut vault = redis("vaulted", json!([]));
    vault["auth"] = json!({"secretStore": "vault"});
    apply_component(&api, vault).await;

    let c = wait_ready(&api, "mongo", "False", "UnsupportedType", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
    let msg = &ready_condition(&c).unwrap().message;
    assert!(
        msg.contains("spec.type") && msg.contains("state.mongodb"),
        "{msg}"
    );
    wait_event(
        &client,
        &ns.name,
        "mongo",
        "Warning",
        "UnsupportedType",
        VERDICT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));

    let c = wait_ready(&api, "versioned", "False", "InvalidSpec", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
    let msg = &ready_condition(&c).unwrap().message;
    assert!(msg.contains("spec.version"), "{msg}");

    let c = wait_ready(&api, "vaulted", "False", "InvalidSpec", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
    let msg = &ready_condition(&c).unwrap().message;
    assert!(msg.contains("auth.secretStore"), "{msg}");
}

/// A secretKeyRef to a missing Secret (or key) is SecretNotFound, naming the secret and never a
/// value; creating the Secret makes the component Ready through the Secret watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_then_created() {
    const VALUE: &str = "never-print-me-5f3a";
    let cluster = cluster();
    let op = operator();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "secret").await;
    let api = components(&client, &ns.name);

    apply_component(
        &api,
        redis(
            "cache",
            json!([{"name": "redisPassword", "secretKeyRef": {"name": "db-creds", "key": "password"}}]),
        ),
    )
    .await;
    let c = wait_ready(&api, "cache", "False", "SecretNotFound", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
    let msg = ready_condition(&c).unwrap().message.clone();
    assert!(
        msg.contains("\"db-creds\"") && msg.contains(&ns.name),
        "names the secret and namespace: {msg}"
    );
    assert!(msg.contains("redisPassword"), "names the field: {msg}");
    wait_event(
        &client,
        &ns.name,
        "cache",
        "Warning",
        "SecretNotFound",
        VERDICT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));

    // The Secret appears, but without the key: still SecretNotFound, now about the key.
    put_secret(&client, &ns.name, "db-creds", &[("passwd", VALUE)]).await;
    let deadline = Instant::now() + VERDICT;
    let msg = loop {
        let c = api.get("cache").await.unwrap();
        let cond = ready_condition(&c).unwrap().clone();
        if cond.message.contains("key \"password\"") {
            assert_eq!(cond.reason, "SecretNotFound");
            break cond.message;
        }
        assert!(
            Instant::now() < deadline,
            "the verdict did not move to the missing key: {cond:?}\n{}",
            op.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!msg.contains(VALUE), "a secret value leaked: {msg}");

    // Now with the key: Ready, driven by the Secret watch alone (the component is unchanged).
    put_secret(
        &client,
        &ns.name,
        "db-creds",
        &[("passwd", VALUE), ("password", VALUE)],
    )
    .await;
    let written = Instant::now();
    wait_ready(&api, "cache", "True", "Valid", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
    eprintln!(
        "secret created -> Ready: {} ms",
        written.elapsed().as_millis()
    );
    wait_event(&client, &ns.name, "cache", "Normal", "Valid", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));

    let c = api.get("cache").await.unwrap();
    let status = serde_json::to_string(&c.status).unwrap();
    assert!(!status.contains(VALUE), "a secret value leaked: {status}");
    for e in events_about(&client, &ns.name, "Component", "cache").await {
        let note = e.note.unwrap_or_default();
        assert!(!note.contains(VALUE), "a secret value leaked: {note}");
    }
    assert!(
        !op.logs().contains(VALUE),
        "a secret value is in the operator's logs"
    );

    // The Secret goes away: back to SecretNotFound, again through the Secret watch.
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .delete("db-creds", &DeleteParams::default())
        .await
        .unwrap();
    wait_ready(
        &api,
        "cache",
        "False",
        "SecretNotFound",
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
}
