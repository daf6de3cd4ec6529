//! `/v1.0/healthz`, `/v1.0/healthz/outbound` and `/v1.0/metadata`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState};

pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long `/healthz/outbound` waits for a store to answer.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1.0/healthz", get(healthz))
        .route("/v1.0/healthz/outbound", get(outbound))
        .route("/v1.0/metadata", get(metadata))
        .route("/v1.0/metadata/{attribute}", put(set_attribute))
}

#[derive(Deserialize)]
struct HealthQuery {
    appid: Option<String>,
}

/// Ready: in standalone mode the API is only served once every component has started; in
/// Kubernetes mode, once the first configuration has been applied.
async fn healthz(State(state): State<Arc<AppState>>, Query(q): Query<HealthQuery>) -> Response {
    if !state.is_ready() {
        return ApiError::health_not_ready("components").into_response();
    }
    match q.appid {
        Some(id) if id != state.app_id => ApiError::health_app_id_mismatch().into_response(),
        _ => StatusCode::NO_CONTENT.into_response(),
    }
}

/// Healthy when every store answers.
async fn outbound(State(state): State<Arc<AppState>>) -> Response {
    let stores = state.registry.load();
    let pings = stores.by_name.values().map(|e| async move {
        match tokio::time::timeout(PING_TIMEOUT, e.store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                tracing::warn!(component = %e.name, error = %err, "outbound health check failed");
                false
            }
            Err(_) => {
                tracing::warn!(component = %e.name, "outbound health check timed out");
                false
            }
        }
    });
    if futures_util::future::join_all(pings)
        .await
        .into_iter()
        .all(|ok| ok)
    {
        StatusCode::NO_CONTENT.into_response()
    } else {
        ApiError::outbound_not_ready().into_response()
    }
}

async fn metadata(State(state): State<Arc<AppState>>) -> Json<Value> {
    let stores = state.registry.load();
    let mut entries: Vec<_> = stores.by_name.values().collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let components: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "name": e.name,
                "type": e.component_type,
                "version": e.version,
                "capabilities": e.store.features(),
            })
        })
        .collect();
    let mut extended = serde_json::Map::new();
    if let Ok(attrs) = state.extended.read() {
        for (k, v) in attrs.iter() {
            extended.insert(k.clone(), Value::String(v.clone()));
        }
    }
    extended.insert("daprRuntimeVersion".into(), json!(RUNTIME_VERSION));
    let mut connection = json!({
        "protocol": "http",
        "channelAddress": "127.0.0.1",
        "maxConcurrency": -1,
    });
    if let Some(port) = state.app_port {
        connection["port"] = json!(port);
    }
    let mut body = json!({
        "runtimeVersion": RUNTIME_VERSION,
        "enabledFeatures": [],
        "components": components,
        "extended": extended,
        "appConnectionProperties": connection,
        "actorRuntime": {"runtimeStatus": "DISABLED", "hostReady": false},
    });
    if !state.app_id.is_empty() {
        body["id"] = json!(state.app_id);
    }
    Json(body)
}

async fn set_attribute(
    State(state): State<Arc<AppState>>,
    Path(attribute): Path<String>,
    body: Bytes,
) -> StatusCode {
    if !attribute.is_empty()
        && let Ok(mut attrs) = state.extended.write()
    {
        attrs.insert(attribute, String::from_utf8_lossy(&body).into_owned());
    }
    StatusCode::NO_CONTENT
}
