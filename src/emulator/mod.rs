//! A local Portkey Admin API emulator: real HTTP on loopback, in-memory state.
//!
//! It serves the Admin API paths the operator uses under `/v1` and behaves as
//! `docs/admin-api.md` says Portkey does. Test and demo controls live under
//! `/_emulator/` (not part of Portkey). See docs/emulator.md.

pub mod control;
pub mod keys;
pub mod schedule;
pub mod state;

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

/// A workspace the emulator starts with: `SLUG`, `SLUG=UUID`, or `ID:SLUG[:NAME]` with ID a
/// UUID. Without an id, the UUID is derived from the slug (stable across runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedWorkspace {
    pub id: String,
    pub slug: String,
    pub name: String,
}

const WORKSPACE_FORMS: &str = "SLUG, SLUG=UUID or UUID:SLUG[:NAME]";

fn check_slug(s: &str, slug: &str) -> Result<(), String> {
    if slug.is_empty() || slug.contains(char::is_whitespace) || slug.contains(['/', ':', '=']) {
        return Err(format!(
            "workspace {s:?}: the slug {slug:?} must be non-empty, without spaces, '/', ':' or '=' ({WORKSPACE_FORMS})"
        ));
    }
    Ok(())
}

impl FromStr for SeedWorkspace {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((slug, id)) = s.split_once('=') {
            let (slug, id) = (slug.trim(), id.trim());
            check_slug(s, slug)?;
            let id = uuid::Uuid::parse_str(id).map_err(|_| {
                format!("workspace {s:?}: {id:?} is not a UUID ({WORKSPACE_FORMS})")
            })?;
            return Ok(SeedWorkspace {
                id: id.to_string(),
                slug: slug.to_owned(),
                name: slug.to_owned(),
            });
        }
        if !s.contains(':') {
            check_slug(s, s.trim())?;
            return Ok(SeedWorkspace::from_slug(s.trim()));
        }
        let mut parts = s.splitn(3, ':');
        let id = parts.next().unwrap_or_default().trim();
        let slug = parts.next().unwrap_or_default().trim();
        let name = parts.next().map(str::trim).unwrap_or(slug);
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(format!(
                "workspace {s:?}: ID {id:?} must be a UUID ({WORKSPACE_FORMS})"
            ));
        }
        check_slug(s, slug)?;
        Ok(SeedWorkspace {
            id: id.to_ascii_lowercase(),
            slug: slug.to_owned(),
            name: if name.is_empty() { slug } else { name }.to_owned(),
        })
    }
}

impl SeedWorkspace {
    /// A seed with a UUID derived from the slug (stable across runs), for demos and `--emulator`.
    pub fn from_slug(slug: &str) -> Self {
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, slug.as_bytes()).to_string();
        SeedWorkspace {
            id,
            slug: slug.to_owned(),
            name: slug.to_owned(),
        }
    }

    /// The workspace a manifest names (`spec.workspace`: a slug or a UUID).
    pub fn from_reference(reference: &str) -> Self {
        match uuid::Uuid::parse_str(reference) {
            Ok(id) => SeedWorkspace {
                id: id.to_string(),
                slug: format!("ws-{}", &id.to_string()[..8]),
                name: reference.to_owned(),
            },
            Err(_) => SeedWorkspace::from_slug(reference),
        }
    }
}

impl<'de> Deserialize<'de> for SeedWorkspace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            slug: String,
            id: Option<String>,
            name: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Full(Full),
        }
        let form = Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom(format!(
                "a workspace is a string ({WORKSPACE_FORMS}) or {{slug, id, name}}"
            ))
        })?;
        match form {
            Form::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Form::Full(f) => {
                let mut text = f.slug.clone();
                if let Some(id) = &f.id {
                    text = format!("{}={id}", f.slug);
                }
                let mut seed: SeedWorkspace = text.parse().map_err(serde::de::Error::custom)?;
                if let Some(name) = f.name {
                    seed.name = name;
                }
                Ok(seed)
            }
        }
    }
}

