//! A real Kubernetes control plane for e2e tests, envtest-style: `KUBEBUILDER_ASSETS` names a
//! folder with `etcd`, `kube-apiserver`, `kubectl` (and `kube-controller-manager`, for tests that
//! delete namespaces). Each `ControlPlane` starts its own etcd and kube-apiserver (and optionally
//! kube-controller-manager) on free loopback ports with their own data dir.
//!
//! - Fails fast: while waiting for readiness, and on every failed kubectl call, a child that has
//!   exited is reported at once with the tail of its log.
//! - Cleans up: every child is killed on drop (also when a test panics), and each child gets
//!   `PR_SET_PDEATHSIG = SIGKILL`, so none outlives the test process even when it is killed.
//! - Under `CI=true` missing assets are a failure, never a skip.

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use portkey_budget_operator::bench_real::{PlaneLayout, free_port, kubeconfig_yaml};

/// True when running under CI (`CI=true`): a missing control plane is then a failure.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The assets folder, when the e2e tests can run.
pub fn assets() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("KUBEBUILDER_ASSETS")?);
    ["etcd", "kube-apiserver", "kubectl"]
        .iter()
        .all(|b| dir.join(b).is_file())
        .then_some(dir)
}

/// The assets folder, or `None` after one skip line; under `CI=true` a missing folder panics.
pub fn require_assets(test: &str) -> Option<PathBuf> {
    if let Some(dir) = assets() {
        return Some(dir);
    }
    let what = "KUBEBUILDER_ASSETS is not set to a folder with kube-apiserver, etcd and kubectl \
                (KUBEBUILDER_ASSETS=\"$(../shared/k8s/envtest.sh)\", or setup-envtest use 1.36.x -p path)";
    if under_ci() {
        panic!("{test}: {what}; under CI=true the e2e tests never skip");
    }
    let _ = writeln!(std::io::stderr(), "{test}: skipped ({what})");
    None
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` with `stdin` written to its standard input; its output.
pub fn output_with_stdin(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// Spawns `cmd` with its output in `log`, killed by the kernel if this process dies.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()))
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

#[derive(Default, Clone, Copy)]
pub struct Options {
    /// Also run kube-controller-manager (namespace deletion, garbage collection).
    pub controller_manager: bool,
}

pub struct ControlPlane {
    pub assets: PathBuf,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub server: String,
    pub token: String,
    procs: Mutex<Vec<Proc>>,
}

const KUBECTL_TIMEOUT: &str = "--request-timeout=30s";

impl ControlPlane {
    pub fn start(assets: PathBuf) -> ControlPlane {
        Self::start_with(assets, Options::default())
    }

    pub fn start_with(assets: PathBuf, options: Options) -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("pbo-e2e-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        // The same files and command lines as `bench --real`.
        let layout = PlaneLayout::new(&root).unwrap();
        let cp = ControlPlane {
            assets: assets.clone(),
            dir,
            kubeconfig: layout.kubeconfig,
            server: layout.server,
            token: layout.token,
            procs: Mutex::new(Vec::new()),
        };
        let mut etcd = Command::new(assets.join("etcd"));
        etcd.args(&layout.etcd_args);
        cp.spawn("etcd", etcd);
        let mut apiserver = Command::new(assets.join("kube-apiserver"));
        apiserver.args(&layout.apiserver_args);
        cp.spawn("kube-apiserver", apiserver);
        cp.wait_ready(Duration::from_secs(90));

        if options.controller_manager {
            let bin = assets.join("kube-controller-manager");
            assert!(
                bin.is_file(),
                "{} is missing: namespace deletion needs kube-controller-manager",
                bin.display()
            );
            let mut kcm = Command::new(bin);
            kcm.args([
                format!("--kubeconfig={}", cp.kubeconfig.display()),
                "--controllers=namespace,garbagecollector".into(),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()),
                format!("--cert-dir={}", root.join("kcm-certs").display()),
                "--concurrent-namespace-syncs=2".into(),
            ]);
            cp.spawn("kube-controller-manager", kcm);
        }
        cp
    }

    fn spawn(&self, name: &'static str, cmd: Command) {
        let log = self.dir.path().join(format!("{name}.log"));
        let child = spawn_logged(cmd, &log);
        self.procs.lock().unwrap().push(Proc { name, child, log });
    }

    /// Panics with the log tail of any control-plane process that has exited.
    pub fn check_alive(&self) {
        let mut procs = self.procs.lock().unwrap();
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    p.name,
                    p.log.display(),
                    tail(&p.log, 40)
                );
            }
        }
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive();
            let out = self.kubectl_raw(&["get", "--raw", "/readyz"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "kube-apiserver not ready after {timeout:?}:\n{}",
                    tail(&self.dir.path().join("kube-apiserver.log"), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A kubectl command with this control plane's kubeconfig.
    pub fn kubectl_cmd(&self) -> Command {
        let mut cmd = Command::new(self.assets.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(KUBECTL_TIMEOUT);
        cmd
    }

    pub fn kubectl_raw(&self, args: &[&str]) -> Output {
        self.kubectl_cmd()
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    /// Runs kubectl; panics with its output when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_raw(args);
        if !out.status.success() {
            self.check_alive();
            panic!(
                "kubectl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl <args> -f -` with `stdin`; returns the raw output.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut cmd = self.kubectl_cmd();
        cmd.args(args).args(["-f", "-"]);
        output_with_stdin(cmd, stdin)
    }

    /// Waits (60 s) until every CRD is `Established`.
    pub fn wait_crds_established(&self) {
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ]);
    }

    /// `kubectl apply -f -` with a manifest on stdin; panics when it fails.
    pub fn apply(&self, manifest: &str) -> String {
        let out = self.kubectl_stdin(&["apply"], manifest);
        if !out.status.success() {
            self.check_alive();
            panic!(
                "kubectl apply failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply` that is expected to be refused; returns the error text.
    pub fn apply_refused(&self, manifest: &str) -> String {
        let out = self.kubectl_stdin(&["apply"], manifest);
        assert!(
            !out.status.success(),
            "kubectl apply was accepted but should be refused:\n{manifest}"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A kube client for this control plane (as the admin).
    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig).await
    }

    /// Installs the committed CRDs (`crds/`) and waits until they are served.
    pub fn install_crds(&self) {
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        self.install_crds_from(&crds);
    }

    /// Applies every CRD in `dir` and waits until each is `Established`.
    pub fn install_crds_from(&self, dir: &Path) {
        self.kubectl(&["apply", "-f", dir.to_str().unwrap()]);
        self.wait_crds_established();
    }

    /// A kubeconfig for a ServiceAccount, with a token from the TokenRequest API.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.kubectl(&["create", "token", name, "-n", namespace, "--duration=2h"]);
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{namespace}-{name}"));
        let yaml = kubeconfig_yaml(&self.server, name, token.trim());
        std::fs::write(
            &path,
            yaml.replace("namespace: default", &format!("namespace: {namespace}")),
        )
        .unwrap();
        path
    }

    /// Whether `user` may `verb` the `resource` (as `kubectl auth can-i --as`).
    pub fn can_i(&self, user: &str, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        self.can_i_sub(user, verb, resource, None, namespace)
    }

    /// [`Self::can_i`] on a subresource (e.g. `status`).
    pub fn can_i_sub(
        &self,
        user: &str,
        verb: &str,
        resource: &str,
        subresource: Option<&str>,
        namespace: Option<&str>,
    ) -> bool {
        let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
        if let Some(sub) = subresource {
            args.extend(["--subresource", sub]);
        }
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        let out = self.kubectl_raw(&args);
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match answer.as_str() {
            "yes" => true,
            "no" => false,
            _ => panic!(
                "kubectl auth can-i {args:?}: {answer} {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        // Stop in reverse order: controller-manager, apiserver, etcd.
        while let Some(mut p) = procs.pop() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
