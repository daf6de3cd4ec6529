//! `/v1.0/healthz`, `/v1.0/healthz/outbound` and `/v1.0/metadata`.

use std::collections::BTreeMap;
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

/// What `/v1.0/metadata` and gRPC's `GetMetadata` report, whatever the wire.
pub struct Metadata {
    pub app_id: String,
    pub components: Vec<ComponentInfo>,
    /// The attributes set with `PUT /v1.0/metadata/{attr}` (or gRPC `SetMetadata`), plus
    /// `daprRuntimeVersion`.
    pub extended: BTreeMap<String, String>,
    pub app_port: Option<u16>,
}

pub struct ComponentInfo {
    pub name: String,
    pub component_type: String,
    pub version: String,
    pub capabilities: &'static [&'static str],
}

impl Metadata {
    pub fn of(state: &AppState) -> Self {
        let components = crate::state::entries(&state.registry)
            .iter()
            .map(|e| ComponentInfo {
                name: e.name.clone(),
                component_type: e.component_type.clone(),
                version: e.version.clone(),
                capabilities: e.store.features(),
            })
            .collect();
        let mut extended = state
            .extended
            .read()
            .map(|attrs| attrs.clone())
            .unwrap_or_default();
        extended.insert("daprRuntimeVersion".into(), RUNTIME_VERSION.into());
        Self {
            app_id: state.app_id.clone(),
            components,
            extended,
            app_port: state.app_port,
        }
    }
}

/// Sets one attribute shown under `extended`; an empty name is ignored.
pub fn set_extended(state: &AppState, name: String, value: String) {
    if !name.is_empty()
        && let Ok(mut attrs) = state.extended.write()
    {
        attrs.insert(name, value);
    }
}

async fn metadata(State(state): State<Arc<AppState>>) -> Json<Value> {
    let md = Metadata::of(&state);
    let components: Vec<Value> = md
        .components
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.component_type,
                "version": c.version,
                "capabilities": c.capabilities,
            })
        })
        .collect();
    let mut connection = json!({
        "protocol": "http",
        "channelAddress": "127.0.0.1",
        "maxConcurrency": -1,
    });
    if let Some(port) = md.app_port {
        connection["port"] = json!(port);
    }
    let mut body = json!({
        "runtimeVersion": RUNTIME_VERSION,
        "enabledFeatures": [],
        "components": components,
        "extended": md.extended,
        "appConnectionProperties": connection,
        "actorRuntime": {"runtimeStatus": "DISABLED", "hostReady": false},
    });
    if !md.app_id.is_empty() {
        body["id"] = json!(md.app_id);
    }
    Json(body)
}

async fn set_attribute(
    State(state): State<Arc<AppState>>,
    Path(attribute): Path<String>,
    body: Bytes,
) -> StatusCode {
    set_extended(
        &state,
        attribute,
        String::from_utf8_lossy(&body).into_owned(),
    );
    StatusCode::NO_CONTENT
}
