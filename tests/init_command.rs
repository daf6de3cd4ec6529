//! `statecar init` and `statecar uninstall` in a temp HOME: the component file for a reachable
//! Redis (served by the sidecar), the in-memory fallback and its messages, the private
//! redis-server of `--start-redis` and its stop, idempotency and user edits.

use std::time::Duration;

use serde_json::json;
use statecar_tests::devtools::{Home, cmdline, empty_path_dir, is_alive, wait_gone};
use statecar_tests::process::free_port;
use statecar_tests::{RedisServer, Sidecar};

#[track_caller]
fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?} in:\n{haystack}"
    );
}

#[track_caller]
fn assert_lacks(haystack: &str, needle: &str) {
    assert!(
        !haystack.contains(needle),
        "did not expect {needle:?} in:\n{haystack}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reachable_redis_gives_a_redis_component_the_sidecar_serves() {
    let redis = RedisServer::start();
    let home = Home::new();
    let out = home.statecar(&["init", "--redis-address", &redis.addr()]);
    out.assert_ok();
    assert_contains(&out.stdout, &format!("Redis answers at {}", redis.addr()));
    assert_contains(&out.stdout, "Wrote ~/.statecar/components/statestore.yaml");
    assert_contains(&out.stdout, "Next: statecar run --app-id");
    let text = home.statestore_text();
    assert_contains(&text, "type: state.redis");
    assert_contains(&text, &format!("value: {}", redis.addr()));
    assert_contains(&text, "name: actorStateStore\n    value: \"false\"");

    let components = home.components_dir().display().to_string();
    let sc = Sidecar::builder()
        .arg("--resources-path")
        .arg(&components)
        .start()
        .await;
    sc.put("k", json!({"n": 1})).await;
    let got = sc.get("k").await;
    assert_eq!(got.status, 200, "{}", got.describe());
    assert_eq!(got.text(), r#"{"n":1}"#);
    let stored = redis.hgetall(&sc.redis_key("k"));
    assert_eq!(
        stored.get("data").map(String::as_str),
        Some(r#"{"n":1}"#),
        "the value reached the Redis init was pointed at: {stored:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_redis_gives_an_in_memory_store_and_says_so() {
    let home = Home::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let has_redis_server = std::path::Path::new("/usr/bin/redis-server").exists();

    let out = home.statecar(&["init", "--redis-address", &addr]);
    out.assert_ok();
    assert_contains(&out.stdout, &format!("No Redis answers at {addr}"));
    assert_contains(&out.stdout, "in-memory store");
    if has_redis_server {
        assert_contains(
            &out.stdout,
            &format!("statecar init --start-redis --redis-address {addr}"),
        );
    }
    let text = home.statestore_text();
    assert_contains(&text, "type: state.in-memory");
    assert_contains(&text, "name: statestore");

    // The file loads: the sidecar serves it as the in-memory store.
    let components = home.components_dir().display().to_string();
    let sc = Sidecar::builder()
        .arg("--resources-path")
        .arg(&components)
        .start()
        .await;
    let meta = sc.get_path("/v1.0/metadata").await.json();
    assert_eq!(
        meta["components"][0]["type"], "state.in-memory",
        "metadata: {meta}"
    );

    // Without redis-server on PATH there is nothing to suggest.
    let empty = empty_path_dir(&home);
    let path = empty.to_str().expect("utf-8 path");
    let other = Home::new();
    let out = other.statecar_env(&["init", "--redis-address", &addr], &[("PATH", path)], &[]);
    out.assert_ok();
    assert_contains(&out.stdout, "in-memory store");
    assert_lacks(&out.stdout, "--start-redis");
    assert_contains(&other.statestore_text(), "type: state.in-memory");

    // Asking for one without redis-server on PATH: in memory, and why.
    let out = other.statecar_env(
        &["init", "--start-redis", "--redis-address", &addr],
        &[("PATH", path)],
        &[],
    );
    out.assert_ok();
    assert_contains(&out.stdout, "found no redis-server on PATH");
    assert_contains(&out.stdout, "nothing changed");
    assert!(!other.redis_pid_file().exists());
}

#[test]
fn start_redis_runs_a_private_redis_that_stop_and_uninstall_stop() {
    let home = Home::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");

    let out = home.statecar(&["init", "--start-redis", "--redis-address", &addr]);
    out.assert_ok();
    assert_contains(&out.stdout, "Started a private redis-server");
    let pid = home.redis_pid().expect("a pid file");
    assert!(is_alive(pid), "redis-server {pid} runs\n{}", out.output());
    assert_contains(&cmdline(pid), "redis-server");
    let redis = redis::Client::open(format!("redis://{addr}/")).expect("client");
    let mut conn = redis
        .get_connection_with_timeout(Duration::from_secs(2))
        .expect("the private redis answers");
    let pong: String = redis::cmd("PING").query(&mut conn).expect("PING");
    assert_eq!(pong, "PONG");
    let dir: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("dir")
        .query(&mut conn)
        .expect("CONFIG GET dir");
    let data_dir = std::fs::canonicalize(home.redis_dir()).expect("redis dir");
    assert_eq!(dir[1], data_dir.display().to_string(), "data under HOME");
    drop(conn);
    let text = home.statestore_text();
    assert_contains(&text, "type: state.redis");
    assert_contains(&text, &format!("value: {addr}"));

    // Again: the same server, the same file.
    let out = home.statecar(&["init", "--start-redis", "--redis-address", &addr]);
    out.assert_ok();
    assert_contains(
        &out.stdout,
        &format!("private redis-server (pid {pid}) answers"),
    );
    assert_contains(&out.stdout, "nothing changed");
    assert_eq!(home.redis_pid(), Some(pid));

    let out = home.statecar(&["init", "--stop"]);
    out.assert_ok();
    assert_contains(
        &out.stdout,
        &format!("Stopped the private redis-server (pid {pid})"),
    );
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "redis-server {pid} is gone"
    );
    assert!(!home.redis_pid_file().exists(), "pid file removed");
    assert!(std::net::TcpStream::connect(&addr).is_err(), "port closed");
    let out = home.statecar(&["init", "--stop"]);
    out.assert_ok();
    assert_contains(&out.stdout, "No private redis-server is running");

    // uninstall --all stops it too and removes ~/.statecar.
    home.statecar(&["init", "--start-redis", "--redis-address", &addr])
        .assert_ok();
    let pid = home.redis_pid().expect("a pid file");
    let out = home.statecar(&["uninstall", "--all"]);
    out.assert_ok();
    assert_contains(
        &out.stdout,
        &format!("Stopped the private redis-server (pid {pid})"),
    );
    assert!(
        wait_gone(pid, Duration::from_secs(5)),
        "redis-server {pid} is gone"
    );
    assert!(!home.statecar_dir().exists(), "~/.statecar removed");
}

#[test]
fn init_is_idempotent_and_keeps_user_edits_unless_forced() {
    let home = Home::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let init = |extra: &[&str]| {
        let mut args = vec!["init", "--redis-address", &addr];
        args.extend_from_slice(extra);
        home.statecar(&args)
    };

    let out = init(&[]);
    out.assert_ok();
    assert_contains(&out.stdout, "Wrote ~/.statecar/components/statestore.yaml");
    let original = home.statestore_text();
    let mtime = || {
        std::fs::metadata(home.statestore_file())
            .and_then(|m| m.modified())
            .expect("mtime")
    };
    let written_at = mtime();

    let out = init(&[]);
    out.assert_ok();
    assert_contains(&out.stdout, "nothing changed");
    assert_eq!(home.statestore_text(), original);
    assert_eq!(mtime(), written_at, "the file was not rewritten");

    let edited = original.replace("value: \"false\"", "value: \"true\"");
    assert_ne!(edited, original);
    std::fs::write(home.statestore_file(), &edited).expect("edit");
    let out = init(&[]);
    out.assert_ok();
    assert_contains(&out.stdout, "Kept ~/.statecar/components/statestore.yaml");
    assert_contains(&out.stdout, "--force");
    assert_eq!(home.statestore_text(), edited, "the edit is kept");

    let out = init(&["--force"]);
    out.assert_ok();
    assert_contains(
        &out.stdout,
        "Replaced ~/.statecar/components/statestore.yaml",
    );
    assert_eq!(home.statestore_text(), original);
    let backup = home.components_dir().join("statestore.yaml.bak");
    assert_eq!(std::fs::read_to_string(backup).expect("backup"), edited);

    let out = init(&[]);
    out.assert_ok();
    assert_contains(&out.stdout, "nothing changed");
}

#[test]
fn init_without_home_is_a_clear_error() {
    let home = Home::new();
    let out = home.statecar_env(&["init"], &[], &["HOME"]);
    assert_ne!(out.code, 0, "{}", out.output());
    assert_contains(&out.stderr, "HOME is not set");
}

#[test]
fn start_redis_refuses_a_remote_address() {
    let home = Home::new();
    let out = home.statecar(&[
        "init",
        "--start-redis",
        "--redis-address",
        "redis.example:6379",
    ]);
    assert_ne!(out.code, 0, "{}", out.output());
    assert_contains(&out.stderr, "--start-redis runs Redis on this machine");
    assert!(!home.statestore_file().exists());
}
