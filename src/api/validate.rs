//! Client-side validation of resources against the CRDs' OpenAPI schema and CEL rules.
//!
//! The apiserver enforces the same rules at admission. This copy lets the `plan`/`sync` CLI
//! check manifests without a cluster, lets tests prove each rule, and lets the controller refuse
//! (as `InvalidSpec`, with no Admin API call) anything that reached it without admission.
//! Errors name the field and the rule.

use std::collections::HashSet;
use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Map, Value};

/// One validation failure.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// Dotted path such as `spec.conditions[0].key` (`spec` for rules across fields).
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Joins errors into one line (for conditions and CLI output).
pub fn summarize(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The OpenAPI v3 schema of a CRD's first version, as JSON.
pub fn crd_schema(crd: &CustomResourceDefinition) -> Value {
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).expect("schema serializes"))
        .unwrap_or(Value::Null)
}

/// A CRD's schema with its CEL rules compiled once, for validating many objects (the
/// controller validates every resource on every reconcile; compiling the rules each time
/// dominated its CPU time).
pub struct CompiledCrd {
    schema: Value,
    compiled: kube::core::cel::CompiledSchema,
}

impl std::fmt::Debug for CompiledCrd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledCrd").finish_non_exhaustive()
    }
}

thread_local! {
    /// The CEL environment (all Kubernetes CEL functions registered), one per thread.
    static VALIDATOR: kube::core::cel::Validator = kube::core::cel::Validator::new();
}

impl CompiledCrd {
    pub fn new(crd: &CustomResourceDefinition) -> Self {
        let schema = crd_schema(crd);
        let compiled = kube::core::cel::compile_schema(&schema);
        CompiledCrd { schema, compiled }
    }

    /// Validates `object` (a whole resource as JSON): schema first, then, when the schema
    /// holds, the CEL rules (with `old` for transition rules on updates).
    pub fn validate(&self, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
        self.validate_inner(object, old, false)
    }

    /// As [`CompiledCrd::validate`], but a CEL rule's error names the field the rule is about
    /// ([`rule_field`]) rather than the object the rule is declared on (`spec` for rules across
    /// fields). For the CLI, which points at the offending line; the controller's conditions
    /// keep [`CompiledCrd::validate`]'s paths (the API server's).
    pub fn validate_pointing(&self, object: &Value, old: Option<&Value>) -> Vec<FieldError> {
        self.validate_inner(object, old, true)
    }

    fn validate_inner(&self, object: &Value, old: Option<&Value>, point: bool) -> Vec<FieldError> {
        let mut errors = Vec::new();
        check(&self.schema, object, "", &mut errors);
        if !errors.is_empty() {
            return errors;
        }
        let cel = VALIDATOR.with(|v| v.validate_compiled(&self.compiled, object, old));
        if let Err(cel) = cel {
            for e in cel.into_vec() {
                let base = e.field_path.trim_start_matches('.');
                let field = if point {
                    rule_field(base, &e.rule, &e.message)
                } else {
                    base.to_owned()
                };
                errors.push(FieldError {
                    field,
                    message: e.message,
                });
            }
        }
        errors
    }
}

/// The field a CEL rule declared on the object at `base` is about: of the fields the rule reads
/// (`self.x`), the one its message names first, else the first it reads; `base` when it reads
/// none. A rule declared on a list item (`spec.rateLimits[0]`) keeps the item's path, as the API
/// server reports it (those messages name the field themselves).
///
/// `rule_field("spec", "!has(self.alertThreshold) || …", "alertThreshold must be …")` is
/// `spec.alertThreshold`.
pub fn rule_field(base: &str, rule: &str, message: &str) -> String {
    if base.ends_with(']') {
        return base.to_owned();
    }
    let reads = regex::Regex::new(r"\bself\.([A-Za-z_][A-Za-z0-9_]*)\b(\s*\()?").expect("valid");
    let mut fields: Vec<&str> = Vec::new();
    for c in reads.captures_iter(rule) {
        // `self.all(...)` is a macro on the object itself, not a field.
        if c.get(2).is_some() {
            continue;
        }
        let name = c.get(1).expect("group 1").as_str();
        if !fields.contains(&name) {
            fields.push(name);
        }
    }
    let named_at = |f: &str| {
        regex::Regex::new(&format!(r"\b{}\b", regex::escape(f)))
            .ok()
            .and_then(|re| re.find(message).map(|m| m.start()))
    };
    let chosen = fields
        .iter()
        .filter_map(|f| named_at(f).map(|at| (at, *f)))
        .min()
        .map(|(_, f)| f)
        .or_else(|| fields.first().copied());
    match chosen {
        Some(f) => join(base, f),
        None => base.to_owned(),
    }
}

