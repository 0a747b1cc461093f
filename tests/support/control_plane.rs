//! A real Kubernetes control plane for e2e tests, envtest-style: when `KUBEBUILDER_ASSETS` names
//! a folder with `etcd`, `kube-apiserver` and `kubectl`, start etcd and kube-apiserver on free
//! loopback ports with their own data dir, and stop them on drop. There is no controller-manager,
//! scheduler or kubelet: namespaces never finish deleting and pods never run.

#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The assets folder, when the e2e tests can run.
pub fn assets() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("KUBEBUILDER_ASSETS")?);
    ["etcd", "kube-apiserver", "kubectl"]
        .iter()
        .all(|b| dir.join(b).is_file())
        .then_some(dir)
}

/// One line saying the test was skipped, written past libtest's output capture.
pub fn print_skip(test: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped (KUBEBUILDER_ASSETS is not set to a folder with kube-apiserver, etcd and kubectl)"
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct ControlPlane {
    pub assets: PathBuf,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub server: String,
    pub token: String,
    etcd: Child,
    apiserver: Child,
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

impl ControlPlane {
    pub fn start(assets: PathBuf) -> ControlPlane {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = spawn(
            &assets.join("etcd"),
            &[
                format!("--data-dir={}", root.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--log-level=warn".into(),
            ],
            &root.join("etcd.log"),
        );

        // Service-account signing key (ECDSA P-256, PKCS#8 PEM); the apiserver derives the
        // public key from the same file.
        let key = rcgen::KeyPair::generate().unwrap();
        let sa_key = root.join("sa.key");
        std::fs::write(&sa_key, key.serialize_pem()).unwrap();
        let token = format!("e2e-{}", uuid::Uuid::new_v4());
        let tokens = root.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!("{token},admin,admin-uid,\"system:masters\"\n"),
        )
        .unwrap();
        let apiserver = spawn(
            &assets.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--cert-dir={}", root.join("certs").display()),
                format!("--service-account-key-file={}", sa_key.display()),
                format!("--service-account-signing-key-file={}", sa_key.display()),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--authorization-mode=RBAC".into(),
                format!("--token-auth-file={}", tokens.display()),
            ],
            &root.join("kube-apiserver.log"),
        );
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = root.join("kubeconfig");
        let mut f = std::fs::File::create(&kubeconfig).unwrap();
        write!(
            f,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: admin\n    namespace: default\ncurrent-context: e2e\n"
        )
        .unwrap();
        let cp = ControlPlane {
            assets,
            dir,
            kubeconfig,
            server,
            token,
            etcd,
            apiserver,
        };
        cp.wait_ready(Duration::from_secs(90));
        cp
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.kubectl_raw(&["get", "--raw", "/readyz"]);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("kube-apiserver.log"))
                    .unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!("kube-apiserver not ready after {timeout:?}:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn kubectl_raw(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.assets.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    /// Runs kubectl; panics with its output when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_raw(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` with a manifest on stdin.
    pub fn apply(&self, manifest: &str) -> String {
        let mut child = Command::new(self.assets.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(manifest.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A kube client for this control plane.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Installs the committed CRDs and waits until they are served.
    pub fn install_crds(&self) {
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        self.kubectl(&["apply", "-f", crds.to_str().unwrap()]);
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ]);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}
