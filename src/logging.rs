//! Logging: the global `log` logger (env_logger's Builder with a klog-like text line or a
//! component-base-like JSON line per record, on stderr), the `-v` verbosity, and the [`vlog!`]
//! macro that reproduces upstream's `V(n)` messages.
//!
//! Verbosity maps onto `log` levels: 0-3 → Info, 4 → Debug, 5+ → Trace; `vlog!(n, ...)` logs
//! at Info when `-v >= n`. Structured key/values use the `log` crate's `kv` syntax:
//! `log::info!(address:% = addr; "ServeMux listening")`, and an error as
//! `log::error!(err:% = e; "Failed to connect to the CSI driver")`. The text line writes them
//! after the message as klog does (`ServeMux listening address="[::]:8080"`), the JSON line as
//! typed fields; neither reads anything back out of the message. What is quoted follows the
//! kind of value passed, see [`Field`] for which capture reproduces which old format string.
//! The key `v` is reserved: it carries a `vlog!` verbosity into the JSON `"v"` field.

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
/// `vlog!(2, driver:% = name; "CSI driver name")`.
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
    pub kvs: &'a [(String, Field)],
}

/// One key/value's value as both formats write it. The kind comes from how the call site
/// passed it, never from its text, and each kind is written as one shape of the old format
/// strings wrote it, so the text line is unchanged byte for byte:
///
/// | old format string | call site now           | text line      | JSON   |
/// |-------------------|------------------------|----------------|--------|
/// | `k={}` (a number) | `k = n`                | `k=3`          | number |
/// | `k={}` (a bool)   | `k = b`                | `k=true`       | bool   |
/// | `k=\"{}\"`        | `k:% = v`              | `k="v"`        | string |
/// | `k=\"{:?}\"`      | `k:? = v`              | `k="1.2ms"`    | string |
/// | `k={:?}` (a str)  | `k = s` (`&str`)       | `k="a \"b\""`  | string |
/// | `k={}` (a word)   | `k:% = Bare(w)`        | `k=Warning`    | string |
///
/// The JSON line is the exact one: its strings are the values as they were. In the text line
/// only a `&str` value is escaped (Rust's `{:?}`); a `:%`/`:?` capture is its text between
/// quotes, unescaped, as the old `\"{}\"` wrote it, so an error text with quotes still reads
/// as it always did.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// An integer or a finite float, as its decimal text.
    Number(String),
    Bool(bool),
    /// A `&str` (or `char`) value: quoted and escaped as `{:?}` writes it.
    Str(String),
    /// A `:%` or `:?` capture: its text between quotes, unescaped.
    Text(String),
    /// A value wrapped in [`Bare`]: written bare when it is a plain word ([`is_bare_word`]),
    /// else as [`Field::Str`] (never so at today's call sites: they pass closed sets of words).
    Bare(String),
    /// `x = ()`: `null` in both.
    Null,
}

impl Field {
    /// How the text line writes the value after `key=`.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Field::Number(n) => n.as_str().into(),
            Field::Bool(b) => if *b { "true" } else { "false" }.into(),
            Field::Bare(s) if is_bare_word(s) => s.as_str().into(),
            Field::Str(s) | Field::Bare(s) => quote_text(s).into(),
            Field::Text(s) => format!("\"{s}\"").into(),
            Field::Null => "null".into(),
        }
    }

    /// How the JSON line writes the value.
    pub fn json(&self) -> String {
        match self {
            Field::Number(n) => n.clone(),
            Field::Bool(b) => b.to_string(),
            Field::Str(s) | Field::Text(s) | Field::Bare(s) => quote(s),
            Field::Null => "null".to_string(),
        }
    }
}

thread_local! {
    /// Set by [`Bare`]'s `Display`, so the key/value visitor learns that the value it is
    /// formatting asked to be written bare (a `log::kv::Value` does not say what it wraps).
    static BARE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks a key/value as a word the text line writes without quotes, as an old format string
/// wrote `type={}`: `log::error!(type:% = Bare(&e.event_type); "...")`. Only for values from
/// a closed set of words (an Event type, a drop reason); anything else is quoted anyway.
#[derive(Debug, Clone, Copy)]
pub struct Bare<T>(pub T);

impl<T: fmt::Display> fmt::Display for Bare<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        BARE.with(|b| b.set(true));
        self.0.fmt(f)
    }
}

