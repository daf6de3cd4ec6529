//! gRPC statuses for the state API, worded as daprd words them. Rich details (google.rpc
//! `ErrorInfo`, `ResourceInfo`, `BadRequest`) ride in `grpc-status-details-bin` where daprd
//! sends them, so the SDKs' error types (e.g. Python's `DaprGrpcError`) can read the reason.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message;
use tonic::{Code, Status};

use crate::state::LookupError;
use crate::store::StoreError;

/// The RPC an error happened in; it picks the message prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Save,
    Get,
    BulkGet,
    Delete,
    BulkDelete,
    Transaction,
}

impl Rpc {
    fn message(self, store: &str, key: &str, cause: &str) -> String {
        match self {
            Rpc::Save => format!("failed saving state in state store {store}: {cause}"),
            Rpc::Get => format!("fail to get {key} from state store {store}: {cause}"),
            Rpc::BulkGet => format!("failed to get bulk state from state store {store}: {cause}"),
            Rpc::Delete => format!("failed deleting state with key {key}: {cause}"),
            Rpc::BulkDelete => format!("failed deleting state in state store {store}: {cause}"),
            Rpc::Transaction => format!("error while executing state transaction: {cause}"),
        }
    }
}

const DOMAIN: &str = "dapr.io";

#[derive(Clone, PartialEq, Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
    #[prost(map = "string, string", tag = "3")]
    metadata: HashMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceInfo {
    #[prost(string, tag = "1")]
    resource_type: String,
    #[prost(string, tag = "2")]
    resource_name: String,
    #[prost(string, tag = "3")]
    owner: String,
    #[prost(string, tag = "4")]
    description: String,
}

#[derive(Clone, PartialEq, Message)]
struct FieldViolation {
    #[prost(string, tag = "1")]
    field: String,
    #[prost(string, tag = "2")]
    description: String,
}

#[derive(Clone, PartialEq, Message)]
struct BadRequest {
    #[prost(message, repeated, tag = "1")]
    field_violations: Vec<FieldViolation>,
}

fn any<M: Message>(type_name: &str, m: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: m.encode_to_vec(),
    }
}

fn error_info(reason: &str, metadata: HashMap<String, String>) -> prost_types::Any {
    let info = ErrorInfo {
        reason: reason.into(),
        domain: DOMAIN.into(),
        metadata,
    };
    any("google.rpc.ErrorInfo", &info)
}

fn resource_info(store: &str) -> prost_types::Any {
    let info = ResourceInfo {
        resource_type: "state".into(),
        resource_name: store.into(),
        ..Default::default()
    };
    any("google.rpc.ResourceInfo", &info)
}

/// A status with details, encoded as a `google.rpc.Status`.
fn rich(code: Code, message: String, details: Vec<prost_types::Any>) -> Status {
    let status = dapr::google::rpc::Status {
        code: code as i32,
        message: message.clone(),
        details,
    };
    Status::with_details(code, message, Bytes::from(status.encode_to_vec()))
}

/// An unknown store name.
pub fn lookup(err: LookupError, store: &str) -> Status {
    match err {
        LookupError::NotConfigured => rich(
            Code::FailedPrecondition,
            format!("state store {store} is not configured"),
            vec![error_info("DAPR_STATE_NOT_CONFIGURED", HashMap::new())],
        ),
        LookupError::NotFound => rich(
            Code::InvalidArgument,
            format!("state store {store} is not found"),
            vec![error_info("DAPR_STATE_NOT_FOUND", HashMap::new())],
        ),
    }
}

/// A key containing `||`.
pub fn illegal_key(store: &str, key: &str) -> Status {
    let message = format!("input key/keyPrefix '{key}' can't contain '||'");
    let violation = BadRequest {
        field_violations: vec![FieldViolation {
            field: key.into(),
            description: message.clone(),
        }],
    };
    rich(
        Code::InvalidArgument,
        message,
        vec![
            error_info("DAPR_STATE_ILLEGAL_KEY", HashMap::new()),
            resource_info(store),
            any("google.rpc.BadRequest", &violation),
        ],
    )
}

/// A request the client got wrong: a missing key, a bad etag, option or TTL.
pub fn bad_input(rpc: Rpc, store: &str, key: &str, cause: &str) -> Status {
    Status::invalid_argument(rpc.message(store, key, cause))
}

/// A store failure: ABORTED for a failed precondition (etag mismatch, first-write on an
/// existing key), INVALID_ARGUMENT for a request the store cannot run as asked, else INTERNAL.
/// Transactions follow the same rule; daprd answers INTERNAL for a transaction's etag
/// mismatch, which hides a retryable conflict among real failures.
pub fn store(rpc: Rpc, store: &str, key: &str, err: &StoreError) -> Status {
    let code = match err {
        StoreError::Conflict(_) => Code::Aborted,
        StoreError::Unsupported(_) => Code::InvalidArgument,
        StoreError::Unavailable(_) | StoreError::Backend(_) => Code::Internal,
    };
    let message = rpc.message(store, key, &err.to_string());
    if code == Code::Internal {
        tracing::warn!(code = ?code, %message, "gRPC request failed");
    }
    Status::new(code, message)
}

pub fn unsupported_operation(op: &str) -> Status {
    Status::unimplemented(format!("operation type {op} not supported"))
}

pub fn query_not_supported(store: &str) -> Status {
    rich(
        Code::Internal,
        "state store does not support querying".into(),
        vec![
            resource_info(store),
            error_info("DAPR_STATE_QUERYING_NOT_SUPPORTED", HashMap::new()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_cause() {
        let s = store(Rpc::Save, "s", "", &StoreError::Conflict("x".into()));
        assert_eq!(s.code(), Code::Aborted);
        assert_eq!(
            s.message(),
            "failed saving state in state store s: possible etag mismatch: x"
        );
        let s = store(Rpc::Get, "s", "k", &StoreError::Unavailable("down".into()));
        assert_eq!(s.code(), Code::Internal);
        let s = store(
            Rpc::Transaction,
            "s",
            "",
            &StoreError::Unsupported("slots".into()),
        );
        assert_eq!(s.code(), Code::InvalidArgument);
    }

    #[test]
    fn rich_details_decode() {
        let s = lookup(LookupError::NotFound, "nope");
        assert_eq!(s.code(), Code::InvalidArgument);
        let status = dapr::google::rpc::Status::decode(s.details()).expect("a google.rpc.Status");
        assert_eq!(
            status.details[0].type_url,
            "type.googleapis.com/google.rpc.ErrorInfo"
        );
        let info = ErrorInfo::decode(status.details[0].value.as_slice()).expect("ErrorInfo");
        assert_eq!(info.reason, "DAPR_STATE_NOT_FOUND");
        assert_eq!(info.domain, "dapr.io");
    }
}
