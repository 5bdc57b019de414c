//! Command-line flags: Go `flag` syntax (as upstream parses it) normalised into what argh
//! accepts, Go durations and numbers, per-flag value checks (exit 2), and the checks upstream
//! makes after parsing (exit 1) that turn raw values into a [`Config`].
//!
//! The one table [`FLAGS`] is the source of truth for names, kinds, defaults and help texts: the
//! normaliser seeds every flag with its default from it, so argh always sees a complete command
//! line, and the usage text and the README flag table ([`flag_table`]) are generated from it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use argh::FromArgs;

use crate::config::{
    CheckOutput, Config, HealthApi, HttpConfig, LeaderElectionConfig, LogConfig, LogFormat,
};

/// Version printed by `--version` and logged at startup; the release build sets
/// `HEALTHMON_VERSION` (e.g. from `git describe`), like upstream's `-X main.version=`.
pub const VERSION: &str = match option_env!("HEALTHMON_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Program name used in [`Parsed::Help`]; `main` prints `usage(argv0)` for the real one.
const PROGRAM: &str = "csi-external-health-monitor-controller";

/// What the command line asks for.
// Made once per process; boxing the Config would only make every caller unwrap it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Run the sidecar with this configuration.
    Run(Config),
    /// `--check-once`: ask the driver once about every volume, print the report in this form
    /// and exit (0 healthy, 1 not).
    CheckOnce(Config, CheckOutput),
    /// `-h`, `-help` or `--help`: print this usage text (to stderr, as Go does) and exit 0.
    Help(String),
    /// `--version`: print `<argv0> <VERSION>` to stdout and exit 0.
    Version,
}

/// Why the command line cannot be run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The command line does not parse (unknown flag, bad value or duration, value out of
    /// range): print the message and the usage to stderr, exit 2 (Go's `flag` behaviour).
    Usage(String),
    /// The flags parse but cannot be run together (upstream's fatal checks after parsing):
    /// log the message, exit 1.
    Invalid(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Invalid(_) => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// One row of the flag table, for the README and the usage text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagInfo {
    pub name: &'static str,
    /// `duration`, `bool`, `string`, `int`, `uint`, `float`, `labels` or `quantity`.
    pub kind: &'static str,
    /// As a user would write it (`1m`, `/run/csi/socket`, `false`); empty for an empty string.
    pub default: &'static str,
    pub help: &'static str,
}

/// Every flag, in the order of upstream §1 plus our additions.
pub fn flag_table() -> Vec<FlagInfo> {
    FLAGS
        .iter()
        .map(|s| FlagInfo {
            name: s.name,
            kind: s.kind.as_str(),
            default: s.default,
            help: s.help,
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Duration,
    Bool,
    String,
    Int,
    Uint,
    Float,
    Labels,
    Quantity,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Duration => "duration",
            Kind::Bool => "bool",
            Kind::String => "string",
            Kind::Int => "int",
            Kind::Uint => "uint",
            Kind::Float => "float",
            Kind::Labels => "labels",
            Kind::Quantity => "quantity",
        }
    }

    /// The type word Go's `PrintDefaults` shows after the flag name (none for booleans,
    /// `value` for custom `flag.Value`s).
    fn usage_word(self) -> &'static str {
        match self {
            Kind::Bool => "",
            Kind::Duration => "duration",
            Kind::String => "string",
            Kind::Int => "int",
            Kind::Uint => "uint",
            Kind::Float => "float",
            Kind::Labels | Kind::Quantity => "value",
        }
    }
}

/// Value checks that make a flag's value unusable on its own: exit 2 like a parse error, since
/// the value is simply wrong for that flag. Checks that involve several flags are in
/// [`build_config`] (exit 1, as upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    None,
    /// Durations that pace a loop: zero would spin, negative is meaningless.
    Positive,
    /// Durations where zero means "off" or "at once".
    NonNegative,
    /// `--list-volumes-max-entries`: CSI `max_entries` is an int32, negative is invalid there.
    NonNegativeI32,
    /// `--kube-api-burst`: a negative burst would block every request in client-go.
    NonNegativeU32,
    /// `--kube-api-qps`: NaN and infinities have no rate meaning.
    Finite,
    LogFormat,
    HealthApi,
    /// `--output`: `text` or `json`.
    Output,
    NonEmpty,
}

struct Spec {
    name: &'static str,
    kind: Kind,
    default: &'static str,
    check: Check,
    /// `Some(reason)`: accepted for compatibility, but warned about when given (bools: when
    /// true), because it changes nothing here.
    no_effect: Option<&'static str>,
    help: &'static str,
}

const fn spec(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    check: Check,
    help: &'static str,
) -> Spec {
    Spec {
        name,
        kind,
        default,
        check,
        no_effect: None,
        help,
    }
}

const fn ignored(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    reason: &'static str,
    help: &'static str,
) -> Spec {
    Spec {
        name,
        kind,
        default,
        check: Check::None,
        no_effect: Some(reason),
        help,
    }
}

// Help texts are upstream's own, except for harmless fixes (DESIGN lists flag help fixes as
// such, upstream §15.15): `--timeout` had a copy-pasted text about attaching volumes,
// `--node-list-add-interval` said "nodess", the leader-election durations claimed to be "in
// seconds" (they are Go durations), `--leader-election-labels` said "seperated", and the
// `Defaults to ...` sentences are dropped because the usage prints `(default ...)` itself.
// One row per flag reads better than rustfmt's vertical layout.
#[rustfmt::skip]
const FLAGS: &[Spec] = &[
    // §1.1: main.go
    spec("monitor-interval", Kind::Duration, "1m", Check::Positive,
        "Interval for controller to check volumes health condition."),
    spec("resync", Kind::Duration, "10m", Check::NonNegative,
        "Resync interval of the controller."),
    spec("timeout", Kind::Duration, "15s", Check::Positive,
        "Timeout of each call to the CSI driver."),
    spec("list-volumes-interval", Kind::Duration, "5m", Check::Positive,
        "Time interval for calling ListVolumes RPC to check volumes' health condition."),
    spec("volume-list-add-interval", Kind::Duration, "5m", Check::Positive,
        "Time interval for listing volumes and adding them to the queue."),
    spec("node-list-add-interval", Kind::Duration, "5m", Check::Positive,
        "Time interval for listing nodes and adding them to the queue."),
    spec("worker-threads", Kind::Uint, "10", Check::None,
        "Number of pv monitor worker threads."),
    spec("enable-node-watcher", Kind::Bool, "false", Check::None,
        "Indicates whether the node watcher is enabled or not."),
    // Additions (DESIGN §2.3, §2.5, §3.1, §1 CSI connection loss).
    spec("list-volumes-max-entries", Kind::Int, "0", Check::NonNegativeI32,
        "Maximum number of entries per ListVolumes page (max_entries). 0 leaves it unset and lets the driver decide."),
    spec("report-missing-volumes", Kind::Bool, "true", Check::None,
        "Report a VolumeConditionAbnormal event for a Bound PV whose volume the CSI driver does not know (NOT_FOUND, or missing from two consecutive ListVolumes sweeps)."),
    spec("missing-volumes-max-fraction", Kind::Float, "0.5", Check::Finite,
        "When more than this fraction of the driver's Bound PVs (and at least 10) would newly be reported missing in one ListVolumes sweep, report none of them for that sweep (a partial ListVolumes view). 1 turns the guard off; values are clamped to 0..1."),
    spec("node-not-ready-timeout", Kind::Duration, "5m", Check::NonNegative,
        "How long a node must stay NotReady before the PVCs of its pods get a NodeFailed event."),
    spec("termination-log-path", Kind::String, "/dev/termination-log", Check::NonEmpty,
        "File the connection-loss message is written to before exiting."),
    // CSI v1.13 volume health beside v1.12 VOLUME_CONDITION (volume-health-v1.13.md).
    spec("volume-health-api", Kind::String, "auto", Check::HealthApi,
        "Which CSI volume health generation to use: \"auto\" (v1.13 ControllerListVolumeHealth/ControllerGetVolumeHealth when the driver has them, else v1.12 VOLUME_CONDITION), \"health\" (v1.13 only) or \"condition\" (v1.12 only)."),
    spec("volume-health-events", Kind::Bool, "true", Check::None,
        "In the CSI v1.13 health modes, also report abnormal volumes and recoveries as VolumeConditionAbnormal/VolumeConditionNormal events on the PVC, as the v1.12 modes do."),
    // The operator's one-shot diagnostic (DESIGN §3.7).
    spec("check-once", Kind::Bool, "false", Check::None,
        "Ask the CSI driver once about every volume (in the mode the sidecar would monitor in), print one line per volume and a summary, and exit: 0 when all are healthy, 1 when any is abnormal, missing or could not be checked, 2 on a usage error. Writes nothing to the API server; it reads the driver's PVs (for their PV and PVC names, and the volumes the per-volume modes ask about) when an API server is configured."),
    spec("output", Kind::String, "text", Check::Output,
        "Format of the --check-once report: \"text\" or \"json\". -o is short for it."),
    // §1.2: csi-lib-utils standardflags.
    spec("version", Kind::Bool, "false", Check::None, "Show version."),
    spec("kubeconfig", Kind::String, "", Check::None,
        "Absolute path to the kubeconfig file. Required only when running out of cluster."),
    spec("csi-address", Kind::String, "/run/csi/socket", Check::None,
        "Address of the CSI driver socket."),
    spec("leader-election", Kind::Bool, "false", Check::None, "Enable leader election."),
    spec("leader-election-namespace", Kind::String, "", Check::None,
        "Namespace where the leader election resource lives. Defaults to the pod namespace if not set."),
    spec("leader-election-lease-duration", Kind::Duration, "15s", Check::None,
        "Duration that non-leader candidates will wait to force acquire leadership."),
    spec("leader-election-renew-deadline", Kind::Duration, "10s", Check::None,
        "Duration that the acting leader will retry refreshing leadership before giving up."),
    spec("leader-election-retry-period", Kind::Duration, "5s", Check::None,
        "Duration the LeaderElector clients should wait between tries of actions."),
    spec("leader-election-labels", Kind::Labels, "", Check::None,
        "List of labels to add to lease when given replica becomes leader. Formatted as a comma separated list of key:value labels. Example: 'my-label:my-value,my-second-label:my-second-value'"),
    spec("kube-api-qps", Kind::Float, "5", Check::Finite,
        "QPS to use while communicating with the kubernetes apiserver."),
    spec("kube-api-burst", Kind::Int, "10", Check::NonNegativeU32,
        "Burst to use while communicating with the kubernetes apiserver."),
    spec("http-endpoint", Kind::String, "", Check::None,
        "The TCP network address where the HTTP server for diagnostics, including metrics and leader election health check, will listen (example: `:8080`). The default is empty string, which means the server is disabled. Only one of `--metrics-address` and `--http-endpoint` can be set."),
    spec("metrics-address", Kind::String, "", Check::None,
        "(deprecated) The TCP network address where the prometheus metrics endpoint will listen (example: `:8080`). The default is empty string, which means metrics endpoint is disabled. Only one of `--metrics-address` and `--http-endpoint` can be set."),
    spec("metrics-path", Kind::String, "/metrics", Check::None,
        "The HTTP path where prometheus metrics will be exposed."),
    // §1.3: automaxprocs and component-base logging.
    ignored("automaxprocs", Kind::Bool, "false",
        "the worker pool is sized by --worker-threads",
        "Automatically set GOMAXPROCS to match the container CPU quota (accepted for compatibility, no effect)."),
    spec("v", Kind::Int, "0", Check::None, "number for the log level verbosity"),
    ignored("vmodule", Kind::String, "",
        "per-file verbosity is not supported",
        "comma-separated list of pattern=N settings for file-filtered logging (only works for text log format)"),
    spec("logging-format", Kind::String, "text", Check::LogFormat,
        "Sets the log format. Permitted formats: \"json\", \"text\"."),
    ignored("log-flush-frequency", Kind::Duration, "5s",
        "log lines are written unbuffered",
        "Maximum number of seconds between log flushes"),
    ignored("log-text-split-stream", Kind::Bool, "false",
        "all log lines go to stderr",
        "[Alpha] In text format, write error messages to stderr and info messages to stdout."),
    ignored("log-text-info-buffer-size", Kind::Quantity, "0",
        "log lines are written unbuffered",
        "[Alpha] In text format with split output streams, the info messages can be buffered for a while to increase performance."),
    ignored("log-json-split-stream", Kind::Bool, "false",
        "all log lines go to stderr",
        "[Alpha] In JSON format, write error messages to stderr and info messages to stdout."),
    ignored("log-json-info-buffer-size", Kind::Quantity, "0",
        "log lines are written unbuffered",
        "[Alpha] In JSON format with split output streams, the info messages can be buffered for a while to increase performance."),
];

