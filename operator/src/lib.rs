//! statecar-operator: reconciles Dapr `Component` resources and delivers each sidecar its
//! components.

pub mod cache;
pub mod delivery;
pub mod leader;
pub mod metrics;
pub mod probes;
pub mod reconcile;
pub mod resolve;
