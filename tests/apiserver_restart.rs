//! The API server goes away and comes back. The operator keeps running and catches up, the
//! sidecar keeps serving state the whole time (its data path never touches the control plane),
//! and changes made after the restart still reach it.
//!
//! Kept in a test binary of its own: the restart would disturb any test running beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use statecar_tests::cluster::{
    Namespace, Operator, OperatorOptions, apply_component, cluster, components, kubernetes_sidecar,
    pod_identity, wait_ready,
};
use statecar_tests::{Sidecar, shared_redis, unique, until_saves_land};

fn redis_component(name: &str, db: u32) -> Value {
    json!({
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": {
            "type": "state.redis",
            "version": "v1",
            "metadata": [
                {"name": "redisHost", "value": shared_redis().addr()},
                {"name": "redisDB", "value": db.to_string()},
            ],
        },
    })
}

fn exists(db: u32, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<bool>(&mut shared_redis().conn_db(db))
        .unwrap_or_else(|e| panic!("EXISTS {key} in db {db}: {e}"))
}

/// Saves through the sidecar every 20 ms until told to stop; counts successes and failures.
fn keep_saving(
    sc: Arc<Sidecar>,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut errors = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let body = json!([{"key": format!("during-{n}"), "value": n}]);
            let r = sc.post_json("/v1.0/state/statestore", &body).await;
            if r.status == 204 {
                ok.fetch_add(1, Ordering::Relaxed);
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
                errors.push(format!("{} {}", r.status, r.text()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        errors
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_sidecar_survive_an_apiserver_restart() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = Namespace::create(&client, "restart").await;
    let mut operator = Operator::start(cluster, OperatorOptions::single()).await;
    let api = components(&client, &ns.name);
    apply_component(&api, redis_component("statestore", 1)).await;
    wait_ready(&api, "statestore", "True", "Valid", Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("statestore not Ready: {e}\n{}", operator.logs()));

    let app_id = unique("restart");
    let id = pod_identity(&client, &ns.name, "worker", "worker-0", Some(&app_id)).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &id.token).unwrap();
    let sc = Arc::new(
        kubernetes_sidecar(&operator, &ns.name, &id.pod, &app_id, &token_file)
            .start()
            .await,
    );

    // Restart the API server while the sidecar takes writes.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let saver = keep_saving(sc.clone(), stop.clone(), ok.clone(), failed.clone());
    let away = match tokio::task::spawn_blocking(move || cluster.restart_apiserver()).await {
        Ok(Ok(d)) => d,
        Ok(Err(not_local)) => {
            stop.store(true, Ordering::Relaxed);
            eprintln!("skipped: {not_local}");
            return;
        }
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    stop.store(true, Ordering::Relaxed);
    let errors = saver.await.unwrap();
    eprintln!(
        "API server away for {away:?}; sidecar saves meanwhile: {} ok, {} failed",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(
        errors.is_empty(),
        "saves failed during the restart: {errors:?}"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 10,
        "too few saves to mean anything"
    );
    assert!(
        operator.is_running(),
        "the operator exited:\n{}",
        operator.logs()
    );

    // The operator reconnects (its watches resume and it is ready again), then a change made
    // after the restart reaches the sidecar and status is written again.
    let client = cluster.client().await;
    let api = components(&client, &ns.name);
    operator
        .wait_ready(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "operator not ready after the restart: {e}\n{}",
                operator.logs()
            )
        });
    let applied = Instant::now();
    apply_component(&api, redis_component("statestore", 2)).await;
    let took = until_saves_land(
        &sc,
        Duration::from_secs(60),
        "statestore",
        applied,
        "a change after the restart",
        |k| exists(2, k),
    )
    .await;
    eprintln!("first change after the restart reached the sidecar in {took:?}");
    apply_component(&api, redis_component("second", 3)).await;
    wait_ready(&api, "second", "True", "Valid", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("no status after the restart: {e}\n{}", operator.logs()));
}
