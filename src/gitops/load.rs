use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::plan::PlanSettings;
use crate::api::validate::{FieldError, validate_object};
use crate::api::{self, ApiKeyBudget, RateLimitPolicy, UsageLimitPolicy, WorkspaceBudget};
use crate::plan::marker::Identity;

/// Where a resource came from: file and 1-based document number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    pub file: PathBuf,
    pub document: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.file.display(), self.document)
    }
}

/// A manifest that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadError {
    pub source: Source,
    /// The field, when the error is about one.
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {field}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// A resource read from the manifests.
#[derive(Debug, Clone)]
pub enum Resource {
    Usage(Box<UsageLimitPolicy>),
    Rate(Box<RateLimitPolicy>),
    Workspace(Box<WorkspaceBudget>),
    ApiKey(Box<ApiKeyBudget>),
}

#[derive(Debug, Clone)]
pub struct Loaded {
    pub source: Source,
    pub resource: Resource,
}

impl Loaded {
    pub fn kind(&self) -> &'static str {
        match self.resource {
            Resource::Usage(_) => "UsageLimitPolicy",
            Resource::Rate(_) => "RateLimitPolicy",
            Resource::Workspace(_) => "WorkspaceBudget",
            Resource::ApiKey(_) => "ApiKeyBudget",
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        match &self.resource {
            Resource::Usage(o) => o.metadata.namespace.as_deref(),
            Resource::Rate(o) => o.metadata.namespace.as_deref(),
            Resource::Workspace(_) => None,
            Resource::ApiKey(o) => o.metadata.namespace.as_deref(),
        }
    }

    pub fn name(&self) -> &str {
        match &self.resource {
            Resource::Usage(o) => o.metadata.name.as_deref(),
            Resource::Rate(o) => o.metadata.name.as_deref(),
            Resource::Workspace(o) => o.metadata.name.as_deref(),
            Resource::ApiKey(o) => o.metadata.name.as_deref(),
        }
        .unwrap_or_default()
    }

    /// `namespace/name` or `name`.
    pub fn qualified(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{ns}/{}", self.name()),
            None => self.name().to_owned(),
        }
    }

    pub(super) fn identity(&self, settings: &PlanSettings) -> Identity {
        let short = match self.resource {
            Resource::Usage(_) => "ulp",
            Resource::Rate(_) => "rlp",
            Resource::Workspace(_) => "wsb",
            Resource::ApiKey(_) => crate::controller::api_key::SHORT,
        };
        Identity::new(short, self.namespace(), self.name()).installed(
            &settings.installation_id,
            &settings.adopt_from_installations,
        )
    }

    pub(super) fn workspace(&self) -> Option<&str> {
        match &self.resource {
            Resource::Usage(o) => o.spec.workspace.as_deref(),
            Resource::Rate(o) => o.spec.workspace.as_deref(),
            Resource::Workspace(o) => Some(&o.spec.workspace),
            Resource::ApiKey(o) => o.spec.workspace.as_deref(),
        }
    }
}

/// What was read from the given paths.
#[derive(Debug, Default)]
pub struct Manifests {
    pub resources: Vec<Loaded>,
    pub errors: Vec<LoadError>,
    /// Documents of other kinds, skipped.
    pub ignored: usize,
}

fn yaml_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            if entry.is_dir() {
                yaml_files(&entry, out)?;
            } else if matches!(
                entry.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(entry);
            }
        }
    } else {
        out.push(path.to_owned());
    }
    Ok(())
}

/// Splits a YAML stream into documents (on `---` lines).
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push(String::new());
        } else {
            let last = docs.last_mut().expect("one document");
            last.push_str(line);
            last.push('\n');
        }
    }
    docs
}

fn meta_errors(value: &Value, namespaced: bool) -> Vec<FieldError> {
    let dns =
        regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
            .expect("valid");
    let label = regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("valid");
    let mut errors = Vec::new();
    match value["metadata"]["name"].as_str() {
        Some(n) if n.len() <= 253 && dns.is_match(n) => {}
        Some(n) => errors.push(FieldError {
            field: "metadata.name".into(),
            message: format!(
                "{n:?} is not a valid name (lowercase letters, digits, '-' and '.', at most 253)"
            ),
        }),
        None => errors.push(FieldError {
            field: "metadata.name".into(),
            message: "is required".into(),
        }),
    }
    if namespaced && let Some(ns) = value["metadata"].get("namespace") {
        match ns.as_str() {
            Some(n) if n.len() <= 63 && label.is_match(n) => {}
            _ => errors.push(FieldError {
                field: "metadata.namespace".into(),
                message: format!("{ns} is not a valid namespace"),
            }),
        }
    }
    errors
}

