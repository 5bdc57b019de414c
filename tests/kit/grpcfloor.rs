//! `csi-hm-testkit grpc-floor`: the CPU floor of the sidecar's call pattern (issue #24), with
//! nothing of the sidecar around it. A process of its own makes ControllerGetVolume calls with
//! the project's generated CSI client at a fixed rate (500 a second unless `--rate`), spread
//! evenly, against the trivial mock driver in another process (`csi-driver --no-list`, so its
//! CPU is not counted), and prints the caller's CPU per call: user+sys of the calling process
//! from `/proc/self/stat` over the window after a warm-up, split into gRPC's completion-queue
//! threads and the rest, with context switches per call summed over the process's threads.
//!
//! Each variant runs in a fresh child (`grpc-floor --child NAME`) so no gRPC thread, channel or
//! poller of one variant is alive during another's window. The variants are the design card's
//! blocking pattern (a pool of W threads, each paced by its own sleep, or fed by one pacer over
//! a channel) with different completion-queue counts, channel arguments and poll strategies,
//! and, for comparison only, the asynchronous pattern the design card rules out: one pacer
//! thread starting `*_async` calls whose answers are read by futures spawned on grpcio's own
//! completion queue.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grpcio::{CallOption, ChannelBuilder, ConnectivityState, EnvBuilder, ResourceQuota};
use healthmon::csi::proto::csi::ControllerGetVolumeRequest;
use healthmon::csi::proto::csi_grpc::ControllerClient;

use crate::bench::process;
use crate::csidriver;

const VOLUME: &str = "vol-000000";
/// The sidecar's default `--timeout`: every call carries this deadline, as the sidecar's do.
const DEADLINE: Duration = Duration::from_secs(15);

pub fn usage() -> &'static str {
    "grpc-floor [--rate 500] [--warmup-secs 5] [--secs 20] [--only VARIANT]... [--list]"
}

/// How the calls are issued.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pattern {
    /// W threads, each making one blocking call at a time, paced by its own sleep to its slot.
    Sleep,
    /// One pacer thread sends each due slot over a channel to W threads making blocking calls
    /// (the hand-off of a scheduler → worker design).
    Dispatch,
    /// One pacer thread starts `*_async` calls; a future spawned on grpcio's completion queue
    /// reads each answer. Not the design card's pattern: for comparison only.
    Async,
}

/// The channel arguments a variant sets.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Args {
    /// `ChannelBuilder::new(env)` and nothing else.
    Plain,
    /// What `src/csi/mod.rs` sets: reconnect backoff, reply limit, resource quota, no idle
    /// timeout.
    Sidecar,
    /// Sidecar + `grpc.enable_retries=0`.
    NoRetry,
    /// Sidecar + `grpc.http2.bdp_probe=0`.
    NoBdp,
    /// Sidecar + `grpc.enable_channelz=0`.
    NoChannelz,
    /// Sidecar + `grpc.minimal_stack=1` (drops the optional filters; see the report).
    MinimalStack,
    /// Sidecar + `grpc.optimization_target=latency`.
    Latency,
    /// Sidecar + no retries, no BDP probe, no channelz.
    Lean,
    /// Lean + minimal stack.
    Leanest,
}

#[derive(Clone, Copy, Debug)]
struct Variant {
    name: &'static str,
    pattern: Pattern,
    threads: usize,
    cqs: usize,
    args: Args,
    deadline: bool,
    /// `GRPC_POLL_STRATEGY` for the child (gRPC core's default on Linux is epoll1).
    poll: Option<&'static str>,
    /// Slots rounded down to multiples of this many ms, so calls leave in small bursts (0:
    /// every call at its own instant).
    tick_ms: u64,
    /// No pacing at all: each thread calls again as soon as its call returns (the raw cost of
    /// a call; the rate is whatever the machine gives).
    flat: bool,
    /// The child runs under `taskset -c 0`: every thread of the caller on one CPU.
    pin: bool,
}

use Pattern::{Async, Dispatch, Sleep};

