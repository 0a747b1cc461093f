//! `bench --real`: the operator binary (`run`) as a child process against a real Kubernetes API
//! server (started from `KUBEBUILDER_ASSETS`, or an existing one with `--kubeconfig`) and the
//! emulator (a child process with latency and a rate limit). N UsageLimitPolicies are created
//! before the operator starts; the report has the wall time until all are Ready (read from the
//! operator's own `/metrics`, so the bench adds no API-server load), the floor (N creates at the
//! write rate) and ratio, Admin API calls by operation, Kubernetes API requests by verb and
//! resource (from the API server's `/metrics`), steady-state figures over two refresh intervals,
//! the operator process's peak RSS and CPU, and the CPU the same usage reads cost alone (the
//! read floor, see [`read_floor`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde::Serialize;
use serde_json::json;

use crate::api::{UsageLimitPolicy, UsageLimitPolicySpec};
use crate::emulator::EmulatorControl;

const WORKSPACE: &str = "7b3c0f1e-0000-4000-8000-00000000be0c";
const NAMESPACE: &str = "bench";
const KEY: &str = "bench-admin-key";

/// Parameters of the real mode.
#[derive(Debug, Clone)]
pub struct RealOptions {
    pub policies: usize,
    pub latency_ms: u64,
    /// Admin API requests per second the emulator admits; the operator gets the same limit.
    pub rate_limit: u32,
    /// Admin API writes per second of the operator (`--admin-api-write-rate`).
    pub write_rate: u32,
    pub concurrency: usize,
    pub refresh: Duration,
    /// An existing cluster; else a control plane from `KUBEBUILDER_ASSETS`.
    pub kubeconfig: Option<PathBuf>,
    /// This executable (the operator and the emulator run as its children).
    pub exe: PathBuf,
}

/// The figures (`--json` writes them).
#[derive(Debug, Clone, Serialize)]
pub struct RealReport {
    pub policies: usize,
    pub seconds_to_all_ready: f64,
    /// When a quarter, half and three quarters of the resources were Ready (s).
    pub seconds_to_quartiles: Vec<f64>,
    /// The operator's reconcile outcomes and errors by reason while converging.
    pub reconciles: BTreeMap<String, u64>,
    pub floor_seconds: f64,
    pub ratio: f64,
    pub admin_api_calls: BTreeMap<String, u64>,
    /// `verb resource` → requests during convergence.
    pub kubernetes_requests: BTreeMap<String, u64>,
    pub kubernetes_requests_per_create: f64,
    pub steady_seconds: f64,
    pub steady_kubernetes_requests: BTreeMap<String, u64>,
    pub steady_kubernetes_requests_per_resource_per_interval: f64,
    pub steady_admin_api_reads: u64,
    pub steady_admin_api_writes: u64,
    pub operator_peak_rss_mib: f64,
    pub operator_cpu_seconds_converging: f64,
    /// CPU of the kube-apiserver and etcd this bench started, from the operator's start until
    /// all resources were Ready, per resource, in ms; `None` with `--kubeconfig`.
    pub apiserver_cpu_ms_per_resource: Option<f64>,
    pub etcd_cpu_ms_per_resource: Option<f64>,
    pub operator_idle_cpu_percent: f64,
    /// The two intervals after the steady-state window, when every resource has had its
    /// first refresh after convergence (that first refresh falls in the steady-state window).
    pub settled_admin_api_reads: u64,
    pub settled_admin_api_writes: u64,
    pub settled_kubernetes_requests_per_resource_per_interval: f64,
    pub operator_settled_idle_cpu_percent: f64,
    /// The settled window's Admin API reads per second, made again after the operator stopped:
    /// `GET`s of the same policies (`include_usage=true`), started in groups on the operator's
    /// refresh grid (`controller::REFRESH_GRID`) as its refreshes are, through the operator's
    /// client with its rate limit, on one thread running a current-thread runtime like `run`'s,
    /// for one refresh interval. Its CPU (% of a core) is what the reads alone cost on this
    /// machine: a floor under the operator's idle CPU, as the write rate is under convergence.
    pub read_floor_reads_per_second: f64,
    pub read_floor_cpu_percent: f64,
}

struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn spawn(exe: &Path, args: &[String], log: &Path, env: &[(&str, &str)]) -> Result<Child, String> {
    let out = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // The children die with the bench, however it ends.
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .map(Child)
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))
}

