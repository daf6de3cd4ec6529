//! Prometheus text metrics, kept as plain atomics.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    pub connected_sidecars: AtomicI64,
    pub config_pushes: AtomicU64,
    /// Sum of (push time - time the change was seen), in microseconds.
    pub push_latency_us: AtomicU64,
    pub leader: AtomicBool,
    pub webhook: WebhookMetrics,
}

/// Admission webhook counters.
#[derive(Default)]
pub struct WebhookMetrics {
    pub mutate_requests: AtomicU64,
    pub validate_requests: AtomicU64,
    pub injected: AtomicU64,
    /// Indexed like [`SKIP_REASONS`].
    pub skipped: [AtomicU64; SKIP_REASONS.len()],
    pub mutate_denied: AtomicU64,
    pub validate_denied: AtomicU64,
    /// Bodies that were not an AdmissionReview, and patches that could not be built.
    pub errors: AtomicU64,
    pub latency: Histogram,
    /// Annotated pods found without the sidecar (the webhook was bypassed or unreachable).
    pub pods_without_sidecar: AtomicU64,
}

/// Why a pod was admitted unchanged; labels of `statecar_webhook_skipped_total`.
pub const SKIP_REASONS: [&str; 4] = [
    "not_enabled",
    "already_injected",
    "operator_namespace",
    "not_a_pod_create",
];

/// A counter with one label, one line per value.
fn labelled<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, &'a AtomicU64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (v, c) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{v}\"}} {}", c.load(Relaxed));
    }
}

/// Upper bounds (seconds) of the admission latency buckets.
const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

/// A Prometheus histogram of seconds, in atomics.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        for (bound, c) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *bound {
                c.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, c) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", c.load(Relaxed));
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {:.6}\n{name}_count {count}",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: String) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        metric(
            &mut out,
            "statecar_operator_reconciles_total",
            "counter",
            "Component reconciliations.",
            self.reconciles.load(Relaxed).to_string(),
        );
        metric(
            &mut out,
            "statecar_operator_reconcile_errors_total",
            "counter",
            "Component reconciliations that failed and were retried.",
            self.reconcile_errors.load(Relaxed).to_string(),
        );
        metric(
            &mut out,
            "statecar_operator_connected_sidecars",
            "gauge",
            "Sidecars with an open config stream to this replica.",
            self.connected_sidecars.load(Relaxed).to_string(),
        );
        let pushes = self.config_pushes.load(Relaxed);
        metric(
            &mut out,
            "statecar_operator_config_pushes_total",
            "counter",
            "Config snapshots sent to sidecars.",
            pushes.to_string(),
        );
        metric(
            &mut out,
            "statecar_operator_config_push_latency_seconds_sum",
            "counter",
            "Total seconds from a watched change to the snapshot being sent (divide by pushes).",
            format!("{:.6}", self.push_latency_us.load(Relaxed) as f64 / 1e6),
        );
        metric(
            &mut out,
            "statecar_operator_leader",
            "gauge",
            "1 when this replica holds the lease and writes status.",
            u8::from(self.leader.load(Relaxed)).to_string(),
        );
        let w = &self.webhook;
        labelled(
            &mut out,
            "statecar_webhook_requests_total",
            "AdmissionReviews received.",
            "webhook",
            [
                ("mutate", &w.mutate_requests),
                ("validate", &w.validate_requests),
            ],
        );
        metric(
            &mut out,
            "statecar_webhook_injected_total",
            "counter",
            "Pods the sidecar was injected into.",
            w.injected.load(Relaxed).to_string(),
        );
        labelled(
            &mut out,
            "statecar_webhook_skipped_total",
            "Pods admitted unchanged, by reason.",
            "reason",
            SKIP_REASONS.iter().copied().zip(&w.skipped),
        );
        labelled(
            &mut out,
            "statecar_webhook_denied_total",
            "AdmissionReviews answered with a denial.",
            "webhook",
            [
                ("mutate", &w.mutate_denied),
                ("validate", &w.validate_denied),
            ],
        );
        metric(
            &mut out,
            "statecar_webhook_errors_total",
            "counter",
            "Malformed AdmissionReviews and patches that could not be built.",
            w.errors.load(Relaxed).to_string(),
        );
        w.latency.render(
            &mut out,
            "statecar_webhook_duration_seconds",
            "Time to answer an AdmissionReview.",
        );
        let _ = writeln!(
            out,
            "# HELP statecar_operator_pods_without_sidecar_total Pods with dapr.io/enabled found without a daprd container.\n\
             # TYPE statecar_operator_pods_without_sidecar_total counter\n\
             statecar_operator_pods_without_sidecar_total {}",
            w.pods_without_sidecar.load(Relaxed)
        );
        out
    }
}
