//! The webhook serving certificate: a CA and a leaf kept in a Secret, rotated, and the caBundle
//! of the webhook configurations kept current.
//!
//! Every replica runs [`run`]. The Secret is the single source of truth: whoever finds it missing
//! or due for renewal writes it (create, or update with the resourceVersion it read), the others
//! lose that race with AlreadyExists or Conflict and take what won. So one issues and all serve
//! the same certificate, and a watch on the Secret brings a rotation to every replica within
//! moments. Renewal is decided from the certificates themselves: a leaf or CA is replaced once
//! less than a third of its validity is left. A new CA is trusted next to the old one (both in
//! `ca.crt`, the caBundle) until the old one expires.

mod bundle;
pub(crate) mod pki;

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use futures::FutureExt as _;
use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

pub use pki::{CA_CRT, CA_KEY, TLS_CRT, TLS_KEY};
use pki::{Data, Leaf, Material, Plan};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid webhook certificate settings: {0}")]
    Settings(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("issuing a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("Secret {0} kept changing while it was being renewed")]
    Contended(String),
}

/// What to issue, where to keep it, and which webhook configurations trust it.
#[derive(Debug, Clone)]
pub struct CertSettings {
    /// The operator's namespace; the Secret lives here.
    pub namespace: String,
    /// The Secret holding `tls.crt`, `tls.key`, `ca.crt` and `ca.key`.
    pub secret_name: String,
    /// SANs of the serving certificate; IP addresses become IP SANs.
    pub dns_names: Vec<String>,
    pub leaf_validity: Duration,
    pub ca_validity: Duration,
    /// MutatingWebhookConfigurations whose every `clientConfig.caBundle` is kept current.
    pub mutating_webhooks: Vec<String>,
    /// The same for ValidatingWebhookConfigurations.
    pub validating_webhooks: Vec<String>,
    /// How often expiry and caBundles are checked even when nothing was seen to change.
    pub check_every: Duration,
}

impl CertSettings {
    fn validate(&self) -> Result<(), Error> {
        let fail = |m: &str| Err(Error::Settings(m.to_string()));
        if self.namespace.is_empty() || self.secret_name.is_empty() {
            return fail("the namespace and the Secret name must not be empty");
        }
        if self.dns_names.is_empty() || self.dns_names.iter().any(|n| n.trim().is_empty()) {
            return fail("at least one name, and no empty name, is needed for the certificate");
        }
        if self.leaf_validity < Duration::from_secs(3) || self.ca_validity < Duration::from_secs(3)
        {
            return fail("certificate validities must be at least 3 s");
        }
        if self.check_every.is_zero() {
            return fail("the check interval must not be zero");
        }
        // Names a certificate cannot carry (not IA5, say) would fail every round.
        let names = self.dns_names.iter().map(|n| n.trim().to_string());
        if let Err(e) = rcgen::CertificateParams::new(names.collect::<Vec<_>>()) {
            return Err(Error::Settings(format!("certificate names: {e}")));
        }
        Ok(())
    }
}

impl Default for CertSettings {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            secret_name: "statecar-webhook-tls".into(),
            dns_names: Vec::new(),
            leaf_validity: Duration::from_secs(90 * 24 * 3600),
            ca_validity: Duration::from_secs(10 * 365 * 24 * 3600),
            mutating_webhooks: Vec::new(),
            validating_webhooks: Vec::new(),
            check_every: Duration::from_secs(60),
        }
    }
}

/// The serving certificate this replica hands out, shared with the TLS server. Cheap to clone.
#[derive(Clone)]
pub struct CertStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    served: RwLock<Option<Served>>,
    changes: watch::Sender<u64>,
}

#[derive(Clone)]
struct Served {
    key: Arc<CertifiedKey>,
    bundle_pem: Option<String>,
    not_after: SystemTime,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("leaf_not_after", &self.not_after())
            .field("version", &*self.inner.changes.borrow())
            .finish()
    }
}

impl Default for CertStore {
    fn default() -> Self {
        Self {
            inner: Arc::new(StoreInner {
                served: RwLock::new(None),
                changes: watch::channel(0).0,
            }),
        }
    }
}

pub fn new_store() -> CertStore {
    CertStore::default()
}

