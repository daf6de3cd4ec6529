//! Redis over TLS (`enableTLS`) against a real `redis-server --tls-port`, with a throwaway CA
//! made by the `openssl` command line tool.

use std::ffi::OsStr;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use statecar_tests::process::{Guarded, Spawn, free_port};
use statecar_tests::{Sidecar, StoreKind};

const PASSWORD: &str = "tls-test-pw";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated CA (`other.pem`).
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-days",
            "2",
            "-subj",
            "/CN=unrelated-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=statecar-test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
}

/// `redis-server` accepting only TLS connections, with a password.
fn start_tls_redis(dir: &Path) -> (Guarded, u16) {
    let port = free_port();
    let path = |f: &str| dir.join(f).display().to_string();
    let args: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        &path("server.pem"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        PASSWORD,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
        "--logfile",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut proc = Guarded::spawn(Spawn {
        program: OsStr::new("/usr/bin/redis-server"),
        args,
        env: vec![],
        env_remove: vec![],
        log_dir: dir,
        log_name: "redis-tls",
        cleanup_dir: None,
    })
    .expect("spawning redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            proc.try_status().is_none(),
            "redis-server (TLS) exited:\n{}",
            proc.logs()
        );
        assert!(
            Instant::now() < deadline,
            "redis-server (TLS) did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (proc, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let (_redis, port) = start_tls_redis(dir.path());
    let host = format!("127.0.0.1:{port}");
    let ca = dir.path().join("ca.pem").display().to_string();
    let other_ca = dir.path().join("other.pem").display().to_string();
    let meta = [
        ("redisHost", host.as_str()),
        ("enableTLS", "true"),
        ("redisPassword", PASSWORD),
    ];

    // Trusting the test CA: the full API works over TLS.
    let sc = Sidecar::builder()
        .app_id("tls-app")
        .store_meta(StoreKind::Redis, &meta)
        .env("SSL_CERT_FILE", &ca)
        .start()
        .await;
    sc.save(&json!([{"key": "k", "value": {"over": "tls"}}]))
        .await
        .expect_no_content();
    sc.assert_value("k", r#"{"over":"tls"}"#, "1").await;
    let r = sc
        .txn(&json!({"operations": [
            {"operation": "upsert", "request": {"key": "k", "value": 2, "etag": "1"}}
        ]}))
        .await;
    r.expect_no_content();
    sc.assert_value("k", "2", "2").await;
    drop(sc);

    // An unknown CA is refused at startup, naming the problem and never the password.
    let failure = Sidecar::builder()
        .app_id("tls-app")
        .store_meta(StoreKind::Redis, &meta)
        .env("SSL_CERT_FILE", &other_ca)
        .start_expect_failure(Duration::from_secs(15))
        .await;
    assert_ne!(failure.code, 0);
    let out = failure.output();
    assert!(
        out.contains("certificate") || out.contains("UnknownIssuer"),
        "{out}"
    );
    assert!(!out.contains(PASSWORD), "password leaked: {out}");

    // insecureSkipTLSVerify accepts the certificate without the CA.
    let mut insecure = meta.to_vec();
    insecure.push(("insecureSkipTLSVerify", "true"));
    let sc = Sidecar::builder()
        .app_id("tls-app")
        .store_meta(StoreKind::Redis, &insecure)
        .env("SSL_CERT_FILE", &other_ca)
        .start()
        .await;
    sc.assert_value("k", "2", "2").await;
}
