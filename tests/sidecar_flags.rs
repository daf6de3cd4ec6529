//! The sidecar flags the injector relies on: `--dapr-listen-addresses`, the public health port
//! (all interfaces, health only), `--dapr-graceful-shutdown-seconds` and `--config`, and the
//! whole command line an injected pod runs.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use statecar_tests::process::{Guarded, Spawn, exit_code, free_port};
use statecar_tests::{Sidecar, StoreKind, statecar_bin};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("http client")
}

/// Status of `GET url`, or the transport error.
async fn status(url: &str) -> Result<u16, String> {
    client()
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

/// A second loopback address: a listener bound to 127.0.0.1 does not answer on it, one bound to
/// every interface does. (The tests talk to loopback only.)
fn host_ip() -> Option<IpAddr> {
    Some(IpAddr::from([127, 0, 0, 2]))
}

fn ipv6_loopback_works() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// statecar started with exactly `args` (no `--dapr-http-address`, unlike the harness), an
/// empty HOME (so the built-in in-memory store) and no inherited Dapr variables.
struct Raw {
    proc: Guarded,
    _dir: tempfile::TempDir,
}

impl Raw {
    fn spawn(args: &[String], env: &[(&str, &str)]) -> Raw {
        let dir = tempfile::Builder::new()
            .prefix("statecar-flags-")
            .tempdir()
            .expect("temp dir");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("mkdir home");
        let mut vars = vec![("HOME".to_string(), home.display().to_string())];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let bin: OsString = statecar_bin().into_os_string();
        let proc = Guarded::spawn(Spawn {
            program: &bin,
            args: args.to_vec(),
            env: vars,
            env_remove: [
                "DAPR_API_TOKEN",
                "DAPR_HTTP_PORT",
                "NAMESPACE",
                "POD_NAME",
                "RUST_LOG",
            ]
            .map(String::from)
            .to_vec(),
            log_dir: dir.path(),
            log_name: "statecar",
            cleanup_dir: None,
        })
        .expect("spawning statecar");
        Raw { proc, _dir: dir }
    }

    /// Waits (15 s) until `GET url` answers `want`; panics with the logs otherwise.
    async fn wait_for(&mut self, url: &str, want: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.proc.try_status() {
                panic!(
                    "statecar exited with {} while waiting for {url}\n{}",
                    exit_code(st),
                    self.proc.logs()
                );
            }
            let got = status(url).await;
            if got == Ok(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "GET {url} did not answer {want} within 15 s (last: {got:?})\n{}",
                self.proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addresses_binds_every_address() {
    let port = free_port();
    let list = if ipv6_loopback_works() {
        "[::1],127.0.0.1"
    } else {
        "127.0.0.1"
    };
    let mut sc = Raw::spawn(
        &args(&[
            "--dapr-http-port",
            &port.to_string(),
            "--dapr-listen-addresses",
            list,
        ]),
        &[],
    );
    sc.wait_for(&format!("http://127.0.0.1:{port}/v1.0/healthz"), 204)
        .await;
    if ipv6_loopback_works() {
        assert_eq!(
            status(&format!("http://[::1]:{port}/v1.0/healthz")).await,
            Ok(204),
            "{}",
            sc.proc.logs()
        );
        // Both listeners serve the same stores.
        let r = client()
            .post(format!("http://[::1]:{port}/v1.0/state/statestore"))
            .body(json!([{"key": "k", "value": "six"}]).to_string())
            .send()
            .await
            .expect("save over IPv6");
        assert_eq!(r.status().as_u16(), 204);
        let r = client()
            .get(format!("http://127.0.0.1:{port}/v1.0/state/statestore/k"))
            .send()
            .await
            .expect("read over IPv4");
        assert_eq!(r.text().await.expect("body"), r#""six""#);
    }
    if let Some(ip) = host_ip() {
        assert!(
            status(&format!("http://{ip}:{port}/v1.0/healthz"))
                .await
                .is_err(),
            "the API is not served on {ip}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addresses_on_all_interfaces() {
    let Some(ip) = host_ip() else {
        eprintln!("no non-loopback address on this host; skipped");
        return;
    };
    let port = free_port();
    let mut sc = Raw::spawn(
        &args(&[
            "--dapr-http-port",
            &port.to_string(),
            "--dapr-listen-addresses",
            "0.0.0.0",
        ]),
        &[],
    );
    sc.wait_for(&format!("http://127.0.0.1:{port}/v1.0/healthz"), 204)
        .await;
    assert_eq!(
        status(&format!("http://{ip}:{port}/v1.0/healthz")).await,
        Ok(204)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addresses_and_http_address_together_are_refused() {
    // The harness passes --dapr-http-address 127.0.0.1.
    let f = Sidecar::builder()
        .arg("--dapr-listen-addresses")
        .arg("127.0.0.1")
        .start_expect_failure(Duration::from_secs(15))
        .await;
    assert_ne!(f.code, 0, "{}", f.output());
    for flag in ["--dapr-http-address", "--dapr-listen-addresses"] {
        assert!(
            f.stderr.contains(flag),
            "stderr names {flag}:\n{}",
            f.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_listen_address_is_refused() {
    let port = free_port();
    let mut sc = Raw::spawn(
        &args(&[
            "--dapr-http-port",
            &port.to_string(),
            "--dapr-listen-addresses",
            "127.0.0.1,localhost",
        ]),
        &[],
    );
    let st = sc
        .proc
        .wait_timeout(Duration::from_secs(10))
        .expect("statecar exits");
    assert_ne!(exit_code(st), 0);
    let err = sc.proc.stderr();
    assert!(err.contains("\"localhost\" is not an IP address"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_port_serves_health_and_metadata_on_all_interfaces() {
    let public = free_port();
    let sc = Sidecar::builder()
        .store(StoreKind::Memory)
        .env("DAPR_API_TOKEN", "secret-token")
        .arg("--dapr-public-port")
        .arg(&public.to_string())
        .start()
        .await;
    let base = format!("http://127.0.0.1:{public}");
    // No token needed for health.
    assert_eq!(status(&format!("{base}/v1.0/healthz")).await, Ok(204));
    assert_eq!(status(&format!("{base}/v1.0/healthz/")).await, Ok(204));
    assert_eq!(
        status(&format!("{base}/v1.0/healthz/outbound")).await,
        Ok(204)
    );
    // Metadata too, without the token, as on daprd's public port.
    assert_eq!(status(&format!("{base}/v1.0/metadata")).await, Ok(200));
    // The state API and invocation are not served there, even with the token.
    for path in ["/v1.0/state/statestore/k", "/v1.0/invoke/x/method/y"] {
        let r = client()
            .get(format!("{base}{path}"))
            .header("dapr-api-token", "secret-token")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 404, "{path} on the public port");
    }
    // The API port is unchanged: metadata needs the token there.
    let r = client()
        .get(sc.url("/v1.0/metadata"))
        .header("dapr-api-token", "secret-token")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);

    if let Some(ip) = host_ip() {
        assert_eq!(
            status(&format!("http://{ip}:{public}/v1.0/healthz")).await,
            Ok(204),
            "the kubelet reaches the public port on the pod IP\n{}",
            sc.logs()
        );
        assert!(
            status(&format!("http://{ip}:{}/v1.0/healthz", sc.port()))
                .await
                .is_err(),
            "the API port stays on loopback"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_listen_address_narrows_the_public_port() {
    let public = free_port();
    let sc = Sidecar::builder()
        .arg("--dapr-public-port")
        .arg(&public.to_string())
        .arg("--dapr-public-listen-address")
        .arg("127.0.0.1")
        .start()
        .await;
    assert_eq!(
        status(&format!("http://127.0.0.1:{public}/v1.0/healthz")).await,
        Ok(204)
    );
    if let Some(ip) = host_ip() {
        assert!(
            status(&format!("http://{ip}:{public}/v1.0/healthz"))
                .await
                .is_err(),
            "{}",
            sc.logs()
        );
    }
}

/// Opens a connection and sends a save request's headers and half its body.
fn start_slow_save(port: u16) -> (TcpStream, Vec<u8>) {
    let body = json!([{"key": "slow", "value": "done"}]).to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    let head = format!(
        "POST /v1.0/state/statestore HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    stream.write_all(head.as_bytes()).expect("write head");
    stream.write_all(first).expect("write half the body");
    stream.flush().expect("flush");
    (stream, rest.to_vec())
}

fn sigterm(pid: i32) {
    // SAFETY: kill(2) on the pid of a child this test started and that is still running.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish() {
    let mut sc = Sidecar::builder()
        .store(StoreKind::Memory)
        .arg("--dapr-graceful-shutdown-seconds")
        .arg("10")
        .start()
        .await;
    let (mut stream, rest) = start_slow_save(sc.port());
    // Let the server read the headers before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(sc.pid());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        sc.is_running(),
        "still running while a request is in flight\n{}",
        sc.logs()
    );
    stream.write_all(&rest).expect("write the rest of the body");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("the response, then the server closes the connection");
    assert!(
        response.starts_with("HTTP/1.1 204"),
        "{response}\n{}",
        sc.logs()
    );
    let code = sc.terminate(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{}", sc.logs());
    assert!(!sc.stderr().contains("still in flight"), "{}", sc.stderr());
}

/// Sends SIGTERM with a request stuck in flight and returns how long the exit took and the
/// exit code.
async fn shutdown_with_stuck_request(grace: &str) -> (Duration, Option<i32>, String) {
    let mut sc = Sidecar::builder()
        .store(StoreKind::Memory)
        .arg("--dapr-graceful-shutdown-seconds")
        .arg(grace)
        .start()
        .await;
    let (_stream, _rest) = start_slow_save(sc.port());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let code = sc.terminate(Duration::from_secs(20));
    (started.elapsed(), code, sc.logs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_seconds_bounds_the_wait() {
    let (took, code, logs) = shutdown_with_stuck_request("1").await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "exited after {took:?}, expected about 1 s\n{logs}"
    );
    assert!(logs.contains("--dapr-graceful-shutdown-seconds"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_minus_one_means_five_seconds() {
    let (took, code, logs) = shutdown_with_stuck_request("-1").await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        took >= Duration::from_millis(4800) && took < Duration::from_secs(9),
        "exited after {took:?}, expected about 5 s\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_zero_exits_at_once() {
    let (took, code, logs) = shutdown_with_stuck_request("0").await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        took < Duration::from_secs(2),
        "exited after {took:?}\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_accepted_and_ignored_with_one_log_line() {
    let sc = Sidecar::builder()
        .store(StoreKind::Memory)
        .arg("--config")
        .arg("appconfig")
        .start()
        .await;
    sc.put("k", json!(1)).await;
    let logs = sc.stderr();
    assert_eq!(
        logs.matches("--config is ignored").count(),
        1,
        "one line saying --config is ignored:\n{logs}"
    );
    assert!(logs.contains("appconfig"), "{logs}");
}

/// The arguments and environment the injector gives an injected sidecar (see
/// operator/src/inject/patch.rs), with every optional flag, are accepted. Without an operator
/// the sidecar keeps running and reports not ready on the public port, as the kubelet sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_command_line_is_accepted() {
    let (http, public, operator, grpc) = (free_port(), free_port(), free_port(), free_port());
    let token_dir = tempfile::tempdir().expect("temp dir");
    let token = token_dir.path().join("token");
    std::fs::write(&token, "not-a-real-token").expect("write token");
    let control_plane = format!("127.0.0.1:{operator}");
    let mut sc = Raw::spawn(
        &args(&[
            "--mode",
            "kubernetes",
            "--app-id",
            "cart",
            "--dapr-http-port",
            &http.to_string(),
            "--dapr-grpc-port",
            &grpc.to_string(),
            "--dapr-public-port",
            &public.to_string(),
            "--control-plane-address",
            &control_plane,
            "--token-file",
            &token.display().to_string(),
            "--log-level",
            "debug",
            "--log-as-json",
            "--app-port",
            "8080",
            "--dapr-listen-addresses",
            "127.0.0.1",
            "--dapr-graceful-shutdown-seconds",
            "3",
            "--config",
            "appconfig",
            "--max-body-size",
            "16Mi",
            "--dapr-http-max-request-size",
            "8",
        ]),
        &[("NAMESPACE", "shop"), ("POD_NAME", "cart-0")],
    );
    sc.wait_for(&format!("http://127.0.0.1:{public}/v1.0/healthz"), 500)
        .await;
    assert_eq!(
        status(&format!("http://127.0.0.1:{http}/v1.0/healthz")).await,
        Ok(500)
    );
    sc.proc.signal(libc::SIGTERM);
    let st = sc
        .proc
        .wait_timeout(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert_eq!(exit_code(st), 0, "{}", sc.proc.logs());
    for line in sc.proc.stderr().lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "--log-as-json: {line}"
        );
    }
}
