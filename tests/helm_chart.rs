//! The Helm chart `charts/statecar`, through `tests/helm.py` (Helm v4's own code, from the PyPI
//! package helm-python-sdk that `scripts/helm-deps.sh` installs on first use): lint, what it
//! renders with default and other values, that a typo in values is refused, that its CRD is the
//! generated one, that its RBAC is exactly the operator's documented needs, and a real
//! install, upgrade and uninstall on the local API server, during which the real operator runs
//! with the chart's service account and RBAC to show they suffice.
//!
//! The local cluster has no kubelet, so the chart's pods stay Pending: nothing waits for them to
//! be ready. Its webhooks are narrowed (`webhook.namespaceSelector`) to a namespace label nobody
//! has, so the API server never calls a Service that nothing serves while this runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use statecar_tests::cluster::{
    Cluster, Operator, OperatorOptions, cluster, hold_lease, legacy_token,
};
use statecar_tests::process::free_port;
use statecar_tests::unique;

const CHART: &str = "charts/statecar";
/// The namespace the offline renders use.
const NS: &str = "statecar-system";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ---------------------------------------------------------------------------------------------
// Running tests/helm.py
// ---------------------------------------------------------------------------------------------

/// The python that has the Helm SDK: `scripts/helm-deps.sh` installs it once (idempotent, and
/// instant when it is there) and prints the path last.
fn helm_python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = PYTHON.get_or_init(|| {
        let script = workspace().join("scripts/helm-deps.sh");
        let started = Instant::now();
        let out = Command::new(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}):\n{stdout}\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let python = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| PathBuf::from(l.trim()))
            .ok_or_else(|| format!("{} printed no path", script.display()))?;
        if started.elapsed() > Duration::from_secs(2) {
            eprintln!("helm-deps.sh took {:.1} s", started.elapsed().as_secs_f64());
        }
        Ok(python)
    });
    match result {
        Ok(p) => p,
        Err(e) => panic!("no Helm SDK for the chart tests:\n{e}"),
    }
}

