//! Kubernetes mode against a fake operator: components arrive over the delivery stream
//! (`GET /v1/components`, NDJSON snapshots and heartbeats), change without a restart, survive
//! the operator going away, and come back from the config cache.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use statecar_tests::process::{Guarded, Spawn, free_port};
use statecar_tests::redis_server::RedisServer;
use statecar_tests::{Sidecar, SidecarBuilder, shared_redis, statecar_bin, unique};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const NS: &str = "shop";
const POD: &str = "cart-7d9f-x2";

/// What the operator expects from the sidecar.
struct Expect {
    token: String,
    app_id: String,
}

/// A fake statecar operator speaking the delivery protocol on 127.0.0.1.
struct FakeOperator {
    addr: String,
    snapshot: watch::Sender<String>,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl FakeOperator {
    async fn start(token: &str, app_id: &str, first: String) -> FakeOperator {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (snapshot, _) = watch::channel(first);
        let op = FakeOperator {
            addr,
            snapshot,
            accepted: Arc::default(),
            refused: Arc::default(),
            tasks: Arc::default(),
        };
        let expect = Arc::new(Expect {
            token: token.to_string(),
            app_id: app_id.to_string(),
        });
        let (rx, accepted, refused, tasks) = (
            op.snapshot.subscribe(),
            op.accepted.clone(),
            op.refused.clone(),
            op.tasks.clone(),
        );
        let accept = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let conn = tokio::spawn(serve(
                    sock,
                    expect.clone(),
                    rx.clone(),
                    accepted.clone(),
                    refused.clone(),
                ));
                tasks.lock().unwrap().push(conn);
            }
        });
        op.tasks.lock().unwrap().push(accept);
        op
    }

    fn push(&self, line: String) {
        self.snapshot.send_replace(line);
    }

    /// Stops listening and drops every connection.
    fn kill(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

impl Drop for FakeOperator {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn serve(
    sock: TcpStream,
    expect: Arc<Expect>,
    mut snapshots: watch::Receiver<String>,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
) {
    let Ok(head) = read_head(&sock).await else {
        return;
    };
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.strip_suffix(" HTTP/1.1"))
        .unwrap_or_default()
        .to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query: HashMap<&str, &str> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    let reply = |status: &str, error: &str| {
        let body = json!({ "error": error }).to_string();
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if headers.get("authorization") != Some(&format!("Bearer {}", expect.token)) {
        refused.fetch_add(1, Ordering::SeqCst);
        let _ = write_all(&sock, reply("401 Unauthorized", "invalid token").as_bytes()).await;
        return;
    }
    let wanted = [
        ("namespace", NS),
        ("appId", expect.app_id.as_str()),
        ("podName", POD),
    ];
    if path != "/v1/components" || wanted.iter().any(|(k, v)| query.get(k) != Some(v)) {
        refused.fetch_add(1, Ordering::SeqCst);
        let _ = write_all(
            &sock,
            reply("403 Forbidden", &format!("not allowed: {target}")).as_bytes(),
        )
        .await;
        return;
    }
    accepted.fetch_add(1, Ordering::SeqCst);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
    if write_all(&sock, head.as_bytes()).await.is_err() {
        return;
    }
    let mut heartbeat = tokio::time::interval(Duration::from_secs(2));
    let mut line = snapshots.borrow_and_update().clone();
    loop {
        // Split every line over two chunks, so that the sidecar must join them.
        let data = format!("{line}\n");
        let (a, b) = data.as_bytes().split_at(data.len() / 2);
        for part in [a, b] {
            let chunk = [format!("{:x}\r\n", part.len()).as_bytes(), part, b"\r\n"].concat();
            if write_all(&sock, &chunk).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                line = snapshots.borrow_and_update().clone();
            }
            _ = heartbeat.tick() => line = json!({"type": "heartbeat"}).to_string(),
        }
    }
}

async fn read_head(sock: &TcpStream) -> io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 64 << 10 {
            return Err(io::Error::other("request head too long"));
        }
        sock.readable().await?;
        match sock.try_read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn write_all(sock: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        sock.writable().await?;
        match sock.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn component(name: &str, type_: &str, meta: &[(&str, &str)]) -> Value {
    let meta: Vec<Value> = meta
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    json!({
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"type": type_, "version": "v1", "metadata": meta},
    })
}

fn snapshot(revision: u64, components: &[Value]) -> String {
    json!({"type": "snapshot", "revision": revision, "components": components}).to_string()
}

fn redis_store(db: &str) -> Value {
    let host = shared_redis().addr();
    component(
        "redisstore",
        "state.redis",
        &[("redisHost", &host), ("redisDB", db)],
    )
}

fn memory_store() -> Value {
    component("memstore", "state.in-memory", &[])
}

/// A builder for statecar in Kubernetes mode against `operator`.
fn k8s_sidecar(app_id: &str, operator: &str, token_file: &Path, cache: &Path) -> SidecarBuilder {
    Sidecar::builder()
        .app_id(app_id)
        .no_resources_path()
        .arg("--mode")
        .arg("kubernetes")
        .arg("--control-plane-address")
        .arg(operator)
        .arg("--namespace")
        .arg(NS)
        .env("POD_NAME", POD)
        .arg("--token-file")
        .arg(&token_file.display().to_string())
        .arg("--config-cache")
        .arg(&cache.display().to_string())
        .arg("--control-plane-timeout")
        .arg("1s")
}

async fn save(sc: &Sidecar, store: &str, key: &str, value: Value) {
    let body = json!([{ "key": key, "value": value }]);
    sc.post_json(&format!("/v1.0/state/{store}"), &body)
        .await
        .expect_no_content();
}

async fn get(sc: &Sidecar, store: &str, key: &str) -> statecar_tests::Resp {
    sc.get_path(&format!("/v1.0/state/{store}/{key}")).await
}

fn redis_exists(db: u32, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<bool>(&mut shared_redis().conn_db(db))
        .unwrap()
}

/// Polls `check` every 20 ms for up to `timeout`; returns how long it took.
async fn eventually<F: AsyncFnMut() -> bool>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> Duration {
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_follow_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let cache = dir.path().join("config.json");
    std::fs::write(&token_file, "sa-token-1\n").unwrap();
    let app = unique("k8s");
    let op = FakeOperator::start(
        "sa-token-1",
        &app,
        snapshot(1, &[memory_store(), redis_store("0")]),
    )
    .await;

    let started = Instant::now();
    let mut sc = k8s_sidecar(&app, &op.addr, &token_file, &cache)
        .start()
        .await;
    println!("ready after {} ms", started.elapsed().as_millis());
    assert!(
        sc.stderr()
            .contains("config applied: revision 1, stores [memstore, redisstore]")
    );

    save(&sc, "memstore", "k", json!("in memory")).await;
    save(&sc, "redisstore", "k", json!("in redis")).await;
    assert_eq!(
        get(&sc, "memstore", "k").await.expect(200).json(),
        "in memory"
    );
    assert_eq!(
        get(&sc, "redisstore", "k").await.expect(200).json(),
        "in redis"
    );
    assert!(redis_exists(0, &sc.redis_key("k")));

    // Hot reload: the redis store moves to DB 3.
    let key = sc.redis_key("moved");
    let pushed = Instant::now();
    op.push(snapshot(2, &[memory_store(), redis_store("3")]));
    let mut n = 0;
    eventually("a save lands in DB 3", Duration::from_secs(2), async || {
        n += 1;
        save(&sc, "redisstore", "moved", json!(n)).await;
        redis_exists(3, &key)
    })
    .await;
    let latency = pushed.elapsed();
    println!(
        "hot reload: a save landed in DB 3 {} ms after the new snapshot",
        latency.as_millis()
    );
    assert!(latency < Duration::from_secs(2));
    // The memory store was not touched by the change.
    assert_eq!(
        get(&sc, "memstore", "k").await.expect(200).json(),
        "in memory"
    );
    let names: Vec<Value> = sc.get_path("/v1.0/metadata").await.expect(200).json()["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, [json!("memstore"), json!("redisstore")]);

    // A store left out of a snapshot is gone.
    op.push(snapshot(3, &[redis_store("3")]));
    eventually("memstore removed", Duration::from_secs(2), async || {
        get(&sc, "memstore", "k").await.status == 400
    })
    .await;
    get(&sc, "memstore", "k")
        .await
        .expect_error(400, "ERR_STATE_STORE_NOT_FOUND");
    assert_eq!(
        get(&sc, "redisstore", "moved").await.expect(200).json(),
        json!(n)
    );

    // Without the operator the sidecar keeps serving what it has.
    op.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sc.is_running());
    sc.get_path("/v1.0/healthz").await.expect_no_content();
    save(&sc, "redisstore", "after", json!("operator gone")).await;
    assert_eq!(
        get(&sc, "redisstore", "after").await.expect(200).json(),
        "operator gone"
    );
    assert!(sc.stderr().contains("reconnecting in"), "{}", sc.logs());

    // The cache holds the last snapshot, for the owner only.
    let cached: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert_eq!(cached["revision"], 3);
    assert_eq!(cached["components"][0]["metadata"]["name"], "redisstore");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // SIGTERM in Kubernetes mode still exits 0.
    assert_eq!(
        sc.terminate(Duration::from_secs(10)),
        Some(0),
        "{}",
        sc.logs()
    );

    // A restart while the operator is down comes up from the cache.
    let started = Instant::now();
    let mut sc = k8s_sidecar(&app, &op.addr, &token_file, &cache)
        .start()
        .await;
    println!(
        "restart from the cache: ready after {} ms",
        started.elapsed().as_millis()
    );
    assert!(
        sc.stderr().contains("from the config cache"),
        "{}",
        sc.logs()
    );
    assert_eq!(
        get(&sc, "redisstore", "after").await.expect(200).json(),
        "operator gone"
    );
    get(&sc, "memstore", "k")
        .await
        .expect_error(400, "ERR_STATE_STORE_NOT_FOUND");
    assert_eq!(
        sc.terminate(Duration::from_secs(10)),
        Some(0),
        "{}",
        sc.logs()
    );
}

/// Spawns statecar without waiting for it to be ready.
fn spawn_unready(
    app: &str,
    operator: &str,
    token_file: &Path,
    log_dir: &Path,
) -> (Guarded, String) {
    let port = free_port();
    let grpc_port = std::iter::repeat_with(free_port)
        .find(|p| *p != port)
        .expect("a free port");
    let args = [
        "--mode",
        "kubernetes",
        "--app-id",
        app,
        "--control-plane-address",
        operator,
        "--namespace",
        NS,
        "--pod-name",
        POD,
        "--dapr-http-port",
        &port.to_string(),
        "--dapr-grpc-port",
        &grpc_port.to_string(),
        "--token-file",
        &token_file.display().to_string(),
        "--control-plane-timeout",
        "1s",
    ];
    let bin: PathBuf = statecar_bin();
    let proc = Guarded::spawn(Spawn {
        program: bin.as_os_str(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![("HOME".into(), log_dir.display().to_string())],
        env_remove: vec![
            "DAPR_API_TOKEN".into(),
            "NAMESPACE".into(),
            "POD_NAME".into(),
        ],
        log_dir,
        log_name: "statecar",
        cleanup_dir: None,
    })
    .unwrap();
    (proc, format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_keeps_the_sidecar_unready_until_it_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "stale-token").unwrap();
    let app = unique("k8s");
    let op = FakeOperator::start("fresh-token", &app, snapshot(1, &[memory_store()])).await;
    let (mut proc, base) = spawn_unready(&app, &op.addr, &token_file, dir.path());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    // The API is up, but not ready, and state requests find no store.
    let healthz = format!("{base}/v1.0/healthz?appid={app}");
    let mut up = false;
    for _ in 0..100 {
        if http.get(&healthz).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the API did not come up\n{}", proc.logs());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = http.get(&healthz).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"errorCode": "ERR_HEALTH_NOT_READY", "message": "dapr is not ready: [components]"})
    );
    let r = http
        .request(Method::GET, format!("{base}/v1.0/state/memstore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_STATE_STORE_NOT_CONFIGURED");
    let refused = op.refused.load(Ordering::SeqCst);
    assert!(
        refused >= 2,
        "the sidecar must keep retrying (refused {refused} times)"
    );
    assert_eq!(op.accepted.load(Ordering::SeqCst), 0);
    assert!(proc.is_running());
    let logs = proc.logs();
    assert!(
        logs.contains("401") && logs.contains("invalid token"),
        "{logs}"
    );
    assert!(logs.contains("not ready"), "{logs}");

    // The token file is re-read on every connect: a rotated token gets through.
    std::fs::write(&token_file, "fresh-token\n").unwrap();
    let start = Instant::now();
    loop {
        let r = http.get(&healthz).send().await.unwrap();
        if r.status().as_u16() == 204 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not ready after the token rotated\n{}",
            proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(op.accepted.load(Ordering::SeqCst), 1);
    let r = http
        .post(format!("{base}/v1.0/state/memstore"))
        .body(json!([{"key": "k", "value": 1}]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
}

/// A store that cannot be reached when the configuration arrives is left out and retried, and
/// the sidecar reports not ready until it starts (daprd exits instead; either way the pod is not
/// ready without its store). The others are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_start_holds_readiness_until_it_does() {
    let mut redis = RedisServer::start();
    let host = redis.addr();
    redis.stop();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "sa-token").unwrap();
    let app = unique("k8s");
    let mut late = component("late", "state.redis", &[("redisHost", &host)]);
    late["spec"]["initTimeout"] = json!("1s");
    let op = FakeOperator::start("sa-token", &app, snapshot(1, &[memory_store(), late])).await;
    let (proc, base) = spawn_unready(&app, &op.addr, &token_file, dir.path());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let healthz = format!("{base}/v1.0/healthz");

    eventually(
        "the first configuration is applied",
        Duration::from_secs(15),
        async || {
            proc.logs()
                .contains("not ready until these components start")
        },
    )
    .await;
    let r = http.get(&healthz).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 500, "{}", proc.logs());
    let save = |store: &str| {
        http.post(format!("{base}/v1.0/state/{store}"))
            .body(json!([{"key": "k", "value": 1}]).to_string())
            .send()
    };
    assert_eq!(save("memstore").await.unwrap().status().as_u16(), 204);
    let r = save("late").await.unwrap();
    assert_eq!(r.status().as_u16(), 400, "late is not served yet");

    // Still not ready over a few retries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = http.get(&healthz).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 500);
    let retries = proc
        .logs()
        .matches("retrying components that failed to start")
        .count();
    assert!(retries >= 1, "{}", proc.logs());

    redis.restart();
    let took = eventually(
        "ready once Redis is up",
        Duration::from_secs(20),
        async || http.get(&healthz).send().await.unwrap().status().as_u16() == 204,
    )
    .await;
    println!("ready {} ms after Redis came up", took.as_millis());
    assert_eq!(save("late").await.unwrap().status().as_u16(), 204);
    assert!(proc.logs().contains("every component has started: ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_flags_are_checked() {
    // The builder passes --resources-path by default.
    let f = Sidecar::builder()
        .arg("--mode")
        .arg("kubernetes")
        .arg("--control-plane-address")
        .arg("127.0.0.1:1")
        .arg("--namespace")
        .arg(NS)
        .arg("--pod-name")
        .arg(POD)
        .start_expect_failure(Duration::from_secs(10))
        .await;
    assert_eq!(f.code, 1, "{}", f.output());
    assert!(
        f.stderr.contains("--resources-path cannot be used"),
        "{}",
        f.output()
    );

    let f = Sidecar::builder()
        .no_resources_path()
        .arg("--mode")
        .arg("kubernetes")
        .arg("--namespace")
        .arg(NS)
        .arg("--pod-name")
        .arg(POD)
        .start_expect_failure(Duration::from_secs(10))
        .await;
    assert_eq!(f.code, 1, "{}", f.output());
    assert!(
        f.stderr.contains("--control-plane-address is required"),
        "{}",
        f.output()
    );

    let f = Sidecar::builder()
        .no_resources_path()
        .arg("--mode")
        .arg("kubernetes")
        .arg("--control-plane-address")
        .arg("127.0.0.1:1")
        .arg("--namespace")
        .arg(NS)
        .start_expect_failure(Duration::from_secs(10))
        .await;
    assert!(f.stderr.contains("--pod-name"), "{}", f.output());
}
