//! Body decoding of the state API (`statecar::api::body`): the save array, the bulk get object
//! and the transaction object, from arbitrary bytes. Beyond "no panic": every `value` that
//! decodes is a slice of the input and is itself valid JSON (the store keeps it verbatim).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use statecar::api::body;

fn check_value(data: &[u8], value: Option<&RawValue>) {
    let Some(raw) = value else { return };
    let text = raw.get();
    let start = text.as_ptr() as usize;
    let base = data.as_ptr() as usize;
    assert!(
        start >= base && start + text.len() <= base + data.len(),
        "value is not a slice of the body"
    );
    assert!(
        serde_json::from_str::<IgnoredAny>(text).is_ok(),
        "value is not JSON: {text:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = body::parse_save(data) {
        for item in &items {
            check_value(data, item.value);
        }
    }
    if let Ok(bulk) = body::parse_bulk(data) {
        assert!(bulk.keys.len() <= data.len());
    }
    if let Ok(tx) = body::parse_transaction(data) {
        for op in &tx.operations {
            check_value(data, op.request.value);
        }
    }
});
