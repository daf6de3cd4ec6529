//! `statecar-operator`: CLI and wiring only.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context as _, Result};
use clap::Parser;
use statecar_operator::cache::Cache;
use statecar_operator::delivery::{self, Delivery};
use statecar_operator::leader::LeaderElection;
use statecar_operator::metrics::Metrics;
use statecar_operator::probes::{self, Probes};
use statecar_operator::reconcile::{self, Context};
use statecar_operator::webhook::settings::WebhookArgs;
use statecar_operator::webhook::{self, Webhook};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Reconciles Dapr Component resources (dapr.io/v1alpha1) for statecar: validates each one
/// (secrets included) into a Ready condition, and streams every connected statecar sidecar the
/// components of its namespace scoped to its app id, live. Serves the admission webhooks that
/// inject the sidecar into pods annotated dapr.io/enabled: "true" and reject invalid Components,
/// with a serving certificate it issues and rotates itself.
///
/// Runs in-cluster with its service account, or out of cluster with KUBECONFIG.
#[derive(Debug, Parser)]
#[command(name = "statecar-operator", version, about, long_about)]
struct Cli {
    /// Where sidecars connect for their config stream.
    #[arg(long, default_value = "0.0.0.0:6500", env = "STATECAR_CONFIG_LISTEN")]
    config_listen: SocketAddr,

    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, default_value = "0.0.0.0:8080", env = "STATECAR_PROBE_LISTEN")]
    probe_listen: SocketAddr,

    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, default_value = "statecar-operator")]
    lease_name: String,

    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Write status without electing a leader (for a single replica).
    #[arg(long)]
    disable_leader_election: bool,

    /// Log level: debug, info, warn or error.
    #[arg(long, default_value = "info", value_parser = ["debug", "info", "warn", "error"])]
    log_level: String,

    /// Log as JSON lines.
    #[arg(long)]
    log_as_json: bool,

    /// Apply the Component CRD at start so it matches this operator's version (needs get and
    /// patch on customresourcedefinitions named components.dapr.io). --manage-crd=false leaves
    /// the CRD alone.
    #[arg(
        long,
        env = "STATECAR_MANAGE_CRD",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    manage_crd: bool,

    #[command(flatten)]
    webhook: WebhookArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Check a running operator from inside the cluster, as `helm test` does: wait for its
    /// /readyz, then call the validating webhook through its Service over verified TLS. Exits
    /// non-zero with the reason when either fails.
    Check(statecar_operator::selfcheck::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Check(args)) = &cli.command {
        return check(args);
    }
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `statecar-operator check`: plain output for a `helm test` log, no tracing setup.
fn check(args: &statecar_operator::selfcheck::CheckArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(statecar_operator::selfcheck::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("check failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    // Before anything watches Components, so they are read with this version's schema.
    if cli.manage_crd {
        statecar_operator::crd::ensure(client.clone()).await;
    } else {
        tracing::info!(
            "not applying CustomResourceDefinition {} (--manage-crd=false)",
            statecar_crds::kube::CRD_NAME
        );
    }
    let identity = cli.identity.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "statecar-operator".into()),
            std::process::id()
        )
    });
    let metrics = Arc::new(Metrics::default());
    let cache = Cache::start(client.clone());

    let probe_listener = TcpListener::bind(cli.probe_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--probe-listen)", cli.probe_listen))?;
    let webhooks_ready = Arc::new(AtomicBool::new(cli.webhook.disable_webhooks));
    let probes = probes::router(Probes {
        cache: cache.clone(),
        metrics: metrics.clone(),
        webhooks_ready: webhooks_ready.clone(),
    });
    tokio::spawn(async move { axum::serve(probe_listener, probes).await });

    if !cli.webhook.disable_webhooks {
        cli.webhook
            .injector_config(&cli.namespace, cli.config_listen.port())
            .default_resources
            .validate()
            .map_err(|e| anyhow::anyhow!("default sidecar resources (--sidecar-*): {e}"))?;
    }
    // One serving certificate for the webhooks and the config stream.
    let certs = if cli.webhook.disable_webhooks && cli.webhook.config_plaintext {
        None
    } else {
        Some(webhook::start_certs(client.clone(), cli.webhook.cert_settings(&cli.namespace)).await?)
    };
    let config_tls = certs.clone().filter(|_| !cli.webhook.config_plaintext);
    let webhook = (!cli.webhook.disable_webhooks).then(|| {
        Arc::new(Webhook::new(
            cli.webhook
                .injector_config(&cli.namespace, cli.config_listen.port()),
            config_tls.clone(),
            metrics.clone(),
        ))
    });
    let webhook_server = match (&webhook, &certs) {
        (Some(w), Some(store)) => {
            let server = webhook::start(
                client.clone(),
                &cli.webhook,
                &cli.namespace,
                w.clone(),
                store.clone(),
            )
            .await?;
            webhooks_ready.store(true, std::sync::atomic::Ordering::Relaxed);
            Some(server)
        }
        _ => None,
    };

    let config_listener = TcpListener::bind(cli.config_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--config-listen)", cli.config_listen))?;
    let delivery = delivery::router(Arc::new(Delivery {
        client: client.clone(),
        cache: cache.clone(),
        metrics: metrics.clone(),
    }));

    cache.ready().await;
    tracing::info!(config = %cli.config_listen, probes = %cli.probe_listen, %identity, "caches synced; serving sidecars");
    let config_server = match &config_tls {
        Some(store) => {
            let tls = statecar_operator::tls::server_config(store.clone());
            tokio::spawn(statecar_operator::tls::serve(
                config_listener,
                delivery,
                tls,
                std::future::pending(),
            ))
        }
        None => tokio::spawn(async move { axum::serve(config_listener, delivery).await }),
    };

    let (leader_tx, mut leader_rx) = watch::channel(cli.disable_leader_election);
    let election = (!cli.disable_leader_election)
        .then(|| LeaderElection::new(client.clone(), &cli.namespace, &cli.lease_name, &identity));
    let mut election_task = None;
    if let Some(election) = election {
        election_task = Some(tokio::spawn(election.run(leader_tx)));
    }
    let ctx = Arc::new(Context::new(
        client.clone(),
        cache,
        metrics.clone(),
        &identity,
    ));

    let controller = async {
        loop {
            if leader_rx.wait_for(|l| *l).await.is_err() {
                return;
            }
            metrics
                .leader
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("leading: writing component status");
            let watchdog = async {
                match &webhook {
                    Some(w) => {
                        webhook::watchdog::run(client.clone(), w.clone(), ctx.recorder.clone())
                            .await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = reconcile::run(ctx.clone()) => return,
                _ = watchdog => return,
                _ = leader_rx.wait_for(|l| !*l) => {
                    tracing::info!("lost the lease: stopped writing status");
                    metrics.leader.store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    };
    tokio::select! {
        _ = controller => {}
        r = config_server => { r.context("config server task")?.context("config server")?; }
        r = async {
            match webhook_server {
                Some(server) => server.await,
                None => std::future::pending().await,
            }
        } => { r.context("webhook server task")?.context("webhook server")?; }
        _ = shutdown_signal() => {}
    }
    if let Some(task) = election_task {
        // Stop renewing first: a renewal racing the release could take the lease back (or make
        // the release fail with a conflict), leaving it held by a replica that is gone.
        task.abort();
        let _ = task.await;
        LeaderElection::new(client, &cli.namespace, &cli.lease_name, &identity)
            .release()
            .await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("statecar-operator").chain(args.iter().copied()))
    }

    #[test]
    fn manage_crd_is_on_unless_turned_off() {
        assert!(parse(&[]).unwrap().manage_crd);
        assert!(parse(&["--manage-crd"]).unwrap().manage_crd);
        assert!(parse(&["--manage-crd=true"]).unwrap().manage_crd);
        assert!(!parse(&["--manage-crd=false"]).unwrap().manage_crd);
        assert!(parse(&["--manage-crd=maybe"]).is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
