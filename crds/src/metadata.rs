//! Resolved component metadata (`name -> text value`) and the value parsers Dapr uses: Go-style
//! booleans, durations given as milliseconds or Go duration syntax, and integers.

use std::collections::BTreeMap;
use std::time::Duration;

/// A metadata value that could not be used. `field` is the metadata name as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metadata field {field:?}: {message}")]
pub struct MetadataError {
    pub field: String,
    pub message: String,
}

impl MetadataError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Component metadata with names matched case-insensitively, as Dapr's decoder does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataMap {
    // lower-cased name -> (name as written, value)
    entries: BTreeMap<String, (String, String)>,
}

/// Names whose values must never be echoed back in errors or logs.
pub fn is_sensitive(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "token", "key"]
        .iter()
        .any(|s| n.contains(s))
        && n != "keyprefix"
}

impl MetadataMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.entries
            .insert(name.to_ascii_lowercase(), (name, value.into()));
    }

    /// The value of `name` (any case), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .get(&name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, treating an empty value as absent.
    pub fn get_nonempty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.trim().is_empty())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.values().map(|(n, _)| n.as_str())
    }

    fn invalid(&self, name: &str, value: &str, expected: &str) -> MetadataError {
        let field = self
            .entries
            .get(&name.to_ascii_lowercase())
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| name.to_string());
        let message = if is_sensitive(name) {
            format!("invalid value: expected {expected}")
        } else {
            format!("invalid value {value:?}: expected {expected}")
        };
        MetadataError::new(field, message)
    }

    pub fn get_bool(&self, name: &str) -> Result<Option<bool>, MetadataError> {
        let Some(v) = self.get_nonempty(name) else {
            return Ok(None);
        };
        parse_bool(v)
            .map(Some)
            .ok_or_else(|| self.invalid(name, v, "a boolean (true/false)"))
    }

    pub fn get_i64(&self, name: &str) -> Result<Option<i64>, MetadataError> {
        let Some(v) = self.get_nonempty(name) else {
            return Ok(None);
        };
        v.trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| self.invalid(name, v, "an integer"))
    }

    /// A duration: a plain integer is milliseconds, a negative integer means "disabled"
    /// (`Some(None)`), otherwise Go duration syntax such as `500ms`, `5s`, `1m30s`.
    pub fn get_duration(&self, name: &str) -> Result<Option<Option<Duration>>, MetadataError> {
        let Some(v) = self.get_nonempty(name) else {
            return Ok(None);
        };
        let v = v.trim();
        if let Ok(ms) = v.parse::<i64>() {
            return Ok(Some(u64::try_from(ms).ok().map(Duration::from_millis)));
        }
        parse_go_duration(v)
            .map(|d| Some(Some(d)))
            .ok_or_else(|| self.invalid(name, v, "a duration such as 500ms, 5s or 1m"))
    }
}

impl FromIterator<(String, String)> for MetadataMap {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        let mut m = Self::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration` for non-negative durations (`1h2m3.5s`, `300ms`, `2us`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * nanos_per_unit;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("s"), None);
        assert_eq!(parse_go_duration("5 s"), None);
        assert_eq!(parse_go_duration("-5s"), None);
    }

    #[test]
    fn names_are_case_insensitive() {
        let mut m = MetadataMap::new();
        m.insert("RedisHost", "h:1");
        assert_eq!(m.get("redishost"), Some("h:1"));
        assert_eq!(m.get("REDISHOST"), Some("h:1"));
    }

    #[test]
    fn durations_as_milliseconds_or_disabled() {
        let m: MetadataMap = [
            ("a".to_string(), "250".to_string()),
            ("b".to_string(), "-1".to_string()),
            ("c".to_string(), "2s".to_string()),
            ("d".to_string(), "soon".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            m.get_duration("a"),
            Ok(Some(Some(Duration::from_millis(250))))
        );
        assert_eq!(m.get_duration("b"), Ok(Some(None)));
        assert_eq!(m.get_duration("c"), Ok(Some(Some(Duration::from_secs(2)))));
        assert_eq!(m.get_duration("missing"), Ok(None));
        let err = m.get_duration("d").unwrap_err();
        assert_eq!(err.field, "d");
        assert!(err.message.contains("soon"));
    }

    #[test]
    fn sensitive_values_are_not_echoed() {
        let mut m = MetadataMap::new();
        m.insert("redisPassword", "hunter2");
        let err = m.get_bool("redisPassword").unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
