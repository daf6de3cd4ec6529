//! Watched copies of every Component and Secret, shared by the reconciler and config delivery,
//! plus a signal that fires on every change.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use statecar_crds::kube::ComponentResource;
use tokio::sync::watch;

use crate::resolve::SecretSource;

/// A change counter and when the change was seen (for push-latency metrics).
pub type Change = (u64, Instant);

#[derive(Clone)]
pub struct Cache {
    pub components: Store<ComponentResource>,
    pub secrets: Store<Secret>,
    pub changes: watch::Receiver<Change>,
    /// True once both stores hold a complete first listing.
    synced: watch::Receiver<bool>,
}

impl SecretSource for Cache {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&ObjectRef::new(name).within(namespace))
    }
}

impl Cache {
    /// Starts watching (the tasks live as long as the runtime).
    pub fn start(client: Client) -> Self {
        let (tx, rx) = watch::channel((0, Instant::now()));
        let tx = Arc::new(tx);
        let (components, writer) = reflector::store();
        let stream = reflector::reflector(
            writer,
            watcher(
                Api::<ComponentResource>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff();
        tokio::spawn(drain("components", stream, tx.clone()));

        let (secrets, writer) = reflector::store();
        let stream = reflector::reflector(
            writer,
            watcher(Api::<Secret>::all(client), watcher::Config::default()),
        )
        .default_backoff();
        tokio::spawn(drain("secrets", stream, tx));
        Self::from_stores(components, secrets, rx)
    }

    fn from_stores(
        components: Store<ComponentResource>,
        secrets: Store<Secret>,
        changes: watch::Receiver<Change>,
    ) -> Self {
        // A store's readiness is a oneshot that remembers a single waker: polling it from more
        // than one place (a probe's `now_or_never` included) can leave the other waiter asleep
        // for good. So one task waits for both stores and publishes the result.
        let (synced_tx, synced) = watch::channel(false);
        let (c, s) = (components.clone(), secrets.clone());
        tokio::spawn(async move {
            let _ = c.wait_until_ready().await;
            let _ = s.wait_until_ready().await;
            let _ = synced_tx.send(true);
        });
        Self {
            components,
            secrets,
            changes,
            synced,
        }
    }

    /// Waits until both stores hold a complete first listing.
    pub async fn ready(&self) {
        let _ = self.synced.clone().wait_for(|synced| *synced).await;
    }

    pub fn is_ready(&self) -> bool {
        // A store is ready once its first listing is in; an empty cluster still counts.
        *self.synced.borrow()
    }
}

async fn drain<K>(
    what: &'static str,
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    tx: Arc<watch::Sender<Change>>,
) {
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => tx.send_modify(|(n, at)| {
                *n += 1;
                *at = Instant::now();
            }),
            Err(e) => tracing::warn!(what, error = %e, "watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Readiness probes must not stall a task waiting for the caches (`run` does, before it
    /// serves sidecars and elects).
    #[tokio::test]
    async fn probing_readiness_does_not_stall_a_waiter() {
        let (components, mut cw) = reflector::store::<ComponentResource>();
        let (secrets, mut sw) = reflector::store::<Secret>();
        let (_tx, changes) = watch::channel((0, Instant::now()));
        let cache = Cache::from_stores(components, secrets, changes);
        let waiter = tokio::spawn({
            let cache = cache.clone();
            async move { cache.ready().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!cache.is_ready());
        cw.apply_watcher_event(&watcher::Event::Init);
        cw.apply_watcher_event(&watcher::Event::InitDone);
        assert!(!cache.is_ready());
        sw.apply_watcher_event(&watcher::Event::Init);
        sw.apply_watcher_event(&watcher::Event::InitDone);
        tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("ready() must complete once both stores are listed")
            .unwrap();
        assert!(cache.is_ready());
    }
}
