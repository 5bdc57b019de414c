//! Logging: the global `log` logger (env_logger's Builder with a klog-like text line or a
//! component-base-like JSON line per record, on stderr), the `-v` verbosity, and the [`vlog!`]
//! macro that reproduces upstream's `V(n)` messages.
//!
//! Verbosity maps onto `log` levels: 0-3 → Info, 4 → Debug, 5+ → Trace; `vlog!(n, ...)` logs
//! at Info when `-v >= n`. Structured key/values use the `log` crate's `kv` syntax:
//! `log::info!(address = addr.as_str(); "ServeMux listening")`, and an error as
//! `log::error!(err:% = e; "Failed to connect to the CSI driver")` (printed as `err=...`). The
//! key `v` is reserved: it carries a `vlog!` verbosity into the JSON `"v"` field.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::SystemTime;

use log::{Level, LevelFilter};

use crate::config::{LogConfig, LogFormat};
use crate::timeutil::{rfc3339_micros, unix_nanos};

static VERBOSITY: AtomicU8 = AtomicU8::new(0);

/// The `-v` level in force (0 until [`init`]).
pub fn verbosity() -> u8 {
    VERBOSITY.load(Ordering::Relaxed)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A global logger was installed before (by an earlier `init` or another library).
    AlreadyInstalled(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AlreadyInstalled(e) => write!(f, "cannot install the logger: {e}"),
        }
    }
}

impl std::error::Error for Error {}

/// The `log` level filter for a `-v` verbosity.
pub fn level_for(verbosity: u8) -> LevelFilter {
    match verbosity {
        0..=3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Crates whose records follow `-v` fully. Everything else (ureq, rustls, grpcio) is capped at
/// Info: their debug and trace output is noise for an operator and can include request details.
const OWN_CRATES: &[&str] = &["healthmon", "csi_external_health_monitor_controller"];

fn own_crate() -> &'static str {
    let path = module_path!();
    path.split("::").next().unwrap_or(path)
}

/// Installs the global logger: stderr, one line per record, formatted per `cfg.format`.
pub fn init(cfg: &LogConfig) -> Result<(), Error> {
    VERBOSITY.store(cfg.verbosity, Ordering::Relaxed);
    let level = level_for(cfg.verbosity);
    let format = cfg.format;
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level.min(LevelFilter::Info));
    for name in OWN_CRATES.iter().copied().chain([own_crate()]) {
        builder.filter_module(name, level);
    }
    builder.target(env_logger::Target::Stderr);
    builder.format(move |buf, record| {
        let line = render(format, record, SystemTime::now());
        writeln!(buf, "{line}")
    });
    builder
        .try_init()
        .map_err(|e| Error::AlreadyInstalled(e.to_string()))
}

/// Logs at Info when the verbosity is at least `level`, like klog's `V(level).Info`. The level
/// travels as the reserved key `v`, so JSON lines say `"v":level`. Key/values go before a `;`:
/// `vlog!(2, driver = name.as_str(); "CSI driver name")`.
#[macro_export]
macro_rules! vlog {
    ($level:expr, $($key:ident $(:$capture:tt)? = $value:expr),+ ; $($arg:tt)+) => {
        if $crate::logging::verbosity() >= $level {
            ::log::info!(v = ($level) as u8, $($key $(:$capture)? = $value),+ ; $($arg)+);
        }
    };
    ($level:expr, $($arg:tt)+) => {
        if $crate::logging::verbosity() >= $level {
            ::log::info!(v = ($level) as u8; $($arg)+);
        }
    };
}

/// Everything one log line is made of, taken out of a `log::Record` so the formatters are pure.
#[derive(Debug, Clone, PartialEq)]
pub struct LineParts<'a> {
    pub level: Level,
    pub time: SystemTime,
    pub pid: u32,
    /// Source path as `file!()` gives it.
    pub file: &'a str,
    pub line: u32,
    pub msg: &'a str,
    /// klog verbosity of the message: the `vlog!` level, 4 for debug, 5 for trace, else 0.
    pub v: u8,
    /// Structured key/values in call order, without the reserved `v`.
    pub kvs: &'a [(String, serde_json::Value)],
}

