//! The JSON Patch (RFC 6902) that adds the sidecar to a pod.
//!
//! Only `add` operations are produced. Existing maps and lists (labels, annotations, volumes,
//! a container's env) are never replaced: entries are added one by one, and a map or list is
//! added whole only when the pod has none. Keys are escaped as JSON Pointer requires
//! (`dapr.io/app-id` → `dapr.io~1app-id`).

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, ServiceAccountTokenProjection, TCPSocketAction, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::annotations::{self as ann, Annotations};
use super::app_id::AppId;
use super::{CONTAINER_NAME, InjectError, InjectorConfig, SidecarResources};

/// The sidecar's API port (`--dapr-http-port`), as in Dapr.
pub const HTTP_PORT: i32 = 3500;
/// The health port (`--dapr-public-port`), reachable by the kubelet; not declared as a
/// container port, as in Dapr.
pub const PUBLIC_PORT: i32 = 3501;
/// The gRPC API's port (`--dapr-grpc-port`) unless `dapr.io/grpc-port` says otherwise; the
/// Dapr SDKs find it through DAPR_GRPC_PORT.
pub const GRPC_PORT: i32 = 50001;

fn grpc_port(annotations: Annotations<'_>) -> i32 {
    match annotations.int_in(ann::GRPC_PORT, 1..=65535) {
        Some(p) if [HTTP_PORT, PUBLIC_PORT].contains(&(p as i32)) => {
            tracing::warn!(
                annotation = ann::GRPC_PORT,
                value = p,
                "ignoring the annotation: the port is taken by the sidecar's HTTP or health port"
            );
            GRPC_PORT
        }
        Some(p) => p as i32,
        None => GRPC_PORT,
    }
}

/// The projected service-account token the sidecar presents to the operator.
pub const TOKEN_VOLUME: &str = "statecar-token";
pub const TOKEN_DIR: &str = "/var/run/secrets/statecar.dev/serviceaccount";
pub const TOKEN_FILE: &str = "/var/run/secrets/statecar.dev/serviceaccount/token";
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;

pub const LABEL_INJECTED: &str = "dapr.io/sidecar-injected";
pub const LABEL_APP_ID: &str = "dapr.io/app-id";

/// Probe timings: initial delay, timeout, period, failure threshold (Dapr 1.18's defaults).
const READINESS: ProbeTiming = ProbeTiming {
    keys: [
        ann::READINESS_DELAY,
        ann::READINESS_TIMEOUT,
        ann::READINESS_PERIOD,
        ann::READINESS_THRESHOLD,
    ],
    defaults: [1, 1, 1, 5],
};
const LIVENESS: ProbeTiming = ProbeTiming {
    keys: [
        ann::LIVENESS_DELAY,
        ann::LIVENESS_TIMEOUT,
        ann::LIVENESS_PERIOD,
        ann::LIVENESS_THRESHOLD,
    ],
    defaults: [180, 3, 10, 5],
};

