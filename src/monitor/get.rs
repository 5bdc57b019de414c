//! The per-volume modes, ControllerGetVolume (v1.12) and ControllerGetVolumeHealth (v1.13)
//! (DESIGN §2.2): every checkable PV of this driver is checked once per `--monitor-interval`,
//! spread evenly over the interval, on the check engine (`engine.rs`: `--worker-threads`
//! calls at most, never two about one volume). This loop only keeps the engine's volumes in
//! line with the store, every `--volume-list-add-interval`: PVs that became Bound are picked
//! up, deleted ones dropped. Upstream instead slept after every single check, so with few PVs
//! all workers hammered the same volume (issues #56, #385).

use std::sync::Arc;
use std::time::Duration;

use super::engine::Engine;
use super::Monitor;
use crate::csi::HealthSource;
use crate::shutdown::Shutdown;

/// How long the checks in flight at shutdown are waited for (each is bounded by `--timeout`).
pub const DRAIN: Duration = Duration::from_secs(60);

pub struct GetLoop {
    pub monitor: Arc<Monitor>,
    pub source: Arc<dyn HealthSource>,
    pub interval: Duration,
    pub add_interval: Duration,
    pub workers: usize,
}

impl GetLoop {
    pub fn run(self, shutdown: Shutdown) -> std::io::Result<()> {
        let engine = Engine::start(
            self.workers,
            self.interval,
            self.monitor.clone(),
            self.source,
        )?;
        loop {
            engine.track_store();
            self.monitor.forget_gone();
            crate::crash::fault_point("controller");
            if shutdown.wait_timeout(self.add_interval) {
                break;
            }
        }
        engine.drain(DRAIN);
        Ok(())
    }
}
