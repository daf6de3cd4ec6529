//! Responses, key escaping and assertions on statuses and error bodies.

use reqwest::header::HeaderMap;
use serde_json::Value;

/// A fully read HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// `METHOD /path`, for messages.
    pub what: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub async fn read(what: String, r: reqwest::Response) -> Resp {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading body failed: {e}"))
            .to_vec();
        Resp {
            what,
            status,
            headers,
            body,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (panics with the body otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body is not JSON ({e}); status {} body {:?}",
                self.what,
                self.status,
                self.text()
            )
        })
    }

    /// A header value (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name.to_ascii_lowercase())
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn etag(&self) -> Option<String> {
        self.header("etag")
    }

    pub fn content_type(&self) -> Option<String> {
        self.header("content-type")
    }

    /// Short description for assertion messages.
    pub fn describe(&self) -> String {
        let mut hs: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        hs.sort();
        let body = self.text();
        let body = if body.len() > 2000 {
            format!(
                "{}... ({} bytes)",
                &body[..body.floor_char_boundary(2000)],
                body.len()
            )
        } else {
            body
        };
        format!(
            "{} -> {} [{}] body {:?}",
            self.what,
            self.status,
            hs.join("; "),
            body
        )
    }

    /// Asserts the status code; returns self for chaining.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Resp {
        assert_eq!(
            self.status,
            status,
            "unexpected status: {}",
            self.describe()
        );
        self
    }

    /// Asserts 204 with an empty body and no Content-Type.
    #[track_caller]
    pub fn expect_no_content(&self) -> &Resp {
        self.expect(204);
        assert!(
            self.body.is_empty(),
            "204 must have an empty body: {}",
            self.describe()
        );
        assert!(
            self.content_type().is_none(),
            "204 must have no Content-Type: {}",
            self.describe()
        );
        self
    }

    /// Asserts a JSON error with `status` and `errorCode` == `code`; returns the body.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        self.expect(status);
        let ct = self.content_type().unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "error responses must be application/json: {}",
            self.describe()
        );
        let v = self.json();
        assert_eq!(
            v.get("errorCode").and_then(Value::as_str),
            Some(code),
            "errorCode: {}",
            self.describe()
        );
        assert!(
            v.get("message").map(Value::is_string).unwrap_or(false),
            "error body must have a string message: {}",
            self.describe()
        );
        v
    }

    /// Like `expect_error`, and the body has exactly the fields `errorCode` and `message`.
    #[track_caller]
    pub fn expect_legacy_error(&self, status: u16, code: &str) -> Value {
        let v = self.expect_error(status, code);
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            ["errorCode", "message"],
            "legacy error body must have exactly errorCode and message: {}",
            self.describe()
        );
        v
    }

    /// A rich error: `details` has an ErrorInfo (domain dapr.io) with `reason`. Returns the body.
    #[track_caller]
    pub fn expect_rich_error(&self, status: u16, code: &str, reason: &str) -> Value {
        let v = self.expect_error(status, code);
        let details = v
            .get("details")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("rich error must have a details array: {}", self.describe()));
        let info = details
            .iter()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
            .unwrap_or_else(|| panic!("details must contain an ErrorInfo: {}", self.describe()));
        assert_eq!(
            info["reason"],
            reason,
            "ErrorInfo.reason: {}",
            self.describe()
        );
        assert_eq!(
            info["domain"],
            "dapr.io",
            "ErrorInfo.domain: {}",
            self.describe()
        );
        v
    }

    /// The `message` field of a JSON error body.
    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Query-escapes a key for use as a path segment: everything except `A-Za-z0-9-._~` becomes
/// `%XX` (so `/` -> `%2F`, space -> `%20`, `+` -> `%2B`).
pub fn esc(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 3);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Finds the detail of a rich error with the given google.rpc type name (e.g. "BadRequest").
pub fn detail<'a>(err: &'a Value, type_name: &str) -> Option<&'a Value> {
    let t = format!("type.googleapis.com/google.rpc.{type_name}");
    err["details"]
        .as_array()?
        .iter()
        .find(|d| d["@type"] == t.as_str())
}
