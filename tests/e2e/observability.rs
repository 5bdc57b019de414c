//! What an operator observes from outside the process (upstream §10, §12, §13; DESIGN §2.7,
//! §3.2, §3.3): the Prometheus text at `--metrics-path`, the health endpoints, JSON logs, the
//! termination message on CSI connection loss, and HTTP listener errors.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::kit::csidriver::LIST_VOLUMES;
use crate::support::{http_addr, http_get, poll, Env, Sidecar, DRIVER, NS};

const WAIT: Duration = Duration::from_secs(30);
const FAST: &str = "--list-volumes-interval=300ms";
const HTTP: &str = "--http-endpoint=127.0.0.1:0";

/// One scrape, parsed.
#[derive(Debug, Default)]
pub(crate) struct Scrape {
    /// name → (HELP, TYPE)
    families: HashMap<String, (String, String)>,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

impl Scrape {
    /// The Prometheus text exposition format (0.0.4), strictly enough for these tests: a line
    /// that is neither a comment nor a well-formed sample fails the test.
    fn parse(text: &str) -> Scrape {
        let mut out = Scrape::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                out.families.entry(name.into()).or_default().0 = help.into();
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').unwrap_or((rest, ""));
                out.families.entry(name.into()).or_default().1 = ty.into();
            } else if line.starts_with('#') {
                continue;
            } else {
                out.samples.push(parse_sample(line));
            }
        }
        out
    }

    pub(crate) fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// Samples of `name` whose labels include all of `want`.
    pub(crate) fn find(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Sample> {
        self.series(name)
            .into_iter()
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }
}

fn malformed(line: &str) -> ! {
    panic!("malformed sample line: {line:?}")
}

/// `name{k="v",...} value [timestamp]`, label values with `\\`, `\"` and `\n` escapes.
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| malformed(line));
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = r.split_once("=\"").unwrap_or_else(|| malformed(line));
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => malformed(line),
                    },
                    Some((i, '"')) => break i + 1,
                    Some((_, c)) => value.push(c),
                    None => malformed(line),
                }
            };
            labels.insert(key.to_string(), value);
            r = &after[end..];
            r = r.strip_prefix(',').unwrap_or(r);
        }
    }
    let value = match rest.trim().split(' ').next().unwrap_or_default() {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| malformed(line)),
    };
    Sample {
        name: line[..name_end].to_string(),
        labels,
        value,
    }
}

pub(crate) fn scrape(addr: &str) -> Scrape {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(&body)
}

