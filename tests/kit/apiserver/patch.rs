//! The patch flavours a PATCH may carry, picked by its Content-Type: JSON merge patch,
//! strategic merge patch (as far as this fake needs) and JSON patch (RFC 6902).

use serde_json::{json, Value};

/// The patch flavour a PATCH's media type names (the Content-Type without its parameters).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum PatchFlavour {
    Merge,
    StrategicMerge,
    Json,
}

impl PatchFlavour {
    /// `None` for a media type the server does not take as a patch (415).
    pub(super) fn for_media_type(media_type: &str) -> Option<PatchFlavour> {
        match media_type {
            "application/merge-patch+json" => Some(PatchFlavour::Merge),
            "application/strategic-merge-patch+json" => Some(PatchFlavour::StrategicMerge),
            "application/json-patch+json" => Some(PatchFlavour::Json),
            _ => None,
        }
    }

    /// Patches `doc` in place; only a JSON patch can fail (a failed `test`, a missing path).
    pub(super) fn apply(self, doc: &mut Value, patch: &Value) -> Result<(), String> {
        match self {
            PatchFlavour::Merge => merge_patch(doc, patch),
            PatchFlavour::StrategicMerge => strategic_merge_patch(doc, patch),
            PatchFlavour::Json => return json_patch(doc, patch),
        }
        Ok(())
    }
}

fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Strategic merge as far as this fake needs: a merge patch where lists are replaced, `null`
/// deletes, `$patch: delete|replace` on maps is honoured and other `$` directives are dropped.
fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            *target = Value::Object(m);
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if k.starts_with('$') {
                continue;
            }
            if v.is_null() {
                t.remove(k);
                continue;
            }
            let slot = t.entry(k.clone()).or_insert(Value::Null);
            strategic_merge_patch(slot, v);
            if slot.is_null() {
                t.remove(k);
            }
        }
    }
}

fn pointer_tokens(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("invalid json pointer {p:?}"));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let Some(ops) = ops.as_array() else {
        return Err("a json patch must be an array of operations".into());
    };
    for op in ops {
        let kind = op.get("op").and_then(Value::as_str).unwrap_or("");
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("an operation without a path")?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("{kind} operation on {path} without a value"))
        };
        match kind {
            "add" => jp_add(doc, path, value()?)?,
            "remove" => {
                jp_remove(doc, path)?;
            }
            "replace" => {
                jp_remove(doc, path)?;
                jp_add(doc, path, value()?)?;
            }
            "move" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or("move without from")?;
                let v = jp_remove(doc, from)?;
                jp_add(doc, path, v)?;
            }
            "copy" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or("copy without from")?;
                let v = doc
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("copy from missing {from}"))?;
                jp_add(doc, path, v)?;
            }
            "test" => {
                let want = value()?;
                if doc.pointer(path) != Some(&want) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            other => return Err(format!("unknown json patch operation {other:?}")),
        }
    }
    Ok(())
}

fn jp_parent<'a>(doc: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
    let mut toks = pointer_tokens(path)?;
    let last = toks.pop().ok_or("the whole document cannot be patched")?;
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(&t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("missing path element {t:?} in {path}"))?;
    }
    Ok((cur, last))
}

fn jp_add(doc: &mut Value, path: &str, v: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = v;
        return Ok(());
    }
    let (parent, last) = jp_parent(doc, path)?;
    match parent {
        Value::Object(m) => {
            m.insert(last, v);
            Ok(())
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .map_err(|_| format!("bad index in {path}"))?
            };
            if i > a.len() {
                return Err(format!("index out of range in {path}"));
            }
            a.insert(i, v);
            Ok(())
        }
        _ => Err(format!("cannot add at {path}")),
    }
}

