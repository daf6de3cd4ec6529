//! `/healthz`, `/readyz` and `/metrics` on the probe port.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::cache::Cache;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Probes {
    pub cache: Cache,
    pub metrics: Arc<Metrics>,
}

pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probes)
}

/// Ready once the watched caches are complete, so sidecars never get a partial config.
async fn readyz(State(p): State<Probes>) -> (StatusCode, &'static str) {
    if p.cache.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches are syncing")
    }
}

async fn metrics(State(p): State<Probes>) -> String {
    p.metrics.render()
}
