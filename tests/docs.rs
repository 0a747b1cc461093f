//! The documentation cannot drift from the tool:
//! - the README's quickstart and standalone-emulator walkthrough (fenced blocks marked
//!   `<!-- tested: … -->`) run step by step with the built binary, each step's exit code and the
//!   output lines shown checked;
//! - every condition reason has its own section in `docs/reasons.md` (meaning, what the operator
//!   did, what to do), linked from the README, and no section names a reason the code lacks;
//! - the Admin API permissions in `docs/install.md` are the scopes `portkey::required_scope`
//!   gives for every operation the client makes, and the README names each of them;
//! - the four kinds are the same set in the CRDs, `Chart.yaml`, the chart's RBAC and NOTES, the
//!   README, the uninstall commands, and the binary's help;
//! - every relative link of the README and `docs/` reaches a file and, with `#`, a heading;
//! - every `--set` in the install instructions names a value the chart has, and they apply
//!   samples that exist and wait for the resources those samples declare.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portkey_budget_operator::controller::conditions::reasons;
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

const BINARY: &str = env!("CARGO_BIN_EXE_portkey-budget-operator");

// ---------------------------------------------------------------------------------------------
// Tested blocks: the README's console blocks, run as written.

/// One `$ command` of a tested block and the output lines shown under it.
#[derive(Debug)]
struct Step {
    command: String,
    exit: i32,
    expected: Vec<String>,
}

/// The steps of the console block that follows `<!-- tested: {name}` in the README.
fn tested_block(name: &str) -> Vec<Step> {
    let readme = read("README.md");
    let marker = format!("<!-- tested: {name}");
    let at = readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README.md has no block marked {marker:?}"));
    let mut lines = readme[at..].lines().skip(1);
    assert_eq!(
        lines.next().map(str::trim),
        Some("```console"),
        "the marker {marker:?} must be followed by a ```console block"
    );
    let exit = regex::Regex::new(r"#\s*exit (\d+)").unwrap();
    let mut steps: Vec<Step> = Vec::new();
    for line in lines.by_ref() {
        if line.trim() == "```" {
            return steps;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: command.to_owned(),
                exit: exit.captures(command).map_or(0, |c| c[1].parse().unwrap()),
                expected: Vec::new(),
            });
        } else {
            let step = steps
                .last_mut()
                .unwrap_or_else(|| panic!("output before any command in {name}: {line:?}"));
            step.expected.push(line.to_owned());
        }
    }
    panic!("the block {name} is not closed");
}

