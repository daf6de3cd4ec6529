//! The admission webhooks through the real API server: the operator registers them with a `url:`
//! clientConfig on 127.0.0.1 and a caBundle from the certificate it issued itself; the API server
//! calls them over TLS for pods and Components created in a namespace carrying this test's label.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use statecar_tests::cluster::{Cluster, Namespace, Operator, OperatorOptions, cluster};
use statecar_tests::process::free_port;
use statecar_tests::unique;

const LABEL: &str = "statecar-webhook-test";
const IMAGE: &str = "statecar/statecar:test";

/// One operator with its webhooks, and a namespace they watch.
struct Setup {
    ns: Namespace,
    op_ns: Namespace,
    op: Operator,
    webhook_port: u16,
    mutating: String,
    validating: String,
    secret: String,
    label_value: String,
    kubeconfig: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "delete",
                "mutatingwebhookconfiguration",
                &self.mutating,
                "--ignore-not-found",
                "--wait=false",
            ])
            .output();
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "delete",
                "validatingwebhookconfiguration",
                &self.validating,
                "--ignore-not-found",
                "--wait=false",
            ])
            .output();
    }
}

async fn label_namespace(client: &Client, name: &str, key: &str, value: &str) {
    Api::<K8sNamespace>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {key: value}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("labelling namespace {name}: {e}"));
}

fn operator_options(s_port: u16, op_ns: &str, id: &str, extra: &[&str]) -> OperatorOptions {
    let mut o = OperatorOptions::single();
    o.webhooks = true;
    o.config_tls = true;
    o.extra_args = [
        "--namespace",
        op_ns,
        "--webhook-listen",
        &format!("127.0.0.1:{s_port}"),
        "--register-webhooks-url",
        &format!("127.0.0.1:{s_port}"),
        "--webhook-namespace-selector",
        &format!("{LABEL}={id}"),
        "--mutating-webhook-name",
        &format!("sc-inject-{id}"),
        "--validating-webhook-name",
        &format!("sc-validate-{id}"),
        "--webhook-secret",
        &format!("sc-webhook-{id}"),
        "--sidecar-image",
        IMAGE,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(extra.iter().map(|s| s.to_string()))
    .collect();
    o
}

async fn setup(cluster: &'static Cluster, client: &Client, extra: &[&str]) -> Setup {
    let id = unique("wh").to_ascii_lowercase();
    let ns = Namespace::create(client, "inject").await;
    label_namespace(client, &ns.name, LABEL, &id).await;
    let op_ns = Namespace::create(client, "inject-op").await;
    let port = free_port();
    let op = Operator::start(cluster, operator_options(port, &op_ns.name, &id, extra)).await;
    Setup {
        ns,
        op_ns,
        op,
        webhook_port: port,
        mutating: format!("sc-inject-{id}"),
        validating: format!("sc-validate-{id}"),
        secret: format!("sc-webhook-{id}"),
        label_value: id,
        kubeconfig: cluster.kubeconfig.clone(),
    }
}

fn pod_manifest(name: &str, annotations: Value, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations, "labels": labels},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "app",
                "image": "example/app:1",
                "env": [{"name": "DAPR_HTTP_PORT", "value": "3600"}],
            }, {
                "name": "helper",
                "image": "example/helper:1",
            }],
        },
    }))
    .unwrap()
}

fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a k8s_openapi::api::core::v1::Container> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == name)
}

fn env_of(c: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<String> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .map(|e| e.value.clone().unwrap_or_default())
}

