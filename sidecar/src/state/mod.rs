//! The state building block, whatever the wire: which store a request names, the key rule, and
//! how the options of a write (etag, concurrency, consistency, TTL) become a store request.
//!
//! The HTTP API (`api`) and the gRPC API (`grpc`) decode their own encodings, call this, and
//! word its errors in their own formats. Neither decides anything this module decides.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use crate::components::{Registry, StoreEntry};
use crate::store::{DeleteRequest, SetRequest};

/// Why a request's store name does not resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    /// No state store is configured at all.
    NotConfigured,
    /// Stores exist, but none by that name.
    NotFound,
}

/// The live store called `store`.
pub fn lookup(registry: &Registry, store: &str) -> Result<Arc<StoreEntry>, LookupError> {
    let stores = registry.load();
    if stores.by_name.is_empty() {
        return Err(LookupError::NotConfigured);
    }
    stores
        .by_name
        .get(store)
        .cloned()
        .ok_or(LookupError::NotFound)
}

/// Every configured store, by name.
pub fn entries(registry: &Registry) -> Vec<Arc<StoreEntry>> {
    let stores = registry.load();
    let mut entries: Vec<_> = stores.by_name.values().cloned().collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

/// `||` separates Dapr's key prefix from the key, so a key may not contain it.
pub fn is_illegal_key(key: &str) -> bool {
    key.contains("||")
}

/// An etag names a version: a decimal integer. Empty means none.
pub fn parse_etag(etag: Option<&str>) -> Result<Option<u64>, String> {
    match etag {
        None | Some("") => Ok(None),
        Some(e) => e
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("invalid etag value: {e:?} is not an etag this store issued")),
    }
}

/// Returns true for first-write.
pub fn parse_concurrency(v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("") | Some("last-write") => Ok(false),
        Some("first-write") => Ok(true),
        Some(other) => Err(format!(
            "unrecognized concurrency model '{other}': expected first-write or last-write"
        )),
    }
}

/// Returns true for strong.
pub fn parse_consistency(v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("") | Some("eventual") => Ok(false),
        Some("strong") => Ok(true),
        Some(other) => Err(format!(
            "unrecognized consistency model '{other}': expected strong or eventual"
        )),
    }
}

/// The `ttlInSeconds` metadata value of a write, else the component default.
/// `None` (and any value ≤ 0) = persistent.
pub fn resolve_ttl(
    ttl_in_seconds: Option<&str>,
    default: Option<i64>,
) -> Result<Option<u64>, String> {
    let ttl = match ttl_in_seconds {
        Some(v) => Some(v.trim().parse::<i64>().map_err(|_| {
            format!("failed to parse ttlInSeconds {v:?}: expected an integer number of seconds")
        })?),
        None => default,
    };
    Ok(ttl.filter(|t| *t > 0).map(|t| t as u64))
}

/// The options of one write or delete, as the client spelled them; `None` = not given.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriteOptions<'a> {
    pub etag: Option<&'a str>,
    pub concurrency: Option<&'a str>,
    pub consistency: Option<&'a str>,
    /// The `ttlInSeconds` metadata value (writes only).
    pub ttl_in_seconds: Option<&'a str>,
}

/// A write of `value` under the user key `key`. The error is the cause, for the caller to word.
pub fn set_request(
    entry: &StoreEntry,
    key: &str,
    value: Bytes,
    opts: WriteOptions<'_>,
) -> Result<SetRequest, String> {
    Ok(SetRequest {
        key: entry.prefix.apply(key),
        value,
        etag: parse_etag(opts.etag)?,
        first_write: parse_concurrency(opts.concurrency)?,
        ttl: resolve_ttl(opts.ttl_in_seconds, entry.default_ttl)?,
        strong: parse_consistency(opts.consistency)?,
    })
}

/// A delete of the user key `key`. The concurrency option is checked although a delete only
/// depends on the etag, as Dapr rejects an unknown one there too.
pub fn delete_request(
    entry: &StoreEntry,
    key: &str,
    opts: WriteOptions<'_>,
) -> Result<DeleteRequest, String> {
    let etag = parse_etag(opts.etag)?;
    parse_concurrency(opts.concurrency)?;
    Ok(DeleteRequest {
        key: entry.prefix.apply(key),
        etag,
        strong: parse_consistency(opts.consistency)?,
    })
}

/// RFC 3339 in UTC with second precision, e.g. `2025-01-01T10:00:00Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        let at = |s| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_735_725_600), "2025-01-01T10:00:00Z");
    }

    #[test]
    fn option_values() {
        assert_eq!(parse_concurrency(Some("first-write")), Ok(true));
        assert_eq!(parse_concurrency(None), Ok(false));
        assert!(parse_concurrency(Some("First-Write")).is_err());
        assert_eq!(parse_consistency(Some("strong")), Ok(true));
        assert!(parse_consistency(Some("weak")).is_err());
        assert_eq!(parse_etag(Some("007")), Ok(Some(7)));
        assert_eq!(parse_etag(Some("")), Ok(None));
        assert!(parse_etag(Some("abc")).is_err());
        assert!(parse_etag(Some("-1")).is_err());
    }

    #[test]
    fn ttl_resolution() {
        assert_eq!(resolve_ttl(Some("60"), None), Ok(Some(60)));
        assert_eq!(resolve_ttl(Some(" 60 "), None), Ok(Some(60)));
        assert_eq!(resolve_ttl(Some("-1"), Some(30)), Ok(None));
        assert_eq!(resolve_ttl(Some("0"), None), Ok(None));
        assert_eq!(resolve_ttl(None, Some(30)), Ok(Some(30)));
        assert_eq!(resolve_ttl(None, None), Ok(None));
        assert!(resolve_ttl(Some("foo"), None).is_err());
    }

    #[test]
    fn illegal_keys() {
        assert!(is_illegal_key("a||b"));
        assert!(!is_illegal_key("a|b"));
    }
}
