//! statecar-operator replicas coming and going against a real Kubernetes API server: leader
//! election on a Lease (one status writer, fast failover on SIGTERM) and a restart that
//! catches up with what changed while no operator ran.
//!
//! Each test needs to be the only status writer while it runs, so they take turns.

use std::time::{Duration, Instant};

use serde_json::json;
use statecar_tests::cluster::{
    Namespace, Operator, OperatorOptions, apply_component, cluster, components, lease_holder,
    open_stream, pod_identity, ready_condition, wait_ready,
};

const VERDICT: Duration = Duration::from_secs(15);

/// Held by each test for its whole run: status writers of two tests must not overlap.
static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn comp(name: &str, type_: &str, metadata: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": {"type": type_, "version": "v1", "metadata": metadata},
    })
}

fn logs(ops: &[&Operator]) -> String {
    ops.iter()
        .map(|o| format!("==== operator {} ====\n{}", o.identity, o.logs()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_writes_status_and_hands_over_on_sigterm() {
    let _turn = EXCLUSIVE.lock().await;
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "ha").await;
    let api = components(&client, &ns.name);
    let lease = "statecar-operator-ha";

    let a = Operator::start(cluster, OperatorOptions::elected(&ns.name, lease)).await;
    let b = Operator::start(cluster, OperatorOptions::elected(&ns.name, lease)).await;

    // Exactly one leads, and the Lease names it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let a_leads = loop {
        let (la, lb) = (a.is_leader().await, b.is_leader().await);
        assert!(!(la && lb), "both replicas lead\n{}", logs(&[&a, &b]));
        if la != lb {
            break la;
        }
        assert!(
            Instant::now() < deadline,
            "no leader after 10 s\n{}",
            logs(&[&a, &b])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut leader, follower) = if a_leads { (a, b) } else { (b, a) };
    assert_eq!(
        lease_holder(&client, &ns.name, lease).await.as_deref(),
        Some(leader.identity.as_str())
    );
    eprintln!(
        "leader: {}, follower: {}",
        leader.identity, follower.identity
    );

    // Only the leader reconciles a new component.
    let leader_before = leader.reconciles().await;
    assert_eq!(follower.reconciles().await, 0.0);
    apply_component(&api, comp("first", "state.in-memory", json!([]))).await;
    wait_ready(&api, "first", "True", "Valid", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&[&leader, &follower])));
    assert!(
        leader.reconciles().await > leader_before,
        "the leader did not reconcile the new component"
    );
    assert_eq!(
        follower.reconciles().await,
        0.0,
        "the follower reconciled\n{}",
        follower.logs()
    );
    assert!(leader.is_leader().await && !follower.is_leader().await);
    assert_eq!(
        lease_holder(&client, &ns.name, lease).await.as_deref(),
        Some(leader.identity.as_str())
    );

    // SIGTERM: the leader gives the Lease up, so the follower takes over well before the
    // 15 s lease would have expired.
    let old = leader.identity.clone();
    leader.sigterm();
    let term = Instant::now();
    let code = leader.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit after SIGTERM\n{}", leader.logs());
    let deadline = term + Duration::from_secs(8);
    while !follower.is_leader().await {
        assert!(
            Instant::now() < deadline,
            "the follower did not take over within 8 s (lease holder {:?})\n{}",
            lease_holder(&client, &ns.name, lease).await,
            logs(&[&leader, &follower])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("failover after SIGTERM: {} ms", term.elapsed().as_millis());
    let holder = lease_holder(&client, &ns.name, lease).await;
    assert_eq!(holder.as_deref(), Some(follower.identity.as_str()));
    assert_ne!(holder.as_deref(), Some(old.as_str()));

    // The new leader writes status for new components.
    let before = follower.reconciles().await;
    apply_component(
        &api,
        comp(
            "second",
            "state.redis",
            json!([{"name": "redisHost", "value": "r:6379"}, {"name": "redisDB", "value": "abc"}]),
        ),
    )
    .await;
    wait_ready(&api, "second", "False", "InvalidMetadata", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", follower.logs()));
    assert!(follower.reconciles().await > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_operator_catches_up() {
    let _turn = EXCLUSIVE.lock().await;
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "restart").await;
    let api = components(&client, &ns.name);

    let mut first = Operator::start(cluster, OperatorOptions::single()).await;
    apply_component(&api, comp("alpha", "state.in-memory", json!([]))).await;
    apply_component(
        &api,
        comp(
            "beta",
            "state.redis",
            json!([{"name": "redisHost", "value": "r:6379"}]),
        ),
    )
    .await;
    for name in ["alpha", "beta"] {
        wait_ready(&api, name, "True", "Valid", VERDICT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", first.logs()));
    }
    let id = pod_identity(&client, &ns.name, "app-sa", "app-0", Some("app")).await;
    let mut stream = open_stream(
        &first.config_url(),
        &ns.name,
        "app",
        "app-0",
        Some(&id.token),
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}\n{}", first.logs()));
    let snap = stream
        .snapshot_where(Duration::from_secs(5), |s| s.names() == ["alpha", "beta"])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", first.logs()));
    assert_eq!(snap.value("alpha", "keyPrefix"), None);

    // The operator dies; its streams end.
    first.kill();
    stream
        .closed_within(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Changes while no operator runs...
    apply_component(
        &api,
        comp(
            "beta",
            "state.redis",
            json!([{"name": "redisHost", "value": "r:6379"}, {"name": "redisDB", "value": "abc"}]),
        ),
    )
    .await;
    apply_component(
        &api,
        comp(
            "alpha",
            "state.in-memory",
            json!([{"name": "keyPrefix", "value": "none"}]),
        ),
    )
    .await;
    // ...are not judged by anyone (this also shows no other status writer is running).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let beta = api.get("beta").await.unwrap();
    assert_eq!(beta.metadata.generation, Some(2));
    let cond = ready_condition(&beta).unwrap();
    assert_eq!(
        (
            cond.status.as_str(),
            cond.reason.as_str(),
            cond.observed_generation
        ),
        ("True", "Valid", Some(1)),
        "someone else wrote status while the operator was down"
    );

    // A new operator catches up on both.
    let second = Operator::start(cluster, OperatorOptions::single()).await;
    let started = Instant::now();
    let beta = wait_ready(&api, "beta", "False", "InvalidMetadata", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", second.logs()));
    assert!(
        ready_condition(&beta)
            .unwrap()
            .message
            .contains("spec.metadata.redisDB")
    );
    wait_ready(&api, "alpha", "True", "Valid", VERDICT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", second.logs()));
    eprintln!(
        "restart: status caught up {} ms after the new operator was ready",
        started.elapsed().as_millis()
    );

    // A sidecar reconnecting gets the current set at once.
    let mut stream = open_stream(
        &second.config_url(),
        &ns.name,
        "app",
        "app-0",
        Some(&id.token),
    )
    .await
    .unwrap_or_else(|r| panic!("{r:?}\n{}", second.logs()));
    let snap = stream
        .next_snapshot(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", second.logs()));
    assert_eq!(snap.revision, 1);
    assert_eq!(snap.names(), ["alpha"], "beta is invalid now");
    assert_eq!(snap.value("alpha", "keyPrefix").as_deref(), Some("none"));
}
