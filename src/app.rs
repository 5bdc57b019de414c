//! Wiring: the startup sequence of upstream §2 (with DESIGN's fixes), the threads it starts,
//! the one event loop that reacts to signals, leadership changes and CSI connection loss, and
//! the orderly shutdown. Returns to `main`, which owns the exit code.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::config::Config;
use crate::csi::{self, Connection, Generation, HealthSource, Mode};
use crate::events::{self, RecorderOptions};
use crate::kube::{self, Client};
use crate::leader::{self, LeaderEvent, LeaderSettings, LeaderStatus};
use crate::metrics::Metrics;
use crate::monitor::{self, get::GetLoop, list::ListLoop, status::StatusWriter, Monitor};
use crate::shutdown::Shutdown;
use crate::{flags, http, logging, watch};

/// How long queued events may take to reach the API server on a graceful shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the CSI channel is checked for a lost connection. grpcio only offers the state
/// change as a future, and the design has no executor, so this is a poll: once a second is a
/// loss noticed within a second (kubelet restarts the container anyway) for one wakeup a second.
const LOSS_POLL: Duration = Duration::from_secs(1);
/// The message kubelet shows as the container's termination reason (upstream §2 step 9).
pub const TERMINATION_MESSAGE: &str = "Lost connection to CSI driver, exiting";

/// A fatal condition: logged at error level by main, exit code 1.
#[derive(Debug)]
pub struct Fatal {
    pub message: String,
    /// Key/values of the log line, after the message (`err` last, as klog writes it).
    pub fields: Vec<(&'static str, String)>,
}

impl Fatal {
    fn new(message: impl Into<String>) -> Fatal {
        Fatal {
            message: message.into(),
            fields: Vec::new(),
        }
    }

    /// One log line: the message with the fields as key/values.
    #[track_caller]
    pub fn log(&self, level: log::Level) {
        logging::log_fields(level, &self.message, &self.fields);
    }
}

impl From<&str> for Fatal {
    fn from(message: &str) -> Fatal {
        Fatal::new(message)
    }
}

/// The text line's words: `message key="value" ...`.
impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for (k, v) in &self.fields {
            write!(f, " {k}=\"{v}\"")?;
        }
        Ok(())
    }
}

fn fatal(what: &str, err: impl fmt::Display) -> Fatal {
    Fatal {
        message: what.to_string(),
        fields: vec![("err", err.to_string())],
    }
}

/// What the main loop reacts to.
enum AppEvent {
    Signal,
    CsiLost,
    Leader(LeaderEvent),
    ControllerExited(Result<(), Fatal>),
}