/// A word the text line can write bare without being misread: a letter or `_` first, then
/// letters, digits, `_`, `-` and `.`, and not `true`, `false` or `null` (which read as typed).
pub fn is_bare_word(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !matches!(s, "true" | "false" | "null")
}

/// A `&str` value in the text line: quoted and escaped as the old `{:?}` format strings wrote
/// it, so it reads back unambiguously whatever it holds.
pub fn quote_text(s: &str) -> String {
    format!("{s:?}")
}

/// One record as one line of `format`, stamped `now`.
pub(crate) fn render(format: LogFormat, record: &log::Record<'_>, now: SystemTime) -> String {
    let mut collect = Collect::default();
    // A visitor that never fails; an error from the source only loses key/values.
    let _ = record.key_values().visit(&mut collect);
    let v = collect.v.unwrap_or(match record.level() {
        Level::Debug => 4,
        Level::Trace => 5,
        _ => 0,
    });
    let msg = record.args().to_string();
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
    kvs: Vec<(String, Field)>,
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
        self.kvs.push((key.as_str().to_string(), field(&value)));
        Ok(())
    }
}

/// The [`Field`] a key/value's value becomes, by the kind of value the call site passed.
fn field(value: &log::kv::Value<'_>) -> Field {
    let mut out = FieldOf(Field::Null);
    // FieldOf never fails.
    let _ = value.visit(&mut out);
    out.0
}

struct FieldOf(Field);

impl<'v> log::kv::VisitValue<'v> for FieldOf {
    fn visit_any(&mut self, value: log::kv::Value<'_>) -> Result<(), log::kv::Error> {
        // A `:%` or `:?` capture: its text, bare only if it went through `Bare`.
        BARE.with(|b| b.set(false));
        let text = value.to_string();
        self.0 = if BARE.with(|b| b.replace(false)) {
            Field::Bare(text)
        } else {
            Field::Text(text)
        };
        Ok(())
    }

    fn visit_null(&mut self) -> Result<(), log::kv::Error> {
        self.0 = Field::Null;
        Ok(())
    }

    fn visit_u64(&mut self, value: u64) -> Result<(), log::kv::Error> {
        self.0 = Field::Number(value.to_string());
        Ok(())
    }

    fn visit_i64(&mut self, value: i64) -> Result<(), log::kv::Error> {
        self.0 = Field::Number(value.to_string());
        Ok(())
    }

    fn visit_u128(&mut self, value: u128) -> Result<(), log::kv::Error> {
        self.0 = Field::Number(value.to_string());
        Ok(())
    }

    fn visit_i128(&mut self, value: i128) -> Result<(), log::kv::Error> {
        self.0 = Field::Number(value.to_string());
        Ok(())
    }

    fn visit_f64(&mut self, value: f64) -> Result<(), log::kv::Error> {
        // Rust writes a finite float as plain decimal digits, a valid JSON number; NaN and the
        // infinities are none, so they are text.
        self.0 = if value.is_finite() {
            Field::Number(value.to_string())
        } else {
            Field::Text(value.to_string())
        };
        Ok(())
    }

    fn visit_bool(&mut self, value: bool) -> Result<(), log::kv::Error> {
        self.0 = Field::Bool(value);
        Ok(())
    }

    fn visit_str(&mut self, value: &str) -> Result<(), log::kv::Error> {
        self.0 = Field::Str(value.to_string());
        Ok(())
    }

    fn visit_char(&mut self, value: char) -> Result<(), log::kv::Error> {
        self.0 = Field::Str(value.to_string());
        Ok(())
    }
}

