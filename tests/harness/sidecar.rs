//! Starting the real `statecar` binary against a temp resources directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::http::Resp;
use crate::process::{Guarded, Spawn, exit_code, free_port};
use crate::redis_server::shared_redis;
use crate::{STORE, StoreKind, unique};

/// Path of the statecar binary: `$STATECAR_BIN`, else `$CARGO_TARGET_DIR/debug/statecar` if it
/// exists, else `<workspace>/target/debug/statecar`.
pub fn statecar_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STATECAR_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "STATECAR_BIN={} does not exist; build it first: cargo build -p sidecar",
            p.display()
        );
        return p;
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let p = PathBuf::from(dir).join("debug").join("statecar");
        if p.exists() {
            return p;
        }
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let p = ws.join("target").join("debug").join("statecar");
    assert!(
        p.exists(),
        "{} not found; build it first: cargo build -p sidecar (or set STATECAR_BIN)",
        p.display()
    );
    p
}

/// YAML of one component. `meta` values are written as double-quoted YAML strings.
/// `spec_extra` lines (e.g. `ignoreErrors: true`) are added under `spec:`, `top_extra` lines
/// (e.g. `scopes: [a]`) at the top level.
pub fn component_yaml_ext(
    name: &str,
    type_: &str,
    meta: &[(&str, &str)],
    spec_extra: &[&str],
    top_extra: &[&str],
) -> String {
    let mut y = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {}\nspec:\n  type: {}\n  version: v1\n",
        yaml_str(name),
        yaml_str(type_)
    );
    for line in spec_extra {
        y.push_str(&format!("  {line}\n"));
    }
    if meta.is_empty() {
        y.push_str("  metadata: []\n");
    } else {
        y.push_str("  metadata:\n");
        for (k, v) in meta {
            y.push_str(&format!(
                "  - name: {}\n    value: {}\n",
                yaml_str(k),
                yaml_str(v)
            ));
        }
    }
    for line in top_extra {
        y.push_str(line);
        y.push('\n');
    }
    y
}

pub fn component_yaml(name: &str, type_: &str, meta: &[(&str, &str)]) -> String {
    component_yaml_ext(name, type_, meta, &[], &[])
}

/// A JSON string is a valid YAML double-quoted scalar.
fn yaml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// YAML of a state store of `kind` named `name`; Redis stores point at the shared redis unless
/// `meta` has its own `redisHost`.
pub fn store_yaml(name: &str, kind: StoreKind, meta: &[(&str, &str)]) -> String {
    match kind {
        StoreKind::Memory => component_yaml(name, kind.component_type(), meta),
        StoreKind::Redis => {
            let host = shared_redis().addr();
            let mut all: Vec<(&str, &str)> = Vec::new();
            if !meta
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("redisHost"))
            {
                all.push(("redisHost", &host));
            }
            all.extend_from_slice(meta);
            component_yaml(name, kind.component_type(), &all)
        }
    }
}

pub struct SidecarBuilder {
    app_id: String,
    files: Vec<(String, String)>,
    resources_path: bool,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

/// How a sidecar that was expected not to start ended.
#[derive(Debug)]
pub struct StartFailure {
    pub code: i32,
    pub stderr: String,
    pub stdout: String,
}

impl StartFailure {
    /// stderr and stdout together (logs may go to either).
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stderr, self.stdout)
    }
}

impl SidecarBuilder {
    pub fn app_id(mut self, id: &str) -> Self {
        self.app_id = id.to_string();
        self
    }

    /// Adds the component `statestore` of `kind`.
    pub fn store(self, kind: StoreKind) -> Self {
        self.store_meta(kind, &[])
    }

    /// Adds the component `statestore` of `kind` with extra metadata.
    pub fn store_meta(self, kind: StoreKind, meta: &[(&str, &str)]) -> Self {
        let y = store_yaml(STORE, kind, meta);
        self.file("statestore.yaml", &y)
    }

    /// Adds a raw file to the resources directory.
    pub fn file(mut self, name: &str, content: &str) -> Self {
        self.files.push((name.to_string(), content.to_string()));
        self
    }