/// Scrapes until `pred` holds (metrics change with the monitor's sweeps).
pub(crate) fn scrape_until(addr: &str, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    poll(WAIT, || Some(scrape(addr)).filter(|s| pred(s)))
        .unwrap_or_else(|| panic!("timed out waiting for {what}:\n{:#?}", scrape(addr)))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn scrape_parser_reads_the_exposition_format() {
    let s = Scrape::parse(
        "# HELP a_total Some help, with \"quotes\".\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"z\"} 3\nb 2.5e-3\nc{le=\"+Inf\"} +Inf\n",
    );
    assert_eq!(
        s.families["a_total"],
        ("Some help, with \"quotes\".".into(), "counter".into())
    );
    assert_eq!(s.samples.len(), 3);
    assert_eq!(s.samples[0].labels["y"], "q\"z");
    assert_eq!(s.samples[0].value, 3.0);
    assert_eq!(s.samples[1].value, 0.0025);
    assert!(s.samples[2].value.is_infinite());
    assert!(std::panic::catch_unwind(|| Scrape::parse("what is this")).is_err());
}

#[test]
fn csi_operations_histogram_and_process_start_time_as_upstream() {
    let env = Env::new();
    env.volume("v1");
    env.driver.set_volume("v1", false, "");
    // One failed sweep, so a non-OK status code is recorded too.
    env.driver
        .fail_next(LIST_VOLUMES, grpcio::RpcStatusCode::UNAVAILABLE, 1);
    let before_spawn = unix_now();
    let sidecar = env.spawn(&[HTTP, FAST]);
    let addr = http_addr(&sidecar.stderr);
    assert!(
        env.wait_calls(LIST_VOLUMES, 3, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let s = scrape_until(&addr, "a successful ListVolumes", |s| {
        !s.find(
            "csi_sidecar_operations_seconds_count",
            &[
                ("method_name", "/csi.v1.Controller/ListVolumes"),
                ("grpc_status_code", "OK"),
            ],
        )
        .is_empty()
    });

    const OPS: &str = "csi_sidecar_operations_seconds";
    assert_eq!(
        s.families[OPS],
        (
            "[ALPHA] Container Storage Interface operation duration with gRPC error code status total".into(),
            "histogram".into()
        )
    );
    assert_eq!(
        s.families["process_start_time_seconds"],
        (
            "[ALPHA] Start time of the process since unix epoch in seconds.".into(),
            "gauge".into()
        )
    );
    let start = s.series("process_start_time_seconds");
    assert_eq!(start.len(), 1);
    assert!(start[0].labels.is_empty());
    assert!(
        start[0].value >= before_spawn - 1.0 && start[0].value <= unix_now(),
        "start {} vs spawn {before_spawn}",
        start[0].value
    );
    assert!(
        !s.samples.iter().any(|x| x.name.starts_with("go_")),
        "Go runtime metrics are not upstream's"
    );

    // Every series: exactly upstream's labels and buckets, cumulative, +Inf = _count.
    let want_labels: BTreeSet<&str> = ["driver_name", "grpc_status_code", "method_name"].into();
    let want_le = [
        "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "15", "25", "50", "120", "300", "600", "+Inf",
    ];
    let mut keys = BTreeSet::new();
    for c in s.series(&format!("{OPS}_count")) {
        assert_eq!(
            c.labels.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            want_labels,
            "{c:?}"
        );
        let key: Vec<(&str, &str)> = c
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let buckets = s.find(&format!("{OPS}_bucket"), &key);
        let les: Vec<&str> = buckets.iter().map(|b| b.labels["le"].as_str()).collect();
        assert_eq!(les, want_le, "{c:?}");
        assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value));
        assert_eq!(buckets.last().unwrap().value, c.value);
        assert_eq!(s.find(&format!("{OPS}_sum"), &key).len(), 1);
        keys.insert((
            c.labels["driver_name"].clone(),
            c.labels["method_name"].clone(),
            c.labels["grpc_status_code"].clone(),
        ));
    }
    let k = |d: &str, m: &str, c: &str| (d.to_string(), m.to_string(), c.to_string());
    for want in [
        k("unknown-driver", "/csi.v1.Identity/Probe", "OK"),
        k("unknown-driver", "/csi.v1.Identity/GetPluginInfo", "OK"),
        k(DRIVER, "/csi.v1.Identity/GetPluginCapabilities", "OK"),
        k(DRIVER, "/csi.v1.Controller/ControllerGetCapabilities", "OK"),
        k(DRIVER, "/csi.v1.Controller/ListVolumes", "OK"),
        k(DRIVER, "/csi.v1.Controller/ListVolumes", "Unavailable"),
    ] {
        assert!(keys.contains(&want), "missing {want:?} in {keys:#?}");
    }
    let failed = s.find(
        &format!("{OPS}_count"),
        &[
            ("method_name", "/csi.v1.Controller/ListVolumes"),
            ("grpc_status_code", "Unavailable"),
        ],
    );
    assert_eq!(failed[0].value, 1.0);
}

#[test]
fn per_volume_series_appear_for_a_pv_and_vanish_with_it() {
    let env = Env::new();
    env.volume("v1");
    env.volume("v2");
    env.driver.set_volume("v1", true, "broken");
    env.driver.set_volume("v2", false, "");
    let sidecar = env.spawn(&[HTTP, FAST]);
    let addr = http_addr(&sidecar.stderr);
    const STATUS: &str = "csi_volume_health_status";
    let s = scrape_until(&addr, "both volumes' status", |s| {
        !s.find(
            STATUS,
            &[("persistentvolume", "pv-v1"), ("status", "abnormal")],
        )
        .is_empty()
            && !s
                .find(
                    STATUS,
                    &[("persistentvolume", "pv-v2"), ("status", "normal")],
                )
                .is_empty()
    });
    let v1 = s.find(STATUS, &[("persistentvolume", "pv-v1")]);
    assert_eq!(v1.len(), 1, "one series per volume: {v1:?}");
    let want: BTreeMap<String, String> = [
        ("driver_name", DRIVER),
        ("namespace", NS),
        ("persistentvolumeclaim", "pvc-v1"),
        ("persistentvolume", "pv-v1"),
        ("status", "abnormal"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(v1[0].labels, want);
    assert_eq!(v1[0].value, 1.0);
    for name in [
        "csi_volume_health_probe_total",
        "csi_volume_health_probe_duration_seconds_count",
        "csi_volume_health_last_sweep_timestamp_seconds",
        "rest_client_requests_total",
    ] {
        assert!(!s.series(name).is_empty(), "no {name}");
    }
    assert!(!s
        .find(
            "rest_client_requests_total",
            &[("code", "200"), ("method", "GET")]
        )
        .is_empty());
    // In ListVolumes mode a probe is a sweep: at least one, never more than the sweeps the
    // driver saw begin, and the histogram counted each (the scrape may fall between the two).
    let ok = s.find(
        "csi_volume_health_probe_total",
        &[
            ("driver_name", DRIVER),
            ("method", "ListVolumes"),
            ("result", "ok"),
        ],
    );
    let sweeps = env
        .driver
        .calls(LIST_VOLUMES)
        .iter()
        .filter(|c| c.arg.is_empty())
        .count() as f64;
    assert!(
        ok.len() == 1 && ok[0].value >= 1.0 && ok[0].value <= sweeps,
        "{ok:?} after {sweeps} sweeps"
    );
    let probes: f64 = s
        .find(
            "csi_volume_health_probe_total",
            &[("method", "ListVolumes")],
        )
        .iter()
        .map(|x| x.value)
        .sum();
    let timed: f64 = s
        .find(
            "csi_volume_health_probe_duration_seconds_count",
            &[("method", "ListVolumes")],
        )
        .iter()
        .map(|x| x.value)
        .sum();
    assert!(
        (probes - timed).abs() <= 1.0,
        "{probes} probes, {timed} timed"
    );
    // At least the PV and PVC lists were GETs answered 200.
    let gets: f64 = s
        .find(
            "rest_client_requests_total",
            &[("code", "200"), ("method", "GET")],
        )
        .iter()
        .map(|x| x.value)
        .sum();
    assert!(gets >= 2.0, "{gets} GETs answered 200");
    let sweep = s.series("csi_volume_health_last_sweep_timestamp_seconds");
    assert!((sweep[0].value - unix_now()).abs() < 60.0, "{sweep:?}");

    assert!(env.api.delete("persistentvolumes", None, "pv-v1"));
    let s = scrape_until(&addr, "pv-v1's series to go", |s| {
        s.find(STATUS, &[("persistentvolume", "pv-v1")]).is_empty()
    });
    assert_eq!(
        s.find(
            STATUS,
            &[("persistentvolume", "pv-v2"), ("status", "normal")]
        )
        .len(),
        1,
        "the other volume keeps its series"
    );
}

#[test]
fn health_endpoints_and_metrics_path() {
    let env = Env::new();
    env.volume("v1");
    env.driver.set_volume("v1", false, "");
    let sidecar = env.spawn(&[HTTP, FAST, "--metrics-path=/custom-metrics"]);
    let addr = http_addr(&sidecar.stderr);
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok".into()));
    // Ready once the driver is connected and the caches synced.
    assert!(
        poll(WAIT, || (http_get(&addr, "/readyz").0 == 200).then_some(())).is_some(),
        "{}",
        sidecar.stderr.text()
    );
    assert_eq!(http_get(&addr, "/readyz").1, "ok");
    let (code, body) = http_get(&addr, "/custom-metrics");
    assert_eq!(code, 200);
    assert!(body.contains("csi_sidecar_operations_seconds_bucket"));
    for path in ["/metrics", "/healthz/leader-election", "/debug/pprof/", "/"] {
        assert_eq!(
            http_get(&addr, path),
            (404, "404 page not found\n".into()),
            "{path}"
        );
    }
}

#[test]
fn leader_healthz_is_served_on_the_deprecated_metrics_address_too() {
    let env = Env::new();
    let sidecar = env.spawn(&[
        "--metrics-address=127.0.0.1:0",
        "--leader-election",
        &format!("--leader-election-namespace={NS}"),
        "--leader-election-lease-duration=3s",
        "--leader-election-renew-deadline=2s",
        "--leader-election-retry-period=500ms",
    ]);
    let addr = http_addr(&sidecar.stderr);
    assert!(
        sidecar.stderr.wait_for("Successfully acquired lease", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    // A leader that renews is healthy.
    assert_eq!(
        http_get(&addr, "/healthz/leader-election"),
        (200, "ok".into())
    );
    assert_eq!(http_get(&addr, "/metrics").0, 200);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let env = Env::new();
    env.volume("v1");
    env.driver.set_volume("v1", true, "broken");
    env.driver
        .fail_next(LIST_VOLUMES, grpcio::RpcStatusCode::INTERNAL, 1);
    let mut sidecar = env.spawn(&["--logging-format=json", "-v=5", FAST]);
    assert!(
        env.wait_event("pvc-v1", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    sidecar.terminate();
    assert_eq!(sidecar.wait_exit(WAIT).code(), Some(0));
    let lines = sidecar.stderr.lines();
    assert!(lines.len() > 10, "{lines:#?}");
    let mut verbosities = BTreeSet::new();
    let mut msgs = Vec::new();
    let mut objects = Vec::new();
    let now_ms = unix_now() * 1000.0;
    for line in &lines {
        let j: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let o = j
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let ts = o["ts"].as_f64().unwrap_or_else(|| panic!("ts: {line}"));
        assert!((ts - now_ms).abs() < 120_000.0, "ts is not unix ms: {line}");
        let caller = o["caller"]
            .as_str()
            .unwrap_or_else(|| panic!("caller: {line}"));
        let (file, no) = caller.rsplit_once(':').unwrap_or_else(|| panic!("{line}"));
        assert!(file.ends_with(".rs") && no.parse::<u32>().is_ok(), "{line}");
        let msg = o["msg"].as_str().unwrap_or_else(|| panic!("msg: {line}"));
        assert!(!msg.is_empty(), "{line}");
        verbosities.insert(o["v"].as_u64().unwrap_or_else(|| panic!("v: {line}")));
        msgs.push(msg.to_string());
        objects.push(j.clone());
    }
    // Key/values are fields, as component-base's JSON logger writes them, not message text.
    let version = objects
        .iter()
        .find(|o| o["msg"] == "Version")
        .unwrap_or_else(|| panic!("no plain \"Version\" message: {lines:#?}"));
    assert_eq!(version["version"], healthmon::flags::VERSION);
    let sweep_error = objects
        .iter()
        .find(|o| o["msg"] == "Check controller volume status error")
        .unwrap_or_else(|| panic!("no sweep error line: {lines:#?}"));
    assert!(
        sweep_error["err"]
            .as_str()
            .is_some_and(|e| e.contains("Internal") || e.contains("INTERNAL")),
        "{sweep_error}"
    );
    // The info, V(5) and shutdown messages all came through in this format.
    for want in [
        "Version",
        "Starting CSI External PV Health Monitor Controller",
        "Received SIGTERM or SIGINT signal",
        // the error logged for the failed sweep
        "Check controller volume status error",
    ] {
        assert!(
            msgs.iter().any(|m| m.starts_with(want)),
            "no {want:?} in {msgs:#?}"
        );
    }
    assert!(
        verbosities.contains(&0) && verbosities.contains(&5),
        "{verbosities:?}"
    );
}

#[test]
fn csi_connection_loss_writes_the_termination_message_and_exits_1() {
    let mut env = Env::new();
    env.volume("v1");
    env.driver.set_volume("v1", false, "");
    let term = env.dir.join("termination-log");
    let mut sidecar = env.spawn(&[FAST, &format!("--termination-log-path={}", term.display())]);
    assert!(
        env.wait_calls(LIST_VOLUMES, 1, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert!(!term.exists());
    env.driver.stop();
    let text = sidecar.exit_1_log(WAIT);
    assert_eq!(
        std::fs::read_to_string(&term).unwrap(),
        "Lost connection to CSI driver, exiting"
    );
    let lost = text
        .lines()
        .find(|l| l.contains("Lost connection"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(lost.starts_with('E'), "not an error line: {lost}");
    assert!(
        lost.contains(&env.driver.socket().display().to_string()),
        "{lost}"
    );
}

#[test]
fn csi_connection_loss_with_an_unwritable_termination_log_still_exits_1() {
    let mut env = Env::new();
    let term = env.dir.join("no-such-dir").join("termination-log");
    let mut sidecar = env.spawn(&[FAST, &format!("--termination-log-path={}", term.display())]);
    assert!(
        env.wait_calls(LIST_VOLUMES, 1, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    env.driver.stop();
    let text = sidecar.exit_1_log(WAIT);
    assert!(
        text.contains("Failed to write termination message"),
        "{text}"
    );
    assert!(
        text.contains("Lost connection to CSI driver, exiting"),
        "{text}"
    );
}

#[test]
fn busy_http_port_is_a_clear_error_and_exit_1() {
    let env = Env::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let mut sidecar = env.spawn(&[&format!("--http-endpoint={addr}")]);
    let text = sidecar.exit_1_log(WAIT);
    let line = text
        .lines()
        .find(|l| l.contains("Failed to start HTTP server at specified address and metrics path"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.starts_with('E') && line.contains(&addr), "{line}");
    assert!(line.contains("/metrics"), "{line}");
    drop(busy);
}

#[test]
fn both_http_flags_are_rejected_with_upstreams_message() {
    let env = Env::new();
    let mut sidecar: Sidecar = env.spawn(&[
        "--http-endpoint=127.0.0.1:0",
        "--metrics-address=127.0.0.1:0",
    ]);
    let text = sidecar.exit_1_log(WAIT);
    assert!(
        text.contains("Only one of `--metrics-address` and `--http-endpoint` can be set."),
        "{text}"
    );
    // Refused before anything else: no CSI traffic, no API traffic.
    assert_eq!(env.driver.call_count(crate::kit::csidriver::PROBE), 0);
    assert!(env.api.requests().is_empty());
}

/// `leader_election_master_status{name}` as client-go's leader metrics expose it: 1 on the
/// replica holding the Lease, 0 on one standing by, moving to the new leader on a hand-over,
/// and absent without `--leader-election`.
#[test]
fn leader_gauge_is_1_on_the_leader_0_on_the_standby_and_absent_without_leader_election() {
    const GAUGE: &str = "leader_election_master_status";
    let lease = healthmon::leader::lease_name(DRIVER);

    // Without leader election: the sidecar works (a sweep is done) and the gauge is not there.
    let env = Env::new();
    env.volume("v1");
    env.driver.set_volume("v1", false, "");
    let lone = env.spawn(&[HTTP, FAST]);
    let addr = http_addr(&lone.stderr);
    let s = scrape_until(&addr, "a sweep", |s| {
        !s.find("csi_volume_health_probe_total", &[("method", LIST_VOLUMES)])
            .is_empty()
    });
    assert!(s.series(GAUGE).is_empty(), "{:?}", s.series(GAUGE));
    assert!(
        !s.families.contains_key(GAUGE),
        "{:?}",
        s.families.get(GAUGE)
    );
    drop(lone);

    // Two replicas: one leads, the other stands by.
    let timing = [
        HTTP,
        "--leader-election-lease-duration=3s",
        "--leader-election-renew-deadline=2s",
        "--leader-election-retry-period=500ms",
    ];
    let mut replicas = vec![
        crate::leader::spawn_replica(&env, "gauge-a", &timing),
        crate::leader::spawn_replica(&env, "gauge-b", &timing),
    ];
    let holder = |env: &Env| {
        env.api
            .get("leases", Some(NS), &lease)
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
            .filter(|h| !h.is_empty())
    };
    assert!(
        env.api.wait_until(WAIT, |_| holder(&env).is_some()),
        "nobody leads"
    );
    let leader = replicas
        .iter()
        .position(|r| Some(&r.name) == holder(&env).as_ref())
        .expect("the holder is one of ours");
    let addrs: Vec<String> = replicas
        .iter()
        .map(|r| http_addr(&r.sidecar.stderr))
        .collect();
    let gauge_is = |addr: &str, want: f64, what: &str| {
        let s = scrape_until(addr, what, |s| {
            s.find(GAUGE, &[("name", &lease)])
                .first()
                .is_some_and(|g| g.value == want)
        });
        // One series, client-go's label only, component-base's help and type.
        let g = s.series(GAUGE);
        assert_eq!(g.len(), 1, "{g:?}");
        assert_eq!(
            g[0].labels.keys().collect::<Vec<_>>(),
            ["name"],
            "{:?}",
            g[0]
        );
        assert_eq!(
            s.families[GAUGE],
            (
                "[ALPHA] Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name.".to_string(),
                "gauge".to_string()
            )
        );
    };
    gauge_is(&addrs[leader], 1.0, "the leader's gauge at 1");
    gauge_is(&addrs[1 - leader], 0.0, "the standby's gauge at 0");

    // The leader releases the Lease on SIGTERM; the standby takes it and says so.
    replicas[leader].sidecar.terminate();
    assert_eq!(replicas[leader].sidecar.wait_exit(WAIT).code(), Some(0));
    gauge_is(&addrs[1 - leader], 1.0, "the new leader's gauge at 1");
    let other = replicas.remove(1 - leader);
    assert!(
        env.api.wait_until(WAIT, |_| holder(&env).as_deref()
            == Some(other.name.as_str())),
        "the standby did not take over"
    );
}
