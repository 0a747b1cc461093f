//! The typed Admin API client (reqwest).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{PortkeyError, parse_retry_after};
use super::retry::{Idempotency, RetryPolicy};
use super::types::*;

/// How much longer than a second the Admin API limiter's window is (see `PortkeyClient::new`).
pub const WINDOW_MARGIN: Duration = Duration::from_millis(10);

/// Portkey's SaaS Admin API.
pub const DEFAULT_BASE_URL: &str = "https://api.portkey.ai/v1";
/// The auth header (docs/admin-api.md §1).
pub const API_KEY_HEADER: &str = "x-portkey-api-key";

/// A Portkey API key (the operator's Admin API key, or a key it issued). It is never printed:
/// `Debug` shows `ApiKey(***)` and there is no `Display`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into().trim().to_owned())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// One finished Admin API call (after all its retries are counted separately), for metrics.
#[derive(Debug, Clone)]
pub struct CallRecord {
    /// A stable operation name such as `usage_limits.create`.
    pub operation: &'static str,
    pub method: Method,
    /// The HTTP status, or `None` when no answer came.
    pub status: Option<u16>,
    /// 0 for the first try, 1 for the first retry, …
    pub attempt: u32,
    pub duration: Duration,
}

/// Receives every HTTP attempt the client makes.
pub type CallObserver = Arc<dyn Fn(&CallRecord) + Send + Sync>;

/// Client settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// Base URL including `/v1`, e.g. `https://api.portkey.ai/v1`.
    pub base_url: String,
    pub api_key: ApiKey,
    /// Per-attempt timeout.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Page size for list calls (all pages are walked).
    pub page_size: u32,
    pub observer: Option<CallObserver>,
    /// At most this many HTTP attempts in any second (reads and writes, retries included), to
    /// stay under Portkey's own rate limit; `None`: unlimited.
    pub max_requests_per_second: Option<u32>,
}

impl ClientConfig {
    pub fn new(base_url: impl Into<String>, api_key: ApiKey) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            api_key,
            timeout: Duration::from_secs(15),
            retry: RetryPolicy::default(),
            page_size: 100,
            observer: None,
            max_requests_per_second: None,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("page_size", &self.page_size)
            .finish()
    }
}

/// The Portkey Admin API client. Cheap to clone.
#[derive(Clone)]
pub struct PortkeyClient {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
    retry: RetryPolicy,
    page_size: u32,
    observer: Option<CallObserver>,
    limiter: Option<Arc<super::retry::Pacer>>,
    /// The key, sent with every request; replaceable at run time (a rotated Secret).
    key: Arc<std::sync::RwLock<HeaderValue>>,
    /// Signalled whenever Portkey answers 401, so the key's source can be read again.
    key_refused: Arc<tokio::sync::Notify>,
}

impl fmt::Debug for PortkeyClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortkeyClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// Options of a policy GET.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// Portkey defaults to `active`: an archived id is 404 unless `Archived` is asked for.
    pub status: Option<PolicyStatus>,
    /// Usage-limits only: add `value_key_usage_map`.
    pub include_usage: bool,
}

/// Filters of a policy list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub workspace_id: Option<String>,
    pub status: Option<PolicyStatus>,
    /// `type` filter as its wire name (`cost`, `tokens`, `requests`).
    pub limit_type: Option<&'static str>,
    /// Rate-limits only: `unit` filter.
    pub unit: Option<&'static str>,
}

/// Filters of the usage-limits entities list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityFilter {
    pub status: Option<BucketStatus>,
    pub search: Option<String>,
}

/// A policy family of the Admin API: its path and bodies.
pub trait PolicyKind: Send + Sync + 'static {
    /// Path below `/policies/`.
    const PATH: &'static str;
    /// Operation-name prefix for metrics (`usage_limits`, `rate_limits`).
    const OPS: PolicyOps;
    type Policy: DeserializeOwned + RemotePolicy + Clone + std::fmt::Debug + Send + Sync;
    type Create: Serialize + Send + Sync;
    type Update: Serialize + Send + Sync;
}

/// Static operation names of one policy family.
#[derive(Debug, Clone, Copy)]
pub struct PolicyOps {
    pub create: &'static str,
    pub get: &'static str,
    pub list: &'static str,
    pub update: &'static str,
    pub delete: &'static str,
}

/// `/policies/usage-limits`.
#[derive(Debug, Clone, Copy)]
pub struct UsageLimits;
/// `/policies/rate-limits`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits;