fn jp_remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = jp_parent(doc, path)?;
    let missing = || format!("no value at {path}");
    match parent {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last.parse::<usize>().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testclient::*;
    use super::super::*;
    use super::*;

    #[test]
    fn patches_over_http() {
        let s = FakeApiServer::start();
        let ev = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1", "namespace": "ns"},
                        "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "R", "count": 1,
                        "firstTimestamp": "2026-01-02T03:04:05.5Z", "lastTimestamp": "2026-01-02T03:04:05Z"});
        let (c, created) = send(&s, "POST", "/api/v1/namespaces/ns/events", ev, JSON);
        assert_eq!(c, 201);
        assert_eq!(created["firstTimestamp"], "2026-01-02T03:04:05Z");
        let (c, b) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e1",
            json!({"count": 2, "message": "m"}),
            "application/strategic-merge-patch+json",
        );
        assert_eq!(
            (c, b["count"].as_u64(), b["reason"].as_str()),
            (200, Some(2), Some("R"))
        );
        let ops = json!([{"op": "test", "path": "/count", "value": 2}, {"op": "replace", "path": "/count", "value": 3}]);
        let (c, b) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e1",
            ops,
            "application/json-patch+json",
        );
        assert_eq!((c, b["count"].as_u64()), (200, Some(3)));
        let ops = json!([{"op": "test", "path": "/count", "value": 2}]);
        let (c, _) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e1",
            ops,
            "application/json-patch+json",
        );
        assert_eq!(c, 422);
        let (c, b) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e1",
            json!({}),
            "text/plain",
        );
        assert_eq!(
            (c, b["reason"].as_str()),
            (415, Some("UnsupportedMediaType"))
        );
        let (c, b) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/nope",
            json!({}),
            MERGE,
        );
        assert_eq!((c, b["details"]["kind"].as_str()), (404, Some("events")));
        // a patch carrying a stale resourceVersion is a conflict
        let (c, _) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e1",
            json!({"metadata": {"resourceVersion": "1"}}),
            MERGE,
        );
        assert_eq!(c, 409);
        // a no-op patch keeps the resourceVersion
        let rv = s.resource_version();
        let (c, _) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/events/e1",
            json!({"count": 3}),
            MERGE,
        );
        assert_eq!((c, s.resource_version()), (200, rv));
    }

    #[test]
    fn patch_functions_table() {
        let merge_cases = [
            (
                json!({"a": 1, "b": {"c": 2}}),
                json!({"b": {"c": null, "d": 3}, "e": [1]}),
                json!({"a": 1, "b": {"d": 3}, "e": [1]}),
            ),
            (json!({"a": [1, 2]}), json!({"a": [3]}), json!({"a": [3]})),
            (json!({"a": 1}), json!({"a": {"x": null}}), json!({"a": {}})),
        ];
        for (doc, patch, want) in merge_cases {
            let mut d = doc.clone();
            merge_patch(&mut d, &patch);
            assert_eq!(d, want, "merge {doc} + {patch}");
            let mut d = doc.clone();
            strategic_merge_patch(&mut d, &patch);
            assert_eq!(d, want, "strategic {doc} + {patch}");
        }
        let mut d = json!({"m": {"a": 1, "b": 2}, "n": 1});
        strategic_merge_patch(
            &mut d,
            &json!({"m": {"$patch": "replace", "c": 3}, "$setElementOrder/x": [], "n": {"$patch": "delete"}}),
        );
        assert_eq!(d, json!({"m": {"c": 3}}));
        let json_cases = [
            (
                json!([{"op": "add", "path": "/a/-", "value": 3}]),
                Some(json!({"a": [1, 2, 3], "b": {"c~/": 1}})),
            ),
            (
                json!([{"op": "remove", "path": "/b/c~0~1"}]),
                Some(json!({"a": [1, 2], "b": {}})),
            ),
            (
                json!([{"op": "move", "from": "/a/0", "path": "/z"}]),
                Some(json!({"a": [2], "b": {"c~/": 1}, "z": 1})),
            ),
            (
                json!([{"op": "copy", "from": "/a", "path": "/b/x"}]),
                Some(json!({"a": [1, 2], "b": {"c~/": 1, "x": [1, 2]}})),
            ),
            (
                json!([{"op": "replace", "path": "/missing", "value": 1}]),
                None,
            ),
            (json!([{"op": "test", "path": "/a/1", "value": 3}]), None),
            (json!([{"op": "frob", "path": "/a"}]), None),
            (json!({"op": "add"}), None),
        ];
        for (ops, want) in json_cases {
            let mut d = json!({"a": [1, 2], "b": {"c~/": 1}});
            let r = json_patch(&mut d, &ops);
            assert_eq!(r.ok().map(|_| d), want, "{ops}");
        }
    }
}
