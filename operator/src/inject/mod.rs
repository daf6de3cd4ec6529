//! Sidecar injection: the JSON Patch that adds statecar to an annotated pod.
//!
//! [`decide`] is a pure function of the pod, its namespace and the [`InjectorConfig`]: it says
//! whether to inject, and if so returns the RFC 6902 patch. The webhook server (and the
//! watchdog) call it; nothing here talks to the API server.
//!
//! What the patch adds follows Dapr's injector (the `dapr.io/*` annotations, a container named
//! `daprd`, ports 3500/50001, health on 3501), with these differences:
//! - an app id is derived for controller-created pods (see [`app_id`]) instead of denying them,
//!   and written back as the `dapr.io/app-id` annotation, which the operator checks;
//! - the sidecar gets the cluster's default resources when the pod sets none, and a
//!   restricted-PSS securityContext;
//! - the sidecar authenticates to the operator with a projected service-account token
//!   (volume `statecar-token`) rather than through Sentry.

use k8s_openapi::api::core::v1::Pod;

pub mod annotations;
pub mod app_id;
pub mod patch;
pub mod quantity;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_annotations;
#[cfg(test)]
mod tests_pod;

use annotations::Annotations;

/// Name of the injected container; a pod that already has one is left alone.
pub const CONTAINER_NAME: &str = "daprd";

/// How the injector builds sidecars.
#[derive(Debug, Clone)]
pub struct InjectorConfig {
    /// The sidecar image; `dapr.io/sidecar-image` overrides it per pod.
    pub sidecar_image: String,
    /// `imagePullPolicy` of the sidecar, e.g. `IfNotPresent`; unset leaves the cluster default.
    pub image_pull_policy: Option<String>,
    /// The operator's config stream as sidecars reach it, e.g.
    /// `statecar-operator.statecar-system.svc:6500`.
    pub control_plane_address: String,
    /// PEM CA bundle the sidecar verifies an `https://` control-plane address with; given to it
    /// in `STATECAR_TRUST_ANCHORS`.
    pub control_plane_trust_anchors: Option<String>,
    /// The operator's own namespace; pods there are never injected.
    pub operator_namespace: String,
    /// Sidecar resources when the pod's annotations set none (or set an invalid one).
    pub default_resources: SidecarResources,
    /// Whether sidecars are native (an initContainer with `restartPolicy: Always`) unless
    /// `dapr.io/enable-native-sidecar` says otherwise.
    pub native_sidecar_default: bool,
}

/// CPU and memory requests and limits of the sidecar, as Kubernetes quantities.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct SidecarResources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

impl SidecarResources {
    /// No value set.
    pub fn is_empty(&self) -> bool {
        self.cpu_request.is_none()
            && self.cpu_limit.is_none()
            && self.memory_request.is_none()
            && self.memory_limit.is_none()
    }

    /// Checks what the API server would: every value is a non-negative quantity, and a request
    /// is not above its limit. The error names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("cpu request", &self.cpu_request),
            ("cpu limit", &self.cpu_limit),
            ("memory request", &self.memory_request),
            ("memory limit", &self.memory_limit),
        ];
        let mut values = [None; 4];
        for (slot, (what, value)) in values.iter_mut().zip(fields) {
            if let Some(v) = value {
                let n = quantity::parse(v).map_err(|e| format!("{what}: {e}"))?;
                if n < 0.0 {
                    return Err(format!("{what}: {v:?} is negative"));
                }
                *slot = Some(n);
            }
        }
        for (what, request, limit) in [
            ("cpu", values[0], values[1]),
            ("memory", values[2], values[3]),
        ] {
            if let (Some(r), Some(l)) = (request, limit)
                && r > l * (1.0 + 1e-9)
            {
                return Err(format!("the {what} request is above the {what} limit"));
            }
        }
        Ok(())
    }
}

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Admit the pod with this patch.
    Inject {
        patch: json_patch::Patch,
        app_id: String,
        /// `dapr.io/*` annotation keys on the pod that statecar does not act on (sorted).
        unsupported: Vec<String>,
    },
    /// Admit the pod unchanged.
    Skip(SkipReason),
    /// Refuse the pod; the message says why and what to change.
    Deny(String),
}

/// Why a pod is admitted without a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// `dapr.io/enabled` is absent or not truthy.
    NotEnabled,
    /// A container or initContainer is already named `daprd`.
    AlreadyInjected,
    /// The pod is in the operator's namespace.
    OperatorNamespace,
}

impl SkipReason {
    /// The metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::NotEnabled => "not_enabled",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::OperatorNamespace => "operator_namespace",
        }
    }
}

/// Why a patch cannot be built; becomes [`Outcome::Deny`].
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{0}")]
    InvalidAppId(String),
    #[error("annotation {key} is {value:?}: {why}")]
    Annotation {
        key: &'static str,
        value: String,
        why: String,
    },
    #[error("the pod has no spec")]
    NoSpec,
    #[error("building the sidecar: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl InjectError {
    pub fn annotation(key: &'static str, value: &str, why: &str) -> Self {
        InjectError::Annotation {
            key,
            value: value.to_string(),
            why: why.to_string(),
        }
    }
}

/// Decides whether to inject the sidecar into `pod`, admitted in `namespace` (the
/// AdmissionRequest's namespace; pods often have no `metadata.namespace` at admission).
pub fn decide(pod: &Pod, namespace: &str, cfg: &InjectorConfig) -> Outcome {
    let ann = Annotations::new(pod.metadata.annotations.as_ref());
    if !ann.flag(annotations::ENABLED).unwrap_or(false) {
        return Outcome::Skip(SkipReason::NotEnabled);
    }
    let namespace = match (namespace, pod.metadata.namespace.as_deref()) {
        ("", Some(ns)) => ns,
        (ns, _) => ns,
    };
    if namespace == cfg.operator_namespace {
        return Outcome::Skip(SkipReason::OperatorNamespace);
    }
    if has_sidecar(pod) {
        return Outcome::Skip(SkipReason::AlreadyInjected);
    }
    let app_id = match app_id::derive(pod, ann) {
        Ok(id) => id,
        Err(e) => return Outcome::Deny(e.to_string()),
    };
    match patch::build(pod, &app_id, ann, cfg) {
        Ok(patch) => Outcome::Inject {
            patch,
            app_id: app_id.id,
            unsupported: ann.unsupported(),
        },
        Err(e) => Outcome::Deny(e.to_string()),
    }
}

/// Whether a container or initContainer is named `daprd`.
pub fn has_sidecar(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == CONTAINER_NAME)
}
