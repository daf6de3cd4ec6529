//! Finds pods that asked for the sidecar but were admitted without it (the webhook was down or
//! bypassed, and `failurePolicy: Ignore` let them through), and says so with a Warning Event on
//! the pod and a metric. Run by the leader only, so each pod is reported once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};

use crate::inject::{Outcome, decide};
use crate::webhook::Webhook;

pub const REASON: &str = "SidecarNotInjected";

/// Watches every pod until the stream ends (it retries on its own with backoff).
pub async fn run(client: Client, webhook: Arc<Webhook>, recorder: Recorder) {
    let mut reported: HashSet<String> = HashSet::new();
    let stream = watcher(Api::<Pod>::all(client), watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        let pod = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
            Ok(watcher::Event::Delete(p)) => {
                if let Some(uid) = p.uid() {
                    reported.remove(&uid);
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "pod watch interrupted; resuming");
                continue;
            }
        };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(uid) = pod.uid() else { continue };
        if reported.contains(&uid) {
            continue;
        }
        let namespace = pod.namespace().unwrap_or_default();
        // The injector's own decision: "would inject" on an admitted pod means it was missed.
        if !matches!(
            decide(&pod, &namespace, &webhook.injector),
            Outcome::Inject { .. }
        ) {
            continue;
        }
        reported.insert(uid);
        webhook
            .metrics
            .webhook
            .pods_without_sidecar
            .fetch_add(1, Relaxed);
        let name = pod.name_any();
        tracing::warn!(%namespace, pod = %name, "pod has dapr.io/enabled but no daprd container");
        let event = Event {
            type_: EventType::Warning,
            reason: REASON.into(),
            note: Some(
                "dapr.io/enabled is true but the pod has no daprd container: it was admitted \
                 while the statecar injector was unreachable. Recreate the pod (for example \
                 kubectl rollout restart) to get the sidecar."
                    .into(),
            ),
            action: "Inject".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &pod.object_ref(&())).await {
            tracing::warn!(%namespace, pod = %name, error = %e, "could not publish event");
        }
    }
}
