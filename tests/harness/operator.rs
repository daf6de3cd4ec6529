//! The real `statecar-operator` binary, started against the test cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, workspace};
use crate::process::{Guarded, Spawn, free_port};
use crate::sidecar::{Sidecar, SidecarBuilder};
use crate::unique;

/// Path of the operator binary: `$STATECAR_OPERATOR_BIN`, else
/// `$CARGO_TARGET_DIR/debug/statecar-operator` if it exists, else
/// `<workspace>/target/debug/statecar-operator`.
pub fn operator_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STATECAR_OPERATOR_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "STATECAR_OPERATOR_BIN={} does not exist; build it first: cargo build -p operator",
            p.display()
        );
        return p;
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        let p = PathBuf::from(dir).join("debug").join("statecar-operator");
        if p.exists() {
            return p;
        }
    }
    let p = workspace().join("target/debug/statecar-operator");
    assert!(
        p.exists(),
        "{} not found; build it first: cargo build -p operator (or set STATECAR_OPERATOR_BIN)",
        p.display()
    );
    p
}

/// How to start an operator replica.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// `--identity`.
    pub identity: String,
    /// `None`: `--disable-leader-election`; `Some((namespace, name))`: elect on that Lease.
    pub lease: Option<(String, String)>,
    pub log_level: &'static str,
    /// Serve the admission webhooks (off unless asked: each replica would otherwise bind the
    /// default webhook port and manage the default certificate Secret).
    pub webhooks: bool,
    /// Serve the config stream over HTTPS (the operator's default); the tests' operators use
    /// plain HTTP unless asked.
    pub config_tls: bool,
    /// More flags, appended last.
    pub extra_args: Vec<String>,
}

/// `--log-level` of the operators: `$STATECAR_OPERATOR_LOG_LEVEL`, else info.
fn log_level() -> &'static str {
    match std::env::var("STATECAR_OPERATOR_LOG_LEVEL").as_deref() {
        Ok("debug") => "debug",
        Ok("warn") => "warn",
        Ok("error") => "error",
        _ => "info",
    }
}

impl OperatorOptions {
    /// A single replica that writes status without an election.
    pub fn single() -> Self {
        Self {
            identity: unique("operator"),
            lease: None,
            log_level: log_level(),
            webhooks: false,
            config_tls: false,
            extra_args: vec![],
        }
    }

    /// A replica electing on the Lease `namespace/name`.
    pub fn elected(namespace: &str, lease_name: &str) -> Self {
        Self {
            identity: unique("operator"),
            lease: Some((namespace.into(), lease_name.into())),
            log_level: log_level(),
            webhooks: false,
            config_tls: false,
            extra_args: vec![],
        }
    }
}

/// A running `statecar-operator`; SIGKILLed on drop (and if the test process dies).
pub struct Operator {
    proc: Guarded,
    pub identity: String,
    pub config_addr: SocketAddr,
    pub probe_addr: SocketAddr,
    _dir: tempfile::TempDir,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a reqwest client")
}

