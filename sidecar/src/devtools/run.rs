//! `statecar run`: an app with its sidecar, as `dapr run`. The sidecar is this binary again
//! with the flat daprd-style flags; the app starts once the sidecar's `/v1.0/healthz` answers
//! 204. Both outputs are shown line by line with `== APP == ` and `== SIDECAR == ` prefixes.
//!
//! Both children run in process groups of their own, so a Ctrl-C in the terminal reaches only
//! `statecar run`, which passes it on to the app once; the sidecar is stopped after the app
//! exits. The kernel sends either child SIGTERM if `statecar run` itself dies. Everything runs
//! on one thread (a current-thread runtime), which that kernel feature relies on.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind};
use tokio::task::JoinHandle;

use super::process::{self, SIGINT, SIGKILL, SIGTERM};
use super::{DevError, Layout, tilde};

/// How long the sidecar may take to answer 204 on /v1.0/healthz.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the sidecar may take to exit after SIGTERM (its own grace period is 5 s).
const SIDECAR_STOP_TIMEOUT: Duration = Duration::from_secs(8);
/// How long the app may take to exit after SIGTERM when the sidecar died, before SIGKILL.
const APP_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the rest of a child's output once it has exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

const APP_PREFIX: &str = "== APP == ";
const SIDECAR_PREFIX: &str = "== SIDECAR == ";

/// Run an app with its own sidecar: `statecar run --app-id ID -- CMD ARGS...`, as `dapr run`.
///
/// The sidecar (this binary with --app-id, --dapr-http-port, --resources-path, ...) starts
/// first; once `GET /v1.0/healthz` on 127.0.0.1:--dapr-http-port answers 204, the app starts
/// with DAPR_HTTP_PORT, DAPR_GRPC_PORT, APP_ID and (with --app-port) APP_PORT in its environment, and
/// PYTHONUNBUFFERED=1 unless set, so that Python apps show their output as it happens. Every
/// line either prints is shown with an `== APP == ` or `== SIDECAR == ` prefix (stdout on
/// stdout, stderr on stderr).
///
/// SIGINT (Ctrl-C) and SIGTERM are passed on to the app; a second one kills it. When the app
/// exits, the sidecar is stopped and statecar run exits with the app's exit code (128 + the
/// signal number when a signal ended it). When the sidecar dies first, statecar run says why,
/// stops the app (SIGTERM, SIGKILL after 5 s) and exits with 1.
///
/// Without --resources-path the sidecar uses ~/.statecar/components (see `statecar init`)
/// when it exists, else a built-in in-memory store named `statestore`. Several replicas of one
/// app run as several `statecar run --app-id ID` with different --dapr-http-port values.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  statecar run --app-id myapp -- python3 app.py\n  \
                        statecar run --app-id counter --dapr-http-port 3501 -- python3 \
                        examples/counter/counter.py 50"
)]
pub struct RunArgs {
    /// The app's id: APP_ID in its environment, and the prefix of its state keys (replicas of
    /// one app share it).
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub app_id: String,

    /// The port the app listens on, if any (APP_PORT in its environment, reported by
    /// /v1.0/metadata).
    #[arg(long, value_name = "PORT")]
    pub app_port: Option<u16>,

    /// Port of the sidecar's HTTP API on 127.0.0.1 (DAPR_HTTP_PORT in the app's environment).
    #[arg(long, value_name = "PORT", default_value_t = 3500)]
    pub dapr_http_port: u16,

    /// Port of the sidecar's gRPC API on 127.0.0.1 (DAPR_GRPC_PORT in the app's environment,
    /// where the Dapr SDKs look for it). Default: a free port, so that several apps can run
    /// side by side.
    #[arg(long, value_name = "PORT")]
    pub dapr_grpc_port: Option<u16>,

    /// A directory of Dapr component YAML files (repeatable). Default: ~/.statecar/components
    /// if it exists, else the built-in in-memory store.
    #[arg(
        long = "resources-path",
        visible_alias = "components-path",
        value_name = "DIR"
    )]
    pub resources_path: Vec<PathBuf>,

    /// The sidecar's log level: debug, info, warn or error.
    #[arg(long, default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
    pub log_level: String,

    /// The app's command line, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `statecar run`: returns the exit code to exit with.
