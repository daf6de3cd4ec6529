//! One connection to the operator's component stream (see the delivery protocol): an HTTP/1.1
//! `GET` (plain or TLS) whose never-ending chunked body carries one JSON message per line.
//!
//! Built on hyper's low-level client connection so that the sidecar needs no HTTP client crate.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use statecar_crds::Component;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The longest accepted line (one snapshot).
pub const MAX_LINE: usize = 16 << 20;

/// The path of the component stream, below the endpoint's base path.
const STREAM_PATH: &str = "/v1/components";

/// Where the operator is: `--control-plane-address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// As in a URL: IPv6 addresses keep their brackets.
    pub host: String,
    pub port: u16,
    /// A path prefix (no trailing slash), usually empty.
    pub base_path: String,
}

impl Endpoint {
    /// `HOST:PORT` (plain HTTP), or an `http://` or `https://` URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bare = !s.contains("://");
        let text = if bare {
            format!("http://{s}")
        } else {
            s.to_string()
        };
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("{s:?} is not HOST:PORT or an http(s):// URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{s:?}: the scheme must be http or https")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{s:?} has no host"))?
            .to_string();
        let port = match uri.port_u16() {
            Some(p) => p,
            None if bare => return Err(format!("{s:?} has no port: use HOST:PORT")),
            None if tls => 443,
            None => 80,
        };
        if uri.query().is_some() {
            return Err(format!("{s:?}: a query string is not allowed"));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            tls,
            host,
            port,
            base_path,
        })
    }

    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.base_path)
    }
}

/// What a connection needs to know.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub endpoint: Endpoint,
    pub namespace: String,
    pub app_id: String,
    pub pod_name: String,
    /// Re-read on every connect: service-account tokens rotate.
    pub token_file: PathBuf,
    /// PEM CA bundle for https; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM CA bundle given inline (the injector puts the operator's CA in the environment);
    /// used instead of `ca_file` when set.
    pub ca_pem: Option<String>,
    /// Bound for TCP connect + TLS + response headers.
    pub connect_timeout: Duration,
}

/// Splits a byte stream into lines; a line may span any number of chunks.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a line is longer than {0} bytes")]
pub struct LineTooLong(pub usize);

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Feeds `chunk`; complete lines (without `\n` or `\r\n`) are appended to `out`.
    pub fn push(
        &mut self,
        mut chunk: &[u8],
        out: &mut VecDeque<Vec<u8>>,
    ) -> Result<(), LineTooLong> {
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            if self.buf.len() + i > self.max {
                self.buf.clear();
                return Err(LineTooLong(self.max));
            }
            let mut line = if self.buf.is_empty() {
                chunk[..i].to_vec()
            } else {
                let mut l = std::mem::take(&mut self.buf);
                l.extend_from_slice(&chunk[..i]);
                l
            };
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            out.push_back(line);
            chunk = &chunk[i + 1..];
        }
        if self.buf.len() + chunk.len() > self.max {
            self.buf.clear();
            return Err(LineTooLong(self.max));
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// Bytes of an unfinished line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// One message of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Snapshot(Snapshot),
    Heartbeat,
    /// A message type this sidecar does not know; ignored.
    Other(String),
}

/// The complete desired set of components.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub revision: u64,
    pub components: Vec<Component>,
    /// Components that are not even well-formed manifests, as messages. They are left out; the
    /// others still apply.
    pub malformed: Vec<String>,
}

impl Snapshot {
    /// The snapshot as a stream line (what the config cache holds).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": "snapshot",
            "revision": self.revision,
            "components": self.components,
        }))
        .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    revision: u64,
    components: Option<Vec<serde_json::Value>>,
}

/// Parses one line; `None` for a blank line.
pub fn parse_message(line: &[u8]) -> Result<Option<Message>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let raw: RawMessage =
        serde_json::from_slice(line).map_err(|e| format!("not a valid message: {e}"))?;
    match raw.type_.as_str() {
        "heartbeat" => Ok(Some(Message::Heartbeat)),
        "snapshot" => {
            let values = raw
                .components
                .ok_or("a snapshot without a \"components\" list")?;
            let mut snapshot = Snapshot {
                revision: raw.revision,
                ..Snapshot::default()
            };
            for (i, value) in values.into_iter().enumerate() {
                let name = value
                    .pointer("/metadata/name")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default()
                    .to_string();
                match serde_path_to_error::deserialize::<_, Component>(value) {
                    Ok(c) => snapshot.components.push(c),
                    Err(e) => snapshot.malformed.push(format!(
                        "components[{i}] {name:?}: {}: {}",
                        e.path(),
                        e.inner()
                    )),
                }
            }
            Ok(Some(Message::Snapshot(snapshot)))
        }
        other => Ok(Some(Message::Other(other.to_string()))),
    }
}

