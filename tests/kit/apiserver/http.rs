//! The HTTP/1.1 server: the accept loop, one thread per connection (plain or TLS), request
//! parsing with size limits, keep-alive, chunked bodies, replies and chunked framing, query
//! strings, bearer-token authentication and the request log.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown as NetShutdown, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::faults;
use super::resources::Failure;
use super::routes::{handle_resource, route, Route};
use super::watch::serve_watch;
use super::{lock, Inner, RequestRecord, TlsFiles};

pub(super) fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    for stream in listener.incoming() {
        if inner.stopped.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        if inner.unavailable.load(Ordering::SeqCst) {
            let _ = stream.shutdown(NetShutdown::Both);
            continue;
        }
        let id = inner.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            lock(&inner.conns).insert(id, clone);
        }
        let conn_inner = inner.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("fake-apiserver-conn-{id}"))
            .spawn(move || {
                let _ = stream.set_nodelay(true);
                let conn = match &conn_inner.tls {
                    Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
                        Ok(c) => Conn::Tls(Box::new(rustls::StreamOwned::new(c, stream))),
                        Err(_) => return,
                    },
                    None => Conn::Plain(stream),
                };
                serve_connection(&conn_inner, conn);
                lock(&conn_inner.conns).remove(&id);
            });
        if spawned.is_err() {
            lock(&inner.conns).remove(&id);
        }
    }
}

pub(super) enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

pub(super) struct Request {
    pub(super) method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
    raw_len: usize,
    http10: bool,
}

impl Request {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn wants_close(&self) -> bool {
        let c = self.header("connection").map(str::to_ascii_lowercase);
        if self.http10 {
            c.as_deref() != Some("keep-alive")
        } else {
            c.as_deref() == Some("close")
        }
    }
}

enum ReadError {
    /// clean end or broken connection: just close
    Closed,
    /// garbage: answer 400 and close
    Bad(String),
}

const MAX_HEADER_BYTES: usize = 1 << 20;
const MAX_BODY_BYTES: usize = 256 << 20;

fn read_line_limited(
    r: &mut BufReader<Conn>,
    out: &mut Vec<u8>,
    budget: &mut usize,
) -> Result<usize, ReadError> {
    out.clear();
    let n = r
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', out)
        .map_err(|_| ReadError::Closed)?;
    if n > *budget {
        return Err(ReadError::Bad("request header too large".into()));
    }
    *budget -= n;
    Ok(n)
}

fn read_request(r: &mut BufReader<Conn>) -> Result<Request, ReadError> {
    let mut budget = MAX_HEADER_BYTES;
    let mut line = Vec::new();
    // tolerate blank lines between requests
    loop {
        if read_line_limited(r, &mut line, &mut budget)? == 0 {
            return Err(ReadError::Closed);
        }
        if !line.iter().all(|b| b.is_ascii_whitespace()) {
            break;
        }
    }
    let text = String::from_utf8(line.clone())
        .map_err(|_| ReadError::Bad("request line is not UTF-8".into()))?;
    let mut parts = text.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(format!(
            "malformed request line {:?}",
            text.trim()
        )));
    };
    if !version.starts_with("HTTP/1.")
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return Err(ReadError::Bad(format!(
            "malformed request line {:?}",
            text.trim()
        )));
    }
    let http10 = version == "HTTP/1.0";
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.to_string(), String::new()),
    };
    let mut headers = Vec::new();
    loop {
        if read_line_limited(r, &mut line, &mut budget)? == 0 {
            return Err(ReadError::Closed);
        }
        let l = String::from_utf8_lossy(&line);
        let l = l.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            return Err(ReadError::Bad(format!("malformed header line {l:?}")));
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        path,
        query,
        headers,
        body: Vec::new(),
        raw_len: MAX_HEADER_BYTES - budget,
        http10,
    };
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            read_line_limited(r, &mut line, &mut budget)?;
            let l = String::from_utf8_lossy(&line);
            let size_s = l.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_s, 16)
                .map_err(|_| ReadError::Bad("bad chunk size".into()))?;
            if req.body.len() + size > MAX_BODY_BYTES {
                return Err(ReadError::Bad("request body too large".into()));
            }
            if size == 0 {
                // trailers until the blank line
                loop {
                    if read_line_limited(r, &mut line, &mut budget)? == 0 {
                        return Err(ReadError::Closed);
                    }
                    if line == b"\r\n" || line == b"\n" {
                        break;
                    }
                }
                break;
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            r.read_exact(&mut req.body[start..])
                .map_err(|_| ReadError::Closed)?;
            read_line_limited(r, &mut line, &mut budget)?;
            req.raw_len += size;
        }
    } else if let Some(cl) = req.header("content-length") {
        let n: usize = cl
            .trim()
            .parse()
            .map_err(|_| ReadError::Bad("bad Content-Length".into()))?;
        if n > MAX_BODY_BYTES {
            return Err(ReadError::Bad("request body too large".into()));
        }
        req.body = vec![0; n];
        r.read_exact(&mut req.body).map_err(|_| ReadError::Closed)?;
        req.raw_len += n;
    }
    Ok(req)
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