/// A variant with the sidecar's channel arguments, one completion queue, the deadline, each
/// call at its own instant; the methods below change one thing each.
const fn v(name: &'static str, pattern: Pattern, threads: usize) -> Variant {
    Variant {
        name,
        pattern,
        threads,
        cqs: 1,
        args: Args::Sidecar,
        deadline: true,
        poll: None,
        tick_ms: 0,
        flat: false,
        pin: false,
    }
}

impl Variant {
    const fn cqs(mut self, n: usize) -> Variant {
        self.cqs = n;
        self
    }
    const fn args(mut self, args: Args) -> Variant {
        self.args = args;
        self
    }
    const fn no_deadline(mut self) -> Variant {
        self.deadline = false;
        self
    }
    const fn poll(mut self, strategy: &'static str) -> Variant {
        self.poll = Some(strategy);
        self
    }
    const fn tick(mut self, ms: u64) -> Variant {
        self.tick_ms = ms;
        self
    }
    const fn flat(mut self) -> Variant {
        self.flat = true;
        self
    }
    const fn pin(mut self) -> Variant {
        self.pin = true;
        self
    }
}

const VARIANTS: &[Variant] = &[
    v("block-sleep-w1", Sleep, 1),
    v("block-sleep-w4", Sleep, 4),
    v("block-sleep-w50", Sleep, 50),
    v("block-dispatch-w50", Dispatch, 50),
    v("block-sleep-w1-cq2", Sleep, 1).cqs(2),
    v("block-sleep-w4-cq2", Sleep, 4).cqs(2),
    v("block-sleep-w50-cq2", Sleep, 50).cqs(2),
    v("block-sleep-w50-plain", Sleep, 50).args(Args::Plain),
    v("block-sleep-w50-noretry", Sleep, 50).args(Args::NoRetry),
    v("block-sleep-w50-nobdp", Sleep, 50).args(Args::NoBdp),
    v("block-sleep-w50-nochannelz", Sleep, 50).args(Args::NoChannelz),
    v("block-sleep-w50-minstack", Sleep, 50).args(Args::MinimalStack),
    v("block-sleep-w50-latency", Sleep, 50).args(Args::Latency),
    v("block-sleep-w50-lean", Sleep, 50).args(Args::Lean),
    v("block-sleep-w50-leanest", Sleep, 50).args(Args::Leanest),
    v("block-sleep-w1-leanest", Sleep, 1).args(Args::Leanest),
    v("block-sleep-w50-nodeadline", Sleep, 50).no_deadline(),
    v("block-sleep-w50-poll", Sleep, 50).poll("poll"),
    v("block-sleep-w50-tick10ms", Sleep, 50).tick(10),
    v("block-sleep-w50-tick20ms", Sleep, 50).tick(20),
    v("block-sleep-w50-tick100ms", Sleep, 50).tick(100),
    v("block-sleep-w4-tick100ms", Sleep, 4).tick(100),
    v("block-dispatch-w50-tick100ms", Dispatch, 50).tick(100),
    v("block-sleep-w50-tick1000ms", Sleep, 50).tick(1000),
    v("block-sleep-w50-leanest-tick100ms", Sleep, 50)
        .args(Args::Leanest)
        .tick(100),
    v("block-sleep-w1-pin1", Sleep, 1).pin(),
    v("block-sleep-w50-pin1", Sleep, 50).pin(),
    v("block-sleep-w50-tick100ms-pin1", Sleep, 50)
        .tick(100)
        .pin(),
    v("block-sleep-w50-leanest-tick100ms-pin1", Sleep, 50)
        .args(Args::Leanest)
        .tick(100)
        .pin(),
    v("block-flat-w1", Sleep, 1).flat(),
    v("block-flat-w1-pin1", Sleep, 1).flat().pin(),
    v("async-cq1", Async, 1),
    v("async-cq2", Async, 1).cqs(2),
    v("async-cq1-leanest", Async, 1).args(Args::Leanest),
    v("async-cq1-pin1", Async, 1).pin(),
    v("async-cq1-tick100ms", Async, 1).tick(100),
];

