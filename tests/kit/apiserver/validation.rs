//! What the real API checks on writes before storing: kind and apiVersion against the URL,
//! object names, the decoder's time formats (Lease MicroTimes, Event times) and PVC
//! `status.healthStatus` (dropped with the `CSIVolumeHealth` gate off, validated with it on:
//! 422 naming the field path).

use serde_json::{json, Map, Value};

use healthmon::timeutil::{parse_rfc3339, rfc3339, rfc3339_micros};

use super::resources::{Failure, ResDef};
use super::store::Mode;

/// Checks kind/apiVersion against the URL and fills them in.
pub(super) fn check_body(def: &ResDef, body: Value) -> Result<Value, Failure> {
    let Value::Object(mut m) = body else {
        return Err(Failure::bad_request(format!(
            "{} in version \"v1\" cannot be handled as a {}: the body is not a JSON object",
            def.kind, def.kind
        )));
    };
    let av = def.api_version();
    if let Some(k) = m.get("kind").and_then(Value::as_str) {
        if !k.is_empty() && k != def.kind {
            return Err(Failure::bad_request(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json (kind {k} is not {})",
                def.kind
            )));
        }
    }
    if let Some(a) = m.get("apiVersion").and_then(Value::as_str) {
        if !a.is_empty() && a != av {
            return Err(Failure::bad_request(format!(
                "the API version in the data ({a}) does not match the expected API version ({av})"
            )));
        }
    }
    if !m.get("metadata").is_some_and(Value::is_object) {
        m.insert("metadata".into(), json!({}));
    }
    // kind and apiVersion first, as the real server serializes them
    let mut out = Map::new();
    out.insert("kind".into(), json!(def.kind));
    out.insert("apiVersion".into(), json!(av));
    for (k, v) in m {
        if k != "kind" && k != "apiVersion" {
            out.insert(k, v);
        }
    }
    Ok(Value::Object(out))
}

/// Type-level checks the real decoder does: Lease MicroTimes need exactly 6 fractional digits;
/// Event metav1.Time fields are RFC 3339 and kept to the second.
pub(super) fn normalize(def: &ResDef, name: &str, obj: &mut Value) -> Result<(), Failure> {
    match def.plural {
        "leases" => {
            for f in ["acquireTime", "renewTime"] {
                let Some(v) = obj.pointer_mut(&format!("/spec/{f}")) else {
                    continue;
                };
                let Some(s) = v.as_str() else {
                    if v.is_null() {
                        continue;
                    }
                    return Err(Failure::bad_request(format!(
                        "Lease in version \"v1\" cannot be handled as a Lease: spec.{f}: expected a string"
                    )));
                };
                match parse_rfc3339(s).filter(|_| fraction_digits(s) == 6) {
                    Some(t) => *v = json!(rfc3339_micros(t)),
                    _ => {
                        return Err(Failure::bad_request(format!(
                            "Lease in version \"v1\" cannot be handled as a Lease: parsing time \"{s}\" as \"2006-01-02T15:04:05.000000Z07:00\": cannot parse \"{s}\" as \".000000\""
                        )))
                    }
                }
            }
        }
        "events" => {
            for f in ["firstTimestamp", "lastTimestamp"] {
                let Some(v) = obj.get_mut(f) else { continue };
                let Some(s) = v.as_str() else { continue };
                match parse_rfc3339(s) {
                    Some(t) => *v = json!(rfc3339(t)),
                    None => {
                        return Err(Failure::bad_request(format!(
                            "Event in version \"v1\" cannot be handled as a Event: parsing time \"{s}\" as \"2006-01-02T15:04:05Z07:00\""
                        )))
                    }
                }
            }
        }
        _ => {}
    }
    let _ = name;
    Ok(())
}

