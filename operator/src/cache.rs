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
        Self {
            components,
            secrets,
            changes: rx,
        }
    }

    /// Waits until both stores hold a complete first listing.
    pub async fn ready(&self) {
        let _ = self.components.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
    }

    pub fn is_ready(&self) -> bool {
        // A store is ready once its first listing is in; an empty cluster still counts.
        futures::FutureExt::now_or_never(self.ready()).is_some()
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
