//! The event recorder: client-go's legacy recorder and correlator (upstream §7.2, §7.3) on one
//! named thread. `Recorder::event` never blocks: it builds the Event (name, timestamps) and puts
//! it on a bounded queue of 1000, dropping it with client-go's log line when full. The
//! "event-recorder" thread takes events in order, correlates them (`correlator`: aggregate,
//! de-duplicate, spam-filter) and writes them through an `EventSink`: POST for new events,
//! strategic-merge PATCH for repeats (404 → POST), transport errors retried 12 times 10 s apart,
//! API rejections never retried.
//!
//! Shutdown: main first calls `RecorderThread::flush(timeout)`, which waits (bounded) until
//! every queued event has been written or given up, retries included. Then it triggers the
//! shared `Shutdown`: a retry sleep wakes at once and abandons its event, and whatever is still
//! queued is discarded with one warning. So the flush timeout is the only wait on exit; `join`
//! after the trigger returns as soon as an in-flight request returns.

mod correlator;
mod event;

pub use correlator::{
    Correlator, Decision, Lru, AGGREGATE_INTERVAL, AGGREGATE_MAX_EVENTS, AGGREGATE_PREFIX,
    LRU_CAPACITY, SPAM_BURST,
};
pub use event::{
    generate_event_name, is_dns_subdomain, Event, EventAnswer, EventBody, EventPatch, Involved,
};

use crate::kube;
use crate::logging::Bare;
use crate::shutdown::Shutdown;
use crate::timeutil::{self, Clock, SystemClock};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Logs at `$level` with an Event's key/values (`event="ns/name" object="ns/name" kind="Pod"
/// type=Warning reason="..." message="..." count=1`, as the recorder's lines always read)
/// between the key/values in the first and the second brackets.
macro_rules! log_event {
    ($level:ident, $event:expr, [$($before:tt)*], [$($after:tt)*], $($msg:tt)+) => {{
        let e: &Event = $event;
        log::$level!(
            $($before)*
            event:% = format_args!("{}/{}", e.namespace, e.name),
            object:% = format_args!("{}/{}", e.involved.namespace, e.involved.name),
            kind = e.involved.kind.as_str(),
            type:% = Bare(&e.event_type),
            reason = e.reason.as_str(),
            message = e.message.as_str(),
            count = e.count
            $($after)*;
            $($msg)+
        )
    }};
}

/// Events waiting for the recorder thread (client-go `maxQueuedEvents`).
pub const QUEUE_CAPACITY: usize = 1000;
/// Write attempts per event (client-go `maxTriesPerEvent`).
pub const MAX_TRIES: usize = 12;
/// Sleep between write attempts (client-go `defaultSleepDuration`).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// Logged when the queue is full and an event is dropped (at most once per
/// [`crate::logging::THROTTLE_PERIOD`], with the number dropped since the last line).
pub const DROPPED_MESSAGE: &str = "Unable to record event: too many queued events, dropped event";

/// Which Events win when the queue is full (DESIGN §2.9): a first report or a recovery takes
/// the place of a queued repeat, so a full queue never decides by accident which PVCs are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A first report of an episode, a recovery, anything that is news.
    Transition,
    /// A repeat of an Event that already exists (its count is bumped).
    Repeat,
}

/// Why an Event never reached the API server (`csi_volume_health_events_dropped_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The queue held 1000 Events and none of them was a repeat this one could replace.
    QueueFull,
    /// A queued repeat (a count bump of an existing Event) gave its place to a first report or
    /// a recovery.
    Displaced,
}

impl DropReason {
    pub const ALL: [DropReason; 2] = [DropReason::QueueFull, DropReason::Displaced];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Displaced => "repeat_displaced",
        }
    }
}

/// Where events are written: the API server in production, a recording fake in tests. Each
/// call answers with the Event as the server stored it.
pub trait EventSink: Send + 'static {
    /// `POST /api/v1/namespaces/<namespace>/events`.
    fn create(&self, namespace: &str, event: &EventBody<'_>) -> Result<Event, kube::Error>;
    /// `PATCH /api/v1/namespaces/<namespace>/events/<name>`, strategic merge.
    fn patch(&self, namespace: &str, name: &str, patch: &EventPatch) -> Result<Event, kube::Error>;
}

