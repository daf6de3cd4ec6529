//! Config delivery (`GET /v1/components`) of the real statecar-operator against a real
//! Kubernetes API server: who may stream, what a sidecar gets (only its namespace's valid
//! components in its scope, secrets resolved), and how fast changes reach it.
//!
//! The operators here never lead (their Lease is held by someone else): every replica serves
//! sidecars, and these never write status, so they do not disturb other tests.

use std::time::{Duration, Instant};

use serde_json::json;
use statecar_tests::cluster::{
    Namespace, Operator, OperatorOptions, PodIdentity, StreamItem, apply_component, cluster,
    components, delete_component, hold_lease, legacy_token, millis_between, open_stream,
    pod_identity, put_secret,
};

/// Changes must reach a connected sidecar within this (measured from the API call's return).
const PROPAGATION: Duration = Duration::from_secs(2);

/// An operator replica that serves sidecars but never leads.
async fn follower(client: &kube::Client, lease_ns: &str) -> Operator {
    hold_lease(client, lease_ns, "statecar-operator", "someone-else").await;
    Operator::start(
        cluster(),
        OperatorOptions::elected(lease_ns, "statecar-operator"),
    )
    .await
}

fn comp(name: &str, type_: &str, metadata: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": {"type": type_, "version": "v1", "metadata": metadata},
    })
}

fn scoped(mut manifest: serde_json::Value, scopes: &[&str]) -> serde_json::Value {
    manifest["scopes"] = json!(scopes);
    manifest
}

