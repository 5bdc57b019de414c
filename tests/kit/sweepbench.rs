//! `csi-hm-testkit bench-sweep`: the cost of one listing sweep in which nothing changed, per PV
//! and per volume state (issue #23: ≤ 0.5 µs per PV whatever state the volume is in), measured
//! in process on the sidecar's own `ListLoop`.
//!
//! The PV and PVC stores are filled the way the binary fills them: the library's own
//! reflectors list N Bound PVs and their PVCs from the fake API server (the bench cluster's
//! objects), so the records sit in memory as the binary's do, allocated while decoding pages,
//! not in the tight loop of a bench (a first version built them in order and measured 0.26 µs
//! per PV where the binary on a real API server spent 2.2 µs). Nothing here names a record's
//! fields: only `ListLoop::new`, `.sweep()`, the `Monitor` builder and the reflectors.
//!
//! One row per state, each on a fresh `Monitor` over the same stores. The driver is an
//! in-memory `HealthSource` whose pages are built before the clock starts (their decoding is
//! the driver side of a real sweep). After two sweeps that bring every volume into the state
//! (the second one reports the missing ones), each sweep is timed on this thread alone (the
//! loop is single-threaded); the minimum and the median of `--rounds` sweeps are reported, so
//! a busy machine inflates the median more than the minimum.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use healthmon::csi::{Error as CsiError, Generation, HealthSource, ListPage};
use healthmon::events::{self, RecorderOptions};
use healthmon::health::Condition;
use healthmon::kube::{self, Client};
use healthmon::metrics::Metrics;
use healthmon::monitor::list::ListLoop;
use healthmon::monitor::status::StatusWriter;
use healthmon::monitor::{HealthOutput, Monitor};
use healthmon::shutdown::Shutdown;
use healthmon::watch::{self, PvStore, PvcStore};

use crate::apiserver::{FakeApiServer, Options};
use crate::bench::cluster;
use crate::csidriver::{self, MockDriver};

const DRIVER: &str = crate::bench::DRIVER;
/// Sweeps before the clock starts: the first reports every volume in its state (or counts a
/// first absence), the second reports the volumes missing from two sweeps in a row.
const WARMUP: usize = 2;
/// Entries per page of the in-memory driver (the volume-count bench's default).
const PAGE: usize = 1000;

/// A driver that answers from pages made in advance, one set per sweep, handed over without a
/// copy (a real driver's pages are decoded fresh each time; that cost is the driver's side).
struct Pages {
    method: &'static str,
    sweeps: Mutex<Vec<Vec<ListPage>>>,
}

impl HealthSource for Pages {
    fn list_method(&self) -> &'static str {
        self.method
    }
    fn get_method(&self) -> &'static str {
        "none"
    }
    fn list_page(&self, _max: i32, token: &str) -> Result<ListPage, CsiError> {
        let mut sweeps = self.sweeps.lock().unwrap_or_else(|p| p.into_inner());
        if token.is_empty() {
            sweeps.pop();
        }
        let i: usize = token.parse().unwrap_or(0);
        Ok(sweeps
            .last_mut()
            .and_then(|pages| pages.get_mut(i))
            .map(std::mem::take)
            .unwrap_or_default())
    }
    fn get(&self, _id: &str) -> Result<Vec<Condition>, CsiError> {
        Ok(Vec::new())
    }
}

/// The state every volume is in, sweep after sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// ListVolumes lists it, healthy.
    ListedHealthy,
    /// ListVolumes leaves it out; `--report-missing-volumes=false`.
    AbsentReportOff,
    /// ListVolumes lists it with the same abnormal condition every sweep.
    ReportedAbnormal,
    /// ListVolumes leaves it out, and it was reported missing.
    ReportedMissing,
    /// The v1.13 health listing leaves it out: healthy.
    HealthListOmitted,
}

impl State {
    const ALL: [State; 5] = [
        State::ListedHealthy,
        State::AbsentReportOff,
        State::ReportedAbnormal,
        State::ReportedMissing,
        State::HealthListOmitted,
    ];