pub(super) struct Reply {
    pub(super) code: u16,
    pub(super) body: Vec<u8>,
    pub(super) content_type: &'static str,
    pub(super) retry_after: Option<u32>,
}

impl Reply {
    pub(super) fn json(code: u16, v: &Value) -> Reply {
        Reply {
            code,
            body: serde_json::to_vec(v).unwrap_or_default(),
            content_type: "application/json",
            retry_after: None,
        }
    }
    pub(super) fn failure(f: &Failure) -> Reply {
        let mut r = Reply::json(f.code, &f.to_json());
        r.retry_after = f.retry_after;
        r
    }
    pub(super) fn text(code: u16, s: &str) -> Reply {
        Reply {
            code,
            body: s.as_bytes().to_vec(),
            content_type: "text/plain; charset=utf-8",
            retry_after: None,
        }
    }
}

fn reply_len(reply: &Reply, close: bool) -> usize {
    reply_head(reply, close).len() + reply.body.len()
}

pub(super) fn write_reply(w: &mut Conn, reply: &Reply, close: bool) -> io::Result<usize> {
    let head = reply_head(reply, close);
    w.write_all(head.as_bytes())?;
    w.write_all(&reply.body)?;
    w.flush()?;
    Ok(head.len() + reply.body.len())
}

fn reply_head(reply: &Reply, close: bool) -> String {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-cache, private\r\n",
        reply.code,
        reason_phrase(reply.code),
        reply.content_type,
        reply.body.len()
    );
    if let Some(s) = reply.retry_after {
        head += &format!("Retry-After: {s}\r\n");
    }
    if close {
        head += "Connection: close\r\n";
    }
    head += "\r\n";
    head
}

fn serve_connection(inner: &Arc<Inner>, conn: Conn) {
    let mut reader = BufReader::with_capacity(64 * 1024, conn);
    loop {
        if inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        let req = match read_request(&mut reader) {
            Ok(r) => r,
            Err(ReadError::Closed) => return,
            Err(ReadError::Bad(msg)) => {
                let _ = write_reply(
                    reader.get_mut(),
                    &Reply::failure(&Failure::bad_request(msg)),
                    true,
                );
                return;
            }
        };
        if inner.unavailable.load(Ordering::SeqCst) || inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        let close = req.wants_close();
        match handle(inner, &req, reader.get_mut()) {
            Ok(Next::KeepAlive) if !close => {}
            _ => return,
        }
    }
}

pub(super) enum Next {
    KeepAlive,
    Close,
}

fn handle(inner: &Arc<Inner>, req: &Request, w: &mut Conn) -> io::Result<Next> {
    let close = req.wants_close();
    let params = Params(query_pairs(&req.query));
    let param = |k: &str| params.get(k);
    let is_watch = matches!(param("watch"), Some("true") | Some("1"));
    let content_type = req.header("content-type").map(str::to_string);
    let body_json = if req.body.is_empty() {
        None
    } else {
        serde_json::from_slice::<Value>(&req.body).ok()
    };
    let rec = RequestRecord {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        content_type: content_type.clone(),
        status: 0,
        request_bytes: req.raw_len,
        response_bytes: 0,
        at: Instant::now(),
        user_agent: req.header("user-agent").map(str::to_string),
        authorization: req.header("authorization").map(str::to_string),
        body: if req.method == "GET" {
            None
        } else {
            body_json.clone()
        },
    };
    let target = if req.query.is_empty() {
        req.path.clone()
    } else {
        format!("{}?{}", req.path, req.query)
    };
    let fault = inner.take_fault(&req.method, &target, is_watch);
    let mut rec = match faults::apply(inner, fault, close, w, rec) {
        ControlFlow::Break(next) => return next,
        ControlFlow::Continue(rec) => rec,
    };
    let required = lock(&inner.token).clone();
    if let Some(token) = &required {
        let ok = req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| t.trim() == token);
        if !ok {
            let f = Failure::new(401, "Unauthorized");
            let n = write_reply(w, &Reply::failure(&f), close);
            rec.status = 401;
            rec.response_bytes = *n.as_ref().unwrap_or(&0);
            inner.record(rec);
            return n.map(|_| Next::KeepAlive);
        }
    }
    let reply = match route(&req.path) {
        Err(reply) => reply,
        Ok(Route::Resource(t)) => {
            if req.method == "GET" && t.name.is_none() && is_watch {
                return serve_watch(inner, &t, &params, w, rec);
            }
            match handle_resource(inner, req, &t, &params, body_json) {
                Ok(r) => r,
                Err(f) => Reply::failure(&f),
            }
        }
    };
    // Logged before the answer goes out, so a test that saw the answer's effect also sees
    // the request in the log (clearing the log after a wait must not leave a straggler).
    rec.status = reply.code;
    rec.response_bytes = reply_len(&reply, close);
    inner.record(rec);
    write_reply(w, &reply, close).map(|_| Next::KeepAlive)
}