/// An API key the emulator starts with: a workspace service key named `name` in `workspace` (a
/// slug or id), e.g. the key an `ApiKeyBudget` manages by `spec.existing.name`. On the command
/// line `WORKSPACE/NAME`. Scopes default to `completions.write`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedApiKey {
    pub workspace: String,
    pub name: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl FromStr for SeedApiKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((workspace, name)) if !workspace.trim().is_empty() && !name.trim().is_empty() => {
                Ok(SeedApiKey {
                    workspace: workspace.trim().to_owned(),
                    name: name.trim().to_owned(),
                    scopes: Vec::new(),
                })
            }
            _ => Err(format!(
                "API key {s:?}: expected WORKSPACE/NAME (e.g. team-a/checkout-service)"
            )),
        }
    }
}

/// What the emulator starts with besides its state file: workspaces, workspace API keys, and
/// the Admin API keys it accepts. Built from the `emulator` flags, a `--seed` file (this
/// struct as YAML: `adminApiKeys`, `workspaces`, `apiKeys`), or by `plan`/`sync --emulator`
/// from the manifests; [`spawn`] applies it ([`EmulatorConfig::seed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Seed {
    /// Admin API keys the emulator accepts; none: every non-empty key.
    #[serde(default)]
    pub admin_api_keys: Vec<String>,
    #[serde(default)]
    pub workspaces: Vec<SeedWorkspace>,
    #[serde(default)]
    pub api_keys: Vec<SeedApiKey>,
}

impl Seed {
    /// A seed file (YAML); errors name the field.
    pub fn from_yaml(text: &str) -> Result<Seed, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Adds `other`'s entries (workspaces and keys already present are kept once).
    pub fn merge(&mut self, other: Seed) {
        for k in other.admin_api_keys {
            if !self.admin_api_keys.contains(&k) {
                self.admin_api_keys.push(k);
            }
        }
        for w in other.workspaces {
            if !self
                .workspaces
                .iter()
                .any(|s| s.slug == w.slug || s.id == w.id)
            {
                self.workspaces.push(w);
            }
        }
        for k in other.api_keys {
            if !self.api_keys.contains(&k) {
                self.api_keys.push(k);
            }
        }
    }
}

/// One line saying what a seed holds (the accepted Admin API keys are not shown).
pub fn seed_summary(seed: &Seed) -> String {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    format!(
        "Workspaces: {}. API keys: {}. Admin API keys accepted: {}.",
        list(
            seed.workspaces
                .iter()
                .map(|w| format!("{} ({})", w.slug, w.id))
                .collect()
        ),
        list(
            seed.api_keys
                .iter()
                .map(|k| format!("{}/{}", k.workspace, k.name))
                .collect()
        ),
        match seed.admin_api_keys.len() {
            0 => "any non-empty key".to_owned(),
            n => format!("{n} configured"),
        }
    )
}

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

/// Injected faults (`POST /_emulator/faults`). `{}` clears them all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Fraction (0–1) of Admin API requests answered with `error_status`.
    pub error_rate: f64,
    /// Status of injected errors (default 500).
    pub error_status: Option<u16>,
    /// Delay added to every Admin API request.
    pub latency_ms: u64,
    /// Requests per second served; the excess gets 429 with `Retry-After`.
    pub rate_limit_rps: Option<u32>,
    /// `Retry-After` seconds on 429s (default 1).
    pub retry_after_s: Option<u64>,
    /// The next N Admin API requests fail with `error_status` (deterministic; counts down).
    pub fail_next: u64,
    /// Delay the answer after the request was carried out (the change is made; the client hears
    /// late or never): simulates a crash or timeout after Portkey acted.
    pub response_delay_ms: u64,
    /// Only requests with this HTTP method (e.g. `POST`) get `error_rate`, `fail_next` and
    /// `response_delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Only requests whose path (with its `/v1` prefix, without the query) contains this text
    /// get `error_rate`, `fail_next` and `response_delay_ms`; combined with `method` (both must
    /// match). `{"response_delay_ms": 60000, "method": "POST", "path_contains": "/rotate"}`
    /// carries out rotations whose answers never arrive within a client timeout, while every
    /// other request is answered at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_contains: Option<String>,
    /// Serve at most this many items per list page, whatever `page_size` asks for (a real
    /// server's silent cap); `total` still counts every item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size_cap: Option<usize>,
    /// Read-after-write lag: for this long after its create, a new policy 404s on GET and is
    /// missing from lists (eventual consistency, as the Terraform provider documents).
    #[serde(default)]
    pub read_after_write_lag_ms: u64,
    /// Stale echoes: for this long after a PUT, GET and lists still show the previous version.
    #[serde(default)]
    pub stale_read_ms: u64,
    /// Gone objects answer 403 `AB03` (as Portkey does for deleted workspaces and keys) instead
    /// of 404 `AB08`.
    #[serde(default)]
    pub gone_as_forbidden: bool,
    /// List items lack `periodic_reset`, `periodic_reset_days` and `next_usage_reset_at`, as on
    /// backends before 1.18.0 (GET by id still has them).
    #[serde(default)]
    pub list_without_reset: bool,
}

