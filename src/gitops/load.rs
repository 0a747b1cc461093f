//! Manifests → resources: every YAML document under the given paths is read; documents of this
//! API group must be a kind and version this tool knows (else a load error with the nearest
//! known name), documents of other groups are skipped and reported; resources are validated
//! with the CRDs' own rules. Errors name file, line, resource, field and value.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use super::classify::{Known, Skipped, Verdict, classify};
use super::kinds::{Declared, Registration};
use super::lines::{Node, line_of};
use super::plan::PlanSettings;
use super::problem::{Class, LoadError, Problem, ResourceRef, shown_value};
use crate::api::validate::{FieldError, validate_object_pointing};
use crate::emulator::{Seed, SeedApiKey, SeedWorkspace};
use crate::plan::marker::Identity;

/// Where a resource came from: file, 1-based document number, and the line of the document's
/// first content (after comments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    pub file: PathBuf,
    pub document: usize,
    pub line: usize,
    /// The line of the document's first line (right after its `---`).
    #[serde(skip)]
    pub first_line: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A resource read from the manifests, of any kind ([`super::kinds`]).
pub type Resource = Arc<dyn Declared>;

#[derive(Debug, Clone)]
pub struct Loaded {
    pub source: Source,
    kind: &'static str,
    /// `None` for cluster-scoped kinds.
    namespace: Option<String>,
    name: String,
    pub resource: Resource,
    /// The document's nodes with their lines (to point at a field).
    pub(super) lines: Option<Arc<Spanned<Node>>>,
}

impl Loaded {
    /// The resource, for errors.
    pub fn resource_ref(&self) -> ResourceRef {
        ResourceRef {
            kind: self.kind().to_owned(),
            namespace: self.namespace().map(str::to_owned),
            name: self.name().to_owned(),
        }
    }

    /// The line of `field` in its file (of the document when the field is not found).
    pub fn line_of(&self, field: &str) -> usize {
        self.lines
            .as_deref()
            .and_then(|root| line_of(root, field))
            .map(|l| self.source.first_line + l - 1)
            .unwrap_or(self.source.line)
    }

    /// A problem about `field` of this resource.
    pub fn problem(&self, class: Class, field: &str, message: impl Into<String>) -> Problem {
        Problem {
            file: Some(self.source.file.clone()),
            line: Some(self.line_of(field)),
            resource: Some(self.resource_ref()),
            field: Some(field.to_owned()),
            value: None,
            message: message.into(),
            class,
        }
    }

    /// A problem about this resource as a whole (the line of its document).
    pub fn problem_here(&self, class: Class, message: impl Into<String>) -> Problem {
        Problem {
            file: Some(self.source.file.clone()),
            line: Some(self.source.line),
            resource: Some(self.resource_ref()),
            field: None,
            value: None,
            message: message.into(),
            class,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `namespace/name` or `name`.
    pub fn qualified(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{ns}/{}", self.name()),
            None => self.name().to_owned(),
        }
    }

    pub(super) fn identity(&self, settings: &PlanSettings) -> Identity {
        Identity::new(self.resource.short(), self.namespace(), self.name()).installed(
            &settings.installation_id,
            &settings.adopt_from_installations,
        )
    }

    pub fn workspace(&self) -> Option<&str> {
        self.resource.workspace()
    }
}

/// What was read from the given paths.
#[derive(Debug, Default)]
pub struct Manifests {
    pub resources: Vec<Loaded>,
    pub errors: Vec<LoadError>,
    /// Documents of other API groups (or not Kubernetes objects), skipped.
    pub skipped: Vec<Skipped>,
    /// How many were skipped.
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

/// Splits a YAML stream into documents (on `---` lines), each with the 1-based line of its
/// first line.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((i + 2, String::new()));
        } else {
            let last = &mut docs.last_mut().expect("one document").1;
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
    let known = Known::new();
    let mut seen = BTreeSet::new();
    for path in paths {
        let mut files = Vec::new();
        if let Err(e) = yaml_files(path, &mut files) {
            let mut p = Problem::new(Class::Manifest, format!("cannot read: {e}"));
            p.file = Some(path.clone());
            out.errors.push(p);
            continue;
        }
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    let mut p = Problem::new(Class::Manifest, format!("cannot read: {e}"));
                    p.file = Some(file.clone());
                    out.errors.push(p);
                    continue;
                }
            };
            for (i, (first_line, doc)) in documents(&text).into_iter().enumerate() {
                let Some(offset) = doc
                    .lines()
                    .position(|l| !(l.trim().is_empty() || l.trim_start().starts_with('#')))
                else {
                    continue;
                };
                let source = Source {
                    file: file.clone(),
                    document: i + 1,
                    line: first_line + offset,
                    first_line,
                };
                load_document(&known, &doc, source, &mut seen, &mut out);
            }
        }
    }
    out.ignored = out.skipped.len();
    out
}