impl PolicyKind for UsageLimits {
    const PATH: &'static str = "usage-limits";
    const OPS: PolicyOps = PolicyOps {
        create: "usage_limits.create",
        get: "usage_limits.get",
        list: "usage_limits.list",
        update: "usage_limits.update",
        delete: "usage_limits.delete",
    };
    type Policy = UsageLimitsPolicy;
    type Create = CreateUsageLimitsPolicy;
    type Update = UpdateUsageLimitsPolicy;
}

impl PolicyKind for RateLimits {
    const PATH: &'static str = "rate-limits";
    const OPS: PolicyOps = PolicyOps {
        create: "rate_limits.create",
        get: "rate_limits.get",
        list: "rate_limits.list",
        update: "rate_limits.update",
        delete: "rate_limits.delete",
    };
    type Policy = RateLimitsPolicy;
    type Create = CreateRateLimitsPolicy;
    type Update = UpdateRateLimitsPolicy;
}

/// Upper bound on pages walked by one list call.
const MAX_PAGES: u32 = 10_000;

/// A body Portkey answers writes with (`{}`); its content is ignored.
#[derive(serde::Deserialize)]
struct Ignored {}

impl PortkeyClient {
    pub fn new(config: ClientConfig) -> Result<Self, PortkeyError> {
        let mut base = Url::parse(config.base_url.trim())
            .map_err(|e| PortkeyError::Config(format!("base URL {:?}: {e}", config.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(PortkeyError::Config(format!(
                "base URL {:?} must be an http(s) URL",
                config.base_url
            )));
        }
        // Treat the base as a folder so that joined segments land below it.
        if base.path().ends_with('/') {
            let trimmed = base.path().trim_end_matches('/').to_owned();
            base.set_path(&trimmed);
        }
        if config.api_key.is_empty() {
            return Err(PortkeyError::Config("the API key is empty".into()));
        }
        let mut key = HeaderValue::from_str(config.api_key.expose()).map_err(|_| {
            PortkeyError::Config("the API key contains characters not allowed in a header".into())
        })?;
        key.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!(
                "portkey-budget-operator/",
                env!("CARGO_PKG_VERSION")
            ))
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| PortkeyError::Config(format!("HTTP client: {e}")))?;
        Ok(PortkeyClient {
            key: Arc::new(std::sync::RwLock::new(key)),
            key_refused: Arc::new(tokio::sync::Notify::new()),
            http,
            base,
            timeout: config.timeout,
            retry: config.retry,
            page_size: config.page_size.max(1),
            observer: config.observer,
            limiter: config
                .max_requests_per_second
                .and_then(std::num::NonZeroU32::new)
                .map(|rps| {
                    // At most `rps` requests in any second, sent at once while there is room:
                    // the refreshes that start together on the refresh grid go out together
                    // and their answers come back together, one wake-up of the process for
                    // all of them where evenly spaced requests (5 ms apart at 200/s) cost one
                    // each. The window is widened by `WINDOW_MARGIN` so that a request delayed
                    // on its way does not land in the server's second with the ones sent a
                    // second after it.
                    let window = Duration::from_secs(1) + WINDOW_MARGIN;
                    Arc::new(super::retry::Pacer::per_window(rps, window))
                }),
        })
    }

    /// Replaces the API key of this client and every clone of it (a rotated key takes effect
    /// with the next request). Returns whether it changed; the error never holds the key.
    pub fn set_api_key(&self, key: &ApiKey) -> Result<bool, PortkeyError> {
        if key.is_empty() {
            return Err(PortkeyError::Config("the Admin API key is empty".into()));
        }
        let mut value = HeaderValue::from_str(key.expose()).map_err(|_| {
            PortkeyError::Config("the Admin API key holds characters a header cannot".into())
        })?;
        value.set_sensitive(true);
        let mut current = self.key.write().expect("key lock");
        let changed = *current != value;
        *current = value;
        Ok(changed)
    }