fn normalize(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A shown output line as a pattern: whitespace runs are equivalent, `…` stands for anything.
fn line_pattern(expected: &str) -> regex::Regex {
    let parts: Vec<String> = normalize(expected).split('…').map(regex::escape).collect();
    regex::Regex::new(&format!("^{}$", parts.join(".*"))).unwrap()
}

/// Checks that the shown lines appear in `actual`, in order; a line that is only `…` or empty
/// stands for lines left out.
fn check_output(step: &Step, actual: &str) -> Result<(), String> {
    let actual: Vec<String> = actual.lines().map(normalize).collect();
    let mut from = 0;
    for expected in &step.expected {
        if expected.trim().is_empty() || expected.trim() == "…" {
            continue;
        }
        let pattern = line_pattern(expected);
        match actual[from..].iter().position(|l| pattern.is_match(l)) {
            Some(i) => from += i + 1,
            None => {
                return Err(format!(
                    "`{}`: the line\n  {expected}\nis not in the output (after line {from}):\n{}",
                    step.command,
                    actual.join("\n")
                ));
            }
        }
    }
    Ok(())
}

/// Runs a tested block in one bash session from the repository's root, the built binary first
/// on the PATH, each step's output and exit code recorded; `cargo` steps are what `cargo test`
/// already did. Bounded: the session and everything it started are killed after `limit`.
fn run_block(name: &str, limit: Duration) {
    let steps = tested_block(name);
    assert!(
        steps.iter().any(|s| !s.command.starts_with("cargo ")),
        "{name}: nothing to run"
    );
    let out = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(BINARY).parent().unwrap();
    let mut script = format!(
        "cd '{}'\nexport PATH='{}':\"$PATH\"\n",
        root().display(),
        bin_dir.display()
    );
    for (i, step) in steps.iter().enumerate() {
        if step.command.starts_with("cargo ") {
            continue;
        }
        script.push_str(&format!(
            "{{ {}\n}} >'{dir}/{i}.out' 2>&1 </dev/null\necho $? >'{dir}/{i}.rc'\n",
            step.command,
            dir = out.path().display()
        ));
    }
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env_remove("PORTKEY_API_KEY")
        .env_remove("PORTKEY_ADMIN_API_URL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("bash runs");
    let pgid = child.id();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever the block left running (a background emulator), and everything on timeout.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let outputs: BTreeMap<usize, (Option<i32>, String)> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.command.starts_with("cargo "))
        .map(|(i, _)| {
            let rc = std::fs::read_to_string(out.path().join(format!("{i}.rc")))
                .ok()
                .and_then(|t| t.trim().parse().ok());
            let text =
                std::fs::read_to_string(out.path().join(format!("{i}.out"))).unwrap_or_default();
            (i, (rc, text))
        })
        .collect();
    let transcript = || {
        outputs
            .iter()
            .map(|(i, (rc, text))| format!("$ {}   [exit {rc:?}]\n{text}", steps[*i].command))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        status.is_some(),
        "{name}: did not finish within {limit:?}:\n{}",
        transcript()
    );
    for (i, (rc, text)) in &outputs {
        let step = &steps[*i];
        assert_eq!(
            *rc,
            Some(step.exit),
            "{name}: `{}` should exit {} (README.md says so):\n{}",
            step.command,
            step.exit,
            transcript()
        );
        if let Err(e) = check_output(step, text) {
            panic!("{name}: {e}");
        }
    }
}

/// The README's quickstart, exactly as written: `plan` and `sync` of the samples against the
/// built-in emulator (exit codes, the plan summary, the table of what is in force).
#[test]
fn the_readme_quickstart_runs_as_written() {
    run_block("quickstart", Duration::from_secs(120));
}

/// The README's standalone-emulator walkthrough: the emulator seeded with what the samples name,
/// `sync` against it as against Portkey, then a `plan` with nothing left to change.
#[test]
fn the_readme_standalone_emulator_walkthrough_runs_as_written() {
    run_block("standalone-emulator", Duration::from_secs(120));
}

/// The block runner itself: a wrong exit code or a missing line fails.
#[test]
fn the_block_checker_refuses_a_missing_line() {
    let step = Step {
        command: "x".into(),
        exit: 0,
        expected: vec![
            "Plan: 2 to create, …".into(),
            "…".into(),
            "Applied  4 change(s).".into(),
        ],
    };
    assert!(
        check_output(
            &step,
            "a\nPlan: 2 to create, 0 to update\nb\nApplied 4 change(s).\n"
        )
        .is_ok()
    );
    assert!(check_output(&step, "Applied 4 change(s).\nPlan: 2 to create, 0\n").is_err());
    assert!(check_output(&step, "Plan: 3 to create, 0\nApplied 4 change(s).\n").is_err());
}

// ---------------------------------------------------------------------------------------------
// Condition reasons.

/// The `### <Reason>` sections of docs/reasons.md, with their text.
fn reason_sections() -> BTreeMap<String, String> {
    let page = read("docs/reasons.md");
    let mut sections = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in page.lines() {
        if line.starts_with("## ") || line.starts_with("### ") {
            if let Some((name, text)) = current.take() {
                assert!(
                    sections.insert(name.clone(), text).is_none(),
                    "docs/reasons.md has two sections {name}"
                );
            }
            if let Some(name) = line.strip_prefix("### ") {
                current = Some((name.trim().to_owned(), String::new()));
            }
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    if let Some((name, text)) = current {
        sections.insert(name, text);
    }
    sections
}

/// Every reason the operator writes has its own section (an anchor) in docs/reasons.md saying
/// what it means, what the operator did and what to do; every section is a reason the code has;
/// and the README's reasons table links each one.
#[test]
fn every_condition_reason_has_a_section_with_a_remedy() {
    let sections = reason_sections();
    let readme = read("README.md");
    for reason in reasons::ALL {
        let text = sections
            .get(*reason)
            .unwrap_or_else(|| panic!("docs/reasons.md has no section `### {reason}`"));
        for part in [
            "**Condition**",
            "**Meaning**",
            "**What the operator did**",
            "**What to do**",
        ] {
            assert!(text.contains(part), "docs/reasons.md, {reason}: no {part}");
        }
        let link = format!("[`{reason}`](docs/reasons.md#{})", slug(reason));
        assert!(
            readme.contains(&link),
            "README.md's reasons table lacks {link}"
        );
    }
    for name in sections.keys() {
        assert!(
            reasons::ALL.contains(&name.as_str()),
            "docs/reasons.md has a section {name}, which is no reason of the code"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Admin API permissions.

/// Every Admin API operation name the client uses (`usage_limits.create`, …).
fn client_operations() -> BTreeSet<String> {
    let source = read("src/portkey/client.rs");
    let pattern =
        regex::Regex::new(r#""((?:usage_limits|rate_limits|workspaces|api_keys)\.[a-z_]+)""#)
            .unwrap();
    pattern
        .captures_iter(&source)
        .map(|c| c[1].to_owned())
        .collect()
}

/// docs/install.md lists every operation of the client with the scope `required_scope` (which
/// names the scope in a 403's condition message) gives it, and the README's permissions table
/// names every such scope.
#[test]
fn the_documented_permissions_are_the_scopes_a_403_names() {
    let operations = client_operations();
    assert!(operations.len() >= 20, "{operations:?}");
    let install = read("docs/install.md");
    let row =
        regex::Regex::new(r"(?m)^\| `([a-z_]+\.[a-z_]+)` \| [^|]+ \| `([a-z_.]+)` \|$").unwrap();
    let documented: BTreeMap<String, String> = row
        .captures_iter(&install)
        .map(|c| (c[1].to_owned(), c[2].to_owned()))
        .collect();
    let readme = read("README.md");
    for op in &operations {
        let scope = portkey_budget_operator::portkey::error::required_scope(op);
        assert_eq!(
            documented.get(op).map(String::as_str),
            Some(scope),
            "docs/install.md: the operation {op} needs {scope} (portkey::required_scope)"
        );
        assert!(
            readme.contains(&format!("`{scope}`")),
            "README.md's permissions table does not name {scope}"
        );
    }
    for op in documented.keys() {
        assert!(
            operations.contains(op),
            "docs/install.md documents {op}, which the client does not make"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The four kinds, everywhere.

struct Kind {
    kind: String,
    plural: String,
    short: Vec<String>,
    namespaced: bool,
    name: String,
    version: String,
}

fn kinds() -> Vec<Kind> {
    let kinds: Vec<Kind> = portkey_budget_operator::api::crds()
        .into_iter()
        .map(|crd| Kind {
            kind: crd.spec.names.kind.clone(),
            plural: crd.spec.names.plural.clone(),
            short: crd.spec.names.short_names.clone().unwrap_or_default(),
            namespaced: crd.spec.scope == "Namespaced",
            name: crd.metadata.name.clone().unwrap(),
            version: crd.spec.versions[0].name.clone(),
        })
        .collect();
    assert_eq!(kinds.len(), 4, "the operator has four kinds");
    kinds
}

fn kind_names() -> BTreeSet<String> {
    kinds().into_iter().map(|k| k.kind).collect()
}

/// The kinds a text names: CamelCase words ending in Policy or Budget (which a Kubernetes kind
/// of the chart, such as PodDisruptionBudget or NetworkPolicy, is not, in the texts checked).
fn kinds_named(text: &str) -> BTreeSet<String> {
    regex::Regex::new(r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)*(?:Policy|Budget)\b")
        .unwrap()
        .find_iter(text)
        .map(|m| m.as_str().to_owned())
        .collect()
}

#[test]
fn the_chart_metadata_rbac_and_notes_name_the_four_kinds() {
    let kinds = kinds();
    let chart: Value =
        serde_saphyr::from_str(&read("charts/portkey-budget-operator/Chart.yaml")).unwrap();
    let description = chart["description"].as_str().unwrap();
    assert_eq!(
        kinds_named(description),
        kind_names(),
        "Chart.yaml description"
    );
    let crds: Value = serde_saphyr::from_str(
        chart["annotations"]["artifacthub.io/crds"]
            .as_str()
            .expect("Chart.yaml annotation artifacthub.io/crds"),
    )
    .unwrap();
    let listed: BTreeSet<(String, String, String)> = crds
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_owned(),
                c["name"].as_str().unwrap().to_owned(),
                c["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> = kinds
        .iter()
        .map(|k| (k.kind.clone(), k.name.clone(), k.version.clone()))
        .collect();
    assert_eq!(listed, expected, "Chart.yaml artifacthub.io/crds");
    for keyword in chart["keywords"].as_array().unwrap() {
        let keyword = keyword.as_str().unwrap();
        assert!(kinds_named(keyword).is_subset(&kind_names()), "{keyword}");
    }

    // RBAC: the kinds, their status and their finalizers, under the operator's API group.
    let rbac = read("charts/portkey-budget-operator/templates/rbac.yaml");
    let lines: Vec<&str> = rbac.lines().collect();
    let mut granted: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for pair in lines.windows(2) {
        if !pair[0].contains("budgets.portkey-operator.io") {
            continue;
        }
        let list = pair[1]
            .trim()
            .strip_prefix("resources: [")
            .and_then(|l| l.strip_suffix(']'))
            .unwrap_or_else(|| panic!("rbac.yaml: resources after {:?}", pair[0]));
        for resource in list.split(',') {
            let resource = resource.trim().trim_matches('"');
            let (plural, sub) = resource.split_once('/').unwrap_or((resource, ""));
            granted.entry(sub).or_default().insert(plural.to_owned());
        }
    }
    let plurals: BTreeSet<String> = kinds.iter().map(|k| k.plural.clone()).collect();
    for sub in ["", "status", "finalizers"] {
        assert_eq!(
            granted.get(sub),
            Some(&plurals),
            "rbac.yaml: the operator's ClusterRole on the kinds' {sub:?}"
        );
    }

    // NOTES: "Every kind: UsageLimitPolicy (ulp), …".
    let notes = read("charts/portkey-budget-operator/templates/NOTES.txt");
    let line = notes
        .lines()
        .find(|l| l.starts_with("Every kind:"))
        .expect("NOTES.txt lists every kind");
    let pairs: BTreeSet<(String, String)> = regex::Regex::new(r"(\w+) \((\w+)\)")
        .unwrap()
        .captures_iter(line)
        .map(|c| (c[1].to_owned(), c[2].to_owned()))
        .collect();
    let expected: BTreeSet<(String, String)> = kinds
        .iter()
        .map(|k| (k.kind.clone(), k.short[0].clone()))
        .collect();
    assert_eq!(pairs, expected, "NOTES.txt");
}

#[test]
fn the_readme_and_the_uninstall_commands_name_the_four_kinds() {
    let kinds = kinds();
    let readme = read("README.md");
    let row = regex::Regex::new(r"(?m)^\| `(\w+)` \| (namespaced|cluster) \| `(\w+)` \|").unwrap();
    let table: BTreeSet<(String, bool, String)> = row
        .captures_iter(&readme)
        .map(|c| (c[1].to_owned(), &c[2] == "namespaced", c[3].to_owned()))
        .collect();
    let expected: BTreeSet<(String, bool, String)> = kinds
        .iter()
        .map(|k| (k.kind.clone(), k.namespaced, k.short[0].clone()))
        .collect();
    assert_eq!(table, expected, "README.md's table of the resources");
    for kind in &kinds {
        assert!(
            readme.contains(&format!("kind: {}", kind.kind)),
            "README.md has no example of {}",
            kind.kind
        );
    }

    let shorts: BTreeSet<String> = kinds.iter().map(|k| k.short[0].clone()).collect();
    let delete = regex::Regex::new(r"kubectl delete ([a-z,]+) -A --all").unwrap();
    for page in ["README.md", "docs/install.md"] {
        let text = read(page);
        let commands: Vec<_> = delete.captures_iter(&text).collect();
        assert!(!commands.is_empty(), "{page} has no uninstall command");
        for c in commands {
            let named: BTreeSet<String> = c[1].split(',').map(str::to_owned).collect();
            assert_eq!(named, shorts, "{page}: {}", &c[0]);
        }
    }
}

fn help(args: &[&str]) -> String {
    let out = Command::new(BINARY).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `run --help` and the top-level help's line for `run` name the four kinds.
#[test]
fn the_help_names_the_four_kinds() {
    let run = help(&["run", "--help"]);
    let about = run.lines().next().unwrap();
    assert_eq!(kinds_named(about), kind_names(), "`run --help`: {about}");
    let top = help(&["--help"]);
    let line = top
        .lines()
        .find(|l| l.trim_start().starts_with("run "))
        .expect("the top-level help lists `run`");
    assert_eq!(kinds_named(line), kind_names(), "`--help`: {line}");
}

// ---------------------------------------------------------------------------------------------
// Links and values.

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

fn markdown_pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    pages
}

/// Every relative link of the README and docs/ reaches a file, and an anchor a heading of it.
#[test]
fn every_relative_link_resolves() {
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut broken = Vec::new();
    for page in markdown_pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for c in link.captures_iter(&text) {
            let target = &c[1];
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            let shown = format!("{}: {target}", page.strip_prefix(root()).unwrap().display());
            if !path.exists() {
                broken.push(format!("{shown} (no such file)"));
                continue;
            }
            if !anchor.is_empty() {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if !anchors(&text).contains(anchor) {
                    broken.push(format!("{shown} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every `--set key=…` of the install instructions names a value of values.yaml.
#[test]
fn the_install_instructions_set_only_values_the_chart_has() {
    let values: Value =
        serde_saphyr::from_str(&read("charts/portkey-budget-operator/values.yaml")).unwrap();
    let set = regex::Regex::new(r"--set ([A-Za-z.]+)=").unwrap();
    let mut seen = 0;
    for page in ["README.md", "docs/install.md"] {
        for c in set.captures_iter(&read(page)) {
            seen += 1;
            let mut v = &values;
            for part in c[1].split('.') {
                v = v
                    .get(part)
                    .unwrap_or_else(|| panic!("{page}: --set {} is no chart value", &c[1]));
            }
        }
    }
    assert!(seen >= 4, "{seen} --set found");
}

/// The install instructions apply samples that exist and wait for the resources those samples
/// declare (kind by short name, name, namespace).
#[test]
fn the_install_instructions_wait_for_the_samples_they_apply() {
    let kinds = kinds();
    let mut samples = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("config/samples")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let doc: Value = serde_saphyr::from_str(&text).unwrap();
        let kind = kinds
            .iter()
            .find(|k| doc["kind"] == k.kind.as_str())
            .unwrap_or_else(|| panic!("a sample of an unknown kind: {}", doc["kind"]));
        samples.insert((
            kind.short[0].clone(),
            doc["metadata"]["name"].as_str().unwrap().to_owned(),
            doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    let apply = regex::Regex::new(r"kubectl apply -f (config/samples/[\w.-]+)").unwrap();
    let wait =
        regex::Regex::new(r"kubectl wait --for=condition=Ready (\w+)/([\w-]+)(?: -n ([\w-]+))?")
            .unwrap();
    let mut waits = 0;
    for page in [
        "README.md",
        "docs/install.md",
        "charts/portkey-budget-operator/templates/NOTES.txt",
    ] {
        let text = read(page);
        for c in apply.captures_iter(&text) {
            assert!(
                root().join(&c[1]).exists(),
                "{page}: {} does not exist",
                &c[1]
            );
        }
        for c in wait.captures_iter(&text) {
            waits += 1;
            let waited = (
                c[1].to_owned(),
                c[2].to_owned(),
                c.get(3).map_or("", |m| m.as_str()).to_owned(),
            );
            assert!(
                samples.contains(&waited),
                "{page}: `{}` waits for no sample of config/samples ({samples:?})",
                &c[0]
            );
        }
    }
    assert!(waits >= 3, "{waits} waits found");
}
