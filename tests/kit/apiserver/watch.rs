//! Watches: a subscription per stream, the initial ADDED events or the replay from a
//! resourceVersion (410 ERROR event when it is compacted), chunked event lines, filtered
//! watches as the watch cache sends them, bookmarks (on an interval and 2 s before the
//! deadline) and the end of a stream at its timeout, on close or on shutdown.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};

use super::http::{write_chunk, write_reply, Conn, Next, Params, Reply};
use super::resources::{Failure, ResDef};
use super::routes::Target;
use super::selectors::Filter;
use super::store::{set_meta, Change, EventType, Obj, Store};
use super::{lock, Inner, RequestRecord};

/// What a watch stream receives: a change, or the order to end cleanly.
pub(super) enum WatchMsg {
    Change(Arc<Change>),
    Close,
}

/// One open watch stream, by resource and namespace; the store sends it each change it records.
pub(super) struct Sub {
    id: u64,
    pub(super) res: &'static str,
    pub(super) ns: Option<String>,
    pub(super) tx: Sender<WatchMsg>,
}

/// What a new watch starts from, taken under the store lock with its subscription.
pub(super) struct WatchStart {
    rx: Receiver<WatchMsg>,
    sub: u64,
    rv: u64,
    /// ADDED events for existing objects (watch from "now")
    initial: Vec<Arc<Obj>>,
    replay: Vec<Arc<Change>>,
}

// Subscriptions live in the store so that a change reaches its watchers under the lock that
// gave it its resourceVersion: nothing falls between a watch's replay and its live stream.
impl Store {
    pub(super) fn watch(
        &mut self,
        def: &'static ResDef,
        ns: Option<&str>,
        from: Option<u64>,
        filter: &Filter,
    ) -> Result<WatchStart, u64> {
        let mut initial = Vec::new();
        let mut replay = Vec::new();
        match from {
            None => initial = self.filtered(def, ns, filter),
            Some(rv) if rv < self.floor => return Err(self.floor + 1),
            Some(rv) => {
                replay = self
                    .history
                    .iter()
                    .filter(|c| c.rv > rv && c.res == def.plural && ns.is_none_or(|n| n == c.ns))
                    .cloned()
                    .collect();
            }
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let id = self.next_sub;
        self.next_sub += 1;
        self.subs.push(Sub {
            id,
            res: def.plural,
            ns: ns.map(str::to_string),
            tx,
        });
        Ok(WatchStart {
            rx,
            sub: id,
            rv: self.rv,
            initial,
            replay,
        })
    }

    fn unsubscribe(&mut self, id: u64) {
        self.subs.retain(|s| s.id != id);
    }

    pub(super) fn close_watches(&mut self) {
        for s in self.subs.drain(..) {
            let _ = s.tx.send(WatchMsg::Close);
        }
    }
}

pub(super) fn event_line(ty: &str, obj: &Value) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(b"{\"type\":\"");
    v.extend_from_slice(ty.as_bytes());
    v.extend_from_slice(b"\",\"object\":");
    let _ = serde_json::to_writer(&mut v, obj);
    v.extend_from_slice(b"}\n");
    v
}