    /// Calls `f` with the key this client authenticates with (e.g. to tell whether a listed key
    /// is the operator's own). `f` must not keep, log or return the key.
    pub fn with_api_key<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        let current = self.key.read().expect("key lock");
        f(current.to_str().unwrap_or_default())
    }

    /// Notified whenever Portkey refuses the key (401).
    pub fn key_refused(&self) -> Arc<tokio::sync::Notify> {
        self.key_refused.clone()
    }

    /// The base URL (no secrets in it).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// Operations on any policy family.
    pub fn policies<K: PolicyKind>(&self) -> PolicyApi<'_, K> {
        PolicyApi {
            client: self,
            kind: PhantomData,
        }
    }

    /// `/policies/usage-limits` operations.
    pub fn usage_limits(&self) -> PolicyApi<'_, UsageLimits> {
        PolicyApi {
            client: self,
            kind: PhantomData,
        }
    }

    /// `/policies/rate-limits` operations.
    pub fn rate_limits(&self) -> PolicyApi<'_, RateLimits> {
        PolicyApi {
            client: self,
            kind: PhantomData,
        }
    }

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("base URL checked in new()")
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// Sends one logical request with the retry policy and parses the JSON answer.
    async fn send<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        idempotency: Idempotency,
    ) -> Result<T, PortkeyError> {
        let mut attempt = 0u32;
        loop {
            if let Some(limiter) = &self.limiter {
                limiter.until_ready().await;
            }
            let started = Instant::now();
            let result = self
                .attempt(method.clone(), url.clone(), body.clone())
                .await;
            if let Some(observer) = &self.observer {
                observer(&CallRecord {
                    operation,
                    method: method.clone(),
                    status: match &result {
                        Ok((status, _)) => Some(*status),
                        Err(e) => e.status(),
                    },
                    attempt,
                    duration: started.elapsed(),
                });
            }
            let err = match result {
                Ok((_, bytes)) => return decode(&bytes),
                Err(err) => err.for_operation(operation),
            };
            match self.retry.delay_for(&err, attempt, idempotency) {
                Some(delay) => {
                    tracing::debug!(operation, attempt, ?delay, error = %err, "retrying Admin API call");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => return Err(err),
            }
        }
    }

    /// One HTTP attempt: the status and body of a 2xx, or the typed error.
    async fn attempt(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), PortkeyError> {
        let key = self.key.read().expect("key lock").clone();
        let mut request = self
            .http
            .request(method, url)
            .timeout(self.timeout)
            .header(API_KEY_HEADER, key);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        if status == 401 {
            self.key_refused.notify_one();
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()));
        let bytes = response.bytes().await.map_err(transport_error)?;
        if (200..300).contains(&status) {
            Ok((status, bytes.to_vec()))
        } else {
            Err(PortkeyError::from_response(
                status,
                &String::from_utf8_lossy(&bytes),
                retry_after,
            ))
        }
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        url: Url,
    ) -> Result<T, PortkeyError> {
        self.send(operation, Method::GET, url, None, Idempotency::Idempotent)
            .await
    }

    async fn write<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: &B,
        idempotency: Idempotency,
    ) -> Result<T, PortkeyError> {
        let bytes = serde_json::to_vec(body).map_err(|e| PortkeyError::Decode {
            message: format!("could not encode the request: {e}"),
        })?;
        self.send(operation, method, url, Some(bytes), idempotency)
            .await
    }

    /// Walks every page of a list endpoint.
    async fn list_all<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        segments: &[&str],
        mut query: Vec<(&str, String)>,
    ) -> Result<Vec<T>, PortkeyError> {
        let page_size = self.page_size;
        query.push(("page_size", page_size.to_string()));
        let mut items = Vec::new();
        for page in 0..MAX_PAGES {
            let mut q = query.clone();
            q.push(("current_page", page.to_string()));
            let resp: ListResponse<T> = self.get_json(operation, self.url(segments, &q)).await?;
            let got = resp.data.len();
            items.extend(resp.data);
            // With a `total`, a short page is not the end: a server may cap pages below the
            // size asked for. Without one, a short page is all there is to go by.
            let done = match resp.total {
                Some(total) => items.len() as i64 >= total || got == 0,
                None => got < page_size as usize,
            };
            if done {
                return Ok(items);
            }
        }
        // A server that ignores `current_page` and reports no total would loop forever.
        Err(PortkeyError::Decode {
            message: format!("{operation}: pagination did not end after {MAX_PAGES} pages"),
        })
    }

    /// A cheap authenticated read (one page of one workspace) that tells whether the Admin API
    /// answers and accepts the key; used for readiness. (A policy list would need a
    /// `workspace_id` with an organisation key.)
    pub async fn ping(&self) -> Result<(), PortkeyError> {
        let query = [
            ("page_size", "1".to_owned()),
            ("current_page", "0".to_owned()),
        ];
        let _: ListResponse<serde_json::Value> = self
            .get_json("ping", self.url(&["admin", "workspaces"], &query))
            .await?;
        Ok(())
    }

    /// `GET /admin/workspaces/{id-or-slug}`.
    pub async fn get_workspace(&self, id_or_slug: &str) -> Result<Workspace, PortkeyError> {
        self.get_json(
            "workspaces.get",
            self.url(&["admin", "workspaces", id_or_slug], &[]),
        )
        .await
    }

    /// The workspace UUID for an id or a slug (responses always carry the UUID).
    pub async fn resolve_workspace_id(&self, id_or_slug: &str) -> Result<String, PortkeyError> {
        Ok(self.get_workspace(id_or_slug).await?.id)
    }

    /// `GET /admin/workspaces`, all pages.
    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>, PortkeyError> {
        self.list_all("workspaces.list", &["admin", "workspaces"], Vec::new())
            .await
    }

    /// `PUT /admin/workspaces/{id-or-slug}`: `usage_limits` / `rate_limits` omitted = unchanged,
    /// `Null` or `[]` = cleared.
    pub async fn update_workspace(
        &self,
        id_or_slug: &str,
        body: &UpdateWorkspace,
    ) -> Result<(), PortkeyError> {
        let _: Ignored = self
            .write(
                "workspaces.update",
                Method::PUT,
                self.url(&["admin", "workspaces", id_or_slug], &[]),
                body,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(())
    }
}

