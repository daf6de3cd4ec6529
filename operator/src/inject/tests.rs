//! Injection tests: golden AdmissionReviews, app ids, skips, and the patch's merge rules.
//! Every patch is applied to the pod JSON and the result read back as a Pod.
//!
//! `UPDATE_GOLDEN=1 cargo test -p operator --lib inject` rewrites `testdata/*.golden.json`.

use std::path::{Path, PathBuf};

use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use serde_json::{Value, json};

use super::patch::TOKEN_VOLUME;
use super::*;

pub(super) fn cfg() -> InjectorConfig {
    InjectorConfig {
        sidecar_image: "ghcr.io/statecar/statecar:0.1.0".into(),
        image_pull_policy: Some("IfNotPresent".into()),
        control_plane_address: "statecar-operator.statecar-system.svc:6500".into(),
        control_plane_trust_anchors: None,
        operator_namespace: "statecar-system".into(),
        default_resources: SidecarResources {
            cpu_request: Some("10m".into()),
            cpu_limit: None,
            memory_request: Some("16Mi".into()),
            memory_limit: Some("128Mi".into()),
        },
        native_sidecar_default: false,
    }
}

/// A pod named `cart` with one container `app` and these annotations (plus `enabled`).
pub(super) fn pod_with(annotations: &[(&str, &str)]) -> Value {
    let mut ann = serde_json::Map::new();
    ann.insert("dapr.io/enabled".into(), json!("true"));
    for (k, v) in annotations {
        ann.insert(k.to_string(), json!(v));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "cart", "annotations": ann},
        "spec": {"containers": [{"name": "app", "image": "shop/cart:1"}]}
    })
}

fn typed(pod: &Value) -> Pod {
    serde_json::from_value(pod.clone()).unwrap_or_else(|e| panic!("not a pod: {e}\n{pod:#}"))
}

/// The result of a successful injection, with the patch applied.
pub(super) struct Injected {
    pub ops: Vec<PatchOperation>,
    pub app_id: String,
    pub unsupported: Vec<String>,
    pub raw: Value,
    pub pod: Pod,
}

impl Injected {
    pub fn sidecar(&self) -> &Container {
        let spec = self.pod.spec.as_ref().expect("spec");
        let mut all = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .filter(|c| c.name == "daprd");
        let c = all.next().expect("a daprd container");
        assert!(all.next().is_none(), "exactly one daprd");
        c
    }

    pub fn args(&self) -> Vec<String> {
        self.sidecar().args.clone().expect("args")
    }

    /// The value after `flag` in the args, if the flag is there.
    pub fn arg(&self, flag: &str) -> Option<String> {
        let args = self.args();
        let i = args.iter().position(|a| a == flag)?;
        Some(args.get(i + 1).cloned().unwrap_or_default())
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.args().iter().any(|a| a == flag)
    }

    pub fn sidecar_env(&self, name: &str) -> Option<EnvVar> {
        self.sidecar()
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .cloned()
    }

    pub fn paths(&self) -> Vec<String> {
        self.ops.iter().map(|op| op.path().to_string()).collect()
    }
}

pub(super) fn inject_in(pod: &Value, namespace: &str, cfg: &InjectorConfig) -> Injected {
    match decide(&typed(pod), namespace, cfg) {
        Outcome::Inject {
            patch,
            app_id,
            unsupported,
        } => {
            let mut raw = pod.clone();
            json_patch::patch(&mut raw, &patch.0)
                .unwrap_or_else(|e| panic!("the patch does not apply: {e}\n{patch}\n{pod:#}"));
            let patched = typed(&raw);
            Injected {
                ops: patch.0,
                app_id,
                unsupported,
                raw,
                pod: patched,
            }
        }
        other => panic!("expected an injection, got {other:?}"),
    }
}

pub(super) fn inject(pod: &Value) -> Injected {
    inject_in(pod, "shop", &cfg())
}

pub(super) fn deny(pod: &Value) -> String {
    match decide(&typed(pod), "shop", &cfg()) {
        Outcome::Deny(message) => message,
        other => panic!("expected a denial, got {other:?}"),
    }
}

