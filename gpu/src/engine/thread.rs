//! The engine's OS thread and the per-request outboxes that the worker actor reads from.
//!
//! The worker actor submits and cancels through a channel; the thread steps the engine while it
//! has work and pushes stream events into `Outputs`, waking whoever waits on that request. If the
//! engine panics, every open request gets a `Crashed` failure and `on_exit` is told why.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use runtime::ids::RequestId;
use runtime::kv::{KvDump, KvEventRecord};
use runtime::request::{GenerateRequest, StreamEvent, WorkerFailure};
use tokio::sync::{Notify, oneshot};

use super::Engine;

enum Command {
    Submit(GenerateRequest),
    Cancel(RequestId),
    Dump(oneshot::Sender<KvDump>),
    Stop,
}

/// KV events of the engine's pool, in order, waiting for the worker to publish them.
#[derive(Default)]
pub struct KvFeed {
    records: Mutex<Vec<KvEventRecord>>,
}

impl KvFeed {
    fn push(&self, records: Vec<KvEventRecord>) {
        if !records.is_empty() {
            self.records.lock().unwrap_or_else(|p| p.into_inner()).extend(records);
        }
    }

    /// Every event since the last call, oldest first.
    pub fn take(&self) -> Vec<KvEventRecord> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

struct Outbox {
    events: Vec<StreamEvent>,
    done: bool,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct OutputsInner {
    boxes: HashMap<RequestId, Outbox>,
    closed: Option<String>,
}

/// Stream events waiting to be collected, per request.
#[derive(Default)]
pub struct Outputs {
    inner: Mutex<OutputsInner>,
}

/// What `Outputs::take` found.
pub enum Taken {
    Events(Vec<StreamEvent>),
    /// Nothing yet: wait on this, then take again.
    Pending(Arc<Notify>),
    Unknown,
}

impl Outputs {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutputsInner> {
        // A panic while holding this lock cannot leave it inconsistent (each update is one insert
        // or push), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open an outbox; fails when the engine is gone.
    fn open(&self, id: &RequestId) -> Result<(), String> {
        let mut inner = self.lock();
        if let Some(reason) = &inner.closed {
            return Err(reason.clone());
        }
        inner.boxes.insert(id.clone(), Outbox { events: Vec::new(), done: false, notify: Arc::new(Notify::new()) });
        Ok(())
    }

    fn push(&self, id: &RequestId, event: StreamEvent) {
        let mut inner = self.lock();
        if let Some(b) = inner.boxes.get_mut(id) {
            b.done |= event.is_terminal();
            b.events.push(event);
            b.notify.notify_one();
        }
    }

    fn remove(&self, id: &RequestId) -> bool {
        self.lock().boxes.remove(id).is_some()
    }

    /// Fail every open request and refuse new ones.
    fn close(&self, reason: &str) {
        let mut inner = self.lock();
        inner.closed = Some(reason.to_string());
        for b in inner.boxes.values_mut() {
            if !b.done {
                b.done = true;
                b.events.push(StreamEvent::Failed(WorkerFailure::Crashed(reason.to_string())));
                b.notify.notify_one();
            }
        }
    }

    /// Collect a request's new events; the outbox goes away once its last event is collected.
    pub fn take(&self, id: &RequestId) -> Taken {
        let mut inner = self.lock();
        let Some(b) = inner.boxes.get_mut(id) else {
            return Taken::Unknown;
        };
        if b.events.is_empty() {
            return Taken::Pending(b.notify.clone());
        }
        let events = std::mem::take(&mut b.events);
        if b.done {
            inner.boxes.remove(id);
        }
        Taken::Events(events)
    }

