//! Property tests for the parsers that read outside text (issue #16): arbitrary input never
//! panics, and round trips hold where they apply. Run by `cargo test` (so by `.ci/test`).

use std::time::{Duration, Instant, UNIX_EPOCH};

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::flags;
use crate::kube::client::{parse_watch_line, status_from_body, MAX_SERVER_WAIT};
use crate::kube::object::read_page;
use crate::leader::{lease_valid, observe, Lease, LeaseRecord};
use crate::monitor::nodes::{NodeRecord, PodRecord};
use crate::timeutil::{parse_rfc3339, rfc3339, rfc3339_micros};
use crate::watch::{PvRecord, PvcRecord, Resource};

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

/// A Kubernetes-shaped object whose every field may hold anything: the decoders see the
/// names they look for, with values of any type.
fn k8s_object() -> impl Strategy<Value = Value> {
    (
        json_value(),
        json_value(),
        json_value(),
        json_value(),
        json_value(),
        json_value(),
    )
        .prop_map(|(name, ns, rv, spec_a, spec_b, status)| {
            json!({
                "metadata": {"name": name, "namespace": ns, "uid": "u", "resourceVersion": rv},
                "spec": {
                    "csi": {"driver": "d", "volumeHandle": spec_a},
                    "claimRef": spec_b,
                    "volumeName": spec_a,
                    "nodeName": spec_b,
                    "holderIdentity": spec_a,
                    "leaseDurationSeconds": spec_b,
                    "renewTime": spec_a,
                    "acquireTime": spec_b,
                    "leaseTransitions": spec_a,
                    "volumes": spec_b,
                },
                "status": status,
            })
        })
}

fn decode_as<T: Resource>(bytes: &[u8]) {
    if let Ok(w) = serde_json::from_slice::<T::Wire>(bytes) {
        let _ = T::from_wire(w);
    }
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
    fn rfc3339_parser_never_panics(s in ".{0,40}", t in "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9:.+-Zz]{0,24}") {
        let _ = parse_rfc3339(&s);
        let _ = parse_rfc3339(&t);
    }

    #[test]
    fn status_bodies_never_panic_and_waits_stay_bounded(
        body in prop::collection::vec(any::<u8>(), 0..256),
        v in json_value(),
        secs in any::<u64>(),
        code in any::<u16>(),
    ) {
        let _ = status_from_body(code, &body, "");
        let _ = status_from_body(code, v.to_string().as_bytes(), "");
        let st = json!({"kind": "Status", "code": v, "details": {"retryAfterSeconds": secs}});
        let s = status_from_body(code, st.to_string().as_bytes(), "");
        prop_assert!(s.retry_after.is_none_or(|w| w <= MAX_SERVER_WAIT));
    }

    #[test]
    fn watch_lines_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        kind in prop_oneof![Just("ADDED"), Just("MODIFIED"), Just("DELETED"), Just("BOOKMARK"), Just("ERROR"), Just("?")],
        object in json_value(),
    ) {
        let _ = parse_watch_line(&bytes);
        let line = json!({"type": kind, "object": object}).to_string();
        let _ = parse_watch_line(line.as_bytes());
    }

    #[test]
    fn list_pages_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        items in prop::collection::vec(k8s_object(), 0..4),
        meta in json_value(),
    ) {
        let _ = read_page(&bytes[..], 1 << 20, &mut |_| {});
        let page = json!({"metadata": meta, "items": items}).to_string();
        let _ = read_page(page.as_bytes(), 1 << 20, &mut |_| {});
    }

    #[test]
    fn records_never_panic(
        obj in k8s_object(),
        bytes in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let text = obj.to_string();
        for b in [text.as_bytes(), &bytes[..]] {
            let _ = PvRecord::from_object(&serde_json::from_slice(b).unwrap_or(Value::Null), "d");
            let _ = PvcRecord::from_object(&serde_json::from_slice(b).unwrap_or(Value::Null));
            decode_as::<NodeRecord>(b);
            decode_as::<PodRecord>(b);
            if let Ok(lease) = serde_json::from_slice::<Lease>(b) {
                let rec = LeaseRecord::from_lease(&lease);
                let now = Instant::now();
                let o = observe(None, rec, now);
                let _ = lease_valid(&o, now + Duration::from_secs(3600));
            }
        }
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
