//! The few lines every e2e test starts from: a control plane with the CRDs, a test namespace,
//! an emulator seeded with one workspace, a client for it, and operator processes that are
//! killed when dropped.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use portkey_budget_operator::emulator::{self, EmulatorConfig, EmulatorHandle, SeedWorkspace};
use portkey_budget_operator::plan::marker::marker_of;
use portkey_budget_operator::portkey::*;

use super::control_plane::{ControlPlane, Options, require_assets, spawn_logged, tail, under_ci};
#[allow(unused_imports)]
pub use super::fixtures::*;

pub const WS: &str = "3a1d4e8a-2222-4c3b-9d2e-0000000000e2";
pub const WS_SLUG: &str = "e2e";
pub const OTHER_WS: &str = "7b2e5f9b-3333-4d4c-8e3f-0000000000e3";
pub const OTHER_WS_SLUG: &str = "other";
pub const KEY: &str = "e2e-admin-key";
pub const NS: &str = "e2e-budgets";
/// A second tenant namespace, never bound to a workspace (tenancy tests). It sorts before `NS`,
/// so of two resources created in the same second, the one here counts as the older.
pub const NS2: &str = "e2e-another";
/// The namespace binding annotation (set by cluster admins only).
pub const WORKSPACE_ANNOTATION: &str = "budgets.portkey-operator.io/workspace";
/// The Lease namespace of the operators under test.
pub const OPERATOR_NS: &str = "portkey-operator-system";

/// How long any single e2e test may run before it fails (its children are then killed).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(420);

pub struct Env {
    pub cp: ControlPlane,
    pub emu: EmulatorHandle,
    pub portkey: PortkeyClient,
}

impl Env {
    /// `None` (after one skip line) without `KUBEBUILDER_ASSETS`, except under `CI=true`.
    pub async fn start(test: &str) -> Option<Env> {
        Self::start_with(test, Options::default()).await
    }

