//! The trust model, in one place: where the operator's authority comes from.
//!
//! The operator holds an Admin credential that reaches every workspace and acts on what tenants
//! write. Authority comes only from what a tenant cannot forge: the spec of its own resource, the
//! namespace binding a cluster admin made, the operator's configuration, and Portkey's answers.
//! Status is a cache: tenants with ordinary rights may write it (`--subresource=status`), so an
//! id recorded there is re-verified before anything is written to the object it names.
//!
//! - [`choose_workspace`]: the workspace a namespaced resource may use (binding, default,
//!   single-tenant opt-in); `spec.workspace` never grants access by itself, and must be written
//!   as the binding writes it.
//! - [`verify_recorded`]: an id read from status, checked against Portkey's answer (workspace,
//!   ownership marker, declared id or name).
//! - [`KeyScopePolicy`]: what an issued or managed API key may hold.
//!
//! Every refusal names the field and the rule, and the caller writes nothing.

use super::marker::Identity;
use super::ownership::Refusal;
use crate::api::conditions::reasons;
use crate::api::{IssueKey, WORKSPACE_ANNOTATION};
use crate::portkey::{ApiKeyObject, ApiKeySubType};

/// The scopes of a workspace key that only use the gateway (Portkey's "API Keys (AuthN and
/// AuthZ)" reference): the default allow-list of issued keys.
pub const DATA_PLANE_SCOPES: &[&str] = &[
    "completions.write",
    "logs.write",
    "prompts.render",
    "mcp.invoke",
    "agents.invoke",
    "guardrails.invoke",
];

fn refusal(reason: &'static str, message: String) -> Refusal {
    Refusal { reason, message }
}

/// The operator's tenancy settings.
#[derive(Debug, Clone, Copy)]
pub struct TenancyConfig<'a> {
    pub default_workspace: Option<&'a str>,
    /// Unbound namespaces get nothing, not even the default workspace.
    pub require_binding: bool,
    /// Unbound namespaces may name any workspace (`--single-tenant`).
    pub single_tenant: bool,
}

/// The workspaces a namespace's binding annotation allows (comma-separated ids or slugs; the
/// first is the namespace's default). Blank entries are ignored.
pub fn binding_entries(binding: &str) -> Vec<String> {
    binding
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|w| format!("{w:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn not_allowed(spec: &str, namespace: &str, why: String) -> Refusal {
    refusal(
        reasons::WORKSPACE_NOT_ALLOWED,
        format!(
            "spec.workspace: {spec:?} is not allowed: namespace {namespace} {why}; nothing was written"
        ),
    )
}

/// The workspace (id or slug, to resolve) a resource of `namespace` may use: `spec.workspace`
/// if it is one of the namespace binding's entries (written the same way, case aside), else the
/// binding's first entry; in an unbound namespace only the operator's default workspace, or
/// with `single_tenant` whatever the spec names. A refusal is terminal: only a cluster admin
/// (binding, configuration) or a spec change can lift it.
pub fn choose_workspace(
    spec_workspace: Option<&str>,
    binding: Option<&str>,
    namespace: &str,
    config: TenancyConfig<'_>,
) -> Result<String, Refusal> {
    let bound = binding.map(binding_entries).filter(|l| !l.is_empty());
    match (bound, spec_workspace) {
        (Some(list), None) => Ok(list[0].clone()),
        (Some(list), Some(w)) if list.iter().any(|b| b.eq_ignore_ascii_case(w)) => Ok(w.to_owned()),
        (Some(list), Some(w)) => {
            let what = if list.len() == 1 { "workspace" } else { "workspaces" };
            Err(not_allowed(
                w,
                namespace,
                format!("is bound to {what} {} (annotation {WORKSPACE_ANNOTATION})", quoted(&list)),
            ))
        }
        (None, _) if config.require_binding => Err(refusal(
            reasons::NAMESPACE_NOT_BOUND,
            format!(
                "namespace {namespace} has no {WORKSPACE_ANNOTATION} annotation, and the operator requires one (--require-namespace-binding): a cluster admin must bind it to a workspace; nothing was written"
            ),
        )),
        (None, Some(w)) if config.single_tenant => Ok(w.to_owned()),
        (None, spec) => match (config.default_workspace, spec) {
            (Some(d), None) => Ok(d.to_owned()),
            (Some(d), Some(w)) if d.eq_ignore_ascii_case(w) => Ok(w.to_owned()),
            (Some(d), Some(w)) => Err(not_allowed(
                w,
                namespace,
                format!("has no {WORKSPACE_ANNOTATION} annotation, so it may use only the operator's default workspace {d:?}"),
            )),
            (None, None) if config.single_tenant => Err(refusal(
                reasons::INVALID_SPEC,
                "spec.workspace: required (the namespace is not bound to a workspace and the operator has no --default-workspace)".into(),
            )),
            (None, _) => Err(refusal(
                reasons::NAMESPACE_NOT_BOUND,
                format!(
                    "namespace {namespace} has no {WORKSPACE_ANNOTATION} annotation: a cluster admin must bind it to a workspace (or configure the operator with --default-workspace, or --single-tenant on a single-tenant cluster); spec.workspace alone grants no access; nothing was written"
                ),
            )),
        },
    }
}

/// On what grounds a resource claims the object an id in its status names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis<'a> {
    /// The operator created it for this resource: its name carries the resource's marker.
    Created,
    /// The spec names it by id (`field`, e.g. `spec.adoptPolicyId`); an object the operator
    /// created for the resource since (carrying its marker) also counts.
    DeclaredId { field: &'static str, id: &'a str },
    /// The spec names it by name (`spec.existing.name`); the name must still be that.
    DeclaredName { field: &'static str, name: &'a str },
}

