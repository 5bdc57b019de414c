//! The plain-HTTP endpoint (upstream §10, DESIGN §2.7, §3.3): metrics at `--metrics-path`,
//! `/healthz/leader-election` whenever leader election is on, `/healthz` and `/readyz`.
//!
//! A minimal HTTP/1.1 server on std: one accepting thread (`http-server`) blocked in `accept`
//! (it costs nothing while nobody scrapes), a thread (`http-stop`) that sleeps until shutdown
//! and then wakes the acceptor with a connection of its own, and one short-lived thread per
//! connection
//! whose whole request read runs under one deadline, so a slow client holds only its own thread.
//! Every response closes the connection.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::config::HttpConfig;
use crate::leader::LeaderStatus;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

pub const LEADER_HEALTHZ_PATH: &str = "/healthz/leader-election";
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// After a failed accept (EMFILE and friends), wait this long before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long the stop thread tries to reach the acceptor.
const WAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole request head must arrive within this time.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reads wake up this often to notice shutdown.
const READ_SLICE: Duration = Duration::from_millis(100);
const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once; more are answered 503 straight away.
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug)]
pub enum Error {
    /// The listen address is not `host:port` or `:port`, or does not resolve.
    Address { address: String, message: String },
    /// Nothing could be bound (port in use, permission denied, address not local).
    Bind { address: String, message: String },
    /// The server thread could not be started.
    Spawn { message: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Address { address, message } => {
                write!(f, "invalid listen address {address:?}: {message}")
            }
            Error::Bind { address, message } => write!(f, "cannot listen on {address}: {message}"),
            Error::Spawn { message } => write!(f, "cannot start the http-server thread: {message}"),
        }
    }
}

impl std::error::Error for Error {}

/// What the health endpoints report.
pub struct Health {
    /// With leader election: its state and the lease duration (for the +20 s rule).
    pub leader: Option<(Arc<LeaderStatus>, Duration)>,
    /// Set by main once the CSI driver is connected and the caches are synced (the leader's
    /// readiness; a follower is ready while it stands by).
    pub ready: Arc<AtomicBool>,
}

pub struct HttpServer {
    addr: SocketAddr,
    thread: JoinHandle<()>,
    /// Wakes the acceptor at shutdown; returns whether it could.
    stopper: JoinHandle<bool>,
}

impl HttpServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the server thread, which ends after shutdown is triggered.
    pub fn join(self) {
        let woke = match self.stopper.join() {
            Ok(w) => w,
            Err(p) => std::panic::resume_unwind(p),
        };
        if !woke {
            // Joining would wait for a connection that may never come; the thread holds
            // nothing that must be flushed.
            log::warn!(
                "Could not wake the HTTP server on {} for shutdown; leaving it",
                self.addr
            );
            return;
        }
        if let Err(p) = self.thread.join() {
            std::panic::resume_unwind(p);
        }
    }
}