/// An open stream. Dropping it closes the connection.
pub struct Stream {
    body: Incoming,
    splitter: LineSplitter,
    lines: VecDeque<Vec<u8>>,
    conn: JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Stream {
    /// The next message. Fails when the stream ends, breaks, carries a bad line, or when no
    /// line at all arrives within `idle`.
    pub async fn next(&mut self, idle: Duration) -> Result<Message> {
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            while let Some(line) = self.lines.pop_front() {
                if let Some(m) = parse_message(&line).map_err(|e| anyhow!("{e}"))? {
                    return Ok(m);
                }
            }
            let frame = match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => bail!("nothing received for {idle:?} (no heartbeat)"),
                Ok(None) => bail!("the operator closed the stream"),
                Ok(Some(f)) => f.context("reading the stream")?,
            };
            if let Ok(data) = frame.into_data() {
                self.splitter.push(&data, &mut self.lines)?;
            }
        }
    }
}

/// Connects, authenticates and returns the stream once the operator has answered 200.
pub async fn open(cfg: &StreamConfig) -> Result<Stream> {
    let token = read_token(&cfg.token_file)?;
    match tokio::time::timeout(cfg.connect_timeout, open_inner(cfg, &token)).await {
        Ok(r) => r,
        Err(_) => bail!(
            "no answer from {} within {:?}",
            cfg.endpoint,
            cfg.connect_timeout
        ),
    }
}

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the token file {} (--token-file)",
            path.display()
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_string())
}

async fn open_inner(cfg: &StreamConfig, token: &str) -> Result<Stream> {
    let ep = &cfg.endpoint;
    let tcp = TcpStream::connect(ep.authority())
        .await
        .with_context(|| format!("cannot connect to {ep}"))?;
    let _ = tcp.set_nodelay(true);
    let query = serde_urlencoded::to_string([
        ("namespace", cfg.namespace.as_str()),
        ("appId", cfg.app_id.as_str()),
        ("podName", cfg.pod_name.as_str()),
    ])?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the token file holds characters a header cannot carry")?;
    auth.set_sensitive(true);
    let req = Request::get(format!("{}{STREAM_PATH}?{query}", ep.base_path))
        .header(HOST, ep.authority())
        .header(AUTHORIZATION, auth)
        .header(ACCEPT, "application/x-ndjson")
        .header(USER_AGENT, concat!("statecar/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())?;
    if ep.tls {
        let connector = tls_connector(cfg.ca_pem.as_deref(), cfg.ca_file.as_deref())?;
        let bare = ep.host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_string())
            .with_context(|| format!("{bare:?} is not a valid TLS server name"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {ep}"))?;
        request(tls, req, ep).await
    } else {
        request(tcp, req, ep).await
    }
}

async fn request<S>(io: S, req: Request<Empty<Bytes>>, ep: &Endpoint) -> Result<Stream>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .with_context(|| format!("HTTP handshake with {ep}"))?;
    let conn = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "operator connection ended");
        }
    });
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            conn.abort();
            return Err(e).with_context(|| format!("GET {ep}{STREAM_PATH}"));
        }
    };
    let status = resp.status();
    let stream = Stream {
        body: resp.into_body(),
        splitter: LineSplitter::new(MAX_LINE),
        lines: VecDeque::new(),
        conn,
    };
    if status == StatusCode::OK {
        return Ok(stream);
    }
    let detail = error_detail(stream).await;
    let what = match status {
        StatusCode::UNAUTHORIZED => " (the token was not accepted)",
        StatusCode::FORBIDDEN => " (this pod may not read this app's components)",
        _ => "",
    };
    bail!("the operator at {ep} answered {status}{what}: {detail}")
}

/// The `error` of an error body, or its first bytes.
async fn error_detail(mut stream: Stream) -> String {
    let mut body = Vec::new();
    let read = async {
        while body.len() < 4096 {
            match stream.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        body.extend_from_slice(&d);
                    }
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
    body.truncate(4096);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
        && let Some(e) = v.get("error").and_then(|e| e.as_str())
    {
        return e.to_string();
    }
    String::from_utf8_lossy(&body).trim().to_string()
}

fn tls_connector(
    ca_pem: Option<&str>,
    ca_file: Option<&Path>,
) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    match (ca_pem, ca_file) {
        (Some(pem), _) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.context("--control-plane-trust-anchors")?;
                roots.add(cert).context("--control-plane-trust-anchors")?;
            }
            if roots.is_empty() {
                bail!("--control-plane-trust-anchors holds no certificate");
            }
        }
        (None, Some(path)) => {
            let certs = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("cannot read {} (--control-plane-ca)", path.display()))?;
            for cert in certs {
                let cert =
                    cert.with_context(|| format!("{} (--control-plane-ca)", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("{} (--control-plane-ca)", path.display()))?;
            }
            if roots.is_empty() {
                bail!(
                    "{} holds no certificate (--control-plane-ca)",
                    path.display()
                );
            }
        }
        (None, None) => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                bail!(
                    "no system root certificates found to verify the operator ({} errors); \
                     pass --control-plane-ca",
                    native.errors.len()
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
