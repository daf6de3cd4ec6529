//! Turns a `Component` resource into what a sidecar needs: secretKeyRefs resolved from the
//! component's own namespace, then the shared validator's verdict.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use statecar_crds::component::value_text;
use statecar_crds::kube::ComponentResource;
use statecar_crds::validate::{validate, validate_name};
use statecar_crds::{Component, ComponentSpec, MetadataItem, MetadataMap, ObjectMeta};

/// Why a component cannot be served; `reason` becomes the Ready condition's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Finds a Secret by namespace and name.
pub trait SecretSource {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;
}

/// The component as sent to sidecars: plain metadata, every secretKeyRef replaced by its value.
/// Secret values live only in this struct and on the wire to the sidecar; never in logs.
pub fn resolve(c: &ComponentResource, secrets: &impl SecretSource) -> Result<Component, Problem> {
    resolve_with(c, Some(secrets))
}

/// The admission check (`POST /validate`): the same rules and messages as [`resolve`], without
/// reading Secrets (a Secret may be created after its Component; the reconciler reports that).
/// Items set from a secretKeyRef or envRef are judged later. Types statecar does not serve pass:
/// Dapr manifests for other building blocks must still apply.
pub fn check_for_admission(c: &ComponentResource) -> Result<(), Problem> {
    let type_ = c.spec.type_.to_ascii_lowercase();
    if !statecar_crds::validate::SUPPORTED_TYPES.contains(&type_.as_str()) {
        return Ok(());
    }
    resolve_with(c, None::<&NoSecrets>).map(|_| ())
}

struct NoSecrets;

impl SecretSource for NoSecrets {
    fn secret(&self, _namespace: &str, _name: &str) -> Option<Arc<Secret>> {
        None
    }
}

