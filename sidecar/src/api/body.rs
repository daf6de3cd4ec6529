//! Request bodies of the state API. Field names match case-insensitively (as Dapr's Go decoder
//! does), unknown fields are ignored, and `value` is kept as the exact JSON text the client sent.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// One item of a save request, or the `request` of a transaction operation.
#[derive(Debug, Default)]
pub struct StateItem<'a> {
    pub key: Option<String>,
    pub value: Option<&'a RawValue>,
    /// The etag as sent: a JSON string or number.
    pub etag: Option<String>,
    pub metadata: HashMap<String, String>,
    pub concurrency: Option<String>,
    pub consistency: Option<String>,
}

#[derive(Debug, Default)]
pub struct BulkGetBody {
    pub keys: Vec<String>,
    pub parallelism: i64,
    pub metadata: HashMap<String, String>,
}

#[derive(Debug, Default)]
pub struct TransactionBody<'a> {
    pub operations: Vec<TransactionOp<'a>>,
    pub metadata: HashMap<String, String>,
}

#[derive(Debug, Default)]
pub struct TransactionOp<'a> {
    pub operation: String,
    pub request: StateItem<'a>,
}

/// Walks the fields of a JSON object with lower-cased names.
fn visit_fields<'de, A, F>(mut map: A, mut on_field: F) -> Result<(), A::Error>
where
    A: MapAccess<'de>,
    F: FnMut(&str, &mut A) -> Result<bool, A::Error>,
{
    while let Some(name) = map.next_key::<Cow<'de, str>>()? {
        // Field names are nearly always lower case already: only copy those that are not.
        let lower = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            name
        };
        if !on_field(&lower, &mut map)? {
            map.next_value::<IgnoredAny>()?;
        }
    }
    Ok(())
}

macro_rules! object_visitor {
    ($visitor:ident, $ty:ty, $expecting:literal, |$map:ident, $out:ident, $field:ident| $body:block) => {
        struct $visitor;
        impl<'de> Visitor<'de> for $visitor {
            type Value = $ty;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($expecting)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let mut $out = <$ty>::default();
                visit_fields(map, |$field, $map| $body)?;
                Ok($out)
            }
        }
    };
}

/// Metadata values: strings, or other scalars taken as their JSON text.
struct MetadataMap(HashMap<String, String>);

impl<'de> Deserialize<'de> for MetadataMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: Option<HashMap<String, serde_json::Value>> = Deserialize::deserialize(d)?;
        let mut out = HashMap::new();
        for (k, v) in raw.unwrap_or_default() {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::new(),
                v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => v.to_string(),
                _ => {
                    return Err(de::Error::custom(format!(
                        "metadata {k:?} must be a string, not an object or array"
                    )));
                }
            };
            out.insert(k, text);
        }
        Ok(MetadataMap(out))
    }
}

/// An etag given as a string or a number (some clients send numbers).
struct Etag(Option<String>);

impl<'de> Deserialize<'de> for Etag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Null => Ok(Etag(None)),
            serde_json::Value::String(s) => Ok(Etag(Some(s))),
            serde_json::Value::Number(n) => Ok(Etag(Some(n.to_string()))),
            _ => Err(de::Error::custom("etag must be a string")),
        }
    }
}

#[derive(Default)]
struct Options {
    concurrency: Option<String>,
    consistency: Option<String>,
}

object_visitor!(
    OptionsVisitor,
    Options,
    "an options object",
    |map, out, field| {
        match field {
            "concurrency" => out.concurrency = map.next_value()?,
            "consistency" => out.consistency = map.next_value()?,
            _ => return Ok(false),
        }
        Ok(true)
    }
);

impl<'de> Deserialize<'de> for Options {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Option::<OptionsOrNull>::deserialize(d)?
            .map(|o| o.0)
            .unwrap_or_default())
    }
}

struct OptionsOrNull(Options);
impl<'de> Deserialize<'de> for OptionsOrNull {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(OptionsVisitor).map(OptionsOrNull)
    }
}

object_visitor!(
    ItemVisitor,
    StateItem<'de>,
    "a state item object",
    |map, out, field| {
        match field {
            "key" => out.key = map.next_value()?,
            "value" => out.value = Some(map.next_value()?),
            "etag" => out.etag = map.next_value::<Etag>()?.0,
            "metadata" => out.metadata = map.next_value::<MetadataMap>()?.0,
            "options" => {
                let o: Options = map.next_value()?;
                out.concurrency = o.concurrency;
                out.consistency = o.consistency;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
);

impl<'de: 'a, 'a> Deserialize<'de> for StateItem<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ItemVisitor)
    }
}

object_visitor!(
    BulkVisitor,
    BulkGetBody,
    "a bulk get object",
    |map, out, field| {
        match field {
            "keys" => out.keys = list(map)?,
            "parallelism" => out.parallelism = map.next_value::<Option<i64>>()?.unwrap_or(0),
            "metadata" => out.metadata = map.next_value::<MetadataMap>()?.0,
            _ => return Ok(false),
        }
        Ok(true)
    }
);

