//! The engine's OS thread and the per-request outboxes that the worker actor reads from.
//!
//! The worker actor submits and cancels through a channel; the thread steps the engine while it
//! has work and pushes stream events into `Outputs`, waking whoever waits on that request. If the
//! engine panics, every open request gets a `Crashed` failure and `on_exit` is told why.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use runtime::buffers::{Buffer, BufferPool};
use runtime::ids::RequestId;
use runtime::kv::{BlockLayout, KvDump, KvEventRecord, WorkerLoad};
use runtime::request::{GenerateRequest, StreamEvent, WorkerFailure};
use runtime::trace::TARGET;
use tokio::sync::{Notify, mpsc as tmpsc, oneshot};

use super::{Engine, EngineError, Reservation};
use crate::executor::{DevicePool, DeviceSink, ExecutorError};
use crate::pool::BlockId;

/// A constraint compiled off the engine's thread.
type Compiled = Option<Result<crate::constraint::Matcher, crate::constraint::ConstraintError>>;

enum Command {
    Submit(GenerateRequest),
    /// A constrained request, compiled on the handle's compiler thread.
    SubmitCompiled(GenerateRequest, Box<Compiled>),
    Cancel(RequestId),
    Dump(oneshot::Sender<KvDump>),
    Reserve(Vec<u64>, oneshot::Sender<Option<Reservation>>),
    Import(Vec<BlockId>, Buffer, oneshot::Sender<Result<(), EngineError>>),
    Commit(Reservation, Vec<u64>, oneshot::Sender<()>),
    Abort(Reservation),
    Prefill {
        id: RequestId,
        tokens: Vec<u32>,
        skip: usize,
        sink: PrefillSink,
    },
    Stop,
}

/// Blocks `first..` of a prefill for another worker, under `hashes`: exported one after another
/// into `data`, or, when `copied`, already copied into the other worker's pool (`data` empty).
#[derive(Debug)]
pub struct PrefillChunk {
    pub first: usize,
    pub hashes: Vec<u64>,
    pub data: Buffer,
    pub copied: bool,
    pub done: bool,
}

/// Where a prefill for another worker puts its blocks: every chunk is reported on `chunks`; with
/// `device`, its blocks are first copied into that pool instead of exported.
struct PrefillSink {
    chunks: tmpsc::UnboundedSender<PrefillChunk>,
    device: Option<Arc<DeviceSink>>,
}

/// Most bytes of offloaded blocks the feed holds for the worker; more are dropped (and counted),
/// so a slow tier never makes the engine hold memory without bound.
const MAX_OFFLOAD_BYTES: usize = 256 << 20;

/// KV events of the engine's pool, in order, and blocks it copied out for the cache tiers,
/// waiting for the worker to publish and offload them.
#[derive(Default)]
pub struct KvFeed {
    records: Mutex<Vec<KvEventRecord>>,
    /// How full the engine was when it last published its gauges.
    load: Mutex<WorkerLoad>,
    offloaded: Mutex<(Vec<super::OffloadedBlock>, usize)>,
}

impl KvFeed {
    fn offload(&self, blocks: Vec<super::OffloadedBlock>) {
        if blocks.is_empty() {
            return;
        }
        let mut q = self.offloaded.lock().unwrap_or_else(|p| p.into_inner());
        for b in blocks {
            if q.1 + b.data.len() > MAX_OFFLOAD_BYTES {
                metrics::counter!("armature_cache_offload_dropped_total").increment(1);
                continue;
            }
            q.1 += b.data.len();
            q.0.push(b);
        }
    }

    /// Blocks copied out for the cache tiers since the last call.
    pub fn take_offloaded(&self) -> Vec<super::OffloadedBlock> {
        let mut q = self.offloaded.lock().unwrap_or_else(|p| p.into_inner());
        q.1 = 0;
        std::mem::take(&mut q.0)
    }

    fn push(&self, records: Vec<KvEventRecord>) {
        if !records.is_empty() {
            self.records.lock().unwrap_or_else(|p| p.into_inner()).extend(records);
        }
    }

