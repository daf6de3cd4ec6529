//! The Dapr-compatible HTTP API: routes, state handlers, errors, token auth, health, metadata.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::Uri;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};

use crate::components::Registry;

pub mod auth;
pub mod body;
pub mod errors;
pub mod health;
pub mod state;

pub use errors::ApiError;

/// Everything the handlers share.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub app_id: String,
    /// `PUT /v1.0/metadata/{attr}` values, shown under `extended`.
    pub extended: RwLock<BTreeMap<String, String>>,
    pub app_port: Option<u16>,
    /// False until the first configuration is in effect (Kubernetes mode, before the operator's
    /// first snapshot or the config cache); `/v1.0/healthz` answers 500 meanwhile.
    ready: AtomicBool,
}

impl AppState {
    pub fn new(registry: Arc<Registry>, app_id: String, app_port: Option<u16>) -> Self {
        Self {
            registry,
            app_id,
            extended: RwLock::new(BTreeMap::new()),
            app_port,
            ready: AtomicBool::new(true),
        }
    }

    /// Marks the sidecar ready or not ready (see [`AppState::is_ready`]).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the components are configured. Always true in standalone mode, where the
    /// API is only served once they are.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

pub struct ApiConfig {
    pub max_body_size: usize,
    /// `DAPR_API_TOKEN`: when set, every request but the health checks must carry it.
    pub api_token: Option<String>,
}

/// The API port's routes.
pub fn router(state: Arc<AppState>, config: &ApiConfig) -> Router {
    let routes = Router::new()
        .route("/v1.0/state/{store}", post(state::save).put(state::save))
        .route("/v1.0/state/{store}/{key}", any(state::by_key))
        .route(
            "/v1.0-alpha1/state/{store}/query",
            post(state::query).put(state::query),
        )
        .merge(health::routes());
    // The fallbacks come before the token layer so that unknown routes need the token too.
    let routes = routes
        .fallback(not_found)
        .method_not_allowed_fallback(not_found);
    let routes = match &config.api_token {
        Some(token) => routes.layer(middleware::from_fn_with_state(
            Arc::new(auth::Token::new(token)),
            auth::check,
        )),
        None => routes,
    };
    routes
        .layer(DefaultBodyLimit::max(config.max_body_size))
        .with_state(state)
}

/// The public port: health and metadata only, no token.
pub fn public_router(state: Arc<AppState>) -> Router {
    health::routes()
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(state)
}

/// Unknown routes: Dapr hands them to service invocation, which answers 404.
async fn not_found() -> Response {
    ApiError::direct_invoke().into_response()
}

/// Collapses duplicate slashes and drops one trailing slash, as Dapr does before routing.
pub async fn normalize_path(mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let needs = path.contains("//") || (path.len() > 1 && path.ends_with('/'));
    if needs {
        let mut clean = String::with_capacity(path.len());
        for c in path.chars() {
            if !(c == '/' && clean.ends_with('/')) {
                clean.push(c);
            }
        }
        if clean.len() > 1 && clean.ends_with('/') {
            clean.pop();
        }
        if let Some(q) = req.uri().query() {
            clean.push('?');
            clean.push_str(q);
        }
        let mut parts = req.uri().clone().into_parts();
        if let Ok(pq) = clean.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    next.run(req).await
}