impl Faults {
    /// Whether the request-filtered faults (`error_rate`, `fail_next`, `response_delay_ms`)
    /// apply to a request with this method and path.
    fn targets(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            json!({"success": false, "data": {"message": self.message, "errorCode": self.code}});
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_s {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        resp
    }
}

type Shr = AxState<Arc<Shared>>;
type Q = Query<HashMap<String, String>>;
type Reply = Result<axum::Json<Value>, ApiError>;

fn ok<T: Serialize>(v: T) -> Reply {
    serde_json::to_value(v)
        .map(axum::Json)
        .map_err(|e| ApiError {
            status: 500,
            code: "AB04",
            message: format!("could not encode the answer: {e}"),
            retry_after_s: None,
        })
}

fn empty() -> Reply {
    Ok(axum::Json(json!({})))
}

fn body_json(bytes: &Bytes) -> ApiResult<Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid("body", format!("is not valid JSON ({e})")))
}

fn status_param(q: &HashMap<String, String>) -> ApiResult<PolicyStatus> {
    match q.get("status") {
        None => Ok(PolicyStatus::Active),
        Some(s) => PolicyStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "status",
                format!("must be one of: {}", PolicyStatus::expected()),
            )
        }),
    }
}

fn parse_param<T>(
    q: &HashMap<String, String>,
    name: &str,
    parse: fn(&str) -> Option<T>,
    expected: String,
) -> ApiResult<Option<T>> {
    q.get(name)
        .map(|s| {
            parse(s).ok_or_else(|| ApiError::invalid(name, format!("must be one of: {expected}")))
        })
        .transpose()
}

fn workspace_param(q: &HashMap<String, String>) -> ApiResult<&str> {
    q.get("workspace_id").map(String::as_str).ok_or_else(|| {
        ApiError::invalid(
            "workspace_id",
            "is required when using an organisation API key",
        )
    })
}

/// Slices one page out of `items` (`page_size`, 0-based `current_page`).
fn page<T: Serialize>(
    items: Vec<T>,
    q: &HashMap<String, String>,
    max: usize,
    cap: Option<usize>,
) -> Reply {
    let num = |name: &str, default: usize| -> ApiResult<usize> {
        match q.get(name) {
            None => Ok(default),
            Some(s) => s
                .parse::<usize>()
                .map_err(|_| ApiError::invalid(name, "must be a non-negative integer")),
        }
    };
    let mut size = num("page_size", state::DEFAULT_PAGE_SIZE)?;
    if size == 0 {
        size = state::DEFAULT_PAGE_SIZE;
    }
    if size > max {
        return Err(ApiError::invalid(
            "page_size",
            format!("must be at most {max}"),
        ));
    }
    if let Some(cap) = cap {
        size = size.min(cap.max(1));
    }
    let current = num("current_page", 0)?;
    let total = items.len() as i64;
    let data: Vec<T> = items
        .into_iter()
        .skip(current.saturating_mul(size))
        .take(size)
        .collect();
    ok(ListResponse {
        object: Some("list".into()),
        data,
        total: Some(total),
    })
}

// ----- usage-limits policies -----

async fn usage_create(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let created = s.write(|st| st.create_usage_policy(&body))?;
    s.note_created(&created.id);
    ok(created)
}

