//! The Component controller: validates each component (with its secrets) and records the verdict
//! as a `Ready` condition, written with server-side apply, and as an Event when it changes.
//! Only the leader runs it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use statecar_crds::component::Condition;
use statecar_crds::kube::ComponentResource;

use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::resolve::{SecretSource, resolve};

pub const MANAGER: &str = "statecar-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
    #[error("reading secret {0}: {1}")]
    Secret(String, #[source] kube::Error),
    #[error("component has no namespace")]
    NoNamespace,
}

/// What every reconciliation needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub cache: Cache,
    pub metrics: Arc<Metrics>,
}

impl Context {
    pub fn new(client: Client, cache: Cache, metrics: Arc<Metrics>, identity: &str) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(identity.into()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            cache,
            metrics,
        }
    }
}

/// The Ready condition for a verdict, keeping the transition time when the status is unchanged.
fn ready_condition(
    verdict: &Result<(), (&'static str, String)>,
    previous: Option<&Condition>,
    generation: Option<i64>,
    component_type: &str,
) -> Condition {
    let (status, reason, message) = match verdict {
        Ok(()) => (
            "True",
            "Valid",
            format!("{component_type} component is valid and served to sidecars"),
        ),
        Err((reason, message)) => ("False", *reason, message.clone()),
    };
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => now(),
    };
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

fn now() -> String {
    serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The Secrets one component reads, as the API server has them now.
struct FetchedSecrets(BTreeMap<String, Arc<Secret>>);

impl SecretSource for FetchedSecrets {
    fn secret(&self, _namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.0.get(name).cloned()
    }
}

/// Reads the Secrets a component refers to from the API server, not from the shared cache:
/// the Secret watch that triggers a reconcile is not the one that fills the cache, so the cache
/// may not have seen the change that triggered it yet (and nothing would retrigger it).
async fn fetch_secrets(
    client: &Client,
    namespace: &str,
    c: &ComponentResource,
) -> Result<FetchedSecrets, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut found = BTreeMap::new();
    for r in c
        .spec
        .metadata
        .iter()
        .filter_map(|m| m.secret_key_ref.as_ref())
    {
        if found.contains_key(&r.name) {
            continue;
        }
        if let Some(s) = api
            .get_opt(&r.name)
            .await
            .map_err(|e| Error::Secret(r.name.clone(), e))?
        {
            found.insert(r.name.clone(), Arc::new(s));
        }
    }
    Ok(FetchedSecrets(found))
}

pub async fn reconcile(c: Arc<ComponentResource>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.fetch_add(1, Relaxed);
    let namespace = c.namespace().ok_or(Error::NoNamespace)?;
    let name = c.name_any();
    let secrets = fetch_secrets(&ctx.client, &namespace, &c).await?;
    let verdict = resolve(&c, &secrets)
        .map(|_| ())
        .map_err(|p| (p.reason, p.message));
    let previous = c
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let generation = c.metadata.generation;
    let condition = ready_condition(&verdict, previous, generation, &c.spec.type_);

    let unchanged = previous.is_some_and(|p| {
        p.status == condition.status
            && p.reason == condition.reason
            && p.message == condition.message
            && p.observed_generation == condition.observed_generation
    });
    if !unchanged {
        let api: Api<ComponentResource> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": statecar_crds::component::API_VERSION,
            "kind": statecar_crds::component::KIND,
            "status": {"observedGeneration": generation, "conditions": [condition]},
        });
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::Status)?;
        let transition =
            previous.is_none_or(|p| p.status != condition.status || p.reason != condition.reason);
        if transition {
            tracing::info!(%namespace, %name, ready = %condition.status, reason = %condition.reason, "component verdict changed");
            let event = Event {
                type_: if verdict.is_ok() {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: condition.reason.clone(),
                note: Some(condition.message.clone()),
                action: "Validate".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder.publish(&event, &c.object_ref(&())).await {
                tracing::warn!(%namespace, %name, error = %e, "could not publish event");
            }
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

pub fn error_policy(c: Arc<ComponentResource>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.fetch_add(1, Relaxed);
    tracing::warn!(name = %c.name_any(), namespace = ?c.namespace(), %error, "reconcile failed; retrying in 5 s");
    Action::requeue(Duration::from_secs(5))
}

/// The components in `namespace` that read secret `name`.
fn users_of_secret(
    cache: &Cache,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<ComponentResource>> {
    cache
        .components
        .state()
        .iter()
        .filter(|c| c.metadata.namespace.as_deref() == Some(namespace))
        .filter(|c| {
            c.spec
                .metadata
                .iter()
                .any(|m| m.secret_key_ref.as_ref().is_some_and(|r| r.name == name))
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// Runs the controller until the future is dropped.
pub async fn run(ctx: Arc<Context>) {
    let components = Api::<ComponentResource>::all(ctx.client.clone());
    let secrets = Api::<Secret>::all(ctx.client.clone());
    let cache = ctx.cache.clone();
    Controller::new(components, watcher::Config::default())
        .watches(secrets, watcher::Config::default(), move |s: Secret| {
            let ns = s.namespace().unwrap_or_default();
            users_of_secret(&cache, &ns, &s.name_any())
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let first = ready_condition(&Ok(()), None, Some(1), "state.redis");
        assert_eq!(
            (first.status.as_str(), first.reason.as_str()),
            ("True", "Valid")
        );
        let mut old = first.clone();
        old.last_transition_time = "2020-01-01T00:00:00Z".into();
        let again = ready_condition(&Ok(()), Some(&old), Some(2), "state.redis");
        assert_eq!(again.last_transition_time, "2020-01-01T00:00:00Z");
        assert_eq!(again.observed_generation, Some(2));
        let failed = ready_condition(
            &Err(("InvalidMetadata", "spec.metadata.redisDB: bad".into())),
            Some(&old),
            Some(3),
            "state.redis",
        );
        assert_eq!(failed.status, "False");
        assert_ne!(failed.last_transition_time, "2020-01-01T00:00:00Z");
    }
}