/// Runs `tests/helm.py ARGS` from the workspace root, against `kubeconfig` if given.
fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Output {
    let mut cmd = Command::new(helm_python());
    cmd.arg(workspace().join("tests/helm.py"))
        .args(args)
        .current_dir(workspace())
        .stdin(Stdio::null());
    match kubeconfig {
        Some(k) => cmd.env("KUBECONFIG", k),
        None => cmd.env_remove("KUBECONFIG"),
    };
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run tests/helm.py: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs helm and returns its stdout; panics with both outputs when it fails.
fn helm_ok(args: &[&str], kubeconfig: Option<&Path>) -> String {
    let out = helm(args, kubeconfig);
    assert!(
        out.status.success(),
        "helm {args:?} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs helm expecting it to fail as helm fails: exit code 1 and `Error: ...` on stderr, which
/// is returned.
fn helm_err(args: &[&str]) -> String {
    let out = helm(args, None);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "helm {args:?} should fail with exit code 1:\n{}\n{stderr}",
        text(&out.stdout)
    );
    assert!(stderr.starts_with("Error: "), "stderr: {stderr}");
    stderr
}

/// Every document of a multi-document YAML stream (documents split at `---` lines, as Helm
/// writes them), as JSON values; empty and comment-only documents are left out.
fn parse_docs(yaml: &str) -> Vec<Value> {
    let mut docs = vec![String::new()];
    for line in yaml.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else {
            let last = docs.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.iter()
        .map(|doc| {
            let v: serde_yaml::Value = serde_yaml::from_str(doc)
                .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{doc}"));
            serde_json::to_value(v).expect("YAML as JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template statecar charts/statecar -n statecar-system EXTRA...`, parsed.
fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "statecar", CHART, "-n", NS];
    args.extend_from_slice(extra);
    parse_docs(&helm_ok(&args, None))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let all: Vec<String> = docs
                .iter()
                .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} rendered; rendered: {all:?}")
        })
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or(""),
                d["metadata"]["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    k.sort();
    k
}

/// The container args of the operator Deployment.
fn operator_args(docs: &[Value]) -> Vec<String> {
    let deploy = find(docs, "Deployment", "statecar-operator");
    deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

/// The version in `[workspace.package]` of the root Cargo.toml.
fn workspace_version() -> String {
    let toml = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    let section = toml
        .split("[workspace.package]")
        .nth(1)
        .expect("[workspace.package]");
    section
        .lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("version")?.trim().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
        .expect("a version in [workspace.package]")
}

// ---------------------------------------------------------------------------------------------
// Offline: lint, template, schema
// ---------------------------------------------------------------------------------------------

#[test]
fn lint_passes_strict() {
    let out = helm_ok(&["lint", CHART, "--strict"], None);
    assert!(
        out.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{out}"
    );
    assert!(
        !out.contains("[ERROR]") && !out.contains("[WARNING]"),
        "{out}"
    );
}

#[test]
fn chart_metadata_follows_the_workspace() {
    let chart = std::fs::read_to_string(workspace().join(CHART).join("Chart.yaml")).unwrap();
    let chart: Value = serde_json::to_value(
        serde_yaml::from_str::<serde_yaml::Value>(&chart).expect("Chart.yaml parses"),
    )
    .unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "statecar");
    assert_eq!(chart["version"], "0.1.0");
    assert_eq!(chart["appVersion"], workspace_version().as_str());
}

#[test]
fn defaults_render_every_object_with_the_expected_fields() {
    let docs = render(&[]);
    let version = workspace_version();
    let prefix = format!("statecar-{NS}");
    assert_eq!(
        kinds(&docs),
        {
            let mut want = vec![
                "ClusterRole/statecar-statecar-system-operator".to_string(),
                "ClusterRoleBinding/statecar-statecar-system-operator".into(),
                "Deployment/statecar-operator".into(),
                "MutatingWebhookConfiguration/statecar-statecar-system-injector".into(),
                "Pod/statecar-test-webhook".into(),
                "PodDisruptionBudget/statecar-operator".into(),
                "Role/statecar-operator".into(),
                "RoleBinding/statecar-operator".into(),
                "Service/statecar-operator".into(),
                "Service/statecar-webhook".into(),
                "ServiceAccount/statecar-operator".into(),
                "ValidatingWebhookConfiguration/statecar-statecar-system-validator".into(),
            ];
            want.sort();
            want
        },
        "objects rendered with default values"
    );
    for d in &docs {
        let cluster_scoped = [
            "ClusterRole",
            "ClusterRoleBinding",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ]
        .contains(&d["kind"].as_str().unwrap());
        if cluster_scoped {
            assert!(d["metadata"]["namespace"].is_null(), "{d}");
            let name = d["metadata"]["name"].as_str().unwrap();
            assert!(
                name.starts_with(&prefix),
                "{name} lacks the release and namespace"
            );
        } else {
            assert_eq!(d["metadata"]["namespace"], NS, "{d}");
        }
        assert_eq!(
            d["metadata"]["labels"]["app.kubernetes.io/instance"],
            "statecar"
        );
    }

    // The operator Deployment.
    let deploy = find(&docs, "Deployment", "statecar-operator");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "statecar-operator");
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            ["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
            ["labelSelector"]["matchLabels"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"],
        format!("ghcr.io/statecar/statecar-operator:{version}")
    );
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        c["securityContext"],
        json!({
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(
        c["env"],
        json!([
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        ])
    );
    assert_eq!(
        c["ports"],
        json!([
            {"name": "config", "containerPort": 6500, "protocol": "TCP"},
            {"name": "probes", "containerPort": 8080, "protocol": "TCP"},
            {"name": "webhook", "containerPort": 9443, "protocol": "TCP"},
        ])
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "probes"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "probes"})
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}})
    );
    assert_eq!(
        operator_args(&docs),
        [
            "--log-level=info".to_string(),
            "--lease-name=statecar-operator".into(),
            "--config-listen=0.0.0.0:6500".into(),
            "--probe-listen=0.0.0.0:8080".into(),
            "--webhook-listen=0.0.0.0:9443".into(),
            "--operator-service=statecar-operator".into(),
            "--webhook-service=statecar-webhook".into(),
            "--webhook-secret=statecar-webhook-tls".into(),
            format!("--mutating-webhook-name={prefix}-injector"),
            format!("--validating-webhook-name={prefix}-validator"),
            format!("--sidecar-image=ghcr.io/statecar/statecar:{version}"),
            "--sidecar-image-pull-policy=IfNotPresent".into(),
            "--sidecar-cpu-request=10m".into(),
            "--sidecar-cpu-limit=".into(),
            "--sidecar-memory-request=16Mi".into(),
            "--sidecar-memory-limit=128Mi".into(),
        ]
    );
    // No cert-manager gate without cert-manager.
    assert!(pod["volumes"].is_null() && c["volumeMounts"].is_null());

    // The PodDisruptionBudget (helm template's capabilities include policy/v1).
    let pdb = find(&docs, "PodDisruptionBudget", "statecar-operator");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], deploy["spec"]["selector"]);

    // The Services.
    let svc = find(&docs, "Service", "statecar-operator");
    assert_eq!(
        svc["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        svc["spec"]["ports"][0],
        json!({"name": "config", "port": 6500, "targetPort": "config", "protocol": "TCP"})
    );
    assert_eq!(
        svc["spec"]["ports"][1],
        json!({"name": "metrics", "port": 8080, "targetPort": "probes", "protocol": "TCP"})
    );
    let svc = find(&docs, "Service", "statecar-webhook");
    assert_eq!(
        svc["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}])
    );

    // The webhook configurations.
    let selector = json!({"matchExpressions": [{
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": [NS, "kube-system"],
    }]});
    let mwc = find(
        &docs,
        "MutatingWebhookConfiguration",
        &format!("{prefix}-injector"),
    );
    assert!(mwc["metadata"]["annotations"].is_null(), "{mwc}");
    let hooks = mwc["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    let w = &hooks[0];
    assert_eq!(w["name"], "sidecar-injector.statecar.dev");
    assert_eq!(
        w["clientConfig"],
        json!({"service": {"name": "statecar-webhook", "namespace": NS, "path": "/mutate", "port": 443}}),
        "a service reference and no caBundle"
    );
    assert_eq!(
        w["rules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}])
    );
    assert_eq!(w["failurePolicy"], "Ignore");
    assert_eq!(w["timeoutSeconds"], 5);
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    assert_eq!(w["namespaceSelector"], selector);

    let vwc = find(
        &docs,
        "ValidatingWebhookConfiguration",
        &format!("{prefix}-validator"),
    );
    let hooks = vwc["webhooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    let w = &hooks[0];
    assert_eq!(w["name"], "components.statecar.dev");
    assert_eq!(
        w["clientConfig"],
        json!({"service": {"name": "statecar-webhook", "namespace": NS, "path": "/validate", "port": 443}})
    );
    assert_eq!(
        w["rules"],
        json!([{"apiGroups": ["dapr.io"], "apiVersions": ["v1alpha1"], "operations": ["CREATE", "UPDATE"], "resources": ["components"], "scope": "Namespaced"}])
    );
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(w["timeoutSeconds"], 5);
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(w["namespaceSelector"], selector);

    // The test hook.
    let test = find(&docs, "Pod", "statecar-test-webhook");
    assert_eq!(test["metadata"]["annotations"]["helm.sh/hook"], "test");
    let check = &test["spec"]["containers"][0];
    assert_eq!(
        check["image"], c["image"],
        "the test runs the operator's own image"
    );
    assert_eq!(
        check["command"],
        json!([
            "/statecar-operator",
            "check",
            format!("--readyz=http://statecar-operator.{NS}.svc:8080/readyz"),
            format!("--webhook=https://statecar-webhook.{NS}.svc:443/validate"),
            "--ca-file=/var/run/statecar/webhook-ca/ca.crt"
        ])
    );
    // Only the CA of the webhook Secret is mounted, never its private key.
    assert_eq!(
        test["spec"]["volumes"][0]["secret"],
        json!({"secretName": "statecar-webhook-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]})
    );

    // Off by default.
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ServiceMonitor" || d["kind"] == "Certificate")
    );
}

#[test]
fn values_become_operator_flags_and_pod_settings() {
    let docs = render(&[
        "--set",
        "operator.replicas=3,logLevel=debug,logAsJson=true",
        "--set",
        "operator.image.tag=0.2.0-rc.1,operator.image.pullPolicy=Always",
        "--set",
        "sidecar.image.repository=registry.example/statecar,sidecar.image.tag=dev",
        "--set",
        "sidecar.resources.limits.cpu=500m,sidecar.resources.limits.memory=null",
        "--set",
        "nodeSelector.pool=system,webhook.failurePolicy=Fail,webhook.validateFailurePolicy=Ignore",
        "--set-json",
        r#"tolerations=[{"key":"dedicated","operator":"Exists","effect":"NoSchedule"}]"#,
        "--set",
        "webhook.namespaceSelector.matchLabels.statecar=on",
        "--set",
        "crds.manage=false",
    ]);
    let deploy = find(&docs, "Deployment", "statecar-operator");
    assert_eq!(deploy["spec"]["replicas"], 3);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["image"],
        "ghcr.io/statecar/statecar-operator:0.2.0-rc.1"
    );
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(pod["nodeSelector"], json!({"pool": "system"}));
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}])
    );
    let args = operator_args(&docs);
    for want in [
        "--log-level=debug",
        "--log-as-json",
        "--sidecar-image=registry.example/statecar:dev",
        "--sidecar-cpu-request=10m",
        "--sidecar-cpu-limit=500m",
        "--sidecar-memory-limit=",
        "--manage-crd=false",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
    // And the operator may no longer touch the CRD.
    let prefix = format!("statecar-{NS}");
    let cluster_role = find(&docs, "ClusterRole", &format!("{prefix}-operator"));
    assert!(
        !cluster_role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["apiGroups"] == json!(["apiextensions.k8s.io"])),
        "{cluster_role}"
    );
    let mwc = find(
        &docs,
        "MutatingWebhookConfiguration",
        &format!("{prefix}-injector"),
    );
    assert_eq!(mwc["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(
        mwc["webhooks"][0]["namespaceSelector"]["matchLabels"],
        json!({"statecar": "on"})
    );
    let vwc = find(
        &docs,
        "ValidatingWebhookConfiguration",
        &format!("{prefix}-validator"),
    );
    assert_eq!(vwc["webhooks"][0]["failurePolicy"], "Ignore");

    // One replica: no PodDisruptionBudget (minAvailable 1 of 1 would block every drain).
    let docs = render(&["--set", "operator.replicas=1"]);
    assert!(!docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"));

    // Cluster-scoped names follow the release and its namespace.
    let docs = parse_docs(&helm_ok(&["template", "edge", CHART, "-n", "team-a"], None));
    for (kind, name) in [
        ("ClusterRole", "edge-team-a-operator"),
        ("ClusterRoleBinding", "edge-team-a-operator"),
        ("MutatingWebhookConfiguration", "edge-team-a-injector"),
        ("ValidatingWebhookConfiguration", "edge-team-a-validator"),
    ] {
        find(&docs, kind, name);
    }
    let args = operator_args(&docs);
    assert!(args.contains(&"--mutating-webhook-name=edge-team-a-injector".to_string()));
    assert!(args.contains(&"--validating-webhook-name=edge-team-a-validator".to_string()));
}

#[test]
fn a_typo_in_values_fails_with_a_schema_error() {
    let err = helm_err(&["template", "statecar", CHART, "--set", "operator.replica=3"]);
    assert!(
        err.contains("values don't meet the specifications of the schema")
            && err.contains("/operator")
            && err.contains("additional properties 'replica' not allowed"),
        "{err}"
    );
    let err = helm_err(&[
        "template",
        "statecar",
        CHART,
        "--set",
        "webhook.failurPolicy=Fail",
    ]);
    assert!(
        err.contains("additional properties 'failurPolicy' not allowed"),
        "{err}"
    );
    let err = helm_err(&["template", "statecar", CHART, "--set", "logLevel=verbose"]);
    assert!(err.contains("/logLevel"), "{err}");
    let err = helm_err(&["template", "statecar", CHART, "--set", "certs.mode=vault"]);
    assert!(err.contains("/certs/mode"), "{err}");
    let err = helm_err(&[
        "template",
        "statecar",
        CHART,
        "--set",
        "serviceMonitor.enable=true",
    ]);
    assert!(
        err.contains("additional properties 'enable' not allowed"),
        "{err}"
    );
    // Lint reports the same.
    let out = helm(&["lint", CHART, "--set", "operator.replica=3"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("additional properties 'replica' not allowed"));
    assert!(text(&out.stderr).contains("1 chart(s) linted, 1 chart(s) failed"));
}

#[test]
fn watch_namespaces_is_refused_while_the_operator_watches_all() {
    let err = helm_err(&[
        "template",
        "statecar",
        CHART,
        "--set",
        "watchNamespaces={shop}",
    ]);
    assert!(err.contains("watchNamespaces"), "{err}");
    assert!(err.contains("all namespaces"), "{err}");
}

#[test]
fn cert_manager_mode_renders_the_certificate_and_the_ca_injection() {
    let docs = render(&["--set", "certs.mode=cert-manager"]);
    let prefix = format!("statecar-{NS}");
    let inject = format!("{NS}/statecar-webhook");
    for (kind, name) in [
        ("MutatingWebhookConfiguration", format!("{prefix}-injector")),
        (
            "ValidatingWebhookConfiguration",
            format!("{prefix}-validator"),
        ),
    ] {
        let w = find(&docs, kind, &name);
        assert_eq!(
            w["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            inject.as_str()
        );
        assert!(w["webhooks"][0]["clientConfig"]["caBundle"].is_null());
    }
    let issuer = find(&docs, "Issuer", "statecar-webhook-selfsigned");
    assert_eq!(issuer["apiVersion"], "cert-manager.io/v1");
    assert_eq!(issuer["spec"], json!({"selfSigned": {}}));
    let cert = find(&docs, "Certificate", "statecar-webhook");
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(cert["metadata"]["namespace"], NS);
    // The Secret the operator serves from.
    assert_eq!(cert["spec"]["secretName"], "statecar-webhook-tls");
    assert_eq!(
        cert["spec"]["dnsNames"][0],
        format!("statecar-webhook.{NS}.svc").as_str()
    );
    assert_eq!(
        cert["spec"]["issuerRef"],
        json!({"name": "statecar-webhook-selfsigned", "kind": "Issuer", "group": "cert-manager.io"})
    );
    // The pod waits for cert-manager's Secret instead of racing it with one of its own.
    let pod = &find(&docs, "Deployment", "statecar-operator")["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        "statecar-webhook-tls"
    );
    assert_eq!(pod["containers"][0]["volumeMounts"][0]["readOnly"], true);
    // And the operator may no longer write Secrets at all.
    let role = find(&docs, "Role", "statecar-operator");
    assert!(
        !role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == json!(["secrets"])),
        "{role}"
    );

    // An existing issuer instead of the self-signed one.
    let docs = render(&[
        "--set",
        "certs.mode=cert-manager,certs.issuerRef.name=corp-ca,certs.issuerRef.kind=ClusterIssuer",
    ]);
    assert!(!docs.iter().any(|d| d["kind"] == "Issuer"));
    let cert = find(&docs, "Certificate", "statecar-webhook");
    assert_eq!(
        cert["spec"]["issuerRef"],
        json!({"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
}

#[test]
fn service_monitor_is_rendered_when_enabled() {
    let docs = render(&[
        "--set",
        "serviceMonitor.enabled=true,serviceMonitor.interval=15s",
        "--set",
        "serviceMonitor.labels.release=prometheus",
    ]);
    let sm = find(&docs, "ServiceMonitor", "statecar-operator");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    let svc = find(&docs, "Service", "statecar-operator");
    // It selects the operator Service (which has the metrics port), not the webhook one.
    let selector = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
    for (k, v) in selector {
        assert_eq!(&svc["metadata"]["labels"][k], v, "label {k}");
    }
    let webhook = find(&docs, "Service", "statecar-webhook");
    assert!(
        selector
            .iter()
            .any(|(k, v)| &webhook["metadata"]["labels"][k] != v)
    );
    assert_eq!(
        sm["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics", "interval": "15s"}])
    );
    assert_eq!(sm["spec"]["namespaceSelector"], json!({"matchNames": [NS]}));
}

#[test]
fn the_charts_crd_is_the_generated_one() {
    let generated = std::fs::read(workspace().join("crds/components.dapr.io.yaml")).unwrap();
    let shipped =
        std::fs::read(workspace().join(CHART).join("crds/components.dapr.io.yaml")).unwrap();
    assert!(
        generated == shipped,
        "charts/statecar/crds/components.dapr.io.yaml differs from crds/components.dapr.io.yaml; \
         copy it: cp crds/components.dapr.io.yaml charts/statecar/crds/"
    );
    // And helm ships it: --include-crds puts it first.
    let docs = render(&["--include-crds"]);
    assert_eq!(docs[0]["kind"], "CustomResourceDefinition");
    assert_eq!(docs[0]["metadata"]["name"], "components.dapr.io");
    let from_file = parse_docs(std::str::from_utf8(&generated).unwrap());
    assert_eq!(docs[0], from_file[0]);
}

/// The operator's documented needs (operator/README.md, "RBAC it needs"), narrowed by name where
/// Kubernetes allows it. A change here is a change of what the operator may do in a cluster.
#[test]
fn rbac_is_exactly_what_the_operator_needs() {
    let docs = render(&[]);
    let prefix = format!("statecar-{NS}");
    let cluster_role = find(&docs, "ClusterRole", &format!("{prefix}-operator"));
    assert_eq!(
        cluster_role["rules"],
        json!([
            {"apiGroups": ["dapr.io"], "resources": ["components"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["dapr.io"], "resources": ["components/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
             "resourceNames": [format!("{prefix}-injector")], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"],
             "resourceNames": [format!("{prefix}-validator")], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
             "resourceNames": ["components.dapr.io"], "verbs": ["get", "patch"]},
        ])
    );
    let role = find(&docs, "Role", "statecar-operator");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["statecar-webhook-tls"], "verbs": ["update"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["statecar-operator"], "verbs": ["get", "update"]},
        ])
    );
    let subject = json!([{"kind": "ServiceAccount", "name": "statecar-operator", "namespace": NS}]);
    let crb = find(&docs, "ClusterRoleBinding", &format!("{prefix}-operator"));
    assert_eq!(
        crb["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{prefix}-operator")})
    );
    assert_eq!(crb["subjects"], subject);
    let rb = find(&docs, "RoleBinding", "statecar-operator");
    assert_eq!(
        rb["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "statecar-operator"})
    );
    assert_eq!(rb["subjects"], subject);
    // Nothing else grants anything.
    let grants: Vec<String> = docs
        .iter()
        .filter(|d| d["apiVersion"].as_str().unwrap_or("").starts_with("rbac."))
        .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
        .collect();
    assert_eq!(grants.len(), 4, "{grants:?}");
}

/// Every value in values.yaml is described in charts/README.md.
#[test]
fn every_value_is_documented() {
    let values = std::fs::read_to_string(workspace().join(CHART).join("values.yaml")).unwrap();
    let values: Value =
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&values).unwrap()).unwrap();
    fn leaves(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            // Maps the user fills (resources, labels, selectors) are documented as a whole.
            Value::Object(m)
                if !m.is_empty()
                    && !["operator.resources", "sidecar.resources"].contains(&prefix) =>
            {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&p, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut paths = Vec::new();
    leaves("", &values, &mut paths);
    let readme = std::fs::read_to_string(workspace().join("charts/README.md")).unwrap();
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !readme.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "values not in charts/README.md: {missing:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// On the cluster
// ---------------------------------------------------------------------------------------------

/// Removes what an interrupted test left: the release (its cluster-scoped objects) and the
/// namespace.
struct Release<'a> {
    name: String,
    namespace: String,
    kubeconfig: &'a Path,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = helm(
                &[
                    "uninstall",
                    &self.name,
                    "-n",
                    &self.namespace,
                    "--ignore-not-found",
                ],
                Some(self.kubeconfig),
            );
        }
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.namespace,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn get_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&cluster.kubectl_ok(&all)).expect("kubectl JSON")
}

