//! Putting a snapshot into effect: validate, start the new stores, swap the registry, and keep
//! the config cache.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use statecar_crds::Component;
use tokio::sync::Notify;

use super::stream::{Message, Snapshot, parse_message};
use crate::api::AppState;
use crate::components::loader::{ComponentConfig, LoadContext, load_list};
use crate::components::{StoreEntry, Stores, init_each};

/// Where a snapshot came from, for messages and for whether to cache it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Operator,
    Cache,
}

impl Origin {
    fn label(self) -> &'static str {
        match self {
            Origin::Operator => "operator",
            Origin::Cache => "config cache",
        }
    }
}

/// The first retry of a component that failed to start comes this soon: a start that failed
/// on something passing (a DNS answer lost and waited out, Redis still starting) is retried
/// before the pod's readiness is checked again.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between retries while the sidecar has not yet been ready.
pub const RETRY_UNREADY_MAX: Duration = Duration::from_secs(4);

/// What [`Applier::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Same components as in effect, all running: nothing to do.
    Unchanged,
    /// The registry was replaced; the names of the stores now served.
    Changed { stores: Vec<String> },
}

/// The components in effect and everything needed to change them. One per sidecar, behind a
/// mutex: snapshots are applied one at a time.
pub struct Applier {
    state: Arc<AppState>,
    app_id: String,
    namespace: String,
    pod_name: String,
    cache_file: Option<PathBuf>,
    /// The list last applied, as received; `None` before the first.
    applied: Option<Vec<Component>>,
    revision: u64,
    /// For each store in the registry, the manifest it was started from.
    live: HashMap<String, Component>,
    /// Components that validated but could not be started; retried by [`Applier::retry`].
    failed: Vec<String>,
    /// Whether one of `failed` lacks `ignoreErrors: true`.
    failed_required: bool,
    /// True once a configuration was in effect with every required component started. Until
    /// then the sidecar reports not ready, as daprd does (it exits when a component cannot be
    /// started); afterwards a component that fails to start on a change is only retried.
    complete: bool,
    last_attempt: Instant,
    /// How long after `last_attempt` the failed components are retried: doubles from
    /// [`RETRY_FIRST`] after every failed attempt, up to [`RETRY_UNREADY_MAX`] before the
    /// sidecar was first ready and [`super::RETRY_FAILED_EVERY`] after.
    retry_delay: Duration,
    /// Wakes the retry loop when components fail, so that it need not poll while none has.
    failures: Arc<Notify>,
    /// What the cache file holds (as far as this process knows).
    cached: Option<Vec<Component>>,
}

impl Applier {
    pub fn new(
        state: Arc<AppState>,
        app_id: &str,
        namespace: &str,
        pod_name: &str,
        cache_file: Option<PathBuf>,
    ) -> Self {
        Self {
            state,
            app_id: app_id.to_string(),
            namespace: namespace.to_string(),
            pod_name: pod_name.to_string(),
            cache_file,
            applied: None,
            revision: 0,
            live: HashMap::new(),
            failed: Vec::new(),
            failed_required: false,
            complete: false,
            last_attempt: Instant::now(),
            retry_delay: RETRY_FIRST,
            failures: Arc::new(Notify::new()),
            cached: None,
        }
    }

    /// True once a configuration is in effect.
    pub fn has_config(&self) -> bool {
        self.applied.is_some()
    }

    /// Components that failed to start last time.
    pub fn failed(&self) -> &[String] {
        &self.failed
    }

    /// Puts `snapshot` into effect: a component that is unchanged and running keeps its store;
    /// new or changed ones are started; an invalid one, or one that fails to start, is left out
    /// (logged) without affecting the others. Marks the sidecar ready once every component
    /// that may not be skipped (no `ignoreErrors: true`) has started.
    pub async fn apply(&mut self, snapshot: &Snapshot, origin: Origin) -> Applied {
        for m in &snapshot.malformed {
            tracing::error!(source = origin.label(), "component rejected: {m}");
        }
        let unchanged = self.applied.as_ref() == Some(&snapshot.components);
        let outcome = if unchanged && self.failed.is_empty() {
            tracing::debug!(revision = snapshot.revision, "configuration unchanged");
            self.revision = snapshot.revision;
            Applied::Unchanged
        } else {
            self.retry_delay = RETRY_FIRST;
            self.put_in_effect(snapshot, origin).await
        };
        self.update_readiness();
        if origin == Origin::Operator {
            self.write_cache(snapshot);
        }
        outcome
    }

    /// Starts the components that failed to start, if `every` has passed since the last try.
    pub async fn retry(&mut self, every: Duration) {
        if self.failed.is_empty() || self.last_attempt.elapsed() < every {
            return;
        }
        let Some(components) = self.applied.clone() else {
            return;
        };
        tracing::info!(components = ?self.failed, "retrying components that failed to start");
        let snapshot = Snapshot {
            revision: self.revision,
            components,
            malformed: Vec::new(),
        };
        self.put_in_effect(&snapshot, Origin::Operator).await;
        if !self.failed.is_empty() {
            // Before the sidecar is first ready, the pod waits on this: retry more often.
            let cap = if self.complete {
                super::RETRY_FAILED_EVERY
            } else {
                RETRY_UNREADY_MAX
            };
            self.retry_delay = (self.retry_delay * 2).min(cap);
        }
        self.update_readiness();
    }

    /// Retries the failed components if their retry is due (see [`Applier::until_retry`]).
    pub async fn retry_if_due(&mut self) {
        self.retry(self.retry_delay).await;
    }

