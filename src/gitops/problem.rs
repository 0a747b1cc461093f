//! What went wrong, said once and naming what it is about: file, line, resource, field, the
//! offending value (never a secret) and the rule. Shown as text (`file:line: Kind ns/name:
//! field: …`) or, with `-o json`, as objects with those keys.

use std::path::PathBuf;

use serde::Serialize;

/// Exit codes of `plan` and `sync` (docs/cli.md "Exit codes").
pub mod exit {
    /// Planned (or synced) successfully; with `plan --detailed-exitcode`: nothing to change.
    pub const OK: u8 = 0;
    /// The Admin API failed: unreachable, the key refused (401/403), a 5xx, or a write of
    /// `sync` that failed.
    pub const API: u8 = 1;
    /// `plan --detailed-exitcode` only: the plan has changes.
    pub const CHANGES: u8 = 2;
    /// Invalid manifests (load or validation errors): nothing was read from or sent to
    /// Portkey, nothing pruned.
    pub const INVALID: u8 = 3;
    /// The plan refuses something Portkey holds: a blocked resource (another owner, a
    /// conflict, a workspace or key Portkey does not have) or `--max-prune` exceeded; `sync`
    /// changed nothing.
    pub const REFUSED: u8 = 4;
    /// A usage error: a missing or unknown flag, a bad value (`EX_USAGE`).
    pub const USAGE: u8 = 64;
}

/// The resource a problem is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Which exit code a problem leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// The manifests: exit 3.
    Manifest,
    /// The plan refuses it: exit 4.
    Refused,
    /// The Admin API: exit 1.
    Api,
}

impl Class {
    pub fn exit_code(self) -> u8 {
        match self {
            Class::Manifest => exit::INVALID,
            Class::Refused => exit::REFUSED,
            Class::Api => exit::API,
        }
    }
}

/// One error (a load or validation error of a manifest, or an error of the plan or the sync).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: Option<PathBuf>,
    /// 1-based line in `file`: of the offending field where it is known, else of the document.
    pub line: Option<usize>,
    pub resource: Option<ResourceRef>,
    /// The field the error is about (`spec.creditLimit`, `kind`).
    pub field: Option<String>,
    /// The offending value as YAML shows it (scalars only; never a secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The rule that is broken, or what failed.
    pub message: String,
    pub class: Class,
}

/// A manifest that could not be used.
pub type LoadError = Problem;

impl Problem {
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        Problem {
            file: None,
            line: None,
            resource: None,
            field: None,
            value: None,
            message: message.into(),
            class,
        }
    }

    /// The message with the offending value: `-5 must be at least 1`, or `… (got -5)` when the
    /// message does not start with the rule; the message alone when it already shows the value.
    pub fn detail(&self) -> String {
        match &self.value {
            Some(v) if !self.message.contains(v.as_str()) => {
                if ["must ", "is ", "does "]
                    .iter()
                    .any(|p| self.message.starts_with(p))
                {
                    format!("{v} {}", self.message)
                } else {
                    format!("{} (got {v})", self.message)
                }
            }
            _ => self.message.clone(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            _ => {}
        }
        if let Some(r) = &self.resource {
            write!(f, "{r}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.detail())
    }
}

/// The value at `path` (`spec.conditions[0].key`) in `object`, shown when it is a scalar and
/// the field is not a secret; long values are cut.
pub fn shown_value(object: &serde_json::Value, path: &str) -> Option<String> {
    let last = path.rsplit('.').next().unwrap_or(path).to_ascii_lowercase();
    if ["secret", "password", "token", "apikey"]
        .iter()
        .any(|s| last.contains(s))
        && !last.ends_with("name")
    {
        return None;
    }
    let mut v = object;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            v = v.get(key)?;
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            v = v.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    let text = match v {
        serde_json::Value::String(_)
        | serde_json::Value::Number(_)
        | serde_json::Value::Bool(_) => v.to_string(),
        _ => return None,
    };
    Some(if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_problem_names_file_line_resource_field_and_value() {
        let p = Problem {
            file: Some("01-negative-limit.yaml".into()),
            line: Some(7),
            resource: Some(ResourceRef {
                kind: "UsageLimitPolicy".into(),
                namespace: Some("team-a".into()),
                name: "monthly".into(),
            }),
            field: Some("spec.creditLimit".into()),
            value: Some("-5".into()),
            message: "must be at least 1".into(),
            class: Class::Manifest,
        };
        assert_eq!(
            p.to_string(),
            "01-negative-limit.yaml:7: UsageLimitPolicy team-a/monthly: spec.creditLimit: -5 must be at least 1"
        );
        let cel = Problem {
            message: "creditLimit must be at least 1".into(),
            ..p.clone()
        };
        assert!(
            cel.to_string()
                .ends_with("creditLimit must be at least 1 (got -5)")
        );
        let shown = Problem {
            value: Some("\"x\"".into()),
            message: "must be one of: a, b (got \"x\")".into(),
            ..p
        };
        assert!(
            shown
                .to_string()
                .ends_with("spec.creditLimit: must be one of: a, b (got \"x\")")
        );
    }

    #[test]
    fn values_are_scalars_and_never_secrets() {
        let o = json!({"spec": {"creditLimit": -5, "conditions": [{"key": "model"}],
            "clientSecret": "s3cr3t", "issue": {"secretName": "k"}}});
        assert_eq!(shown_value(&o, "spec.creditLimit").as_deref(), Some("-5"));
        assert_eq!(
            shown_value(&o, "spec.conditions[0].key").as_deref(),
            Some("\"model\"")
        );
        assert_eq!(shown_value(&o, "spec.conditions"), None);
        assert_eq!(shown_value(&o, "spec.clientSecret"), None);
        assert_eq!(
            shown_value(&o, "spec.issue.secretName").as_deref(),
            Some("\"k\"")
        );
        assert_eq!(shown_value(&o, "spec.nothing"), None);
    }
}
