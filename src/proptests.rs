//! Property tests for the code that reads or cuts outside text (issues #16, #25): arbitrary
//! input never panics, and round trips hold where they apply. Run by `cargo test` (so by
//! `.ci/test`).
//!
//! Objects from the API server are generated well-shaped (every field of the type the decoder
//! expects) with hostile values inside (any Unicode, empty, long, control characters, extreme
//! numbers, times that are no times), so each one decodes and the typed record code behind the
//! decoder runs on it: each property asserts that its objects decode. Shapeless JSON, which the
//! decoder refuses before any record code runs, is covered on the side.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::config::LogFormat;
use crate::events::{Event, EventType, ObjectRef};
use crate::flags;
use crate::health::{self, Condition, PvcCondition, MAX_CONDITIONS};
use crate::kube::client::{parse_watch_line, status_from_body, WatchEvent, MAX_SERVER_WAIT};
use crate::kube::object::read_page;
use crate::leader::{self, lease_valid, observe, Lease, LeaseRecord};
use crate::logging::{quote_text, render, Bare};
use crate::monitor::decide::{self, checkable};
use crate::monitor::nodes::{affected_claims, NodeRecord, NodeTracker, PodRecord, ReadyState};
use crate::timeutil::{parse_rfc3339, rfc3339, rfc3339_micros};
use crate::watch::{PvPhase, PvRecord, PvWire, PvcRecord, PvcWire, Records, Resource};

/// The CSI driver the generated PVs may belong to.
const DRIVER: &str = "d";

/// Any JSON value, a few levels deep, with strings that include the awkward characters.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A hostile string: any Unicode (newlines included), empty, quotes and control characters,
/// multi-byte characters, or long enough to cross the API's 256 and 1024 byte limits.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "(.|\n){0,12}",
        1 => Just(String::new()),
        1 => "[\"\\\\\\x00-\\x1f =…é😀]{0,8}",
        1 => "[aé😀…]{60,400}",
        1 => "[a-zé]{250,1100}",
    ]
}

/// A hostile string that is never empty (names the decoders require).
fn name() -> impl Strategy<Value = String> {
    text().prop_map(|s| if s.is_empty() { "x".into() } else { s })
}

/// A timestamp field: valid RFC 3339 (seconds or micros), out of range, or any text.
fn time() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..253_402_300_799).prop_map(|s| rfc3339(UNIX_EPOCH + Duration::from_secs(s))),
        (0u64..253_402_300_799_000_000)
            .prop_map(|us| rfc3339_micros(UNIX_EPOCH + Duration::from_micros(us))),
        Just("9999-99-99T99:99:99Z".to_string()),
        Just("0000-01-01T00:00:00.999999999+23:59".to_string()),
        text(),
    ]
}

/// `v` as a JSON string, or the key left out (`None`).
fn opt(v: Option<String>) -> Value {
    v.map_or(Value::Null, Value::from)
}

/// Drops the keys whose value is `null` (the generator's "left out").
fn prune(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, prune(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(prune).collect()),
        other => other,
    }
}

prop_compose! {
    /// A PersistentVolume of `DRIVER` or another one, bound or not, maybe being deleted.
    fn pv_object()(
        name in name(),
        uid in text(),
        rv in text(),
        deleting in prop::option::of(json_value()),
        driver in prop_oneof![3 => Just(DRIVER.to_string()), 1 => text()],
        handle in text(),
        claim in prop::option::of((prop::option::of(text()), prop::option::of(text()), prop::option::of(text()))),
        phase in prop_oneof![3 => Just("Bound".to_string()), 1 => text()],
    ) -> Value {
        let claim = claim.map(|(ns, name, uid)| json!({"namespace": opt(ns), "name": opt(name), "uid": opt(uid)}));
        prune(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "uid": uid, "resourceVersion": rv,
                         "deletionTimestamp": deleting.map(|d| if d.is_null() { json!("") } else { d })},
            "spec": {"csi": {"driver": driver, "volumeHandle": handle, "fsType": "ext4"},
                     "claimRef": claim, "capacity": {"storage": "1Gi"}},
            "status": {"phase": phase},
        }))
    }
}

/// `(status, reason, message)` of one condition in a PVC's `status.healthStatus`.
fn pvc_condition() -> impl Strategy<Value = (String, String, String)> {
    (
        prop_oneof![
            Just(health::DEGRADED.to_string()),
            Just(health::INACCESSIBLE.to_string()),
            Just(health::DATA_LOSS.to_string()),
            text(),
        ],
        text(),
        text(),
    )
}

prop_compose! {
    /// A PersistentVolumeClaim, with or without a `status.healthStatus` of any conditions.
    fn pvc_object()(
        name in name(),
        namespace in name(),
        uid in text(),
        rv in text(),
        volume in prop::option::of(text()),
        health in prop::option::of((prop::collection::vec(pvc_condition(), 0..20), prop::option::of(time()))),
    ) -> Value {
        let health = health.map(|(conds, t)| json!({
            "healthConditions": conds.into_iter()
                .map(|(s, r, m)| json!({"status": s, "reason": r, "message": m}))
                .collect::<Vec<_>>(),
            "lastTransitionTime": opt(t),
        }));
        prune(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": rv},
            "spec": {"volumeName": opt(volume), "accessModes": ["ReadWriteOnce"]},
            "status": {"phase": "Bound", "healthStatus": health},
        }))
    }
}