    /// How long until the failed components are due for a retry; `None` if none failed.
    pub fn until_retry(&self) -> Option<Duration> {
        (!self.failed.is_empty())
            .then(|| self.retry_delay.saturating_sub(self.last_attempt.elapsed()))
    }

    /// Notified whenever a put into effect leaves components that failed to start.
    pub fn failures(&self) -> Arc<Notify> {
        self.failures.clone()
    }

    fn update_readiness(&mut self) {
        if !self.failed.is_empty() {
            self.failures.notify_one();
        }
        if !self.complete && !self.failed_required {
            if self.failed.is_empty() {
                tracing::info!("every component has started: ready");
            }
            self.complete = true;
        }
        if !self.complete {
            tracing::warn!(
                components = ?self.failed,
                "not ready until these components start; retrying in {:?}",
                self.retry_delay
            );
        }
        self.state.set_ready(self.complete);
    }

    async fn put_in_effect(&mut self, snapshot: &Snapshot, origin: Origin) -> Applied {
        let started = Instant::now();
        let configs = self.validate(snapshot, origin);

        // Unchanged and running: keep the store (and its connections).
        let current = self.state.registry.load();
        let manifest = |name: &str| snapshot.components.iter().find(|c| c.metadata.name == name);
        let mut keep: Vec<Arc<StoreEntry>> = Vec::new();
        let mut start = Vec::new();
        for config in configs {
            let old = current.by_name.get(&config.name);
            match (old, manifest(&config.name)) {
                (Some(entry), Some(m)) if self.live.get(&config.name) == Some(m) => {
                    keep.push(entry.clone());
                }
                _ => start.push(config),
            }
        }
        drop(current);

        let results = init_each(&start, &self.app_id, Some(&self.namespace)).await;
        let mut stores = Stores::default();
        for entry in keep {
            stores.by_name.insert(entry.name.clone(), entry);
        }
        let mut failed = Vec::new();
        let mut failed_required = false;
        for (config, result) in start.iter().zip(results) {
            match result {
                Ok(entry) => {
                    stores.by_name.insert(entry.name.clone(), Arc::new(entry));
                }
                Err(e) => {
                    tracing::error!(
                        "{e}; the component is left out (the other stores are served) and is \
                         retried"
                    );
                    failed.push(config.name.clone());
                    failed_required |= !config.ignore_errors;
                }
            }
        }
        let live = stores
            .by_name
            .keys()
            .filter_map(|n| manifest(n).map(|m| (n.clone(), m.clone())))
            .collect();
        let mut names: Vec<String> = stores.by_name.keys().cloned().collect();
        names.sort();
        // In-flight requests keep their `Arc<StoreEntry>`; stores that are no longer used close
        // when the last of them finishes.
        drop(self.state.registry.swap(stores));
        self.live = live;
        self.failed = failed;
        self.failed_required = failed_required;
        // Retries are timed from the end of an attempt, which may itself take initTimeout.
        self.last_attempt = Instant::now();
        self.applied = Some(snapshot.components.clone());
        self.revision = snapshot.revision;
        let from = match origin {
            Origin::Operator => String::new(),
            Origin::Cache => " (from the config cache; the operator is not reachable)".into(),
        };
        tracing::info!(
            "config applied: revision {}, stores [{}], took {} ms{from}",
            snapshot.revision,
            names.join(", "),
            started.elapsed().as_millis()
        );
        Applied::Changed { stores: names }
    }

    /// The components of `snapshot` that validate, as in standalone mode (env refs resolve
    /// from the sidecar's environment); the others are logged.
    fn validate(&self, snapshot: &Snapshot, origin: Origin) -> Vec<ComponentConfig> {
        let env = |name: &str| std::env::var(name).ok();
        let ctx = LoadContext {
            app_id: &self.app_id,
            namespace: Some(&self.namespace),
            pod_name: Some(&self.pod_name),
            env: &env,
        };
        let (loaded, errors) = load_list(&snapshot.components, origin.label(), &ctx);
        for e in errors {
            tracing::error!("component rejected: {e}");
        }
        for note in loaded.notes {
            tracing::info!("{note}");
        }
        for e in loaded.skipped {
            tracing::warn!("{e}; skipped because ignoreErrors is true");
        }
        loaded.components
    }

    fn write_cache(&mut self, snapshot: &Snapshot) {
        let Some(path) = &self.cache_file else {
            return;
        };
        if self.cached.as_ref() == Some(&snapshot.components) {
            return;
        }
        match write_atomically(path, &snapshot.to_json()) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), "config cache written");
                self.cached = Some(snapshot.components.clone());
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                "cannot write the config cache (--config-cache): {e:#}"
            ),
        }
    }

    /// Applies the cached snapshot, if there is one. Returns whether it did.
    pub async fn apply_cache(&mut self) -> bool {
        let Some(path) = self.cache_file.clone() else {
            return false;
        };
        match read_cache(&path) {
            Ok(Some(snapshot)) => {
                self.cached = Some(snapshot.components.clone());
                self.apply(&snapshot, Origin::Cache).await;
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring the config cache: {e:#}");
                false
            }
        }
    }
}

/// Writes `data` to a temp file beside `path` (owner-only: it holds resolved secrets), then
/// renames it over `path`, so that readers see the old or the new file, never a part.
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(data)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("writing {}", path.display()))
    })
}

/// The cached snapshot; `None` when there is no cache file yet.
pub fn read_cache(path: &Path) -> Result<Option<Snapshot>> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match parse_message(data.trim_ascii()) {
        Ok(Some(Message::Snapshot(s))) => Ok(Some(s)),
        Ok(_) => bail!("{} does not hold a snapshot", path.display()),
        Err(e) => bail!("{}: {e}", path.display()),
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
