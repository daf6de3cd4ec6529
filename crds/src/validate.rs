//! Validation of a component's spec, shared by the sidecar's loader and the operator's
//! reconciler so both give the same verdicts and messages.

use std::time::Duration;

use crate::component::ComponentSpec;
use crate::metadata::{MetadataError, MetadataMap, parse_go_duration};
use crate::redis::{self, RedisMetadata};

pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The state stores statecar implements.
pub const SUPPORTED_TYPES: &[&str] = &["state.redis", "state.in-memory"];

/// Why a component is not usable; the operator reports it as the `Ready` condition's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    UnsupportedType,
    InvalidSpec,
    InvalidMetadata,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnsupportedType => "UnsupportedType",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::InvalidMetadata => "InvalidMetadata",
        }
    }
}

/// A rejected component: the field path (e.g. `spec.metadata.redisDB`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub reason: Reason,
    pub field: String,
    pub message: String,
}

impl Invalid {
    fn new(reason: Reason, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            reason,
            field: field.into(),
            message: message.into(),
        }
    }

    fn metadata(e: MetadataError) -> Self {
        Self::new(
            Reason::InvalidMetadata,
            format!("spec.metadata.{}", e.field),
            e.message,
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
// Built once per component load, so the size of the Redis variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum StoreSettings {
    Redis(RedisMetadata),
    Memory,
}

/// A component that passed validation, with its typed settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidComponent {
    /// Lower-cased, e.g. `state.redis`.
    pub component_type: String,
    pub version: String,
    pub init_timeout: Duration,
    pub settings: StoreSettings,
    /// Lower-cased `keyPrefix` mode (empty = appid).
    pub key_prefix: String,
    pub default_ttl: Option<i64>,
}

/// Names every state store understands (handled by the sidecar, not the store).
const GENERIC_NAMES: &[&str] = &["keyPrefix", "ttlInSeconds", "actorStateStore"];

/// Validates a component name: it becomes a URL path segment.
pub fn validate_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(Invalid::new(
            Reason::InvalidSpec,
            "metadata.name",
            "required",
        ));
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('%') {
        return Err(Invalid::new(
            Reason::InvalidSpec,
            "metadata.name",
            "must be usable as a URL path segment (no '/', '%', '.' or '..')",
        ));
    }
    Ok(())
}

/// Validates a spec whose metadata values are already resolved into `md`.
pub fn validate(spec: &ComponentSpec, md: &MetadataMap) -> Result<ValidComponent, Invalid> {
    let component_type = spec.type_.to_ascii_lowercase();
    if component_type.is_empty() {
        return Err(Invalid::new(Reason::InvalidSpec, "spec.type", "required"));
    }
    if !SUPPORTED_TYPES.contains(&component_type.as_str()) {
        return Err(Invalid::new(
            Reason::UnsupportedType,
            "spec.type",
            format!(
                "unsupported type {:?}: statecar supports {}",
                spec.type_,
                SUPPORTED_TYPES.join(" and ")
            ),
        ));
    }
    if !matches!(spec.version.as_str(), "" | "v0" | "v1") {
        return Err(Invalid::new(
            Reason::InvalidSpec,
            "spec.version",
            format!("unsupported version {:?}: expected v1", spec.version),
        ));
    }
    let init_timeout = match spec.init_timeout.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_INIT_TIMEOUT,
        Some(t) => parse_go_duration(t)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Invalid::new(
                    Reason::InvalidSpec,
                    "spec.initTimeout",
                    format!("invalid duration {t:?}: expected e.g. 5s or 1m"),
                )
            })?,
    };

    let known: &[&str] = match component_type.as_str() {
        "state.redis" => redis::KNOWN_NAMES,
        _ => &[],
    };
    for name in md.names() {
        let known_name = GENERIC_NAMES
            .iter()
            .chain(known)
            .any(|k| k.eq_ignore_ascii_case(name));
        if !known_name {
            return Err(Invalid::new(
                Reason::InvalidMetadata,
                format!("spec.metadata.{name}"),
                format!("unknown field for {component_type}"),
            ));
        }
    }

    let key_prefix = md.get("keyPrefix").unwrap_or_default().to_ascii_lowercase();
    if key_prefix.contains("||") {
        return Err(Invalid::new(
            Reason::InvalidMetadata,
            "spec.metadata.keyPrefix",
            "must not contain '||'",
        ));
    }
    let default_ttl = md.get_i64("ttlInSeconds").map_err(Invalid::metadata)?;
    let settings = match component_type.as_str() {
        "state.redis" => StoreSettings::Redis(RedisMetadata::parse(md).map_err(Invalid::metadata)?),
        _ => StoreSettings::Memory,
    };
    Ok(ValidComponent {
        component_type,
        version: if spec.version.is_empty() {
            "v1".into()
        } else {
            spec.version.clone()
        },
        init_timeout,
        settings,
        key_prefix,
        default_ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(type_: &str) -> ComponentSpec {
        ComponentSpec {
            type_: type_.into(),
            version: "v1".into(),
            ..Default::default()
        }
    }

    fn md(pairs: &[(&str, &str)]) -> MetadataMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn verdicts() {
        let ok = validate(&spec("State.Redis"), &md(&[("redisHost", "r:1")])).unwrap();
        assert_eq!(ok.component_type, "state.redis");
        assert!(validate(&spec("state.in-memory"), &md(&[])).is_ok());

        let e = validate(&spec("state.cosmosdb"), &md(&[])).unwrap_err();
        assert_eq!(
            (e.reason, e.field.as_str()),
            (Reason::UnsupportedType, "spec.type")
        );

        let e = validate(
            &spec("state.redis"),
            &md(&[("redisHost", "r"), ("redisHots", "x")]),
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::InvalidMetadata);
        assert_eq!(e.field, "spec.metadata.redisHots");

        let e = validate(
            &spec("state.redis"),
            &md(&[("redisHost", "r"), ("redisDB", "x")]),
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.metadata.redisDB");

        let mut s = spec("state.redis");
        s.init_timeout = Some("soon".into());
        let e = validate(&s, &md(&[("redisHost", "r")])).unwrap_err();
        assert_eq!(
            (e.reason, e.field.as_str()),
            (Reason::InvalidSpec, "spec.initTimeout")
        );
    }

    #[test]
    fn dapr_redis_manifests_use_only_known_names() {
        let names = [
            "redisHost",
            "redisPassword",
            "redisUsername",
            "redisDB",
            "enableTLS",
            "actorStateStore",
            "keyPrefix",
            "maxRetries",
            "maxRetryBackoff",
            "idleTimeout",
            "queryIndexes",
            "ttlInSeconds",
            "consumerID",
            "processingTimeout",
        ];
        let pairs: Vec<(&str, &str)> = names.iter().map(|n| (*n, "")).collect();
        let mut m = md(&pairs);
        m.insert("redisHost", "r:1");
        assert!(validate(&spec("state.redis"), &m).is_ok());
    }
}