prop_compose! {
    /// A Node with any conditions (a `Ready` one or not), maybe being deleted.
    fn node_object()(
        name in name(),
        deleting in any::<bool>(),
        conditions in prop::collection::vec((
            prop_oneof![3 => Just("Ready".to_string()), 1 => text()],
            prop_oneof![Just("True".to_string()), Just("False".to_string()), Just("Unknown".to_string()), text()],
            prop::option::of(time()),
        ), 0..4),
    ) -> Value {
        prune(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z")},
            "status": {"conditions": conditions.into_iter()
                .map(|(k, s, t)| json!({"type": k, "status": s, "lastTransitionTime": opt(t)}))
                .collect::<Vec<_>>()},
        }))
    }
}

/// One volume of a pod: a PVC (its claim name), a generic ephemeral volume, or neither.
#[derive(Debug, Clone)]
enum PodVolume {
    Claim(String, String),
    Ephemeral(String),
    Other(String),
}

prop_compose! {
    /// A Pod on some node with any volumes, maybe being deleted.
    fn pod_object()(
        name in name(),
        namespace in name(),
        node in prop::option::of(text()),
        deleting in any::<bool>(),
        volumes in prop::collection::vec(prop_oneof![
            (text(), text()).prop_map(|(v, c)| PodVolume::Claim(v, c)),
            text().prop_map(PodVolume::Ephemeral),
            text().prop_map(PodVolume::Other),
        ], 0..5),
    ) -> (Value, Vec<PodVolume>) {
        let vols: Vec<Value> = volumes.iter().map(|v| match v {
            PodVolume::Claim(n, c) => json!({"name": n, "persistentVolumeClaim": {"claimName": c}}),
            PodVolume::Ephemeral(n) => json!({"name": n, "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}),
            PodVolume::Other(n) => json!({"name": n, "emptyDir": {}}),
        }).collect();
        let obj = prune(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "deletionTimestamp": deleting.then_some("2026-01-01T00:00:00Z")},
            "spec": {"nodeName": opt(node), "volumes": vols, "containers": [{"name": "c", "image": "i"}]},
        }));
        (obj, volumes)
    }
}

prop_compose! {
    /// A core/v1 Event as the API server answers a create or a patch.
    fn event_object()(
        (name, namespace, rv, kind, ins, iname, iuid) in (text(), text(), text(), text(), text(), text(), text()),
        (reason, message, component, host, kind_of) in (text(), text(), text(), text(), text()),
        (first, last) in (time(), time()),
        count in prop_oneof![any::<i64>(), 0i64..100],
    ) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv},
            "involvedObject": {"kind": kind, "namespace": ins, "name": iname, "uid": iuid,
                               "apiVersion": "v1", "resourceVersion": "1", "fieldPath": ""},
            "reason": reason, "message": message,
            "source": {"component": component, "host": host},
            "firstTimestamp": first, "lastTimestamp": last,
            "count": count, "type": kind_of,
            "reportingComponent": component, "reportingInstance": host,
        })
    }
}

prop_compose! {
    /// A coordination.k8s.io/v1 Lease with any holder, duration, times and transitions, and the
    /// user data a PUT must carry back (labels, annotations, finalizers, owners).
    fn lease_object()(
        (name, namespace, rv, uid) in (text(), text(), text(), text()),
        labels in prop::collection::btree_map(text(), text(), 0..3),
        annotations in prop::collection::btree_map(text(), text(), 0..3),
        finalizers in prop::collection::vec(text(), 0..2),
        owner in prop::option::of((text(), text(), any::<bool>())),
        holder in prop::option::of(text()),
        duration in prop::option::of(prop_oneof![any::<i64>(), 0i64..7200]),
        (acquire, renew) in (prop::option::of(time()), prop::option::of(time())),
        transitions in prop::option::of(prop_oneof![any::<i64>(), Just(i64::MAX), 0i64..10]),
        preferred in prop::option::of(text()),
    ) -> Value {
        let owners: Vec<Value> = owner.into_iter().map(|(kind, name, controller)| json!({
            "apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": controller,
        })).collect();
        prune(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": rv, "uid": uid,
                         "labels": labels, "annotations": annotations, "finalizers": finalizers,
                         "ownerReferences": owners},
            "spec": {"holderIdentity": opt(holder), "leaseDurationSeconds": duration,
                     "acquireTime": opt(acquire), "renewTime": opt(renew),
                     "leaseTransitions": transitions, "preferredHolder": opt(preferred)},
        }))
    }
}

