//! HTTP routes and handlers: body limits, OpenAI responses (whole or SSE), health, metrics and the
//! `x-request-id` header.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use runtime::ids::RequestId;
use runtime::request::{GenerateRequest, StreamEvent};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::Gateway;
use super::auth::{self, Auth, Caller};
use super::choices::{self, Choice};
use super::driver::{self, EventTx, Update};
use super::error::ApiError;
use super::openai::logprobs::Writer;
use super::openai::{self, Endpoint, ParsedRequest, ResponseMeta};
use super::{anthropic, responses, tokenize};
use crate::protocol::{RouterHandle, WorkerHandle};

/// Longest `/health` and `/debug/router` wait for the router.
pub(super) const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How often an SSE stream with nothing to say sends a comment (so proxies keep it open).
/// A streamed response in the making: the events it has ready, whether it is over, and where its
/// next input comes from. `sse` pumps it.
pub(super) trait SsePump: Send + 'static {
    type Input: Send;
    /// The next event ready to send.
    fn ready(&mut self) -> Option<Event>;
    fn done(&self) -> bool;
    /// The next input; None when the inputs ended.
    fn next(&mut self) -> impl std::future::Future<Output = Option<Self::Input>> + Send;
    fn push(&mut self, input: Self::Input);
    fn fail(&mut self, e: ApiError);
}

