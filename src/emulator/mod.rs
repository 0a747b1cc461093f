//! A local Portkey Admin API emulator: real HTTP on loopback, in-memory state.
//!
//! It serves the Admin API paths the operator uses under `/v1` and behaves as
//! `docs/admin-api.md` says Portkey does. Test and demo controls live under
//! `/_emulator/` (not part of Portkey). See docs/emulator.md.

pub mod control;
pub mod keys;
pub mod schedule;
pub mod state;

mod faults;
mod http;
mod seed;

pub use faults::*;
use http::*;
pub use seed::*;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query, Request, State as AxState};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use jiff::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use control::EmulatorControl;
use state::{ApiError, ApiResult, State, object};

use crate::portkey::{
    API_KEY_HEADER, BucketStatus, ListResponse, PolicyStatus, RateLimitType, RateLimitUnit,
    UsageLimitType, Workspace,
};

/// Emulator settings.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub listen: SocketAddr,
    /// Accepted API keys; empty = any non-empty key.
    pub api_keys: Vec<String>,
    pub workspaces: Vec<SeedWorkspace>,
    /// Workspace API keys to start with (made once: a key of that name already in the
    /// workspace, e.g. from the state file, is kept).
    pub seed_api_keys: Vec<SeedApiKey>,
    /// Keep state across restarts in this JSON file.
    pub state_file: Option<PathBuf>,
    /// Faults in force from the first request (see [`Faults::from_json`]).
    pub faults: Faults,
}

impl EmulatorConfig {
    /// Adds a [`Seed`]: its workspaces, API keys and accepted Admin API keys.
    pub fn seed(mut self, seed: Seed) -> Self {
        let mut all = Seed {
            admin_api_keys: std::mem::take(&mut self.api_keys),
            workspaces: std::mem::take(&mut self.workspaces),
            api_keys: std::mem::take(&mut self.seed_api_keys),
        };
        all.merge(seed);
        self.api_keys = all.admin_api_keys;
        self.workspaces = all.workspaces;
        self.seed_api_keys = all.api_keys;
        self
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            api_keys: Vec::new(),
            workspaces: Vec::new(),
            seed_api_keys: Vec::new(),
            state_file: None,
            faults: Faults::default(),
        }
    }
}

/// One Admin API request as the emulator saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLogEntry {
    pub seq: u64,
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query: Option<String>,
    pub status: u16,
}

/// Entries kept in memory; the total count is exact beyond it.
const MAX_LOG_ENTRIES: usize = 500_000;

#[derive(Default)]
struct RequestLog {
    entries: Vec<RequestLogEntry>,
    total: u64,
}

struct FaultState {
    faults: Faults,
    limiter: Option<DefaultDirectRateLimiter>,
    rng: StdRng,
}

struct Shared {
    state: Mutex<State>,
    faults: Mutex<FaultState>,
    log: Mutex<RequestLog>,
    /// Recent creates and updates, for the consistency faults.
    recent: Mutex<HashMap<String, RecentWrite>>,
    /// Accepted keys (changeable through the control API, to rotate keys in tests).
    api_keys: Mutex<Vec<String>>,
    state_file: Option<PathBuf>,
}

/// What a consistency fault needs to know of a recent write to one policy id.
#[derive(Default)]
struct RecentWrite {
    created: Option<std::time::Instant>,
    /// The version before the last PUT, and when that PUT happened.
    previous: Option<(std::time::Instant, Value)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler must not take the whole emulator down with a poisoned lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// The page-size cap fault, if set.
    fn page_cap(&self) -> Option<usize> {
        lock(&self.faults).faults.page_size_cap
    }

    fn faults(&self) -> Faults {
        lock(&self.faults).faults.clone()
    }

    fn note_created(&self, id: &str) {
        lock(&self.recent).entry(id.to_owned()).or_default().created =
            Some(std::time::Instant::now());
    }

    fn note_updated(&self, id: &str, previous: Value) {
        lock(&self.recent)
            .entry(id.to_owned())
            .or_default()
            .previous = Some((std::time::Instant::now(), previous));
    }