struct Opts {
    rate: f64,
    warmup: Duration,
    window: Duration,
    only: Vec<String>,
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut o = Opts {
        rate: 500.0,
        warmup: Duration::from_secs(5),
        window: Duration::from_secs(20),
        only: Vec::new(),
    };
    let mut child = None;
    let mut socket = None;
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        if flag == "--list" {
            for v in VARIANTS {
                println!("{}", v.name);
            }
            return Ok(());
        }
        i += 1;
        let val = args
            .get(i)
            .ok_or_else(|| format!("{flag} needs a value"))?
            .as_str();
        match flag {
            "--rate" => o.rate = val.parse().map_err(|e| format!("--rate: {e}"))?,
            "--warmup-secs" => {
                o.warmup =
                    Duration::from_secs(val.parse().map_err(|e| format!("--warmup-secs: {e}"))?)
            }
            "--secs" => {
                o.window = Duration::from_secs(val.parse().map_err(|e| format!("--secs: {e}"))?)
            }
            "--only" => o.only.push(val.to_string()),
            "--child" => child = Some(val.to_string()),
            "--socket" => socket = Some(val.to_string()),
            other => return Err(format!("grpc-floor: unknown flag {other:?}")),
        }
        i += 1;
    }
    if o.rate <= 0.0 || o.window.is_zero() {
        return Err("grpc-floor: --rate and --secs must be positive".into());
    }
    for name in &o.only {
        if !VARIANTS.iter().any(|v| v.name == name) {
            return Err(format!("grpc-floor: no variant {name:?}; try --list"));
        }
    }
    match (child, socket) {
        (Some(name), Some(socket)) => {
            let v = VARIANTS
                .iter()
                .find(|v| v.name == name)
                .ok_or_else(|| format!("grpc-floor: no variant {name:?}"))?;
            let m = measure(v, &socket, &o)?;
            println!(
                "RESULT {} {} {} {} {} {}",
                m.calls, m.errors, m.secs, m.cpu_ms, m.cq_ms, m.switches
            );
            Ok(())
        }
        (None, None) => parent(&o),
        _ => Err("grpc-floor: --child and --socket go together".into()),
    }
}

/// One variant's figures over the window.
struct Measured {
    calls: u64,
    errors: u64,
    secs: f64,
    /// User+sys of the whole process, in ms.
    cpu_ms: f64,
    /// User+sys of gRPC's completion-queue threads (`grpc-N`), in ms.
    cq_ms: f64,
    /// Voluntary + involuntary context switches of all threads.
    switches: u64,
}