async fn usage_list(AxState(s): Shr, Query(q): Q) -> Reply {
    let status = status_param(&q)?;
    let t = parse_param(
        &q,
        "type",
        UsageLimitType::parse,
        UsageLimitType::expected(),
    )?;
    let items = s.read(|st| st.list_usage_policies(workspace_param(&q)?, status, t))?;
    page(s.list_items(items), &q, state::MAX_PAGE_SIZE, s.page_cap())
}

async fn usage_get(AxState(s): Shr, Path(id): Path<String>, Query(q): Q) -> Reply {
    let status = status_param(&q)?;
    let include_usage = match q.get("include_usage").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid("include_usage", "must be true or false")),
    };
    s.read_policy(
        &id,
        s.read(|st| st.get_usage_policy(&id, status, include_usage)),
    )
}

async fn usage_update(AxState(s): Shr, Path(id): Path<String>, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let before = s.read_policy(
        &id,
        s.read(|st| st.get_usage_policy(&id, PolicyStatus::Active, false)),
    )?;
    s.writable(&id, |st| st.update_usage_policy(&id, &body))?;
    s.note_updated(&id, before.0);
    empty()
}

async fn usage_delete(AxState(s): Shr, Path(id): Path<String>) -> Reply {
    s.writable(&id, |st| st.archive_usage_policy(&id))?;
    empty()
}

async fn usage_entities(AxState(s): Shr, Path(id): Path<String>, Query(q): Q) -> Reply {
    let status = parse_param(&q, "status", BucketStatus::parse, BucketStatus::expected())?;
    let search = q.get("search").cloned();
    let items = s.read(|st| st.entities(&id, status, search.as_deref()))?;
    page(items, &q, 100, s.page_cap())
}

async fn usage_entity_reset(AxState(s): Shr, Path((id, entity)): Path<(String, String)>) -> Reply {
    s.write(|st| st.reset_entity(&id, &entity))?;
    empty()
}

// ----- rate-limits policies -----

async fn rate_create(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let created = s.write(|st| st.create_rate_policy(&body))?;
    s.note_created(&created.id);
    ok(created)
}

async fn rate_list(AxState(s): Shr, Query(q): Q) -> Reply {
    let status = status_param(&q)?;
    let t = parse_param(&q, "type", RateLimitType::parse, RateLimitType::expected())?;
    let u = parse_param(&q, "unit", RateLimitUnit::parse, RateLimitUnit::expected())?;
    let items = s.read(|st| st.list_rate_policies(workspace_param(&q)?, status, t, u))?;
    page(s.list_items(items), &q, state::MAX_PAGE_SIZE, s.page_cap())
}

async fn rate_get(AxState(s): Shr, Path(id): Path<String>, Query(q): Q) -> Reply {
    let status = status_param(&q)?;
    s.read_policy(&id, s.read(|st| st.get_rate_policy(&id, status)))
}

async fn rate_update(AxState(s): Shr, Path(id): Path<String>, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let before = s.read_policy(
        &id,
        s.read(|st| st.get_rate_policy(&id, PolicyStatus::Active)),
    )?;
    s.writable(&id, |st| st.update_rate_policy(&id, &body))?;
    s.note_updated(&id, before.0);
    empty()
}

async fn rate_delete(AxState(s): Shr, Path(id): Path<String>) -> Reply {
    s.writable(&id, |st| st.archive_rate_policy(&id))?;
    empty()
}

// ----- workspaces -----

async fn workspace_list(AxState(s): Shr, Query(q): Q) -> Reply {
    let items = s.read(|st| Ok(st.workspaces.clone()))?;
    page(items, &q, state::MAX_PAGE_SIZE, s.page_cap())
}

async fn workspace_get(AxState(s): Shr, Path(id): Path<String>) -> Reply {
    ok(s.read(|st| st.workspace(&id).cloned())?)
}

async fn workspace_update(AxState(s): Shr, Path(id): Path<String>, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    s.write(|st| st.update_workspace(&id, &body))?;
    empty()
}

// ----- API keys -----

