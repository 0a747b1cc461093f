//! What a document is: one of this tool's kinds and versions (the registered kinds' CRDs), a
//! near miss of them (an error with the nearest known name), or a document of another API
//! group, skipped and reported ([`Skipped`]).

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde_json::Value;

use super::kinds::{KINDS, Registration};
use super::problem::{Class, Problem};
use crate::api;

/// A document of another API group (or no Kubernetes object at all), skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub file: PathBuf,
    pub line: usize,
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    /// A hint when it looks like one of this tool's kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Skipped {
    fn what(&self) -> String {
        match (&self.api_version, &self.kind) {
            (None, None) => {
                "a document that is not a Kubernetes object (no apiVersion, no kind)".into()
            }
            (av, kind) => format!(
                "{} {}{}",
                av.as_deref().unwrap_or("(no apiVersion)"),
                kind.as_deref().unwrap_or("(no kind)"),
                self.name
                    .as_deref()
                    .map(|n| format!(" {n}"))
                    .unwrap_or_default()
            ),
        }
    }

    /// The warning line: `file:line: skipped v1 ConfigMap x: not a budgets.portkey-operator.io resource`.
    pub fn warning(&self) -> String {
        format!(
            "{}:{}: skipped {}: not a {} resource{}",
            self.file.display(),
            self.line,
            self.what(),
            api::GROUP,
            self.hint
                .as_deref()
                .map(|h| format!(" ({h})"))
                .unwrap_or_default()
        )
    }

    /// As an error (`--fail-on-unknown`).
    pub fn problem(&self) -> Problem {
        let hint = self
            .hint
            .as_deref()
            .map(|h| format!(" ({h})"))
            .unwrap_or_default();
        let message = match &self.api_version {
            Some(_) => format!(
                "is not {}: {}{} is not this tool's, and --fail-on-unknown refuses documents of other API groups{hint}",
                api::GROUP,
                self.kind.as_deref().unwrap_or("(no kind)"),
                self.name
                    .as_deref()
                    .map(|n| format!(" {n}"))
                    .unwrap_or_default()
            ),
            None => format!(
                "is required: {}, and --fail-on-unknown refuses it{hint}",
                self.what()
            ),
        };
        Problem {
            file: Some(self.file.clone()),
            line: Some(self.line),
            resource: None,
            field: Some("apiVersion".into()),
            value: self
                .api_version
                .as_ref()
                .map(|v| Value::String(v.clone()).to_string()),
            message,
            class: Class::Manifest,
        }
    }
}

/// Levenshtein distance, ASCII case-insensitive.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known name nearest to `given`, when near enough to be a typo.
fn nearest<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (distance(given, k), k))
        .filter(|(d, k)| *d <= (k.len() / 3).max(2))
        .min()
        .map(|(_, k)| k)
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default()
}

/// The kinds and versions this tool reads: the registered kinds' CRDs.
pub(super) struct Known {
    kinds: Vec<(&'static Registration, CustomResourceDefinition)>,
}

impl Known {
    pub(super) fn new() -> Self {
        Known {
            kinds: KINDS.iter().map(|r| (r, (r.crd)())).collect(),
        }
    }

    fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.iter().map(|(r, _)| r.kind)
    }

    fn versions(&self, kind: &str) -> Vec<&str> {
        self.kinds
            .iter()
            .filter(|(r, _)| r.kind == kind)
            .flat_map(|(_, c)| c.spec.versions.iter().map(|v| v.name.as_str()))
            .collect()
    }

    /// The registration and CRD of a kind [`classify`] found to be ours.
    pub(super) fn get(&self, kind: &str) -> (&'static Registration, &CustomResourceDefinition) {
        let (r, crd) = self
            .kinds
            .iter()
            .find(|(r, _)| r.kind == kind)
            .expect("a known kind");
        (r, crd)
    }
}

/// What a document is: one of this tool's kinds, an error, or skipped.
pub(super) enum Verdict {
    Ours(&'static str),
    Error(&'static str, Option<String>, String),
    Skip(Option<String>),
}

pub(super) fn classify(known: &Known, api_version: Option<&str>, kind: Option<&str>) -> Verdict {
    let kinds = || known.kinds().collect::<Vec<_>>().join(", ");
    let quoted = |s: &str| Value::String(s.to_owned()).to_string();
    let ours_by_name = kind.and_then(|k| nearest(k, known.kinds()));
    let Some(api_version) = api_version else {
        return match ours_by_name {
            Some(k) => Verdict::Error(
                "apiVersion",
                None,
                format!(
                    "is required: {k} is apiVersion {}/{}",
                    api::GROUP,
                    known.versions(k).first().copied().unwrap_or("v1alpha1")
                ),
            ),
            None => Verdict::Skip(None),
        };
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    if group == api::GROUP {
        let Some(kind) = kind else {
            return Verdict::Error("kind", None, format!("is required (one of {})", kinds()));
        };
        let Some(ours) = known.kinds().find(|k| *k == kind) else {
            return Verdict::Error(
                "kind",
                Some(quoted(kind)),
                format!(
                    "is not a kind of {}{}; the kinds are {}",
                    api::GROUP,
                    did_you_mean(ours_by_name),
                    kinds()
                ),
            );
        };
        let versions = known.versions(ours);
        if !versions.contains(&version) {
            let suggestion = nearest(version, versions.iter().copied())
                .or(versions.first().copied())
                .map(|v| format!("{}/{v}", api::GROUP));
            return Verdict::Error(
                "apiVersion",
                Some(quoted(api_version)),
                format!(
                    "is not a version of {ours}{}; the versions are {}",
                    did_you_mean(suggestion.as_deref()),
                    versions.join(", ")
                ),
            );
        }
        return Verdict::Ours(ours);
    }
    let version_of = |k: &str| {
        format!(
            "{}/{}",
            api::GROUP,
            known.versions(k).first().copied().unwrap_or("v1alpha1")
        )
    };
    // A near miss of this group (`budget.portkey-operator.io`) is a typo, not another API.
    if !group.is_empty() && distance(group, api::GROUP) <= 3 {
        let suggestion = ours_by_name.map(version_of);
        return Verdict::Error(
            "apiVersion",
            Some(quoted(api_version)),
            format!(
                "is not an API group this tool knows{}",
                did_you_mean(suggestion.as_deref().or(Some(api::GROUP)))
            ),
        );
    }
    Verdict::Skip(ours_by_name.map(|k| {
        format!(
            "this tool's {k} is apiVersion {}; a {k} of another API is not read",
            version_of(k)
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_names_only_for_near_misses() {
        let kinds = [
            "UsageLimitPolicy",
            "RateLimitPolicy",
            "WorkspaceBudget",
            "ApiKeyBudget",
        ];
        assert_eq!(nearest("usagelimitpolicy", kinds), Some("UsageLimitPolicy"));
        assert_eq!(nearest("ApiKeyBudgets", kinds), Some("ApiKeyBudget"));
        assert_eq!(nearest("ConfigMap", kinds), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
