//! `portkey-budget-operator`: the operator and its tools, as subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use portkey_budget_operator::api;
use portkey_budget_operator::config::{OperatorSettings, RunArgs};
use portkey_budget_operator::controller::manager;
use portkey_budget_operator::emulator::{
    self, EmulatorConfig, Faults, Seed, SeedApiKey, SeedWorkspace,
};
use portkey_budget_operator::gitops::command::{self, Mode};
use portkey_budget_operator::gitops::exit;
use portkey_budget_operator::telemetry::{self, LogFormat};

/// The exit codes of `plan` and `sync`, in their help (docs/cli.md "Exit codes").
const EXIT_CODES: &str = "\
Exit codes:
  0   planned (plan) or synced (sync); with plan --detailed-exitcode: nothing to change
  1   Admin API error: unreachable, the key refused (401/403), 5xx, a write that failed
  2   plan --detailed-exitcode only: changes pending
  3   invalid manifests (load or validation errors): nothing read, sent or pruned
  4   the plan refuses something: a blocked resource, a workspace Portkey lacks, --max-prune
  64  usage error: a missing or unknown flag, a bad value, no Admin API key";

const PLAN_HELP: &str = "\
Examples:
  portkey-budget-operator plan -f config/samples --emulator
  PORTKEY_API_KEY=... portkey-budget-operator plan -f budgets/ --prune --detailed-exitcode
  portkey-budget-operator plan -f budgets/ --api-key-file key.txt -o json

Exit codes:
  0   planned (without --detailed-exitcode, whatever it plans)
  1   Admin API error: unreachable, the key refused (401/403), 5xx
  2   --detailed-exitcode only: changes pending (0 then means nothing to change)
  3   invalid manifests (load or validation errors): nothing read from Portkey
  4   the plan refuses something: a blocked resource, a workspace Portkey lacks, --max-prune
  64  usage error: a missing or unknown flag, a bad value, no Admin API key";

const SYNC_HELP: &str = "\
Examples:
  portkey-budget-operator sync -f config/samples --emulator
  PORTKEY_API_KEY=... portkey-budget-operator sync -f budgets/ --prune
  portkey-budget-operator sync -f budgets/ --admin-api-url http://127.0.0.1:8787/v1 --api-key-file key.txt

Exit codes:
  0   synced
  1   Admin API error: unreachable, the key refused (401/403), 5xx, a write that failed
  3   invalid manifests (load or validation errors): nothing read, sent or pruned
  4   the plan refuses something (a blocked resource, a workspace Portkey lacks, --max-prune):
      nothing was changed
  64  usage error: a missing or unknown flag, a bad value, no Admin API key";

const RUN_HELP: &str = "\
Examples:
  PORTKEY_API_KEY=... portkey-budget-operator run --default-workspace team-a
  portkey-budget-operator run --api-key-secret portkey-admin --admin-api-url http://127.0.0.1:8787/v1";

const EMULATOR_HELP: &str = "\
Examples:
  # The samples as they are (config/samples): two workspaces, the key an ApiKeyBudget names.
  portkey-budget-operator emulator --workspace team-a --workspace marketing \\
      --workspace-api-key team-a/checkout-service --api-key demo-admin-key
  PORTKEY_API_KEY=demo-admin-key portkey-budget-operator sync -f config/samples \\
      --admin-api-url http://127.0.0.1:8787/v1
  portkey-budget-operator emulator --seed seed.yaml --state-file emulator-state.json

A seed file (--seed):
  adminApiKeys: [demo-admin-key]
  workspaces: [team-a, {slug: marketing, id: 2f1d4e8a-1111-4c3b-9d2e-000000000002}]
  apiKeys: [{workspace: team-a, name: checkout-service}]";

const CRDS_HELP: &str = "\
Examples:
  portkey-budget-operator crds | kubectl apply --server-side -f -
  portkey-budget-operator crds --output-dir crds/";

