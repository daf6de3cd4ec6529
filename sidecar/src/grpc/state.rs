//! The state RPCs and the metadata RPCs. Each decodes its message, lets `crate::state` turn it
//! into store requests, and words the outcome as daprd does (see `errors`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1 as rt;
use futures_util::future::join_all;
use tonic::Status;

use super::GrpcApi;
use super::errors::{self, Rpc};
use crate::api::health::{Metadata, RUNTIME_VERSION, set_extended};
use crate::components::StoreEntry;
use crate::state::{
    WriteOptions, delete_request, is_illegal_key, lookup, parse_consistency, rfc3339, set_request,
};
use crate::store::{Item, Operation, StoreError};

const TTL: &str = "ttlInSeconds";
const TTL_EXPIRE_TIME: &str = "ttlExpireTime";

fn store(api: &GrpcApi, name: &str) -> Result<Arc<StoreEntry>, Status> {
    lookup(&api.state.registry, name).map_err(|e| errors::lookup(e, name))
}

/// Rejects an empty key and one with Dapr's `||` separator.
fn check_key(entry: &StoreEntry, key: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("state key cannot be empty"));
    }
    if is_illegal_key(key) {
        return Err(errors::illegal_key(&entry.name, key));
    }
    Ok(())
}

/// The proto enums as the option names the HTTP API takes; 0 (unspecified) is no option.
fn concurrency(v: i32) -> Result<Option<&'static str>, String> {
    match v {
        0 => Ok(None),
        1 => Ok(Some("first-write")),
        2 => Ok(Some("last-write")),
        other => Err(format!("unrecognized concurrency model {other}")),
    }
}

fn consistency(v: i32) -> Result<Option<&'static str>, String> {
    match v {
        0 => Ok(None),
        1 => Ok(Some("eventual")),
        2 => Ok(Some("strong")),
        other => Err(format!("unrecognized consistency model {other}")),
    }
}

/// The options of a write or delete. `ttl` is the `ttlInSeconds` that applies, if any.
fn options<'a>(
    etag: Option<&'a common::Etag>,
    opts: Option<&common::StateOptions>,
    ttl: Option<&'a str>,
) -> Result<WriteOptions<'a>, String> {
    let (c, s) = opts.map_or((0, 0), |o| (o.concurrency, o.consistency));
    Ok(WriteOptions {
        etag: etag.map(|e| e.value.as_str()),
        concurrency: concurrency(c)?,
        consistency: consistency(s)?,
        ttl_in_seconds: ttl,
    })
}

fn item_metadata(item: &Item) -> HashMap<String, String> {
    match item.expires_at {
        Some(at) => HashMap::from([(TTL_EXPIRE_TIME.to_string(), rfc3339(at))]),
        None => HashMap::new(),
    }
}

pub async fn get_state(
    api: Arc<GrpcApi>,
    req: rt::GetStateRequest,
) -> Result<rt::GetStateResponse, Status> {
    let entry = store(&api, &req.store_name)?;
    check_key(&entry, &req.key)?;
    consistency(req.consistency)
        .and_then(|c| parse_consistency(c).map(drop))
        .map_err(|c| errors::bad_input(Rpc::Get, &entry.name, &req.key, &c))?;
    let item = entry
        .store
        .get(&entry.prefix.apply(&req.key))
        .await
        .map_err(|e| errors::store(Rpc::Get, &entry.name, &req.key, &e))?;
    Ok(match item {
        Some(item) => rt::GetStateResponse {
            metadata: item_metadata(&item),
            data: item.data.to_vec(),
            etag: item.etag.unwrap_or_default(),
        },
        None => rt::GetStateResponse::default(),
    })
}

pub async fn get_bulk_state(
    api: Arc<GrpcApi>,
    req: rt::GetBulkStateRequest,
) -> Result<rt::GetBulkStateResponse, Status> {
    let entry = store(&api, &req.store_name)?;
    if req.keys.is_empty() {
        return Ok(rt::GetBulkStateResponse::default());
    }
    for key in &req.keys {
        check_key(&entry, key)?;
    }
    // The stores read natively in bulk, so `parallelism` needs no enforcing (as over HTTP).
    let prefixed: Vec<String> = req.keys.iter().map(|k| entry.prefix.apply(k)).collect();
    let results = entry.store.bulk_get(&prefixed).await;
    let items = req
        .keys
        .into_iter()
        .zip(results)
        .map(|(key, result)| match result {
            Ok(Some(item)) => rt::BulkStateItem {
                key,
                metadata: item_metadata(&item),
                data: item.data.to_vec(),
                etag: item.etag.unwrap_or_default(),
                error: String::new(),
            },
            Ok(None) => rt::BulkStateItem {
                key,
                ..Default::default()
            },
            Err(e) => rt::BulkStateItem {
                key,
                error: e.to_string(),
                ..Default::default()
            },
        })
        .collect();
    Ok(rt::GetBulkStateResponse { items })
}

pub async fn save_state(api: Arc<GrpcApi>, req: rt::SaveStateRequest) -> Result<(), Status> {
    let entry = store(&api, &req.store_name)?;
    let mut writes = Vec::with_capacity(req.states.len());
    for item in req.states {
        check_key(&entry, &item.key)?;
        let bad = |c: String| errors::bad_input(Rpc::Save, &entry.name, &item.key, &c);
        let ttl = item.metadata.get(TTL).map(String::as_str);
        let opts = options(item.etag.as_ref(), item.options.as_ref(), ttl).map_err(bad)?;
        // gRPC values are bytes and are stored as they are, without JSON encoding.
        let write = set_request(&entry, &item.key, Bytes::from(item.value), opts).map_err(bad)?;
        writes.push(write);
    }
    match writes.len() {
        0 => Ok(()),
        1 => {
            let write = writes.remove(0);
            entry
                .store
                .set(write)
                .await
                .map_err(|e| errors::store(Rpc::Save, &entry.name, "", &e))
        }
        _ => {
            let results = entry.store.bulk_set(writes).await;
            first_failure(Rpc::Save, &entry.name, results)
        }
    }
}

