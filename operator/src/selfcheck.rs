//! `statecar-operator check`: what the chart's `helm test` pod runs, from the operator's own
//! image. It waits for the operator's /readyz, then posts an empty body to the validating
//! webhook through its Service, verifying the serving certificate against the webhook CA and
//! the Service name, and expects the 400 the webhook gives a body that is not an
//! AdmissionReview. A shell image with wget would need a TLS stack the webhook accepts
//! (busybox's does not speak TLS 1.2 with the signature algorithms rustls requires).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest response the check reads; the answers it expects are a few hundred bytes.
const MAX_RESPONSE: u64 = 64 * 1024;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The operator's readiness URL (plain HTTP), polled until it answers 200.
    #[arg(long, value_name = "URL")]
    pub readyz: String,

    /// The validating webhook's URL through its Service (HTTPS).
    #[arg(long, value_name = "URL")]
    pub webhook: String,

    /// PEM file with the CA the webhook's certificate must chain to (the `ca.crt` of its
    /// Secret).
    #[arg(long, value_name = "FILE")]
    pub ca_file: PathBuf,

    /// How long to wait for /readyz before giving up.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    pub ready_timeout: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}: not a URL of the form {1}://HOST[:PORT]/PATH")]
    Url(String, &'static str),
    #[error("reading the CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA file {0} holds no usable PEM certificate")]
    NoCa(PathBuf),
    #[error("the operator is not ready after {secs} s: {url}: {last}")]
    NotReady {
        secs: u64,
        url: String,
        last: String,
    },
    #[error("the webhook {url}: {reason}")]
    Webhook { url: String, reason: String },
}

/// A parsed `scheme://host[:port]/path`.
#[derive(Debug, PartialEq)]
struct Url {
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str, scheme: &'static str, default_port: u16) -> Result<Url, CheckError> {
    let bad = || CheckError::Url(url.to_string(), scheme);
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Url {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// Runs both checks, printing what it found.
pub async fn run(args: &CheckArgs) -> Result<(), CheckError> {
    let readyz = parse_url(&args.readyz, "http", 80)?;
    let webhook = parse_url(&args.webhook, "https", 443)?;
    let tls = client_config(&args.ca_file)?;

    let deadline = Instant::now() + Duration::from_secs(args.ready_timeout);
    loop {
        let last = match exchange(&readyz, "GET", None).await {
            Ok((200, _)) => break,
            Ok((status, body)) => format!("HTTP {status}: {}", body.trim()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(CheckError::NotReady {
                secs: args.ready_timeout,
                url: args.readyz.clone(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!("operator ready: {}", args.readyz);

    let fail = |reason: String| CheckError::Webhook {
        url: args.webhook.clone(),
        reason,
    };
    let (status, body) = exchange_tls(&webhook, &tls).await.map_err(fail)?;
    if status != 400 {
        return Err(fail(format!(
            "HTTP {status}, expected 400 for a body that is not an AdmissionReview: {}",
            body.trim()
        )));
    }
    println!(
        "webhook answers over TLS with a certificate from {}: {}",
        args.ca_file.display(),
        args.webhook
    );
    Ok(())
}

fn client_config(ca_file: &PathBuf) -> Result<Arc<ClientConfig>, CheckError> {
    let pem = std::fs::read(ca_file).map_err(|source| CheckError::CaFile {
        path: ca_file.clone(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
        // A malformed block is skipped; an empty store is refused below.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(CheckError::NoCa(ca_file.clone()));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| CheckError::CaFile {
                path: ca_file.clone(),
                source: std::io::Error::other(e),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn connect(url: &Url) -> Result<TcpStream, String> {
    let addr = format!("{}:{}", url.host, url.port);
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))
}

async fn exchange(url: &Url, method: &str, body: Option<&str>) -> Result<(u16, String), String> {
    let mut stream = connect(url).await?;
    request(&mut stream, url, method, body).await
}

async fn exchange_tls(url: &Url, config: &Arc<ClientConfig>) -> Result<(u16, String), String> {
    let tcp = connect(url).await?;
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| format!("{} is not a valid server name: {e}", url.host))?;
    let mut tls = tokio::time::timeout(
        Duration::from_secs(5),
        TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| "the TLS handshake timed out".to_string())?
    .map_err(|e| format!("TLS handshake: {e}"))?;
    request(&mut tls, url, "POST", Some("{}")).await
}

/// One HTTP/1.1 request with `Connection: close`; returns the status code and the body.
async fn request(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    url: &Url,
    method: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        url.path,
        url.host,
        body.len()
    );
    let io = async {
        stream.write_all(head.as_bytes()).await?;
        stream.flush().await?;
        let mut response = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| "no response within 10 s".to_string())?
        .map_err(|e| format!("request failed: {e}"))?;
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(response);
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", text.lines().next()))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_urls_the_chart_passes() {
        let u = parse_url("http://statecar-operator.ns.svc:8080/readyz", "http", 80).unwrap();
        assert_eq!(
            u,
            Url {
                host: "statecar-operator.ns.svc".into(),
                port: 8080,
                path: "/readyz".into()
            }
        );
        let u = parse_url("https://statecar-webhook.ns.svc/validate", "https", 443).unwrap();
        assert_eq!((u.port, u.path.as_str()), (443, "/validate"));
        let u = parse_url("http://[::1]:9/", "http", 80).unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        let u = parse_url("http://host", "http", 80).unwrap();
        assert_eq!(u.path, "/");
    }

    #[test]
    fn refuses_other_schemes_and_bad_ports() {
        assert!(parse_url("https://x/readyz", "http", 80).is_err());
        assert!(parse_url("http://x:port/", "http", 80).is_err());
        assert!(parse_url("http://:80/", "http", 80).is_err());
        assert!(parse_url("x:80/", "http", 80).is_err());
    }

    #[test]
    fn reads_the_status_and_body() {
        let r = parse_response(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\n\r\nbad");
        assert_eq!(r, Ok((400, "bad".into())));
        assert!(parse_response(b"garbage").is_err());
    }
}
