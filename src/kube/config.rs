//! Where the API server is and how to authenticate: kubeconfig files (`--kubeconfig`) and the
//! in-cluster service account, checked up front so a bad file is an error naming the file and
//! field, never a panic inside the TLS stack. Also the runtime credential sources (token file
//! re-read, exec plugins with expiry) the client asks for an `Authorization` header: refreshed
//! one at a time on a thread of their own, waited for with the caller's deadline, a plugin run
//! bounded and killed with its process group.

use super::error::Error;
use super::object::{zero_if_malformed, OrNot};
use crate::shutdown::Shutdown;
use crate::timeutil;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, DecodeError, Engine};
use crossbeam_channel::{Receiver, Sender};
use rustix::process::{kill_process_group, waitid, Pid, Signal, WaitId, WaitIdOptions};
use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Tag};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// The in-cluster service-account directory (client-go's `rest.InClusterConfig`).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// client-go re-reads a token file at most this often (`transport.NewCachedFileTokenSource`);
/// bound service-account tokens rotate hourly, so once a minute is plenty.
pub const TOKEN_FILE_REFRESH: Duration = Duration::from_secs(60);

/// An exec credential plugin that has not exited by then is killed with its process group and
/// the request fails (the next one runs it again). client-go sets no bound; plugins answer in
/// milliseconds to a few seconds (a cloud CLI fetching a token), and this only has to end a
/// hung one. Requests with a deadline of their own (the Lease renewal) wait for the plugin no
/// longer than that.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// After the plugin exited, how long a process it left behind may keep its output open before
/// the plugin's process group is killed (the output written by then is still read).
const EXEC_OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// How often a running plugin is checked for its exit.
const EXEC_POLL: Duration = Duration::from_millis(20);
/// The most a plugin's output may hold.
const EXEC_MAX_OUTPUT: u64 = 16 << 20;

/// Everything needed to build a client. Secrets are redacted from `Debug`.
#[derive(Clone)]
pub struct ClientConfig {
    /// `https://host:port` (maybe with a path prefix), no trailing slash.
    pub server: String,
    /// PEM bundle of trusted CAs; `None` = the built-in web PKI roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and key (PEM), already checked to be usable.
    pub identity: Option<Identity>,
    pub insecure_skip_tls_verify: bool,
    /// The cluster's `proxy-url`; when `None` the client uses `HTTPS_PROXY`/`NO_PROXY`.
    pub proxy_url: Option<String>,
    pub auth: Auth,
    /// Where this came from, for error messages: `kubeconfig /path` or `in-cluster config`.
    pub source: String,
    /// The context's namespace (`None` in-cluster: the caller reads the SA namespace file).
    pub namespace: Option<String>,
}

#[derive(Clone)]
pub struct Identity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// How requests authenticate.
#[derive(Clone)]
pub enum Auth {
    None,
    Token(String),
    /// Re-read at most every `TOKEN_FILE_REFRESH`; the last good token is kept when a re-read
    /// fails (kubernetes#68164: the kubelet rewrites the file, a read may catch it empty).
    TokenFile {
        path: PathBuf,
        initial: Option<String>,
    },
    Basic {
        username: String,
        password: String,
    },
    Exec(ExecConfig),
}

/// A `client.authentication.k8s.io` exec plugin.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecConfig {
    pub api_version: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub install_hint: String,
    /// Cluster info passed in `KUBERNETES_EXEC_INFO` when `provideClusterInfo` is set.
    pub cluster_info: Option<ClusterInfo>,
    /// For error messages: `kubeconfig /path: users[name].user.exec`.
    pub source: String,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Auth::None => "none".to_string(),
            Auth::Token(_) => "token (redacted)".to_string(),
            Auth::TokenFile { path, .. } => format!("token file {}", path.display()),
            Auth::Basic { username, .. } => format!("basic {username}"),
            Auth::Exec(e) => format!("exec {}", e.command),
        };
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("ca", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("client_cert", &self.identity.is_some())
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("proxy_url", &self.proxy_url)
            .field("auth", &auth)
            .field("source", &self.source)
            .finish()
    }
}

fn cfg_err(source: &str, field: &str, message: impl Into<String>) -> Error {
    Error::Config {
        source: source.to_string(),
        field: field.to_string(),
        message: message.into(),
    }
}

/// Kubeconfig when a path is given, else the in-cluster service account.
pub fn load_config(kubeconfig: Option<&Path>) -> Result<ClientConfig, Error> {
    match kubeconfig {
        Some(p) => load_kubeconfig(p),
        None => load_in_cluster(&|k| std::env::var(k).ok(), Path::new(SERVICE_ACCOUNT_DIR)),
    }
}

/// In-cluster config from `KUBERNETES_SERVICE_HOST/PORT` and the files in `sa_dir`.
pub fn load_in_cluster(
    env: &dyn Fn(&str) -> Option<String>,
    sa_dir: &Path,
) -> Result<ClientConfig, Error> {
    let source = "in-cluster config";
    let host = env("KUBERNETES_SERVICE_HOST").filter(|s| !s.is_empty());
    let port = env("KUBERNETES_SERVICE_PORT").filter(|s| !s.is_empty());
    let (Some(host), Some(port)) = (host, port) else {
        return Err(cfg_err(
            source,
            "KUBERNETES_SERVICE_HOST",
            "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined (or pass --kubeconfig)",
        ));
    };
    // net.JoinHostPort: an IPv6 literal needs brackets in a URL.
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let token_path = sa_dir.join("token");
    let token = read_token_file(&token_path)
        .map_err(|m| cfg_err(source, &token_path.display().to_string(), m))?;
    let ca_path = sa_dir.join("ca.crt");
    let ca = std::fs::read(&ca_path).map_err(|e| {
        cfg_err(
            source,
            &ca_path.display().to_string(),
            format!("cannot read: {e}"),
        )
    })?;
    check_ca(&ca).map_err(|m| cfg_err(source, &ca_path.display().to_string(), m))?;
    Ok(ClientConfig {
        server: format!("https://{host}:{port}"),
        ca_pem: Some(ca),
        identity: None,
        insecure_skip_tls_verify: false,
        proxy_url: None,
        auth: Auth::TokenFile {
            path: token_path,
            initial: Some(token),
        },
        source: source.to_string(),
        namespace: None,
    })
}

fn read_token_file(path: &Path) -> Result<String, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("cannot read token: {e}"))?;
    let t = s.trim();
    if t.is_empty() {
        return Err("token file is empty".to_string());
    }
    Ok(t.to_string())
}

/// Load `path` and resolve its current context.
pub fn load_kubeconfig(path: &Path) -> Result<ClientConfig, Error> {
    let source = format!("kubeconfig {}", path.display());
    let text = std::fs::read_to_string(path)
        .map_err(|e| cfg_err(&source, "", format!("cannot read: {e}")))?;
    let doc =
        parse_yaml(&text).map_err(|e| cfg_err(&source, "", format!("not valid YAML: {e}")))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    kubeconfig_from_value(&doc, &source, &dir)
}

/// The deepest nesting read: serde_json's own recursion limit, so any JSON kubeconfig is still
/// read. The parser keeps its state on the heap; this bound is for the tree built here, whose
/// drop and walk recurse: a line of 100,000 `[` is an error, not a stack overflow.
const YAML_MAX_DEPTH: usize = 128;

/// How many nodes aliases may add by repetition. A kubeconfig repeats a few small maps; this is
/// far more, and it stops a "billion laughs" file (each alias doubling the one before) before it
/// fills memory.
const YAML_MAX_ALIAS_NODES: usize = 100_000;

/// A collection whose end event has not come yet.
enum Open {
    Seq {
        items: Vec<Value>,
        anchor: usize,
        nodes: usize,
    },
    Map {
        entries: Map<String, Value>,
        key: Option<Key>,
        /// `<<: *base` sources, applied at the end so the map's own keys win (YAML 1.1 merge
        /// keys, which Go's yaml package and so kubectl honour).
        merges: Vec<Map<String, Value>>,
        anchor: usize,
        nodes: usize,
    },
}

struct Key {
    name: String,
    at: Marker,
    merge: bool,
}

fn at(m: &Marker, message: &str) -> String {
    format!("line {} column {}: {message}", m.line(), m.col() + 1)
}

