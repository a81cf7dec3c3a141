//! The `mooring` operator binary: one process serves the controller, health, metrics and the
//! dashboard.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::Client;
use mooring_dashboard::auth::Auth;
use mooring_dashboard::server::DashboardConfig;
use mooring_operator::alerts::webhook;
use mooring_operator::context::State;
use mooring_operator::controller::Scope;
use mooring_operator::dashboard::users::{keep_loaded, parse_secret_ref};
use mooring_operator::dashboard::OperatorBackend;
use mooring_operator::leader::LeaseConfig;
use mooring_operator::resources::load_balancer::LbImages;
use mooring_operator::runner::{lead_and_control, wait_for_crd};
use mooring_operator::server;
use mooring_operator::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "mooring",
    version,
    about = "Kubernetes operator for clustered MQTT brokers"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (the default).
    Run,
    /// Print the BrokerCluster CRD as YAML.
    Crd,
    /// Run the load balancer's sidecar agent (keeps HAProxy in line with the cluster).
    LbAgent(mooring_operator::lb_agent::Args),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address of the HTTP server (health, metrics, dashboard).
    #[arg(long, env = "MOORING_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Watch only these namespaces (repeat the flag, or separate with commas; default: all).
    #[arg(
        long = "namespace",
        env = "MOORING_WATCH_NAMESPACE",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "MOORING_LEASE_NAME", default_value = "mooring-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (its Pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a lease stays valid without renewal.
    #[arg(long, env = "MOORING_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// Most BrokerCluster reconciles in flight at once.
    #[arg(long, env = "MOORING_CONCURRENCY", default_value_t = mooring_operator::controller::DEFAULT_CONCURRENCY)]
    concurrency: u16,
    /// Log format.
    #[arg(long, env = "MOORING_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// HAProxy image of the sticky load balancers.
    #[arg(long, env = "MOORING_HAPROXY_IMAGE", default_value = mooring_operator::resources::load_balancer::DEFAULT_HAPROXY_IMAGE)]
    haproxy_image: String,
    /// Mooring image the load balancers' agent runs (default: this version's release image).
    #[arg(long, env = "MOORING_AGENT_IMAGE")]
    agent_image: Option<String>,
    /// Webhook (Alertmanager's format) every alert is sent to, besides each cluster's own
    /// `spec.monitoring.webhook`.
    #[arg(long, env = "MOORING_ALERT_WEBHOOK_URL")]
    alert_webhook_url: Option<String>,
    /// The Secret (`<namespace>/<name>`) of the dashboard's users: keys are user names, values
    /// `admin:<password>` or `viewer:<password>` (`token.<name>` keys: bearer tokens). Without it
    /// the dashboard is not served.
    #[arg(long, env = "MOORING_DASHBOARD_USERS_SECRET")]
    dashboard_users_secret: Option<String>,
    /// The dashboard's built browser files (scripts/build-dashboard).
    #[arg(
        long,
        env = "MOORING_DASHBOARD_SITE",
        default_value = "/usr/share/mooring/dashboard"
    )]
    dashboard_site: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Command::Crd) => {
            print!("{}", mooring_crds::crd_yaml().context("rendering the CRD")?);
            Ok(())
        }
        Some(Command::LbAgent(agent)) => {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            mooring_operator::lb_agent::run(agent, shutdown).await
        }
        Some(Command::Run) | None => run(args.run).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let client = Client::try_default()
        .await
        .context("no Kubernetes API access (set KUBECONFIG or run in a Pod)")?;
    let state = State::new();
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let notifier = webhook::spawn(
        args.alert_webhook_url.clone(),
        webhook::RetryPolicy::default(),
        shutdown.clone(),
    )
    .context("starting the alert webhook sender")?;
    state.alerts.set_notifier(notifier);

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let dashboard = match &args.dashboard_users_secret {
        None => {
            info!("no --dashboard-users-secret: the dashboard is off");
            None
        }
        Some(secret) => {
            let (ns, name) = parse_secret_ref(secret).map_err(anyhow::Error::msg)?;
            if !args.dashboard_site.join("pkg").is_dir() {
                warn!(site = %args.dashboard_site.display(), "the dashboard's browser files are missing (run scripts/build-dashboard): pages render but do not update live");
            }
            let auth = Arc::new(Auth::default());
            tokio::spawn(keep_loaded(
                client.clone(),
                ns,
                name,
                auth.clone(),
                shutdown.clone(),
            ));
            Some(DashboardConfig {
                backend: Arc::new(OperatorBackend::new(
                    client.clone(),
                    state.clone(),
                    args.namespaces.clone(),
                    &identity,
                )),
                auth,
                site_root: args.dashboard_site.clone(),
            })
        }
    };
    let server = tokio::spawn(server::serve(
        args.listen,
        state.clone(),
        dashboard,
        shutdown.clone().cancelled_owned(),
    ));

    if wait_for_crd(&client, &args.namespaces, &shutdown).await {
        state.set_ready(true);
        let lease = LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: identity.clone(),
            duration: Duration::from_secs(args.lease_seconds),
        };
        let scope = Scope {
            namespaces: args.namespaces.clone(),
            concurrency: args.concurrency,
            lb_images: LbImages {
                haproxy: args.haproxy_image.clone(),
                agent: args
                    .agent_image
                    .clone()
                    .unwrap_or_else(|| LbImages::default().agent),
            },
        };
        if let Err(e) = lead_and_control(client, state.clone(), lease, scope, &shutdown).await {
            error!(error = %format!("{e:#}"), "operator stopped");
            shutdown.cancel();
            server.await.ok();
            return Err(e);
        }
    }
    shutdown.cancel();
    server
        .await
        .context("HTTP server task")?
        .context("HTTP server")?;
    info!("stopped");
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "mooring".into());
    format!("{host}-{}", std::process::id())
}

/// Cancels `token` on SIGINT or SIGTERM.
async fn stop_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                ctrl_c.await.ok();
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
    info!("shutting down");
    token.cancel();
}
