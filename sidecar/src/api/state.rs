//! The state endpoints: save, get, bulk get, delete, transaction (and the query stub).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;

use super::AppState;
use super::body::{self, StateItem};
use super::errors::{ApiError, Endpoint};
use crate::components::StoreEntry;
use crate::state::{
    LookupError, WriteOptions, delete_request, is_illegal_key, lookup as lookup_store,
    parse_consistency, rfc3339, set_request as store_write,
};
use crate::store::{Item, Operation, SetRequest, StoreError};

type Shared = State<Arc<AppState>>;
type ApiResult = Result<Response, ApiError>;

/// `metadata.*`, `concurrency` and `consistency` from the query string, with the
/// `concurrency`/`consistency` request headers as a fallback.
#[derive(Debug, Default)]
struct Params {
    metadata: HashMap<String, String>,
    concurrency: Option<String>,
    consistency: Option<String>,
}

impl Params {
    fn new(query: Option<&str>, headers: &HeaderMap) -> Self {
        let mut p = Params::default();
        let pairs: Vec<(String, String)> = match query {
            Some(q) if !q.is_empty() => serde_urlencoded::from_str(q).unwrap_or_default(),
            _ => Vec::new(),
        };
        for (name, value) in pairs {
            if let Some(key) = name.strip_prefix("metadata.") {
                p.metadata.entry(key.to_string()).or_insert(value);
            } else if name == "concurrency" {
                p.concurrency.get_or_insert(value);
            } else if name == "consistency" {
                p.consistency.get_or_insert(value);
            }
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        p.concurrency = p.concurrency.or_else(|| header("concurrency"));
        p.consistency = p.consistency.or_else(|| header("consistency"));
        p
    }
}

fn lookup(state: &AppState, store: &str) -> Result<Arc<StoreEntry>, ApiError> {
    lookup_store(&state.registry, store).map_err(|e| match e {
        LookupError::NotConfigured => ApiError::store_not_configured(store, &state.app_id),
        LookupError::NotFound => ApiError::store_not_found(store, &state.app_id),
    })
}

fn check_key(entry: &StoreEntry, key: &str, field: &str) -> Result<(), ApiError> {
    if is_illegal_key(key) {
        return Err(ApiError::illegal_key(&entry.name, key, field));
    }
    Ok(())
}

fn body_or_malformed(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::malformed(e.body_text()))
}

/// Turns one item of a save body or transaction into a store write.
fn set_request(
    entry: &StoreEntry,
    endpoint: Endpoint,
    body: &Bytes,
    item: &StateItem<'_>,
    key: &str,
    params: &Params,
) -> Result<SetRequest, ApiError> {
    let ttl_key = "ttlInSeconds";
    let opts = WriteOptions {
        etag: item.etag.as_deref(),
        concurrency: item
            .concurrency
            .as_deref()
            .or(params.concurrency.as_deref()),
        consistency: item
            .consistency
            .as_deref()
            .or(params.consistency.as_deref()),
        // A TTL in the query string wins over the item's own.
        ttl_in_seconds: params
            .metadata
            .get(ttl_key)
            .or_else(|| item.metadata.get(ttl_key))
            .map(String::as_str),
    };
    // The value is a slice of the request body: no copy, and exactly the text the client sent.
    let value = match item.value {
        Some(raw) => body.slice_ref(raw.get().as_bytes()),
        None => Bytes::from_static(b"null"),
    };
    store_write(entry, key, value, opts)
        .map_err(|cause| ApiError::bad_input(endpoint, &entry.name, key, &cause))
}