/// Validates `object` (a whole resource as JSON) against the CRD: schema first, then, when the
/// schema holds, the CEL rules (with `old` for transition rules on updates). Compiles the rules;
/// use [`CompiledCrd`] to validate many objects.
pub fn validate_object(
    crd: &CustomResourceDefinition,
    object: &Value,
    old: Option<&Value>,
) -> Vec<FieldError> {
    CompiledCrd::new(crd).validate(object, old)
}

/// [`validate_object`] with the errors of CEL rules pointing at the field each rule is about
/// ([`CompiledCrd::validate_pointing`]).
pub fn validate_object_pointing(
    crd: &CustomResourceDefinition,
    object: &Value,
    old: Option<&Value>,
) -> Vec<FieldError> {
    CompiledCrd::new(crd).validate_pointing(object, old)
}

fn err(errors: &mut Vec<FieldError>, path: &str, message: impl Into<String>) {
    errors.push(FieldError {
        field: path.to_owned(),
        message: message.into(),
    });
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

fn check(schema: &Value, v: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(s) = schema.as_object() else { return };
    if v.is_null() {
        if s.get("nullable").and_then(Value::as_bool) != Some(true) {
            err(errors, path, "must not be null");
        }
        return;
    }
    if s.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
        match v {
            Value::Number(n) if n.is_i64() || n.is_u64() => {}
            Value::String(text) => check_string(s, text, path, errors),
            Value::Number(_) => err(
                errors,
                path,
                format!(
                    "must be an integer or a quoted decimal string such as \"{v}\" (floating-point numbers are not accepted)"
                ),
            ),
            _ => err(
                errors,
                path,
                format!("must be an integer or a string, got {}", describe(v)),
            ),
        }
        return;
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let names: Vec<String> = allowed
            .iter()
            .filter(|a| !a.is_null())
            .map(|a| {
                a.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| a.to_string())
            })
            .collect();
        err(
            errors,
            path,
            format!("must be one of: {} (got {})", names.join(", "), describe(v)),
        );
        return;
    }
    match s.get("type").and_then(Value::as_str) {
        Some("object") => match v.as_object() {
            Some(obj) => check_object(s, obj, path, errors),
            None => err(
                errors,
                path,
                format!("must be an object, got {}", describe(v)),
            ),
        },
        Some("array") => match v.as_array() {
            Some(items) => check_array(s, items, path, errors),
            None => err(errors, path, format!("must be a list, got {}", describe(v))),
        },
        Some("string") => match v.as_str() {
            Some(text) => check_string(s, text, path, errors),
            None => err(
                errors,
                path,
                format!("must be a string, got {}", describe(v)),
            ),
        },
        Some("integer") => match v.as_number().filter(|n| n.is_i64() || n.is_u64()) {
            Some(n) => check_range(s, n.as_f64().unwrap_or(f64::MAX), path, errors),
            None => err(
                errors,
                path,
                format!("must be an integer, got {}", describe(v)),
            ),
        },
        Some("number") => match v.as_f64() {
            Some(n) => check_range(s, n, path, errors),
            None => err(
                errors,
                path,
                format!("must be a number, got {}", describe(v)),
            ),
        },
        Some("boolean") if !v.is_boolean() => {
            err(
                errors,
                path,
                format!("must be true or false, got {}", describe(v)),
            );
        }
        _ => {}
    }
}

