//! `statecar`: the sidecar binary. CLI and wiring only.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use clap::{Parser, ValueEnum};
use statecar::api::{self, ApiConfig, AppState, ListenAddresses};
use statecar::components::loader::{ComponentConfig, LoadContext, Loaded};
use statecar::components::{Registry, Stores, init_all, load_dirs};
use statecar::delivery::{self, Endpoint, StreamConfig};
use statecar::devtools::{self, Layout};
use statecar::grpc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Dapr's state management API (`/v1.0/state`) as a small, fast sidecar.
///
/// Apps talk to it on localhost exactly as they would to daprd. State stores come from Dapr
/// component files (`state.redis`, `state.in-memory`). With no components configured, an
/// in-memory store named `statestore` is served.
///
/// In Kubernetes mode (`--mode kubernetes`, set by the statecar injector) the components come
/// from the statecar operator instead: the sidecar holds a stream open to
/// `--control-plane-address`, authenticated with the pod's service-account token, and applies
/// every new set of components without a restart (in-flight requests finish on the old
/// stores). The API is served at once, but `/v1.0/healthz` answers 500 ERR_HEALTH_NOT_READY
/// until the first set is in effect. With `--config-cache`, the last set is kept on disk so
/// that a restart while the operator is unreachable still comes up (after
/// `--control-plane-timeout`).
///
/// On a workstation, `statecar init` writes a default state store to ~/.statecar/components
/// (Redis when one answers, or a private redis-server with --start-redis, else in memory), and
/// `statecar run --app-id ID -- CMD ARGS...` runs an app with its own sidecar, as `dapr init`
/// and `dapr run` do.
#[derive(Debug, Parser)]
#[command(
    name = "statecar",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Where components come from: `standalone` (component files) or `kubernetes` (the statecar
    /// operator).
    #[arg(long, value_enum, default_value_t = Mode::Standalone)]
    mode: Mode,

    /// The id of the app this sidecar serves; state keys are prefixed with it by default.
    /// Required in Kubernetes mode.
    #[arg(long, default_value = "")]
    app_id: String,

    /// A directory of Dapr component YAML files (repeatable). Default: ~/.statecar/components
    /// if it exists, else the built-in in-memory store. Standalone mode only.
    #[arg(
        long = "resources-path",
        visible_alias = "components-path",
        value_name = "DIR"
    )]
    resources_path: Vec<PathBuf>,

    /// Port of the HTTP API.
    #[arg(long, default_value_t = 3500, env = "DAPR_HTTP_PORT")]
    dapr_http_port: u16,

    /// Port of the gRPC API (`dapr.proto.runtime.v1.Dapr`, used by the Dapr SDKs), on the same
    /// addresses as the HTTP API. Default: 50001 in Kubernetes mode; in standalone mode gRPC
    /// is off unless this is given.
    #[arg(long, value_name = "PORT", env = "DAPR_GRPC_PORT")]
    dapr_grpc_port: Option<u16>,

    /// The one address the HTTP API listens on. Default: 127.0.0.1. To listen on several, use
    /// --dapr-listen-addresses instead (giving both is an error).
    #[arg(long, value_name = "IP", conflicts_with = "dapr_listen_addresses")]
    dapr_http_address: Option<IpAddr>,

    /// Addresses the HTTP API listens on, comma-separated, e.g. `[::1],127.0.0.1` (Dapr's
    /// default) or `0.0.0.0` to serve other pods too; IPv6 addresses may be written in
    /// brackets. Every address is bound. One this host does not have (such as [::1] where IPv6
    /// is turned off) is skipped with a warning as long as another is bound. Default:
    /// 127.0.0.1.
    #[arg(long, value_name = "IP,...", value_parser = api::parse_listen_addresses)]
    dapr_listen_addresses: Option<ListenAddresses>,

    /// Port of the public health endpoints, `/v1.0/healthz` and `/v1.0/healthz/outbound`, for
    /// the kubelet's probes (3501 in injected pods). Unlike the API, it listens on all
    /// interfaces (see --dapr-public-listen-address) so that the kubelet can reach it, and it
    /// serves nothing else: no state, no metadata, and no token is asked for. Off unless given.
    #[arg(long, value_name = "PORT")]
    dapr_public_port: Option<u16>,

    /// Addresses the public port listens on, comma-separated like --dapr-listen-addresses.
    #[arg(
        long,
        value_name = "IP,...",
        default_value = "0.0.0.0",
        value_parser = api::parse_listen_addresses
    )]
    dapr_public_listen_address: ListenAddresses,

    /// On SIGTERM, how many seconds to wait for in-flight requests to finish before exiting
    /// anyway. New connections are refused at once. A negative value (Dapr's -1) means the
    /// default of 5.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = -1,
        allow_negative_numbers = true
    )]
    dapr_graceful_shutdown_seconds: i64,

    /// A Dapr Configuration (a resource name in Kubernetes mode, a file in standalone mode).
    /// Accepted so that daprd command lines and injected pods work unchanged; statecar has no
    /// Configuration support (tracing, middleware, access control), so it is ignored, with
    /// one log line at startup.
    #[arg(long, value_name = "NAME")]
    config: Option<String>,

    /// The app's port (reported by /v1.0/metadata).
    #[arg(long, value_name = "PORT")]
    app_port: Option<u16>,

    /// Log level: debug, info, warn or error.
    #[arg(long, default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
    log_level: String,

    /// Log as JSON lines.
    #[arg(long)]
    log_as_json: bool,

    /// Largest accepted request body, e.g. 4Mi, 16Mi, 500Ki or a number of bytes.
    #[arg(long, default_value = "4Mi", value_parser = parse_size)]
    max_body_size: usize,

    /// Older form of --max-body-size, in MB.
    #[arg(long, value_name = "MB", hide = true)]
    dapr_http_max_request_size: Option<usize>,

    /// How long a connection may keep the API waiting for a request head (request line and
    /// headers), e.g. 10s or 500ms: a new connection that sends nothing, a head trickled in
    /// byte by byte, and a keep-alive connection idle between requests are closed after it.
    /// daprd's ReadHeaderTimeout is 10s.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_duration
    )]
    http_header_timeout: Duration,

    /// Threads that serve the API and drive the store connections. 1 (the default): one
    /// thread runs everything, which costs the least CPU per request (no hand-offs or wake-ups
    /// between threads, and concurrent requests share one write to Redis) and suits a sidecar
    /// that gets a core or less; a slow request (a large bulk body) then delays the others.
    /// N > 1: a multi-threaded runtime with N workers, for a sidecar with several cores to
    /// itself; 0: one worker per core.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        env = "STATECAR_WORKER_THREADS"
    )]
    worker_threads: usize,

    /// The statecar operator: HOST:PORT (plain HTTP) or an http:// or https:// URL.
    /// Required in Kubernetes mode.
    #[arg(long, value_name = "HOST:PORT|URL", help_heading = "Kubernetes mode")]
    control_plane_address: Option<String>,

    /// The pod's namespace. Required in Kubernetes mode; in standalone mode, components of
    /// other namespaces are skipped and `keyPrefix: namespace` uses it.
    #[arg(
        long,
        env = "NAMESPACE",
        value_name = "NS",
        help_heading = "Kubernetes mode"
    )]
    namespace: Option<String>,

    /// The pod's name (for the operator's checks and `{podName}` in metadata values).
    /// Required in Kubernetes mode.
    #[arg(
        long,
        env = "POD_NAME",
        value_name = "NAME",
        help_heading = "Kubernetes mode"
    )]
    pod_name: Option<String>,

    /// The service-account token presented to the operator; re-read on every connect, as
    /// tokens rotate.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token",
        help_heading = "Kubernetes mode"
    )]
    token_file: PathBuf,

    /// PEM CA bundle to verify an https:// operator with (default: the system roots).
    #[arg(long, value_name = "FILE", help_heading = "Kubernetes mode")]
    control_plane_ca: Option<PathBuf>,

    /// The same as --control-plane-ca, given as PEM text; the injector sets it to the operator's
    /// CA bundle.
    #[arg(
        long,
        value_name = "PEM",
        env = "STATECAR_TRUST_ANCHORS",
        hide_env_values = true,
        help_heading = "Kubernetes mode"
    )]
    control_plane_trust_anchors: Option<String>,

    /// Keep the last configuration from the operator in FILE (written atomically, mode 0600:
    /// it holds resolved secrets). When the operator cannot be reached within
    /// --control-plane-timeout at startup, the sidecar starts from it. Default: no cache.
    #[arg(long, value_name = "FILE", help_heading = "Kubernetes mode")]
    config_cache: Option<PathBuf>,

    /// How long to wait at startup for the operator before falling back to --config-cache,
    /// e.g. 10s, 1500ms, 1m. Without a cache the sidecar keeps waiting (not ready).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_duration,
        help_heading = "Kubernetes mode"
    )]
    control_plane_timeout: Duration,

    #[command(subcommand)]
    command: Option<Command>,
}

