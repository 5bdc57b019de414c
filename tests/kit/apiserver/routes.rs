//! From a request path to a resource (group, namespace, name, subresource) and from the verb
//! to the store: get, list, create, update, patch, delete and delete-collection, with list
//! bodies serialized as the real server serializes them.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::http::{percent_decode, Params, Reply, Request};
use super::patch::PatchFlavour;
use super::resources::{def_for, obj_name, Failure, ResDef};
use super::selectors::Filter;
use super::store::{ListResult, Mode};
use super::Inner;

pub(super) struct Target {
    pub(super) def: &'static ResDef,
    pub(super) ns: Option<String>,
    pub(super) name: Option<String>,
    sub: Option<String>,
}

pub(super) enum Route {
    Resource(Target),
}

pub(super) fn route(path: &str) -> Result<Route, Reply> {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, rest) = match segs.as_slice() {
        ["healthz"] | ["livez"] | ["readyz"] => return Err(Reply::text(200, "ok")),
        ["version"] => {
            return Err(Reply::json(
                200,
                &json!({"major": "1", "minor": "36", "gitVersion": "v1.36.2-fake", "platform": "linux/amd64"}),
            ))
        }
        ["api"] => {
            return Err(Reply::json(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ))
        }
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, "v1", rest @ ..] => (*group, rest),
        _ => return Err(Reply::failure(&Failure::path_not_found())),
    };
    let nf = || Reply::failure(&Failure::path_not_found());
    let lookup = |plural: &str| def_for(group, plural).ok_or_else(nf);
    let t = |def, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        Ok(Route::Resource(Target {
            def,
            ns: ns.map(str::to_string),
            name: name.map(str::to_string),
            sub: sub.map(str::to_string),
        }))
    };
    match rest {
        [] => Err(nf()),
        ["namespaces", ns, res, more @ ..]
            if !group.is_empty() || !matches!(*res, "status" | "finalize") || !more.is_empty() =>
        {
            let def = lookup(res)?;
            if !def.namespaced {
                return Err(nf());
            }
            match more {
                [] => t(def, Some(ns), None, None),
                [name] => t(def, Some(ns), Some(name), None),
                [name, sub] => t(def, Some(ns), Some(name), Some(sub)),
                _ => Err(nf()),
            }
        }
        [res] => t(lookup(res)?, None, None, None),
        [res, name] => {
            let def = lookup(res)?;
            if def.namespaced {
                return Err(nf());
            }
            t(def, None, Some(name), None)
        }
        [res, name, sub] => {
            let def = lookup(res)?;
            if def.namespaced {
                return Err(nf());
            }
            t(def, None, Some(name), Some(sub))
        }
        _ => Err(nf()),
    }
}

