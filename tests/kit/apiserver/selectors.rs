//! Label and field selectors: parsing them as the real server does (400 on what it refuses,
//! only the fields each resource supports) and matching objects against them.

use serde_json::Value;

use super::resources::{Failure, ResDef};

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
struct FieldReq {
    field: String,
    value: String,
    equal: bool,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Filter {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

impl Filter {
    pub(super) fn parse(
        def: &ResDef,
        label: Option<&str>,
        field: Option<&str>,
    ) -> Result<Filter, Failure> {
        let labels = match label {
            Some(s) => parse_label_selector(s).map_err(Failure::bad_request)?,
            None => Vec::new(),
        };
        let fields = match field {
            Some(s) => parse_field_selector(def, s).map_err(Failure::bad_request)?,
            None => Vec::new(),
        };
        Ok(Filter { labels, fields })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Eq(k, v) => label(k) == Some(v.as_str()),
            LabelReq::NotEq(k, v) => label(k) != Some(v.as_str()),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
        });
        labels_ok
            && self
                .fields
                .iter()
                .all(|f| (field_value(obj, &f.field) == f.value) == f.equal)
    }
}

fn field_value(obj: &Value, field: &str) -> String {
    let path = match field {
        "source" => "/source/component".to_string(),
        f => format!("/{}", f.replace('.', "/")),
    };
    match obj.pointer(&path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Ok(out);
    }
    for term in split_top_level(s) {
        let t = term.trim();
        let bad = || {
            format!("unable to parse requirement: found '{t}', expected: a valid label selector")
        };
        let req = if let Some(k) = t.strip_prefix('!') {
            LabelReq::NotExists(k.trim().to_string())
        } else if let Some((k, v)) = t.split_once("!=") {
            LabelReq::NotEq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once("==") {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = t.split_once('=') {
            LabelReq::Eq(k.trim().to_string(), v.trim().to_string())
        } else if let Some(open) = t.find('(') {
            let head = t[..open].trim();
            let Some(inner) = t[open + 1..].strip_suffix(')') else {
                return Err(bad());
            };
            let vals: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
            if let Some(k) = head.strip_suffix(" notin") {
                LabelReq::NotIn(k.trim().to_string(), vals)
            } else if let Some(k) = head.strip_suffix(" in") {
                LabelReq::In(k.trim().to_string(), vals)
            } else {
                return Err(bad());
            }
        } else {
            LabelReq::Exists(t.to_string())
        };
        let key = match &req {
            LabelReq::Eq(k, _)
            | LabelReq::NotEq(k, _)
            | LabelReq::Exists(k)
            | LabelReq::NotExists(k)
            | LabelReq::In(k, _)
            | LabelReq::NotIn(k, _) => k,
        };
        if !valid_label_key(key) {
            return Err(bad());
        }
        out.push(req);
    }
    Ok(out)
}

fn parse_field_selector(def: &ResDef, s: &str) -> Result<Vec<FieldReq>, String> {
    let mut out = Vec::new();
    if s.trim().is_empty() {
        return Ok(out);
    }
    for term in s.split(',') {
        let t = term.trim();
        let (field, value, equal) = if let Some((f, v)) = t.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = t.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = t.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!("invalid selector: '{s}'; can't understand '{t}'"));
        };
        let field = field.trim();
        let known = field == "metadata.name"
            || field == "metadata.namespace"
            || def.extra_fields().contains(&field);
        if !known {
            return Err(format!("field label not supported: {field}"));
        }
        out.push(FieldReq {
            field: field.to_string(),
            value: value.trim().to_string(),
            equal,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testclient::*;
    use super::super::*;
    use super::*;

    #[test]
    fn field_and_label_selectors_over_http() {
        let s = FakeApiServer::start();
        for (name, node, phase) in [
            ("p1", "n1", "Running"),
            ("p2", "n2", "Running"),
            ("p3", "n1", "Failed"),
        ] {
            s.create(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ns", "labels": {"app": name}},
                            "spec": {"nodeName": node}, "status": {"phase": phase}}));
        }
        let names = |path: &str| -> Vec<String> {
            let (c, b) = get_json(&s, path);
            assert_eq!(c, 200, "{path}: {b}");
            b["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|o| obj_name(o).to_string())
                .collect()
        };
        assert_eq!(
            names("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1"),
            ["p1", "p3"]
        );
        assert_eq!(
            names(
                "/api/v1/namespaces/ns/pods?fieldSelector=spec.nodeName==n1,status.phase!=Failed"
            ),
            ["p1"]
        );
        assert_eq!(
            names("/api/v1/namespaces/other/pods?fieldSelector=spec.nodeName%3Dn1"),
            Vec::<String>::new()
        );
        assert_eq!(
            names("/api/v1/pods?labelSelector=app+in+(p1,p2),app!=p2"),
            ["p1"]
        );
        let (c, b) = get_json(&s, "/api/v1/pods?fieldSelector=spec.bogus%3D1");
        assert_eq!((c, b["reason"].as_str()), (400, Some("BadRequest")));
        let (c, _) = get_json(
            &s,
            "/api/v1/persistentvolumes?fieldSelector=spec.nodeName%3Dn1",
        );
        assert_eq!(c, 400);
    }

    #[test]
    fn selector_parsing_table() {
        let cases: &[(&str, Option<Vec<LabelReq>>)] = &[
            ("", Some(vec![])),
            ("a=b", Some(vec![LabelReq::Eq("a".into(), "b".into())])),
            (
                "a==b,c!=d",
                Some(vec![
                    LabelReq::Eq("a".into(), "b".into()),
                    LabelReq::NotEq("c".into(), "d".into()),
                ]),
            ),
            (
                "x.io/k,!y",
                Some(vec![
                    LabelReq::Exists("x.io/k".into()),
                    LabelReq::NotExists("y".into()),
                ]),
            ),
            (
                "k in (a, b),j notin (c)",
                Some(vec![
                    LabelReq::In("k".into(), vec!["a".into(), "b".into()]),
                    LabelReq::NotIn("j".into(), vec!["c".into()]),
                ]),
            ),
            ("k in (a", None),
            ("=x", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_label_selector(input).ok(), *want, "{input}");
        }
        let ev = &RESOURCES[EVENTS];
        assert!(parse_field_selector(ev, "source=x,involvedObject.uid!=y,metadata.name=z").is_ok());
        assert!(parse_field_selector(ev, "spec.nodeName=x").is_err());
        assert!(parse_field_selector(ev, "reason").is_err());
        let obj = json!({"source": {"component": "c"}, "spec": {"unschedulable": true}});
        assert_eq!(field_value(&obj, "source"), "c");
        assert_eq!(field_value(&obj, "spec.unschedulable"), "true");
        assert_eq!(field_value(&obj, "reason"), "");
    }
}
