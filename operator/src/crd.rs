//! Keeps the `components.dapr.io` CRD at this operator's version. Helm installs the chart's
//! `crds/` only when the CRD is missing and never upgrades it, so without this a `helm upgrade`
//! would leave the old schema in place.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use statecar_crds::kube::CRD_NAME;

/// Field manager of the operator's server-side apply of the CRD.
pub const FIELD_MANAGER: &str = "statecar-operator";

/// How long start-up waits for the API server before carrying on with the CRD as it is.
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("reading CustomResourceDefinition {CRD_NAME}: {0}")]
    Get(#[source] kube::Error),
    /// `existed`: whether the CRD was there before (a patch), or not (a create).
    #[error("applying CustomResourceDefinition {CRD_NAME}: {source}")]
    Apply {
        existed: bool,
        #[source]
        source: kube::Error,
    },
    #[error("no answer from the API server within {} s", TIMEOUT.as_secs())]
    Timeout,
}

impl CrdError {
    /// The verb RBAC refused, when the API server answered 403.
    pub fn forbidden_verb(&self) -> Option<&'static str> {
        let (verb, source) = match self {
            CrdError::Get(e) => ("get", e),
            CrdError::Apply {
                existed: true,
                source,
            } => ("patch", source),
            CrdError::Apply {
                existed: false,
                source,
            } => ("create", source),
            CrdError::Timeout => return None,
        };
        match source {
            kube::Error::Api(s) if s.is_forbidden() => Some(verb),
            _ => None,
        }
    }
}

/// What applying the CRD did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    /// Its spec or labels changed.
    Updated,
    /// Only its field ownership changed (the first apply by this field manager).
    Adopted,
    AlreadyCurrent,
}

impl Applied {
    /// From the CRD before the apply (`None`: it did not exist) and after. An apply that
    /// changes nothing is not written, so the resourceVersion stays.
    pub fn compare(
        before: Option<&CustomResourceDefinition>,
        after: &CustomResourceDefinition,
    ) -> Applied {
        let Some(before) = before else {
            return Applied::Created;
        };
        if before.metadata.resource_version == after.metadata.resource_version {
            Applied::AlreadyCurrent
        } else if before.spec == after.spec && before.metadata.labels == after.metadata.labels {
            Applied::Adopted
        } else {
            Applied::Updated
        }
    }
}

/// Server-side applies the CRD generated from the Component types (forcing, so fields another
/// manager set, e.g. an older operator or `kubectl apply`, take this version's values).
pub async fn apply(client: Client) -> Result<Applied, CrdError> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let work = async {
        let before = api.get_opt(CRD_NAME).await.map_err(CrdError::Get)?;
        let after = api
            .patch(
                CRD_NAME,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(statecar_crds::kube::crd()),
            )
            .await
            .map_err(|source| CrdError::Apply {
                existed: before.is_some(),
                source,
            })?;
        Ok(Applied::compare(before.as_ref(), &after))
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .unwrap_or(Err(CrdError::Timeout))
}

/// [`apply`], logged. Never fails: the CRD the chart installed is still there and serves.
pub async fn ensure(client: Client) {
    match apply(client).await {
        Ok(Applied::Created) => tracing::info!("created CustomResourceDefinition {CRD_NAME}"),
        Ok(Applied::Updated) => {
            tracing::info!("updated CustomResourceDefinition {CRD_NAME} to this operator's version")
        }
        Ok(Applied::Adopted) => tracing::info!(
            "CustomResourceDefinition {CRD_NAME} is already current; field manager \
             {FIELD_MANAGER} now owns its fields"
        ),
        Ok(Applied::AlreadyCurrent) => {
            tracing::info!("CustomResourceDefinition {CRD_NAME} is already current")
        }
        Err(e) => match e.forbidden_verb() {
            Some(verb) => tracing::warn!(
                "cannot keep CustomResourceDefinition {CRD_NAME} current: {e}. The operator \
                 needs {verb} on customresourcedefinitions.apiextensions.k8s.io named \
                 {CRD_NAME}; grant it, or turn this off with --manage-crd=false (chart value \
                 crds.manage=false). Carrying on with the CRD as it is"
            ),
            None => tracing::warn!(
                "cannot keep CustomResourceDefinition {CRD_NAME} current: {e}. Carrying on with \
                 the CRD as it is (--manage-crd=false turns this off)"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versioned(rv: &str) -> CustomResourceDefinition {
        let mut crd = statecar_crds::kube::crd();
        crd.metadata.resource_version = Some(rv.into());
        crd
    }

    #[test]
    fn outcome_follows_the_resource_version_and_content() {
        let current = versioned("5");
        assert_eq!(Applied::compare(None, &current), Applied::Created);
        assert_eq!(
            Applied::compare(Some(&current), &current),
            Applied::AlreadyCurrent
        );
        assert_eq!(
            Applied::compare(Some(&current), &versioned("7")),
            Applied::Adopted
        );
        let mut old = versioned("5");
        old.spec.versions[0].additional_printer_columns = None;
        assert_eq!(
            Applied::compare(Some(&old), &versioned("7")),
            Applied::Updated
        );
    }

    fn api_error(code: u16) -> kube::Error {
        let reason = if code == 403 {
            "Forbidden"
        } else {
            "InternalError"
        };
        kube::Error::Api(
            kube::core::Status::failure("refused", reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_403_names_the_verb_that_was_refused() {
        assert_eq!(CrdError::Get(api_error(403)).forbidden_verb(), Some("get"));
        let apply = |existed, code| CrdError::Apply {
            existed,
            source: api_error(code),
        };
        assert_eq!(apply(true, 403).forbidden_verb(), Some("patch"));
        assert_eq!(apply(false, 403).forbidden_verb(), Some("create"));
        assert_eq!(apply(true, 500).forbidden_verb(), None);
        assert_eq!(CrdError::Timeout.forbidden_verb(), None);
    }

    /// What is applied is the committed CRD (crds/components.dapr.io.yaml, the chart's copy).
    #[test]
    fn applies_the_committed_crd() {
        let committed: CustomResourceDefinition =
            serde_yaml::from_str(include_str!("../../crds/components.dapr.io.yaml")).unwrap();
        assert_eq!(statecar_crds::kube::crd(), committed);
    }
}