/// What Portkey answered for a recorded id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteFacts<'a> {
    pub id: &'a str,
    /// `None`: an organisation-level object (it belongs to no workspace).
    pub workspace_id: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// What a recorded id must match.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The status field the id was read from, e.g. `status.keyId`.
    pub field: &'static str,
    /// What the object is, for messages: `Portkey policy`, `Portkey API key`.
    pub object: &'static str,
    /// The workspace UUID this resource may use (from [`choose_workspace`], resolved).
    pub workspace_id: &'a str,
    pub identity: &'a Identity,
    pub basis: Basis<'a>,
}

/// The one verification rule for ids read from status: the object must be in the resource's
/// allowed workspace, and be the resource's by what cannot be forged (its marker, or the id or
/// name the spec declares). A refusal (`RecordedIdMismatch`) means nothing may be written,
/// rotated, archived or deleted through that id.
pub fn verify_recorded(expected: &Expected<'_>, remote: &RemoteFacts<'_>) -> Result<(), Refusal> {
    let Expected {
        field,
        object,
        workspace_id,
        identity,
        basis,
    } = *expected;
    let id = remote.id;
    let mismatch = |why: String| {
        refusal(
            reasons::RECORDED_ID_MISMATCH,
            format!(
                "{field}: {object} {id} {why}; nothing was written (status is not trusted: remove {field} to let the operator look again)"
            ),
        )
    };
    match remote.workspace_id {
        Some(ws) if ws.eq_ignore_ascii_case(workspace_id) => {}
        Some(_) => {
            return Err(mismatch(format!(
                "does not belong to this resource's workspace {workspace_id}"
            )));
        }
        None => {
            return Err(mismatch(format!(
                "belongs to no workspace (an organisation-level object), not to this resource's workspace {workspace_id}"
            )));
        }
    }
    let marked = identity.owns(remote.name);
    match basis {
        Basis::Created if marked => Ok(()),
        Basis::Created => Err(mismatch(format!(
            "does not carry this resource's ownership marker {} (it is another's, or was renamed outside the operator: a policy can then be taken over again with spec.adoptPolicyId)",
            identity.marker()
        ))),
        Basis::DeclaredId { id: declared, .. } if declared.eq_ignore_ascii_case(id) || marked => {
            Ok(())
        }
        Basis::DeclaredId {
            field: declared_field,
            id: declared,
        } => Err(mismatch(format!(
            "is neither {declared} ({declared_field}) nor carries this resource's ownership marker {}",
            identity.marker()
        ))),
        Basis::DeclaredName { name, .. } if remote.name == Some(name) => Ok(()),
        Basis::DeclaredName {
            field: declared_field,
            name,
        } => Err(mismatch(format!(
            "is no longer named {name:?} ({declared_field}; it is named {:?} now): a renamed key is not followed, and a new key with the old name is not taken over",
            remote.name.unwrap_or_default()
        ))),
    }
}

/// What API keys the operator may issue or manage: the platform team's choice, never the
/// tenant's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyScopePolicy {
    /// Scopes an issued key may ask for.
    pub allowed: Vec<String>,
    /// `spec.issue.subType: user` is allowed.
    pub allow_user_keys: bool,
    /// `spec.existing` may name a key holding scopes beyond `allowed`.
    pub allow_broad_existing_keys: bool,
}