/// Developer commands; without one, statecar runs as the sidecar. Their help text is on their
/// argument types.
#[derive(Debug, clap::Subcommand)]
enum Command {
    Init(devtools::init::InitArgs),
    Run(devtools::run::RunArgs),
    Uninstall(devtools::init::UninstallArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Components from --resources-path.
    Standalone,
    /// Components from the statecar operator (--control-plane-address).
    Kubernetes,
}

/// The default of --dapr-graceful-shutdown-seconds.
const DEFAULT_GRACEFUL_SHUTDOWN: Duration = Duration::from_secs(5);
/// Dapr's gRPC port, served by default in Kubernetes mode (the injector advertises it).
const DEFAULT_GRPC_PORT: u16 = 50001;

/// Go duration syntax (`10s`, `1m30s`, `500ms`); a plain number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    statecar_crds::metadata::parse_go_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration such as 10s, 1500ms or 1m"))
}

impl Cli {
    /// The gRPC API's port, if it is served.
    fn grpc_port(&self) -> Option<u16> {
        match self.mode {
            Mode::Kubernetes => Some(self.dapr_grpc_port.unwrap_or(DEFAULT_GRPC_PORT)),
            Mode::Standalone => self.dapr_grpc_port,
        }
    }

    /// Where the API listens.
    fn api_addresses(&self) -> Vec<IpAddr> {
        match (&self.dapr_listen_addresses, self.dapr_http_address) {
            (Some(list), _) => list.0.clone(),
            (None, Some(ip)) => vec![ip],
            (None, None) => vec![IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)],
        }
    }

    fn graceful_shutdown(&self) -> Duration {
        u64::try_from(self.dapr_graceful_shutdown_seconds)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_GRACEFUL_SHUTDOWN)
    }

    fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref().filter(|n| !n.is_empty())
    }

    fn pod_name(&self) -> Option<&str> {
        self.pod_name.as_deref().filter(|n| !n.is_empty())
    }

    /// Checks the flags that depend on `--mode`; in Kubernetes mode returns its settings.
    fn kubernetes_settings(&self) -> Result<Option<delivery::Settings>> {
        if self.mode == Mode::Standalone {
            for (given, flag) in [
                (
                    self.control_plane_address.is_some(),
                    "--control-plane-address",
                ),
                (self.control_plane_ca.is_some(), "--control-plane-ca"),
                (self.config_cache.is_some(), "--config-cache"),
            ] {
                if given {
                    bail!("{flag} is only used with --mode kubernetes");
                }
            }
            return Ok(None);
        }
        if !self.resources_path.is_empty() {
            bail!(
                "--resources-path cannot be used with --mode kubernetes: components come from \
                 the operator (--control-plane-address)"
            );
        }
        if self.app_id.is_empty() {
            bail!("--app-id is required with --mode kubernetes");
        }
        let Some(address) = &self.control_plane_address else {
            bail!("--control-plane-address is required with --mode kubernetes");
        };
        let endpoint = Endpoint::parse(address)
            .map_err(|e| anyhow::anyhow!("--control-plane-address: {e}"))?;
        let Some(namespace) = self.namespace() else {
            bail!("--namespace (or NAMESPACE) is required with --mode kubernetes");
        };
        let Some(pod_name) = self.pod_name() else {
            bail!("--pod-name (or POD_NAME) is required with --mode kubernetes");
        };
        if self.control_plane_ca.is_some() && !endpoint.tls {
            tracing::warn!("--control-plane-ca is ignored: the operator address is not https://");
        }
        Ok(Some(delivery::Settings {
            stream: StreamConfig {
                endpoint,
                namespace: namespace.to_string(),
                app_id: self.app_id.clone(),
                pod_name: pod_name.to_string(),
                token_file: self.token_file.clone(),
                ca_file: self.control_plane_ca.clone(),
                ca_pem: self
                    .control_plane_trust_anchors
                    .clone()
                    .filter(|p| !p.trim().is_empty()),
                connect_timeout: self.control_plane_timeout.max(Duration::from_secs(1)),
            },
            cache_file: self.config_cache.clone(),
            startup_timeout: self.control_plane_timeout,
        }))
    }
}

