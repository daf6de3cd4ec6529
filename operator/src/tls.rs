//! HTTPS for the webhooks: rustls (TLS 1.2 and 1.3), with the current certificate picked per
//! handshake, so a rotated one is served by the next connection without a restart.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::certs::CertStore;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a request's headers (slow clients hold a task and a socket).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// TLS 1.2 and 1.3 with the ring provider, HTTP/1.1 by ALPN, and whatever `store` holds as the
/// certificate of each new connection. No client certificates.
pub fn server_config(store: CertStore) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FromStore(store)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct FromStore(CertStore);

impl ResolvesServerCert for FromStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.0.current();
        if current.is_none() {
            // rustls then ends the handshake with an alert.
            tracing::debug!("no webhook serving certificate yet: refusing the handshake");
        }
        current
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, then lets open requests
/// finish. Each connection's handshake and requests run in a task of their own; a failed
/// handshake is logged at debug and never stops the loop.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // Reaps finished connections so the set does not grow.
            Some(_) = connections.join_next() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    connections.spawn(connection(
                        tcp,
                        peer,
                        acceptor.clone(),
                        router.clone(),
                        stop_rx.clone(),
                    ));
                }
                Err(e) if per_connection(&e) => {
                    tracing::debug!(error = %e, "accept failed for one connection");
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting webhook connections failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once the server is stopping (or gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "webhook TLS handshake timed out");
                return;
            }
        },
        () = stopped(&mut stop) => return,
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut stop) => {
            // Finishes the request in flight, if any, then closes.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::new_store;
    use axum::routing::get;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, RootCertStore};
    use std::future::poll_fn;
    use std::pin::Pin;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_rustls::TlsConnector;

    const NAME: &str = "statecar-webhook.test.svc";

    async fn write_all(w: &mut (impl AsyncWrite + Unpin), mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = poll_fn(|cx| Pin::new(&mut *w).poll_write(cx, buf)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        poll_fn(|cx| Pin::new(&mut *w).poll_flush(cx)).await
    }

    async fn read_to_end(r: &mut (impl AsyncRead + Unpin), out: &mut Vec<u8>) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut chunk);
            poll_fn(|cx| Pin::new(&mut *r).poll_read(cx, &mut buf)).await?;
            if buf.filled().is_empty() {
                return Ok(());
            }
            out.extend_from_slice(buf.filled());
        }
    }

    struct Pki {
        ca_pem: String,
        ca_der: CertificateDer<'static>,
        ca: crate::certs::pki::Authority,
    }

    impl Pki {
        fn new() -> Pki {
            let ca = crate::certs::pki::Authority::generate(
                Duration::from_secs(3600),
                std::time::SystemTime::now(),
            )
            .unwrap();
            Pki {
                ca_pem: ca.cert.pem.clone(),
                ca_der: ca.cert.der.clone(),
                ca,
            }
        }

        /// Puts a new leaf in `store`; returns its DER.
        fn rotate(&self, store: &CertStore) -> Vec<u8> {
            let (leaf, key) = self
                .ca
                .issue_leaf(
                    &[NAME.into(), "127.0.0.1".into()],
                    Duration::from_secs(600),
                    std::time::SystemTime::now(),
                )
                .unwrap();
            assert!(store.set_pem(&leaf.pem, &key, Some(&self.ca_pem)).unwrap());
            leaf.der.to_vec()
        }

        fn client(&self) -> TlsConnector {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let mut config = ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsConnector::from(Arc::new(config))
        }
    }

    async fn start(
        store: CertStore,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/hello", get(|| async { "hello" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, server_config(store), async {
            let _ = stopped.await;
        }));
        (addr, stop, server)
    }

    /// A GET over a new TLS connection: the status line and the server's leaf.
    async fn get_hello(addr: SocketAddr, pki: &Pki) -> Result<(String, Vec<u8>), String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = pki
            .client()
            .connect(ServerName::try_from(NAME).unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        let leaf = conn.peer_certificates().unwrap()[0].to_vec();
        write_all(
            &mut tls,
            b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        read_to_end(&mut tls, &mut response)
            .await
            .map_err(|e| e.to_string())?;
        let response = String::from_utf8_lossy(&response).into_owned();
        assert!(response.ends_with("hello"), "{response}");
        Ok((
            response.lines().next().unwrap_or_default().to_string(),
            leaf,
        ))
    }

    /// Sends `bytes` on a plain TCP connection and returns all the server answered.
    async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        write_all(&mut tcp, bytes).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut tcp, &mut answer))
            .await
            .expect("the server closes the connection")
            .ok();
        answer
    }

    /// A TLS 1.1 ClientHello (no supported_versions extension) that would otherwise be
    /// acceptable: ECDHE suites, P-256/X25519 and signature algorithms our certificate can do.
    /// So only the version can be the reason to refuse it.
    fn tls11_client_hello() -> Vec<u8> {
        fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
            let mut e = kind.to_be_bytes().to_vec();
            e.extend((data.len() as u16).to_be_bytes());
            e.extend(data);
            e
        }
        let mut body = vec![0x03, 0x02];
        body.extend([0x5a; 32]);
        body.push(0);
        let suites: [u16; 5] = [0xc02b, 0xc02f, 0xc009, 0xc013, 0x002f];
        body.extend(((suites.len() * 2) as u16).to_be_bytes());
        for s in suites {
            body.extend(s.to_be_bytes());
        }
        body.extend([1, 0]);
        let mut extensions = Vec::new();
        // supported_groups: x25519, secp256r1
        extensions.extend(extension(0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]));
        // ec_point_formats: uncompressed
        extensions.extend(extension(0x000b, &[1, 0]));
        // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256
        extensions.extend(extension(0x000d, &[0, 4, 0x04, 0x03, 0x08, 0x04]));
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        let mut handshake = vec![0x01];
        handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend(body);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        record
    }

    #[tokio::test]
    async fn serves_the_current_certificate_and_picks_up_a_new_one_per_connection() {
        let pki = Pki::new();
        let store = new_store();
        let (addr, stop, server) = start(store.clone()).await;

        // No certificate yet: the handshake fails, the server keeps going.
        let err = get_hello(addr, &pki).await.unwrap_err();
        assert!(err.starts_with("handshake"), "{err}");

        let first = pki.rotate(&store);
        let (status, leaf) = get_hello(addr, &pki).await.unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(leaf, first);

        // A rotation in the store is what the very next connection gets.
        let second = pki.rotate(&store);
        assert_ne!(first, second);
        let (status, leaf) = get_hello(addr, &pki).await.unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(leaf, second);

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn refuses_tls_1_1_and_plaintext() {
        let pki = Pki::new();
        let store = new_store();
        pki.rotate(&store);
        let (addr, _stop, _server) = start(store).await;

        // TLS 1.1: a fatal alert (content type 21, protocol_version 70), no ServerHello.
        let answer = raw_exchange(addr, &tls11_client_hello()).await;
        assert_eq!(answer.first(), Some(&0x15), "{answer:?}");
        assert_eq!(answer.get(6), Some(&70), "{answer:?}");

        // Plain HTTP gets no HTTP answer.
        let answer = raw_exchange(addr, b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(&answer)
        );

        // And the server still serves TLS clients.
        let (status, _) = get_hello(addr, &pki).await.unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
    }

    #[tokio::test]
    async fn a_stalled_handshake_does_not_block_others() {
        let pki = Pki::new();
        let store = new_store();
        pki.rotate(&store);
        let (addr, _stop, _server) = start(store).await;
        // Connected, never says anything.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (status, _) = get_hello(addr, &pki).await.unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK");
    }
}
