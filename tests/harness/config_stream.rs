//! The operator's config stream (`GET /v1/components`), read the way a sidecar reads it.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One line of the stream, or its end, with the time it was read off the socket.
#[derive(Debug)]
pub enum StreamItem {
    Line(Instant, Value),
    /// The body ended (or failed): why.
    Closed(Instant, String),
}

/// A snapshot line.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub revision: u64,
    pub components: Vec<statecar_crds::Component>,
    /// When the line arrived.
    pub at: Instant,
}

impl Snapshot {
    pub fn names(&self) -> Vec<&str> {
        self.components
            .iter()
            .map(|c| c.metadata.name.as_str())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&statecar_crds::Component> {
        self.components.iter().find(|c| c.metadata.name == name)
    }

    /// The plain value of a metadata item of a component.
    pub fn value(&self, component: &str, item: &str) -> Option<String> {
        let c = self.get(component)?;
        let m = c.spec.metadata.iter().find(|m| m.name == item)?;
        m.value.as_ref().map(statecar_crds::component::value_text)
    }
}

/// An open `/v1/components` stream. A task of the calling test's runtime reads it and stamps
/// every line with its arrival time.
pub struct ConfigStream {
    rx: mpsc::UnboundedReceiver<StreamItem>,
    task: JoinHandle<()>,
    pub content_type: Option<String>,
    closed: bool,
}

/// A refused stream request.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub body: String,
}

impl Refusal {
    /// The `error` of the JSON body.
    pub fn error(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("refusal body is not {{\"error\":..}}: {:?}", self.body))
    }
}

/// Opens the stream `GET {base}/v1/components?namespace=&appId=&podName=` with `token` as the
/// bearer token (none when `None`).
pub async fn open_stream(
    base: &str,
    namespace: &str,
    app_id: &str,
    pod: &str,
    token: Option<&str>,
) -> Result<ConfigStream, Refusal> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("a reqwest client");
    let url = reqwest::Url::parse_with_params(
        &format!("{base}/v1/components"),
        [
            ("namespace", namespace),
            ("appId", app_id),
            ("podName", pod),
        ],
    )
    .unwrap_or_else(|e| panic!("{base}/v1/components: {e}"));
    let what = format!("GET {url}");
    let mut req = client.get(url).header("accept", "application/x-ndjson");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = tokio::time::timeout(Duration::from_secs(15), req.send())
        .await
        .unwrap_or_else(|_| panic!("{what}: no response headers in 15 s"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = resp.status().as_u16();
    if status != 200 {
        let body = tokio::time::timeout(Duration::from_secs(10), resp.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        return Err(Refusal { status, body });
    }
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(read_lines(resp, tx));
    Ok(ConfigStream {
        rx,
        task,
        content_type,
        closed: false,
    })
}

async fn read_lines(mut resp: reqwest::Response, tx: mpsc::UnboundedSender<StreamItem>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let at = Instant::now();
                buf.extend_from_slice(&chunk);
                while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    if text.trim().is_empty() {
                        continue;
                    }
                    let item = match serde_json::from_str(&text) {
                        Ok(v) => StreamItem::Line(at, v),
                        Err(e) => StreamItem::Closed(at, format!("not JSON ({e}): {text:?}")),
                    };
                    if tx.send(item).is_err() {
                        return;
                    }
                }
            }
            Ok(None) => {
                let _ = tx.send(StreamItem::Closed(Instant::now(), "end of body".into()));
                return;
            }
            Err(e) => {
                let _ = tx.send(StreamItem::Closed(Instant::now(), format!("{e}")));
                return;
            }
        }
    }
}

impl Drop for ConfigStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConfigStream {
    /// The next line or the end of the stream; `None` when nothing came within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<StreamItem> {
        if self.closed {
            return None;
        }
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(item)) => {
                if matches!(item, StreamItem::Closed(..)) {
                    self.closed = true;
                }
                Some(item)
            }
            Ok(None) => {
                self.closed = true;
                Some(StreamItem::Closed(Instant::now(), "reader stopped".into()))
            }
            Err(_) => None,
        }
    }

    /// The next snapshot, skipping heartbeats; Err on timeout, end of stream or a bad line.
    pub async fn next_snapshot(&mut self, timeout: Duration) -> Result<Snapshot, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                None => return Err(format!("no snapshot within {timeout:?}")),
                Some(StreamItem::Closed(_, why)) => return Err(format!("stream ended: {why}")),
                Some(StreamItem::Line(at, v)) => match v["type"].as_str() {
                    Some("heartbeat") => continue,
                    Some("snapshot") => return parse_snapshot(at, &v),
                    _ => return Err(format!("unexpected line {v}")),
                },
            }
        }
    }

    /// Reads snapshots until one satisfies `done` (the others are listed in the error).
    pub async fn snapshot_where(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Snapshot) -> bool,
    ) -> Result<Snapshot, String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_snapshot(left).await {
                Ok(s) if done(&s) => return Ok(s),
                Ok(s) => seen.push(format!("rev {} {:?}", s.revision, s.names())),
                Err(e) => return Err(format!("{e}; snapshots seen meanwhile: {seen:?}")),
            }
        }
    }

    /// Waits for the stream to end; Err if it still runs after `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(StreamItem::Closed(_, why)) => return Ok(why),
                Some(StreamItem::Line(..)) => continue,
                None => return Err(format!("the stream is still open after {timeout:?}")),
            }
        }
    }
}

fn parse_snapshot(at: Instant, v: &Value) -> Result<Snapshot, String> {
    let revision = v["revision"]
        .as_u64()
        .ok_or_else(|| format!("snapshot without a numeric revision: {v}"))?;
    let components = serde_json::from_value(v["components"].clone())
        .map_err(|e| format!("snapshot components are not Dapr components ({e}): {v}"))?;
    Ok(Snapshot {
        revision,
        components,
        at,
    })
}

/// Milliseconds from `from` to `to`, 0 when `to` came first (the line arrived before the API
/// call that caused it had returned).
pub fn millis_between(from: Instant, to: Instant) -> u128 {
    to.saturating_duration_since(from).as_millis()
}