/// The outcome of independent writes: a conflict wins (so the client can retry), else the
/// first failure.
fn first_failure(
    rpc: Rpc,
    store: &str,
    results: Vec<Result<(), StoreError>>,
) -> Result<(), Status> {
    let errors: Vec<StoreError> = results.into_iter().filter_map(Result::err).collect();
    let worst = errors
        .iter()
        .find(|e| matches!(e, StoreError::Conflict(_)))
        .or(errors.first());
    match worst {
        Some(e) => Err(errors::store(rpc, store, "", e)),
        None => Ok(()),
    }
}

pub async fn delete_state(api: Arc<GrpcApi>, req: rt::DeleteStateRequest) -> Result<(), Status> {
    let entry = store(&api, &req.store_name)?;
    check_key(&entry, &req.key)?;
    let bad = |c: String| errors::bad_input(Rpc::Delete, &entry.name, &req.key, &c);
    let opts = options(req.etag.as_ref(), req.options.as_ref(), None).map_err(bad)?;
    let delete = delete_request(&entry, &req.key, opts).map_err(bad)?;
    entry
        .store
        .delete(delete)
        .await
        .map_err(|e| errors::store(Rpc::Delete, &entry.name, &req.key, &e))
}

/// Independent deletes, as daprd runs them: not atomic; use a transaction for that.
pub async fn delete_bulk_state(
    api: Arc<GrpcApi>,
    req: rt::DeleteBulkStateRequest,
) -> Result<(), Status> {
    let entry = store(&api, &req.store_name)?;
    let mut deletes = Vec::with_capacity(req.states.len());
    for item in &req.states {
        check_key(&entry, &item.key)?;
        let bad = |c: String| errors::bad_input(Rpc::BulkDelete, &entry.name, &item.key, &c);
        let opts = options(item.etag.as_ref(), item.options.as_ref(), None).map_err(bad)?;
        deletes.push(delete_request(&entry, &item.key, opts).map_err(bad)?);
    }
    let results = join_all(deletes.into_iter().map(|d| entry.store.delete(d))).await;
    first_failure(Rpc::BulkDelete, &entry.name, results)
}

pub async fn execute_state_transaction(
    api: Arc<GrpcApi>,
    req: rt::ExecuteStateTransactionRequest,
) -> Result<(), Status> {
    let entry = store(&api, &req.store_name)?;
    // A TTL in the request's metadata applies to every upsert and wins over an operation's
    // own, as the query string's does over HTTP.
    let request_ttl = req.metadata.get(TTL).map(String::as_str);
    let mut ops = Vec::with_capacity(req.operations.len());
    for (i, op) in req.operations.into_iter().enumerate() {
        let Some(mut item) = op.request else {
            return Err(Status::invalid_argument(format!(
                "operation {} has no request",
                i + 1
            )));
        };
        check_key(&entry, &item.key)?;
        let bad = |c: String| errors::bad_input(Rpc::Transaction, &entry.name, &item.key, &c);
        let ttl = request_ttl.or(item.metadata.get(TTL).map(String::as_str));
        let opts = options(item.etag.as_ref(), item.options.as_ref(), ttl).map_err(bad)?;
        ops.push(match op.operation_type.as_str() {
            "upsert" => Operation::Upsert(
                set_request(
                    &entry,
                    &item.key,
                    Bytes::from(std::mem::take(&mut item.value)),
                    opts,
                )
                .map_err(bad)?,
            ),
            "delete" => Operation::Delete(delete_request(&entry, &item.key, opts).map_err(bad)?),
            other => return Err(errors::unsupported_operation(other)),
        });
    }
    if ops.is_empty() {
        return Ok(());
    }
    entry
        .store
        .transact(ops)
        .await
        .map_err(|e| errors::store(Rpc::Transaction, &entry.name, "", &e))
}

/// No statecar store indexes JSON documents (the HTTP alpha query API answers the same).
pub async fn query_state(
    api: Arc<GrpcApi>,
    req: rt::QueryStateRequest,
) -> Result<rt::QueryStateResponse, Status> {
    let entry = store(&api, &req.store_name)?;
    Err(errors::query_not_supported(&entry.name))
}

pub async fn get_metadata(
    api: Arc<GrpcApi>,
    _req: rt::GetMetadataRequest,
) -> Result<rt::GetMetadataResponse, Status> {
    let md = Metadata::of(&api.state);
    let registered_components = md
        .components
        .into_iter()
        .map(|c| rt::RegisteredComponents {
            name: c.name,
            r#type: c.component_type,
            version: c.version,
            capabilities: c.capabilities.iter().map(|s| s.to_string()).collect(),
        })
        .collect();
    Ok(rt::GetMetadataResponse {
        id: md.app_id,
        registered_components,
        extended_metadata: md.extended.into_iter().collect(),
        app_connection_properties: Some(rt::AppConnectionProperties {
            port: md.app_port.map_or(0, i32::from),
            protocol: "http".into(),
            channel_address: "127.0.0.1".into(),
            max_concurrency: -1,
            health: None,
        }),
        runtime_version: RUNTIME_VERSION.into(),
        actor_runtime: Some(rt::ActorRuntime {
            runtime_status: rt::actor_runtime::ActorRuntimeStatus::Disabled as i32,
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub async fn set_metadata(api: Arc<GrpcApi>, req: rt::SetMetadataRequest) -> Result<(), Status> {
    set_extended(&api.state, req.key, req.value);
    Ok(())
}
