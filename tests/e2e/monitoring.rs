//! The operators' monitoring kit (issues #15 and #22) against the real tools: a real Prometheus
//! (Debian's `prometheus` package, installed by `.ci/setup`) scrapes the real binary, evaluates
//! the shipped rules of `deploy/monitoring/` and answers every query of the shipped Grafana
//! dashboard; `promtool check metrics` lints a real scrape; and the kit's files are checked
//! against each other (the PrometheusRule embeds rules.yaml and the dashboard ConfigMap the
//! dashboard, every alert has promtool unit tests and a README runbook, the unit tests' input
//! series are shaped like a real scrape).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::kit::csidriver::{temp_dir, HealthEntry, LIST_VOLUME_HEALTH};
use crate::observability::{scrape_until, Scrape};
use crate::support::{http_addr, http_get, poll, Env, Output, DRIVER, NS};

const WAIT: Duration = Duration::from_secs(30);
const FAST: &str = "--list-volumes-interval=300ms";
const HTTP: &str = "--http-endpoint=127.0.0.1:0";
/// The job the shipped rules select on (podmonitor.yaml sets it; so does this test's config).
const JOB: &str = "csi-external-health-monitor-controller";
/// Target labels as a PodMonitor adds them; with honor_labels the volume series keep their own
/// `namespace` (the PVC's).
const POD_NS: &str = "kube-system";
const POD: &str = "csi-external-health-monitor-controller-0";
/// One replica with leader election, so the leader gauge (and the dashboard's panels on it) has
/// data.
const LEADER_ELECTION: [&str; 2] = ["--leader-election", "--leader-election-namespace=test"];

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn repo_file(rel: &str) -> String {
    let path = repo_path(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A tool of Debian's `prometheus` package, found on PATH (or at `$PROMETHEUS` / `$PROMTOOL`).
/// Missing is a failure, not a skip: CI installs it through `.ci/setup`.
fn tool(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found on PATH (nor ${env_var}): install Debian's prometheus package \
                 (`apt-get install prometheus`; .ci/setup does it)"
            )
        })
}