impl EventSink for kube::Client {
    fn create(&self, namespace: &str, event: &EventBody<'_>) -> Result<Event, kube::Error> {
        self.send_as::<_, EventAnswer>(
            "POST",
            &format!("/api/v1/namespaces/{namespace}/events"),
            event,
        )
        .map(Event::from)
    }

    fn patch(&self, namespace: &str, name: &str, patch: &EventPatch) -> Result<Event, kube::Error> {
        self.patch_as::<_, EventAnswer>(
            &format!("/api/v1/namespaces/{namespace}/events/{name}"),
            kube::PatchKind::StrategicMerge,
            patch,
        )
        .map(Event::from)
    }
}

/// The object an event is about (`involvedObject`); fieldPath is always empty for us.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectRef {
    pub kind: String,
    pub api_version: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
}

impl ObjectRef {
    /// The PVC every volume and node event is about.
    pub fn pvc(pvc: &crate::watch::PvcRecord) -> ObjectRef {
        ObjectRef {
            kind: "PersistentVolumeClaim".into(),
            api_version: "v1".into(),
            namespace: pvc.namespace().to_string(),
            name: pvc.name().to_string(),
            uid: pvc.uid().to_string(),
            resource_version: pvc.resource_version().to_string(),
        }
    }
}

/// The only two types the legacy recorder accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Sleep for the duration or until shutdown; true when shutdown interrupted it.
pub type SleepFn = Arc<dyn Fn(Duration, &Shutdown) -> bool + Send + Sync>;

pub struct RecorderOptions {
    /// `source.component` and `reportingComponent`.
    pub component: String,
    pub clock: Arc<dyn Clock>,
    pub sleep: SleepFn,
    pub retry_interval: Duration,
    pub max_tries: usize,
}

impl RecorderOptions {
    /// Real clock, real interruptible sleep, client-go's 10 s and 12 tries.
    pub fn new(component: String) -> Self {
        RecorderOptions {
            component,
            clock: Arc::new(SystemClock),
            sleep: Arc::new(|d, shutdown: &Shutdown| shutdown.wait_timeout(d)),
            retry_interval: RETRY_INTERVAL,
            max_tries: MAX_TRIES,
        }
    }
}

/// Events queued or being written, so `flush` can wait for zero.
struct Pending {
    state: Mutex<PendingState>,
    cond: Condvar,
    /// Per [`DropReason`], in the order of `DropReason::ALL`.
    dropped: [AtomicU64; 2],
    /// The drop line is written at most once per 10 s.
    drop_log: crate::logging::Throttle,
}

#[derive(Default)]
struct PendingState {
    count: usize,
    /// The thread has stopped; later events are not queued.
    closed: bool,
    /// Events were thrown away at shutdown instead of written.
    discarded: bool,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            state: Mutex::new(PendingState::default()),
            cond: Condvar::new(),
            dropped: [AtomicU64::new(0), AtomicU64::new(0)],
            drop_log: crate::logging::Throttle::default(),
        }
    }

    /// Reserve a slot; false once the thread has stopped.
    #[cfg(test)]
    fn begin(&self) -> bool {
        let mut s = crate::sync::lock(&self.state);
        if s.closed {
            return false;
        }
        s.count += 1;
        true
    }

    fn done(&self, n: usize) {
        let mut s = crate::sync::lock(&self.state);
        s.count = s.count.saturating_sub(n);
        if s.count == 0 {
            self.cond.notify_all();
        }
    }

    fn close(&self, discarded: bool) {
        let mut s = crate::sync::lock(&self.state);
        s.closed = true;
        s.discarded |= discarded;
        s.count = 0;
        self.cond.notify_all();
    }

    fn wait_empty(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = crate::sync::lock(&self.state);
        loop {
            if s.count == 0 {
                return !s.discarded;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = crate::sync::wait_timeout(&self.cond, s, deadline - now);
        }
    }
}

/// Cheap handle for emitting events; clone it into every thread that reports.
#[derive(Clone)]
pub struct Recorder {
    /// Transitions; written before any repeat.
    tx: Sender<Event>,
    repeat_tx: Sender<Event>,
    /// To take a queued repeat out when a transition needs its place.
    repeat_rx: Receiver<Event>,
    /// Events queued or being written, at most (client-go `maxQueuedEvents`).
    capacity: usize,
    pending: Arc<Pending>,
    component: Arc<str>,
    clock: Arc<dyn Clock>,
}

