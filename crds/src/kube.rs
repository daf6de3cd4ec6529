//! The `components.dapr.io` custom resource: the Kubernetes form of [`Component`] and its CRD.
//!
//! kube's `CustomResource` derive cannot express Dapr's schema, where `auth` and `scopes` are
//! siblings of `spec`, so the `Resource` impl and the schema are written out here.

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use crate::component::Component;

pub const GROUP: &str = "dapr.io";
pub const VERSION: &str = "v1alpha1";
pub const PLURAL: &str = "components";
pub const CRD_NAME: &str = "components.dapr.io";

/// A `Component` as stored in the API server.
pub type ComponentResource = Component<ObjectMeta>;

impl kube::Resource for Component<ObjectMeta> {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(crate::component::KIND)
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(GROUP)
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(VERSION)
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(crate::component::API_VERSION)
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(PLURAL)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn string() -> serde_json::Value {
    json!({"type": "string"})
}

/// The CRD: Dapr's schema (every Dapr manifest applies unchanged) plus a status subresource,
/// printer columns and a short name.
pub fn crd() -> CustomResourceDefinition {
    let metadata_item = json!({
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": string(),
            "value": {
                "description": "Any JSON value; non-strings are used as their JSON text.",
                "x-kubernetes-preserve-unknown-fields": true
            },
            "secretKeyRef": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": string(), "key": string()}
            },
            "envRef": string()
        }
    });
    let condition = json!({
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": string(),
            "status": string(),
            "reason": string(),
            "message": string(),
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64"}
        }
    });
    let schema = json!({
        "type": "object",
        "description": "A Dapr component. statecar serves state.redis and state.in-memory.",
        "properties": {
            "apiVersion": string(),
            "kind": string(),
            "metadata": {"type": "object"},
            "spec": {
                "type": "object",
                "required": ["type", "version", "metadata"],
                "properties": {
                    "type": string(),
                    "version": string(),
                    "ignoreErrors": {"type": "boolean"},
                    "initTimeout": string(),
                    "metadata": {"type": "array", "items": metadata_item}
                }
            },
            "auth": {
                "type": "object",
                "required": ["secretStore"],
                "properties": {"secretStore": string()}
            },
            "scopes": {"type": "array", "items": string()},
            "status": {
                "type": "object",
                "properties": {
                    "observedGeneration": {"type": "integer", "format": "int64"},
                    "conditions": {"type": "array", "items": condition}
                }
            }
        }
    });
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "statecar"}
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": crate::component::KIND,
                "listKind": "ComponentList",
                "plural": PLURAL,
                "singular": "component",
                "shortNames": ["comp"]
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Type", "type": "string", "jsonPath": ".spec.type"},
                    {"name": "Ready", "type": "string",
                     "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ]
            }]
        }
    });
    serde_json::from_value(crd).expect("the CRD literal matches the CRD type")
}

/// The CRD as YAML, as committed in `crds/components.dapr.io.yaml`.
pub fn crd_yaml() -> String {
    let body = serde_yaml::to_string(&crd()).expect("a CRD serialises");
    format!(
        "# Generated by `cargo run -p statecar-crds --features kube --bin crdgen`. Do not edit.\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed YAML must match the types; regenerate with crdgen when this fails.
    #[test]
    fn committed_crd_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/components.dapr.io.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == crd_yaml(),
            "{path} is out of date: run `cargo run -p statecar-crds --features kube --bin crdgen`"
        );
    }

    #[test]
    fn dapr_manifest_round_trips() {
        let yaml = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore, namespace: shop}
spec:
  type: state.redis
  version: v1
  metadata:
  - {name: redisHost, value: "redis:6379"}
  - name: redisPassword
    secretKeyRef: {name: redis, key: redis-password}
auth: {secretStore: kubernetes}
scopes: [cart]
"#;
        let c: ComponentResource = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(c.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(c.scopes, ["cart"]);
        assert_eq!(
            c.spec.metadata[1].secret_key_ref.as_ref().unwrap().key,
            "redis-password"
        );
        assert_eq!(
            <ComponentResource as kube::Resource>::plural(&()),
            "components"
        );
    }
}