/// Read the first YAML document of `text` (JSON is YAML too) into the tree the loader walks;
/// plain scalars are typed by the YAML 1.2 core schema, keys are strings. An empty document is
/// `Null`. Errors give line and column and never quote a value (values hold credentials).
/// The tokenizer and parser are `saphyr-parser`'s; this builds the tree from its events.
pub fn parse_yaml(text: &str) -> Result<Value, String> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, (Value, usize)> = HashMap::new();
    let mut alias_nodes = 0usize;
    let mut root = None;
    loop {
        let (event, span) = match parser.next_event() {
            None => return Ok(root.unwrap_or(Value::Null)),
            Some(Err(e)) if e.info().contains("tab") => {
                return Err(match tab_indent(text, e.marker().line()) {
                    Some((line, col)) => {
                        format!("line {line} column {col}: tab used for indentation")
                    }
                    None => at(e.marker(), e.info()),
                })
            }
            Some(Err(e)) => return Err(at(e.marker(), e.info())),
            Some(Ok(x)) => x,
        };
        let mark = span.start;
        let awaiting_key = matches!(stack.last(), Some(Open::Map { key: None, .. }));
        // A finished node: its value, how many nodes it holds and its anchor (0 = none).
        let (value, nodes, anchor) = match event {
            Event::Nothing | Event::StreamStart | Event::DocumentStart(_) => continue,
            // Only the first document is read, as client-go's decoder does.
            Event::DocumentEnd | Event::StreamEnd => return Ok(root.unwrap_or(Value::Null)),
            Event::Scalar(text, style, anchor, tag) => {
                if awaiting_key {
                    let merge = style == ScalarStyle::Plain && text == "<<";
                    let name = text.into_owned();
                    if anchor != 0 {
                        anchors.insert(anchor, (Value::String(name.clone()), 1));
                    }
                    if let Some(Open::Map { key, .. }) = stack.last_mut() {
                        *key = Some(Key {
                            name,
                            at: mark,
                            merge,
                        });
                    }
                    continue;
                }
                (scalar(text, style, tag.as_deref()), 1, anchor)
            }
            Event::Alias(id) => {
                let Some((v, n)) = anchors.get(&id) else {
                    return Err(at(&mark, "alias to an unknown anchor"));
                };
                alias_nodes += n;
                if alias_nodes > YAML_MAX_ALIAS_NODES {
                    return Err(at(
                        &mark,
                        &format!("aliases repeat more than {YAML_MAX_ALIAS_NODES} nodes"),
                    ));
                }
                if awaiting_key {
                    let Value::String(name) = v else {
                        return Err(at(&mark, "a map key must be a string"));
                    };
                    let name = name.clone();
                    if let Some(Open::Map { key, .. }) = stack.last_mut() {
                        *key = Some(Key {
                            name,
                            at: mark,
                            merge: false,
                        });
                    }
                    continue;
                }
                (v.clone(), *n, 0)
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if awaiting_key {
                    return Err(at(&mark, "a map key must be a string, not a list or map"));
                }
                if stack.len() >= YAML_MAX_DEPTH {
                    return Err(at(
                        &mark,
                        &format!("nested more than {YAML_MAX_DEPTH} levels deep"),
                    ));
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Open::Seq {
                        items: Vec::new(),
                        anchor,
                        nodes: 1,
                    }
                } else {
                    Open::Map {
                        entries: Map::new(),
                        key: None,
                        merges: Vec::new(),
                        anchor,
                        nodes: 1,
                    }
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Open::Seq {
                    items,
                    anchor,
                    nodes,
                }) => (Value::Array(items), nodes, anchor),
                Some(Open::Map {
                    mut entries,
                    merges,
                    anchor,
                    nodes,
                    ..
                }) => {
                    for m in merges {
                        for (k, v) in m {
                            entries.entry(k).or_insert(v);
                        }
                    }
                    (Value::Object(entries), nodes, anchor)
                }
                // The parser balances its events; never trust that to the point of a panic.
                None => return Err(at(&mark, "unbalanced end of a list or map")),
            },
        };
        if anchor != 0 {
            anchors.insert(anchor, (value.clone(), nodes));
        }
        match stack.last_mut() {
            None => root = Some(value),
            Some(Open::Seq {
                items, nodes: n, ..
            }) => {
                items.push(value);
                *n += nodes;
            }
            Some(Open::Map {
                entries,
                key,
                merges,
                nodes: n,
                ..
            }) => {
                let Some(k) = key.take() else {
                    return Err(at(&mark, "a map value without a key"));
                };
                *n += nodes;
                if k.merge {
                    match value {
                        Value::Object(m) => merges.push(m),
                        Value::Array(list) if list.iter().all(Value::is_object) => {
                            merges.extend(list.into_iter().filter_map(|v| match v {
                                Value::Object(m) => Some(m),
                                _ => None,
                            }))
                        }
                        _ => {
                            return Err(at(&k.at, "the merge key << takes a map or a list of maps"))
                        }
                    }
                } else if entries.contains_key(&k.name) {
                    return Err(at(&k.at, &format!("duplicate key {:?}", k.name)));
                } else {
                    entries.insert(k.name, value);
                }
            }
        }
    }
}

/// The first tab in a line's indentation from line `from` on: the parser reports some of these
/// at the start of the scalar before the tab, a line or more too early.
fn tab_indent(text: &str, from: usize) -> Option<(usize, usize)> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find_map(|(i, l)| {
            let indent = l.len() - l.trim_start_matches([' ', '\t']).len();
            l[..indent].find('\t').map(|c| (i + 1, c + 1))
        })
}

/// A scalar's value: quoted and block scalars are strings, plain ones are typed (a core-schema
/// tag such as `!!str` overrides the style).
fn scalar(text: Cow<'_, str>, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    let core = tag
        .filter(|t| t.is_yaml_core_schema())
        .map(|t| t.suffix.as_str());
    match (style, core) {
        (_, Some("str")) => Value::String(text.into_owned()),
        (ScalarStyle::Plain, _) | (_, Some("int" | "float" | "bool" | "null")) => plain(&text),
        _ => Value::String(text.into_owned()),
    }
}

/// Plain scalar typing, YAML 1.2 core schema (what `kubectl` and Go's yaml read).
fn plain(t: &str) -> Value {
    match t {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ => {
            if let Ok(i) = t.parse::<i64>() {
                return Value::from(i);
            }
            // Rust also parses `inf` and `NaN`, which YAML spells `.inf` and `.nan`.
            if t.bytes()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == b'-' || c == b'.')
            {
                if let Ok(f) = t.parse::<f64>() {
                    if let Some(n) = serde_json::Number::from_f64(f) {
                        return Value::Number(n);
                    }
                }
            }
            Value::String(t.to_string())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The kubeconfig's shape: decoded from the YAML document into these types, each field kept as
// written (`Field`) so that it is checked where it is used, in client-go's order, and a wrong
// one is an error naming it only when the chosen context reaches it.

/// A kubeconfig value as written: absent (or `null`), of the expected type, or of another.
#[derive(Debug, Default)]
enum Field<T> {
    #[default]
    Absent,
    Is(T),
    Wrong,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<OrNot<T>>::deserialize(d)? {
            None => Field::Absent,
            Some(OrNot::Is(v)) => Field::Is(v),
            Some(OrNot::Not(_)) => Field::Wrong,
        })
    }
}

impl Field<String> {
    /// A string setting `key` of the map at `field`: `None` when absent, `null` or empty.
    fn text(&self, source: &str, field: &str, key: &str) -> Result<Option<&str>, Error> {
        match self {
            Field::Absent => Ok(None),
            Field::Is(s) if s.is_empty() => Ok(None),
            Field::Is(s) => Ok(Some(s)),
            Field::Wrong => Err(cfg_err(
                source,
                &format!("{field}.{key}"),
                "must be a string",
            )),
        }
    }
}

impl<T: Default> Field<T> {
    /// A map of settings: absent, `null` or not a map at all reads as an empty one (a
    /// caller that must refuse a non-map checks first).
    fn or_empty(self) -> T {
        match self {
            Field::Is(v) => v,
            Field::Absent | Field::Wrong => T::default(),
        }
    }
}

/// A boolean setting, as client-go's YAML decoding accepts it: a bool or the words.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Word(String),
}

impl Field<Flag> {
    fn flag(&self, source: &str, field: &str, key: &str) -> Result<bool, Error> {
        match self {
            Field::Absent => Ok(false),
            Field::Is(Flag::Bool(b)) => Ok(*b),
            Field::Is(Flag::Word(w)) if w == "true" || w == "false" => Ok(w == "true"),
            Field::Is(Flag::Word(_)) | Field::Wrong => Err(cfg_err(
                source,
                &format!("{field}.{key}"),
                "must be true or false",
            )),
        }
    }
}

/// A map only: the flattened rest makes serde read the type from a map, never from a list
/// (whose items it would otherwise take for the fields in order).
type Rest = HashMap<String, IgnoredAny>;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KubeconfigWire {
    #[serde(rename = "current-context")]
    current_context: Field<String>,
    contexts: Field<Vec<Field<Named<ContextEntry>>>>,
    clusters: Field<Vec<Field<Named<ClusterEntry>>>>,
    users: Field<Vec<Field<Named<UserEntry>>>>,
}

/// An item of `contexts`, `clusters` or `users`: a name and its inner map.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Named<E> {
    name: Field<String>,
    #[serde(flatten)]
    entry: E,
}

/// The inner map of one list item, by the list's name for it.
trait Entry {
    type Inner;
    const LIST: &'static str;
    const INNER: &'static str;
    fn inner(self) -> Field<Self::Inner>;
}

/// The item type of one kubeconfig list: `entry!(Type, inner_key: Inner, "list")`.
macro_rules! entry {
    ($entry:ident, $key:ident: $inner:ty, $list:literal) => {
        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        struct $entry {
            $key: Field<$inner>,
        }

        impl Entry for $entry {
            type Inner = $inner;
            const LIST: &'static str = $list;
            const INNER: &'static str = stringify!($key);
            fn inner(self) -> Field<$inner> {
                self.$key
            }
        }
    };
}