pub(super) fn write_chunk(w: &mut Conn, data: &[u8]) -> io::Result<()> {
    w.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

pub(super) fn tls_config(files: &TlsFiles) -> io::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&files.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad("invalid certificate pem", &e))?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no certificate in cert pem",
        ));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&files.key_pem).map_err(|e| bad("invalid key pem", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls protocol versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("tls certificate", &e))?;
    Ok(Arc::new(cfg))
}

/// The last certificate of a PEM chain: the CA when the chain is leaf-first.
pub(super) fn last_pem_cert(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let begin = "-----BEGIN CERTIFICATE-----";
    match text.rfind(begin) {
        Some(i) => {
            let rest = &text[i..];
            let end = "-----END CERTIFICATE-----";
            match rest.find(end) {
                Some(j) => format!("{}\n", &rest[..j + end.len()]).into_bytes(),
                None => pem.to_vec(),
            }
        }
        None => pem.to_vec(),
    }
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) struct Params(Vec<(String, String)>);

impl Params {
    pub(super) fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }
}

pub(super) fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::store::random_u64;
    use super::super::testclient::*;
    use super::super::*;
    use super::*;

    #[test]
    fn keep_alive_chunked_bodies_garbage_and_auth() {
        let s = FakeApiServer::start_with(Options {
            token: Some("t".into()),
            ..Options::default()
        })
        .expect("start");
        let c = TcpStream::connect(s.addr).expect("connect");
        let mut w = c.try_clone().expect("clone");
        let mut r = BufReader::new(c);
        w.write_all(b"GET /api/v1/nodes HTTP/1.1\r\n\r\n")
            .expect("write");
        let (code, _, b) = read_response(&mut r).expect("401");
        assert_eq!(code, 401);
        assert_eq!(
            serde_json::from_slice::<Value>(&b)
                .ok()
                .and_then(|v| v["reason"].as_str().map(String::from))
                .as_deref(),
            Some("Unauthorized")
        );
        let body = br#"{"metadata":{"name":"n1"}}"#;
        let req = format!("POST /api/v1/nodes HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", body.len());
        w.write_all(req.as_bytes()).expect("write");
        w.write_all(body).expect("write");
        w.write_all(b"\r\n0\r\n\r\n").expect("write");
        assert_eq!(read_response(&mut r).map(|x| x.0), Some(201));
        w.write_all(b"GET /api/v1/nodes/n1 HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n")
            .expect("write");
        assert_eq!(read_response(&mut r).map(|x| x.0), Some(200));
        w.write_all(b"\x00\x01garbage\r\n\r\n").expect("write");
        assert_eq!(read_response(&mut r).map(|x| x.0), Some(400));
        let mut k = tempdir_file("kubeconfig");
        s.write_kubeconfig(&k).expect("kubeconfig");
        let text = std::fs::read_to_string(&k).expect("read");
        assert!(
            text.contains(&format!("server: {}", s.url()))
                && text.contains("token: \"t\"")
                && text.contains("current-context: fake")
        );
        let _ = std::fs::remove_file(&mut k);
    }

    fn tempdir_file(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "fake-apiserver-{}-{}-{name}",
            std::process::id(),
            random_u64()
        ))
    }
}
