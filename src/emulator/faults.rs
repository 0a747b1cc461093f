//! Injected faults (`POST /_emulator/faults`, `--faults`): what they are and how they are read.

use super::*;

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
    pub(super) fn targets(&self, method: &str, path: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
    }
}

/// The faults `POST /_emulator/faults` (and `--faults`) set: every key known, every value in
/// its range.
pub(super) fn parse_faults(body: &Value) -> ApiResult<Faults> {
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
pub(super) fn fault_int(
    obj: &Map<String, Value>,
    name: &str,
    lo: u64,
    hi: u64,
) -> ApiResult<Option<u64>> {
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
pub(super) fn fault_flag(obj: &Map<String, Value>, name: &str) -> ApiResult<bool> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(name, "must be true or false")),
    }
}

/// `error_rate`: from 0 to 1 (0 when absent).
pub(super) fn fault_rate(obj: &Map<String, Value>) -> ApiResult<f64> {
    match obj.get("error_rate") {
        None | Some(Value::Null) => Ok(0.0),
        Some(v) => v
            .as_f64()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| ApiError::invalid("error_rate", "must be a number from 0 to 1")),
    }
}

/// `method`: the one HTTP method faults apply to, upper case.
pub(super) fn fault_method(obj: &Map<String, Value>) -> ApiResult<Option<String>> {
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
pub(super) fn fault_path(obj: &Map<String, Value>) -> ApiResult<Option<String>> {
    match obj.get("path_contains") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(p)) if !p.is_empty() && p.chars().count() <= 256 => Ok(Some(p.clone())),
        Some(_) => Err(ApiError::invalid(
            "path_contains",
            "must be a non-empty string of at most 256 characters",
        )),
    }
}

impl FaultState {
    pub(super) fn set(&mut self, faults: Faults) {
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
