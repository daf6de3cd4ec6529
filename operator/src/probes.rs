//! `/healthz`, `/readyz` and `/metrics` on the probe port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

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
    /// True once the admission webhooks serve (or when they are disabled).
    pub webhooks_ready: Arc<AtomicBool>,
}

pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probes)
}

/// Ready once the watched caches are complete, so sidecars never get a partial config, and the
/// webhooks serve with a certificate.
async fn readyz(State(p): State<Probes>) -> (StatusCode, &'static str) {
    if !p.cache.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "caches are syncing")
    } else if !p.webhooks_ready.load(Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "webhooks are starting")
    } else {
        (StatusCode::OK, "ok")
    }
}

async fn metrics(State(p): State<Probes>) -> String {
    p.metrics.render()
}
