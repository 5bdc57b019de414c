//! `csi-hm-testkit bench-sweep`: the cost of one listing sweep in which nothing changed, per PV,
//! measured in process on the sidecar's own `ListLoop` (issue #18: ≤ 0.5 µs per PV). The
//! stores are filled directly with N Bound PVs and their PVCs; the driver is an in-memory
//! `HealthSource` whose pages are built before the clock starts, so what is timed is the
//! sidecar's side: collecting the pages into the sweep's map, judging every PV, and the
//! bookkeeping after (absences, quiet volumes, metric series, remembered PVCs).
//!
//! Every sweep's wall time is taken on this thread alone (the loop is single-threaded); the
//! minimum of several sweeps is reported, so a busy machine inflates nothing but the spread.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use healthmon::csi::{Condition, Error as CsiError, Generation, HealthSource, ListPage};
use healthmon::events::{self, RecorderOptions};
use healthmon::kube::{self, Client};
use healthmon::metrics::Metrics;
use healthmon::monitor::list::{collect, ListLoop, ListingBound};
use healthmon::monitor::status::StatusWriter;
use healthmon::monitor::{HealthOutput, Monitor};
use healthmon::shutdown::Shutdown;
use healthmon::watch::{PvPhase, PvRecord, PvStore, PvcRecord, PvcStore, Records};

use crate::apiserver::FakeApiServer;
use crate::csidriver;

/// A driver that answers from pages made in advance, one set per sweep, handed over without a
/// copy (a real driver's pages are decoded fresh each time; that cost is the driver's side).
struct Pages {
    method: &'static str,
    sweeps: std::sync::Mutex<Vec<Vec<ListPage>>>,
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

pub fn usage() -> &'static str {
    "bench-sweep [--volumes 100000] [--rounds 5]"
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut volumes = 100_000usize;
    let mut rounds = 5usize;
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
            other => return Err(format!("bench-sweep: unknown flag {other:?}")),
        }
        i += 1;
    }
    if volumes == 0 || rounds == 0 {
        return Err("bench-sweep: --volumes and --rounds must be positive".into());
    }
    println!("# csi-hm-testkit bench-sweep --volumes {volumes} --rounds {rounds}");
    println!("A sweep in which nothing changed: every volume healthy and already reported so; minimum over {rounds} sweeps after the first.\n");
    println!("| listing | volumes | pages | sweep ms | µs per PV | of which reading the pages into a map, ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (method, all_listed) in [("ListVolumes", true), ("ControllerListVolumeHealth", false)] {
        let (best, listing) = measure(volumes, rounds, method, all_listed)?;
        let pages = if all_listed {
            volumes.div_ceil(1000)
        } else {
            1
        };
        println!(
            "| {method} | {volumes} | {pages} | {:.1} | {:.3} | {:.1} |",
            best.as_secs_f64() * 1e3,
            best.as_secs_f64() * 1e6 / volumes as f64,
            listing.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn measure(
    n: usize,
    rounds: usize,
    method: &'static str,
    all_listed: bool,
) -> Result<(Duration, Duration), String> {
    let api = FakeApiServer::start();
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

    let pvs = PvStore::new();
    let pvcs = PvcStore::new(pvs.clone());
    let mut pv_map = Records::with_capacity(n);
    let mut pvc_map = Records::with_capacity(n);
    for i in 0..n {
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        let pv_name = format!("pv-{i:06}");
        let pvc_name = format!("pvc-{i:06}");
        let handle = format!("vol-{i:06}");
        let claim = Some(("vols", pvc_name.as_str(), uid.as_str()));
        pv_map.insert(
            PvRecord::new(&pv_name, &handle, PvPhase::Bound, claim, false).ok_or("record")?,
        );
        pvc_map
            .insert(PvcRecord::new("vols", &pvc_name, &uid, "1", &pv_name, None).ok_or("record")?);
    }
    pvs.replace(pv_map);
    pvcs.store().replace(pvc_map);

    let ids: Vec<String> = (0..n).map(|i| format!("vol-{i:06}")).collect();
    let pages = |_| -> Vec<ListPage> {
        if !all_listed {
            return vec![ListPage::default()];
        }
        let chunks: Vec<&[String]> = ids.chunks(1000).collect();
        let count = chunks.len();
        chunks
            .into_iter()
            .enumerate()
            .map(|(k, c)| ListPage {
                entries: c.iter().map(|id| (id.clone(), Vec::new())).collect(),
                next_token: if k + 1 < count {
                    (k + 1).to_string()
                } else {
                    String::new()
                },
                ..ListPage::default()
            })
            .collect()
    };
    // One set for each sweep, plus one that the first pop takes away.
    let sweeps: Vec<Vec<ListPage>> = (0..2 * rounds + 2).map(pages).collect();
    let metrics = Arc::new(Metrics::new());
    let mut monitor = Monitor::new(
        if all_listed {
            Generation::Condition
        } else {
            Generation::Health
        },
        "bench.csi.example.com".into(),
        pvs,
        pvcs,
        client.clone(),
        recorder,
        metrics.clone(),
        HashMap::new(),
    );
    if !all_listed {
        // The v1.13 listing: absent volumes are healthy ones.
        monitor = monitor.health_output(HealthOutput {
            writer: StatusWriter::new(
                client,
                metrics,
                Duration::from_secs(3600),
                healthmon::shutdown::Shutdown::new(),
            ),
            events: true,
        });
    }
    let monitor = Arc::new(monitor);
    let source = Arc::new(Pages {
        method,
        sweeps: std::sync::Mutex::new(sweeps),
    });
    let mut sweeps = ListLoop::new(monitor, source.clone(), Duration::from_secs(3600), 0);
    // The first sweep reports every volume healthy once (metric series, quiet set).
    sweeps.sweep();
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        sweeps.sweep();
        best = best.min(t.elapsed());
    }
    // The part of a sweep that only reads the driver's pages into the sweep's map.
    let mut listing = Duration::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        let bound = ListingBound::new(t, Duration::from_secs(3600), Duration::from_secs(15), n);
        drop(collect(source.as_ref(), 0, bound).map_err(|e| e.to_string())?);
        listing = listing.min(t.elapsed());
    }
    shutdown.trigger();
    let _ = std::fs::remove_dir_all(&dir);
    Ok((best, listing))
}