/// Everything the controller (the leader's work) needs, made once at start and handed to each
/// controller run (a new leader term starts a new one). Named after its use, not "Shared":
/// the event correlator has its own shared state, and this is the controller's context.
struct ControllerContext {
    cfg: Config,
    client: Client,
    driver: String,
    mode: Mode,
    /// The driver advertises `GET_VOLUME`: ListVolumes mode confirms missing volumes with it.
    get_volume: bool,
    source: Arc<dyn HealthSource>,
    recorder: events::Recorder,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// The whole command line: `args` as the process got them (argv0 first) → the exit code.
pub fn main(args: &[String]) -> i32 {
    let argv0 = args
        .first()
        .map(String::as_str)
        .unwrap_or("csi-external-health-monitor-controller");
    match flags::parse_with_warnings(args.get(1..).unwrap_or(&[])) {
        Ok((flags::Parsed::Help(_), _)) => {
            // Go's flag package prints -h usage to stderr and exits 0.
            eprint!("{}", flags::usage(argv0));
            0
        }
        Ok((flags::Parsed::Version, _)) => {
            println!("{argv0} {}", flags::VERSION);
            0
        }
        Ok((flags::Parsed::Run(config), warnings)) => {
            let log_config = config.log.clone();
            let termination_log = config.termination_log_path.clone();
            with_logging(&log_config, warnings, move || {
                // From here on a panic on any thread ends the process (DESIGN §2 fix 10).
                crate::crash::install(termination_log);
                match run(config) {
                    Ok(()) => 0,
                    Err(e) if SIGNALLED_DURING_STARTUP.load(Ordering::SeqCst) => {
                        log::info!(
                            err:% = e; "Received SIGTERM or SIGINT signal during start-up, stopped"
                        );
                        0
                    }
                    Err(e) => {
                        e.log(log::Level::Error);
                        log::logger().flush();
                        1
                    }
                }
            })
        }
        Ok((flags::Parsed::CheckOnce(config, output), warnings)) => {
            // No crash hook: this runs beside the sidecar (`kubectl exec`) and must not write
            // the container's termination log; its work is on this thread, whose panic ends
            // the process anyway.
            with_logging(&config.log, warnings, || {
                crate::checkonce::run(&config, output)
            })
        }
        Err(flags::Error::Usage(message)) => {
            eprintln!("{message}");
            eprint!("{}", flags::usage(argv0));
            2
        }
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

/// Sets up logging, logs the flag warnings and runs `body` for its exit code (1 when logging
/// cannot be set up, as component-base exits).
fn with_logging(
    config: &crate::config::LogConfig,
    warnings: Vec<String>,
    body: impl FnOnce() -> i32,
) -> i32 {
    if let Err(e) = logging::init(config) {
        eprintln!("LoggingConfiguration is invalid: {e}");
        return 1;
    }
    for w in warnings {
        log::warn!("{w}");
    }
    body()
}

pub fn run(cfg: Config) -> Result<(), Fatal> {
    log::info!(version:% = flags::VERSION; "Version");
    let metrics = Arc::new(Metrics::new());
    let shutdown = Shutdown::new();
    let (app_tx, app_rx) = crossbeam_channel::unbounded::<AppEvent>();
    let starting = Arc::new(AtomicBool::new(true));
    let signals = spawn_signal_thread(app_tx.clone(), shutdown.clone(), starting.clone())
        .map_err(|e| fatal("Failed to install signal handlers", e))?;

    let kube_cfg = kube::load_config(cfg.kubeconfig.as_deref())
        .map_err(|e| fatal("Failed to build a Kubernetes config", e))?;
    let client = Client::new_stoppable(
        kube_cfg,
        cfg.kube_api_qps,
        cfg.kube_api_burst,
        &user_agent(),
        &shutdown,
    )
    .map_err(|e| fatal("Failed to create a Clientset", e))?;
    {
        let m = metrics.clone();
        let host = client.server().to_string();
        client.set_request_observer(Arc::new(move |method: &str, code: &str| {
            m.observe_rest_request(code, method, &host)
        }));
    }

    let observer: csi::CallObserver = {
        let m = metrics.clone();
        Arc::new(move |method: &str, code: &str, secs: f64| m.observe_csi_call(method, code, secs))
    };
    let (conn, driver) = connect_driver(&cfg, observer, &shutdown)?;
    metrics.set_driver_name(&driver);

    let ready = Arc::new(AtomicBool::new(false));
    let leader_status = cfg.leader_election.as_ref().map(|_| {
        Arc::new(LeaderStatus::with_gauge(
            metrics.leader_gauge(&leader::lease_name(&driver)),
        ))
    });
    let http_server = match &cfg.http {
        Some(h) => {
            let health = http::Health {
                leader: leader_status
                    .clone()
                    .zip(cfg.leader_election.as_ref().map(|l| l.lease_duration)),
                ready: ready.clone(),
            };
            let server =
                http::serve(h, metrics.clone(), health, shutdown.clone()).map_err(|e| Fatal {
                    message: "Failed to start HTTP server at specified address and metrics path"
                        .into(),
                    fields: vec![
                        ("address", h.address.to_string()),
                        ("path", h.metrics_path.to_string()),
                        ("err", e.to_string()),
                    ],
                })?;
            log::info!(address:% = server.local_addr(); "ServeMux listening");
            Some(server)
        }
        None => None,
    };

    let (caps, mode) = choose_mode(&conn, &driver, &cfg)?;

    let conn = Arc::new(conn);
    let loss_watch = {
        let conn = conn.clone();
        let tx = app_tx.clone();
        let sd = shutdown.clone();
        spawn_named("csi-connection", move || {
            if conn.wait_for_loss(&sd, LOSS_POLL) {
                let _ = tx.send(AppEvent::CsiLost);
            }
        })
        .map_err(|e| fatal("Failed to start a thread", e))?
    };

    let (recorder, recorder_thread) = events::spawn(
        client.clone(),
        RecorderOptions::new(monitor::event_component(&driver)),
        shutdown.clone(),
    )
    .map_err(|e| fatal("Failed to start the event recorder", e))?;
    {
        let r = recorder.clone();
        metrics.set_events_dropped(Box::new(move || r.dropped_by_reason()));
    }

    let shared = Arc::new(ControllerContext {
        cfg: cfg.clone(),
        client: client.clone(),
        driver: driver.clone(),
        mode,
        get_volume: caps.get_volume,
        source: Arc::new(csi::Rpcs {
            conn: conn.clone(),
            generation: mode.generation(),
        }),
        recorder,
        metrics: metrics.clone(),
        ready: ready.clone(),
    });

    let (leader_tx, leader_rx) = crossbeam_channel::unbounded::<LeaderEvent>();
    let mut leader_thread = None;
    let mut controller: Option<JoinHandle<()>> = None;
    match (&cfg.leader_election, &leader_status) {
        (Some(le), Some(status)) => {
            let settings = LeaderSettings {
                lease_name: leader::lease_name(&driver),
                namespace: leader::resolve_namespace(&le.namespace),
                identity: leader::identity(),
                labels: le.labels.clone(),
                lease_duration: le.lease_duration,
                renew_deadline: le.renew_deadline,
                retry_period: le.retry_period,
            };
            // Its own rate limiter, so event writes and relists cannot starve lease renewals.
            let lease_client = client.with_own_limiter(cfg.kube_api_qps, cfg.kube_api_burst);
            let forward = app_tx.clone();
            spawn_named("leader-events", move || {
                for ev in leader_rx {
                    if forward.send(AppEvent::Leader(ev)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| fatal("Failed to start a thread", e))?;
            leader_thread = Some(
                leader::spawn(
                    lease_client,
                    settings,
                    status.clone(),
                    leader_tx,
                    shutdown.clone(),
                )
                .map_err(|e| fatal("Failed to start leader election", e))?,
            );
        }
        _ => {
            drop(leader_tx);
            controller = Some(start_controller(
                shared.clone(),
                app_tx.clone(),
                shutdown.clone(),
            )?);
        }
    }

    // From here the event loop reacts to signals (a signal that came during start-up is
    // waiting in the channel).
    starting.store(false, Ordering::SeqCst);
    let result = event_loop(&app_rx, &shared, &app_tx, &shutdown, &mut controller);

    // Orderly stop: loops first, then what they queued, then the lease.
    shutdown.trigger();
    if let Some(c) = controller {
        join_within(c, Duration::from_secs(30));
    }
    if result.is_ok() && !recorder_thread.flush(FLUSH_TIMEOUT) {
        log::warn!(
            "Timed out flushing queued events after {}s",
            FLUSH_TIMEOUT.as_secs()
        );
    }
    recorder_thread.join();
    if let Some(l) = leader_thread {
        join_within(l, Duration::from_secs(10));
    }
    if let Some(h) = http_server {
        h.join();
    }
    join_within(loss_watch, Duration::from_secs(2));
    drop(signals);
    result
}

/// The User-Agent of every request to the API server: operators find our traffic in audit logs
/// by it.
pub fn user_agent() -> String {
    format!("csi-external-health-monitor-controller/{}", flags::VERSION)
}

/// Startup steps 1-2 on the CSI side, shared with `--check-once`: connect to the driver's
/// socket, probe it until ready, read its name.
pub fn connect_driver(
    cfg: &Config,
    observer: csi::CallObserver,
    shutdown: &Shutdown,
) -> Result<(Connection, String), Fatal> {
    let conn = Connection::connect(&cfg.csi_address, cfg.timeout, observer, shutdown)
        .map_err(|e| fatal("Failed to connect to the CSI driver", e))?;
    conn.probe_until_ready(shutdown).map_err(|e| {
        fatal(
            "Failed to probe the CSI driver",
            format!("CSI driver probe failed: {e}"),
        )
    })?;
    let driver = conn
        .driver_name()
        .map_err(|e| fatal("Failed to get the CSI driver name", e))?;
    crate::vlog!(2, driver:% = driver; "CSI driver name");
    Ok((conn, driver))
}

/// The driver's capabilities and the mode chosen from them (logged), or why this driver cannot
/// be monitored; shared with `--check-once`, so both choose, and refuse, alike.
pub fn choose_mode(
    conn: &Connection,
    driver: &str,
    cfg: &Config,
) -> Result<(csi::Capabilities, Mode), Fatal> {
    let caps = conn.capabilities().map_err(|e| {
        fatal("Failed to check whether the CSI driver supports the Plugin Controller Service and its ListVolumes, GetVolume and VolumeCondition capabilities", e)
    })?;
    let selected =
        csi::select_mode(&caps, cfg.volume_health_api).map_err(|u| Fatal::new(u.to_string()))?;
    if let Some(w) = &selected.warning {
        log::warn!("{w}");
    }
    let mode = selected.mode;
    log::info!(
        driver:% = driver,
        mode:% = mode.name(),
        generation:% = match mode.generation() {
            Generation::Condition => "CSI v1.12 VOLUME_CONDITION",
            Generation::Health => "CSI v1.13 volume health",
        };
        "Monitoring mode selected"
    );
    Ok((caps, mode))
}

fn event_loop(
    app_rx: &Receiver<AppEvent>,
    shared: &Arc<ControllerContext>,
    app_tx: &Sender<AppEvent>,
    shutdown: &Shutdown,
    controller: &mut Option<JoinHandle<()>>,
) -> Result<(), Fatal> {
    loop {
        let Ok(ev) = app_rx.recv() else {
            return Ok(());
        };
        match ev {
            AppEvent::Signal => {
                log::info!("Received SIGTERM or SIGINT signal, shutting down controller.");
                return Ok(());
            }
            AppEvent::CsiLost => {
                log::error!(
                    address:% = shared.cfg.csi_address.display();
                    "Lost connection"
                );
                if let Err(e) =
                    std::fs::write(&shared.cfg.termination_log_path, TERMINATION_MESSAGE)
                {
                    log::error!(
                        path:% = shared.cfg.termination_log_path.display(), err:% = e;
                        "Failed to write termination message"
                    );
                }
                shutdown.trigger();
                return Err(Fatal::new(TERMINATION_MESSAGE));
            }
            AppEvent::Leader(LeaderEvent::StartedLeading) => {
                crate::vlog!(2, "became leader, starting");
                if controller.is_none() {
                    *controller = Some(start_controller(
                        shared.clone(),
                        app_tx.clone(),
                        shutdown.clone(),
                    )?);
                }
            }
            AppEvent::Leader(LeaderEvent::StoppedLeading) => {
                // Stop the monitor before anything else so no event is written without the lease.
                shutdown.trigger();
                return Err(Fatal::new("Stopped leading"));
            }
            AppEvent::Leader(LeaderEvent::NewLeader(id)) => {
                crate::vlog!(3, leader:% = id; "New leader detected")
            }
            AppEvent::ControllerExited(Ok(())) => {
                if shutdown.is_triggered() {
                    return Ok(());
                }
                return Err(Fatal::new("the controller stopped unexpectedly"));
            }
            AppEvent::ControllerExited(Err(e)) => return Err(e),
        }
    }
}

fn start_controller(
    shared: Arc<ControllerContext>,
    app_tx: Sender<AppEvent>,
    shutdown: Shutdown,
) -> Result<JoinHandle<()>, Fatal> {
    spawn_named("controller", move || {
        let result = run_controller(&shared, &shutdown);
        let _ = app_tx.send(AppEvent::ControllerExited(result));
    })
    .map_err(|e| fatal("Failed to start the controller thread", e))
}

/// The leader's work: caches, seeding, then the mode's loop until shutdown.
fn run_controller(shared: &ControllerContext, shutdown: &Shutdown) -> Result<(), Fatal> {
    log::info!("Starting CSI External PV Health Monitor Controller");
    let (pvs, pv_thread) = watch::spawn_pv_reflector(
        shared.client.clone(),
        shared.driver.clone(),
        shutdown.clone(),
    )
    .map_err(|e| fatal("Cannot start the PersistentVolume watch", e))?;
    if !wait_synced(
        |t| pvs.wait_synced(t, shutdown),
        shutdown,
        "PersistentVolumes",
    ) {
        return Ok(());
    }
    let (pvcs, pvc_thread) =
        watch::spawn_pvc_reflector(shared.client.clone(), pvs.clone(), shutdown.clone())
            .map_err(|e| fatal("Cannot start the PersistentVolumeClaim watch", e))?;
    if !wait_synced(
        |t| pvcs.wait_synced(t, shutdown),
        shutdown,
        "PersistentVolumeClaims",
    ) {
        return Ok(());
    }
    let component = monitor::event_component(&shared.driver);
    let seed = seed_with_retry(&shared.client, &component, shutdown);
    if shutdown.is_triggered() {
        return Ok(());
    }
    let node_threads = if shared.cfg.enable_node_watcher {
        monitor::nodes::NodeWatcher::spawn(
            shared.client.clone(),
            pvs.clone(),
            pvcs.clone(),
            shared.recorder.clone(),
            shared.cfg.node_not_ready_timeout,
            monitor::nodes::DEFAULT_TICK,
            shutdown.clone(),
        )
        .map_err(|e| fatal("Cannot start the node watcher", e))?
    } else {
        Vec::new()
    };
    shared.ready.store(true, Ordering::SeqCst);
    let cfg = &shared.cfg;
    let mut mon = Monitor::new(
        shared.mode.generation(),
        shared.driver.clone(),
        pvs,
        pvcs,
        shared.client.clone(),
        shared.recorder.clone(),
        shared.metrics.clone(),
        seed,
    )
    .report_missing(cfg.report_missing_volumes);
    if shared.mode.generation() == Generation::Health {
        let interval = if shared.mode.is_list() {
            cfg.list_volumes_interval
        } else {
            cfg.monitor_interval
        };
        shared.metrics.start_status_writes();
        mon = mon.health_output(monitor::HealthOutput {
            writer: StatusWriter::new(
                shared.client.clone(),
                shared.metrics.clone(),
                interval,
                shutdown.clone(),
            ),
            events: cfg.volume_health_events,
        });
    }
    let mon = Arc::new(mon);
    match shared.mode {
        Mode::ListVolumes | Mode::HealthList { .. } => ListLoop::new(
            mon,
            shared.source.clone(),
            cfg.list_volumes_interval,
            cfg.list_volumes_max_entries,
        )
        .confirm_with_get(shared.mode == Mode::HealthList { confirm: true })
        .confirm_missing_with_get(
            shared.mode == Mode::ListVolumes && shared.get_volume && cfg.report_missing_volumes,
        )
        .workers(cfg.worker_threads)
        // Nothing is reported missing without --report-missing-volumes: no guard to warn about.
        .missing_max_fraction(if cfg.report_missing_volumes {
            cfg.missing_volumes_max_fraction
        } else {
            1.0
        })
        .write_budget(cfg.kube_api_qps, cfg.kube_api_burst)
        .call_timeout(cfg.timeout)
        .run(shutdown.clone()),
        Mode::GetVolume | Mode::HealthGet => GetLoop {
            monitor: mon,
            source: shared.source.clone(),
            interval: shared.cfg.monitor_interval,
            add_interval: shared.cfg.volume_list_add_interval,
            workers: shared.cfg.worker_threads,
        }
        .run(shutdown.clone())
        .map_err(|e| fatal("Cannot start the worker pool", e))?,
    }
    log::info!("Shutting down CSI External PV Health Monitor Controller");
    // node_threads[0] is the watcher itself (stops within a tick); the rest are reflectors.
    for (i, h) in node_threads.into_iter().enumerate() {
        if i == 0 {
            join_within(h, Duration::from_secs(5));
        }
    }
    // A reflector blocked in a watch read only sees shutdown when the read returns (at most
    // the watch timeout); it holds nothing to flush, so it is left to end with the process.
    drop(pv_thread);
    drop(pvc_thread);
    Ok(())
}

/// Wait for a cache, saying every 30 s that we still are (an unreachable API server shows up
/// here, with the reflector logging why).
fn wait_synced(wait: impl Fn(Duration) -> bool, shutdown: &Shutdown, what: &str) -> bool {
    loop {
        if wait(Duration::from_secs(30)) {
            return true;
        }
        if shutdown.is_triggered() {
            return false;
        }
        log::warn!("Still waiting for the {what} cache to sync");
    }
}

fn seed_with_retry(
    client: &Client,
    component: &str,
    shutdown: &Shutdown,
) -> HashMap<String, monitor::decide::Reported> {
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=5 {
        match monitor::seed_reported(client, component) {
            Ok(seed) => {
                log::debug!(
                    count = seed.len();
                    "Seeded abnormal volumes from existing events"
                );
                return seed;
            }
            Err(e) => {
                log::warn!(attempt = attempt, err:% = e; "Cannot list existing VolumeConditionAbnormal events");
                if shutdown.wait_timeout(delay) {
                    break;
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    // Without the seed a recovery that happens across a restart goes unreported; everything
    // else works, so carry on.
    HashMap::new()
}

/// Set when SIGTERM or SIGINT came before the event loop ran: start-up was cut short on
/// purpose, and whatever error that made is no failure (exit 0).
static SIGNALLED_DURING_STARTUP: AtomicBool = AtomicBool::new(false);

/// Signals become `AppEvent::Signal`. During start-up (`starting`) nobody reads that yet, so
/// the signal also triggers `shutdown` at once: every start-up wait (the driver's socket, a
/// credential plugin, a cache sync) watches it, and SIGTERM stops a starting process as fast
/// as a running one.
fn spawn_signal_thread(
    tx: Sender<AppEvent>,
    shutdown: Shutdown,
    starting: Arc<AtomicBool>,
) -> std::io::Result<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let handle = signals.handle();
    spawn_named("signals", move || {
        for _ in signals.forever() {
            if starting.load(Ordering::SeqCst) {
                SIGNALLED_DURING_STARTUP.store(true, Ordering::SeqCst);
                shutdown.trigger();
            }
            if tx.send(AppEvent::Signal).is_err() {
                return;
            }
        }
    })?;
    Ok(handle)
}

pub fn spawn_named<F: FnOnce() + Send + 'static>(
    name: &str,
    f: F,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.to_string()).spawn(f)
}

/// Join a thread, but give up after `timeout` (a thread blocked in a socket read may take
/// until its read timeout; the process is exiting anyway). A panic in the thread is logged.
pub fn join_within(handle: JoinHandle<()>, timeout: Duration) {
    let name = handle.thread().name().unwrap_or("unnamed").to_string();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let joiner = std::thread::Builder::new()
        .name(format!("join-{name}"))
        .spawn(move || {
            let _ = tx.send(handle.join().is_err());
        });
    if joiner.is_err() {
        return;
    }
    match rx.recv_timeout(timeout) {
        Ok(true) => log::error!(thread:% = name; "Thread panicked"),
        Ok(false) => {}
        Err(_) => {
            log::warn!(thread:% = name, timeout:? = timeout; "Thread did not stop in time")
        }
    }
}