/// A free loopback port (0 when none could be bound).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A kubeconfig for `server` (its serving certificate is self-signed) with a bearer token.
pub fn kubeconfig_yaml(server: &str, user: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: {user}\n    namespace: default\ncurrent-context: local\n"
    )
}

/// A local control plane, laid out but not started: etcd and kube-apiserver on free loopback
/// ports, their data, certificates and service-account keys under one folder, and an admin
/// (`system:masters`) token. One definition for `bench --real` and the e2e tests
/// (tests/support/control_plane.rs), which start and watch the processes each their own way.
pub struct PlaneLayout {
    /// Arguments of `etcd`.
    pub etcd_args: Vec<String>,
    /// Arguments of `kube-apiserver` (start it after etcd).
    pub apiserver_args: Vec<String>,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// The admin's bearer token.
    pub token: String,
    /// A kubeconfig for the admin, written into the folder.
    pub kubeconfig: PathBuf,
}

impl PlaneLayout {
    /// Writes the service-account keys, the token file and the kubeconfig into `dir`.
    pub fn new(dir: &Path) -> Result<PlaneLayout, String> {
        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let server = format!("https://127.0.0.1:{api_port}");
        let token = format!("local-{}", uuid::Uuid::new_v4());
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .map(|()| path)
                .map_err(|e| format!("cannot write {name}: {e}"))
        };
        // Service-account keys: the API server signs with the private key (PKCS#8 is accepted
        // there) and verifies with the public key, which it cannot derive from a PKCS#8 file.
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let sa_key = write("sa.key", key.serialize_pem())?;
        let sa_pub = write("sa.pub", key.public_key_pem())?;
        let tokens = write(
            "tokens.csv",
            format!("{token},admin,admin-uid,\"system:masters\"\n"),
        )?;
        let kubeconfig = write("kubeconfig", kubeconfig_yaml(&server, "admin", &token))?;
        let etcd_args = vec![
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=default={peer}"),
            "--log-level=warn".into(),
            "--unsafe-no-fsync".into(),
        ];
        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--service-account-key-file={}", sa_pub.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--authorization-mode=RBAC".into(),
            format!("--token-auth-file={}", tokens.display()),
        ];
        Ok(PlaneLayout {
            etcd_args,
            apiserver_args,
            server,
            token,
            kubeconfig,
        })
    }
}

/// etcd + kube-apiserver from `KUBEBUILDER_ASSETS` (see [`PlaneLayout`]), once ready.
async fn control_plane(dir: &Path) -> Result<(Vec<Child>, PlaneLayout), String> {
    let assets = PathBuf::from(std::env::var_os("KUBEBUILDER_ASSETS").ok_or(
        "--real needs KUBEBUILDER_ASSETS (a folder with etcd and kube-apiserver) or --kubeconfig",
    )?);
    let layout = PlaneLayout::new(dir)?;
    let etcd = spawn(
        &assets.join("etcd"),
        &layout.etcd_args,
        &dir.join("etcd.log"),
        &[],
    )?;
    let apiserver = spawn(
        &assets.join("kube-apiserver"),
        &layout.apiserver_args,
        &dir.join("kube-apiserver.log"),
        &[],
    )?;
    let http = insecure_http()?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ok = http
            .get(format!("{}/readyz", layout.server))
            .bearer_auth(&layout.token)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        if Instant::now() > deadline {
            return Err("kube-apiserver did not become ready within 90 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((vec![apiserver, etcd], layout))
}

fn insecure_http() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| e.to_string())
}

async fn kube_client(kubeconfig: &Path) -> Result<kube::Client, String> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// `apiserver_request_total` summed by `verb resource` (empty without a token: an existing
/// cluster's metrics are not read).
async fn apiserver_requests(
    http: &reqwest::Client,
    server: &str,
    token: &str,
) -> Result<BTreeMap<String, u64>, String> {
    if token.is_empty() {
        return Ok(BTreeMap::new());
    }
    let text = http
        .get(format!("{server}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let subresource = label("subresource");
        let resource = if subresource.is_empty() {
            label("resource")
        } else {
            format!("{}/{subresource}", label("resource"))
        };
        *out.entry(format!("{} {resource}", label("verb")))
            .or_insert(0) += value as u64;
    }
    Ok(out)
}

/// The resources the operator reads or writes (the API server's own housekeeping, such as its
/// endpoints and identity leases, and the bench's scrapes are left out).
const OPERATOR_RESOURCES: [&str; 6] = [
    "usagelimitpolicies",
    "ratelimitpolicies",
    "workspacebudgets",
    "namespaces",
    "events",
    "secrets",
];

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(*before.get(k).unwrap_or(&0));
            let resource = k.split(' ').nth(1).unwrap_or("");
            let ours = OPERATOR_RESOURCES
                .iter()
                .any(|r| resource.split('/').next() == Some(*r));
            (d > 0 && ours).then(|| (k.clone(), d))
        })
        .collect()
}

