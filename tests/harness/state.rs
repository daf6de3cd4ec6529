//! State API helpers on a running sidecar (store `statestore` unless a path is given).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::STORE;
use crate::http::{Resp, esc};
use crate::sidecar::Sidecar;

/// `/v1.0/state/<store>`.
pub fn store_path(store: &str) -> String {
    format!("/v1.0/state/{}", esc(store))
}

/// `/v1.0/state/statestore/<escaped key>`.
pub fn key_path(key: &str) -> String {
    format!("/v1.0/state/{STORE}/{}", esc(key))
}

impl Sidecar {
    /// `method path` with a raw body.
    pub async fn raw(&self, method: Method, path: &str, body: impl Into<reqwest::Body>) -> Resp {
        self.send(self.request(method, path).body(body)).await
    }

    pub async fn get_path(&self, path: &str) -> Resp {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.raw(Method::POST, path, body.to_string()).await
    }

    /// `POST /v1.0/state/statestore` with a JSON body.
    pub async fn save(&self, body: &Value) -> Resp {
        self.post_json(&store_path(STORE), body).await
    }

    /// `POST /v1.0/state/statestore` with a raw body.
    pub async fn save_raw(&self, body: &str) -> Resp {
        self.raw(Method::POST, &store_path(STORE), body.to_string())
            .await
    }

    /// Saves `value` under `key` (no options) and asserts 204.
    #[track_caller]
    pub fn put(&self, key: &str, value: Value) -> impl std::future::Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        let body = json!([{ "key": key, "value": value }]);
        async move {
            let r = self.save(&body).await;
            assert_eq!(r.status, 204, "save at {caller}: {}", r.describe());
        }
    }

    /// `GET /v1.0/state/statestore/<key>` (key escaped).
    pub async fn get(&self, key: &str) -> Resp {
        self.get_path(&key_path(key)).await
    }

    /// Asserts the key exists; returns (body text, etag).
    pub async fn must_get(&self, key: &str) -> (String, String) {
        let r = self.get(key).await;
        r.expect(200);
        let etag = r
            .etag()
            .unwrap_or_else(|| panic!("GET of an existing key must carry ETag: {}", r.describe()));
        (r.text(), etag)
    }

    /// The current etag of a key (None if missing).
    pub async fn etag_of(&self, key: &str) -> Option<String> {
        let r = self.get(key).await;
        match r.status {
            200 => Some(
                r.etag()
                    .unwrap_or_else(|| panic!("no ETag: {}", r.describe())),
            ),
            204 => None,
            _ => panic!("unexpected: {}", r.describe()),
        }
    }

    /// Asserts the key reads as missing (204, empty).
    pub async fn assert_missing(&self, key: &str) {
        let r = self.get(key).await;
        assert_eq!(
            r.status,
            204,
            "key {key:?} should be missing: {}",
            r.describe()
        );
        assert!(r.body.is_empty(), "{}", r.describe());
        assert!(
            r.etag().is_none(),
            "missing key must have no ETag: {}",
            r.describe()
        );
    }

    /// Asserts the key reads back as exactly `body` with ETag `etag`.
    pub async fn assert_value(&self, key: &str, body: &str, etag: &str) {
        let r = self.get(key).await;
        r.expect(200);
        assert_eq!(r.text(), body, "value of {key:?}: {}", r.describe());
        assert_eq!(
            r.etag().as_deref(),
            Some(etag),
            "etag of {key:?}: {}",
            r.describe()
        );
    }

    /// `DELETE /v1.0/state/statestore/<key>`, with `If-Match` when given.
    pub async fn delete(&self, key: &str, if_match: Option<&str>) -> Resp {
        let mut rb = self.request(Method::DELETE, &key_path(key));
        if let Some(e) = if_match {
            rb = rb.header("If-Match", e);
        }
        self.send(rb).await
    }

    /// `POST /v1.0/state/statestore/bulk`.
    pub async fn bulk(&self, body: &Value) -> Resp {
        self.post_json(&format!("{}/bulk", store_path(STORE)), body)
            .await
    }

    /// `POST /v1.0/state/statestore/transaction`.
    pub async fn txn(&self, body: &Value) -> Resp {
        self.post_json(&format!("{}/transaction", store_path(STORE)), body)
            .await
    }

    /// Polls GET until the key reads as missing; panics after `timeout`. Returns the elapsed
    /// time.
    pub async fn wait_missing(&self, key: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let r = self.get(key).await;
            match r.status {
                204 => return start.elapsed(),
                200 => {}
                _ => panic!("unexpected while waiting for expiry: {}", r.describe()),
            }
            assert!(
                start.elapsed() < timeout,
                "key {key:?} still present after {timeout:?}: {}",
                r.describe()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Saves a fresh key through `sc` every 20 ms until one lands where `landed` says (it gets
/// the Redis key); returns the time from
/// `since` to the first such save.
pub async fn until_saves_land(
    sc: &Sidecar,
    timeout: Duration,
    store: &str,
    since: Instant,
    what: &str,
    mut landed: impl FnMut(&str) -> bool,
) -> Duration {
    let mut n = 0;
    loop {
        n += 1;
        let key = format!("probe-{n}");
        let r = sc
            .post_json(
                &format!("/v1.0/state/{store}"),
                &json!([{"key": key, "value": n}]),
            )
            .await;
        if r.status == 204 && landed(&sc.redis_key(&key)) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < timeout,
            "{what}: not within {timeout:?} (last save: {} {})\n{}",
            r.status,
            r.text(),
            sc.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