impl Default for KeyScopePolicy {
    fn default() -> Self {
        KeyScopePolicy {
            allowed: DATA_PLANE_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            allow_user_keys: false,
            allow_broad_existing_keys: false,
        }
    }
}

impl KeyScopePolicy {
    fn allows(&self, scope: &str) -> bool {
        self.allowed.iter().any(|a| a == scope)
    }

    fn allowed_list(&self) -> String {
        self.allowed.join(", ")
    }

    /// An issued key's spec: every scope on the allow-list, and a `user` key only when allowed.
    pub fn check_issue(&self, issue: &IssueKey) -> Result<(), Refusal> {
        if issue.sub_type == ApiKeySubType::User && !self.allow_user_keys {
            return Err(refusal(
                reasons::KEY_TYPE_NOT_ALLOWED,
                "spec.issue.subType: user keys are not allowed by the operator (a platform team allows them with --allow-user-keys, chart value apiKeys.allowUserKeys); nothing was created".into(),
            ));
        }
        if let Some((i, scope)) = issue
            .scopes
            .iter()
            .enumerate()
            .find(|(_, s)| !self.allows(s))
        {
            return Err(refusal(
                reasons::SCOPE_NOT_ALLOWED,
                format!(
                    "spec.issue.scopes[{i}]: {scope:?} is not allowed by the operator (allowed: {}; a platform team changes the list with --allowed-key-scope, chart value apiKeys.allowedScopes); nothing was written",
                    self.allowed_list()
                ),
            ));
        }
        Ok(())
    }

    /// A key named by `spec.existing`: no scopes beyond the allow-list unless the platform team
    /// allows management keys.
    pub fn check_existing(&self, key: &ApiKeyObject) -> Result<(), Refusal> {
        if self.allow_broad_existing_keys {
            return Ok(());
        }
        let broad: Vec<&str> = key
            .scopes
            .iter()
            .map(String::as_str)
            .filter(|s| !self.allows(s))
            .collect();
        if broad.is_empty() {
            return Ok(());
        }
        Err(refusal(
            reasons::KEY_SCOPES_TOO_BROAD,
            format!(
                "spec.existing: API key {} holds scopes beyond the operator's allow-list ({}); a key that can manage Portkey is not handed to a namespace (a platform team allows it with --allow-broad-existing-keys, chart value apiKeys.allowBroadExistingKeys); nothing was written",
                key.id,
                broad.join(", ")
            ),
        ))
    }

    /// True when the key's scopes differ from what the spec asks (an issued key).
    pub fn scopes_differ(issue: &IssueKey, key: &ApiKeyObject) -> bool {
        let mut want: Vec<&str> = issue.scopes.iter().map(String::as_str).collect();
        let mut have: Vec<&str> = key.scopes.iter().map(String::as_str).collect();
        want.sort_unstable();
        want.dedup();
        have.sort_unstable();
        have.dedup();
        want != have
    }
}

