//! The `dapr.io/*` pod annotations the injector reads, and how their values are parsed.
//!
//! Booleans are "truthy" as in Dapr: `true`, `1`, `t`, `y`, `yes`, `on` (trimmed, any case).
//! A malformed integer is ignored with a warning and the default is kept, as Dapr does. Values
//! the sidecar would refuse at startup (a log level, a body size, listen addresses, a seccomp
//! profile type) are errors instead, so that the pod is refused at admission with a message
//! naming the annotation rather than crash-looping.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::InjectError;

pub const PREFIX: &str = "dapr.io/";

pub const ENABLED: &str = "dapr.io/enabled";
pub const APP_ID: &str = "dapr.io/app-id";
pub const APP_PORT: &str = "dapr.io/app-port";
pub const CONFIG: &str = "dapr.io/config";
pub const LOG_LEVEL: &str = "dapr.io/log-level";
pub const LOG_AS_JSON: &str = "dapr.io/log-as-json";
pub const SIDECAR_IMAGE: &str = "dapr.io/sidecar-image";
pub const CPU_REQUEST: &str = "dapr.io/sidecar-cpu-request";
pub const CPU_LIMIT: &str = "dapr.io/sidecar-cpu-limit";
pub const MEMORY_REQUEST: &str = "dapr.io/sidecar-memory-request";
pub const MEMORY_LIMIT: &str = "dapr.io/sidecar-memory-limit";
pub const API_TOKEN_SECRET: &str = "dapr.io/api-token-secret";
pub const ENV: &str = "dapr.io/env";
pub const LISTEN_ADDRESSES: &str = "dapr.io/sidecar-listen-addresses";
pub const GRACEFUL_SHUTDOWN_SECONDS: &str = "dapr.io/graceful-shutdown-seconds";
pub const LIVENESS_DELAY: &str = "dapr.io/sidecar-liveness-probe-delay-seconds";
pub const LIVENESS_TIMEOUT: &str = "dapr.io/sidecar-liveness-probe-timeout-seconds";
pub const LIVENESS_PERIOD: &str = "dapr.io/sidecar-liveness-probe-period-seconds";
pub const LIVENESS_THRESHOLD: &str = "dapr.io/sidecar-liveness-probe-threshold";
pub const READINESS_DELAY: &str = "dapr.io/sidecar-readiness-probe-delay-seconds";
pub const READINESS_TIMEOUT: &str = "dapr.io/sidecar-readiness-probe-timeout-seconds";
pub const READINESS_PERIOD: &str = "dapr.io/sidecar-readiness-probe-period-seconds";
pub const READINESS_THRESHOLD: &str = "dapr.io/sidecar-readiness-probe-threshold";
pub const SECCOMP_PROFILE_TYPE: &str = "dapr.io/sidecar-seccomp-profile-type";
pub const NATIVE_SIDECAR: &str = "dapr.io/enable-native-sidecar";
pub const MAX_BODY_SIZE: &str = "dapr.io/max-body-size";
pub const HTTP_MAX_REQUEST_SIZE: &str = "dapr.io/http-max-request-size";
pub const GRPC_PORT: &str = "dapr.io/grpc-port";

/// Every `dapr.io/*` annotation statecar's injector acts on; any other `dapr.io/*` key is
/// reported as unsupported.
pub const SUPPORTED: [&str; 28] = [
    ENABLED,
    APP_ID,
    APP_PORT,
    CONFIG,
    LOG_LEVEL,
    LOG_AS_JSON,
    SIDECAR_IMAGE,
    CPU_REQUEST,
    CPU_LIMIT,
    MEMORY_REQUEST,
    MEMORY_LIMIT,
    API_TOKEN_SECRET,
    ENV,
    LISTEN_ADDRESSES,
    GRACEFUL_SHUTDOWN_SECONDS,
    LIVENESS_DELAY,
    LIVENESS_TIMEOUT,
    LIVENESS_PERIOD,
    LIVENESS_THRESHOLD,
    READINESS_DELAY,
    READINESS_TIMEOUT,
    READINESS_PERIOD,
    READINESS_THRESHOLD,
    SECCOMP_PROFILE_TYPE,
    NATIVE_SIDECAR,
    MAX_BODY_SIZE,
    HTTP_MAX_REQUEST_SIZE,
    GRPC_PORT,
];

/// Dapr's truthy rule.
pub fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "true" | "1" | "t" | "y" | "yes" | "on"
    )
}

/// Read access to a pod's annotations.
#[derive(Clone, Copy)]
pub struct Annotations<'a> {
    map: Option<&'a BTreeMap<String, String>>,
}

impl<'a> Annotations<'a> {
    pub fn new(map: Option<&'a BTreeMap<String, String>>) -> Self {
        Self { map }
    }

    /// The raw value, when the key is present (possibly empty).
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.map.and_then(|m| m.get(key)).map(String::as_str)
    }

    /// The trimmed value, when present and not blank.
    pub fn non_empty(&self, key: &str) -> Option<&'a str> {
        self.get(key).map(str::trim).filter(|v| !v.is_empty())
    }

    /// A boolean: `None` when absent; when present (even empty), the truthy rule.
    pub fn flag(&self, key: &str) -> Option<bool> {
        self.get(key).map(is_truthy)
    }

    /// An integer. A blank value is absent; a value that does not parse is ignored with a
    /// warning (the default applies).
    pub fn int(&self, key: &str) -> Option<i64> {
        let raw = self.non_empty(key)?;
        match raw.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                tracing::warn!(
                    annotation = key,
                    value = raw,
                    "ignoring the annotation: not an integer"
                );
                None
            }
        }
    }

    /// An integer in `range`; anything else is ignored with a warning (the default applies).
    pub fn int_in(&self, key: &str, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        let n = self.int(key)?;
        if range.contains(&n) {
            return Some(n);
        }
        tracing::warn!(
            annotation = key,
            value = n,
            "ignoring the annotation: not between {} and {}",
            range.start(),
            range.end()
        );
        None
    }

    /// The `dapr.io/*` keys present that statecar does not act on, sorted.
    pub fn unsupported(&self) -> Vec<String> {
        self.map
            .into_iter()
            .flat_map(|m| m.keys())
            .filter(|k| k.starts_with(PREFIX) && !SUPPORTED.contains(&k.as_str()))
            .cloned()
            .collect()
    }
}

