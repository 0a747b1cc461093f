//! `portkey-budget-operator`: the operator and its tools, as subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use portkey_budget_operator::api;
use portkey_budget_operator::config::RunArgs;
use portkey_budget_operator::controller;
use portkey_budget_operator::emulator::{self, EmulatorConfig, SeedWorkspace};
use portkey_budget_operator::portkey::{ClientConfig, PortkeyClient};
use portkey_budget_operator::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "portkey-budget-operator",
    version,
    about = "Enforce LLM-gateway budgets declared as Kubernetes resources in Portkey"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Log level or filter (e.g. `info`, `portkey_budget_operator=debug`); `RUST_LOG` wins.
    #[arg(long, global = true, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: reconcile UsageLimitPolicy resources against the Portkey Admin API.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD).
    Crds(CrdsArgs),
    /// Run a local Portkey Admin API emulator (in-memory, for tests and demos).
    Emulator(EmulatorArgs),
}

#[derive(Args)]
struct CrdsArgs {
    /// Write `<crd name>.yaml` files into this folder instead of printing.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
}

fn run_crds(args: CrdsArgs) -> Result<(), String> {
    match args.output_dir {
        None => {
            print!("{}", api::crds_yaml());
            Ok(())
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for (name, yaml) in api::crd_files() {
                let path = dir.join(name);
                std::fs::write(&path, yaml).map_err(|e| format!("{}: {e}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

#[derive(Args)]
struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// An API key the emulator accepts (repeatable). Without any, every non-empty key is accepted.
    #[arg(long = "api-key", value_name = "KEY")]
    api_keys: Vec<String>,
    /// A workspace to start with, `ID:SLUG[:NAME]` with ID a UUID (repeatable).
    #[arg(long = "workspace", value_name = "ID:SLUG[:NAME]")]
    workspaces: Vec<SeedWorkspace>,
    /// Keep the state in this JSON file across restarts.
    #[arg(long, value_name = "PATH")]
    state_file: Option<PathBuf>,
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn run_operator(args: RunArgs) -> Result<(), String> {
    let api_key = args.api_key()?;
    let mut client_config = ClientConfig::new(args.admin_api_url.clone(), api_key);
    client_config.timeout = args.admin_api_timeout.0;
    let portkey = PortkeyClient::new(client_config).map_err(|e| e.to_string())?;
    let kube = kube::Client::try_default().await.map_err(|e| {
        format!("cannot reach the Kubernetes API (kubeconfig or in-cluster config): {e}")
    })?;
    tracing::info!(admin_api = %portkey.base_url(), "starting portkey-budget-operator");
    let ctx = controller::Context::new(
        kube,
        portkey,
        args.controller_config(),
        controller::reporter(),
    );
    controller::run(ctx, shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn run_emulator(args: EmulatorArgs) -> Result<(), String> {
    let handle = emulator::spawn(EmulatorConfig {
        listen: args.listen,
        api_keys: args.api_keys,
        workspaces: args.workspaces,
        state_file: args.state_file,
    })
    .await
    .map_err(|e| format!("could not start the emulator on {}: {e}", args.listen))?;
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down the emulator");
    handle.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, &cli.log_level);
    let result = match cli.command {
        Command::Run(args) => run_operator(args).await,
        Command::Crds(args) => run_crds(args),
        Command::Emulator(args) => run_emulator(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
