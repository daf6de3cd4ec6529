//! The webhook and injector flags of `statecar-operator`, and what they turn into.

use std::net::SocketAddr;
use std::time::Duration;

use crate::certs::CertSettings;
use crate::inject::{InjectorConfig, SidecarResources};

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Admission webhooks and sidecar injection")]
pub struct WebhookArgs {
    /// Do not serve the admission webhooks (no injection, no Component validation).
    #[arg(long)]
    pub disable_webhooks: bool,

    /// Where the HTTPS admission webhooks (/mutate, /validate) are served.
    #[arg(long, default_value = "0.0.0.0:9443", env = "STATECAR_WEBHOOK_LISTEN")]
    pub webhook_listen: SocketAddr,

    /// Service the API server reaches the webhooks through; the serving certificate is issued
    /// for <service>.<namespace>.svc.
    #[arg(long, default_value = "statecar-webhook")]
    pub webhook_service: String,

    /// Secret (in the operator's namespace) that holds the webhook CA and serving certificate.
    /// The operator creates and rotates it; every replica serves what it holds.
    #[arg(long, default_value = "statecar-webhook-tls")]
    pub webhook_secret: String,

    /// Lifetime of a serving certificate (renewed when a third of it is left), e.g. 90d, 12h.
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    pub webhook_cert_validity: Duration,

    /// How often certificates and caBundles are checked.
    #[arg(long, default_value = "1m", value_parser = parse_duration, hide = true)]
    pub webhook_cert_check_every: Duration,

    /// MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(long, default_value = "statecar-injector")]
    pub mutating_webhook_name: String,

    /// ValidatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(long, default_value = "statecar-validator")]
    pub validating_webhook_name: String,

    /// Register both webhook configurations with `url: https://HOST:PORT/...` (for an operator
    /// running outside the cluster) instead of relying on the chart's Service reference. HOST is
    /// added to the serving certificate.
    #[arg(long, value_name = "HOST:PORT")]
    pub register_webhooks_url: Option<String>,

    /// With --register-webhooks-url: only namespaces with this label (KEY=VALUE) are seen by the
    /// webhooks. Default: all but the operator's namespace and kube-system.
    #[arg(long, value_name = "KEY=VALUE")]
    pub webhook_namespace_selector: Option<String>,

    /// With --register-webhooks-url: failurePolicy of the injector (Ignore admits pods without
    /// the sidecar while the operator is down; Fail refuses them).
    #[arg(long, default_value = "Ignore", value_parser = ["Ignore", "Fail"])]
    pub mutate_failure_policy: String,

    /// With --register-webhooks-url: failurePolicy of the Component validator.
    #[arg(long, default_value = "Fail", value_parser = ["Ignore", "Fail"])]
    pub validate_failure_policy: String,

    /// Serve the sidecars' config stream (--config-listen) over plain HTTP instead of HTTPS
    /// with the operator's own certificate. Resolved secrets then cross the network in clear.
    #[arg(long)]
    pub config_plaintext: bool,

    /// More names (DNS or IP) for the serving certificate, e.g. the host an out-of-cluster
    /// operator is reached on (repeatable).
    #[arg(long = "tls-san", value_name = "NAME")]
    pub tls_sans: Vec<String>,

    /// Image of the injected sidecar (`dapr.io/sidecar-image` overrides it per pod).
    #[arg(long, env = "STATECAR_SIDECAR_IMAGE", default_value = concat!("ghcr.io/statecar/statecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,

    /// imagePullPolicy of the injected sidecar.
    #[arg(long, default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub sidecar_image_pull_policy: String,

    /// Where injected sidecars reach this operator's config stream. Default:
    /// <operator-service>.<namespace>.svc:<port of --config-listen>.
    #[arg(long, value_name = "HOST:PORT")]
    pub sidecar_control_plane_address: Option<String>,

    /// Service in front of the operator's config stream (used for the default above).
    #[arg(long, default_value = "statecar-operator")]
    pub operator_service: String,

    /// Default CPU request of an injected sidecar (`dapr.io/sidecar-cpu-request` overrides).
    #[arg(long, default_value = "10m")]
    pub sidecar_cpu_request: String,

    /// Default CPU limit of an injected sidecar; empty for none.
    #[arg(long, default_value = "")]
    pub sidecar_cpu_limit: String,

    /// Default memory request of an injected sidecar.
    #[arg(long, default_value = "16Mi")]
    pub sidecar_memory_request: String,

