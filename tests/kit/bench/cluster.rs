//! The bench cluster: N Bound PVs of the driver with their PVCs in the fake API server and the
//! same volumes in the mock driver (1% abnormal), plus unrelated Pods and Events as noise.

use serde_json::json;

use super::{ModeArg, DRIVER, LEASE_NS, NOISE_NS, VOL_NS};
use crate::apiserver::FakeApiServer;

/// The fake API server a mode needs: with `status.healthStatus` (the `CSIVolumeHealth` gate)
/// for the v1.13 modes.
pub(super) fn api_server(mode: ModeArg) -> Result<FakeApiServer, String> {
    FakeApiServer::start_with(crate::apiserver::Options {
        pvc_health_status: mode.is_health(),
        ..Default::default()
    })
    .map_err(|e| format!("start the fake API server: {e}"))
}
use crate::csidriver::{self, MockDriver};
use crate::fixtures;

/// `n` Bound PVs of the driver with their PVCs (1% abnormal in the driver), and `noise` Pods
/// plus `noise` Events that have nothing to do with the driver.
pub(crate) fn populate(
    api: &FakeApiServer,
    driver: &MockDriver,
    n: usize,
    noise: usize,
    page_size: usize,
) {
    for ns in [VOL_NS, NOISE_NS, LEASE_NS] {
        fixtures::namespace(api, ns);
    }
    // Streamed into the store as text: a million PVs and PVCs as JSON trees would not fit.
    let volumes = (0..n).flat_map(|i| {
        let pvc_uid = format!("00000000-0000-4000-8000-{i:012}");
        [json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("pvc-{i:06}"), "namespace": VOL_NS, "uid": pvc_uid},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                     "storageClassName": "bench", "volumeMode": "Filesystem",
                     "volumeName": format!("pv-{i:06}")},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}
        }),
        json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("pv-{i:06}"),
                         "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER}},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "bench",
                "volumeMode": "Filesystem",
                "csi": {"driver": DRIVER, "volumeHandle": format!("vol-{i:06}"),
                        "fsType": "ext4",
                        "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity": "1700000000000-1234-bench.csi.example.com"}},
                "claimRef": {"kind": "PersistentVolumeClaim", "namespace": VOL_NS,
                             "name": format!("pvc-{i:06}"), "uid": pvc_uid, "apiVersion": "v1"}
            },
            "status": {"phase": "Bound"}
        })]
    });
    let noise = (0..noise).flat_map(|i| {
        [json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("app-{i:06}"), "namespace": NOISE_NS,
                         "labels": {"app": "noise", "pod-template-hash": "5d8f7c9b6d"}},
            "spec": {"nodeName": format!("node-{:03}", i % 500),
                     "containers": [{"name": "app", "image": "registry.example.com/app:1.2.3",
                                     "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}],
                     "restartPolicy": "Always", "serviceAccountName": "default"},
            "status": {"phase": "Running", "podIP": format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256)}
        }),
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("app-{i:06}.17a3c0d2e4f5a6b7"), "namespace": NOISE_NS},
            "involvedObject": {"kind": "Pod", "namespace": NOISE_NS, "name": format!("app-{i:06}"),
                               "apiVersion": "v1", "uid": format!("10000000-0000-4000-8000-{i:012}")},
            "reason": "Scheduled", "type": "Normal",
            "message": format!("Successfully assigned {NOISE_NS}/app-{i:06} to node-{:03}", i % 500),
            "source": {"component": "default-scheduler"}, "count": 1,
            "firstTimestamp": "2026-11-27T10:00:00Z", "lastTimestamp": "2026-11-27T10:00:00Z"
        })]
    });
    api.create_many_compact(volumes.chain(noise));
    driver.with(|s| {
        s.page_size = page_size;
        for i in 0..n {
            let abnormal = i % 100 == 0;
            s.volumes.insert(
                format!("vol-{i:06}"),
                csidriver::Volume {
                    abnormal,
                    message: if abnormal {
                        format!("Volume vol-{i:06}: 3 unreadable blocks on the backend")
                    } else {
                        String::new()
                    },
                    omit_volume: false,
                    omit_condition: false,
                },
            );
        }
    });
}

/// What the driver advertises and reports in `mode`: ListVolumes (the default), no listing
/// (the per-volume modes), or the v1.13 capabilities with the same abnormal volumes as v1.13
/// conditions. `healthy`: no volume abnormal, so in the health listing nothing is listed and a
/// sweep after the first changes nothing.
pub(super) fn set_mode(driver: &MockDriver, mode: ModeArg, healthy: bool) {
    if healthy {
        driver.with(|s| {
            for v in s.volumes.values_mut() {
                v.abnormal = false;
                v.message.clear();
            }
        });
    }
    match mode {
        ModeArg::List => {}
        ModeArg::Get => driver.with(|s| s.list_volumes = false),
        ModeArg::HealthList | ModeArg::HealthGet => {
            driver.set_generation(csidriver::Generation::V113);
            driver.with(|s| {
                s.list_volume_health = mode == ModeArg::HealthList;
                for (id, v) in &s.volumes {
                    if v.abnormal {
                        s.health.insert(
                            id.clone(),
                            vec![csidriver::HealthEntry::degraded("BadBlocks", &v.message)],
                        );
                    }
                }
            });
        }
    }
}
