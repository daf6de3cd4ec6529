//! Keeping `webhooks[].clientConfig.caBundle` of the webhook configurations equal to the CA
//! bundle. Only that field is touched, with a JSON Patch per webhook.

use std::fmt::Debug;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub(super) struct Targets {
    pub mutating: Api<MutatingWebhookConfiguration>,
    pub validating: Api<ValidatingWebhookConfiguration>,
    mutating_names: Vec<String>,
    validating_names: Vec<String>,
}

impl Targets {
    pub fn new(client: Client, mutating: &[String], validating: &[String]) -> Self {
        Self {
            mutating: Api::all(client.clone()),
            validating: Api::all(client),
            mutating_names: mutating.to_vec(),
            validating_names: validating.to_vec(),
        }
    }

    /// One pass over every configured configuration; failures are logged and left to the next.
    pub async fn sync(&self, bundle_pem: &str) {
        for name in &self.mutating_names {
            sync_one(&self.mutating, name, bundle_pem).await;
        }
        for name in &self.validating_names {
            sync_one(&self.validating, name, bundle_pem).await;
        }
    }
}

async fn sync_one<K>(api: &Api<K>, name: &str, bundle_pem: &str)
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let kind = K::kind(&());
    let config = match api.get_opt(name).await {
        Ok(Some(config)) => config,
        Ok(None) => {
            // Installed later (or by someone else): picked up by a later round.
            tracing::debug!(%kind, %name, "webhook configuration not found yet");
            return;
        }
        Err(e) => {
            tracing::warn!(%kind, %name, error = %e, "cannot read the webhook configuration; retrying");
            return;
        }
    };
    let ops = match serde_json::to_value(&config) {
        Ok(value) => patch_ops(&value, bundle_pem),
        Err(e) => {
            tracing::warn!(%kind, %name, error = %e, "cannot serialize the webhook configuration");
            return;
        }
    };
    if ops.is_empty() {
        return;
    }
    let updated = ops.len() / 2;
    let patch: json_patch::Patch = match serde_json::from_value(Value::Array(ops)) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%kind, %name, error = %e, "building the caBundle patch");
            return;
        }
    };
    match api
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => {
            tracing::info!(%kind, %name, webhooks = updated, "set the caBundle of the webhook configuration")
        }
        // A failed `test` (the webhooks changed since we read them) comes back as 422 or 500;
        // either way the next round reads afresh.
        Err(e) => tracing::warn!(%kind, %name, error = %e, "cannot patch the caBundle; retrying"),
    }
}

/// JSON Patch operations setting every webhook's caBundle to `bundle_pem` where it differs. Each
/// write is guarded by a `test` of that webhook's name, so a list that changed meanwhile makes the
/// patch fail rather than land on the wrong webhook.
pub(super) fn patch_ops(config: &Value, bundle_pem: &str) -> Vec<Value> {
    // ByteString serializes as the API does: standard base64.
    let want =
        serde_json::to_value(ByteString(bundle_pem.as_bytes().to_vec())).unwrap_or(Value::Null);
    let Some(webhooks) = config.get("webhooks").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut ops = Vec::new();
    for (i, webhook) in webhooks.iter().enumerate() {
        if webhook.pointer("/clientConfig/caBundle") == Some(&want) {
            continue;
        }
        let name = webhook.get("name").cloned().unwrap_or(Value::Null);
        ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": name}));
        // `add` sets the member whether or not it exists.
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": want}));
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Value {
        serde_json::to_value(ByteString(s.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn only_webhooks_with_another_bundle_are_patched() {
        let config = json!({
            "metadata": {"name": "x"},
            "webhooks": [
                {"name": "a", "clientConfig": {"url": "https://h/a", "caBundle": b64("PEM")}},
                {"name": "b", "clientConfig": {"url": "https://h/b", "caBundle": b64("old")}},
                {"name": "c", "clientConfig": {"service": {"name": "s", "namespace": "n"}}},
            ]
        });
        let ops = patch_ops(&config, "PEM");
        assert_eq!(
            ops,
            vec![
                json!({"op": "test", "path": "/webhooks/1/name", "value": "b"}),
                json!({"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": b64("PEM")}),
                json!({"op": "test", "path": "/webhooks/2/name", "value": "c"}),
                json!({"op": "add", "path": "/webhooks/2/clientConfig/caBundle", "value": b64("PEM")}),
            ]
        );
        // Applied, it changes the caBundles and nothing else.
        let mut patched = config.clone();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        json_patch::patch(&mut patched, &patch).unwrap();
        assert!(patch_ops(&patched, "PEM").is_empty());
        assert_eq!(
            patched["webhooks"][2]["clientConfig"]["service"]["name"],
            "s"
        );
        assert_eq!(patched["webhooks"][1]["clientConfig"]["url"], "https://h/b");
        // A list that changed under the patch makes it fail.
        let mut reordered = config.clone();
        reordered["webhooks"].as_array_mut().unwrap().swap(1, 0);
        assert!(json_patch::patch(&mut reordered, &patch).is_err());
    }

    #[test]
    fn no_webhooks_no_patch() {
        assert!(patch_ops(&json!({"metadata": {}}), "PEM").is_empty());
        assert!(patch_ops(&json!({"webhooks": []}), "PEM").is_empty());
    }
}
