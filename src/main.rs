//! `portkey-budget-operator`: the operator and its tools, as subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use portkey_budget_operator::api;
use portkey_budget_operator::config::{ApiKeySource, OperatorSettings, RunArgs, read_api_key};
use portkey_budget_operator::controller::manager;
use portkey_budget_operator::emulator::{self, EmulatorConfig, Faults, SeedWorkspace};
use portkey_budget_operator::gitops;
use portkey_budget_operator::portkey::{ApiKey, ClientConfig, PortkeyClient};
use portkey_budget_operator::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "portkey-budget-operator",
    version,
    about = "Enforce LLM-gateway budgets declared as Kubernetes resources in Portkey"
)]
struct Cli {
    /// Log format [default: text].
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Log level or filter (e.g. `info`, `portkey_budget_operator=debug`) [default: info];
    /// `RUST_LOG` wins.
    #[arg(long, global = true, env = "LOG_LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what budget manifests would change in Portkey (exit 0: nothing, 2: changes, 1: error).
    Plan(GitopsArgs),
    /// Apply budget manifests to Portkey once, then show what is in force.
    Sync(GitopsArgs),
    /// Run the operator: reconcile UsageLimitPolicy, RateLimitPolicy and WorkspaceBudget
    /// resources against the Portkey Admin API.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD).
    Crds(CrdsArgs),
    /// Run a local Portkey Admin API emulator (in-memory, for tests and demos).
    Emulator(EmulatorArgs),
    /// Benchmark: converge N generated UsageLimitPolicies against the emulator through the
    /// controller's reconcile and report speed, Admin API calls and memory.
    Bench(BenchArgs),
}

#[derive(Args)]
#[cfg_attr(not(feature = "bench"), allow(dead_code))]
struct BenchArgs {
    /// UsageLimitPolicies to generate and converge.
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// Latency the emulator adds to every Admin API call, in milliseconds.
    #[arg(long, default_value_t = 10)]
    latency_ms: u64,
    /// Admin API requests per second the emulator admits (HTTP 429 beyond); the operator is
    /// configured with the same limit.
    #[arg(long, default_value_t = 200)]
    rate_limit: u32,
    /// Reconciles at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Run the emulator inside the bench process (by default it runs as a child process, so
    /// that the peak RSS is the operator's).
    #[arg(long)]
    in_process_emulator: bool,
    /// The real mode: the `run` binary as a child process against a real Kubernetes API server
    /// (from KUBEBUILDER_ASSETS, or --kubeconfig) and the emulator.
    #[arg(long)]
    real: bool,
    /// With --real: an existing cluster instead of a control plane from KUBEBUILDER_ASSETS
    /// (Kubernetes API figures then need KUBEBUILDER_ASSETS' own control plane).
    #[arg(long, value_name = "PATH", requires = "real")]
    kubeconfig: Option<PathBuf>,
    /// With --real: the operator's Admin API writes per second (the floor is N / this).
    #[arg(long, default_value_t = 100)]
    write_rate: u32,
    /// With --real: the operator's usage refresh interval (the steady state spans two).
    #[arg(long, default_value = "20s")]
    refresh_interval: portkey_budget_operator::config::FlagDuration,
}

#[cfg(not(feature = "bench"))]
async fn run_bench(_args: BenchArgs) -> Result<(), String> {
    Err("this binary was built without the benchmark (test scaffolding is left out of release builds): cargo run --release --features bench -- bench ...".into())
}