impl CertStore {
    fn read(&self) -> Option<Served> {
        self.inner
            .served
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The chain and key to serve; `None` until a first certificate is loaded.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.read().map(|s| s.key)
    }

    /// The CAs (PEM) that clients must trust: the webhook configurations' caBundle.
    pub fn ca_bundle_pem(&self) -> Option<String> {
        self.read().and_then(|s| s.bundle_pem)
    }

    /// When the served leaf expires.
    pub fn not_after(&self) -> Option<SystemTime> {
        self.read().map(|s| s.not_after)
    }

    /// A counter that goes up every time a different leaf is loaded.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Serves the given chain (leaf first) and key, and publishes `ca_bundle_pem` as the
    /// caBundle. Returns whether the leaf differs from the one served before.
    pub fn set_pem(
        &self,
        chain_pem: &str,
        key_pem: &str,
        ca_bundle_pem: Option<&str>,
    ) -> Result<bool, Error> {
        let leaf = Leaf::from_pem(chain_pem, key_pem)?;
        Ok(self.put(&leaf, ca_bundle_pem.map(str::to_string)))
    }

    fn put(&self, leaf: &Leaf, bundle_pem: Option<String>) -> bool {
        let mut served = self
            .inner
            .served
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let new_leaf = served
            .as_ref()
            .is_none_or(|s| s.key.cert != leaf.certified.cert);
        if new_leaf {
            *served = Some(Served {
                key: leaf.certified.clone(),
                bundle_pem,
                not_after: leaf.cert().not_after,
            });
        } else if let Some(s) = served.as_mut() {
            s.bundle_pem = bundle_pem;
        }
        drop(served);
        if new_leaf {
            self.inner.changes.send_modify(|v| *v += 1);
        }
        new_leaf
    }
}