/// A size like Kubernetes quantities: `4Mi` (binary), `4M` (decimal) or plain bytes.
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 4Mi"))?;
    let factor: usize = match unit.trim_end_matches('B') {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?} has an unknown unit: use Ki, Mi, Gi, K, M or G"
            ));
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn init_logging(cli: &Cli) {
    let level: tracing::Level = cli.log_level.parse().unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_as_json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Some(command) = cli.command.take() {
        return developer_command(command);
    }
    init_logging(&cli);
    // Redis TLS uses rustls; pick its crypto provider once for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match runtime(cli.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Requests cut off by the graceful-shutdown deadline are dropped here, not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The sidecar's async runtime: one thread (the default), or `threads` workers (0: one per
/// core), see --worker-threads.
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build()
}

/// `statecar init|run|uninstall`: plain output for a terminal, no tracing setup.
fn developer_command(command: Command) -> ExitCode {
    let (name, result) = match command {
        Command::Init(args) => ("init", init(&args)),
        Command::Uninstall(args) => ("uninstall", uninstall(&args)),
        Command::Run(args) => ("run", run_app(&args)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("statecar {name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init(args: &devtools::init::InitArgs) -> Result<u8> {
    let layout = Layout::from_env()?;
    devtools::init::init(args, &layout, &mut std::io::stdout().lock())?;
    Ok(0)
}

fn uninstall(args: &devtools::init::UninstallArgs) -> Result<u8> {
    let layout = Layout::from_env()?;
    devtools::init::uninstall(args, &layout, &mut std::io::stdout().lock())?;
    Ok(0)
}

/// One thread only: the children are told to stop when the thread that started them dies.
fn run_app(args: &devtools::run::RunArgs) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(devtools::run::run(args))?;
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(code)
}

fn load_components(cli: &Cli, namespace: Option<&str>) -> Result<Vec<ComponentConfig>> {
    let mut dirs = cli.resources_path.clone();
    if dirs.is_empty()
        && let Some(home) = std::env::var_os("HOME")
    {
        let default = PathBuf::from(home).join(".statecar").join("components");
        if default.is_dir() {
            dirs.push(default);
        }
    }
    if dirs.is_empty() {
        tracing::info!(
            "no --resources-path given and no ~/.statecar/components: serving the built-in \
             in-memory state store \"statestore\" (data is lost on exit)"
        );
        return Ok(vec![ComponentConfig::embedded_default()]);
    }
    let env = |name: &str| std::env::var(name).ok();
    let ctx = LoadContext {
        app_id: &cli.app_id,
        namespace,
        pod_name: cli.pod_name(),
        env: &env,
    };
    let Loaded {
        components,
        skipped,
        notes,
    } = load_dirs(&dirs, &ctx).context("loading components")?;
    for note in notes {
        tracing::info!("{note}");
    }
    for e in skipped {
        tracing::warn!("{e}; skipped because ignoreErrors is true");
    }
    if components.is_empty() {
        tracing::warn!(dirs = ?dirs, "no state store components found; state requests will fail with ERR_STATE_STORE_NOT_CONFIGURED");
    }
    Ok(components)
}

async fn run(cli: Cli) -> Result<()> {
    let started = Instant::now();
    let kubernetes = cli.kubernetes_settings()?;
    let namespace = cli.namespace();
    let stores = match &kubernetes {
        // The operator's components arrive once the API is up.
        Some(_) => None,
        None => {
            let configs = load_components(&cli, namespace)?;
            let entries = init_all(&configs, &cli.app_id, namespace)
                .await
                .context("starting components")?;
            Some(Stores::new(entries))
        }
    };
    let store_count = stores.as_ref().map(|s| s.by_name.len());
    let registry = Arc::new(Registry::new(stores.unwrap_or_default()));
    let state = Arc::new(AppState::new(registry, cli.app_id.clone(), cli.app_port));
    state.set_ready(kubernetes.is_none());

    let max_body_size = match cli.dapr_http_max_request_size {
        Some(mb) => mb.saturating_mul(1 << 20),
        None => cli.max_body_size,
    };
    let api_token = std::env::var("DAPR_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let config = ApiConfig {
        max_body_size,
        api_token,
    };
    let (stop_tx, stop_rx) = watch::channel(false);

    if let Some(name) = &cli.config {
        tracing::info!(
            config = %name,
            "--config is ignored: statecar has no support for Dapr Configuration resources"
        );
    }
    let api_listeners =
        api::bind_all(&cli.api_addresses(), cli.dapr_http_port, "--dapr-http-port").await?;
    let api_addrs: Vec<SocketAddr> = api_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let api_router = api::router(state.clone(), &config);
    let grpc_listeners = match cli.grpc_port() {
        Some(port) if port == cli.dapr_http_port || Some(port) == cli.dapr_public_port => {
            bail!("--dapr-grpc-port {port} is already taken by another statecar port")
        }
        Some(port) => api::bind_all(&cli.api_addresses(), port, "--dapr-grpc-port").await?,
        None => Vec::new(),
    };
    let grpc_addrs: Vec<SocketAddr> = grpc_listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    let mut servers: Vec<_> = api_listeners
        .into_iter()
        .map(|l| {
            tokio::spawn(serve(
                l,
                api_router.clone(),
                stop_rx.clone(),
                cli.http_header_timeout,
            ))
        })
        .collect();
    if let Some(port) = cli.dapr_public_port {
        if port == cli.dapr_http_port {
            bail!("--dapr-public-port must differ from --dapr-http-port");
        }
        let public = api::public_router(state.clone());
        for listener in api::bind_all(
            &cli.dapr_public_listen_address.0,
            port,
            "--dapr-public-port",
        )
        .await?
        {
            servers.push(tokio::spawn(serve(
                listener,
                public.clone(),
                stop_rx.clone(),
                cli.http_header_timeout,
            )));
        }
    }
    if !grpc_listeners.is_empty() {
        let grpc_api = Arc::new(grpc::GrpcApi::new(
            state.clone(),
            config.api_token.as_deref(),
            max_body_size,
        ));
        for listener in grpc_listeners {
            let service = grpc::DaprService::new(grpc_api.clone());
            let stop = stop_rx.clone();
            servers.push(tokio::spawn(async move {
                grpc::serve(listener, service, stop)
                    .await
                    .context("serving the gRPC API")
            }));
        }
    }
    let delivery = match kubernetes {
        Some(settings) => {
            tracing::info!(
                app_id = %cli.app_id,
                addresses = ?api_addrs,
                grpc = ?grpc_addrs,
                auth = config.api_token.is_some(),
                "statecar is serving; not ready until the operator's components are applied"
            );
            Some(tokio::spawn(delivery::run(settings, state.clone())))
        }
        None => {
            tracing::info!(
                app_id = %cli.app_id,
                addresses = ?api_addrs,
                grpc = ?grpc_addrs,
                stores = store_count.unwrap_or_default(),
                auth = config.api_token.is_some(),
                startup_ms = started.elapsed().as_millis() as u64,
                "statecar is ready"
            );
            None
        }
    };

    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    if let Some(task) = delivery {
        task.abort();
    }
    let _ = stop_tx.send(true);
    let grace = cli.graceful_shutdown();
    if grace.is_zero() {
        tracing::info!("stopped without waiting (--dapr-graceful-shutdown-seconds 0)");
        return Ok(());
    }
    match tokio::time::timeout(grace, futures_util::future::join_all(servers)).await {
        Ok(results) => {
            for result in results {
                result.context("server task")??;
            }
            tracing::info!("stopped");
        }
        Err(_) => tracing::warn!(
            "stopped with requests still in flight: they did not finish within {}s \
             (--dapr-graceful-shutdown-seconds)",
            grace.as_secs()
        ),
    }
    Ok(())
}

async fn serve(
    listener: TcpListener,
    app: api::Gate,
    stop: watch::Receiver<bool>,
    header_timeout: Duration,
) -> Result<()> {
    api::server::serve(listener, app, stop, header_timeout).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4Mi"), Ok(4 << 20));
        assert_eq!(parse_size("4MB"), Ok(4_000_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("16Ki"), Ok(16 << 10));
        assert!(parse_size("4Xi").is_err());
        assert!(parse_size("lots").is_err());
    }

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("statecar").chain(args.iter().copied()))
    }

    #[test]
    fn api_addresses() {
        let parsed = cli(&[]).expect("no flags");
        assert_eq!(
            parsed.api_addresses(),
            ["127.0.0.1".parse::<IpAddr>().expect("ip")]
        );
        let parsed = cli(&["--dapr-http-address", "0.0.0.0"]).expect("one address");
        assert_eq!(
            parsed.api_addresses(),
            ["0.0.0.0".parse::<IpAddr>().expect("ip")]
        );
        let parsed = cli(&["--dapr-listen-addresses", "[::1],127.0.0.1"]).expect("a list");
        assert_eq!(parsed.api_addresses().len(), 2);
        let both = cli(&[
            "--dapr-http-address",
            "127.0.0.1",
            "--dapr-listen-addresses",
            "127.0.0.1",
        ]);
        assert!(both.is_err(), "giving both is an error");
        let parsed = cli(&[]).expect("no flags");
        assert_eq!(
            parsed.dapr_public_listen_address,
            ListenAddresses(vec!["0.0.0.0".parse().expect("ip")])
        );
    }

    #[test]
    fn graceful_shutdown_seconds() {
        let grace = |args: &[&str]| cli(args).expect("flags").graceful_shutdown();
        assert_eq!(grace(&[]), DEFAULT_GRACEFUL_SHUTDOWN);
        assert_eq!(
            grace(&["--dapr-graceful-shutdown-seconds", "-1"]),
            DEFAULT_GRACEFUL_SHUTDOWN
        );
        assert_eq!(
            grace(&["--dapr-graceful-shutdown-seconds", "0"]),
            Duration::ZERO
        );
        assert_eq!(
            grace(&["--dapr-graceful-shutdown-seconds=12"]),
            Duration::from_secs(12)
        );
        assert!(cli(&["--dapr-graceful-shutdown-seconds", "soon"]).is_err());
    }

    #[test]
    fn config_is_accepted() {
        let parsed = cli(&["--config", "appconfig"]).expect("--config");
        assert_eq!(parsed.config.as_deref(), Some("appconfig"));
    }

    #[test]
    fn subcommands_sit_next_to_the_flat_flags() {
        let flat = cli(&["--app-id", "x", "--resources-path", "d"]).expect("flat flags");
        assert!(flat.command.is_none());
        assert_eq!(flat.app_id, "x");
        let run = cli(&["run", "--app-id", "a", "--", "python3", "app.py"]).expect("run");
        assert!(matches!(run.command, Some(Command::Run(_))));
        assert!(matches!(
            cli(&["init", "--start-redis"]).expect("init").command,
            Some(Command::Init(_))
        ));
        assert!(matches!(
            cli(&["uninstall", "--all"]).expect("uninstall").command,
            Some(Command::Uninstall(_))
        ));
        assert!(
            cli(&["--app-id", "x", "run", "--app-id", "a", "--", "true"]).is_err(),
            "sidecar flags before a subcommand are refused, not ignored"
        );
        assert!(cli(&["init", "--stop", "--start-redis"]).is_err());
    }

    #[test]
    fn worker_threads() {
        assert_eq!(cli(&[]).expect("no flags").worker_threads, 1);
        let parsed = cli(&["--worker-threads", "0"]).expect("one per core");
        assert_eq!(parsed.worker_threads, 0);
        assert!(cli(&["--worker-threads", "-1"]).is_err());
        for threads in [0, 1, 2] {
            let rt = runtime(threads).expect("runtime");
            assert_eq!(rt.block_on(async { 6 * 7 }), 42);
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