/// The addresses to try, in order. `:port` (Go's "all interfaces") is the IPv6 wildcard, which
/// on a dual-stack host takes IPv4 too, then the IPv4 wildcard for hosts without IPv6.
pub fn listen_addresses(address: &str) -> Result<Vec<SocketAddr>, Error> {
    let bad = |message: &str| Error::Address {
        address: address.to_string(),
        message: message.to_string(),
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("missing port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 0 to 65535"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Ok(vec![
            SocketAddr::from(([0u16; 8], port)),
            SocketAddr::from(([0u8; 4], port)),
        ]);
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(&e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("the host name resolves to no address"));
    }
    Ok(addrs)
}

fn bind(address: &str) -> Result<TcpListener, Error> {
    let mut last = None;
    for a in listen_addresses(address)? {
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    let message = last.map_or_else(|| "no address to bind".to_string(), |e| e.to_string());
    Err(Error::Bind {
        address: address.to_string(),
        message,
    })
}

/// Binds `cfg.address` and serves on thread `http-server` until `shutdown` triggers.
pub fn serve(
    cfg: &HttpConfig,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: Shutdown,
) -> Result<HttpServer, Error> {
    let listener = bind(&cfg.address)?;
    let bind_err = |e: io::Error| Error::Bind {
        address: cfg.address.clone(),
        message: e.to_string(),
    };
    let addr = listener.local_addr().map_err(bind_err)?;
    let routes = Arc::new(Routes {
        metrics_path: cfg.metrics_path.clone(),
        metrics,
        health,
    });
    let spawn_err = |e: io::Error| Error::Spawn {
        message: e.to_string(),
    };
    let stop = shutdown.clone();
    let thread = std::thread::Builder::new()
        .name("http-server".into())
        .spawn(move || accept_loop(listener, routes, stop))
        .map_err(spawn_err)?;
    let stopper = std::thread::Builder::new()
        .name("http-stop".into())
        .spawn(move || {
            // Disconnected (Err) exactly when shutdown is triggered.
            let _ = shutdown.receiver().recv();
            wake(addr)
        })
        .map_err(spawn_err)?;
    Ok(HttpServer {
        addr,
        thread,
        stopper,
    })
}

/// Connect to the listener so its blocked `accept` returns and sees the shutdown. A wildcard
/// address is reached through the loopback address of its family, then the other one.
fn wake(addr: SocketAddr) -> bool {
    let port = addr.port();
    let candidates: Vec<SocketAddr> = if addr.ip().is_unspecified() {
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
        let v4 = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        if addr.is_ipv6() {
            vec![v6, v4]
        } else {
            vec![v4, v6]
        }
    } else {
        vec![addr]
    };
    candidates
        .iter()
        .any(|a| TcpStream::connect_timeout(a, WAKE_TIMEOUT).is_ok())
}

fn accept_loop(listener: TcpListener, routes: Arc<Routes>, shutdown: Shutdown) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    loop {
        // Blocks until a client (or, at shutdown, the stop thread) connects: no polling.
        let accepted = listener.accept();
        if shutdown.is_triggered() {
            break;
        }
        handlers.retain(|h| !h.is_finished());
        match accepted {
            Ok((stream, _)) => {
                if let Some(h) = dispatch(stream, &routes, &active, &shutdown) {
                    handlers.push(h);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!(err:% = e; "Failed to accept an HTTP connection");
                shutdown.wait_timeout(ACCEPT_BACKOFF);
            }
        }
    }
    // Handlers still reading stop within a read slice; one still writing, within the write
    // timeout.
    for h in handlers {
        let _ = h.join();
    }
}

fn dispatch(
    stream: TcpStream,
    routes: &Arc<Routes>,
    active: &Arc<AtomicUsize>,
    shutdown: &Shutdown,
) -> Option<JoinHandle<()>> {
    // Accepted sockets inherit non-blocking mode on some platforms.
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return None;
    }
    if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        active.fetch_sub(1, Ordering::SeqCst);
        let mut stream = stream;
        let _ = write_response(
            &mut stream,
            &Response::text(503, "too many connections\n"),
            false,
        );
        return None;
    }
    let (routes, active2, shutdown) = (routes.clone(), active.clone(), shutdown.clone());
    let spawned = std::thread::Builder::new()
        .name("http-conn".into())
        .spawn(move || {
            handle_connection(stream, &routes, &shutdown);
            active2.fetch_sub(1, Ordering::SeqCst);
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            active.fetch_sub(1, Ordering::SeqCst);
            log::warn!(err:% = e; "Failed to start an HTTP connection thread");
            None
        }
    }
}

struct Routes {
    metrics_path: String,
    metrics: Arc<Metrics>,
    health: Health,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: TEXT_CONTENT_TYPE,
            body: body.to_string(),
        }
    }
}

