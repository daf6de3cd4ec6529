//! Registers the webhook configurations with a `url:` clientConfig, for an operator that runs
//! outside the cluster (development, and the tests on the local API server). In a cluster the
//! Helm chart owns them, with a Service reference, and the operator only keeps their caBundle.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::reconcile::MANAGER;

pub struct Registration {
    pub mutating_name: String,
    pub validating_name: String,
    /// `https://host:port`, without a path.
    pub base_url: String,
    /// PEM bundle the API server verifies the webhook with.
    pub ca_bundle_pem: String,
    /// Which namespaces the webhooks see (a LabelSelector).
    pub namespace_selector: Value,
    pub mutate_failure_policy: String,
    pub validate_failure_policy: String,
}

/// Creates or updates both configurations (server-side apply, so fields other managers own,
/// such as a caBundle kept by another replica, are left alone).
pub async fn register(client: &Client, r: &Registration) -> Result<(), kube::Error> {
    // ByteString serialises as base64, as caBundle wants.
    let ca = k8s_openapi::ByteString(r.ca_bundle_pem.as_bytes().to_vec());
    let common = |path: &str| {
        json!({
            "url": format!("{}{path}", r.base_url.trim_end_matches('/')),
            "caBundle": ca,
        })
    };
    let mutating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": r.mutating_name, "labels": {"app.kubernetes.io/managed-by": MANAGER}},
        "webhooks": [{
            "name": "sidecar-injector.statecar.dev",
            "clientConfig": common("/mutate"),
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"]}],
            "namespaceSelector": r.namespace_selector,
            "failurePolicy": r.mutate_failure_policy,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
        }],
    });
    let validating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": r.validating_name, "labels": {"app.kubernetes.io/managed-by": MANAGER}},
        "webhooks": [{
            "name": "components.statecar.dev",
            "clientConfig": common("/validate"),
            "rules": [{"apiGroups": ["dapr.io"], "apiVersions": ["v1alpha1"], "resources": ["components"], "operations": ["CREATE", "UPDATE"]}],
            "namespaceSelector": r.namespace_selector,
            "failurePolicy": r.validate_failure_policy,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    });
    let params = PatchParams::apply(MANAGER).force();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(&r.mutating_name, &params, &Patch::Apply(&mutating))
        .await?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(&r.validating_name, &params, &Patch::Apply(&validating))
        .await?;
    Ok(())
}

/// The default namespace selector: every namespace but the operator's own and kube-system.
/// (Namespaces carry `kubernetes.io/metadata.name` from Kubernetes 1.21; on older clusters the
/// injector still skips its own namespace itself.)
pub fn default_namespace_selector(operator_namespace: &str) -> Value {
    json!({"matchExpressions": [{
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": [operator_namespace, "kube-system"],
    }]})
}

/// `key=value` → a selector matching namespaces with that label.
pub fn label_selector(spec: &str) -> Option<Value> {
    let (k, v) = spec.split_once('=')?;
    let (k, v) = (k.trim(), v.trim());
    (!k.is_empty()).then(|| json!({"matchLabels": {k: v}}))
}