/// Whether `kubectl get ARGS` finds the object.
fn exists(cluster: &Cluster, args: &[&str]) -> bool {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend(["--ignore-not-found", "-o", "name"]);
    !cluster.kubectl_ok(&all).trim().is_empty()
}

fn can_i(cluster: &Cluster, sa: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let as_flag = format!("--as={sa}");
    all.push(&as_flag);
    let out = cluster.kubectl(&all);
    let answer = text(&out.stdout);
    match answer.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {all:?}: {other} {}", text(&out.stderr)),
    }
}

/// A kubeconfig for the same API server that authenticates with `token`.
fn token_kubeconfig(admin: &Path, token: &str, namespace: &str, dir: &Path) -> PathBuf {
    let admin: Value = serde_json::to_value(
        serde_yaml::from_str::<serde_yaml::Value>(&std::fs::read_to_string(admin).unwrap())
            .unwrap(),
    )
    .unwrap();
    let current = admin["current-context"].as_str().unwrap_or_default();
    let contexts = admin["contexts"].as_array().expect("contexts");
    let context = contexts
        .iter()
        .find(|c| c["name"] == current)
        .unwrap_or(&contexts[0]);
    let cluster_name = &context["context"]["cluster"];
    let cluster = admin["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|c| &c["name"] == cluster_name)
        .expect("the context's cluster");
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster["cluster"]}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "cluster", "user": "operator", "namespace": namespace}}],
        "current-context": "operator",
    });
    let path = dir.join("operator.kubeconfig");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

