//! statecar-operator: reconciles Dapr `Component` resources and delivers each sidecar its
//! components.

pub mod cache;
pub mod certs;
pub mod crd;
pub mod delivery;
pub mod inject;
pub mod leader;
pub mod metrics;
pub mod probes;
pub mod reconcile;
pub mod resolve;
pub mod selfcheck;
pub mod tls;
pub mod webhook;