async fn key_create(
    AxState(s): Shr,
    Path((key_type, sub_type)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let body = body_json(&body)?;
    let created = s.write(|st| st.create_api_key(&key_type, &sub_type, &body))?;
    if let Some(id) = created["id"].as_str() {
        s.note_created(id);
    }
    ok(created)
}

async fn key_list(AxState(s): Shr, Query(q): Q) -> Reply {
    let workspace = q.get("workspace_id").cloned();
    let items = s.read(|st| st.list_api_keys(workspace.as_deref()))?;
    page(s.list_items(items), &q, state::MAX_PAGE_SIZE, s.page_cap())
}

async fn key_get(AxState(s): Shr, Path(id): Path<String>) -> Reply {
    s.read_policy(&id, s.read(|st| st.get_api_key(&id)))
}

async fn key_update(AxState(s): Shr, Path(id): Path<String>, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let before = s.read_policy(&id, s.read(|st| st.get_api_key(&id)))?;
    s.writable(&id, |st| st.update_api_key(&id, &body))?;
    s.note_updated(&id, before.0);
    empty()
}

async fn key_delete(AxState(s): Shr, Path(id): Path<String>) -> Reply {
    s.writable(&id, |st| st.delete_api_key(&id))?;
    empty()
}

async fn key_rotate(AxState(s): Shr, Path(id): Path<String>, body: Bytes) -> Reply {
    let body = if body.is_empty() {
        Value::Object(Default::default())
    } else {
        body_json(&body)?
    };
    ok(s.writable(&id, |st| st.rotate_api_key(&id, &body))?)
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

/// Auth, injected faults and the request log for every `/v1` request.
async fn admin_api_gate(AxState(s): Shr, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    // Inside the nested `/v1` router the URI has lost its prefix; log the original one.
    let uri = req
        .extensions()
        .get::<OriginalUri>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| req.uri().clone());
    let path = uri.path().to_owned();
    let query = uri.query().map(str::to_owned);
    let key = req
        .headers()
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let response = match s.gate(&key, &method, &path).await {
        Err(e) => e.into_response(),
        Ok(()) => next.run(req).await,
    };
    let delay = {
        let f = lock(&s.faults);
        if f.faults.targets(&method, &path) {
            f.faults.response_delay_ms
        } else {
            0
        }
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut log = lock(&s.log);
    log.total += 1;
    let seq = log.total;
    if log.entries.len() < MAX_LOG_ENTRIES {
        log.entries.push(RequestLogEntry {
            seq,
            method,
            path,
            query,
            status: response.status().as_u16(),
        });
    }
    response
}

impl Shared {
    async fn gate(&self, key: &str, method: &str, path: &str) -> ApiResult<()> {
        let unauthorized = {
            let keys = lock(&self.api_keys);
            key.is_empty() || (!keys.is_empty() && !keys.iter().any(|k| k == key))
        };
        if unauthorized {
            return Err(ApiError {
                status: 401,
                code: "AB05",
                message: "Invalid API Key".into(),
                retry_after_s: None,
            });
        }
        let latency = lock(&self.faults).faults.latency_ms;
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let mut f = lock(&self.faults);
        let retry_after = f.faults.retry_after_s.unwrap_or(1);
        if let Some(limiter) = &f.limiter
            && limiter.check().is_err()
        {
            return Err(ApiError {
                status: 429,
                code: "AB06",
                message: "Too many requests to the Admin API".into(),
                retry_after_s: Some(retry_after),
            });
        }
        let injected = if !f.faults.targets(method, path) {
            false
        } else if f.faults.fail_next > 0 {
            f.faults.fail_next -= 1;
            true
        } else {
            let rate = f.faults.error_rate;
            rate > 0.0 && f.rng.random_bool(rate.min(1.0))
        };
        if injected {
            let status = f.faults.error_status.unwrap_or(500);
            return Err(ApiError {
                status,
                code: if status == 429 { "AB06" } else { "AB04" },
                message: format!("injected fault (HTTP {status})"),
                retry_after_s: (status == 429).then_some(retry_after),
            });
        }
        Ok(())
    }
}

// ----- control endpoints -----

async fn control_usage(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    ok(s.write(|st| st.add_usage(&body))?)
}

async fn control_key_usage(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    ok(s.write(|st| st.add_key_usage(&body))?)
}

async fn control_key_check(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let key = body["key"].as_str().unwrap_or_default().to_owned();
    ok(s.read(|st| Ok(serde_json::json!({ "works": st.key_works(&key) })))?)
}

/// The faults `POST /_emulator/faults` (and `--faults`) set: every key known, every value in
/// its range.
fn parse_faults(body: &Value) -> ApiResult<Faults> {
    let obj = object(body)?;
    const KNOWN: [&str; 14] = [
        "error_rate",
        "error_status",
        "latency_ms",
        "rate_limit_rps",
        "retry_after_s",
        "fail_next",
        "response_delay_ms",
        "method",
        "path_contains",
        "page_size_cap",
        "read_after_write_lag_ms",
        "stale_read_ms",
        "gone_as_forbidden",
        "list_without_reset",
    ];
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            k,
            format!("unknown fault; known: {}", KNOWN.join(", ")),
        ));
    }
    let int = |name: &str, lo: u64, hi: u64| fault_int(obj, name, lo, hi);
    Ok(Faults {
        error_rate: fault_rate(obj)?,
        error_status: int("error_status", 400, 599)?.map(|n| n as u16),
        latency_ms: int("latency_ms", 0, 60_000)?.unwrap_or(0),
        rate_limit_rps: int("rate_limit_rps", 1, 1_000_000)?.map(|n| n as u32),
        retry_after_s: int("retry_after_s", 0, 3600)?,
        fail_next: int("fail_next", 0, 1_000_000)?.unwrap_or(0),
        response_delay_ms: int("response_delay_ms", 0, 600_000)?.unwrap_or(0),
        page_size_cap: int("page_size_cap", 1, 1000)?.map(|n| n as usize),
        read_after_write_lag_ms: int("read_after_write_lag_ms", 0, 600_000)?.unwrap_or(0),
        stale_read_ms: int("stale_read_ms", 0, 600_000)?.unwrap_or(0),
        gone_as_forbidden: fault_flag(obj, "gone_as_forbidden")?,
        list_without_reset: fault_flag(obj, "list_without_reset")?,
        method: fault_method(obj)?,
        path_contains: fault_path(obj)?,
    })
}

