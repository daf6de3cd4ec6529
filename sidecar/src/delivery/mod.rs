//! Kubernetes mode: components come from the statecar operator over a long-lived HTTP stream
//! (`GET /v1/components`, newline-delimited JSON snapshots and heartbeats) instead of files.
//!
//! The sidecar serves its API from the start; `/v1.0/healthz` reports not ready until the
//! first snapshot (or, when the operator cannot be reached in time, the cached one) is in
//! effect. Every later snapshot replaces the set of stores atomically. The connection is
//! re-established with exponential backoff whenever it breaks or goes quiet.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::api::AppState;

pub mod apply;
pub mod stream;

pub use apply::{Applied, Applier, Origin};
pub use stream::{Endpoint, Message, Snapshot, StreamConfig};

/// If no line arrives for this long the connection is considered dead.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// First reconnect delay; doubles on every failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The longest wait between retries of components that failed to start (the first comes after
/// [`apply::RETRY_FIRST`], then twice as long each time).
pub const RETRY_FAILED_EVERY: Duration = Duration::from_secs(30);

/// Everything Kubernetes mode needs, from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub stream: StreamConfig,
    /// `--config-cache`: where the last snapshot is kept for starts without the operator.
    pub cache_file: Option<PathBuf>,
    /// `--control-plane-timeout`: how long to wait for the operator before using the cache.
    pub startup_timeout: Duration,
}

/// Keeps the sidecar's components in line with the operator. Runs until aborted.
pub async fn run(settings: Settings, state: Arc<AppState>) {
    let cfg = &settings.stream;
    let applier = Arc::new(Mutex::new(Applier::new(
        state,
        &cfg.app_id,
        &cfg.namespace,
        &cfg.pod_name,
        settings.cache_file.clone(),
    )));
    // Dropped (and so stopped) with this future when the sidecar shuts down.
    let _upkeep = AbortOnDrop(tokio::spawn(upkeep(
        applier.clone(),
        settings.startup_timeout,
        settings.cache_file.is_some(),
        cfg.endpoint.to_string(),
    )));
    tracing::info!(
        operator = %cfg.endpoint,
        namespace = %cfg.namespace,
        pod = %cfg.pod_name,
        "Kubernetes mode: waiting for components from the operator"
    );
    let mut backoff = Backoff::new();
    loop {
        let error = follow(cfg, &applier, &mut backoff).await;
        let delay = backoff.next_delay();
        let ready = applier.lock().await.has_config();
        let state = if ready {
            "still serving the last configuration"
        } else {
            "not ready until the first configuration arrives"
        };
        tracing::warn!("component stream: {error:#}; reconnecting in {delay:.1?} ({state})");
        tokio::time::sleep(delay).await;
    }
}

/// One connection: applies what it delivers until it breaks.
async fn follow(
    cfg: &StreamConfig,
    applier: &Mutex<Applier>,
    backoff: &mut Backoff,
) -> anyhow::Error {
    let mut stream = match stream::open(cfg).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    tracing::info!(operator = %cfg.endpoint, "connected to the operator");
    loop {
        match stream.next(HEARTBEAT_TIMEOUT).await {
            Ok(Message::Snapshot(snapshot)) => {
                applier
                    .lock()
                    .await
                    .apply(&snapshot, Origin::Operator)
                    .await;
                backoff.reset();
            }
            Ok(Message::Heartbeat) => tracing::trace!("heartbeat"),
            Ok(Message::Other(t)) => tracing::debug!("ignoring a message of type {t:?}"),
            Err(e) => return e,
        }
    }
}

/// Retries components that failed to start, when due, and falls back to the config cache
/// when the operator has not delivered within `startup_timeout`.
async fn upkeep(
    applier: Arc<Mutex<Applier>>,
    startup_timeout: Duration,
    has_cache: bool,
    operator: String,
) {
    let mut fallback_at = Some(Instant::now() + startup_timeout);
    let failures = applier.lock().await.failures();
    loop {
        // With nothing failed, sleep until something does (or the fallback is due).
        let mut wait = applier.lock().await.until_retry();
        if let Some(at) = fallback_at {
            let left = at.saturating_duration_since(Instant::now());
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        match wait {
            Some(wait) => {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = failures.notified() => {}
                }
            }
            None => failures.notified().await,
        }
        if fallback_at.is_some_and(|at| Instant::now() >= at) {
            fallback_at = None;
            fall_back(&applier, startup_timeout, has_cache, &operator).await;
        }
        applier.lock().await.retry_if_due().await;
    }
}

/// The operator has not delivered in time: the cached configuration, if there is one.
async fn fall_back(
    applier: &Mutex<Applier>,
    startup_timeout: Duration,
    has_cache: bool,
    operator: &str,
) {
    let mut a = applier.lock().await;
    if a.has_config() {
        return;
    }
    if a.apply_cache().await {
        tracing::warn!(
            "no configuration from the operator at {operator} within {startup_timeout:?}: \
             serving the cached configuration until it can be reached"
        );
    } else {
        let why = if has_cache {
            "and the config cache is empty"
        } else {
            "and no --config-cache is set"
        };
        tracing::warn!(
            "no configuration from the operator at {operator} within {startup_timeout:?} \
             {why}: not ready (healthz answers 500) until the operator delivers"
        );
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reconnect delays: 0.5 s doubling to 30 s, plus up to 10 % jitter so that the sidecars of a
/// cluster do not all reconnect at the same instant after an operator restart.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    /// The delay before the next attempt (without jitter).
    pub fn peek(&self) -> Duration {
        self.next
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(BACKOFF_MAX);
        base + base.mul_f64(jitter() * 0.1)
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// A number in [0, 1), random enough for jitter.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let mut bases = Vec::new();
        for _ in 0..10 {
            bases.push(b.peek());
            let d = b.next_delay();
            assert!(d >= bases[bases.len() - 1] && d <= bases[bases.len() - 1].mul_f64(1.1));
        }
        let secs: Vec<f64> = bases.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(
            secs,
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
        );
        b.reset();
        assert_eq!(b.peek(), BACKOFF_MIN);
    }
}