/// Keeps the Secret, `store` and the webhook configurations' caBundles current, until
/// cancelled. Fails only on invalid settings; API errors are logged and retried.
pub async fn run(client: Client, settings: CertSettings, store: CertStore) -> Result<(), Error> {
    settings.validate()?;
    let manager = Manager {
        secrets: Api::namespaced(client.clone(), &settings.namespace),
        bundles: bundle::Targets::new(
            client,
            &settings.mutating_webhooks,
            &settings.validating_webhooks,
        ),
        settings,
        store,
    };
    let mut wake = manager.wakeups();
    let mut failures = 0u32;
    loop {
        let round = manager.round().await;
        // Until the next check; sooner when a renewal falls due first (with a little slack: at
        // the due instant itself nothing is due yet), or after a failure, so that a first
        // certificate does not wait a whole interval for an API server that blinked.
        let mut sleep = manager.settings.check_every;
        match round {
            Ok(due) => {
                failures = 0;
                if let Some(due) = due {
                    let until = due
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        .saturating_add(Duration::from_millis(50));
                    sleep = sleep.min(until);
                }
            }
            Err(()) => {
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(500) * 2u32.saturating_pow(failures.min(6));
                sleep = sleep.min(backoff);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            Some(()) = wake.next() => {
                // A burst of events needs a single round.
                while let Some(Some(())) = wake.next().now_or_never() {}
            }
        }
    }
}

struct Manager {
    secrets: Api<Secret>,
    bundles: bundle::Targets,
    settings: CertSettings,
    store: CertStore,
}

impl Manager {
    /// One pass; returns when a renewal falls due for what is now served, or `Err` when the
    /// Secret could not be brought up to date (already logged).
    async fn round(&self) -> Result<Option<SystemTime>, ()> {
        let due = match self.sync_secret().await {
            Ok(material) => {
                self.load(&material);
                Ok(material.next_due())
            }
            Err(e) => {
                tracing::warn!(secret = %self.settings.secret_name, namespace = %self.settings.namespace, error = %e, "webhook certificate check failed; retrying");
                Err(())
            }
        };
        // Only with the Secret just read: a replica holding a stale bundle must not write it
        // back over a newer one.
        if due.is_ok()
            && let Some(bundle) = self.store.ca_bundle_pem()
        {
            self.bundles.sync(&bundle).await;
        }
        due
    }

    /// Reads the Secret, writes it if something is due, and returns what it holds afterwards.
    async fn sync_secret(&self) -> Result<Material, Error> {
        let s = &self.settings;
        let names = pki::normalize_names(&s.dns_names);
        // A lost race costs one more read; more than a few in a row means something else keeps
        // writing the Secret.
        for _ in 0..4 {
            let now = SystemTime::now();
            let Some(secret) = self.secrets.get_opt(&s.secret_name).await? else {
                let empty = Material::read(&Data::new());
                let plan = Plan::Issue("the Secret does not exist");
                let data = pki::apply(
                    plan,
                    &empty,
                    &Data::new(),
                    &s.dns_names,
                    s.leaf_validity,
                    s.ca_validity,
                    now,
                )?;
                match self
                    .secrets
                    .create(&PostParams::default(), &self.new_secret(&data))
                    .await
                {
                    Ok(_) => return Ok(self.written(plan, &data)),
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        tracing::debug!(secret = %s.secret_name, "another replica created the Secret first");
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let data: Data = secret
                .data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            let material = Material::read(&data);
            for problem in &material.problems {
                tracing::warn!(secret = %s.secret_name, namespace = %s.namespace, "{problem}");
            }
            let plan = pki::plan(&material, &names, now);
            match plan {
                Plan::Keep => return Ok(material),
                Plan::External => {
                    self.check_external(&material, now);
                    return Ok(material);
                }
                _ => {}
            }
            let data = pki::apply(
                plan,
                &material,
                &data,
                &s.dns_names,
                s.leaf_validity,
                s.ca_validity,
                now,
            )?;
            let mut updated = secret;
            updated.data = Some(to_bytes(&data));
            updated.string_data = None;
            // `replace` carries the resourceVersion we read: if another replica wrote in
            // between, this is a Conflict and we read what it wrote.
            match self
                .secrets
                .replace(&s.secret_name, &PostParams::default(), &updated)
                .await
            {
                Ok(_) => return Ok(self.written(plan, &data)),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    tracing::debug!(secret = %s.secret_name, "another replica renewed the Secret first");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contended(self.settings.secret_name.clone()))
    }

    fn new_secret(&self, data: &Data) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.settings.secret_name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "statecar-operator".to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(to_bytes(data)),
            ..Default::default()
        }
    }

    /// Logs what was written (never key material) and returns it, read back.
    fn written(&self, plan: Plan, data: &Data) -> Material {
        let m = Material::read(data);
        let secret = &self.settings.secret_name;
        let (Some(ca), Some(leaf)) = (&m.authority, &m.leaf) else {
            return m;
        };
        let leaf = leaf.cert();
        match plan {
            Plan::Issue(reason) | Plan::RotateCa(reason) => tracing::info!(
                %secret,
                %reason,
                ca = %ca.cert.serial,
                ca_not_after = %timestamp(ca.cert.not_after),
                not_after = %timestamp(leaf.not_after),
                sans = ?leaf.sans,
                trusted_cas = m.bundle.len(),
                "issued a new webhook CA and serving certificate"
            ),
            Plan::AddNames => tracing::info!(
                %secret,
                serial = %leaf.serial,
                not_after = %timestamp(leaf.not_after),
                sans = ?leaf.sans,
                "issued a new webhook serving certificate for added names"
            ),
            Plan::RenewLeaf(reason) => tracing::info!(
                %secret,
                %reason,
                serial = %leaf.serial,
                not_after = %timestamp(leaf.not_after),
                sans = ?leaf.sans,
                "issued a new webhook serving certificate"
            ),
            Plan::Rebundle => tracing::info!(
                %secret,
                trusted_cas = m.bundle.len(),
                "dropped expired CAs from the webhook CA bundle"
            ),
            Plan::Keep | Plan::External => {}
        }
        m
    }

    /// A certificate someone else manages: say so when it is getting old, as we cannot renew it.
    fn check_external(&self, m: &Material, now: SystemTime) {
        let s = &self.settings;
        match &m.leaf {
            Some(leaf) if leaf.cert().needs_renewal(now) => tracing::warn!(
                secret = %s.secret_name,
                namespace = %s.namespace,
                not_after = %timestamp(leaf.cert().not_after),
                "the webhook certificate is near or past expiry and has no {CA_KEY}, so the operator cannot renew it"
            ),
            None => tracing::warn!(
                secret = %s.secret_name,
                namespace = %s.namespace,
                "the Secret has {TLS_CRT} but no usable certificate and key, and no {CA_KEY}: nothing to serve"
            ),
            Some(_) => {}
        }
        if m.bundle_pem.is_none() {
            tracing::warn!(secret = %s.secret_name, "the Secret has no {CA_CRT}: caBundles are left as they are");
        }
    }

    fn load(&self, m: &Material) {
        let Some(leaf) = &m.leaf else {
            return;
        };
        if self.store.put(leaf, m.bundle_pem.clone()) {
            let cert = leaf.cert();
            tracing::info!(
                secret = %self.settings.secret_name,
                serial = %cert.serial,
                not_after = %timestamp(cert.not_after),
                sans = ?cert.sans,
                "serving a new webhook certificate"
            );
        }
    }

    /// Wakes the loop when the Secret or a webhook configuration changes.
    fn wakeups(&self) -> BoxStream<'static, ()> {
        let by_name =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut streams = vec![events(watcher(
            self.secrets.clone(),
            by_name(&self.settings.secret_name),
        ))];
        for name in &self.settings.mutating_webhooks {
            let api: Api<MutatingWebhookConfiguration> = self.bundles.mutating.clone();
            streams.push(events(watcher(api, by_name(name))));
        }
        for name in &self.settings.validating_webhooks {
            let api: Api<ValidatingWebhookConfiguration> = self.bundles.validating.clone();
            streams.push(events(watcher(api, by_name(name))));
        }
        futures::stream::select_all(streams).boxed()
    }
}

fn events<K: Send + 'static>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> BoxStream<'static, ()> {
    stream
        .default_backoff()
        .filter_map(|event| async move {
            match event {
                Ok(
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone,
                ) => Some(()),
                Ok(_) => None,
                Err(e) => {
                    // The periodic check still runs; the watch retries with backoff.
                    tracing::debug!(error = %e, "watch for webhook certificate changes failed");
                    None
                }
            }
        })
        .boxed()
}

fn to_bytes(data: &Data) -> BTreeMap<String, ByteString> {
    data.iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
        .collect()
}

/// RFC 3339, for logs.
fn timestamp(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair() -> (String, String, String) {
        let now = SystemTime::now();
        let ca = pki::Authority::generate(Duration::from_secs(3600), now).unwrap();
        let (leaf, key) = ca
            .issue_leaf(&["a.b.svc".into()], Duration::from_secs(600), now)
            .unwrap();
        (leaf.pem, key, ca.cert.pem)
    }

    #[test]
    fn the_store_counts_new_leaves_only() {
        let store = new_store();
        let changes = store.changes();
        assert!(store.current().is_none());
        assert!(store.ca_bundle_pem().is_none());
        let (chain, key, ca) = pem_pair();
        assert!(store.set_pem(&chain, &key, Some(&ca)).unwrap());
        assert_eq!(*changes.borrow(), 1);
        assert_eq!(store.ca_bundle_pem().as_deref(), Some(ca.as_str()));
        // The same leaf again (with another bundle) is not a change.
        assert!(!store.set_pem(&chain, &key, Some("x")).unwrap());
        assert_eq!(*changes.borrow(), 1);
        assert_eq!(store.ca_bundle_pem().as_deref(), Some("x"));
        let (chain2, key2, _) = pem_pair();
        assert!(store.set_pem(&chain2, &key2, Some(&ca)).unwrap());
        assert_eq!(*changes.borrow(), 2);
        // A key of another certificate is refused and changes nothing.
        assert!(store.set_pem(&chain, &key2, None).is_err());
        assert_eq!(*changes.borrow(), 2);
        assert!(store.not_after().unwrap() > SystemTime::now());
    }

    #[test]
    fn settings_are_checked() {
        let ok = CertSettings {
            dns_names: vec!["a.b.svc".into()],
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        for bad in [
            CertSettings {
                dns_names: vec![],
                ..ok.clone()
            },
            CertSettings {
                dns_names: vec![" ".into()],
                ..ok.clone()
            },
            CertSettings {
                secret_name: String::new(),
                ..ok.clone()
            },
            CertSettings {
                check_every: Duration::ZERO,
                ..ok.clone()
            },
            CertSettings {
                leaf_validity: Duration::from_secs(1),
                ..ok.clone()
            },
            CertSettings {
                dns_names: vec!["bad.näme.svc".into()],
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