/// `status.healthStatus` of a PVC (Kubernetes 1.37, gate `CSIVolumeHealth`). Gate off: the
/// field is unknown to the schema and dropped silently (observed on 1.36.2: 200, field gone).
/// Gate on: validated as `k8s.io/api` `VolumeHealthStatus` is, 422 naming the field path.
/// Direct writes (test setup) are dropped or kept the same way but never refused.
pub(super) fn pvc_health_status(
    def: &ResDef,
    name: &str,
    obj: &mut Value,
    gate_on: bool,
    mode: Mode,
) -> Result<(), Failure> {
    if def.plural != "persistentvolumeclaims" {
        return Ok(());
    }
    let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    if !gate_on {
        status.remove("healthStatus");
        return Ok(());
    }
    if status.get("healthStatus").is_some_and(Value::is_null) {
        status.remove("healthStatus");
    }
    let Some(hs) = status.get("healthStatus") else {
        return Ok(());
    };
    if mode == Mode::Direct {
        return Ok(());
    }
    validate_health_status(hs).map_err(|why| Failure::invalid(def, name, &why))
}

/// The limits of `VolumeHealthStatus`: at most 16 conditions, status one of the three names,
/// reason 1..=256 bytes, message at most 1024 bytes, (status, reason) unique.
fn validate_health_status(hs: &Value) -> Result<(), String> {
    const STATUSES: [&str; 3] = ["DataLoss", "Degraded", "Inaccessible"];
    let Some(m) = hs.as_object() else {
        return Err("status.healthStatus: Invalid value: must be an object".into());
    };
    if let Some(t) = m.get("lastTransitionTime") {
        if t.as_str().and_then(parse_rfc3339).is_none() {
            return Err(format!(
                "status.healthStatus.lastTransitionTime: Invalid value: {t}: must be an RFC 3339 time"
            ));
        }
    }
    let conds = match m.get("healthConditions") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(format!(
                "status.healthStatus.healthConditions: Invalid value: {other}: must be a list"
            ))
        }
    };
    if conds.len() > 16 {
        return Err(format!(
            "status.healthStatus.healthConditions: Too many: {}: must have at most 16 items",
            conds.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in conds.iter().enumerate() {
        let at = format!("status.healthStatus.healthConditions[{i}]");
        let st = c.get("status").and_then(Value::as_str).unwrap_or("");
        if !STATUSES.contains(&st) {
            return Err(format!(
                "{at}.status: Unsupported value: {:?}: supported values: \"DataLoss\", \"Degraded\", \"Inaccessible\"",
                st
            ));
        }
        let reason = c.get("reason").and_then(Value::as_str).unwrap_or("");
        if reason.is_empty() {
            return Err(format!("{at}.reason: Required value"));
        }
        if reason.len() > 256 {
            return Err(format!(
                "{at}.reason: Too long: may not be more than 256 bytes"
            ));
        }
        let message = c.get("message").and_then(Value::as_str).unwrap_or("");
        if message.len() > 1024 {
            return Err(format!(
                "{at}.message: Too long: may not be more than 1024 bytes"
            ));
        }
        if !seen.insert((st, reason)) {
            return Err(format!(
                "{at}: Duplicate value: {{\"reason\":{reason:?},\"status\":{st:?}}}"
            ));
        }
    }
    Ok(())
}

pub(super) fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.len() > 253 {
        return Err("must be no more than 253 characters");
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ends_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok_chars && ends_ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")
    }
}

/// Digits after the seconds' decimal point: a metav1.MicroTime needs exactly six.
fn fraction_digits(s: &str) -> usize {
    s.get(19..)
        .and_then(|r| r.strip_prefix('.'))
        .map_or(0, |r| r.bytes().take_while(u8::is_ascii_digit).count())
}

#[cfg(test)]
mod tests {
    use super::super::testclient::*;
    use super::super::*;
    use super::*;

    #[test]
    fn lease_micro_time_needs_six_digits() {
        let s = FakeApiServer::start();
        let lease = |t: &str| {
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
                                     "spec": {"holderIdentity": "h", "renewTime": t}})
        };
        let (c, b) = send(
            &s,
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases",
            lease("2026-01-02T03:04:05Z"),
            JSON,
        );
        assert_eq!((c, b["reason"].as_str()), (400, Some("BadRequest")));
        let (c, b) = send(
            &s,
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/ns/leases",
            lease("2026-01-02T04:04:05.000001+01:00"),
            JSON,
        );
        assert_eq!(
            (c, b["spec"]["renewTime"].as_str()),
            (201, Some("2026-01-02T03:04:05.000001Z"))
        );
    }

    #[test]
    fn only_micro_times_have_six_fraction_digits() {
        assert_eq!(fraction_digits("2026-01-02T03:04:05.123456Z"), 6);
        assert_eq!(fraction_digits("2026-01-02T03:04:05.5Z"), 1);
        assert_eq!(fraction_digits("2026-01-02T03:04:05Z"), 0);
        assert_eq!(fraction_digits("2026"), 0);
    }

    const PVC_STATUS: &str = "/api/v1/namespaces/ns/persistentvolumeclaims/c/status?fieldManager=csi-external-health-monitor-controller";

    /// A fake API server with the `CSIVolumeHealth` gate on or off and one Bound PVC, ns/c.
    fn health_server(gate: bool) -> FakeApiServer {
        let s = FakeApiServer::start_with(Options {
            pvc_health_status: gate,
            ..Options::default()
        })
        .expect("start");
        s.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}));
        s.create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "c", "namespace": "ns"},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv"},
            "status": {"phase": "Bound"}}));
        s
    }

    fn health_status(conditions: Value) -> Value {
        json!({"healthConditions": conditions, "lastTransitionTime": "2026-11-30T10:00:00Z"})
    }

    fn patch_health(s: &FakeApiServer, hs: Value) -> (u16, Value) {
        send(
            s,
            "PATCH",
            PVC_STATUS,
            json!({"status": {"healthStatus": hs}}),
            MERGE,
        )
    }

    fn stored_pvc(s: &FakeApiServer) -> Value {
        let (code, b) = get_json(s, "/api/v1/namespaces/ns/persistentvolumeclaims/c");
        assert_eq!(code, 200, "{b}");
        b
    }

    #[test]
    fn pvc_health_status_is_dropped_with_the_gate_off() {
        let s = health_server(false);
        let hs = health_status(
            json!([{"status": "Inaccessible", "reason": "DiskGone", "message": "disk gone"}]),
        );
        let (code, b) = patch_health(&s, hs.clone());
        assert_eq!(code, 200, "{b}");
        assert_eq!(b["status"], json!({"phase": "Bound"}));
        assert_eq!(stored_pvc(&s)["status"], json!({"phase": "Bound"}));
        // not validated either: the field is unknown
        let (code, _) = patch_health(&s, health_status(json!([{"status": "Bogus"}])));
        assert_eq!(code, 200);
        let (code, b) = patch_health(&s, Value::Null);
        assert_eq!(
            (code, &b["status"]),
            (200, &json!({"phase": "Bound"})),
            "{b}"
        );
        // the gate turned on (an upgrade): the same write is kept from now on
        s.set_pvc_health_status(true);
        let (code, b) = patch_health(&s, hs.clone());
        assert_eq!((code, &b["status"]["healthStatus"]), (200, &hs), "{b}");
    }

    #[test]
    fn pvc_health_status_is_kept_replaced_and_cleared_with_the_gate_on() {
        let s = health_server(true);
        let two = health_status(json!([
            {"status": "Inaccessible", "reason": "DiskGone", "message": "disk gone"},
            {"status": "Degraded", "reason": "Slow", "message": "slow"}
        ]));
        let (code, b) = patch_health(&s, two.clone());
        assert_eq!(code, 200, "{b}");
        assert_eq!(b["status"], json!({"phase": "Bound", "healthStatus": two}));
        assert_eq!(stored_pvc(&s)["status"]["healthStatus"], two);
        // a merge patch replaces the list whole
        let one = health_status(json!([{"status": "DataLoss", "reason": "Lost"}]));
        let (code, b) = patch_health(&s, one.clone());
        assert_eq!((code, &b["status"]["healthStatus"]), (200, &one), "{b}");
        // a write to the main resource keeps the status as it is
        let (code, b) = send(
            &s,
            "PATCH",
            "/api/v1/namespaces/ns/persistentvolumeclaims/c",
            json!({"metadata": {"labels": {"l": "1"}}, "status": {"healthStatus": null}}),
            MERGE,
        );
        assert_eq!((code, &b["status"]["healthStatus"]), (200, &one), "{b}");
        // null clears it, and only it
        let (code, b) = patch_health(&s, Value::Null);
        assert_eq!(code, 200, "{b}");
        assert_eq!(b["status"], json!({"phase": "Bound"}));
        assert_eq!(stored_pvc(&s)["status"], json!({"phase": "Bound"}));
    }

    #[test]
    fn pvc_health_status_validation_with_the_gate_on() {
        let s = health_server(true);
        let c = |status: &str, reason: &str| json!({"status": status, "reason": reason, "message": "m"});
        let many = |n: usize| {
            Value::Array(
                (0..n)
                    .map(|i| c("Degraded", &format!("Reason{i}")))
                    .collect(),
            )
        };
        // 128 two-byte characters are 256 bytes: the limits count bytes
        let reason_256 = "é".repeat(128);
        let reason_258 = "é".repeat(129);
        let with_message = |m: String| json!([{"status": "Degraded", "reason": "R", "message": m}]);
        let ok = [
            json!([]),
            json!([
                c("Inaccessible", "R"),
                c("DataLoss", "R"),
                c("Degraded", "R")
            ]),
            json!([c("Degraded", "A"), c("Degraded", "B")]),
            json!([c("Degraded", &reason_256)]),
            with_message("m".repeat(1024)),
            many(16),
        ];
        for conditions in ok {
            let hs = health_status(conditions);
            let (code, b) = patch_health(&s, hs.clone());
            assert_eq!((code, &b["status"]["healthStatus"]), (200, &hs), "{b}");
        }
        let kept = stored_pvc(&s)["status"].clone();
        let refused = [
            (
                json!([c("Unknown", "R")]),
                "healthConditions[0].status: Unsupported value",
            ),
            (
                json!([c("degraded", "R")]),
                "healthConditions[0].status: Unsupported value",
            ),
            (
                json!([{"reason": "R"}]),
                "healthConditions[0].status: Unsupported value",
            ),
            (
                json!([c("Degraded", "R"), c("Degraded", "")]),
                "healthConditions[1].reason: Required value",
            ),
            (
                json!([{"status": "Degraded"}]),
                "healthConditions[0].reason: Required value",
            ),
            (
                json!([c("Degraded", &reason_258)]),
                "healthConditions[0].reason: Too long",
            ),
            (
                json!([c("Degraded", &"r".repeat(257))]),
                "healthConditions[0].reason: Too long",
            ),
            (
                with_message("m".repeat(1025)),
                "healthConditions[0].message: Too long",
            ),
            (
                with_message("é".repeat(513)),
                "healthConditions[0].message: Too long",
            ),
            (many(17), "healthConditions: Too many: 17"),
            (
                json!([c("Degraded", "R"), c("DataLoss", "R"), c("Degraded", "R")]),
                "healthConditions[2]: Duplicate value",
            ),
        ];
        for (conditions, why) in refused {
            let (code, b) = patch_health(&s, health_status(conditions.clone()));
            assert_eq!(code, 422, "{conditions}: {b}");
            assert_eq!(b["reason"], "Invalid", "{b}");
            let message = b["message"].as_str().unwrap_or("");
            assert!(
                message.starts_with("PersistentVolumeClaim \"c\" is invalid: status.healthStatus.")
                    && message.contains(why),
                "{conditions}: {message}"
            );
            assert_eq!(
                stored_pvc(&s)["status"],
                kept,
                "a refused write changed nothing"
            );
        }
        let (code, b) = patch_health(
            &s,
            json!({"healthConditions": [], "lastTransitionTime": "yesterday"}),
        );
        assert_eq!(code, 422, "{b}");
        assert!(
            b["message"]
                .as_str()
                .is_some_and(|m| m.contains("status.healthStatus.lastTransitionTime")),
            "{b}"
        );
    }
}
