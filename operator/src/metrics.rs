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
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "statecar_operator_reconciles_total",
            "counter",
            "Component reconciliations.",
            self.reconciles.load(Relaxed).to_string(),
        );
        metric(
            "statecar_operator_reconcile_errors_total",
            "counter",
            "Component reconciliations that failed and were retried.",
            self.reconcile_errors.load(Relaxed).to_string(),
        );
        metric(
            "statecar_operator_connected_sidecars",
            "gauge",
            "Sidecars with an open config stream to this replica.",
            self.connected_sidecars.load(Relaxed).to_string(),
        );
        let pushes = self.config_pushes.load(Relaxed);
        metric(
            "statecar_operator_config_pushes_total",
            "counter",
            "Config snapshots sent to sidecars.",
            pushes.to_string(),
        );
        metric(
            "statecar_operator_config_push_latency_seconds_sum",
            "counter",
            "Total seconds from a watched change to the snapshot being sent (divide by pushes).",
            format!("{:.6}", self.push_latency_us.load(Relaxed) as f64 / 1e6),
        );
        metric(
            "statecar_operator_leader",
            "gauge",
            "1 when this replica holds the lease and writes status.",
            u8::from(self.leader.load(Relaxed)).to_string(),
        );
        out
    }
}
