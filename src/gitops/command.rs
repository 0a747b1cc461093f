//! `plan` and `sync` from start to end: load the manifests, connect (to Portkey or the
//! built-in emulator), plan, apply, print; the exit code says how it ended ([`super::exit`]).

use std::path::PathBuf;

use serde_json::json;

use super::problem::{Class, Problem, exit};
use super::progress::Progress;
use super::{Manifests, Plan, PlanSettings};
use crate::config::{ApiKeySource, read_api_key};
use crate::emulator::{self, EmulatorConfig, EmulatorHandle};
use crate::portkey::{ApiKey, ClientConfig, PortkeyClient};

/// What `plan` and `sync` were asked to do (the flags, less clap).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub paths: Vec<PathBuf>,
    /// The built-in emulator instead of Portkey.
    pub emulator: bool,
    pub admin_api_url: String,
    /// Else `PORTKEY_API_KEY`.
    pub api_key_file: Option<PathBuf>,
    pub default_workspace: Option<String>,
    pub prune: bool,
    pub max_prune: usize,
    pub installation_id: String,
    pub adopt_from_installations: Vec<String>,
    pub json: bool,
    /// Documents of other API groups are errors, not warnings.
    pub fail_on_unknown: bool,
    /// `plan` exits 2 when there are changes.
    pub detailed_exitcode: bool,
    /// A progress bar on stderr when it is a terminal.
    pub progress: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plan,
    Sync,
}

/// Runs `plan` or `sync`; returns the exit code. Everything it prints goes to stdout (the plan,
/// the table, `-o json`) or stderr (warnings, errors in text mode, progress).
pub async fn run(opts: Options, mode: Mode) -> u8 {
    let manifests = match read(&opts) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let (client, target, _emulator) = match connect(&opts, &manifests).await {
        Ok(c) => c,
        Err((code, message)) => {
            report(&opts, &[Problem::new(Class::Api, message)]);
            return code;
        }
    };
    let settings = PlanSettings {
        installation_id: opts.installation_id.clone(),
        adopt_from_installations: opts.adopt_from_installations.clone(),
        default_workspace: opts.default_workspace.clone(),
        prune: opts.prune,
        max_prune: opts.max_prune,
    };
    let progress = Progress::on_terminal(opts.progress);
    let plan = super::plan(&client, &manifests.resources, &settings, &progress).await;
    if !opts.json {
        print!("{}", super::render_text(&plan, &target));
    }
    if let Some(class) = plan.failure() {
        if opts.json {
            print_json(mode, &plan, &manifests, 0, &plan.errors);
        } else if mode == Mode::Sync {
            eprintln!("the plan has errors; nothing was changed");
        }
        return class.exit_code();
    }
    if mode == Mode::Plan {
        if opts.json {
            print_json(mode, &plan, &manifests, 0, &[]);
        }
        return if opts.detailed_exitcode && plan.has_changes() {
            exit::CHANGES
        } else {
            exit::OK
        };
    }
    let applied = super::apply(&client, &plan, &progress).await;
    if opts.json {
        print_json(mode, &plan, &manifests, applied.applied, &applied.errors);
    } else {
        let table = super::status_table(&client, &manifests.resources, &settings, &progress).await;
        println!("\nApplied {} change(s).\n", applied.applied);
        print!("{table}");
        for e in &applied.errors {
            eprintln!("error: {e}");
        }
    }
    // A write that failed is an Admin API error.
    if applied.errors.is_empty() {
        exit::OK
    } else {
        exit::API
    }
}