    /// Starts without `--resources-path` (HOME points at an empty temp dir).
    pub fn no_resources_path(mut self) -> Self {
        self.resources_path = false;
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    fn launch(&self) -> Sidecar {
        let dir = tempfile::Builder::new()
            .prefix("statecar-sidecar-")
            .tempdir()
            .expect("temp dir");
        let resources = dir.path().join("components");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&resources).expect("mkdir components");
        std::fs::create_dir_all(&home).expect("mkdir home");
        for (name, content) in &self.files {
            std::fs::write(resources.join(name), content).expect("write component file");
        }
        let port = free_port();
        let mut args = vec!["--app-id".to_string(), self.app_id.clone()];
        if self.resources_path {
            args.push("--resources-path".into());
            args.push(resources.display().to_string());
        }
        args.extend([
            "--dapr-http-port".to_string(),
            port.to_string(),
            "--dapr-http-address".to_string(),
            "127.0.0.1".to_string(),
        ]);
        // Always on a free port: in Kubernetes mode the default (50001) would be shared by
        // every sidecar of a test run.
        // The kernel may hand out the same free port twice in a row; the sidecar refuses equal
        // HTTP and gRPC ports, so draw again until they differ.
        let grpc_port = std::iter::repeat_with(free_port)
            .find(|p| *p != port)
            .expect("a free port");
        args.extend(["--dapr-grpc-port".to_string(), grpc_port.to_string()]);
        args.extend(self.args.iter().cloned());
        let mut env = vec![("HOME".to_string(), home.display().to_string())];
        env.extend(self.env.iter().cloned());
        let bin: OsString = statecar_bin().into_os_string();
        let proc = Guarded::spawn(Spawn {
            program: &bin,
            args,
            env,
            env_remove: vec![
                "DAPR_API_TOKEN".into(),
                "DAPR_GRPC_PORT".into(),
                "NAMESPACE".into(),
                "RUST_LOG".into(),
            ],
            log_dir: dir.path(),
            log_name: "statecar",
            cleanup_dir: Some(dir.path()),
        })
        .expect("spawning statecar");
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        Sidecar {
            proc,
            port,
            grpc_port,
            app_id: self.app_id.clone(),
            client,
            base: format!("http://127.0.0.1:{port}"),
            resources,
            _dir: dir,
        }
    }

    /// Starts the sidecar and waits (15 s) until `GET /v1.0/healthz` answers 204. Readiness is
    /// probed with `?appid=<app id>` so that another process on the same port is not mistaken
    /// for this sidecar; a lost race for the port is retried with a new port.
    pub async fn start(self) -> Sidecar {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_start().await {
                Ok(sc) => return sc,
                Err(logs) if attempt < 3 && port_in_use(&logs) => continue,
                Err(logs) => panic!("{logs}"),
            }
        }
    }

    async fn try_start(&self) -> Result<Sidecar, String> {
        let mut sc = self.launch();
        let deadline = Instant::now() + Duration::from_secs(15);
        let url = sc.url(&format!("/v1.0/healthz?appid={}", crate::esc(&sc.app_id)));
        loop {
            if let Some(st) = sc.proc.try_status() {
                return Err(format!(
                    "statecar exited during startup with {st} (app id {})\n{}",
                    sc.app_id,
                    sc.proc.logs()
                ));
            }
            let r = sc
                .client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if let Ok(r) = r
                && r.status().as_u16() == 204
            {
                return Ok(sc);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "statecar did not report healthy (GET /v1.0/healthz -> 204) within 15 s\n{}",
                    sc.proc.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the sidecar expecting it to exit by itself within `timeout`; panics if it is
    /// still running then (including its logs).
    pub async fn start_expect_failure(self, timeout: Duration) -> StartFailure {
        let mut sc = self.launch();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = sc.proc.try_status() {
                return StartFailure {
                    code: exit_code(st),
                    stderr: sc.proc.stderr(),
                    stdout: sc.proc.stdout(),
                };
            }
            if Instant::now() >= deadline {
                let healthy = sc
                    .client
                    .get(sc.url("/v1.0/healthz"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .map(|r| r.status().as_u16().to_string())
                    .unwrap_or_else(|e| e.to_string());
                panic!(
                    "statecar was expected to fail at startup but is still running after {timeout:?} (healthz: {healthy})\n{}",
                    sc.proc.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn port_in_use(logs: &str) -> bool {
    let l = logs.to_ascii_lowercase();
    l.contains("address already in use") || l.contains("addrinuse") || l.contains("os error 98")
}

/// A running statecar. Killed on drop.
pub struct Sidecar {
    proc: Guarded,
    port: u16,
    grpc_port: u16,
    app_id: String,
    client: reqwest::Client,
    base: String,
    resources: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    /// A builder with an empty resources directory and a unique app id.
    pub fn builder() -> SidecarBuilder {
        SidecarBuilder {
            app_id: unique("app"),
            files: vec![],
            resources_path: true,
            env: vec![],
            args: vec![],
        }
    }

    /// A sidecar with one store `statestore` of `kind` and a unique app id.
    pub async fn start(kind: StoreKind) -> Sidecar {
        Self::builder().store(kind).start().await
    }

    /// The gRPC API's port.
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    pub fn resources_dir(&self) -> &Path {
        &self.resources
    }

    /// Redis key of `key` under the default `appid` prefix.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}||{}", self.app_id, key)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// Full captured stderr of the sidecar so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Full captured stdout of the sidecar so far.
    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// A request to `path` (already escaped), e.g. `/v1.0/state/statestore/k`.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends a request and reads the whole response.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let req = rb.build().expect("building request");
        let what = format!("{} {}", req.method(), req.url().path());
        let r = self
            .client
            .execute(req)
            .await
            .unwrap_or_else(|e| panic!("{what} failed: {e}\n{}", self.proc.logs()));
        Resp::read(what, r).await
    }

    /// Sends a request, returning the transport error instead of panicking.
    pub async fn try_send(&self, rb: reqwest::RequestBuilder) -> Result<Resp, reqwest::Error> {
        let req = rb.build()?;
        let what = format!("{} {}", req.method(), req.url().path());
        let r = self.client.execute(req).await?;
        Ok(Resp::read(what, r).await)
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait_timeout(timeout).map(exit_code)
    }

    /// Kills the sidecar (SIGKILL).
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}
