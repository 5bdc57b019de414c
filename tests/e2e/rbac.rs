//! The shipped RBAC (deploy/kubernetes/rbac.yaml) judged against what the sidecar really asks
//! the API server: every request in the fake server's log is turned into the (group, resource,
//! verb) the API server's authorizer would check, and must be allowed by a rule. `Env` runs this
//! check when it is dropped, so every end-to-end test that uses it also proves the RBAC.

use serde_json::Value;

use crate::kit::apiserver::RequestRecord;

/// What the authorizer checks for one request (Kubernetes `RequestInfo`).
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Attributes {
    pub group: String,
    pub resource: String,
    pub namespaced: bool,
    pub verb: &'static str,
}

/// Paths every authenticated user may read (the `system:discovery` and
/// `system:public-info-viewer` ClusterRoles bound by default).
const PUBLIC_PATHS: &[&str] = &["/api", "/apis", "/version", "/healthz", "/livez", "/readyz"];

/// The authorizer's view of a request; `Err` for a non-resource path nobody granted.
pub fn attributes(r: &RequestRecord) -> Result<Option<Attributes>, String> {
    if PUBLIC_PATHS.contains(&r.path.trim_end_matches('/')) {
        return Ok(None);
    }
    let segs: Vec<&str> = r.path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return Err(format!("non-resource path {}", r.path)),
    };
    let (namespaced, rest) = match rest {
        ["namespaces", _, rest @ ..] if !rest.is_empty() => (true, rest),
        _ => (false, rest),
    };
    let (resource, named) = match rest {
        [res] => (res.to_string(), false),
        [res, _name] => (res.to_string(), true),
        [res, _name, sub] => (format!("{res}/{sub}"), true),
        _ => return Err(format!("unexpected path {}", r.path)),
    };
    let verb = match (r.method.as_str(), named) {
        ("GET", _) if r.is_watch() => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (m, _) => return Err(format!("method {m} on {}", r.path)),
    };
    Ok(Some(Attributes {
        group: group.to_string(),
        resource,
        namespaced,
        verb,
    }))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Whether a ClusterRole or (for namespaced requests) a Role of `rbac` allows `a`. Bindings
/// are not modelled: the manifest binds both roles to the sidecar's ServiceAccount, which
/// `manifests_parse_and_deployment_args_are_accepted` checks.
pub fn allowed(rbac: &[Value], a: &Attributes) -> bool {
    rbac.iter()
        .filter(|d| d["kind"] == "ClusterRole" || (d["kind"] == "Role" && a.namespaced))
        .flat_map(|d| d["rules"].as_array().into_iter().flatten())
        .any(|rule| {
            let any_or = |field: &str, want: &str| {
                strings(&rule[field])
                    .iter()
                    .any(|x| *x == "*" || *x == want)
            };
            any_or("apiGroups", &a.group)
                && any_or("resources", &a.resource)
                && any_or("verbs", a.verb)
        })
}

pub fn shipped_rbac() -> Vec<Value> {
    crate::docs::documents("deploy/kubernetes/rbac.yaml")
}

/// Requests of `log` the shipped RBAC would refuse, described for an assertion message.
pub fn refused(log: &[RequestRecord]) -> Vec<String> {
    let rbac = shipped_rbac();
    let mut out: Vec<String> = log
        .iter()
        .filter_map(|r| match attributes(r) {
            Ok(None) => None,
            Ok(Some(a)) if allowed(&rbac, &a) => None,
            Ok(Some(a)) => Some(format!(
                "{} {} ({} {:?} in group {:?})",
                r.method, r.path, a.verb, a.resource, a.group
            )),
            Err(why) => Some(why),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn req(method: &str, path: &str, query: &str) -> RequestRecord {
        RequestRecord {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            content_type: None,
            status: 200,
            request_bytes: 0,
            response_bytes: 0,
            at: Instant::now(),
            user_agent: None,
            authorization: None,
            body: None,
        }
    }

    #[test]
    fn requests_map_to_the_authorizers_verbs() {
        let a = |m, p, q| attributes(&req(m, p, q)).unwrap().unwrap();
        assert_eq!(
            a("GET", "/api/v1/persistentvolumes", "limit=500").verb,
            "list"
        );
        assert_eq!(
            a(
                "GET",
                "/api/v1/persistentvolumes",
                "watch=true&resourceVersion=1"
            )
            .verb,
            "watch"
        );
        let lease = a(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x",
            "",
        );
        assert_eq!(
            lease,
            Attributes {
                group: "coordination.k8s.io".into(),
                resource: "leases".into(),
                namespaced: true,
                verb: "update"
            }
        );
        assert_eq!(
            a("PATCH", "/api/v1/namespaces/ns/events/e.1", "").verb,
            "patch"
        );
        assert_eq!(
            a("PUT", "/api/v1/persistentvolumes/pv/status", "").resource,
            "persistentvolumes/status"
        );
        assert!(attributes(&req("GET", "/version", "")).unwrap().is_none());
        assert!(attributes(&req("GET", "/metrics", "")).is_err());
    }

    #[test]
    fn the_shipped_rbac_refuses_what_upstream_never_needed() {
        // The check can fail: writes to PVs, PVC status, Leases cluster-wide, secrets.
        let bad = refused(&[
            req("GET", "/api/v1/persistentvolumes", ""),
            req("DELETE", "/api/v1/persistentvolumes/pv-1", ""),
            req(
                "PUT",
                "/api/v1/namespaces/ns/persistentvolumeclaims/c/status",
                "",
            ),
            req("GET", "/apis/coordination.k8s.io/v1/leases", ""),
            req("GET", "/api/v1/namespaces/ns/secrets/s", ""),
            req("POST", "/api/v1/namespaces/ns/events", ""),
        ]);
        assert_eq!(bad.len(), 4, "{bad:#?}");
        assert!(bad.iter().any(|b| b.contains("secrets")));
        assert!(!bad.iter().any(|b| b.contains("POST")));
    }
}