/// `/api-keys` operations (docs/admin-api.md §8).
impl PortkeyClient {
    /// `GET /api-keys?workspace_id=…`, all pages.
    pub async fn list_api_keys(
        &self,
        workspace_id: Option<&str>,
    ) -> Result<Vec<ApiKeyObject>, PortkeyError> {
        let query = workspace_id
            .map(|w| vec![("workspace_id", w.to_owned())])
            .unwrap_or_default();
        self.list_all("api_keys.list", &["api-keys"], query).await
    }

    /// `GET /api-keys/{id}` (the key itself masked).
    pub async fn get_api_key(&self, id: &str) -> Result<ApiKeyObject, PortkeyError> {
        self.get_json("api_keys.get", self.url(&["api-keys", id], &[]))
            .await
    }

    /// `POST /api-keys/{type}/{sub-type}`: the id and the raw key (the only time, with rotate,
    /// that Portkey shows it). Not retried once it may have reached the server.
    pub async fn create_api_key(
        &self,
        key_type: ApiKeyType,
        sub_type: ApiKeySubType,
        body: &CreateApiKey,
    ) -> Result<IssuedApiKey, PortkeyError> {
        self.write(
            "api_keys.create",
            Method::POST,
            self.url(&["api-keys", key_type.as_str(), sub_type.as_str()], &[]),
            body,
            Idempotency::CreateOnce,
        )
        .await
    }

    /// `PUT /api-keys/{id}`: only the fields set in `body`.
    pub async fn update_api_key(&self, id: &str, body: &UpdateApiKey) -> Result<(), PortkeyError> {
        let _: Ignored = self
            .write(
                "api_keys.update",
                Method::PUT,
                self.url(&["api-keys", id], &[]),
                body,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(())
    }

    /// `DELETE /api-keys/{id}`: the key stops working at once.
    pub async fn delete_api_key(&self, id: &str) -> Result<(), PortkeyError> {
        let _: Ignored = self
            .send(
                "api_keys.delete",
                Method::DELETE,
                self.url(&["api-keys", id], &[]),
                None,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(())
    }

    /// `POST /api-keys/{id}/rotate`: a new raw key; the old one keeps working for
    /// `transition_ms` (Portkey's minimum is 30 minutes). Each call makes a new key, so it is
    /// not retried once it may have reached the server.
    pub async fn rotate_api_key(
        &self,
        id: &str,
        transition_ms: u64,
    ) -> Result<IssuedApiKey, PortkeyError> {
        self.write(
            "api_keys.rotate",
            Method::POST,
            self.url(&["api-keys", id, "rotate"], &[]),
            &serde_json::json!({ "key_transition_period_ms": transition_ms }),
            Idempotency::CreateOnce,
        )
        .await
    }
}

fn transport_error(e: reqwest::Error) -> PortkeyError {
    // reqwest's message names the URL (never a header), so it is safe to keep.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    PortkeyError::Transport {
        message,
        timeout: e.is_timeout(),
        connect: e.is_connect(),
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PortkeyError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| PortkeyError::Decode {
        message: e.to_string(),
    })
}

/// Operations on one policy family; get it from [`PortkeyClient::usage_limits`] or
/// [`PortkeyClient::rate_limits`].
pub struct PolicyApi<'a, K> {
    client: &'a PortkeyClient,
    kind: PhantomData<K>,
}