    /// How full the engine is (as of its last step).
    pub fn load(&self) -> WorkerLoad {
        *self.load.lock().unwrap_or_else(|p| p.into_inner())
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
    /// The request's spans, when it is traced.
    trace: Option<Box<Traced>>,
}

/// A traced request's span (`worker.request`, which ends with its last event) and the span of
/// its phase on the engine: `engine.prefill` from its submission to the engine (its queue and its
/// uncached prompt) to its first token, then `engine.decode`.
struct Traced {
    request: tracing::Span,
    phase: Option<tracing::Span>,
    decoding: bool,
}

impl Traced {
    /// Follow the request's phases through `event`.
    fn saw(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Delta { .. } | StreamEvent::Scored { .. } if !self.decoding => {
                self.decoding = true;
                self.phase = Some(tracing::info_span!(target: TARGET, parent: &self.request, "engine.decode"));
            }
            StreamEvent::Finished { reason, usage } => {
                self.request.record("finish", tracing::field::debug(reason));
                self.request.record("completion_tokens", usage.completion_tokens);
                self.request.record("cached_tokens", usage.cached_tokens);
            }
            StreamEvent::Failed(failure) => {
                self.request.record("otel.status_code", "ERROR");
                self.request.record("error", tracing::field::display(failure));
            }
            _ => {}
        }
    }
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
    fn open(&self, id: &RequestId) -> Result<(), EngineError> {
        let mut inner = self.lock();
        if let Some(reason) = &inner.closed {
            return Err(EngineError::Stopped(reason.clone()));
        }
        let notify = Arc::new(Notify::new());
        inner.boxes.insert(id.clone(), Outbox { events: Vec::new(), done: false, notify, trace: None });
        Ok(())
    }

    /// Trace an open request under `span` (which closes with its last event); a disabled span
    /// traces nothing.
    pub fn trace(&self, id: &RequestId, span: tracing::Span) {
        if span.is_disabled() {
            return;
        }
        if let Some(b) = self.lock().boxes.get_mut(id) {
            b.trace = Some(Box::new(Traced { request: span, phase: None, decoding: false }));
        }
    }

    /// The request went to the engine: its prefill phase starts.
    fn submitted(&self, id: &RequestId) {
        if let Some(t) = self.lock().boxes.get_mut(id).and_then(|b| b.trace.as_mut()) {
            t.phase = Some(tracing::info_span!(target: TARGET, parent: &t.request, "engine.prefill"));
        }
    }

    fn push(&self, id: &RequestId, event: StreamEvent) {
        let mut inner = self.lock();
        if let Some(b) = inner.boxes.get_mut(id) {
            b.done |= event.is_terminal();
            if let Some(t) = &mut b.trace {
                t.saw(&event);
            }
            if b.done {
                b.trace = None;
            }
            b.events.push(event);
            b.notify.notify_one();
        }
    }

    fn remove(&self, id: &RequestId) -> bool {
        let removed = self.lock().boxes.remove(id);
        // An outbox keeps its trace only until its last event.
        if let Some(t) = removed.as_ref().and_then(|b| b.trace.as_ref()) {
            t.request.record("finish", "cancelled");
        }
        removed.is_some()
    }

