use std::collections::VecDeque;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn lines(s: &mut LineSplitter, chunk: &[u8]) -> Vec<String> {
    let mut out = VecDeque::new();
    s.push(chunk, &mut out).unwrap();
    out.into_iter()
        .map(|l| String::from_utf8(l).unwrap())
        .collect()
}

#[test]
fn lines_span_chunks() {
    let mut s = LineSplitter::new(100);
    assert_eq!(lines(&mut s, b"ab"), Vec::<String>::new());
    assert_eq!(s.pending(), 2);
    assert_eq!(lines(&mut s, b"c\nde"), ["abc"]);
    assert_eq!(lines(&mut s, b"f\r\n\ng\nh"), ["def", "", "g"]);
    assert_eq!(lines(&mut s, b""), Vec::<String>::new());
    assert_eq!(lines(&mut s, b"\n"), ["h"]);
    assert_eq!(s.pending(), 0);
    // Byte by byte.
    let mut got = Vec::new();
    for b in b"x1\ny2\n" {
        got.extend(lines(&mut s, &[*b]));
    }
    assert_eq!(got, ["x1", "y2"]);
}

#[test]
fn long_lines_are_refused() {
    let mut out = VecDeque::new();
    let mut s = LineSplitter::new(4);
    assert!(s.push(b"1234\n", &mut out).is_ok());
    assert_eq!(s.push(b"12345", &mut out), Err(LineTooLong(4)));
    let mut s = LineSplitter::new(4);
    s.push(b"123", &mut out).unwrap();
    assert_eq!(s.push(b"45\n", &mut out), Err(LineTooLong(4)));
    assert_eq!(s.pending(), 0);
}

const SNAPSHOT: &str = r#"{"type":"snapshot","revision":7,"components":[
 {"apiVersion":"dapr.io/v1alpha1","kind":"Component","metadata":{"name":"a","namespace":"ns"},
  "spec":{"type":"state.redis","version":"v1","metadata":[{"name":"redisHost","value":"r:6379"},{"name":"redisDB","value":3}]}},
 {"apiVersion":"dapr.io/v1alpha1","kind":"Component","metadata":{"name":"b"},"spec":{"type":"state.in-memory","version":"v1","metadata":5}},
 {"apiVersion":"dapr.io/v1alpha1","kind":"Component","metadata":{"name":"c"},"spec":{"type":"state.in-memory","version":"v1"}}
]}"#;

#[test]
fn snapshots_parse_and_keep_good_components() {
    let line = SNAPSHOT.replace('\n', "");
    let Some(Message::Snapshot(s)) = parse_message(line.as_bytes()).unwrap() else {
        panic!("a snapshot expected")
    };
    assert_eq!(s.revision, 7);
    let names: Vec<_> = s
        .components
        .iter()
        .map(|c| c.metadata.name.as_str())
        .collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(s.components[0].metadata.namespace.as_deref(), Some("ns"));
    assert_eq!(
        s.components[0].spec.metadata[1].value,
        Some(serde_json::json!(3))
    );
    let [bad] = &s.malformed[..] else {
        panic!("{:?}", s.malformed)
    };
    assert!(
        bad.contains("\"b\"") && bad.contains("spec.metadata"),
        "{bad}"
    );

    // The cache form reads back as the same snapshot.
    let again = parse_message(&s.to_json()).unwrap();
    let Some(Message::Snapshot(again)) = again else {
        panic!()
    };
    assert_eq!(again.components, s.components);
    assert_eq!(again.revision, 7);
}