entry!(ContextEntry, context: ContextWire, "contexts");
entry!(ClusterEntry, cluster: ClusterWire, "clusters");
entry!(UserEntry, user: UserWire, "users");

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ContextWire {
    cluster: Field<String>,
    user: Field<String>,
    namespace: Field<String>,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct ClusterWire {
    server: Field<String>,
    insecure_skip_tls_verify: Field<Flag>,
    certificate_authority: Field<String>,
    certificate_authority_data: Field<String>,
    tls_server_name: Field<String>,
    proxy_url: Field<String>,
    extensions: Field<Vec<Field<ExtensionWire>>>,
    #[serde(flatten)]
    _rest: Rest,
}

/// A named cluster extension; the exec one is handed to the plugin as it is written.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ExtensionWire {
    name: Field<String>,
    extension: Value,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct UserWire {
    client_certificate: Field<String>,
    client_certificate_data: Field<String>,
    client_key: Field<String>,
    client_key_data: Field<String>,
    /// Only whether one is set matters: it is refused.
    auth_provider: Option<IgnoredAny>,
    token: Field<String>,
    #[serde(rename = "tokenFile")]
    token_file: Field<String>,
    username: Field<String>,
    password: Field<String>,
    exec: Field<ExecWire>,
    #[serde(flatten)]
    _rest: Rest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ExecWire {
    api_version: Field<String>,
    command: Field<String>,
    args: Field<Vec<Field<ArgWire>>>,
    env: Field<Vec<Field<EnvWire>>>,
    interactive_mode: Field<String>,
    install_hint: Field<String>,
    provide_cluster_info: Field<bool>,
    #[serde(flatten)]
    _rest: Rest,
}

/// An exec argument: YAML numbers and booleans are taken as the text they were written as.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ArgWire {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct EnvWire {
    name: Field<String>,
    /// Text as written; any other value is taken as its JSON text.
    value: Value,
    #[serde(flatten)]
    _rest: Rest,
}

/// Find `name` in the list `E::LIST` (`contexts`, `clusters`, `users`): its inner map, and the
/// field path naming it.
fn named<E: Entry>(
    list: Field<Vec<Field<Named<E>>>>,
    name: &str,
    source: &str,
) -> Result<(E::Inner, String), Error>
where
    E::Inner: Default,
{
    let items = match list {
        Field::Absent => Vec::new(),
        Field::Is(items) => items,
        Field::Wrong => return Err(cfg_err(source, E::LIST, "must be a list")),
    };
    for item in items {
        let Field::Is(item) = item else { continue };
        if matches!(&item.name, Field::Is(n) if n == name) {
            let field = format!("{}[{name}].{}", E::LIST, E::INNER);
            return match item.entry.inner() {
                Field::Is(v) => Ok((v, field)),
                Field::Absent => Ok((E::Inner::default(), field)),
                Field::Wrong => Err(cfg_err(source, &field, "must be a map")),
            };
        }
    }
    Err(cfg_err(source, E::LIST, format!("no entry named {name:?}")))
}

fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// `<key>-data` (base64) wins over `<key>` (a path), as in client-go.
fn data_or_file(
    (data, path): (&Field<String>, &Field<String>),
    key: &str,
    dir: &Path,
    source: &str,
    field: &str,
) -> Result<Option<Vec<u8>>, Error> {
    let data_key = format!("{key}-data");
    if let Some(d) = data.text(source, field, &data_key)? {
        let bytes =
            base64_decode(d).map_err(|m| cfg_err(source, &format!("{field}.{data_key}"), m))?;
        return Ok(Some(bytes));
    }
    if let Some(p) = path.text(source, field, key)? {
        let path = resolve(dir, p);
        let bytes = std::fs::read(&path).map_err(|e| {
            cfg_err(
                source,
                &format!("{field}.{key}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        return Ok(Some(bytes));
    }
    Ok(None)
}

pub(crate) fn kubeconfig_from_value(
    doc: &Value,
    source: &str,
    dir: &Path,
) -> Result<ClientConfig, Error> {
    if !doc.is_object() {
        return Err(cfg_err(
            source,
            "",
            "not a kubeconfig (expected a map at the top level)",
        ));
    }
    // Every field reads as `Field`, so only a document that is no map at all fails here.
    let kc = KubeconfigWire::deserialize(doc)
        .map_err(|e| cfg_err(source, "", format!("not a kubeconfig: {e}")))?;
    let Some(ctx_name) = kc.current_context.text(source, "", "current-context")? else {
        return Err(cfg_err(source, "current-context", "is not set"));
    };
    let (ctx, ctx_field) = named::<ContextEntry>(kc.contexts, ctx_name, source)?;
    let Some(cluster_name) = ctx.cluster.text(source, &ctx_field, "cluster")? else {
        return Err(cfg_err(
            source,
            &format!("{ctx_field}.cluster"),
            "is not set",
        ));
    };
    let (cluster, cl_field) = named::<ClusterEntry>(kc.clusters, cluster_name, source)?;
    let Some(server) = cluster.server.text(source, &cl_field, "server")? else {
        return Err(cfg_err(source, &format!("{cl_field}.server"), "is not set"));
    };
    if !(server.starts_with("https://") || server.starts_with("http://")) {
        return Err(cfg_err(
            source,
            &format!("{cl_field}.server"),
            format!("{server:?} is not an http(s) URL"),
        ));
    }
    let insecure =
        cluster
            .insecure_skip_tls_verify
            .flag(source, &cl_field, "insecure-skip-tls-verify")?;
    let ca_pem = data_or_file(
        (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ),
        "certificate-authority",
        dir,
        source,
        &cl_field,
    )?;
    if let Some(ca) = &ca_pem {
        if insecure {
            return Err(cfg_err(
                source,
                &format!("{cl_field}.insecure-skip-tls-verify"),
                "specifying a root certificates file with the insecure flag is not allowed",
            ));
        }
        check_ca(ca)
            .map_err(|m| cfg_err(source, &format!("{cl_field}.certificate-authority"), m))?;
    }
    if cluster
        .tls_server_name
        .text(source, &cl_field, "tls-server-name")?
        .is_some()
    {
        log::warn!("{source}: {cl_field}.tls-server-name is not supported and is ignored");
    }
    let proxy_url = cluster
        .proxy_url
        .text(source, &cl_field, "proxy-url")?
        .map(str::to_string);
    let namespace = ctx
        .namespace
        .text(source, &ctx_field, "namespace")?
        .map(str::to_string);

    let (user, user_field) = match ctx.user.text(source, &ctx_field, "user")? {
        Some(u) => named::<UserEntry>(kc.users, u, source)?,
        None => (UserWire::default(), String::new()),
    };
    let cert = data_or_file(
        (&user.client_certificate_data, &user.client_certificate),
        "client-certificate",
        dir,
        source,
        &user_field,
    )?;
    let key = data_or_file(
        (&user.client_key_data, &user.client_key),
        "client-key",
        dir,
        source,
        &user_field,
    )?;
    let identity = match (cert, key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(cfg_err(
                source,
                &format!("{user_field}.client-key"),
                "client certificate given without a key",
            ))
        }
        (None, Some(_)) => {
            return Err(cfg_err(
                source,
                &format!("{user_field}.client-certificate"),
                "client key given without a certificate",
            ))
        }
        (Some(cert_pem), Some(key_pem)) => {
            check_identity(&cert_pem, &key_pem)
                .map_err(|m| cfg_err(source, &format!("{user_field}.client-certificate"), m))?;
            Some(Identity { cert_pem, key_pem })
        }
    };
    if user.auth_provider.is_some() {
        return Err(cfg_err(
            source,
            &format!("{user_field}.auth-provider"),
            "auth-provider plugins are not supported (client-go removed them too); use an exec credential plugin",
        ));
    }
    let token = user
        .token
        .text(source, &user_field, "token")?
        .map(str::to_string);
    let auth = if !matches!(user.exec, Field::Absent) {
        let exec = user.exec.or_empty();
        let provide_cluster_info = matches!(exec.provide_cluster_info, Field::Is(true));
        let mut e = exec_config(exec, source, &format!("{user_field}.exec"), dir)?;
        if provide_cluster_info {
            e.cluster_info = Some(cluster_info(
                server,
                cluster.extensions,
                ca_pem.as_deref(),
                insecure,
            ));
        }
        Auth::Exec(e)
    } else if let Some(tf) = user.token_file.text(source, &user_field, "tokenFile")? {
        let path = resolve(dir, tf);
        // client-go falls back to `token` when the file cannot be read; a missing file with no
        // token is a configuration error worth failing on.
        match read_token_file(&path) {
            Ok(t) => Auth::TokenFile {
                path,
                initial: Some(t),
            },
            Err(m) if token.is_none() => {
                return Err(cfg_err(
                    source,
                    &format!("{user_field}.tokenFile"),
                    format!("{}: {m}", path.display()),
                ))
            }
            Err(_) => Auth::TokenFile {
                path,
                initial: token.clone(),
            },
        }
    } else if let Some(t) = token {
        Auth::Token(t)
    } else if let Some(u) = user.username.text(source, &user_field, "username")? {
        let password = user
            .password
            .text(source, &user_field, "password")?
            .unwrap_or("")
            .to_string();
        Auth::Basic {
            username: u.to_string(),
            password,
        }
    } else {
        Auth::None
    };
    Ok(ClientConfig {
        server: server.trim_end_matches('/').to_string(),
        ca_pem,
        identity,
        insecure_skip_tls_verify: insecure,
        proxy_url,
        auth,
        source: source.to_string(),
        namespace,
    })
}

/// `KUBERNETES_EXEC_INFO`: the ExecCredential handed to an exec plugin. The fields of these
/// types are in sorted order: serialized in declaration order, that gives the bytes plugins
/// have always received.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecInfo<'a> {
    api_version: &'a str,
    kind: &'static str,
    spec: ExecInfoSpec<'a>,
}

#[derive(Serialize)]
struct ExecInfoSpec<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<&'a ClusterInfo>,
    interactive: bool,
}

/// `KUBERNETES_EXEC_INFO`'s `spec.cluster`, given when `provideClusterInfo` is set.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_authority_data: Option<String>,
    /// The cluster's exec extension as written: the plugin's own data, passed through
    /// untouched.
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<Value>,
    insecure_skip_tls_verify: bool,
    server: String,
}

/// The `KUBERNETES_EXEC_INFO` text for a run of `e`'s plugin.
fn exec_info(e: &ExecConfig) -> String {
    let info = ExecInfo {
        api_version: &e.api_version,
        kind: "ExecCredential",
        spec: ExecInfoSpec {
            cluster: e.cluster_info.as_ref(),
            interactive: false,
        },
    };
    serde_json::to_string(&info).unwrap_or_default()
}

fn cluster_info(
    server: &str,
    extensions: Field<Vec<Field<ExtensionWire>>>,
    ca: Option<&[u8]>,
    insecure: bool,
) -> ClusterInfo {
    let config = match extensions {
        Field::Is(ext) => ext.into_iter().find_map(|e| match e {
            Field::Is(e)
                if matches!(&e.name, Field::Is(n) if n == "client.authentication.k8s.io/exec") =>
            {
                Some(e.extension)
            }
            _ => None,
        }),
        Field::Absent | Field::Wrong => None,
    };
    ClusterInfo {
        certificate_authority_data: ca.map(base64_encode),
        config,
        insecure_skip_tls_verify: insecure,
        server: server.to_string(),
    }
}

fn exec_config(v: ExecWire, source: &str, field: &str, dir: &Path) -> Result<ExecConfig, Error> {
    let api_version = v
        .api_version
        .text(source, field, "apiVersion")?
        .unwrap_or("");
    if !matches!(
        api_version,
        "client.authentication.k8s.io/v1" | "client.authentication.k8s.io/v1beta1"
    ) {
        return Err(cfg_err(
            source,
            &format!("{field}.apiVersion"),
            format!(
                "{api_version:?} is not supported (use client.authentication.k8s.io/v1 or v1beta1)"
            ),
        ));
    }
    let Some(command) = v.command.text(source, field, "command")? else {
        return Err(cfg_err(source, &format!("{field}.command"), "is not set"));
    };
    // client-go resolves a command with a path separator against the kubeconfig's directory;
    // a bare name is looked up in PATH.
    let command = if command.contains('/') {
        resolve(dir, command).display().to_string()
    } else {
        command.to_string()
    };
    let mut args = Vec::new();
    match v.args {
        Field::Absent => {}
        Field::Is(a) => {
            for (i, x) in a.into_iter().enumerate() {
                match x {
                    Field::Is(ArgWire::Text(s)) => args.push(s),
                    Field::Is(ArgWire::Number(n)) => args.push(n.to_string()),
                    Field::Is(ArgWire::Bool(b)) => args.push(b.to_string()),
                    Field::Absent | Field::Wrong => {
                        return Err(cfg_err(
                            source,
                            &format!("{field}.args[{i}]"),
                            "must be a string",
                        ))
                    }
                }
            }
        }
        Field::Wrong => return Err(cfg_err(source, &format!("{field}.args"), "must be a list")),
    }
    let mut env = Vec::new();
    match v.env {
        Field::Absent => {}
        Field::Is(a) => {
            for (i, e) in a.into_iter().enumerate() {
                let f = format!("{field}.env[{i}]");
                let e = e.or_empty();
                let name = e
                    .name
                    .text(source, &f, "name")?
                    .ok_or_else(|| cfg_err(source, &format!("{f}.name"), "is not set"))?;
                let value = match e.value {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                env.push((name.to_string(), value));
            }
        }
        Field::Wrong => return Err(cfg_err(source, &format!("{field}.env"), "must be a list")),
    }
    if v.interactive_mode.text(source, field, "interactiveMode")? == Some("Always") {
        return Err(cfg_err(
            source,
            &format!("{field}.interactiveMode"),
            "Always needs a terminal, which a controller does not have",
        ));
    }
    Ok(ExecConfig {
        api_version: api_version.to_string(),
        command,
        args,
        env,
        install_hint: v
            .install_hint
            .text(source, field, "installHint")?
            .unwrap_or("")
            .to_string(),
        cluster_info: None,
        source: format!("{source}: {field}"),
    })
}

/// What an exec plugin returned.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecCredential {
    pub token: Option<String>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    pub expires: Option<SystemTime>,
}

/// How a plugin run ended, short of answering.
#[derive(Debug, PartialEq)]
enum Ended {
    Exited,
    TimedOut,
    Stopped,
    Failed(String),
}

/// Waits for the plugin `pid` to exit without reaping it (so its process group id stays its
/// own until the caller reaps it), until `deadline` or `stop`.
fn wait_exit(pid: Pid, deadline: Instant, stop: Option<&Shutdown>) -> Ended {
    let how = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    loop {
        match waitid(WaitId::Pid(pid), how) {
            Ok(Some(_)) => return Ended::Exited,
            Ok(None) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(err) => return Ended::Failed(err.to_string()),
        }
        let now = Instant::now();
        if now >= deadline {
            return Ended::TimedOut;
        }
        // Plugins normally answer in milliseconds; polling keeps this to one thread per run.
        let nap = EXEC_POLL.min(deadline - now);
        match stop {
            Some(s) if s.wait_timeout(nap) => return Ended::Stopped,
            Some(_) => {}
            None => std::thread::sleep(nap),
        }
    }
}

/// Run the plugin and parse its `ExecCredential`, within `bound`.
///
/// The plugin gets a process group of its own. `group` is told the group's id while the
/// plugin has not been reaped (so a kill by that id cannot reach a recycled group) and `None`
/// just before it is reaped. The group is killed when `bound` passes, when `stop` triggers,
/// and when the plugin exited but a process it left behind keeps its output open longer than
/// [`EXEC_OUTPUT_GRACE`]. The output is read on a thread whose result is waited for with a
/// deadline, never joined: a process outside the group holding the pipe cannot block us.
pub(crate) fn run_exec(
    e: &ExecConfig,
    bound: Duration,
    stop: Option<&Shutdown>,
    group: &dyn Fn(Option<Pid>),
) -> Result<ExecCredential, Error> {
    let fail = |field: &str, m: String| {
        let hint = if e.install_hint.is_empty() {
            String::new()
        } else {
            format!(" ({})", e.install_hint.trim())
        };
        Error::Config {
            source: e.source.clone(),
            field: field.to_string(),
            message: format!("{m}{hint}"),
        }
    };
    // Not the kubeconfig's fault: the next request runs the plugin again.
    let stalled = |m: String| Error::Transport {
        what: e.source.clone(),
        message: m,
    };
    let mut cmd = Command::new(&e.command);
    cmd.args(&e.args)
        .envs(e.env.iter().map(|(k, v)| (k, v)))
        .env("KUBERNETES_EXEC_INFO", exec_info(e))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|err| fail("command", format!("cannot run {}: {err}", e.command)))?;
    let pid = Pid::from_child(&child);
    group(Some(pid));
    let stdout = child.stdout.take();
    let (tx, output) = crossbeam_channel::bounded(1);
    let reader = std::thread::Builder::new()
        .name("exec-credential".into())
        .spawn(move || {
            let mut buf = Vec::new();
            if let Some(s) = stdout {
                let _ = s.take(EXEC_MAX_OUTPUT).read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
    let deadline = timeutil::saturating_deadline(Instant::now(), bound);
    let ended = match reader {
        Ok(_) => wait_exit(pid, deadline, stop),
        Err(err) => Ended::Failed(format!("cannot start its output reader: {err}")),
    };
    let mut out = None;
    if ended == Ended::Exited {
        out = output.recv_timeout(EXEC_OUTPUT_GRACE).ok();
    }
    if ended != Ended::Exited || out.is_none() {
        // The plugin itself (timeout, shutdown) or what it left holding its output. Its
        // leader is unreaped, so the id is still this group's.
        let _ = kill_process_group(pid, Signal::KILL);
    }
    group(None);
    let status = child.wait();
    if ended == Ended::Exited && out.is_none() {
        // The kill closed the pipe's last writers: what they wrote is still in it.
        out = output.recv_timeout(EXEC_OUTPUT_GRACE).ok();
        log::warn!(
            command:% = e.command, source:% = e.source;
            "Exec credential plugin exited but left a process holding its output; killed its process group"
        );
    }
    match ended {
        Ended::Exited => {}
        Ended::TimedOut => {
            return Err(stalled(format!(
                "{} did not finish within {}s; killed its process group",
                e.command,
                bound.as_secs_f64()
            )))
        }
        Ended::Stopped => return Err(stalled(format!("{} stopped: shutting down", e.command))),
        Ended::Failed(m) => return Err(fail("command", format!("waiting for {}: {m}", e.command))),
    }
    let status =
        status.map_err(|err| fail("command", format!("waiting for {}: {err}", e.command)))?;
    if !status.success() {
        return Err(fail(
            "command",
            format!("{} exited with {status}", e.command),
        ));
    }
    let Some(out) = out else {
        return Err(stalled(format!(
            "{} exited but its output stayed open (held by a process outside its group)",
            e.command
        )));
    };
    parse_exec_credential(&out, &e.api_version)
        .map_err(|m| fail("command", format!("{}: {m}", e.command)))
}

/// An exec plugin's output, the fields read. Anything of the wrong type reads as absent or
/// empty (the whole output included), so the checks below name what is missing.
#[derive(Deserialize)]
#[serde(transparent)]
struct ExecCredentialOutput(#[serde(deserialize_with = "zero_if_malformed")] ExecCredentialWire);

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ExecCredentialWire {
    #[serde(deserialize_with = "zero_if_malformed")]
    kind: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    api_version: String,
    /// `None` only when the key is absent; a `status` of the wrong type is an empty one.
    #[serde(deserialize_with = "present")]
    status: Option<ExecCredentialStatus>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ExecCredentialStatus {
    #[serde(deserialize_with = "zero_if_malformed")]
    token: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    client_certificate_data: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    client_key_data: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    expiration_timestamp: String,
}

/// A key that is there, whatever its value (a value of the wrong shape reads as empty).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ExecCredentialStatus>, D::Error> {
    zero_if_malformed(d).map(Some)
}

pub(crate) fn parse_exec_credential(
    out: &[u8],
    api_version: &str,
) -> Result<ExecCredential, String> {
    let ExecCredentialOutput(v) = serde_json::from_slice(out)
        .map_err(|err| format!("output is not an ExecCredential: {err}"))?;
    if v.kind != "ExecCredential" {
        return Err("output is not an ExecCredential (kind)".to_string());
    }
    let got = v.api_version;
    if got != api_version {
        return Err(format!(
            "output has apiVersion {got:?}, expected {api_version:?}"
        ));
    }
    let status = v.status.ok_or("output has no status")?;
    let s = |s: String| Some(s).filter(|s| !s.is_empty());
    let expires = match s(status.expiration_timestamp) {
        Some(t) => {
            Some(timeutil::parse_rfc3339(&t).ok_or(format!("bad expirationTimestamp {t:?}"))?)
        }
        None => None,
    };
    let cred = ExecCredential {
        token: s(status.token),
        client_cert_pem: s(status.client_certificate_data).map(String::into_bytes),
        client_key_pem: s(status.client_key_data).map(String::into_bytes),
        expires,
    };
    if cred.client_cert_pem.is_some() != cred.client_key_pem.is_some() {
        return Err("status needs both clientCertificateData and clientKeyData".to_string());
    }
    if cred.token.is_none() && cred.client_cert_pem.is_none() {
        return Err("status has neither a token nor a client certificate".to_string());
    }
    Ok(cred)
}

/// The runtime side of `Auth`: hands out the current `Authorization` header value.
///
/// A refresh (an exec plugin run, a token file re-read) runs on a thread of its own and no
/// lock is held across it: one runs at a time, and every caller that needs its result waits
/// for it, each no longer than its own deadline (the lease loop's renew deadline) and not past
/// shutdown. A stuck plugin therefore holds up only the requests that need a new credential,
/// each until its own bound, and is killed after [`EXEC_TIMEOUT`].
pub(crate) struct Credentials {
    auth: Auth,
    refresh: Duration,
    state: Mutex<CredState>,
    stop: OnceLock<Shutdown>,
}

#[derive(Default)]
struct CredState {
    token: Option<String>,
    read_at: Option<Instant>,
    expires: Option<SystemTime>,
    exec_identity: Option<Identity>,
    /// The refresh in progress.
    running: Option<Running>,
    /// Refreshes started so far: numbers them.
    started: u64,
    /// The last refresh that failed, by number: what its waiters get.
    failed: Option<(u64, Error)>,
}

struct Running {
    id: u64,
    /// Disconnected once the refresh's result is in the state.
    done: Receiver<()>,
    /// The plugin's process group, while it may be killed (its leader is not reaped).
    group: Option<Pid>,
}

/// What a refresh brought back.
enum Fetched {
    Token(String),
    Exec(ExecCredential),
}

/// Ends a refresh in the state even when its thread unwinds, so waiters are never left on a
/// refresh that no longer runs. `done` is dropped after `drop` has run: waiters wake to the
/// result.
struct Finish {
    creds: Arc<Credentials>,
    id: u64,
    result: Option<Result<Fetched, Error>>,
    _done: Sender<()>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or_else(|| {
            Err(Error::Transport {
                what: "credential".into(),
                message: "the credential refresh ended without a result".into(),
            })
        });
        self.creds.finish(self.id, result);
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

impl Credentials {
    pub(crate) fn new(auth: Auth) -> Arc<Credentials> {
        Credentials::with_refresh(auth, TOKEN_FILE_REFRESH)
    }

    pub(crate) fn with_refresh(auth: Auth, refresh: Duration) -> Arc<Credentials> {
        let mut st = CredState::default();
        if let Auth::TokenFile { initial, .. } = &auth {
            st.token = initial.clone();
            st.read_at = Some(Instant::now());
        }
        Arc::new(Credentials {
            auth,
            refresh,
            state: Mutex::new(st),
            stop: OnceLock::new(),
        })
    }

    /// When `stop` triggers, waits for a refresh end (with an error) and a running plugin is
    /// killed; no refresh starts after. Set once.
    pub(crate) fn set_shutdown(&self, stop: Shutdown) {
        let _ = self.stop.set(stop);
    }

    /// The header value to send, waiting for a refresh when one is due (see
    /// [`Credentials::authorization_until`]) with no deadline of the caller's own.
    pub(crate) fn authorization(self: &Arc<Self>) -> Result<Option<String>, Error> {
        self.authorization_until(None)
    }

    /// The header value to send. When the token file is due for a re-read or the exec
    /// credential has expired (or was refused), a refresh is started unless one runs, and this
    /// waits for that refresh's result, at most until `deadline`.
    pub(crate) fn authorization_until(
        self: &Arc<Self>,
        deadline: Option<Instant>,
    ) -> Result<Option<String>, Error> {
        let (what, waiting_for) = match &self.auth {
            Auth::None => return Ok(None),
            Auth::Token(t) => return Ok(Some(bearer(t))),
            Auth::Basic { username, password } => {
                return Ok(Some(format!(
                    "Basic {}",
                    base64_encode(format!("{username}:{password}").as_bytes())
                )))
            }
            Auth::TokenFile { path, .. } => (path.display().to_string(), "the token file"),
            Auth::Exec(e) => (e.source.clone(), "the exec credential plugin"),
        };
        let stop = self.stop.get();
        let (id, done) = {
            let mut st = crate::sync::lock(&self.state);
            if !self.due(&st) {
                return Ok(st.token.as_deref().map(bearer));
            }
            if stop.is_some_and(Shutdown::is_triggered) {
                return Err(Error::Transport {
                    what,
                    message: "shutting down: no new credential".into(),
                });
            }
            match &st.running {
                Some(r) => (r.id, r.done.clone()),
                None => self.start(&mut st)?,
            }
        };
        let stopping = stop.map_or_else(crossbeam_channel::never, Shutdown::receiver);
        let timer = deadline.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
        crossbeam_channel::select! {
            recv(done) -> _ => {}
            recv(stopping) -> _ => {
                self.kill_running();
                return Err(Error::Transport {
                    what,
                    message: format!("shutting down while waiting for {waiting_for}"),
                });
            }
            recv(timer) -> _ => {
                return Err(Error::Transport {
                    what,
                    message: format!(
                        "{waiting_for} has not answered within the request's deadline"
                    ),
                });
            }
        }
        let st = crate::sync::lock(&self.state);
        match &st.failed {
            Some((failed, e)) if *failed == id => Err(e.clone()),
            // The refresh we waited for worked: its credential, even if already stale (a
            // plugin's past expiry must not make every request run it again at once).
            _ => Ok(st.token.as_deref().map(bearer)),
        }
    }

    fn due(&self, st: &CredState) -> bool {
        match &self.auth {
            Auth::TokenFile { .. } => st.read_at.is_none_or(|t| t.elapsed() >= self.refresh),
            Auth::Exec(_) => {
                st.read_at.is_none() || st.expires.is_some_and(|x| SystemTime::now() >= x)
            }
            _ => false,
        }
    }

    /// Starts a refresh on its own thread; returns its number and the channel that ends with
    /// it.
    fn start(self: &Arc<Self>, st: &mut CredState) -> Result<(u64, Receiver<()>), Error> {
        st.started += 1;
        let id = st.started;
        let (tx, done) = crossbeam_channel::bounded::<()>(0);
        st.running = Some(Running {
            id,
            done: done.clone(),
            group: None,
        });
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("credential-refresh".into())
            .spawn(move || {
                let mut finish = Finish {
                    creds: me.clone(),
                    id,
                    result: None,
                    _done: tx,
                };
                finish.result = Some(me.fetch(id));
            });
        if let Err(err) = spawned {
            st.running = None;
            return Err(Error::Transport {
                what: "credential".into(),
                message: format!("cannot start a thread to refresh it: {err}"),
            });
        }
        Ok((id, done))
    }

    /// The refresh itself, with no lock held.
    fn fetch(&self, id: u64) -> Result<Fetched, Error> {
        match &self.auth {
            Auth::TokenFile { path, .. } => read_token_file(path)
                .map(Fetched::Token)
                .map_err(|m| cfg_err(&path.display().to_string(), "", m)),
            Auth::Exec(e) => run_exec(e, EXEC_TIMEOUT, self.stop.get(), &|g| {
                if let Some(r) = crate::sync::lock(&self.state)
                    .running
                    .as_mut()
                    .filter(|r| r.id == id)
                {
                    r.group = g;
                }
            })
            .map(Fetched::Exec),
            _ => Err(Error::Transport {
                what: "credential".into(),
                message: "nothing to refresh".into(),
            }),
        }
    }

    /// Records refresh `id`'s result and ends it.
    fn finish(&self, id: u64, result: Result<Fetched, Error>) {
        let mut st = crate::sync::lock(&self.state);
        if st.running.as_ref().is_none_or(|r| r.id != id) {
            return;
        }
        st.running = None;
        match result {
            Ok(Fetched::Token(t)) => {
                st.token = Some(t);
                st.read_at = Some(Instant::now());
            }
            Ok(Fetched::Exec(cred)) => {
                st.read_at = Some(Instant::now());
                st.token = cred.token;
                st.expires = cred.expires;
                if let (Some(c), Some(k)) = (cred.client_cert_pem, cred.client_key_pem) {
                    st.exec_identity = Some(Identity {
                        cert_pem: c,
                        key_pem: k,
                    });
                }
            }
            Err(e) if matches!(self.auth, Auth::TokenFile { .. }) && st.token.is_some() => {
                // kubernetes#68164: a rewrite caught half-way; the old token is still good.
                log::warn!("{e}; keeping the previous token");
                st.read_at = Some(Instant::now());
            }
            Err(e) => st.failed = Some((id, e)),
        }
    }

    /// Kills the running plugin's process group (at shutdown).
    fn kill_running(&self) {
        let st = crate::sync::lock(&self.state);
        if let Some(g) = st.running.as_ref().and_then(|r| r.group) {
            let _ = kill_process_group(g, Signal::KILL);
        }
    }

    /// The client certificate an exec plugin returned (runs the plugin if it has not run yet).
    pub(crate) fn exec_identity(self: &Arc<Self>) -> Result<Option<Identity>, Error> {
        if !matches!(self.auth, Auth::Exec(_)) {
            return Ok(None);
        }
        self.authorization()?;
        Ok(crate::sync::lock(&self.state).exec_identity.clone())
    }

    /// After a 401: forget a cached exec credential / re-read the token file on the next request.
    /// Returns true when that may produce a different credential.
    pub(crate) fn invalidate(&self) -> bool {
        match &self.auth {
            Auth::Exec(_) | Auth::TokenFile { .. } => {
                crate::sync::lock(&self.state).read_at = None;
                true
            }
            _ => false,
        }
    }
}

/// The trusted CA bundle must hold at least one certificate the TLS stack accepts.
pub fn check_ca(pem: &[u8]) -> Result<(), String> {
    let certs = pem_certs(pem)?;
    if certs.is_empty() {
        return Err("no PEM certificate found".to_string());
    }
    let mut store = rustls::RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(
        certs
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.der().to_vec())),
    );
    if added == 0 {
        return Err("no usable CA certificate in PEM data".to_string());
    }
    Ok(())
}

pub(crate) fn pem_certs(pem: &[u8]) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => out.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("bad PEM data: {e}")),
        }
    }
    Ok(out)
}