/// Peak RSS (MiB) and CPU seconds of a process, from /proc.
fn process_figures(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = [11usize, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    (hwm_kib / 1024.0, ticks / 100.0)
}

/// Resources Ready according to the operator's own metrics.
async fn ready_count(http: &reqwest::Client, metrics: &str) -> usize {
    let Ok(resp) = http.get(format!("http://{metrics}/metrics")).send().await else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("portkey_budget_operator_resource_ready{") && l.ends_with(" 1"))
        .count()
}

/// The operator's reconcile errors and outcomes by reason (from its own metrics).
async fn reconcile_reasons(http: &reqwest::Client, metrics: &str) -> BTreeMap<String, u64> {
    let Ok(resp) = http.get(format!("http://{metrics}/metrics")).send().await else {
        return BTreeMap::new();
    };
    let text = resp.text().await.unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let family = if line.starts_with("portkey_budget_operator_reconcile_errors_total{") {
            "error"
        } else if line.starts_with("portkey_budget_operator_reconcile_outcomes_total{") {
            "outcome"
        } else {
            continue;
        };
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_owned()
        };
        let key = format!("{family} {} {}", label("outcome"), label("reason"));
        *out.entry(key.split_whitespace().collect::<Vec<_>>().join(" "))
            .or_default() += value.parse::<f64>().unwrap_or(0.0) as u64;
    }
    out
}

fn policy(i: usize) -> UsageLimitPolicy {
    let spec: UsageLimitPolicySpec = serde_json::from_value(json!({
        "workspace": "bench",
        "type": "cost",
        "creditLimit": 100 + (i % 900),
        "periodicReset": "monthly",
        "conditions": [{"key": "metadata._team", "value": format!("team-{i}")}],
        "groupBy": [{"key": "metadata._user"}]
    }))
    .expect("a valid spec");
    let mut obj = UsageLimitPolicy::new(&format!("budget-{i:05}"), spec);
    obj.metadata.namespace = Some(NAMESPACE.into());
    obj
}