fn resolve_with(
    c: &ComponentResource,
    secrets: Option<&impl SecretSource>,
) -> Result<Component, Problem> {
    let name = c.metadata.name.clone().unwrap_or_default();
    let namespace = c.metadata.namespace.clone().unwrap_or_default();
    validate_name(&name).map_err(|e| Problem::new(e.reason.as_str(), e.to_string()))?;
    if let Some(store) = c.auth.as_ref().map(|a| a.secret_store.as_str())
        && !store.is_empty()
        && store != "kubernetes"
    {
        return Err(Problem::new(
            "InvalidSpec",
            format!(
                "auth.secretStore: {store:?} is not supported; statecar resolves secretKeyRefs \
                 from Kubernetes Secrets (leave it empty or set it to kubernetes)"
            ),
        ));
    }

    let mut items = Vec::with_capacity(c.spec.metadata.len());
    let mut md = MetadataMap::new();
    let mut from_env = Vec::new();
    for (i, item) in c.spec.metadata.iter().enumerate() {
        let field = || format!("spec.metadata[{i}] ({})", item.name);
        let has_value = item.value.as_ref().is_some_and(|v| !v.is_null());
        if has_value && item.secret_key_ref.is_some() {
            return Err(Problem::new(
                "InvalidMetadata",
                format!("{}: set either value or secretKeyRef, not both", field()),
            ));
        }
        let value = if let Some(v) = item.value.as_ref().filter(|v| !v.is_null()) {
            Some(value_text(v))
        } else if let (Some(_), None) = (&item.secret_key_ref, secrets) {
            // Admission: the Secret is read at reconcile time.
            from_env.push(item.name.clone());
            None
        } else if let (Some(r), Some(secrets)) = (&item.secret_key_ref, secrets) {
            let key = if r.key.is_empty() { &r.name } else { &r.key };
            let secret = secrets.secret(&namespace, &r.name).ok_or_else(|| {
                Problem::new(
                    "SecretNotFound",
                    format!(
                        "{}: secret {:?} not found in namespace {namespace}",
                        field(),
                        r.name
                    ),
                )
            })?;
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .ok_or_else(|| {
                    Problem::new(
                        "SecretNotFound",
                        format!("{}: key {key:?} not found in secret {:?}", field(), r.name),
                    )
                })?;
            let text = String::from_utf8(bytes.0.clone()).map_err(|_| {
                Problem::new(
                    "InvalidMetadata",
                    format!(
                        "{}: key {key:?} of secret {:?} is not UTF-8 text",
                        field(),
                        r.name
                    ),
                )
            })?;
            Some(text)
        } else if item.env_ref.as_deref().is_some_and(|e| !e.is_empty()) {
            // Known only inside the sidecar's container.
            from_env.push(item.name.clone());
            None
        } else {
            Some(String::new())
        };
        if let Some(v) = &value {
            md.insert(item.name.clone(), v.clone());
        }
        items.push(MetadataItem {
            name: item.name.clone(),
            value: value.map(serde_json::Value::String),
            secret_key_ref: None,
            env_ref: if from_env.last() == Some(&item.name) {
                item.env_ref.clone()
            } else {
                None
            },
        });
    }

    if let Err(e) = validate(&c.spec, &md) {
        // A field whose value comes from the sidecar's environment cannot be judged here.
        let judged_elsewhere = from_env
            .iter()
            .any(|n| e.field.eq_ignore_ascii_case(&format!("spec.metadata.{n}")));
        if !judged_elsewhere {
            return Err(Problem::new(e.reason.as_str(), e.to_string()));
        }
    }

    Ok(Component {
        api_version: statecar_crds::component::API_VERSION.into(),
        kind: statecar_crds::component::KIND.into(),
        metadata: ObjectMeta {
            name,
            namespace: Some(namespace),
        },
        spec: ComponentSpec {
            type_: c.spec.type_.clone(),
            version: c.spec.version.clone(),
            metadata: items,
            ignore_errors: c.spec.ignore_errors,
            init_timeout: c.spec.init_timeout.clone(),
        },
        auth: None,
        scopes: c.scopes.clone(),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    struct Secrets(Vec<(String, String, BTreeMap<String, ByteString>)>);

    impl SecretSource for Secrets {
        fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
            self.0
                .iter()
                .find(|(ns, n, _)| ns == namespace && n == name)
                .map(|(_, _, data)| {
                    Arc::new(Secret {
                        data: Some(data.clone()),
                        ..Default::default()
                    })
                })
        }
    }

    fn component(yaml: &str) -> ComponentResource {
        serde_yaml::from_str(yaml).unwrap()
    }

    const REDIS: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore, namespace: shop}
spec:
  type: state.redis
  version: v1
  metadata:
  - {name: redisHost, value: "redis:6379"}
  - name: redisPassword
    secretKeyRef: {name: redis, key: password}
"#;

    fn secrets() -> Secrets {
        let data = BTreeMap::from([("password".to_string(), ByteString(b"s3cr3t".to_vec()))]);
        Secrets(vec![("shop".into(), "redis".into(), data)])
    }

    #[test]
    fn secret_refs_are_resolved_from_the_components_namespace() {
        let c = resolve(&component(REDIS), &secrets()).unwrap();
        let pw = &c.spec.metadata[1];
        assert_eq!(pw.value, Some(serde_json::json!("s3cr3t")));
        assert_eq!(pw.secret_key_ref, None);

        let other_ns = REDIS.replace("namespace: shop", "namespace: other");
        let e = resolve(&component(&other_ns), &secrets()).unwrap_err();
        assert_eq!(e.reason, "SecretNotFound");
        assert!(
            e.message.contains("\"redis\" not found in namespace other"),
            "{}",
            e.message
        );

        let wrong_key = REDIS.replace("key: password", "key: nope");
        let e = resolve(&component(&wrong_key), &secrets()).unwrap_err();
        assert!(e.message.contains("key \"nope\""), "{}", e.message);
        assert!(!e.message.contains("s3cr3t"));
    }

    #[test]
    fn verdicts_name_the_field() {
        let bad = REDIS.replace("value: \"redis:6379\"", "value: \"redis:x\"");
        let e = resolve(&component(&bad), &secrets()).unwrap_err();
        assert_eq!(e.reason, "InvalidMetadata");
        assert!(e.message.contains("redisHost"), "{}", e.message);

        let e = resolve(
            &component(&REDIS.replace("state.redis", "state.mongodb")),
            &secrets(),
        )
        .unwrap_err();
        assert_eq!(e.reason, "UnsupportedType");

        let store = format!("{REDIS}auth: {{secretStore: vault}}\n");
        assert_eq!(
            resolve(&component(&store), &secrets()).unwrap_err().reason,
            "InvalidSpec"
        );
    }

    #[test]
    fn env_refs_are_left_to_the_sidecar() {
        let env = REDIS.replace("value: \"redis:6379\"", "envRef: REDIS_HOST");
        let c = resolve(&component(&env), &secrets()).unwrap();
        assert_eq!(c.spec.metadata[0].env_ref.as_deref(), Some("REDIS_HOST"));
        assert_eq!(c.spec.metadata[0].value, None);
    }
}