#[derive(Parser)]
#[command(
    name = "portkey-budget-operator",
    version,
    about = "Enforce LLM-gateway budgets declared as Kubernetes resources in Portkey",
    long_about = "Enforce LLM-gateway budgets declared as Kubernetes resources in Portkey: UsageLimitPolicy, RateLimitPolicy, WorkspaceBudget and ApiKeyBudget (budgets.portkey-operator.io/v1alpha1).",
    after_help = EXIT_CODES
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
    /// Show what budget manifests (UsageLimitPolicy, RateLimitPolicy, WorkspaceBudget,
    /// ApiKeyBudget) would change in Portkey; read only.
    #[command(after_help = PLAN_HELP)]
    Plan(PlanArgs),
    /// Apply budget manifests (UsageLimitPolicy, RateLimitPolicy, WorkspaceBudget,
    /// ApiKeyBudget) to Portkey once, then show what is in force.
    #[command(after_help = SYNC_HELP)]
    Sync(GitopsArgs),
    /// Run the operator: reconcile UsageLimitPolicy, RateLimitPolicy, WorkspaceBudget and
    /// ApiKeyBudget resources against the Portkey Admin API.
    #[command(after_help = RUN_HELP)]
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions of UsageLimitPolicy, RateLimitPolicy,
    /// WorkspaceBudget and ApiKeyBudget as YAML (or write one file per CRD).
    #[command(after_help = CRDS_HELP)]
    Crds(CrdsArgs),
    /// Run a local Portkey Admin API emulator (in-memory, for tests and demos), seeded with
    /// workspaces and API keys.
    #[command(after_help = EMULATOR_HELP)]
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
    /// Address to listen on (port 0: any free port; the address is printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// An Admin API key the emulator accepts (repeatable). Without any, every non-empty key is
    /// accepted.
    #[arg(long = "api-key", visible_alias = "admin-api-key", value_name = "KEY")]
    api_keys: Vec<String>,
    /// A workspace to start with (repeatable): `SLUG`, `SLUG=UUID`, or `UUID:SLUG[:NAME]`.
    /// Without a UUID, one is derived from the slug (the same every run).
    #[arg(long = "workspace", value_name = "SLUG[=UUID]")]
    workspaces: Vec<SeedWorkspace>,
    /// A workspace API key to start with, by name (repeatable): `WORKSPACE/NAME`, e.g.
    /// `team-a/checkout-service` for an ApiKeyBudget's `spec.existing.name`. A service key
    /// with scope completions.write; the workspace must be seeded too.
    #[arg(long = "workspace-api-key", value_name = "WORKSPACE/NAME")]
    workspace_api_keys: Vec<SeedApiKey>,
    /// Seed from this YAML file as well: `adminApiKeys`, `workspaces` (as --workspace, or
    /// `{slug, id, name}`), `apiKeys` (`{workspace, name, scopes}`).
    #[arg(long, value_name = "FILE")]
    seed: Option<PathBuf>,
    /// Seed from budget manifests (files or folders, repeatable): the workspaces they name and
    /// a key for each `ApiKeyBudget`'s `spec.existing.name`, as `plan`/`sync --emulator` do.
    #[arg(long = "seed-from", value_name = "PATH")]
    seed_from: Vec<PathBuf>,
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
    /// Manifest files or folders (YAML or JSON, multi-document; folders are read recursively).
    /// Repeatable. Documents of budgets.portkey-operator.io must be a kind and version this
    /// tool knows; documents of other API groups are skipped with a warning.
    #[arg(short = 'f', long = "filename", value_name = "PATH", required = true)]
    paths: Vec<PathBuf>,
    /// Run against the built-in Portkey emulator (in-process, seeded with the manifests'
    /// workspaces and the API keys they name) instead of Portkey.
    #[arg(long)]
    emulator: bool,
    /// Portkey Admin API base URL, including `/v1`.
    #[arg(long, env = "PORTKEY_ADMIN_API_URL", default_value = portkey_budget_operator::portkey::DEFAULT_BASE_URL)]
    admin_api_url: String,
    /// Read the Admin API key from this file (else from PORTKEY_API_KEY).
    #[arg(long, value_name = "PATH")]
    api_key_file: Option<PathBuf>,
    /// Workspace for resources that name none.
    #[arg(long, env = "PORTKEY_DEFAULT_WORKSPACE")]
    default_workspace: Option<String>,
    /// Also archive policies carrying this tool's ownership marker that no manifest declares.
    /// Nothing is pruned when any manifest fails to load.
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
    /// Documents of other API groups (or no Kubernetes object) are errors (exit 3) instead of
    /// warnings.
    #[arg(long)]
    fail_on_unknown: bool,
    /// No progress bar (it is drawn only when stderr is a terminal anyway).
    #[arg(long)]
    no_progress: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: OutputFormat,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    common: GitopsArgs,
    /// Exit 2 when the plan has changes (and 0 when it has none), as `terraform plan
    /// -detailed-exitcode`. Without it, a successful plan exits 0.
    #[arg(long)]
    detailed_exitcode: bool,
}

impl GitopsArgs {
    fn options(self, detailed_exitcode: bool) -> command::Options {
        command::Options {
            paths: self.paths,
            emulator: self.emulator,
            admin_api_url: self.admin_api_url,
            api_key_file: self.api_key_file,
            default_workspace: self.default_workspace,
            prune: self.prune,
            max_prune: self.max_prune,
            installation_id: self.installation_id,
            adopt_from_installations: self.adopt_from_installations,
            json: self.output == OutputFormat::Json,
            fail_on_unknown: self.fail_on_unknown,
            detailed_exitcode,
            progress: !self.no_progress,
        }
    }
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
    // Usage errors exit 64 (EX_USAGE), not clap's 2: `plan --detailed-exitcode` exits 2 for
    // "changes pending". Help and version exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
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
        Command::Run(_) => manager::run(settings.expect("resolved above"))
            .await
            .map_err(|e| e.to_string()),
        Command::Plan(args) => {
            let options = args.common.options(args.detailed_exitcode);
            return ExitCode::from(command::run(options, Mode::Plan).await);
        }
        Command::Sync(args) => {
            return ExitCode::from(command::run(args.options(false), Mode::Sync).await);
        }
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
    let mut seed = Seed {
        admin_api_keys: args.api_keys,
        workspaces: args.workspaces,
        api_keys: args.workspace_api_keys,
    };
    if let Some(path) = &args.seed {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("--seed {}: {e}", path.display()))?;
        seed.merge(Seed::from_yaml(&text).map_err(|e| format!("--seed {}: {e}", path.display()))?);
    }
    if !args.seed_from.is_empty() {
        seed.merge(portkey_budget_operator::gitops::emulator_seed_from(
            &args.seed_from,
        )?);
    }
    let summary = emulator::seed_summary(&seed);
    let config = EmulatorConfig {
        listen: args.listen,
        state_file: args.state_file,
        faults,
        ..Default::default()
    }
    .seed(seed);
    let handle = emulator::spawn(config)
        .await
        .map_err(|e| format!("could not start the emulator on {}: {e}", args.listen))?;
    eprintln!(
        "Portkey Admin API emulator listening at {} (an emulator, not Portkey; Ctrl-C stops it). {summary}",
        handle.base_url()
    );
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
