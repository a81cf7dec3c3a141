//! `devcluster`: a local Kubernetes that runs Pods for real, as processes.
//!
//! `up` starts it (idempotent), `down` removes it (idempotent), `status` reports, `kubeconfig`
//! prints the kubeconfig's path. `agent` (hidden) is the node agent that `up` starts.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use mooring_devcluster::agent::{self, AgentOptions};
use mooring_devcluster::control_plane::{self, UpOptions, UpOutcome};
use mooring_devcluster::state::{StateDir, API_PORT_ENV, STATE_DIR_ENV};
use mooring_devcluster::{lb, AGENT_STOP_GRACE};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "devcluster",
    about = "A local Kubernetes (real control plane, Pods run as local processes) for development and tests",
    after_help = "State lives in $MOORING_DEVCLUSTER_DIR (default ~/.local/share/mooring/devcluster): \
                  logs/<component>.log, pods/<namespace>_<pod>_<uid>/logs/<container>.log, kubeconfig."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the control plane and the node agent, write the kubeconfig, wait until ready.
    Up {
        /// How long to wait for everything to be ready, in seconds.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
    /// Stop everything and remove what devcluster made (processes, namespaces, mounts, interfaces).
    Down,
    /// Show what runs.
    Status,
    /// Print the kubeconfig's path.
    Kubeconfig,
    /// The node agent (started by `up`).
    #[command(hide = true)]
    Agent(AgentArgs),
}

#[derive(Args, Debug)]
struct AgentArgs {
    #[arg(long)]
    kubeconfig: PathBuf,
    #[arg(long)]
    state_dir: PathBuf,
    #[arg(long)]
    node_name: String,
    #[arg(long)]
    bridge: String,
    #[arg(long)]
    pod_cidr: String,
    #[arg(long)]
    gateway: Ipv4Addr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let agent = matches!(cli.command, Command::Agent(_));
    init_tracing(agent);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("devcluster: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if agent {
                tracing::error!("{e:#}");
            } else {
                eprintln!("devcluster: error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// People read `up`/`down` output: short lines on stderr. The agent writes to its log file:
/// timestamps.
fn init_tracing(agent: bool) {
    use std::io::IsTerminal as _;
    // kube's client logs every failed request; `up` polls an API server that is still starting
    // and says itself what it waits for.
    let default = if agent {
        "info"
    } else {
        "info,kube_client=off"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!agent && std::io::stderr().is_terminal());
    if agent {
        builder.with_target(true).init();
    } else {
        builder
            .without_time()
            .with_target(false)
            .with_level(false)
            .init();
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Up { timeout } => {
            let state = StateDir::from_env()?;
            tracing::info!("devcluster state in {}", state.root().display());
            let opts = UpOptions {
                timeout: Duration::from_secs(timeout),
            };
            match control_plane::up(state.clone(), &opts).await? {
                UpOutcome::AlreadyUp => tracing::info!("devcluster is already up"),
                UpOutcome::Started { took, cleaned } => {
                    if cleaned {
                        tracing::info!("(removed the leftovers of an earlier devcluster first)");
                    }
                    tracing::info!("devcluster is up ({:.1} s)", took.as_secs_f64());
                }
            }
            tracing::info!(
                "container output: {}/<namespace>_<pod>_<uid>/logs/<container>.log",
                state.pods().display()
            );
            println!("export KUBECONFIG={}", state.kubeconfig().display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Down => {
            let state = StateDir::from_env()?;
            // Half a teardown helps nobody: the first Ctrl-C only says so.
            tokio::spawn(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    tracing::info!(
                        "down is removing the devcluster: Ctrl-C again to abort (running down \
                         again finishes the job)"
                    );
                    if tokio::signal::ctrl_c().await.is_ok() {
                        std::process::exit(130);
                    }
                }
            });
            let report = control_plane::down(state.clone()).await?;
            tracing::info!("devcluster is down: {}", report.summary());
            if state.logs().exists() {
                tracing::info!("logs kept in {}", state.logs().display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let state = StateDir::from_env()?;
            let status = control_plane::status(&state).await?;
            print!("{}", status.text);
            Ok(if status.healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Kubeconfig => {
            let state = StateDir::from_env()?;
            let path = state.kubeconfig();
            anyhow::ensure!(
                path.is_file(),
                "no kubeconfig at {}: devcluster is not up (run `devcluster up`; {STATE_DIR_ENV} selects the state directory)",
                path.display()
            );
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(args) => run_agent(args).await.map(|()| ExitCode::SUCCESS),
    }
}

/// The node agent next to the LoadBalancer forwarder and the API forwarder. On SIGTERM/SIGINT the
/// forwarders stop at once and the agent gets [`AGENT_STOP_GRACE`] to return.
async fn run_agent(args: AgentArgs) -> Result<()> {
    tracing::info!(node = %args.node_name, state = %args.state_dir.display(), "agent starting");
    let client = mooring_devcluster::kube_client(&args.kubeconfig).await?;
    let shutdown = CancellationToken::new();
    let lb_task = tokio::spawn({
        let (client, shutdown) = (client.clone(), shutdown.clone());
        async move {
            if let Err(e) = lb::run(client, shutdown).await {
                tracing::error!("the LoadBalancer forwarder stopped: {e}");
            }
        }
    });
    let api_port: Option<u16> = std::env::var(API_PORT_ENV)
        .ok()
        .and_then(|p| p.parse().ok());
    let api_task = api_port.map(|port| {
        let listen = SocketAddr::from((args.gateway, port));
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = lb::forward_api(listen, target, shutdown).await {
                tracing::error!("{e}");
            }
        })
    });

    let opts = AgentOptions {
        kubeconfig: args.kubeconfig,
        state_dir: args.state_dir,
        node_name: args.node_name,
        bridge: args.bridge,
        pod_cidr: args.pod_cidr,
        gateway: args.gateway.to_string(),
    };
    let agent = agent::run(opts);
    tokio::pin!(agent);
    let result = tokio::select! {
        r = &mut agent => r.context("the node agent failed"),
        signal = control_plane::interrupted() => {
            tracing::info!("{signal}: stopping");
            shutdown.cancel();
            match tokio::time::timeout(AGENT_STOP_GRACE, &mut agent).await {
                Ok(r) => r.context("the node agent failed while stopping"),
                Err(_) => {
                    tracing::warn!("the node agent did not stop within {AGENT_STOP_GRACE:?}");
                    Ok(())
                }
            }
        }
    };
    shutdown.cancel();
    let _ = lb_task.await;
    if let Some(t) = api_task {
        let _ = t.await;
    }
    result
}