    /// Default memory limit of an injected sidecar; empty for none.
    #[arg(long, default_value = "128Mi")]
    pub sidecar_memory_limit: String,

    /// Inject the sidecar as a native sidecar (an initContainer with restartPolicy: Always,
    /// Kubernetes 1.29+) unless a pod's `dapr.io/enable-native-sidecar` says otherwise.
    #[arg(long)]
    pub native_sidecar: bool,
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

impl WebhookArgs {
    pub fn injector_config(&self, namespace: &str, config_port: u16) -> InjectorConfig {
        InjectorConfig {
            sidecar_image: self.sidecar_image.clone(),
            image_pull_policy: Some(self.sidecar_image_pull_policy.clone()),
            control_plane_address: {
                let address = self
                    .sidecar_control_plane_address
                    .clone()
                    .unwrap_or_else(|| {
                        format!("{}.{namespace}.svc:{config_port}", self.operator_service)
                    });
                if self.config_plaintext || address.contains("://") {
                    address
                } else {
                    format!("https://{address}")
                }
            },
            control_plane_trust_anchors: None,
            operator_namespace: namespace.to_string(),
            default_resources: SidecarResources {
                cpu_request: non_empty(&self.sidecar_cpu_request),
                cpu_limit: non_empty(&self.sidecar_cpu_limit),
                memory_request: non_empty(&self.sidecar_memory_request),
                memory_limit: non_empty(&self.sidecar_memory_limit),
            },
            native_sidecar_default: self.native_sidecar,
        }
    }

    /// The host of --register-webhooks-url, if any.
    pub fn url_host(&self) -> Option<String> {
        let hp = self.register_webhooks_url.as_deref()?;
        let host = match hp.rsplit_once(':') {
            Some((h, _)) => h,
            None => hp,
        };
        Some(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        )
    }

    pub fn cert_settings(&self, namespace: &str) -> CertSettings {
        let svc = &self.webhook_service;
        let mut dns_names = vec![
            format!("{svc}.{namespace}.svc"),
            format!("{svc}.{namespace}.svc.cluster.local"),
        ];
        if !self.config_plaintext {
            let op = &self.operator_service;
            dns_names.push(format!("{op}.{namespace}.svc"));
            dns_names.push(format!("{op}.{namespace}.svc.cluster.local"));
        }
        if let Some(host) = self.url_host() {
            dns_names.push(host);
        }
        for san in &self.tls_sans {
            if !dns_names.contains(san) {
                dns_names.push(san.clone());
            }
        }
        CertSettings {
            namespace: namespace.to_string(),
            secret_name: self.webhook_secret.clone(),
            dns_names,
            leaf_validity: self.webhook_cert_validity,
            ca_validity: Duration::from_secs(10 * 365 * 24 * 3600)
                .max(self.webhook_cert_validity * 4),
            mutating_webhooks: vec![self.mutating_webhook_name.clone()],
            validating_webhooks: vec![self.validating_webhook_name.clone()],
            check_every: self
                .webhook_cert_check_every
                .min(self.webhook_cert_validity / 6),
        }
    }
}

/// `90d`, `12h`, `30m`, `45s`, `500ms`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90d, 12h, 30s"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("invalid duration {s:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86400)));
        assert_eq!(parse_duration("6s"), Ok(Duration::from_secs(6)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn url_host() {
        let mut a = <WebhookArgsParser as clap::Parser>::parse_from(["x"]).args;
        assert_eq!(a.url_host(), None);
        a.register_webhooks_url = Some("127.0.0.1:9443".into());
        assert_eq!(a.url_host().as_deref(), Some("127.0.0.1"));
        a.register_webhooks_url = Some("[::1]:9443".into());
        assert_eq!(a.url_host().as_deref(), Some("::1"));
        let s = a.cert_settings("ops");
        assert!(
            s.dns_names
                .contains(&"statecar-webhook.ops.svc".to_string())
        );
        let i = a.injector_config("ops", 6500);
        assert_eq!(
            i.control_plane_address,
            "https://statecar-operator.ops.svc:6500"
        );
        assert!(
            s.dns_names
                .contains(&"statecar-operator.ops.svc".to_string())
        );
        a.config_plaintext = true;
        let i = a.injector_config("ops", 6500);
        assert_eq!(i.control_plane_address, "statecar-operator.ops.svc:6500");
        assert_eq!(i.default_resources.cpu_limit, None);
    }

    #[derive(clap::Parser)]
    struct WebhookArgsParser {
        #[command(flatten)]
        args: WebhookArgs,
    }
}
