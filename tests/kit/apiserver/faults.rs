//! Fault injection: the rules a test installs (`FaultRule`, `Fault`), which request a rule
//! hits, and the answer each fault gives in place of the real one (Status codes, delays,
//! dropped connections, broken bodies, broken watches, hostile throttling and lists).

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use super::http::{write_chunk, write_reply, Conn, Next, Reply};
use super::resources::Failure;
use super::watch::event_line;
use super::{lock, Inner, RequestRecord};

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this code and a proper Status body (429 adds `Retry-After: 1`).
    Status(u16),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Close the connection without an answer.
    DropConnection,
    /// 200 with a body that is not valid JSON.
    MalformedBody,
    /// This code with exactly these bytes as the body (hostile content: invalid UTF-8, deep
    /// nesting, a Status with absurd fields).
    Body(u16, Vec<u8>),
    /// A watch answers 200, sends half an event line and closes (applies to watches only).
    TruncatedWatch,
    /// A watch answers 200, sends an ERROR event carrying a Status with this code, and ends
    /// cleanly, as the real server does when its watch cache fails (applies to watches only).
    WatchError(u16),
    /// A watch answers 200 and ends at once without an event (applies to watches only).
    EmptyWatch,
    /// Hostile (issue #16): a 429 whose `Retry-After` header and Status `retryAfterSeconds`
    /// both say this many seconds.
    Throttle(u64),
    /// Hostile: a watch answers 200 and sends this many bytes of one event line, never a
    /// newline, then closes (applies to watches only).
    EndlessWatchLine(usize),
    /// Hostile: a list answers 200, no items, and the same `continue` token every time
    /// (applies to lists only).
    RepeatContinue,
}

#[derive(Clone, Debug)]
pub struct FaultRule {
    pub method: Option<String>,
    /// Matched against `path?query`.
    pub path_contains: Option<String>,
    /// How many requests it hits; 0 = forever.
    pub times: usize,
    pub fault: Fault,
}

impl FaultRule {
    pub fn new(fault: Fault) -> FaultRule {
        FaultRule {
            method: None,
            path_contains: None,
            times: 0,
            fault,
        }
    }
    pub fn method(mut self, m: &str) -> FaultRule {
        self.method = Some(m.to_string());
        self
    }
    pub fn path(mut self, p: &str) -> FaultRule {
        self.path_contains = Some(p.to_string());
        self
    }
    pub fn times(mut self, n: usize) -> FaultRule {
        self.times = n;
        self
    }
}

fn fault_failure(code: u16) -> Failure {
    let mut f = match code {
        429 => {
            let mut f = Failure::new(429, "Too many requests, please try again later.");
            f.details = Some(json!({"retryAfterSeconds": 1}));
            f.retry_after = Some(1);
            f
        }
        500 => Failure::new(500, "Internal error occurred: injected fault"),
        503 => Failure::new(503, "the server is currently unable to handle the request"),
        504 => Failure::new(
            504,
            "the server was unable to return a response in the time allotted",
        ),
        410 => Failure::expired("too old resource version: injected fault"),
        c => Failure::new(c, format!("injected fault (HTTP {c})")),
    };
    if f.code == 503 {
        f.retry_after = Some(1);
    }
    f
}

impl Inner {
    /// The fault of the first rule that matches the request, counting the rule's `times` down.
    /// Watch-only faults skip other requests and the list-only `RepeatContinue` skips watches,
    /// so one rule can wait for the next request it applies to.
    pub(super) fn take_fault(&self, method: &str, target: &str, is_watch: bool) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let idx = faults.iter().position(|r| {
            r.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && r.path_contains
                    .as_deref()
                    .is_none_or(|p| target.contains(p))
                && (!matches!(
                    r.fault,
                    Fault::TruncatedWatch
                        | Fault::WatchError(_)
                        | Fault::EmptyWatch
                        | Fault::EndlessWatchLine(_)
                ) || is_watch)
                && (!matches!(r.fault, Fault::RepeatContinue) || !is_watch)
        })?;
        let fault = faults[idx].fault.clone();
        if faults[idx].times > 0 {
            faults[idx].times -= 1;
            if faults[idx].times == 0 {
                faults.remove(idx);
            }
        }
        Some(fault)
    }
}

