//! The node watcher end to end (issue 6): NodeFailed on the right PVCs after the timeout, once
//! per episode, NodeRecovered as Normal, and no Pod/Node traffic with the flag off.

use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

use crate::kit::csidriver::LIST_VOLUMES;
use crate::kit::fixtures;
use crate::support::{Env, NS};

const WAIT: Duration = Duration::from_secs(30);

fn node(name: &str, status: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "status": {"conditions": [{"type": "Ready", "status": status,
                                      "lastTransitionTime": healthmon::timeutil::rfc3339(SystemTime::now())}]}})
}

fn pod(name: &str, node: &str, claims: &[&str]) -> Value {
    let vols: Vec<Value> = claims
        .iter()
        .map(|c| json!({"name": format!("v-{c}"), "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
           "spec": {"nodeName": node, "volumes": vols, "containers": [{"name": "c", "image": "i"}]}})
}

#[test]
fn failed_node_is_reported_once_on_this_drivers_pvcs_and_recovery_is_normal() {
    let env = Env::new();
    env.volume("a");
    env.volume("b");
    fixtures::bound_volume(
        &env.api,
        "other.csi.example.com",
        "pv-o",
        "o",
        "Bound",
        NS,
        Some("pvc-o"),
    );
    for id in ["a", "b"] {
        env.driver.set_volume(id, false, "");
    }
    env.api.create(node("node1", "True"));
    env.api.create(pod("web-2", "node1", &["pvc-a"]));
    env.api.create(pod("gone", "node1", &["pvc-b"]));
    let sidecar = env.spawn(&[
        "--list-volumes-interval=1h",
        "--enable-node-watcher",
        "--node-not-ready-timeout=2s",
    ]);
    assert!(
        env.wait_calls(LIST_VOLUMES, 1, WAIT),
        "{}",
        sidecar.stderr.text()
    );
    // Scheduled after the sidecar started, and deleted while the node is down.
    env.api.create(pod("web-1", "node1", &["pvc-a", "pvc-o"]));
    env.api.create(pod("db-0", "node1", &["pvc-b"]));
    env.api.update(node("node1", "False"));
    env.api.delete("pods", Some(NS), "gone");
    assert!(
        env.wait_event("pvc-b", "NodeFailed", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert!(
        env.wait_event("pvc-a", "NodeFailed", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    let a = &env.events("pvc-a", "NodeFailed")[0];
    assert_eq!(a["type"], "Warning");
    assert_eq!(a["message"], format!("Pods: [ web-1 web-2 ] consuming PVC: pvc-a in namespace: {NS} are now on a failed node: node1").as_str());
    let b = &env.events("pvc-b", "NodeFailed")[0];
    assert_eq!(b["message"], format!("Pods: [ db-0 ] consuming PVC: pvc-b in namespace: {NS} are now on a failed node: node1").as_str());
    assert!(env.events("pvc-o", "NodeFailed").is_empty());

    // Three more timeouts: still one event per PVC with count 1 (proved by a later recovery
    // being the next thing written).
    env.api.clear_requests();
    env.api.update(node("node1", "True"));
    assert!(
        env.wait_event("pvc-a", "NodeRecovered", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert!(env.wait_event("pvc-b", "NodeRecovered", WAIT));
    let r = &env.events("pvc-a", "NodeRecovered")[0];
    assert_eq!(r["type"], "Normal");
    assert_eq!(r["message"], "Node: node1 recovered");
    for pvc in ["pvc-a", "pvc-b"] {
        let failed = env.events(pvc, "NodeFailed");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0]["count"], 1, "NodeFailed repeated on {pvc}");
    }
}

#[test]
fn flag_off_means_no_pod_or_node_requests() {
    let env = Env::new();
    env.volume("x");
    env.driver.set_volume("x", true, "bad");
    let sidecar = env.spawn(&["--list-volumes-interval=300ms"]);
    assert!(
        env.wait_event("pvc-x", "VolumeConditionAbnormal", WAIT),
        "{}",
        sidecar.stderr.text()
    );
    assert!(env.wait_calls(LIST_VOLUMES, 3, WAIT));
    let touched: Vec<String> = env
        .api
        .requests()
        .iter()
        .filter(|r| r.path.contains("/pods") || r.path.contains("/nodes"))
        .map(|r| r.path.clone())
        .collect();
    assert!(touched.is_empty(), "{touched:?}");
}