/// Go-style usage: `Usage of <argv0>:` and every flag, sorted by name, with type word, help and
/// non-zero default, laid out like `flag.PrintDefaults`.
pub fn usage(argv0: &str) -> String {
    let mut specs: Vec<&Spec> = FLAGS.iter().collect();
    specs.sort_by_key(|s| s.name);
    let mut out = format!("Usage of {argv0}:\n");
    for s in specs {
        let mut line = format!("  -{}", s.name);
        let word = s.kind.usage_word();
        if !word.is_empty() {
            line.push(' ');
            line.push_str(word);
        }
        // Go puts the help of a one-letter boolean on the same line.
        if line.len() <= 4 {
            line.push('\t');
        } else {
            line.push_str("\n    \t");
        }
        line.push_str(&s.help.replace('\n', "\n    \t"));
        if let Some(d) = usage_default(s) {
            line.push_str(&format!(" (default {d})"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The default as Go prints it, or `None` for a zero value (Go omits those).
fn usage_default(s: &Spec) -> Option<String> {
    match s.kind {
        Kind::String if s.default.is_empty() => None,
        Kind::String => Some(format!("{:?}", s.default)),
        Kind::Duration => match parse_go_duration(s.default) {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(go_duration_string(n)),
        },
        Kind::Labels => None,
        _ if matches!(s.default, "" | "0" | "false") => None,
        _ => Some(s.default.to_string()),
    }
}

/// [`parse_with_warnings`] without the warnings.
pub fn parse(args: &[String]) -> Result<Parsed, Error> {
    parse_with_warnings(args).map(|(p, _)| p)
}

/// Parses `args` (without argv[0]). The warnings name accepted flags that have no effect here;
/// `main` logs them once logging is set up.
pub fn parse_with_warnings(args: &[String]) -> Result<(Parsed, Vec<String>), Error> {
    let (argv, warnings) = match normalise(args)? {
        Scan::Help => return Ok((Parsed::Help(usage(PROGRAM)), Vec::new())),
        Scan::Args { argv, warnings } => (argv, warnings),
    };
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    // The normaliser has checked every name and value with the same parsers argh uses, so an
    // argh error here means the two disagree; still reported, never a panic.
    let raw = RawFlags::from_args(&[PROGRAM], &refs)
        .map_err(|e| Error::Usage(e.output.trim_end().to_string()))?;
    Ok((build_config(raw)?, warnings))
}

enum Scan {
    Help,
    Args {
        argv: Vec<String>,
        warnings: Vec<String>,
    },
}

fn usage_err(msg: String) -> Error {
    Error::Usage(msg)
}

/// Turns a Go-syntax command line into a complete, canonical one for argh: every flag once, in
/// table order, as `--name value` or a bare `--name` switch, defaults filled in.
///
/// Mirrors Go's `FlagSet.parseOne`: `-name` and `--name`; `--name=value` or `--name value`
/// (the next argument is taken even if it starts with `-`); booleans by presence or
/// `=true/false` (never consuming the next argument); `--` ends the flags; the last occurrence
/// of a flag wins, except `--leader-election-labels`, which merges as upstream's map value does.
fn normalise(args: &[String]) -> Result<Scan, Error> {
    let mut values: Vec<Option<String>> = vec![None; FLAGS.len()];
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg.len() < 2 || !arg.starts_with('-') {
            // Go stops parsing at the first non-flag argument and upstream ignores the rest,
            // which silently drops any flag after a stray word. We refuse instead: a leftover
            // argument is almost always a typo in a Deployment's args.
            return Err(usage_err(format!("unexpected argument {arg:?}")));
        }
        let body = if let Some(rest) = arg.strip_prefix("--") {
            if rest.is_empty() {
                // `--` ends the flags; anything after it is positional, refused as above.
                return match args.get(i) {
                    Some(extra) => Err(usage_err(format!("unexpected argument {extra:?}"))),
                    None => break,
                };
            }
            rest
        } else {
            &arg[1..]
        };
        if body.starts_with('-') || body.starts_with('=') {
            return Err(usage_err(format!("bad flag syntax: {arg}")));
        }
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        // kubectl's spelling, for the one flag an operator types by hand next to it.
        let name = if name == "o" { "output" } else { name };
        let Some(idx) = FLAGS.iter().position(|s| s.name == name) else {
            if name == "h" || name == "help" {
                return Ok(Scan::Help);
            }
            return Err(usage_err(format!("flag provided but not defined: -{name}")));
        };
        let spec = &FLAGS[idx];
        if spec.kind == Kind::Bool {
            let value = match inline {
                None => true,
                Some(v) => parse_go_bool(v).ok_or_else(|| {
                    usage_err(format!(
                        "invalid boolean value {v:?} for -{name}: parse error"
                    ))
                })?,
            };
            values[idx] = Some(value.to_string());
            continue;
        }
        let value = match inline {
            Some(v) => v.to_string(),
            None => match args.get(i) {
                Some(v) => {
                    i += 1;
                    v.clone()
                }
                None => return Err(usage_err(format!("flag needs an argument: -{name}"))),
            },
        };
        check_value(spec, &value)
            .map_err(|why| usage_err(format!("invalid value {value:?} for flag -{name}: {why}")))?;
        if spec.kind == Kind::Labels {
            // check_value has parsed it already; a failure here cannot happen, and would be
            // the same error.
            let parsed: GoLabels = value.parse().map_err(|why: String| {
                usage_err(format!("invalid value {value:?} for flag -{name}: {why}"))
            })?;
            labels.extend(parsed.0);
        }
        values[idx] = Some(value);
    }

    let mut argv = Vec::new();
    let mut warnings = Vec::new();
    for (spec, given) in FLAGS.iter().zip(values) {
        if let (Some(reason), Some(v)) = (spec.no_effect, &given) {
            if spec.kind != Kind::Bool || v == "true" {
                warnings.push(format!("flag --{} has no effect: {reason}", spec.name));
            }
        }
        let flag = format!("--{}", spec.name);
        match spec.kind {
            Kind::Bool => {
                if given.as_deref().unwrap_or(spec.default) == "true" {
                    argv.push(flag);
                }
            }
            Kind::Labels => {
                if !labels.is_empty() {
                    argv.push(flag);
                    argv.push(
                        labels
                            .iter()
                            .map(|(k, v)| format!("{k}:{v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                    );
                }
            }
            _ => {
                argv.push(flag);
                argv.push(given.unwrap_or_else(|| spec.default.to_string()));
            }
        }
    }
    Ok(Scan::Args { argv, warnings })
}

/// Parses a non-boolean value of `spec`'s kind and applies its [`Check`]; the error is the
/// part after `invalid value "x" for flag -name: `.
fn check_value(spec: &Spec, raw: &str) -> Result<(), String> {
    match spec.kind {
        Kind::Bool => parse_go_bool(raw)
            .map(|_| ())
            .ok_or_else(|| "parse error".into()),
        Kind::Duration => {
            let d = raw.parse::<GoDuration>()?.0;
            match spec.check {
                Check::Positive if d <= 0 => Err("must be greater than zero".into()),
                Check::NonNegative if d < 0 => Err("must not be negative".into()),
                _ => Ok(()),
            }
        }
        Kind::Int => {
            let v = raw.parse::<GoInt>()?.0;
            let max = match spec.check {
                Check::NonNegativeI32 => i64::from(i32::MAX),
                Check::NonNegativeU32 => i64::from(u32::MAX),
                _ => return Ok(()),
            };
            if v < 0 {
                Err("must not be negative".into())
            } else if v > max {
                Err("value out of range".into())
            } else {
                Ok(())
            }
        }
        Kind::Uint => raw.parse::<GoUint>().map(|_| ()),
        Kind::Float => {
            let v = raw.parse::<GoFloat>()?.0;
            if spec.check == Check::Finite && !v.is_finite() {
                return Err("must be a finite number".into());
            }
            if spec.check == Check::Finite && v > 0.0 && v < MIN_KUBE_API_QPS {
                return Err(format!(
                    "must be at least {MIN_KUBE_API_QPS} (0 takes client-go's default, a negative value turns the limit off)"
                ));
            }
            Ok(())
        }
        Kind::Labels => raw.parse::<GoLabels>().map(|_| ()),
        Kind::Quantity => {
            if is_quantity(raw) {
                Ok(())
            } else {
                Err(format!("invalid quantity {raw:?}"))
            }
        }
        Kind::String => match spec.check {
            Check::LogFormat if parse_log_format(raw).is_none() => Err(format!(
                "unsupported log format {raw:?}, must be \"text\" or \"json\""
            )),
            Check::HealthApi if parse_health_api(raw).is_none() => Err(format!(
                "unsupported value {raw:?}, must be \"auto\", \"health\" or \"condition\""
            )),
            Check::Output if parse_output(raw).is_none() => Err(format!(
                "unsupported output format {raw:?}, must be \"text\" or \"json\""
            )),
            Check::NonEmpty if raw.is_empty() => Err("must not be empty".into()),
            _ => Ok(()),
        },
    }
}

fn parse_health_api(s: &str) -> Option<HealthApi> {
    match s {
        "auto" => Some(HealthApi::Auto),
        "health" => Some(HealthApi::Health),
        "condition" => Some(HealthApi::Condition),
        _ => None,
    }
}

fn parse_output(s: &str) -> Option<CheckOutput> {
    match s {
        "text" => Some(CheckOutput::Text),
        "json" => Some(CheckOutput::Json),
        _ => None,
    }
}

fn parse_log_format(s: &str) -> Option<LogFormat> {
    match s {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        _ => None,
    }
}

/// The canonical command line the normaliser produces. argh descriptions are short; the user
/// sees [`usage`], generated from [`FLAGS`].
#[derive(FromArgs, Debug)]
/// csi volume health monitor sidecar
struct RawFlags {
    /// see usage
    #[argh(option)]
    monitor_interval: GoDuration,
    /// see usage
    #[argh(option)]
    resync: GoDuration,
    /// see usage
    #[argh(option)]
    timeout: GoDuration,
    /// see usage
    #[argh(option)]
    list_volumes_interval: GoDuration,
    /// see usage
    #[argh(option)]
    volume_list_add_interval: GoDuration,
    /// see usage
    #[argh(option)]
    node_list_add_interval: GoDuration,
    /// see usage
    #[argh(option)]
    worker_threads: GoUint,
    /// see usage
    #[argh(switch)]
    enable_node_watcher: bool,
    /// see usage
    #[argh(option)]
    list_volumes_max_entries: GoInt,
    /// see usage
    #[argh(switch)]
    report_missing_volumes: bool,
    /// see usage
    #[argh(option)]
    missing_volumes_max_fraction: GoFloat,
    /// see usage
    #[argh(option)]
    node_not_ready_timeout: GoDuration,
    /// see usage
    #[argh(option)]
    termination_log_path: String,
    /// see usage
    #[argh(option)]
    volume_health_api: String,
    /// see usage
    #[argh(switch)]
    volume_health_events: bool,
    /// see usage
    #[argh(switch)]
    check_once: bool,
    /// see usage
    #[argh(option)]
    output: String,
    /// see usage
    #[argh(switch)]
    version: bool,
    /// see usage
    #[argh(option)]
    kubeconfig: String,
    /// see usage
    #[argh(option)]
    csi_address: String,
    /// see usage
    #[argh(switch)]
    leader_election: bool,
    /// see usage
    #[argh(option)]
    leader_election_namespace: String,
    /// see usage
    #[argh(option)]
    leader_election_lease_duration: GoDuration,
    /// see usage
    #[argh(option)]
    leader_election_renew_deadline: GoDuration,
    /// see usage
    #[argh(option)]
    leader_election_retry_period: GoDuration,
    /// see usage
    #[argh(option, default = "GoLabels::default()")]
    leader_election_labels: GoLabels,
    /// see usage
    #[argh(option)]
    kube_api_qps: GoFloat,
    /// see usage
    #[argh(option)]
    kube_api_burst: GoInt,
    /// see usage
    #[argh(option)]
    http_endpoint: String,
    /// see usage
    #[argh(option)]
    metrics_address: String,
    /// see usage
    #[argh(option)]
    metrics_path: String,
    /// see usage
    #[argh(switch)]
    // Accepted for compatibility only; the normaliser warns when it is set.
    #[allow(dead_code)]
    automaxprocs: bool,
    /// see usage
    #[argh(option)]
    v: GoInt,
    /// see usage
    #[argh(option)]
    vmodule: String,
    /// see usage
    #[argh(option)]
    logging_format: String,
    /// see usage
    #[argh(option)]
    // Accepted for compatibility only; the normaliser warns when it is set.
    #[allow(dead_code)]
    log_flush_frequency: GoDuration,
    /// see usage
    #[argh(switch)]
    // Accepted for compatibility only; the normaliser warns when it is set.
    #[allow(dead_code)]
    log_text_split_stream: bool,
    /// see usage
    #[argh(option)]
    // Accepted for compatibility only; the normaliser warns when it is set.
    #[allow(dead_code)]
    log_text_info_buffer_size: String,
    /// see usage
    #[argh(switch)]
    // Accepted for compatibility only; the normaliser warns when it is set.
    #[allow(dead_code)]
    log_json_split_stream: bool,
    /// see usage
    #[argh(option)]
    // Accepted for compatibility only; the normaliser warns when it is set.
    #[allow(dead_code)]
    log_json_info_buffer_size: String,
}

/// The smallest positive `--kube-api-qps`: one request per 100 s is already too slow to keep a
/// lease or a watch, and below about 1e-19 the limiter's wait no longer fits a `Duration`
/// (1e-20 panicked on the first request after the burst). Large values are harmless (they
/// mean "no limit in practice") and accepted as upstream accepts them.
pub const MIN_KUBE_API_QPS: f64 = 0.01;
/// The most `--worker-threads` this sidecar starts (upstream has no bound). Each worker is a
/// thread, all started at once, each holding a CSI call in flight; ten is the default, and a
/// thousand concurrent probes is more than any driver serves.
pub const MAX_WORKER_THREADS: u64 = 1000;

/// client-go's `rest.Config` defaults for a zero QPS / burst (`DefaultQPS`, `DefaultBurst`).
const CLIENT_GO_DEFAULT_QPS: f64 = 5.0;
const CLIENT_GO_DEFAULT_BURST: u32 = 10;
/// client-go's `leaderelection.JitterFactor`.
const LEADER_JITTER_FACTOR: f64 = 1.2;

/// Upstream's checks after parsing (§2 steps 2, 3, 5, 7, 9 and client-go's leader-election
/// config check), in upstream's order so the same command line fails the same way.
fn build_config(raw: RawFlags) -> Result<Parsed, Error> {
    // Step 2: logging configuration (component-base refuses --vmodule outside text format).
    let format = parse_log_format(&raw.logging_format).ok_or_else(|| {
        usage_err(format!(
            "invalid value {:?} for flag -logging-format: unsupported log format",
            raw.logging_format
        ))
    })?;
    if format != LogFormat::Text && !raw.vmodule.is_empty() {
        return Err(Error::Invalid(
            "--vmodule is only supported for the text log format".into(),
        ));
    }
    // Step 3.
    if raw.version {
        return Ok(Parsed::Version);
    }
    // check_value accepted it already; the fallback is never taken.
    let output = parse_output(&raw.output).unwrap_or(CheckOutput::Text);
    if output != CheckOutput::Text && !raw.check_once {
        return Err(usage_err(
            "flag -output is only used with -check-once".to_string(),
        ));
    }
    // Step 5. Upstream's exact text (capitalised, with a period) is kept on purpose: operators
    // search logs for it.
    if !raw.metrics_address.is_empty() && !raw.http_endpoint.is_empty() {
        return Err(Error::Invalid(
            "Only one of `--metrics-address` and `--http-endpoint` can be set.".into(),
        ));
    }
    // Step 7, upstream's text again.
    if raw.worker_threads.0 == 0 {
        return Err(Error::Invalid(
            "Option --worker-threads must be greater than zero".into(),
        ));
    }
    if raw.worker_threads.0 > MAX_WORKER_THREADS {
        return Err(Error::Invalid(format!(
            "--worker-threads {} is more than {MAX_WORKER_THREADS}, the most this sidecar starts",
            raw.worker_threads.0
        )));
    }
    let worker_threads = usize::try_from(raw.worker_threads.0).map_err(|_| {
        Error::Invalid(format!(
            "--worker-threads {} is too large for this platform",
            raw.worker_threads.0
        ))
    })?;

    let leader_election = if raw.leader_election {
        check_leader_durations(
            raw.leader_election_lease_duration.0,
            raw.leader_election_renew_deadline.0,
            raw.leader_election_retry_period.0,
        )?;
        Some(LeaderElectionConfig {
            namespace: raw.leader_election_namespace,
            lease_duration: raw.leader_election_lease_duration.to_std(),
            renew_deadline: raw.leader_election_renew_deadline.to_std(),
            retry_period: raw.leader_election_retry_period.to_std(),
            labels: raw.leader_election_labels.0,
        })
    } else {
        None
    };

    let http = match (raw.metrics_address.is_empty(), raw.http_endpoint.is_empty()) {
        (true, true) => None,
        (false, _) => Some((raw.metrics_address, true)),
        (true, false) => Some((raw.http_endpoint, false)),
    };
    let http = match http {
        None => None,
        Some((address, deprecated)) => {
            if !raw.metrics_path.starts_with('/') {
                return Err(Error::Invalid(format!(
                    "--metrics-path {:?} must start with \"/\"",
                    raw.metrics_path
                )));
            }
            Some(HttpConfig {
                address,
                metrics_path: raw.metrics_path,
                deprecated_metrics_address: deprecated,
            })
        }
    };

    // Step 9 (csi-lib-utils connection): only unix sockets can report a lost connection.
    let csi_address = csi_socket_path(&raw.csi_address).map_err(Error::Invalid)?;

    // Negative QPS disables client-side rate limiting in client-go; INFINITY says the same to
    // our token bucket without a special case.
    let qps = raw.kube_api_qps.0;
    let kube_api_qps = if qps == 0.0 {
        CLIENT_GO_DEFAULT_QPS
    } else if qps < 0.0 {
        f64::INFINITY
    } else {
        qps
    };
    // check_value bounded it to 0..=u32::MAX.
    let kube_api_burst = match u32::try_from(raw.kube_api_burst.0) {
        Ok(0) => CLIENT_GO_DEFAULT_BURST,
        Ok(b) => b,
        Err(_) => {
            return Err(usage_err(format!(
                "invalid value \"{}\" for flag -kube-api-burst: value out of range",
                raw.kube_api_burst.0
            )))
        }
    };
    let list_volumes_max_entries = i32::try_from(raw.list_volumes_max_entries.0).map_err(|_| {
        usage_err(format!(
            "invalid value \"{}\" for flag -list-volumes-max-entries: value out of range",
            raw.list_volumes_max_entries.0
        ))
    })?;

    let config = Config {
        csi_address,
        kubeconfig: Some(raw.kubeconfig)
            .filter(|k| !k.is_empty())
            .map(PathBuf::from),
        monitor_interval: raw.monitor_interval.to_std(),
        resync: raw.resync.to_std(),
        timeout: raw.timeout.to_std(),
        list_volumes_interval: raw.list_volumes_interval.to_std(),
        list_volumes_max_entries,
        volume_list_add_interval: raw.volume_list_add_interval.to_std(),
        node_list_add_interval: raw.node_list_add_interval.to_std(),
        node_not_ready_timeout: raw.node_not_ready_timeout.to_std(),
        worker_threads,
        enable_node_watcher: raw.enable_node_watcher,
        report_missing_volumes: raw.report_missing_volumes,
        // check_value accepted a finite number; outside 0..1 means the nearest end.
        missing_volumes_max_fraction: raw.missing_volumes_max_fraction.0.clamp(0.0, 1.0),
        // check_value accepted it already; the fallback is never taken.
        volume_health_api: parse_health_api(&raw.volume_health_api).unwrap_or(HealthApi::Auto),
        volume_health_events: raw.volume_health_events,
        leader_election,
        kube_api_qps,
        kube_api_burst,
        http,
        termination_log_path: PathBuf::from(raw.termination_log_path),
        log: LogConfig {
            // klog's -v is an int32; negative is as quiet as 0 here, and nothing logs above 255.
            verbosity: u8::try_from(raw.v.0.max(0)).unwrap_or(u8::MAX),
            format,
        },
    };
    Ok(if raw.check_once {
        Parsed::CheckOnce(config, output)
    } else {
        Parsed::Run(config)
    })
}

/// client-go's `NewLeaderElector` checks (upstream panics on them; we exit 1 with the flags
/// named): lease > renew > 1.2 × retry, all positive.
fn check_leader_durations(lease: i64, renew: i64, retry: i64) -> Result<(), Error> {
    let name_lease = "--leader-election-lease-duration";
    let name_renew = "--leader-election-renew-deadline";
    let name_retry = "--leader-election-retry-period";
    for (name, d) in [
        (name_lease, lease),
        (name_renew, renew),
        (name_retry, retry),
    ] {
        if d <= 0 {
            return Err(Error::Invalid(format!(
                "{name} ({}) must be greater than zero",
                go_duration_string(d)
            )));
        }
    }
    let most = crate::leader::MAX_LEASE_DURATION.as_nanos() as i64;
    if lease > most {
        return Err(Error::Invalid(format!(
            "{name_lease} ({}) must be at most {}, the longest lease any replica honours",
            go_duration_string(lease),
            go_duration_string(most)
        )));
    }
    if lease <= renew {
        return Err(Error::Invalid(format!(
            "{name_lease} ({}) must be greater than {name_renew} ({})",
            go_duration_string(lease),
            go_duration_string(renew)
        )));
    }
    // client-go truncates the product to whole nanoseconds.
    let jittered = (LEADER_JITTER_FACTOR * retry as f64) as i64;
    if renew <= jittered {
        return Err(Error::Invalid(format!(
            "{name_renew} ({}) must be greater than 1.2 times {name_retry} ({})",
            go_duration_string(renew),
            go_duration_string(retry)
        )));
    }
    Ok(())
}

/// `--csi-address` → socket path: `/p`, `unix:///p` and `unix:/p` become `/p`; `unix://p` is
/// the relative path `p`, as Go's dialer reads it. Upstream always installs a connection-loss
/// callback, which csi-lib-utils allows only for unix sockets.
pub fn csi_socket_path(address: &str) -> Result<PathBuf, String> {
    let path = if let Some(p) = address.strip_prefix("unix://") {
        p
    } else if let Some(p) = address.strip_prefix("unix:") {
        p
    } else if address.starts_with('/') {
        address
    } else if address.is_empty() {
        return Err("--csi-address must not be empty".into());
    } else {
        return Err(format!(
            "--csi-address {address:?}: only unix:// addresses are supported (a socket path like /run/csi/socket or unix:///run/csi/socket)"
        ));
    };
    if path.is_empty() {
        return Err(format!("--csi-address {address:?} has no socket path"));
    }
    Ok(PathBuf::from(path))
}

// ---------------------------------------------------------------------------------------------
// Go value syntax: each type parses exactly what Go's flag package accepts for that kind; the
// error is what follows `invalid value "x" for flag -name: `.

/// A Go `time.Duration`: signed nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct GoDuration(i64);

impl GoDuration {
    /// Negative durations only reach here for flags whose check allows them and whose value is
    /// then unused (leader election off); they become zero. The bound is Go's: i64 nanoseconds,
    /// about 292 years, which every `Instant` sum made of them survives (and those sums
    /// saturate); a duration that long only means "never", which is what the operator asked.
    fn to_std(self) -> Duration {
        Duration::from_nanos(u64::try_from(self.0).unwrap_or(0))
    }
}

impl FromStr for GoDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_go_duration(s).map(GoDuration)
    }
}

/// Go's `int` (64-bit), parsed like `strconv.ParseInt(s, 0, 64)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GoInt(i64);

impl FromStr for GoInt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_go_int(s).map(GoInt).map_err(str::to_string)
    }
}

/// Go's `uint` (64-bit), parsed like `strconv.ParseUint(s, 0, 64)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GoUint(u64);

impl FromStr for GoUint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_go_uint(s).map(GoUint).map_err(str::to_string)
    }
}

/// Go's `float64`; Rust's decimal syntax is the same for everything but hex floats.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GoFloat(f64);

impl FromStr for GoFloat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<f64>()
            .map(GoFloat)
            .map_err(|_| "parse error".into())
    }
}

