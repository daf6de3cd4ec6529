//! Types shared by the statecar sidecar and operator: Dapr's `Component` resource and the typed
//! metadata of the state stores statecar implements.
//!
//! This crate has no Kubernetes client dependency so that the sidecar can link it and stay small.

pub mod component;
#[cfg(feature = "kube")]
pub mod kube;
pub mod metadata;
pub mod redis;
pub mod validate;

pub use component::{Component, ComponentSpec, MetadataItem, ObjectMeta, SecretKeyRef};
pub use metadata::{MetadataError, MetadataMap};