/// Percent-encoding of a query parameter value (everything but RFC 3986's unreserved bytes).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus scraping one sidecar every second with the shipped rules loaded; killed
/// (and its data removed) on drop.
struct Prometheus {
    child: Child,
    addr: String,
    dir: PathBuf,
    log: Output,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let bin = tool("prometheus", "PROMETHEUS");
        let dir = temp_dir("prometheus");
        let rules = repo_path("deploy/monitoring/rules.yaml");
        // The target labels a PodMonitor would add; honor_labels as podmonitor.yaml has it.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: {JOB}\n    honor_labels: true\n    static_configs:\n\
             \x20     - targets: ['{target}']\n        labels:\n          namespace: {POD_NS}\n\
             \x20         pod: {POD}\n",
            rules = rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // Prometheus needs a port of its own: take a free one and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(&bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let log = Output::collect(child.stderr.take().expect("stderr piped"));
        let mut prom = Prometheus {
            child,
            addr,
            dir,
            log,
        };
        let ready = poll(WAIT, || {
            if let Ok(Some(status)) = prom.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prom.log.text());
            }
            TcpStream::connect(&prom.addr)
                .ok()
                .and_then(|_| (http_get(&prom.addr, "/-/ready").0 == 200).then_some(()))
        });
        assert!(
            ready.is_some(),
            "prometheus not ready:\n{}",
            prom.log.text()
        );
        prom
    }

    /// `data` of an API answer, which must be a success.
    fn api(&mut self, path: &str) -> Value {
        let (code, body) = http_get(&self.addr, path);
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {code} {body}"));
        assert_eq!(v["status"], "success", "{path}: {body}");
        v["data"].clone()
    }

    /// An instant query: the result vector as (labels, value).
    fn query(&mut self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(q)));
        assert_eq!(data["resultType"], "vector", "{q}: {data}");
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = serde_json::from_value(r["metric"].clone()).unwrap();
                let value = r["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// Queries until `pred` holds for the result, which it returns.
    fn query_until(
        &mut self,
        q: &str,
        what: &str,
        pred: impl Fn(&[(BTreeMap<String, String>, f64)]) -> bool,
    ) -> Vec<(BTreeMap<String, String>, f64)> {
        let r = poll(WAIT, || Some(self.query(q)).filter(|r| pred(r)));
        r.unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what}: {q} = {:?}\nprometheus log:\n{}",
                self.query(q),
                self.log.text()
            )
        })
    }

    /// The one target: Prometheus' own view of the last scrape.
    fn target(&mut self) -> Value {
        let data = self.api("/api/v1/targets");
        let targets = data["activeTargets"].as_array().unwrap();
        assert_eq!(targets.len(), 1, "{data}");
        targets[0].clone()
    }

    /// Every rule of the shipped file loaded, evaluated and healthy.
    fn assert_rules_healthy(&mut self) {
        let alerts: BTreeSet<String> = rule_names().into_iter().collect();
        let ok = poll(WAIT, || {
            let data = self.api("/api/v1/rules");
            let rules: Vec<Value> = data["groups"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|g| g["rules"].as_array().unwrap().clone())
                .collect();
            let names: BTreeSet<String> = rules
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_string())
                .collect();
            let evaluated = rules.iter().all(|r| {
                !r["lastEvaluation"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("0001")
            });
            (names == alerts && evaluated).then_some(rules)
        })
        .unwrap_or_else(|| panic!("rules not all loaded and evaluated:\n{}", self.log.text()));
        for r in ok {
            assert_eq!(r["health"], "ok", "{r}");
            assert!(r["lastError"].as_str().unwrap_or("").is_empty(), "{r}");
        }
    }

    /// Every scrape so far was accepted by Prometheus' parser, and the last has no error.
    fn assert_every_scrape_accepted(&mut self) {
        let t = self.target();
        assert_eq!(t["health"], "up", "{t}");
        assert_eq!(t["lastError"], "", "{t}");
        let up = self.query(&format!("min_over_time(up{{job=\"{JOB}\"}}[1h])"));
        assert_eq!(up.len(), 1, "{up:?}");
        assert_eq!(up[0].1, 1.0, "some scrape failed: {t}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `promtool check metrics` on one real scrape: Prometheus' linter finds nothing.
fn promtool_check_metrics(exposition: &str) {
    let mut child = Command::new(tool("promtool", "PROMTOOL"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\non:\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn one<'a>(r: &'a [(BTreeMap<String, String>, f64)], what: &str) -> &'a BTreeMap<String, String> {
    assert_eq!(r.len(), 1, "{what}: {r:?}");
    &r[0].0
}

fn alert(name: &str, state: &str, claim: Option<&str>) -> String {
    let claim = claim
        .map(|c| format!(",persistentvolumeclaim=\"{c}\""))
        .unwrap_or_default();
    format!("ALERTS{{alertname=\"{name}\",alertstate=\"{state}\"{claim}}}")
}

#[test]
fn prometheus_follows_a_volume_abnormal_then_missing_then_healthy() {
    let env = Env::new();
    env.volume("v1");
    env.volume("v2");
    env.driver.set_volume("v1", true, "disk on fire");
    env.driver.set_volume("v2", false, "");
    let mut sidecar = env.spawn(&[HTTP, FAST, LEADER_ELECTION[0], LEADER_ELECTION[1]]);
    let addr = http_addr(&sidecar.stderr);
    let mut prom = Prometheus::start(&addr);
    let status = |pv: &str| format!("csi_volume_health_status{{persistentvolume=\"{pv}\"}}");

    // Abnormal: one series, the PVC's own namespace (honor_labels), the target's pod label.
    let r = prom.query_until(&status("pv-v1"), "pv-v1 abnormal", |r| {
        r.len() == 1 && r[0].0["status"] == "abnormal"
    });
    let labels = one(&r, "pv-v1");
    for (k, v) in [
        ("driver_name", DRIVER),
        ("namespace", NS),
        ("persistentvolumeclaim", "pvc-v1"),
        ("job", JOB),
        ("pod", POD),
    ] {
        assert_eq!(
            labels.get(k).map(String::as_str),
            Some(v),
            "{k}: {labels:?}"
        );
    }
    prom.query_until(&status("pv-v2"), "pv-v2 normal", |r| {
        r.len() == 1 && r[0].0["status"] == "normal"
    });
    // The shipped alert is pending for that PVC and only that one.
    let pending = alert("CSIVolumeUnhealthy", "pending", None);
    let r = prom.query_until(&pending, "CSIVolumeUnhealthy pending", |r| !r.is_empty());
    let a = one(&r, "pending alerts");
    assert_eq!(a["persistentvolumeclaim"], "pvc-v1");
    assert_eq!(a["namespace"], NS);
    assert_eq!(a["persistentvolume"], "pv-v1");
    let for_state =
        "ALERTS_FOR_STATE{alertname=\"CSIVolumeUnhealthy\",persistentvolumeclaim=\"pvc-v1\"}";
    let active_at = prom.query_until(for_state, "the alert's for-state", |r| r.len() == 1)[0].1;
    // Every panel of the dashboard that has something to show while a volume is abnormal does.
    check_dashboard(&mut prom, Scenario::V112);

    // Missing: after two sweeps without it, not_found replaces abnormal; the alert keeps its
    // start time (its `for` does not restart).
    env.driver.remove_volume("v1");
    prom.query_until(&status("pv-v1"), "pv-v1 not_found", |r| {
        r.len() == 1 && r[0].0["status"] == "not_found"
    });
    let r = prom.query(&alert("CSIVolumeUnhealthy", "pending", Some("pvc-v1")));
    assert_eq!(r.len(), 1, "still pending while missing: {r:?}");
    assert_eq!(
        prom.query(for_state)[0].1,
        active_at,
        "the 10 minutes restarted"
    );

    // Healthy: one normal series again, and the alert is gone.
    env.driver.set_volume("v1", false, "");
    prom.query_until(&status("pv-v1"), "pv-v1 normal", |r| {
        r.len() == 1 && r[0].0["status"] == "normal"
    });
    prom.query_until(&pending, "CSIVolumeUnhealthy resolved", |r| r.is_empty());
    // ... and the dashboard's abnormal volumes are gone with it.
    for q in dashboard_queries()
        .iter()
        .filter(|q| FOLLOW_ABNORMAL.contains(&(q.panel.as_str(), q.ref_id.as_str())))
    {
        prom.query_until(&instant_form(&q.expr), &format!("{q} empty"), |r| {
            r.is_empty()
        });
    }

    // Probe counters count sweeps; the last sweep is recent; nothing stalls or fails.
    let sweeps = format!(
        "csi_volume_health_probe_total{{driver_name=\"{DRIVER}\",method=\"ListVolumes\",result=\"ok\"}}"
    );
    let first = prom.query_until(&sweeps, "sweep counter", |r| r.len() == 1)[0].1;
    prom.query_until(&sweeps, "more sweeps", |r| r.len() == 1 && r[0].1 > first);
    let age = prom.query("time() - csi_volume_health_last_sweep_timestamp_seconds");
    assert!(age.len() == 1 && age[0].1 < 10.0, "{age:?}");
    assert_eq!(one(&age, "last sweep")["driver_name"], DRIVER);
    let start = prom.query("process_start_time_seconds");
    assert_eq!(
        one(&start, "start time")["namespace"],
        POD_NS,
        "the pod's namespace"
    );
    prom.assert_rules_healthy();
    let r = prom.query("ALERTS");
    assert!(r.is_empty(), "no alert with a healthy driver: {r:?}");

    // A deleted PV takes its series along.
    assert!(env.api.delete("persistentvolumes", None, "pv-v1"));
    prom.query_until(&status("pv-v1"), "pv-v1's series gone", |r| r.is_empty());
    assert_eq!(prom.query(&status("pv-v2")).len(), 1);

    prom.assert_every_scrape_accepted();
    promtool_check_metrics(&http_get(&addr, "/metrics").1);

    // A replica that is gone is `up == 0`: CSIHealthMonitorDown goes pending.
    sidecar.terminate();
    assert_eq!(sidecar.wait_exit(WAIT).code(), Some(0));
    prom.query_until(
        &alert("CSIHealthMonitorDown", "pending", None),
        "CSIHealthMonitorDown pending",
        |r| r.len() == 1,
    );
}

#[test]
fn prometheus_reads_the_v113_metrics_and_fires_the_dropped_writes_alert() {
    // A cluster without the CSIVolumeHealth field: writes are dropped, retried every 3 s.
    let env = Env::health(false);
    env.volume("v1");
    env.driver
        .set_health("v1", vec![HealthEntry::inaccessible("DiskGone", "gone")]);
    env.driver
        .fail_next(LIST_VOLUME_HEALTH, grpcio::RpcStatusCode::UNAVAILABLE, 1);
    let sidecar = env.spawn(&[HTTP, FAST, LEADER_ELECTION[0], LEADER_ELECTION[1]]);
    let addr = http_addr(&sidecar.stderr);
    let mut prom = Prometheus::start(&addr);

    let r = prom.query_until(
        "csi_controller_volume_health_status",
        "the condition series",
        |r| r.len() == 1,
    );
    let c = one(&r, "conditions");
    assert_eq!(c["status"], "Inaccessible");
    assert_eq!(c["reason"], "DiskGone");
    assert_eq!(c["namespace"], NS);
    prom.query_until(
        &alert("CSIVolumeHealthStatusWritesDropped", "firing", None),
        "CSIVolumeHealthStatusWritesDropped firing",
        |r| r.len() == 1,
    );
    prom.assert_rules_healthy();
    check_dashboard(&mut prom, Scenario::V113);
    prom.assert_every_scrape_accepted();

    // The same scrape feeds promtool's linter and the rule tests' shape check.
    let s = scrape_until(&addr, "a failed listing and a dropped write", |s| {
        !s.find(
            "csi_volume_health_probe_total",
            &[("method", LIST_VOLUME_HEALTH), ("result", "error")],
        )
        .is_empty()
            && s.series("csi_volume_health_status_writes_dropped_total")
                .first()
                .is_some_and(|x| x.value >= 1.0)
    });
    let (_, text) = http_get(&addr, "/metrics");
    promtool_check_metrics(&text);
    rule_test_inputs_are_shaped_like(&s);
}

/// The alerts of rules.yaml, in order.
fn rule_names() -> Vec<String> {
    repo_file("deploy/monitoring/rules.yaml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_string)
        .collect()
}

/// Labels Prometheus or a PodMonitor adds to what the binary exposes.
const TARGET_LABELS: [&str; 6] = [
    "job",
    "instance",
    "namespace",
    "pod",
    "container",
    "endpoint",
];

/// Every input series of the promtool tests is one the binary exposes, with exactly its label
/// names plus target labels.
fn rule_test_inputs_are_shaped_like(s: &Scrape) {
    // Series Prometheus makes itself.
    let not_exposed = ["up"];
    let tests = repo_file("deploy/monitoring/tests/rules_test.yaml");
    let mut checked = BTreeSet::new();
    for line in tests.lines() {
        let Some(series) = line.trim().strip_prefix("- series: ") else {
            continue;
        };
        let series = series.trim_matches('\'');
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let input: BTreeSet<&str> = labels
            .trim_end_matches('}')
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or_else(|| panic!("{line}")).0)
            .collect();
        let real: Vec<BTreeSet<&str>> = s
            .series(name)
            .iter()
            .map(|x| x.labels.keys().map(String::as_str).collect())
            .collect();
        if real.is_empty() {
            assert!(
                not_exposed.contains(&name),
                "rules_test.yaml feeds {name}, which the binary does not expose"
            );
            continue;
        }
        let fits = real.iter().any(|own| {
            own.is_subset(&input)
                && input
                    .iter()
                    .all(|l| own.contains(l) || TARGET_LABELS.contains(l))
        });
        assert!(
            fits,
            "rules_test.yaml: {name} with labels {input:?}; the binary exposes {real:?} (plus target labels {TARGET_LABELS:?})"
        );
        checked.insert(name);
    }
    assert!(checked.len() >= 6, "{checked:?}");
}

/// `text` as a YAML block scalar's body: each line behind `prefix`, empty lines left empty.
fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("{prefix}{l}\n")
            }
        })
        .collect()
}