impl<K: PolicyKind> PolicyApi<'_, K> {
    fn url(&self, id: Option<&str>, query: &[(&str, String)]) -> Url {
        match id {
            Some(id) => self.client.url(&["policies", K::PATH, id], query),
            None => self.client.url(&["policies", K::PATH], query),
        }
    }

    /// `POST`: answers only the new id. Not retried once it may have reached the server.
    pub async fn create(&self, body: &K::Create) -> Result<CreatedObject, PortkeyError> {
        self.client
            .write(
                K::OPS.create,
                Method::POST,
                self.url(None, &[]),
                body,
                Idempotency::CreateOnce,
            )
            .await
    }

    /// `POST`, then `GET` for the server-computed fields. If the GET fails the policy still
    /// exists: callers that must never lose the id use [`Self::create`] and [`Self::get`].
    pub async fn create_and_get(&self, body: &K::Create) -> Result<K::Policy, PortkeyError> {
        let created = self.create(body).await?;
        self.get(&created.id, GetOptions::default()).await
    }

    /// `GET /policies/…/{id}`.
    pub async fn get(&self, id: &str, options: GetOptions) -> Result<K::Policy, PortkeyError> {
        let mut query = Vec::new();
        if let Some(status) = options.status {
            query.push(("status", status.as_str().to_owned()));
        }
        if options.include_usage {
            query.push(("include_usage", "true".to_owned()));
        }
        self.client
            .get_json(K::OPS.get, self.url(Some(id), &query))
            .await
    }

    /// `GET /policies/…`, walking all pages.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<K::Policy>, PortkeyError> {
        self.list_as(filter).await
    }

    /// Like [`PolicyApi::list`], but reads only `id`, `name` and `created_at` of each policy
    /// (listing a large workspace for ownership markers without holding every policy).
    pub async fn list_summaries(
        &self,
        filter: &ListFilter,
    ) -> Result<Vec<PolicySummary>, PortkeyError> {
        self.list_as(filter).await
    }

    async fn list_as<T: DeserializeOwned>(
        &self,
        filter: &ListFilter,
    ) -> Result<Vec<T>, PortkeyError> {
        let mut query = Vec::new();
        if let Some(ws) = &filter.workspace_id {
            query.push(("workspace_id", ws.clone()));
        }
        if let Some(status) = filter.status {
            query.push(("status", status.as_str().to_owned()));
        }
        if let Some(t) = filter.limit_type {
            query.push(("type", t.to_owned()));
        }
        if let Some(u) = filter.unit {
            query.push(("unit", u.to_owned()));
        }
        self.client
            .list_all(K::OPS.list, &["policies", K::PATH], query)
            .await
    }

    /// `PUT`: a partial update (only the fields set in `body`).
    pub async fn update(&self, id: &str, body: &K::Update) -> Result<(), PortkeyError> {
        let _: Ignored = self
            .client
            .write(
                K::OPS.update,
                Method::PUT,
                self.url(Some(id), &[]),
                body,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(())
    }

    /// `DELETE`: archives the policy (soft delete).
    pub async fn delete(&self, id: &str) -> Result<(), PortkeyError> {
        let _: Ignored = self
            .client
            .send(
                K::OPS.delete,
                Method::DELETE,
                self.url(Some(id), &[]),
                None,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(())
    }
}

impl PolicyApi<'_, UsageLimits> {
    /// `GET /policies/usage-limits/{id}/entities`, all pages.
    pub async fn entities(
        &self,
        policy_id: &str,
        filter: &EntityFilter,
    ) -> Result<Vec<Entity>, PortkeyError> {
        let mut query = Vec::new();
        if let Some(status) = filter.status {
            query.push(("status", status.as_str().to_owned()));
        }
        if let Some(search) = &filter.search {
            query.push(("search", search.clone()));
        }
        self.client
            .list_all(
                "usage_limits.entities",
                &["policies", UsageLimits::PATH, policy_id, "entities"],
                query,
            )
            .await
    }

    /// `PUT /policies/usage-limits/{id}/entities/{entityId}/reset`: zero one bucket.
    pub async fn reset_entity(&self, policy_id: &str, entity_id: &str) -> Result<(), PortkeyError> {
        let _: Ignored = self
            .client
            .send(
                "usage_limits.entity_reset",
                Method::PUT,
                self.client.url(
                    &[
                        "policies",
                        UsageLimits::PATH,
                        policy_id,
                        "entities",
                        entity_id,
                        "reset",
                    ],
                    &[],
                ),
                None,
                Idempotency::Idempotent,
            )
            .await?;
        Ok(())
    }
}