pub(super) fn serve_watch(
    inner: &Arc<Inner>,
    t: &Target,
    params: &Params,
    w: &mut Conn,
    mut rec: RequestRecord,
) -> io::Result<Next> {
    let param = |k: &str| params.get(k);
    let def = t.def;
    let setup = (|| -> Result<(Filter, Option<u64>, Option<Duration>, bool), Failure> {
        let filter = Filter::parse(def, param("labelSelector"), param("fieldSelector"))?;
        let from = match param("resourceVersion") {
            None | Some("") | Some("0") => None,
            Some(s) => Some(
                s.parse::<u64>()
                    .map_err(|_| Failure::bad_request(format!("invalid resource version {s:?}")))?,
            ),
        };
        let timeout = match param("timeoutSeconds") {
            None | Some("") => None,
            Some(s) => Some(Duration::from_secs(s.parse::<u64>().map_err(|_| {
                Failure::bad_request(format!("invalid timeoutSeconds {s:?}"))
            })?)),
        };
        let bookmarks = matches!(param("allowWatchBookmarks"), Some("true") | Some("1"));
        Ok((filter, from, timeout, bookmarks))
    })();
    let (filter, from, timeout, bookmarks) = match setup {
        Ok(s) => s,
        Err(f) => {
            let reply = Reply::failure(&f);
            let n = write_reply(w, &reply, false);
            rec.status = reply.code;
            rec.response_bytes = *n.as_ref().unwrap_or(&0);
            inner.record(rec);
            return n.map(|_| Next::KeepAlive);
        }
    };
    let started = Instant::now();
    let start = inner.store().watch(def, t.ns.as_deref(), from, &filter);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, private\r\nTransfer-Encoding: chunked\r\n\r\n";
    rec.status = 200;
    rec.response_bytes = head.len();
    inner.record(rec);
    let start = match start {
        Ok(s) => s,
        Err(oldest) => {
            let f = Failure::expired(format!(
                "too old resource version: {} ({oldest})",
                from.unwrap_or(0)
            ));
            w.write_all(head.as_bytes())?;
            write_chunk(w, &event_line("ERROR", &f.to_json()))?;
            write_chunk(w, b"")?;
            return Ok(Next::KeepAlive);
        }
    };
    let sub = start.sub;
    let result = watch_stream(
        inner, def, &filter, start, head, w, started, timeout, bookmarks,
    );
    inner.store().unsubscribe(sub);
    result
}

#[allow(clippy::too_many_arguments)]
fn watch_stream(
    inner: &Arc<Inner>,
    def: &'static ResDef,
    filter: &Filter,
    start: WatchStart,
    head: &str,
    w: &mut Conn,
    started: Instant,
    timeout: Option<Duration>,
    bookmarks: bool,
) -> io::Result<Next> {
    w.write_all(head.as_bytes())?;
    w.flush()?;
    let mut last_rv = start.rv;
    for o in &start.initial {
        write_chunk(w, &event_line("ADDED", o))?;
    }
    for c in &start.replay {
        send_change(w, filter, c)?;
    }
    let deadline = timeout.map(|t| started + t);
    // the real server sends one bookmark 2 s before the deadline
    let mut deadline_bookmark = match (bookmarks, deadline, timeout) {
        (true, Some(d), Some(t)) if t > Duration::from_secs(2) => Some(d - Duration::from_secs(2)),
        _ => None,
    };
    let interval = if bookmarks {
        inner.bookmark_interval
    } else {
        None
    };
    let mut next_interval = interval.map(|i| started + i);
    loop {
        let mut wake = deadline;
        for t in [deadline_bookmark, next_interval].into_iter().flatten() {
            wake = Some(wake.map_or(t, |w| w.min(t)));
        }
        let wait = wake.map(|t| t.saturating_duration_since(Instant::now()));
        let msg = match wait {
            Some(d) => crossbeam_channel::select! {
                recv(start.rx) -> m => Some(m),
                recv(inner.stop_rx) -> _ => return Ok(Next::Close),
                default(d) => None,
            },
            None => crossbeam_channel::select! {
                recv(start.rx) -> m => Some(m),
                recv(inner.stop_rx) -> _ => return Ok(Next::Close),
            },
        };
        match msg {
            Some(Ok(WatchMsg::Change(c))) => {
                last_rv = last_rv.max(c.rv);
                send_change(w, filter, &c)?;
            }
            Some(Ok(WatchMsg::Close)) | Some(Err(_)) => {
                write_chunk(w, b"")?;
                return Ok(Next::KeepAlive);
            }
            None => {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    write_chunk(w, b"")?;
                    return Ok(Next::KeepAlive);
                }
                let due_deadline = deadline_bookmark.is_some_and(|t| now >= t);
                let due_interval = next_interval.is_some_and(|t| now >= t);
                if due_deadline {
                    deadline_bookmark = None;
                }
                if due_interval {
                    next_interval = interval.map(|i| now + i);
                }
                if due_deadline || due_interval {
                    // every change up to the store's resourceVersion is in our channel once we
                    // read it under the lock: send those first so the bookmark never runs ahead
                    let rv = inner.store().rv;
                    while let Ok(m) = start.rx.try_recv() {
                        match m {
                            WatchMsg::Change(c) => {
                                last_rv = last_rv.max(c.rv);
                                send_change(w, filter, &c)?;
                            }
                            WatchMsg::Close => {
                                write_chunk(w, b"")?;
                                return Ok(Next::KeepAlive);
                            }
                        }
                    }
                    last_rv = last_rv.max(rv);
                    let bm = json!({
                        "kind": def.kind,
                        "apiVersion": def.api_version(),
                        "metadata": {"resourceVersion": last_rv.to_string()},
                    });
                    write_chunk(w, &event_line("BOOKMARK", &bm))?;
                    lock(&inner.bookmarks).insert(def.plural, last_rv);
                    inner.bump();
                }
            }
        }
    }
}