fn check_object(
    s: &Map<String, Value>,
    obj: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let props = s.get("properties").and_then(Value::as_object);
    if let Some(required) = s.get("required").and_then(Value::as_array) {
        for key in required.iter().filter_map(Value::as_str) {
            if !obj.contains_key(key) {
                err(errors, &join(path, key), "is required");
            }
        }
    }
    let preserve = s
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    for (key, value) in obj {
        // Object metadata is validated by the apiserver itself, not by the CRD schema.
        if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let child = join(path, key);
        match (
            props.and_then(|p| p.get(key)),
            s.get("additionalProperties"),
        ) {
            (Some(sub), _) => check(sub, value, &child, errors),
            (None, Some(extra)) if extra.is_object() => check(extra, value, &child, errors),
            (None, _) if props.is_some() && !preserve => err(errors, &child, "unknown field"),
            _ => {}
        }
    }
}

fn check_array(s: &Map<String, Value>, items: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    if let Some(min) = s.get("minItems").and_then(Value::as_u64)
        && (items.len() as u64) < min
    {
        err(errors, path, format!("must have at least {min} item(s)"));
    }
    if let Some(max) = s.get("maxItems").and_then(Value::as_u64)
        && items.len() as u64 > max
    {
        err(
            errors,
            path,
            format!("must have at most {max} items (got {})", items.len()),
        );
    }
    if let Some(item_schema) = s.get("items") {
        for (i, item) in items.iter().enumerate() {
            check(item_schema, item, &format!("{path}[{i}]"), errors);
        }
    }
    match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                if !seen.insert(item.to_string()) {
                    err(
                        errors,
                        &format!("{path}[{i}]"),
                        format!("duplicate value {}", describe(item)),
                    );
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = s
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut seen = HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let id: Vec<String> = keys
                    .iter()
                    .map(|k| item.get(*k).map(Value::to_string).unwrap_or_default())
                    .collect();
                if !seen.insert(id.clone()) {
                    err(
                        errors,
                        &format!("{path}[{i}]"),
                        format!("duplicate entry for {}", id.join(",")),
                    );
                }
            }
        }
        _ => {}
    }
}

fn check_string(s: &Map<String, Value>, text: &str, path: &str, errors: &mut Vec<FieldError>) {
    let len = text.chars().count() as u64;
    if let Some(min) = s.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        if min == 1 {
            err(errors, path, "must not be empty");
        } else {
            err(errors, path, format!("must be at least {min} characters"));
        }
    }
    if let Some(max) = s.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        err(
            errors,
            path,
            format!("must be at most {max} characters (got {len})"),
        );
    }
    if let Some(pattern) = s.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(re) if !re.is_match(text) => {
                err(
                    errors,
                    path,
                    format!(
                        "{} does not match {pattern}",
                        describe(&Value::String(text.to_owned()))
                    ),
                );
            }
            Ok(_) => {}
            Err(e) => err(
                errors,
                path,
                format!("schema pattern {pattern} is invalid: {e}"),
            ),
        }
    }
}

fn check_range(s: &Map<String, Value>, n: f64, path: &str, errors: &mut Vec<FieldError>) {
    let bound = |k: &str| s.get(k).and_then(Value::as_f64);
    let show = |b: f64| {
        if b.fract() == 0.0 {
            format!("{}", b as i64)
        } else {
            b.to_string()
        }
    };
    if let Some(min) = bound("minimum")
        && n < min
    {
        err(errors, path, format!("must be at least {}", show(min)));
    }
    if let Some(max) = bound("maximum")
        && n > max
    {
        err(errors, path, format!("must be at most {}", show(max)));
    }
    if s.get("format").and_then(Value::as_str) == Some("int32")
        && (n < i32::MIN as f64 || n > i32::MAX as f64)
    {
        err(errors, path, "must fit in a 32-bit integer");
    }
}
