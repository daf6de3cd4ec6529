//! The Dapr-compatible HTTP API: routes, state handlers, errors, token auth, health, metadata.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use tokio::net::TcpListener;

use crate::components::Registry;

pub mod auth;
pub mod body;
pub mod errors;
pub mod gate;
pub mod health;
pub mod server;
pub mod state;

pub use errors::ApiError;
pub use gate::Gate;

/// Everything the handlers share.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub app_id: String,
    /// `PUT /v1.0/metadata/{attr}` values, shown under `extended`.
    pub extended: RwLock<BTreeMap<String, String>>,
    pub app_port: Option<u16>,
    /// False until the first configuration is in effect (Kubernetes mode, before the operator's
    /// first snapshot or the config cache); `/v1.0/healthz` answers 500 meanwhile.
    ready: AtomicBool,
}

impl AppState {
    pub fn new(registry: Arc<Registry>, app_id: String, app_port: Option<u16>) -> Self {
        Self {
            registry,
            app_id,
            extended: RwLock::new(BTreeMap::new()),
            app_port,
            ready: AtomicBool::new(true),
        }
    }

    /// Marks the sidecar ready or not ready (see [`AppState::is_ready`]).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the components are configured. Always true in standalone mode, where the
    /// API is only served once they are.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

pub struct ApiConfig {
    pub max_body_size: usize,
    /// `DAPR_API_TOKEN`: when set, every request but the health checks must carry it.
    pub api_token: Option<String>,
}

/// The API port's routes, behind the path and token checks.
pub fn router(state: Arc<AppState>, config: &ApiConfig) -> Gate {
    let routes = Router::new()
        .route("/v1.0/state/{store}", post(state::save).put(state::save))
        .route("/v1.0/state/{store}/{key}", any(state::by_key))
        .route(
            "/v1.0-alpha1/state/{store}/query",
            post(state::query).put(state::query),
        )
        .merge(health::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(DefaultBodyLimit::max(config.max_body_size))
        .with_state(state);
    let token = config
        .api_token
        .as_deref()
        .map(|t| Arc::new(auth::Token::new(t)));
    Gate::api(routes, token)
}

/// The public port: health and metadata only, without a token, as daprd's. It listens on all
/// interfaces by default (the kubelet probes it from outside the pod); the state API is not
/// served there.
pub fn public_router(state: Arc<AppState>) -> Gate {
    let routes = health::routes()
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(state);
    Gate::public(routes)
}

/// Unknown routes: Dapr hands them to service invocation, which answers 404.
async fn not_found() -> Response {
    ApiError::direct_invoke().into_response()
}

/// Listen addresses, from a comma-separated list such as `[::1],127.0.0.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddresses(pub Vec<IpAddr>);

/// Parses `[::1],127.0.0.1`: IP addresses separated by commas, IPv6 with or without brackets.
/// Duplicates are dropped.
pub fn parse_listen_addresses(s: &str) -> Result<ListenAddresses, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let bare = part
            .strip_prefix('[')
            .and_then(|p| p.strip_suffix(']'))
            .unwrap_or(part);
        let ip: IpAddr = bare.parse().map_err(|_| {
            if part.is_empty() {
                format!("{s:?} has an empty entry; give IP addresses separated by commas")
            } else {
                format!("{part:?} is not an IP address (e.g. 127.0.0.1, [::1] or 0.0.0.0)")
            }
        })?;
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(ListenAddresses(out))
}

/// Why a port could not be listened on.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr} ({flag}): {error}")]
    Bind {
        addr: SocketAddr,
        flag: String,
        error: std::io::Error,
    },
    #[error("cannot listen on any address ({flag}): {reasons}")]
    NoAddress { flag: String, reasons: String },
}

/// Binds `port` on every address. An address this host does not have (IPv6 turned off, the IP
/// of a missing interface) is skipped with a warning as long as another one binds; any other
/// error, such as the port being in use, fails. `flag` names the setting in errors.
pub async fn bind_all(
    addresses: &[IpAddr],
    port: u16,
    flag: &str,
) -> Result<Vec<TcpListener>, ListenError> {
    let mut listeners = Vec::new();
    let mut unavailable = Vec::new();
    for ip in addresses {
        let addr = SocketAddr::new(*ip, port);
        match listen(addr) {
            Ok(l) => listeners.push(l),
            Err(e) if address_unavailable(&e) => {
                tracing::warn!("not listening on {addr}: {e}");
                unavailable.push(format!("{addr}: {e}"));
            }
            Err(error) => {
                return Err(ListenError::Bind {
                    addr,
                    flag: flag.to_string(),
                    error,
                });
            }
        }
    }
    if listeners.is_empty() {
        return Err(ListenError::NoAddress {
            flag: flag.to_string(),
            reasons: unavailable.join("; "),
        });
    }
    Ok(listeners)
}

/// Pending connections the kernel may queue before the server accepts them (capped by
/// `net.core.somaxconn`, 4096 on current Linux, which Go servers such as daprd use too). Rust's
/// default of 128 drops the SYNs of a burst of new connections, which then wait a second for
/// the retransmission.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn address_unavailable(e: &std::io::Error) -> bool {
    /// EAFNOSUPPORT: the kernel has no IPv6 at all.
    #[cfg(target_os = "linux")]
    const NO_ADDRESS_FAMILY: Option<i32> = Some(97);
    #[cfg(not(target_os = "linux"))]
    const NO_ADDRESS_FAMILY: Option<i32> = None;
    e.kind() == std::io::ErrorKind::AddrNotAvailable
        || (NO_ADDRESS_FAMILY.is_some() && e.raw_os_error() == NO_ADDRESS_FAMILY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        let v4 = |s: &str| IpAddr::V4(s.parse().expect("ipv4"));
        let v6 = |s: &str| IpAddr::V6(s.parse().expect("ipv6"));
        assert_eq!(
            parse_listen_addresses("[::1],127.0.0.1"),
            Ok(ListenAddresses(vec![v6("::1"), v4("127.0.0.1")]))
        );
        assert_eq!(
            parse_listen_addresses(" ::1 , 0.0.0.0,0.0.0.0"),
            Ok(ListenAddresses(vec![v6("::1"), v4("0.0.0.0")]))
        );
        for bad in ["", "localhost", "127.0.0.1,", "[::1", "1.2.3.4:80"] {
            assert!(parse_listen_addresses(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn bind_all_skips_only_missing_addresses() {
        // 192.0.2.1 (TEST-NET-1) is not an address of this host.
        let missing: IpAddr = "192.0.2.1".parse().expect("ip");
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let bound = bind_all(&[missing, local], 0, "--test").await;
        assert_eq!(bound.map(|l| l.len()).ok(), Some(1));
        let none = bind_all(&[missing], 0, "--test").await;
        assert!(
            matches!(none, Err(ListenError::NoAddress { .. })),
            "{none:?}"
        );
        // A port in use is an error, not skipped.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let busy = bind_all(&[local], port, "--test").await;
        assert!(
            busy.as_ref()
                .is_err_and(|e| e.to_string().contains("--test")),
            "{busy:?}"
        );
    }
}
