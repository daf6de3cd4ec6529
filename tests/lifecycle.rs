//! Process lifecycle: graceful shutdown, component loading and startup failures (spec §5;
//! contract "Binary").

use std::time::Duration;

use serde_json::json;
use statecar_tests::{
    Sidecar, StoreKind, component_yaml, component_yaml_ext, shared_redis, store_tests, store_yaml,
};

store_tests!(sigterm_exits_zero);

const FAIL_TIMEOUT: Duration = Duration::from_secs(30);

async fn sigterm_exits_zero(kind: StoreKind) {
    let mut sc = Sidecar::start(kind).await;
    sc.put("k", json!(1)).await;
    // A pooled keep-alive connection is open while the signal arrives.
    sc.get("k").await.expect(200);
    let code = sc.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit code after SIGTERM\n{}", sc.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_start_exits_zero() {
    let mut sc = Sidecar::start(StoreKind::Memory).await;
    let code = sc.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit code after SIGTERM\n{}", sc.logs());
}

fn assert_mentions(out: &str, needles: &[&str]) {
    for n in needles {
        assert!(
            out.contains(n),
            "startup error output must mention {n:?}; got:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_component_name_fails() {
    let f = Sidecar::builder()
        .file(
            "first.yaml",
            &component_yaml("twin", "state.in-memory", &[]),
        )
        .file(
            "second.yaml",
            &component_yaml("twin", "state.in-memory", &[]),
        )
        .start_expect_failure(FAIL_TIMEOUT)
        .await;
    assert_ne!(f.code, 0, "{}", f.output());
    assert_mentions(&f.stderr, &["twin"]);
    assert!(
        f.stderr.contains("first.yaml") || f.stderr.contains("second.yaml"),
        "stderr must name the file:\n{}",
        f.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_component_type_fails() {
    let f = Sidecar::builder()
        .file(
            "weird.yaml",
            &component_yaml("weirdstore", "state.bogus", &[]),
        )
        .start_expect_failure(FAIL_TIMEOUT)
        .await;
    assert_ne!(f.code, 0, "{}", f.output());
    assert_mentions(&f.stderr, &["weird.yaml", "weirdstore", "state.bogus"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_metadata_fails() {
    let host = shared_redis().addr();
    let f = Sidecar::builder()
        .file(
            "baddb.yaml",
            &component_yaml(
                "baddbstore",
                "state.redis",
                &[("redisHost", &host), ("redisDB", "abc")],
            ),
        )
        .start_expect_failure(FAIL_TIMEOUT)
        .await;
    assert_ne!(f.code, 0, "{}", f.output());
    assert_mentions(&f.stderr, &["baddb.yaml", "baddbstore", "redisDB"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_prefix_with_separator_fails() {
    let host = shared_redis().addr();
    let f = Sidecar::builder()
        .file(
            "pfx.yaml",
            &component_yaml(
                "pfxstore",
                "state.redis",
                &[("redisHost", &host), ("keyPrefix", "a||b")],
            ),
        )
        .start_expect_failure(FAIL_TIMEOUT)
        .await;
    assert_ne!(f.code, 0, "{}", f.output());
    assert_mentions(&f.stderr, &["pfx.yaml", "pfxstore", "keyPrefix"]);
}

/// Spec §4.2: PING failure at init is an init error (daprd exits unless ignoreErrors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_fails_startup() {
    let port = statecar_tests::process::free_port();
    let f = Sidecar::builder()
        .file(
            "down.yaml",
            &component_yaml(
                "downstore",
                "state.redis",
                &[("redisHost", &format!("127.0.0.1:{port}"))],
            ),
        )
        .start_expect_failure(FAIL_TIMEOUT)
        .await;
    assert_ne!(f.code, 0, "{}", f.output());
    assert_mentions(&f.stderr, &["downstore"]);
}

/// `ignoreErrors: true` skips the failing component; the rest loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_errors_skips_bad_component() {
    let host = shared_redis().addr();
    let port = statecar_tests::process::free_port();
    let down = format!("127.0.0.1:{port}");
    let sc = Sidecar::builder()
        .file(
            "bad.yaml",
            &component_yaml_ext(
                "badstore",
                "state.redis",
                &[("redisHost", &host), ("redisDB", "abc")],
                &["ignoreErrors: true"],
                &[],
            ),
        )
        .file(
            "down.yaml",
            &component_yaml_ext(
                "downstore",
                "state.redis",
                &[("redisHost", &down)],
                &["ignoreErrors: true", "initTimeout: 2s"],
                &[],
            ),
        )
        .file(
            "weird.yaml",
            &component_yaml_ext("weird", "state.bogus", &[], &["ignoreErrors: true"], &[]),
        )
        .store(StoreKind::Memory)
        .start()
        .await;
    for name in ["badstore", "downstore", "weird"] {
        sc.get_path(&format!("/v1.0/state/{name}/k"))
            .await
            .expect_rich_error(400, "ERR_STATE_STORE_NOT_FOUND", "DAPR_STATE_NOT_FOUND");
    }
    sc.put("k", json!(1)).await;
    sc.assert_value("k", "1", "1").await;
    let r = sc.get_path("/v1.0/metadata").await;
    r.expect(200);
    let names: Vec<String> = r.json()["components"]
        .as_array()
        .expect("components array")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["statestore"], "{}", r.describe());
}

/// Contract: no --resources-path (and no ~/.statecar/components) => in-memory `statestore`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_in_memory_store_without_resources_path() {
    let sc = Sidecar::builder().no_resources_path().start().await;
    sc.put("k", json!("mem")).await;
    sc.assert_value("k", r#""mem""#, "1").await;
    let r = sc.get_path("/v1.0/metadata").await;
    r.expect(200);
    let comps = r.json()["components"].clone();
    assert_eq!(comps.as_array().map(Vec::len), Some(1), "{}", r.describe());
    assert_eq!(comps[0]["name"], "statestore");
    assert_eq!(comps[0]["type"], "state.in-memory");
}

/// Spec §5.2: only *.yaml/*.yml files; multi-document files; other kinds ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_directory_loading_rules() {
    let multi = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: cfg\nspec: {{}}\n---\n{}---\n{}",
        component_yaml("s1", "state.in-memory", &[]),
        store_yaml("s2", StoreKind::Redis, &[])
    );
    let sc = Sidecar::builder()
        .file("multi.yaml", &multi)
        .file("other.yml", &component_yaml("s3", "state.in-memory", &[]))
        .file("UPPER.YAML", &component_yaml("s4", "state.in-memory", &[]))
        .file("README.txt", "this is not yaml: [")
        .file(
            "ignored.json",
            &component_yaml("s5", "state.in-memory", &[]),
        )
        .start()
        .await;
    for store in ["s1", "s2", "s3", "s4"] {
        let r = sc
            .post_json(
                &format!("/v1.0/state/{store}"),
                &json!([{"key": "k", "value": store}]),
            )
            .await;
        r.expect_no_content();
        let r = sc.get_path(&format!("/v1.0/state/{store}/k")).await;
        r.expect(200);
        assert_eq!(r.text(), format!("\"{store}\""), "stores are independent");
    }
    sc.get_path("/v1.0/state/s5/k").await.expect_rich_error(
        400,
        "ERR_STATE_STORE_NOT_FOUND",
        "DAPR_STATE_NOT_FOUND",
    );
    sc.get_path("/v1.0/state/cfg/k").await.expect_rich_error(
        400,
        "ERR_STATE_STORE_NOT_FOUND",
        "DAPR_STATE_NOT_FOUND",
    );
}

/// Spec §5.1: `scopes` limits which app ids load a component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_components() {
    let sc = Sidecar::builder()
        .app_id("scoped-app")
        .file(
            "mine.yaml",
            &component_yaml_ext(
                "mine",
                "state.in-memory",
                &[],
                &[],
                &["scopes:", "- scoped-app"],
            ),
        )
        .file(
            "theirs.yaml",
            &component_yaml_ext(
                "theirs",
                "state.in-memory",
                &[],
                &[],
                &["scopes:", "- other-app"],
            ),
        )
        .start()
        .await;
    sc.get_path("/v1.0/state/mine/k").await.expect_no_content();
    sc.get_path("/v1.0/state/theirs/k").await.expect_rich_error(
        400,
        "ERR_STATE_STORE_NOT_FOUND",
        "DAPR_STATE_NOT_FOUND",
    );
}
