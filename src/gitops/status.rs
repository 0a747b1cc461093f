use std::fmt::Write as _;

use super::load::{Loaded, Resource};
use super::plan::{PlanSettings, RemoteCache, declared_identities, existing_key, match_remote};
use super::progress::Progress;
use crate::plan::api_key as keyplan;
use crate::plan::report::percent;
use crate::plan::schedule_text;
use crate::plan::workspace as wsplan;
use crate::portkey::*;

/// A `kubectl get`-like table of what is in force after `sync`.
pub async fn status_table(
    client: &PortkeyClient,
    resources: &[Loaded],
    settings: &PlanSettings,
    progress: &Progress,
) -> String {
    let default_workspace = settings.default_workspace.as_deref();
    let declared = declared_identities(resources, settings);
    let mut rows = vec![[
        "KIND".to_owned(),
        "NAME".into(),
        "WORKSPACE".into(),
        "LIMIT".into(),
        "PEAK USAGE".into(),
        "RESET".into(),
        "STATE".into(),
    ]];
    let mut cache = RemoteCache::default();
    progress.phase("status", resources.len());
    for loaded in resources {
        progress.step();
        let identity = loaded.identity(settings);
        let reference = loaded
            .workspace()
            .or(default_workspace)
            .unwrap_or("?")
            .to_owned();
        let Ok(ws) = cache.workspace_id(client, &reference).await else {
            rows.push([
                loaded.kind().into(),
                loaded.qualified(),
                reference,
                "-".into(),
                "-".into(),
                "-".into(),
                "workspace not found".into(),
            ]);
            continue;
        };
        let row = match &loaded.resource {
            Resource::Usage(o) => {
                let listed = cache
                    .listed::<UsageLimits>(client, &ws)
                    .await
                    .cloned()
                    .unwrap_or_default();
                let adopt = o.spec.adopt_policy_id.as_deref();
                let found = match_remote::<UsageLimits>(
                    client,
                    &listed,
                    &identity,
                    adopt,
                    &ws,
                    &declared,
                    |_| true,
                )
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|m| m.remote);
                match found {
                    Some(p) => {
                        let full = client
                            .usage_limits()
                            .get(
                                &p.id,
                                GetOptions {
                                    include_usage: true,
                                    ..Default::default()
                                },
                            )
                            .await
                            .unwrap_or_else(|_| p.clone());
                        let peak = full
                            .value_key_usage_map
                            .as_ref()
                            .and_then(|m| m.values().map(|u| u.current_usage).max())
                            .unwrap_or_default();
                        let reset = match full.next_usage_reset_at {
                            Some(t) => format!(
                                "{} (next {})",
                                schedule_text(full.periodic_reset, full.periodic_reset_days),
                                t.strftime("%Y-%m-%d")
                            ),
                            None => schedule_text(full.periodic_reset, full.periodic_reset_days),
                        };
                        [
                            loaded.kind().into(),
                            loaded.qualified(),
                            reference.clone(),
                            format!("{} {}", full.credit_limit.normalize(), full.limit_type),
                            format!(
                                "{} ({}%)",
                                peak.normalize(),
                                percent(peak, full.credit_limit)
                            ),
                            reset,
                            full.status.to_string(),
                        ]
                    }
                    None => [
                        loaded.kind().into(),
                        loaded.qualified(),
                        reference.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "missing".into(),
                    ],
                }
            }
            Resource::Rate(o) => {
                let listed = cache
                    .listed::<RateLimits>(client, &ws)
                    .await
                    .cloned()
                    .unwrap_or_default();
                let adopt = o.spec.adopt_policy_id.as_deref();
                let found = match_remote::<RateLimits>(
                    client,
                    &listed,
                    &identity,
                    adopt,
                    &ws,
                    &declared,
                    |_| true,
                )
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|m| m.remote);
                match found {
                    Some(p) => [
                        loaded.kind().into(),
                        loaded.qualified(),
                        reference.clone(),
                        format!("{} {} {}", p.value.normalize(), p.limit_type, p.unit),
                        "-".into(),
                        "-".into(),
                        p.status.to_string(),
                    ],
                    None => [
                        loaded.kind().into(),
                        loaded.qualified(),
                        reference.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "missing".into(),
                    ],
                }
            }
            Resource::Workspace(_) => match client.get_workspace(&ws).await {
                Ok(w) => {
                    let (budget, reset, rate) = wsplan::summaries(&w);
                    let limit = [budget, rate]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join("; ");
                    [
                        loaded.kind().into(),
                        loaded.qualified(),
                        reference.clone(),
                        if limit.is_empty() { "-".into() } else { limit },
                        "-".into(),
                        reset.unwrap_or_else(|| "-".into()),
                        "active".into(),
                    ]
                }
                Err(e) => [
                    loaded.kind().into(),
                    loaded.qualified(),
                    reference.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    e.reason().into(),
                ],
            },
            Resource::ApiKey(o) => {
                let found = match existing_key(client, o, &ws).await {
                    Ok(Ok(k)) => Ok(k),
                    Ok(Err(refusal)) if refusal.reason == "IssuedKey" => {
                        Err("skipped (issued in a cluster)".to_owned())
                    }
                    Ok(Err(refusal)) => Err(refusal.reason.to_owned()),
                    Err(e) => Err(e.reason().to_owned()),
                };
                match found {
                    Ok(k) => {
                        let (budget, reset, rate) = keyplan::summaries(&k);
                        let limit = [budget, rate]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join("; ");
                        [
                            loaded.kind().into(),
                            loaded.qualified(),
                            reference.clone(),
                            if limit.is_empty() { "-".into() } else { limit },
                            "-".into(),
                            reset.unwrap_or_else(|| "-".into()),
                            k.status
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "-".into()),
                        ]
                    }
                    Err(state) => [
                        loaded.kind().into(),
                        loaded.qualified(),
                        reference.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        state,
                    ],
                }
            }
        };
        rows.push(row);
    }
    progress.done();
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}
