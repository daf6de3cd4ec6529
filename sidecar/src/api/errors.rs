//! Dapr's HTTP error bodies. Every error response of the API is built here, from a typed cause,
//! and the status code follows from the cause.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::store::StoreError;

/// The endpoint an error happened in; it picks the `errorCode` and message prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Save,
    Get,
    BulkGet,
    Delete,
    Transaction,
}

impl Endpoint {
    fn code(self) -> &'static str {
        match self {
            Endpoint::Save => "ERR_STATE_SAVE",
            Endpoint::Get => "ERR_STATE_GET",
            Endpoint::BulkGet => "ERR_STATE_BULK_GET",
            Endpoint::Delete => "ERR_STATE_DELETE",
            Endpoint::Transaction => "ERR_STATE_TRANSACTION",
        }
    }

    fn message(self, store: &str, key: &str, cause: &str) -> String {
        match self {
            Endpoint::Save => format!("failed saving state in state store {store}: {cause}"),
            Endpoint::Get => format!("fail to get {key} from state store {store}: {cause}"),
            Endpoint::BulkGet => cause.to_string(),
            Endpoint::Delete => format!("failed deleting state with key {key}: {cause}"),
            Endpoint::Transaction => format!("error while executing state transaction: {cause}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Present for Dapr's "rich" errors only.
    pub details: Option<Vec<Value>>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "errorCode")]
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a [Value]>,
}

fn error_info(reason: &str, metadata: Value) -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "domain": "dapr.io",
        "metadata": metadata,
        "reason": reason,
    })
}

fn resource_info(store: &str) -> Value {
    json!({
        "@type": "type.googleapis.com/google.rpc.ResourceInfo",
        "description": "",
        "owner": "",
        "resource_name": store,
        "resource_type": "state",
    })
}

fn app_metadata(app_id: &str) -> Value {
    if app_id.is_empty() {
        Value::Null
    } else {
        json!({ "appID": app_id })
    }
}

impl ApiError {
    fn legacy(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn store_not_configured(store: &str, app_id: &str) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "ERR_STATE_STORE_NOT_CONFIGURED",
            message: format!("state store {store} is not configured"),
            details: Some(vec![error_info(
                "DAPR_STATE_NOT_CONFIGURED",
                app_metadata(app_id),
            )]),
        }
    }

    pub fn store_not_found(store: &str, app_id: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "ERR_STATE_STORE_NOT_FOUND",
            message: format!("state store {store} is not found"),
            details: Some(vec![error_info(
                "DAPR_STATE_NOT_FOUND",
                app_metadata(app_id),
            )]),
        }
    }

    /// A key containing `||`. `field` is the key for save/get/bulk and empty in transactions.
    pub fn illegal_key(store: &str, key: &str, field: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "ERR_MALFORMED_REQUEST",
            message: format!("input key/keyPrefix '{key}' can't contain '||'"),
            details: Some(vec![
                json!({
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "field_violations": [{
                        "field": field,
                        "description": format!("input key/keyPrefix '{key}' can't contain '||'"),
                    }],
                }),
                resource_info(store),
                error_info("DAPR_STATE_ILLEGAL_KEY", Value::Null),
            ]),
        }
    }

    pub fn query_not_supported(store: &str) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "ERR_STATE_STORE_NOT_SUPPORTED",
            message: "state store does not support querying".into(),
            details: Some(vec![
                resource_info(store),
                error_info("DAPR_STATE_QUERYING_NOT_SUPPORTED", Value::Null),
            ]),
        }
    }

    /// A body that does not decode, or a required field that is missing.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::legacy(StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST", message)
    }

    pub fn unsupported_operation(op: &str) -> Self {
        Self::legacy(
            StatusCode::BAD_REQUEST,
            "ERR_NOT_SUPPORTED_STATE_OPERATION",
            format!("operation type {op} not supported"),
        )
    }

    /// An input the client got wrong (bad etag, option or TTL): 400 with the endpoint's code.
    pub fn bad_input(endpoint: Endpoint, store: &str, key: &str, cause: &str) -> Self {
        Self::legacy(
            StatusCode::BAD_REQUEST,
            endpoint.code(),
            endpoint.message(store, key, cause),
        )
    }

    /// A store failure: 409 for a failed precondition, 400 for a request the store cannot
    /// run as asked, 500 otherwise.
    pub fn store(endpoint: Endpoint, store: &str, key: &str, err: &StoreError) -> Self {
        let status = match err {
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Unsupported(_) => StatusCode::BAD_REQUEST,
            StoreError::Unavailable(_) | StoreError::Backend(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self::legacy(
            status,
            endpoint.code(),
            endpoint.message(store, key, &err.to_string()),
        )
    }

    /// Several failed writes of one save request; the most telling status wins.
    pub fn save_failures(store: &str, errors: &[&StoreError]) -> Self {
        if let Some(conflict) = errors.iter().find(|e| matches!(e, StoreError::Conflict(_))) {
            return Self::store(Endpoint::Save, store, "", conflict);
        }
        let joined = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        Self::legacy(
            StatusCode::INTERNAL_SERVER_ERROR,
            Endpoint::Save.code(),
            Endpoint::Save.message(store, "", &joined),
        )
    }

    pub fn direct_invoke() -> Self {
        Self::legacy(
            StatusCode::NOT_FOUND,
            "ERR_DIRECT_INVOKE",
            "failed getting app id either from the URL path or the header dapr-app-id",
        )
    }

    pub fn health_not_ready(what: &str) -> Self {
        Self::legacy(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_HEALTH_NOT_READY",
            format!("dapr is not ready: [{what}]"),
        )
    }

    pub fn health_app_id_mismatch() -> Self {
        Self::legacy(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_HEALTH_APPID_NOT_MATCH",
            "dapr app-id does not match",
        )
    }

    pub fn outbound_not_ready() -> Self {
        Self::legacy(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_OUTBOUND_HEALTH_NOT_READY",
            "dapr outbound is not ready",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            code: self.code,
            message: &self.message,
            details: self.details.as_deref(),
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, message = %self.message, "request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), code = self.code, message = %self.message, "request rejected");
        }
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_are_409_with_the_endpoint_code() {
        let e = ApiError::store(
            Endpoint::Transaction,
            "s",
            "",
            &StoreError::Conflict("x".into()),
        );
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(e.code, "ERR_STATE_TRANSACTION");
        let e = ApiError::store(
            Endpoint::Get,
            "s",
            "k",
            &StoreError::Unavailable("down".into()),
        );
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            e.message,
            "fail to get k from state store s: state store unavailable: down"
        );
    }

    #[test]
    fn rich_error_shape() {
        let e = ApiError::store_not_found("s", "app");
        let body = Body {
            code: e.code,
            message: &e.message,
            details: e.details.as_deref(),
        };
        let v: Value = serde_json::from_slice(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(v["errorCode"], "ERR_STATE_STORE_NOT_FOUND");
        assert_eq!(v["details"][0]["reason"], "DAPR_STATE_NOT_FOUND");
        assert_eq!(v["details"][0]["metadata"]["appID"], "app");
    }
}