#[cfg(feature = "bench")]
async fn run_bench(args: BenchArgs) -> Result<(), String> {
    if args.policies == 0 || args.rate_limit == 0 || args.concurrency == 0 {
        return Err("--policies, --rate-limit and --concurrency must be at least 1".into());
    }
    if args.real {
        use portkey_budget_operator::bench_real;
        eprintln!(
            "real mode: the operator binary against a real API server, {} UsageLimitPolicies, {} ms a call, {} req/s, {} writes/s, concurrency {}...",
            args.policies, args.latency_ms, args.rate_limit, args.write_rate, args.concurrency
        );
        let report = bench_real::run(&bench_real::RealOptions {
            policies: args.policies,
            latency_ms: args.latency_ms,
            rate_limit: args.rate_limit,
            write_rate: args.write_rate,
            concurrency: args.concurrency,
            refresh: args.refresh_interval.0,
            kubeconfig: args.kubeconfig.clone(),
            exe: std::env::current_exe()
                .map_err(|e| format!("cannot find this executable: {e}"))?,
        })
        .await?;
        print!("{}", bench_real::render(&report));
        if let Some(path) = &args.json {
            let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
            std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        return Ok(());
    }
    eprintln!(
        "converging {} UsageLimitPolicies against the built-in emulator ({} ms a call, {} req/s, concurrency {})...",
        args.policies, args.latency_ms, args.rate_limit, args.concurrency
    );
    let report =
        portkey_budget_operator::bench::run(&portkey_budget_operator::bench::BenchOptions {
            policies: args.policies,
            latency_ms: args.latency_ms,
            rate_limit: args.rate_limit,
            concurrency: args.concurrency,
            emulator_exe: if args.in_process_emulator {
                None
            } else {
                Some(
                    std::env::current_exe()
                        .map_err(|e| format!("cannot find this executable: {e}"))?,
                )
            },
        })
        .await?;
    print!("{}", portkey_budget_operator::bench::render(&report));
    if let Some(path) = &args.json {
        portkey_budget_operator::bench::write_json(&report, path)?;
        eprintln!("wrote {}", path.display());
    }
    if report.duplicates > 0 || report.missing > 0 {
        return Err(format!(
            "{} duplicate and {} missing remote policies",
            report.duplicates, report.missing
        ));
    }
    Ok(())
}

#[derive(Args)]
struct CrdsArgs {
    /// Write `<crd name>.yaml` files into this folder instead of printing.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// With --output-dir: write the Helm chart's templates (`crds.install` / `crds.keep`)
    /// instead of plain CRDs.
    #[arg(long, requires = "output_dir")]
    helm_templates: bool,
}

fn run_crds(args: CrdsArgs) -> Result<(), String> {
    match args.output_dir {
        None => {
            print!("{}", api::crds_yaml());
            Ok(())
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let files = if args.helm_templates {
                api::crd_helm_templates()
            } else {
                api::crd_files()
            };
            for (name, yaml) in files {
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
    /// Start with these faults (the JSON of `POST /_emulator/faults`), e.g.
    /// '{"read_after_write_lag_ms": 5000, "page_size_cap": 10}'.
    #[arg(long, value_name = "JSON")]
    faults: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Args)]
struct GitopsArgs {
    /// Manifest files or folders (YAML, multi-document; other kinds are ignored). Repeatable.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    paths: Vec<PathBuf>,
    /// Run against the built-in Portkey emulator (in-process, seeded with the manifests'
    /// workspaces) instead of Portkey.
    #[arg(long)]
    emulator: bool,
    /// Portkey Admin API base URL, including `/v1`.
    #[arg(long, env = "PORTKEY_ADMIN_API_URL", default_value = portkey_budget_operator::portkey::DEFAULT_BASE_URL)]
    admin_api_url: String,
    /// Read the Admin API key from this file (else from PORTKEY_API_KEY).
    #[arg(long, value_name = "PATH")]
    api_key_file: Option<PathBuf>,
    /// Workspace for policies that name none.
    #[arg(long, env = "PORTKEY_DEFAULT_WORKSPACE")]
    default_workspace: Option<String>,
    /// Also archive policies carrying this tool's ownership marker that no manifest declares.
    #[arg(long)]
    prune: bool,
    /// Refuse to prune more than this many policies.
    #[arg(long, default_value_t = 5)]
    max_prune: usize,
    /// This tool's identity in ownership markers (1-32 of a-z, 0-9, '-'). Policies marked by
    /// another identity (an operator's cluster, another pipeline) are never adopted, changed or
    /// pruned.
    #[arg(long, env = "PORTKEY_SYNC_INSTALLATION_ID", default_value = "sync", value_parser = installation_id)]
    installation_id: String,
    /// Also take over policies marked by this other installation (repeatable).
    #[arg(long = "adopt-from-installation", value_name = "ID", value_parser = installation_id)]
    adopt_from_installations: Vec<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: OutputFormat,
}

/// The key for `plan`/`sync`: `--api-key-file`, else `PORTKEY_API_KEY` (the operator's reader).
fn api_key_from(file: &Option<PathBuf>) -> Result<ApiKey, String> {
    let source = match file {
        Some(path) => ApiKeySource::File(path.clone()),
        None if std::env::var_os("PORTKEY_API_KEY").is_none() => {
            return Err(
                "no Admin API key: set PORTKEY_API_KEY or pass --api-key-file (or use --emulator)"
                    .into(),
            );
        }
        None => ApiKeySource::Env,
    };
    read_api_key(&source)
}

/// `plan` and `sync`: 0 no changes (or synced), 2 changes planned, 1 error.
async fn run_gitops(args: GitopsArgs, sync: bool) -> Result<u8, String> {
    let manifests = gitops::load(&args.paths);
    let json = args.output == OutputFormat::Json;
    if !manifests.errors.is_empty() {
        if json {
            let errors: Vec<String> = manifests.errors.iter().map(ToString::to_string).collect();
            println!("{}", serde_json::json!({"errors": errors, "items": []}));
        } else {
            for e in &manifests.errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{} manifest error(s); nothing was read from or sent to Portkey",
                manifests.errors.len()
            );
        }
        return Ok(1);
    }
    if manifests.resources.is_empty() {
        eprintln!(
            "no UsageLimitPolicy, RateLimitPolicy, WorkspaceBudget or ApiKeyBudget found in {:?} ({} other documents ignored)",
            args.paths, manifests.ignored
        );
    }
    let mut _emulator = None;
    let (client, target) = if args.emulator {
        let seeds = gitops::workspaces(&manifests.resources, args.default_workspace.as_deref())
            .into_iter()
            .map(|w| match uuid::Uuid::parse_str(&w) {
                Ok(id) => SeedWorkspace {
                    id: id.to_string(),
                    slug: format!("ws-{}", &id.to_string()[..8]),
                    name: w.clone(),
                },
                Err(_) => SeedWorkspace::from_slug(&w),
            })
            .collect();
        let handle = emulator::spawn(EmulatorConfig {
            workspaces: seeds,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("could not start the emulator: {e}"))?;
        let base = handle.base_url();
        eprintln!(
            "Using the built-in Portkey Admin API emulator at {base} — NOT Portkey: nothing is sent to Portkey, and the emulator's state is gone when this command exits."
        );
        let client = PortkeyClient::new(ClientConfig::new(base.clone(), ApiKey::new("emulator")))
            .map_err(|e| e.to_string())?;
        // The emulator starts without API keys: make the ones the manifests name, so the
        // ApiKeyBudgets that manage an existing key have one.
        for (workspace, name) in
            gitops::named_keys(&manifests.resources, args.default_workspace.as_deref())
        {
            let workspace_id = client
                .resolve_workspace_id(&workspace)
                .await
                .map_err(|e| e.to_string())?;
            let body = portkey_budget_operator::portkey::CreateApiKey {
                name: name.clone(),
                workspace_id: Some(workspace_id),
                scopes: vec!["completions.write".into()],
                ..Default::default()
            };
            client
                .create_api_key(
                    portkey_budget_operator::portkey::ApiKeyType::Workspace,
                    portkey_budget_operator::portkey::ApiKeySubType::Service,
                    &body,
                )
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "The emulator holds a demo API key {name:?} in workspace {workspace} for the manifests that name it."
            );
        }
        _emulator = Some(handle);
        (client, format!("the built-in emulator ({base})"))
    } else {
        let key = api_key_from(&args.api_key_file)?;
        let client = PortkeyClient::new(ClientConfig::new(args.admin_api_url.clone(), key))
            .map_err(|e| e.to_string())?;
        let target = format!("the Portkey Admin API at {}", client.base_url());
        (client, target)
    };
    let settings = gitops::PlanSettings {
        installation_id: args.installation_id.clone(),
        adopt_from_installations: args.adopt_from_installations.clone(),
        default_workspace: args.default_workspace.clone(),
        prune: args.prune,
        max_prune: args.max_prune,
    };
    let plan = gitops::plan(&client, &manifests.resources, &settings).await;
    if json && !sync {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).expect("plans serialize")
        );
    } else if !json {
        print!("{}", gitops::render_text(&plan, &target));
    }
    if plan.has_errors() {
        if sync && !json {
            eprintln!("the plan has errors; nothing was changed");
        }
        if sync && json {
            println!(
                "{}",
                serde_json::json!({"plan": plan, "applied": 0, "errors": plan.errors})
            );
        }
        return Ok(1);
    }
    if !sync {
        return Ok(if plan.has_changes() { 2 } else { 0 });
    }
    let report = gitops::apply(&client, &plan).await;
    let table = gitops::status_table(&client, &manifests.resources, &settings).await;
    if json {
        println!(
            "{}",
            serde_json::json!({"plan": plan, "applied": report.applied, "errors": report.errors})
        );
    } else {
        println!("\nApplied {} change(s).\n", report.applied);
        print!("{table}");
        for e in &report.errors {
            eprintln!("error: {e}");
        }
    }
    Ok(if report.errors.is_empty() { 0 } else { 1 })
}