/// csi-lib-utils' `stringMap`: comma-separated `key:value` items, each with exactly one `:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct GoLabels(BTreeMap<String, String>);

impl FromStr for GoLabels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for item in s.split(',') {
            let mut parts = item.split(':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(k), Some(v), None) => {
                    map.insert(k.to_string(), v.to_string());
                }
                _ => return Err(format!("malformed item in list of labels: {item}")),
            }
        }
        Ok(GoLabels(map))
    }
}

/// `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

const ERR_PARSE: &str = "parse error";
const ERR_RANGE: &str = "value out of range";

/// Magnitude of a Go integer literal with base prefix 0 (`0x`, `0o`, `0b`, leading `0` octal,
/// `_` separators only after a prefix), without sign.
fn parse_go_magnitude(s: &str) -> Result<u64, &'static str> {
    let lower = s.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    let digits = if radix != 10 && digits.contains('_') {
        // Go: `_` may follow the prefix and separate digits, never end or double up.
        let d = digits.strip_prefix('_').unwrap_or(digits);
        if d.is_empty() || d.ends_with('_') || d.contains("__") {
            return Err(ERR_PARSE);
        }
        d.replace('_', "")
    } else {
        digits.to_string()
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ERR_PARSE);
    }
    u64::from_str_radix(&digits, radix).map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => ERR_RANGE,
        _ => ERR_PARSE,
    })
}

