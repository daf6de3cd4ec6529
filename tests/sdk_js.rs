//! The official Dapr JavaScript SDK (`@dapr/dapr`, HTTP protocol) against the real binary, over
//! both stores: save with etag and options, get, getBulk, delete, transaction, TTL, metadata.
//! The SDK suite itself is `tests/sdk-js/state.test.mjs`; `scripts/test.sh` installs it.

use std::path::Path;
use std::process::Command;

use statecar_tests::{Sidecar, StoreKind, store_tests};

store_tests!(dapr_js_sdk);

async fn dapr_js_sdk(kind: StoreKind) {
    let sc = Sidecar::start(kind).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk-js");
    assert!(
        dir.join("node_modules/@dapr/dapr").is_dir(),
        "the Dapr JS SDK is not installed: run `npm ci` in {} (scripts/test.sh does)",
        dir.display()
    );
    let port = sc.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "state.test.mjs"])
            .current_dir(&dir)
            .env("DAPR_HTTP_PORT", port)
            .output()
    })
    .await
    .expect("node task")
    .expect("running node (is Node.js installed?)");
    assert!(
        out.status.success(),
        "Dapr JS SDK suite failed against the {kind:?} store ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("# fail 0") && !report.contains("# pass 0"),
        "unexpected node --test report:\n{report}"
    );
}
