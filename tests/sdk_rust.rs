//! The official Dapr Rust SDK (the `dapr` crate) against the real binary, over both stores:
//! the SDK's `Client` for save (with etag and options), get, delete, bulk delete and metadata,
//! and the crate's generated gRPC client for the RPCs the `Client` does not wrap (bulk get,
//! transactions) and for status codes. Values cross between gRPC and HTTP both ways.

use std::collections::HashMap;

use dapr::client::{ClientOptions, TonicClientWithAuth};
use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::common::v1::state_options::{StateConcurrency, StateConsistency};
use dapr::dapr::proto::runtime::v1 as rt;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use serde_json::json;
use statecar_tests::{Sidecar, StoreKind, key_path, store_path, store_tests, unique};
use tonic::Code;
use tonic::transport::Channel;

const STORE: &str = "statestore";

store_tests!(
    rust_sdk_client,
    generated_client_and_status_codes,
    grpc_and_http_share_state
);

fn address(sc: &Sidecar) -> String {
    format!("http://127.0.0.1:{}", sc.grpc_port())
}

async fn sdk(sc: &Sidecar) -> dapr::Client<TonicClientWithAuth> {
    let opts = ClientOptions::new()
        .with_address(address(sc))
        .without_api_token();
    dapr::Client::<TonicClientWithAuth>::from_options(opts)
        .await
        .expect("the Rust SDK connects")
}

async fn raw(sc: &Sidecar) -> DaprClient<Channel> {
    DaprClient::connect(address(sc))
        .await
        .expect("the generated client connects")
}

fn etag(v: &str) -> Option<common::Etag> {
    Some(common::Etag { value: v.into() })
}

fn options(c: StateConcurrency, s: StateConsistency) -> Option<common::StateOptions> {
    Some(common::StateOptions {
        concurrency: c as i32,
        consistency: s as i32,
    })
}