pub(super) fn handle_resource(
    inner: &Arc<Inner>,
    req: &Request,
    t: &Target,
    params: &Params,
    body: Option<Value>,
) -> Result<Reply, Failure> {
    let param = |k: &str| params.get(k);
    let def = t.def;
    let ns = t.ns.as_deref();
    let mode = match t.sub.as_deref() {
        None => Mode::Main,
        Some("status") if def.has_status => Mode::Status,
        Some("finalize") if def.plural == "namespaces" => Mode::Finalize,
        Some(_) => return Err(Failure::path_not_found()),
    };
    let need_body = || -> Result<Value, Failure> {
        if req.body.is_empty() {
            return Err(Failure::bad_request("the request body is empty"));
        }
        body.clone().ok_or_else(|| {
            Failure::bad_request(format!(
                "{} in version \"v1\" cannot be handled as a {}: the body is not valid JSON",
                def.kind, def.kind
            ))
        })
    };
    let method = req.method.as_str();
    let result = match (method, t.name.as_deref()) {
        ("GET", None) => {
            let filter = Filter::parse(def, param("labelSelector"), param("fieldSelector"))?;
            let limit = match param("limit") {
                Some(l) => l
                    .parse::<usize>()
                    .map_err(|_| Failure::bad_request(format!("invalid limit {l:?}")))?,
                None => 0,
            };
            let res = inner.store().list(
                def,
                ns,
                &filter,
                limit,
                param("continue").filter(|c| !c.is_empty()),
            )?;
            return Ok(list_reply(def, &res, filter.is_empty()));
        }
        ("GET", Some(name)) => {
            if mode == Mode::Finalize {
                return Err(Failure::new(
                    405,
                    "the server does not allow this method on the requested resource",
                ));
            }
            let store = inner.store();
            let e = store
                .get(def, ns, name)
                .ok_or_else(|| Failure::not_found(def, name))?;
            return Ok(Reply::json(200, &e.obj));
        }
        ("POST", None) => {
            let Some(ns) = ns.or(if def.namespaced { None } else { Some("") }) else {
                return Err(Failure::new(
                    405,
                    "the server does not allow this method on the requested resource",
                ));
            };
            let ns = if def.namespaced { Some(ns) } else { None };
            let b = need_body()?;
            let r = inner.store().create(def, ns, b, Mode::Main);
            inner.bump();
            r
        }
        ("PUT", Some(name)) => {
            let b = need_body()?;
            let r = inner.store().update(def, ns, name, b, mode);
            inner.bump();
            r
        }
        ("PATCH", Some(name)) => {
            if mode == Mode::Finalize {
                return Err(Failure::new(
                    405,
                    "the server does not allow this method on the requested resource",
                ));
            }
            let ct = req
                .header("content-type")
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let Some(flavour) = PatchFlavour::for_media_type(&ct) else {
                return Err(Failure::new(
                    415,
                    format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"),
                ));
            };
            let patch = need_body()?;
            let mut store = inner.store();
            let current = store
                .get(def, ns, name)
                .map(|e| e.obj.clone())
                .ok_or_else(|| Failure::not_found(def, name))?;
            let mut doc = (*current).clone();
            flavour
                .apply(&mut doc, &patch)
                .map_err(|e| Failure::invalid(def, name, &e))?;
            let r = store.update(def, ns, name, doc, mode);
            drop(store);
            inner.bump();
            r
        }
        ("DELETE", Some(name)) => {
            if mode != Mode::Main {
                return Err(Failure::new(
                    405,
                    "the server does not allow this method on the requested resource",
                ));
            }
            let opts = body.clone().unwrap_or(json!({}));
            let r = inner.store().delete(def, ns, name, &opts);
            inner.bump();
            r.map(|o| (200, o))
        }
        ("DELETE", None) => {
            let filter = Filter::parse(def, param("labelSelector"), param("fieldSelector"))?;
            let mut store = inner.store();
            let items = store.filtered(def, ns, &filter);
            for o in &items {
                let n = obj_name(o).to_string();
                let o_ns = o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let _ = store.delete(def, o_ns.as_deref(), &n, &json!({}));
            }
            let rv = store.rv;
            drop(store);
            inner.bump();
            let res = ListResult {
                rv,
                start: 0,
                end: items.len(),
                items: Arc::new(items),
                cont: None,
            };
            return Ok(list_reply(def, &res, true));
        }
        _ => Err(Failure::new(
            405,
            "the server does not allow this method on the requested resource",
        )),
    };
    let (code, obj) = result?;
    Ok(Reply::json(code, &obj))
}

fn list_reply(def: &ResDef, res: &ListResult, no_selectors: bool) -> Reply {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(res.rv.to_string()));
    if let Some(c) = &res.cont {
        meta.insert("continue".into(), json!(c));
        // observed: no remainingItemCount with a label selector
        if no_selectors {
            meta.insert(
                "remainingItemCount".into(),
                json!(res.items.len() - res.end),
            );
        }
    }
    let head = format!(
        "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
        def.kind,
        def.api_version(),
        Value::Object(meta)
    );
    let mut body = Vec::with_capacity(head.len() + 64 + (res.end - res.start) * 512);
    body.extend_from_slice(head.as_bytes());
    for (i, o) in res.items[res.start..res.end].iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let _ = serde_json::to_writer(&mut body, &**o);
    }
    body.extend_from_slice(b"]}");
    Reply {
        code: 200,
        body,
        content_type: "application/json",
        retry_after: None,
    }
}