#[test]
fn prometheusrule_embeds_the_rules_file_verbatim() {
    let rules = repo_file("deploy/monitoring/rules.yaml");
    let groups = &rules[rules.find("\ngroups:").expect("rules.yaml has groups:") + 1..];
    let indented = indent(groups, "  ");
    let rel = "deploy/monitoring/prometheusrule.yaml";
    let current = repo_file(rel);
    let head = &current[..current.find("\nspec:\n").expect("PrometheusRule has spec:") + 7];
    let want = format!("{head}{indented}");
    let current = bless(rel, current, &want);
    assert!(
        current == want,
        "{rel} is not rules.yaml's groups: block under spec:; regenerate it with \
         HM_BLESS=1 cargo test --release --locked --test e2e monitoring::prometheusrule"
    );
    // And both read as the same rules.
    let parse = |rel: &str| crate::docs::documents(rel).remove(0);
    let object = parse(rel);
    assert_eq!(object["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(object["kind"], "PrometheusRule");
    assert_eq!(
        object["spec"]["groups"],
        parse("deploy/monitoring/rules.yaml")["groups"]
    );
}

#[test]
fn every_alert_has_unit_tests_and_a_runbook() {
    let names = rule_names();
    assert!(names.len() >= 8, "{names:?}");
    let tests = repo_file("deploy/monitoring/tests/rules_test.yaml");
    let readme = repo_file("README.md");
    for name in &names {
        // A test that expects it to fire (an exp_alerts list follows) and one that expects quiet.
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|c| c.contains(&format!("alertname: {name}\n")))
            .collect();
        assert!(
            cases
                .iter()
                .any(|c| c.contains("exp_labels:") || c.contains("exp_alerts: *")),
            "no promtool test makes {name} fire"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "no promtool test keeps {name} quiet"
        );
        assert!(
            readme.contains(&format!("#### {name}\n")),
            "README.md has no runbook section #### {name}"
        );
        assert!(
            repo_file("deploy/monitoring/rules.yaml")
                .contains(&format!("runbook: README.md#{}\n", name.to_lowercase())),
            "{name}'s runbook annotation does not point at README.md#{}",
            name.to_lowercase()
        );
    }
    let pm = crate::docs::documents("deploy/monitoring/podmonitor.yaml").remove(0);
    assert_eq!(pm["kind"], "PodMonitor");
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["honorLabels"], true);
    assert_eq!(ep["relabelings"][0]["replacement"], JOB);
    // It selects the pods of the shipped Deployment, on the port of --http-endpoint.
    let deploy = crate::docs::documents("deploy/kubernetes/deployment.yaml").remove(0);
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"],
        deploy["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(
        ep["port"],
        deploy["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
    );
}

/// A generated file of the kit (`rel`, now `current`) against what it must be (`want`). With
/// `HM_BLESS` set a stale file is rewritten first; the caller checks it either way, so a bless
/// run still fails when the regenerated file does not pass.
fn bless(rel: &str, current: String, want: &str) -> String {
    if std::env::var_os("HM_BLESS").is_none() || current == want {
        return current;
    }
    std::fs::write(repo_path(rel), want).unwrap_or_else(|e| panic!("write {rel}: {e}"));
    repo_file(rel)
}

const DASHBOARD: &str = "deploy/monitoring/grafana-dashboard.json";
const DASHBOARD_CONFIGMAP: &str = "deploy/monitoring/grafana-dashboard-configmap.yaml";

fn dashboard() -> Value {
    serde_json::from_str(&repo_file(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// One query of the dashboard: a panel's target.
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
}

impl std::fmt::Display for PanelQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "panel {:?} target {}: {}",
            self.panel, self.ref_id, self.expr
        )
    }
}