async fn service_account_token(client: &kube::Client, namespace: &str, sa: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        metadata: ObjectMeta::default(),
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(900),
            bound_object_ref: None,
        },
        status: None,
    };
    match api
        .create_subresource::<_, TokenRequest>("token", sa, &PostParams::default(), &request)
        .await
    {
        Ok(t) => match t.status.map(|s| s.token).filter(|t| !t.is_empty()) {
            Some(t) => t,
            None => legacy_token(client, namespace, sa).await,
        },
        Err(e) => {
            eprintln!("TokenRequest for {namespace}/{sa} refused ({e}); using its token Secret");
            legacy_token(client, namespace, sa).await
        }
    }
}

fn ca_bundle(cluster: &Cluster, kind: &str, name: &str) -> Option<String> {
    let obj = get_json(cluster, &["get", kind, name]);
    obj["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_upgrade_and_uninstall_on_the_cluster() {
    let started = Instant::now();
    let cluster = cluster();
    let kc = cluster.kubeconfig.as_path();
    let client = cluster.client().await;
    let release = Release {
        name: unique("statecar"),
        namespace: unique("sc-helm"),
        kubeconfig: kc,
    };
    let (rel, ns) = (release.name.as_str(), release.namespace.as_str());
    let prefix = format!("{rel}-{ns}");
    let (mwc, vwc, cr) = (
        format!("{prefix}-injector"),
        format!("{prefix}-validator"),
        format!("{prefix}-operator"),
    );

    // The webhooks see only namespaces labelled for this release, and there are none: in this
    // shared cluster nothing may be sent to them (their Service has no pods behind it).
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(
        &values,
        format!("webhook:\n  namespaceSelector:\n    matchLabels:\n      statecar.dev/helm-test: {rel}\n"),
    )
    .unwrap();
    let values = values.to_str().unwrap();

    // install
    let out = helm_ok(
        &[
            "install",
            rel,
            CHART,
            "-n",
            ns,
            "--create-namespace",
            "-f",
            values,
            "--timeout",
            "60s",
        ],
        Some(kc),
    );
    assert!(out.contains(&format!("NAME: {rel}")), "{out}");
    assert!(
        out.contains("STATUS: deployed") && out.contains("REVISION: 1"),
        "{out}"
    );
    assert!(
        out.contains("NOTES:") && out.contains("dapr.io/enabled"),
        "{out}"
    );

    let list = helm_ok(&["list", "-n", ns], Some(kc));
    let row = list
        .lines()
        .find(|l| l.starts_with(rel))
        .unwrap_or_else(|| panic!("{rel} not listed:\n{list}"));
    assert!(
        row.contains("deployed") && row.contains("statecar-0.1.0"),
        "{row}"
    );
    let listed: Value =
        serde_json::from_str(&helm_ok(&["list", "-n", ns, "-o", "json"], Some(kc))).unwrap();
    assert_eq!(listed[0]["name"], rel);
    assert_eq!(listed[0]["revision"], "1");
    assert_eq!(listed[0]["app_version"], workspace_version().as_str());

    // What it created.
    for (kind, name) in [
        ("deployment", "statecar-operator"),
        ("service", "statecar-operator"),
        ("service", "statecar-webhook"),
        ("serviceaccount", "statecar-operator"),
        ("role", "statecar-operator"),
        ("rolebinding", "statecar-operator"),
    ] {
        assert!(
            exists(cluster, &["-n", ns, kind, name]),
            "{kind}/{name} missing"
        );
    }
    for (kind, name) in [
        ("clusterrole", &cr),
        ("clusterrolebinding", &cr),
        ("mutatingwebhookconfiguration", &mwc),
        ("validatingwebhookconfiguration", &vwc),
    ] {
        assert!(exists(cluster, &[kind, name]), "{kind}/{name} missing");
    }
    // The PodDisruptionBudget is there exactly when the cluster serves policy/v1 (1.21+).
    let has_policy_v1 = cluster
        .kubectl_ok(&["api-versions"])
        .lines()
        .any(|l| l.trim() == "policy/v1");
    assert_eq!(
        exists(
            cluster,
            &["-n", ns, "poddisruptionbudgets.policy", "statecar-operator"]
        ),
        has_policy_v1
    );
    let deploy = get_json(
        cluster,
        &["-n", ns, "get", "deployment", "statecar-operator"],
    );
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert!(ca_bundle(cluster, "mutatingwebhookconfiguration", &mwc).is_none());

    // The chart's RBAC, as the API server sees it.
    let sa = format!("system:serviceaccount:{ns}:statecar-operator");
    for (allowed, args) in [
        (true, vec!["list", "components.dapr.io", "-A"]),
        (
            true,
            vec!["patch", "components.dapr.io", "--subresource=status", "-A"],
        ),
        (true, vec!["watch", "secrets", "-A"]),
        (true, vec!["list", "pods", "-A"]),
        (true, vec!["create", "tokenreviews.authentication.k8s.io"]),
        (
            true,
            vec!["create", "events.events.k8s.io", "-n", "default"],
        ),
        (
            true,
            vec!["patch", &format!("mutatingwebhookconfigurations/{mwc}")],
        ),
        (
            true,
            vec!["patch", &format!("validatingwebhookconfigurations/{vwc}")],
        ),
        (true, vec!["create", "secrets", "-n", ns]),
        (
            true,
            vec!["update", "secrets/statecar-webhook-tls", "-n", ns],
        ),
        (
            true,
            vec![
                "update",
                "leases.coordination.k8s.io/statecar-operator",
                "-n",
                ns,
            ],
        ),
        (
            false,
            vec!["patch", "mutatingwebhookconfigurations/someone-elses"],
        ),
        (false, vec!["create", "mutatingwebhookconfigurations"]),
        (
            false,
            vec!["delete", &format!("validatingwebhookconfigurations/{vwc}")],
        ),
        (false, vec!["create", "secrets", "-n", "default"]),
        (false, vec!["update", "secrets/another", "-n", ns]),
        (
            false,
            vec!["delete", "secrets/statecar-webhook-tls", "-n", ns],
        ),
        (
            false,
            vec!["update", "leases.coordination.k8s.io/another", "-n", ns],
        ),
        (
            true,
            vec!["patch", "customresourcedefinitions/components.dapr.io"],
        ),
        (
            true,
            vec!["get", "customresourcedefinitions/components.dapr.io"],
        ),
        (false, vec!["create", "customresourcedefinitions"]),
        (
            false,
            vec!["patch", "customresourcedefinitions/someone-elses"],
        ),
        (
            false,
            vec!["delete", "customresourcedefinitions/components.dapr.io"],
        ),
        (false, vec!["update", "components.dapr.io", "-A"]),
        (false, vec!["delete", "pods", "-A"]),
        (false, vec!["list", "nodes"]),
    ] {
        assert_eq!(can_i(cluster, &sa, &args), allowed, "can-i {args:?}");
    }

    // The real operator, as the chart runs it (its args, its service account's token), here on
    // loopback ports: the chart's RBAC is enough for it to issue its certificate and set the
    // caBundle of both webhook configurations. A Lease held by someone else keeps it from
    // leading, so it writes no status to other tests' Components.
    hold_lease(&client, ns, "statecar-operator", "someone-else").await;
    let token = service_account_token(&client, ns, "statecar-operator").await;
    let sa_kubeconfig = token_kubeconfig(kc, &token, ns, dir.path());
    let manifest = helm_ok(&["get", "manifest", rel, "-n", ns], Some(kc));
    let docs = parse_docs(&manifest);
    let webhook_listen = format!("--webhook-listen=127.0.0.1:{}", free_port());
    let mut extra_args: Vec<String> = operator_args(&docs)
        .into_iter()
        .filter(|a| {
            ![
                "--log-level=",
                "--lease-name=",
                "--config-listen=",
                "--probe-listen=",
                "--webhook-listen=",
            ]
            .iter()
            .any(|p| a.starts_with(p))
        })
        .collect();
    extra_args.push(webhook_listen);
    let mut operator = Operator::start(
        &Cluster {
            kubeconfig: sa_kubeconfig,
        },
        OperatorOptions {
            webhooks: true,
            extra_args,
            ..OperatorOptions::elected(ns, "statecar-operator")
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ca_bundle(cluster, "mutatingwebhookconfiguration", &mwc).is_none()
        || ca_bundle(cluster, "validatingwebhookconfiguration", &vwc).is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the operator did not set both caBundles:\n{}",
            operator.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secret = get_json(
        cluster,
        &["-n", ns, "get", "secret", "statecar-webhook-tls"],
    );
    for key in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        assert!(
            secret["data"][key].is_string(),
            "{key} missing from the Secret"
        );
    }
    let bundle = ca_bundle(cluster, "mutatingwebhookconfiguration", &mwc);
    assert_eq!(bundle.as_deref(), secret["data"]["ca.crt"].as_str());
    let logs = operator.logs();
    assert!(
        !logs.contains("forbidden"),
        "the operator was refused something:\n{logs}"
    );
    // It kept the CRD current (the chart's rule lets it patch the CRD the chart created).
    assert!(
        logs.contains("CustomResourceDefinition components.dapr.io")
            && !logs.contains("cannot keep CustomResourceDefinition"),
        "{logs}"
    );
    operator.kill();

    // upgrade: a changed value reaches the Deployment, and the caBundle the operator set (the
    // chart never sets one) survives.
    let out = helm_ok(
        &[
            "upgrade",
            rel,
            CHART,
            "-n",
            ns,
            "-f",
            values,
            "--set",
            "operator.replicas=3,logLevel=debug",
            "--timeout",
            "60s",
        ],
        Some(kc),
    );
    assert!(
        out.contains(&format!("Release \"{rel}\" has been upgraded")),
        "{out}"
    );
    assert!(out.contains("REVISION: 2"), "{out}");
    let deploy = get_json(
        cluster,
        &["-n", ns, "get", "deployment", "statecar-operator"],
    );
    assert_eq!(deploy["spec"]["replicas"], 3);
    let args = deploy["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--log-level=debug"), "{args}");
    assert_eq!(
        ca_bundle(cluster, "mutatingwebhookconfiguration", &mwc),
        bundle
    );
    assert!(ca_bundle(cluster, "validatingwebhookconfiguration", &vwc).is_some());
    let listed: Value =
        serde_json::from_str(&helm_ok(&["list", "-n", ns, "-o", "json"], Some(kc))).unwrap();
    assert_eq!(listed[0]["revision"], "2");

    // uninstall: everything the chart created is gone, cluster-scoped objects included. The
    // CRD stays (Helm never deletes a chart's crds/), and so do the Components.
    let out = helm_ok(&["uninstall", rel, "-n", ns], Some(kc));
    assert!(
        out.contains(&format!("release \"{rel}\" uninstalled")),
        "{out}"
    );
    for (kind, name) in [
        ("clusterrole", &cr),
        ("clusterrolebinding", &cr),
        ("mutatingwebhookconfiguration", &mwc),
        ("validatingwebhookconfiguration", &vwc),
    ] {
        assert!(!exists(cluster, &[kind, name]), "{kind}/{name} still there");
    }
    for (kind, name) in [
        ("deployment", "statecar-operator"),
        ("service", "statecar-operator"),
        ("service", "statecar-webhook"),
        ("serviceaccount", "statecar-operator"),
        ("role", "statecar-operator"),
        ("rolebinding", "statecar-operator"),
        ("poddisruptionbudgets.policy", "statecar-operator"),
    ] {
        assert!(
            !exists(cluster, &["-n", ns, kind, name]),
            "{kind}/{name} still there"
        );
    }
    assert!(exists(cluster, &["crd", "components.dapr.io"]));
    let list = helm_ok(&["list", "-n", ns], Some(kc));
    assert!(!list.contains(rel), "{list}");
    let err = helm(&["uninstall", rel, "-n", ns], Some(kc));
    assert_eq!(err.status.code(), Some(1));
    assert!(
        text(&err.stderr).contains("not found"),
        "{}",
        text(&err.stderr)
    );

    eprintln!(
        "install, operator run, upgrade and uninstall took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