    pub async fn start_with(test: &str, options: Options) -> Option<Env> {
        let assets = require_assets(test)?;
        if options.controller_manager && !assets.join("kube-controller-manager").is_file() {
            let what = "KUBEBUILDER_ASSETS has no kube-controller-manager (setup-envtest does not \
                        ship it; ../shared/k8s/envtest.sh does)";
            assert!(
                !under_ci(),
                "{test}: {what}; under CI=true the e2e tests never skip"
            );
            eprintln!("{test}: skipped ({what})");
            return None;
        }
        let cp = ControlPlane::start_with(assets, options);
        cp.install_crds();
        let emu = emulator::spawn(EmulatorConfig {
            api_keys: vec![KEY.into()],
            workspaces: vec![
                SeedWorkspace {
                    id: WS.into(),
                    slug: WS_SLUG.into(),
                    name: "E2E".into(),
                },
                SeedWorkspace {
                    id: OTHER_WS.into(),
                    slug: OTHER_WS_SLUG.into(),
                    name: "Other team".into(),
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap();
        let portkey =
            PortkeyClient::new(ClientConfig::new(emu.base_url(), ApiKey::new(KEY))).unwrap();
        cp.kubectl(&["create", "namespace", OPERATOR_NS]);
        let env = Env { cp, emu, portkey };
        // The cluster admin binds the test namespace to the e2e workspace: an unbound namespace
        // gets no workspace by default (#28).
        env.create_namespace(NS, Some(WS_SLUG));
        Some(env)
    }

    /// Creates a namespace, bound by the cluster admin to `binding` (a comma-separated list of
    /// workspaces) when given.
    pub fn create_namespace(&self, ns: &str, binding: Option<&str>) {
        self.cp.kubectl(&["create", "namespace", ns]);
        if let Some(workspaces) = binding {
            self.bind(ns, workspaces);
        }
    }

    /// Binds (or rebinds) a namespace to workspaces, as the cluster admin.
    pub fn bind(&self, ns: &str, workspaces: &str) {
        self.cp.kubectl(&[
            "annotate",
            "namespace",
            ns,
            "--overwrite",
            &format!("{WORKSPACE_ANNOTATION}={workspaces}"),
        ]);
    }

    /// Starts the operator binary (leader election on, short lease and intervals).
    pub fn operator(&self, log_name: &str) -> Operator {
        self.operator_with(log_name, log_name, &[])
    }

    /// Starts the operator with `POD_NAME` = `pod` (its Lease identity prefix) and extra flags.
    pub fn operator_with(&self, log_name: &str, pod: &str, extra: &[&str]) -> Operator {
        Operator::start(
            &self.cp,
            &self.cp.kubeconfig,
            &self.emu.base_url(),
            log_name,
            pod,
            &[
                &[
                    "--leader-election-namespace",
                    OPERATOR_NS,
                    "--leader-election-lease-duration",
                    "4s",
                ],
                extra,
            ]
            .concat(),
            &[("PORTKEY_API_KEY", KEY)],
        )
    }

    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.cp.dir.path().join(name)).unwrap_or_default()
    }

    /// All active usage-limits policies of a workspace.
    pub async fn active_usage(&self, ws: &str) -> Vec<UsageLimitsPolicy> {
        let active = active_in(ws);
        self.portkey.usage_limits().list(&active).await.unwrap()
    }

    pub async fn active_rates(&self, ws: &str) -> Vec<RateLimitsPolicy> {
        let active = active_in(ws);
        self.portkey.rate_limits().list(&active).await.unwrap()
    }

    /// The limit of the one active policy carrying the marker of `NS/name`; `None` while there
    /// is not exactly one.
    pub async fn owned_limit(&self, name: &str) -> Option<rust_decimal::Decimal> {
        match self.owned_usage(name).await.as_slice() {
            [one] => Some(one.credit_limit),
            _ => None,
        }
    }

    /// The raw key a Secret in `NS` holds and the key id it is annotated with (read by the
    /// admin); `None` when there is no such Secret.
    pub fn secret_key(&self, name: &str) -> Option<(String, String)> {
        let template = r#"go-template={{index .data "PORTKEY_API_KEY" | base64decode}} {{index .metadata.annotations "budgets.portkey-operator.io/key-id"}}"#;
        let out = self
            .cp
            .kubectl_raw(&["get", "secret", name, "-n", NS, "-o", template]);
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (raw, id) = text.trim().split_once(' ')?;
        Some((raw.to_owned(), id.to_owned()))
    }

    /// Active usage-limits policies carrying the marker of `NS/name` (any installation).
    pub async fn owned_usage(&self, name: &str) -> Vec<UsageLimitsPolicy> {
        let owner = format!("{NS}/{name}");
        self.active_usage(WS)
            .await
            .into_iter()
            .filter(|p| {
                p.name
                    .as_deref()
                    .and_then(marker_of)
                    .is_some_and(|m| m.kind == "ulp" && m.owner == owner)
            })
            .collect()
    }

    /// API keys of workspace `ws` carrying the marker of the ApiKeyBudget `ns/name`.
    pub async fn marked_keys(&self, ws: &str, ns: &str, name: &str) -> Vec<ApiKeyObject> {
        let owner = format!("{ns}/{name}");
        let keys = self.portkey.list_api_keys(Some(ws)).await.unwrap();
        keys.into_iter()
            .filter(|k| {
                k.name
                    .as_deref()
                    .and_then(marker_of)
                    .is_some_and(|m| m.kind == "akb" && m.owner == owner)
            })
            .collect()
    }

    /// `kubectl get <kind> <name> -o jsonpath=<path>` in `NS` (or cluster-wide when `ns` is
    /// `None`).
    pub fn jsonpath(&self, kind: &str, name: &str, ns: Option<&str>, path: &str) -> String {
        let expr = format!("jsonpath={path}");
        let mut args = vec!["get", kind, name, "-o", &expr];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        self.cp.kubectl(&args)
    }

    /// `kubectl patch --type=merge` of a resource (in `ns`, or cluster-scoped).
    pub fn merge_patch(&self, kind: &str, name: &str, ns: Option<&str>, patch: &str) {
        let mut args = vec!["patch", kind, name, "--type=merge", "-p", patch];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        self.cp.kubectl(&args);
    }

    /// The `reason` of a condition of a resource.
    pub fn reason(&self, kind: &str, name: &str, ns: Option<&str>, condition: &str) -> String {
        self.jsonpath(
            kind,
            name,
            ns,
            &format!(r#"{{.status.conditions[?(@.type=="{condition}")].reason}}"#),
        )
    }

    /// `kubectl wait --for=condition=Ready` (in `NS` unless cluster-scoped).
    pub fn wait_ready(&self, resource: &str, ns: Option<&str>) {
        let mut args = vec!["wait", "--for=condition=Ready", resource, "--timeout=60s"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        self.cp.kubectl(&args);
    }

    /// A condition of a resource: (status, reason, message); empty strings when it is absent.
    pub fn condition(
        &self,
        kind: &str,
        name: &str,
        ns: Option<&str>,
        condition: &str,
    ) -> (String, String, String) {
        let field = |f: &str| {
            self.jsonpath(
                kind,
                name,
                ns,
                &format!(r#"{{.status.conditions[?(@.type=="{condition}")].{f}}}"#),
            )
        };
        (field("status"), field("reason"), field("message"))
    }

    /// The conditions of a resource as JSON (for failure messages).
    pub fn conditions_json(&self, kind: &str, name: &str, ns: Option<&str>) -> String {
        let mut args = vec!["get", kind, name, "-o", "jsonpath={.status.conditions}"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let out = self.cp.kubectl_raw(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        let Ok(serde_json::Value::Array(conditions)) = serde_json::from_str(&text) else {
            return format!("{text}{}", String::from_utf8_lossy(&out.stderr));
        };
        conditions
            .iter()
            .map(|c| {
                let field = |f: &str| c[f].as_str().unwrap_or_default().to_owned();
                let message: String = field("message").chars().take(400).collect();
                format!(
                    "{}={} {}: {message}",
                    field("type"),
                    field("status"),
                    field("reason")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Waits (60 s) until `Ready` is `True`; on timeout panics with the resource's conditions.
    pub async fn wait_ready_true(&self, kind: &str, name: &str, ns: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.condition(kind, name, ns, "Ready").0 != "True" {
            assert!(
                Instant::now() < deadline,
                "{kind}/{name} did not become Ready within 60s; conditions: {}",
                self.conditions_json(kind, name, ns)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls `check` like [`eventually`]; on timeout panics with the conditions of `resource`
    /// (kind, name, namespace) and the last lines of the operators' logs.
    pub async fn until<T, F, Fut>(
        &self,
        resource: (&str, &str, Option<&str>),
        what: &str,
        timeout: Duration,
        check: F,
    ) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        match poll(timeout, check).await {
            Some(v) => v,
            None => {
                let (kind, name, ns) = resource;
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\n{kind}/{name}: {}\n{}",
                    self.conditions_json(kind, name, ns),
                    self.operator_logs(15)
                );
            }
        }
    }

    /// The last `n` lines of every operator log of this test.
    pub fn operator_logs(&self, n: usize) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.cp.dir.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.retain(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("operator") && f.ends_with(".log"))
        });
        logs.sort();
        logs.iter()
            .map(|p| format!("--- {}:\n{}", p.display(), tail(p, n)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until a condition of a resource has `reason`.
    pub async fn wait_reason(
        &self,
        kind: &str,
        name: &str,
        ns: Option<&str>,
        cond: &str,
        reason: &str,
    ) {
        eventually(
            &format!("{kind}/{name} {cond} reason {reason}"),
            Duration::from_secs(60),
            || async { (self.reason(kind, name, ns, cond) == reason).then_some(()) },
        )
        .await
    }
}

pub fn active_in(ws: &str) -> ListFilter {
    ListFilter {
        workspace_id: Some(ws.into()),
        status: Some(PolicyStatus::Active),
        ..Default::default()
    }
}

/// An operator process, killed (SIGKILL) when dropped.
pub struct Operator {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Operator {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        _cp: &ControlPlane,
        kubeconfig: &Path,
        base_url: &str,
        log_name: &str,
        pod: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        let log = _cp.dir.path().join(log_name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portkey-budget-operator"));
        cmd.args(["run", "--admin-api-url", base_url]);
        // Defaults for tests; a flag given in `extra` replaces its default.
        for (flag, value) in [
            ("--usage-refresh-interval", "2s"),
            ("--resync-interval", "2s"),
            ("--create-pending-grace", "5s"),
            ("--admin-api-timeout", "20s"),
            ("--metrics-bind-address", "127.0.0.1:0"),
        ] {
            let given = extra
                .iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
            if !given {
                cmd.args([flag, value]);
            }
        }
        cmd.args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", pod)
            // `PBO_E2E_RUST_LOG` (e.g. `portkey_budget_operator=debug`) for a closer look.
            .env(
                "RUST_LOG",
                std::env::var("PBO_E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("PORTKEY_API_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = spawn_logged(cmd, &log);
        Operator {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, then reap.
    pub fn kill(mut self) {
        self.stop();
    }

    /// SIGTERM; waits (bounded) for the exit and returns its status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.pid().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = child.try_wait().unwrap() {
                self.child = None;
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "the operator did not stop on SIGTERM:\n{}",
                tail(&self.log, 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (at most `timeout`) for the process to exit on its own; its exit status, or
    /// `None` if it is still running.
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(exit) = child.try_wait().unwrap() {
                self.child = None;
                return Some(exit);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Panics with the log tail when the process has exited.
    pub fn check_alive(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("the operator exited ({status}):\n{}", tail(&self.log, 40));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` every 200 ms until it yields a value; `None` once `timeout` has passed.
async fn poll<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `check` until it yields a value, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let found = poll(timeout, check).await;
    found.unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for: {what}"))
}

/// An e2e test: a fresh [`Env`] (or one skip line, see [`Env::start`]) handed to `body`, run
/// with the e2e time limit ([`bounded`]); the environment is dropped (and so its control
/// plane and operators killed) with the body.
pub async fn e2e<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    e2e_with(test, Options::default(), body).await
}

/// [`e2e`] with control-plane options.
pub async fn e2e_with<F, Fut>(test: &str, options: Options, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(env) = Env::start_with(test, options).await else {
        return;
    };
    bounded(test, body(env)).await;
}

/// Runs a test body with the e2e time limit; on timeout it panics, and dropping the body drops
/// (and so kills) its control plane and operators.
pub async fn bounded<F: Future<Output = ()>>(test: &str, body: F) {
    if tokio::time::timeout(TEST_TIMEOUT, body).await.is_err() {
        panic!("{test}: timed out after {TEST_TIMEOUT:?}");
    }
}