struct ProbeTiming {
    keys: [&'static str; 4],
    defaults: [i32; 4],
}

/// The patch for `pod` (which has no `daprd` yet).
pub fn build(
    pod: &Pod,
    app_id: &AppId,
    annotations: Annotations<'_>,
    cfg: &InjectorConfig,
) -> Result<Patch, InjectError> {
    let spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    let native = annotations
        .flag(ann::NATIVE_SIDECAR)
        .unwrap_or(cfg.native_sidecar_default);
    let sidecar = serde_json::to_value(sidecar(&app_id.id, annotations, cfg, native)?)?;
    let mut ops = Ops::default();

    if spec.containers.is_empty() {
        ops.add(&["spec", "containers"], json!([]));
    }
    match &spec.volumes {
        None => ops.add(
            &["spec", "volumes"],
            Value::Array(vec![serde_json::to_value(token_volume())?]),
        ),
        Some(vols) if vols.iter().any(|v| v.name == TOKEN_VOLUME) => {}
        Some(_) => ops.add(
            &["spec", "volumes", "-"],
            serde_json::to_value(token_volume())?,
        ),
    }
    if native {
        match &spec.init_containers {
            None => ops.add(&["spec", "initContainers"], Value::Array(vec![sidecar])),
            Some(_) => ops.add(&["spec", "initContainers", "-"], sidecar),
        }
    } else {
        ops.add(&["spec", "containers", "-"], sidecar);
    }
    ops.merge_map(
        "labels",
        pod.metadata.labels.as_ref(),
        &[(LABEL_INJECTED, "true"), (LABEL_APP_ID, &app_id.id)],
    );
    ops.merge_map(
        "annotations",
        pod.metadata.annotations.as_ref(),
        &[(ann::APP_ID, &app_id.id)],
    );
    let app_env = [
        env_value("DAPR_HTTP_PORT", &HTTP_PORT.to_string()),
        env_value("DAPR_GRPC_PORT", &grpc_port(annotations).to_string()),
    ];
    for (i, container) in spec.containers.iter().enumerate() {
        let index = i.to_string();
        let path = ["spec", "containers", index.as_str(), "env"];
        match &container.env {
            None => ops.add(&path, serde_json::to_value(&app_env)?),
            Some(existing) => {
                for var in &app_env {
                    if !existing.iter().any(|e| e.name == var.name) {
                        let mut append = path.to_vec();
                        append.push("-");
                        ops.add(&append, serde_json::to_value(var)?);
                    }
                }
            }
        }
    }
    Ok(Patch(ops.0))
}

#[derive(Default)]
struct Ops(Vec<PatchOperation>);

impl Ops {
    fn add(&mut self, tokens: &[&str], value: Value) {
        self.0.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(tokens.iter().copied()),
            value,
        }));
    }

    /// Sets `entries` in `/metadata/<field>`: the whole map when the pod has none, else each
    /// key that does not already hold the value.
    fn merge_map(
        &mut self,
        field: &str,
        existing: Option<&BTreeMap<String, String>>,
        entries: &[(&str, &str)],
    ) {
        match existing {
            None => {
                let map: serde_json::Map<String, Value> = entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v)))
                    .collect();
                self.add(&["metadata", field], Value::Object(map));
            }
            Some(map) => {
                for (k, v) in entries {
                    if map.get(*k).map(String::as_str) != Some(*v) {
                        self.add(&["metadata", field, k], json!(v));
                    }
                }
            }
        }
    }
}

/// The `daprd` container.
fn sidecar(
    app_id: &str,
    annotations: Annotations<'_>,
    cfg: &InjectorConfig,
    native: bool,
) -> Result<Container, InjectError> {
    let image = annotations
        .non_empty(ann::SIDECAR_IMAGE)
        .unwrap_or(&cfg.sidecar_image);
    let seccomp = ann::seccomp_type(annotations.get(ann::SECCOMP_PROFILE_TYPE))?;
    Ok(Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(image.to_string()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        args: Some(args(app_id, annotations, cfg)?),
        env: Some(env(annotations, cfg)),
        ports: Some(vec![
            port("dapr-http", HTTP_PORT),
            port("dapr-grpc", grpc_port(annotations)),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/v1.0/healthz".to_string()),
                port: IntOrString::Int(PUBLIC_PORT),
                ..Default::default()
            }),
            ..timing(&READINESS, annotations)
        }),
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(PUBLIC_PORT),
                host: None,
            }),
            ..timing(&LIVENESS, annotations)
        }),
        resources: requirements(&resources(annotations, cfg)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: seccomp.to_string(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.to_string(),
            mount_path: TOKEN_DIR.to_string(),
            read_only: Some(true),
            ..Default::default()
        }]),
        // A sidecar that exits at startup shows its last log lines in the pod's status.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        restart_policy: native.then(|| "Always".to_string()),
        ..Default::default()
    })
}