/// Stream `pump`'s events (with keep-alives) until it is done; inputs that end first are a
/// failure in the stream.
pub(super) fn sse<P: SsePump>(pump: P) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let events = futures_util::stream::unfold(pump, |mut s| async move {
        loop {
            if let Some(ev) = s.ready() {
                return Some((Ok(ev), s));
            }
            if s.done() {
                return None;
            }
            match s.next().await {
                Some(input) => s.push(input),
                None => s.fail(ApiError::unavailable("The request ended without a result.")),
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
}

const SSE_KEEP_ALIVE: Duration = Duration::from_secs(10);

pub(super) type EventRx = mpsc::Receiver<Update>;

pub fn router(gw: Arc<Gateway>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/responses", post(responses::responses))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route_layer(middleware::from_fn_with_state(gw.clone(), auth::require_key));
    let admin = Router::new()
        .route("/debug/router", get(router_status))
        .route("/debug/status", get(super::dashboard::status))
        .route("/debug/role", post(set_role))
        .route_layer(middleware::from_fn_with_state(gw.clone(), auth::require_admin));
    Router::new()
        .merge(api)
        .merge(admin)
        .route("/health", get(health))
        .route("/dashboard", get(super::dashboard::page))
        .route("/metrics", get(metrics_text))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(auth::require_json))
        .layer(middleware::from_fn(auth::header_limits))
        .layer(middleware::from_fn_with_state(gw.clone(), auth::cors))
        .layer(middleware::from_fn(request_id))
        .with_state(gw)
}

/// The routes that generate, whose requests are traced (`runtime::trace`).
const GENERATION_PATHS: [&str; 4] = ["/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"];

async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 200)
        .map(str::to_string)
        .unwrap_or_else(|| RequestId::new_random().0);
    if let Ok(v) = HeaderValue::from_str(&id) {
        // Handlers read it from here, whether the client sent it or not.
        req.headers_mut().insert("x-request-id", v);
    }
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("http", request_id = %id, method = %req.method(), path = %path);
    let mut resp = if GENERATION_PATHS.contains(&path.as_str()) {
        // The request's server span: the root of its trace here, or a child of the client's.
        let root = tracing::info_span!(
            target: runtime::trace::TARGET,
            "gateway.request",
            otel.name = %format!("{} {path}", req.method()),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %req.method(),
            http.route = %path,
            http.response.status_code = tracing::field::Empty,
            armature.request_id = %id,
        );
        runtime::trace::set_parent(&root, runtime::trace::from_headers(req.headers()).as_ref());
        let resp = next.run(req).instrument(span).instrument(root.clone()).await;
        root.record("http.response.status_code", resp.status().as_u16());
        if resp.status().is_server_error() {
            root.record("otel.status_code", "ERROR");
        }
        resp
    } else {
        next.run(req).instrument(span).await
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let known = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
        "/v1/models",
        "/v1/models/{id}",
        "/tokenize",
        "/detokenize",
        "/health",
        "/metrics",
    ];
    let path = if path.starts_with("/v1/models/") { "/v1/models/{id}".to_string() } else { path };
    let path = if known.contains(&path.as_str()) { path } else { "other".into() };
    metrics::counter!("armature_http_requests_total", "path" => path, "status" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

async fn chat(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    complete(gw, Endpoint::Chat, req).await
}

async fn completions(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    complete(gw, Endpoint::Completion, req).await
}

async fn read_body(gw: &Gateway, headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let limit = gw.config.max_body.bytes();
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let wait = gw.config.body_timeout.get();
    match tokio::time::timeout(wait, axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))).await {
        Ok(read) => read.map_err(|_| ApiError::too_large(limit)),
        Err(_) => Err(ApiError::body_timeout(wait)),
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn complete(gw: Arc<Gateway>, endpoint: Endpoint, req: Request) -> Response {
    let (bytes, incoming) = match accept(&gw, req).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let parse = {
        let gw = gw.clone();
        off_runtime(move || openai::parse(endpoint, &bytes, &gw.model))
    };
    let parsed = match parse.await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) | Err(e) => return e.into_response(),
    };
    let (stream, include_usage, n) = (parsed.stream, parsed.include_usage, parsed.n);
    let writer = || {
        let chat = endpoint == Endpoint::Chat;
        parsed.sampling.logprobs.is_some().then(|| Writer::new(gw.model.tokenizer.clone(), chat))
    };
    // With several choices the first runs to its first event, so that its prompt's blocks are in
    // the pool when the others start: they find them there, and the prompt is computed once. A
    // scored prompt (`echo` with `logprobs`) is scored by the first; the others echo its scores.
    let first = match run(&gw, incoming.clone(), parsed.clone(), true, stream && n == 1).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let id = first.id.clone();
    let scored = first.first.clone().filter(|ev| matches!(ev, StreamEvent::Scored { .. }));
    let others = (1..n).map(|i| {
        let mut p = parsed.clone();
        p.sampling.seed = parsed.sampling.seed.wrapping_add(u64::from(i));
        p.sampling.prompt_logprobs = None;
        run(&gw, incoming.clone(), p, false, stream || scored.is_some())
    });
    let choice = |r: Running, early: Option<StreamEvent>| Choice {
        first: early.into_iter().chain(r.first).collect(),
        rx: r.rx,
        timing: r.timing,
        logprobs: writer(),
        echo: parsed.echo.clone(),
        tools: parsed.tools.as_ref().map(super::tools::reply::Reading::of),
        reasoning: parsed.reasoning,
    };
    let mut choices = vec![choice(first, None)];
    for r in futures_util::future::join_all(others).await {
        match r {
            Ok(r) => choices.push(choice(r, scored.clone())),
            Err(e) => return e.into_response(),
        }
    }
    let meta = ResponseMeta {
        id: format!("{}-{id}", if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" }),
        created: unix_now(),
        model: gw.model.name.clone(),
        endpoint,
    };
    if stream {
        choices::sse(meta, include_usage, choices).into_response()
    } else {
        choices::whole(meta, choices).await
    }
}

/// Run `read` (parsing a body: templating and tokenizing take a while on long prompts) off the
/// async runtime, so that health checks and streams on the same threads are not held up; in a
/// `gateway.parse` span.
pub(super) async fn off_runtime<T: Send + 'static>(read: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    let span = tracing::info_span!(target: runtime::trace::TARGET, "gateway.parse");
    tokio::task::spawn_blocking(move || span.in_scope(read))
        .await
        .map_err(|_| ApiError::unavailable("The request could not be read."))
}

/// A request's start, before its body is parsed: when it came, its headers and its caller.
#[derive(Clone)]
pub(super) struct Incoming {
    started: Instant,
    path: String,
    headers: HeaderMap,
    caller: Option<Caller>,
}

/// Take a request: refuse it while draining, and read its body.
pub(super) async fn accept(gw: &Gateway, req: Request) -> Result<(axum::body::Bytes, Incoming), ApiError> {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let caller = parts.extensions.get::<Caller>().cloned();
    if gw.node.is_draining() {
        return Err(ApiError::unavailable("This node is draining; retry on another."));
    }
    let bytes = read_body(gw, &parts.headers, body).await?;
    let path = parts.uri.path().to_string();
    Ok((bytes, Incoming { started, path, headers: parts.headers, caller }))
}

