//! Documentation and manifests that must not drift from the code: README's flag table, the
//! deploy/ manifests (they parse, and the Deployment's arguments are accepted by our parser).

use healthmon::flags;
use serde_json::Value;

fn repo_file(rel: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The README table row for one flag, exactly as README must spell it.
fn row(f: &flags::FlagInfo) -> String {
    let default = if f.default.is_empty() {
        "\"\"".to_string()
    } else {
        format!("`{}`", f.default)
    };
    format!(
        "| `--{}` | {} | {} | {} |",
        f.name,
        f.kind,
        default,
        f.help.replace('|', "\\|").replace('\n', " ")
    )
}

#[test]
fn readme_flag_table_matches_the_parser() {
    let readme = repo_file("README.md");
    let expected: Vec<String> = flags::flag_table().iter().map(row).collect();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|r| !readme.contains(r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md flag table is out of date; these rows are expected:\n{}",
        expected.join("\n")
    );
    let documented = readme.lines().filter(|l| l.starts_with("| `--")).count();
    assert_eq!(
        documented,
        expected.len(),
        "README documents flags the parser does not have"
    );
}

pub fn documents(rel: &str) -> Vec<Value> {
    repo_file(rel)
        .split("\n---")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|d| healthmon::kube::config::parse_yaml(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

#[test]
fn manifests_parse_and_deployment_args_are_accepted() {
    let rbac = documents("deploy/kubernetes/rbac.yaml");
    let kinds: Vec<&str> = rbac
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding"
        ]
    );
    let deploy = documents("deploy/kubernetes/deployment.yaml");
    assert_eq!(deploy.len(), 1);
    assert_eq!(deploy[0]["spec"]["replicas"], 3);
    let container = &deploy[0]["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("$(ADDRESS)", "/var/lib/csi/sockets/pluginproxy/mock.socket")
        })
        .collect();
    match flags::parse(&args) {
        Ok(flags::Parsed::Run(cfg)) => {
            assert!(cfg.leader_election.is_some());
            assert_eq!(cfg.http.as_ref().map(|h| h.address.as_str()), Some(":8080"));
            assert_eq!(cfg.log.verbosity, 5);
        }
        other => panic!("deployment args {args:?} rejected: {other:?}"),
    }
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        "/healthz/leader-election"
    );
    let kustomization = documents("deploy/kubernetes/kustomization.yaml");
    assert_eq!(
        kustomization[0]["resources"].as_array().map(Vec::len),
        Some(2)
    );
}

#[test]
fn rbac_covers_every_verb_the_sidecar_uses() {
    // What the code calls (upstream §11.1): reads of PVs, PVCs, Nodes, Pods, Events; writes of
    // Events; the Lease cycle.
    let rbac = documents("deploy/kubernetes/rbac.yaml");
    let allowed = |resource: &str, verb: &str| {
        rbac.iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
            .any(|d| {
                d["rules"].as_array().into_iter().flatten().any(|r| {
                    r["resources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|x| x == resource)
                        && r["verbs"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|x| x == verb)
                })
            })
    };
    for (res, verbs) in [
        ("persistentvolumes", &["get", "list", "watch"][..]),
        ("persistentvolumeclaims", &["get", "list", "watch"]),
        ("nodes", &["list", "watch"]),
        ("pods", &["list", "watch"]),
        ("events", &["list", "create", "patch"]),
        ("leases", &["get", "create", "update"]),
    ] {
        for v in verbs {
            assert!(allowed(res, v), "RBAC lacks {v} on {res}");
        }
    }
}