fn dashboard_queries() -> Vec<PanelQuery> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        let title = p["title"].as_str().expect("panel title");
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            out.push(PanelQuery {
                panel: title.to_string(),
                ref_id: t["refId"].as_str().expect("refId").to_string(),
                expr: t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{title}: a target without expr"))
                    .to_string(),
            });
        }
    }
    out
}

/// A panel query as Prometheus takes it: Grafana's `$__rate_interval` as one minute (Grafana
/// makes it at least four scrape intervals, here 1 s) and the dashboard's `$driver` as "all".
/// Any other variable is left in, and fails the test.
fn instant_form(expr: &str) -> String {
    let q = expr
        .replace("$__rate_interval", "1m")
        .replace("$driver", ".*");
    assert!(
        !q.contains('$'),
        "a variable the test does not know in {expr}"
    );
    q
}

/// Which end-to-end scenario the dashboard is checked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// A CSI v1.12 driver in ListVolumes mode, a volume abnormal, no failed call.
    V112,
    /// A CSI v1.13 driver on a cluster without the CSIVolumeHealth field, one failed listing.
    V113,
}

/// Targets without data in the v1.12 scenario: v1.13 conditions and status writes, and failed
/// calls (none happen there). Every other target must return series in both scenarios, and
/// these in the v1.13 one: a panel whose query names a series the sidecar does not export (a
/// typo) fails one or the other.
const EMPTY_WITHOUT_V113: &[(&str, &str)] = &[
    ("Volume health conditions by PVC (CSI v1.13)", "A"),
    ("Abnormal volumes by status and condition", "B"),
    ("Failed health checks and CSI errors", "A"),
    ("Failed health checks and CSI errors", "B"),
    ("PVC status writes by result (CSI v1.13)", "A"),
    ("PVC status writes by result (CSI v1.13)", "B"),
];

