//! The real API server is the judge: every CRD (from `crds/` and from the chart) is accepted
//! and `Established`, and admission is checked differentially: each manifest of
//! `tests/bad-input` (refused) , `tests/good-input` and `config/samples` (accepted) is sent to
//! the API server (`kubectl create --dry-run=server`), and the project's own client-side verdict
//! (the `plan`/`sync` loader: schema, CEL rules via `validate_cel`, metadata checks) must be the
//! same, or the test fails printing both.

use std::path::{Path, PathBuf};

use portkey_budget_operator::gitops;

use crate::support::control_plane::{ControlPlane, require_assets};
use crate::support::e2e::bounded;
use crate::support::fixtures::{repo, yaml_files};

/// Cases where the project is deliberately stricter than kubectl, with the reason. The test
/// asserts exactly this difference (server accepts, client refuses), so it notices if either
/// side changes.
const STRICTER_THAN_KUBECTL: &[(&str, &str)] = &[(
    "48-yaml-duplicate-key.yaml",
    "kubectl's YAML decoder keeps the last of two duplicate keys and the API server never sees \
     the first; plan/sync refuse the file because one of the two values is silently lost",
)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crd_is_established_on_the_real_api_server() {
    let Some(assets) = require_assets("every_crd_is_established_on_the_real_api_server") else {
        return;
    };
    bounded("every_crd_is_established", async {
        let cp = ControlPlane::start(assets);
        // The chart's templates, rendered by Helm itself (crds.install), then `crds/` on top.
        crate::helm::install_for_crds(&cp.kubeconfig);
        cp.wait_crds_established();
        cp.install_crds_from(&repo("crds"));
        let names = cp.kubectl(&["get", "crd", "-o", "jsonpath={.items[*].metadata.name}"]);
        let mut names: Vec<&str> = names.split_whitespace().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "apikeybudgets.budgets.portkey-operator.io",
                "ratelimitpolicies.budgets.portkey-operator.io",
                "usagelimitpolicies.budgets.portkey-operator.io",
                "workspacebudgets.budgets.portkey-operator.io",
            ]
        );
        for name in names {
            let established = cp.kubectl(&[
                "get",
                "crd",
                name,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#,
            ]);
            assert_eq!(established, "True", "{name}");
            // No structural-schema or CEL cost complaints either.
            let problems = cp.kubectl(&[
                "get",
                "crd",
                name,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="NonStructuralSchema")].message}"#,
            ]);
            assert!(problems.is_empty(), "{name}: {problems}");
        }
    })
    .await;
}

struct Verdict {
    refused: bool,
    message: String,
}

fn server_verdict(cp: &ControlPlane, file: &Path) -> Verdict {
    let out = cp.kubectl_raw(&["create", "--dry-run=server", "-f", file.to_str().unwrap()]);
    Verdict {
        refused: !out.status.success(),
        message: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .trim()
        .to_owned(),
    }
}

fn client_verdict(file: &Path) -> Verdict {
    let loaded = gitops::load(&[file.to_path_buf()]);
    assert!(
        !loaded.errors.is_empty() || loaded.resources.len() == 1,
        "{}: the loader neither refused nor loaded it",
        file.display()
    );
    Verdict {
        refused: !loaded.errors.is_empty(),
        message: loaded
            .errors
            .iter()
            .map(|e| match &e.field {
                Some(f) => format!("{f}: {}", e.message),
                None => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_is_the_same_on_the_real_api_server_and_in_plan() {
    let Some(assets) = require_assets("admission_is_the_same_on_the_real_api_server_and_in_plan")
    else {
        return;
    };
    bounded("admission_differential", async {
        let cp = ControlPlane::start(assets);
        cp.install_crds();
        cp.kubectl(&["create", "namespace", "team-a"]);

        let bad = yaml_files("tests/bad-input");
        let good: Vec<PathBuf> = yaml_files("tests/good-input")
            .into_iter()
            .chain(yaml_files("config/samples"))
            .collect();
        assert!(bad.len() >= 60, "the bad-input catalog holds {}", bad.len());
        assert!(
            good.len() >= 13,
            "the good-input catalog holds {}",
            good.len()
        );

        let mut failures = Vec::new();
        for (file, should_refuse) in bad
            .iter()
            .map(|f| (f, true))
            .chain(good.iter().map(|f| (f, false)))
        {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let server = server_verdict(&cp, file);
            let client = client_verdict(file);
            let both = format!(
                "{name}:\n  server: {} — {}\n  plan:   {} — {}",
                if server.refused {
                    "refused"
                } else {
                    "accepted"
                },
                server.message,
                if client.refused {
                    "refused"
                } else {
                    "accepted"
                },
                client.message
            );
            if let Some((_, why)) = STRICTER_THAN_KUBECTL.iter().find(|(n, _)| *n == name) {
                if server.refused || !client.refused {
                    failures.push(format!("expected only plan to refuse ({why}):\n{both}"));
                }
                continue;
            }
            if server.refused != client.refused {
                failures.push(format!("verdicts differ:\n{both}"));
                continue;
            }
            if server.refused != should_refuse {
                failures.push(format!(
                    "should be {}:\n{both}",
                    if should_refuse { "refused" } else { "accepted" }
                ));
                continue;
            }
            if should_refuse {
                // Both must name the field: the `# expect:` token names it; for messages of
                // the form `field: text`, the API server must name at least the field.
                let text = std::fs::read_to_string(file).unwrap();
                let expect = text
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("# expect: "))
                    .unwrap_or_else(|| panic!("{name}: first line must be `# expect: ...`"));
                let field = expect.split(": ").next().unwrap();
                if !server.message.contains(field) {
                    failures.push(format!("the API server does not name {field:?}:\n{both}"));
                }
                if !client.message.contains(expect) {
                    failures.push(format!("plan does not name {expect:?}:\n{both}"));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n\n{}",
            failures.len(),
            bad.len() + good.len(),
            failures.join("\n\n")
        );
    })
    .await;
}
