//! The admission webhooks: `POST /mutate` (sidecar injection) and `POST /validate` (Components).
//!
//! Both are plain handlers over the pure logic in [`crate::inject`] and
//! [`crate::resolve::check_for_admission`]; TLS, registration and the watchdog live beside them.

pub mod register;
pub mod settings;
pub mod watchdog;

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use statecar_crds::kube::ComponentResource;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::certs::{self, CertStore};
use crate::inject::{InjectorConfig, Outcome, SkipReason};
use crate::metrics::{Metrics, SKIP_REASONS};
use crate::resolve::check_for_admission;
use settings::WebhookArgs;

pub struct Webhook {
    pub injector: InjectorConfig,
    /// When sidecars reach the operator over TLS: the CA bundle they are given to verify it.
    pub trust_anchors: Option<CertStore>,
    pub metrics: Arc<Metrics>,
    /// `dapr.io/*` annotations already logged as unsupported (each is logged once).
    logged_unsupported: Mutex<HashSet<String>>,
}

impl Webhook {
    pub fn new(
        injector: InjectorConfig,
        trust_anchors: Option<CertStore>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            injector,
            trust_anchors,
            metrics,
            logged_unsupported: Mutex::default(),
        }
    }

    fn skipped(&self, reason: &str) {
        if let Some(i) = SKIP_REASONS.iter().position(|r| *r == reason) {
            self.metrics.webhook.skipped[i].fetch_add(1, Relaxed);
        }
    }

    fn log_unsupported(&self, keys: &[String]) {
        let Ok(mut seen) = self.logged_unsupported.lock() else {
            return;
        };
        for k in keys {
            if seen.insert(k.clone()) {
                tracing::debug!(annotation = %k, "annotation not supported by statecar; ignored");
            }
        }
    }
}

pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(webhook)
}

/// A body that is not an AdmissionReview: 400 with the reason (the API server logs it).
fn malformed(w: &Webhook, e: impl std::fmt::Display) -> Response {
    w.metrics.webhook.errors.fetch_add(1, Relaxed);
    tracing::warn!(error = %e, "malformed AdmissionReview");
    (
        StatusCode::BAD_REQUEST,
        format!("malformed AdmissionReview: {e}"),
    )
        .into_response()
}

fn parse<T>(body: &[u8]) -> Result<AdmissionRequest<T>, String>
where
    T: kube::Resource + serde::de::DeserializeOwned,
{
    let review: AdmissionReview<T> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    review
        .try_into()
        .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| e.to_string())
}

fn reply(response: AdmissionResponse) -> Response {
    axum::Json(response.into_review()).into_response()
}

/// Pod name for logs: the name, else `generateName*`.
fn pod_label(pod: &Pod) -> String {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(n), _) => n.clone(),
        (None, Some(g)) => format!("{g}*"),
        _ => "<unnamed>".into(),
    }
}

async fn mutate(State(w): State<Arc<Webhook>>, body: Bytes) -> Response {
    let started = Instant::now();
    w.metrics.webhook.mutate_requests.fetch_add(1, Relaxed);
    let req = match parse::<Pod>(&body) {
        Ok(r) => r,
        Err(e) => return malformed(&w, e),
    };
    let response = AdmissionResponse::from(&req);
    let namespace = req.namespace.clone().unwrap_or_default();
    let pod = match (&req.operation, req.kind.kind.as_str(), &req.object) {
        (Operation::Create, "Pod", Some(pod)) => pod,
        _ => {
            w.skipped("not_a_pod_create");
            w.metrics.webhook.latency.observe(started.elapsed());
            return reply(response);
        }
    };
    let name = pod_label(pod);
    let cfg = match &w.trust_anchors {
        Some(store) => {
            let mut cfg = w.injector.clone();
            cfg.control_plane_trust_anchors = store.ca_bundle_pem();
            std::borrow::Cow::Owned(cfg)
        }
        None => std::borrow::Cow::Borrowed(&w.injector),
    };
    let answer = match crate::inject::decide(pod, &namespace, &cfg) {
        Outcome::Inject {
            patch,
            app_id,
            unsupported,
        } => {
            w.log_unsupported(&unsupported);
            match response.clone().with_patch(patch) {
                Ok(r) => {
                    w.metrics.webhook.injected.fetch_add(1, Relaxed);
                    tracing::info!(%namespace, pod = %name, %app_id, "injected the statecar sidecar");
                    r
                }
                Err(e) => {
                    // Never admit a half-patched pod: deny with the reason.
                    w.metrics.webhook.errors.fetch_add(1, Relaxed);
                    w.metrics.webhook.mutate_denied.fetch_add(1, Relaxed);
                    tracing::error!(%namespace, pod = %name, error = %e, "could not encode the patch");
                    response.deny(format!("statecar: could not build the sidecar patch: {e}"))
                }
            }
        }
        Outcome::Skip(reason) => {
            w.skipped(reason.as_str());
            if reason != SkipReason::NotEnabled {
                tracing::debug!(%namespace, pod = %name, reason = reason.as_str(), "not injecting");
            }
            response
        }
        Outcome::Deny(message) => {
            w.metrics.webhook.mutate_denied.fetch_add(1, Relaxed);
            tracing::info!(%namespace, pod = %name, %message, "denied the pod");
            response.deny(format!("statecar: {message}"))
        }
    };
    w.metrics.webhook.latency.observe(started.elapsed());
    reply(answer)
}