    /// How a policy read answers under the consistency faults: `None` = not visible yet
    /// (read-after-write lag), `Some(previous)` = a stale echo, `Some(current)` otherwise.
    fn visible(&self, id: &str, current: Value, faults: &Faults) -> Option<Value> {
        let recent = lock(&self.recent);
        let Some(w) = recent.get(id) else {
            return Some(current);
        };
        let lag = Duration::from_millis(faults.read_after_write_lag_ms);
        if w.created.is_some_and(|t| t.elapsed() < lag) {
            return None;
        }
        let stale = Duration::from_millis(faults.stale_read_ms);
        match &w.previous {
            Some((t, previous)) if t.elapsed() < stale => Some(previous.clone()),
            _ => Some(current),
        }
    }

    /// A 404 as the `gone_as_forbidden` fault has it answered.
    fn gone(faults: &Faults, e: ApiError) -> ApiError {
        if faults.gone_as_forbidden && e.status == 404 {
            ApiError {
                status: 403,
                code: "AB03",
                message: "You do not have access to this resource".into(),
                retry_after_s: None,
            }
        } else {
            e
        }
    }

    /// A policy GET answer (or its error) after the consistency faults.
    fn read_policy<T: Serialize>(&self, id: &str, result: ApiResult<T>) -> Reply {
        let faults = self.faults();
        let current = serde_json::to_value(result.map_err(|e| Self::gone(&faults, e))?)
            .expect("policies serialize");
        match self.visible(id, current, &faults) {
            Some(v) => Ok(axum::Json(v)),
            None => Err(Self::gone(
                &faults,
                ApiError::not_found(format!("policy {id}")),
            )),
        }
    }

    /// A write to one policy id: not found while the read-after-write lag hides it, and gone
    /// objects answered as the faults say.
    fn writable<T>(&self, id: &str, f: impl FnOnce(&mut State) -> ApiResult<T>) -> ApiResult<T> {
        let faults = self.faults();
        if self.visible(id, Value::Null, &faults).is_none() {
            return Err(Self::gone(
                &faults,
                ApiError::not_found(format!("policy {id}")),
            ));
        }
        self.write(f).map_err(|e| Self::gone(&faults, e))
    }

    /// List items after the consistency faults.
    fn list_items<T: Serialize>(&self, items: Vec<T>) -> Vec<Value> {
        let faults = self.faults();
        items
            .into_iter()
            .filter_map(|item| {
                let v = serde_json::to_value(item).expect("policies serialize");
                let id = v["id"].as_str().unwrap_or_default().to_owned();
                let mut v = self.visible(&id, v, &faults)?;
                if faults.list_without_reset
                    && let Some(o) = v.as_object_mut()
                {
                    for k in [
                        "periodic_reset",
                        "periodic_reset_days",
                        "next_usage_reset_at",
                    ] {
                        o.remove(k);
                    }
                }
                Some(v)
            })
            .collect()
    }

    /// Runs `f` on the state after applying due resets.
    fn read<T>(&self, f: impl FnOnce(&State) -> ApiResult<T>) -> ApiResult<T> {
        let mut state = lock(&self.state);
        state.roll_resets();
        f(&state)
    }

    /// Runs a mutation; persists the state when it succeeded.
    fn write<T>(&self, f: impl FnOnce(&mut State) -> ApiResult<T>) -> ApiResult<T> {
        let mut state = lock(&self.state);
        state.roll_resets();
        let out = f(&mut state)?;
        if let Some(path) = &self.state_file
            && let Err(e) = save_state(path, &state)
        {
            tracing::error!(path = %path.display(), error = %e, "could not write the emulator state file");
        }
        Ok(out)
    }
}

fn save_state(path: &std::path::Path, state: &State) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(tmp, path)
}