/// Decodes `obj` the way the reflector does (bytes → wire form → record); the wire form must
/// decode, since every generated object is well-shaped.
fn decode<W: DeserializeOwned, T>(
    kind: &str,
    obj: &Value,
    record: impl FnOnce(W) -> Option<T>,
) -> Result<Option<T>, TestCaseError> {
    let bytes = obj.to_string();
    serde_json::from_str::<W>(&bytes)
        .map(record)
        .map_err(|e| TestCaseError::fail(format!("{kind} did not decode: {e}: {bytes}")))
}

fn decode_as<T: Resource>(obj: &Value) -> Result<Option<T>, TestCaseError> {
    decode::<T::Wire, T>(T::KIND, obj, T::from_wire)
}

fn decode_pv(obj: &Value) -> Result<Option<PvRecord>, TestCaseError> {
    decode::<PvWire, _>("PersistentVolume", obj, |w| PvRecord::from_wire(w, DRIVER))
}

fn decode_pvc(obj: &Value) -> Result<Option<PvcRecord>, TestCaseError> {
    decode::<PvcWire, _>("PersistentVolumeClaim", obj, PvcRecord::from_wire)
}

/// A driver condition with any status number, reason and message (reasons often repeat, so
/// duplicates are common); some are v1.12 abnormal ones.
fn driver_condition() -> impl Strategy<Value = Condition> {
    prop_oneof![
        6 => (prop_oneof![1i32..=3, any::<i32>()], prop_oneof![Just(String::new()), "[AB]", text()], text())
            .prop_map(|(s, r, m)| Condition::typed(s, r, m)),
        1 => text().prop_map(Condition::legacy),
    ]
}

/// The order [`health::to_pvc`] keeps conditions in when more than 16: most severe first.
fn rank(status: &str) -> u8 {
    match status {
        health::DATA_LOSS => 0,
        health::INACCESSIBLE => 1,
        _ => 2,
    }
}

/// A key/value's value as a call site passes it.
#[derive(Debug, Clone)]
enum KvValue {
    Int(i64),
    UInt(u64),
    Bool(bool),
    /// `k = s.as_str()`, which replaced `k={:?}`: any text.
    Str(String),
    /// `k:% = e`, which replaced `k=\"{}\"`: any text through `Display`.
    Display(String),
    /// `k:% = Bare(w)`, which replaced `k={}` for a word.
    Bare(Bare<String>),
}

fn kv_value() -> impl Strategy<Value = KvValue> {
    prop_oneof![
        any::<i64>().prop_map(KvValue::Int),
        any::<u64>().prop_map(KvValue::UInt),
        any::<bool>().prop_map(KvValue::Bool),
        text().prop_map(KvValue::Str),
        prop_oneof![text(), "[a-z0-9 =/:.-]{0,12}"].prop_map(KvValue::Display),
        "[a-zA-Z_][a-zA-Z0-9_.-]{0,12}"
            .prop_filter("a word", |s| crate::logging::is_bare_word(s))
            .prop_map(|s| KvValue::Bare(Bare(s))),
    ]
}

impl KvValue {
    fn to_value(&self) -> log::kv::Value<'_> {
        match self {
            KvValue::Int(n) => log::kv::Value::from(*n),
            KvValue::UInt(n) => log::kv::Value::from(*n),
            KvValue::Bool(b) => log::kv::Value::from(*b),
            KvValue::Str(s) => log::kv::Value::from(s.as_str()),
            KvValue::Display(s) => log::kv::Value::from_display(s),
            KvValue::Bare(b) => log::kv::Value::from_display(b),
        }
    }

    /// What the format string this call site replaced wrote after `k=`.
    fn old_text(&self) -> String {
        match self {
            KvValue::Int(n) => format!("{n}"),
            KvValue::UInt(n) => format!("{n}"),
            KvValue::Bool(b) => format!("{b}"),
            KvValue::Str(s) => format!("{s:?}"),
            KvValue::Display(s) => format!("\"{s}\""),
            KvValue::Bare(Bare(s)) => s.clone(),
        }
    }

    /// Whether the text line is unambiguous for this value: all but a `Display` value holding
    /// a quote, a backslash or a control character, which the old format wrote raw.
    fn reads_back(&self) -> bool {
        match self {
            KvValue::Display(s) => !s.chars().any(|c| c == '"' || c == '\\' || c.is_control()),
            _ => true,
        }
    }

    /// The value as the JSON line has it, and as the text line reads back.
    fn json(&self) -> Value {
        match self {
            KvValue::Int(n) => json!(n),
            KvValue::UInt(n) => json!(n),
            KvValue::Bool(b) => json!(b),
            KvValue::Str(s) | KvValue::Display(s) | KvValue::Bare(Bare(s)) => json!(s),
        }
    }
}

