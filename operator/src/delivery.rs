//! The config endpoint sidecars stream their components from.
//!
//! `GET /v1/components?namespace=..&appId=..&podName=..` with the pod's service-account token.
//! The token is checked with a TokenReview; the pod must exist in that namespace, run under
//! that service account and carry that app id. The response is newline-delimited JSON: a full
//! snapshot first, another whenever the sidecar's set changes, and a heartbeat every 10 s.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::json;
use statecar_crds::Component;

use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::resolve::resolve;

pub const HEARTBEAT: Duration = Duration::from_secs(10);
pub const APP_ID_ANNOTATION: &str = "dapr.io/app-id";

pub struct Delivery {
    pub client: Client,
    pub cache: Cache,
    pub metrics: Arc<Metrics>,
}

pub fn router(delivery: Arc<Delivery>) -> Router {
    Router::new()
        .route("/v1/components", get(stream))
        .with_state(delivery)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamQuery {
    namespace: String,
    app_id: String,
    pod_name: String,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    tracing::info!(status = status.as_u16(), %message, "config stream refused");
    (status, Json(json!({"error": message}))).into_response()
}

/// The components one sidecar should run, sorted by name. Invalid ones are left out (their
/// status says why), so a broken component never takes the others down.
pub fn snapshot(cache: &Cache, namespace: &str, app_id: &str) -> Vec<Component> {
    let mut out: Vec<Component> = cache
        .components
        .state()
        .iter()
        .filter(|c| c.metadata.namespace.as_deref() == Some(namespace) && c.in_scope(app_id))
        .filter_map(|c| resolve(c, cache).ok())
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

/// Checks who is asking. Returns the refusal to send, if any.
async fn authorize(d: &Delivery, headers: &HeaderMap, q: &StreamQuery) -> Result<(), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
        .ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "missing bearer token"))?;
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: None,
        },
        ..Default::default()
    };
    let reviewed = Api::<TokenReview>::all(d.client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "TokenReview failed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot review the token right now",
            )
        })?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(refuse(StatusCode::UNAUTHORIZED, "token not authenticated"));
    }
    let user = status.user.unwrap_or_default();
    // A token from the TokenRequest API (the projected volume) names the pod it is bound to; a
    // pod may only ask for its own config. Legacy Secret tokens carry no binding.
    let bound = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(|v| v.first().cloned())
    };
    let (bound_pod, bound_uid) = (
        bound("authentication.kubernetes.io/pod-name"),
        bound("authentication.kubernetes.io/pod-uid"),
    );
    if let Some(bound_pod) = &bound_pod
        && *bound_pod != q.pod_name
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("token is bound to pod {bound_pod}, not {}", q.pod_name),
        ));
    }
    let username = user.username.unwrap_or_default();
    let Some((ns, sa)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(refuse(StatusCode::FORBIDDEN, "not a service-account token"));
    };
    if ns != q.namespace {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("token is for namespace {ns}, not {}", q.namespace),
        ));
    }
    let pod = Api::<Pod>::namespaced(d.client.clone(), ns)
        .get_opt(&q.pod_name)
        .await
        .map_err(|_| {
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot read the pod right now",
            )
        })?
        .ok_or_else(|| refuse(StatusCode::FORBIDDEN, format!("no pod {ns}/{}", q.pod_name)))?;
    if let Some(uid) = &bound_uid
        && pod.metadata.uid.as_ref() != Some(uid)
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("token is bound to an earlier pod named {}", q.pod_name),
        ));
    }
    let pod_sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    if pod_sa != sa {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "pod {ns}/{} runs as {pod_sa}, the token is for {sa}",
                q.pod_name
            ),
        ));
    }
    let pod_app_id = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(APP_ID_ANNOTATION).cloned())
        .unwrap_or_else(|| q.pod_name.clone());
    if pod_app_id != q.app_id {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "pod {ns}/{} has app id {pod_app_id}, not {}",
                q.pod_name, q.app_id
            ),
        ));
    }
    Ok(())
}

/// Decrements the connected-sidecars gauge when a stream ends.
struct Connected(Arc<Metrics>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connected_sidecars.fetch_sub(1, Relaxed);
    }
}

async fn stream(
    State(d): State<Arc<Delivery>>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = authorize(&d, &headers, &q).await {
        return refusal;
    }
    tracing::info!(namespace = %q.namespace, app_id = %q.app_id, pod = %q.pod_name, "sidecar connected");
    d.metrics.connected_sidecars.fetch_add(1, Relaxed);
    let state = (
        d.cache.changes.clone(),
        None::<String>,
        0u64,
        Connected(d.metrics.clone()),
        tokio::time::interval(HEARTBEAT),
    );
    let d2 = d.clone();
    let body = futures::stream::unfold(
        state,
        move |(mut changes, mut last, mut revision, guard, mut beat)| {
            let d = d2.clone();
            let (namespace, app_id) = (q.namespace.clone(), q.app_id.clone());
            async move {
                loop {
                    // First round sends at once; later rounds wait for a change or a heartbeat.
                    if last.is_some() {
                        tokio::select! {
                            changed = changes.changed() => {
                                if changed.is_err() {
                                    return None;
                                }
                            }
                            _ = beat.tick() => {
                                let line = Bytes::from_static(b"{\"type\":\"heartbeat\"}\n");
                                return Some((Ok::<_, std::io::Error>(line), (changes, last, revision, guard, beat)));
                            }
                        }
                    }
                    let seen_at = changes.borrow_and_update().1;
                    let components = snapshot(&d.cache, &namespace, &app_id);
                    let text = serde_json::to_string(&components).unwrap_or_default();
                    if last.as_deref() == Some(text.as_str()) {
                        continue;
                    }
                    revision += 1;
                    let line = format!(
                        "{{\"type\":\"snapshot\",\"revision\":{revision},\"components\":{text}}}\n"
                    );
                    d.metrics.config_pushes.fetch_add(1, Relaxed);
                    if last.is_some() {
                        d.metrics
                            .push_latency_us
                            .fetch_add(seen_at.elapsed().as_micros() as u64, Relaxed);
                    }
                    tracing::debug!(%namespace, %app_id, revision, stores = components.len(), "config pushed");
                    last = Some(text);
                    beat.reset();
                    return Some((
                        Ok(Bytes::from(line)),
                        (changes, last, revision, guard, beat),
                    ));
                }
            }
        },
    );
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}
