//! The resources this fake serves (one `ResDef` per kind: plural, group, namespaced, status
//! subresource, selectable fields) and the metav1.Status bodies of its failures, worded as
//! kube-apiserver words them.

use serde_json::{json, Map, Value};

pub(super) struct ResDef {
    pub(super) plural: &'static str,
    pub(super) kind: &'static str,
    group: &'static str,
    pub(super) namespaced: bool,
    pub(super) has_status: bool,
}

impl ResDef {
    pub(super) fn api_version(&self) -> String {
        if self.group.is_empty() {
            "v1".to_string()
        } else {
            format!("{}/v1", self.group)
        }
    }
    /// As kube-apiserver names it in messages: `leases.coordination.k8s.io`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    pub(super) fn extra_fields(&self) -> &'static [&'static str] {
        match self.plural {
            "events" => &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            "pods" => &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "spec.hostNetwork",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            "nodes" => &["spec.unschedulable"],
            "namespaces" => &["status.phase"],
            "persistentvolumeclaims" => &[],
            _ => &[],
        }
    }
}

pub(super) const EVENTS: usize = 3;
pub(super) static RESOURCES: [ResDef; 8] = [
    ResDef {
        plural: "persistentvolumes",
        kind: "PersistentVolume",
        group: "",
        namespaced: false,
        has_status: true,
    },
    ResDef {
        plural: "persistentvolumeclaims",
        kind: "PersistentVolumeClaim",
        group: "",
        namespaced: true,
        has_status: true,
    },
    ResDef {
        plural: "pods",
        kind: "Pod",
        group: "",
        namespaced: true,
        has_status: true,
    },
    ResDef {
        plural: "events",
        kind: "Event",
        group: "",
        namespaced: true,
        has_status: false,
    },
    ResDef {
        plural: "namespaces",
        kind: "Namespace",
        group: "",
        namespaced: false,
        has_status: true,
    },
    ResDef {
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        group: "",
        namespaced: true,
        has_status: false,
    },
    ResDef {
        plural: "nodes",
        kind: "Node",
        group: "",
        namespaced: false,
        has_status: true,
    },
    ResDef {
        plural: "leases",
        kind: "Lease",
        group: "coordination.k8s.io",
        namespaced: true,
        has_status: false,
    },
];

pub(super) fn def_for_plural(plural: &str) -> Option<&'static ResDef> {
    RESOURCES.iter().find(|d| d.plural == plural)
}

pub(super) fn def_for(group: &str, plural: &str) -> Option<&'static ResDef> {
    RESOURCES
        .iter()
        .find(|d| d.plural == plural && d.group == group)
}

pub(super) fn def_for_object(obj: &Value) -> Option<&'static ResDef> {
    let kind = obj.get("kind")?.as_str()?;
    let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let group = av.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    RESOURCES
        .iter()
        .find(|d| d.kind == kind && d.group == group)
}

pub(super) fn namespace_for(def: &ResDef, obj: &Value) -> Option<String> {
    if !def.namespaced {
        return None;
    }
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    Some(ns.to_string())
}

pub(super) fn obj_name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// failures (metav1.Status)

#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) code: u16,
    reason: &'static str,
    pub(super) message: String,
    pub(super) details: Option<Value>,
    pub(super) retry_after: Option<u32>,
}

impl Failure {
    pub(super) fn new(code: u16, message: impl Into<String>) -> Failure {
        Failure {
            code,
            // The client's table is apimachinery's; "Unknown" is what the server says otherwise.
            reason: match healthmon::kube::error::reason_for(code) {
                "" => "Unknown",
                r => r,
            },
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }
    fn with_reason(mut self, reason: &'static str) -> Failure {
        self.reason = reason;
        self
    }
    fn about(mut self, def: &ResDef, name: &str) -> Failure {
        let mut d = Map::new();
        d.insert("name".into(), json!(name));
        if !def.group.is_empty() {
            d.insert("group".into(), json!(def.group));
        }
        d.insert("kind".into(), json!(def.plural));
        self.details = Some(Value::Object(d));
        self
    }
    pub(super) fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(400, message)
    }
    pub(super) fn not_found(def: &ResDef, name: &str) -> Failure {
        Failure::new(404, format!("{} \"{name}\" not found", def.qualified())).about(def, name)
    }
    pub(super) fn already_exists(def: &ResDef, name: &str) -> Failure {
        Failure::new(
            409,
            format!("{} \"{name}\" already exists", def.qualified()),
        )
        .with_reason("AlreadyExists")
        .about(def, name)
    }
    pub(super) fn conflict(def: &ResDef, name: &str, why: &str) -> Failure {
        Failure::new(
            409,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                def.qualified()
            ),
        )
        .about(def, name)
    }
    pub(super) fn invalid(def: &ResDef, name: &str, why: &str) -> Failure {
        Failure::new(422, format!("{} \"{name}\" is invalid: {why}", def.kind)).about(def, name)
    }
    pub(super) fn expired(message: impl Into<String>) -> Failure {
        Failure::new(410, message).with_reason("Expired")
    }
    pub(super) fn path_not_found() -> Failure {
        let mut f = Failure::new(404, "the server could not find the requested resource");
        f.details = Some(json!({}));
        f
    }
    pub(super) fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!("Status"));
        m.insert("apiVersion".into(), json!("v1"));
        m.insert("metadata".into(), json!({}));
        m.insert("status".into(), json!("Failure"));
        m.insert("message".into(), json!(self.message));
        m.insert("reason".into(), json!(self.reason));
        if let Some(d) = &self.details {
            m.insert("details".into(), d.clone());
        }
        m.insert("code".into(), json!(self.code));
        Value::Object(m)
    }
}