fn main_settings(args: &RunArgs) -> Result<OperatorSettings, String> {
    args.resolve()
}

fn main_exit(e: String) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

/// glibc gives every thread that allocates an arena of its own (up to eight per core), and each
/// keeps freed memory for itself: with 10,000 resources cached, two arenas kept about 7 MiB less
/// resident than the default. `MALLOC_ARENA_MAX` still decides when it is set. (musl, the static
/// image's C library, has one heap.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    // `run` waits on the network nearly all the time: one thread does all its work, with no
    // wake-ups across threads (perf showed them as most of the idle CPU: a multi-threaded
    // runtime with one worker still polls the controller on the main thread and the HTTP
    // connections on the worker). Setting `TOKIO_WORKER_THREADS` asks for the multi-threaded
    // runtime with that many workers.
    let single = matches!(cli.command, Command::Run(_))
        && std::env::var_os("TOKIO_WORKER_THREADS").is_none();
    if matches!(cli.command, Command::Run(_)) {
        portkey_budget_operator::portkey::retry::allow_timer_slack();
    }
    let mut runtime = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all();
    match runtime.build() {
        // The work runs as a spawned task, not as the `block_on` future: waking that future
        // writes the runtime's eventfd (a system call and an extra epoll round per wake-up),
        // waking a task of the same thread does not.
        Ok(runtime) => runtime.block_on(async {
            match tokio::spawn(main_async(cli)).await {
                Ok(code) => code,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }),
        Err(e) => main_exit(format!("cannot start the async runtime: {e}")),
    }
}