/// Answers a request the way the fault `take_fault` picked for it says: `Break` when the
/// fault answered (or dropped) the request, which is then logged; `Continue` with the record
/// when the request goes on to the normal handling (no fault, or after a `Delay`).
pub(super) fn apply(
    inner: &Inner,
    fault: Option<Fault>,
    close: bool,
    w: &mut Conn,
    mut rec: RequestRecord,
) -> ControlFlow<io::Result<Next>, RequestRecord> {
    match fault {
        Some(Fault::DropConnection) => {
            inner.record(rec);
            return ControlFlow::Break(Ok(Next::Close));
        }
        Some(Fault::Status(code)) => {
            let reply = Reply::failure(&fault_failure(code));
            let n = write_reply(w, &reply, close);
            rec.status = code;
            rec.response_bytes = *n.as_ref().unwrap_or(&0);
            inner.record(rec);
            return ControlFlow::Break(n.map(|_| Next::KeepAlive));
        }
        Some(fault @ (Fault::MalformedBody | Fault::Body(..))) => {
            let (code, body) = match fault {
                Fault::Body(code, b) => (code, b),
                _ => (200, b"{\"kind\": \"Status\", \"apiVersion\": ".to_vec()),
            };
            let reply = Reply {
                code,
                body,
                content_type: "application/json",
                retry_after: None,
            };
            let n = write_reply(w, &reply, close);
            rec.status = 200;
            rec.response_bytes = *n.as_ref().unwrap_or(&0);
            inner.record(rec);
            return ControlFlow::Break(n.map(|_| Next::KeepAlive));
        }
        Some(Fault::Delay(d))
            if inner.stop_rx.recv_timeout(d).is_err() && inner.stopped.load(Ordering::SeqCst) =>
        {
            return ControlFlow::Break(Ok(Next::Close));
        }
        Some(Fault::TruncatedWatch) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            let half = b"{\"type\":\"ADDED\",\"object\":{\"kind\":";
            let _ = w.write_all(head.as_bytes());
            let _ = write_chunk(w, half);
            rec.status = 200;
            rec.response_bytes = head.len() + half.len();
            inner.record(rec);
            return ControlFlow::Break(Ok(Next::Close));
        }
        Some(Fault::WatchError(code)) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            let line = event_line("ERROR", &fault_failure(code).to_json());
            let n = w
                .write_all(head.as_bytes())
                .and_then(|_| write_chunk(w, &line))
                .and_then(|_| write_chunk(w, b""));
            rec.status = 200;
            rec.response_bytes = head.len() + line.len();
            inner.record(rec);
            return ControlFlow::Break(n.map(|_| Next::KeepAlive));
        }
        Some(Fault::EmptyWatch) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            let n = w
                .write_all(head.as_bytes())
                .and_then(|_| write_chunk(w, b""));
            rec.status = 200;
            rec.response_bytes = head.len();
            inner.record(rec);
            return ControlFlow::Break(n.map(|_| Next::KeepAlive));
        }
        Some(Fault::Throttle(secs)) => {
            let body = format!(
                r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"throttled","reason":"TooManyRequests","details":{{"retryAfterSeconds":{secs}}},"code":429}}"#
            );
            let head = format!(
                "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: {secs}\r\n\r\n",
                body.len()
            );
            let n = w
                .write_all(head.as_bytes())
                .and_then(|_| w.write_all(body.as_bytes()))
                .and_then(|_| w.flush());
            rec.status = 429;
            rec.response_bytes = head.len() + body.len();
            inner.record(rec);
            return ControlFlow::Break(n.map(|_| Next::KeepAlive));
        }
        Some(Fault::EndlessWatchLine(len)) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            let start = br#"{"type":"ADDED","object":{"kind":"PersistentVolume","pad":""#;
            let mut sent = head.len();
            let mut n = w
                .write_all(head.as_bytes())
                .and_then(|_| write_chunk(w, start));
            let block = vec![b'x'; 1 << 20];
            let mut left = len.saturating_sub(start.len());
            while n.is_ok() && left > 0 {
                let k = left.min(block.len());
                n = write_chunk(w, &block[..k]);
                left -= k;
                sent += k;
            }
            rec.status = 200;
            rec.response_bytes = sent;
            inner.record(rec);
            return ControlFlow::Break(Ok(Next::Close));
        }
        Some(Fault::RepeatContinue) => {
            let reply = Reply::json(
                200,
                &json!({"kind": "List", "apiVersion": "v1",
                        "metadata": {"resourceVersion": "1", "continue": "same-token"},
                        "items": []}),
            );
            let n = write_reply(w, &reply, close);
            rec.status = 200;
            rec.response_bytes = *n.as_ref().unwrap_or(&0);
            inner.record(rec);
            return ControlFlow::Break(n.map(|_| Next::KeepAlive));
        }
        Some(Fault::Delay(_)) | None => {}
    }
    ControlFlow::Continue(rec)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::super::testclient::*;
    use super::super::*;
    use super::*;

    #[test]
    fn injected_faults() {
        let s = FakeApiServer::start();
        s.inject(
            FaultRule::new(Fault::Status(500))
                .method("GET")
                .path("persistentvolumes")
                .times(1),
        );
        assert_eq!(
            get_json(&s, "/api/v1/persistentvolumes").1["reason"],
            "InternalError"
        );
        assert_eq!(get_json(&s, "/api/v1/persistentvolumes").0, 200);
        s.inject(FaultRule::new(Fault::Status(429)).times(1));
        let (c, h, _) = call(&s, "GET", "/api/v1/nodes", None, "");
        assert_eq!(c, 429);
        assert!(h.contains(&("retry-after".into(), "1".into())));
        s.inject(FaultRule::new(Fault::MalformedBody).times(1));
        let (c, _, b) = call(&s, "GET", "/api/v1/nodes", None, "");
        assert!(c == 200 && serde_json::from_slice::<Value>(&b).is_err());
        s.inject(FaultRule::new(Fault::DropConnection).times(1));
        let mut conn = TcpStream::connect(s.addr).expect("connect");
        conn.write_all(b"GET /api/v1/nodes HTTP/1.1\r\n\r\n")
            .expect("write");
        let mut buf = Vec::new();
        assert_eq!(conn.read_to_end(&mut buf).ok(), Some(0));
        s.inject(FaultRule::new(Fault::Delay(Duration::from_millis(300))).times(1));
        let t = Instant::now();
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 200);
        assert!(t.elapsed() >= Duration::from_millis(300));
        // a TruncatedWatch rule leaves plain GETs alone and cuts the next watch
        s.inject(FaultRule::new(Fault::TruncatedWatch).times(1));
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 200);
        let mut w = WatchConn::open(&s, "/api/v1/nodes?watch=1");
        assert!(w.next().is_none() && !w.pending.is_empty());
        // so does a WatchError rule, which ends the watch with one ERROR event
        s.inject(FaultRule::new(Fault::WatchError(500)).times(1));
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 200);
        let mut w = WatchConn::open(&s, "/api/v1/nodes?watch=1");
        let (t, o) = w.next_typed().expect("error event");
        assert_eq!((t.as_str(), &o["code"]), ("ERROR", &json!(500)));
        assert!(w.next().is_none());
        s.inject(FaultRule::new(Fault::EmptyWatch).times(1));
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 200);
        let mut w = WatchConn::open(&s, "/api/v1/nodes?watch=1");
        assert!(w.next().is_none() && w.pending.is_empty());
        s.inject(FaultRule::new(Fault::Status(503)));
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 503);
        s.clear_faults();
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 200);
        let recs = s.requests();
        assert!(recs.iter().any(|r| r.status == 0));
        assert!(recs.iter().any(|r| r.is_watch() && r.status == 200));
        s.clear_requests();
        assert!(s.requests().is_empty());
    }

    #[test]
    fn unavailable_server_closes_connections() {
        let s = FakeApiServer::start();
        s.set_unavailable(true);
        let mut conn = TcpStream::connect(s.addr).expect("connect");
        let _ = conn.write_all(b"GET /api/v1/nodes HTTP/1.1\r\n\r\n");
        let mut buf = Vec::new();
        assert!(conn.read_to_end(&mut buf).map(|n| n == 0).unwrap_or(true));
        s.set_unavailable(false);
        assert_eq!(get_json(&s, "/api/v1/nodes").0, 200);
    }
}
