//! The core/v1 Event as client-go's legacy recorder builds it: construction, the correlation
//! keys, and the exact JSON it puts on the wire (create body and strategic-merge patch).

use crate::kube::object::zero_if_malformed;
use crate::timeutil;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// The wire form of a zero `metav1.Time`-typed `lastTimestamp` in client-go's patch base: the
/// old side of its two-way merge patch carries `time.Unix(0, 0)`, so a new value equal to it
/// produces no `lastTimestamp` key.
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// A core/v1 Event, holding only the fields the legacy recorder sets or reads back. Timestamps
/// are kept in their wire form (seconds precision); an empty string is a zero `metav1.Time`
/// and goes on the wire as `null`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Event {
    pub name: String,
    pub namespace: String,
    pub resource_version: String,
    pub involved: Involved,
    pub reason: String,
    pub message: String,
    pub source_component: String,
    pub source_host: String,
    pub first_timestamp: String,
    pub last_timestamp: String,
    pub count: i32,
    pub event_type: String,
    pub reporting_controller: String,
    pub reporting_instance: String,
}

/// `involvedObject`: a core/v1 ObjectReference.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Involved {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub api_version: String,
    pub resource_version: String,
    pub field_path: String,
}

impl Event {
    /// What `recorderImpl.generateEvent` + `makeEvent` produce for one `Event()` call.
    pub fn new(
        component: &str,
        object: &super::ObjectRef,
        event_type: super::EventType,
        reason: &str,
        message: &str,
        now: SystemTime,
    ) -> Event {
        let stamp = timeutil::rfc3339(now);
        Event {
            name: generate_event_name(&object.name, timeutil::unix_nanos(now)),
            namespace: if object.namespace.is_empty() {
                "default".to_string()
            } else {
                object.namespace.clone()
            },
            resource_version: String::new(),
            involved: Involved {
                kind: object.kind.clone(),
                namespace: object.namespace.clone(),
                name: object.name.clone(),
                uid: object.uid.clone(),
                api_version: object.api_version.clone(),
                resource_version: object.resource_version.clone(),
                field_path: String::new(),
            },
            reason: reason.to_string(),
            message: message.to_string(),
            source_component: component.to_string(),
            // The recorder copies source.host into reportingInstance; our source host is empty.
            source_host: String::new(),
            first_timestamp: stamp.clone(),
            last_timestamp: stamp,
            count: 1,
            event_type: event_type.as_str().to_string(),
            reporting_controller: component.to_string(),
            reporting_instance: String::new(),
        }
    }

