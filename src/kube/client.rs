//! The Kubernetes REST client: one shared ureq agent (rustls, the cluster CA, client certificate,
//! proxy as client-go picks it), credentials attached per request, the QPS/burst limiter,
//! `Status` bodies turned into typed errors, list pages streamed item by item into the caller's
//! records (`object`), and watch streams read line by line with each object kept as raw text
//! until its reader decodes it into a record.

use super::config::{self, ClientConfig, Credentials, Identity};
use super::error::{Error, Status};
use super::object::{self, ListMeta, MetaOnly, Object};
use super::ratelimit::RateLimiter;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use ureq::http;

/// Time to set up a connection (TCP + TLS), as client-go's dialer (30 s) but a bit shorter so a
/// dead server is noticed sooner.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Whole budget of a normal (non-watch) request, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A watch's per-read timeout is its `timeoutSeconds` plus this: the server ends a healthy watch
/// itself by then, so a read that takes longer means the server or the path to it is gone.
pub const WATCH_READ_SLACK: Duration = Duration::from_secs(30);
/// Per-read timeout for a watch without `timeoutSeconds`.
pub const WATCH_DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(600);
/// A list page larger than this is refused. Pages are read item by item, each item under
/// [`MAX_OBJECT`], so this bounds how long one page can take, not memory.
pub const MAX_BODY: u64 = 2 << 30;
/// The most one object may take on the wire: a non-watch response body (a Lease, an Event, a
/// PVC), one watch event line, one item of a list page. etcd refuses a write over 1.5 MiB
/// (`--max-request-bytes`) and kube-apiserver a request body over 3 MiB, so no stored object's
/// JSON comes near this; 16 MiB is five times that with room for JSON's verbosity over
/// protobuf. Anything longer is a broken or hostile stream: it ends the request or the watch
/// with an error (the caller logs it and retries or reconnects), never memory to grow into.
pub const MAX_OBJECT: usize = 16 << 20;
/// ureq's per-connection read buffer. Its default, 128 KiB, times one connection per watch
/// plus the pool is a sizeable part of a small process (issue #18); this still holds any
/// response head ureq accepts (`max_response_header_size`, 64 KiB).
const INPUT_BUFFER: usize = 64 * 1024;
/// ureq's per-connection write buffer (default 128 KiB). Request heads are a few hundred bytes
/// plus the bearer token; bodies (Events, Leases, patches) are a few KiB and stream through.
const OUTPUT_BUFFER: usize = 16 * 1024;
/// Buffer between ureq's body reader and the JSON parser or the watch line splitter: ureq has
/// buffered already, this only turns serde_json's byte-at-a-time reads into larger ones.
const READ_BUFFER: usize = 8 * 1024;
/// How much of a non-Status error body ends up in the error message.
const ERROR_BODY_EXCERPT: usize = 256;
/// client-go's REST client (`rest.Request.maxRetries`) sends a request again, after the wait the
/// server asked for, when a 429 or 5xx answer carries `Retry-After`; API priority and fairness
/// throttles that way. Up to this many times, then the answer is returned as an error.
pub const MAX_RETRY_AFTER_RETRIES: u32 = 10;
/// The longest wait a server can ask for, by `Retry-After` or a Status's `retryAfterSeconds`;
/// a longer one is cut to this. kube-apiserver asks for 1 s (max-in-flight and API priority
/// and fairness); a minute is twice the reflector's own backoff ceiling (30 s), and with
/// [`MAX_RETRY_AFTER_RETRIES`] bounds one request's waiting at ten minutes. Without a bound,
/// `Retry-After: 18446744073709551615` overflowed `Instant` (a panic) and a merely large value
/// held the caller for that long.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(60);