async fn validate(State(w): State<Arc<Webhook>>, body: Bytes) -> Response {
    let started = Instant::now();
    w.metrics.webhook.validate_requests.fetch_add(1, Relaxed);
    // Parsed loosely first, so that a Component that does not even match the schema gets a
    // denial with the decoding error rather than a 400.
    let req = match parse::<DynamicObject>(&body) {
        Ok(r) => r,
        Err(e) => return malformed(&w, e),
    };
    let response = AdmissionResponse::from(&req);
    let answer = match (&req.operation, &req.object) {
        (Operation::Create | Operation::Update, Some(obj)) => {
            let name = obj.metadata.name.clone().unwrap_or_default();
            let namespace = req.namespace.clone().unwrap_or_default();
            let verdict = serde_json::to_value(obj)
                .and_then(serde_json::from_value::<ComponentResource>)
                .map_err(|e| format!("not a valid Component: {e}"))
                .and_then(|mut c| {
                    c.metadata.namespace.get_or_insert(namespace.clone());
                    check_for_admission(&c).map_err(|p| p.message)
                });
            match verdict {
                Ok(()) => response,
                Err(message) => {
                    w.metrics.webhook.validate_denied.fetch_add(1, Relaxed);
                    tracing::info!(%namespace, component = %name, %message, "rejected a component");
                    response.deny(message)
                }
            }
        }
        _ => response,
    };
    w.metrics.webhook.latency.observe(started.elapsed());
    reply(answer)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} (--webhook-listen): {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("no webhook serving certificate after {0:?} (is the Secret writable? see the log)")]
    NoCertificate(Duration),
    #[error("registering the webhook configurations: {0}")]
    Register(#[source] kube::Error),
}

/// Starts the certificate loop and waits (up to 60 s) for the first serving certificate. The
/// webhooks and the sidecars' config endpoint both serve it.
pub async fn start_certs(
    client: kube::Client,
    settings: certs::CertSettings,
) -> Result<CertStore, StartError> {
    let store = certs::new_store();
    let cert_loop = certs::run(client, settings, store.clone());
    tokio::spawn(async move {
        if let Err(e) = cert_loop.await {
            tracing::error!(error = %e, "serving certificate loop stopped");
        }
    });
    let wait = Duration::from_secs(60);
    let mut changes = store.changes();
    let first = tokio::time::timeout(wait, async {
        while store.current().is_none() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    });
    if first.await.is_err() || store.current().is_none() {
        return Err(StartError::NoCertificate(wait));
    }
    Ok(store)
}

/// Registers the webhooks in `url` mode (if asked), then serves them over HTTPS with the
/// certificates in `store`. Returns the server task.
pub async fn start(
    client: kube::Client,
    args: &WebhookArgs,
    namespace: &str,
    webhook: Arc<Webhook>,
    store: CertStore,
) -> Result<JoinHandle<std::io::Result<()>>, StartError> {
    let listener = TcpListener::bind(args.webhook_listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: args.webhook_listen,
            source,
        })?;
    if let Some(host_port) = &args.register_webhooks_url {
        let namespace_selector = match &args.webhook_namespace_selector {
            Some(spec) => register::label_selector(spec).unwrap_or_else(|| {
                tracing::warn!(selector = %spec, "--webhook-namespace-selector is not KEY=VALUE; using the default");
                register::default_namespace_selector(namespace)
            }),
            None => register::default_namespace_selector(namespace),
        };
        let registration = register::Registration {
            mutating_name: args.mutating_webhook_name.clone(),
            validating_name: args.validating_webhook_name.clone(),
            base_url: format!("https://{host_port}"),
            ca_bundle_pem: store.ca_bundle_pem().unwrap_or_default(),
            namespace_selector,
            mutate_failure_policy: args.mutate_failure_policy.clone(),
            validate_failure_policy: args.validate_failure_policy.clone(),
        };
        register::register(&client, &registration)
            .await
            .map_err(StartError::Register)?;
        tracing::info!(url = %registration.base_url, mutating = %registration.mutating_name, validating = %registration.validating_name, "registered the webhook configurations");
    }
    let tls = crate::tls::server_config(store.clone());
    let app = router(webhook);
    tracing::info!(listen = %args.webhook_listen, "serving the admission webhooks (HTTPS)");
    let server = tokio::spawn(crate::tls::serve(
        listener,
        app,
        tls,
        std::future::pending(),
    ));
    Ok(server)
}