/// A request on its way: its id, its first event (None when a stream should start before it),
/// the rest of its events, and what records its timings.
pub(super) struct Running {
    pub id: RequestId,
    pub first: Option<StreamEvent>,
    pub rx: EventRx,
    pub timing: Timing,
}

/// Start driving a parsed request (admitted under its caller's limits when `admit`; further
/// choices of one request are not); returns once a worker took it (`at_admission`, for a
/// stream) or its first event came, or with its error.
pub(super) async fn run(
    gw: &Arc<Gateway>,
    incoming: Incoming,
    mut parsed: ParsedRequest,
    admit: bool,
    at_admission: bool,
) -> Result<Running, ApiError> {
    let Incoming { started, path, headers, caller } = incoming;
    if let Some(caller) = &caller {
        if admit {
            gw.auth.admit(caller, parsed.prompt_tokens.len())?;
        }
        parsed.sampling.priority = caller.priority;
    }
    let id = RequestId::new_random();
    tracing::debug!(request = %id, prompt_tokens = parsed.prompt_tokens.len(), stream = parsed.stream, "request accepted");
    gw.node.latency.arrived(parsed.prompt_tokens.len());
    let (tx, mut rx): (EventTx, EventRx) = mpsc::channel(64);
    let tag = headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    // The client's trace context, carried on as it came when this node exports no spans.
    let trace = runtime::trace::from_headers(&headers);
    let req =
        GenerateRequest { id: id.clone(), tag, trace, prompt_tokens: parsed.prompt_tokens, sampling: parsed.sampling };
    let key = caller.as_ref().map(|c| c.id.clone());
    let span = tracing::info_span!(
        target: runtime::trace::TARGET,
        "gateway.generate",
        armature.request = %id,
        prompt_tokens = req.prompt_tokens.len(),
        max_tokens = req.sampling.max_tokens,
        completion_tokens = tracing::field::Empty,
        cached_tokens = tracing::field::Empty,
        attempts = tracing::field::Empty,
        migrations = tracing::field::Empty,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let access = super::access::Access::new(started, path, gw.model.name.clone(), key, req.prompt_tokens.len() as u32)
        .traced(span.clone());
    tokio::spawn(driver::drive(gw.clone(), req, tx, access).instrument(span).in_current_span());
    // A stream starts as soon as a worker takes the request, so a request waiting in a queue has
    // its headers and keep-alives; errors before that get their own status.
    let first = loop {
        match rx.recv().await {
            Some(Update::Admitted) if at_admission => break None,
            Some(Update::Admitted) => continue,
            Some(Update::Event(ev)) => break Some(ev),
            Some(Update::Error(e)) => return Err(e),
            None => return Err(ApiError::unavailable("The request ended without a result.")),
        }
    };
    let timing =
        Timing { started, first_token: None, last_token: None, node: gw.node.clone(), caller, auth: gw.auth.clone() };
    Ok(Running { id, first, rx, timing })
}

pub(super) struct Timing {
    started: Instant,
    /// When the first token came, after `started`.
    first_token: Option<std::time::Duration>,
    /// When the latest tokens came.
    last_token: Option<Instant>,
    /// The planner's window of what this gateway sees.
    node: Arc<crate::protocol::NodeState>,
    /// The caller, whose token limit the completion is counted against.
    caller: Option<Caller>,
    auth: Arc<Auth>,
}

impl Timing {
    pub(super) fn saw(&mut self, ev: &StreamEvent) {
        match ev {
            StreamEvent::Delta { tokens, .. } => {
                let now = Instant::now();
                if let Some(last) = self.last_token.replace(now)
                    && *tokens > 0
                {
                    let gap = (now - last).as_secs_f64() / f64::from(*tokens);
                    for _ in 0..*tokens {
                        metrics::histogram!("armature_inter_token_seconds").record(gap);
                    }
                }
                if self.first_token.is_none() {
                    let ttft = self.started.elapsed();
                    self.first_token = Some(ttft);
                    metrics::histogram!("armature_time_to_first_token_seconds").record(ttft.as_secs_f64());
                    self.node.latency.first_token(ttft);
                }
                metrics::counter!("armature_generated_tokens_total").increment(u64::from(*tokens));
                self.node.latency.generated(*tokens);
            }
            StreamEvent::Finished { usage, .. } => {
                let total = self.started.elapsed();
                metrics::histogram!("armature_request_duration_seconds").record(total.as_secs_f64());
                if let Some(ttft) = self.first_token {
                    self.node.latency.finished(ttft, total, usage.completion_tokens);
                }
                if let Some(caller) = &self.caller {
                    self.auth.charge(caller, usage.completion_tokens);
                }
            }
            StreamEvent::Scored { .. } | StreamEvent::Failed(_) => {}
        }
    }
}

fn model_object(gw: &Gateway) -> Value {
    json!({ "id": gw.model.name, "object": "model", "created": gw.node.started_unix, "owned_by": "armature" })
}

async fn models(State(gw): State<Arc<Gateway>>) -> Response {
    axum::Json(json!({ "object": "list", "data": [model_object(&gw)] })).into_response()
}

/// `GET /v1/models/{id}` (what `client.models.retrieve` asks).
async fn model(State(gw): State<Arc<Gateway>>, axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    if id == gw.model.name {
        axum::Json(model_object(&gw)).into_response()
    } else {
        ApiError::unknown_model(&id, &gw.model.name).into_response()
    }
}

async fn health(State(gw): State<Arc<Gateway>>) -> Response {
    let (status, body) = health_view(&gw).await;
    (status, axum::Json(body)).into_response()
}

/// `/health`'s answer: its status code and body.
pub(super) async fn health_view(gw: &Gateway) -> (StatusCode, serde_json::Value) {
    if gw.node.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, json!({ "status": "draining" }));
    }
    let workers = match RouterHandle::local() {
        Some(r) => r.status(STATUS_TIMEOUT).await.map(|s| s.live_workers).unwrap_or_default(),
        None => Vec::new(),
    };
    // Workers announcing another model than this gateway's get none of its requests: listed apart.
    let models = runtime::discovery::models();
    let announced: std::collections::HashMap<_, _> = runtime::discovery::workers()
        .into_iter()
        .filter_map(|(id, cell)| models.get(&cell.get_id()).map(|m| (id, *m)))
        .collect();
    let (names, wrong_model): (Vec<String>, Vec<String>) = {
        let (ok, wrong): (Vec<_>, Vec<_>) =
            workers.iter().partition(|w| announced.get(*w).is_none_or(|m| *m == gw.model_identity));
        (ok.iter().map(ToString::to_string).collect(), wrong.iter().map(ToString::to_string).collect())
    };
    let status = if names.is_empty() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let word = if names.is_empty() { "no_workers" } else { "ok" };
    let body = json!({
        "status": word, "workers": names, "wrong_model": wrong_model, "dead_nodes": gw.node.view.dead_nodes(),
    });
    (status, body)
}