pub async fn save(
    State(state): Shared,
    Path(store): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let entry = lookup(&state, &store)?;
    let body = body_or_malformed(body)?;
    let items = body::parse_save(&body).map_err(|e| ApiError::malformed(e.to_string()))?;
    if items.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let params = Params::new(query.as_deref(), &headers);
    let mut reqs = Vec::with_capacity(items.len());
    for item in &items {
        let key = item.key.as_deref().unwrap_or_default();
        if key.is_empty() {
            return Err(ApiError::malformed("\"key\" is a required field"));
        }
        check_key(&entry, key, key)?;
        reqs.push(set_request(
            &entry,
            Endpoint::Save,
            &body,
            item,
            key,
            &params,
        )?);
    }
    if reqs.len() == 1 {
        let req = reqs.pop().expect("one request");
        entry
            .store
            .set(req)
            .await
            .map_err(|e| ApiError::store(Endpoint::Save, &entry.name, "", &e))?;
    } else {
        let results = entry.store.bulk_set(reqs).await;
        let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if !errors.is_empty() {
            return Err(ApiError::save_failures(&entry.name, &errors));
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `/v1.0/state/{store}/{key}`: GET and DELETE address a key; POST and PUT on the keys `bulk`
/// and `transaction` are the bulk and transaction endpoints.
///
/// Takes the request whole, so that a GET neither copies the headers nor reads a body.
pub async fn by_key(
    state: Shared,
    Path((store, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> ApiResult {
    let params = Params::new(query.as_deref(), request.headers());
    let body = |request: Request| Bytes::from_request(request, &());
    // GET is the hot path; the other branches are boxed so that every request's future (which
    // is as large as its largest branch) stays small.
    match (request.method(), key.as_str()) {
        (&Method::GET, _) => get(state, store, key, params).await,
        (&Method::DELETE, _) => {
            Box::pin(delete(state, store, key, params, request.headers())).await
        }
        (&Method::POST | &Method::PUT, "bulk") => {
            Box::pin(bulk_get(state, store, body(request).await)).await
        }
        (&Method::POST | &Method::PUT, "transaction") => {
            Box::pin(transaction(state, store, params, body(request).await)).await
        }
        _ => Err(ApiError::direct_invoke()),
    }
}

async fn get(State(state): Shared, store: String, key: String, params: Params) -> ApiResult {
    let entry = lookup(&state, &store)?;
    check_key(&entry, &key, &key)?;
    parse_consistency(params.consistency.as_deref())
        .map_err(|c| ApiError::bad_input(Endpoint::Get, &store, &key, &c))?;
    let item = entry
        .store
        .get(&entry.prefix.apply(&key))
        .await
        .map_err(|e| ApiError::store(Endpoint::Get, &store, &key, &e))?;
    Ok(match item {
        Some(item) => get_response(item),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// The answer to a GET of a key that exists: the stored bytes as they are, the etag and the
/// expiry as headers.
pub fn get_response(item: Item) -> Response {
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        item.data,
    )
        .into_response();
    let headers = response.headers_mut();
    if let Some(etag) = item.etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(at) = item.expires_at
        && let Ok(v) = HeaderValue::from_str(&rfc3339(at))
    {
        headers.insert(HeaderName::from_static("metadata.ttlexpiretime"), v);
    }
    response
}

#[derive(Serialize)]
struct BulkItem<'a> {
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Cow<'a, RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<ItemMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct ItemMetadata {
    #[serde(rename = "ttlExpireTime")]
    ttl_expire_time: String,
}

/// Stored bytes as JSON: verbatim when they are JSON, else as a JSON string.
fn as_json(data: &[u8]) -> Cow<'_, RawValue> {
    match serde_json::from_slice::<&RawValue>(data) {
        Ok(raw) => Cow::Borrowed(raw),
        Err(_) => {
            let text = serde_json::to_string(&String::from_utf8_lossy(data)).unwrap_or_default();
            Cow::Owned(RawValue::from_string(text).unwrap_or_default())
        }
    }
}

async fn bulk_get(
    State(state): Shared,
    store: String,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let entry = lookup(&state, &store)?;
    let body = body_or_malformed(body)?;
    let req = body::parse_bulk(&body)
        .map_err(|e| ApiError::malformed(format!("failed deserializing HTTP body: {e}")))?;
    for key in &req.keys {
        check_key(&entry, key, key)?;
    }
    // Both stores read natively in bulk (Redis: MULTI/EXEC), so `parallelism` needs no enforcing.
    let prefixed: Vec<String> = req.keys.iter().map(|k| entry.prefix.apply(k)).collect();
    let results: Vec<Result<Option<Item>, _>> = if prefixed.is_empty() {
        Vec::new()
    } else {
        entry.store.bulk_get(&prefixed).await
    };
    let json = bulk_body(&req.keys, &results).map_err(|e| {
        ApiError::store(
            Endpoint::BulkGet,
            &store,
            "",
            &StoreError::Backend(e.to_string()),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// The bulk get answer: one object per requested key, in order, each value verbatim when it
/// is JSON; with the trailing newline Dapr's encoder writes.
pub fn bulk_body(
    keys: &[String],
    results: &[Result<Option<Item>, StoreError>],
) -> Result<Vec<u8>, serde_json::Error> {
    let items: Vec<BulkItem<'_>> = keys
        .iter()
        .zip(results)
        .map(|(key, result)| {
            let mut out = BulkItem {
                key,
                data: None,
                etag: None,
                metadata: None,
                error: None,
            };
            match result {
                Ok(Some(item)) => {
                    out.data = Some(as_json(&item.data));
                    out.etag = item.etag.as_deref();
                    out.metadata = item.expires_at.map(|at| ItemMetadata {
                        ttl_expire_time: rfc3339(at),
                    });
                }
                Ok(None) => {}
                Err(e) => out.error = Some(e.to_string()),
            }
            out
        })
        .collect();
    let mut json = serde_json::to_vec(&items)?;
    json.push(b'\n');
    Ok(json)
}

async fn delete(
    State(state): Shared,
    store: String,
    key: String,
    params: Params,
    headers: &HeaderMap,
) -> ApiResult {
    let entry = lookup(&state, &store)?;
    check_key(&entry, &key, &key)?;
    let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
    let opts = WriteOptions {
        etag: if_match.map(str::trim),
        concurrency: params.concurrency.as_deref(),
        consistency: params.consistency.as_deref(),
        ttl_in_seconds: None,
    };
    let req = delete_request(&entry, &key, opts)
        .map_err(|c| ApiError::bad_input(Endpoint::Delete, &store, &key, &c))?;
    entry
        .store
        .delete(req)
        .await
        .map_err(|e| ApiError::store(Endpoint::Delete, &store, &key, &e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn transaction(
    State(state): Shared,
    store: String,
    params: Params,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let entry = lookup(&state, &store)?;
    let body = body_or_malformed(body)?;
    let tx = body::parse_transaction(&body)
        .map_err(|e| ApiError::malformed(format!("failed deserializing HTTP body: {e}")))?;
    let mut ops = Vec::with_capacity(tx.operations.len());
    for (i, op) in tx.operations.iter().enumerate() {
        let key = op.request.key.as_deref().unwrap_or_default();
        if key.is_empty() {
            return Err(ApiError::malformed(format!(
                "\"key\" is a required field (operation {})",
                i + 1
            )));
        }
        check_key(&entry, key, "")?;
        let op = match op.operation.as_str() {
            "upsert" => Operation::Upsert(set_request(
                &entry,
                Endpoint::Transaction,
                &body,
                &op.request,
                key,
                &params,
            )?),
            "delete" => {
                let opts = WriteOptions {
                    etag: op.request.etag.as_deref(),
                    concurrency: op
                        .request
                        .concurrency
                        .as_deref()
                        .or(params.concurrency.as_deref()),
                    consistency: op
                        .request
                        .consistency
                        .as_deref()
                        .or(params.consistency.as_deref()),
                    ttl_in_seconds: None,
                };
                Operation::Delete(
                    delete_request(&entry, key, opts)
                        .map_err(|c| ApiError::bad_input(Endpoint::Transaction, &store, key, &c))?,
                )
            }
            other => return Err(ApiError::unsupported_operation(other)),
        };
        ops.push(op);
    }
    if !ops.is_empty() {
        entry
            .store
            .transact(ops)
            .await
            .map_err(|e| ApiError::store(Endpoint::Transaction, &store, "", &e))?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The alpha query API: no statecar store indexes JSON documents yet.
pub async fn query(State(state): Shared, Path(store): Path<String>) -> ApiResult {
    let entry = lookup(&state, &store)?;
    Err(ApiError::query_not_supported(&entry.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_header_params() {
        let mut headers = HeaderMap::new();
        headers.insert("consistency", HeaderValue::from_static("strong"));
        headers.insert("concurrency", HeaderValue::from_static("last-write"));
        let p = Params::new(
            Some("metadata.ttlInSeconds=5&metadata.ttlInSeconds=9&concurrency=first-write&x=1"),
            &headers,
        );
        assert_eq!(p.metadata["ttlInSeconds"], "5");
        assert_eq!(p.concurrency.as_deref(), Some("first-write"));
        assert_eq!(p.consistency.as_deref(), Some("strong"));
    }
}
