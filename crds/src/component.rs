//! Dapr's `Component` resource (`dapr.io/v1alpha1`), as found in component YAML files and in the
//! `components.dapr.io` custom resource.

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "dapr.io/v1alpha1";
pub const KIND: &str = "Component";

/// A Dapr component manifest. Unknown fields are ignored so that manifests written for newer
/// Dapr releases still load.
///
/// `M` is the object metadata: the small [`ObjectMeta`] for files and the sidecar, Kubernetes'
/// own for the custom resource (see the `kube` feature). `auth` and `scopes` sit beside `spec`,
/// as in Dapr's schema.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Component<M = ObjectMeta> {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: M,
    #[serde(default)]
    pub spec: ComponentSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Written by the operator (a statecar extension; Dapr's resource has no status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ComponentStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A status condition, shaped like Kubernetes' `metav1.Condition`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Auth {
    #[serde(default)]
    pub secret_store: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// `<category>.<name>`, e.g. `state.redis`. Matched case-insensitively.
    #[serde(default, rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub metadata: Vec<MetadataItem>,
    #[serde(default)]
    pub ignore_errors: bool,
    /// Go duration syntax (`5s`, `1m30s`); empty means the default of 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_timeout: Option<String>,
}

/// One `spec.metadata[]` entry: a name and exactly one source for its value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataItem {
    pub name: String,
    /// Any JSON/YAML value; scalars are used as their text form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_ref: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecretKeyRef {
    pub name: String,
    #[serde(default)]
    pub key: String,
}

impl<M> Component<M> {
    /// True when this manifest is a Dapr component (other kinds may share a file).
    pub fn is_component(&self) -> bool {
        self.api_version == API_VERSION && self.kind == KIND
    }

    /// Whether an app with this id may load the component (empty scopes = everyone).
    pub fn in_scope(&self, app_id: &str) -> bool {
        self.scopes.is_empty() || self.scopes.iter().any(|s| s == app_id)
    }

    /// The lower-cased component type, e.g. `state.redis`.
    pub fn component_type(&self) -> String {
        self.spec.type_.to_ascii_lowercase()
    }
}

/// The text form of a metadata value: strings as they are, other JSON values as JSON text.
pub fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_values_become_text() {
        assert_eq!(value_text(&serde_json::json!("a")), "a");
        assert_eq!(value_text(&serde_json::json!(1)), "1");
        assert_eq!(value_text(&serde_json::json!(true)), "true");
        assert_eq!(value_text(&serde_json::Value::Null), "");
    }

    #[test]
    fn scopes() {
        let mut c: Component = Component::default();
        assert!(c.in_scope("a"));
        c.scopes = vec!["b".into()];
        assert!(!c.in_scope("a"));
        assert!(c.in_scope("b"));
    }
}