pub async fn run(opts: &RealOptions) -> Result<RealReport, String> {
    let dir = tempfile::Builder::new()
        .prefix("pbo-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let (plane, kubeconfig, server, token) = match &opts.kubeconfig {
        Some(k) => (Vec::new(), k.clone(), String::new(), String::new()),
        None => {
            let (children, layout) = control_plane(dir.path()).await?;
            (children, layout.kubeconfig, layout.server, layout.token)
        }
    };
    let client = kube_client(&kubeconfig).await?;
    let http = insecure_http()?;

    // CRDs and N resources, before the operator starts.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::api::crds() {
        let _ = crds.create(&PostParams::default(), &crd).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let established = crds
            .get("usagelimitpolicies.budgets.portkey-operator.io")
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            break;
        }
        if Instant::now() > deadline {
            return Err("the CRDs were not established within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE,
        "annotations": {crate::api::WORKSPACE_ANNOTATION: "bench"}}}))
    .map_err(|e| e.to_string())?;
    let _ = namespaces.create(&PostParams::default(), &ns).await;
    let ulps: Api<UsageLimitPolicy> = Api::namespaced(client.clone(), NAMESPACE);
    futures::stream::iter(0..opts.policies)
        .map(|i| {
            let ulps = ulps.clone();
            async move { ulps.create(&PostParams::default(), &policy(i)).await }
        })
        .buffer_unordered(32)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not create a bench resource");
            }
        })
        .await;

    // The emulator and the operator.
    let emu_port = free_port();
    let root = format!("http://127.0.0.1:{emu_port}");
    let faults = json!({"latency_ms": opts.latency_ms, "rate_limit_rps": opts.rate_limit, "retry_after_s": 1});
    let _emulator = spawn(
        &opts.exe,
        &[
            "--log-level".into(),
            "warn".into(),
            "emulator".into(),
            "--listen".into(),
            format!("127.0.0.1:{emu_port}"),
            "--workspace".into(),
            format!("{WORKSPACE}:bench:Bench"),
            "--api-key".into(),
            KEY.into(),
            "--faults".into(),
            faults.to_string(),
        ],
        &dir.path().join("emulator.log"),
        &[],
    )?;
    let control = EmulatorControl::new(root.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while control.state().await.is_err() {
        if Instant::now() > deadline {
            return Err("the emulator did not answer within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let k8s_before = apiserver_requests(&http, &server, &token).await?;
    // CPU seconds of [kube-apiserver, etcd] when this bench started them.
    let plane_cpu = || [0, 1].map(|i| Some(process_figures(plane.get(i)?.0.id()?).1));
    let plane_before = plane_cpu();
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let started = Instant::now();
    let operator = spawn(
        &opts.exe,
        &[
            "run".into(),
            "--admin-api-url".into(),
            format!("{root}/v1"),
            "--leader-elect=false".into(),
            "--metrics-bind-address".into(),
            metrics.clone(),
            "--admin-api-write-rate".into(),
            opts.write_rate.to_string(),
            "--admin-api-rate-limit".into(),
            opts.rate_limit.to_string(),
            "--concurrency".into(),
            opts.concurrency.to_string(),
            "--usage-refresh-interval".into(),
            format!("{}s", opts.refresh.as_secs()),
            "--installation-id".into(),
            "bench".into(),
            "--log-level".into(),
            "warn".into(),
        ],
        &dir.path().join("operator.log"),
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap_or_default()),
            ("PORTKEY_API_KEY", KEY),
        ],
    )?;
    let pid = operator.0.id().unwrap_or(0);
    let timeout = Duration::from_secs(120 + opts.policies as u64 / 5);
    let mut quartiles: Vec<f64> = Vec::new();
    let poll = Duration::from_millis((opts.policies as u64 / 10).clamp(100, 1000));
    loop {
        let ready = ready_count(&http, &metrics).await;
        while quartiles.len() < 3 && ready * 4 >= opts.policies * (quartiles.len() + 1) {
            quartiles.push(started.elapsed().as_secs_f64());
        }
        if ready >= opts.policies {
            break;
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "not all {} resources Ready after {timeout:?} (see {})",
                opts.policies,
                dir.path().join("operator.log").display()
            ));
        }
        // Each poll makes the operator encode its whole /metrics page (about 8 series per
        // resource): at 10,000 resources, ten polls a second were a large share of the CPU the
        // bench measured. Poll less often the more resources there are.
        tokio::time::sleep(poll).await;
    }
    let converged = started.elapsed();
    let reconciles = reconcile_reasons(&http, &metrics).await;
    let (_, cpu_converging) = process_figures(pid);
    let plane_converging = plane_cpu();
    let plane_cpu_ms =
        |i: usize| Some((plane_converging[i]? - plane_before[i]?) * 1000.0 / opts.policies as f64);
    let log = control.requests().await?;
    let mut admin_api_calls: BTreeMap<String, u64> = BTreeMap::new();
    for e in &log.data {
        let family = e.path.split('/').nth(3).unwrap_or("?");
        let key = if (200..300).contains(&e.status) {
            format!("{} {family}", e.method)
        } else {
            format!("{} {family} {}", e.method, e.status)
        };
        *admin_api_calls.entry(key).or_default() += 1;
    }
    let k8s_converged = apiserver_requests(&http, &server, &token).await?;
    let kubernetes_requests = diff(&k8s_converged, &k8s_before);
    let per_create = kubernetes_requests
        .iter()
        .filter(|(k, _)| !k.starts_with("WATCH") && !k.starts_with("LIST"))
        .map(|(_, v)| *v)
        .sum::<u64>() as f64
        / opts.policies as f64;

    // Steady state: two refresh intervals with nothing to do; settled: two more.
    let window = || async {
        control.clear_requests().await?;
        let start = Instant::now();
        tokio::time::sleep(opts.refresh * 2).await;
        let length = start.elapsed();
        let (_, cpu) = process_figures(pid);
        let log = control.requests().await?;
        let k8s = apiserver_requests(&http, &server, &token).await?;
        Ok::<_, String>((length, cpu, log, k8s))
    };
    let (steady, cpu_total, steady_log, k8s_steady_end) = window().await?;
    let steady_writes = steady_log.writes() as u64;
    let steady_kubernetes_requests = diff(&k8s_steady_end, &k8s_converged);
    let steady_total: u64 = steady_kubernetes_requests.values().sum();
    let (settled, cpu_settled, settled_log, k8s_settled_end) = window().await?;
    let settled_writes = settled_log.writes() as u64;
    let settled_total: u64 = diff(&k8s_settled_end, &k8s_steady_end).values().sum();
    let (rss, _) = process_figures(pid);
    drop(operator);
    let reads_per_second = (settled_log.total - settled_writes) as f64 / settled.as_secs_f64();
    let mut client =
        crate::portkey::ClientConfig::new(format!("{root}/v1"), crate::portkey::ApiKey::new(KEY));
    client.max_requests_per_second = Some(opts.rate_limit);
    let read_floor = read_floor(client, WORKSPACE, reads_per_second, opts.refresh).await?;
    let floor = opts.policies as f64 / opts.write_rate.max(1) as f64;
    Ok(RealReport {
        policies: opts.policies,
        seconds_to_all_ready: converged.as_secs_f64(),
        seconds_to_quartiles: quartiles,
        reconciles,
        floor_seconds: floor,
        ratio: converged.as_secs_f64() / floor,
        admin_api_calls,
        kubernetes_requests,
        kubernetes_requests_per_create: per_create,
        steady_seconds: steady.as_secs_f64(),
        steady_kubernetes_requests,
        steady_kubernetes_requests_per_resource_per_interval: steady_total as f64
            / opts.policies as f64
            / 2.0,
        steady_admin_api_reads: steady_log.total - steady_writes,
        steady_admin_api_writes: steady_writes,
        operator_peak_rss_mib: rss,
        operator_cpu_seconds_converging: cpu_converging,
        apiserver_cpu_ms_per_resource: plane_cpu_ms(0),
        etcd_cpu_ms_per_resource: plane_cpu_ms(1),
        operator_idle_cpu_percent: (cpu_total - cpu_converging) / steady.as_secs_f64() * 100.0,
        settled_admin_api_reads: settled_log.total - settled_writes,
        settled_admin_api_writes: settled_writes,
        settled_kubernetes_requests_per_resource_per_interval: settled_total as f64
            / opts.policies as f64
            / 2.0,
        operator_settled_idle_cpu_percent: (cpu_settled - cpu_total) / settled.as_secs_f64()
            * 100.0,
        read_floor_reads_per_second: reads_per_second,
        read_floor_cpu_percent: read_floor.cpu_percent,
    })
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// What [`read_floor`] measured.
#[derive(Debug, Clone, Copy)]
pub struct ReadFloor {
    /// Policy `GET`s made (all answered 2xx).
    pub reads: u64,
    /// CPU of the thread that made them, in % of a core over the measured time.
    pub cpu_percent: f64,
}

