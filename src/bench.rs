//! `portkey-budget-operator bench`: converge N generated UsageLimitPolicies against the
//! built-in emulator (with injected latency and an Admin API rate limit) through the
//! controller's own reconcile entry point, and report speed, Admin API load and memory.
//!
//! What runs is the controller's code: [`controller::reconcile_policy`] with the shared context
//! (planner, ownership markers, adopt-before-create index, create-pending annotation, write rate
//! limiter, status writes), against an in-memory Kubernetes API ([`MemoryKube`]) and the
//! emulator over real HTTP on loopback. Only kube-runtime's watch/queue is replaced: the bench
//! calls the reconcile for every resource, `concurrency` at a time, as the runtime would.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::api::{UsageLimitPolicy, UsageLimitPolicySpec};
use crate::config::ControllerConfig;
use crate::controller::{self, Context, conditions};
use crate::emulator::{self, EmulatorConfig, EmulatorControl, SeedWorkspace};
use crate::plan::marker::marker_of;
use crate::portkey::{
    ApiKey, ClientConfig, ListFilter, PolicyStatus, PortkeyClient, UsageLimitsPolicy,
};
use crate::testing::memkube::MemoryKube;

const WORKSPACE: &str = "7b3c0f1e-0000-4000-8000-00000000be0c";
const NAMESPACE: &str = "bench";

/// Bench parameters.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub policies: usize,
    pub latency_ms: u64,
    /// Admin API requests per second the emulator admits (429 beyond); the operator is given
    /// the same client-side limit.
    pub rate_limit: u32,
    pub concurrency: usize,
    /// Run the emulator as a child process of this executable (`<exe> emulator`), so that the
    /// peak RSS measured is the operator's code and the in-memory Kubernetes API only;
    /// `None`: in-process.
    pub emulator_exe: Option<PathBuf>,
}

/// The emulator the bench talks to: in-process, or a child process.
enum Emulator {
    InProcess(emulator::EmulatorHandle),
    Process(tokio::process::Child, String),
}

