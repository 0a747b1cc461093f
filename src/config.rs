//! Operator configuration: `run` flags, environment variables and an optional YAML file.
//!
//! Precedence, per setting: a flag (or its environment variable) wins over the config file
//! (`--config`), which wins over the built-in default. The file's keys are the flags' names in camelCase
//! (`config/operator.yaml` is the documented example); an unknown key is an error that names it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::plan::marker::validate_installation_id;
pub use crate::plan::trust::{DATA_PLANE_SCOPES, KeyScopePolicy};
use crate::portkey::{ApiKey, DEFAULT_BASE_URL};
use crate::telemetry::LogFormat;

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

impl<'de> Deserialize<'de> for FlagDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FlagDuration::from_str(&s).map_err(serde::de::Error::custom)
    }
}

/// Where the Admin API key comes from (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    /// The environment variable `PORTKEY_API_KEY`.
    Env,
    /// A file, e.g. a mounted Secret.
    File(PathBuf),
    /// A Secret read through the Kubernetes API, in the operator's namespace.
    Secret { name: String, key: String },
}

/// Flags of `portkey-budget-operator run`. Every setting is optional here so that the config
/// file can supply it; the defaults are applied by [`RunArgs::resolve`].
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// YAML config file (keys: the flags in camelCase; see config/operator.yaml). Flags win.
    #[arg(long, env = "PORTKEY_OPERATOR_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Portkey Admin API base URL, including `/v1` [default: https://api.portkey.ai/v1].
    #[arg(long, env = "PORTKEY_ADMIN_API_URL")]
    pub admin_api_url: Option<String>,
    /// Read the Admin API key from this file (else from the environment variable PORTKEY_API_KEY).
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// Read the Admin API key from this Secret (in the operator's namespace) through the
    /// Kubernetes API.
    #[arg(long, value_name = "NAME")]
    pub api_key_secret: Option<String>,
    /// The data key in `--api-key-secret` [default: api-key].
    #[arg(long, value_name = "KEY")]
    pub api_key_secret_key: Option<String>,
    /// Workspace (id or slug) for policies that name none and live in an unbound namespace.
    #[arg(long, env = "PORTKEY_DEFAULT_WORKSPACE")]
    pub default_workspace: Option<String>,
    /// How often the usage of UsageLimitPolicies and WorkspaceBudgets is read from Portkey (and
    /// drift checked); jittered ±10 % [default: 60s].
    #[arg(long)]
    pub usage_refresh_interval: Option<FlagDuration>,
    /// How often RateLimitPolicies (no usage to report) are checked for drift; jittered ±10 %
    /// [default: 10m].
    #[arg(long)]
    pub resync_interval: Option<FlagDuration>,
    /// Resources reconciled at once, per kind [default: 4].
    #[arg(long)]
    pub concurrency: Option<u16>,
    /// Watch only this namespace (repeatable); default: all namespaces.
    #[arg(long = "namespace", value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
    /// Refuse policies in namespaces without the `budgets.portkey-operator.io/workspace`
    /// annotation [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub require_namespace_binding: Option<bool>,
    /// In namespaces without a binding, take `spec.workspace` as it is: for clusters where
    /// everyone who writes budgets may use every workspace. Off, an unbound namespace gets only
    /// `--default-workspace` (or nothing) [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub single_tenant: Option<bool>,
    /// A scope an issued API key (`spec.issue.scopes`) may ask for (repeatable) [default: the
    /// data-plane scopes completions.write, logs.write, prompts.render, mcp.invoke,
    /// agents.invoke, guardrails.invoke].
    #[arg(long = "allowed-key-scope", value_name = "SCOPE")]
    pub allowed_key_scopes: Vec<String>,
    /// Allow issuing `user` keys (`spec.issue.subType: user`) [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_user_keys: Option<bool>,
    /// Allow `spec.existing` to manage keys holding scopes beyond the allowed ones (management
    /// keys) [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_broad_existing_keys: Option<bool>,
    /// Admin API writes per second, shared by all resources [default: 10].
    #[arg(long)]
    pub admin_api_write_rate: Option<u32>,
    /// Per-request timeout for the Admin API [default: 15s].
    #[arg(long)]
    pub admin_api_timeout: Option<FlagDuration>,
    /// At most this many Admin API requests in any second, reads and writes together (0 or
    /// unset: no limit beyond --admin-api-write-rate).
    #[arg(long)]
    pub admin_api_rate_limit: Option<u32>,
    /// How long a create that may have reached Portkey is waited for (found by its ownership
    /// marker) before it is sent again [default: 30s].
    #[arg(long)]
    pub create_pending_grace: Option<FlagDuration>,
    /// Never write to Portkey: record `WouldCreate`/`WouldUpdate`/`WouldArchive` Events instead
    /// [default: false].
    #[arg(long, env = "PORTKEY_OPERATOR_DRY_RUN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub dry_run: Option<bool>,
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz` [default:
    /// 0.0.0.0:8080]; `off` disables it.
    #[arg(long, value_name = "ADDR|off")]
    pub metrics_bind_address: Option<String>,
    /// Elect a leader on a Lease so that only one replica reconciles [default: true].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub leader_elect: Option<bool>,
    /// Namespace of the leader-election Lease and of `--api-key-secret` [default: POD_NAMESPACE,
    /// else the kubeconfig's namespace].
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease [default: portkey-budget-operator].
    #[arg(long)]
    pub leader_election_lease_name: Option<String>,
    /// How long a leader's lease lasts without renewal: a standby takes over within this time
    /// after the leader dies [default: 15s].
    #[arg(long)]
    pub leader_election_lease_duration: Option<FlagDuration>,
    /// This installation's identity, written into every ownership marker (1-32 of a-z, 0-9,
    /// '-') [default: derived from the kube-system namespace UID].
    #[arg(long, env = "PORTKEY_OPERATOR_INSTALLATION_ID")]
    pub installation_id: Option<String>,
    /// Also take over policies marked by this other installation (repeatable): a migration
    /// between clusters. Without it, another installation's policies are never adopted or
    /// archived.
    #[arg(long = "adopt-from-installation", value_name = "ID")]
    pub adopt_from_installations: Vec<String>,
}

/// The config file. Keys mirror the flags, in camelCase.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    pub admin_api_url: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub api_key_secret: Option<FileSecretRef>,
    pub default_workspace: Option<String>,
    pub usage_refresh_interval: Option<FlagDuration>,
    pub resync_interval: Option<FlagDuration>,
    pub concurrency: Option<u16>,
    pub namespaces: Option<Vec<String>>,
    pub require_namespace_binding: Option<bool>,
    pub single_tenant: Option<bool>,
    pub allowed_key_scopes: Option<Vec<String>>,
    pub allow_user_keys: Option<bool>,
    pub allow_broad_existing_keys: Option<bool>,
    pub admin_api_write_rate: Option<u32>,
    pub admin_api_timeout: Option<FlagDuration>,
    pub admin_api_rate_limit: Option<u32>,
    pub create_pending_grace: Option<FlagDuration>,
    pub dry_run: Option<bool>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub leader_election: Option<FileLeaderElection>,
    pub installation_id: Option<String>,
    pub adopt_from_installations: Option<Vec<String>>,
}

/// `apiKeySecret` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSecretRef {
    pub name: String,
    pub key: Option<String>,
}

/// `leaderElection` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileLeaderElection {
    pub enabled: Option<bool>,
    pub namespace: Option<String>,
    pub lease_name: Option<String>,
    pub lease_duration: Option<FlagDuration>,
}

impl FileConfig {
    /// Reads and parses a config file; errors name the file and the offending key.
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        FileConfig::parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<FileConfig, String> {
        if text.trim().is_empty() {
            return Ok(FileConfig::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }
}

/// Leader election settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    pub enabled: bool,
    /// `None`: POD_NAMESPACE was not set; the kubeconfig's namespace is used.
    pub namespace: Option<String>,
    pub lease_name: String,
    pub lease_duration: Duration,
}

/// Everything `run` needs, resolved from flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub struct OperatorSettings {
    pub admin_api_url: String,
    pub api_key: ApiKeySource,
    pub admin_api_timeout: Duration,
    /// All Admin API requests per second (`None`: unlimited).
    pub admin_api_rate_limit: Option<u32>,
    pub metrics_bind_address: Option<SocketAddr>,
    pub leader_election: LeaderElection,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub controller: ControllerConfig,
}

fn at_least(name: &str, value: Duration, min: Duration) -> Result<Duration, String> {
    if value < min {
        return Err(format!(
            "{name}: {value:?} is too short (the minimum is {min:?})"
        ));
    }
    Ok(value)
}

impl RunArgs {
    /// Merges flags, the config file (when `--config` names one) and defaults, and checks the
    /// values. Errors name the setting.
    pub fn resolve(&self) -> Result<OperatorSettings, String> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        self.resolve_with(file)
    }

    /// [`RunArgs::resolve`] with an already parsed file. Settings are checked in this order
    /// (the first error is returned): concurrency, write rate, metrics address, lease, the
    /// installation ids, the intervals, the Admin API timeout.
    pub fn resolve_with(&self, file: FileConfig) -> Result<OperatorSettings, String> {
        let api_key = self.api_key_source(&file);
        let write_limits = self.write_limits(&file)?;
        let metrics_bind_address = self.metrics_bind_address(&file)?;
        let leader_election = self.leader_election(&file)?;
        let controller = self.controller_config(&file, write_limits)?;
        Ok(OperatorSettings {
            admin_api_url: self
                .admin_api_url
                .clone()
                .or(file.admin_api_url.clone())
                .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned()),
            api_key,
            admin_api_timeout: at_least(
                "adminApiTimeout",
                pick(
                    self.admin_api_timeout,
                    file.admin_api_timeout,
                    Duration::from_secs(15),
                ),
                Duration::from_millis(100),
            )?,
            admin_api_rate_limit: self.admin_api_rate_limit(&file),
            metrics_bind_address,
            leader_election,
            log_format: file.log_format,
            log_level: file.log_level.clone(),
            controller,
        })
    }

    /// The key's source: a flag (file, Secret), else `PORTKEY_API_KEY`, else the config
    /// file's (file, Secret), else `PORTKEY_API_KEY` (read, and missing, later).
    fn api_key_source(&self, file: &FileConfig) -> ApiKeySource {
        if let Some(path) = self.api_key_file.clone() {
            ApiKeySource::File(path)
        } else if let Some(name) = self.api_key_secret.clone() {
            ApiKeySource::Secret {
                name,
                key: self
                    .api_key_secret_key
                    .clone()
                    .unwrap_or_else(|| "api-key".into()),
            }
        } else if std::env::var_os("PORTKEY_API_KEY").is_some() {
            ApiKeySource::Env
        } else if let Some(path) = file.api_key_file.clone() {
            ApiKeySource::File(path)
        } else if let Some(s) = file.api_key_secret.clone() {
            ApiKeySource::Secret {
                name: s.name,
                key: s.key.unwrap_or_else(|| "api-key".into()),
            }
        } else {
            ApiKeySource::Env
        }
    }

    /// `concurrency` and `adminApiWriteRate`, each at least 1.
    fn write_limits(&self, file: &FileConfig) -> Result<(u16, u32), String> {
        let d = ControllerConfig::default();
        let concurrency = self
            .concurrency
            .or(file.concurrency)
            .unwrap_or(d.concurrency);
        if concurrency == 0 {
            return Err("concurrency: must be at least 1".into());
        }
        let write_rate = self
            .admin_api_write_rate
            .or(file.admin_api_write_rate)
            .unwrap_or(d.admin_api_write_rate);
        if write_rate == 0 {
            return Err("adminApiWriteRate: must be at least 1 write per second".into());
        }
        Ok((concurrency, write_rate))
    }

    /// `metricsBindAddress`: an address, `off` (none), or `0.0.0.0:8080`.
    fn metrics_bind_address(&self, file: &FileConfig) -> Result<Option<SocketAddr>, String> {
        match self
            .metrics_bind_address
            .clone()
            .or(file.metrics_bind_address.clone())
        {
            None => Ok(Some(SocketAddr::from(([0, 0, 0, 0], 8080)))),
            Some(s) if s.eq_ignore_ascii_case("off") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|e| {
                format!(
                    "metricsBindAddress: {s:?} is not an address such as 0.0.0.0:8080 or off: {e}"
                )
            }),
        }
    }

    /// `leaderElection`: on by default, a Lease of 15 s (at least 3 s).
    fn leader_election(&self, file: &FileConfig) -> Result<LeaderElection, String> {
        let le = file.leader_election.clone().unwrap_or_default();
        let lease_duration = at_least(
            "leaderElection.leaseDuration",
            pick(
                self.leader_election_lease_duration,
                le.lease_duration,
                Duration::from_secs(15),
            ),
            Duration::from_secs(3),
        )?;
        Ok(LeaderElection {
            enabled: self.leader_elect.or(le.enabled).unwrap_or(true),
            namespace: self.leader_election_namespace.clone().or(le.namespace),
            lease_name: self
                .leader_election_lease_name
                .clone()
                .or(le.lease_name)
                .unwrap_or_else(|| "portkey-budget-operator".into()),
            lease_duration,
        })
    }

    /// All Admin API requests per second (`None`, or 0: unlimited).
    fn admin_api_rate_limit(&self, file: &FileConfig) -> Option<u32> {
        self.admin_api_rate_limit
            .or(file.admin_api_rate_limit)
            .filter(|r| *r > 0)
    }

    /// `installationId` and `adoptFromInstallations`, each a valid installation id.
    fn installations(&self, file: &FileConfig) -> Result<(String, Vec<String>), String> {
        let installation_id = self
            .installation_id
            .clone()
            .or(file.installation_id.clone());
        if let Some(id) = &installation_id {
            validate_installation_id(id).map_err(|e| format!("installationId: {e}"))?;
        }
        let adopt_from = if self.adopt_from_installations.is_empty() {
            file.adopt_from_installations.clone().unwrap_or_default()
        } else {
            self.adopt_from_installations.clone()
        };
        for id in &adopt_from {
            validate_installation_id(id).map_err(|e| format!("adoptFromInstallations: {e}"))?;
        }
        Ok((installation_id.unwrap_or_default(), adopt_from))
    }

    /// Which key scopes issued keys may have, and which existing keys are accepted.
    fn key_scopes(&self, file: &FileConfig) -> KeyScopePolicy {
        KeyScopePolicy {
            allowed: if self.allowed_key_scopes.is_empty() {
                file.allowed_key_scopes
                    .clone()
                    .unwrap_or_else(|| DATA_PLANE_SCOPES.iter().map(|s| (*s).to_owned()).collect())
            } else {
                self.allowed_key_scopes.clone()
            },
            allow_user_keys: self
                .allow_user_keys
                .or(file.allow_user_keys)
                .unwrap_or(false),
            allow_broad_existing_keys: self
                .allow_broad_existing_keys
                .or(file.allow_broad_existing_keys)
                .unwrap_or(false),
        }
    }

    /// The reconcilers' settings, with the checked concurrency and write rate.
    fn controller_config(
        &self,
        file: &FileConfig,
        (concurrency, admin_api_write_rate): (u16, u32),
    ) -> Result<ControllerConfig, String> {
        let d = ControllerConfig::default();
        let (installation_id, adopt_from_installations) = self.installations(file)?;
        Ok(ControllerConfig {
            installation_id,
            adopt_from_installations,
            default_workspace: self
                .default_workspace
                .clone()
                .or(file.default_workspace.clone()),
            usage_refresh_interval: at_least(
                "usageRefreshInterval",
                pick(
                    self.usage_refresh_interval,
                    file.usage_refresh_interval,
                    d.usage_refresh_interval,
                ),
                Duration::from_secs(1),
            )?,
            resync_interval: at_least(
                "resyncInterval",
                pick(
                    self.resync_interval,
                    file.resync_interval,
                    d.resync_interval,
                ),
                Duration::from_secs(1),
            )?,
            require_namespace_binding: self
                .require_namespace_binding
                .or(file.require_namespace_binding)
                .unwrap_or(false),
            single_tenant: self.single_tenant.or(file.single_tenant).unwrap_or(false),
            key_scopes: self.key_scopes(file),
            create_pending_grace: pick(
                self.create_pending_grace,
                file.create_pending_grace,
                d.create_pending_grace,
            ),
            concurrency,
            namespaces: if self.namespaces.is_empty() {
                file.namespaces.clone().unwrap_or_default()
            } else {
                self.namespaces.clone()
            },
            admin_api_write_rate,
            dry_run: self.dry_run.or(file.dry_run).unwrap_or(false),
            // Periodic refreshes may use half of the Admin API's request rate; creates,
            // updates and first reads are never queued behind them.
            refresh_read_rate: self.admin_api_rate_limit(file).map(|r| (r / 2).max(1)),
        })
    }
}

/// A duration from the flag, else the file, else the default.
fn pick(flag: Option<FlagDuration>, file: Option<FlagDuration>, default: Duration) -> Duration {
    flag.or(file).map_or(default, |f| f.0)
}

/// Reads the API key from the environment or a file (a Secret source is read by the caller,
/// which has a Kubernetes client). The error never holds the key.
pub fn read_api_key(source: &ApiKeySource) -> Result<ApiKey, String> {
    let key = match source {
        ApiKeySource::File(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("--api-key-file {}: {e}", path.display()))?,
        ApiKeySource::Env => std::env::var("PORTKEY_API_KEY").map_err(|_| {
            "no Admin API key: set PORTKEY_API_KEY, --api-key-file or --api-key-secret".to_owned()
        })?,
        ApiKeySource::Secret { name, .. } => {
            return Err(format!(
                "the API key Secret {name} must be read through the Kubernetes API"
            ));
        }
    };
    checked_key(key)
}

/// Trims and checks a key; never echoes it.
pub fn checked_key(key: String) -> Result<ApiKey, String> {
    let key = ApiKey::new(key);
    if key.is_empty() {
        return Err("the Admin API key is empty".into());
    }
    Ok(key)
}

/// What the controller needs to know, independent of how it was configured.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This installation's identity in ownership markers; empty until `run` derives it from the
    /// cluster (the legacy marker form is written while it is empty).
    pub installation_id: String,
    /// Installations whose policies this one takes over (a migration).
    pub adopt_from_installations: Vec<String>,
    pub default_workspace: Option<String>,
    /// Refresh period of resources that report usage (UsageLimitPolicy, WorkspaceBudget).
    pub usage_refresh_interval: Duration,
    /// Drift-check period of resources without usage (RateLimitPolicy).
    pub resync_interval: Duration,
    pub require_namespace_binding: bool,
    /// Unbound namespaces may name any workspace in `spec.workspace` (`--single-tenant`).
    pub single_tenant: bool,
    /// What issued and existing API keys may hold.
    pub key_scopes: KeyScopePolicy,
    pub create_pending_grace: Duration,
    pub concurrency: u16,
    pub namespaces: Vec<String>,
    pub admin_api_write_rate: u32,
    /// Never write to Portkey; record `Would*` Events instead.
    pub dry_run: bool,
    /// Admin API reads per second that periodic refreshes of resources already in force may
    /// use (`None`: no limit of their own). A refresh over the budget is put back in the queue,
    /// so it never holds a worker that a create or an update could use.
    pub refresh_read_rate: Option<u32>,
}

impl ControllerConfig {
    /// The ownership identity of a resource under this installation.
    pub fn identity(
        &self,
        kind: &'static str,
        namespace: Option<&str>,
        name: &str,
    ) -> crate::plan::Identity {
        crate::plan::Identity::new(kind, namespace, name)
            .installed(&self.installation_id, &self.adopt_from_installations)
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            installation_id: String::new(),
            adopt_from_installations: Vec::new(),
            default_workspace: None,
            usage_refresh_interval: Duration::from_secs(60),
            resync_interval: Duration::from_secs(600),
            require_namespace_binding: false,
            single_tenant: false,
            key_scopes: KeyScopePolicy::default(),
            create_pending_grace: Duration::from_secs(30),
            concurrency: 4,
            namespaces: Vec::new(),
            admin_api_write_rate: 10,
            dry_run: false,
            refresh_read_rate: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(argv: &[&str]) -> RunArgs {
        let mut all = vec!["run"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all).expect("flags parse").run
    }

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

    #[test]
    fn defaults_apply_without_flags_or_file() {
        let s = args(&[]).resolve_with(FileConfig::default()).unwrap();
        assert_eq!(s.admin_api_url, DEFAULT_BASE_URL);
        assert_eq!(s.controller.usage_refresh_interval, Duration::from_secs(60));
        assert_eq!(s.controller.resync_interval, Duration::from_secs(600));
        assert_eq!(s.controller.concurrency, 4);
        assert!(!s.controller.dry_run);
        assert!(s.leader_election.enabled);
        assert_eq!(s.leader_election.lease_name, "portkey-budget-operator");
        assert_eq!(
            s.metrics_bind_address,
            Some(SocketAddr::from(([0, 0, 0, 0], 8080)))
        );
    }

    #[test]
    fn the_example_config_file_parses_and_flags_win_over_it() {
        let text = include_str!("../config/operator.yaml");
        let file = FileConfig::parse(text).expect("config/operator.yaml is valid");
        let from_file = args(&[]).resolve_with(file.clone()).unwrap();
        assert_eq!(
            from_file.controller.usage_refresh_interval,
            Duration::from_secs(60)
        );
        assert_eq!(from_file.controller.admin_api_write_rate, 10);
        assert_eq!(
            from_file.api_key,
            ApiKeySource::Secret {
                name: "portkey-admin-api-key".into(),
                key: "api-key".into()
            }
        );
        let s = args(&[
            "--usage-refresh-interval",
            "5m",
            "--dry-run",
            "--concurrency",
            "9",
            "--leader-elect=false",
            "--metrics-bind-address",
            "off",
        ])
        .resolve_with(file)
        .unwrap();
        assert_eq!(
            s.controller.usage_refresh_interval,
            Duration::from_secs(300)
        );
        assert!(s.controller.dry_run);
        assert_eq!(s.controller.concurrency, 9);
        assert!(!s.leader_election.enabled);
        assert_eq!(s.metrics_bind_address, None);
    }

    #[test]
    fn file_values_are_used_when_no_flag_is_given() {
        let file = FileConfig::parse(
            "dryRun: true\nconcurrency: 2\nnamespaces: [team-a, team-b]\nresyncInterval: 90s\nleaderElection:\n  leaseName: x\n  leaseDuration: 20s\nlogFormat: json\n",
        )
        .unwrap();
        let s = args(&[]).resolve_with(file).unwrap();
        assert!(s.controller.dry_run);
        assert_eq!(s.controller.concurrency, 2);
        assert_eq!(s.controller.namespaces, vec!["team-a", "team-b"]);
        assert_eq!(s.controller.resync_interval, Duration::from_secs(90));
        assert_eq!(s.leader_election.lease_name, "x");
        assert_eq!(s.leader_election.lease_duration, Duration::from_secs(20));
        assert_eq!(s.log_format, Some(LogFormat::Json));
    }

    #[test]
    fn bad_config_names_the_key() {
        let unknown = FileConfig::parse("concurrencyy: 3\n").unwrap_err();
        assert!(unknown.contains("concurrencyy"), "{unknown}");
        let bad_duration = FileConfig::parse("resyncInterval: soon\n").unwrap_err();
        assert!(bad_duration.contains("not a duration"), "{bad_duration}");
        let zero = args(&[])
            .resolve_with(FileConfig::parse("concurrency: 0\n").unwrap())
            .unwrap_err();
        assert!(zero.starts_with("concurrency"), "{zero}");
        let short = args(&["--usage-refresh-interval", "10ms"])
            .resolve_with(FileConfig::default())
            .unwrap_err();
        assert!(short.starts_with("usageRefreshInterval"), "{short}");
        let addr = args(&["--metrics-bind-address", "everywhere"])
            .resolve_with(FileConfig::default())
            .unwrap_err();
        assert!(addr.starts_with("metricsBindAddress"), "{addr}");
    }
}