async fn stream_for(op: &Operator, id: &PodIdentity) -> statecar_tests::cluster::ConfigStream {
    open_stream(
        &op.config_url(),
        &id.namespace,
        id.app_id(),
        &id.pod,
        Some(&id.token),
    )
    .await
    .unwrap_or_else(|r| panic!("stream refused: {r:?}\n{}", op.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_delivers_scoped_resolved_components_live() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "deliver").await;
    let other = Namespace::create(&client, "deliver-other").await;
    let api = components(&client, &ns.name);
    let other_api = components(&client, &other.name);

    put_secret(&client, &ns.name, "redis-auth", &[("password", "pw-one")]).await;
    put_secret(
        &client,
        &other.name,
        "redis-auth",
        &[("password", "pw-wrong-namespace")],
    )
    .await;
    let redis_meta = json!([
        {"name": "redisHost", "value": "redis-master:6379"},
        {"name": "redisPassword", "secretKeyRef": {"name": "redis-auth", "key": "password"}},
    ]);
    apply_component(&api, comp("alpha", "state.redis", redis_meta.clone())).await;
    apply_component(
        &api,
        scoped(comp("beta", "state.in-memory", json!([])), &["cart"]),
    )
    .await;
    apply_component(
        &api,
        scoped(comp("gamma", "state.in-memory", json!([])), &["checkout"]),
    )
    .await;
    apply_component(
        &api,
        comp(
            "broken",
            "state.redis",
            json!([{"name": "redisHost", "value": "r:6379"}, {"name": "redisDB", "value": "abc"}]),
        ),
    )
    .await;
    apply_component(&api, comp("mongo", "state.mongodb", json!([]))).await;
    apply_component(
        &api,
        comp(
            "env-host",
            "state.redis",
            json!([{"name": "redisHost", "envRef": "REDIS_HOST"}]),
        ),
    )
    .await;
    apply_component(&other_api, comp("alpha", "state.redis", redis_meta)).await;
    apply_component(&other_api, comp("other-only", "state.in-memory", json!([]))).await;

    let id = pod_identity(&client, &ns.name, "cart-sa", "cart-7d9f-x2", Some("cart")).await;
    // Started after everything exists, so its first listing (and first snapshot) has it all.
    let op = follower(&client, &ns.name).await;
    let mut stream = stream_for(&op, &id).await;
    assert_eq!(stream.content_type.as_deref(), Some("application/x-ndjson"));

    let first = stream
        .next_snapshot(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", op.logs()));
    assert_eq!(first.revision, 1);
    assert_eq!(
        first.names(),
        ["alpha", "beta", "env-host"],
        "only valid, in-scope components of the sidecar's namespace, sorted by name"
    );
    for c in &first.components {
        assert_eq!(c.api_version, "dapr.io/v1alpha1");
        assert_eq!(c.kind, "Component");
        assert_eq!(c.metadata.namespace.as_deref(), Some(ns.name.as_str()));
        assert!(c.status.is_none() && c.auth.is_none());
        for m in &c.spec.metadata {
            assert!(m.secret_key_ref.is_none(), "{c:?}");
        }
    }
    assert_eq!(
        first.value("alpha", "redisPassword").as_deref(),
        Some("pw-one")
    );
    assert_eq!(
        first.value("alpha", "redisHost").as_deref(),
        Some("redis-master:6379")
    );
    assert_eq!(first.get("beta").unwrap().scopes, ["cart"]);
    let env_host = &first.get("env-host").unwrap().spec.metadata[0];
    assert_eq!(env_host.env_ref.as_deref(), Some("REDIS_HOST"));
    assert_eq!(env_host.value, None, "an envRef is left to the sidecar");

    let mut latencies = Vec::new();

    // 1. The Secret changes: a new snapshot carries the new value.
    let called = Instant::now();
    put_secret(&client, &ns.name, "redis-auth", &[("password", "pw-two")]).await;
    let returned = Instant::now();
    let s = stream
        .snapshot_where(Duration::from_secs(10), |s| {
            s.value("alpha", "redisPassword").as_deref() == Some("pw-two")
        })
        .await
        .unwrap_or_else(|e| panic!("secret update never arrived: {e}\n{}", op.logs()));
    latencies.push(("secret update", called, returned, s.at));
    assert_eq!(s.revision, 2, "one snapshot per change");
    assert_eq!(s.names(), ["alpha", "beta", "env-host"]);

    // 2. An out-of-scope component changes (no snapshot for this sidecar), then an in-scope one
    //    is deleted: the very next snapshot is the one without it.
    apply_component(
        &api,
        scoped(
            comp(
                "gamma",
                "state.in-memory",
                json!([{"name": "keyPrefix", "value": "none"}]),
            ),
            &["checkout"],
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let called = Instant::now();
    delete_component(&api, "beta").await;
    let returned = Instant::now();
    let s = stream
        .next_snapshot(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("delete never arrived: {e}\n{}", op.logs()));
    latencies.push(("component delete", called, returned, s.at));
    assert_eq!(s.names(), ["alpha", "env-host"], "rev {}", s.revision);
    assert_eq!(s.revision, 3, "an unchanged set is not sent again");

    // 3. A new in-scope component.
    let called = Instant::now();
    apply_component(
        &api,
        scoped(comp("delta", "state.in-memory", json!([])), &["cart"]),
    )
    .await;
    let returned = Instant::now();
    let s = stream
        .next_snapshot(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("create never arrived: {e}\n{}", op.logs()));
    latencies.push(("component create", called, returned, s.at));
    assert_eq!(s.names(), ["alpha", "delta", "env-host"]);

    // 4. A component becomes invalid: it leaves the set (the others stay).
    let called = Instant::now();
    apply_component(
        &api,
        comp(
            "alpha",
            "state.redis",
            json!([{"name": "redisHost", "value": "redis-master:6379"}, {"name": "redisDB", "value": "x"}]),
        ),
    )
    .await;
    let returned = Instant::now();
    let s = stream
        .next_snapshot(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("invalidation never arrived: {e}\n{}", op.logs()));
    latencies.push(("component made invalid", called, returned, s.at));
    assert_eq!(s.names(), ["delta", "env-host"]);

    // From the API call's return to the line's arrival (0 when the line came first), and, for
    // reference, from the call's start.
    let latencies: Vec<_> = latencies
        .into_iter()
        .map(|(what, called, returned, at)| {
            let ms = millis_between(returned, at);
            eprintln!(
                "config propagation: {ms} ms ({what}; {} ms from the API call's start)",
                millis_between(called, at)
            );
            (what, ms)
        })
        .collect();
    for (what, ms) in &latencies {
        assert!(
            *ms < PROPAGATION.as_millis(),
            "{what} took {ms} ms to reach the sidecar (limit {PROPAGATION:?})"
        );
    }

    // Nothing else changes: a heartbeat comes within 10 s (+ slack) of the last line.
    let last = s.at;
    match stream.next(Duration::from_secs(13)).await {
        Some(StreamItem::Line(at, v)) => {
            assert_eq!(v, json!({"type": "heartbeat"}));
            let gap = at.duration_since(last);
            assert!(
                gap >= Duration::from_secs(9) && gap <= Duration::from_secs(12),
                "heartbeat after {gap:?}"
            );
        }
        other => panic!("expected a heartbeat, got {other:?}"),
    }

    let metrics = op.metrics().await;
    assert!(
        metrics.contains("statecar_operator_connected_sidecars 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("statecar_operator_leader 0\n"),
        "this replica must not lead: {metrics}"
    );
    assert!(
        metrics.contains("statecar_operator_reconciles_total 0\n"),
        "a follower never reconciles: {metrics}"
    );
    assert!(
        !op.logs().contains("pw-one") && !op.logs().contains("pw-two"),
        "secret values in the operator's logs"
    );
    drop(stream);
    // The gauge drops once the server notices the closed connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !op
        .metrics()
        .await
        .contains("statecar_operator_connected_sidecars 0\n")
    {
        assert!(
            Instant::now() < deadline,
            "connected_sidecars did not go back to 0"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_refuses_callers_that_are_not_the_pod() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "authz").await;
    let other = Namespace::create(&client, "authz-other").await;
    apply_component(
        &components(&client, &ns.name),
        comp("store", "state.in-memory", json!([])),
    )
    .await;
    let cart = pod_identity(&client, &ns.name, "cart-sa", "cart-0", Some("cart")).await;
    // No annotation: the app id is the pod name.
    let plain = pod_identity(&client, &ns.name, "cart-sa", "worker-0", None).await;
    let stranger = pod_identity(&client, &ns.name, "other-sa", "other-0", Some("other")).await;
    let elsewhere = pod_identity(&client, &other.name, "cart-sa", "cart-0", Some("cart")).await;
    let op = follower(&client, &ns.name).await;
    let url = op.config_url();

    let refused = |r: Result<_, statecar_tests::cluster::Refusal>| match r {
        Ok(_) => panic!("the stream was accepted\n{}", op.logs()),
        Err(r) => r,
    };

    // No token, a garbage token: 401.
    let r = refused(open_stream(&url, &ns.name, "cart", "cart-0", None).await);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(!r.error().is_empty());
    let r = refused(open_stream(&url, &ns.name, "cart", "cart-0", Some("not-a-token")).await);
    assert_eq!(r.status, 401, "{r:?}");
    // A token of another cluster's signer looks like a JWT but does not authenticate either.
    let forged = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YTpiIn0.c2ln";
    let r = refused(open_stream(&url, &ns.name, "cart", "cart-0", Some(forged)).await);
    assert_eq!(r.status, 401, "{r:?}");

    // The right token, the wrong app id: 403.
    let r = refused(open_stream(&url, &ns.name, "checkout", "cart-0", Some(&cart.token)).await);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("app id cart"), "{}", r.error());
    // The right token claiming another namespace: 403.
    let r = refused(open_stream(&url, &other.name, "cart", "cart-0", Some(&cart.token)).await);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("namespace"), "{}", r.error());
    // A pod that does not exist: 403.
    let r = refused(open_stream(&url, &ns.name, "cart", "cart-9", Some(&cart.token)).await);
    assert_eq!(r.status, 403, "{r:?}");
    // Another service account's token for this pod: 403.
    let r = refused(open_stream(&url, &ns.name, "cart", "cart-0", Some(&stranger.token)).await);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("bound to pod other-0"), "{}", r.error());
    // The same with a legacy (Secret) token, which is bound to no pod.
    let unbound = legacy_token(&client, &ns.name, "other-sa").await;
    let r = refused(open_stream(&url, &ns.name, "cart", "cart-0", Some(&unbound)).await);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("runs as cart-sa"), "{}", r.error());
    // A token bound to another pod of the same service account: 403.
    let r = refused(open_stream(&url, &ns.name, "cart", "cart-0", Some(&plain.token)).await);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("bound to pod worker-0"), "{}", r.error());
    // A same-named pod and service account in another namespace is not this one.
    let r = refused(open_stream(&url, &ns.name, "cart", "cart-0", Some(&elsewhere.token)).await);
    assert_eq!(r.status, 403, "{r:?}");

    // And the legitimate callers get their snapshot.
    for id in [&cart, &plain, &elsewhere] {
        let mut s = stream_for(&op, id).await;
        let snap = s
            .next_snapshot(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", id.pod, op.logs()));
        let expected: &[&str] = if id.namespace == ns.name {
            &["store"]
        } else {
            &[]
        };
        assert_eq!(snap.names(), expected, "{} in {}", id.pod, id.namespace);
    }
    assert_eq!(plain.app_id(), "worker-0");
}