    /// The `--state` spelling.
    fn flag(self) -> &'static str {
        match self {
            State::ListedHealthy => "listed",
            State::AbsentReportOff => "absent",
            State::ReportedAbnormal => "abnormal",
            State::ReportedMissing => "missing",
            State::HealthListOmitted => "health-omitted",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            State::ListedHealthy => "listed healthy (ListVolumes)",
            State::AbsentReportOff => "absent from ListVolumes, missing-volume report off",
            State::ReportedAbnormal => "already reported abnormal (listed abnormal every sweep)",
            State::ReportedMissing => "already reported missing (absent, report on)",
            State::HealthListOmitted => {
                "v1.13 health listing, left out (healthy, ControllerListVolumeHealth)"
            }
        }
    }

    fn generation(self) -> Generation {
        match self {
            State::HealthListOmitted => Generation::Health,
            _ => Generation::Condition,
        }
    }

    fn method(self) -> &'static str {
        match self {
            State::HealthListOmitted => "ControllerListVolumeHealth",
            _ => "ListVolumes",
        }
    }

    /// Whether the driver lists the volumes (else its answer is one empty page).
    fn listed(self) -> bool {
        matches!(self, State::ListedHealthy | State::ReportedAbnormal)
    }

    /// The driver's answer for one sweep: every volume listed (healthy or abnormal) in pages
    /// of [`PAGE`], or one empty page.
    fn pages(self, ids: &[String]) -> Vec<ListPage> {
        let conditions = match self {
            State::ListedHealthy => Vec::new(),
            State::ReportedAbnormal => vec![Condition::legacy("3 unreadable blocks")],
            _ => return vec![ListPage::default()],
        };
        let count = ids.len().div_ceil(PAGE);
        ids.chunks(PAGE)
            .enumerate()
            .map(|(k, c)| ListPage {
                entries: c
                    .iter()
                    .map(|id| (id.clone(), conditions.clone()))
                    .collect(),
                next_token: if k + 1 < count {
                    (k + 1).to_string()
                } else {
                    String::new()
                },
                ..ListPage::default()
            })
            .collect()
    }
}

pub fn usage() -> &'static str {
    "bench-sweep [--volumes 100000] [--rounds 5] [--state listed|absent|abnormal|missing|health-omitted]..."
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut volumes = 100_000usize;
    let mut rounds = 5usize;
    // `--state`, repeatable: only these rows (all by default), e.g. to profile one.
    let mut states = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        i += 1;
        let v = args
            .get(i)
            .ok_or_else(|| format!("{flag} needs a value"))?
            .replace('_', "");
        match flag {
            "--volumes" => volumes = v.parse().map_err(|e| format!("--volumes: {e}"))?,
            "--rounds" => rounds = v.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--state" => states.push(
                State::ALL
                    .into_iter()
                    .find(|s| s.flag() == v)
                    .ok_or_else(|| format!("--state: unknown state {v:?}"))?,
            ),
            other => return Err(format!("bench-sweep: unknown flag {other:?}")),
        }
        i += 1;
    }
    if states.is_empty() {
        states = State::ALL.to_vec();
    }
    if volumes == 0 || rounds == 0 {
        return Err("bench-sweep: --volumes and --rounds must be positive".into());
    }
    println!("# csi-hm-testkit bench-sweep {}", args.join(" "));
    let bench = Bench::start(volumes)?;
    println!(
        "{volumes} Bound PVs and PVCs listed into the stores by the sidecar's reflectors in {:.1} s; a sweep in which nothing changed, every volume in the row's state; minimum and median over {rounds} sweeps after {WARMUP}.\n",
        bench.listed_in.as_secs_f64()
    );
    println!("| volume state | listing | pages | sweep ms (min) | µs per PV (min) | µs per PV (median) |");
    println!("|---|---|---:|---:|---:|---:|");
    for state in states {
        eprintln!("== {state:?}");
        let times = bench.measure(state, rounds);
        let (min, median) = (times[0], times[times.len() / 2]);
        let per_pv = |d: Duration| d.as_secs_f64() * 1e6 / volumes as f64;
        println!(
            "| {} | {} | {} | {:.1} | {:.3} | {:.3} |",
            state.describe(),
            state.method(),
            if state.listed() {
                volumes.div_ceil(PAGE)
            } else {
                1
            },
            min.as_secs_f64() * 1e3,
            per_pv(min),
            per_pv(median)
        );
    }
    bench.stop();
    Ok(())
}