    /// De-duplication key (client-go `getEventKey`): everything but resourceVersion and time.
    pub fn event_key(&self) -> String {
        let i = &self.involved;
        [
            &self.source_component,
            &self.source_host,
            &i.kind,
            &i.namespace,
            &i.name,
            &i.field_path,
            &i.uid,
            &i.api_version,
            &self.event_type,
            &self.reason,
            &self.message,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect()
    }

    /// Spam-filter key: source + object + type (reason and message are not part of it).
    pub fn spam_key(&self) -> String {
        let i = &self.involved;
        [
            &self.source_component,
            &self.source_host,
            &i.kind,
            &i.namespace,
            &i.name,
            &i.uid,
            &i.api_version,
            &self.event_type,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect()
    }

    /// Aggregation key (client-go `EventAggregatorByReasonFunc`); the local key is the message.
    pub fn aggregate_key(&self) -> String {
        let i = &self.involved;
        [
            &self.source_component,
            &self.source_host,
            &i.kind,
            &i.namespace,
            &i.name,
            &i.uid,
            &i.api_version,
            &self.event_type,
            &self.reason,
            &self.reporting_controller,
            &self.reporting_instance,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect()
    }

    /// The POST body: what Go's `encoding/json` renders of a `v1.Event` (`omitempty` honoured
    /// where the Go tags have it; zero times and `eventTime` as `null`;
    /// `reportingComponent`/`reportingInstance` always present), keys in sorted order as this
    /// sidecar has always written them. resourceVersion is never sent: client-go clears it
    /// before every create.
    pub fn create_body(&self) -> EventBody<'_> {
        let i = &self.involved;
        EventBody {
            api_version: "v1",
            count: self.count,
            event_time: (),
            first_timestamp: time_or_null(&self.first_timestamp),
            involved_object: InvolvedBody {
                api_version: &i.api_version,
                field_path: &i.field_path,
                kind: &i.kind,
                name: &i.name,
                namespace: &i.namespace,
                resource_version: &i.resource_version,
                uid: &i.uid,
            },
            kind: "Event",
            last_timestamp: time_or_null(&self.last_timestamp),
            message: &self.message,
            metadata: MetaBody {
                name: &self.name,
                namespace: &self.namespace,
            },
            reason: &self.reason,
            reporting_component: &self.reporting_controller,
            reporting_instance: &self.reporting_instance,
            source: SourceBody {
                component: &self.source_component,
                host: &self.source_host,
            },
            event_type: &self.event_type,
        }
    }

    /// The strategic-merge patch client-go computes for a repeat: the two-way diff between this
    /// event and a copy with `count` 0, `lastTimestamp` at the Unix epoch and `message` empty.
    /// Keys in the order Go marshals a map (sorted).
    pub fn patch_body(&self) -> EventPatch {
        EventPatch {
            count: self.count,
            last_timestamp: (self.last_timestamp != EPOCH)
                .then(|| time_or_null(&self.last_timestamp).map(str::to_string)),
            message: self.message.clone(),
        }
    }

    /// Read back what the API server answered (tests: the tree a fake sink keeps). Missing or
    /// mistyped fields read as their zero value, like Go decoding into the struct; never fails.
    #[cfg(test)]
    pub fn from_server(v: &serde_json::Value) -> Event {
        EventAnswer::deserialize(v)
            .map(Event::from)
            .unwrap_or_default()
    }
}

/// [`Event::create_body`]'s wire form. The fields are in sorted order: serialized in
/// declaration order, that gives the bytes the API server has always received from us.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct EventBody<'a> {
    api_version: &'static str,
    #[serde(skip_serializing_if = "is_zero")]
    count: i32,
    /// Always `null` (a zero `metav1.MicroTime`).
    event_time: (),
    first_timestamp: Option<&'a str>,
    involved_object: InvolvedBody<'a>,
    kind: &'static str,
    last_timestamp: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    metadata: MetaBody<'a>,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    reporting_component: &'a str,
    reporting_instance: &'a str,
    source: SourceBody<'a>,
    #[serde(rename = "type", skip_serializing_if = "str::is_empty")]
    event_type: &'a str,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct InvolvedBody<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    api_version: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    field_path: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    kind: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    namespace: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    resource_version: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    uid: &'a str,
}

#[derive(Serialize, Debug)]
struct MetaBody<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    namespace: &'a str,
}

#[derive(Serialize, Debug)]
struct SourceBody<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    component: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    host: &'a str,
}

/// [`Event::patch_body`]'s wire form: only what changed against client-go's patch base.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EventPatch {
    #[serde(skip_serializing_if = "is_zero")]
    count: i32,
    /// `None`: unchanged (left out); `Some(None)`: a zero time (`null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_timestamp: Option<Option<String>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
}