/// statecar's command line in Kubernetes mode (no `command`: the image's entrypoint runs).
fn args(
    app_id: &str,
    annotations: Annotations<'_>,
    cfg: &InjectorConfig,
) -> Result<Vec<String>, InjectError> {
    let log_level = match annotations.non_empty(ann::LOG_LEVEL) {
        Some(v) => ann::log_level(v)?,
        None => "info",
    };
    let mut args: Vec<String> = [
        "--mode",
        "kubernetes",
        "--app-id",
        app_id,
        "--dapr-http-port",
        &HTTP_PORT.to_string(),
        "--dapr-public-port",
        &PUBLIC_PORT.to_string(),
        "--dapr-grpc-port",
        &grpc_port(annotations).to_string(),
        "--control-plane-address",
        &cfg.control_plane_address,
        "--token-file",
        TOKEN_FILE,
        "--log-level",
        log_level,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut flag = |name: &str, value: Option<String>| {
        args.push(name.to_string());
        args.extend(value);
    };
    if annotations.flag(ann::LOG_AS_JSON) == Some(true) {
        flag("--log-as-json", None);
    }
    if let Some(port) = annotations.int(ann::APP_PORT).filter(|p| *p > 0) {
        if port <= i64::from(u16::MAX) {
            flag("--app-port", Some(port.to_string()));
        } else {
            tracing::warn!(
                annotation = ann::APP_PORT,
                port,
                "ignoring the annotation: not a port"
            );
        }
    }
    if let Some(v) = annotations.get(ann::LISTEN_ADDRESSES)
        && let Some(list) = ann::listen_addresses(v)?
    {
        flag("--dapr-listen-addresses", Some(list));
    }
    if let Some(secs) = annotations
        .int(ann::GRACEFUL_SHUTDOWN_SECONDS)
        .filter(|s| *s >= 0)
    {
        flag("--dapr-graceful-shutdown-seconds", Some(secs.to_string()));
    }
    if let Some(config) = annotations.non_empty(ann::CONFIG) {
        flag("--config", Some(config.to_string()));
    }
    if let Some(size) = annotations.non_empty(ann::MAX_BODY_SIZE) {
        flag("--max-body-size", Some(ann::body_size(size)?.to_string()));
    }
    if let Some(mb) = annotations
        .int(ann::HTTP_MAX_REQUEST_SIZE)
        .filter(|mb| *mb > 0)
    {
        flag("--dapr-http-max-request-size", Some(mb.to_string()));
    }
    Ok(args)
}

/// The sidecar's environment: the pod's identity, the API token, then `dapr.io/env`.
fn env(annotations: Annotations<'_>, cfg: &InjectorConfig) -> Vec<EnvVar> {
    let mut env = vec![
        env_field("NAMESPACE", "metadata.namespace"),
        env_field("POD_NAME", "metadata.name"),
    ];
    if let Some(pem) = &cfg.control_plane_trust_anchors {
        env.push(env_value("STATECAR_TRUST_ANCHORS", pem));
    }
    if let Some(secret) = annotations.non_empty(ann::API_TOKEN_SECRET) {
        env.push(EnvVar {
            name: "DAPR_API_TOKEN".to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.to_string(),
                    key: "token".to_string(),
                    optional: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    for (name, value) in annotations
        .get(ann::ENV)
        .map(ann::parse_env)
        .unwrap_or_default()
    {
        if env.iter().any(|e| e.name == name) {
            tracing::warn!(
                annotation = ann::ENV,
                name,
                "ignoring a variable the injector sets itself"
            );
            continue;
        }
        env.push(env_value(&name, &value));
    }
    env
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".to_string()),
                field_path: path.to_string(),
            }),
            ..Default::default()
        }),
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: number,
        protocol: Some("TCP".to_string()),
        ..Default::default()
    }
}

fn timing(t: &ProbeTiming, annotations: Annotations<'_>) -> Probe {
    let [delay, timeout, period, threshold] = std::array::from_fn(|i| {
        annotations
            .int_in(t.keys[i], 0..=i64::from(i32::MAX))
            .and_then(|n| i32::try_from(n).ok())
            .unwrap_or(t.defaults[i])
    });
    Probe {
        initial_delay_seconds: Some(delay),
        timeout_seconds: Some(timeout),
        period_seconds: Some(period),
        failure_threshold: Some(threshold),
        ..Default::default()
    }
}

/// The four resource annotations when at least one is set and all are valid; otherwise the
/// configured defaults.
fn resources(annotations: Annotations<'_>, cfg: &InjectorConfig) -> SidecarResources {
    let get = |key| annotations.non_empty(key).map(str::to_string);
    let requested = SidecarResources {
        cpu_request: get(ann::CPU_REQUEST),
        cpu_limit: get(ann::CPU_LIMIT),
        memory_request: get(ann::MEMORY_REQUEST),
        memory_limit: get(ann::MEMORY_LIMIT),
    };
    if requested.is_empty() {
        return cfg.default_resources.clone();
    }
    match requested.validate() {
        Ok(()) => requested,
        Err(why) => {
            tracing::warn!(
                "ignoring the dapr.io/sidecar-{{cpu,memory}}-{{request,limit}} annotations \
                 ({why}); using the default sidecar resources"
            );
            cfg.default_resources.clone()
        }
    }
}

fn requirements(r: &SidecarResources) -> Option<ResourceRequirements> {
    let map = |cpu: &Option<String>, memory: &Option<String>| {
        let m: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), Quantity(v.clone()?))))
            .collect();
        (!m.is_empty()).then_some(m)
    };
    let requests = map(&r.cpu_request, &r.memory_request);
    let limits = map(&r.cpu_limit, &r.memory_limit);
    if requests.is_none() && limits.is_none() {
        return None;
    }
    Some(ResourceRequirements {
        requests,
        limits,
        ..Default::default()
    })
}

fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.to_string(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(420),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    path: "token".to_string(),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    audience: None,
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    }
}
