//! The volume-count bench's report: four Markdown tables (memory and start-up, one full
//! sweep, idle, per volume above an empty cluster), the VmRSS slope per volume, GetVolume
//! concurrency and the binary's size.

use std::collections::BTreeMap;
use std::time::Duration;

use super::concurrency::Concurrency;
use super::{ModeArg, Opts, Row};

pub(super) fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub(super) fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

pub(super) fn per_hour(count: usize, window: Duration) -> String {
    if window.is_zero() {
        return "-".into();
    }
    format!("{:.0}", count as f64 * 3600.0 / window.as_secs_f64())
}

pub(super) fn print_report(
    o: &Opts,
    rows: &[Row],
    empty: &[(ModeArg, (u64, u64))],
    conc: Option<&Concurrency>,
    size: (u64, Option<u64>),
) {
    println!(
        "Sidecar flags: --leader-election, --kube-api-qps={} --kube-api-burst={}; environment MALLOC_ARENA_MAX={}; driver page size {}; {}; GetVolume mode at {} checks/s (--monitor-interval = volumes / rate, at least 2 s).",
        o.qps,
        o.burst,
        o.arena_max.as_deref().unwrap_or("(unset)"),
        if o.page_size == 0 { "unlimited".to_string() } else { o.page_size.to_string() },
        if o.healthy { "no volume abnormal (--healthy: a sweep after the first changes nothing)" } else { "1% of volumes abnormal" },
        o.get_rate
    );
    println!(
        "Noise = {} unrelated Pods + {} unrelated Events in the API server.\n",
        o.noise_objects, o.noise_objects
    );
    println!("### Memory and start-up\n");
    println!("| volumes | mode | noise | VmRSS after 1st sweep MiB | VmRSS steady MiB | VmHWM MiB | start-up to 1st completed sweep s | cluster populate s |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            r.volumes,
            r.mode.name(),
            if r.noise { "yes" } else { "no" },
            mib(r.rss_after_first_kib),
            mib(r.rss_kib),
            mib(r.hwm_kib),
            secs(r.startup),
            r.populate.as_secs_f64(),
        );
    }
    println!("\n### One full sweep (second sweep / second round of checks)\n");
    println!("| volumes | mode | noise | interval s | abnormal | driver pages | wall s | CPU s (user+sys) | API requests | of which event writes | PVC status writes | lease, watch, other | bytes |");
    println!("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let t = &r.sweep_traffic;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.volumes,
            r.mode.name(),
            if r.noise { "yes" } else { "no" },
            secs(r.interval),
            r.abnormal,
            if r.mode.is_list() {
                r.pages.to_string()
            } else {
                "-".into()
            },
            secs(r.sweep_wall),
            secs(r.sweep_cpu),
            t.requests,
            t.event_writes,
            t.status_writes,
            t.other + t.lease + t.watch,
            t.bytes
        );
    }
    println!("\n### Idle (ListVolumes: between two sweeps; GetVolume: checks never stop, so this is steady checking)\n");
    println!("| volumes | mode | noise | window s | CPU s in window | requests in window (lease / watch / event writes / other) | bytes in window | requests per hour | bytes per hour | other requests per hour |");
    println!("|---:|---|---|---:|---:|---|---:|---:|---:|---:|");
    for r in rows {
        let t = &r.idle_traffic;
        println!(
            "| {} | {} | {} | {} | {} | {} / {} / {} / {} | {} | {} | {} | {} |",
            r.volumes,
            r.mode.name(),
            if r.noise { "yes" } else { "no" },
            secs(r.idle_window),
            secs(r.idle_cpu),
            t.lease,
            t.watch,
            t.event_writes,
            t.other,
            t.bytes,
            per_hour(t.requests, r.idle_window),
            per_hour(t.bytes, r.idle_window),
            per_hour(t.other, r.idle_window),
        );
    }
    // Bytes per volume: the slope of steady RSS between the smallest and the largest count
    // (ListVolumes mode, no noise), so the fixed cost of the process cancels out.
    let mut by_n: BTreeMap<usize, u64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.mode == ModeArg::List && !r.noise) {
        by_n.insert(r.volumes, r.rss_kib);
    }
    if let (Some((&n0, &r0)), Some((&n1, &r1))) = (by_n.iter().next(), by_n.iter().next_back()) {
        if n1 > n0 {
            let per = (r1 as f64 - r0 as f64) * 1024.0 / (n1 - n0) as f64;
            println!(
                "\nMemory per volume (PV + PVC + state + metric series), ListVolumes mode: {per:.0} bytes (VmRSS slope between {n0} and {n1} volumes)"
            );
        }
    }
    println!("\n### Per volume: memory above the same binary in an empty cluster (same mode, same run), and sweep CPU\n");
    println!("| volumes | mode | noise | empty cluster VmRSS / VmHWM MiB | steady VmRSS per volume, bytes | VmHWM per volume, bytes | sweep CPU µs per volume |");
    println!("|---:|---|---|---:|---:|---:|---:|");
    for r in rows {
        let Some((_, (e_rss, e_hwm))) = empty.iter().find(|(m, _)| *m == r.mode) else {
            continue;
        };
        let per = |kib: u64, base: u64| (kib as f64 - base as f64) * 1024.0 / r.volumes as f64;
        println!(
            "| {} | {} | {} | {} / {} | {:.0} | {:.0} | {:.2} |",
            r.volumes,
            r.mode.name(),
            if r.noise { "yes" } else { "no" },
            mib(*e_rss),
            mib(*e_hwm),
            per(r.rss_kib, *e_rss),
            per(r.hwm_kib, *e_hwm),
            r.sweep_cpu.as_secs_f64() * 1e6 / r.volumes as f64
        );
    }
    if let Some(c) = conc {
        println!(
            "\nGetVolume concurrency: {} volumes, --worker-threads={}, driver latency {:?}, --monitor-interval=1s (demand above capacity): max in flight {}, mean in flight {:.2} over {:?} ({} calls)",
            c.volumes, c.workers, c.latency, c.max_in_flight, c.mean_in_flight, c.window, c.calls
        );
    }
    print_binary_size(size);
}

/// The binary's size as built and stripped.
pub(super) fn print_binary_size(size: (u64, Option<u64>)) {
    println!(
        "\nBinary: {} bytes as built ({:.1} MiB); stripped copy: {}",
        size.0,
        size.0 as f64 / 1048576.0,
        match size.1 {
            Some(s) => format!("{s} bytes ({:.1} MiB)", s as f64 / 1048576.0),
            None => "strip failed".into(),
        }
    );
}