pub(crate) fn pem_key(pem: &[u8]) -> Result<ureq::tls::PrivateKey<'static>, String> {
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::PrivateKey(k)) => return Ok(k),
            Ok(_) => {}
            Err(e) => return Err(format!("bad PEM data in key: {e}")),
        }
    }
    Err("no PEM private key found".to_string())
}

/// Check a client certificate and key the way rustls will when ureq first connects: ureq panics
/// on a certificate rustls rejects (an X.509 v1 certificate, a key that does not match), so a
/// kubeconfig must be refused here, with a message, instead.
pub fn check_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = pem_certs(cert_pem)?;
    if certs.is_empty() {
        return Err("no PEM certificate found".to_string());
    }
    pem_key(key_pem)?;
    let key_der =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("bad private key: {e}"))?;
    let chain: Vec<CertificateDer<'static>> = certs
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key_der, &provider)
        .map(|_| ())
        .map_err(|e| format!("unusable client certificate or key: {e}"))
}

/// Standard base64 with padding optional and trailing bits allowed, as Go's decoder.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The URL-safe alphabet, which our decoder has always taken too.
const BASE64_URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

pub fn base64_encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Standard (or URL-safe) base64; whitespace ignored, padding optional (kubeconfig `*-data`
/// fields, which people wrap and paste). The message names at most one bad character.
pub fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    BASE64_LENIENT
        .decode(&compact)
        .or_else(|e| BASE64_URL_LENIENT.decode(&compact).map_err(|_| e))
        .map_err(|e| match e {
            DecodeError::InvalidByte(_, b'=') => "not base64 (data after padding)".to_string(),
            DecodeError::InvalidByte(_, c) => format!("not base64 (character {:?})", c as char),
            DecodeError::InvalidLength(_) => "not base64 (truncated)".to_string(),
            _ => "not base64 (bad padding)".to_string(),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh temporary directory, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);
    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "hm-kube-{tag}-{}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst),
                timeutil::random_u64()
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        pub(crate) fn write(&self, name: &str, data: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, data).unwrap();
            p
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Test PKI from the `openssl` CLI: CA, server cert for 127.0.0.1/localhost, v3 client cert,
    /// and a v1 client cert (what `openssl x509 -req` without extensions makes).
    pub(crate) struct Pki {
        pub dir: TempDir,
    }
    impl Pki {
        pub(crate) fn new() -> Pki {
            let dir = TempDir::new("pki");
            let script = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile server.ext 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=alice 2>/dev/null
printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 2 -extfile client.ext 2>/dev/null
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out clientv1.crt -days 2 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout other.key -out other.csr -subj /CN=other 2>/dev/null
"#;
            let st = Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(&dir.0)
                .status()
                .unwrap();
            assert!(st.success(), "openssl failed");
            Pki { dir }
        }
        pub(crate) fn read(&self, name: &str) -> Vec<u8> {
            std::fs::read(self.dir.0.join(name)).unwrap()
        }
    }

    fn load(dir: &TempDir, text: &str) -> Result<ClientConfig, Error> {
        let p = dir.write("config", text.as_bytes());
        load_kubeconfig(&p)
    }

    fn config_err(r: Result<ClientConfig, Error>) -> (String, String, String) {
        match r {
            Err(Error::Config {
                source,
                field,
                message,
            }) => (source, field, message),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn base64_round_trip() {
        for s in ["", "a", "ab", "abc", "abcd", "hello world!"] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).unwrap(),
                s.as_bytes()
            );
        }
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_decode("YW\nI").unwrap(), b"ab");
        assert!(base64_decode("YW*").is_err());
        assert!(base64_decode("Y").is_err());
    }

    #[test]
    fn yaml_kubectl_view_raw_output() {
        let doc = r#"apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTg==
    server: https://127.0.0.1:6443
  name: kind-kind
contexts:
- context:
    cluster: kind-kind
    user: kind-kind
    namespace: "default"
  name: kind-kind
current-context: kind-kind
kind: Config
preferences: {}
users:
- name: kind-kind
  user:
    token: 'abc''def'   # a comment
    insecure-skip-tls-verify: true
    exec:
      args: []
      env: null
      port: 8080
"#;
        let v = parse_yaml(doc).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(v["clusters"][0]["name"], "kind-kind");
        assert_eq!(v["contexts"][0]["context"]["namespace"], "default");
        assert_eq!(v["current-context"], "kind-kind");
        assert_eq!(v["preferences"], json!({}));
        assert_eq!(v["users"][0]["user"]["token"], "abc'def");
        assert_eq!(v["users"][0]["user"]["insecure-skip-tls-verify"], true);
        assert_eq!(v["users"][0]["user"]["exec"]["args"], json!([]));
        assert_eq!(v["users"][0]["user"]["exec"]["env"], Value::Null);
        assert_eq!(v["users"][0]["user"]["exec"]["port"], 8080);
    }

    #[test]
    fn yaml_lists_flow_escapes_and_block_scalars() {
        let doc = "a:\n  - x\n  - \"y\\u00e9\\n\"\n  -   - nested\nb: [one, 'two', {k: v}]\nc: \"has # hash\"\nd: url#frag\nenv:\n- name: A\n  value: \"1\"\n-\n  name: B\n  value:\nlit: |\n  line1\n\n  line2\nfold: >-\n  a\n  b\nempty:\n";
        let v = parse_yaml(doc).unwrap();
        assert_eq!(v["a"], json!(["x", "yé\n", ["nested"]]));
        assert_eq!(v["b"], json!(["one", "two", {"k": "v"}]));
        assert_eq!(v["c"], "has # hash");
        assert_eq!(v["d"], "url#frag");
        assert_eq!(
            v["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": null}])
        );
        assert_eq!(v["lit"], "line1\n\nline2\n");
        assert_eq!(v["fold"], "a b");
        assert_eq!(v["empty"], Value::Null);
    }

    #[test]
    fn yaml_what_the_old_subset_parser_refused() {
        // Go's encoder folds long plain strings (issue #14: GKE's installHint).
        let v = parse_yaml("exec:\n  installHint: Install it by following\n    https://example.com/x#y\n  provideClusterInfo: true\n").unwrap();
        assert_eq!(
            v["exec"]["installHint"],
            "Install it by following https://example.com/x#y"
        );
        assert_eq!(v["exec"]["provideClusterInfo"], true);
        let v = parse_yaml("base: &b {server: 'https://h:1', insecure-skip-tls-verify: true}\nc1: *b\nc2:\n  <<: *b\n  server: https://other:2\nl: [\n  1,\n  two\n]\nt: !!str 123\nn: !!int \"7\"\n").unwrap();
        assert_eq!(v["c1"], v["base"]);
        assert_eq!(
            v["c2"],
            json!({"server": "https://other:2", "insecure-skip-tls-verify": true})
        );
        assert_eq!(v["l"], json!([1, "two"]));
        assert_eq!(v["t"], "123");
        assert_eq!(v["n"], 7);
        let v = parse_yaml("\u{feff}a: 1\r\nb:\r\n- x\r\n").unwrap();
        assert_eq!(v, json!({"a": 1, "b": ["x"]}));
    }

    #[test]
    fn yaml_json_documents_and_empty() {
        assert_eq!(
            parse_yaml("{\n \"a\": [1, 2]\n}\n").unwrap(),
            json!({"a": [1, 2]})
        );
        assert_eq!(
            parse_yaml("{\n\t\"a\": {\n\t\t\"b\": \"c\"\n\t}\n}\n").unwrap(),
            json!({"a": {"b": "c"}})
        );
        assert_eq!(parse_yaml("# only a comment\n\n").unwrap(), Value::Null);
        assert_eq!(parse_yaml("").unwrap(), Value::Null);
        assert_eq!(
            parse_yaml("---\na: 1\n---\nb: 2\n").unwrap(),
            json!({"a": 1})
        );
    }

    #[test]
    fn yaml_errors_name_line_and_column_and_no_value() {
        for (doc, line, what) in [
            ("a: 1\n\tb: 2\n", "line 2 ", "tab"),
            ("a: \"open secret\n", "line 1 ", ""),
            ("a: 1\n   b: 2\n", "line 2 ", ""),
            (
                "a: 1\nb: x\na: secret\n",
                "line 3 column 1",
                "duplicate key \"a\"",
            ),
            ("a: [1, 2\n", "line ", ""),
            ("a: *ref\n", "line 1 ", "unknown"),
            ("? [a]\n: secret\n", "line 1 ", "key"),
            ("a: &x [1]\n<<: *x\n", "line 2 ", "merge"),
        ] {
            let e = parse_yaml(doc).unwrap_err();
            assert!(e.starts_with(line), "{doc:?}: {e}");
            assert!(e.contains(what), "{doc:?}: {e}");
            assert!(!e.contains("secret"), "{doc:?}: {e}");
        }
    }

    #[test]
    fn yaml_hostile_input_is_an_error_not_an_abort() {
        for open in ["[", "{a: "] {
            let doc = format!("a: {}", open.repeat(100_000));
            let e = parse_yaml(&doc).unwrap_err();
            assert!(e.starts_with("line 1 column "), "{open}: {e}");
        }
        let e = parse_yaml(&format!("{}x\n", "- ".repeat(100_000))).unwrap_err();
        assert_eq!(e, "line 1 column 257: nested more than 128 levels deep");
        let deep = format!("a: {}1{}\n", "[".repeat(120), "]".repeat(120));
        assert!(parse_yaml(&deep).is_ok());
        // A billion laughs: each alias doubles the one before.
        let mut doc = "a0: &a0 [x, x]\n".to_string();
        for i in 1..40 {
            doc += &format!("a{i}: &a{i} [*a{p}, *a{p}]\n", p = i - 1);
        }
        let e = parse_yaml(&doc).unwrap_err();
        assert!(e.contains("aliases repeat"), "{e}");
    }

    #[test]
    fn token_user_with_relative_ca_and_namespace() {
        let pki = Pki::new();
        let d = TempDir::new("tok");
        std::fs::create_dir(d.0.join("certs")).unwrap();
        d.write("certs/ca.pem", &pki.read("ca.crt"));
        let cfg = load(
            &d,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443/\n    certificate-authority: certs/ca.pem\ncontexts:\n- name: x\n  context: {cluster: c, user: u, namespace: ns1}\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: secret\n",
        )
        .unwrap();
        assert_eq!(cfg.server, "https://10.0.0.1:6443");
        assert_eq!(cfg.ca_pem.as_deref(), Some(&pki.read("ca.crt")[..]));
        assert!(matches!(&cfg.auth, Auth::Token(t) if t == "secret"));
        assert_eq!(cfg.namespace.as_deref(), Some("ns1"));
        assert!(
            !format!("{cfg:?}").contains("secret"),
            "Debug must not print the token"
        );
    }

    #[test]
    fn client_cert_data_and_insecure_and_json() {
        let pki = Pki::new();
        let d = TempDir::new("cert");
        let doc = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "x",
            "clusters": [{"name": "c", "cluster": {"server": "https://h:1", "insecure-skip-tls-verify": true}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "users": [{"name": "u", "user": {
                "client-certificate-data": base64_encode(&pki.read("client.crt")),
                "client-key-data": base64_encode(&pki.read("client.key"))}}]
        });
        let cfg = load(&d, &serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        assert!(cfg.insecure_skip_tls_verify);
        assert!(cfg.identity.is_some());
        assert!(matches!(cfg.auth, Auth::None));
    }

    #[test]
    fn bad_kubeconfigs_name_file_and_field() {
        let pki = Pki::new();
        let d = TempDir::new("bad");
        d.write("v1.crt", &pki.read("clientv1.crt"));
        d.write("client.key", &pki.read("client.key"));
        d.write("other.key", &pki.read("other.key"));
        d.write("client.crt", &pki.read("client.crt"));
        let head =
            "current-context: x\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n";
        let cluster_ok = "clusters:\n- name: c\n  cluster:\n    server: https://h:1\n";
        let cases: Vec<(String, &str, &str)> = vec![
            ("clusters: []\n".to_string(), "current-context", "is not set"),
            ("current-context: x\nclusters: []\n".to_string(), "contexts", "no entry named"),
            (format!("{head}clusters:\n- name: c\n  cluster:\n    certificate-authority: x\nusers: [{{name: u}}]\n"), "clusters[c].cluster.server", "is not set"),
            (format!("{head}clusters:\n- name: c\n  cluster:\n    server: https://h:1\n    certificate-authority: missing.pem\nusers: [{{name: u}}]\n"), "clusters[c].cluster.certificate-authority", "missing.pem"),
            (format!("{head}clusters:\n- name: c\n  cluster:\n    server: https://h:1\n    certificate-authority-data: '!!!'\nusers: [{{name: u}}]\n"), "clusters[c].cluster.certificate-authority-data", "not base64"),
            (format!("{head}clusters:\n- name: c\n  cluster:\n    server: https://h:1\n    certificate-authority-data: {}\nusers: [{{name: u}}]\n", base64_encode(b"junk")), "clusters[c].cluster.certificate-authority", "no PEM certificate"),
            (format!("{head}{cluster_ok}users:\n- name: u\n  user:\n    client-certificate: v1.crt\n    client-key: client.key\n"), "users[u].user.client-certificate", "unusable client certificate"),
            (format!("{head}{cluster_ok}users:\n- name: u\n  user:\n    client-certificate: client.crt\n    client-key: other.key\n"), "users[u].user.client-certificate", "unusable client certificate"),
            (format!("{head}{cluster_ok}users:\n- name: u\n  user:\n    client-certificate: client.crt\n"), "users[u].user.client-key", "without a key"),
            (format!("{head}{cluster_ok}users:\n- name: u\n  user:\n    tokenFile: nope\n"), "users[u].user.tokenFile", "nope"),
            (format!("{head}{cluster_ok}users:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1alpha1\n      command: x\n"), "users[u].user.exec.apiVersion", "not supported"),
            (format!("{head}{cluster_ok}users:\n- name: u\n  user:\n    auth-provider:\n      name: gcp\n"), "users[u].user.auth-provider", "not supported"),
            (format!("{head}{cluster_ok}users:\n- name: u\n  user:\n    token: [1]\n"), "users[u].user.token", "must be a string"),
            ("a: b\n\tc: d\n".to_string(), "", "line 2"),
        ];
        for (text, field, msg) in cases {
            let (source, f, m) = config_err(load(&d, &text));
            assert_eq!(
                source,
                format!("kubeconfig {}", d.0.join("config").display()),
                "{text}"
            );
            assert_eq!(f, field, "{text}: {m}");
            assert!(m.contains(msg), "{text}: {m:?} lacks {msg:?}");
        }
    }

    /// The typed kubeconfig reads what the tree walk read: a list where a map belongs is
    /// refused (not read field by field), items of the wrong shape are skipped, YAML numbers
    /// and booleans in `args` and `env` are taken as their text, the exec extension passes
    /// through as written.
    #[test]
    fn kubeconfig_shapes_read_as_before() {
        let d = TempDir::new("shapes");
        let head =
            "current-context: x\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n";
        let cases: Vec<(String, &str, &str)> = vec![
            ("current-context: x\ncontexts: {a: b}\n".to_string(), "contexts", "must be a list"),
            (format!("{head}clusters:\n- name: c\n  cluster: [https://h:1]\n"), "clusters[c].cluster", "must be a map"),
            (format!("{head}clusters:\n- c\n- [name, c]\n- {{name: 7}}\n"), "clusters", "no entry named \"c\""),
            (format!("{head}clusters:\n- name: c\n  cluster: {{server: 'https://h:1', insecure-skip-tls-verify: yes}}\n"), "clusters[c].cluster.insecure-skip-tls-verify", "must be true or false"),
            (format!("{head}clusters:\n- name: c\n  cluster: {{server: 'https://h:1'}}\nusers:\n- name: u\n  user:\n    exec: {{apiVersion: client.authentication.k8s.io/v1, command: p, args: [a, null]}}\n"), "users[u].user.exec.args[1]", "must be a string"),
            (format!("{head}clusters:\n- name: c\n  cluster: {{server: 'https://h:1'}}\nusers:\n- name: u\n  user:\n    exec: {{apiVersion: client.authentication.k8s.io/v1, command: p, env: [x]}}\n"), "users[u].user.exec.env[0].name", "is not set"),
            (format!("{head}clusters:\n- name: c\n  cluster: {{server: 'https://h:1'}}\nusers:\n- name: u\n  user:\n    exec: nonsense\n"), "users[u].user.exec.apiVersion", "\"\" is not supported"),
        ];
        for (text, field, msg) in cases {
            let (_, f, m) = config_err(load(&d, &text));
            assert_eq!(f, field, "{text}: {m}");
            assert!(m.contains(msg), "{text}: {m:?} lacks {msg:?}");
        }
        let text = format!(
            "{head}clusters:\n- name: c\n  cluster:\n    server: https://h:1\n    insecure-skip-tls-verify: 'true'\n    extensions:\n    - nonsense\n    - name: client.authentication.k8s.io/exec\n      extension: {{a: [1, b]}}\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: p\n      args: [8080, 1.5, true, s]\n      env: [{{name: A, value: 1}}, {{name: B, value: {{k: v}}}}, {{name: C}}]\n      provideClusterInfo: true\n"
        );
        let cfg = load(&d, &text).unwrap();
        assert!(cfg.insecure_skip_tls_verify);
        let Auth::Exec(e) = cfg.auth else {
            panic!("not an exec user")
        };
        assert_eq!(e.args, ["8080", "1.5", "true", "s"]);
        let env: Vec<(&str, &str)> = e
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, [("A", "1"), ("B", r#"{"k":"v"}"#), ("C", "")]);
        assert_eq!(
            serde_json::to_value(e.cluster_info.as_ref().unwrap()).unwrap(),
            json!({"server": "https://h:1", "insecure-skip-tls-verify": true, "config": {"a": [1, "b"]}})
        );
        // Byte for byte what plugins received when this was a `serde_json::Value` (keys sorted).
        let tree = json!({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
            "spec": {"interactive": false, "cluster": {"server": "https://h:1",
            "insecure-skip-tls-verify": true, "config": {"a": [1, "b"]}}}});
        assert_eq!(exec_info(&e), tree.to_string());
    }

    fn exec_kubeconfig(d: &TempDir, script_body: &str) -> ClientConfig {
        let script = d.write(
            "plugin.sh",
            format!("#!/bin/sh\necho run >> \"$COUNT_FILE\"\n{script_body}").as_bytes(),
        );
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let text = format!(
            "current-context: x\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\nclusters:\n- name: c\n  cluster:\n    server: https://h:1\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: ./plugin.sh\n      args:\n      - --flag\n      env:\n      - name: COUNT_FILE\n        value: {}\n      interactiveMode: IfAvailable\n      provideClusterInfo: true\n",
            d.0.join("count").display()
        );
        load(d, &text).unwrap()
    }

    fn runs(d: &TempDir) -> usize {
        std::fs::read_to_string(d.0.join("count"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    #[test]
    fn exec_plugin_token_is_cached_until_expiry() {
        let d = TempDir::new("exec");
        let cfg = exec_kubeconfig(
            &d,
            r#"case "$KUBERNETES_EXEC_INFO" in *'"interactive":false'*) ;; *) exit 3;; esac
case "$KUBERNETES_EXEC_INFO" in *'"server":"https://h:1"'*) ;; *) exit 5;; esac
[ "$1" = --flag ] || exit 4
echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"tok-1","expirationTimestamp":"2999-01-01T00:00:00Z"}}'"#,
        );
        let Auth::Exec(e) = &cfg.auth else {
            panic!("not exec: {cfg:?}")
        };
        assert_eq!(e.command, d.0.join("./plugin.sh").display().to_string());
        let creds = Credentials::new(cfg.auth.clone());
        assert_eq!(
            creds.authorization().unwrap().as_deref(),
            Some("Bearer tok-1")
        );
        assert_eq!(
            creds.authorization().unwrap().as_deref(),
            Some("Bearer tok-1")
        );
        assert_eq!(runs(&d), 1);
        assert!(creds.invalidate(), "a 401 must force a re-run");
        creds.authorization().unwrap();
        assert_eq!(runs(&d), 2);
    }

    #[test]
    fn exec_plugin_reruns_when_expired_and_reports_failures() {
        let d = TempDir::new("exec2");
        let cfg = exec_kubeconfig(
            &d,
            r#"echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"t","expirationTimestamp":"2001-01-01T00:00:00Z"}}'"#,
        );
        let creds = Credentials::new(cfg.auth.clone());
        creds.authorization().unwrap();
        creds.authorization().unwrap();
        assert_eq!(runs(&d), 2);

        let bad = exec_kubeconfig(&d, "echo not-json");
        match Credentials::new(bad.auth).authorization() {
            Err(Error::Config {
                source,
                field,
                message,
            }) => {
                assert!(source.contains("users[u].user.exec"), "{source}");
                assert_eq!(field, "command");
                assert!(message.contains("not an ExecCredential"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exec_credential_parsing() {
        let v1 = "client.authentication.k8s.io/v1";
        let ok = br#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"clientCertificateData":"C","clientKeyData":"K"}}"#;
        let c = parse_exec_credential(ok, v1).unwrap();
        assert_eq!(c.client_cert_pem.as_deref(), Some(&b"C"[..]));
        assert!(
            parse_exec_credential(ok, "client.authentication.k8s.io/v1beta1")
                .unwrap_err()
                .contains("apiVersion")
        );
        assert!(parse_exec_credential(br#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{}}"#, v1).is_err());
        assert!(parse_exec_credential(br#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"t","expirationTimestamp":"soon"}}"#, v1).is_err());
    }

    // ---- bounded plugin runs and one refresh at a time (issue #25) ----

    const CRED: &str = r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"tok"}}"#;

    /// An exec config running `body` as a shell script in `d`.
    fn plugin(d: &TempDir, body: &str) -> ExecConfig {
        let script = d.write("p.sh", format!("#!/bin/sh\n{body}\n").as_bytes());
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        ExecConfig {
            api_version: "client.authentication.k8s.io/v1".into(),
            command: script.display().to_string(),
            args: vec![],
            env: vec![("D".into(), d.0.display().to_string())],
            install_hint: String::new(),
            cluster_info: None,
            source: "kubeconfig k: users[u].user.exec".into(),
        }
    }

    fn wait_until(within: Duration, cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cond()
    }

    /// The pid a script wrote to `name`, once it has.
    fn pid_in(d: &TempDir, name: &str) -> u32 {
        let p = d.0.join(name);
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::read_to_string(&p)
                .is_ok_and(|s| s.ends_with('\n'))),
            "{name} never written"
        );
        std::fs::read_to_string(&p).unwrap().trim().parse().unwrap()
    }

    /// Gone, or a zombie waiting for an init that does not reap: either way, not running.
    fn dead(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(s) => s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
        }
    }

    /// `run_exec` on a thread: a run that never returns fails the test instead of hanging it.
    fn run_bounded(e: &ExecConfig, bound: Duration) -> (Result<ExecCredential, String>, Duration) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let e = e.clone();
        let start = Instant::now();
        std::thread::spawn(move || {
            let r = run_exec(&e, bound, None, &|_| {}).map_err(|e| e.to_string());
            let _ = tx.send(r);
        });
        let r = rx
            .recv_timeout(bound + Duration::from_secs(15))
            .expect("the plugin run did not return");
        (r, start.elapsed())
    }

    #[test]
    fn a_plugin_that_never_exits_is_killed_with_its_children_at_the_bound() {
        let d = TempDir::new("hang");
        let e = plugin(
            &d,
            r#"echo $$ > "$D/pid"; sleep 600 & echo $! > "$D/child"; wait"#,
        );
        let (r, took) = run_bounded(&e, Duration::from_millis(300));
        let err = r.unwrap_err();
        assert!(err.contains("did not finish within 0.3s"), "{err}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        for f in ["pid", "child"] {
            let pid = pid_in(&d, f);
            assert!(
                wait_until(Duration::from_secs(5), || dead(pid)),
                "{f} {pid} still runs"
            );
        }
    }

    #[test]
    fn output_held_open_by_a_grandchild_does_not_hold_the_run() {
        // The plugin answers and exits, but a background process it started keeps its stdout:
        // the answer is used after a short grace and that process is killed.
        let d = TempDir::new("grandchild");
        let e = plugin(
            &d,
            &format!(r#"sleep 600 & echo $! > "$D/child"; echo '{CRED}'"#),
        );
        let (r, took) = run_bounded(&e, Duration::from_secs(30));
        assert_eq!(r.unwrap().token.as_deref(), Some("tok"));
        assert!(took < Duration::from_secs(10), "{took:?}");
        let pid = pid_in(&d, "child");
        assert!(wait_until(Duration::from_secs(5), || dead(pid)));

        // The same with the plugin still running: the bound ends both.
        let e = plugin(&d, &format!(r#"sleep 600 & echo '{CRED}'; sleep 600"#));
        let (r, _) = run_bounded(&e, Duration::from_millis(300));
        assert!(r.unwrap_err().contains("did not finish within"));
    }

    #[test]
    fn a_plugin_exiting_nonzero_is_an_error_naming_it() {
        let d = TempDir::new("nonzero");
        let e = plugin(&d, &format!("echo '{CRED}'; exit 3"));
        let (r, _) = run_bounded(&e, Duration::from_secs(30));
        let err = r.unwrap_err();
        assert!(err.contains("users[u].user.exec: command:"), "{err}");
        assert!(err.contains("exited with exit status: 3"), "{err}");
        // Also when a child of it holds the output.
        let e = plugin(&d, "sleep 600 & exit 4");
        let (r, took) = run_bounded(&e, Duration::from_secs(30));
        assert!(r.unwrap_err().contains("exit status: 4"));
        assert!(took < Duration::from_secs(10), "{took:?}");
    }

    fn runs_in(d: &TempDir) -> usize {
        std::fs::read_to_string(d.0.join("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Calls `authorization` from `n` threads at once; their answers.
    fn at_once(creds: &Arc<Credentials>, n: usize) -> Vec<Result<Option<String>, String>> {
        let gate = Arc::new(std::sync::Barrier::new(n));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (c, g) = (creds.clone(), gate.clone());
                std::thread::spawn(move || {
                    g.wait();
                    c.authorization().map_err(|e| e.to_string())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn one_plugin_run_at_a_time_and_every_caller_gets_its_result() {
        let d = TempDir::new("single");
        let ok = plugin(
            &d,
            &format!(r#"echo run >> "$D/runs"; sleep 0.3; echo '{CRED}'"#),
        );
        let creds = Credentials::new(Auth::Exec(ok));
        for r in at_once(&creds, 8) {
            assert_eq!(r.unwrap().as_deref(), Some("Bearer tok"));
        }
        assert_eq!(runs_in(&d), 1);

        // A failing run: each waiter gets its error, and it ran once.
        let d = TempDir::new("single-fail");
        let bad = plugin(&d, r#"echo run >> "$D/runs"; sleep 1; exit 7"#);
        let creds = Credentials::new(Auth::Exec(bad));
        for r in at_once(&creds, 8) {
            assert!(r.unwrap_err().contains("exit status: 7"));
        }
        assert_eq!(runs_in(&d), 1);
        // The next request tries again.
        assert!(creds.authorization().is_err());
        assert_eq!(runs_in(&d), 2);
    }

    #[test]
    fn a_hung_plugin_holds_no_lock_a_deadline_or_shutdown_ends_the_wait() {
        let d = TempDir::new("nolock");
        let e = plugin(
            &d,
            r#"echo run >> "$D/runs"; sleep 600 & echo $! > "$D/child"; wait"#,
        );
        let creds = Credentials::new(Auth::Exec(e));
        let stop = Shutdown::new();
        creds.set_shutdown(stop.clone());
        // A caller without a deadline starts the run and waits for it.
        let (tx, waiting) = crossbeam_channel::bounded(1);
        let c = creds.clone();
        std::thread::spawn(move || {
            let _ = tx.send(c.authorization().map_err(|e| e.to_string()));
        });
        let child = pid_in(&d, "child");
        // A caller with a deadline joins that run and gives up at its deadline: no lock, no
        // second run.
        let start = Instant::now();
        let err = creds
            .authorization_until(Some(Instant::now() + Duration::from_millis(200)))
            .unwrap_err()
            .to_string();
        let took = start.elapsed();
        assert!(
            err.contains("has not answered within the request's deadline"),
            "{err}"
        );
        assert!(took >= Duration::from_millis(190), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(runs_in(&d), 1);
        // Shutdown ends the first wait and kills the plugin with its children.
        stop.trigger();
        let r = waiting
            .recv_timeout(Duration::from_secs(5))
            .expect("still waiting");
        assert!(r.unwrap_err().contains("shutting down"));
        assert!(wait_until(Duration::from_secs(5), || dead(child)));
        // And no new run starts after it.
        assert!(creds
            .authorization()
            .unwrap_err()
            .to_string()
            .contains("shutting down"));
        assert_eq!(runs_in(&d), 1);
    }

    #[test]
    fn a_token_file_read_that_blocks_holds_no_lock() {
        // A FIFO without a writer blocks its reader, as a hung network file system would.
        let d = TempDir::new("fifo");
        let p = d.0.join("token");
        let st = Command::new("mkfifo").arg(&p).status().unwrap();
        assert!(st.success());
        let creds = Credentials::with_refresh(
            Auth::TokenFile {
                path: p.clone(),
                initial: Some("old".into()),
            },
            Duration::from_secs(3600),
        );
        assert_eq!(
            creds.authorization().unwrap().as_deref(),
            Some("Bearer old")
        );
        // A 401 makes the next request read the file again.
        assert!(creds.invalidate());
        for _ in 0..2 {
            let start = Instant::now();
            let err = creds
                .authorization_until(Some(Instant::now() + Duration::from_millis(200)))
                .unwrap_err()
                .to_string();
            assert!(err.contains("the token file has not answered"), "{err}");
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{:?}",
                start.elapsed()
            );
        }
        // That read, started once, completes: its token is used.
        std::fs::write(&p, "new\n").unwrap();
        assert_eq!(
            creds.authorization().unwrap().as_deref(),
            Some("Bearer new")
        );
    }

    #[test]
    fn token_file_rotates_and_keeps_old_on_failure() {
        let d = TempDir::new("tf");
        let p = d.write("token", b"one\n");
        let creds = Credentials::with_refresh(
            Auth::TokenFile {
                path: p.clone(),
                initial: Some("one".into()),
            },
            Duration::ZERO,
        );
        assert_eq!(
            creds.authorization().unwrap().as_deref(),
            Some("Bearer one")
        );
        std::fs::write(&p, "two").unwrap();
        assert_eq!(
            creds.authorization().unwrap().as_deref(),
            Some("Bearer two")
        );
        std::fs::write(&p, "").unwrap();
        assert_eq!(
            creds.authorization().unwrap().as_deref(),
            Some("Bearer two")
        );
        std::fs::remove_file(&p).unwrap();
        assert_eq!(
            creds.authorization().unwrap().as_deref(),
            Some("Bearer two")
        );

        // Within the refresh period the file is not read again.
        let slow = Credentials::with_refresh(
            Auth::TokenFile {
                path: d.write("t2", b"a"),
                initial: Some("a".into()),
            },
            Duration::from_secs(3600),
        );
        std::fs::write(d.0.join("t2"), "b").unwrap();
        assert_eq!(slow.authorization().unwrap().as_deref(), Some("Bearer a"));
    }

    #[test]
    fn in_cluster_config() {
        let pki = Pki::new();
        let d = TempDir::new("sa");
        d.write("token", b"sa-token\n");
        d.write("ca.crt", &pki.read("ca.crt"));
        let env = |k: &str| match k {
            "KUBERNETES_SERVICE_HOST" => Some("fd00::1".to_string()),
            "KUBERNETES_SERVICE_PORT" => Some("443".to_string()),
            _ => None,
        };
        let cfg = load_in_cluster(&env, &d.0).unwrap();
        assert_eq!(cfg.server, "https://[fd00::1]:443");
        assert!(matches!(&cfg.auth, Auth::TokenFile { initial: Some(t), .. } if t == "sa-token"));
        let env4 = |k: &str| {
            if k == "KUBERNETES_SERVICE_HOST" {
                Some("10.96.0.1".to_string())
            } else {
                env(k)
            }
        };
        assert_eq!(
            load_in_cluster(&env4, &d.0).unwrap().server,
            "https://10.96.0.1:443"
        );

        let (_, field, _) = config_err(load_in_cluster(&|_: &str| None, &d.0));
        assert_eq!(field, "KUBERNETES_SERVICE_HOST");
        std::fs::remove_file(d.0.join("token")).unwrap();
        let (source, field, _) = config_err(load_in_cluster(&env, &d.0));
        assert_eq!(source, "in-cluster config");
        assert_eq!(field, d.0.join("token").display().to_string());
    }
}