/// What this node's router believes: index size and fingerprint, per-worker blocks and load,
/// and its recent decisions with their explanations.
async fn router_status() -> Response {
    match RouterHandle::local() {
        Some(r) => match r.status(STATUS_TIMEOUT).await {
            Ok(status) => axum::Json(status).into_response(),
            Err(e) => ApiError::unavailable(format!("The router did not answer: {e}")).into_response(),
        },
        None => ApiError::unavailable("This node runs no router.").into_response(),
    }
}

/// `{"worker": "node/device", "role": "prefill" | "decode" | "aggregated"}`: tell a worker to
/// take another role.
async fn set_role(body: axum::body::Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct SetRole {
        worker: String,
        role: runtime::config::WorkerRole,
    }
    let req: SetRole = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::bad_request(format!("expected {{\"worker\": ..., \"role\": ...}}: {e}"), None)
                .into_response();
        }
    };
    let Some(id) = runtime::ids::WorkerId::parse(&req.worker) else {
        return ApiError::bad_request(format!("{:?} is not node/device", req.worker), Some("worker")).into_response();
    };
    let Some(worker) = WorkerHandle::find(&id) else {
        return ApiError::bad_request(format!("no worker {id} in the cluster"), Some("worker")).into_response();
    };
    match worker.set_role(req.role) {
        Ok(()) => axum::Json(json!({ "worker": id.to_string(), "role": req.role })).into_response(),
        Err(e) => ApiError::unavailable(format!("worker {id}: {e}")).into_response(),
    }
}

async fn metrics_text() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], runtime::telemetry::prometheus().render()).into_response()
}

async fn fallback(req: Request) -> Response {
    ApiError::not_found(req.uri().path()).into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    ApiError::method_not_allowed(req.method().as_str(), req.uri().path()).into_response()
}
