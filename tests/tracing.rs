//! Request tracing across nodes: a two-node disaggregated topology (`prefill`, and `decode` with
//! the gateway and router) exports its spans over OTLP/HTTP to a receiver in this test, which
//! decodes them with the OpenTelemetry protobuf types. A request with the client's `traceparent`
//! gives one trace under the client's trace id, whose spans cross the gateway, the decode worker
//! and the prefill worker of the other process, each a child of the span that handed it the work;
//! a client's decision not to sample is followed; the access line names the trace.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use support::*;

/// One exported span, with the node (`service.instance.id`) that sent it.
#[derive(Clone, Debug)]
struct Received {
    node: String,
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text(&kv.value))).collect()
}

/// An OTLP/HTTP receiver on loopback: every `POST /v1/traces` body it gets, decoded, lands in the
/// returned list (HTTP/1.1, keep-alive, `Content-Length` bodies as hyper sends them).
fn receiver() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let out = spans.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let out = out.clone();
            std::thread::spawn(move || serve(conn, &out));
        }
    });
    (port, spans)
}

fn serve(conn: TcpStream, out: &Mutex<Vec<Received>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        assert!(request_line.starts_with("POST /v1/traces "), "{request_line}");
        let export = ExportTraceServiceRequest::decode(&body[..]).expect("an OTLP trace export");
        let mut got = out.lock().unwrap();
        for rs in export.resource_spans {
            let resource = attributes(&rs.resource.map(|r| r.attributes).unwrap_or_default());
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Received {
                        node: resource.get("service.instance.id").cloned().unwrap_or_default(),
                        service: resource.get("service.name").cloned().unwrap_or_default(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent: hex(&s.parent_span_id),
                        name: s.name,
                        attributes: attributes(&s.attributes),
                    });
                }
            }
        }
        drop(got);
        let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn topology(gateway: u16, otlp: u16, certs: &std::path::Path) -> String {
    let p = || format!("127.0.0.1:{}", free_port());
    format!(
        r#"
[cluster]
name = "traced"
cookie = "traced"
heartbeat_interval = "250ms"
lease_timeout = "2s"

[model]
source = "test"
test = {{ step_delay = "2ms" }}

[router]
disagg_min_blocks = 2

[transport]
certs = {certs:?}

[telemetry]
otlp_endpoint = "http://127.0.0.1:{otlp}"
otlp_export_interval = "100ms"
service_name = "armature-test"

[[nodes]]
name = "prefill"
control = "{}"
data = "{}"
workers = [{{ device = "cpu", role = "prefill" }}]

[[nodes]]
name = "decode"
control = "{}"
data = "{}"
gateway = "127.0.0.1:{gateway}"
roles = ["gateway", "router"]
workers = [{{ device = "cpu", role = "decode" }}]
"#,
        p(),
        p(),
        p(),
        p(),
    )
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const UNSAMPLED: &str = "5cf92f3577b34da6a3ce929d0e0e4737";
const LATER: &str = "6df92f3577b34da6a3ce929d0e0e4738";

fn complete(port: u16, seed: usize, traceparent: &str) -> serde_json::Value {
    let body = serde_json::json!({
        "model": "armature-test", "prompt": prompt(seed, 6), "max_tokens": 6, "temperature": 0
    });
    let headers = [("traceparent", traceparent)];
    let (status, _, text) = http_with("POST", port, "/v1/completions", Some(&body.to_string()), &headers);
    assert_eq!(status, 200, "{text}");
    json(&text)
}

fn of_trace(spans: &Mutex<Vec<Received>>, trace: &str) -> Vec<Received> {
    spans.lock().unwrap().iter().filter(|s| s.trace_id == trace).cloned().collect()
}

/// The gateway's server span is named for its method and route, as OpenTelemetry's HTTP
/// conventions name server spans.
const ROOT: &str = "POST /v1/completions";

const EXPECTED: [&str; 11] = [
    ROOT,
    "gateway.parse",
    "gateway.generate",
    "router.place",
    "gateway.attempt",
    "gateway.stream",
    "worker.request",
    "kv.fetch",
    "engine.prefill",
    "engine.decode",
    "worker.prefill",
];

#[test]
fn one_trace_spans_the_gateway_and_both_workers_of_two_nodes() {
    let (otlp, spans) = receiver();
    let port = free_port();
    let dir = temp_dir("tracing");
    let certs = dir.join("certs");
    let config = dir.join("traced.toml");
    std::fs::write(&config, topology(port, otlp, &certs)).unwrap();
    cert_init(&config);
    let launch = Proc::spawn(&["launch", "--config", config.to_str().unwrap()], dir.join("launch.log"));
    let both = || {
        let (status, _, body) = http("GET", port, "/health", None);
        status == 200 && json(&body)["workers"].as_array().is_some_and(|w| w.len() == 2)
    };
    assert!(wait_until(Duration::from_secs(120), both), "cluster did not start: {}", launch.log_text());

    let v = complete(port, 1, &format!("00-{TRACE}-{CLIENT_SPAN}-01"));
    assert_eq!(v["usage"]["completion_tokens"], 6, "{v}");
    assert_eq!(metric(port, "armature_disagg_requests_total{outcome=\"transferred\"}"), 1.0, "it was disaggregated");
    let complete_trace = || {
        let names: Vec<String> = of_trace(&spans, TRACE).into_iter().map(|s| s.name).collect();
        EXPECTED.iter().all(|e| names.iter().any(|n| n == e))
    };
    assert!(
        wait_until(Duration::from_secs(20), complete_trace),
        "spans of the trace: {:#?}\nthe prefill node's: {:#?}\n{}",
        of_trace(&spans, TRACE),
        spans.lock().unwrap().iter().filter(|s| s.node == "prefill").collect::<Vec<_>>(),
        launch.log_text()
    );
    let trace = of_trace(&spans, TRACE);
    let one = |name: &str| {
        let found: Vec<&Received> = trace.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name}: {trace:#?}");
        found[0].clone()
    };
    let (root, generate, place, attempt) =
        (one(ROOT), one("gateway.generate"), one("router.place"), one("gateway.attempt"));
    let (request, fetch, prefill) = (one("worker.request"), one("kv.fetch"), one("worker.prefill"));
    let (engine_prefill, engine_decode, stream) = (one("engine.prefill"), one("engine.decode"), one("gateway.stream"));

    // The client's span is the root's parent; each span is a child of what handed it the work,
    // across the control plane from node `decode` to node `prefill`.
    assert_eq!(root.parent, CLIENT_SPAN);
    assert_eq!(one("gateway.parse").parent, root.span_id);
    assert_eq!(generate.parent, root.span_id);
    for child in [&place, &attempt, &stream] {
        assert_eq!(child.parent, generate.span_id, "{child:?}");
    }
    assert_eq!(request.parent, attempt.span_id, "the decode worker's span joins the gateway's attempt");
    assert_eq!(fetch.parent, request.span_id);
    assert_eq!(prefill.parent, fetch.span_id, "the prefill worker's span joins the decode worker's transfer");
    assert_eq!(engine_prefill.parent, request.span_id);
    assert_eq!(engine_decode.parent, request.span_id);

    // Which process sent what.
    for s in [&root, &generate, &place, &attempt, &stream, &request, &fetch, &engine_prefill, &engine_decode] {
        assert_eq!(s.node, "decode", "{s:?}");
    }
    assert_eq!(prefill.node, "prefill");
    assert!(trace.iter().all(|s| s.service == "armature-test"), "{trace:#?}");

    // What the spans say.
    assert_eq!(root.attributes["http.route"], "/v1/completions");
    assert_eq!(root.attributes["http.response.status_code"], "200");
    assert_eq!(place.attributes["worker"], "decode/cpu");
    assert_eq!(place.attributes["prefill"], "prefill/cpu");
    assert_eq!(attempt.attributes["worker"], "decode/cpu");
    assert_eq!(request.attributes["worker"], "decode/cpu");
    assert_eq!(request.attributes["completion_tokens"], "6");
    assert_eq!(request.attributes["finish"], "Length");
    assert_eq!(fetch.attributes["outcome"], "transferred");
    assert_eq!(fetch.attributes["blocks"], prefill.attributes["blocks"], "{fetch:?} {prefill:?}");
    assert!(fetch.attributes["blocks"].parse::<u32>().unwrap() >= 5, "{fetch:?}");
    assert_eq!(prefill.attributes["worker"], "prefill/cpu");
    assert_eq!(prefill.attributes["route"], "frames");
    assert_eq!(generate.attributes["outcome"], "length");
    assert_eq!(generate.attributes["completion_tokens"], "6");
    assert!(trace.iter().all(|s| s.parent == CLIENT_SPAN || trace.iter().any(|p| p.span_id == s.parent)));

    // A client that does not sample its trace: nothing of it is exported; a later request's
    // spans show that exports went on meanwhile.
    complete(port, 2, &format!("00-{UNSAMPLED}-{CLIENT_SPAN}-00"));
    complete(port, 3, &format!("00-{LATER}-{CLIENT_SPAN}-01"));
    let later = || of_trace(&spans, LATER).iter().any(|s| s.name == "worker.prefill");
    assert!(wait_until(Duration::from_secs(20), later), "the later request's trace");
    assert!(of_trace(&spans, UNSAMPLED).is_empty(), "{:#?}", of_trace(&spans, UNSAMPLED));

    // A request with no trace context (or one that cannot be read) starts a trace of its own.
    let before: usize = spans.lock().unwrap().iter().filter(|s| s.name == ROOT).count();
    complete(port, 4, "not-a-traceparent");
    let rooted = || {
        let roots: Vec<Received> = spans.lock().unwrap().iter().filter(|s| s.name == ROOT).cloned().collect();
        roots.len() > before && roots[before..].iter().any(|r| r.parent.is_empty() || r.parent == "0000000000000000")
    };
    assert!(wait_until(Duration::from_secs(20), rooted), "a new root span");

    // The access line names the trace.
    let log = launch.log_text();
    assert!(log.lines().any(|l| l.contains("access") && l.contains(TRACE)), "{log}");
    drop(launch);
}
