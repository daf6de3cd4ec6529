//! Injection tests: app ids (annotation, name, generateName, owner, denials) and the sidecar
//! container itself.

use serde_json::{Value, json};

use super::patch::{TOKEN_DIR, TOKEN_FILE, TOKEN_VOLUME};
use super::tests::{cfg, deny, inject, inject_in, pod_with};
use super::*;

// ---------------------------------------------------------------------------------------------
// App ids

fn without_name(pod: &mut Value) -> &mut serde_json::Map<String, Value> {
    let meta = pod["metadata"].as_object_mut().expect("metadata");
    meta.remove("name");
    meta
}

#[test]
fn bare_pod_uses_its_name_and_records_it() {
    let injected = inject(&pod_with(&[]));
    assert_eq!(injected.app_id, "cart");
    let ann = injected
        .pod
        .metadata
        .annotations
        .clone()
        .expect("annotations");
    assert_eq!(
        ann["dapr.io/app-id"], "cart",
        "the derived id is written back"
    );
    assert_eq!(injected.arg("--app-id").as_deref(), Some("cart"));
}

#[test]
fn app_id_annotation_is_kept_as_is() {
    let injected = inject(&pod_with(&[("dapr.io/app-id", "orders")]));
    assert_eq!(injected.app_id, "orders");
    assert!(
        !injected
            .paths()
            .iter()
            .any(|p| p.starts_with("/metadata/annotations")),
        "no annotation op when the annotation is already there: {:?}",
        injected.paths()
    );
    assert_eq!(
        injected.pod.metadata.labels.clone().expect("labels")["dapr.io/app-id"],
        "orders"
    );
}

#[test]
fn empty_app_id_annotation_is_replaced_by_the_derived_id() {
    let injected = inject(&pod_with(&[("dapr.io/app-id", "")]));
    assert_eq!(injected.app_id, "cart");
    let ann = injected
        .pod
        .metadata
        .annotations
        .clone()
        .expect("annotations");
    assert_eq!(ann["dapr.io/app-id"], "cart");
}

#[test]
fn deployment_pod_gets_the_deployment_name() {
    let mut pod = pod_with(&[]);
    let meta = without_name(&mut pod);
    meta.insert("generateName".into(), json!("checkout-api-5f6b7c8d9e-"));
    meta.insert(
        "labels".into(),
        json!({"app": "checkout", "pod-template-hash": "5f6b7c8d9e"}),
    );
    meta.insert(
        "ownerReferences".into(),
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-api-5f6b7c8d9e",
                "uid": "1", "controller": true}]),
    );
    let injected = inject(&pod);
    assert_eq!(injected.app_id, "checkout-api");
    let ann = injected
        .pod
        .metadata
        .annotations
        .clone()
        .expect("annotations");
    assert_eq!(ann["dapr.io/app-id"], "checkout-api");
}

#[test]
fn generate_name_without_hash_label_keeps_the_replica_set_name() {
    let mut pod = pod_with(&[]);
    without_name(&mut pod).insert("generateName".into(), json!("checkout-api-5f6b7c8d9e-"));
    assert_eq!(inject(&pod).app_id, "checkout-api-5f6b7c8d9e");
}

#[test]
fn job_pod_gets_the_job_name() {
    let mut pod = pod_with(&[]);
    let meta = without_name(&mut pod);
    meta.insert("generateName".into(), json!("nightly-report-"));
    meta.insert(
        "labels".into(),
        json!({"job-name": "nightly-report", "batch.kubernetes.io/job-name": "nightly-report"}),
    );
    assert_eq!(inject(&pod).app_id, "nightly-report");
}

#[test]
fn owner_only_pod_gets_the_owner_name() {
    let mut pod = pod_with(&[]);
    let meta = without_name(&mut pod);
    meta.insert("labels".into(), json!({"pod-template-hash": "84c9f5d7b6"}));
    meta.insert(
        "ownerReferences".into(),
        json!([
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "not-the-controller", "uid": "1"},
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "inventory-84c9f5d7b6",
             "uid": "2", "controller": true}
        ]),
    );
    assert_eq!(inject(&pod).app_id, "inventory");
}

#[test]
fn pod_with_nothing_usable_is_denied() {
    let mut pod = pod_with(&[]);
    without_name(&mut pod);
    let message = deny(&pod);
    assert!(message.contains("dapr.io/app-id"), "{message}");
    assert!(message.contains("no app id"), "{message}");
}

