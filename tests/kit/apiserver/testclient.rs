//! A raw HTTP client for the fake API server's unit tests: one request per connection, and
//! open watch streams read event by event.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use super::FakeApiServer;

type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// One request on its own connection: (status, headers lowercased, body).
pub(super) fn call(
    s: &FakeApiServer,
    method: &str,
    path: &str,
    body: Option<&Value>,
    ct: &str,
) -> Response {
    let mut c = TcpStream::connect(s.addr).expect("connect");
    let data = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nUser-Agent: unit/1\r\n"
    );
    if body.is_some() {
        head += &format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", data.len());
    }
    head += "\r\n";
    c.write_all(head.as_bytes()).expect("write");
    c.write_all(data.as_bytes()).expect("write");
    let mut r = BufReader::new(c);
    read_response(&mut r).expect("a response")
}

pub(super) fn read_response(r: &mut BufReader<TcpStream>) -> Option<Response> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let h = |k: &str| headers.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(n) = h("content-length") {
        body = vec![0; n.parse().ok()?];
        r.read_exact(&mut body).ok()?;
    } else if h("transfer-encoding").is_some() {
        while let Some(c) = read_chunk(r) {
            if c.is_empty() {
                break;
            }
            body.extend(c);
        }
    }
    Some((code, headers, body))
}

fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(line.trim(), 16).ok()?;
    let mut data = vec![0; n];
    r.read_exact(&mut data).ok()?;
    line.clear();
    r.read_line(&mut line).ok()?;
    Some(data)
}

pub(super) fn get_json(s: &FakeApiServer, path: &str) -> (u16, Value) {
    let (c, _, b) = call(s, "GET", path, None, "");
    (c, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

pub(super) fn send(
    s: &FakeApiServer,
    method: &str,
    path: &str,
    body: Value,
    ct: &str,
) -> (u16, Value) {
    let (c, _, b) = call(s, method, path, Some(&body), ct);
    (c, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

pub(super) const JSON: &str = "application/json";
pub(super) const MERGE: &str = "application/merge-patch+json";

pub(super) fn pv(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolume",
           "metadata": {"name": name, "labels": labels},
           "spec": {"csi": {"driver": "d", "volumeHandle": name}}})
}

/// An open watch: events, then None once the server ended the stream.
pub(super) struct WatchConn {
    r: BufReader<TcpStream>,
    pub(super) code: u16,
    pub(super) pending: Vec<u8>,
}

impl WatchConn {
    pub(super) fn open(s: &FakeApiServer, path: &str) -> WatchConn {
        let mut c = TcpStream::connect(s.addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("write");
        let mut r = BufReader::new(c);
        let mut line = String::new();
        r.read_line(&mut line).expect("status line");
        let code = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        loop {
            line.clear();
            r.read_line(&mut line).expect("header");
            if line.trim().is_empty() {
                break;
            }
        }
        WatchConn {
            r,
            code,
            pending: Vec::new(),
        }
    }
    pub(super) fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return serde_json::from_slice(&line).ok();
            }
            let c = read_chunk(&mut self.r)?;
            if c.is_empty() {
                return None;
            }
            self.pending.extend(c);
        }
    }
    pub(super) fn next_typed(&mut self) -> Option<(String, Value)> {
        self.next().map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_string(),
                e["object"].clone(),
            )
        })
    }
}