pub async fn run(args: &RunArgs) -> Result<u8, DevError> {
    let mut args = args.clone();
    if args.dapr_grpc_port.is_none() {
        args.dapr_grpc_port = Some(free_port()?);
    }
    let args = &args;
    let port = args.dapr_http_port;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
        return Err(DevError::PortInUse(port));
    }
    // Before any child exists, so that no signal finds the default action in place.
    let mut signals = Signals::new()?;

    note(&format!(
        "starting the sidecar for app id {:?} on http://127.0.0.1:{port} ({})",
        args.app_id,
        components_note(args)
    ));
    let (mut sidecar, sidecar_pumps) = start_sidecar(args)?;
    let sidecar_pid = sidecar.id().map(|p| p as i32).unwrap_or_default();

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        tokio::select! {
            status = sidecar.wait() => {
                drain(sidecar_pumps).await;
                return Err(DevError::SidecarStart(format!(
                    "it ended ({}); its output is above",
                    status_text(status)
                )));
            }
            sig = signals.recv() => {
                let name = process::signal_name(sig);
                note(&format!("{name} received before the app started: stopping the sidecar"));
                stop_sidecar(&mut sidecar, sidecar_pid).await;
                drain(sidecar_pumps).await;
                return Ok(128 + sig as u8);
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if healthy(addr, &args.app_id).await {
            break;
        }
        if Instant::now() >= deadline {
            stop_sidecar(&mut sidecar, sidecar_pid).await;
            drain(sidecar_pumps).await;
            return Err(DevError::SidecarStart(format!(
                "GET http://127.0.0.1:{port}/v1.0/healthz did not answer 204 within {} s; its \
                 output is above",
                STARTUP_TIMEOUT.as_secs()
            )));
        }
    }

    let shown = args
        .command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    note(&format!(
        "the sidecar is ready (pid {sidecar_pid}); starting the app: {shown}"
    ));
    let (mut app, app_pumps) = match start_app(args) {
        Ok(started) => started,
        Err(e) => {
            stop_sidecar(&mut sidecar, sidecar_pid).await;
            drain(sidecar_pumps).await;
            return Err(e);
        }
    };
    let app_group = -(app.id().map(|p| p as i32).unwrap_or_default());

    let mut signals_seen = 0;
    let ended = loop {
        tokio::select! {
            status = app.wait() => break Ended::App(status),
            status = sidecar.wait() => break Ended::Sidecar(status),
            sig = signals.recv() => {
                signals_seen += 1;
                let name = process::signal_name(sig);
                if signals_seen == 1 {
                    note(&format!("{name} received: passing it on to the app"));
                    process::signal(app_group, sig);
                } else {
                    note(&format!("{name} received again: killing the app"));
                    process::signal(app_group, SIGKILL);
                }
            }
        }
    };

    match ended {
        Ended::App(status) => {
            drain(app_pumps).await;
            let code = match &status {
                Ok(st) => process::exit_code(*st),
                Err(_) => 1,
            };
            note(&format!(
                "the app ended ({}); stopping the sidecar",
                status_text(status)
            ));
            stop_sidecar(&mut sidecar, sidecar_pid).await;
            drain(sidecar_pumps).await;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Ended::Sidecar(status) => {
            drain(sidecar_pumps).await;
            note(&format!(
                "the sidecar ended unexpectedly ({}); stopping the app",
                status_text(status)
            ));
            process::signal(app_group, SIGTERM);
            let status = match tokio::time::timeout(APP_STOP_TIMEOUT, app.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    note(&format!(
                        "the app is still running {} s after SIGTERM: killing it",
                        APP_STOP_TIMEOUT.as_secs()
                    ));
                    process::signal(app_group, SIGKILL);
                    app.wait().await
                }
            };
            drain(app_pumps).await;
            note(&format!("the app ended ({})", status_text(status)));
            Ok(1)
        }
    }
}

enum Ended {
    App(std::io::Result<ExitStatus>),
    Sidecar(std::io::Result<ExitStatus>),
}

/// A line of statecar run's own on stderr.
fn note(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "statecar run: {line}");
}

fn status_text(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(st) => process::describe(st),
        Err(e) => format!("status unknown: {e}"),
    }
}

/// Where the sidecar's components come from, for the startup line.
fn components_note(args: &RunArgs) -> String {
    if !args.resources_path.is_empty() {
        let dirs: Vec<String> = args.resources_path.iter().map(|d| tilde(d)).collect();
        return format!("components from {}", dirs.join(", "));
    }
    match Layout::from_env() {
        Ok(layout) if layout.components_dir().is_dir() => {
            format!("components from {}", tilde(&layout.components_dir()))
        }
        _ => "no ~/.statecar/components: the built-in in-memory store".to_string(),
    }
}

type Pumps = [JoinHandle<()>; 2];

/// A loopback port free right now (the sidecar binds it a moment later).
fn free_port() -> Result<u16, DevError> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(DevError::NoFreePort)
}