/// Reads every YAML document under `paths`, keeps the operator's kinds and validates them.
pub fn load(paths: &[PathBuf]) -> Manifests {
    let mut out = Manifests::default();
    let crds = api::crds();
    let mut seen = BTreeSet::new();
    for path in paths {
        let mut files = Vec::new();
        if let Err(e) = yaml_files(path, &mut files) {
            out.errors.push(LoadError {
                source: Source {
                    file: path.clone(),
                    document: 0,
                },
                field: None,
                message: e.to_string(),
            });
            continue;
        }
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    out.errors.push(LoadError {
                        source: Source {
                            file: file.clone(),
                            document: 0,
                        },
                        field: None,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            for (i, doc) in documents(&text).into_iter().enumerate() {
                let source = Source {
                    file: file.clone(),
                    document: i + 1,
                };
                if doc
                    .lines()
                    .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
                {
                    continue;
                }
                let mut value: Value = match serde_saphyr::from_str(&doc) {
                    Ok(v) => v,
                    Err(e) => {
                        let message = format!(
                            "malformed YAML: {}",
                            e.to_string().lines().next().unwrap_or_default()
                        );
                        out.errors.push(LoadError {
                            source,
                            field: None,
                            message,
                        });
                        continue;
                    }
                };
                let kind = value["kind"].as_str().unwrap_or_default().to_owned();
                let group_ok = value["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with(api::GROUP));
                let Some(crd) = crds
                    .iter()
                    .find(|c| c.spec.names.kind == kind)
                    .filter(|_| group_ok)
                else {
                    out.ignored += 1;
                    continue;
                };
                let namespaced = crd.spec.scope == "Namespaced";
                if namespaced
                    && value["metadata"].get("namespace").is_none()
                    && value["metadata"].is_object()
                {
                    value["metadata"]["namespace"] = Value::String("default".into());
                }
                let mut errors = meta_errors(&value, namespaced);
                if errors.is_empty() {
                    errors = validate_object(crd, &value, None);
                }
                if !errors.is_empty() {
                    for e in errors {
                        out.errors.push(LoadError {
                            source: source.clone(),
                            field: Some(e.field),
                            message: e.message,
                        });
                    }
                    continue;
                }
                let resource = match kind.as_str() {
                    "UsageLimitPolicy" => {
                        serde_json::from_value(value).map(|o| Resource::Usage(Box::new(o)))
                    }
                    "RateLimitPolicy" => {
                        serde_json::from_value(value).map(|o| Resource::Rate(Box::new(o)))
                    }
                    "ApiKeyBudget" => {
                        serde_json::from_value(value).map(|o| Resource::ApiKey(Box::new(o)))
                    }
                    _ => serde_json::from_value(value).map(|o| Resource::Workspace(Box::new(o))),
                };
                match resource {
                    Ok(resource) => {
                        let loaded = Loaded {
                            source: source.clone(),
                            resource,
                        };
                        if !seen.insert((loaded.kind(), loaded.qualified())) {
                            out.errors.push(LoadError {
                                source,
                                field: Some("metadata.name".into()),
                                message: format!(
                                    "{} {} is declared twice",
                                    loaded.kind(),
                                    loaded.qualified()
                                ),
                            });
                            continue;
                        }
                        out.resources.push(loaded);
                    }
                    Err(e) => out.errors.push(LoadError {
                        source,
                        field: None,
                        message: e.to_string(),
                    }),
                }
            }
        }
    }
    out
}

/// The workspaces the manifests name (for seeding the emulator).
pub fn workspaces(resources: &[Loaded], default_workspace: Option<&str>) -> BTreeSet<String> {
    resources
        .iter()
        .filter_map(|r| r.workspace().or(default_workspace))
        .map(str::to_owned)
        .collect()
}

/// The existing API keys the manifests name by name, with their workspace reference (for
/// seeding the built-in emulator, which holds no keys of its own).
pub fn named_keys(resources: &[Loaded], default_workspace: Option<&str>) -> Vec<(String, String)> {
    resources
        .iter()
        .filter_map(|r| match &r.resource {
            Resource::ApiKey(o) => {
                let name = o.spec.existing.as_ref()?.name.clone()?;
                Some((r.workspace().or(default_workspace)?.to_owned(), name))
            }
            _ => None,
        })
        .collect()
}
