//! statecar: Dapr's state management HTTP API as a small, fast sidecar.

pub mod api;
pub mod components;
pub mod delivery;
pub mod devtools;
pub mod grpc;

pub mod state;
pub mod store;