fn start_sidecar(args: &RunArgs) -> Result<(Child, Pumps), DevError> {
    let exe = std::env::current_exe().map_err(|source| DevError::Spawn {
        program: "statecar (the current executable)".into(),
        source,
    })?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("--app-id")
        .arg(&args.app_id)
        .arg("--dapr-http-port")
        .arg(args.dapr_http_port.to_string())
        .arg("--dapr-http-address")
        .arg("127.0.0.1")
        .arg("--log-level")
        .arg(&args.log_level);
    if let Some(p) = args.app_port {
        cmd.arg("--app-port").arg(p.to_string());
    }
    if let Some(p) = args.dapr_grpc_port {
        cmd.arg("--dapr-grpc-port").arg(p.to_string());
    }
    for dir in &args.resources_path {
        cmd.arg("--resources-path").arg(dir);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    process::own_group_dying_with_parent(&mut cmd, SIGTERM);
    spawn(cmd, SIDECAR_PREFIX, exe.display().to_string())
}

fn start_app(args: &RunArgs) -> Result<(Child, Pumps), DevError> {
    let program = &args.command[0];
    let mut cmd = std::process::Command::new(program);
    cmd.args(&args.command[1..])
        .env("DAPR_HTTP_PORT", args.dapr_http_port.to_string())
        .env("APP_ID", &args.app_id);
    if let Some(p) = args.dapr_grpc_port {
        cmd.env("DAPR_GRPC_PORT", p.to_string());
    }
    if let Some(p) = args.app_port {
        cmd.env("APP_PORT", p.to_string());
    }
    if std::env::var_os("PYTHONUNBUFFERED").is_none() {
        cmd.env("PYTHONUNBUFFERED", "1");
    }
    // A process outside the terminal's foreground group that reads the terminal is stopped
    // (SIGTTIN), so the app reads the terminal never; a pipe or a file it gets as it is.
    if std::io::stdin().is_terminal() {
        cmd.stdin(Stdio::null());
    } else {
        cmd.stdin(Stdio::inherit());
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    process::own_group_dying_with_parent(&mut cmd, SIGTERM);
    spawn(cmd, APP_PREFIX, program.to_string_lossy().into_owned())
}

fn spawn(
    cmd: std::process::Command,
    prefix: &'static str,
    program: String,
) -> Result<(Child, Pumps), DevError> {
    let mut child = Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DevError::Spawn { program, source })?;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        unreachable!("stdout and stderr are piped");
    };
    Ok((child, [pump(out, prefix, false), pump(err, prefix, true)]))
}

/// Copies `from` line by line to our stdout (or stderr), each line after `prefix`.
fn pump<R: AsyncRead + Unpin + Send + 'static>(
    from: R,
    prefix: &'static str,
    to_stderr: bool,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut from = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            line.extend_from_slice(prefix.as_bytes());
            match from.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            // One write per line, under the lock: lines of the two children never interleave.
            let _ = if to_stderr {
                std::io::stderr().lock().write_all(&line)
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(&line).and_then(|()| out.flush())
            };
        }
    })
}

/// Waits for the rest of a child's output (a grandchild holding the pipe is not waited for).
async fn drain(pumps: Pumps) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, futures_util::future::join_all(pumps)).await;
}

/// SIGTERM, then SIGKILL if it has not exited in time.
async fn stop_sidecar(sidecar: &mut Child, pid: i32) {
    if let Ok(Some(_)) = sidecar.try_wait() {
        return;
    }
    process::signal(pid, SIGTERM);
    if tokio::time::timeout(SIDECAR_STOP_TIMEOUT, sidecar.wait())
        .await
        .is_err()
    {
        note("the sidecar did not exit after SIGTERM: killing it");
        let _ = sidecar.kill().await;
    }
}

/// Whether `GET /v1.0/healthz?appid=ID` answers 204 (the app id, so that another sidecar that
/// won the port is not taken for ours).
async fn healthy(addr: SocketAddr, app_id: &str) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET /v1.0/healthz?appid={} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
            percent_encode(app_id)
        );
        s.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.1 204"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Some(true))
    )
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// SIGINT and SIGTERM, caught from the start of `statecar run`.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> Result<Self, DevError> {
        let listen = |kind| {
            tokio::signal::unix::signal(kind).map_err(|source| DevError::Spawn {
                program: "a signal handler".into(),
                source,
            })
        };
        Ok(Signals {
            int: listen(SignalKind::interrupt())?,
            term: listen(SignalKind::terminate())?,
        })
    }

    /// The next signal's number.
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => SIGINT,
            _ = self.term.recv() => SIGTERM,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("run").chain(args.iter().copied())).map(|w| w.run)
    }

    #[test]
    fn the_app_command_follows_the_double_dash() {
        let a = parse(&["--app-id", "a", "--", "python3", "app.py", "--port", "1"]).expect("ok");
        assert_eq!(a.command, ["python3", "app.py", "--port", "1"]);
        assert_eq!((a.dapr_http_port, a.app_port), (3500, None));
        assert!(parse(&["--app-id", "a"]).is_err(), "a command is required");
        assert!(
            parse(&["--app-id", "", "--", "x"]).is_err(),
            "the app id is required"
        );
        assert!(parse(&["--", "x"]).is_err(), "the app id is required");
    }

    #[test]
    fn app_ids_are_escaped_in_the_health_probe() {
        assert_eq!(percent_encode("my app/1"), "my%20app%2F1");
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
    }
}
