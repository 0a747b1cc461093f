//! Operator configuration: `run` flags and environment variables.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use crate::portkey::{ApiKey, DEFAULT_BASE_URL};

/// A duration flag: `90s`, `5m`, `1h 30m` or ISO 8601 (`PT90S`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagDuration(pub Duration);

impl FromStr for FlagDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let d = jiff::SignedDuration::from_str(s.trim())
            .map_err(|e| format!("{s:?} is not a duration such as 60s, 5m or 1h: {e}"))?;
        if d.is_negative() {
            return Err(format!("{s:?} is negative"));
        }
        Duration::try_from(d)
            .map(FlagDuration)
            .map_err(|e| format!("{s:?}: {e}"))
    }
}

/// Flags of `portkey-budget-operator run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Portkey Admin API base URL, including `/v1`.
    #[arg(long, env = "PORTKEY_ADMIN_API_URL", default_value = DEFAULT_BASE_URL)]
    pub admin_api_url: String,
    /// Read the Admin API key from this file (else from the environment variable PORTKEY_API_KEY).
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// Workspace (id or slug) for policies that name none and live in an unbound namespace.
    #[arg(long, env = "PORTKEY_DEFAULT_WORKSPACE")]
    pub default_workspace: Option<String>,
    /// How often each policy's usage is read from Portkey (and drift checked); jittered ±10 %.
    #[arg(long, default_value = "60s")]
    pub usage_refresh_interval: FlagDuration,
    /// Resources reconciled at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u16,
    /// Watch only this namespace (repeatable); default: all namespaces.
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
    /// Refuse policies in namespaces without the `budgets.portkey-operator.io/workspace` annotation.
    #[arg(long)]
    pub require_namespace_binding: bool,
    /// Admin API writes per second, shared by all resources.
    #[arg(long, default_value_t = 10)]
    pub admin_api_write_rate: u32,
    /// Per-request timeout for the Admin API.
    #[arg(long, default_value = "15s")]
    pub admin_api_timeout: FlagDuration,
    /// How long a create that may have reached Portkey is waited for (found by its ownership
    /// marker) before it is sent again.
    #[arg(long, default_value = "30s")]
    pub create_pending_grace: FlagDuration,
}

impl RunArgs {
    /// The API key: `--api-key-file`, else `PORTKEY_API_KEY`. The error never holds the key.
    pub fn api_key(&self) -> Result<ApiKey, String> {
        let key = match &self.api_key_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("--api-key-file {}: {e}", path.display()))?,
            None => std::env::var("PORTKEY_API_KEY").map_err(|_| {
                "no Admin API key: set PORTKEY_API_KEY or pass --api-key-file".to_owned()
            })?,
        };
        let key = ApiKey::new(key);
        if key.is_empty() {
            return Err("the Admin API key is empty".into());
        }
        Ok(key)
    }

    pub fn controller_config(&self) -> ControllerConfig {
        ControllerConfig {
            default_workspace: self.default_workspace.clone(),
            usage_refresh_interval: self.usage_refresh_interval.0,
            require_namespace_binding: self.require_namespace_binding,
            create_pending_grace: self.create_pending_grace.0,
            concurrency: self.concurrency,
            namespaces: self.namespaces.clone(),
            admin_api_write_rate: self.admin_api_write_rate,
        }
    }
}

/// What the controller needs to know, independent of how it was configured.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub default_workspace: Option<String>,
    pub usage_refresh_interval: Duration,
    pub require_namespace_binding: bool,
    pub create_pending_grace: Duration,
    pub concurrency: u16,
    pub namespaces: Vec<String>,
    pub admin_api_write_rate: u32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            default_workspace: None,
            usage_refresh_interval: Duration::from_secs(60),
            require_namespace_binding: false,
            create_pending_grace: Duration::from_secs(30),
            concurrency: 4,
            namespaces: Vec::new(),
            admin_api_write_rate: 10,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_friendly_forms() {
        assert_eq!(
            FlagDuration::from_str("60s").unwrap().0,
            Duration::from_secs(60)
        );
        assert_eq!(
            FlagDuration::from_str("5m").unwrap().0,
            Duration::from_secs(300)
        );
        assert_eq!(
            FlagDuration::from_str("1h 30m").unwrap().0,
            Duration::from_secs(5400)
        );
        assert!(
            FlagDuration::from_str("soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
