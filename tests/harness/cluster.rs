//! A real Kubernetes API server for the operator tests, and the real `statecar-operator` binary
//! against it.
//!
//! [`cluster()`] starts (or reuses) the local control plane of `tests/cluster/up.sh` once per test
//! process and installs the `components.dapr.io` CRD. Only the kubeconfig path is shared:
//! `cargo test` gives every test its own tokio runtime, and a `kube::Client` (like a
//! `reqwest::Client`) must not outlive or leave the runtime it was made in, so every test builds
//! its own with [`Cluster::client`].
//!
//! Every address involved is on 127.0.0.1: the API server, and the operator's listeners.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Container, Namespace as K8sNamespace, Pod, PodSpec, Secret, ServiceAccount,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use serde_json::Value;
use statecar_crds::component::Condition;
use statecar_crds::kube::{CRD_NAME, ComponentResource};

use crate::unique;

pub use crate::config_stream::*;
pub use crate::operator::*;

/// Field manager of everything the tests apply.
pub const TEST_MANAGER: &str = "statecar-tests";

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a future to completion on a fresh runtime in a thread of its own, so process-wide setup
/// can be done from inside any test's runtime without tying anything to it.
pub fn block_on_fresh<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(f)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// The local cluster: its admin kubeconfig, with the Component CRD installed and Established.
pub struct Cluster {
    pub kubeconfig: PathBuf,
}

/// The process-wide cluster. The first caller runs `tests/cluster/up.sh` (a first run on a machine
/// builds Kubernetes, ~8 min) and installs the CRD; a failure is remembered and reported to every
/// caller without retrying.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(|| {
        let kubeconfig = run_up_sh()?;
        let kc = kubeconfig.clone();
        block_on_fresh(async move { install_crd(&kc).await })?;
        Ok(Cluster { kubeconfig })
    }) {
        Ok(c) => c,
        Err(e) => panic!("no Kubernetes cluster for the operator tests:\n{e}"),
    }
}

fn run_up_sh() -> Result<PathBuf, String> {
    let script = workspace().join("tests/cluster/up.sh");
    eprintln!(
        "starting the local Kubernetes control plane: {} (the first run on a machine builds \
         Kubernetes, ~8 min)",
        script.display()
    );
    let started = Instant::now();
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = || {
        format!(
            "{} exited with {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            script.display(),
            out.status
        )
    };
    if !out.status.success() {
        return Err(report());
    }
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    let path = last
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| format!("no kubeconfig path on stdout\n{}", report()))?;
    if !path.is_absolute() || !path.is_file() {
        return Err(format!(
            "the last stdout line {path:?} is not a kubeconfig file\n{}",
            report()
        ));
    }
    eprintln!(
        "cluster up in {:.1} s: KUBECONFIG={}",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(path)
}