/// Reads one document: one of this tool's resources, a skipped document, or errors.
fn load_document(
    known: &Known,
    doc: &str,
    source: Source,
    seen: &mut BTreeSet<(&'static str, String)>,
    out: &mut Manifests,
) {
    let value = match parse_yaml(doc, &source) {
        Ok(v) => v,
        Err(p) => return out.errors.push(*p),
    };
    let document = Document {
        source,
        lines: Node::parse(doc).map(Arc::new),
    };
    let Some(kind) = document.kind(known, &value, out) else {
        return;
    };
    let (registration, crd) = known.get(kind);
    let value = match document.validated(crd, value) {
        Ok(v) => v,
        Err(problems) => return out.errors.extend(problems),
    };
    match document.into_loaded(registration, crd, value) {
        Ok(loaded) => admit(loaded, seen, out),
        Err(p) => out.errors.push(*p),
    }
}

/// The document as JSON, or the parser's error at its line.
fn parse_yaml(doc: &str, source: &Source) -> Result<Value, Box<Problem>> {
    serde_saphyr::from_str(doc).map_err(|e| {
        let first = e.to_string();
        let message = first
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        let mut p = Problem::new(Class::Manifest, format!("malformed YAML: {message}"));
        p.file = Some(source.file.clone());
        p.line = Some(source.line);
        if let Some(at) = e.location().filter(|l| l.line() > 0) {
            p.line = Some(source.first_line + at.line() as usize - 1);
        }
        Box::new(p)
    })
}

/// A resource is declared once: a second one of the same kind and name is an error.
fn admit(loaded: Loaded, seen: &mut BTreeSet<(&'static str, String)>, out: &mut Manifests) {
    if seen.insert((loaded.kind(), loaded.qualified())) {
        return out.resources.push(loaded);
    }
    let mut p = loaded.problem(
        Class::Manifest,
        "metadata.name",
        format!("{} {} is declared twice", loaded.kind(), loaded.qualified()),
    );
    p.value = Some(Value::String(loaded.name().to_owned()).to_string());
    out.errors.push(p);
}

/// One parsed YAML document: where it is, and its nodes' lines (to point at a field).
struct Document {
    source: Source,
    lines: Option<Arc<Spanned<Node>>>,
}

impl Document {
    /// The line of `field` in its file (of the document when the field is not found).
    fn line_of(&self, field: &str) -> usize {
        self.lines
            .as_deref()
            .and_then(|root| line_of(root, field))
            .map(|l| self.source.first_line + l - 1)
            .unwrap_or(self.source.line)
    }

    /// A manifest problem at the document's line.
    fn problem(&self, field: Option<&str>, value: Option<String>, message: String) -> Problem {
        Problem {
            file: Some(self.source.file.clone()),
            line: Some(self.source.line),
            resource: None,
            field: field.map(str::to_owned),
            value,
            message,
            class: Class::Manifest,
        }
    }

    /// Its kind, when it is one of this tool's; else the error or the skipped document is
    /// recorded in `out`.
    fn kind(&self, known: &Known, value: &Value, out: &mut Manifests) -> Option<&'static str> {
        let api_version = value["apiVersion"].as_str().map(str::to_owned);
        let kind = value["kind"].as_str().map(str::to_owned);
        match classify(known, api_version.as_deref(), kind.as_deref()) {
            Verdict::Ours(kind) => return Some(kind),
            Verdict::Error(field, shown, message) => {
                let mut p = self.problem(Some(field), shown, message);
                p.line = Some(self.line_of(field));
                if let Some(k) = &kind {
                    p.resource = Some(raw_ref(value, k));
                }
                out.errors.push(p);
            }
            Verdict::Skip(hint) => out.skipped.push(Skipped {
                file: self.source.file.clone(),
                line: self.source.line,
                api_version,
                kind,
                name: value["metadata"]["name"].as_str().map(str::to_owned),
                hint,
            }),
        }
        None
    }

    /// The object, with the default namespace when it is namespaced and names none, if it
    /// passes its CRD's schema and rules; else a problem per failed rule.
    fn validated(
        &self,
        crd: &CustomResourceDefinition,
        mut value: Value,
    ) -> Result<Value, Vec<Problem>> {
        let namespaced = crd.spec.scope == "Namespaced";
        if namespaced
            && value["metadata"].get("namespace").is_none()
            && value["metadata"].is_object()
        {
            value["metadata"]["namespace"] = Value::String("default".into());
        }
        let mut errors = meta_errors(&value, namespaced);
        if errors.is_empty() {
            errors = validate_object_pointing(crd, &value, None);
        }
        if errors.is_empty() {
            return Ok(value);
        }
        let resource = raw_ref(&value, &crd.spec.names.kind);
        Err(errors
            .into_iter()
            .map(|e| Problem {
                file: Some(self.source.file.clone()),
                line: Some(self.line_of(&e.field)),
                resource: Some(resource.clone()),
                value: shown_value(&value, &e.field),
                field: Some(e.field),
                message: e.message,
                class: Class::Manifest,
            })
            .collect())
    }

    /// The valid object as a resource of its kind.
    fn into_loaded(
        self,
        registration: &Registration,
        crd: &CustomResourceDefinition,
        value: Value,
    ) -> Result<Loaded, Box<Problem>> {
        let resource_ref = raw_ref(&value, registration.kind);
        let name = resource_ref.name.clone();
        let namespace = match crd.spec.scope.as_str() {
            "Namespaced" => resource_ref.namespace.clone(),
            _ => None,
        };
        match (registration.parse)(value) {
            Ok(resource) => Ok(Loaded {
                source: self.source,
                kind: registration.kind,
                namespace,
                name,
                resource,
                lines: self.lines,
            }),
            Err(e) => {
                let mut p = self.problem(None, None, e.to_string());
                p.resource = Some(resource_ref);
                Err(Box::new(p))
            }
        }
    }
}

/// The resource a document names (before it is known to be valid).
fn raw_ref(value: &Value, kind: &str) -> ResourceRef {
    ResourceRef {
        kind: kind.to_owned(),
        namespace: value["metadata"]["namespace"].as_str().map(str::to_owned),
        name: value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Resources that name no workspace when no `--default-workspace` is given: there is no
/// cluster here to bind namespaces to workspaces. Checked before anything is read.
pub fn missing_workspaces(resources: &[Loaded], default_workspace: Option<&str>) -> Vec<Problem> {
    if default_workspace.is_some() {
        return Vec::new();
    }
    resources
        .iter()
        .filter(|r| r.workspace().is_none())
        .map(|r| {
            r.problem(
                Class::Manifest,
                "spec.workspace",
                "is required by plan and sync (no cluster here to bind namespaces to workspaces); set it or pass --default-workspace",
            )
        })
        .collect()
}

/// What `emulator --seed-from PATH` seeds with: what `plan`/`sync --emulator` would for the
/// manifests under `paths` ([`emulator_seed`]); an error when they do not load.
pub fn emulator_seed_from(paths: &[PathBuf]) -> Result<Seed, String> {
    let manifests = load(paths);
    if let Some(e) = manifests.errors.first() {
        return Err(format!("--seed-from: {e}"));
    }
    Ok(emulator_seed(&manifests.resources, None))
}

/// What `plan`/`sync --emulator` seed the built-in emulator with: the workspaces the manifests
/// name, and the existing API keys they name by name (the emulator holds no keys of its own).
pub fn emulator_seed(resources: &[Loaded], default_workspace: Option<&str>) -> Seed {
    let workspaces: BTreeSet<&str> = resources
        .iter()
        .filter_map(|r| r.workspace().or(default_workspace))
        .collect();
    let api_keys = resources
        .iter()
        .filter_map(|r| {
            Some(SeedApiKey {
                workspace: r.workspace().or(default_workspace)?.to_owned(),
                name: r.resource.seed_key_name()?.to_owned(),
                scopes: Vec::new(),
            })
        })
        .collect();
    Seed {
        admin_api_keys: Vec::new(),
        workspaces: workspaces
            .into_iter()
            .map(SeedWorkspace::from_reference)
            .collect(),
        api_keys,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ULP: &str = "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: UsageLimitPolicy\nmetadata:\n  name: monthly\n  namespace: team-a\nspec:\n  workspace: team-a\n  type: cost\n  creditLimit: 100\n  periodicReset: monthly\n  conditions:\n    - key: metadata._team\n      value: team-a\n  groupBy:\n    - key: metadata._user\n";

    fn load_text(text: &str) -> Manifests {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.yaml");
        std::fs::write(&file, text).unwrap();
        load(&[file])
    }

    fn only_error(m: &Manifests) -> String {
        assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
        let e = &m.errors[0];
        let shown = e.to_string();
        shown[shown.find("m.yaml").unwrap()..].to_owned()
    }

    #[test]
    fn a_kind_or_version_of_this_group_that_is_unknown_is_an_error_with_a_suggestion() {
        let m = load_text(&format!(
            "# leading comment\n{}",
            ULP.replace("kind: UsageLimitPolicy", "kind: UsageLimitPolicys")
        ));
        assert_eq!(
            only_error(&m),
            "m.yaml:3: UsageLimitPolicys team-a/monthly: kind: \"UsageLimitPolicys\" is not a kind of budgets.portkey-operator.io (did you mean UsageLimitPolicy?); the kinds are UsageLimitPolicy, RateLimitPolicy, WorkspaceBudget, ApiKeyBudget"
        );
        for version in ["v1", "v1beta1"] {
            let m = load_text(&ULP.replace("/v1alpha1", &format!("/{version}")));
            let e = only_error(&m);
            assert!(
                e.starts_with(&format!("m.yaml:1: UsageLimitPolicy team-a/monthly: apiVersion: \"budgets.portkey-operator.io/{version}\" is not a version of UsageLimitPolicy (did you mean budgets.portkey-operator.io/v1alpha1?)")),
                "{e}"
            );
            assert!(m.resources.is_empty());
        }
        let m =
            load_text(&ULP.replace("budgets.portkey-operator.io", "budget.portkey-operator.io"));
        assert!(
            only_error(&m).contains("apiVersion: \"budget.portkey-operator.io/v1alpha1\" is not an API group this tool knows (did you mean budgets.portkey-operator.io/v1alpha1?)"),
            "{}",
            only_error(&m)
        );
        let m = load_text(&ULP.replace("apiVersion: budgets.portkey-operator.io/v1alpha1\n", ""));
        assert!(only_error(&m).contains("apiVersion: is required: UsageLimitPolicy is apiVersion budgets.portkey-operator.io/v1alpha1"), "{}", only_error(&m));
    }

    #[test]
    fn other_groups_are_skipped_and_counted_with_a_hint_for_lookalikes() {
        let m = load_text(&format!(
            "{ULP}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n---\napiVersion: kuadrant.io/v1\nkind: RateLimitPolicy\nmetadata:\n  name: r\n---\n# only a comment\n"
        ));
        assert!(m.errors.is_empty(), "{:#?}", m.errors);
        assert_eq!(m.resources.len(), 1);
        assert_eq!((m.ignored, m.skipped.len()), (2, 2));
        let w = m.skipped[0].warning();
        assert!(
            w.ends_with(
                "m.yaml:17: skipped v1 ConfigMap x: not a budgets.portkey-operator.io resource"
            ),
            "{w}"
        );
        let w = m.skipped[1].warning();
        assert!(
            w.contains("m.yaml:22: skipped kuadrant.io/v1 RateLimitPolicy r: not a budgets.portkey-operator.io resource (this tool's RateLimitPolicy is apiVersion budgets.portkey-operator.io/v1alpha1"),
            "{w}"
        );
        let p = m.skipped[0].problem();
        assert_eq!(p.class, Class::Manifest);
        assert!(p.message.contains("--fail-on-unknown"), "{p}");
    }

    #[test]
    fn validation_errors_point_at_the_line_field_and_value() {
        let m = load_text(&format!(
            "{ULP}---\n{}",
            ULP.replace("creditLimit: 100", "creditLimit: -5")
                .replace("name: monthly", "name: broken")
        ));
        assert_eq!(m.resources.len(), 1);
        assert_eq!(
            only_error(&m),
            "m.yaml:25: UsageLimitPolicy team-a/broken: spec.creditLimit: creditLimit must be at least 1 for cost (USD) and requests, and at least 100 for tokens (got -5)"
        );
        // A rule across fields names the field it is about, with the value.
        let m = load_text(&ULP.replace(
            "  creditLimit: 100\n",
            "  creditLimit: 100\n  alertThreshold: 150\n",
        ));
        let e = only_error(&m);
        assert!(
            e.starts_with("m.yaml:10: UsageLimitPolicy team-a/monthly: spec.alertThreshold: alertThreshold must be greater than 0 and less than creditLimit (got 150)"),
            "{e}"
        );
        assert_eq!(m.errors[0].field.as_deref(), Some("spec.alertThreshold"));
        assert_eq!(m.errors[0].line, Some(10));
    }

    #[test]
    fn malformed_yaml_names_the_line_of_the_parser() {
        let m = load_text(&format!("{ULP}---\nkind: x\nspec:\n  a: [unclosed\n"));
        let e = only_error(&m);
        assert!(e.starts_with("m.yaml:"), "{e}");
        let line = m.errors[0].line.unwrap();
        assert!((17..=20).contains(&line), "{e}");
        assert!(e.contains("malformed YAML"), "{e}");
    }
}
