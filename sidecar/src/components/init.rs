//! Turns validated component configs into live stores.

use std::sync::Arc;

use crate::store::{MemoryStore, RedisStore, Store};

use super::loader::{ComponentConfig, StoreKind};
use super::{KeyPrefix, StoreEntry};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("component {name:?} ({source_file}): {message}")]
    Failed {
        name: String,
        source_file: String,
        message: String,
    },
    #[error("component {name:?} ({source_file}): not ready within its initTimeout of {timeout:?}")]
    Timeout {
        name: String,
        source_file: String,
        timeout: std::time::Duration,
    },
}

/// Starts one store, bounded by the component's `initTimeout`.
pub async fn init_one(
    config: &ComponentConfig,
    app_id: &str,
    namespace: Option<&str>,
) -> Result<StoreEntry, InitError> {
    let store: Arc<dyn Store> = match &config.kind {
        StoreKind::Memory => MemoryStore::new(),
        StoreKind::Redis(md) => {
            match tokio::time::timeout(config.init_timeout, RedisStore::connect(md)).await {
                Ok(Ok(s)) => Arc::new(s),
                Ok(Err(e)) => {
                    return Err(InitError::Failed {
                        name: config.name.clone(),
                        source_file: config.source.clone(),
                        message: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(InitError::Timeout {
                        name: config.name.clone(),
                        source_file: config.source.clone(),
                        timeout: config.init_timeout,
                    });
                }
            }
        }
    };
    Ok(StoreEntry {
        name: config.name.clone(),
        component_type: config.component_type.clone(),
        version: config.version.clone(),
        store,
        prefix: KeyPrefix::resolve(&config.key_prefix, &config.name, app_id, namespace),
        default_ttl: config.default_ttl,
    })
}

/// Starts every store concurrently. A failure is fatal unless the component has
/// `ignoreErrors: true`, in which case it is logged and left out.
pub async fn init_all(
    configs: &[ComponentConfig],
    app_id: &str,
    namespace: Option<&str>,
) -> Result<Vec<StoreEntry>, InitError> {
    let results = init_each(configs, app_id, namespace).await;
    let mut entries = Vec::with_capacity(results.len());
    for (config, result) in configs.iter().zip(results) {
        match result {
            Ok(entry) => entries.push(entry),
            Err(e) if config.ignore_errors => {
                tracing::warn!(error = %e, "component failed to start; skipped because ignoreErrors is true");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(entries)
}

/// Starts every store concurrently and returns each outcome, in the order of `configs`.
/// Nothing is fatal here: the caller decides what a failure means.
pub async fn init_each(
    configs: &[ComponentConfig],
    app_id: &str,
    namespace: Option<&str>,
) -> Vec<Result<StoreEntry, InitError>> {
    let results =
        futures_util::future::join_all(configs.iter().map(|c| init_one(c, app_id, namespace)))
            .await;
    for (config, result) in configs.iter().zip(&results) {
        if result.is_ok() {
            tracing::info!(
                component = %config.name,
                r#type = %config.component_type,
                source = %config.source,
                "state store ready"
            );
        }
    }
    results
}
