//! Objects and processes the tests and the sandbox set up again and again: a namespace, PVs
//! bound to PVCs, and the sidecar binary spawned against the fake API server and mock driver.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::apiserver::FakeApiServer;

pub fn namespace(api: &FakeApiServer, name: &str) {
    api.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}));
}

/// A PV of `driver` with `handle`, in `phase`, bound to `namespace/claim` (created too, with
/// its own uid) when `claim` is given. Returns (pv, pvc) as stored.
pub fn bound_volume(
    api: &FakeApiServer,
    driver: &str,
    pv_name: &str,
    handle: &str,
    phase: &str,
    namespace: &str,
    claim: Option<&str>,
) -> (Value, Option<Value>) {
    let pvc = claim.map(|c| {
        api.create(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": c, "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "volumeName": pv_name},
            "status": {"phase": if phase == "Bound" { "Bound" } else { "Pending" }}
        }))
    });
    let claim_ref = pvc.as_ref().map(|p| {
        json!({"kind": "PersistentVolumeClaim", "namespace": namespace, "name": p["metadata"]["name"], "uid": p["metadata"]["uid"], "apiVersion": "v1"})
    });
    let mut spec = json!({
        "capacity": {"storage": "1Gi"},
        "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Delete",
        "csi": {"driver": driver, "volumeHandle": handle}
    });
    if let Some(c) = claim_ref {
        spec["claimRef"] = c;
    }
    let pv = api.create(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": spec,
        "status": {"phase": phase}
    }));
    (pv, pvc)
}

/// Path of a binary built next to the current executable (tests run from target/<profile>/deps).
pub fn sibling_binary(name: &str) -> PathBuf {
    if let Some(p) = option_env_bin(name) {
        return p;
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

fn option_env_bin(name: &str) -> Option<PathBuf> {
    if name == "csi-external-health-monitor-controller" {
        std::env::var_os("HEALTHMON_BIN").map(PathBuf::from)
    } else {
        None
    }
}

/// Spawn the sidecar with `--kubeconfig` and `--csi-address` set, plus `extra` flags.
pub fn spawn_sidecar(kubeconfig: &Path, socket: &Path, extra: &[&str], stderr: Stdio) -> Child {
    let bin = sibling_binary("csi-external-health-monitor-controller");
    Command::new(&bin)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--csi-address={}", socket.display()))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
}

/// SIGTERM without unsafe code: the kit uses the system's `kill`.
pub fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

/// The events on one involved object, by reason.
pub fn events_for(api: &FakeApiServer, involved_name: &str, reason: &str) -> Vec<Value> {
    api.events()
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == involved_name && e["reason"] == reason)
        .collect()
}