/// The sidecar's log level for `dapr.io/log-level`: `debug`, `info`, `warn` or `error`, in any
/// case (`warning` and Dapr's `fatal` map to `warn` and `error`).
pub fn log_level(value: &str) -> Result<&'static str, InjectError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "debug" => Ok("debug"),
        "info" => Ok("info"),
        "warn" | "warning" => Ok("warn"),
        "error" | "fatal" => Ok("error"),
        _ => Err(InjectError::annotation(
            LOG_LEVEL,
            value,
            "use debug, info, warn or error",
        )),
    }
}

/// Checks a `dapr.io/max-body-size` value the way the sidecar's `--max-body-size` reads it:
/// a whole number of bytes with an optional unit (`Ki`, `Mi`, `Gi`, `k`/`K`, `M`, `G`,
/// optionally followed by `B`).
pub fn body_size(value: &str) -> Result<&str, InjectError> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let unit_ok = matches!(
        unit.trim_end_matches('B'),
        "" | "k" | "K" | "M" | "G" | "Ki" | "Mi" | "Gi"
    );
    if number.is_empty() || number.parse::<u64>().is_err() || !unit_ok {
        return Err(InjectError::annotation(
            MAX_BODY_SIZE,
            value,
            "use a size such as 4Mi, 16Mi, 500Ki or a number of bytes",
        ));
    }
    Ok(v)
}

/// Parses `dapr.io/sidecar-listen-addresses`: comma-separated IP addresses, IPv6 with or without
/// brackets. Returns the list as the sidecar's `--dapr-listen-addresses` takes it (IPv6 in
/// brackets), or `None` for a blank value (the sidecar's default applies).
pub fn listen_addresses(value: &str) -> Result<Option<String>, InjectError> {
    if value.trim().is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for part in value.split(',') {
        let part = part.trim();
        let bare = part
            .strip_prefix('[')
            .and_then(|p| p.strip_suffix(']'))
            .unwrap_or(part);
        match bare.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => out.push(ip.to_string()),
            Ok(IpAddr::V6(ip)) => out.push(format!("[{ip}]")),
            Err(_) => {
                let why = if part.is_empty() {
                    "an entry is empty; use IP addresses separated by commas, e.g. [::1],127.0.0.1"
                        .to_string()
                } else {
                    format!(
                        "{part:?} is not an IP address; use IP addresses separated by commas, \
                         e.g. [::1],127.0.0.1 or 0.0.0.0"
                    )
                };
                return Err(InjectError::annotation(LISTEN_ADDRESSES, value, &why));
            }
        }
    }
    Ok(Some(out.join(",")))
}

/// `securityContext.seccompProfile.type` for `dapr.io/sidecar-seccomp-profile-type`:
/// `RuntimeDefault` (also when blank) or `Unconfined`, in any case. `Localhost` needs a profile
/// path the annotation cannot give, so it is refused like any other value.
pub fn seccomp_type(value: Option<&str>) -> Result<&'static str, InjectError> {
    let Some(raw) = value else {
        return Ok("RuntimeDefault");
    };
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "runtimedefault" => Ok("RuntimeDefault"),
        "unconfined" => Ok("Unconfined"),
        "localhost" => Err(InjectError::annotation(
            SECCOMP_PROFILE_TYPE,
            raw,
            "Localhost needs a profile path, which cannot be given by annotation; use \
             RuntimeDefault or Unconfined",
        )),
        _ => Err(InjectError::annotation(
            SECCOMP_PROFILE_TYPE,
            raw,
            "use RuntimeDefault or Unconfined",
        )),
    }
}

/// Splits `dapr.io/env` as Dapr does: at a comma only when it is followed by optional
/// whitespace and `NAME=` (NAME a C identifier), so values may contain commas. Each piece is
/// split at its first `=`; names and values are trimmed; pieces without `=` or with an empty
/// name are dropped.
pub fn parse_env(value: &str) -> Vec<(String, String)> {
    let bytes = value.as_bytes();
    let mut starts = vec![0];
    for (i, &b) in bytes.iter().enumerate() {
        if b == b',' && followed_by_assignment(&bytes[i + 1..]) {
            starts.push(i + 1);
        }
    }
    let mut out = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        // A split point is a comma at starts[n + 1] - 1.
        let end = starts.get(n + 1).map_or(value.len(), |next| next - 1);
        let piece = &value[start..end];
        if let Some((name, val)) = piece.split_once('=') {
            let name = name.trim();
            if !name.is_empty() {
                out.push((name.to_string(), val.trim().to_string()));
            }
        }
    }
    out
}

/// Whether `rest` starts with optional whitespace, an identifier and `=`.
fn followed_by_assignment(rest: &[u8]) -> bool {
    let mut i = 0;
    while i < rest.len() && rest[i].is_ascii_whitespace() {
        i += 1;
    }
    match rest.get(i) {
        Some(b) if b.is_ascii_alphabetic() || *b == b'_' => {}
        _ => return false,
    }
    while i < rest.len() && (rest[i].is_ascii_alphanumeric() || rest[i] == b'_') {
        i += 1;
    }
    rest.get(i) == Some(&b'=')
}
