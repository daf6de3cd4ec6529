//! Black-box test harness for statecar: private `redis-server` instances, the real `statecar`
//! binary on a free loopback port, and HTTP/assertion helpers.
//!
//! Run with the binary built first:
//! `cargo build -p sidecar && cargo test -p statecar-tests` (or set `STATECAR_BIN`).

pub mod cluster;
pub mod config_stream;
pub mod devtools;
pub mod http;
pub mod https;
pub mod operator;
pub mod process;
pub mod procfs;
pub mod redis_server;
pub mod redis_topology;
pub mod sidecar;
pub mod state;
pub mod time;

use std::sync::atomic::{AtomicU64, Ordering};

pub use http::{Resp, detail, esc};
pub use redis_server::{RedisServer, shared_redis};
pub use sidecar::{
    Sidecar, SidecarBuilder, StartFailure, component_yaml, component_yaml_ext, statecar_bin,
    store_yaml,
};
pub use state::{key_path, store_path, until_saves_land};

/// Name of the default state store component.
pub const STORE: &str = "statestore";

/// The state store implementation a conformance test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Redis,
    Memory,
}

impl StoreKind {
    pub fn component_type(self) -> &'static str {
        match self {
            StoreKind::Redis => "state.redis",
            StoreKind::Memory => "state.in-memory",
        }
    }

    pub fn is_redis(self) -> bool {
        self == StoreKind::Redis
    }
}

/// A process-unique id: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Generates, for each `async fn name(kind: StoreKind)`, a module `name` with two tests,
/// `name::redis` and `name::memory`.
#[macro_export]
macro_rules! store_tests {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name($crate::StoreKind::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name($crate::StoreKind::Memory).await
            }
        }
    )+};
}