fn load_state(config: &EmulatorConfig) -> std::io::Result<State> {
    let mut state = match &config.state_file {
        Some(path) if path.exists() => {
            let bytes = std::fs::read(path)?;
            serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("state file {}: {e}", path.display()),
                )
            })?
        }
        _ => State::default(),
    };
    if state.organisation_id.is_empty() {
        state.organisation_id = uuid::Uuid::new_v4().to_string();
    }
    let now = Timestamp::now();
    for seed in &config.workspaces {
        if state
            .workspaces
            .iter()
            .any(|w| w.id == seed.id || w.slug.as_deref() == Some(seed.slug.as_str()))
        {
            continue;
        }
        state.workspaces.push(Workspace {
            id: seed.id.clone(),
            object: Some("workspace".into()),
            slug: Some(seed.slug.clone()),
            name: Some(seed.name.clone()),
            description: None,
            usage_limits: None,
            rate_limits: None,
            last_reset_at: None,
            created_at: Some(now),
            last_updated_at: Some(now),
        });
    }
    for seed in &config.seed_api_keys {
        let invalid = |message: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("API key {}/{}: {message}", seed.workspace, seed.name),
            )
        };
        let workspace = state
            .workspaces
            .iter()
            .find(|w| w.id == seed.workspace || w.slug.as_deref() == Some(seed.workspace.as_str()))
            .map(|w| w.id.clone())
            .ok_or_else(|| {
                invalid(format!(
                    "the emulator has no workspace {:?} (seed it too)",
                    seed.workspace
                ))
            })?;
        let exists = state.api_keys.iter().any(|r| {
            r.key.workspace_id.as_deref() == Some(workspace.as_str())
                && r.key.name.as_deref() == Some(seed.name.as_str())
        });
        if exists {
            continue;
        }
        let scopes = if seed.scopes.is_empty() {
            vec!["completions.write".to_owned()]
        } else {
            seed.scopes.clone()
        };
        let body = json!({"name": seed.name, "scopes": scopes, "workspace_id": workspace});
        state
            .create_api_key("workspace", "service", &body)
            .map_err(|e| invalid(e.message))?;
    }
    Ok(state)
}