impl Operator {
    /// Starts the operator and waits until `/readyz` answers 200 (its caches are synced).
    pub async fn start(cluster: &Cluster, opts: OperatorOptions) -> Operator {
        let bin = operator_bin();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = tempfile::tempdir().expect("temp dir");
            let config_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let probe_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut args = vec![
                "--config-listen".to_string(),
                config_addr.to_string(),
                "--probe-listen".into(),
                probe_addr.to_string(),
                "--identity".into(),
                opts.identity.clone(),
                "--log-level".into(),
                opts.log_level.into(),
            ];
            match &opts.lease {
                Some((ns, name)) => {
                    args.extend(["--namespace".into(), ns.clone()]);
                    args.extend(["--lease-name".into(), name.clone()]);
                }
                None => args.push("--disable-leader-election".into()),
            }
            if !opts.webhooks {
                args.push("--disable-webhooks".into());
            }
            if !opts.config_tls {
                args.push("--config-plaintext".into());
            }
            args.extend(opts.extra_args.iter().cloned());
            let env_remove = [
                "POD_NAMESPACE",
                "POD_NAME",
                "STATECAR_CONFIG_LISTEN",
                "STATECAR_PROBE_LISTEN",
                "STATECAR_WEBHOOK_LISTEN",
                "STATECAR_SIDECAR_IMAGE",
                "STATECAR_MANAGE_CRD",
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "ALL_PROXY",
                "http_proxy",
                "https_proxy",
                "all_proxy",
            ]
            .map(String::from)
            .to_vec();
            let proc = Guarded::spawn(Spawn {
                program: bin.as_os_str(),
                args,
                env: vec![
                    (
                        "KUBECONFIG".into(),
                        cluster.kubeconfig.to_string_lossy().into_owned(),
                    ),
                    ("NO_COLOR".into(), "1".into()),
                ],
                env_remove,
                log_dir: dir.path(),
                log_name: "operator",
                cleanup_dir: None,
            })
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut op = Operator {
                proc,
                identity: opts.identity.clone(),
                config_addr,
                probe_addr,
                _dir: dir,
            };
            match op.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return op,
                Err(e) if attempt < 3 && op.logs().contains("cannot listen") => {
                    eprintln!("operator could not bind its ports (attempt {attempt}): {e}");
                    op.kill();
                }
                Err(e) => panic!(
                    "statecar-operator {} did not become ready: {e}\n{}",
                    op.identity,
                    op.logs()
                ),
            }
        }
    }

    /// Waits until `/readyz` answers 200; Err if it exits first or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://{}/readyz", self.probe_addr);
        let client = http();
        loop {
            if let Some(st) = self.proc.try_status() {
                return Err(format!("it exited with {st}"));
            }
            let last = match client.get(&url).send().await {
                Ok(r) if r.status().as_u16() == 200 => return Ok(()),
                Ok(r) => format!("/readyz answered {}", r.status()),
                Err(e) => format!("/readyz: {e}"),
            };
            if Instant::now() > deadline {
                return Err(format!("not ready after {timeout:?} ({last})"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Base URL of the config (delivery) endpoint.
    pub fn config_url(&self) -> String {
        format!("http://{}", self.config_addr)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.probe_addr);
        let r = http()
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", self.logs()));
        assert_eq!(r.status().as_u16(), 200, "GET {url}");
        r.text().await.expect("metrics body")
    }

    /// One sample of `/metrics` (a metric without labels).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not in /metrics:\n{text}"))
    }

    pub async fn is_leader(&self) -> bool {
        self.metric("statecar_operator_leader").await == 1.0
    }

    pub async fn reconciles(&self) -> f64 {
        self.metric("statecar_operator_reconciles_total").await
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    pub fn sigterm(&mut self) {
        self.proc.signal(libc::SIGTERM);
    }

    /// Waits for the process to exit; its exit code (128 + signal when killed by one).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.proc
            .wait_timeout(timeout)
            .map(crate::process::exit_code)
    }

    /// SIGKILL, at once.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    pub fn logs(&self) -> String {
        self.proc.logs()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // A failing test shows what every operator it started logged.
        if std::thread::panicking() {
            eprintln!(
                "==== statecar-operator {} (pid {}) ====\n{}",
                self.identity,
                self.proc.pid(),
                self.logs()
            );
        }
    }
}

/// A statecar in Kubernetes mode that takes its components from `operator`, as the pod `pod`
/// with the service-account token in `token_file`.
pub fn kubernetes_sidecar(
    operator: &Operator,
    namespace: &str,
    pod: &str,
    app_id: &str,
    token_file: &std::path::Path,
) -> SidecarBuilder {
    kubernetes_sidecar_at(
        &operator.config_addr.to_string(),
        namespace,
        pod,
        app_id,
        token_file,
    )
}

/// The same, against the control-plane address `address` (e.g. `https://127.0.0.1:6500`).
pub fn kubernetes_sidecar_at(
    address: &str,
    namespace: &str,
    pod: &str,
    app_id: &str,
    token_file: &std::path::Path,
) -> SidecarBuilder {
    Sidecar::builder()
        .app_id(app_id)
        .no_resources_path()
        .arg("--mode")
        .arg("kubernetes")
        .arg("--control-plane-address")
        .arg(address)
        .arg("--namespace")
        .arg(namespace)
        .arg("--pod-name")
        .arg(pod)
        .arg("--token-file")
        .arg(&token_file.display().to_string())
}