/// The API server's answer to an Event write, the fields [`Event`] keeps. Anything of the wrong
/// shape, the whole answer included, reads as its zero value: the answer only feeds the
/// correlator's memory, and a write that succeeded is never retried over it.
#[derive(Deserialize, Default)]
#[serde(transparent)]
pub struct EventAnswer(#[serde(deserialize_with = "zero_if_malformed")] AnswerFields);

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct AnswerFields {
    #[serde(deserialize_with = "zero_if_malformed")]
    metadata: AnswerMeta,
    #[serde(deserialize_with = "zero_if_malformed")]
    involved_object: AnswerInvolved,
    #[serde(deserialize_with = "zero_if_malformed")]
    reason: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    message: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    source: AnswerSource,
    #[serde(deserialize_with = "zero_if_malformed")]
    first_timestamp: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    last_timestamp: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    count: i32,
    #[serde(rename = "type", deserialize_with = "zero_if_malformed")]
    event_type: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    reporting_component: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    reporting_instance: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct AnswerMeta {
    #[serde(deserialize_with = "zero_if_malformed")]
    name: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    namespace: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    resource_version: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct AnswerInvolved {
    #[serde(deserialize_with = "zero_if_malformed")]
    kind: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    namespace: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    name: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    uid: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    api_version: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    resource_version: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    field_path: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AnswerSource {
    #[serde(deserialize_with = "zero_if_malformed")]
    component: String,
    #[serde(deserialize_with = "zero_if_malformed")]
    host: String,
}

impl From<EventAnswer> for Event {
    fn from(EventAnswer(a): EventAnswer) -> Event {
        Event {
            name: a.metadata.name,
            namespace: a.metadata.namespace,
            resource_version: a.metadata.resource_version,
            involved: Involved {
                kind: a.involved_object.kind,
                namespace: a.involved_object.namespace,
                name: a.involved_object.name,
                uid: a.involved_object.uid,
                api_version: a.involved_object.api_version,
                resource_version: a.involved_object.resource_version,
                field_path: a.involved_object.field_path,
            },
            reason: a.reason,
            message: a.message,
            source_component: a.source.component,
            source_host: a.source.host,
            first_timestamp: a.first_timestamp,
            last_timestamp: a.last_timestamp,
            count: a.count,
            event_type: a.event_type,
            reporting_controller: a.reporting_component,
            reporting_instance: a.reporting_instance,
        }
    }
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// An empty time is a zero `metav1.Time`: `null` on the wire.
fn time_or_null(t: &str) -> Option<&str> {
    Some(t).filter(|t| !t.is_empty())
}

/// `<name>.<lowercase hex nanos>`, or a random UUID when that is not a valid DNS subdomain
/// (client-go `util.GenerateEventName`).
pub fn generate_event_name(object_name: &str, unix_nanos: u128) -> String {
    let name = format!("{object_name}.{unix_nanos:x}");
    if is_dns_subdomain(&name) {
        name
    } else {
        random_uuid()
    }
}

/// RFC 1123 subdomain as apimachinery checks it: at most 253 characters of dot-separated
/// labels, each lowercase alphanumeric at both ends with `-` allowed inside.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            match (b.first(), b.last()) {
                (Some(first), Some(last)) => {
                    alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
                }
                _ => false,
            }
        })
}

fn random_uuid() -> String {
    let hi = timeutil::random_u64();
    let lo = timeutil::random_u64();
    // Version 4, RFC 4122 variant.
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::super::{EventType, ObjectRef};
    use super::*;
    use serde_json::{json, Value};
    use std::time::{Duration, UNIX_EPOCH};

    pub(crate) fn pvc() -> ObjectRef {
        ObjectRef {
            kind: "PersistentVolumeClaim".into(),
            api_version: "v1".into(),
            namespace: "ns1".into(),
            name: "data-0".into(),
            uid: "6a5c0b4e-1111-2222-3333-444455556666".into(),
            resource_version: "4711".into(),
        }
    }

    #[test]
    fn created_event_json_is_exact() {
        let now = UNIX_EPOCH + Duration::new(1_767_323_045, 123_456_789);
        let e = Event::new(
            "csi-pv-monitor-controller-hostpath.csi.k8s.io",
            &pvc(),
            EventType::Warning,
            "VolumeConditionAbnormal",
            "disk gone",
            now,
        );
        let expected = json!({
            "kind": "Event",
            "apiVersion": "v1",
            "metadata": {"name": "data-0.1886caf223f1ff15", "namespace": "ns1"},
            "involvedObject": {
                "kind": "PersistentVolumeClaim",
                "namespace": "ns1",
                "name": "data-0",
                "uid": "6a5c0b4e-1111-2222-3333-444455556666",
                "apiVersion": "v1",
                "resourceVersion": "4711"
            },
            "reason": "VolumeConditionAbnormal",
            "message": "disk gone",
            "source": {"component": "csi-pv-monitor-controller-hostpath.csi.k8s.io"},
            "firstTimestamp": "2026-01-02T03:04:05Z",
            "lastTimestamp": "2026-01-02T03:04:05Z",
            "count": 1,
            "type": "Warning",
            "eventTime": null,
            "reportingComponent": "csi-pv-monitor-controller-hostpath.csi.k8s.io",
            "reportingInstance": ""
        });
        assert_eq!(
            format!("{:x}", 1_767_323_045_123_456_789u128),
            "1886caf223f1ff15"
        );
        assert_eq!(serde_json::to_value(e.create_body()).unwrap(), expected);
        // Byte for byte what the API server received when the body was a `serde_json::Map`
        // (keys sorted).
        assert_eq!(
            serde_json::to_string(&e.create_body()).unwrap(),
            serde_json::to_string(&expected).unwrap()
        );
    }

    #[test]
    fn empty_message_and_namespace_follow_go_omitempty() {
        let mut obj = pvc();
        obj.namespace.clear();
        let e = Event::new(
            "c",
            &obj,
            EventType::Normal,
            "R",
            "",
            UNIX_EPOCH + Duration::from_secs(10),
        );
        let body = serde_json::to_value(e.create_body()).unwrap();
        assert_eq!(body["metadata"]["namespace"], "default");
        assert!(body["involvedObject"].get("namespace").is_none());
        assert!(body.get("message").is_none());
        assert_eq!(body["type"], "Normal");
        let mut repeat = e.clone();
        repeat.count = 3;
        assert_eq!(
            serde_json::to_value(repeat.patch_body()).unwrap(),
            json!({"count": 3, "lastTimestamp": "1970-01-01T00:00:10Z"})
        );
    }

    #[test]
    fn patch_has_count_last_timestamp_message_only() {
        let mut e = Event::new(
            "c",
            &pvc(),
            EventType::Warning,
            "R",
            "m",
            UNIX_EPOCH + Duration::from_secs(1_767_323_045),
        );
        e.count = 7;
        e.first_timestamp = "2025-01-01T00:00:00Z".into();
        assert_eq!(
            serde_json::to_string(&e.patch_body()).unwrap(),
            r#"{"count":7,"lastTimestamp":"2026-01-02T03:04:05Z","message":"m"}"#
        );
    }

    #[test]
    fn event_names() {
        let cases: &[(&str, u128, Option<&str>)] = &[
            ("data-0", 0x1234abcd, Some("data-0.1234abcd")),
            ("a.b-c", 255, Some("a.b-c.ff")),
            ("Upper", 1, None),
            ("ends-", 1, None),
            ("", 1, None),
        ];
        for (obj, nanos, want) in cases {
            let got = generate_event_name(obj, *nanos);
            match want {
                Some(w) => assert_eq!(&got, w),
                None => {
                    assert_eq!(got.len(), 36, "{got}");
                    assert_eq!(&got[14..15], "4", "{got}");
                    assert!(is_dns_subdomain(&got), "{got}");
                }
            }
        }
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        assert!(is_dns_subdomain(&"a".repeat(253)));
    }

    #[test]
    fn keys_are_plain_concatenations() {
        let e = Event::new(
            "comp",
            &pvc(),
            EventType::Warning,
            "Reason",
            "msg",
            UNIX_EPOCH,
        );
        assert_eq!(e.event_key(), "compPersistentVolumeClaimns1data-06a5c0b4e-1111-2222-3333-444455556666v1WarningReasonmsg");
        assert_eq!(
            e.spam_key(),
            "compPersistentVolumeClaimns1data-06a5c0b4e-1111-2222-3333-444455556666v1Warning"
        );
        assert_eq!(e.aggregate_key(), "compPersistentVolumeClaimns1data-06a5c0b4e-1111-2222-3333-444455556666v1WarningReasoncomp");
    }

    #[test]
    fn server_answer_round_trips_and_tolerates_garbage() {
        let e = Event::new(
            "comp",
            &pvc(),
            EventType::Warning,
            "Reason",
            "msg",
            UNIX_EPOCH + Duration::from_secs(5),
        );
        let mut answer: Value = serde_json::to_value(e.create_body()).unwrap();
        answer["metadata"]["resourceVersion"] = json!("99");
        let back = Event::from_server(&answer);
        assert_eq!(back.resource_version, "99");
        assert_eq!(back.event_key(), e.event_key());
        assert_eq!(back.count, 1);
        let junk = Event::from_server(&json!([1, 2]));
        assert_eq!(junk, Event::default());
        let odd = Event::from_server(&json!({"count": "x", "metadata": 5, "firstTimestamp": null}));
        assert_eq!(odd.count, 0);
        assert_eq!(odd.first_timestamp, "");
    }
}