#[test]
fn underivable_names_are_denied_with_what_was_tried() {
    let mut pod = pod_with(&[]);
    let meta = without_name(&mut pod);
    meta.insert("generateName".into(), json!("web.v2-"));
    let message = deny(&pod);
    assert!(message.contains("\"web.v2\""), "{message}");
    assert!(message.contains("dapr.io/app-id"), "{message}");
    // A later candidate that is valid is used.
    pod["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "web-v2", "uid": "1"}]);
    assert_eq!(inject(&pod).app_id, "web-v2");
}

#[test]
fn invalid_app_id_annotations_are_denied() {
    let message = deny(&pod_with(&[("dapr.io/app-id", "Cart")]));
    assert!(message.contains("dapr.io/app-id"), "{message}");
    assert!(message.contains("uppercase"), "{message}");

    let long = "a".repeat(59);
    let message = deny(&pod_with(&[("dapr.io/app-id", &long)]));
    assert!(message.contains("59 characters"), "{message}");
    assert!(message.contains("58"), "{message}");

    let message = deny(&pod_with(&[("dapr.io/app-id", "my_app")]));
    assert!(message.contains("'_'"), "{message}");

    assert_eq!(
        inject(&pod_with(&[("dapr.io/app-id", &"a".repeat(58))]))
            .app_id
            .len(),
        58
    );
}

#[test]
fn too_long_pod_name_is_denied() {
    let mut pod = pod_with(&[]);
    pod["metadata"]["name"] = json!("x".repeat(60));
    let message = deny(&pod);
    assert!(message.contains("60 characters"), "{message}");
    assert!(message.contains("dapr.io/app-id"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// The container

#[test]
fn sidecar_container_defaults() {
    let injected = inject(&pod_with(&[]));
    let c = injected.sidecar();
    assert_eq!(c.image.as_deref(), Some("ghcr.io/statecar/statecar:0.1.0"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert!(c.command.is_none(), "the image's entrypoint runs");
    assert!(c.restart_policy.is_none());
    assert_eq!(
        injected.args(),
        [
            "--mode",
            "kubernetes",
            "--app-id",
            "cart",
            "--dapr-http-port",
            "3500",
            "--dapr-public-port",
            "3501",
            "--dapr-grpc-port",
            "50001",
            "--control-plane-address",
            "statecar-operator.statecar-system.svc:6500",
            "--token-file",
            TOKEN_FILE,
            "--log-level",
            "info"
        ]
    );
    let c = serde_json::to_value(c).expect("json");
    assert_eq!(
        c["env"],
        json!([
            {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}
        ])
    );
    assert_eq!(
        c["ports"],
        json!([
            {"name": "dapr-http", "containerPort": 3500, "protocol": "TCP"},
            {"name": "dapr-grpc", "containerPort": 50001, "protocol": "TCP"}
        ])
    );
    assert_eq!(
        c["readinessProbe"],
        json!({"httpGet": {"path": "/v1.0/healthz", "port": 3501}, "initialDelaySeconds": 1,
               "timeoutSeconds": 1, "periodSeconds": 1, "failureThreshold": 5})
    );
    assert_eq!(
        c["livenessProbe"],
        json!({"tcpSocket": {"port": 3501}, "initialDelaySeconds": 180, "timeoutSeconds": 3,
               "periodSeconds": 10, "failureThreshold": 5})
    );
    assert_eq!(
        c["securityContext"],
        json!({"runAsNonRoot": true, "readOnlyRootFilesystem": true,
               "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}])
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}})
    );
}

#[test]
fn no_default_resources_means_no_resources_field() {
    let mut config = cfg();
    config.default_resources = SidecarResources::default();
    let injected = inject_in(&pod_with(&[]), "shop", &config);
    assert!(injected.sidecar().resources.is_none());
}

#[test]
fn native_sidecar_from_the_config_default() {
    let mut config = cfg();
    config.native_sidecar_default = true;
    let injected = inject_in(&pod_with(&[]), "shop", &config);
    let spec = injected.pod.spec.clone().expect("spec");
    assert_eq!(spec.containers.len(), 1);
    let init = spec.init_containers.expect("initContainers");
    assert_eq!(init[0].name, "daprd");
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    // The annotation turns it off again.
    let injected = inject_in(
        &pod_with(&[("dapr.io/enable-native-sidecar", "false")]),
        "shop",
        &config,
    );
    let spec = injected.pod.spec.clone().expect("spec");
    assert!(spec.init_containers.is_none());
    assert_eq!(spec.containers[1].name, "daprd");
}

#[test]
fn sidecar_resources_validation() {
    let r = |cr: &str, cl: &str, mr: &str, ml: &str| {
        let o = |s: &str| (!s.is_empty()).then(|| s.to_string());
        SidecarResources {
            cpu_request: o(cr),
            cpu_limit: o(cl),
            memory_request: o(mr),
            memory_limit: o(ml),
        }
    };
    assert_eq!(r("100m", "1", "64Mi", "1Gi").validate(), Ok(()));
    assert_eq!(r("0.5", "500m", "", "").validate(), Ok(()));
    assert_eq!(r("", "", "1Gi", "1073741824").validate(), Ok(()));
    assert!(
        r("2", "1", "", "")
            .validate()
            .is_err_and(|e| e.contains("cpu request"))
    );
    assert!(
        r("", "", "abc", "")
            .validate()
            .is_err_and(|e| e.contains("memory request"))
    );
    assert!(
        r("-1", "", "", "")
            .validate()
            .is_err_and(|e| e.contains("negative"))
    );
    assert!(SidecarResources::default().is_empty());
}
