//! The official Dapr Python SDK (`dapr` on PyPI, which speaks gRPC) against the real binary,
//! over both stores: save with etag and options, get, bulk get, delete, transaction, TTL,
//! metadata, errors, and the API token. The suite itself is `tests/sdk-python/state_test.py`;
//! `scripts/test.sh` installs the SDK.

use std::path::Path;
use std::process::Command;

use statecar_tests::{Sidecar, StoreKind, store_tests};

store_tests!(dapr_python_sdk);

async fn dapr_python_sdk(kind: StoreKind) {
    let sc = Sidecar::builder().store(kind).start().await;
    run_suite(&sc, kind, "state", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_python_sdk_sends_the_api_token() {
    let token = "py-sdk-token";
    let sc = Sidecar::builder()
        .store(StoreKind::Memory)
        .env("DAPR_API_TOKEN", token)
        .start()
        .await;
    run_suite(&sc, StoreKind::Memory, "auth", Some(token)).await;
}

async fn run_suite(sc: &Sidecar, kind: StoreKind, suite: &str, token: Option<&str>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk-python/state_test.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .env("DAPR_HTTP_PORT", sc.port().to_string())
        .env("DAPR_GRPC_PORT", sc.grpc_port().to_string())
        .env("DAPR_RUNTIME_HOST", "127.0.0.1")
        .env("DAPR_HEALTH_TIMEOUT", "20")
        .env("STATECAR_APP_ID", sc.app_id())
        .env("STATECAR_STORE_TYPE", kind.component_type())
        .env("STATECAR_SUITE", suite)
        .env_remove("DAPR_GRPC_ENDPOINT")
        .env_remove("DAPR_HTTP_ENDPOINT")
        .env_remove("DAPR_API_TOKEN");
    if let Some(t) = token {
        cmd.env("DAPR_API_TOKEN", t);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("python task")
        .expect("running python3");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !report.contains("No module named 'dapr'"),
        "the Dapr Python SDK is not installed: `python3 -m pip install dapr==1.19.0` \
         (scripts/test.sh does)\n{report}"
    );
    assert!(
        out.status.success(),
        "Dapr Python SDK suite `{suite}` failed against the {kind:?} store ({}):\n{report}\n\
         sidecar logs:\n{}",
        out.status,
        sc.logs()
    );
    assert!(
        report.contains("\nOK"),
        "unexpected unittest report:\n{report}"
    );
}