fn parent(o: &Opts) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let dir = csidriver::temp_dir("grpc-floor");
    let socket = dir.join("driver.sock");
    let driver = process::spawn_driver(&socket, "v1.12", [VOLUME.to_string()], &[])?;
    println!(
        "gRPC call floor: blocking ControllerGetVolume at {} calls/s, mock driver (pid {}) in its own process, {}s warm-up, {}s window, caller's user+sys from /proc/self/stat\n",
        o.rate,
        driver.pid(),
        o.warmup.as_secs(),
        o.window.as_secs()
    );
    println!("| variant | pattern | W | CQs | channel args | calls/s | CPU ms per call | of which CQ threads | ctx switches per call |");
    println!("|---|---|---:|---:|---|---:|---:|---:|---:|");
    for v in VARIANTS
        .iter()
        .filter(|v| o.only.is_empty() || o.only.iter().any(|n| n == v.name))
    {
        let mut cmd = if v.pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.arg("grpc-floor")
            .args(["--child", v.name])
            .arg("--socket")
            .arg(&socket)
            .args(["--rate", &o.rate.to_string()])
            .args(["--warmup-secs", &o.warmup.as_secs().to_string()])
            .args(["--secs", &o.window.as_secs().to_string()])
            .stderr(Stdio::inherit());
        if let Some(p) = v.poll {
            cmd.env("GRPC_POLL_STRATEGY", p);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("{}: spawn: {e}", v.name))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .ok_or_else(|| format!("{}: no result ({})", v.name, out.status))?;
        let f: Vec<f64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let [calls, errors, secs, cpu_ms, cq_ms, switches] = f[..] else {
            return Err(format!("{}: malformed result {line:?}", v.name));
        };
        if errors > 0.0 {
            eprintln!("grpc-floor: {}: {errors} calls failed", v.name);
        }
        let mut args = format!("{:?}", v.args);
        if !v.deadline {
            args.push_str(", no deadline");
        }
        if let Some(p) = v.poll {
            args.push_str(&format!(", GRPC_POLL_STRATEGY={p}"));
        }
        if v.tick_ms > 0 {
            args.push_str(&format!(", slots in {} ms ticks", v.tick_ms));
        }
        if v.flat {
            args.push_str(", unpaced");
        }
        if v.pin {
            args.push_str(", taskset -c 0");
        }
        println!(
            "| {} | {:?} | {} | {} | {args} | {:.0} | {:.3} | {:.3} | {:.1} |",
            v.name,
            v.pattern,
            v.threads,
            v.cqs,
            calls / secs,
            cpu_ms / calls,
            cq_ms / calls,
            switches / calls
        );
    }
    println!(
        "\nload average at end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    drop(driver);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn builder(env: Arc<grpcio::Environment>, args: Args) -> ChannelBuilder {
    let raw = |b: ChannelBuilder, key: &str, val: i32| match std::ffi::CString::new(key) {
        Ok(k) => b.raw_cfg_int(k, val),
        Err(_) => b,
    };
    if args == Args::Plain {
        return ChannelBuilder::new(env);
    }
    let max = healthmon::csi::MAX_REPLY;
    let mut b = ChannelBuilder::new(env)
        .initial_reconnect_backoff(Duration::from_millis(200))
        .max_reconnect_backoff(Duration::from_secs(1))
        .max_receive_message_len(max as i32)
        .set_resource_quota(
            ResourceQuota::new(Some("csi")).resize_memory(healthmon::csi::REPLY_MEMORY),
        );
    b = raw(b, "grpc.client_idle_timeout_ms", i32::MAX);
    let lean = matches!(args, Args::Lean | Args::Leanest);
    if lean || args == Args::NoRetry {
        b = b.enable_retry(false);
    }
    if lean || args == Args::NoBdp {
        b = b.http2_bdp_probe(false);
    }
    if lean || args == Args::NoChannelz {
        b = raw(b, "grpc.enable_channelz", 0);
    }
    if matches!(args, Args::MinimalStack | Args::Leanest) {
        b = raw(b, "grpc.minimal_stack", 1);
    }
    if args == Args::Latency {
        b = b.optimize_for(grpcio::OptTarget::Latency);
    }
    b
}