/// Targets that show abnormal volumes only: empty again once the volume is healthy.
const FOLLOW_ABNORMAL: &[(&str, &str)] = &[
    ("Abnormal or missing volumes", "A"),
    ("Abnormal or missing volumes by PVC", "A"),
    ("Abnormal volumes by status and condition", "A"),
];

/// Runs every query of the dashboard against `prom`: each must parse and evaluate (the query
/// API answers success), and each that should have data in `scenario` must return series
/// (waiting for rates to have two samples and sweeps to have run). The `driver` variable's
/// query must offer the driver.
fn check_dashboard(prom: &mut Prometheus, scenario: Scenario) {
    let queries = dashboard_queries();
    for (panel, ref_id) in EMPTY_WITHOUT_V113.iter().chain(FOLLOW_ABNORMAL) {
        assert!(
            queries
                .iter()
                .any(|q| q.panel == *panel && q.ref_id == *ref_id),
            "the test expects a panel {panel:?} with target {ref_id}, which the dashboard lacks"
        );
    }
    let want_data = |q: &PanelQuery| {
        scenario == Scenario::V113
            || !EMPTY_WITHOUT_V113.contains(&(q.panel.as_str(), q.ref_id.as_str()))
    };
    let mut empty: Vec<String> = Vec::new();
    let done = poll(WAIT, || {
        empty = queries
            .iter()
            .filter(|q| {
                // Every query is sent: prom.query fails the test on a parse error.
                let r = prom.query(&instant_form(&q.expr));
                want_data(q) && r.is_empty()
            })
            .map(|q| q.to_string())
            .collect();
        empty.is_empty().then_some(())
    });
    assert!(
        done.is_some(),
        "{scenario:?}: dashboard queries without data:\n{}",
        empty.join("\n")
    );

    // Template variables: `label_values(<metric>, <label>)`, as Grafana asks Prometheus.
    let d = dashboard();
    for v in d["templating"]["list"].as_array().expect("templating") {
        if v["type"] != "query" {
            continue;
        }
        let def = v["definition"].as_str().expect("variable definition");
        assert_eq!(v["query"]["query"].as_str(), Some(def), "{v}");
        let args = def
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable query {def:?} is not label_values(metric, label)"));
        let (metric, label) = args.split_once(", ").expect("label_values(metric, label)");
        let values = prom.api(&format!(
            "/api/v1/label/{label}/values?match[]={}",
            urlencode(metric)
        ));
        assert!(
            values
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == DRIVER)),
            "variable {}: {def} offers {values}",
            v["name"]
        );
    }
}