fn render(format: LogFormat, record: &log::Record<'_>, now: SystemTime) -> String {
    let mut collect = Collect::default();
    // A visitor that never fails; an error from the source only loses key/values.
    let _ = record.key_values().visit(&mut collect);
    let v = collect.v.unwrap_or(match record.level() {
        Level::Debug => 4,
        Level::Trace => 5,
        _ => 0,
    });
    let mut msg = record.args().to_string();
    if format == LogFormat::Json {
        // Call sites write klog's key/values into the message text; JSON carries them as
        // fields, as component-base's JSON logger does.
        if let Some((head, pairs)) = split_message_kvs(&msg) {
            collect.kvs.extend(pairs);
            msg = head.to_string();
        }
    }
    let parts = LineParts {
        level: record.level(),
        time: now,
        pid: std::process::id(),
        file: record.file().unwrap_or("???"),
        line: record.line().unwrap_or(0),
        msg: &msg,
        v,
        kvs: &collect.kvs,
    };
    match format {
        LogFormat::Text => format_text(&parts),
        LogFormat::Json => format_json(&parts),
    }
}

#[derive(Default)]
struct Collect {
    v: Option<u8>,
    kvs: Vec<(String, serde_json::Value)>,
}

impl<'kvs> log::kv::VisitSource<'kvs> for Collect {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        if key.as_str() == "v" {
            if let Some(v) = value.to_u64() {
                self.v = Some(u8::try_from(v).unwrap_or(u8::MAX));
                return Ok(());
            }
        }
        self.kvs
            .push((key.as_str().to_string(), json_value(&value)));
        Ok(())
    }
}

/// Keeps numbers and booleans typed in JSON; everything else becomes its display string.
fn json_value(value: &log::kv::Value<'_>) -> serde_json::Value {
    if let Some(b) = value.to_bool() {
        serde_json::Value::Bool(b)
    } else if let Some(i) = value.to_i64() {
        serde_json::Value::from(i)
    } else if let Some(u) = value.to_u64() {
        serde_json::Value::from(u)
    } else if let Some(n) = value.to_f64().and_then(serde_json::Number::from_f64) {
        serde_json::Value::Number(n)
    } else if let Some(s) = value.to_borrowed_str() {
        serde_json::Value::String(s.to_string())
    } else {
        serde_json::Value::String(value.to_string())
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// `dir/file.rs`, like zap's short caller.
fn short_caller(path: &str) -> &str {
    let mut seps = path.rmatch_indices(['/', '\\']);
    match (seps.next(), seps.next()) {
        (Some(_), Some((i, _))) => &path[i + 1..],
        _ => path,
    }
}

fn is_key_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The length of `key=` at the start of `s`, if it starts so.
fn key_len(s: &[u8]) -> Option<usize> {
    if !s.first().copied().is_some_and(is_key_start) {
        return None;
    }
    let n = s.iter().take_while(|c| is_key_char(**c)).count();
    (s.get(n) == Some(&b'=')).then_some(n)
}

/// Parses `k1="v 1" k2=v2 ...` to its end; None unless all of `s` is such pairs. A quoted value
/// ends at the first `"` followed by the end or by ` key=`, so a quote inside an error text
/// does not cut it short. Unquoted numbers and booleans stay typed.
fn parse_kv_tail(s: &str) -> Option<Vec<(String, serde_json::Value)>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let k = key_len(&b[i..])?;
        let key = &s[i..i + k];
        i += k + 1;
        let (value, next) = if b.get(i) == Some(&b'"') {
            let start = i + 1;
            let end = (start..b.len()).find(|&j| {
                b[j] == b'"'
                    && (j + 1 == b.len() || (b[j + 1] == b' ' && key_len(&b[j + 2..]).is_some()))
            })?;
            (
                serde_json::Value::String(s[start..end].to_string()),
                end + 1,
            )
        } else {
            let end = (i..b.len()).find(|&j| b[j] == b' ').unwrap_or(b.len());
            let raw = &s[i..end];
            let v = if let Ok(n) = raw.parse::<i64>() {
                serde_json::Value::from(n)
            } else if let Ok(t) = raw.parse::<bool>() {
                serde_json::Value::Bool(t)
            } else {
                serde_json::Value::String(raw.to_string())
            };
            (v, end)
        };
        out.push((key.to_string(), value));
        i = next;
        if i < b.len() {
            if b[i] != b' ' {
                return None;
            }
            i += 1;
        }
    }
    Some(out)
}

/// Splits `Message key="value" n=3` into the message and its key/values (the earliest split
/// whose whole tail is pairs); None when there are none.
pub fn split_message_kvs(msg: &str) -> Option<(&str, Vec<(String, serde_json::Value)>)> {
    let b = msg.as_bytes();
    (1..b.len())
        .filter(|&i| b[i - 1] == b' ' && key_len(&b[i..]).is_some())
        .find_map(|i| {
            let pairs = parse_kv_tail(&msg[i..])?;
            Some((&msg[..i - 1], pairs))
        })
}