/// Called after every request with the method and the HTTP code (`"200"`) or `"<error>"`.
pub type RequestObserver = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Patch content types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json` (built-in types only).
    StrategicMerge,
}

impl PatchKind {
    fn content_type(self) -> &'static str {
        match self {
            PatchKind::Merge => "application/merge-patch+json",
            PatchKind::StrategicMerge => "application/strategic-merge-patch+json",
        }
    }
}

/// One line of a watch stream. Objects stay raw JSON text (always a JSON object) until the
/// reader decodes them into its own record type.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    Added(Box<RawValue>),
    Modified(Box<RawValue>),
    Deleted(Box<RawValue>),
    Bookmark {
        resource_version: String,
    },
    /// An `ERROR` event: usually 410 Expired (relist) or a server-side failure.
    Error(Status),
}

/// What every clone of a [`Client`] shares.
struct ClientInner {
    agent: ureq::Agent,
    server: String,
    host: String,
    creds: Arc<Credentials>,
    observer: RwLock<Option<RequestObserver>>,
    /// Cuts a Retry-After wait short, so a throttling API server cannot hold up shutdown.
    stop: std::sync::OnceLock<crate::shutdown::Shutdown>,
}

/// A cheap-to-clone handle; clones share the connection pool, credentials, observer and limiter.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
    limiter: RateLimiter,
    /// When set, no normal request of this handle runs past it (the lease loop's renew
    /// deadline, as client-go's context does); watches are not affected.
    deadline: Option<Instant>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.server)
            .finish()
    }
}

fn transport(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Transport {
        what: what.to_string(),
        message: e.to_string(),
    }
}

impl Client {
    /// Build the agent. Runs an exec credential plugin once when it may supply the client
    /// certificate. `qps`/`burst` as client-go (`qps < 0` = unlimited, 0 = defaults).
    pub fn new(cfg: ClientConfig, qps: f64, burst: u32, user_agent: &str) -> Result<Client, Error> {
        Client::build(cfg, qps, burst, user_agent, None)
    }

    /// [`Client::new`] with [`Client::set_shutdown`] in force from the start, so a credential
    /// plugin run while building (it may supply the client certificate) ends on `shutdown`
    /// too: SIGTERM during start-up.
    pub fn new_stoppable(
        cfg: ClientConfig,
        qps: f64,
        burst: u32,
        user_agent: &str,
        shutdown: &crate::shutdown::Shutdown,
    ) -> Result<Client, Error> {
        Client::build(cfg, qps, burst, user_agent, Some(shutdown))
    }

    fn build(
        cfg: ClientConfig,
        qps: f64,
        burst: u32,
        user_agent: &str,
        shutdown: Option<&crate::shutdown::Shutdown>,
    ) -> Result<Client, Error> {
        let creds = Credentials::new(cfg.auth.clone());
        if let Some(s) = shutdown {
            creds.set_shutdown(s.clone());
        }
        let mut identity = cfg.identity.clone();
        if identity.is_none() {
            identity = creds.exec_identity()?;
            if let Some(id) = &identity {
                config::check_identity(&id.cert_pem, &id.key_pem).map_err(|m| Error::Config {
                    source: cfg.source.clone(),
                    field: "exec clientCertificateData".into(),
                    message: m,
                })?;
            }
        }
        let tls = tls_config(&cfg, identity.as_ref())?;
        let proxy_url = match &cfg.proxy_url {
            Some(p) => Some(p.clone()),
            None => proxy_from_env(&cfg.server, &|k| std::env::var(k).ok()),
        };
        let proxy = match proxy_url {
            Some(p) => Some(ureq::Proxy::new(&p).map_err(|e| Error::Config {
                source: cfg.source.clone(),
                field: "proxy".into(),
                message: format!("bad proxy URL {p:?}: {e}"),
            })?),
            None => None,
        };
        let agent_cfg = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(user_agent)
            .accept("application/json")
            .proxy(proxy)
            .tls_config(tls)
            .input_buffer_size(INPUT_BUFFER)
            .output_buffer_size(OUTPUT_BUFFER)
            .build();
        let agent = ureq::Agent::new_with_config(agent_cfg);
        let host = host_of(&cfg.server);
        let client = Client {
            inner: Arc::new(ClientInner {
                agent,
                server: cfg.server,
                host,
                creds,
                observer: RwLock::new(None),
                stop: std::sync::OnceLock::new(),
            }),
            limiter: RateLimiter::new(qps, burst),
            deadline: None,
        };
        if let Some(s) = shutdown {
            client.set_shutdown(s.clone());
        }
        Ok(client)
    }

    /// Same agent and credentials, a separate limiter: the lease loop must not starve.
    pub fn with_own_limiter(&self, qps: f64, burst: u32) -> Client {
        Client {
            inner: self.inner.clone(),
            limiter: RateLimiter::new(qps, burst),
            deadline: None,
        }
    }

    /// Bounds every later normal request of this handle by `deadline` (None: the usual
    /// [`REQUEST_TIMEOUT`] only). A request that would start after it fails at once.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// `host[:port]` of the server, for the `host` label of request metrics.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// Retry-After, rate limiter and credential waits of this client and its clones end
    /// early, with an error, once `shutdown` is triggered (a running credential plugin is
    /// killed). Set once; later calls are ignored.
    pub fn set_shutdown(&self, shutdown: crate::shutdown::Shutdown) {
        self.inner.creds.set_shutdown(shutdown.clone());
        let _ = self.inner.stop.set(shutdown);
    }

    pub fn set_request_observer(&self, f: RequestObserver) {
        *crate::sync::write(&self.inner.observer) = Some(f);
    }

    fn observe(&self, method: &str, code: &str) {
        let obs = crate::sync::read(&self.inner.observer).clone();
        if let Some(f) = obs {
            f(method, code);
        }
    }

    /// Send one request (after a limiter token) and return the response; a 401 with a
    /// refreshable credential is retried once with a fresh one (client-go's exec authenticator
    /// refreshes on 401 too), a 429/5xx with `Retry-After` after that wait, as client-go does.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        read_timeout: Option<Duration>,
    ) -> Result<http::Response<ureq::Body>, Error> {
        let what = format!("{method} {path}");
        let url = format!("{}{}", self.inner.server, path);
        let mut retried = false;
        let mut throttled = 0;
        // The deadline (the lease loop's) also bounds the wait for a credential; watches
        // have none.
        let auth_deadline = if read_timeout.is_none() {
            self.deadline
        } else {
            None
        };
        loop {
            if self.limiter.acquire(self.inner.stop.get()) {
                return Err(transport(&what, "shutting down"));
            }
            let auth = self.inner.creds.authorization_until(auth_deadline)?;
            let budget = match (self.deadline, read_timeout) {
                (Some(d), None) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.observe(method, "<error>");
                        return Err(transport(&what, "deadline exceeded"));
                    }
                    Some(left.min(REQUEST_TIMEOUT))
                }
                _ => None,
            };
            let mut b = http::Request::builder().method(method).uri(&url);
            if let Some(a) = &auth {
                b = b.header("Authorization", a);
            }
            let result = match body {
                Some((ctype, bytes)) => {
                    let req = b
                        .header("Content-Type", ctype)
                        .body(bytes.to_vec())
                        .map_err(|e| transport(&what, e))?;
                    self.run_within(req, budget)
                }
                None => {
                    let req = b.body(()).map_err(|e| transport(&what, e))?;
                    match read_timeout {
                        Some(t) => {
                            // Watches: no overall budget (a healthy watch lasts minutes), but
                            // a bound on each read so a silent dead connection is noticed.
                            let req = self
                                .inner
                                .agent
                                .configure_request(req)
                                .timeout_global(None)
                                .timeout_per_read(Some(t))
                                .build();
                            self.inner.agent.run(req)
                        }
                        None => self.run_within(req, budget),
                    }
                }
            };
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    self.observe(method, "<error>");
                    return Err(transport(&what, e));
                }
            };
            let code = resp.status().as_u16();
            self.observe(method, &code.to_string());
            if code == 401 && !retried && self.inner.creds.invalidate() {
                retried = true;
                continue;
            }
            if let Some(wait) = server_wait(&resp) {
                // As client-go's context does, a deadline (the lease loop's renew deadline)
                // bounds the wait: a renewal that outlasted the lease could leave two leaders.
                let in_time = self
                    .deadline
                    .is_none_or(|d| Instant::now().checked_add(wait).is_some_and(|t| t < d));
                if throttled < MAX_RETRY_AFTER_RETRIES && in_time {
                    throttled += 1;
                    if wait == MAX_SERVER_WAIT {
                        let asked = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        log::warn!(
                            "{what}: the API server answered {code} with Retry-After {asked:?}; waiting {} s, the most this client waits",
                            MAX_SERVER_WAIT.as_secs()
                        );
                    }
                    log::debug!(
                        "{what}: the API server answered {code} with Retry-After, sending again in {wait:?} (retry {throttled})"
                    );
                    drop(resp);
                    match self.inner.stop.get() {
                        Some(stop) => {
                            if stop.wait_timeout(wait) {
                                return Err(transport(&what, "shutting down"));
                            }
                        }
                        None => std::thread::sleep(wait),
                    }
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// The body of a successful answer, whole.
    fn request_body<B: Serialize + ?Sized>(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &B)>,
    ) -> Result<Vec<u8>, Error> {
        let what = format!("{method} {path}");
        let bytes = body.map(|(ct, v)| (ct, serde_json::to_vec(v).unwrap_or_default()));
        let resp = self.send(
            method,
            path,
            bytes.as_ref().map(|(ct, b)| (*ct, &b[..])),
            None,
        )?;
        let code = resp.status().as_u16();
        if !(200..300).contains(&code) {
            return Err(api_error(&what, resp));
        }
        let reader = resp
            .into_body()
            .into_with_config()
            .limit(MAX_OBJECT as u64)
            .reader();
        let mut buf = Vec::new();
        BufReader::new(reader)
            .read_to_end(&mut buf)
            .map_err(|e| read_error(&what, e))?;
        Ok(buf)
    }

    /// GET one object decoded straight into `T` (a record's wire form), no tree in between.
    pub fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let buf = self.request_body("GET", path, None::<(&str, &())>)?;
        serde_json::from_slice(&buf).map_err(|e| Error::Decode {
            what: format!("GET {path}"),
            message: e.to_string(),
        })
    }

    /// POST or PUT a wire type as JSON and decode the answer straight into `T`: no tree on
    /// either side (the lease loop's create and update).
    pub fn send_as<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        self.typed(method, path, "application/json", body)
    }

    /// PATCH with a wire type as the patch and the answer decoded straight into `T` (the PVC
    /// status writes).
    pub fn patch_as<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        kind: PatchKind,
        body: &B,
    ) -> Result<T, Error> {
        self.typed("PATCH", path, kind.content_type(), body)
    }

    fn typed<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &B,
    ) -> Result<T, Error> {
        let buf = self.request_body(method, path, Some((content_type, body)))?;
        serde_json::from_slice(&buf).map_err(|e| Error::Decode {
            what: format!("{method} {path}"),
            message: e.to_string(),
        })
    }

    /// GET one list page and hand each item to `each` while the body is still being read, so
    /// a page is never in memory whole (see [`object::read_page`]).
    pub fn get_list_page(
        &self,
        path: &str,
        each: &mut dyn FnMut(&RawValue),
    ) -> Result<ListMeta, Error> {
        let what = format!("GET {path}");
        let resp = self.send("GET", path, None, None)?;
        if !resp.status().is_success() {
            return Err(api_error(&what, resp));
        }
        let reader = resp.into_body().into_with_config().limit(MAX_BODY).reader();
        object::read_page(
            BufReader::with_capacity(READ_BUFFER, reader),
            MAX_OBJECT,
            each,
        )
        .map_err(|message| Error::Decode { what, message })
    }

    /// Start a watch; `path_and_query` must include `watch=true` (or be a `/watch/` path).
    pub fn watch(&self, path_and_query: &str) -> Result<WatchStream, Error> {
        let what = format!("WATCH {path_and_query}");
        let read_timeout = query_param(path_and_query, "timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .map(|s| Duration::from_secs(s) + WATCH_READ_SLACK)
            .unwrap_or(WATCH_DEFAULT_READ_TIMEOUT);
        let resp = self.send("GET", path_and_query, None, Some(read_timeout))?;
        if !resp.status().is_success() {
            return Err(api_error(&what, resp));
        }
        let reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
        Ok(WatchStream {
            lines: BufReader::with_capacity(READ_BUFFER, Box::new(reader)),
            line: Vec::new(),
            what,
            done: false,
        })
    }
}

/// client-go's `checkWait`: a 429 or any 5xx with a whole number of seconds in `Retry-After`.
impl Client {
    /// Send `req`, within `budget` when one is set (the lease loop's renew deadline), else
    /// within the agent's usual request timeout.
    fn run_within<B: ureq::AsSendBody>(
        &self,
        req: http::Request<B>,
        budget: Option<Duration>,
    ) -> Result<http::Response<ureq::Body>, ureq::Error> {
        match budget {
            Some(t) => self.inner.agent.run(
                self.inner
                    .agent
                    .configure_request(req)
                    .timeout_global(Some(t))
                    .build(),
            ),
            None => self.inner.agent.run(req),
        }
    }
}

fn server_wait(resp: &http::Response<ureq::Body>) -> Option<Duration> {
    let code = resp.status().as_u16();
    if code != 429 && code < 500 {
        return None;
    }
    retry_after_header(resp)
}

/// The `Retry-After` header as a whole number of seconds (the HTTP-date form is not used by
/// kube-apiserver), bounded by [`MAX_SERVER_WAIT`].
fn retry_after_header(resp: &http::Response<ureq::Body>) -> Option<Duration> {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(server_wait_secs)
}

/// A server-supplied wait in seconds, cut to [`MAX_SERVER_WAIT`].
fn server_wait_secs(secs: u64) -> Duration {
    Duration::from_secs(secs).min(MAX_SERVER_WAIT)
}

fn read_error(what: &str, e: std::io::Error) -> Error {
    // ureq reports a body over the limit and a cut-short chunked body as io errors; the first
    // is the server's doing, not the network's.
    let msg = e.to_string();
    if msg.contains("limit") {
        Error::Decode {
            what: what.to_string(),
            message: msg,
        }
    } else {
        transport(what, format!("reading response: {msg}"))
    }
}

fn tls_config(
    cfg: &ClientConfig,
    identity: Option<&Identity>,
) -> Result<ureq::tls::TlsConfig, Error> {
    let bad = |field: &str, m: String| Error::Config {
        source: cfg.source.clone(),
        field: field.to_string(),
        message: m,
    };
    let mut b = ureq::tls::TlsConfig::builder();
    if cfg.insecure_skip_tls_verify {
        b = b.disable_verification(true);
    } else if let Some(ca) = &cfg.ca_pem {
        config::check_ca(ca).map_err(|m| bad("certificate-authority", m))?;
        let certs = config::pem_certs(ca).map_err(|m| bad("certificate-authority", m))?;
        b = b.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    if let Some(id) = identity {
        // ureq panics on a certificate rustls refuses; check first.
        config::check_identity(&id.cert_pem, &id.key_pem)
            .map_err(|m| bad("client-certificate", m))?;
        let certs = config::pem_certs(&id.cert_pem).map_err(|m| bad("client-certificate", m))?;
        let key = config::pem_key(&id.key_pem).map_err(|m| bad("client-key", m))?;
        b = b.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&certs, key)));
    }
    Ok(b.build())
}

/// Turn a non-2xx response into `Error::Api`, from its `Status` body when it has one.
fn api_error(what: &str, resp: http::Response<ureq::Body>) -> Error {
    let code = resp.status().as_u16();
    let retry_after = retry_after_header(&resp);
    let canonical = resp.status().canonical_reason().unwrap_or("").to_string();
    let mut buf = Vec::new();
    let _ = resp
        .into_body()
        .into_with_config()
        .limit(1 << 20)
        .reader()
        .take(1 << 20)
        .read_to_end(&mut buf);
    let mut status = status_from_body(code, &buf, &canonical);
    if retry_after.is_some() {
        status.retry_after = retry_after;
    }
    Error::Api {
        what: what.to_string(),
        status,
    }
}

/// A `metav1.Status` body, the fields the client reads. A field of the wrong type reads as its
/// zero value, so the fallbacks below apply to it.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct StatusWire {
    #[serde(deserialize_with = "object::zero_if_malformed")]
    kind: String,
    #[serde(deserialize_with = "object::zero_if_malformed")]
    code: u64,
    #[serde(deserialize_with = "object::zero_if_malformed")]
    reason: String,
    #[serde(deserialize_with = "object::zero_if_malformed")]
    message: String,
    #[serde(deserialize_with = "object::zero_if_malformed")]
    details: StatusDetails,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct StatusDetails {
    #[serde(deserialize_with = "object::zero_if_malformed")]
    retry_after_seconds: u64,
}

/// A `metav1.Status` from a body, or a synthesised one (code, HTTP reason, body excerpt).
pub fn status_from_body(code: u16, body: &[u8], canonical: &str) -> Status {
    if let Ok(w) = serde_json::from_slice::<StatusWire>(body) {
        if w.kind == "Status" {
            return status_from_wire(w, code);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        canonical.to_string()
    } else {
        let mut t: String = text.chars().take(ERROR_BODY_EXCERPT).collect();
        if t.len() < text.len() {
            t.push_str("...");
        }
        t
    };
    Status {
        code,
        reason: super::error::reason_for(code).to_string(),
        message,
        retry_after: None,
    }
}

fn status_from_wire(w: StatusWire, fallback_code: u16) -> Status {
    let code = u16::try_from(w.code)
        .ok()
        .filter(|c| *c != 0)
        .unwrap_or(fallback_code);
    let reason = if w.reason.is_empty() {
        super::error::reason_for(code).to_string()
    } else {
        w.reason
    };
    let retry_after = Some(w.details.retry_after_seconds)
        .filter(|s| *s > 0)
        .map(server_wait_secs);
    Status {
        code,
        reason,
        message: w.message,
        retry_after,
    }
}

/// A running watch: an iterator of events. It ends (`None`) when the server closes the stream
/// normally; a transport or decode failure yields one `Err` and then ends.
pub struct WatchStream {
    lines: BufReader<Box<dyn Read + Send>>,
    /// The line being read, reused from event to event.
    line: Vec<u8>,
    what: String,
    done: bool,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("what", &self.what)
            .field("done", &self.done)
            .finish()
    }
}

impl WatchStream {
    /// A stream over any reader of JSON lines (tests, replays).
    pub fn from_reader(what: &str, r: Box<dyn Read + Send>) -> WatchStream {
        WatchStream {
            lines: BufReader::new(r),
            line: Vec::new(),
            what: what.to_string(),
            done: false,
        }
    }
}

impl Iterator for WatchStream {
    type Item = Result<WatchEvent, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        // One unusually large event must not pin its buffer for the rest of the watch.
        if self.line.capacity() > LINE_KEEP {
            self.line = Vec::new();
        }
        let mut line = std::mem::take(&mut self.line);
        let ev = self.next_in(&mut line);
        self.line = line;
        ev
    }
}

/// A watch line buffer larger than this is not kept for the next event.
const LINE_KEEP: usize = 256 * 1024;

impl WatchStream {
    fn next_in(&mut self, line: &mut Vec<u8>) -> Option<Result<WatchEvent, Error>> {
        loop {
            if self.done {
                return None;
            }
            line.clear();
            // One byte over the cap tells a line of exactly MAX_OBJECT from a longer one.
            let cap = MAX_OBJECT as u64 + 1;
            match (&mut self.lines).take(cap).read_until(b'\n', line) {
                Ok(n) if n as u64 == cap && !line.ends_with(b"\n") => {
                    self.done = true;
                    *line = Vec::new();
                    return Some(Err(Error::Decode {
                        what: self.what.clone(),
                        message: format!(
                            "a watch event line longer than {} MiB, the most one object takes",
                            MAX_OBJECT >> 20
                        ),
                    }));
                }
                Ok(0) => {
                    self.done = true;
                    return None;
                }
                Ok(_) => {
                    let complete = line.ends_with(b"\n");
                    if line.iter().all(|b| b.is_ascii_whitespace()) {
                        if !complete {
                            self.done = true;
                        }
                        continue;
                    }
                    let ev = parse_watch_line(line).map_err(|m| Error::Decode {
                        what: self.what.clone(),
                        message: if complete {
                            m
                        } else {
                            format!("truncated watch event: {m}")
                        },
                    });
                    if ev.is_err() || !complete {
                        self.done = true;
                    }
                    return Some(ev);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(read_error(&self.what, e)));
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct WatchLine {
    #[serde(rename = "type")]
    kind: String,
    object: Box<RawValue>,
}

/// Decode one watch line: `{"type": "...", "object": {...}}`. The object is kept as raw text;
/// only a bookmark's version and an error's Status are decoded here.
pub fn parse_watch_line(line: &[u8]) -> Result<WatchEvent, String> {
    let WatchLine { kind, object } = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if !object.get().starts_with('{') {
        return Err("watch event object is not a JSON object".to_string());
    }
    Ok(match kind.as_str() {
        "ADDED" => WatchEvent::Added(object),
        "MODIFIED" => WatchEvent::Modified(object),
        "DELETED" => WatchEvent::Deleted(object),
        "BOOKMARK" => WatchEvent::Bookmark {
            resource_version: serde_json::from_str::<MetaOnly>(object.get())
                .map_err(|e| format!("malformed bookmark: {e}"))?
                .meta()
                .resource_version()
                .to_string(),
        },
        "ERROR" => WatchEvent::Error(status_from_wire(
            serde_json::from_str(object.get()).map_err(|e| e.to_string())?,
            500,
        )),
        other => return Err(format!("unknown watch event type {other:?}")),
    })
}

/// `k=v&k2=v2`, percent-encoded (RFC 3986 unreserved characters kept), without a leading `?`.
pub fn encode_query(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(k, &mut out);
        out.push('=');
        percent_encode(v, &mut out);
    }
    out
}

fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The raw value of `key` in the query of `path_and_query`.
fn query_param<'a>(path_and_query: &'a str, key: &str) -> Option<&'a str> {
    let q = path_and_query.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// (scheme, host without brackets, port) of an http(s) URL.
fn split_url(url: &str) -> Option<(&str, &str, Option<u16>)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map(|(_, a)| a)
        .unwrap_or(authority);
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r.split_once(']')?;
        (h, after.strip_prefix(':').and_then(|p| p.parse().ok()))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()),
            None => (authority, None),
        }
    };
    Some((scheme, host, port))
}

fn host_of(server: &str) -> String {
    let rest = server.split_once("://").map(|(_, r)| r).unwrap_or(server);
    rest.split(['/', '?']).next().unwrap_or("").to_string()
}

/// The proxy client-go's transport (Go's `httpproxy.FromEnvironment`) would use for `server`:
/// `HTTPS_PROXY` for https and `HTTP_PROXY` for http (upper case first), never for localhost or
/// a loopback address, and not when `NO_PROXY` matches (`*`, IPs, CIDRs, `host[:port]`, a
/// domain and its subdomains, `.domain` for subdomains only). ureq's own env handling differs
/// (it prefers `ALL_PROXY`, ignores the scheme and CIDRs), so the choice is made here.
pub fn proxy_from_env(server: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let get = |upper: &str| {
        env(upper)
            .or_else(|| env(&upper.to_ascii_lowercase()))
            .filter(|s| !s.is_empty())
    };
    let (scheme, host, port) = split_url(server)?;
    let proxy = match scheme {
        "https" => get("HTTPS_PROXY")?,
        "http" => get("HTTP_PROXY")?,
        _ => return None,
    };
    let host = host.to_ascii_lowercase();
    let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
    let ip: Option<IpAddr> = host.parse().ok();
    if host == "localhost" || ip.is_some_and(|i| i.is_loopback()) {
        return None;
    }
    if let Some(no) = get("NO_PROXY") {
        for entry in no
            .split(',')
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty())
        {
            if no_proxy_matches(&entry, &host, ip, port) {
                return None;
            }
        }
    }
    Some(proxy)
}

fn no_proxy_matches(entry: &str, host: &str, ip: Option<IpAddr>, port: u16) -> bool {
    if entry == "*" {
        return true;
    }
    if let Some((net, bits)) = entry.split_once('/') {
        let (Ok(net), Ok(bits), Some(ip)) = (net.parse::<IpAddr>(), bits.parse::<u32>(), ip) else {
            return false;
        };
        return cidr_contains(net, bits, ip);
    }
    if let Ok(e) = entry
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return ip == Some(e);
    }
    // `host:port` or `[v6]:port`
    let (name, eport) = match split_url(&format!("x://{entry}")) {
        Some((_, h, p)) => (h.to_string(), p),
        None => (entry.to_string(), None),
    };
    if eport.is_some_and(|p| p != port) {
        return false;
    }
    if let Ok(e) = name.parse::<IpAddr>() {
        return ip == Some(e);
    }
    let name = name.strip_prefix('*').unwrap_or(&name);
    if let Some(suffix) = name.strip_prefix('.') {
        return host.ends_with(&format!(".{suffix}"));
    }
    host == name || host.ends_with(&format!(".{name}"))
}

fn cidr_contains(net: IpAddr, bits: u32, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kube::config::tests::Pki;
    use crate::kube::config::Auth;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Mutex;

    use serde_json::Value;

    /// Requests answered as a tree, for the tests of the request machinery (production code
    /// decodes every answer into its own wire type).
    impl Client {
        fn get(&self, path: &str) -> Result<Value, Error> {
            self.request("GET", path, None)
        }

        fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
            self.request("POST", path, Some(("application/json", body)))
        }

        fn put(&self, path: &str, body: &Value) -> Result<Value, Error> {
            self.request("PUT", path, Some(("application/json", body)))
        }

        fn patch(&self, path: &str, kind: PatchKind, body: &Value) -> Result<Value, Error> {
            self.request("PATCH", path, Some((kind.content_type(), body)))
        }

        fn delete(&self, path: &str) -> Result<Value, Error> {
            self.request("DELETE", path, None)
        }

        fn request(
            &self,
            method: &str,
            path: &str,
            body: Option<(&str, &Value)>,
        ) -> Result<Value, Error> {
            let what = format!("{method} {path}");
            let buf = self.request_body(method, path, body)?;
            if buf.iter().all(|b| b.is_ascii_whitespace()) {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&buf).map_err(|e| Error::Decode {
                what,
                message: e.to_string(),
            })
        }
    }

    /// A canned HTTP/1.1 server: each accepted connection reads one request, records its
    /// request line and headers, and gets the next scripted raw response.
    pub(crate) struct Canned {
        pub addr: String,
        pub requests: Arc<Mutex<Vec<String>>>,
    }

    impl Canned {
        pub(crate) fn start(responses: Vec<Vec<u8>>) -> Canned {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = format!("http://{}", l.local_addr().unwrap());
            let requests = Arc::new(Mutex::new(Vec::new()));
            let reqs = requests.clone();
            std::thread::spawn(move || {
                for resp in responses {
                    let Ok((mut s, _)) = l.accept() else { return };
                    let head = read_head(&mut s);
                    reqs.lock().unwrap().push(head);
                    let _ = s.write_all(&resp);
                    let _ = s.flush();
                }
            });
            Canned { addr, requests }
        }
        pub(crate) fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    pub(crate) fn read_head(s: &mut impl Read) -> String {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let len: usize = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        let _ = s.read_exact(&mut body);
        format!("{text}{}", String::from_utf8_lossy(&body))
    }

    pub(crate) fn http(code: u16, extra_headers: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nConnection: close\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    }

    /// A chunked response whose chunks are the given strings; `end` = send the terminating chunk.
    pub(crate) fn chunked(chunks: &[&str], end: bool) -> Vec<u8> {
        let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for c in chunks {
            out.extend(format!("{:x}\r\n{c}\r\n", c.len()).into_bytes());
        }
        if end {
            out.extend(b"0\r\n\r\n");
        }
        out
    }

    pub(crate) fn plain_config(server: &str) -> ClientConfig {
        ClientConfig {
            server: server.to_string(),
            ca_pem: None,
            identity: None,
            insecure_skip_tls_verify: false,
            proxy_url: None,
            auth: Auth::Token("tkn".into()),
            source: "test".into(),
            namespace: None,
        }
    }

    pub(crate) fn client(server: &str) -> Client {
        Client::new(
            plain_config(server),
            -1.0,
            1,
            "csi-external-health-monitor-controller/v-test",
        )
        .unwrap()
    }

    /// A GET against `addr` with a client whose shutdown is triggered 200 ms in: the error it
    /// ends with (a wait the server asked for must not outlast shutdown).
    fn get_cut_short_by_shutdown(addr: &str) -> Error {
        let c = client(addr);
        let shutdown = crate::shutdown::Shutdown::new();
        c.set_shutdown(shutdown.clone());
        let trigger = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            shutdown.trigger();
        });
        let e = c.get("/x").unwrap_err();
        trigger.join().unwrap();
        e
    }

    #[test]
    fn get_sends_headers_and_decodes_json() {
        let srv = Canned::start(vec![http(200, "", r#"{"kind":"PersistentVolume"}"#)]);
        let c = client(&srv.addr);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        c.set_request_observer(Arc::new(move |m: &str, code: &str| {
            s2.lock().unwrap().push(format!("{m} {code}"))
        }));
        let v = c.get("/api/v1/persistentvolumes/pv1").unwrap();
        assert_eq!(v["kind"], "PersistentVolume");
        let req = &srv.requests()[0];
        assert!(
            req.starts_with("GET /api/v1/persistentvolumes/pv1 HTTP/1.1"),
            "{req}"
        );
        let lower = req.to_ascii_lowercase();
        assert!(lower.contains("authorization: bearer tkn"), "{req}");
        assert!(
            lower.contains("user-agent: csi-external-health-monitor-controller/v-test"),
            "{req}"
        );
        assert_eq!(*seen.lock().unwrap(), vec!["GET 200".to_string()]);
    }

    #[test]
    fn status_bodies_become_typed_errors() {
        let status = |code: u16, reason: &str| {
            format!(
                r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","message":"m{code}","reason":"{reason}","code":{code}}}"#
            )
        };
        let srv = Canned::start(vec![
            http(404, "", &status(404, "NotFound")),
            http(409, "", &status(409, "AlreadyExists")),
            http(410, "", &status(410, "Expired")),
            // Without the header (which would make the client wait and send again), the wait
            // comes from the Status details.
            http(
                429,
                "",
                &status(429, "TooManyRequests").replace(
                    r#""code":429"#,
                    r#""code":429,"details":{"retryAfterSeconds":7}"#,
                ),
            ),
            http(503, "", "<html>upstream down</html>"),
            http(403, "", &status(403, "Forbidden")),
            http(422, "", &status(422, "Invalid")),
        ]);
        let c = client(&srv.addr);
        let e = c.get("/a").unwrap_err();
        assert!(e.is_not_found() && !e.is_retryable(), "{e}");
        assert_eq!(
            e.to_string(),
            "GET /a: the API server answered 404 NotFound: m404"
        );
        let e = c.post("/a", &serde_json::json!({})).unwrap_err();
        assert!(e.is_already_exists(), "{e}");
        assert!(c.get("/a").unwrap_err().is_gone());
        let e = c.get("/a").unwrap_err();
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(e.is_retryable());
        match c.get("/a").unwrap_err() {
            Error::Api { status, .. } => {
                assert_eq!(status.code, 503);
                assert_eq!(status.reason, "ServiceUnavailable");
                assert!(status.message.contains("upstream down"));
            }
            other => panic!("{other}"),
        }
        assert_eq!(c.get("/a").unwrap_err().code(), Some(403));
        assert_eq!(
            c.patch("/a", PatchKind::StrategicMerge, &serde_json::json!({}))
                .unwrap_err()
                .code(),
            Some(422)
        );
        assert!(srv.requests()[6]
            .to_ascii_lowercase()
            .contains("content-type: application/strategic-merge-patch+json"));
    }

    #[test]
    fn a_deadline_bounds_a_hanging_request() {
        // Accepts and never answers: only the deadline can end the request.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", l.local_addr().unwrap());
        let mut c = client(&addr);
        c.set_deadline(Some(std::time::Instant::now() + Duration::from_millis(300)));
        let t0 = std::time::Instant::now();
        let e = c.put("/x", &serde_json::json!({})).unwrap_err();
        assert!(e.is_transport(), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        // Past the deadline nothing is sent at all.
        assert!(c
            .get("/x")
            .unwrap_err()
            .to_string()
            .contains("deadline exceeded"));
        c.set_deadline(None);
        drop(l);
    }

    #[test]
    fn a_deadline_bounds_the_wait_for_a_hung_credential_plugin() {
        // The lease loop's handle shares the credentials of every other handle: a plugin that
        // hangs must cost a request with a deadline no more than that deadline, and a request
        // of another handle must not be stuck behind a lock it holds.
        let d = crate::kube::config::tests::TempDir::new("client-exec");
        let script = d.write(
            "p.sh",
            format!(
                "#!/bin/sh\n[ -e {hang} ] && exec sleep 600\ntouch {hang}\necho '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"t\",\"expirationTimestamp\":\"2001-01-01T00:00:00Z\"}}}}'\n",
                hang = d.0.join("hang").display()
            )
            .as_bytes(),
        );
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut cfg = plain_config("http://127.0.0.1:1");
        cfg.auth = Auth::Exec(crate::kube::config::ExecConfig {
            api_version: "client.authentication.k8s.io/v1".into(),
            command: script.display().to_string(),
            args: vec![],
            env: vec![],
            install_hint: String::new(),
            cluster_info: None,
            source: "kubeconfig k: users[u].user.exec".into(),
        });
        // The first run (at construction) answers with an expired token; every later run hangs.
        let c = Client::new(cfg, -1.0, 1, "ua").unwrap();
        let shutdown = crate::shutdown::Shutdown::new();
        c.set_shutdown(shutdown.clone());
        for _ in 0..2 {
            let mut lease = c.with_own_limiter(-1.0, 1);
            lease.set_deadline(Some(std::time::Instant::now() + Duration::from_millis(300)));
            let t0 = std::time::Instant::now();
            let e = lease.put("/lease", &serde_json::json!({})).unwrap_err();
            assert!(
                e.to_string().contains(
                    "exec credential plugin has not answered within the request's deadline"
                ),
                "{e}"
            );
            assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        }
        // A request without a deadline waits for the plugin; shutdown ends that wait.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let plain = c.clone();
        std::thread::spawn(move || {
            let _ = tx.send(plain.get("/x").map_err(|e| e.to_string()));
        });
        shutdown.trigger();
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("still waiting");
        assert!(r.unwrap_err().contains("shutting down"));
    }

    #[test]
    fn retry_after_is_waited_and_the_request_sent_again() {
        let busy = |code: u16| {
            http(
                code,
                "Retry-After: 0\r\n",
                r#"{"kind":"Status","code":429}"#,
            )
        };
        let srv = Canned::start(vec![busy(429), busy(503), http(200, "", r#"{"ok":1}"#)]);
        let c = client(&srv.addr);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        c.set_request_observer(Arc::new(move |m: &str, code: &str| {
            s2.lock().unwrap().push(format!("{m} {code}"))
        }));
        assert_eq!(c.post("/x", &serde_json::json!({"a": 1})).unwrap()["ok"], 1);
        let reqs = srv.requests();
        assert_eq!(reqs.len(), 3);
        assert!(reqs.iter().all(|r| r.ends_with(r#"{"a":1}"#)), "{reqs:?}");
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["POST 429", "POST 503", "POST 200"]
        );

        // Bounded; a 500 without the header and a 409 are answers, not waits.
        let n = MAX_RETRY_AFTER_RETRIES as usize + 1;
        let mut script: Vec<Vec<u8>> = (0..n).map(|_| busy(429)).collect();
        script.push(http(500, "", "{}"));
        script.push(http(409, "Retry-After: 0\r\n", "{}"));
        let srv = Canned::start(script);
        let c = client(&srv.addr);
        assert_eq!(c.get("/x").unwrap_err().code(), Some(429));
        assert_eq!(srv.requests().len(), n);
        assert_eq!(c.get("/x").unwrap_err().code(), Some(500));
        assert_eq!(c.get("/x").unwrap_err().code(), Some(409));

        // A wait that would outlast the handle's deadline (the lease loop's renew deadline)
        // is not taken: the 429 is the answer.
        let long = http(429, "Retry-After: 5\r\n", r#"{"kind":"Status","code":429}"#);
        let srv = Canned::start(vec![long, http(200, "", "{}")]);
        let mut lease = client(&srv.addr).with_own_limiter(-1.0, 1);
        lease.set_deadline(Some(std::time::Instant::now() + Duration::from_secs(2)));
        let t0 = std::time::Instant::now();
        assert_eq!(lease.get("/x").unwrap_err().code(), Some(429));
        assert_eq!(srv.requests().len(), 1);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_huge_server_wait_is_bounded_not_an_overflow() {
        let huge = |header: &str| {
            http(
                429,
                &format!("Retry-After: {header}\r\n"),
                r#"{"kind":"Status","code":429}"#,
            )
        };
        // With a deadline (the lease loop): `now + wait` used to overflow `Instant` and panic;
        // the bounded wait still outlasts the deadline, so the 429 is the answer.
        let srv = Canned::start(vec![huge("18446744073709551615"), http(200, "", "{}")]);
        let mut c = client(&srv.addr);
        c.set_deadline(Some(std::time::Instant::now() + Duration::from_secs(2)));
        let e = c.get("/x").unwrap_err();
        assert_eq!(e.retry_after(), Some(MAX_SERVER_WAIT));
        assert_eq!(srv.requests().len(), 1);

        // Without one: the wait (on the shutdown signal) used to overflow too; now it is a
        // bounded wait that shutdown ends.
        let srv = Canned::start(vec![huge("18446744073709551615")]);
        let e = get_cut_short_by_shutdown(&srv.addr);
        assert!(e.to_string().contains("shutting down"), "{e}");

        // A Status body's retryAfterSeconds (the reflector's backoff floor) is bounded alike.
        for secs in ["18446744073709551615", "100000"] {
            let body = format!(
                r#"{{"kind":"Status","code":429,"details":{{"retryAfterSeconds":{secs}}}}}"#
            );
            let st = status_from_body(429, body.as_bytes(), "Too Many Requests");
            assert_eq!(st.retry_after, Some(MAX_SERVER_WAIT), "{secs}");
        }
        let st = status_from_body(
            429,
            br#"{"kind":"Status","code":429,"details":{"retryAfterSeconds":3}}"#,
            "",
        );
        assert_eq!(st.retry_after, Some(Duration::from_secs(3)));
    }

    /// A watch line that never ends is a broken stream at MAX_OBJECT bytes, not a buffer that
    /// grows with it; the stream ends after the error.
    #[test]
    fn a_watch_line_over_the_cap_ends_the_watch() {
        let endless = std::io::repeat(b'x').take(100 << 20);
        let mut w = WatchStream::from_reader("WATCH /api/v1/pods", Box::new(endless));
        let e = w.next().unwrap().unwrap_err();
        assert_eq!(
            e.to_string(),
            "WATCH /api/v1/pods: malformed response: a watch event line longer than 16 MiB, the most one object takes"
        );
        assert!(w.next().is_none());
        assert!(w.line.capacity() <= LINE_KEEP);
        // A line just under the cap is an event as usual.
        let pad = MAX_OBJECT - 64;
        let line = format!(
            r#"{{"type":"ADDED","object":{{"p":"{}"}}}}"#,
            "x".repeat(pad)
        ) + "\n";
        let mut w = WatchStream::from_reader("w", Box::new(std::io::Cursor::new(line)));
        assert!(matches!(w.next(), Some(Ok(WatchEvent::Added(_)))));
    }

    /// A single object's body (a Lease, an Event) over MAX_OBJECT is refused, not buffered.
    #[test]
    fn an_object_body_over_the_cap_is_refused() {
        let big = format!(r#"{{"s":"{}"}}"#, "x".repeat(MAX_OBJECT));
        let srv = Canned::start(vec![http(200, "", &big)]);
        let e = client(&srv.addr).get("/x").unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e}");
    }

    #[test]
    fn shutdown_cuts_a_retry_after_wait_short() {
        let busy = http(
            429,
            "Retry-After: 60\r\n",
            r#"{"kind":"Status","code":429}"#,
        );
        let srv = Canned::start(vec![busy]);
        let t0 = std::time::Instant::now();
        let e = get_cut_short_by_shutdown(&srv.addr);
        assert!(e.to_string().contains("shutting down"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    }

    #[test]
    fn transport_errors_are_reported_and_observed() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let c = client(&addr);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        c.set_request_observer(Arc::new(move |m: &str, code: &str| {
            s2.lock().unwrap().push(format!("{m} {code}"))
        }));
        let e = c.delete("/x").unwrap_err();
        assert!(e.is_transport(), "{e}");
        assert_eq!(*seen.lock().unwrap(), vec!["DELETE <error>".to_string()]);
    }

    #[test]
    fn malformed_json_is_a_decode_error() {
        let srv = Canned::start(vec![http(200, "", "{not json")]);
        assert!(matches!(
            client(&srv.addr).get("/x"),
            Err(Error::Decode { .. })
        ));
    }

    #[test]
    fn bodies_over_ten_megabytes_are_read() {
        let big = format!(r#"{{"items":"{}"}}"#, "x".repeat(12 << 20));
        let srv = Canned::start(vec![http(200, "", &big)]);
        let v = client(&srv.addr).get("/big").unwrap();
        assert_eq!(v["items"].as_str().map(str::len), Some(12 << 20));
    }

    #[test]
    fn watch_stream_events_and_endings() {
        let added = r#"{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"5"}}}"#;
        let bookmark = r#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}}"#;
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old"}}"#;
        let srv = Canned::start(vec![
            // An event split across chunks, a bookmark, then a normal end.
            chunked(
                &[
                    &added[..20],
                    &format!("{}\n", &added[20..]),
                    &format!("{bookmark}\n"),
                ],
                true,
            ),
            chunked(&[&format!("{gone}\n")], true),
            // Truncated: the connection closes mid-event.
            chunked(&[&added[..30]], false),
            http(
                410,
                "",
                r#"{"kind":"Status","code":410,"reason":"Expired"}"#,
            ),
        ]);
        let c = client(&srv.addr);
        let evs: Vec<_> = c
            .watch("/api/v1/pods?watch=true&timeoutSeconds=10")
            .unwrap()
            .collect();
        assert_eq!(evs.len(), 2);
        assert!(matches!(&evs[0], Ok(WatchEvent::Added(o)) if o.get().contains(r#""name":"a""#)));
        assert!(
            matches!(evs[1].as_ref().unwrap(), WatchEvent::Bookmark { resource_version } if resource_version == "9")
        );
        let evs: Vec<_> = c.watch("/w?watch=true").unwrap().collect();
        assert!(
            matches!(&evs[0], Ok(WatchEvent::Error(s)) if s.code == 410 && s.reason == "Expired")
        );
        let evs: Vec<_> = c.watch("/w?watch=true").unwrap().collect();
        assert_eq!(evs.len(), 1);
        assert!(evs[0].is_err(), "{evs:?}");
        assert!(c.watch("/w?watch=true").unwrap_err().is_gone());
    }

    #[test]
    fn watch_line_parsing() {
        assert!(parse_watch_line(b"{}").is_err());
        assert!(parse_watch_line(br#"{"type":"WHAT","object":{}}"#).is_err());
        assert!(parse_watch_line(br#"{"type":"ADDED","object":3}"#).is_err());
        let ev = parse_watch_line(
            br#"{"type":"ERROR","object":{"kind":"Status","code":500,"message":"boom"}}"#,
        )
        .unwrap();
        assert!(matches!(ev, WatchEvent::Error(s) if s.code == 500 && s.reason == "InternalError"));
    }

    #[test]
    fn query_encoding() {
        assert_eq!(
            encode_query(&[("fieldSelector", "spec.nodeName=n1,a!=b"), ("limit", "500")]),
            "fieldSelector=spec.nodeName%3Dn1%2Ca%21%3Db&limit=500"
        );
        assert_eq!(
            query_param("/x?watch=true&timeoutSeconds=30", "timeoutSeconds"),
            Some("30")
        );
        assert_eq!(query_param("/x", "timeoutSeconds"), None);
    }

    #[test]
    fn proxy_selection_follows_go() {
        let base = [
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("http_proxy", "http://p2:80"),
        ];
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: &[Case] = &[
            ("https://10.0.0.1:6443", &base, Some("http://proxy:3128")),
            ("http://10.0.0.1:8080", &base, Some("http://p2:80")),
            ("https://127.0.0.1:6443", &base, None),
            ("https://localhost:6443", &base, None),
            ("https://[::1]:6443", &base, None),
            (
                "https://10.0.0.1:6443",
                &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "10.0.0.0/8")],
                None,
            ),
            (
                "https://10.0.0.1:6443",
                &[
                    ("HTTPS_PROXY", "http://p:1"),
                    ("NO_PROXY", "192.168.0.0/16, 10.0.0.1"),
                ],
                None,
            ),
            (
                "https://api.example.com",
                &[("HTTPS_PROXY", "http://p:1"), ("no_proxy", "example.com")],
                None,
            ),
            (
                "https://example.com",
                &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", ".example.com")],
                Some("http://p:1"),
            ),
            (
                "https://a.example.com",
                &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "*.example.com")],
                None,
            ),
            (
                "https://api.example.com:6443",
                &[
                    ("HTTPS_PROXY", "http://p:1"),
                    ("NO_PROXY", "api.example.com:443"),
                ],
                Some("http://p:1"),
            ),
            (
                "https://api.example.com:6443",
                &[
                    ("HTTPS_PROXY", "http://p:1"),
                    ("NO_PROXY", "api.example.com:6443"),
                ],
                None,
            ),
            (
                "https://[fd00::1]:443",
                &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "fd00::/8")],
                None,
            ),
            (
                "https://h",
                &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "*")],
                None,
            ),
            (
                "https://notexample.com",
                &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "example.com")],
                Some("http://p:1"),
            ),
            ("https://h", &[("HTTP_PROXY", "http://p:1")], None),
        ];
        for (server, vars, want) in cases {
            let env = |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            };
            assert_eq!(
                proxy_from_env(server, &env).as_deref(),
                *want,
                "{server} {vars:?}"
            );
        }
    }

    /// TLS end to end: a rustls server with a test CA that requires a client certificate.
    #[test]
    fn tls_with_ca_and_client_certificate() {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let pki = Pki::new();
        let pem_certs = |name: &str| -> Vec<CertificateDer<'static>> {
            config::pem_certs(&pki.read(name))
                .unwrap()
                .iter()
                .map(|c| CertificateDer::from(c.der().to_vec()))
                .collect()
        };
        let key: PrivateKeyDer<'static> = {
            use rustls::pki_types::pem::PemObject;
            PrivateKeyDer::from_pem_slice(&pki.read("server.key")).unwrap()
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(pem_certs("ca.crt"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let server_cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(pem_certs("server.crt"), key)
                .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (sock, _): (TcpStream, _) = l.accept().unwrap();
            let conn = rustls::ServerConnection::new(server_cfg).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let head = read_head(&mut tls);
            let resp = http(200, "", r#"{"ok":true}"#);
            tls.write_all(&resp).unwrap();
            tls.conn.send_close_notify();
            let _ = tls.flush();
            head
        });
        let mut cfg = plain_config(&format!("https://127.0.0.1:{port}"));
        cfg.ca_pem = Some(pki.read("ca.crt"));
        cfg.identity = Some(Identity {
            cert_pem: pki.read("client.crt"),
            key_pem: pki.read("client.key"),
        });
        let c = Client::new(cfg, -1.0, 1, "ua").unwrap();
        assert_eq!(c.get("/version").unwrap()["ok"], true);
        assert!(handle.join().unwrap().starts_with("GET /version"));

        // A v1 client certificate is refused with an error, not a panic inside ureq.
        let mut bad = plain_config("https://127.0.0.1:1");
        bad.identity = Some(Identity {
            cert_pem: pki.read("clientv1.crt"),
            key_pem: pki.read("client.key"),
        });
        assert!(matches!(
            Client::new(bad, -1.0, 1, "ua"),
            Err(Error::Config { .. })
        ));
    }

    #[test]
    fn limiter_is_shared_by_clones_but_not_by_own_limiter() {
        let srv = Canned::start((0..4).map(|_| http(200, "", "{}")).collect());
        let c = Client::new(plain_config(&srv.addr), 10.0, 1, "ua").unwrap();
        let lease = c.with_own_limiter(-1.0, 1);
        let start = std::time::Instant::now();
        lease.get("/a").unwrap();
        lease.get("/a").unwrap();
        assert!(
            start.elapsed() < Duration::from_millis(90),
            "own limiter must not throttle"
        );
        c.get("/a").unwrap();
        c.clone().get("/a").unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "second token waits 100 ms"
        );
    }
}