/// The child: connect, check one call, then run the pattern and measure the window.
fn measure(v: &Variant, socket: &str, o: &Opts) -> Result<Measured, String> {
    let env = Arc::new(
        EnvBuilder::new()
            .cq_count(v.cqs)
            .name_prefix("grpc")
            .build(),
    );
    let channel = builder(env, v.args).connect(&format!("unix:{socket}"));
    let ready_by = Instant::now() + Duration::from_secs(10);
    while channel.check_connectivity_state(true) != ConnectivityState::GRPC_CHANNEL_READY {
        if Instant::now() > ready_by {
            return Err(format!("{}: channel not ready within 10 s", v.name));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = ControllerClient::new(channel);
    let mut req = ControllerGetVolumeRequest::new();
    req.volume_id = VOLUME.to_string();
    let deadline = v.deadline;
    let opt = move || {
        if deadline {
            CallOption::default().timeout(DEADLINE)
        } else {
            CallOption::default()
        }
    };
    client
        .controller_get_volume_opt(&req, opt())
        .map_err(|e| format!("{}: first call: {e}", v.name))?;

    let calls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let period = Duration::from_secs_f64(1.0 / o.rate);
    // Slot s is due at start + s × period; the first slots leave the threads time to start.
    let start = Instant::now() + Duration::from_millis(100);
    let tick = v.tick_ms as u128 * 1_000_000;
    let slot_time = move |s: u64| {
        let at = period.mul_f64(s as f64).as_nanos();
        let at = if tick > 0 { at - at % tick } else { at };
        start + Duration::from_nanos(at as u64)
    };
    let flat = v.flat;
    let sleep_until = move |t: Instant| {
        let now = Instant::now();
        if !flat && t > now {
            std::thread::sleep(t - now);
        }
    };
    let call = {
        let (client, req, calls, errors) =
            (client.clone(), req.clone(), calls.clone(), errors.clone());
        move || match client.controller_get_volume_opt(&req, opt()) {
            Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
        }
    };
    let mut threads = Vec::new();
    match v.pattern {
        Sleep => {
            let w = v.threads as u64;
            for t in 0..w {
                let (call, stop) = (call.clone(), stop.clone());
                threads.push(spawn(format!("caller-{t}"), move || {
                    let mut s = t;
                    while !stop.load(Ordering::Relaxed) {
                        sleep_until(slot_time(s));
                        call();
                        s += w;
                    }
                })?);
            }
        }
        Dispatch => {
            let (tx, rx) = crossbeam_channel::unbounded::<()>();
            for t in 0..v.threads {
                let (call, rx) = (call.clone(), rx.clone());
                threads.push(spawn(format!("caller-{t}"), move || {
                    while rx.recv().is_ok() {
                        call();
                    }
                })?);
            }
            let stop = stop.clone();
            threads.push(spawn("pacer".into(), move || {
                let mut s = 0;
                while !stop.load(Ordering::Relaxed) {
                    sleep_until(slot_time(s));
                    if tx.send(()).is_err() {
                        break;
                    }
                    s += 1;
                }
            })?);
        }
        Async => {
            let (client, req, calls, errors, stop) = (
                client.clone(),
                req.clone(),
                calls.clone(),
                errors.clone(),
                stop.clone(),
            );
            threads.push(spawn("pacer".into(), move || {
                let mut s = 0;
                while !stop.load(Ordering::Relaxed) {
                    sleep_until(slot_time(s));
                    s += 1;
                    match client.controller_get_volume_async_opt(&req, opt()) {
                        Ok(rx) => {
                            let (calls, errors) = (calls.clone(), errors.clone());
                            client.spawn(async move {
                                match rx.await {
                                    Ok(_) => calls.fetch_add(1, Ordering::Relaxed),
                                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                                };
                            });
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })?);
        }
    }
    std::thread::sleep(o.warmup);
    let (n0, e0, c0, t0) = (
        calls.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        sample()?,
        Instant::now(),
    );
    std::thread::sleep(o.window);
    let (n1, e1, c1, t1) = (
        calls.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        sample()?,
        Instant::now(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let tick_ms = 1000.0 / process::clock_ticks();
    Ok(Measured {
        calls: n1 - n0,
        errors: e1 - e0,
        secs: (t1 - t0).as_secs_f64(),
        cpu_ms: (c1.total - c0.total) as f64 * tick_ms,
        cq_ms: c1.cq.saturating_sub(c0.cq) as f64 * tick_ms,
        switches: c1.switches.saturating_sub(c0.switches),
    })
}

fn spawn(
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|e| format!("start thread {name}: {e}"))
}

/// CPU ticks of the process and of its gRPC completion-queue threads, and context switches.
struct Sample {
    total: u64,
    cq: u64,
    switches: u64,
}

fn sample() -> Result<Sample, String> {
    let stat = std::fs::read_to_string("/proc/self/stat")
        .map_err(|e| format!("read /proc/self/stat: {e}"))?;
    let total = process::stat_ticks(&stat).ok_or("malformed /proc/self/stat")?;
    let (mut cq, mut switches) = (0, 0);
    let tasks =
        std::fs::read_dir("/proc/self/task").map_err(|e| format!("read /proc/self/task: {e}"))?;
    for task in tasks.flatten() {
        let path = task.path();
        // A thread may end between the listing and the read: it then simply counts as gone.
        if let Ok(s) = std::fs::read_to_string(path.join("stat")) {
            let comm = s
                .find('(')
                .zip(s.rfind(')'))
                .map(|(a, b)| &s[a + 1..b])
                .unwrap_or("");
            if comm.starts_with("grpc-") {
                cq += process::stat_ticks(&s).unwrap_or(0);
            }
        }
        if let Ok(s) = std::fs::read_to_string(path.join("status")) {
            switches += s
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(Sample {
        total,
        cq,
        switches,
    })
}