/// Creates a pod, retrying while the API server has not picked up the webhook configuration
/// yet is not needed: registration happens before the operator reports ready.
async fn create_pod(pods: &Api<Pod>, pod: &Pod) -> Result<Pod, kube::Error> {
    pods.create(&PostParams::default(), pod).await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_deployments_get_the_sidecar() {
    let cluster = cluster();
    let client = cluster.client().await;
    let s = setup(cluster, &client, &[]).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &s.ns.name);

    // A bare pod with the annotations that matter.
    let annotated = pod_manifest(
        "cart-0",
        json!({"dapr.io/enabled": "true", "dapr.io/app-id": "cart", "dapr.io/app-port": "8080",
               "dapr.io/log-level": "debug", "dapr.io/sidecar-memory-limit": "64Mi",
               "dapr.io/enable-metrics": "true"}),
        json!({"team": "shop"}),
    );
    let pod = create_pod(&pods, &annotated).await.unwrap_or_else(|e| {
        panic!("creating an annotated pod: {e}\n{}", s.op.logs());
    });
    let daprd = container(&pod, "daprd")
        .unwrap_or_else(|| panic!("no daprd container in {pod:#?}\n{}", s.op.logs()));
    assert_eq!(daprd.image.as_deref(), Some(IMAGE));
    let args = daprd.args.clone().unwrap_or_default().join(" ");
    for want in [
        "--mode kubernetes",
        "--app-id cart",
        "--app-port 8080",
        "--log-level debug",
    ] {
        assert!(args.contains(want), "{want:?} not in daprd args: {args}");
    }
    assert!(
        args.contains(&format!(".{}.svc:", s.op_ns.name)),
        "control-plane address of the operator's namespace in {args}"
    );
    assert!(
        args.contains(&format!(
            "--control-plane-address https://statecar-operator.{}.svc:",
            s.op_ns.name
        )),
        "the config stream over TLS: {args}"
    );
    let anchors = env_of(daprd, "STATECAR_TRUST_ANCHORS").unwrap_or_default();
    assert!(
        anchors.contains("BEGIN CERTIFICATE"),
        "the operator's CA for the sidecar"
    );
    let sc = daprd.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let limits = daprd
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("64Mi"));
    let probe = daprd.readiness_probe.as_ref().expect("readiness probe");
    assert_eq!(
        probe.http_get.as_ref().and_then(|h| h.path.as_deref()),
        Some("/v1.0/healthz")
    );
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("shop"));
    assert_eq!(
        labels.get("dapr.io/sidecar-injected").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        labels.get("dapr.io/app-id").map(String::as_str),
        Some("cart")
    );
    // App containers: an existing DAPR_HTTP_PORT is kept, a missing one added.
    let app = container(&pod, "app").unwrap();
    assert_eq!(env_of(app, "DAPR_HTTP_PORT").as_deref(), Some("3600"));
    let helper = container(&pod, "helper").unwrap();
    assert_eq!(env_of(helper, "DAPR_HTTP_PORT").as_deref(), Some("3500"));
    let volumes = pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .clone()
        .unwrap_or_default();
    assert!(
        volumes
            .iter()
            .any(|v| v.projected.as_ref().is_some_and(|p| p
                .sources
                .iter()
                .flatten()
                .any(|s| s.service_account_token.is_some()))),
        "a projected service-account token volume: {volumes:#?}"
    );

    // Not annotated, annotated off, and already carrying daprd: left alone.
    for (name, ann, has_daprd) in [
        ("plain", json!({}), false),
        ("off", json!({"dapr.io/enabled": "false"}), false),
        ("own", json!({"dapr.io/enabled": "true"}), true),
    ] {
        let mut p = pod_manifest(name, ann, json!({}));
        if has_daprd {
            p.spec.as_mut().unwrap().containers[1].name = "daprd".into();
        }
        let created = create_pod(&pods, &p).await.unwrap();
        let n = created.spec.as_ref().unwrap().containers.len();
        assert_eq!(n, 2, "{name}: containers changed: {created:#?}");
        let labels = created.metadata.labels.clone().unwrap_or_default();
        assert!(!labels.contains_key("dapr.io/sidecar-injected"), "{name}");
    }

    // A Deployment: its pods have no name at admission; the app id is the Deployment's name, the
    // template labels survive, and the ReplicaSet owns exactly its desired count of pods.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &s.ns.name);
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", "tier": "front"},
                             "annotations": {"dapr.io/enabled": "true"}},
                "spec": {"containers": [{"name": "web", "image": "example/web:1"}]},
            },
        },
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap_or_else(|e| panic!("creating the deployment: {e}"));
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), &s.ns.name);
    let deadline = Instant::now() + Duration::from_secs(60);
    let web_pods = loop {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        let rs = rs_api
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        let settled = rs.items.len() == 1
            && rs.items[0].status.as_ref().map(|s| s.replicas) == Some(2)
            && list.items.len() == 2;
        if settled {
            break list.items;
        }
        assert!(
            Instant::now() < deadline,
            "the ReplicaSet did not settle at 2 pods: {} ReplicaSets, {} pods\n{}",
            rs.items.len(),
            list.items.len(),
            s.op.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for p in &web_pods {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(
            labels.get("dapr.io/app-id").map(String::as_str),
            Some("web")
        );
        assert!(container(p, "daprd").is_some(), "{p:#?}");
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "ReplicaSet");
    }
    // Still two a moment later: had the labels been replaced, the ReplicaSet would not see its
    // pods and would keep creating new ones.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(again.items.len(), 2);
    let all = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 4 + 2, "no stray pods");

    // Admission latency through the API server: annotated pods in the watched namespace vs
    // plain pods in a namespace the webhook does not see, same run.
    let other = Namespace::create(&client, "inject-base").await;
    let base_pods: Api<Pod> = Api::namespaced(client.clone(), &other.name);
    let mut with = Vec::new();
    let mut without = Vec::new();
    for i in 0..40 {
        let p = pod_manifest(
            &format!("lat-{i}"),
            json!({"dapr.io/enabled": "true"}),
            json!({}),
        );
        let t = Instant::now();
        create_pod(&pods, &p).await.unwrap();
        with.push(t.elapsed());
        let p = pod_manifest(&format!("base-{i}"), json!({}), json!({}));
        let t = Instant::now();
        create_pod(&base_pods, &p).await.unwrap();
        without.push(t.elapsed());
    }
    with.sort();
    without.sort();
    eprintln!(
        "pod create through the API server, 40 each: with injection p50 {:?} p99 {:?}; \
         without a webhook p50 {:?} p99 {:?}",
        percentile(&with, 0.5),
        percentile(&with, 0.99),
        percentile(&without, 0.5),
        percentile(&without, 0.99)
    );

    // Webhook throughput measured directly: AdmissionReviews over HTTPS keep-alive connections,
    // verified against the CA from the operator's Secret.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &s.op_ns.name);
    let ca = secrets.get(&s.secret).await.unwrap().data.unwrap()["ca.crt"]
        .0
        .clone();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b9f3a1e-5d1c-4e0f-9d3e-2f6a7c8b9d01",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": s.ns.name,
            "operation": "CREATE",
            "userInfo": {"username": "load"},
            "object": serde_json::to_value(pod_manifest(
                "load", json!({"dapr.io/enabled": "true", "dapr.io/app-id": "load"}), json!({"a": "b"})
            )).unwrap(),
            "dryRun": false,
        },
    });
    let tls = statecar_tests::https::client_config(&ca);
    // Garbage and a review of the wrong shape: 400 with the reason, and the webhook lives on.
    for bad in [
        &b"{not json"[..],
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
    ] {
        let (status, body) =
            statecar_tests::https::post_once(s.webhook_port, "/mutate", bad, tls.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("malformed AdmissionReview"), "{body}");
    }
    for conns in [1, 8] {
        let (rps, failed) = statecar_tests::https::post_load(
            s.webhook_port,
            "/mutate",
            serde_json::to_vec(&review).unwrap(),
            tls.clone(),
            conns,
            Duration::from_secs(3),
        )
        .await;
        eprintln!(
            "/mutate directly over HTTPS, {conns} connection(s): {rps:.0} AdmissionReviews/s"
        );
        assert_eq!(failed, 0, "failed AdmissionReviews under load");
        assert!(rps > 10.0, "{rps}");
    }

    let metrics = s.op.metrics().await;
    assert!(
        s.op.metric("statecar_webhook_injected_total").await >= 40.0 + 3.0,
        "{metrics}"
    );
    // The pod that brought its own daprd (and any re-invocation after injection).
    assert!(
        s.op.metric("statecar_webhook_skipped_total{reason=\"already_injected\"}")
            .await
            >= 1.0,
        "{metrics}"
    );
    assert!(metrics.contains("statecar_webhook_duration_seconds_count"));
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_components_are_rejected_at_apply() {
    let cluster = cluster();
    let client = cluster.client().await;
    let s = setup(cluster, &client, &[]).await;
    let apply = |name: &str, type_: &str, metadata: Value| {
        let manifest = json!({
            "apiVersion": "dapr.io/v1alpha1",
            "kind": "Component",
            "metadata": {"name": name, "namespace": s.ns.name},
            "spec": {"type": type_, "version": "v1", "metadata": metadata},
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, manifest.to_string()).unwrap();
        let out = cluster.kubectl(&["apply", "-f", path.to_str().unwrap()]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = apply(
        "no-host",
        "state.redis",
        json!([{"name": "redisDB", "value": "1"}]),
    );
    assert!(!ok, "a state.redis without redisHost was accepted");
    assert!(err.contains("redisHost"), "{err}");
    assert!(err.contains("denied"), "{err}");
    let (ok, err) = apply(
        "typo",
        "state.redis",
        json!([{"name": "redisHost", "value": "r:6379"}, {"name": "redisHots", "value": "x"}]),
    );
    assert!(!ok);
    assert!(err.contains("redisHots"), "{err}");
    let (ok, err) = apply(
        "bad-db",
        "state.redis",
        json!([{"name": "redisHost", "value": "r:6379"}, {"name": "redisDB", "value": "one"}]),
    );
    assert!(!ok);
    assert!(err.contains("redisDB"), "{err}");
    let (ok, err) = apply(
        "both",
        "state.redis",
        json!([{"name": "redisHost", "value": "r:6379"},
               {"name": "redisPassword", "value": "x", "secretKeyRef": {"name": "s", "key": "k"}}]),
    );
    assert!(!ok);
    assert!(err.contains("not both"), "{err}");
    // Valid, a secret that does not exist yet (the reconciler reports that), and other types.
    let (ok, err) = apply(
        "good",
        "state.redis",
        json!([{"name": "redisHost", "value": "r:6379"},
               {"name": "redisPassword", "secretKeyRef": {"name": "later", "key": "pw"}}]),
    );
    assert!(ok, "{err}");
    let (ok, err) = apply(
        "bus",
        "pubsub.redis",
        json!([{"name": "anything", "value": "1"}]),
    );
    assert!(ok, "other building blocks must apply: {err}");
    assert!(
        s.op.metric("statecar_webhook_requests_total{webhook=\"validate\"}")
            .await
            >= 6.0
    );
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_and_operator_outage() {
    let cluster = cluster();
    let client = cluster.client().await;
    // A 6 s certificate: renewed every ~4 s while pods are being created.
    let mut s = setup(
        cluster,
        &client,
        &[
            "--webhook-cert-validity",
            "6s",
            "--webhook-cert-check-every",
            "500ms",
        ],
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &s.ns.name);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &s.op_ns.name);
    let leaf = |sec: &k8s_openapi::api::core::v1::Secret| {
        sec.data
            .as_ref()
            .and_then(|d| d.get("tls.crt").map(|b| b.0.clone()))
            .unwrap_or_default()
    };
    let first_leaf = leaf(&secrets.get(&s.secret).await.unwrap());
    let created = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut leaves = std::collections::HashSet::new();
    leaves.insert(first_leaf);
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(14) {
        i += 1;
        let p = pod_manifest(
            &format!("rot-{i}"),
            json!({"dapr.io/enabled": "true"}),
            json!({}),
        );
        let pod = create_pod(&pods, &p)
            .await
            .unwrap_or_else(|e| panic!("pod {i} refused during rotation: {e}"));
        assert!(
            container(&pod, "daprd").is_some(),
            "pod {i} admitted without the sidecar during rotation\n{}",
            s.op.logs()
        );
        created.fetch_add(1, Ordering::Relaxed);
        leaves.insert(leaf(&secrets.get(&s.secret).await.unwrap()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{} pods admitted with the sidecar across {} serving certificates",
        created.load(Ordering::Relaxed),
        leaves.len()
    );
    assert!(leaves.len() >= 3, "the certificate did not rotate");

    // The operator goes away: failurePolicy Ignore admits annotated pods without the sidecar.
    s.op.kill();
    let p = pod_manifest("missed", json!({"dapr.io/enabled": "true"}), json!({}));
    let t = Instant::now();
    let pod = create_pod(&pods, &p)
        .await
        .expect("pods are still admitted while the operator is down");
    eprintln!("admission with the webhook down took {:?}", t.elapsed());
    assert!(container(&pod, "daprd").is_none());

    // Back up: the watchdog flags the pod with a Warning Event and counts it.
    let id = s.label_value.clone();
    s.op = Operator::start(
        cluster,
        operator_options(s.webhook_port, &s.op_ns.name, &id, &[]),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events =
            statecar_tests::cluster::events_about(&client, &s.ns.name, "Pod", "missed").await;
        if events
            .iter()
            .any(|e| e.reason.as_deref() == Some("SidecarNotInjected"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no SidecarNotInjected event on the pod: {events:#?}\n{}",
            s.op.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Other tests' operators in this process watch every namespace too and may report the pod
    // first; this replica counts it once its own watch has seen it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while s
        .op
        .metric("statecar_operator_pods_without_sidecar_total")
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the pod was not counted\n{}\n{}",
            s.op.metrics().await,
            s.op.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