impl Recorder {
    /// Queue an event about `object` as news ([`Priority::Transition`]). Never blocks; when
    /// 1000 events are already waiting and none is a repeat, the event is dropped and counted.
    /// True when queued.
    pub fn event(&self, object: &ObjectRef, kind: EventType, reason: &str, message: &str) -> bool {
        self.event_with(object, kind, reason, message, Priority::Transition)
    }

    /// [`Recorder::event`] with its priority: a repeat is dropped when the queue is full, a
    /// transition then takes the place of a queued repeat.
    pub fn event_with(
        &self,
        object: &ObjectRef,
        kind: EventType,
        reason: &str,
        message: &str,
        priority: Priority,
    ) -> bool {
        let event = Event::new(
            &self.component,
            object,
            kind,
            reason,
            message,
            self.clock.now(),
        );
        self.enqueue_with(event, priority)
    }

    /// Events dropped so far because the queue was full, for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_by_reason().iter().map(|(_, n)| n).sum()
    }

    /// A repeat (a count bump of an existing Event) the queue has no room for, refused before
    /// anything of it is built: counted as a `queue_full` drop, as `event_with` would count
    /// it. False when the queue has room, or when the drop line is due now: the caller then
    /// sends the repeat the usual way, and its refusal is logged naming its Event. A sweep
    /// over many volumes standing abnormal costs a lock per volume, not an Event (issue #23).
    pub fn refuse_repeat(&self) -> bool {
        {
            let s = crate::sync::lock(&self.pending.state);
            if s.closed || s.count < self.capacity {
                return false;
            }
        }
        if !self.pending.drop_log.hit_quiet(Instant::now()) {
            return false;
        }
        self.pending.dropped[DropReason::QueueFull as usize].fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Events dropped so far, per reason.
    pub fn dropped_by_reason(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .zip(&self.pending.dropped)
            .map(|(r, n)| (r.as_str(), n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Count a dropped event; log it unless a drop was logged in the last 10 s (the line then
    /// says how many were dropped since the previous one).
    fn note_dropped(&self, reason: DropReason, event: &Event) {
        self.pending.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.pending.drop_log.hit(Instant::now()) {
            // The word "last" between the pairs keeps the count and the reason in the message,
            // as the text line has always had them (and the JSON line had them too).
            log_event!(
                error,
                event,
                [],
                [],
                "{DROPPED_MESSAGE} dropped_since_last_line={n} reason={} last",
                reason.as_str()
            );
        }
    }

    #[cfg(test)]
    fn enqueue(&self, event: Event) -> bool {
        self.enqueue_with(event, Priority::Transition)
    }

    fn enqueue_with(&self, event: Event, priority: Priority) -> bool {
        let displaced = {
            let mut s = crate::sync::lock(&self.pending.state);
            if s.closed {
                drop(s);
                log_event!(
                    debug,
                    &event,
                    [],
                    [],
                    "Event recorder has stopped, dropped event"
                );
                return false;
            }
            if s.count < self.capacity {
                s.count += 1;
                None
            } else if priority == Priority::Transition {
                // Full: a transition takes the place of the oldest queued repeat, if any.
                match self.repeat_rx.try_recv() {
                    Ok(old) => Some(old),
                    Err(_) => {
                        drop(s);
                        self.note_dropped(DropReason::QueueFull, &event);
                        return false;
                    }
                }
            } else {
                drop(s);
                self.note_dropped(DropReason::QueueFull, &event);
                return false;
            }
        };
        if let Some(old) = displaced {
            self.note_dropped(DropReason::Displaced, &old);
        }
        let tx = match priority {
            Priority::Transition => &self.tx,
            Priority::Repeat => &self.repeat_tx,
        };
        match tx.try_send(event) {
            Ok(()) => true,
            // Both channels hold the capacity; the count above keeps them from filling.
            Err(TrySendError::Full(event)) => {
                self.pending.done(1);
                self.note_dropped(DropReason::QueueFull, &event);
                false
            }
            Err(TrySendError::Disconnected(event)) => {
                self.pending.done(1);
                log_event!(
                    debug,
                    &event,
                    [],
                    [],
                    "Event recorder has stopped, dropped event"
                );
                false
            }
        }
    }
}

/// The running recorder thread.
pub struct RecorderThread {
    handle: JoinHandle<()>,
    pending: Arc<Pending>,
}

impl RecorderThread {
    /// Wait until the queue is empty and the in-flight event is written or given up, at most
    /// `timeout`. True if everything queued was handled (false on timeout, or when shutdown
    /// discarded queued events).
    pub fn flush(&self, timeout: Duration) -> bool {
        self.pending.wait_empty(timeout)
    }

    /// Wait for the thread to stop (trigger shutdown first); re-raises its panic.
    pub fn join(self) {
        if let Err(panic) = self.handle.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Start the "event-recorder" thread writing to `sink`.
pub fn spawn(
    sink: impl EventSink,
    opts: RecorderOptions,
    shutdown: Shutdown,
) -> std::io::Result<(Recorder, RecorderThread)> {
    let (recorder, queued) = queue(&opts, QUEUE_CAPACITY);
    let pending = recorder.pending.clone();
    let writer = Writer::new(sink, &opts, shutdown.clone());
    let thread_pending = pending.clone();
    let handle = std::thread::Builder::new()
        .name("event-recorder".into())
        .spawn(move || run(queued, writer, &thread_pending, &shutdown))?;
    Ok((recorder, RecorderThread { handle, pending }))
}

/// The recorder thread's end of the queue: transitions first, then repeats.
struct Queued {
    first: Receiver<Event>,
    repeats: Receiver<Event>,
}

impl Queued {
    /// The next event to write: any transition before any repeat.
    fn try_recv(&self) -> Option<Event> {
        self.first
            .try_recv()
            .or_else(|_| self.repeats.try_recv())
            .ok()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.first.len() + self.repeats.len()
    }
}

/// A recorder with no thread behind it, for other modules' tests: up to `capacity` events
/// queue (0: every event is refused, as by a full queue of first reports).
#[cfg(test)]
pub(crate) fn unattended(capacity: usize) -> (Recorder, Unattended) {
    let (recorder, queued) = queue(&RecorderOptions::new("test-component".into()), capacity);
    let pending = recorder.pending.clone();
    (recorder, Unattended { queued, pending })
}

/// What an [`unattended`] recorder queued.
#[cfg(test)]
pub(crate) struct Unattended {
    queued: Queued,
    pending: Arc<Pending>,
}

#[cfg(test)]
impl Unattended {
    /// (type, reason, message) of each queued event, taken out (their places are free again).
    pub(crate) fn take(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        while let Some(e) = self.queued.try_recv() {
            out.push((e.event_type, e.reason, e.message));
        }
        self.pending.done(out.len());
        out
    }
}

fn queue(opts: &RecorderOptions, capacity: usize) -> (Recorder, Queued) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let (repeat_tx, repeat_rx) = crossbeam_channel::bounded(capacity);
    let recorder = Recorder {
        tx,
        repeat_tx,
        repeat_rx: repeat_rx.clone(),
        capacity,
        pending: Arc::new(Pending::new()),
        component: Arc::from(opts.component.as_str()),
        clock: opts.clock.clone(),
    };
    (
        recorder,
        Queued {
            first: rx,
            repeats: repeat_rx,
        },
    )
}

fn run<S: EventSink>(
    queued: Queued,
    mut writer: Writer<S>,
    pending: &Pending,
    shutdown: &Shutdown,
) {
    let stop = shutdown.receiver();
    while !shutdown.is_triggered() {
        if let Some(event) = queued.try_recv() {
            writer.record(event);
            pending.done(1);
            continue;
        }
        // Nothing queued: wait for either kind.
        crossbeam_channel::select! {
            recv(queued.first) -> msg => match msg {
                Ok(event) => {
                    writer.record(event);
                    pending.done(1);
                }
                // Every Recorder handle is gone: nothing more can arrive.
                Err(_) => break,
            },
            recv(queued.repeats) -> msg => match msg {
                Ok(event) => {
                    writer.record(event);
                    pending.done(1);
                }
                Err(_) => break,
            },
            recv(stop) -> _ => break,
        }
    }
    let left = queued.first.try_iter().count() + queued.repeats.try_iter().count();
    if left > 0 {
        log::warn!("Event recorder shutting down, discarded {left} queued events");
    }
    pending.close(left > 0);
}

/// How one event ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Created or patched.
    Written,
    /// Suppressed by the spam filter.
    Skipped,
    /// The API server (or request construction) refused it; not retried.
    Rejected,
    /// Every try failed in transport.
    GaveUp,
    /// Shutdown interrupted the retry sleep.
    ShutDown,
}

/// Correlation plus the write/retry loop; owned by the recorder thread.
struct Writer<S> {
    sink: S,
    correlator: Correlator,
    clock: Arc<dyn Clock>,
    sleep: SleepFn,
    retry_interval: Duration,
    max_tries: usize,
    shutdown: Shutdown,
    /// Write failures that can repeat for every Event of a sweep are logged at most once per
    /// 10 s with a count.
    failed_log: crate::logging::Throttle,
}

impl<S: EventSink> Writer<S> {
    fn new(sink: S, opts: &RecorderOptions, shutdown: Shutdown) -> Writer<S> {
        Writer {
            sink,
            correlator: Correlator::new(),
            clock: opts.clock.clone(),
            sleep: opts.sleep.clone(),
            retry_interval: opts.retry_interval,
            max_tries: opts.max_tries.max(1),
            shutdown,
            failed_log: crate::logging::Throttle::default(),
        }
    }

    /// client-go `recordToSink`.
    fn record(&mut self, event: Event) -> Outcome {
        let (mut event, patch) = match self.correlator.correlate(event, self.clock.now()) {
            Decision::Skip => return Outcome::Skipped,
            Decision::Create(event) => (event, None),
            Decision::Patch { event, patch } => (event, Some(patch)),
        };
        let mut tries = 0;
        loop {
            if let Some(outcome) = self.attempt(&mut event, patch.as_ref()) {
                return outcome;
            }
            tries += 1;
            if tries >= self.max_tries {
                if let Some(n) = self.failed_log.hit(Instant::now()) {
                    log_event!(
                        error,
                        &event,
                        [failures_since_last_line = n,],
                        [],
                        "Unable to write event (retry limit exceeded!)"
                    );
                }
                return Outcome::GaveUp;
            }
            // The first sleep is randomised so that clients do not retry in lockstep after an
            // API server outage.
            let delay = if tries == 1 {
                self.retry_interval.mul_f64(timeutil::random_f64())
            } else {
                self.retry_interval
            };
            if (self.sleep)(delay, &self.shutdown) {
                log_event!(
                    error,
                    &event,
                    [],
                    [],
                    "Unable to write event (broadcaster is shut down)"
                );
                return Outcome::ShutDown;
            }
        }
    }

    /// client-go `recordEvent`: one try; `None` means retry after sleeping.
    fn attempt(&mut self, event: &mut Event, patch: Option<&EventPatch>) -> Option<Outcome> {
        let result = match patch {
            Some(p) => match self.sink.patch(&event.namespace, &event.name, p) {
                // The repeated Event was deleted (or never written): create it afresh, keeping
                // its count and firstTimestamp.
                Err(err) if err.is_not_found() => self.create(event),
                other => other,
            },
            None => self.create(event),
        };
        let err = match result {
            Ok(answer) => {
                self.correlator.update_state(&answer);
                log_event!(debug, event, [], [], "Event written");
                return Some(Outcome::Written);
            }
            Err(err) => err,
        };
        match &err {
            kube::Error::Config { .. } => {
                log_event!(
                    error, event, [], [, err:% = err],
                    "Unable to construct event (will not retry!)"
                );
                Some(Outcome::Rejected)
            }
            kube::Error::Api { status, .. } => {
                if err.is_already_exists() || is_namespace_terminating(status) {
                    log_event!(
                        trace, event, [], [, err:% = err],
                        "Server rejected event (will not retry!)"
                    );
                } else if let Some(n) = self.failed_log.hit(Instant::now()) {
                    log_event!(
                        error, event, [failures_since_last_line = n,], [, err:% = err],
                        "Server rejected event (will not retry!)"
                    );
                }
                Some(Outcome::Rejected)
            }
            kube::Error::Transport { .. } | kube::Error::Decode { .. } => {
                log_event!(
                    warn, event, [], [, err:% = err],
                    "Unable to write event (may retry after sleeping)"
                );
                None
            }
        }
    }

    fn create(&self, event: &mut Event) -> Result<Event, kube::Error> {
        event.resource_version.clear();
        self.sink.create(&event.namespace, &event.create_body())
    }
}

/// client-go checks for the `NamespaceTerminating` status cause; our Status carries no causes,
/// so recognise the API server's message for it.
fn is_namespace_terminating(status: &kube::Status) -> bool {
    status.code == 403 && status.message.contains("because it is being terminated")
}

#[cfg(test)]
mod tests;