async fn main_async(cli: Cli) -> ExitCode {
    let settings = match &cli.command {
        Command::Run(args) => match main_settings(args) {
            Ok(s) => Some(s),
            Err(e) => return main_exit(e),
        },
        _ => None,
    };
    let format = cli
        .log_format
        .or(settings.as_ref().and_then(|s| s.log_format))
        .unwrap_or(LogFormat::Text);
    let level = cli
        .log_level
        .clone()
        .or(settings.as_ref().and_then(|s| s.log_level.clone()));
    // The CLI commands print their own results; keep routine logs out of the way by default.
    let quiet = matches!(
        cli.command,
        Command::Plan(_) | Command::Sync(_) | Command::Bench(_)
    ) && level.is_none();
    let level = level.unwrap_or_else(|| if quiet { "warn" } else { "info" }.to_owned());
    telemetry::init(format, &level);
    let result = match cli.command {
        Command::Run(_) => manager::run(settings.expect("resolved above")).await,
        Command::Plan(args) => match run_gitops(args, false).await {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Sync(args) => match run_gitops(args, true).await {
            Ok(code) => return ExitCode::from(code),
            Err(e) => Err(e),
        },
        Command::Crds(args) => run_crds(args),
        Command::Emulator(args) => run_emulator(args).await,
        Command::Bench(args) => run_bench(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => main_exit(e),
    }
}

async fn run_emulator(args: EmulatorArgs) -> Result<(), String> {
    let faults = match &args.faults {
        Some(json) => {
            let value: serde_json::Value =
                serde_json::from_str(json).map_err(|e| format!("--faults: not JSON: {e}"))?;
            Faults::from_json(&value).map_err(|e| format!("--faults: {e}"))?
        }
        None => Faults::default(),
    };
    let handle = emulator::spawn(EmulatorConfig {
        listen: args.listen,
        api_keys: args.api_keys,
        workspaces: args.workspaces,
        state_file: args.state_file,
        faults,
    })
    .await
    .map_err(|e| format!("could not start the emulator on {}: {e}", args.listen))?;
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down the emulator");
    handle.shutdown().await;
    Ok(())
}

/// clap value parser for installation ids.
fn installation_id(s: &str) -> Result<String, String> {
    portkey_budget_operator::plan::marker::validate_installation_id(s)?;
    Ok(s.to_owned())
}