async fn rust_sdk_client(kind: StoreKind) {
    let sc = Sidecar::builder().store(kind).start().await;
    let mut client = sdk(&sc).await;
    let key = unique("rs");

    client
        .save_state(STORE, &key, b"v1".to_vec(), None, None, None)
        .await
        .expect("save");
    let got = client.get_state(STORE, &key, None).await.expect("get");
    assert_eq!(got.data, b"v1");
    assert!(got.etag.parse::<u64>().is_ok(), "etag {:?}", got.etag);

    let first_write = options(
        StateConcurrency::ConcurrencyFirstWrite,
        StateConsistency::ConsistencyStrong,
    );
    client
        .save_state(
            STORE,
            &key,
            b"v2".to_vec(),
            etag(&got.etag),
            None,
            first_write,
        )
        .await
        .expect("save with the current etag");
    let stale = client
        .save_state(
            STORE,
            &key,
            b"v3".to_vec(),
            etag(&got.etag),
            None,
            first_write,
        )
        .await
        .expect_err("a stale etag is refused");
    assert!(format!("{stale:?}").contains("Aborted"), "{stale:?}");
    assert_eq!(
        client.get_state(STORE, &key, None).await.unwrap().data,
        b"v2"
    );

    let ttl = unique("rs-ttl");
    let md = HashMap::from([("ttlInSeconds".to_string(), "60".to_string())]);
    client
        .save_state(STORE, &ttl, b"x".to_vec(), None, Some(md), None)
        .await
        .expect("save with a TTL");
    let got = client.get_state(STORE, &ttl, None).await.unwrap();
    assert!(
        got.metadata.contains_key("ttlExpireTime"),
        "a value with a TTL reports its expiry: {:?}",
        got.metadata
    );

    client
        .delete_state(STORE, &key, None)
        .await
        .expect("delete");
    let gone = client.get_state(STORE, &key, None).await.unwrap();
    assert!(gone.data.is_empty() && gone.etag.is_empty());

    let (a, b) = (unique("rs-a"), unique("rs-b"));
    client
        .save_bulk_states(
            STORE,
            vec![
                common::StateItem {
                    key: a.clone(),
                    value: b"A".to_vec(),
                    ..Default::default()
                },
                common::StateItem {
                    key: b.clone(),
                    value: b"B".to_vec(),
                    ..Default::default()
                },
            ],
        )
        .await
        .expect("save two");
    client
        .delete_bulk_state(
            STORE,
            vec![(a.as_str(), Vec::new()), (b.as_str(), Vec::new())],
        )
        .await
        .expect("bulk delete");
    for k in [&a, &b] {
        assert!(
            client
                .get_state(STORE, k, None)
                .await
                .unwrap()
                .data
                .is_empty()
        );
    }

    client
        .set_metadata("owner", "rust-sdk")
        .await
        .expect("set metadata");
    let md = client.get_metadata().await.expect("metadata");
    assert_eq!(md.id, sc.app_id());
    assert_eq!(md.extended_metadata["owner"], "rust-sdk");
    let store = md
        .registered_components
        .iter()
        .find(|c| c.name == STORE)
        .expect("the store is registered");
    assert_eq!(store.r#type, kind.component_type());
    assert!(store.capabilities.iter().any(|c| c == "TRANSACTIONAL"));
}

async fn generated_client_and_status_codes(kind: StoreKind) {
    let sc = Sidecar::builder().store(kind).start().await;
    let mut c = raw(&sc).await;
    let (x, y, missing) = (unique("x"), unique("y"), unique("none"));
    let upsert =
        |key: &str, value: &[u8], etag: Option<common::Etag>| rt::TransactionalStateOperation {
            operation_type: "upsert".into(),
            request: Some(common::StateItem {
                key: key.into(),
                value: value.to_vec(),
                etag,
                ..Default::default()
            }),
        };
    let tx = |ops| rt::ExecuteStateTransactionRequest {
        store_name: STORE.into(),
        operations: ops,
        metadata: HashMap::new(),
    };
    c.execute_state_transaction(tx(vec![upsert(&x, b"1", None), upsert(&y, b"2", None)]))
        .await
        .expect("transaction");

    let bulk = c
        .get_bulk_state(rt::GetBulkStateRequest {
            store_name: STORE.into(),
            keys: vec![y.clone(), missing.clone(), x.clone()],
            parallelism: 4,
            metadata: HashMap::new(),
        })
        .await
        .expect("bulk get")
        .into_inner();
    let keys: Vec<_> = bulk.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, [y.as_str(), missing.as_str(), x.as_str()]);
    assert_eq!(bulk.items[0].data, b"2");
    assert!(bulk.items[1].data.is_empty() && bulk.items[1].etag.is_empty());
    assert_eq!(bulk.items[2].data, b"1");

    // A stale etag anywhere in a transaction: ABORTED and nothing applied.
    let err = c
        .execute_state_transaction(tx(vec![
            upsert(&x, b"10", None),
            upsert(&y, b"20", etag("999999")),
        ]))
        .await
        .expect_err("stale etag");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    let get = |key: &str| rt::GetStateRequest {
        store_name: STORE.into(),
        key: key.into(),
        ..Default::default()
    };
    assert_eq!(c.get_state(get(&x)).await.unwrap().into_inner().data, b"1");

    let status =
        |r: Result<tonic::Response<rt::GetStateResponse>, tonic::Status>| r.expect_err("an error");
    let e = status(
        c.get_state(rt::GetStateRequest {
            store_name: "nope".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "state store nope is not found");
    let e = status(c.get_state(get("a||b")).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), "input key/keyPrefix 'a||b' can't contain '||'");
    let e = c
        .save_state(rt::SaveStateRequest {
            store_name: STORE.into(),
            states: vec![common::StateItem {
                key: x.clone(),
                value: b"v".to_vec(),
                etag: etag("not-a-number"),
                ..Default::default()
            }],
        })
        .await
        .expect_err("invalid etag");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .delete_state(rt::DeleteStateRequest {
            store_name: STORE.into(),
            key: x.clone(),
            options: options(
                StateConcurrency::ConcurrencyUnspecified,
                StateConsistency::ConsistencyStrong,
            ),
            etag: etag("123456789"),
            ..Default::default()
        })
        .await
        .expect_err("etag mismatch on delete");
    assert_eq!(e.code(), Code::Aborted);
    let e = c
        .execute_state_transaction(tx(vec![rt::TransactionalStateOperation {
            operation_type: "merge".into(),
            request: Some(common::StateItem {
                key: x.clone(),
                ..Default::default()
            }),
        }]))
        .await
        .expect_err("unknown operation");
    assert_eq!(e.code(), Code::Unimplemented);
    assert_eq!(e.message(), "operation type merge not supported");
    let e = c
        .publish_event(rt::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: "t".into(),
            ..Default::default()
        })
        .await
        .expect_err("not a state RPC");
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("PublishEvent"), "{}", e.message());
}

async fn grpc_and_http_share_state(kind: StoreKind) {
    let sc = Sidecar::builder().store(kind).start().await;
    let mut c = raw(&sc).await;
    let key = unique("both");
    // Saved over HTTP, read over gRPC: the same bytes and etag.
    let r = sc
        .send(
            sc.http()
                .post(sc.url(&store_path(STORE)))
                .json(&json!([{"key": key, "value": {"n": 1}}])),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = sc.send(sc.http().get(sc.url(&key_path(&key)))).await;
    let http_etag = r.header("etag").expect("an etag");
    let got = c
        .get_state(rt::GetStateRequest {
            store_name: STORE.into(),
            key: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.data, br#"{"n":1}"#);
    assert_eq!(got.etag, http_etag);
    // Saved over gRPC with that etag, read over HTTP.
    c.save_state(rt::SaveStateRequest {
        store_name: STORE.into(),
        states: vec![common::StateItem {
            key: key.clone(),
            value: br#"{"n":2}"#.to_vec(),
            etag: etag(&http_etag),
            ..Default::default()
        }],
    })
    .await
    .expect("save with the etag HTTP reported");
    let r = sc.send(sc.http().get(sc.url(&key_path(&key)))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), r#"{"n":2}"#);
    assert_ne!(r.header("etag").expect("an etag"), http_etag);
}