/// The read floor (see [`RealReport::read_floor_cpu_percent`]): `reads_per_second` `GET`s
/// (with usage) of the policies of `workspace`, cycling through them, started on the refresh
/// grid (each point of it starts the reads due since the last, together, as the client's rate
/// limit lets them), for `length`, through a client built from `config`, on a thread of its own
/// with a current-thread runtime; the thread's CPU is measured. The policies are listed first,
/// outside the measured time.
pub async fn read_floor(
    config: crate::portkey::ClientConfig,
    workspace: &str,
    reads_per_second: f64,
    length: Duration,
) -> Result<ReadFloor, String> {
    use crate::portkey::{GetOptions, ListFilter, PortkeyClient};
    let ids: Vec<String> = PortkeyClient::new(config.clone())
        .map_err(|e| e.to_string())?
        .usage_limits()
        .list(&ListFilter {
            workspace_id: Some(workspace.into()),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|p| p.id)
        .collect();
    if ids.is_empty() || !reads_per_second.is_finite() || reads_per_second <= 0.0 {
        return Err("no policies to read, or no read rate".into());
    }
    let per_step = reads_per_second * crate::controller::REFRESH_GRID.as_secs_f64();
    let answered = |done: Result<
        Result<(), crate::portkey::PortkeyError>,
        tokio::task::JoinError,
    >| { done.map_err(|e| e.to_string())?.map_err(|e| e.to_string()) };
    let thread = std::thread::spawn(move || {
        // The operator's timer slack (set in `run`), so this stays the cost of its reads.
        crate::portkey::retry::allow_timer_slack();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        // A client of this runtime (a pooled connection runs on the runtime that opened it),
        // and the work as a spawned task, as in `run` (see main.rs).
        let client = PortkeyClient::new(config).map_err(|e| e.to_string())?;
        let work = async move {
            let client = std::sync::Arc::new(client);
            let mut ticks = tokio::time::interval(crate::controller::REFRESH_GRID);
            let mut pending = tokio::task::JoinSet::new();
            let (mut reads, mut owed) = (0, 0.0);
            let mut ids = ids.iter().cycle();
            let (start, cpu) = (Instant::now(), thread_cpu());
            loop {
                ticks.tick().await;
                if start.elapsed() >= length {
                    break;
                }
                owed += per_step;
                while owed >= 1.0 {
                    owed -= 1.0;
                    let (client, id) = (client.clone(), ids.next().cloned().unwrap_or_default());
                    pending.spawn(async move {
                        let options = GetOptions {
                            status: None,
                            include_usage: true,
                        };
                        client.usage_limits().get(&id, options).await.map(drop)
                    });
                    reads += 1;
                }
                while let Some(done) = pending.try_join_next() {
                    answered(done)?;
                }
            }
            while let Some(done) = pending.join_next().await {
                answered(done)?;
            }
            let cpu = thread_cpu() - cpu;
            Ok::<_, String>(ReadFloor {
                reads,
                cpu_percent: cpu.as_secs_f64() / start.elapsed().as_secs_f64() * 100.0,
            })
        };
        runtime
            .block_on(async { tokio::spawn(work).await })
            .map_err(|e| e.to_string())?
    });
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| "the read floor thread panicked".to_string())?
}