impl Emulator {
    async fn start(exe: Option<&PathBuf>) -> Result<Emulator, String> {
        let Some(exe) = exe else {
            let handle = emulator::spawn(EmulatorConfig {
                workspaces: vec![SeedWorkspace {
                    id: WORKSPACE.into(),
                    slug: "bench".into(),
                    name: "Bench".into(),
                }],
                ..Default::default()
            })
            .await
            .map_err(|e| format!("could not start the emulator: {e}"))?;
            return Ok(Emulator::InProcess(handle));
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port for the emulator: {e}"))?
            .port();
        let child = tokio::process::Command::new(exe)
            .args(["--log-level", "warn", "emulator", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--workspace")
            .arg(format!("{WORKSPACE}:bench:Bench"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("could not start {} emulator: {e}", exe.display()))?;
        let root = format!("http://127.0.0.1:{port}");
        let control = EmulatorControl::new(root.clone());
        let deadline = Instant::now() + Duration::from_secs(20);
        while control.state().await.is_err() {
            if Instant::now() > deadline {
                return Err("the emulator process did not answer within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Emulator::Process(child, root))
    }

    fn base_url(&self) -> String {
        match self {
            Emulator::InProcess(h) => h.base_url(),
            Emulator::Process(_, root) => format!("{root}/v1"),
        }
    }

    fn control(&self) -> EmulatorControl {
        match self {
            Emulator::InProcess(h) => h.control(),
            Emulator::Process(_, root) => EmulatorControl::new(root.clone()),
        }
    }

    async fn shutdown(self) {
        match self {
            Emulator::InProcess(h) => h.shutdown().await,
            Emulator::Process(mut child, _) => {
                let _ = child.kill().await;
            }
        }
    }
}

/// The figures (`--json` writes them).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub policies: usize,
    pub latency_ms: u64,
    pub rate_limit: u32,
    pub concurrency: usize,
    pub wall_seconds: f64,
    /// The fewest Admin API calls convergence needs: per policy a POST and the GET that reads
    /// the server's fields back, plus resolving the workspace and one listing for
    /// adopt-before-create.
    pub minimal_calls: u64,
    /// `min(rate limit, concurrency / latency)` in calls per second.
    pub throughput: f64,
    pub ideal_seconds: f64,
    pub ratio: f64,
    /// Admin API calls of the converge pass by operation (retries included).
    pub calls: BTreeMap<String, u64>,
    pub total_calls: u64,
    /// HTTP 429 answers seen during the converge pass.
    pub rate_limited: u64,
    pub reconcile_rounds: u32,
    pub remote_policies: usize,
    pub duplicates: usize,
    pub missing: usize,
    pub steady_state_seconds: f64,
    pub steady_state_writes: u64,
    pub steady_state_reads: u64,
    /// Peak RSS of the bench process: the operator's code and the in-memory Kubernetes API
    /// (plus the emulator when `emulator_in_process`).
    pub peak_rss_bytes: u64,
    pub emulator_in_process: bool,
    /// CPU time of the bench process (user + system).
    pub cpu_seconds: f64,
}

fn policy(i: usize) -> UsageLimitPolicy {
    let spec: UsageLimitPolicySpec = serde_json::from_value(json!({
        "workspace": WORKSPACE,
        "type": "cost",
        "creditLimit": 100 + (i % 900),
        "alertThresholdPercent": 80,
        "periodicReset": "monthly",
        "conditions": [{"key": "metadata._team", "value": format!("team-{i}")}],
        "groupBy": [{"key": "metadata._user"}]
    }))
    .expect("bench spec is valid");
    let mut obj = UsageLimitPolicy::new(&name(i), spec);
    obj.metadata.namespace = Some(NAMESPACE.into());
    obj
}

fn name(i: usize) -> String {
    format!("budget-{i:05}")
}

/// Counts every HTTP attempt by operation and status.
#[derive(Default)]
struct Calls {
    by_operation: Mutex<BTreeMap<String, u64>>,
    rate_limited: Mutex<u64>,
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User + system CPU time of this process (Linux `/proc/self/stat`, clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn ready(obj: &UsageLimitPolicy) -> bool {
    obj.status.as_ref().is_some_and(|s| {
        conditions::is_true(&s.common.conditions, conditions::READY)
            && s.common.observed_generation == obj.metadata.generation
    })
}

/// Reconciles every resource not yet Ready, `concurrency` at a time, until all are (at most
/// `max_rounds` rounds). Returns the rounds used.
async fn converge(
    kube: &MemoryKube,
    ctx: &Arc<Context>,
    n: usize,
    concurrency: usize,
    max_rounds: u32,
) -> Result<u32, String> {
    for round in 1..=max_rounds {
        let pending: Vec<usize> = (0..n)
            .filter(|i| {
                kube.get::<UsageLimitPolicy>(NAMESPACE, &name(*i))
                    .is_none_or(|o| !ready(&o))
            })
            .collect();
        if pending.is_empty() {
            return Ok(round - 1);
        }
        futures::stream::iter(pending)
            .map(|i| {
                let ctx = ctx.clone();
                let obj = kube.get::<UsageLimitPolicy>(NAMESPACE, &name(i));
                async move {
                    if let Some(obj) = obj
                        && let Err(e) = controller::reconcile_policy(Arc::new(obj), ctx).await
                    {
                        tracing::debug!(policy = i, error = %e, "reconcile failed; next round");
                    }
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<()>>()
            .await;
    }
    Err(format!(
        "not converged after {max_rounds} rounds of reconciles"
    ))
}

/// Runs the benchmark.
pub async fn run(opts: &BenchOptions) -> Result<BenchReport, String> {
    let emu = Emulator::start(opts.emulator_exe.as_ref()).await?;
    let control = emu.control();
    // The Admin API as the bench models it: latency on every call, 429 above the rate limit.
    let conditions = json!({
        "latency_ms": opts.latency_ms,
        "rate_limit_rps": opts.rate_limit,
        "retry_after_s": 1
    });
    control.set_faults(conditions.clone()).await?;

    let calls = Arc::new(Calls::default());
    let portkey = counted_client(&emu.base_url(), opts.rate_limit, &calls)?;
    let kube = MemoryKube::lean();
    kube.add_namespace(NAMESPACE, &[(crate::api::WORKSPACE_ANNOTATION, WORKSPACE)]);
    for i in 0..opts.policies {
        kube.apply(&policy(i));
    }
    let config = ControllerConfig {
        usage_refresh_interval: Duration::from_secs(3600),
        admin_api_write_rate: opts.rate_limit,
        concurrency: opts.concurrency.min(u16::MAX as usize) as u16,
        ..Default::default()
    };
    let ctx = Context::new(
        kube.client(),
        portkey.clone(),
        config.clone(),
        controller::reporter(),
    );

    tracing::info!(
        rss_kib = proc_status_kib("VmRSS:"),
        "generated the resources"
    );
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let rounds = converge(&kube, &ctx, opts.policies, opts.concurrency, 20).await?;
    let wall = started.elapsed().as_secs_f64();
    let by_operation = calls.by_operation.lock().expect("calls lock").clone();
    let rate_limited = *calls.rate_limited.lock().expect("calls lock");
    let total_calls: u64 = by_operation.values().sum();
    tracing::info!(
        rss_kib = proc_status_kib("VmRSS:"),
        events = kube.event_count(),
        "converged"
    );
    // Every resource has exactly one remote policy.
    control.set_faults(json!({})).await?;
    let check = check_remote(&emu.base_url(), opts.policies, &calls).await?;

    // Steady state: every resource due for its usage refresh, nothing changed.
    control.set_faults(conditions).await?;
    control.clear_requests().await?;
    let steady_config = ControllerConfig {
        usage_refresh_interval: Duration::ZERO,
        ..config
    };
    let steady_seconds = steady_pass(
        &kube,
        &ctx,
        portkey,
        steady_config,
        opts.policies,
        opts.concurrency,
    )
    .await;
    let log = control.requests().await?;
    let steady_writes = log.writes() as u64;
    let steady_reads = log.total.saturating_sub(steady_writes);
    let cpu = cpu_seconds() - cpu_before;
    emu.shutdown().await;

    let (minimal_calls, throughput, ideal) = floor(opts);
    Ok(BenchReport {
        policies: opts.policies,
        latency_ms: opts.latency_ms,
        rate_limit: opts.rate_limit,
        concurrency: opts.concurrency,
        wall_seconds: wall,
        minimal_calls,
        throughput,
        ideal_seconds: ideal,
        ratio: wall / ideal,
        calls: by_operation,
        total_calls,
        rate_limited,
        reconcile_rounds: rounds,
        remote_policies: check.remote_policies,
        duplicates: check.duplicates,
        missing: check.missing,
        steady_state_seconds: steady_seconds,
        steady_state_writes: steady_writes,
        steady_state_reads: steady_reads,
        peak_rss_bytes: proc_status_kib("VmHWM:").unwrap_or(0) * 1024,
        emulator_in_process: opts.emulator_exe.is_none(),
        cpu_seconds: cpu,
    })
}

/// The floor a run is measured against: the fewest Admin API calls that can converge the
/// policies, the throughput the rate limit and latency allow, and the time they take.
fn floor(opts: &BenchOptions) -> (u64, f64, f64) {
    let minimal_calls = 2 * opts.policies as u64 + 2;
    let by_latency = if opts.latency_ms == 0 {
        f64::INFINITY
    } else {
        opts.concurrency as f64 / (opts.latency_ms as f64 / 1000.0)
    };
    let throughput = f64::from(opts.rate_limit).min(by_latency);
    (minimal_calls, throughput, minimal_calls as f64 / throughput)
}

/// An Admin API client at `rate` requests a second whose calls are counted in `calls`.
fn counted_client(base: &str, rate: u32, calls: &Arc<Calls>) -> Result<PortkeyClient, String> {
    let mut cfg = ClientConfig::new(base.to_owned(), ApiKey::new("bench"));
    cfg.timeout = Duration::from_secs(30);
    cfg.max_requests_per_second = Some(rate);
    let seen = calls.clone();
    cfg.observer = Some(Arc::new(move |call| {
        *seen
            .by_operation
            .lock()
            .expect("calls lock")
            .entry(call.operation.to_owned())
            .or_default() += 1;
        if call.status == Some(429) {
            *seen.rate_limited.lock().expect("calls lock") += 1;
        }
    }));
    PortkeyClient::new(cfg).map_err(|e| e.to_string())
}

/// What the bench's own listing found: policies, duplicates, resources without one.
struct RemoteCheck {
    remote_policies: usize,
    duplicates: usize,
    missing: usize,
}

/// Lists the workspace (the bench's own check, not the operator's memory: only counts are kept).
async fn check_remote(
    base: &str,
    policies: usize,
    calls: &Arc<Calls>,
) -> Result<RemoteCheck, String> {
    let filter = ListFilter {
        workspace_id: Some(WORKSPACE.into()),
        status: Some(PolicyStatus::Active),
        ..Default::default()
    };
    let remote: Vec<UsageLimitsPolicy> = counted_client(base, u32::MAX, calls)?
        .usage_limits()
        .list(&filter)
        .await
        .map_err(|e| e.to_string())?;
    let mut per_owner: BTreeMap<String, usize> = BTreeMap::new();
    for p in &remote {
        if let Some(m) = p.name.as_deref().and_then(marker_of) {
            *per_owner.entry(m.owner.to_owned()).or_default() += 1;
        }
    }
    Ok(RemoteCheck {
        remote_policies: remote.len(),
        duplicates: per_owner.values().map(|c| c.saturating_sub(1)).sum(),
        missing: (0..policies)
            .filter(|i| !per_owner.contains_key(&format!("{NAMESPACE}/{}", name(*i))))
            .count(),
    })
}

/// One refresh of every resource with nothing changed (the same metrics registry as the
/// converging pass, as one process would have): its wall time.
async fn steady_pass(
    kube: &MemoryKube,
    ctx: &Arc<Context>,
    portkey: PortkeyClient,
    config: ControllerConfig,
    count: usize,
    concurrency: usize,
) -> f64 {
    let steady_ctx = Context::with_metrics(
        kube.client(),
        portkey,
        config,
        controller::reporter(),
        ctx.metrics.clone(),
        ctx.health.clone(),
    );
    let started = Instant::now();
    // Each resource is read from the store as its turn comes (not all copied up front).
    futures::stream::iter(0..count)
        .map(|i| {
            let ctx = steady_ctx.clone();
            let obj = kube.get::<UsageLimitPolicy>(NAMESPACE, &name(i));
            async move {
                if let Some(obj) = obj {
                    let _ = controller::reconcile_policy(Arc::new(obj), ctx).await;
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<()>>()
        .await;
    started.elapsed().as_secs_f64()
}

/// The report as a table.
pub fn render(r: &BenchReport) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:<34} {v}\n"));
    row("policies", r.policies.to_string());
    row(
        "latency / rate limit / concurrency",
        format!(
            "{} ms / {} req/s / {}",
            r.latency_ms, r.rate_limit, r.concurrency
        ),
    );
    row("wall time to converge", format!("{:.2} s", r.wall_seconds));
    row(
        "ideal (minimal calls / throughput)",
        format!(
            "{:.2} s ({} calls / {:.0} calls/s)",
            r.ideal_seconds, r.minimal_calls, r.throughput
        ),
    );
    row("ratio measured / ideal", format!("{:.3}", r.ratio));
    row("Admin API calls", r.total_calls.to_string());
    for (op, n) in &r.calls {
        row(&format!("  {op}"), n.to_string());
    }
    row("HTTP 429 answers", r.rate_limited.to_string());
    row("reconcile rounds", r.reconcile_rounds.to_string());
    row(
        "remote policies / duplicates / missing",
        format!("{} / {} / {}", r.remote_policies, r.duplicates, r.missing),
    );
    row(
        "steady state: writes / reads",
        format!(
            "{} / {} ({:.2} s)",
            r.steady_state_writes, r.steady_state_reads, r.steady_state_seconds
        ),
    );
    row(
        "peak RSS",
        format!(
            "{:.1} MiB ({})",
            r.peak_rss_bytes as f64 / 1_048_576.0,
            if r.emulator_in_process {
                "operator, in-memory Kubernetes API and emulator"
            } else {
                "operator and in-memory Kubernetes API; emulator in its own process"
            }
        ),
    );
    row("CPU time", format!("{:.2} s", r.cpu_seconds));
    out
}

/// Writes the report as JSON.
pub fn write_json(r: &BenchReport, path: &PathBuf) -> Result<(), String> {
    let text = serde_json::to_string_pretty(r).expect("reports serialize");
    std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}
