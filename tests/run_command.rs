//! `statecar run`: the app's exit code and prefixed output, signals passed on to the app, the
//! app stopped when the sidecar dies, and the counter example's three replicas against one
//! Redis.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use statecar_tests::devtools::{
    Home, child_matching, is_alive, process_group, python_has_requests, wait_gone,
};
use statecar_tests::process::{Guarded, Spawn, exit_code, free_port};
use statecar_tests::{RedisServer, statecar_bin, unique};

/// `statecar run` started through the harness's watchdog (killed on drop; the kernel then
/// stops its children).
struct Run {
    proc: Guarded,
    port: u16,
}

impl Run {
    fn start(home: &Home, app_id: &str, app: &[&str]) -> Run {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--app-id".into(),
            app_id.into(),
            "--dapr-http-port".into(),
            port.to_string(),
            "--".into(),
        ];
        args.extend(app.iter().map(|a| a.to_string()));
        let bin: OsString = statecar_bin().into_os_string();
        let proc = Guarded::spawn(Spawn {
            program: &bin,
            args,
            env: vec![("HOME".into(), home.path().display().to_string())],
            env_remove: [
                "DAPR_HTTP_PORT",
                "DAPR_GRPC_PORT",
                "DAPR_API_TOKEN",
                "NAMESPACE",
                "RUST_LOG",
            ]
            .map(String::from)
            .to_vec(),
            log_dir: &home.scratch(),
            log_name: &unique("run"),
            cleanup_dir: None,
        })
        .expect("spawning statecar run");
        Run { proc, port }
    }

    fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Waits for the exit code (panics with the output after `timeout`).
    fn wait(&mut self, timeout: Duration) -> i32 {
        match self.proc.wait_timeout(timeout) {
            Some(st) => exit_code(st),
            None => panic!(
                "statecar run did not exit within {timeout:?}\n{}",
                self.proc.logs()
            ),
        }
    }

    /// Waits until stdout contains `needle`.
    fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.proc.stdout().contains(needle) {
            assert!(
                self.proc.is_running(),
                "statecar run exited before printing {needle:?}\n{}",
                self.proc.logs()
            );
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on stdout within {timeout:?}\n{}",
                self.proc.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The sidecar it started (the child given --dapr-http-port).
    fn sidecar_pid(&self) -> i32 {
        child_matching(self.pid(), "--dapr-http-port", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no sidecar child of {}\n{}", self.pid(), self.proc.logs()))
    }

    /// The pid the app printed as `app pid N`.
    fn app_pid(&self) -> i32 {
        let out = self.proc.stdout();
        out.lines()
            .find_map(|l| l.strip_prefix("== APP == app pid "))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no app pid line\n{}", self.proc.logs()))
    }
}

/// A Redis, and a home whose default component (`statecar init`) points at it.
fn home_with_redis() -> (RedisServer, Home) {
    let redis = RedisServer::start();
    let home = Home::new();
    home.statecar(&["init", "--redis-address", &redis.addr()])
        .assert_ok();
    (redis, home)
}

fn script(home: &Home, name: &str, text: &str) -> PathBuf {
    let path = home.scratch().join(name);
    std::fs::write(&path, text).expect("write script");
    path
}

/// A sh app that prints its pid, then waits; on SIGTERM it says so and exits 7.
const PATIENT_APP: &str = r#"
trap 'echo "app got SIGTERM"; exit 7' TERM
echo "app pid $$"
while :; do sleep 0.1; done
"#;

#[test]
fn the_app_exit_code_is_passed_on_and_output_is_prefixed() {
    let (redis, home) = home_with_redis();
    // Saves and reads state through the sidecar (stdlib only), then exits 3.
    let app = script(
        &home,
        "app.py",
        r#"
import json, os, sys, urllib.request
http = urllib.request.build_opener(urllib.request.ProxyHandler({}))
base = "http://127.0.0.1:%s/v1.0/state/statestore" % os.environ["DAPR_HTTP_PORT"]
body = json.dumps([{"key": "greeting", "value": "hello"}]).encode()
http.open(urllib.request.Request(base, data=body, method="POST",
                                 headers={"content-type": "application/json"}))
got = http.open(base + "/greeting").read().decode()
print("read back %s as %s" % (got, os.environ["APP_ID"]))
print("a line on stderr", file=sys.stderr)
sys.stdout.write("no newline at the end")
sys.exit(3)
"#,
    );
    let app_id = unique("runapp");
    let mut run = Run::start(&home, &app_id, &["python3", app.to_str().expect("utf-8")]);
    let code = run.wait(Duration::from_secs(30));
    let (stdout, stderr) = (run.proc.stdout(), run.proc.stderr());
    let logs = run.proc.logs();
    assert_eq!(code, 3, "statecar run exits with the app's code\n{logs}");
    assert!(
        stdout.contains(&format!("== APP == read back \"hello\" as {app_id}\n")),
        "{logs}"
    );
    assert!(
        stdout.contains("== APP == no newline at the end\n"),
        "{logs}"
    );
    assert!(stderr.contains("== APP == a line on stderr\n"), "{logs}");
    assert!(
        stderr.contains("== SIDECAR == "),
        "sidecar logs on stderr\n{logs}"
    );
    for line in stdout.lines() {
        assert!(
            line.starts_with("== APP == ") || line.starts_with("== SIDECAR == "),
            "every stdout line is prefixed: {line:?}\n{logs}"
        );
    }
    // The sidecar used ~/.statecar/components: the value is in that Redis.
    let stored = redis.hgetall(&format!("{app_id}||greeting"));
    assert_eq!(stored.get("data").map(String::as_str), Some("\"hello\""));
    // The port is free again: the sidecar was stopped.
    assert!(std::net::TcpStream::connect(("127.0.0.1", run.port)).is_err());
}

/// The app finds the sidecar's gRPC API through DAPR_GRPC_PORT, as a Dapr SDK app does under
/// `dapr run`: the official Python SDK saves and reads with no address configured.
#[test]
fn a_python_sdk_app_finds_the_grpc_api() {
    let (redis, home) = home_with_redis();
    let app = script(
        &home,
        "sdk_app.py",
        r#"
import os
from dapr.clients import DaprClient
with DaprClient() as client:
    client.save_state("statestore", "sdk-key", b"from the sdk")
    got = client.get_state("statestore", "sdk-key")
    print("grpc port %s read back %s" % (os.environ["DAPR_GRPC_PORT"], got.data.decode()))
"#,
    );
    let app_id = unique("sdkapp");
    let mut run = Run::start(&home, &app_id, &["python3", app.to_str().expect("utf-8")]);
    let code = run.wait(Duration::from_secs(60));
    let logs = run.proc.logs();
    assert_eq!(
        code, 0,
        "the SDK app succeeds (is the Python SDK installed?)\n{logs}"
    );
    assert!(
        run.proc.stdout().contains("read back from the sdk"),
        "{logs}"
    );
    let stored = redis.hgetall(&format!("{app_id}||sdk-key"));
    assert_eq!(stored.get("data").map(String::as_str), Some("from the sdk"));
}

#[test]
fn sigterm_is_passed_on_to_the_app_and_both_stop() {
    let home = Home::new();
    let app = script(&home, "patient.sh", PATIENT_APP);
    let mut run = Run::start(&home, "patient", &["sh", app.to_str().expect("utf-8")]);
    run.wait_for_stdout("== APP == app pid ", Duration::from_secs(20));
    let (app_pid, sidecar_pid) = (run.app_pid(), run.sidecar_pid());
    // Each child leads a process group of its own (a terminal's Ctrl-C reaches only `run`).
    assert_eq!(process_group(app_pid), Some(app_pid));
    assert_eq!(process_group(sidecar_pid), Some(sidecar_pid));

    run.proc.signal(libc::SIGTERM);
    let code = run.wait(Duration::from_secs(20));
    let logs = run.proc.logs();
    assert_eq!(code, 7, "the app's own exit code after its trap\n{logs}");
    assert!(
        run.proc.stdout().contains("== APP == app got SIGTERM"),
        "{logs}"
    );
    assert!(run.proc.stderr().contains("SIGTERM received"), "{logs}");
    assert!(
        wait_gone(app_pid, Duration::from_secs(5)),
        "app gone\n{logs}"
    );
    assert!(
        wait_gone(sidecar_pid, Duration::from_secs(5)),
        "sidecar gone\n{logs}"
    );
}

#[test]
fn an_app_killed_by_the_forwarded_signal_gives_128_plus_the_signal() {
    let home = Home::new();
    let app = script(
        &home,
        "plain.sh",
        "echo \"app pid $$\"\nwhile :; do sleep 0.1; done\n",
    );
    let mut run = Run::start(&home, "plain", &["sh", app.to_str().expect("utf-8")]);
    run.wait_for_stdout("== APP == app pid ", Duration::from_secs(20));
    let sidecar_pid = run.sidecar_pid();
    run.proc.signal(libc::SIGINT);
    let code = run.wait(Duration::from_secs(20));
    assert_eq!(code, 128 + libc::SIGINT, "{}", run.proc.logs());
    assert!(wait_gone(sidecar_pid, Duration::from_secs(5)));
}

#[test]
fn the_sidecar_dying_stops_the_app() {
    let home = Home::new();
    let app = script(
        &home,
        "app.sh",
        r#"
trap 'echo "app stopping"; exit 0' TERM
echo "app pid $$"
while :; do sleep 0.1; done
"#,
    );
    let mut run = Run::start(&home, "fragile", &["sh", app.to_str().expect("utf-8")]);
    run.wait_for_stdout("== APP == app pid ", Duration::from_secs(20));
    let (app_pid, sidecar_pid) = (run.app_pid(), run.sidecar_pid());
    assert!(is_alive(app_pid));
    // SAFETY: kill(2) on the sidecar this test's `statecar run` started.
    unsafe {
        libc::kill(sidecar_pid, libc::SIGKILL);
    }
    let code = run.wait(Duration::from_secs(20));
    let logs = run.proc.logs();
    assert_ne!(code, 0, "{logs}");
    assert!(
        run.proc
            .stderr()
            .contains("the sidecar ended unexpectedly (killed by signal 9, SIGKILL)"),
        "the reason is printed\n{logs}"
    );
    assert!(
        run.proc.stdout().contains("== APP == app stopping"),
        "{logs}"
    );
    assert!(
        wait_gone(app_pid, Duration::from_secs(5)),
        "app gone\n{logs}"
    );
}

#[test]
fn a_sidecar_that_cannot_start_is_reported_and_the_app_never_runs() {
    let home = Home::new();
    let components = home.components_dir();
    std::fs::create_dir_all(&components).expect("mkdir");
    std::fs::write(
        components.join("bad.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: bad\nspec:\n  \
         type: state.nosuch\n  version: v1\n",
    )
    .expect("write");
    let marker = home.scratch().join("app-ran");
    let app = format!("touch {}", marker.display());
    let mut run = Run::start(&home, "broken", &["sh", "-c", &app]);
    let code = run.wait(Duration::from_secs(20));
    let logs = run.proc.logs();
    assert_ne!(code, 0, "{logs}");
    assert!(
        run.proc.stderr().contains("the sidecar did not start"),
        "{logs}"
    );
    assert!(run.proc.stderr().contains("== SIDECAR == "), "{logs}");
    assert!(!marker.exists(), "the app must not start\n{logs}");
}

fn counter_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/counter/counter.py")
}

#[test]
fn counter_example_is_exact_with_three_replicas_on_one_redis() {
    if let Err(why) = python_has_requests() {
        panic!("the counter example cannot run: {why}");
    }
    const N: u32 = 50;
    let (redis, home) = home_with_redis();
    let counter = counter_example();
    let counter = counter.to_str().expect("utf-8 path");
    let n = N.to_string();
    let mut runs: Vec<Run> = (0..3)
        .map(|_| Run::start(&home, "counter", &["python3", counter, &n]))
        .collect();
    let ports: std::collections::HashSet<u16> = runs.iter().map(|r| r.port).collect();
    assert_eq!(ports.len(), 3, "three sidecar ports");
    for run in &mut runs {
        let code = run.wait(Duration::from_secs(90));
        assert_eq!(code, 0, "{}", run.proc.logs());
        assert!(
            run.proc
                .stdout()
                .contains(&format!("finished {N} increments")),
            "{}",
            run.proc.logs()
        );
    }
    let stored = redis.hgetall("counter||counter");
    assert_eq!(
        stored.get("data").map(String::as_str),
        Some((3 * N).to_string().as_str()),
        "every increment of every replica counted: {stored:?}"
    );
}