/// The report as a table.
pub fn render(r: &RealReport) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:<58} {v}\n"));
    row("resources", r.policies.to_string());
    row(
        "time until all Ready (s)",
        format!("{:.1}", r.seconds_to_all_ready),
    );
    row(
        "  25 % / 50 % / 75 % Ready after (s)",
        r.seconds_to_quartiles
            .iter()
            .map(|s| format!("{s:.1}"))
            .collect::<Vec<_>>()
            .join(" / "),
    );
    row(
        "floor: creates at the write rate (s)",
        format!("{:.1}", r.floor_seconds),
    );
    row("ratio", format!("{:.2}", r.ratio));
    row(
        "Kubernetes API requests per create (excl. list/watch)",
        format!("{:.2}", r.kubernetes_requests_per_create),
    );
    for (k, v) in &r.kubernetes_requests {
        row(&format!("  converging: {k}"), v.to_string());
    }
    for (k, v) in &r.reconciles {
        row(&format!("  reconciles: {k}"), v.to_string());
    }
    for (k, v) in &r.admin_api_calls {
        row(&format!("  Admin API: {k}"), v.to_string());
    }
    row(
        "steady state window (s)",
        format!("{:.1}", r.steady_seconds),
    );
    row(
        "steady Kubernetes requests per resource per interval",
        format!(
            "{:.4}",
            r.steady_kubernetes_requests_per_resource_per_interval
        ),
    );
    for (k, v) in &r.steady_kubernetes_requests {
        row(&format!("  steady: {k}"), v.to_string());
    }
    row(
        "steady Admin API reads / writes",
        format!(
            "{} / {}",
            r.steady_admin_api_reads, r.steady_admin_api_writes
        ),
    );
    row(
        "operator peak RSS (MiB)",
        format!("{:.1}", r.operator_peak_rss_mib),
    );
    row(
        "operator CPU while converging (s)",
        format!("{:.1}", r.operator_cpu_seconds_converging),
    );
    if let (Some(api), Some(etcd)) = (r.apiserver_cpu_ms_per_resource, r.etcd_cpu_ms_per_resource) {
        row(
            "kube-apiserver / etcd CPU until all Ready, per resource (ms)",
            format!("{api:.1} / {etcd:.1}"),
        );
    }
    row(
        "operator idle CPU (% of a core)",
        format!("{:.2}", r.operator_idle_cpu_percent),
    );
    row(
        "settled: Kubernetes requests per resource per interval",
        format!(
            "{:.4}",
            r.settled_kubernetes_requests_per_resource_per_interval
        ),
    );
    row(
        "settled: Admin API reads / writes",
        format!(
            "{} / {}",
            r.settled_admin_api_reads, r.settled_admin_api_writes
        ),
    );
    row(
        "settled: operator idle CPU (% of a core)",
        format!("{:.2}", r.operator_settled_idle_cpu_percent),
    );
    row(
        "floor: the settled reads alone (reads/s, % of a core)",
        format!(
            "{:.1}, {:.2}",
            r.read_floor_reads_per_second, r.read_floor_cpu_percent
        ),
    );
    out
}