    /// Requests accepted and not yet fully collected.
    pub fn open_requests(&self) -> usize {
        self.lock().boxes.len()
    }
}

/// The worker's side of a running engine thread. Dropping it stops the thread.
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    outputs: Arc<Outputs>,
    kv: Arc<KvFeed>,
    limits: super::EngineLimits,
}

impl EngineHandle {
    /// Start `engine` on its own thread. `on_exit` runs on that thread when it ends, with the panic
    /// message if the engine panicked.
    pub fn spawn(
        mut engine: Engine,
        name: &str,
        on_exit: impl FnOnce(Option<String>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let outputs = Arc::new(Outputs::default());
        let out = outputs.clone();
        let kv = Arc::new(KvFeed::default());
        let feed = kv.clone();
        let limits = engine.limits();
        let worker = name.to_string();
        std::thread::Builder::new().name(format!("engine-{name}")).spawn(move || {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut engine, &rx, &out, &feed, &worker)));
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(payload) => Some(panic_message(payload.as_ref())),
            };
            out.close(failure.as_deref().unwrap_or("the worker stopped"));
            on_exit(failure);
        })?;
        Ok(Self { commands: tx, outputs, kv, limits })
    }

    pub fn limits(&self) -> super::EngineLimits {
        self.limits
    }

    pub fn outputs(&self) -> &Arc<Outputs> {
        &self.outputs
    }

    /// The pool's KV events, for publishing.
    pub fn kv_feed(&self) -> &Arc<KvFeed> {
        &self.kv
    }

    /// The pool's full state (answered by the engine thread between steps); None when the
    /// engine is gone.
    pub fn kv_dump(&self) -> impl Future<Output = Option<KvDump>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        // If the thread is gone, `tx` is dropped with the command and the answer is None.
        let _ = self.commands.send(Command::Dump(tx));
        async move { rx.await.ok() }
    }

    /// Hand a request to the engine; its events then appear in `outputs()`.
    pub fn submit(&self, req: GenerateRequest) -> Result<(), String> {
        self.outputs.open(&req.id)?;
        let id = req.id.clone();
        self.commands.send(Command::Submit(req)).map_err(|_| {
            self.outputs.remove(&id);
            "the engine thread is gone".to_string()
        })
    }

    /// Stop a request and forget its output.
    pub fn cancel(&self, id: &RequestId) -> bool {
        let known = self.outputs.remove(id);
        let _ = self.commands.send(Command::Cancel(id.clone()));
        known
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
    }
}

fn run(
    engine: &mut Engine,
    rx: &mpsc::Receiver<Command>,
    out: &Outputs,
    kv: &KvFeed,
    name: &str,
) -> Result<(), String> {
    loop {
        if !engine.has_work() {
            match rx.recv() {
                Ok(cmd) => {
                    if !apply(engine, cmd, out, kv) {
                        return Ok(());
                    }
                }
                Err(_) => return Ok(()),
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => {
                    if !apply(engine, cmd, out, kv) {
                        return Ok(());
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
            }
        }
        for (id, event) in engine.step().map_err(|e| e.to_string())? {
            out.push(&id, event);
        }
        // Before the next command, so that a dump never reflects an event not yet in the feed.
        let events = engine.take_kv_events();
        metrics::counter!("armature_kv_events_total").increment(events.len() as u64);
        kv.push(events);
        publish(engine, name);
    }
}

fn publish(engine: &Engine, worker: &str) {
    let s = engine.stats();
    metrics::gauge!("armature_engine_running", "worker" => worker.to_string()).set(engine.running() as f64);
    metrics::gauge!("armature_engine_waiting", "worker" => worker.to_string()).set(engine.waiting() as f64);
    metrics::gauge!("armature_kv_blocks_active", "worker" => worker.to_string()).set(s.pool.active as f64);
    metrics::gauge!("armature_kv_blocks_cached", "worker" => worker.to_string()).set(s.pool.inactive as f64);
    metrics::gauge!("armature_kv_blocks_free", "worker" => worker.to_string()).set(s.pool.free as f64);
    metrics::counter!("armature_tokens_computed_total", "worker" => worker.to_string()).absolute(s.computed_tokens);
    metrics::counter!("armature_prefix_cache_tokens_total", "worker" => worker.to_string()).absolute(s.cached_tokens);
    metrics::counter!("armature_preemptions_total", "worker" => worker.to_string()).absolute(s.preemptions);
    metrics::counter!("armature_kv_evictions_total", "worker" => worker.to_string()).absolute(s.pool.evictions);
}

/// Apply one command; false means stop.
fn apply(engine: &mut Engine, cmd: Command, out: &Outputs, kv: &KvFeed) -> bool {
    match cmd {
        Command::Submit(req) => {
            let id = req.id.clone();
            if let Some(event) = engine.submit(req) {
                out.push(&id, event);
            }
        }
        Command::Cancel(id) => {
            if engine.cancel(&id) {
                metrics::counter!("armature_requests_cancelled_total").increment(1);
            }
        }
        Command::Dump(reply) => {
            kv.push(engine.take_kv_events());
            let _ = reply.send(engine.kv_dump());
        }
        Command::Stop => return false,
    }
    true
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("engine panicked: {msg}")
}