/// The manifests, with warnings for what was skipped; or the exit code of invalid ones
/// (reported, and nothing read from Portkey).
fn read(opts: &Options) -> Result<Manifests, u8> {
    let mut manifests = super::load(&opts.paths);
    for skipped in &manifests.skipped {
        if opts.fail_on_unknown {
            manifests.errors.push(skipped.problem());
        } else if !opts.json {
            eprintln!("warning: {}", skipped.warning());
        }
    }
    if manifests.errors.is_empty() {
        manifests.errors =
            super::missing_workspaces(&manifests.resources, opts.default_workspace.as_deref());
    }
    if !manifests.errors.is_empty() {
        return Err(invalid(opts, &manifests));
    }
    if !opts.json && manifests.ignored > 0 {
        eprintln!(
            "{} document(s) of other API groups skipped (--fail-on-unknown makes them errors)",
            manifests.ignored
        );
    }
    if manifests.resources.is_empty() {
        eprintln!(
            "no {} found in {}",
            super::kinds::listed_with("or"),
            opts.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(manifests)
}

/// Invalid manifests: every error, and nothing read, sent or pruned.
fn invalid(opts: &Options, manifests: &Manifests) -> u8 {
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "errors": manifests.errors,
                "skipped": manifests.skipped,
                "items": [],
            }))
            .expect("serializes")
        );
    } else {
        for e in &manifests.errors {
            eprintln!("error: {e}");
        }
        eprintln!(
            "{} manifest error(s); nothing was read from or sent to Portkey{}",
            manifests.errors.len(),
            if opts.prune { ", nothing pruned" } else { "" }
        );
    }
    exit::INVALID
}

/// Errors before a plan exists (no key, no emulator).
fn report(opts: &Options, errors: &[Problem]) {
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"errors": errors, "items": []}))
                .expect("serializes")
        );
    } else {
        for e in errors {
            eprintln!("error: {e}");
        }
    }
}

fn print_json(mode: Mode, plan: &Plan, manifests: &Manifests, applied: usize, errors: &[Problem]) {
    let value = match mode {
        Mode::Plan => json!({
            "items": plan.items,
            "errors": plan.errors,
            "skipped": manifests.skipped,
        }),
        Mode::Sync => json!({
            "plan": plan,
            "applied": applied,
            "errors": errors,
            "skipped": manifests.skipped,
        }),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&value).expect("serializes")
    );
}

/// The client, what it talks to (for the plan's title), and the emulator it keeps running.
async fn connect(
    opts: &Options,
    manifests: &Manifests,
) -> Result<(PortkeyClient, String, Option<EmulatorHandle>), (u8, String)> {
    if !opts.emulator {
        let key = api_key(&opts.api_key_file).map_err(|e| (exit::USAGE, e))?;
        let client = PortkeyClient::new(ClientConfig::new(opts.admin_api_url.clone(), key))
            .map_err(|e| (exit::USAGE, e.to_string()))?;
        let target = format!("the Portkey Admin API at {}", client.base_url());
        return Ok((client, target, None));
    }
    let seed = super::emulator_seed(&manifests.resources, opts.default_workspace.as_deref());
    let keys = seed.api_keys.clone();
    let handle = emulator::spawn(EmulatorConfig::default().seed(seed))
        .await
        .map_err(|e| (exit::API, format!("could not start the emulator: {e}")))?;
    let base = handle.base_url();
    eprintln!(
        "Using the built-in Portkey Admin API emulator at {base} — NOT Portkey: nothing is sent to Portkey, and the emulator's state is gone when this command exits."
    );
    for key in keys {
        eprintln!(
            "The emulator holds a demo API key {:?} in workspace {} for the manifests that name it.",
            key.name, key.workspace
        );
    }
    let client = PortkeyClient::new(ClientConfig::new(base.clone(), ApiKey::new("emulator")))
        .map_err(|e| (exit::API, e.to_string()))?;
    Ok((
        client,
        format!("the built-in emulator ({base})"),
        Some(handle),
    ))
}

/// The key for `plan`/`sync`: `--api-key-file`, else `PORTKEY_API_KEY`. The error never holds
/// the key.
fn api_key(file: &Option<PathBuf>) -> Result<ApiKey, String> {
    let source = match file {
        Some(path) => ApiKeySource::File(path.clone()),
        None if std::env::var_os("PORTKEY_API_KEY").is_none() => {
            return Err(
                "no Admin API key: set PORTKEY_API_KEY or pass --api-key-file (or use --emulator)"
                    .into(),
            );
        }
        None => ApiKeySource::Env,
    };
    read_api_key(&source)
}
