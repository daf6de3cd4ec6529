//! A minimal HTTPS/1.1 keep-alive client for load against the operator's webhooks: the server
//! certificate is verified against the CA the operator issued (from its Secret).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A TLS client config trusting only the CAs in `ca_pem`.
pub fn client_config(ca_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Reads one HTTP/1.1 response (Content-Length bodies only); returns the status code.
async fn read_response<S: AsyncReadExt + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(status)
}

/// POSTs `body` to `https://127.0.0.1:{port}{path}` over `conns` keep-alive connections for
/// `duration`; returns (successful requests per second, failures).
pub async fn post_load(
    port: u16,
    path: &str,
    body: Vec<u8>,
    tls: Arc<rustls::ClientConfig>,
    conns: usize,
    duration: Duration,
) -> (f64, usize) {
    let request = Arc::new(
        [
            format!(
                "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes(),
            body,
        ]
        .concat(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (request, tls) = (request.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, 0usize);
            let tcp = TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            tcp.set_nodelay(true).ok();
            let name = ServerName::try_from("127.0.0.1").expect("a server name");
            let mut s = TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .expect("TLS handshake with the webhook");
            let mut buf = Vec::with_capacity(16 * 1024);
            while started.elapsed() < duration {
                if s.write_all(&request).await.is_err() {
                    failed += 1;
                    break;
                }
                match read_response(&mut s, &mut buf).await {
                    Ok(200) => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await.expect("load task");
        ok += o;
        failed += f;
    }
    (ok as f64 / started.elapsed().as_secs_f64(), failed)
}

/// One POST over a new TLS connection; returns the status and the body.
pub async fn post_once(
    port: u16,
    path: &str,
    body: &[u8],
    tls: Arc<rustls::ClientConfig>,
) -> (u16, String) {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("a server name");
    let mut s = TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the webhook");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut buf = Vec::new();
    let status = read_response(&mut s, &mut buf).await.expect("a response");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