#[test]
fn other_messages() {
    assert_eq!(
        parse_message(br#"{"type":"heartbeat"}"#).unwrap(),
        Some(Message::Heartbeat)
    );
    assert_eq!(parse_message(b"  ").unwrap(), None);
    assert_eq!(
        parse_message(br#"{"type":"future","x":1}"#).unwrap(),
        Some(Message::Other("future".into()))
    );
    assert!(parse_message(b"{nope").is_err());
    assert!(parse_message(br#"{"revision":1}"#).is_err());
    // A snapshot must say what the components are: a missing list is not "none".
    assert!(parse_message(br#"{"type":"snapshot","revision":1}"#).is_err());
    let Some(Message::Snapshot(empty)) =
        parse_message(br#"{"type":"snapshot","revision":2,"components":[]}"#).unwrap()
    else {
        panic!()
    };
    assert!(empty.components.is_empty());
}

#[test]
fn endpoints() {
    let e = Endpoint::parse("operator.statecar-system.svc:6500").unwrap();
    assert!(!e.tls);
    assert_eq!(
        (e.host.as_str(), e.port),
        ("operator.statecar-system.svc", 6500)
    );
    assert_eq!(e.to_string(), "http://operator.statecar-system.svc:6500");

    let e = Endpoint::parse("https://op.svc").unwrap();
    assert!(e.tls);
    assert_eq!(e.port, 443);
    let e = Endpoint::parse("http://[::1]:80/prefix/").unwrap();
    assert_eq!(
        (e.host.as_str(), e.port, e.base_path.as_str()),
        ("[::1]", 80, "/prefix")
    );
    assert!(Endpoint::parse("op.svc").unwrap_err().contains("no port"));
    assert!(Endpoint::parse("ftp://x:1").unwrap_err().contains("scheme"));
    assert!(Endpoint::parse("http://x:1/?a=b").is_err());
}

/// A one-shot HTTP server: answers the first request with `head` and then writes each of
/// `chunks` as an HTTP chunk, then ends the body (or, unless `end`, goes quiet). Returns the
/// address and the request it got.
async fn serve_once(
    head: &'static str,
    chunks: Vec<&'static [u8]>,
    end: bool,
) -> (String, tokio::task::JoinHandle<String>) {
    serve_once_with(None, head, chunks, end).await
}

/// [`serve_once`], over TLS when `tls` is given.
async fn serve_once_with(
    tls: Option<tokio_rustls::TlsAcceptor>,
    head: &'static str,
    chunks: Vec<&'static [u8]>,
    end: bool,
) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        match tls {
            Some(acceptor) => match acceptor.accept(sock).await {
                Ok(s) => respond(s, head, chunks, end).await,
                Err(e) => format!("TLS failed: {e}"),
            },
            None => respond(sock, head, chunks, end).await,
        }
    });
    (addr, task)
}

async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    head: &str,
    chunks: Vec<&[u8]>,
    end: bool,
) -> String {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await.unwrap();
        req.extend_from_slice(&buf[..n]);
    }
    sock.write_all(head.as_bytes()).await.unwrap();
    for c in chunks {
        let framed = [format!("{:x}\r\n", c.len()).as_bytes(), c, b"\r\n"].concat();
        sock.write_all(&framed).await.unwrap();
        sock.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if end {
        sock.write_all(b"0\r\n\r\n").await.unwrap();
        sock.flush().await.unwrap();
    } else {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    String::from_utf8(req).unwrap()
}

fn config(addr: &str, token_file: &Path) -> StreamConfig {
    StreamConfig {
        endpoint: Endpoint::parse(addr).unwrap(),
        namespace: "ns 1".into(),
        app_id: "app".into(),
        pod_name: "pod-0".into(),
        token_file: token_file.to_path_buf(),
        ca_file: None,
        ca_pem: None,
        connect_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn stream_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-1\n").unwrap();
    let (addr, server) = serve_once(
        "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n",
        vec![
            b"{\"type\":\"snap",
            b"shot\",\"revision\":3,\"components\":[]}\n{\"type\":",
            b"\"heartbeat\"}\n\n",
        ],
        true,
    )
    .await;
    let mut s = open(&config(&addr, &token)).await.unwrap();
    let idle = Duration::from_secs(5);
    let Message::Snapshot(snap) = s.next(idle).await.unwrap() else {
        panic!()
    };
    assert_eq!(snap.revision, 3);
    assert_eq!(s.next(idle).await.unwrap(), Message::Heartbeat);
    let e = s.next(idle).await.unwrap_err().to_string();
    assert!(e.contains("closed"), "{e}");
    let req = server.await.unwrap();
    assert!(
        req.starts_with("GET /v1/components?namespace=ns+1&appId=app&podName=pod-0 HTTP/1.1\r\n"),
        "{req}"
    );
    assert!(req.contains("authorization: Bearer tok-1\r\n"), "{req}");
    assert!(req.contains("accept: application/x-ndjson\r\n"), "{req}");
}

#[tokio::test]
async fn refusals_and_silence() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "bad").unwrap();
    let (addr, _server) = serve_once(
        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        vec![b"{\"error\":\"token rejected\"}"],
        true,
    )
    .await;
    let e = format!("{:#}", open(&config(&addr, &token)).await.err().unwrap());
    assert!(e.contains("401") && e.contains("token rejected"), "{e}");

    // A stream that goes quiet ends after the idle time.
    let (addr, _server) = serve_once(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        vec![b"{\"type\":\"heartbeat\"}\n{\"type\":", b"\"heartbeat\"}"],
        false,
    )
    .await;
    let mut s = open(&config(&addr, &token)).await.unwrap();
    assert_eq!(
        s.next(Duration::from_secs(5)).await.unwrap(),
        Message::Heartbeat
    );
    // The second line never ends.
    let e = s
        .next(Duration::from_millis(300))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no heartbeat"), "{e}");

    let missing = dir.path().join("missing");
    let e = format!("{:#}", open(&config(&addr, &missing)).await.err().unwrap());
    assert!(e.contains("--token-file"), "{e}");
}

fn openssl(dir: &Path, args: &[&str]) -> bool {
    std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A CA and a certificate for 127.0.0.1 signed by it, with the `openssl` tool; `false` when
/// it is not installed.
fn make_certs(dir: &Path) -> bool {
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let ca =
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca";
    let other = "req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.pem -days 2 -subj /CN=other-ca";
    let csr = "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=operator";
    let sign = "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext";
    [ca, other, csr, sign]
        .iter()
        .all(|cmd| openssl(dir, &cmd.split(' ').collect::<Vec<_>>()))
}

fn acceptor(dir: &Path) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::PrivateKeyDer;
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn stream_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    if !make_certs(dir.path()) {
        eprintln!("openssl is not installed; skipping the https test");
        return;
    }
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let ok = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    let (addr, server) = serve_once_with(
        Some(acceptor(dir.path())),
        ok,
        vec![b"{\"type\":\"heartbeat\"}\n"],
        true,
    )
    .await;
    let mut cfg = config(&format!("https://{addr}"), &token);
    cfg.ca_file = Some(dir.path().join("ca.pem"));
    let mut s = open(&cfg).await.unwrap();
    assert_eq!(
        s.next(Duration::from_secs(5)).await.unwrap(),
        Message::Heartbeat
    );
    drop(s);
    assert!(server.await.unwrap().starts_with("GET /v1/components?"));

    // A CA that did not sign the operator's certificate is refused.
    let (addr, _server) = serve_once_with(Some(acceptor(dir.path())), ok, vec![], true).await;
    let mut cfg = config(&format!("https://{addr}"), &token);
    cfg.ca_file = Some(dir.path().join("other.pem"));
    let e = format!("{:#}", open(&cfg).await.err().unwrap());
    assert!(
        e.contains("TLS handshake") && e.contains("certificate"),
        "{e}"
    );

    // A CA file that holds no certificate.
    cfg.ca_file = Some(dir.path().join("ext"));
    let e = format!("{:#}", open(&cfg).await.err().unwrap());
    assert!(e.contains("--control-plane-ca"), "{e}");
}