    /// Fail every open request and refuse new ones.
    fn close(&self, reason: &str) {
        let mut inner = self.lock();
        inner.closed = Some(reason.to_string());
        for b in inner.boxes.values_mut() {
            if !b.done {
                b.done = true;
                let failed = StreamEvent::Failed(WorkerFailure::Crashed(reason.to_string()));
                if let Some(mut t) = b.trace.take() {
                    t.saw(&failed);
                }
                b.events.push(failed);
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

    /// Whether `id`'s outbox is open (accepted, not cancelled, not fully collected).
    pub fn is_open(&self, id: &RequestId) -> bool {
        self.lock().boxes.contains_key(id)
    }

    /// Requests accepted and not yet fully collected.
    pub fn open_requests(&self) -> usize {
        self.lock().boxes.len()
    }
}

/// The worker's side of a running engine thread. Dropping it stops the thread.
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    /// Compiles constrained requests' grammars on a thread of its own (started on first use), so
    /// that no step waits for a compile (the first builds the vocabulary's trie: about 0.1 s).
    compiler: Arc<Compiler>,
    outputs: Arc<Outputs>,
    kv: Arc<KvFeed>,
    limits: super::EngineLimits,
    layout: Option<BlockLayout>,
    fingerprint: u64,
    device_pool: Option<Arc<dyn DevicePool>>,
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
        let (layout, fingerprint, device_pool) =
            (engine.block_layout(), engine.model_fingerprint(), engine.device_pool());
        let compiler =
            Arc::new(Compiler { grammars: engine.grammars(), name: name.to_string(), queue: Mutex::new(None) });
        let worker = name.to_string();
        std::thread::Builder::new().name(format!("engine-{name}")).spawn(move || {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut engine, &rx, &out, &feed, &worker)));
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(payload) => Some(panic_message(payload.as_ref())),
            };
            out.close(failure.as_deref().unwrap_or("the worker stopped"));
            on_exit(failure);
        })?;
        Ok(Self { commands: tx, compiler, outputs, kv, limits, layout, fingerprint, device_pool })
    }

    pub fn limits(&self) -> super::EngineLimits {
        self.limits
    }

    pub fn outputs(&self) -> &Arc<Outputs> {
        &self.outputs
    }

    /// How KV blocks are laid out when they move; None if this engine's cannot.
    pub fn block_layout(&self) -> Option<BlockLayout> {
        self.layout
    }

    pub fn model_fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The KV pool engines of this process can copy blocks into directly, if there is one.
    pub fn device_pool(&self) -> Option<&Arc<dyn DevicePool>> {
        self.device_pool.as_ref()
    }

    /// Set blocks aside for KV another worker will send (see `Engine::reserve`).
    pub fn reserve(&self, hashes: Vec<u64>) -> impl Future<Output = Option<Reservation>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Reserve(hashes, tx));
        async move { rx.await.ok().flatten() }
    }

    /// Write received blocks (one after another in `data`) into reserved blocks.
    pub fn import(
        &self,
        blocks: Vec<BlockId>,
        data: Buffer,
    ) -> impl Future<Output = Result<(), EngineError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Import(blocks, data, tx));
        async move { rx.await.unwrap_or(Err(EngineError::Gone)) }
    }

    /// Register a filled reservation in the prefix cache (see `Engine::commit`).
    pub fn commit(&self, r: Reservation, hashes: Vec<u64>) -> impl Future<Output = bool> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let _ = self.commands.send(Command::Commit(r, hashes, tx));
        async move { rx.await.is_ok() }
    }

    pub fn abort(&self, r: Reservation) {
        let _ = self.commands.send(Command::Abort(r));
    }

    /// Compute the KV of `tokens` for another worker; its blocks from `skip` on arrive on the
    /// returned channel as they complete (it closes early if the prefill fails or is cancelled).
    /// With `device`, the engine thread copies each chunk's blocks into that sink (from this
    /// engine's `device_pool`, which must reach the sink's) before it reports the chunk.
    pub fn prefill(
        &self,
        id: RequestId,
        tokens: Vec<u32>,
        skip: usize,
        device: Option<Arc<DeviceSink>>,
    ) -> tmpsc::UnboundedReceiver<PrefillChunk> {
        let (chunks, rx) = tmpsc::unbounded_channel();
        let _ = self.commands.send(Command::Prefill { id, tokens, skip, sink: PrefillSink { chunks, device } });
        rx
    }

    /// Open the outbox of a request that will be submitted later (`submit_opened`), so that polls
    /// wait for it meanwhile.
    pub fn open(&self, id: &RequestId) -> Result<(), EngineError> {
        self.outputs.open(id)
    }

    /// Submit a request whose outbox is open.
    pub fn submit_opened(&self, req: GenerateRequest) -> Result<(), EngineError> {
        let id = req.id.clone();
        self.outputs.submitted(&id);
        self.send_submission(req).map_err(|_| {
            self.outputs.remove(&id);
            EngineError::Gone
        })
    }

    /// A request to the engine thread; a constrained one by way of the compiler thread.
    fn send_submission(&self, req: GenerateRequest) -> Result<(), ()> {
        if req.sampling.constraint.is_none() {
            return self.commands.send(Command::Submit(req)).map_err(drop);
        }
        self.compiler.compile(req, &self.commands)
    }

    /// Fail a request whose outbox is open and that never reached the engine.
    pub fn fail_opened(&self, id: &RequestId, failure: WorkerFailure) {
        self.outputs.push(id, StreamEvent::Failed(failure));
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
    pub fn submit(&self, req: GenerateRequest) -> Result<(), EngineError> {
        self.outputs.open(&req.id)?;
        self.submit_opened(req)
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

/// What the engine thread keeps beside the engine.
struct ThreadState<'a> {
    out: &'a Outputs,
    kv: &'a KvFeed,
    /// Where each prefill for another worker sends its blocks.
    sinks: HashMap<RequestId, PrefillSink>,
    buffers: BufferPool,
}

fn run(
    engine: &mut Engine,
    rx: &mpsc::Receiver<Command>,
    out: &Outputs,
    kv: &KvFeed,
    name: &str,
) -> Result<(), ExecutorError> {
    let mut st = ThreadState { out, kv, sinks: HashMap::new(), buffers: BufferPool::new(16) };
    // The worker's gauges and counters exist from its start, before its first step.
    publish(engine, name, kv);
    loop {
        if !engine.has_work() {
            match rx.recv() {
                Ok(cmd) => {
                    if !apply(engine, cmd, &mut st) {
                        return Ok(());
                    }
                }
                Err(_) => return Ok(()),
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => {
                    if !apply(engine, cmd, &mut st) {
                        return Ok(());
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
            }
        }
        // Commands evict and register blocks too (reservations, commits).
        kv.offload(engine.take_offloaded());
        for (id, event) in engine.step()? {
            out.push(&id, event);
        }
        // Before any command can reuse their blocks.
        ship_prefilled(engine, &mut st);
        // Before the next command, so that a dump never reflects an event not yet in the feed.
        let events = engine.take_kv_events();
        metrics::counter!("armature_kv_events_total").increment(events.len() as u64);
        kv.push(events);
        kv.offload(engine.take_offloaded());
        publish(engine, name, kv);
    }
}

/// Why a prefill's completed blocks could not be sent on.
#[derive(Debug, thiserror::Error)]
enum ShipError {
    #[error("copying them into the other pool: {0}")]
    Copy(#[from] crate::executor::SinkError),
    #[error("this engine has no device pool to copy from")]
    NoPool,
    #[error("exporting them: {0}")]
    Export(#[from] ExecutorError),
}

/// Send on the blocks prefills completed this step: copied into the other worker's pool where
/// the prefill has a device sink, else exported.
fn ship_prefilled(engine: &mut Engine, st: &mut ThreadState<'_>) {
    let block_bytes = engine.block_layout().map_or(0, |l| l.block_bytes());
    for p in engine.take_prefilled() {
        // Nobody waits for a cancelled prefill's blocks: let them go unshipped.
        let Some(sink) = st.sinks.get(&p.id) else {
            engine.release_prefilled(&p);
            continue;
        };
        let copied = sink.device.is_some();
        let (data, shipped) = match (&sink.device, engine.device_pool()) {
            (Some(device), Some(own)) => {
                let done = device.copy(&*own, p.first, &p.blocks).map_err(ShipError::from);
                if done.is_ok() {
                    let bytes = (p.blocks.len() * block_bytes) as u64;
                    metrics::counter!("armature_transfer_bytes_total", "direction" => "out", "path" => "device")
                        .increment(bytes);
                }
                (st.buffers.take(0), done)
            }
            (Some(_), None) => (st.buffers.take(0), Err(ShipError::NoPool)),
            (None, _) => {
                let mut data = st.buffers.take(p.blocks.len() * block_bytes);
                let exported = engine.export_blocks(&p.blocks, &mut data).map_err(ShipError::from);
                (data, exported)
            }
        };
        engine.release_prefilled(&p);
        match shipped {
            Ok(()) => {
                let chunk = PrefillChunk { first: p.first, hashes: p.hashes, data, copied, done: p.done };
                if sink.chunks.send(chunk).is_err() || p.done {
                    st.sinks.remove(&p.id);
                }
            }
            Err(e) => {
                tracing::warn!(request = %p.id, "shipping prefilled blocks failed: {e}");
                engine.cancel(&p.id);
                st.sinks.remove(&p.id);
            }
        }
    }
}

fn publish(engine: &Engine, worker: &str, kv: &KvFeed) {
    let s = engine.stats();
    *kv.load.lock().unwrap_or_else(|p| p.into_inner()) = WorkerLoad {
        kv_active: s.pool.active as u32,
        kv_total: s.pool.total as u32,
        running: engine.running() as u32,
        waiting: engine.waiting() as u32,
    };
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

/// The compiler thread of an engine's constrained requests: it takes them in order, compiles
/// their constraints and hands them on to the engine thread.
struct Compiler {
    grammars: Arc<crate::constraint::Grammars>,
    name: String,
    queue: Mutex<Option<CompileQueue>>,
}

/// Requests to compile, each with where to send it next.
type CompileQueue = mpsc::Sender<(GenerateRequest, mpsc::Sender<Command>)>;

impl Compiler {
    fn compile(&self, req: GenerateRequest, engine: &mpsc::Sender<Command>) -> Result<(), ()> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = queue.as_ref() {
            return tx.send((req, engine.clone())).map_err(drop);
        }
        let (tx, rx): (CompileQueue, _) = mpsc::channel();
        let grammars = self.grammars.clone();
        // The thread ends when the handle (and with it this sender) is dropped.
        std::thread::Builder::new()
            .name(format!("grammar-{}", self.name))
            .spawn(move || {
                for (req, engine) in rx {
                    let matcher = req.sampling.constraint.as_ref().map(|c| grammars.matcher(c));
                    if engine.send(Command::SubmitCompiled(req, Box::new(matcher))).is_err() {
                        return;
                    }
                }
            })
            .map_err(drop)?;
        let sent = tx.send((req, engine.clone())).map_err(drop);
        *queue = Some(tx);
        sent
    }
}

/// Apply one command; false means stop.
fn apply(engine: &mut Engine, cmd: Command, st: &mut ThreadState<'_>) -> bool {
    match cmd {
        Command::Submit(req) => {
            let id = req.id.clone();
            if let Some(event) = engine.submit(req) {
                st.out.push(&id, event);
            }
        }
        // Cancelled while it compiled: its outbox is gone, and so is it.
        Command::SubmitCompiled(req, _) if !st.out.is_open(&req.id) => {}
        Command::SubmitCompiled(req, matcher) => {
            let id = req.id.clone();
            if let Some(event) = engine.submit_compiled(req, *matcher) {
                st.out.push(&id, event);
            }
        }
        Command::Cancel(id) => {
            st.sinks.remove(&id);
            if engine.cancel(&id) {
                metrics::counter!("armature_requests_cancelled_total").increment(1);
            }
        }
        Command::Dump(reply) => {
            st.kv.push(engine.take_kv_events());
            let _ = reply.send(engine.kv_dump());
        }
        Command::Reserve(hashes, reply) => {
            let r = engine.reserve(&hashes);
            if let Err(Some(r)) = reply.send(r) {
                engine.abort(r);
            }
        }
        Command::Import(blocks, data, reply) => {
            let n = engine.block_layout().map_or(0, |l| l.block_bytes());
            let result = if n == 0 || data.len() != n * blocks.len() {
                Err(EngineError::ImportSize { bytes: data.len(), blocks: blocks.len() })
            } else {
                blocks
                    .iter()
                    .zip(data.chunks_exact(n))
                    .try_for_each(|(&b, bytes)| engine.import_block(b, bytes))
                    .map_err(EngineError::Import)
            };
            let _ = reply.send(result);
        }
        Command::Commit(r, hashes, reply) => {
            engine.commit(r, &hashes);
            // The newly registered blocks go out with the next publication.
            st.kv.push(engine.take_kv_events());
            let _ = reply.send(());
        }
        Command::Abort(r) => engine.abort(r),
        Command::Prefill { id, tokens, skip, sink } => match engine.submit_prefill(id.clone(), tokens, skip) {
            Ok(()) => {
                st.sinks.insert(id, sink);
            }
            Err(why) => tracing::warn!(request = %id, "prefill refused: {why}"),
        },
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