async fn client_for(kubeconfig: &Path) -> Result<Client, String> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .map_err(|e| format!("reading {}: {e}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("kubeconfig {}: {e}", kubeconfig.display()))?;
    Client::try_from(config).map_err(|e| format!("building a kube client: {e}"))
}

/// Applies `crds/components.dapr.io.yaml` (server-side, so it creates or updates) and waits
/// until the API server serves the resource.
async fn install_crd(kubeconfig: &Path) -> Result<(), String> {
    let client = client_for(kubeconfig).await?;
    let path = workspace().join("crds/components.dapr.io.yaml");
    let yaml = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(&yaml).map_err(|e| format!("{}: {e}", path.display()))?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        CRD_NAME,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|e| format!("applying {}: {e}", path.display()))?;
    let established = await_condition(api, CRD_NAME, conditions::is_crd_established());
    match tokio::time::timeout(Duration::from_secs(30), established).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("waiting for the CRD: {e}")),
        Err(_) => return Err("the CRD is not Established after 30 s".into()),
    }
    // Established can come a moment before the resource is served; wait until a list works.
    let components: Api<ComponentResource> = Api::all(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match components.list(&ListParams::default().limit(1)).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("components.dapr.io is not served after 30 s: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

impl Cluster {
    /// Stops this cluster's kube-apiserver and starts it again on the same port, through
    /// `tests/cluster/up.sh --restart-apiserver`; returns how long the API was away. Err when the
    /// cluster is not the local one (a KUBECONFIG cluster cannot be restarted from here).
    pub fn restart_apiserver(&self) -> Result<Duration, String> {
        let script = workspace().join("tests/cluster/up.sh");
        let status = Command::new(&script)
            .arg("--status")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let local = String::from_utf8_lossy(&status.stdout);
        if !status.status.success() || Path::new(local.trim()) != self.kubeconfig {
            return Err(format!(
                "the tests use {}, not the local cluster",
                self.kubeconfig.display()
            ));
        }
        let started = Instant::now();
        let out = Command::new(&script)
            .arg("--restart-apiserver")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            panic!(
                "{} --restart-apiserver failed with {}:\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(started.elapsed())
    }

    /// A new client, for the calling test's runtime only.
    pub async fn client(&self) -> Client {
        client_for(&self.kubeconfig)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs kubectl against the cluster.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=20s")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"))
    }

    /// Runs kubectl and returns its stdout; panics with both outputs when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// A namespace of its own for one test; deleted (without waiting) on drop.
pub struct Namespace {
    pub name: String,
    kubeconfig: PathBuf,
}

impl Namespace {
    pub async fn create(client: &Client, prefix: &str) -> Namespace {
        let name = unique(&format!("sc-{prefix}"));
        let ns = K8sNamespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    "statecar-tests".to_string(),
                    "true".to_string(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<K8sNamespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        Namespace {
            name,
            kubeconfig: cluster().kubeconfig.clone(),
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Best effort and not waited for: kubectl outlives the test process if need be.
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

// ---------------------------------------------------------------------------------------------
// Components, status and events
// ---------------------------------------------------------------------------------------------

pub fn components(client: &Client, namespace: &str) -> Api<ComponentResource> {
    Api::namespaced(client.clone(), namespace)
}

/// Server-side applies a manifest (JSON with apiVersion, kind and metadata.name) as the tests'
/// field manager.
pub async fn apply_component(api: &Api<ComponentResource>, manifest: Value) -> ComponentResource {
    let name = manifest["metadata"]["name"]
        .as_str()
        .expect("manifest has metadata.name")
        .to_string();
    api.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(&manifest),
    )
    .await
    .unwrap_or_else(|e| panic!("applying component {name}: {e}\n{manifest:#}"))
}

pub async fn delete_component(api: &Api<ComponentResource>, name: &str) {
    api.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("deleting component {name}: {e}"));
}

/// The `Ready` condition, if any.
pub fn ready_condition(c: &ComponentResource) -> Option<&Condition> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Waits until the component's `Ready` condition has this status and reason for its current
/// generation (the condition's and the status' observedGeneration both equal
/// metadata.generation). On timeout, the last status seen.
pub async fn wait_ready(
    api: &Api<ComponentResource>,
    name: &str,
    status: &str,
    reason: &str,
    timeout: Duration,
) -> Result<ComponentResource, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match api.get_opt(name).await {
            Ok(Some(c)) => {
                let generation = c.metadata.generation;
                if let Some(cond) = ready_condition(&c)
                    && cond.status == status
                    && cond.reason == reason
                    && cond.observed_generation == generation
                    && c.status.as_ref().and_then(|s| s.observed_generation) == generation
                {
                    return Ok(c);
                }
                format!(
                    "generation {generation:?}, status {}",
                    serde_json::to_string(&c.status).unwrap_or_default()
                )
            }
            Ok(None) => "not found".into(),
            Err(e) => format!("get failed: {e}"),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "component {name}: no Ready={status}/{reason} for its generation within \
                 {timeout:?}; last seen: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The events.k8s.io/v1 Events about one object (by kind and name) in a namespace.
pub async fn events_about(client: &Client, namespace: &str, kind: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("listing events in {namespace}: {e}"));
    list.items
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .collect()
}

/// Waits for an Event about component `name` with this type (Normal or Warning) and reason.
pub async fn wait_event(
    client: &Client,
    namespace: &str,
    name: &str,
    type_: &str,
    reason: &str,
    timeout: Duration,
) -> Result<Event, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let events = events_about(client, namespace, "Component", name).await;
        if let Some(e) = events
            .iter()
            .find(|e| e.type_.as_deref() == Some(type_) && e.reason.as_deref() == Some(reason))
        {
            return Ok(e.clone());
        }
        if Instant::now() > deadline {
            let seen: Vec<_> = events
                .iter()
                .map(|e| format!("{:?}/{:?}: {:?}", e.type_, e.reason, e.note))
                .collect();
            return Err(format!(
                "no {type_} event {reason} about component {namespace}/{name} within \
                 {timeout:?}; events seen: {seen:#?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates or replaces an Opaque Secret with these string values.
pub async fn put_secret(client: &Client, namespace: &str, name: &str, data: &[(&str, &str)]) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap_or_else(|e| panic!("applying secret {namespace}/{name}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------------

pub async fn lease_holder(client: &Client, namespace: &str, name: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap_or_else(|e| panic!("reading lease {namespace}/{name}: {e}"))
        .and_then(|l| l.spec?.holder_identity)
}

/// Creates a Lease held by `holder` for an hour, so operators electing on it never lead: they
/// only serve sidecars and never write status.
pub async fn hold_lease(client: &Client, namespace: &str, name: &str, holder: &str) {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(3600),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..Default::default()
        }),
    };
    Api::<Lease>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_or_else(|e| panic!("creating lease {namespace}/{name}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Sidecar identities
// ---------------------------------------------------------------------------------------------

/// What a sidecar presents to the operator: its pod and the pod's service-account token.
#[derive(Clone, Debug)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    pub service_account: String,
    /// The `dapr.io/app-id` annotation, if the pod has one.
    pub app_id_annotation: Option<String>,
    pub token: String,
}

impl PodIdentity {
    /// The app id the operator expects for this pod.
    pub fn app_id(&self) -> &str {
        self.app_id_annotation.as_deref().unwrap_or(&self.pod)
    }
}

/// Creates the service account `sa` (if missing) and a pod running under it (it stays Pending:
/// there is no kubelet), then gets a token for the service account bound to the pod through the
/// TokenRequest API, or, if the server refuses that, the legacy token Secret.
pub async fn pod_identity(
    client: &Client,
    namespace: &str,
    sa: &str,
    pod: &str,
    app_id: Option<&str>,
) -> PodIdentity {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    if sas
        .get_opt(sa)
        .await
        .expect("reading service account")
        .is_none()
    {
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(sa.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        sas.create(&PostParams::default(), &account)
            .await
            .unwrap_or_else(|e| panic!("creating service account {namespace}/{sa}: {e}"));
    }

    let manifest = Pod {
        metadata: ObjectMeta {
            name: Some(pod.into()),
            annotations: app_id.map(|id| BTreeMap::from([("dapr.io/app-id".into(), id.into())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some(sa.into()),
            // No token volume: admission then does not wait for the legacy token Secret.
            automount_service_account_token: Some(false),
            containers: vec![Container {
                name: "app".into(),
                image: Some("statecar/app".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(20);
    let created = loop {
        match pods.create(&PostParams::default(), &manifest).await {
            Ok(p) => break p,
            // Service-account admission may not see a brand-new account yet.
            Err(e) if Instant::now() < deadline => {
                eprintln!("creating pod {namespace}/{pod}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("creating pod {namespace}/{pod}: {e}"),
        }
    };

    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                uid: created.metadata.uid.clone(),
            }),
        },
        status: None,
    };
    let token = match sas
        .create_subresource::<_, TokenRequest>("token", sa, &PostParams::default(), &request)
        .await
    {
        Ok(t) => t.status.map(|s| s.token).filter(|t| !t.is_empty()),
        Err(e) => {
            eprintln!("TokenRequest for {namespace}/{sa} refused ({e}); using its token Secret");
            None
        }
    };
    let token = match token {
        Some(t) => t,
        None => legacy_token(client, namespace, sa).await,
    };
    PodIdentity {
        namespace: namespace.into(),
        pod: pod.into(),
        service_account: sa.into(),
        app_id_annotation: app_id.map(str::to_string),
        token,
    }
}

/// The token of the Secret the controller-manager creates for a service account.
pub async fn legacy_token(client: &Client, namespace: &str, sa: &str) -> String {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = secrets
            .list(&ListParams::default().fields("type=kubernetes.io/service-account-token"))
            .await
            .expect("listing token secrets");
        let token = list.items.iter().find_map(|s| {
            let owner = s.metadata.annotations.as_ref()?;
            if owner.get("kubernetes.io/service-account.name")? != sa {
                return None;
            }
            let t = s.data.as_ref()?.get("token")?;
            String::from_utf8(t.0.clone()).ok()
        });
        if let Some(t) = token {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "no token Secret for service account {namespace}/{sa} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
