//! Crash-only (DESIGN §2 fix 10): a panic on any thread ends the whole process at once, with
//! one error line naming the thread, the message and the place, and the termination log that
//! kubelet shows as the container's last state. A process whose controller, worker or lease
//! thread died while the rest lives on (answering health checks, looking fine, checking
//! nothing) must never exist; kubelet restarts the container, the Lease expires, and everything
//! that matters comes back from the cluster (Events, PVC status, the Lease).
//!
//! This is the second place the process exits besides `main`: a panicking thread cannot hand
//! its exit to `main`, whose thread may be the one that panicked, or be blocked.
//!
//! Tests inject panics through [`fault_point`]: the lib only calls whatever the test kit set
//! with [`set_fault_hook`] (nothing, in the shipped binary), so the panicking code exists only
//! in the test kit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The exit code after a panic, as after every other fatal condition.
pub const EXIT_PANIC: i32 = 1;

/// Only the first panicking thread reports and exits; a second one waits for that exit
/// (libc's `exit` must not run twice at once).
static EXITING: AtomicBool = AtomicBool::new(false);

/// Make any panic on any thread end the process: log, write `termination_log`, exit 1.
pub fn install(termination_log: PathBuf) {
    std::panic::set_hook(Box::new(move |info| {
        if EXITING.swap(true, Ordering::SeqCst) {
            loop {
                std::thread::park();
            }
        }
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let message = payload_text(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::error!(
            thread:% = name, location:% = location, message = message.as_str();
            "A thread panicked; exiting so that kubelet restarts the container (crash-only)"
        );
        log::logger().flush();
        if let Err(e) = std::fs::write(
            &termination_log,
            termination_message(name, &location, &message),
        ) {
            log::error!(
                path:% = termination_log.display(), err:% = e;
                "Failed to write termination message"
            );
            log::logger().flush();
        }
        std::process::exit(EXIT_PANIC);
    }));
}

/// What kubelet shows as the container's termination reason.
pub fn termination_message(thread: &str, location: &str, message: &str) -> String {
    format!("Thread {thread} panicked at {location}: {message}")
}

/// A panic's payload as text (`panic!` with a literal gives `&str`, with arguments `String`).
pub fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-text panic payload".to_string()
    }
}

static FAULT_HOOK: OnceLock<fn(&str)> = OnceLock::new();

/// The test kit's way in: `hook` is called at every [`fault_point`]. Set once; later calls are
/// ignored. The shipped binary never calls it.
pub fn set_fault_hook(hook: fn(&str)) {
    let _ = FAULT_HOOK.set(hook);
}

/// A place where a test may make this thread panic (`site` names it: `controller`, `worker`,
/// `leader`). Costs one atomic load when no hook is set.
#[inline]
pub fn fault_point(site: &str) {
    if let Some(hook) = FAULT_HOOK.get() {
        hook(site);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_and_message() {
        let r = std::panic::catch_unwind(|| panic!("plain"));
        assert_eq!(payload_text(r.unwrap_err().as_ref()), "plain");
        let n = 3;
        let r = std::panic::catch_unwind(|| panic!("with {n}"));
        assert_eq!(payload_text(r.unwrap_err().as_ref()), "with 3");
        let r = std::panic::catch_unwind(|| std::panic::panic_any(7u8));
        assert_eq!(
            payload_text(r.unwrap_err().as_ref()),
            "non-text panic payload"
        );
        assert_eq!(
            termination_message("csi-worker-0", "src/monitor/get.rs:10", "boom"),
            "Thread csi-worker-0 panicked at src/monitor/get.rs:10: boom"
        );
    }
}