/// A running emulator. Dropping it stops the server.
pub struct EmulatorHandle {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EmulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Admin API base URL, `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A client for the `/_emulator/` control endpoints.
    pub fn control(&self) -> EmulatorControl {
        EmulatorControl::new(format!("http://{}", self.addr))
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits until the server stops (it stops only when shut down).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts the emulator on `config.listen` and logs its address.
pub async fn spawn(config: EmulatorConfig) -> std::io::Result<EmulatorHandle> {
    let state = load_state(&config)?;
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        faults: Mutex::new({
            let mut f = FaultState {
                faults: Faults::default(),
                limiter: None,
                rng: StdRng::from_os_rng(),
            };
            f.set(config.faults.clone());
            f
        }),
        log: Mutex::new(RequestLog::default()),
        recent: Mutex::new(HashMap::new()),
        api_keys: Mutex::new(config.api_keys.clone()),
        state_file: config.state_file.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let app = router(shared);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = rx.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "emulator server failed");
        }
    });
    tracing::info!(
        address = %addr,
        base_url = %format!("http://{addr}/v1"),
        "Portkey Admin API emulator listening (this is an emulator, not Portkey)"
    );
    Ok(EmulatorHandle {
        addr,
        shutdown: Some(tx),
        task: Some(task),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_workspace_parsing() {
        let s: SeedWorkspace = "2f1d4e8a-1111-4c3b-9d2e-000000000001:team-a:Team A"
            .parse()
            .unwrap();
        assert_eq!(s.slug, "team-a");
        assert_eq!(s.name, "Team A");
        let s: SeedWorkspace = "2F1D4E8A-1111-4C3B-9D2E-000000000001:team-a"
            .parse()
            .unwrap();
        assert_eq!(s.name, "team-a");
        assert_eq!(s.id, "2f1d4e8a-1111-4c3b-9d2e-000000000001");
        let err = "ws1:team-a".parse::<SeedWorkspace>().unwrap_err();
        assert!(err.contains("must be a UUID"), "{err}");
        assert!(
            "2f1d4e8a-1111-4c3b-9d2e-000000000001:"
                .parse::<SeedWorkspace>()
                .is_err()
        );
        assert_eq!(
            SeedWorkspace::from_slug("x").id,
            SeedWorkspace::from_slug("x").id
        );
    }

    #[test]
    fn seed_forms_slug_uuid_keys_and_file() {
        let s: SeedWorkspace = "team-a".parse().unwrap();
        assert_eq!(s, SeedWorkspace::from_slug("team-a"));
        let s: SeedWorkspace = "team-a=2F1D4E8A-1111-4C3B-9D2E-000000000001"
            .parse()
            .unwrap();
        assert_eq!(
            (s.slug.as_str(), s.id.as_str()),
            ("team-a", "2f1d4e8a-1111-4c3b-9d2e-000000000001")
        );
        let err = "team-a=nope".parse::<SeedWorkspace>().unwrap_err();
        assert!(err.contains("\"nope\" is not a UUID"), "{err}");
        let k: SeedApiKey = "team-a/checkout-service".parse().unwrap();
        assert_eq!(
            (k.workspace.as_str(), k.name.as_str()),
            ("team-a", "checkout-service")
        );
        assert!("checkout-service".parse::<SeedApiKey>().is_err());

        let seed = Seed::from_yaml(
            "adminApiKeys: [k1]\nworkspaces:\n  - team-a\n  - {slug: marketing, name: Marketing}\napiKeys:\n  - {workspace: team-a, name: checkout-service}\n",
        )
        .unwrap();
        assert_eq!(seed.admin_api_keys, ["k1"]);
        assert_eq!(seed.workspaces[1].name, "Marketing");
        assert_eq!(seed.api_keys[0].name, "checkout-service");
        let err = Seed::from_yaml("apikeys: []\n").unwrap_err();
        assert!(err.contains("apikeys"), "{err}");

        // Applied once: a restart over the saved state keeps one key.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.json");
        let config = EmulatorConfig {
            state_file: Some(file.clone()),
            ..EmulatorConfig::default().seed(seed)
        };
        let state = load_state(&config).unwrap();
        assert_eq!(state.api_keys.len(), 1);
        assert_eq!(
            state.api_keys[0].key.name.as_deref(),
            Some("checkout-service")
        );
        std::fs::write(&file, serde_json::to_vec(&state).unwrap()).unwrap();
        let again = load_state(&config).unwrap();
        assert_eq!(again.api_keys.len(), 1);
        assert_eq!(again.api_keys[0].key.id, state.api_keys[0].key.id);
        let bad = EmulatorConfig::default().seed(Seed {
            api_keys: vec!["nowhere/x".parse().unwrap()],
            ..Default::default()
        });
        let err = load_state(&bad).unwrap_err().to_string();
        assert!(
            err.contains("API key nowhere/x: the emulator has no workspace"),
            "{err}"
        );
    }

    #[test]
    fn fault_bodies_are_validated() {
        assert_eq!(parse_faults(&json!({})).unwrap(), Faults::default());
        let f =
            parse_faults(&json!({"error_rate": 0.3, "error_status": 503, "fail_next": 2})).unwrap();
        assert_eq!(f.error_status, Some(503));
        assert_eq!(f.fail_next, 2);
        let e = parse_faults(&json!({"error_rate": 2})).unwrap_err();
        assert!(e.message.starts_with("error_rate:"), "{}", e.message);
        let e = parse_faults(&json!({"latency": 5})).unwrap_err();
        assert!(e.message.contains("unknown fault"), "{}", e.message);
        let e = parse_faults(&json!({"path_contains": ""})).unwrap_err();
        assert!(e.message.starts_with("path_contains:"), "{}", e.message);
        let e = parse_faults(&json!({"path_contains": 3})).unwrap_err();
        assert!(e.message.starts_with("path_contains:"), "{}", e.message);
    }

    #[test]
    fn faults_target_by_method_and_path() {
        let f = parse_faults(
            &json!({"response_delay_ms": 60000, "method": "post", "path_contains": "/rotate"}),
        )
        .unwrap();
        assert_eq!(f.path_contains.as_deref(), Some("/rotate"));
        assert!(f.targets("POST", "/v1/api-keys/abc/rotate"));
        assert!(!f.targets("GET", "/v1/api-keys/abc/rotate"), "method too");
        assert!(!f.targets("POST", "/v1/api-keys/workspace/service"));
        let any = parse_faults(&json!({"path_contains": "/api-keys"})).unwrap();
        assert!(any.targets("GET", "/v1/api-keys/abc") && any.targets("PUT", "/v1/api-keys/x"));
        assert!(!any.targets("GET", "/v1/policies/usage-limits"));
        assert!(Faults::default().targets("DELETE", "/v1/anything"));
    }
}