fn parse_go_int(s: &str) -> Result<i64, &'static str> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let m = parse_go_magnitude(body)?;
    if neg {
        0i64.checked_sub_unsigned(m).ok_or(ERR_RANGE)
    } else {
        i64::try_from(m).map_err(|_| ERR_RANGE)
    }
}

fn parse_go_uint(s: &str) -> Result<u64, &'static str> {
    if s.starts_with(['+', '-']) {
        return Err(ERR_PARSE);
    }
    parse_go_magnitude(s)
}

/// Kubernetes `resource.Quantity` syntax: signed decimal number and an optional suffix
/// (binary SI `Ki`…`Ei`, decimal SI `n u m k M G T P E`, or an exponent `e3`/`E-2`).
fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
    let mut rest = &s[int_len..];
    let mut digits = int_len;
    if let Some(r) = rest.strip_prefix('.') {
        let frac_len = r.bytes().take_while(u8::is_ascii_digit).count();
        digits += frac_len;
        rest = &r[frac_len..];
    }
    if digits == 0 {
        return false;
    }
    match rest {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        _ => match rest.strip_prefix(['e', 'E']) {
            Some(exp) => {
                let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
                !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit())
            }
            None => false,
        },
    }
}

/// Go's `time.ParseDuration`, returning nanoseconds (possibly negative). Errors as Go's without
/// the `time: ` prefix: `invalid duration "abc"`, `missing unit in duration "15"`,
/// `unknown unit "x" in duration "5x"`.
pub fn parse_go_duration(orig: &str) -> Result<i64, String> {
    const LIMIT: u64 = 1 << 63;
    let invalid = || format!("invalid duration {orig:?}");
    let mut s = orig;
    let mut neg = false;
    if let Some(&c) = s.as_bytes().first() {
        if c == b'-' || c == b'+' {
            neg = c == b'-';
            s = &s[1..];
        }
    }
    // Special case: a bare 0 needs no unit.
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let c = s.as_bytes()[0];
        if !(c == b'.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        // Integer part.
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let mut v: u64 = 0;
        for b in s[..int_len].bytes() {
            if v > LIMIT / 10 {
                return Err(invalid());
            }
            v = v * 10 + u64::from(b - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
        }
        let pre = int_len > 0;
        s = &s[int_len..];
        // Fraction: digits past what fits are ignored, as Go does.
        let mut frac: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut post = false;
        if let Some(r) = s.strip_prefix('.') {
            let frac_len = r.bytes().take_while(u8::is_ascii_digit).count();
            let mut overflow = false;
            for b in r[..frac_len].bytes() {
                if overflow {
                    continue;
                }
                if frac > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let y = frac * 10 + u64::from(b - b'0');
                if y > LIMIT {
                    overflow = true;
                    continue;
                }
                frac = y;
                scale *= 10.0;
            }
            post = frac_len > 0;
            s = &r[frac_len..];
        }
        if !pre && !post {
            // No digits (e.g. ".s").
            return Err(invalid());
        }
        // Unit: everything up to the next number.
        let unit_len = s
            .bytes()
            .position(|b| b == b'.' || b.is_ascii_digit())
            .unwrap_or(s.len());
        let unit_name = &s[..unit_len];
        s = &s[unit_len..];
        if unit_name.is_empty() {
            return Err(format!("missing unit in duration {orig:?}"));
        }
        let unit: u64 = match unit_name {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("unknown unit {unit_name:?} in duration {orig:?}")),
        };
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if frac > 0 {
            // Go adds the fraction in float64 and truncates.
            v += (frac as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        total = total.checked_add(v).ok_or_else(invalid)?;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        return Ok(0i64.wrapping_sub_unsigned(total));
    }
    i64::try_from(total).map_err(|_| invalid())
}

/// Go's `time.Duration.String()`: `1m0s`, `1h30m0s`, `300ms`, `1.5µs`, `0s`.
pub fn go_duration_string(nanos: i64) -> String {
    // Fraction digits of `v` at precision `prec`, trailing zeros dropped, and what is left.
    fn frac(v: u64, prec: u32) -> (String, u64) {
        let mut v = v;
        let mut digits = Vec::new();
        let mut print = false;
        for _ in 0..prec {
            let d = (v % 10) as u8;
            print = print || d != 0;
            if print {
                digits.push(char::from(b'0' + d));
            }
            v /= 10;
        }
        let mut s = String::new();
        if print {
            s.push('.');
            s.extend(digits.iter().rev());
        }
        (s, v)
    }
    let neg = nanos < 0;
    let u = nanos.unsigned_abs();
    let body = if u < 1_000_000_000 {
        let (prec, unit) = match u {
            0 => return "0s".into(),
            1..=999 => (0, "ns"),
            1_000..=999_999 => (3, "\u{b5}s"),
            _ => (6, "ms"),
        };
        let (f, int) = frac(u, prec);
        format!("{int}{f}{unit}")
    } else {
        let (f, secs) = frac(u, 9);
        let mut out = format!("{}{f}s", secs % 60);
        let mins = secs / 60;
        if mins > 0 {
            out = format!("{}m{out}", mins % 60);
            let hours = mins / 60;
            if hours > 0 {
                out = format!("{hours}h{out}");
            }
        }
        out
    };
    if neg {
        format!("-{body}")
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    fn run(s: &[&str]) -> Config {
        match parse(&args(s)) {
            Ok(Parsed::Run(c)) => c,
            other => panic!("{s:?}: expected Run, got {other:?}"),
        }
    }

    fn usage_error(s: &[&str]) -> String {
        match parse(&args(s)) {
            Err(e @ Error::Usage(_)) => {
                assert_eq!(e.exit_code(), 2);
                e.to_string()
            }
            other => panic!("{s:?}: expected a usage error, got {other:?}"),
        }
    }

    fn invalid(s: &[&str]) -> String {
        match parse(&args(s)) {
            Err(e @ Error::Invalid(_)) => {
                assert_eq!(e.exit_code(), 1);
                e.to_string()
            }
            other => panic!("{s:?}: expected an invalid-config error, got {other:?}"),
        }
    }

    const fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn default_config() -> Config {
        Config {
            csi_address: PathBuf::from("/run/csi/socket"),
            kubeconfig: None,
            monitor_interval: secs(60),
            resync: secs(600),
            timeout: secs(15),
            list_volumes_interval: secs(300),
            list_volumes_max_entries: 0,
            volume_list_add_interval: secs(300),
            node_list_add_interval: secs(300),
            node_not_ready_timeout: secs(300),
            worker_threads: 10,
            enable_node_watcher: false,
            report_missing_volumes: true,
            missing_volumes_max_fraction: 0.5,
            volume_health_api: HealthApi::Auto,
            volume_health_events: true,
            leader_election: None,
            kube_api_qps: 5.0,
            kube_api_burst: 10,
            http: None,
            termination_log_path: PathBuf::from("/dev/termination-log"),
            log: LogConfig {
                verbosity: 0,
                format: LogFormat::Text,
            },
        }
    }

    #[test]
    fn no_arguments_give_upstream_defaults() {
        assert_eq!(run(&[]), default_config());
    }

    #[test]
    fn check_once_and_its_output_format() {
        let check = |s: &[&str]| match parse(&args(s)) {
            Ok(Parsed::CheckOnce(c, o)) => (c, o),
            other => panic!("{s:?}: expected CheckOnce, got {other:?}"),
        };
        // Both spellings, bare and =true; text by default; the rest of the config as for a run.
        for flag in ["--check-once", "-check-once", "--check-once=true"] {
            let (c, o) = check(&[flag, "--csi-address=/csi/sock"]);
            assert_eq!(o, CheckOutput::Text);
            assert_eq!(c.csi_address, PathBuf::from("/csi/sock"));
        }
        assert_eq!(run(&["--check-once=false"]), default_config());
        // -o, -output and --output, separate or with =; the last one wins.
        for s in [
            &["--check-once", "-o", "json"][..],
            &["--check-once", "-o=json"],
            &["--check-once", "--output", "json"],
            &["-output=json", "--check-once"],
            &["--check-once", "-o", "text", "--output=json"],
        ] {
            assert_eq!(check(s).1, CheckOutput::Json, "{s:?}");
        }
        assert_eq!(
            check(&["--check-once", "-o", "json", "-o", "text"]).1,
            CheckOutput::Text
        );
        let e = usage_error(&["--check-once", "-o", "yaml"]);
        assert!(e.contains("\"yaml\"") && e.contains("\"json\""), "{e}");
        assert!(usage_error(&["--check-once", "-o"]).contains("flag needs an argument"));
        // A report format without the report is a mistake, not a silent no-op.
        let e = usage_error(&["-o", "json"]);
        assert!(e.contains("-check-once"), "{e}");
        assert_eq!(run(&["--output=text"]), default_config());
        assert!(usage_error(&["--check-once", "volumes"]).contains("unexpected argument"));
        // --version still wins, as it does over everything.
        assert_eq!(
            parse(&args(&["--check-once", "--version"])),
            Ok(Parsed::Version)
        );
    }

    #[test]
    fn every_table_default_passes_its_own_check() {
        for s in FLAGS {
            if s.kind == Kind::Labels {
                continue;
            }
            assert_eq!(check_value(s, s.default), Ok(()), "{}", s.name);
        }
        let mut names: Vec<_> = FLAGS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FLAGS.len(), "duplicate flag in the table");
    }

    /// Each flag in the four spellings Go accepts; `set` applies the expected change to the
    /// defaults.
    #[test]
    fn every_value_flag_in_every_spelling() {
        type Set = fn(&mut Config);
        let cases: &[(&str, &str, Set)] = &[
            ("monitor-interval", "1m30s", |c| {
                c.monitor_interval = secs(90)
            }),
            ("resync", "0", |c| c.resync = secs(0)),
            ("timeout", "300ms", |c| {
                c.timeout = Duration::from_millis(300)
            }),
            ("list-volumes-interval", "1.5h", |c| {
                c.list_volumes_interval = secs(5400)
            }),
            ("volume-list-add-interval", "2m", |c| {
                c.volume_list_add_interval = secs(120)
            }),
            ("node-list-add-interval", "45s", |c| {
                c.node_list_add_interval = secs(45)
            }),
            ("node-not-ready-timeout", "10m", |c| {
                c.node_not_ready_timeout = secs(600)
            }),
            ("worker-threads", "3", |c| c.worker_threads = 3),
            ("list-volumes-max-entries", "500", |c| {
                c.list_volumes_max_entries = 500
            }),
            ("volume-health-api", "condition", |c| {
                c.volume_health_api = HealthApi::Condition
            }),
            ("volume-health-api", "health", |c| {
                c.volume_health_api = HealthApi::Health
            }),
            ("termination-log-path", "/tmp/t", |c| {
                c.termination_log_path = "/tmp/t".into()
            }),
            ("kubeconfig", "/k/config", |c| {
                c.kubeconfig = Some("/k/config".into())
            }),
            ("csi-address", "unix:///csi/csi.sock", |c| {
                c.csi_address = "/csi/csi.sock".into()
            }),
            ("kube-api-qps", "20.5", |c| c.kube_api_qps = 20.5),
            ("missing-volumes-max-fraction", "0.25", |c| {
                c.missing_volumes_max_fraction = 0.25
            }),
            ("kube-api-burst", "0x20", |c| c.kube_api_burst = 32),
            ("v", "5", |c| c.log.verbosity = 5),
            ("logging-format", "json", |c| c.log.format = LogFormat::Json),
            ("http-endpoint", ":8080", |c| {
                c.http = Some(HttpConfig {
                    address: ":8080".into(),
                    metrics_path: "/metrics".into(),
                    deprecated_metrics_address: false,
                })
            }),
            ("metrics-address", "0.0.0.0:9090", |c| {
                c.http = Some(HttpConfig {
                    address: "0.0.0.0:9090".into(),
                    metrics_path: "/metrics".into(),
                    deprecated_metrics_address: true,
                })
            }),
        ];
        for (name, value, set) in cases {
            let mut want = default_config();
            set(&mut want);
            let eq = format!("--{name}={value}");
            let single_eq = format!("-{name}={value}");
            let double = format!("--{name}");
            let single = format!("-{name}");
            for argv in [
                vec![eq.as_str()],
                vec![single_eq.as_str()],
                vec![double.as_str(), value],
                vec![single.as_str(), value],
            ] {
                assert_eq!(run(&argv), want, "{argv:?}");
            }
        }
    }

    #[test]
    fn boolean_forms() {
        type Get = fn(&Config) -> bool;
        let flags: &[(&str, bool, Get)] = &[
            ("enable-node-watcher", false, |c| c.enable_node_watcher),
            ("report-missing-volumes", true, |c| c.report_missing_volumes),
            ("volume-health-events", true, |c| c.volume_health_events),
            ("leader-election", false, |c| c.leader_election.is_some()),
        ];
        let forms: &[(&[&str], Option<bool>)] = &[
            (&["--{}"], Some(true)),
            (&["-{}"], Some(true)),
            (&["--{}=true"], Some(true)),
            (&["--{}=1"], Some(true)),
            (&["-{}=T"], Some(true)),
            (&["--{}=false"], Some(false)),
            (&["-{}=0"], Some(false)),
            (&["--{}=False"], Some(false)),
            (&["--{}", "--{}=false"], Some(false)),
            (&["--{}=false", "--{}"], Some(true)),
            (&[], None),
        ];
        for (name, default, get) in flags {
            for (form, want) in forms {
                let argv: Vec<String> = form.iter().map(|f| f.replace("{}", name)).collect();
                let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
                assert_eq!(get(&run(&refs)), want.unwrap_or(*default), "{refs:?}");
            }
        }
        assert!(!run(&["--report-missing-volumes=false"]).report_missing_volumes);
        // The mass-absence guard's fraction is clamped to 0..=1; 1 turns it off.
        assert_eq!(run(&[]).missing_volumes_max_fraction, 0.5);
        assert_eq!(
            run(&["--missing-volumes-max-fraction=3"]).missing_volumes_max_fraction,
            1.0
        );
        assert_eq!(
            run(&["--missing-volumes-max-fraction=-1"]).missing_volumes_max_fraction,
            0.0
        );
        assert_eq!(
            run(&[
                "--missing-volumes-max-fraction=0.1",
                "--missing-volumes-max-fraction",
                "0.9"
            ])
            .missing_volumes_max_fraction,
            0.9
        );
        assert!(usage_error(&["--missing-volumes-max-fraction=NaN"]).contains("finite"));
        let e = usage_error(&["--leader-election=maybe"]);
        assert_eq!(
            e,
            "invalid boolean value \"maybe\" for -leader-election: parse error"
        );
    }

    #[test]
    fn a_boolean_never_takes_the_next_argument() {
        // Go leaves `false` as the first non-flag argument; we refuse leftovers.
        let e = usage_error(&["--enable-node-watcher", "false"]);
        assert_eq!(e, "unexpected argument \"false\"");
    }

    #[test]
    fn last_occurrence_wins() {
        let c = run(&["--timeout=1s", "-timeout", "2s", "--timeout=3s"]);
        assert_eq!(c.timeout, secs(3));
        let c = run(&["--v=5", "-v=2"]);
        assert_eq!(c.log.verbosity, 2);
        let c = run(&["--csi-address=/a", "--csi-address", "/b"]);
        assert_eq!(c.csi_address, PathBuf::from("/b"));
    }

    #[test]
    fn a_value_may_start_with_a_dash() {
        let c = run(&["--leader-election-namespace", "-odd-", "--leader-election"]);
        assert_eq!(c.leader_election.map(|l| l.namespace), Some("-odd-".into()));
    }

    #[test]
    fn values_that_look_like_flags_or_help_are_values() {
        // Go hands the next argument to a non-boolean flag whatever it looks like; argh must
        // not see it as its own --help or as the end of options.
        for value in ["--help", "help", "-h", "--"] {
            let c = run(&["--kubeconfig", value, "--v", "1"]);
            assert_eq!(c.kubeconfig, Some(PathBuf::from(value)));
            assert_eq!(c.log.verbosity, 1);
        }
    }

    #[test]
    fn labels_merge_and_reject_malformed_items() {
        let c = run(&[
            "--leader-election",
            "--leader-election-labels=a:1,b:2",
            "-leader-election-labels",
            "b:3,c:",
        ]);
        let labels = c.leader_election.map(|l| l.labels).unwrap_or_default();
        let want: BTreeMap<String, String> = [("a", "1"), ("b", "3"), ("c", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(labels, want);
        for (value, item) in [("a:1,b", "b"), ("a:b:c", "a:b:c"), ("", "")] {
            let e = usage_error(&["--leader-election-labels", value]);
            assert_eq!(
                e,
                format!(
                    "invalid value {value:?} for flag -leader-election-labels: malformed item in list of labels: {item}"
                )
            );
        }
    }

    #[test]
    fn bad_durations_name_the_flag() {
        let cases = [
            (&["--timeout=15"][..], "invalid value \"15\" for flag -timeout: missing unit in duration \"15\""),
            (&["-timeout", "abc"][..], "invalid value \"abc\" for flag -timeout: invalid duration \"abc\""),
            (&["--resync=5x"][..], "invalid value \"5x\" for flag -resync: unknown unit \"x\" in duration \"5x\""),
            (&["--monitor-interval=-1s"][..], "invalid value \"-1s\" for flag -monitor-interval: must be greater than zero"),
            (&["--monitor-interval=0"][..], "invalid value \"0\" for flag -monitor-interval: must be greater than zero"),
            (&["--timeout=0s"][..], "invalid value \"0s\" for flag -timeout: must be greater than zero"),
            (&["--list-volumes-interval=-5m"][..], "invalid value \"-5m\" for flag -list-volumes-interval: must be greater than zero"),
            (&["--resync=-1s"][..], "invalid value \"-1s\" for flag -resync: must not be negative"),
            (&["--node-not-ready-timeout=-1s"][..], "invalid value \"-1s\" for flag -node-not-ready-timeout: must not be negative"),
            (&["--leader-election-lease-duration=15"][..], "invalid value \"15\" for flag -leader-election-lease-duration: missing unit in duration \"15\""),
        ];
        for (argv, want) in cases {
            assert_eq!(usage_error(argv), want, "{argv:?}");
        }
    }

    #[test]
    fn bad_numbers_and_strings_name_the_flag() {
        let cases = [
            (&["--worker-threads=-1"][..], "invalid value \"-1\" for flag -worker-threads: parse error"),
            (&["--worker-threads=ten"][..], "invalid value \"ten\" for flag -worker-threads: parse error"),
            (&["--kube-api-burst=-1"][..], "invalid value \"-1\" for flag -kube-api-burst: must not be negative"),
            (&["--kube-api-burst=99999999999999999999"][..], "invalid value \"99999999999999999999\" for flag -kube-api-burst: value out of range"),
            (&["--kube-api-qps=fast"][..], "invalid value \"fast\" for flag -kube-api-qps: parse error"),
            (&["--kube-api-qps=NaN"][..], "invalid value \"NaN\" for flag -kube-api-qps: must be a finite number"),
            (&["--kube-api-qps=1e-20"][..], "invalid value \"1e-20\" for flag -kube-api-qps: must be at least 0.01 (0 takes client-go's default, a negative value turns the limit off)"),
            (&["--list-volumes-max-entries=-1"][..], "invalid value \"-1\" for flag -list-volumes-max-entries: must not be negative"),
            (&["--list-volumes-max-entries=3000000000"][..], "invalid value \"3000000000\" for flag -list-volumes-max-entries: value out of range"),
            (&["--logging-format=xml"][..], "invalid value \"xml\" for flag -logging-format: unsupported log format \"xml\", must be \"text\" or \"json\""),
            (&["--log-text-info-buffer-size=lots"][..], "invalid value \"lots\" for flag -log-text-info-buffer-size: invalid quantity \"lots\""),
            (&["--termination-log-path="][..], "invalid value \"\" for flag -termination-log-path: must not be empty"),
            (&["--volume-health-api=v13"][..], "invalid value \"v13\" for flag -volume-health-api: unsupported value \"v13\", must be \"auto\", \"health\" or \"condition\""),
            (&["--v=high"][..], "invalid value \"high\" for flag -v: parse error"),
        ];
        for (argv, want) in cases {
            assert_eq!(usage_error(argv), want, "{argv:?}");
        }
    }

    #[test]
    fn flag_syntax_errors() {
        let cases = [
            (
                &["--no-such-flag"][..],
                "flag provided but not defined: -no-such-flag",
            ),
            (
                &["-logtostderr"][..],
                "flag provided but not defined: -logtostderr",
            ),
            (
                &["--csiAddress=/x"][..],
                "flag provided but not defined: -csiAddress",
            ),
            (&["--timeout"][..], "flag needs an argument: -timeout"),
            (&["---timeout=1s"][..], "bad flag syntax: ---timeout=1s"),
            (&["-=1"][..], "bad flag syntax: -=1"),
            (&["positional"][..], "unexpected argument \"positional\""),
            (&["-"][..], "unexpected argument \"-\""),
            (&["--v=1", "--", "rest"][..], "unexpected argument \"rest\""),
        ];
        for (argv, want) in cases {
            assert_eq!(usage_error(argv), want, "{argv:?}");
        }
        // `--` alone just ends the flags.
        assert_eq!(run(&["--v=3", "--"]).log.verbosity, 3);
    }

    #[test]
    fn help_and_version() {
        for h in ["-h", "--h", "-help", "--help", "--help=1"] {
            match parse(&args(&[h])) {
                Ok(Parsed::Help(text)) => assert!(text.starts_with("Usage of "), "{h}"),
                other => panic!("{h}: {other:?}"),
            }
        }
        // Go reads flags in order: an error before -h wins, -h before an error wins.
        usage_error(&["--bogus", "-h"]);
        assert!(matches!(
            parse(&args(&["-h", "--bogus"])),
            Ok(Parsed::Help(_))
        ));
        assert_eq!(parse(&args(&["--version"])), Ok(Parsed::Version));
        assert_eq!(parse(&args(&["-version=true"])), Ok(Parsed::Version));
        // Upstream prints the version before its other fatal checks.
        assert_eq!(
            parse(&args(&["--version", "--worker-threads=0"])),
            Ok(Parsed::Version)
        );
        assert!(!VERSION.is_empty());
    }

    #[test]
    fn upstream_deployment_arguments() {
        let c = run(&[
            "--v=5",
            "--csi-address=/var/lib/csi/sockets/pluginproxy/mock.socket",
            "--leader-election",
            "--http-endpoint=:8080",
        ]);
        let mut want = default_config();
        want.log.verbosity = 5;
        want.csi_address = "/var/lib/csi/sockets/pluginproxy/mock.socket".into();
        want.leader_election = Some(LeaderElectionConfig {
            namespace: String::new(),
            lease_duration: secs(15),
            renew_deadline: secs(10),
            retry_period: secs(5),
            labels: BTreeMap::new(),
        });
        want.http = Some(HttpConfig {
            address: ":8080".into(),
            metrics_path: "/metrics".into(),
            deprecated_metrics_address: false,
        });
        assert_eq!(c, want);
    }

    #[test]
    fn upstream_fatal_checks_exit_one() {
        assert_eq!(
            invalid(&["--worker-threads=0"]),
            "Option --worker-threads must be greater than zero"
        );
        assert_eq!(
            invalid(&["--worker-threads=1001"]),
            "--worker-threads 1001 is more than 1000, the most this sidecar starts"
        );
        assert_eq!(
            invalid(&["--worker-threads=18446744073709551615"]),
            "--worker-threads 18446744073709551615 is more than 1000, the most this sidecar starts"
        );
        assert_eq!(
            invalid(&["--http-endpoint=:8080", "--metrics-address=:9090"]),
            "Only one of `--metrics-address` and `--http-endpoint` can be set."
        );
        let e = invalid(&["--csi-address=tcp://127.0.0.1:10000"]);
        assert!(
            e.contains("--csi-address") && e.contains("only unix:// addresses are supported"),
            "{e}"
        );
        let e = invalid(&["--csi-address=relative.sock"]);
        assert!(e.contains("only unix://"), "{e}");
        assert!(invalid(&["--csi-address="]).contains("--csi-address"));
        assert!(invalid(&["--csi-address=unix://"]).contains("no socket path"));
        assert!(invalid(&["--logging-format=json", "--vmodule=foo=3"]).contains("--vmodule"));
        assert!(
            invalid(&["--http-endpoint=:1", "--metrics-path=metrics"]).contains("--metrics-path")
        );
    }

    #[test]
    fn leader_election_durations_are_checked_only_when_enabled() {
        let le = "--leader-election";
        let cases = [
            (&["--leader-election-lease-duration=10s"][..], "--leader-election-lease-duration (10s) must be greater than --leader-election-renew-deadline (10s)"),
            (&["--leader-election-renew-deadline=6s"][..], "--leader-election-renew-deadline (6s) must be greater than 1.2 times --leader-election-retry-period (5s)"),
            (&["--leader-election-retry-period=0"][..], "--leader-election-retry-period (0s) must be greater than zero"),
            (&["--leader-election-lease-duration=-15s"][..], "--leader-election-lease-duration (-15s) must be greater than zero"),
            (&["--leader-election-lease-duration=1h0m0.001s"][..], "--leader-election-lease-duration (1h0m0.001s) must be at most 1h0m0s, the longest lease any replica honours"),
        ];
        for (argv, want) in cases {
            let mut with = vec![le];
            with.extend_from_slice(argv);
            assert_eq!(invalid(&with), want, "{argv:?}");
            // Without leader election the values are unused, as upstream.
            assert_eq!(run(argv).leader_election, None);
        }
        let c = run(&[le, "--leader-election-lease-duration=1h"]);
        assert_eq!(
            c.leader_election.map(|l| l.lease_duration),
            Some(Duration::from_secs(3600))
        );
        let c = run(&[le, "--leader-election-renew-deadline=6001ms"]);
        assert_eq!(
            c.leader_election.map(|l| l.renew_deadline),
            Some(Duration::from_millis(6001))
        );
    }

    #[test]
    fn csi_address_forms() {
        for (addr, want) in [
            ("/p/csi.sock", "/p/csi.sock"),
            ("unix:///p/csi.sock", "/p/csi.sock"),
            ("unix:/p/csi.sock", "/p/csi.sock"),
            ("unix://rel/csi.sock", "rel/csi.sock"),
        ] {
            assert_eq!(csi_socket_path(addr), Ok(PathBuf::from(want)), "{addr}");
        }
        for addr in ["tcp://host:1", "dns:///x", "csi.sock", ""] {
            assert!(csi_socket_path(addr).is_err(), "{addr}");
        }
    }

    #[test]
    fn client_go_rate_defaults() {
        assert_eq!(run(&["--kube-api-qps=0"]).kube_api_qps, 5.0);
        assert_eq!(run(&["--kube-api-qps=-1"]).kube_api_qps, f64::INFINITY);
        assert_eq!(run(&["--kube-api-qps=0.01"]).kube_api_qps, 0.01);
        assert_eq!(run(&["--kube-api-qps=1e300"]).kube_api_qps, 1e300);
        assert_eq!(run(&["--worker-threads=1000"]).worker_threads, 1000);
        assert_eq!(run(&["--kube-api-burst=0"]).kube_api_burst, 10);
    }

    #[test]
    fn verbosity_is_clamped() {
        assert_eq!(run(&["--v=-1"]).log.verbosity, 0);
        assert_eq!(run(&["--v=1000"]).log.verbosity, 255);
    }

    #[test]
    fn flags_without_effect_are_accepted_with_a_warning() {
        let (p, w) = parse_with_warnings(&args(&[
            "--automaxprocs",
            "--vmodule=x=2",
            "--log-flush-frequency=1s",
            "--log-text-split-stream=false",
            "--log-json-split-stream",
            "--log-text-info-buffer-size=64Ki",
            "--log-json-info-buffer-size",
            "1M",
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(p, Parsed::Run(_)));
        let named: Vec<&str> = w
            .iter()
            .map(|m| m.split_whitespace().nth(1).unwrap_or(""))
            .collect();
        assert_eq!(
            named,
            [
                "--automaxprocs",
                "--vmodule",
                "--log-flush-frequency",
                "--log-text-info-buffer-size",
                "--log-json-split-stream",
                "--log-json-info-buffer-size",
            ]
        );
        assert!(parse_with_warnings(&[])
            .map(|(_, w)| w.is_empty())
            .unwrap_or(false));
    }

    #[test]
    fn go_durations() {
        let ok: &[(&str, i64)] = &[
            ("0", 0),
            ("-0", 0),
            ("+0", 0),
            ("5s", 5_000_000_000),
            ("30s", 30_000_000_000),
            ("1478s", 1_478_000_000_000),
            ("-5s", -5_000_000_000),
            ("+5s", 5_000_000_000),
            ("5.0s", 5_000_000_000),
            ("5.6s", 5_600_000_000),
            ("5.s", 5_000_000_000),
            (".5s", 500_000_000),
            ("1.004s", 1_004_000_000),
            ("100.00100s", 100_001_000_000),
            ("10ns", 10),
            ("11us", 11_000),
            ("12\u{b5}s", 12_000),
            ("12\u{3bc}s", 12_000),
            ("13ms", 13_000_000),
            ("14s", 14_000_000_000),
            ("15m", 900_000_000_000),
            ("16h", 57_600_000_000_000),
            ("3h30m", 12_600_000_000_000),
            ("10.5s4m", 250_500_000_000),
            ("-2m3.4s", -123_400_000_000),
            ("1h2m3s4ms5us6ns", 3_723_004_005_006),
            ("39h9m14.425s", 140_954_425_000_000),
            ("52763797000ns", 52_763_797_000),
            ("0.3333333333333333333h", 1_200_000_000_000),
            ("9007199254740993ns", 9_007_199_254_740_993),
            ("9223372036854775807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("0.100000000000000000000h", 360_000_000_000),
            ("1m30s", 90_000_000_000),
            ("300ms", 300_000_000),
            ("1.5h", 5_400_000_000_000),
        ];
        for (s, want) in ok {
            assert_eq!(parse_go_duration(s), Ok(*want), "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "invalid duration \"\""),
            ("3", "missing unit in duration \"3\""),
            ("15", "missing unit in duration \"15\""),
            ("-", "invalid duration \"-\""),
            ("s", "invalid duration \"s\""),
            (".", "invalid duration \".\""),
            ("-.", "invalid duration \"-.\""),
            (".s", "invalid duration \".s\""),
            ("+.s", "invalid duration \"+.s\""),
            ("abc", "invalid duration \"abc\""),
            ("1d", "unknown unit \"d\" in duration \"1d\""),
            ("3000000h", "invalid duration \"3000000h\""),
            (
                "9223372036854775808ns",
                "invalid duration \"9223372036854775808ns\"",
            ),
            (
                "9223372036854775.808us",
                "invalid duration \"9223372036854775.808us\"",
            ),
            (
                "9223372036854ms775us808ns",
                "invalid duration \"9223372036854ms775us808ns\"",
            ),
            (
                "-9223372036854775809ns",
                "invalid duration \"-9223372036854775809ns\"",
            ),
            ("1s 2s", "unknown unit \"s \" in duration \"1s 2s\""),
        ];
        for (s, want) in bad {
            assert_eq!(parse_go_duration(s), Err(want.to_string()), "{s}");
        }
    }

    #[test]
    fn go_duration_strings() {
        let cases: &[(i64, &str)] = &[
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1\u{b5}s"),
            (2_200_000, "2.2ms"),
            (3_300_000_000, "3.3s"),
            (60_000_000_000, "1m0s"),
            (300_000_000_000, "5m0s"),
            (4_000_000_000 + 5 * 60_000_000_000, "5m4s"),
            (5_400_000_000_000, "1h30m0s"),
            (-15_000_000_000, "-15s"),
            (i64::MAX, "2562047h47m16.854775807s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ];
        for (n, want) in cases {
            assert_eq!(go_duration_string(*n), *want, "{n}");
        }
    }

    #[test]
    fn go_integers() {
        let ok: &[(&str, i64)] = &[
            ("0", 0),
            ("10", 10),
            ("-10", -10),
            ("+7", 7),
            ("0x1f", 31),
            ("0X1F", 31),
            ("0o17", 15),
            ("017", 15),
            ("0b101", 5),
            ("0x_1f", 31),
            ("0b1_0_1", 5),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ];
        for (s, want) in ok {
            assert_eq!(parse_go_int(s), Ok(*want), "{s}");
        }
        for (s, err) in [
            ("", ERR_PARSE),
            ("-", ERR_PARSE),
            ("1_000", ERR_PARSE),
            ("0x", ERR_PARSE),
            ("0x1__f", ERR_PARSE),
            ("0x1f_", ERR_PARSE),
            ("089", ERR_PARSE),
            ("1.5", ERR_PARSE),
            ("--1", ERR_PARSE),
            ("9223372036854775808", ERR_RANGE),
            ("-9223372036854775809", ERR_RANGE),
        ] {
            assert_eq!(parse_go_int(s), Err(err), "{s}");
        }
        assert_eq!(parse_go_uint("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_go_uint("+1"), Err(ERR_PARSE));
        assert_eq!(parse_go_uint("18446744073709551616"), Err(ERR_RANGE));
    }

    #[test]
    fn quantities() {
        for q in [
            "0", "1", "64Ki", "1M", "1.5Gi", "+1", "-1", ".5", "5.", "1e3", "1E-2", "100m", "2n",
        ] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "Ki", "1KB", "1e", "1.2.3", "lots", "1 Ki", "."] {
            assert!(!is_quantity(q), "{q}");
        }
    }

    #[test]
    fn usage_lists_every_flag_like_go() {
        let u = usage("/hm");
        assert!(u.starts_with("Usage of /hm:\n"));
        for s in FLAGS {
            let head = match s.kind.usage_word() {
                "" => format!("\n  -{}\n", s.name),
                w => format!("\n  -{} {w}\n", s.name),
            };
            assert!(u.contains(&head), "{head:?} missing");
        }
        assert!(u.contains("  -csi-address string\n    \tAddress of the CSI driver socket. (default \"/run/csi/socket\")\n"));
        assert!(u.contains("  -monitor-interval duration\n    \tInterval for controller to check volumes health condition. (default 1m0s)\n"));
        assert!(u.contains("  -kube-api-qps float\n    \tQPS to use while communicating with the kubernetes apiserver. (default 5)\n"));
        assert!(u.contains("  -leader-election\n    \tEnable leader election.\n"));
        assert!(
            u.contains("(default true)"),
            "report-missing-volumes defaults to true"
        );
        assert!(u.contains("  -v int\n"));
        // Sorted by name, as Go's PrintDefaults: every flag's own head line, found (a missing
        // one fails, not sorts last), at increasing offsets in name order.
        let mut names: Vec<&str> = FLAGS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let offsets: Vec<usize> = names
            .iter()
            .map(|n| {
                let s = FLAGS.iter().find(|s| s.name == *n).unwrap();
                let head = match s.kind.usage_word() {
                    "" => format!("\n  -{n}\n"),
                    w => format!("\n  -{n} {w}\n"),
                };
                u.find(&head).unwrap_or_else(|| panic!("{head:?} missing"))
            })
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "flags out of name order: {:?}",
            names.iter().zip(&offsets).collect::<Vec<_>>()
        );
        assert!(
            names.contains(&"v") && names.contains(&"vmodule") && names.contains(&"worker-threads")
        );
        let table = flag_table();
        assert_eq!(table.len(), FLAGS.len());
        assert!(table
            .iter()
            .any(|f| f.name == "leader-election-labels" && f.kind == "labels"));
    }
}