/// klog's header and message: `I1127 18:34:39.123456   12345 file.rs:42] message key="value"`.
/// Time is UTC (klog uses the local zone, which is UTC in a container); debug and trace use
/// klog's `I`, since klog has no such severities.
pub fn format_text(p: &LineParts<'_>) -> String {
    let letter = match p.level {
        Level::Error => 'E',
        Level::Warn => 'W',
        _ => 'I',
    };
    let stamp = rfc3339_micros(p.time);
    let (date, clock) = stamp.split_once('T').unwrap_or((stamp.as_str(), ""));
    let month_day = date
        .get(date.len().saturating_sub(5)..)
        .unwrap_or(date)
        .replace('-', "");
    let clock = clock.trim_end_matches('Z');
    let mut out = format!(
        "{letter}{month_day} {clock} {:>7} {}:{}] {}",
        p.pid,
        base_name(p.file),
        p.line,
        p.msg
    );
    for (k, v) in p.kvs {
        out.push(' ');
        out.push_str(k);
        out.push('=');
        match v {
            serde_json::Value::String(s) => out.push_str(&quote(s)),
            other => out.push_str(&other.to_string()),
        }
    }
    out
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// component-base's JSON line: `{"ts":<unix ms>,"caller":"dir/file.rs:42","msg":"...","v":0}`
/// plus the key/values; a key `err` or `error` becomes `"err"` as in klog's `Error(err, ...)`.
/// Built by hand so the field order is stable; every string goes through serde_json.
pub fn format_json(p: &LineParts<'_>) -> String {
    let ts_ms = unix_nanos(p.time) as f64 / 1e6;
    let caller = format!("{}:{}", short_caller(p.file), p.line);
    let v = match p.level {
        // Warnings and errors are not verbosity-gated.
        Level::Error | Level::Warn => 0,
        _ => p.v,
    };
    let mut out = String::with_capacity(96 + p.msg.len());
    out.push_str("{\"ts\":");
    out.push_str(&serde_json::to_string(&ts_ms).unwrap_or_else(|_| "0".into()));
    out.push_str(",\"caller\":");
    out.push_str(&quote(&caller));
    out.push_str(",\"msg\":");
    out.push_str(&quote(p.msg));
    out.push_str(",\"v\":");
    out.push_str(&v.to_string());
    for (k, val) in p.kvs {
        let key = if k == "error" { "err" } else { k.as_str() };
        out.push(',');
        out.push_str(&quote(key));
        out.push(':');
        out.push_str(&val.to_string());
    }
    out.push('}');
    out
}

/// How often a log line that can repeat for every volume of a sweep is written at most
/// (DESIGN §2.9: upstream writes one line per dropped Event).
pub const THROTTLE_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Rate limit for one kind of log line that can repeat thousands of times per sweep (a dropped
/// Event, a failed PVC lookup, a rejected write): the first occurrence is logged, then at most
/// one line per period, carrying how many occurrences it stands for.
#[derive(Debug)]
pub struct Throttle {
    period: std::time::Duration,
    state: std::sync::Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    last_line: Option<std::time::Instant>,
    since: u64,
}

impl Throttle {
    pub fn new(period: std::time::Duration) -> Throttle {
        Throttle {
            period,
            state: std::sync::Mutex::new(ThrottleState::default()),
        }
    }

    /// Count one occurrence at `now`. `Some(n)`: write the line now, for `n` occurrences (this
    /// one and those held back since the last line); `None`: counted, not logged.
    pub fn hit(&self, now: std::time::Instant) -> Option<u64> {
        let mut s = crate::sync::lock(&self.state);
        s.since += 1;
        if s.last_line
            .is_some_and(|t| now.saturating_duration_since(t) < self.period)
        {
            return None;
        }
        s.last_line = Some(now);
        Some(std::mem::take(&mut s.since))
    }
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::new(THROTTLE_PERIOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    // 2024-11-27T18:34:39.123456Z
    fn t() -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(1_732_732_479_123_456)
    }

    fn parts<'a>(
        level: Level,
        msg: &'a str,
        kvs: &'a [(String, serde_json::Value)],
    ) -> LineParts<'a> {
        LineParts {
            level,
            time: t(),
            pid: 12345,
            file: "src/monitor/list.rs",
            line: 42,
            msg,
            v: 0,
            kvs,
        }
    }

    fn kv(k: &str, v: serde_json::Value) -> (String, serde_json::Value) {
        (k.to_string(), v)
    }

    #[test]
    fn verbosity_maps_to_levels() {
        let table = [
            (0, LevelFilter::Info),
            (1, LevelFilter::Info),
            (2, LevelFilter::Info),
            (3, LevelFilter::Info),
            (4, LevelFilter::Debug),
            (5, LevelFilter::Trace),
            (6, LevelFilter::Trace),
            (255, LevelFilter::Trace),
        ];
        for (v, want) in table {
            assert_eq!(level_for(v), want, "-v={v}");
        }
    }

    #[test]
    fn text_lines_look_like_klog() {
        let kvs = [
            kv("address", serde_json::json!("unix:///csi/csi.sock")),
            kv("count", serde_json::json!(3)),
        ];
        let cases = [
            (Level::Info, "I1127 18:34:39.123456   12345 list.rs:42] Still connecting address=\"unix:///csi/csi.sock\" count=3"),
            (Level::Warn, "W1127 18:34:39.123456   12345 list.rs:42] Still connecting address=\"unix:///csi/csi.sock\" count=3"),
            (Level::Error, "E1127 18:34:39.123456   12345 list.rs:42] Still connecting address=\"unix:///csi/csi.sock\" count=3"),
            (Level::Debug, "I1127 18:34:39.123456   12345 list.rs:42] Still connecting address=\"unix:///csi/csi.sock\" count=3"),
            (Level::Trace, "I1127 18:34:39.123456   12345 list.rs:42] Still connecting address=\"unix:///csi/csi.sock\" count=3"),
        ];
        for (level, want) in cases {
            assert_eq!(format_text(&parts(level, "Still connecting", &kvs)), want);
        }
        let plain = format_text(&parts(Level::Info, "Version", &[]));
        assert_eq!(plain, "I1127 18:34:39.123456   12345 list.rs:42] Version");
        // Quotes and newlines in values stay on one line.
        let odd = [kv("err", serde_json::json!("a \"b\"\nc"))];
        let line = format_text(&parts(Level::Error, "Lost connection", &odd));
        assert!(
            line.ends_with(r#"Lost connection err="a \"b\"\nc""#),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn text_time_pads_month_day_and_micros() {
        let mut p = parts(Level::Info, "m", &[]);
        p.time = UNIX_EPOCH + Duration::from_secs(1_704_164_645); // 2024-01-02T03:04:05Z
        p.pid = 7;
        assert_eq!(
            format_text(&p),
            "I0102 03:04:05.000000       7 list.rs:42] m"
        );
    }

    #[test]
    fn json_lines_round_trip() {
        let kvs = [
            kv("error", serde_json::json!("rpc error: code = Unavailable")),
            kv("driver", serde_json::json!("hostpath.csi.k8s.io")),
            kv("ready", serde_json::json!(false)),
        ];
        let mut p = parts(Level::Info, "Probe \"failed\"\n", &kvs);
        p.v = 2;
        let line = format_json(&p);
        assert!(!line.contains('\n'));
        let j: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(j["ts"].as_f64(), Some(1_732_732_479_123.456));
        assert_eq!(j["caller"], "monitor/list.rs:42");
        assert_eq!(j["msg"], "Probe \"failed\"\n");
        assert_eq!(j["v"], 2);
        assert_eq!(j["err"], "rpc error: code = Unavailable");
        assert_eq!(j["driver"], "hostpath.csi.k8s.io");
        assert_eq!(j["ready"], false);
        assert!(
            line.starts_with("{\"ts\":1732732479123.456,\"caller\":"),
            "{line}"
        );
    }

    #[test]
    fn message_key_values_are_split_for_json() {
        type Split<'a> = Option<(&'a str, Vec<(&'a str, serde_json::Value)>)>;
        let cases: Vec<(&str, Split)> = vec![
            (
                "Version version=\"0.1.0\"",
                Some(("Version", vec![("version", serde_json::json!("0.1.0"))])),
            ),
            (
                "Failed to renew lease lease=\"ns/l\" err=\"timed out waiting for the condition\"",
                Some((
                    "Failed to renew lease",
                    vec![
                        ("lease", serde_json::json!("ns/l")),
                        (
                            "err",
                            serde_json::json!("timed out waiting for the condition"),
                        ),
                    ],
                )),
            ),
            (
                "ListVolumes sweep done pages=2 volumes=3 ok=true duration=\"1.2ms\"",
                Some((
                    "ListVolumes sweep done",
                    vec![
                        ("pages", serde_json::json!(2)),
                        ("volumes", serde_json::json!(3)),
                        ("ok", serde_json::json!(true)),
                        ("duration", serde_json::json!("1.2ms")),
                    ],
                )),
            ),
            // A quote inside an error text does not end the value.
            (
                "Fatal err=\"GET /x: \"pv-1\" not found\" pv=\"pv-1\"",
                Some((
                    "Fatal",
                    vec![
                        ("err", serde_json::json!("GET /x: \"pv-1\" not found")),
                        ("pv", serde_json::json!("pv-1")),
                    ],
                )),
            ),
            ("No pairs here", None),
            ("Option --worker-threads=0 is bad", None),
            ("x=1 at the start", None),
            ("Unterminated err=\"oops", None),
            ("Trailing junk a=1 b", None),
        ];
        for (msg, want) in cases {
            let got = split_message_kvs(msg);
            let want = want.map(|(m, kvs)| {
                (
                    m,
                    kvs.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Vec<_>>(),
                )
            });
            assert_eq!(got, want, "{msg}");
        }
    }

    #[test]
    fn json_errors_and_warnings_have_v_zero() {
        for level in [Level::Error, Level::Warn] {
            let mut p = parts(level, "x", &[]);
            p.v = 5;
            let j: serde_json::Value = serde_json::from_str(&format_json(&p)).unwrap_or_default();
            assert_eq!(j["v"], 0, "{level}");
            assert!(j.get("err").is_none());
        }
    }

    #[test]
    fn records_render_with_key_values_and_vlog_level() {
        let kvs = [
            ("v", log::kv::Value::from(2u8)),
            ("driver", log::kv::Value::from("d")),
        ];
        let args = format_args!("CSI driver name");
        let record = log::Record::builder()
            .level(Level::Info)
            .args(args)
            .file(Some("src/main.rs"))
            .line(Some(9))
            .key_values(&kvs)
            .build();
        let line = render(LogFormat::Json, &record, t());
        let j: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        assert_eq!(j["v"], 2);
        assert_eq!(j["driver"], "d");
        assert_eq!(j["msg"], "CSI driver name");
        assert_eq!(j["caller"], "src/main.rs:9");
        let text = render(LogFormat::Text, &record, t());
        assert!(
            text.ends_with("main.rs:9] CSI driver name driver=\"d\""),
            "{text}"
        );

        let debug = log::Record::builder()
            .level(Level::Debug)
            .args(format_args!("Started PV processing"))
            .build();
        let j: serde_json::Value =
            serde_json::from_str(&render(LogFormat::Json, &debug, t())).unwrap_or_default();
        assert_eq!(j["v"], 4);
        assert_eq!(j["caller"], "???:0");
    }

    #[test]
    fn init_installs_once_and_vlog_gates_on_verbosity() {
        let cfg = LogConfig {
            verbosity: 3,
            format: LogFormat::Json,
        };
        // The first call may lose to a logger another test installed; the second always loses.
        let _ = init(&cfg);
        assert!(matches!(init(&cfg), Err(Error::AlreadyInstalled(_))));
        assert_eq!(verbosity(), 3);
        let mut evaluated = 0;
        crate::vlog!(4, "not shown {}", {
            evaluated += 1;
            evaluated
        });
        crate::vlog!(5, driver = "d"; "not shown {}", {
            evaluated += 1;
            evaluated
        });
        assert_eq!(
            evaluated, 0,
            "arguments of a suppressed vlog! are not evaluated"
        );
        crate::vlog!(2, driver = "d", count = 2; "CSI driver name");
        crate::vlog!(2, "CSI driver name {}", "d");
    }

    #[test]
    fn callers_are_shortened() {
        assert_eq!(base_name("src/kube/client.rs"), "client.rs");
        assert_eq!(base_name("main.rs"), "main.rs");
        assert_eq!(short_caller("src/kube/client.rs"), "kube/client.rs");
        assert_eq!(short_caller("src/main.rs"), "src/main.rs");
        assert_eq!(short_caller("main.rs"), "main.rs");
    }

    #[test]
    fn throttle_logs_once_per_period_with_the_count() {
        use std::time::{Duration, Instant};
        let t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.hit(t0), Some(1), "the first occurrence is logged at once");
        for i in 1..=999 {
            assert_eq!(t.hit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.hit(t0 + Duration::from_secs(9)), None);
        // The next line stands for everything since the last one.
        assert_eq!(t.hit(t0 + Duration::from_secs(10)), Some(1001));
        assert_eq!(t.hit(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.hit(t0 + Duration::from_secs(25)), Some(2));
    }
}