/// The refusal of an existing key that is the one the operator authenticates with.
pub fn operator_key(key_id: &str) -> Refusal {
    refusal(
        reasons::OPERATOR_KEY_REFUSED,
        format!(
            "spec.existing: API key {key_id} is the key the operator authenticates with; the operator never manages or deletes its own key; nothing was written"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity::new("akb", Some("team-a"), "app").installed("c1", &[])
    }

    const OPEN: TenancyConfig<'static> = TenancyConfig {
        default_workspace: None,
        require_binding: false,
        single_tenant: false,
    };

    #[test]
    fn a_binding_lists_the_workspaces_and_its_first_is_the_default() {
        let c = choose_workspace(None, Some(" team-a , team-shared"), "ns", OPEN);
        assert_eq!(c, Ok("team-a".to_owned()));
        let c = choose_workspace(Some("TEAM-SHARED"), Some("team-a,team-shared"), "ns", OPEN);
        assert_eq!(c, Ok("TEAM-SHARED".to_owned()), "compared without case");
        let r = choose_workspace(Some("other"), Some("team-a"), "ns", OPEN).unwrap_err();
        assert_eq!(r.reason, "WorkspaceNotAllowed");
        assert!(
            r.message.starts_with("spec.workspace: \"other\" is not allowed: namespace ns is bound to workspace \"team-a\""),
            "{}",
            r.message
        );
        let r = choose_workspace(Some("x"), Some("a,b"), "ns", OPEN).unwrap_err();
        assert!(
            r.message.contains("workspaces \"a\", \"b\""),
            "{}",
            r.message
        );
    }

    #[test]
    fn an_unbound_namespace_gets_no_workspace_by_default() {
        let r = choose_workspace(Some("other"), None, "ns", OPEN).unwrap_err();
        assert_eq!(r.reason, "NamespaceNotBound");
        assert!(r.message.contains("spec.workspace alone grants no access"));
        let r = choose_workspace(None, Some(" , "), "ns", OPEN).unwrap_err();
        assert_eq!(
            r.reason, "NamespaceNotBound",
            "a blank binding binds nothing"
        );
    }

    #[test]
    fn an_unbound_namespace_may_use_only_the_default_workspace() {
        let config = TenancyConfig {
            default_workspace: Some("shared"),
            ..OPEN
        };
        assert_eq!(
            choose_workspace(None, None, "ns", config),
            Ok("shared".to_owned())
        );
        assert_eq!(
            choose_workspace(Some("Shared"), None, "ns", config),
            Ok("Shared".to_owned())
        );
        let r = choose_workspace(Some("other"), None, "ns", config).unwrap_err();
        assert_eq!(r.reason, "WorkspaceNotAllowed");
        assert!(
            r.message.contains("default workspace \"shared\""),
            "{}",
            r.message
        );
        let strict = TenancyConfig {
            require_binding: true,
            ..config
        };
        assert_eq!(
            choose_workspace(None, None, "ns", strict)
                .unwrap_err()
                .reason,
            "NamespaceNotBound"
        );
    }

    #[test]
    fn single_tenant_trusts_the_spec_in_unbound_namespaces_only() {
        let config = TenancyConfig {
            single_tenant: true,
            ..OPEN
        };
        assert_eq!(
            choose_workspace(Some("other"), None, "ns", config),
            Ok("other".to_owned())
        );
        let r = choose_workspace(Some("other"), Some("team-a"), "ns", config).unwrap_err();
        assert_eq!(r.reason, "WorkspaceNotAllowed", "a binding still rules");
        assert_eq!(
            choose_workspace(None, None, "ns", config)
                .unwrap_err()
                .reason,
            "InvalidSpec"
        );
    }

    fn expected<'a>(identity: &'a Identity, basis: Basis<'a>) -> Expected<'a> {
        Expected {
            field: "status.keyId",
            object: "Portkey API key",
            workspace_id: "ws-a",
            identity,
            basis,
        }
    }

    fn facts<'a>(ws: Option<&'a str>, name: Option<&'a str>) -> RemoteFacts<'a> {
        RemoteFacts {
            id: "k1",
            workspace_id: ws,
            name,
        }
    }

    #[test]
    fn a_recorded_id_of_another_workspace_is_refused_whatever_it_carries() {
        let id = me();
        let marked = id.remote_name(None);
        for basis in [
            Basis::Created,
            Basis::DeclaredId {
                field: "spec.existing.id",
                id: "k1",
            },
            Basis::DeclaredName {
                field: "spec.existing.name",
                name: &marked,
            },
        ] {
            let r = verify_recorded(&expected(&id, basis), &facts(Some("ws-b"), Some(&marked)))
                .unwrap_err();
            assert_eq!(r.reason, "RecordedIdMismatch");
            assert!(
                r.message.starts_with(
                    "status.keyId: Portkey API key k1 does not belong to this resource's workspace ws-a"
                ),
                "{}",
                r.message
            );
            assert!(
                !r.message.contains("ws-b"),
                "another workspace is not named: {}",
                r.message
            );
            let org = verify_recorded(&expected(&id, basis), &facts(None, Some(&marked)));
            assert_eq!(org.unwrap_err().reason, "RecordedIdMismatch", "{basis:?}");
        }
    }

    #[test]
    fn an_operator_created_object_must_carry_the_marker() {
        let id = me();
        let ok = verify_recorded(
            &expected(&id, Basis::Created),
            &facts(Some("WS-A"), Some(&id.remote_name(Some("app")))),
        );
        assert_eq!(ok, Ok(()));
        let legacy = id.legacy_marker();
        assert_eq!(
            verify_recorded(
                &expected(&id, Basis::Created),
                &facts(Some("ws-a"), Some(&legacy))
            ),
            Ok(()),
            "markers of earlier versions are still the resource's"
        );
        for name in [
            None,
            Some("hand made"),
            Some("x [k8s:akb:team-b/app@c1]"),
            Some("x [k8s:akb:team-a/app@c2]"),
        ] {
            let r = verify_recorded(&expected(&id, Basis::Created), &facts(Some("ws-a"), name))
                .unwrap_err();
            assert_eq!(r.reason, "RecordedIdMismatch");
            assert!(r.message.contains("ownership marker"), "{}", r.message);
        }
    }

    #[test]
    fn a_declared_id_or_the_marker_and_a_declared_name_are_accepted() {
        let id = me();
        let adopt = Basis::DeclaredId {
            field: "spec.adoptPolicyId",
            id: "K1",
        };
        assert_eq!(
            verify_recorded(&expected(&id, adopt), &facts(Some("ws-a"), None)),
            Ok(())
        );
        let other = Basis::DeclaredId {
            field: "spec.adoptPolicyId",
            id: "k9",
        };
        let r = verify_recorded(
            &expected(&id, other),
            &facts(Some("ws-a"), Some("hand made")),
        )
        .unwrap_err();
        assert!(r.message.contains("spec.adoptPolicyId"), "{}", r.message);
        let replacement = id.remote_name(None);
        assert_eq!(
            verify_recorded(
                &expected(&id, other),
                &facts(Some("ws-a"), Some(&replacement))
            ),
            Ok(()),
            "a replacement the operator created carries the marker"
        );
        let named = Basis::DeclaredName {
            field: "spec.existing.name",
            name: "payments",
        };
        assert_eq!(
            verify_recorded(
                &expected(&id, named),
                &facts(Some("ws-a"), Some("payments"))
            ),
            Ok(())
        );
        let renamed = verify_recorded(
            &expected(&id, named),
            &facts(Some("ws-a"), Some("payments-old")),
        )
        .unwrap_err();
        assert!(
            renamed.message.contains("no longer named \"payments\""),
            "{}",
            renamed.message
        );
    }

    fn issue(sub: ApiKeySubType, scopes: &[&str]) -> IssueKey {
        IssueKey {
            name: None,
            sub_type: sub,
            user_id: None,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            secret_name: "s".into(),
            secret_key: None,
            rotation_transition_seconds: None,
        }
    }

    #[test]
    fn issued_keys_get_only_allowed_scopes_and_no_user_keys_by_default() {
        let policy = KeyScopePolicy::default();
        assert_eq!(
            policy.check_issue(&issue(ApiKeySubType::Service, DATA_PLANE_SCOPES)),
            Ok(())
        );
        let r = policy
            .check_issue(&issue(
                ApiKeySubType::Service,
                &["completions.write", "policies.delete"],
            ))
            .unwrap_err();
        assert_eq!(r.reason, "ScopeNotAllowed");
        assert!(
            r.message
                .starts_with("spec.issue.scopes[1]: \"policies.delete\""),
            "{}",
            r.message
        );
        let r = policy
            .check_issue(&issue(ApiKeySubType::User, &["completions.write"]))
            .unwrap_err();
        assert_eq!(r.reason, "KeyTypeNotAllowed");
        let open = KeyScopePolicy {
            allowed: vec!["policies.delete".into()],
            allow_user_keys: true,
            ..Default::default()
        };
        assert_eq!(
            open.check_issue(&issue(ApiKeySubType::User, &["policies.delete"])),
            Ok(())
        );
    }

    #[test]
    fn existing_keys_with_management_scopes_are_refused_unless_allowed() {
        let key = |scopes: &[&str]| ApiKeyObject {
            id: "k1".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..serde_json::from_value(serde_json::json!({"id": "k1"})).unwrap()
        };
        let policy = KeyScopePolicy::default();
        assert_eq!(policy.check_existing(&key(&["completions.write"])), Ok(()));
        let r = policy
            .check_existing(&key(&[
                "completions.write",
                "workspace_service_api_keys.create",
            ]))
            .unwrap_err();
        assert_eq!(r.reason, "KeyScopesTooBroad");
        assert!(
            r.message.contains("workspace_service_api_keys.create"),
            "{}",
            r.message
        );
        let lenient = KeyScopePolicy {
            allow_broad_existing_keys: true,
            ..Default::default()
        };
        assert_eq!(lenient.check_existing(&key(&["policies.delete"])), Ok(()));
        assert!(KeyScopePolicy::scopes_differ(
            &issue(ApiKeySubType::Service, &["completions.write"]),
            &key(&["completions.write", "logs.write"])
        ));
        assert!(!KeyScopePolicy::scopes_differ(
            &issue(ApiKeySubType::Service, &["logs.write", "completions.write"]),
            &key(&["completions.write", "logs.write"])
        ));
    }
}
