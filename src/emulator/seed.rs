//! What the emulator starts with: workspaces, API keys, Admin API keys (flags, a seed file,
//! or manifests through the CLI).

use super::*;

/// A workspace the emulator starts with: `SLUG`, `SLUG=UUID`, or `ID:SLUG[:NAME]` with ID a
/// UUID. Without an id, the UUID is derived from the slug (stable across runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedWorkspace {
    pub id: String,
    pub slug: String,
    pub name: String,
}

pub(super) const WORKSPACE_FORMS: &str = "SLUG, SLUG=UUID or UUID:SLUG[:NAME]";

pub(super) fn check_slug(s: &str, slug: &str) -> Result<(), String> {
    if slug.is_empty() || slug.contains(char::is_whitespace) || slug.contains(['/', ':', '=']) {
        return Err(format!(
            "workspace {s:?}: the slug {slug:?} must be non-empty, without spaces, '/', ':' or '=' ({WORKSPACE_FORMS})"
        ));
    }
    Ok(())
}

impl FromStr for SeedWorkspace {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((slug, id)) = s.split_once('=') {
            let (slug, id) = (slug.trim(), id.trim());
            check_slug(s, slug)?;
            let id = uuid::Uuid::parse_str(id).map_err(|_| {
                format!("workspace {s:?}: {id:?} is not a UUID ({WORKSPACE_FORMS})")
            })?;
            return Ok(SeedWorkspace {
                id: id.to_string(),
                slug: slug.to_owned(),
                name: slug.to_owned(),
            });
        }
        if !s.contains(':') {
            check_slug(s, s.trim())?;
            return Ok(SeedWorkspace::from_slug(s.trim()));
        }
        let mut parts = s.splitn(3, ':');
        let id = parts.next().unwrap_or_default().trim();
        let slug = parts.next().unwrap_or_default().trim();
        let name = parts.next().map(str::trim).unwrap_or(slug);
        if uuid::Uuid::parse_str(id).is_err() {
            return Err(format!(
                "workspace {s:?}: ID {id:?} must be a UUID ({WORKSPACE_FORMS})"
            ));
        }
        check_slug(s, slug)?;
        Ok(SeedWorkspace {
            id: id.to_ascii_lowercase(),
            slug: slug.to_owned(),
            name: if name.is_empty() { slug } else { name }.to_owned(),
        })
    }
}

impl SeedWorkspace {
    /// A seed with a UUID derived from the slug (stable across runs), for demos and `--emulator`.
    pub fn from_slug(slug: &str) -> Self {
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, slug.as_bytes()).to_string();
        SeedWorkspace {
            id,
            slug: slug.to_owned(),
            name: slug.to_owned(),
        }
    }

    /// The workspace a manifest names (`spec.workspace`: a slug or a UUID).
    pub fn from_reference(reference: &str) -> Self {
        match uuid::Uuid::parse_str(reference) {
            Ok(id) => SeedWorkspace {
                id: id.to_string(),
                slug: format!("ws-{}", &id.to_string()[..8]),
                name: reference.to_owned(),
            },
            Err(_) => SeedWorkspace::from_slug(reference),
        }
    }
}

impl<'de> Deserialize<'de> for SeedWorkspace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            slug: String,
            id: Option<String>,
            name: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Full(Full),
        }
        let form = Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom(format!(
                "a workspace is a string ({WORKSPACE_FORMS}) or {{slug, id, name}}"
            ))
        })?;
        match form {
            Form::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Form::Full(f) => {
                let mut text = f.slug.clone();
                if let Some(id) = &f.id {
                    text = format!("{}={id}", f.slug);
                }
                let mut seed: SeedWorkspace = text.parse().map_err(serde::de::Error::custom)?;
                if let Some(name) = f.name {
                    seed.name = name;
                }
                Ok(seed)
            }
        }
    }
}

/// An API key the emulator starts with: a workspace service key named `name` in `workspace` (a
/// slug or id), e.g. the key an `ApiKeyBudget` manages by `spec.existing.name`. On the command
/// line `WORKSPACE/NAME`. Scopes default to `completions.write`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedApiKey {
    pub workspace: String,
    pub name: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl FromStr for SeedApiKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((workspace, name)) if !workspace.trim().is_empty() && !name.trim().is_empty() => {
                Ok(SeedApiKey {
                    workspace: workspace.trim().to_owned(),
                    name: name.trim().to_owned(),
                    scopes: Vec::new(),
                })
            }
            _ => Err(format!(
                "API key {s:?}: expected WORKSPACE/NAME (e.g. team-a/checkout-service)"
            )),
        }
    }
}

/// What the emulator starts with besides its state file: workspaces, workspace API keys, and
/// the Admin API keys it accepts. Built from the `emulator` flags, a `--seed` file (this
/// struct as YAML: `adminApiKeys`, `workspaces`, `apiKeys`), or by `plan`/`sync --emulator`
/// from the manifests; [`spawn`] applies it ([`EmulatorConfig::seed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Seed {
    /// Admin API keys the emulator accepts; none: every non-empty key.
    #[serde(default)]
    pub admin_api_keys: Vec<String>,
    #[serde(default)]
    pub workspaces: Vec<SeedWorkspace>,
    #[serde(default)]
    pub api_keys: Vec<SeedApiKey>,
}

impl Seed {
    /// A seed file (YAML); errors name the field.
    pub fn from_yaml(text: &str) -> Result<Seed, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Adds `other`'s entries (workspaces and keys already present are kept once).
    pub fn merge(&mut self, other: Seed) {
        for k in other.admin_api_keys {
            if !self.admin_api_keys.contains(&k) {
                self.admin_api_keys.push(k);
            }
        }
        for w in other.workspaces {
            if !self
                .workspaces
                .iter()
                .any(|s| s.slug == w.slug || s.id == w.id)
            {
                self.workspaces.push(w);
            }
        }
        for k in other.api_keys {
            if !self.api_keys.contains(&k) {
                self.api_keys.push(k);
            }
        }
    }
}

/// One line saying what a seed holds (the accepted Admin API keys are not shown).
pub fn seed_summary(seed: &Seed) -> String {
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    format!(
        "Workspaces: {}. API keys: {}. Admin API keys accepted: {}.",
        list(
            seed.workspaces
                .iter()
                .map(|w| format!("{} ({})", w.slug, w.id))
                .collect()
        ),
        list(
            seed.api_keys
                .iter()
                .map(|k| format!("{}/{}", k.workspace, k.name))
                .collect()
        ),
        match seed.admin_api_keys.len() {
            0 => "any non-empty key".to_owned(),
            n => format!("{n} configured"),
        }
    )
}
