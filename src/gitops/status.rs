//! The table `sync` prints after applying: one row per resource (kind, name, workspace, and
//! what its kind shows of what is in force: limit, peak usage, reset, state), read again from
//! Portkey; aligned like `kubectl get`.

use std::fmt::Write as _;

use super::kinds::{Declarations, Scope, Shown};
use super::load::Loaded;
use super::plan::{PlanSettings, declared_identities};
use super::progress::Progress;
use super::remote::RemoteCache;
use crate::portkey::PortkeyClient;

/// One row of the table.
type Row = [String; 7];

const HEADER: [&str; 7] = [
    "KIND",
    "NAME",
    "WORKSPACE",
    "LIMIT",
    "PEAK USAGE",
    "RESET",
    "STATE",
];

/// A `kubectl get`-like table of what is in force after `sync`.
pub async fn status_table(
    client: &PortkeyClient,
    resources: &[Loaded],
    settings: &PlanSettings,
    progress: &Progress,
) -> String {
    let declared = declared_identities(resources, settings);
    let mut rows = vec![HEADER.map(str::to_owned)];
    let mut cache = RemoteCache::default();
    progress.phase("status", resources.len());
    for loaded in resources {
        progress.step();
        rows.push(status_row(client, &mut cache, &declared, loaded, settings).await);
    }
    progress.done();
    aligned(&rows)
}

/// The row of one resource: what its kind shows, or that its workspace was not found.
async fn status_row(
    client: &PortkeyClient,
    cache: &mut RemoteCache,
    declared: &Declarations,
    loaded: &Loaded,
    settings: &PlanSettings,
) -> Row {
    let reference = loaded
        .workspace()
        .or(settings.default_workspace.as_deref())
        .unwrap_or("?");
    let shown = match cache.workspace_id(client, reference).await {
        Ok(ws) => {
            let mut scope = Scope {
                client,
                cache,
                declared,
                loaded,
                reference,
                ws: &ws,
                identity: loaded.identity(settings),
            };
            loaded.resource.status(&mut scope).await
        }
        Err(_) => Shown::absent("workspace not found"),
    };
    [
        loaded.kind().into(),
        loaded.qualified(),
        reference.to_owned(),
        shown.limit,
        shown.peak_usage,
        shown.reset,
        shown.state,
    ]
}

/// The rows in columns as wide as their widest cell, three spaces apart.
fn aligned(rows: &[Row]) -> String {
    let widths: Vec<usize> = (0..HEADER.len())
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
