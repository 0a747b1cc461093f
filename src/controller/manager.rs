//! The `run` subcommand's process: API key, Admin API client with metrics, the HTTP server
//! (`/metrics`, `/healthz`, `/readyz`), leader election on a Lease, and graceful shutdown.
//!
//! Lifecycle:
//! 1. The HTTP server starts at once (liveness answers from the start); a background task pings
//!    the Admin API until it answers (readiness).
//! 2. With leader election (the default) the process waits for the Lease; a standby only serves
//!    metrics and health. Without it, the process leads at once.
//! 3. The leader runs the controllers until SIGTERM/Ctrl-C or until it loses the Lease. On
//!    SIGTERM in-flight reconciles finish, then the Lease is released so a standby takes over at
//!    once. On a lost Lease the process exits with an error, so Kubernetes restarts it and it
//!    rejoins the election as a standby.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use super::Context;
use crate::config::{ApiKeySource, OperatorSettings, checked_key, read_api_key};
use crate::metrics::{self, Health, Metrics};
use crate::portkey::{ApiKey, ClientConfig, PortkeyClient};

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Resolves once `rx` holds `true` (or its sender is gone).
async fn until_set(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Why the operator could not start, or stopped: the step and its cause (never a key).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot reach the Kubernetes API (kubeconfig or in-cluster config): {0}")]
    Kubernetes(#[source] kube::Error),
    /// The Admin API key from the environment or a file (the message names the source).
    #[error("{0}")]
    ApiKey(String),
    #[error("cannot read the API key Secret {namespace}/{name}: {source}")]
    ApiKeySecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the Secret {namespace}/{name} has no key {key:?}")]
    SecretKeyMissing {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("the Secret {namespace}/{name} key {key:?} is not UTF-8 text")]
    SecretKeyNotText {
        namespace: String,
        name: String,
        key: String,
    },
    #[error(
        "cannot derive the installation id from the kube-system namespace ({0}); set --installation-id (installationId)"
    )]
    InstallationId(#[source] kube::Error),
    #[error("the kube-system namespace UID gives no installation id: {0}; set --installation-id")]
    InstallationIdInvalid(String),
    #[error(transparent)]
    Client(#[from] crate::portkey::PortkeyError),
    #[error("metricsBindAddress {addr}: {source}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("leader election Lease {lease}: {source}")]
    Lease {
        lease: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("leader election stopped unexpectedly")]
    LeaderElectionStopped,
    #[error("lost the leader Lease; exiting so that a restart rejoins the election as a standby")]
    LostLease,
}

/// Reads the API key from its source; a Secret is read through the Kubernetes API in
/// `namespace`. Errors name the source, never the key.
async fn api_key(
    source: &ApiKeySource,
    client: &kube::Client,
    namespace: &str,
) -> Result<ApiKey, RunError> {
    let ApiKeySource::Secret { name, key } = source else {
        return read_api_key(source).map_err(RunError::ApiKey);
    };
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|source| RunError::ApiKeySecret {
            namespace: namespace.to_owned(),
            name: name.clone(),
            source,
        })?;
    key_in(&secret, namespace, name, key)
}

/// The secret from a Secret object (`data`, else `stringData`).
fn key_in(secret: &Secret, namespace: &str, name: &str, key: &str) -> Result<ApiKey, RunError> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| RunError::SecretKeyMissing {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
        })?;
    let text = String::from_utf8(bytes).map_err(|_| RunError::SecretKeyNotText {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        key: key.to_owned(),
    })?;
    checked_key(text).map_err(RunError::ApiKey)
}