/// Reads the key/values back out of a text line's tail (` k=v k2="v 2"`) as a reader of the
/// log would: a quoted value ends at the first unescaped quote and is unescaped as Rust
/// escapes it; a bare one ends at the next space and reads as a number, a boolean or a word.
fn read_text_pairs(mut s: &str) -> Result<Vec<(String, Value)>, String> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let rest = s
            .strip_prefix(' ')
            .ok_or(format!("no space before {s:?}"))?;
        let (key, rest) = rest.split_once('=').ok_or(format!("no = in {rest:?}"))?;
        if let Some(quoted) = rest.strip_prefix('"') {
            let (value, after) = unescape(quoted)?;
            out.push((key.to_string(), json!(value)));
            s = after;
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            let word = &rest[..end];
            let value = if let Ok(n) = word.parse::<i64>() {
                json!(n)
            } else if let Ok(n) = word.parse::<u64>() {
                json!(n)
            } else if let Ok(b) = word.parse::<bool>() {
                json!(b)
            } else {
                json!(word)
            };
            out.push((key.to_string(), value));
            s = &rest[end..];
        }
    }
    Ok(out)
}

/// The text of a quoted value up to its closing quote, and what follows that quote.
fn unescape(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('0') => out.push('\0'),
                Some(c @ ('\\' | '"' | '\'')) => out.push(c),
                Some('u') => {
                    let hex: String = chars
                        .by_ref()
                        .map(|(_, c)| c)
                        .skip(1)
                        .take_while(|c| *c != '}')
                        .collect();
                    let code = u32::from_str_radix(&hex, 16).map_err(|e| format!("{e}: {hex}"))?;
                    out.push(char::from_u32(code).ok_or(format!("not a char: {code}"))?);
                }
                other => return Err(format!("unknown escape {other:?}")),
            },
            c if c.is_control() => return Err(format!("raw control character {c:?}")),
            c => out.push(c),
        }
    }
    Err(format!("unterminated: {s:?}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn go_durations_round_trip(n in any::<i64>()) {
        let s = flags::go_duration_string(n);
        prop_assert_eq!(flags::parse_go_duration(&s), Ok(n), "{}", s);
    }

    #[test]
    fn go_duration_parser_never_panics(s in ".{0,24}", t in "[-+0-9.a-zµ]{0,24}") {
        let _ = flags::parse_go_duration(&s);
        let _ = flags::parse_go_duration(&t);
    }

    #[test]
    fn flag_normaliser_never_panics(
        args in prop::collection::vec(
            prop_oneof![
                ".{0,16}",
                "-{1,3}[a-z-]{0,24}(=[-+0-9.a-zA-Z:/]{0,12})?",
                Just("--kube-api-qps=1e-20".to_string()),
                Just("--worker-threads=18446744073709551615".to_string()),
                Just("--leader-election-lease-duration=2562047h47m16.854775807s".to_string()),
            ],
            0..6,
        )
    ) {
        let mut argv = vec!["hm".to_string()];
        argv.extend(args);
        let _ = flags::parse(&argv);
    }

    #[test]
    fn rfc3339_round_trips(secs in 0u64..253_402_300_799, micros in 0u32..1_000_000) {
        let t = UNIX_EPOCH + Duration::from_secs(secs);
        prop_assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        let t = t + Duration::from_micros(micros.into());
        prop_assert_eq!(parse_rfc3339(&rfc3339_micros(t)), Some(t));
    }

    #[test]
    fn rfc3339_parser_never_panics(
        s in ".{0,40}",
        t in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9:.+-Zz]{0,24}",
        u in time(),
    ) {
        let _ = parse_rfc3339(&s);
        let _ = parse_rfc3339(&t);
        let _ = parse_rfc3339(&u);
    }

    #[test]
    fn status_bodies_never_panic_and_waits_stay_bounded(
        body in prop::collection::vec(any::<u8>(), 0..256),
        v in json_value(),
        secs in any::<u64>(),
        code in any::<u16>(),
        message in text(),
    ) {
        let _ = status_from_body(code, &body, "");
        let _ = status_from_body(code, v.to_string().as_bytes(), "");
        let st = json!({"kind": "Status", "code": v, "message": message, "details": {"retryAfterSeconds": secs}});
        let s = status_from_body(code, st.to_string().as_bytes(), "");
        prop_assert!(s.retry_after.is_none_or(|w| w <= MAX_SERVER_WAIT));
    }

    /// Watch lines: shapeless bytes are refused without a panic; a line carrying a well-shaped
    /// object gives that object back, and it decodes to its record.
    #[test]
    fn watch_lines_never_panic_and_carry_their_objects(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        kind in prop_oneof![Just("ADDED"), Just("MODIFIED"), Just("DELETED"), Just("BOOKMARK"), Just("ERROR"), Just("?")],
        object in json_value(),
        pvc in pvc_object(),
    ) {
        let _ = parse_watch_line(&bytes);
        let line = json!({"type": kind, "object": object}).to_string();
        let _ = parse_watch_line(line.as_bytes());
        let line = json!({"type": "MODIFIED", "object": pvc}).to_string();
        let raw = match parse_watch_line(line.as_bytes()) {
            Ok(WatchEvent::Modified(raw)) => raw,
            other => return Err(TestCaseError::fail(format!("{other:?}: {line}"))),
        };
        let rec = decode_pvc(&serde_json::from_str(raw.get()).unwrap())?;
        prop_assert!(rec.is_some(), "{}", line);
    }

    /// List pages: shapeless bytes and items are refused without a panic; a page of well-shaped
    /// objects hands every item over, each decoding to its record.
    #[test]
    fn list_pages_never_panic_and_hand_over_every_item(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        junk in prop::collection::vec(json_value(), 0..4),
        meta in json_value(),
        pvs in prop::collection::vec(pv_object(), 0..4),
        cont in text(),
    ) {
        let _ = read_page(&bytes[..], 1 << 20, &mut |_| {});
        let page = json!({"metadata": meta, "items": junk}).to_string();
        let _ = read_page(page.as_bytes(), 1 << 20, &mut |_| {});
        let page = json!({"metadata": {"resourceVersion": "7", "continue": cont}, "items": pvs}).to_string();
        let mut seen = Vec::new();
        let meta = read_page(page.as_bytes(), 1 << 20, &mut |raw| {
            seen.push(decode_pv(&serde_json::from_str(raw.get()).unwrap()).map(|_| ()));
        });
        prop_assert!(meta.is_ok(), "{:?}: {}", meta, page);
        prop_assert_eq!(seen.len(), pvs.len());
        for s in seen {
            s?;
        }
    }

    /// PVs: every one decodes; the record exists exactly for a PV of our driver with a handle,
    /// keeps what was sent, and the monitor's decisions about it hold the API's limits.
    #[test]
    fn pv_records_decode_and_feed_the_decisions(
        obj in pv_object(),
        conds in prop::collection::vec(driver_condition(), 0..4),
    ) {
        let rec = decode_pv(&obj)?;
        let ours = obj["spec"]["csi"]["driver"] == DRIVER
            && obj["spec"]["csi"]["volumeHandle"].as_str().is_some_and(|h| !h.is_empty());
        prop_assert_eq!(rec.is_some(), ours, "{}", obj);
        prop_assert_eq!(PvRecord::from_object(&obj, DRIVER), rec.clone());
        let Some(pv) = rec else { return Ok(()) };
        // Issue #23: the compact record keeps every field the monitor reads, exactly.
        prop_assert_eq!(Some(pv.name()), obj["metadata"]["name"].as_str());
        prop_assert_eq!(Some(pv.volume_handle()), obj["spec"]["csi"]["volumeHandle"].as_str());
        prop_assert_eq!(pv.deleting(), obj["metadata"].get("deletionTimestamp").is_some());
        prop_assert_eq!(
            pv.phase(),
            PvPhase::parse(obj["status"]["phase"].as_str().unwrap_or_default())
        );
        let claim = &obj["spec"]["claimRef"];
        match claim["name"].as_str().filter(|n| !n.is_empty()) {
            Some(name) => {
                let c = pv.claim();
                prop_assert!(c.is_some(), "{}", obj);
                let c = c.unwrap();
                prop_assert_eq!(c.name, name);
                prop_assert_eq!(c.namespace, claim["namespace"].as_str().unwrap_or_default());
                let uid = claim["uid"].as_str().unwrap_or_default();
                prop_assert_eq!(c.uid.to_string(), uid);
                prop_assert!(c.uid.is(uid));
            }
            None => prop_assert!(pv.claim().is_none()),
        }
        let _ = checkable(&pv);
        // The handle reaches the API in the missing volume's condition message.
        let message = decide::missing_message(pv.volume_handle(), DRIVER);
        prop_assert!(message.contains(pv.volume_handle()));
        let mut all = conds;
        all.push(Condition::typed(2, decide::REASON_NOT_FOUND, message));
        let (mapped, _) = health::to_pvc(&all);
        for c in &mapped {
            prop_assert!(c.reason.len() <= health::MAX_REASON_BYTES);
            prop_assert!(c.message.len() <= health::MAX_MESSAGE_BYTES);
        }
        let _ = health::event_message(&all, &mapped);
    }

    /// PVCs: every one decodes with its name, namespace and health as sent; the status write
    /// and the Event built on it take any values.
    #[test]
    fn pvc_records_decode_and_feed_status_writes_and_events(
        obj in pvc_object(),
        conds in prop::collection::vec(driver_condition(), 0..20),
        now in time(),
    ) {
        let rec = decode_pvc(&obj)?;
        prop_assert!(rec.is_some(), "{}", obj);
        let pvc = rec.unwrap();
        prop_assert_eq!(PvcRecord::from_object(&obj), Some(pvc.clone()));
        // Issue #23: the compact record keeps every field the monitor reads, exactly.
        prop_assert_eq!(Some(pvc.name()), obj["metadata"]["name"].as_str());
        prop_assert_eq!(Some(pvc.namespace()), obj["metadata"]["namespace"].as_str());
        prop_assert_eq!(pvc.key(), format!("{}/{}", pvc.namespace(), pvc.name()));
        let meta = &obj["metadata"];
        prop_assert_eq!(pvc.uid().to_string(), meta["uid"].as_str().unwrap_or_default());
        prop_assert_eq!(
            pvc.resource_version().to_string(),
            meta["resourceVersion"].as_str().unwrap_or_default()
        );
        prop_assert_eq!(pvc.volume_name(), obj["spec"]["volumeName"].as_str().unwrap_or_default());
        let sent = obj["status"]["healthStatus"]["healthConditions"].as_array();
        prop_assert_eq!(pvc.health().map_or(0, |h| h.conditions.len()), sent.map_or(0, Vec::len));
        if let (Some(h), Some(sent)) = (pvc.health(), sent) {
            for (got, want) in h.conditions.iter().zip(sent) {
                prop_assert_eq!(Some(got.status.as_str()), want["status"].as_str());
                prop_assert_eq!(Some(got.reason.as_str()), want["reason"].as_str());
                prop_assert_eq!(Some(got.message.as_str()), want["message"].as_str());
            }
        }
        let (desired, _) = health::to_pvc(&conds);
        if let Some(Some(h)) = health::status_write(pvc.health(), &desired, &now) {
            prop_assert_eq!(&h.conditions, &desired);
        }
        let message = health::event_message(&conds, &desired);
        let object = ObjectRef::pvc(&pvc);
        let now = SystemTime::now();
        let event = Event::new("c", &object, EventType::Warning, decide::REASON_ABNORMAL, &message, now);
        let body = serde_json::to_value(event.create_body()).unwrap();
        prop_assert_eq!(body["involvedObject"]["name"].as_str(), Some(pvc.name()));
        let _ = (event.event_key(), event.spam_key(), event.aggregate_key(), event.patch_body());
    }

    /// Nodes: every one decodes; its Ready state is the first `Ready` condition's; the tracker
    /// takes any set of them at any time, and fails none before the timeout.
    #[test]
    fn node_records_decode_and_feed_the_tracker(
        objs in prop::collection::vec(node_object(), 1..4),
        later in 0u64..1_000_000,
    ) {
        let mut nodes = Records::new();
        for obj in &objs {
            let rec = decode_as::<NodeRecord>(obj)?;
            prop_assert!(rec.is_some(), "{}", obj);
            let node = rec.unwrap();
            let ready = obj["status"]["conditions"].as_array().into_iter().flatten()
                .find(|c| c["type"] == "Ready");
            let want = match ready.map(|c| c["status"].as_str()) {
                None => ReadyState::Missing,
                Some(Some("True")) => ReadyState::True,
                Some(Some("False")) => ReadyState::False,
                Some(_) => ReadyState::Unknown,
            };
            prop_assert_eq!(node.ready, want, "{}", obj);
            nodes.insert(node);
        }
        let mut tracker = NodeTracker::new();
        let now = SystemTime::now();
        let timeout = Duration::from_secs(300);
        for t in tracker.tick(now, &nodes, timeout) {
            // At the first tick only a node being deleted can have failed.
            prop_assert!(matches!(t, crate::monitor::nodes::Transition::Failed { deleted: true, .. }), "{:?}", t);
        }
        let _ = tracker.tick(now + Duration::from_secs(later), &nodes, timeout);
        let _ = tracker.next_deadline(timeout);
        let _ = tracker.tick(now, &Records::new(), timeout);
    }

    /// Pods: every one decodes; the record exists exactly when a volume names a claim, and
    /// holds each claim name (`<pod>-<volume>` for an ephemeral one) once.
    #[test]
    fn pod_records_decode_and_feed_the_claim_lookup(pod in pod_object(), pv in pv_object()) {
        let (obj, volumes) = pod;
        let rec = decode_as::<PodRecord>(&obj)?;
        let pod_name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let mut want: Vec<String> = volumes.iter().filter_map(|v| match v {
            PodVolume::Claim(_, c) if !c.is_empty() => Some(c.clone()),
            PodVolume::Ephemeral(n) if !n.is_empty() => Some(format!("{pod_name}-{n}")),
            _ => None,
        }).collect();
        want.sort();
        want.dedup();
        prop_assert_eq!(rec.is_some(), !want.is_empty(), "{}", obj);
        let Some(rec) = rec else { return Ok(()) };
        let got: Vec<String> = rec.claims.iter().map(|c| c.to_string()).collect();
        prop_assert_eq!(got, want);
        let key = format!("{}/{pod_name}", obj["metadata"]["namespace"].as_str().unwrap_or_default());
        prop_assert_eq!(&*rec.key, key.as_str());
        let node = rec.node_name.to_string();
        let pods: Records<PodRecord> = [rec].into_iter().collect();
        let pvs: Records<PvRecord> = PvRecord::from_object(&pv, DRIVER).into_iter().collect();
        let _ = affected_claims(&node, &pods, &pvs);
    }

    /// Events the API server answers: every one reads back; what we would send again from it
    /// reads back the same (our create body round-trips through the server's form).
    #[test]
    fn event_answers_read_back_and_round_trip(obj in event_object()) {
        let mut event = Event::from_server(&obj);
        prop_assert_eq!(event.reason.as_str(), obj["reason"].as_str().unwrap());
        prop_assert_eq!(event.message.as_str(), obj["message"].as_str().unwrap());
        let count = obj["count"].as_i64().filter(|c| i32::try_from(*c).is_ok());
        prop_assert_eq!(i64::from(event.count), count.unwrap_or(0));
        event.resource_version.clear();
        let body = serde_json::to_value(event.create_body()).unwrap();
        prop_assert_eq!(Event::from_server(&body), event.clone());
        let _ = (event.event_key(), event.spam_key(), event.aggregate_key(), event.patch_body());
    }

    /// Leases: every one decodes with its user data; the election's decisions take any holder,
    /// duration and transitions; what we write back keeps the user data and decodes again.
    #[test]
    fn lease_records_decode_and_feed_the_election(obj in lease_object(), me in text(), later in 0u32..7200) {
        let lease: Lease = serde_json::from_value(obj.clone())
            .map_err(|e| TestCaseError::fail(format!("{e}: {obj}")))?;
        prop_assert_eq!(lease.metadata.labels.len(), obj["metadata"]["labels"].as_object().map_or(0, |m| m.len()));
        prop_assert_eq!(lease.spec.lease_duration_seconds, obj["spec"]["leaseDurationSeconds"].as_i64());
        let rec = LeaseRecord::from_lease(&lease);
        let now = Instant::now();
        let o = observe(None, rec.clone(), now);
        let _ = lease_valid(&o, now + Duration::from_secs(later.into()));
        let decision = leader::decide(Some(&o), now, &me);
        let next = leader::next_record(decision, Some(&rec), &me, Duration::from_secs(15), SystemTime::now());
        if let Some(next) = next {
            let update = leader::lease_for_update(&lease, &BTreeMap::new(), &next);
            prop_assert_eq!(&update.metadata.annotations, &lease.metadata.annotations);
            prop_assert_eq!(&update.metadata.owner_references, &lease.metadata.owner_references);
            let back: Lease = serde_json::from_value(serde_json::to_value(&update).unwrap()).unwrap();
            prop_assert_eq!(back.metadata, update.metadata);
            prop_assert_eq!(back.spec, update.spec);
        }
        let _ = leader::release_record(&rec, SystemTime::now());
        let _ = leader::leader_event(&lease, "l", "ns", &me, "became leader", SystemTime::now());
    }

    /// `truncate` keeps what fits, cuts at a character boundary and says so with `…`, never
    /// going over the limit (any limit that holds the ellipsis).
    #[test]
    fn truncation_cuts_at_a_char_boundary_within_the_limit(
        s in text(),
        max in prop_oneof![Just(health::MAX_REASON_BYTES), Just(health::MAX_MESSAGE_BYTES), 3usize..64],
    ) {
        let (out, cut) = health::truncate(&s, max);
        prop_assert!(out.len() <= max, "{} > {}", out.len(), max);
        prop_assert_eq!(cut, s.len() > max);
        if !cut {
            prop_assert_eq!(out, s);
        } else {
            let kept = out.strip_suffix('…').expect("ends in an ellipsis");
            prop_assert!(s.starts_with(kept));
            // As much as fits: the next character would not.
            let next = s[kept.len()..].chars().next().map_or(0, char::len_utf8);
            prop_assert!(kept.len() + next + '…'.len_utf8() > max);
        }
    }

    /// `to_pvc`: whatever the driver sends, the API's form: known statuses, reasons set, one
    /// entry per (status, reason), sorted, strings within the limits, at most 16 kept (the most
    /// severe), and the counts of what was mended add up.
    #[test]
    fn driver_conditions_map_to_what_the_api_accepts(
        conds in prop::collection::vec(driver_condition(), 0..40),
    ) {
        let (out, mended) = health::to_pvc(&conds);
        // What the mapping should hold: each typed condition's key, the last one winning.
        let mut keys: BTreeMap<(String, String), String> = BTreeMap::new();
        let mut typed = 0;
        for c in &conds {
            let health::Severity::Typed(t) = c.severity else { continue };
            typed += 1;
            let status = health::status_name(t).unwrap_or(health::DEGRADED).to_string();
            let reason = if c.reason.is_empty() { status.clone() } else { c.reason.clone() };
            let reason = health::truncate(&reason, health::MAX_REASON_BYTES).0;
            keys.insert((status, reason), health::truncate(&c.message, health::MAX_MESSAGE_BYTES).0);
        }
        prop_assert_eq!(out.len(), keys.len().min(MAX_CONDITIONS));
        prop_assert_eq!(mended.dropped, keys.len().saturating_sub(MAX_CONDITIONS));
        prop_assert_eq!(mended.duplicates, typed - keys.len());
        let key = |c: &PvcCondition| (c.status.clone(), c.reason.clone());
        prop_assert!(out.windows(2).all(|w| key(&w[0]) < key(&w[1])), "sorted, no duplicates: {:?}", out);
        for c in &out {
            prop_assert!([health::DEGRADED, health::INACCESSIBLE, health::DATA_LOSS].contains(&c.status.as_str()));
            prop_assert!(!c.reason.is_empty() && c.reason.len() <= health::MAX_REASON_BYTES);
            prop_assert!(c.message.len() <= health::MAX_MESSAGE_BYTES);
            prop_assert_eq!(keys.get(&key(c)), Some(&c.message));
        }
        // The most severe are kept: nothing left out is more severe than anything kept.
        let worst_kept = out.iter().map(|c| rank(&c.status)).max().unwrap_or(0);
        let dropped = keys.keys().filter(|k| !out.iter().any(|c| key(c) == **k));
        for (s, _) in dropped {
            prop_assert!(rank(s) >= worst_kept, "{} left out while {:?} kept", s, out);
        }
    }

    /// Any record, whatever its message and key/values: the JSON line is one object whose
    /// `msg` is the message and whose fields are exactly the key/values, typed (nothing is
    /// read out of the message); the text line is the message followed by the key/values
    /// byte for byte as the format strings they replaced wrote them, and it reads back to the
    /// JSON line's fields wherever the old format was unambiguous (every value but a `:%`
    /// capture holding a quote, a backslash or a control character).
    #[test]
    fn log_text_and_json_lines_carry_the_same_fields(
        msg in prop_oneof![text(), "[a-z ]{0,8}( [a-z]{1,3}=(\"[a-z ]{0,3}\"|[0-9]{1,3})){1,3}"],
        pairs in prop::collection::vec(("[a-zA-Z_][a-zA-Z0-9_]{0,8}", kv_value()), 0..5),
    ) {
        // `v` is the reserved verbosity key and `error` is written as `err` in JSON; keys are
        // distinct, as at a call site.
        let mut seen = std::collections::HashSet::new();
        let pairs: Vec<_> = pairs
            .into_iter()
            .filter(|(k, _)| k != "v" && k != "error" && seen.insert(k.clone()))
            .collect();
        let kvs: Vec<(&str, log::kv::Value)> =
            pairs.iter().map(|(k, v)| (k.as_str(), v.to_value())).collect();
        let kvs = kvs.as_slice();
        let now = SystemTime::now();
        let line = |format| {
            render(
                format,
                &log::Record::builder()
                    .level(log::Level::Warn)
                    .args(format_args!("{msg}"))
                    .file(Some("src/x.rs"))
                    .line(Some(1))
                    .key_values(&kvs)
                    .build(),
                now,
            )
        };
        let want: Vec<(String, Value)> = pairs.iter().map(|(k, v)| (k.clone(), v.json())).collect();

        let json_line = line(LogFormat::Json);
        prop_assert!(!json_line.contains('\n'));
        let j: Value = serde_json::from_str(&json_line)
            .map_err(|e| TestCaseError::fail(format!("{e}: {json_line}")))?;
        let mut got = j.as_object().cloned().unwrap_or_default();
        prop_assert_eq!(got.remove("msg"), Some(json!(msg)));
        for k in ["ts", "caller", "v"] {
            prop_assert!(got.remove(k).is_some(), "{} in {}", k, json_line);
        }
        let want_map: serde_json::Map<String, Value> = want.iter().cloned().collect();
        prop_assert_eq!(&got, &want_map, "{}", json_line);

        let text_line = line(LogFormat::Text);
        let tail = text_line
            .split_once("] ")
            .and_then(|(_, t)| t.strip_prefix(msg.as_str()))
            .ok_or_else(|| TestCaseError::fail(format!("no message in {text_line:?}")))?;
        let old: String = pairs.iter().map(|(k, v)| format!(" {k}={}", v.old_text())).collect();
        prop_assert_eq!(tail, old.as_str());
        if pairs.iter().all(|(_, v)| v.reads_back()) {
            prop_assert!(!tail.contains('\n'), "{:?}", tail);
            let read = read_text_pairs(tail)
                .map_err(|e| TestCaseError::fail(format!("{e}: {tail:?}")))?;
            prop_assert_eq!(read, want, "{:?}", tail);
        }
    }

    /// Any `&str` value quotes to one line that reads back to it: the only raw quotes are the
    /// two that delimit it, and no control character is left raw.
    #[test]
    fn quoted_log_values_read_back(s in text()) {
        let q = quote_text(&s);
        prop_assert!(q.starts_with('"'));
        let (back, after) = unescape(&q[1..]).map_err(|e| TestCaseError::fail(format!("{e}: {q:?}")))?;
        prop_assert_eq!(back, s);
        prop_assert_eq!(after, "");
    }

    #[test]
    fn any_lease_duration_is_safe(
        secs in prop_oneof![any::<i64>(), 0i64..7200],
        later in prop_oneof![any::<u32>(), 0u32..7200],
    ) {
        let now = Instant::now();
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "l", "namespace": "n"},
            "spec": {"holderIdentity": "h", "leaseDurationSeconds": secs},
        })).unwrap();
        let o = observe(None, LeaseRecord::from_lease(&lease), now);
        let valid = lease_valid(&o, now + Duration::from_secs(later.into()));
        let honoured = secs.min(crate::leader::MAX_LEASE_DURATION.as_secs() as i64);
        prop_assert_eq!(valid, secs > 0 && i64::from(later) < honoured);
    }
}
