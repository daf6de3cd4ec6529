//! The app id of a pod: the `dapr.io/app-id` annotation, or one derived from the pod's name,
//! `generateName` or owner, validated as Dapr validates it.
//!
//! Dapr falls back to the pod name only, so pods created by a controller (which have only a
//! `generateName` at admission) are denied. Here a Deployment's pod gets the Deployment's name
//! (its `generateName` `web-7d9f8b6c5d-` minus the `pod-template-hash`), stable across
//! rollouts, and a Job's pod its Job's name.

use k8s_openapi::api::core::v1::Pod;

use super::InjectError;
use super::annotations::{APP_ID, Annotations};

/// `<app id>-dapr` must be a DNS-1123 label (63 characters at most).
pub const MAX_LEN: usize = 58;

/// The label a ReplicaSet puts on its pods; its value ends the ReplicaSet's name.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Where an app id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Annotation,
    Name,
    GenerateName,
    Owner,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Annotation => "the dapr.io/app-id annotation",
            Source::Name => "the pod name",
            Source::GenerateName => "the pod's generateName",
            Source::Owner => "the pod's owner",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppId {
    pub id: String,
    pub source: Source,
}

/// Why a string is not a valid app id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("it is empty")]
    Empty,
    #[error("it is {0} characters long; at most {MAX_LEN} are allowed")]
    TooLong(usize),
    #[error("it contains uppercase letters")]
    Uppercase,
    #[error("it contains {0:?}")]
    Character(char),
    #[error("it must start and end with a letter or digit")]
    Edge,
}

/// Checks that `<id>-dapr` is a DNS-1123 label.
pub fn validate(id: &str) -> Result<(), Invalid> {
    if id.is_empty() {
        return Err(Invalid::Empty);
    }
    let len = id.chars().count();
    if len > MAX_LEN {
        return Err(Invalid::TooLong(len));
    }
    if id.chars().any(|c| c.is_uppercase()) {
        return Err(Invalid::Uppercase);
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(Invalid::Character(c));
    }
    if id.starts_with('-') || id.ends_with('-') {
        return Err(Invalid::Edge);
    }
    Ok(())
}

const RULE: &str = "an app id is lowercase letters, digits and '-', starts and ends with a letter \
                    or digit, and has at most 58 characters";

/// The pod's app id. An annotation that is set but invalid is an error (it was chosen
/// explicitly); otherwise the first valid id among the name, the `generateName` and the owner
/// is used, and when none is valid the error says what was tried and what to set.
pub fn derive(pod: &Pod, annotations: Annotations<'_>) -> Result<AppId, InjectError> {
    if let Some(id) = annotations.get(APP_ID).filter(|v| !v.is_empty()) {
        return match validate(id) {
            Ok(()) => Ok(AppId {
                id: id.to_string(),
                source: Source::Annotation,
            }),
            Err(why) => Err(InjectError::InvalidAppId(format!(
                "the dapr.io/app-id annotation {id:?} is not a valid app id: {why}; {RULE}"
            ))),
        };
    }
    let mut tried = Vec::new();
    for (source, candidate) in candidates(pod) {
        match validate(&candidate) {
            Ok(()) => {
                return Ok(AppId {
                    id: candidate,
                    source,
                });
            }
            Err(why) => tried.push(format!(
                "{} gives {candidate:?}, but {why}",
                source.describe()
            )),
        }
    }
    let detail = if tried.is_empty() {
        "the pod has no name, generateName or owner to derive one from".to_string()
    } else {
        tried.join("; ")
    };
    Err(InjectError::InvalidAppId(format!(
        "no app id: the pod has no dapr.io/app-id annotation and none could be derived ({detail}); \
         set the dapr.io/app-id annotation in the pod (template); {RULE}"
    )))
}

/// The derived candidates, in order of preference.
fn candidates(pod: &Pod) -> Vec<(Source, String)> {
    let meta = &pod.metadata;
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_TEMPLATE_HASH))
        .map(String::as_str)
        .filter(|h| !h.is_empty());
    let mut out = Vec::new();
    if let Some(name) = meta.name.as_deref().filter(|n| !n.is_empty()) {
        out.push((Source::Name, name.to_string()));
    }
    if let Some(generate) = meta.generate_name.as_deref() {
        let base = strip_hash(generate.trim_end_matches('-'), hash);
        if !base.is_empty() {
            out.push((Source::GenerateName, base.to_string()));
        }
    }
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first());
    if let Some(owner) = owner.filter(|o| !o.name.is_empty()) {
        let name = if owner.kind == "ReplicaSet" {
            strip_hash(&owner.name, hash)
        } else {
            &owner.name
        };
        out.push((Source::Owner, name.to_string()));
    }
    out
}

/// `web-7d9f8b6c5d` → `web` when the pod's `pod-template-hash` is `7d9f8b6c5d`.
fn strip_hash<'a>(name: &'a str, hash: Option<&str>) -> &'a str {
    hash.and_then(|h| name.strip_suffix(h))
        .and_then(|n| n.strip_suffix('-'))
        .filter(|n| !n.is_empty())
        .unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(validate("cart"), Ok(()));
        assert_eq!(validate("a"), Ok(()));
        assert_eq!(validate("order-api-2"), Ok(()));
        assert_eq!(validate(&"a".repeat(58)), Ok(()));
        assert_eq!(validate(&"a".repeat(59)), Err(Invalid::TooLong(59)));
        assert_eq!(validate(""), Err(Invalid::Empty));
        assert_eq!(validate("Cart"), Err(Invalid::Uppercase));
        assert_eq!(validate("web.v1"), Err(Invalid::Character('.')));
        assert_eq!(validate("my_app"), Err(Invalid::Character('_')));
        assert_eq!(validate("-web"), Err(Invalid::Edge));
        assert_eq!(validate("web-"), Err(Invalid::Edge));
    }

    #[test]
    fn hash_stripping() {
        assert_eq!(strip_hash("web-7d9f8b6c5d", Some("7d9f8b6c5d")), "web");
        assert_eq!(
            strip_hash("web-7d9f8b6c5d", Some("other")),
            "web-7d9f8b6c5d"
        );
        assert_eq!(strip_hash("web-7d9f8b6c5d", None), "web-7d9f8b6c5d");
        assert_eq!(strip_hash("7d9f8b6c5d", Some("7d9f8b6c5d")), "7d9f8b6c5d");
        assert_eq!(
            strip_hash("web7d9f8b6c5d", Some("7d9f8b6c5d")),
            "web7d9f8b6c5d"
        );
    }
}