impl Routes {
    /// The response for a request path (query string already removed).
    fn route(&self, path: &str, now: Instant) -> Response {
        if path == self.metrics_path {
            return Response {
                status: 200,
                content_type: METRICS_CONTENT_TYPE,
                body: self.metrics.encode(),
            };
        }
        match path {
            LEADER_HEALTHZ_PATH => match &self.health.leader {
                Some((status, lease_duration)) => match status.healthz(now, *lease_duration) {
                    Ok(()) => Response::text(200, "ok"),
                    // Go's http.Error: the message plus a newline.
                    Err(e) => Response::text(500, &format!("internal server error: {e}\n")),
                },
                None => not_found(),
            },
            HEALTHZ_PATH => Response::text(200, "ok"),
            READYZ_PATH => {
                // A follower has connected to the driver and stands by: ready. Holding it back
                // until it leads would stall every rolling update that waits for readiness.
                let standing_by = self
                    .health
                    .leader
                    .as_ref()
                    .is_some_and(|(status, _)| !status.is_leader());
                if standing_by || self.health.ready.load(Ordering::SeqCst) {
                    Response::text(200, "ok")
                } else {
                    Response::text(503, "not ready\n")
                }
            }
            _ => not_found(),
        }
    }
}

fn not_found() -> Response {
    // Go's http.NotFound body.
    Response::text(404, "404 page not found\n")
}

/// A parsed request line: method and the path without its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    pub method: String,
    pub path: String,
}

/// Parses the head of a request (everything up to the blank line).
pub fn parse_request_head(head: &[u8]) -> Option<RequestLine> {
    let text = std::str::from_utf8(head).ok()?;
    let line = text.split("\r\n").next()?.trim_end_matches('\n');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return None;
    }
    Some(RequestLine {
        method: method.to_string(),
        path: path.to_string(),
    })
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Why no request head could be read.
enum HeadError {
    /// The client went away or we are shutting down: nothing to answer.
    Closed,
    TimedOut,
    TooLarge,
}