/// An integer fault from `lo` to `hi`, or none.
fn fault_int(obj: &Map<String, Value>, name: &str, lo: u64, hi: u64) -> ApiResult<Option<u64>> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| (lo..=hi).contains(n))
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(name, format!("must be an integer from {lo} to {hi}"))
            }),
    }
}

/// A boolean fault (false when absent).
fn fault_flag(obj: &Map<String, Value>, name: &str) -> ApiResult<bool> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(name, "must be true or false")),
    }
}

/// `error_rate`: from 0 to 1 (0 when absent).
fn fault_rate(obj: &Map<String, Value>) -> ApiResult<f64> {
    match obj.get("error_rate") {
        None | Some(Value::Null) => Ok(0.0),
        Some(v) => v
            .as_f64()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| ApiError::invalid("error_rate", "must be a number from 0 to 1")),
    }
}

/// `method`: the one HTTP method faults apply to, upper case.
fn fault_method(obj: &Map<String, Value>) -> ApiResult<Option<String>> {
    match obj.get("method") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(m))
            if ["GET", "POST", "PUT", "DELETE"].contains(&m.to_ascii_uppercase().as_str()) =>
        {
            Ok(Some(m.to_ascii_uppercase()))
        }
        Some(_) => Err(ApiError::invalid(
            "method",
            "must be one of: GET, POST, PUT, DELETE",
        )),
    }
}

/// `path_contains`: faults apply to paths containing it.
fn fault_path(obj: &Map<String, Value>) -> ApiResult<Option<String>> {
    match obj.get("path_contains") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(p)) if !p.is_empty() && p.chars().count() <= 256 => Ok(Some(p.clone())),
        Some(_) => Err(ApiError::invalid(
            "path_contains",
            "must be a non-empty string of at most 256 characters",
        )),
    }
}