/// Sends a change as the real watch cache does for a filtered watch: an object that starts
/// matching is ADDED, one that stops matching is DELETED.
fn send_change(w: &mut Conn, filter: &Filter, c: &Change) -> io::Result<()> {
    let now = filter.matches(&c.obj);
    if filter.is_empty() {
        return write_chunk(w, c.line());
    }
    let before = c.prev.as_deref().is_some_and(|p| filter.matches(p));
    match c.ty {
        EventType::Added | EventType::Deleted => {
            let m = if c.ty == EventType::Deleted {
                before || now
            } else {
                now
            };
            if m {
                write_chunk(w, c.line())?;
            }
        }
        EventType::Modified => match (before, now) {
            (true, true) => write_chunk(w, c.line())?,
            (false, true) => write_chunk(w, &event_line("ADDED", &c.obj))?,
            (true, false) => {
                let mut gone = c
                    .prev
                    .as_deref()
                    .map(|o| Value::clone(o))
                    .unwrap_or(Value::Null);
                set_meta(&mut gone, "resourceVersion", json!(c.rv.to_string()));
                write_chunk(w, &event_line("DELETED", &gone))?
            }
            (false, false) => {}
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testclient::*;
    use super::super::*;
    use super::*;

    #[test]
    fn watch_replays_from_resource_version_and_ends_at_timeout() {
        let s = FakeApiServer::start();
        s.create(pv("before", json!({})));
        let rv = s.resource_version();
        s.create(pv("a", json!({})));
        let mut a = s.get("persistentvolumes", None, "a").expect("a");
        a["spec"]["x"] = json!(1);
        s.update(a);
        s.delete("persistentvolumes", None, "a");
        let started = Instant::now();
        let mut w = WatchConn::open(
            &s,
            &format!("/api/v1/persistentvolumes?watch=true&resourceVersion={rv}&timeoutSeconds=1"),
        );
        assert_eq!(w.code, 200);
        let evs: Vec<(String, Value)> = std::iter::from_fn(|| w.next_typed()).collect();
        let types: Vec<&str> = evs.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);
        assert!(evs.iter().all(|(_, o)| obj_name(o) == "a"));
        let rvs: Vec<u64> = evs
            .iter()
            .filter_map(|(_, o)| o["metadata"]["resourceVersion"].as_str()?.parse().ok())
            .collect();
        assert!(rvs.windows(2).all(|p| p[0] < p[1]) && rvs[2] == s.resource_version());
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }

    #[test]
    fn watch_without_resource_version_lists_first_then_streams() {
        let s = FakeApiServer::start();
        s.create(pv("old", json!({"k": "v"})));
        s.create(pv("other", json!({"k": "w"})));
        let mut w = WatchConn::open(
            &s,
            "/api/v1/persistentvolumes?watch=true&labelSelector=k%3Dv",
        );
        let (t, o) = w.next_typed().expect("initial");
        assert_eq!((t.as_str(), obj_name(&o)), ("ADDED", "old"));
        s.create(pv("new", json!({"k": "v"})));
        let (t, o) = w.next_typed().expect("live");
        assert_eq!((t.as_str(), obj_name(&o)), ("ADDED", "new"));
        // leaving the selector reads as DELETED, entering it as ADDED
        let mut other = s.get("persistentvolumes", None, "other").expect("other");
        other["metadata"]["labels"]["k"] = json!("v");
        s.update(other);
        let mut old = s.get("persistentvolumes", None, "old").expect("old");
        old["metadata"]["labels"]["k"] = json!("z");
        s.update(old);
        let (t, o) = w.next_typed().expect("enter");
        assert_eq!((t.as_str(), obj_name(&o)), ("ADDED", "other"));
        let (t, o) = w.next_typed().expect("leave");
        assert_eq!((t.as_str(), obj_name(&o)), ("DELETED", "old"));
        s.close_watches();
        assert!(w.next().is_none());
    }

    #[test]
    fn bookmarks_carry_only_the_resource_version() {
        let s = FakeApiServer::start_with(Options {
            bookmark_interval: Some(Duration::from_millis(50)),
            ..Options::default()
        })
        .expect("start");
        s.create(pv("a", json!({})));
        let rv = s.resource_version();
        let mut w = WatchConn::open(
            &s,
            &format!(
                "/api/v1/persistentvolumes?watch=1&allowWatchBookmarks=true&resourceVersion={rv}"
            ),
        );
        let (t, o) = w.next_typed().expect("bookmark");
        assert_eq!(t, "BOOKMARK");
        assert_eq!(
            o,
            json!({"kind": "PersistentVolume", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}})
        );
        // without allowWatchBookmarks none arrive: the stream ends at its timeout with nothing
        let mut w = WatchConn::open(
            &s,
            &format!("/api/v1/persistentvolumes?watch=1&resourceVersion={rv}&timeoutSeconds=1"),
        );
        assert!(w.next().is_none());
    }

    #[test]
    fn too_old_resource_version_is_an_error_event() {
        let s = FakeApiServer::start();
        s.create(pv("a", json!({})));
        let rv = s.resource_version();
        s.create(pv("b", json!({})));
        s.compact();
        let mut w = WatchConn::open(
            &s,
            &format!("/api/v1/persistentvolumes?watch=1&resourceVersion={rv}"),
        );
        assert_eq!(w.code, 200);
        let (t, o) = w.next_typed().expect("error event");
        assert_eq!(t, "ERROR");
        assert_eq!(
            (o["code"].as_u64(), o["reason"].as_str()),
            (Some(410), Some("Expired"))
        );
        assert!(w.next().is_none());
        // from the compaction point itself the watch works
        let now = s.resource_version();
        let mut w = WatchConn::open(
            &s,
            &format!("/api/v1/persistentvolumes?watch=1&resourceVersion={now}"),
        );
        s.create(pv("c", json!({})));
        assert_eq!(
            w.next_typed().map(|(t, o)| (t, obj_name(&o).to_string())),
            Some(("ADDED".into(), "c".into()))
        );
    }

    #[test]
    fn history_bound_makes_old_versions_too_old() {
        let s = FakeApiServer::start_with(Options {
            history: 2,
            ..Options::default()
        })
        .expect("start");
        let rv = s.resource_version();
        for i in 0..3 {
            s.create(pv(&format!("p{i}"), json!({})));
        }
        let mut w = WatchConn::open(
            &s,
            &format!("/api/v1/persistentvolumes?watch=1&resourceVersion={rv}"),
        );
        assert_eq!(w.next_typed().map(|(t, _)| t).as_deref(), Some("ERROR"));
    }
}