/// Reads the request head under one overall deadline.
fn read_head(stream: &mut TcpStream, shutdown: &Shutdown) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = find_head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        if shutdown.is_triggered() {
            return Err(HeadError::Closed);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left.min(READ_SLICE))).is_err() {
            return Err(HeadError::TimedOut);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // One slice without data: look at the deadline and the shutdown signal again.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

fn handle_connection(mut stream: TcpStream, routes: &Routes, shutdown: &Shutdown) {
    let (response, head_only) = match read_head(&mut stream, shutdown) {
        Ok(head) => match parse_request_head(&head) {
            Some(req) => (
                routes.route(&req.path, Instant::now()),
                req.method == "HEAD",
            ),
            None => (Response::text(400, "400 Bad Request\n"), false),
        },
        Err(HeadError::Closed) => return,
        Err(HeadError::TimedOut) => (Response::text(408, "408 Request Timeout\n"), false),
        Err(HeadError::TooLarge) => (
            Response::text(431, "431 Request Header Fields Too Large\n"),
            false,
        ),
    };
    let _ = write_response(&mut stream, &response, head_only);
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn write_response(stream: &mut impl Write, r: &Response, head_only: bool) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nX-Content-Type-Options: nosniff\r\nDate: {}\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        http_date(SystemTime::now()),
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(r.body.as_bytes())?;
    }
    Ok(())
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) for the `Date` header.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let iso = crate::timeutil::rfc3339(t);
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let weekday = DAYS[(secs / 86_400 % 7) as usize];
    // rfc3339 is `YYYY-MM-DDTHH:MM:SSZ`.
    let (date, time) = iso
        .trim_end_matches('Z')
        .split_once('T')
        .unwrap_or(("1970-01-01", "00:00:00"));
    let mut d = date.splitn(3, '-');
    let (y, m, day) = (
        d.next().unwrap_or("1970"),
        d.next().unwrap_or("01"),
        d.next().unwrap_or("01"),
    );
    let month = m
        .parse::<usize>()
        .ok()
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .unwrap_or(&"Jan");
    format!("{weekday}, {day} {month} {y} {time} GMT")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::VolumeStatus;

    fn cfg(address: &str) -> HttpConfig {
        HttpConfig {
            address: address.into(),
            metrics_path: "/metrics".into(),
            deprecated_metrics_address: false,
        }
    }

    struct Running {
        server: Option<HttpServer>,
        shutdown: Shutdown,
        ready: Arc<AtomicBool>,
        leader: Arc<LeaderStatus>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.shutdown.trigger();
        }
    }

    fn start(with_leader: bool) -> Running {
        let metrics = Arc::new(Metrics::with_start_time(42.0));
        metrics.set_driver_name("d");
        metrics.observe_csi_call("/csi.v1.Identity/Probe", "OK", 0.2);
        metrics.label_volumes(Box::new(|_| Some(("ns".into(), "pvc".into()))));
        metrics.set_volume_status(&Arc::from("pv"), VolumeStatus::Abnormal);
        let ready = Arc::new(AtomicBool::new(false));
        let leader = Arc::new(LeaderStatus::new());
        let health = Health {
            leader: with_leader.then(|| (leader.clone(), Duration::from_secs(15))),
            ready: ready.clone(),
        };
        let shutdown = Shutdown::new();
        let server = serve(&cfg("127.0.0.1:0"), metrics, health, shutdown.clone()).unwrap();
        Running {
            server: Some(server),
            shutdown,
            ready,
            leader,
        }
    }

    /// Status line, headers (lowercased names), body.
    fn fetch_raw(addr: SocketAddr, request: &str) -> (String, Vec<(String, String)>, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_string();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        (status, headers, body.to_string())
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let (status, headers, body) =
            fetch_raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        let code = status.split(' ').nth(1).unwrap().parse().unwrap();
        let ct = headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        (code, ct, body)
    }

    #[test]
    fn serves_every_route() {
        let r = start(true);
        let addr = r.server.as_ref().unwrap().local_addr();
        let (code, ct, body) = get(addr, "/metrics");
        assert_eq!((code, ct.as_str()), (200, METRICS_CONTENT_TYPE));
        assert!(body.contains("process_start_time_seconds 42\n"), "{body}");
        assert!(body.contains("csi_sidecar_operations_seconds_count{driver_name=\"d\""));
        assert!(body.contains("status=\"abnormal\"} 1\n"));
        assert_eq!(get(addr, "/metrics?x=1").0, 200);
        assert_eq!(
            get(addr, "/healthz"),
            (200, TEXT_CONTENT_TYPE.into(), "ok".into())
        );
        // A leader is ready once its caches are synced.
        r.leader.mark_leading(Instant::now());
        assert_eq!(get(addr, "/readyz").0, 503);
        r.ready.store(true, Ordering::SeqCst);
        assert_eq!(
            get(addr, "/readyz"),
            (200, TEXT_CONTENT_TYPE.into(), "ok".into())
        );
        assert_eq!(
            get(addr, "/nope"),
            (404, TEXT_CONTENT_TYPE.into(), "404 page not found\n".into())
        );
        assert_eq!(get(addr, "/metrics/").0, 404);
        assert_eq!(
            get(addr, LEADER_HEALTHZ_PATH),
            (200, TEXT_CONTENT_TYPE.into(), "ok".into())
        );
    }

    #[test]
    fn leader_healthz_fails_when_renewals_stop() {
        let r = start(true);
        let addr = r.server.as_ref().unwrap().local_addr();
        // Leading, with the last renewal 36 s ago: beyond 15 s + 20 s.
        // The monotonic clock starts at boot; tests run minutes after it (the build alone takes
        // longer), so this cannot pass by skipping.
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(36))
            .expect("the monotonic clock is older than 36 s");
        r.leader.mark_leading(long_ago);
        assert_eq!(
            get(addr, LEADER_HEALTHZ_PATH),
            (
                500,
                TEXT_CONTENT_TYPE.into(),
                "internal server error: failed election to renew leadership on lease \n".into()
            )
        );
        r.leader.mark_renewed(Instant::now());
        assert_eq!(get(addr, LEADER_HEALTHZ_PATH).0, 200);
    }

    #[test]
    fn readiness_of_followers_and_of_a_single_instance() {
        let follower = start(true);
        let addr = follower.server.as_ref().unwrap().local_addr();
        assert_eq!(get(addr, "/readyz").0, 200, "a follower stands by");
        let single = start(false);
        let addr = single.server.as_ref().unwrap().local_addr();
        assert_eq!(get(addr, "/readyz").0, 503);
        single.ready.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/readyz").0, 200);
    }

    #[test]
    fn leader_healthz_absent_without_leader_election() {
        let r = start(false);
        let addr = r.server.as_ref().unwrap().local_addr();
        assert_eq!(get(addr, LEADER_HEALTHZ_PATH).0, 404);
        assert_eq!(get(addr, "/healthz").0, 200);
    }

    #[test]
    fn head_has_no_body_and_garbage_is_400() {
        let r = start(false);
        let addr = r.server.as_ref().unwrap().local_addr();
        let (status, headers, body) = fetch_raw(addr, "HEAD /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains(&("content-length".into(), "2".into())));
        assert_eq!(body, "");
        let (status, _, _) = fetch_raw(addr, "NONSENSE\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 400 Bad Request");
    }

    #[test]
    fn a_silent_client_does_not_block_others() {
        let r = start(false);
        let addr = r.server.as_ref().unwrap().local_addr();
        let _silent = TcpStream::connect(addr).unwrap();
        let mut partial = TcpStream::connect(addr).unwrap();
        partial.write_all(b"GET /hea").unwrap();
        let t = Instant::now();
        assert_eq!(get(addr, "/healthz").0, 200);
        assert!(t.elapsed() < REQUEST_DEADLINE);
    }

    #[test]
    fn busy_port_names_the_address() {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = holder.local_addr().unwrap().to_string();
        let health = Health {
            leader: None,
            ready: Arc::new(AtomicBool::new(true)),
        };
        let err = serve(
            &cfg(&address),
            Arc::new(Metrics::with_start_time(0.0)),
            health,
            Shutdown::new(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, Error::Bind { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on {address}: ")),
            "{err}"
        );
    }

    #[test]
    fn shutdown_stops_promptly() {
        let mut r = start(false);
        let server = r.server.take().unwrap();
        let addr = server.local_addr();
        assert_eq!(get(addr, "/healthz").0, 200);
        // A client that never sends its request must not hold the shutdown up.
        let silent = TcpStream::connect(addr).unwrap();
        assert_eq!(
            get(addr, "/healthz").0,
            200,
            "the silent client's connection was accepted"
        );
        let t = Instant::now();
        r.shutdown.trigger();
        server.join();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(
            TcpStream::connect(addr).is_err(),
            "the listener is closed after join"
        );
        drop(silent);
    }

    #[test]
    fn listen_address_forms() {
        let v6_any = SocketAddr::from(([0u16; 8], 8080));
        let v4_any = SocketAddr::from(([0u8; 4], 8080));
        assert_eq!(listen_addresses(":8080").unwrap(), [v6_any, v4_any]);
        assert_eq!(listen_addresses("0.0.0.0:8080").unwrap(), [v4_any]);
        assert_eq!(listen_addresses("[::]:8080").unwrap(), [v6_any]);
        assert_eq!(
            listen_addresses("127.0.0.1:0").unwrap(),
            [SocketAddr::from(([127, 0, 0, 1], 0))]
        );
        assert!(!listen_addresses("localhost:9").unwrap().is_empty());
        for bad in ["8080", "host:", ":99999", ":http", ""] {
            let e = listen_addresses(bad).unwrap_err();
            assert!(matches!(e, Error::Address { .. }), "{bad}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn any_interface_binds() {
        let health = Health {
            leader: None,
            ready: Arc::new(AtomicBool::new(true)),
        };
        let shutdown = Shutdown::new();
        let s = serve(
            &cfg(":0"),
            Arc::new(Metrics::with_start_time(0.0)),
            health,
            shutdown.clone(),
        )
        .unwrap();
        let port = s.local_addr().port();
        assert!(s.local_addr().ip().is_unspecified());
        assert_eq!(
            get(SocketAddr::from(([127, 0, 0, 1], port)), "/healthz").0,
            200
        );
        shutdown.trigger();
        s.join();
    }

    #[test]
    fn request_line_parsing() {
        let ok = |m: &str, p: &str| {
            Some(RequestLine {
                method: m.into(),
                path: p.into(),
            })
        };
        assert_eq!(
            parse_request_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            ok("GET", "/metrics")
        );
        assert_eq!(
            parse_request_head(b"HEAD /a?b=c HTTP/1.0\r\n\r\n"),
            ok("HEAD", "/a")
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET  /x HTTP/1.1\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET /x SPDY\r\n\r\n",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_request_head(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn date_header_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            http_date(SystemTime::UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }
}