/// Uses a new key when its source changes, without a restart: the Secret is watched (by name:
/// the chart grants watch on that one Secret only), and any 401 from Portkey makes the source
/// (Secret or file) be read again. The key is never logged.
async fn keep_key_fresh(
    source: ApiKeySource,
    kube: kube::Client,
    namespace: String,
    portkey: PortkeyClient,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let refused = portkey.key_refused();
    let apply = |key: Result<ApiKey, RunError>| match key {
        Ok(key) => match portkey.set_api_key(&key) {
            Ok(true) => tracing::info!("the Admin API key changed; using the new one"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not use the new Admin API key"),
        },
        Err(e) => tracing::warn!(error = %e, "could not read the Admin API key"),
    };
    match source {
        ApiKeySource::Secret { name, key } => {
            let api: Api<Secret> = Api::namespaced(kube.clone(), &namespace);
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut changes = watcher(api, config)
                .default_backoff()
                .applied_objects()
                .boxed();
            loop {
                tokio::select! {
                    change = changes.next() => match change {
                        Some(Ok(secret)) => apply(key_in(&secret, &namespace, &name, &key)),
                        Some(Err(e)) => tracing::warn!(error = %e, "watching the API key Secret"),
                        None => return,
                    },
                    () = refused.notified() => {
                        tracing::warn!("Portkey refused the Admin API key (401); reading the Secret again");
                        apply(api_key(&ApiKeySource::Secret { name: name.clone(), key: key.clone() }, &kube, &namespace).await);
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        }
        ApiKeySource::File(path) => loop {
            refused.notified().await;
            tracing::warn!("Portkey refused the Admin API key (401); reading the key file again");
            apply(read_api_key(&ApiKeySource::File(path.clone())).map_err(RunError::ApiKey));
            tokio::time::sleep(Duration::from_secs(5)).await;
        },
        ApiKeySource::Env => loop {
            refused.notified().await;
            tracing::warn!(
                "Portkey refused the Admin API key (401); a key from PORTKEY_API_KEY cannot change without a restart (use a Secret or a file to rotate keys)"
            );
            tokio::time::sleep(Duration::from_secs(60)).await;
        },
    }
}

/// Pings the Admin API until it answers, then marks it in `health` (with backoff, at most 30 s
/// between tries).
async fn probe_admin_api(portkey: PortkeyClient, health: Arc<Health>) {
    let mut delay = Duration::from_secs(1);
    loop {
        match portkey.ping().await {
            Ok(()) => {
                tracing::info!("the Portkey Admin API answered");
                health.set_admin_api_ok(true);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, ?delay, "the Portkey Admin API did not answer; retrying")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// The default installation id: the first 8 characters of the `kube-system` namespace's UID,
/// stable for the life of the cluster and different between clusters.
async fn cluster_installation_id(kube: &kube::Client) -> Result<String, RunError> {
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(kube.clone());
    let ns = api
        .get("kube-system")
        .await
        .map_err(RunError::InstallationId)?;
    let uid = ns.metadata.uid.unwrap_or_default().to_ascii_lowercase();
    let id: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    crate::plan::marker::validate_installation_id(&id).map_err(RunError::InstallationIdInvalid)?;
    Ok(id)
}

/// This instance's identity in the Lease: the pod name (unique per pod), else host and a
/// random suffix.
fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "portkey-budget-operator".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{base}-{}", &suffix[..8])
}

/// Runs the operator until SIGTERM/Ctrl-C (Ok) or a lost Lease (Err).
pub async fn run(settings: OperatorSettings) -> Result<(), RunError> {
    let kube = kube::Client::try_default()
        .await
        .map_err(RunError::Kubernetes)?;
    let namespace = settings
        .leader_election
        .namespace
        .clone()
        .unwrap_or_else(|| kube.default_namespace().to_owned());
    let key = api_key(&settings.api_key, &kube, &namespace).await?;
    let mut settings = settings;
    if settings.controller.installation_id.is_empty() {
        settings.controller.installation_id = cluster_installation_id(&kube).await?;
    }
    tracing::info!(
        installation = %settings.controller.installation_id,
        adopt_from = ?settings.controller.adopt_from_installations,
        "ownership markers carry this installation id"
    );
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let mut client_config = ClientConfig::new(settings.admin_api_url.clone(), key);
    client_config.timeout = settings.admin_api_timeout;
    client_config.max_requests_per_second = settings.admin_api_rate_limit;
    let observer = metrics.clone();
    client_config.observer = Some(Arc::new(move |call| observer.api_call(call)));
    let portkey = PortkeyClient::new(client_config)?;
    tracing::info!(
        admin_api = %portkey.base_url(),
        dry_run = settings.controller.dry_run,
        "starting portkey-budget-operator"
    );
    if settings.controller.dry_run {
        tracing::warn!(
            "dry-run mode: nothing is written to Portkey; WouldCreate/WouldUpdate/WouldArchive Events say what would be"
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let server = match settings.metrics_bind_address {
        Some(addr) => {
            let (local, serve) = metrics::bind(
                addr,
                metrics.clone(),
                health.clone(),
                until_set(stop_rx.clone()),
            )
            .await
            .map_err(|source| RunError::MetricsBind { addr, source })?;
            tracing::info!(address = %local, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    let probe = tokio::spawn(probe_admin_api(portkey.clone(), health.clone()));
    let key_refresh = tokio::spawn(keep_key_fresh(
        settings.api_key.clone(),
        kube.clone(),
        namespace.clone(),
        portkey.clone(),
    ));

    let ctx = Context::with_metrics(
        kube.clone(),
        portkey,
        settings.controller.clone(),
        super::reporter(),
        metrics.clone(),
        health.clone(),
    );
    let result = if settings.leader_election.enabled {
        lead_then_run(&settings, kube, &namespace, ctx, stop_rx).await
    } else {
        metrics.set_leader(true);
        health.set_leading(true);
        super::run(ctx, until_set(stop_rx)).await;
        Ok(())
    };
    metrics.set_leader(false);
    probe.abort();
    key_refresh.abort();
    if let Some(server) = server {
        server.abort();
    }
    tracing::info!("stopped");
    result
}

async fn lead_then_run(
    settings: &OperatorSettings,
    kube: kube::Client,
    namespace: &str,
    ctx: Arc<Context>,
    mut stop_rx: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let le = &settings.leader_election;
    let duration = le.lease_duration.as_secs().max(3);
    let grace = (duration / 3).max(1);
    let identity = identity();
    let manager = LeaseManagerBuilder::new(kube, le.lease_name.clone())
        .with_namespace(namespace.to_owned())
        .with_identity(identity.clone())
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await
        .map_err(|source| RunError::Lease {
            lease: format!("{namespace}/{}", le.lease_name),
            source,
        })?;
    let (mut leader_rx, lease_task) = manager.watch().await;
    tracing::info!(lease = %format!("{namespace}/{}", le.lease_name), %identity, "waiting to become the leader");
    loop {
        if *leader_rx.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader_rx.changed() => {
                if changed.is_err() {
                    return Err(RunError::LeaderElectionStopped);
                }
            }
            _ = stop_rx.changed() => {
                if *stop_rx.borrow() {
                    drop(leader_rx);
                    let _ = lease_task.await;
                    return Ok(());
                }
            }
        }
    }
    tracing::info!(%identity, "became the leader; starting the controllers");
    ctx.metrics.set_leader(true);
    ctx.health.set_leading(true);

    // The controllers stop on SIGTERM or when the Lease is lost.
    let lost = Arc::new(AtomicBool::new(false));
    let (ctl_tx, ctl_rx) = watch::channel(false);
    let watch_lost = lost.clone();
    let mut stop = stop_rx.clone();
    let guard = tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = leader_rx.changed() => {
                    if changed.is_err() || !*leader_rx.borrow_and_update() {
                        tracing::error!("lost the leader Lease; stopping the controllers");
                        watch_lost.store(true, Ordering::SeqCst);
                        break;
                    }
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
            }
        }
        let _ = ctl_tx.send(true);
        leader_rx
    });
    super::run(ctx.clone(), until_set(ctl_rx)).await;
    // Only now, with in-flight reconciles finished, give the Lease up: dropping the receiver
    // makes the lease task release it and end.
    drop(guard.await);
    ctx.health.set_leading(false);
    match tokio::time::timeout(Duration::from_secs(10), lease_task).await {
        Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the leader Lease"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the leader election task failed"),
        Err(_) => tracing::warn!("timed out releasing the leader Lease"),
    }
    if lost.load(Ordering::SeqCst) {
        return Err(RunError::LostLease);
    }
    Ok(())
}
