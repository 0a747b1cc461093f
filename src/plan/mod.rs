//! Pure planning code: desired spec + observed remote + status → actions. No IO.
//!
//! The controller and the `plan`/`sync` CLI both call this module, so there is one diff logic
//! in the project.

pub mod api_key;
pub mod marker;
pub mod ownership;
pub mod policy;
pub mod rate;
pub mod report;
pub mod trust;
pub mod usage;
pub mod workspace;

use std::fmt;

use serde::Serialize;

use crate::api::PolicyCondition;
use crate::portkey::{Condition, ConditionValue, PeriodicReset};

pub use marker::Identity;

/// One field that differs: `field: from → to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: &'static str,
    pub from: String,
    pub to: String,
}

impl FieldChange {
    pub fn new(field: &'static str, from: impl fmt::Display, to: impl fmt::Display) -> Self {
        FieldChange {
            field,
            from: from.to_string(),
            to: to.to_string(),
        }
    }

    /// `a: x → y, b: …` for Events and conditions.
    pub fn summary(changes: &[FieldChange]) -> String {
        changes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} → {}", self.field, self.from, self.to)
    }
}

/// `value` or `(none)`.
pub fn fmt_opt<T: fmt::Display>(v: Option<&T>) -> String {
    v.map(ToString::to_string)
        .unwrap_or_else(|| "(none)".to_owned())
}

/// The spec's conditions in Portkey's wire form.
pub fn wire_conditions(conditions: &[PolicyCondition]) -> Vec<Condition> {
    conditions
        .iter()
        .map(|c| Condition {
            key: c.key.clone(),
            value: match (&c.value, &c.values) {
                (Some(v), _) => ConditionValue::One(v.clone()),
                (None, Some(vs)) => ConditionValue::Many(vs.clone()),
                (None, None) => ConditionValue::Many(vec![]),
            },
            excludes: c.excludes.clone().map(ConditionValue::Many),
        })
        .collect()
}

/// Compares condition lists, treating `"a"` and `["a"]` as the same value.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    fn values(v: &Option<ConditionValue>) -> Vec<&str> {
        v.as_ref().map(ConditionValue::values).unwrap_or_default()
    }
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.key == y.key
                && x.value.values() == y.value.values()
                && values(&x.excludes) == values(&y.excludes)
        })
}

/// `monthly`, `weekly`, `every N days` or `never` (the `Reset` printer column).
pub fn schedule_text(periodic_reset: Option<PeriodicReset>, days: Option<i64>) -> String {
    match (periodic_reset, days) {
        (Some(p), _) => p.to_string(),
        (None, Some(1)) => "every day".to_owned(),
        (None, Some(d)) => format!("every {d} days"),
        (None, None) => "never".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_equals_a_list_of_one() {
        let a = vec![Condition {
            key: "model".into(),
            value: ConditionValue::One("x".into()),
            excludes: Some(ConditionValue::One("y".into())),
        }];
        let b = vec![Condition {
            key: "model".into(),
            value: ConditionValue::Many(vec!["x".into()]),
            excludes: Some(ConditionValue::Many(vec!["y".into()])),
        }];
        assert!(same_conditions(&a, &b));
        let mut c = b.clone();
        c[0].excludes = None;
        assert!(!same_conditions(&a, &c));
        assert_eq!(schedule_text(None, Some(10)), "every 10 days");
        assert_eq!(schedule_text(Some(PeriodicReset::Weekly), None), "weekly");
        assert_eq!(schedule_text(None, None), "never");
    }
}