/// Logs `msg` with key/values known only at run time (an error that carries its own fields,
/// such as `app::Fatal`), as a macro at the caller's line would; every value is written as a
/// `:%` capture (`k="v"`, unescaped).
#[track_caller]
pub fn log_fields(level: Level, msg: &str, fields: &[(&'static str, String)]) {
    log_fields_to(log::logger(), level, msg, fields);
}

#[track_caller]
fn log_fields_to(
    logger: &dyn log::Log,
    level: Level,
    msg: &str,
    fields: &[(&'static str, String)],
) {
    let target = module_path!();
    let metadata = log::Metadata::builder().level(level).target(target).build();
    if level > log::max_level() || !logger.enabled(&metadata) {
        return;
    }
    let at = std::panic::Location::caller();
    let kvs: Vec<(&str, log::kv::Value)> = fields
        .iter()
        .map(|(k, v)| (*k, log::kv::Value::from_display(v)))
        .collect();
    logger.log(
        &log::Record::builder()
            .metadata(metadata)
            .module_path(Some(target))
            .file(Some(at.file()))
            .line(Some(at.line()))
            .args(format_args!("{msg}"))
            .key_values(&kvs.as_slice())
            .build(),
    );
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
        out.push_str(&v.text());
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
        out.push_str(&val.json());
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

    /// Count one occurrence at `now` only if no line is due for it (true); when one is due,
    /// nothing is counted (false) and the caller goes the way that writes it, through `hit`.
    pub fn hit_quiet(&self, now: std::time::Instant) -> bool {
        let mut s = crate::sync::lock(&self.state);
        let quiet = s
            .last_line
            .is_some_and(|t| now.saturating_duration_since(t) < self.period);
        if quiet {
            s.since += 1;
        }
        quiet
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

    fn parts<'a>(level: Level, msg: &'a str, kvs: &'a [(String, Field)]) -> LineParts<'a> {
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

    fn kv(k: &str, v: serde_json::Value) -> (String, Field) {
        let f = match v {
            serde_json::Value::String(s) => Field::Str(s),
            serde_json::Value::Bool(b) => Field::Bool(b),
            serde_json::Value::Number(n) => Field::Number(n.to_string()),
            other => Field::Str(other.to_string()),
        };
        (k.to_string(), f)
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

    /// A logger of its own: a test logs with `logger: &cap` and sees exactly its records,
    /// rendered both ways, whatever global logger another test installed.
    struct Capture(std::sync::Mutex<Vec<(String, serde_json::Value)>>);

    impl Capture {
        fn new() -> Capture {
            // The macros check the global maximum first; nothing in these tests is below Info.
            if log::max_level() < LevelFilter::Info {
                log::set_max_level(LevelFilter::Info);
            }
            Capture(std::sync::Mutex::new(Vec::new()))
        }

        /// Each record as (the text line after the klog header, the JSON line).
        fn take(&self) -> Vec<(String, serde_json::Value)> {
            std::mem::take(&mut *crate::sync::lock(&self.0))
        }
    }

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }

        fn log(&self, record: &log::Record<'_>) {
            let text = render(LogFormat::Text, record, t());
            let (_, tail) = text.split_once("] ").unwrap_or_else(|| panic!("{text}"));
            let json = render(LogFormat::Json, record, t());
            let j = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
            crate::sync::lock(&self.0).push((tail.to_string(), j));
        }

        fn flush(&self) {}
    }

    /// The JSON line has `ts`, `caller`, `v`, this `msg` and exactly these fields.
    fn assert_json(j: &serde_json::Value, msg: &str, fields: serde_json::Value) {
        let mut want = fields.as_object().cloned().unwrap_or_default();
        let got = j.as_object().cloned().unwrap_or_default();
        for k in ["ts", "caller", "v"] {
            assert!(got.contains_key(k), "{k} in {j}");
            want.insert(k.to_string(), got[k].clone());
        }
        want.insert("msg".to_string(), msg.into());
        assert_eq!(got, want);
    }

    /// Call-site shapes as they are written now, against the format strings they replaced:
    /// the text line is the old one byte for byte, the JSON line has the values typed.
    #[test]
    fn key_values_render_as_the_old_format_strings_did() {
        let cap = Capture::new();
        let (n, pv, ns, name) = (3u64, "pv-1", "ns", "pvc-1");
        let e = std::io::Error::other("GET /x: \"pvc-1\" not found");
        log::error!(logger: &cap, errors_since_last_line = n, pv:% = pv, pvc:% = format_args!("{ns}/{name}"), err:% = e; "Get PVC error");
        let (pages, volumes, elapsed) = (2u32, vec![1, 2, 3], Duration::from_micros(1200));
        log::info!(logger: &cap, pages = pages, volumes = volumes.len(), checked = volumes.len(), duration:? = elapsed; "{} sweep done", "ListVolumes");
        let (thread, location, message) = ("csi", "src/x.rs:1", "boom \"x\"\n\tdone");
        log::error!(logger: &cap, thread:% = thread, location:% = location, message = message; "A thread panicked");
        let (holder, seconds) = ("go-replica", 3600i32);
        log::warn!(logger: &cap, lease:% = "ns/l", holder:% = holder, leaseDurationSeconds = seconds; "Lease holder claims a longer lease than is honoured, counting {}s", 15);
        let (kind, event_type, count) = ("PersistentVolumeClaim", String::from("Warning"), 2i32);
        log::info!(logger: &cap, event:% = format_args!("{ns}/e1"), kind = kind, type:% = Bare(&event_type), count = count; "Event written");
        let ready = Some(true);
        log::info!(logger: &cap, node:% = "n1", ready:? = ready; "Node watcher tracking node");
        log::info!(logger: &cap, v = 2u8, driver:% = "d"; "CSI driver name");
        log::info!(logger: &cap, "Option --x=1 is not k=\"v\"");

        let lines = cap.take();
        let want = [
            (
                format!("Get PVC error errors_since_last_line={n} pv=\"{pv}\" pvc=\"{ns}/{name}\" err=\"{e}\""),
                "Get PVC error",
                serde_json::json!({"errors_since_last_line": 3, "pv": "pv-1", "pvc": "ns/pvc-1", "err": "GET /x: \"pvc-1\" not found"}),
            ),
            (
                format!("{} sweep done pages={pages} volumes={} checked={} duration=\"{:?}\"", "ListVolumes", volumes.len(), volumes.len(), elapsed),
                "ListVolumes sweep done",
                serde_json::json!({"pages": 2, "volumes": 3, "checked": 3, "duration": "1.2ms"}),
            ),
            (
                format!("A thread panicked thread=\"{thread}\" location=\"{location}\" message={message:?}"),
                "A thread panicked",
                serde_json::json!({"thread": "csi", "location": "src/x.rs:1", "message": "boom \"x\"\n\tdone"}),
            ),
            (
                format!("Lease holder claims a longer lease than is honoured, counting {}s lease=\"{}\" holder=\"{}\" leaseDurationSeconds={}", 15, "ns/l", holder, seconds),
                "Lease holder claims a longer lease than is honoured, counting 15s",
                serde_json::json!({"lease": "ns/l", "holder": "go-replica", "leaseDurationSeconds": 3600}),
            ),
            (
                format!("Event written event=\"{ns}/e1\" kind={kind:?} type={event_type} count={count}"),
                "Event written",
                serde_json::json!({"event": "ns/e1", "kind": "PersistentVolumeClaim", "type": "Warning", "count": 2}),
            ),
            (
                format!("Node watcher tracking node node=\"{}\" ready=\"{:?}\"", "n1", ready),
                "Node watcher tracking node",
                serde_json::json!({"node": "n1", "ready": "Some(true)"}),
            ),
            (
                "CSI driver name driver=\"d\"".to_string(),
                "CSI driver name",
                serde_json::json!({"driver": "d"}),
            ),
            // Text in the message stays message text: nothing is read back out of it.
            (
                "Option --x=1 is not k=\"v\"".to_string(),
                "Option --x=1 is not k=\"v\"",
                serde_json::json!({}),
            ),
        ];
        assert_eq!(lines.len(), want.len());
        for ((text, j), (old, msg, fields)) in lines.iter().zip(want) {
            assert_eq!(*text, old);
            assert_json(j, msg, fields);
        }
        assert_eq!(
            lines[6].1["v"], 2,
            "vlog!'s level is the JSON v, not a field"
        );
    }

    #[test]
    fn each_kind_of_value_is_written_as_its_old_format_string_did() {
        let cap = Capture::new();
        let e = std::io::Error::other("GET /x: \"pv-1\" not found\nretrying");
        let s = "a \"b\"\nc";
        log::info!(logger: &cap, n = -1i64, big = u128::MAX, f = 1.5f64, nan = f64::NAN, ok = false, c = 'x', none = (), s = s, err:% = e; "m");
        log::info!(logger: &cap, a:% = Bare("queue_full"), b:% = Bare("two words"), c:% = Bare("true"), d:% = Bare(""), e:% = Bare(3); "m");
        let lines = cap.take();
        // `{:?}` of a str is escaped; `\"{}\"` of an error is not, as the old strings wrote them.
        assert_eq!(
            lines[0].0,
            format!(
                "m n=-1 big={} f=1.5 nan=\"NaN\" ok=false c=\"x\" none=null s={s:?} err=\"{e}\"",
                u128::MAX
            )
        );
        assert_eq!(
            lines[0].0,
            format!(
                "m n=-1 big={} f=1.5 nan=\"NaN\" ok=false c=\"x\" none=null s=\"a \\\"b\\\"\\nc\" err=\"GET /x: \"pv-1\" not found\nretrying\"",
                u128::MAX
            )
        );
        let j = &lines[0].1;
        assert_eq!(j["n"], -1);
        assert_eq!(j["f"], 1.5);
        assert_eq!(j["nan"], "NaN");
        assert_eq!(j["ok"], false);
        assert_eq!(j["c"], "x");
        assert!(j["none"].is_null());
        assert_eq!(j["s"], s);
        assert_eq!(j["err"], "GET /x: \"pv-1\" not found\nretrying");
        // A word that would be misread bare (a space, a bool, nothing, a digit first) is quoted.
        assert_eq!(
            lines[1].0,
            r#"m a=queue_full b="two words" c="true" d="" e="3""#
        );
        assert_json(
            &lines[1].1,
            "m",
            serde_json::json!({"a": "queue_full", "b": "two words", "c": "true", "d": "", "e": "3"}),
        );
        // Bare applies to the value it wraps, not to the next one formatted.
        log::info!(logger: &cap, a:% = Bare("w"), b:% = "w"; "m");
        assert_eq!(cap.take()[0].0, r#"m a=w b="w""#);
    }

    #[test]
    fn run_time_fields_are_text_at_the_callers_line() {
        let cap = Capture::new();
        let fields = [
            ("address", "[::]:8080".to_string()),
            ("err", "in use".to_string()),
        ];
        let line = line!() + 1;
        log_fields_to(&cap, Level::Error, "Failed to start HTTP server", &fields);
        let lines = cap.take();
        assert_eq!(
            lines[0].0,
            r#"Failed to start HTTP server address="[::]:8080" err="in use""#
        );
        assert_json(
            &lines[0].1,
            "Failed to start HTTP server",
            serde_json::json!({"address": "[::]:8080", "err": "in use"}),
        );
        assert_eq!(lines[0].1["caller"], format!("src/logging.rs:{line}"));
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
        // Counting quietly: only while no line is due, and the next line includes it.
        let q = Throttle::new(Duration::from_secs(10));
        assert!(!q.hit_quiet(t0), "a line is due: nothing counted");
        assert_eq!(q.hit(t0), Some(1));
        assert!(q.hit_quiet(t0 + Duration::from_secs(1)));
        assert!(q.hit_quiet(t0 + Duration::from_secs(2)));
        assert!(!q.hit_quiet(t0 + Duration::from_secs(10)));
        assert_eq!(q.hit(t0 + Duration::from_secs(10)), Some(3));
    }
}