/// `None` when the pod is injected (the patch applied), the reason when it is skipped.
pub(super) fn decide_skip_or_inject(pod: &Value) -> Option<SkipReason> {
    match decide(&typed(pod), "shop", &cfg()) {
        Outcome::Skip(reason) => Some(reason),
        Outcome::Inject { .. } => {
            inject(pod);
            None
        }
        Outcome::Deny(message) => panic!("unexpected denial: {message}"),
    }
}

fn skip(pod: &Value, namespace: &str) -> SkipReason {
    match decide(&typed(pod), namespace, &cfg()) {
        Outcome::Skip(reason) => reason,
        other => panic!("expected a skip, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Golden AdmissionReviews

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/inject/testdata")
}

/// What a golden file holds: the decision for the review next to it.
fn golden_outcome(review: &Value) -> (Value, Value) {
    let parsed: AdmissionReview<Pod> =
        serde_json::from_value(review.clone()).expect("an AdmissionReview");
    let request: AdmissionRequest<Pod> = parsed.try_into().expect("a request");
    let pod = request.object.expect("request.object");
    let namespace = request.namespace.unwrap_or_default();
    let raw = review["request"]["object"].clone();
    let outcome = match decide(&pod, &namespace, &cfg()) {
        Outcome::Inject {
            patch,
            app_id,
            unsupported,
        } => {
            let mut patched = raw.clone();
            json_patch::patch(&mut patched, &patch.0).expect("the golden patch applies");
            let pod = typed(&patched);
            assert!(super::has_sidecar(&pod), "the patched pod has daprd");
            json!({"appId": app_id, "unsupported": unsupported, "patch": patch})
        }
        Outcome::Skip(reason) => json!({"skip": reason.as_str()}),
        Outcome::Deny(message) => json!({"deny": message}),
    };
    (outcome, raw)
}

#[test]
fn golden_admission_reviews() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut reviews: Vec<PathBuf> = std::fs::read_dir(testdata())
        .expect("testdata")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".review.json"))
        .collect();
    reviews.sort();
    assert!(reviews.len() >= 4, "golden reviews: {reviews:?}");
    let mut stale = Vec::new();
    for review_path in reviews {
        let text = std::fs::read_to_string(&review_path).expect("read review");
        let review: Value = serde_json::from_str(&text).expect("review JSON");
        let (outcome, _) = golden_outcome(&review);
        let golden_path = PathBuf::from(
            review_path
                .to_string_lossy()
                .replace(".review.json", ".golden.json"),
        );
        let rendered = format!(
            "{}\n",
            serde_json::to_string_pretty(&outcome).expect("json")
        );
        if update {
            std::fs::write(&golden_path, &rendered).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&golden_path).unwrap_or_default();
        if expected != rendered {
            stale.push(format!(
                "{}:\n--- expected\n{expected}\n--- got\n{rendered}",
                golden_path.display()
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "golden files differ (UPDATE_GOLDEN=1 rewrites them):\n{}",
        stale.join("\n")
    );
}

#[test]
fn golden_deployment_pod_reads_as_expected() {
    let text = std::fs::read_to_string(testdata().join("deployment.review.json")).expect("read");
    let review: Value = serde_json::from_str(&text).expect("json");
    let raw = review["request"]["object"].clone();
    let injected = inject(&raw);
    assert_eq!(injected.app_id, "web");
    let labels = injected.pod.metadata.labels.clone().expect("labels");
    assert_eq!(labels["app"], "web", "existing labels are kept");
    assert_eq!(labels["pod-template-hash"], "7d9f8b6c5d");
    assert_eq!(labels["dapr.io/app-id"], "web");
    assert_eq!(labels["dapr.io/sidecar-injected"], "true");
    let annotations = injected
        .pod
        .metadata
        .annotations
        .clone()
        .expect("annotations");
    assert_eq!(annotations["dapr.io/app-id"], "web");
    assert_eq!(annotations["dapr.io/enabled"], "true");
}

// ---------------------------------------------------------------------------------------------
// Skips

#[test]
fn not_enabled_is_skipped() {
    let mut pod = pod_with(&[]);
    pod["metadata"]["annotations"] = json!({});
    assert_eq!(skip(&pod, "shop"), SkipReason::NotEnabled);
    pod["metadata"]
        .as_object_mut()
        .expect("meta")
        .remove("annotations");
    assert_eq!(skip(&pod, "shop"), SkipReason::NotEnabled);
}

#[test]
fn daprd_in_containers_is_already_injected() {
    let mut pod = pod_with(&[]);
    pod["spec"]["containers"]
        .as_array_mut()
        .expect("containers")
        .push(json!({"name": "daprd", "image": "daprio/daprd:1.18.0"}));
    assert_eq!(skip(&pod, "shop"), SkipReason::AlreadyInjected);
}

#[test]
fn daprd_in_init_containers_is_already_injected() {
    let mut pod = pod_with(&[]);
    pod["spec"]["initContainers"] =
        json!([{"name": "daprd", "image": "x", "restartPolicy": "Always"}]);
    assert_eq!(skip(&pod, "shop"), SkipReason::AlreadyInjected);
}

#[test]
fn injecting_twice_is_a_no_op() {
    let injected = inject(&pod_with(&[]));
    assert_eq!(skip(&injected.raw, "shop"), SkipReason::AlreadyInjected);
    let native = inject(&pod_with(&[("dapr.io/enable-native-sidecar", "true")]));
    assert_eq!(skip(&native.raw, "shop"), SkipReason::AlreadyInjected);
}

#[test]
fn operator_namespace_is_skipped() {
    let mut pod = pod_with(&[]);
    assert_eq!(skip(&pod, "statecar-system"), SkipReason::OperatorNamespace);
    // Without a request namespace, the pod's own is used.
    pod["metadata"]["namespace"] = json!("statecar-system");
    assert_eq!(skip(&pod, ""), SkipReason::OperatorNamespace);
    assert_eq!(inject_in(&pod, "shop", &cfg()).app_id, "cart");
}

#[test]
fn skip_reason_labels() {
    assert_eq!(SkipReason::NotEnabled.as_str(), "not_enabled");
    assert_eq!(SkipReason::AlreadyInjected.as_str(), "already_injected");
    assert_eq!(SkipReason::OperatorNamespace.as_str(), "operator_namespace");
}

// ---------------------------------------------------------------------------------------------
// Merge rules

#[test]
fn existing_labels_and_annotations_are_added_to_not_replaced() {
    let mut pod = pod_with(&[("team", "payments")]);
    pod["metadata"]["labels"] = json!({"app": "cart", "tier": "backend"});
    let injected = inject(&pod);
    let paths = injected.paths();
    for p in &paths {
        assert_ne!(p, "/metadata/labels", "labels replaced: {paths:?}");
        assert_ne!(
            p, "/metadata/annotations",
            "annotations replaced: {paths:?}"
        );
    }
    assert!(paths.contains(&"/metadata/labels/dapr.io~1sidecar-injected".to_string()));
    assert!(paths.contains(&"/metadata/labels/dapr.io~1app-id".to_string()));
    assert!(paths.contains(&"/metadata/annotations/dapr.io~1app-id".to_string()));
    let labels = injected.pod.metadata.labels.clone().expect("labels");
    assert_eq!(labels.len(), 4, "{labels:?}");
    assert_eq!(labels["tier"], "backend");
    let ann = injected
        .pod
        .metadata
        .annotations
        .clone()
        .expect("annotations");
    assert_eq!(ann["team"], "payments");
    assert_eq!(ann["dapr.io/enabled"], "true");
}

#[test]
fn absent_labels_map_is_added_whole() {
    let injected = inject(&pod_with(&[]));
    let ops: Vec<_> = injected
        .ops
        .iter()
        .filter(|op| op.path().to_string().starts_with("/metadata/labels"))
        .collect();
    assert_eq!(ops.len(), 1, "{ops:?}");
    let json = serde_json::to_value(ops[0]).expect("json");
    assert_eq!(
        json,
        json!({"op": "add", "path": "/metadata/labels",
               "value": {"dapr.io/sidecar-injected": "true", "dapr.io/app-id": "cart"}})
    );
}

#[test]
fn labels_already_holding_the_value_are_not_rewritten() {
    let mut pod = pod_with(&[("dapr.io/app-id", "cart")]);
    pod["metadata"]["labels"] = json!({"dapr.io/app-id": "cart"});
    let paths = inject(&pod).paths();
    assert!(
        !paths.contains(&"/metadata/labels/dapr.io~1app-id".to_string()),
        "{paths:?}"
    );
}

#[test]
fn keys_are_escaped_in_paths() {
    let injected = inject(&pod_with(&[("other", "x")]));
    let patch = serde_json::to_string(&json_patch::Patch(injected.ops.clone())).expect("json");
    assert!(
        patch.contains(r#""path":"/metadata/annotations/dapr.io~1app-id""#),
        "{patch}"
    );
    let ptr = json_patch::jsonptr::PointerBuf::from_tokens(["metadata", "labels", "a~b/c"]);
    assert_eq!(ptr.as_str(), "/metadata/labels/a~0b~1c");
}

#[test]
fn existing_env_vars_are_kept() {
    let mut pod = pod_with(&[]);
    pod["spec"]["containers"] = json!([
        {"name": "app", "image": "a", "env": [{"name": "DAPR_HTTP_PORT", "value": "3600"},
                                              {"name": "MODE", "value": "prod"}]},
        {"name": "worker", "image": "w"},
        {"name": "both", "image": "b", "env": [{"name": "DAPR_HTTP_PORT", "value": "1"},
                                               {"name": "DAPR_GRPC_PORT", "value": "2"}]}
    ]);
    let injected = inject(&pod);
    let paths = injected.paths();
    assert!(
        paths.contains(&"/spec/containers/0/env/-".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/spec/containers/1/env".to_string()),
        "{paths:?}"
    );
    assert!(
        !paths.iter().any(|p| p.starts_with("/spec/containers/2")),
        "{paths:?}"
    );
    let spec = injected.pod.spec.clone().expect("spec");
    let env = |i: usize| -> Vec<(String, String)> {
        spec.containers[i]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    };
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        env(0),
        [
            pair("DAPR_HTTP_PORT", "3600"),
            pair("MODE", "prod"),
            pair("DAPR_GRPC_PORT", "50001")
        ]
    );
    assert_eq!(
        env(1),
        [
            pair("DAPR_HTTP_PORT", "3500"),
            pair("DAPR_GRPC_PORT", "50001")
        ]
    );
    assert_eq!(
        env(2),
        [pair("DAPR_HTTP_PORT", "1"), pair("DAPR_GRPC_PORT", "2")]
    );
    assert_eq!(spec.containers.len(), 4, "daprd appended last");
    assert_eq!(spec.containers[3].name, "daprd");
    assert!(
        spec.containers[3]
            .env
            .iter()
            .flatten()
            .all(|e| e.name != "DAPR_HTTP_PORT")
    );
}

#[test]
fn token_volume_added_appended_or_left_alone() {
    let injected = inject(&pod_with(&[]));
    assert!(injected.paths().contains(&"/spec/volumes".to_string()));
    let volumes = injected
        .pod
        .spec
        .clone()
        .expect("spec")
        .volumes
        .expect("volumes");
    assert_eq!(volumes.len(), 1);
    let v = serde_json::to_value(&volumes[0]).expect("json");
    assert_eq!(
        v,
        json!({"name": TOKEN_VOLUME, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]}}),
        "no audience: the API server's default audiences"
    );

    let mut pod = pod_with(&[]);
    pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let injected = inject(&pod);
    assert!(injected.paths().contains(&"/spec/volumes/-".to_string()));
    let volumes = injected
        .pod
        .spec
        .clone()
        .expect("spec")
        .volumes
        .expect("volumes");
    assert_eq!(volumes.len(), 2);
    assert_eq!(volumes[0].name, "data");

    pod["spec"]["volumes"] = json!([{"name": TOKEN_VOLUME, "emptyDir": {}}]);
    let injected = inject(&pod);
    assert!(
        !injected
            .paths()
            .iter()
            .any(|p| p.starts_with("/spec/volumes"))
    );
}

#[test]
fn pod_without_containers_gets_the_list() {
    let mut pod = pod_with(&[]);
    pod["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("containers");
    let injected = inject(&pod);
    assert_eq!(injected.paths()[0], "/spec/containers");
    assert_eq!(injected.pod.spec.clone().expect("spec").containers.len(), 1);
}