/// The fake API server holding the cluster, the sidecar's API client, event recorder and the
/// two stores its reflectors keep.
struct Bench {
    /// Kept alive: the reflectors and the recorder talk to it.
    _api: FakeApiServer,
    dir: std::path::PathBuf,
    client: Client,
    recorder: events::Recorder,
    pvs: PvStore,
    pvcs: PvcStore,
    ids: Vec<String>,
    listed_in: Duration,
    shutdown: Shutdown,
}

impl Bench {
    fn start(n: usize) -> Result<Bench, String> {
        let api = FakeApiServer::start_with(Options {
            pvc_health_status: true,
            ..Options::default()
        })
        .map_err(|e| format!("start the fake API server: {e}"))?;
        // The bench cluster's PVs and PVCs; the mock driver only takes its list of volumes.
        let unused = MockDriver::start(DRIVER);
        cluster::populate(&api, &unused, n, 0, PAGE);
        drop(unused);
        let dir = csidriver::temp_dir("bench-sweep");
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)
            .map_err(|e| format!("write kubeconfig: {e}"))?;
        let cfg = kube::load_config(Some(&kubeconfig)).map_err(|e| e.to_string())?;
        let client = Client::new(cfg, -1.0, 0, "bench-sweep").map_err(|e| e.to_string())?;
        let shutdown = Shutdown::new();
        let (recorder, _thread) = events::spawn(
            client.clone(),
            RecorderOptions::new("bench-sweep".into()),
            shutdown.clone(),
        )
        .map_err(|e| e.to_string())?;

        // As `app::run_controller` does: PVs first, then the PVCs bound to them.
        let t = Instant::now();
        let long = Duration::from_secs(600);
        let (pvs, _pv_thread) =
            watch::spawn_pv_reflector(client.clone(), DRIVER.into(), shutdown.clone())
                .map_err(|e| format!("start the PV reflector: {e}"))?;
        if !pvs.wait_synced(long, &shutdown) {
            return Err("the PV reflector did not sync within 600 s".into());
        }
        let (pvcs, _pvc_thread) =
            watch::spawn_pvc_reflector(client.clone(), pvs.clone(), shutdown.clone())
                .map_err(|e| format!("start the PVC reflector: {e}"))?;
        if !pvcs.wait_synced(long, &shutdown) {
            return Err("the PVC reflector did not sync within 600 s".into());
        }
        let listed_in = t.elapsed();
        if pvs.len() != n || pvcs.len() != n {
            return Err(format!(
                "the reflectors hold {} PVs and {} PVCs, not {n}",
                pvs.len(),
                pvcs.len()
            ));
        }
        Ok(Bench {
            _api: api,
            dir,
            client,
            recorder,
            pvs,
            pvcs,
            ids: (0..n).map(|i| format!("vol-{i:06}")).collect(),
            listed_in,
            shutdown,
        })
    }

    /// The sorted wall times of `rounds` sweeps with every volume in `state`.
    fn measure(&self, state: State, rounds: usize) -> Vec<Duration> {
        // One set of pages for each sweep, plus one that the first pop takes away.
        let sweeps: Vec<Vec<ListPage>> = (0..WARMUP + rounds + 1)
            .map(|_| state.pages(&self.ids))
            .collect();
        let metrics = Arc::new(Metrics::new());
        let mut monitor = Monitor::new(
            state.generation(),
            DRIVER.into(),
            self.pvs.clone(),
            self.pvcs.clone(),
            self.client.clone(),
            self.recorder.clone(),
            metrics.clone(),
            HashMap::new(),
        );
        if state == State::AbsentReportOff {
            monitor = monitor.report_missing(false);
        }
        if state.generation() == Generation::Health {
            monitor = monitor.health_output(HealthOutput {
                writer: StatusWriter::new(
                    self.client.clone(),
                    metrics,
                    Duration::from_secs(3600),
                    self.shutdown.clone(),
                ),
                events: true,
            });
        }
        let source = Arc::new(Pages {
            method: state.method(),
            sweeps: Mutex::new(sweeps),
        });
        let mut sweeps = ListLoop::new(Arc::new(monitor), source, Duration::from_secs(3600), 0);
        for _ in 0..WARMUP {
            sweeps.sweep();
        }
        let mut times: Vec<Duration> = (0..rounds)
            .map(|_| {
                let t = Instant::now();
                sweeps.sweep();
                t.elapsed()
            })
            .collect();
        times.sort();
        times
    }

    fn stop(self) {
        self.shutdown.trigger();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