async fn control_set_faults(AxState(s): Shr, body: Bytes) -> Reply {
    let faults = parse_faults(&body_json(&body)?)?;
    let mut f = lock(&s.faults);
    f.set(faults);
    ok(&f.faults)
}

impl FaultState {
    fn set(&mut self, faults: Faults) {
        self.limiter = faults
            .rate_limit_rps
            .and_then(NonZeroU32::new)
            .map(|rps| RateLimiter::direct(Quota::per_second(rps)));
        self.faults = faults;
    }
}

impl Faults {
    /// Faults from the JSON of `POST /_emulator/faults`; the error names the bad key.
    pub fn from_json(value: &Value) -> Result<Faults, String> {
        parse_faults(value).map_err(|e| e.message)
    }
}

/// `PUT /_emulator/api-keys {"keys": [...]}`: the keys accepted from now on (a rotation);
/// answers how many there are (never the keys).
async fn control_set_api_keys(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let keys: Vec<String> = body["keys"]
        .as_array()
        .ok_or_else(|| ApiError::invalid("keys", "must be a list of strings"))?
        .iter()
        .map(|k| {
            k.as_str()
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| ApiError::invalid("keys", "must be non-empty strings"))
        })
        .collect::<ApiResult<_>>()?;
    let count = keys.len();
    *lock(&s.api_keys) = keys;
    ok(json!({"keys": count}))
}

async fn control_get_faults(AxState(s): Shr) -> Reply {
    ok(&lock(&s.faults).faults)
}

async fn control_requests(AxState(s): Shr) -> Reply {
    let log = lock(&s.log);
    ok(json!({"total": log.total, "data": log.entries}))
}

async fn control_clear_requests(AxState(s): Shr) -> Reply {
    *lock(&s.log) = RequestLog::default();
    empty()
}

async fn control_clock(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let obj = object(&body)?;
    let now = match obj.get("now") {
        Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|t| Timestamp::from_str(t).ok())
                .ok_or_else(|| ApiError::invalid("now", "must be an RFC 3339 timestamp or null"))?,
        ),
        None => {
            return Err(ApiError::invalid(
                "now",
                "is required (a timestamp, or null for the real clock)",
            ));
        }
    };
    let now = s.write(|st| {
        st.clock = now;
        st.roll_resets();
        Ok(st.now())
    })?;
    ok(json!({"now": now}))
}

async fn control_state(AxState(s): Shr) -> Reply {
    ok(s.read(|st| Ok(st.clone()))?)
}

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/policies/usage-limits", get(usage_list).post(usage_create))
        .route(
            "/policies/usage-limits/{id}",
            get(usage_get).put(usage_update).delete(usage_delete),
        )
        .route("/policies/usage-limits/{id}/entities", get(usage_entities))
        .route(
            "/policies/usage-limits/{id}/entities/{entity}/reset",
            put(usage_entity_reset),
        )
        .route("/policies/rate-limits", get(rate_list).post(rate_create))
        .route(
            "/policies/rate-limits/{id}",
            get(rate_get).put(rate_update).delete(rate_delete),
        )
        .route("/api-keys", get(key_list))
        .route(
            "/api-keys/{id}",
            get(key_get).put(key_update).delete(key_delete),
        )
        .route("/api-keys/{id}/rotate", post(key_rotate))
        .route("/api-keys/{type}/{sub_type}", post(key_create))
        .route("/admin/workspaces", get(workspace_list))
        .route(
            "/admin/workspaces/{id}",
            get(workspace_get).put(workspace_update),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            admin_api_gate,
        ));
    let control = Router::new()
        .route("/usage", post(control_usage))
        .route("/faults", get(control_get_faults).post(control_set_faults))
        .route(
            "/requests",
            get(control_requests).delete(control_clear_requests),
        )
        .route("/clock", post(control_clock))
        .route("/api-keys", put(control_set_api_keys))
        .route("/key-usage", post(control_key_usage))
        .route("/key-check", post(control_key_check))
        .route("/state", get(control_state));
    Router::new()
        .nest("/v1", api)
        .nest("/_emulator", control)
        .fallback(not_found)
        .with_state(shared)
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
