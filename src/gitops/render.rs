//! The plan as text: one block per item (kind, name, `file:line`, the change and its fields,
//! warnings), the errors, and a summary line of counts.

use std::fmt::Write as _;

use super::plan::{ChangeKind, Plan};

fn symbol(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Create => "+ create",
        ChangeKind::Update => "~ update",
        ChangeKind::Replace => "± replace",
        ChangeKind::Archive => "- archive",
        ChangeKind::Unchanged => "= unchanged",
        ChangeKind::Blocked => "! blocked",
        ChangeKind::Skipped => "· skipped",
    }
}

/// The plan as a readable diff.
pub fn render_text(plan: &Plan, target: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Plan against {target}\n");
    for item in &plan.items {
        let what = match item.action {
            ChangeKind::Create => {
                format!("in workspace {}", item.workspace.as_deref().unwrap_or("?"))
            }
            _ => item.shown.clone().unwrap_or_default(),
        };
        let source = item
            .source
            .as_ref()
            .map(|s| format!("  ({s})"))
            .unwrap_or_default();
        let _ = writeln!(out, "{} {}{source}", item.kind, item.name);
        let _ = writeln!(out, "  {} {what}", symbol(item.action));
        for c in &item.changes {
            if item.action == ChangeKind::Create {
                let _ = writeln!(out, "      {}: {}", c.field, c.to);
            } else {
                let _ = writeln!(out, "      {c}");
            }
        }
        for w in &item.warnings {
            let _ = writeln!(out, "      warning: {w}");
        }
    }
    for e in &plan.errors {
        let _ = writeln!(out, "error: {e}");
    }
    let _ = writeln!(
        out,
        "\nPlan: {} to create, {} to update, {} to replace, {} to archive, {} unchanged, {} blocked.",
        plan.count(ChangeKind::Create),
        plan.count(ChangeKind::Update),
        plan.count(ChangeKind::Replace),
        plan.count(ChangeKind::Archive),
        plan.count(ChangeKind::Unchanged),
        plan.count(ChangeKind::Blocked),
    );
    let skipped = plan.count(ChangeKind::Skipped);
    if skipped > 0 {
        let _ = writeln!(
            out,
            "{skipped} skipped (ApiKeyBudgets that issue keys: they need a cluster to hold the Secret)."
        );
    }
    out
}
