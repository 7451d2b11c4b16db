//! Request tracing: OpenTelemetry spans, exported over OTLP/HTTP when `telemetry.otlp_endpoint`
//! is set, and the W3C trace context that carries a request's trace from the client's
//! `traceparent` header across the nodes its work crosses.
//!
//! Spans of a request's path are `tracing` spans under the target `TARGET` (never written to the
//! logs): `tracing-opentelemetry` turns them into OpenTelemetry spans, and the SDK's batch
//! processor sends them from its own thread. The HTTP posts themselves run on the node's tokio
//! runtime (`RuntimeClient`), with hyper, which the node already has. Without an endpoint no
//! layer is installed, the spans cost what a disabled `tracing` span costs, and a client's trace
//! context is still carried on (`outgoing`), so nodes that export join the client's trace.
//!
//! Calling order, per span: create it, `set_parent` from the context that came with the work
//! (before the span is entered or its context read), then `context_of` for what to send on.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use vocab::config::TelemetrySection;
use vocab::request::TraceContext;

/// The `tracing` target of every span and event that is exported as a trace.
pub const TARGET: &str = "armature::trace";

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("the OTLP exporter for {endpoint} could not be built")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("tracing needs a tokio runtime to send its exports on")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
}

/// The exporting side of tracing, while it runs; `shutdown` sends what is still buffered.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl fmt::Debug for Tracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tracing")
    }
}

impl Tracing {
    /// Send the spans still buffered and stop. Blocks until the exports are done or timed out:
    /// call it off the async runtime's threads (`spawn_blocking`), which the exports run on.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_GRACE) {
            tracing::warn!("trace export at shutdown: {e}");
        }
    }
}

/// The OpenTelemetry layer and its exporter for `section` (None without an endpoint); `node`
/// names this process in the spans' resource (`service.instance.id`).
pub(crate) fn layer<S>(
    section: &TelemetrySection,
    node: &str,
) -> Result<Option<(impl tracing_subscriber::Layer<S>, Tracing)>, TraceError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let Some(endpoint) = &section.otlp_endpoint else {
        return Ok(None);
    };
    let handle = tokio::runtime::Handle::try_current().map_err(TraceError::NoRuntime)?;
    let timeout = section.otlp_timeout.get();
    let client = RuntimeClient {
        inner: Arc::new(opentelemetry_http::hyper::HyperClient::with_default_connector(timeout, None)),
        handle,
    };
    let url = endpoint.traces_url();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(url.clone())
        .with_timeout(timeout)
        .build()
        .map_err(|source| TraceError::Exporter { endpoint: url, source })?;
    let batches = BatchConfigBuilder::default().with_scheduled_delay(section.otlp_export_interval.get()).build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
    let resource = Resource::builder()
        .with_service_name(section.service_name.clone())
        .with_attributes([
            KeyValue::new("service.instance.id", node.to_string()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(section.sample_ratio.get()))))
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("armature")).with_threads(false);
    Ok(Some((layer, Tracing { provider })))
}

/// The exporter's HTTP client: hyper's, run on the node's runtime, since the batch processor
/// calls it from a thread of its own.
#[derive(Debug)]
struct RuntimeClient {
    inner: Arc<opentelemetry_http::hyper::HyperClient>,
    handle: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = self.inner.clone();
        self.handle.spawn(async move { inner.send_bytes(request).await }).await?
    }
}

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// The trace context of a request's HTTP headers (`traceparent`, `tracestate`), if they hold a
/// valid one; written out again, so that what goes on is well formed.
pub fn from_headers(headers: &http::HeaderMap) -> Option<TraceContext> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    if !well_formed(value) {
        return None;
    }
    let cx = propagator().extract_with_context(&Context::new(), &opentelemetry_http::HeaderExtractor(headers));
    carrier(&cx)
}

/// `span`'s trace context, to send with the work it hands on; None when it is not exported.
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    carrier(&span.context())
}

/// What work handed on from `span` carries: `span`'s context, or else (no exporter here) the
/// context the work came with.
pub fn outgoing(span: &tracing::Span, inherited: Option<&TraceContext>) -> Option<TraceContext> {
    context_of(span).or_else(|| inherited.cloned())
}

/// Make `span` a child of the (remote) span `parent`; nothing when there is none, it cannot be
/// read, or no exporter runs.
pub fn set_parent(span: &tracing::Span, parent: Option<&TraceContext>) {
    let Some(parent) = parent.filter(|p| well_formed(&p.traceparent)) else {
        return;
    };
    let cx = propagator().extract_with_context(&Context::new(), &Carried(parent));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// `span`'s trace id (32 hex digits), when it is exported.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Whether `traceparent` has the W3C form: `version-traceid-parentid-flags` in lower-case hex of
/// 2, 32, 16 and 2 digits (version `ff` is invalid; a later version may add fields after a
/// `-`). The SDK's parser takes shorter ids too; what is carried on must be exact.
fn well_formed(traceparent: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let mut parts = traceparent.split('-');
    let (Some(version), Some(trace), Some(parent), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let rest_ok = if version == "00" { parts.next().is_none() } else { true };
    hex(version, 2) && version != "ff" && hex(trace, 32) && hex(parent, 16) && hex(flags, 2) && rest_ok
}

fn carrier(cx: &Context) -> Option<TraceContext> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut fields = Fields::default();
    propagator().inject_context(cx, &mut fields);
    let traceparent = fields.0.remove("traceparent")?;
    Some(TraceContext { traceparent, tracestate: fields.0.remove("tracestate").unwrap_or_default() })
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

struct Carried<'a>(&'a TraceContext);

impl Extractor for Carried<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(&self.0.traceparent),
            "tracestate" if !self.0.tracestate.is_empty() => Some(&self.0.tracestate),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// How long the exporter may take at shutdown before the node stops anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_clients_trace_context_is_read_and_written_out_again() {
        let cx = from_headers(&headers(&[("traceparent", CLIENT), ("tracestate", "vendor=1")])).unwrap();
        assert_eq!(cx.traceparent, CLIENT);
        assert_eq!(cx.tracestate, "vendor=1");
        // Upper-case hex is not W3C.
        assert!(from_headers(&headers(&[("traceparent", &CLIENT.to_uppercase())])).is_none());
    }

    #[test]
    fn bad_trace_contexts_start_no_parent() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert!(from_headers(&headers(&[("traceparent", bad)])).is_none(), "{bad:?}");
        }
        assert!(from_headers(&http::HeaderMap::new()).is_none());
    }

    #[test]
    fn without_an_exporter_work_carries_the_context_it_came_with() {
        let span = tracing::info_span!(target: TARGET, "test.span");
        let came = TraceContext { traceparent: CLIENT.into(), tracestate: String::new() };
        set_parent(&span, Some(&came));
        assert_eq!(context_of(&span), None);
        assert_eq!(outgoing(&span, Some(&came)), Some(came));
        assert_eq!(trace_id(&span), None);
    }
}