impl<'de> Deserialize<'de> for BulkGetBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(BulkVisitor)
    }
}

object_visitor!(
    OpVisitor,
    TransactionOp<'de>,
    "a transaction operation",
    |map, out, field| {
        match field {
            "operation" => out.operation = map.next_value::<Option<String>>()?.unwrap_or_default(),
            "request" => {
                out.request = map
                    .next_value::<Option<StateItem<'de>>>()?
                    .unwrap_or_default()
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
);

impl<'de: 'a, 'a> Deserialize<'de> for TransactionOp<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(OpVisitor)
    }
}

object_visitor!(
    TxVisitor,
    TransactionBody<'de>,
    "a transaction object",
    |map, out, field| {
        match field {
            "operations" => out.operations = list(map)?,
            "metadata" => out.metadata = map.next_value::<MetadataMap>()?.0,
            _ => return Ok(false),
        }
        Ok(true)
    }
);

impl<'de: 'a, 'a> Deserialize<'de> for TransactionBody<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TxVisitor)
    }
}

/// A list where `null` reads as empty.
fn list<'de, T: Deserialize<'de>, A: MapAccess<'de>>(map: &mut A) -> Result<Vec<T>, A::Error> {
    Ok(map.next_value::<Option<Vec<T>>>()?.unwrap_or_default())
}

/// The save body: a JSON array of items (`null` = no items).
pub fn parse_save(body: &[u8]) -> Result<Vec<StateItem<'_>>, serde_json::Error> {
    Ok(serde_json::from_slice::<Option<Vec<StateItem<'_>>>>(body)?.unwrap_or_default())
}

pub fn parse_bulk(body: &[u8]) -> Result<BulkGetBody, serde_json::Error> {
    Ok(serde_json::from_slice::<Option<BulkGetBody>>(body)?.unwrap_or_default())
}

pub fn parse_transaction(body: &[u8]) -> Result<TransactionBody<'_>, serde_json::Error> {
    Ok(serde_json::from_slice::<Option<TransactionBody<'_>>>(body)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_items_keep_the_raw_value() {
        let items = parse_save(
            br#"[{"KEY":"a","Value":{"b": 1.50,"a":[1,2]},"etag":7,"metadata":{"ttlInSeconds":60},
                 "options":{"Concurrency":"first-write"},"extra":{"x":1}}]"#,
        )
        .unwrap();
        let item = &items[0];
        assert_eq!(item.key.as_deref(), Some("a"));
        assert_eq!(item.value.unwrap().get(), r#"{"b": 1.50,"a":[1,2]}"#);
        assert_eq!(item.etag.as_deref(), Some("7"));
        assert_eq!(item.metadata["ttlInSeconds"], "60");
        assert_eq!(item.concurrency.as_deref(), Some("first-write"));
    }

    #[test]
    fn malformed_save_bodies() {
        for body in [
            &b""[..],
            b"{}",
            b"foobar",
            br#"[{"key":"key1","value":"value1"},]"#,
            br#"[{"key":"k","etag":{}}]"#,
            br#"[{"key":"k","metadata":{"a":{}}}]"#,
            br#"[{"key":1}]"#,
        ] {
            assert!(
                parse_save(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(parse_save(b"[]").unwrap().is_empty());
        assert!(parse_save(b"null").unwrap().is_empty());
        let items = parse_save(br#"[{"key":"key1","vae":"value1"}]"#).unwrap();
        assert!(items[0].value.is_none());
    }

    #[test]
    fn transaction_body() {
        let tx = parse_transaction(
            br#"{"operations":[{"operation":"upsert","request":{"key":"a","value":"x"}},
                {"Operation":"delete","request":{"key":"b","etag":"3"}},{"operation":"delete"}],
                "metadata":{"partitionKey":"p"}}"#,
        )
        .unwrap();
        assert_eq!(tx.operations.len(), 3);
        assert_eq!(tx.operations[1].operation, "delete");
        assert_eq!(tx.operations[1].request.etag.as_deref(), Some("3"));
        assert_eq!(tx.operations[2].request.key, None);
        assert_eq!(tx.metadata["partitionKey"], "p");
        assert!(parse_transaction(b"[]").is_err());
        assert!(parse_transaction(br#"{"operations":{}}"#).is_err());
    }

    #[test]
    fn bulk_body() {
        let b = parse_bulk(br#"{"keys":["a","b"],"parallelism":10}"#).unwrap();
        assert_eq!(b.keys, ["a", "b"]);
        assert_eq!(b.parallelism, 10);
        assert!(parse_bulk(b"{}").unwrap().keys.is_empty());
        assert!(parse_bulk(br#"{"keys":"a"}"#).is_err());
    }
}