#[test]
fn grafana_dashboard_is_well_formed_and_its_configmap_embeds_it_verbatim() {
    let json = repo_file(DASHBOARD);
    let d = dashboard();
    assert_eq!(d["uid"], "csi-external-health-monitor");
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{}",
        d["schemaVersion"]
    );
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id: {title}"
        );
        assert!(titles.insert(title), "duplicate title {title}");
        // Every panel and target reads the chosen data source.
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
        assert!(
            !p["description"].as_str().unwrap_or("").is_empty(),
            "{title}: no description"
        );
    }
    // What issue #22 asks the dashboard to show, by the series that show it.
    let exprs: String = dashboard_queries()
        .iter()
        .map(|q| format!("{}\n", q.expr))
        .collect();
    for series in [
        "csi_volume_health_status{",
        "csi_controller_volume_health_status{",
        "csi_volume_health_probe_total{",
        "csi_volume_health_probe_duration_seconds_bucket{",
        "csi_volume_health_last_sweep_timestamp_seconds{",
        "rest_client_requests_total{",
        "csi_volume_health_events_dropped_total[",
        "csi_volume_health_status_writes_total[",
        "leader_election_master_status{",
        "process_start_time_seconds{",
    ] {
        assert!(exprs.contains(series), "no panel reads {series}");
    }

    let rel = DASHBOARD_CONFIGMAP;
    let current = repo_file(rel);
    let marker = "\ndata:\n  csi-external-health-monitor-controller.json: |\n";
    let head = &current[..current.find(marker).expect("the ConfigMap's data key") + marker.len()];
    let body = indent(&json, "    ");
    let want = format!("{head}{body}");
    let current = bless(rel, current, &want);
    assert!(
        current == want,
        "{rel} is not {DASHBOARD} verbatim; regenerate it with \
         HM_BLESS=1 cargo test --release --locked --test e2e monitoring::grafana"
    );
    // And a YAML reader finds the same dashboard in it, labelled for Grafana's sidecar.
    let cm = crate::docs::documents(rel).remove(0);
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let data = cm["data"]["csi-external-health-monitor-controller.json"]
        .as_str()
        .expect("the dashboard in the ConfigMap");
    assert_eq!(data, json);
    let k = crate::docs::documents("deploy/monitoring/kustomization.yaml").remove(0);
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        resources,
        [
            "podmonitor.yaml",
            "prometheusrule.yaml",
            "grafana-dashboard-configmap.yaml"
        ]
    );
}
