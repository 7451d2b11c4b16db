//! The control plane lets no one in: with certificates its bytes are TLS (a recording proxy
//! between two nodes sees no prompt, stop string or generated text, and sees them without
//! certificates); impostors with the cookie are refused by name, certificate and address while
//! the real node keeps serving; a plaintext peer is refused by a TLS cluster; unauthenticated
//! connections cannot grow a node's memory and are closed at the handshake deadline.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const STOP_MARKER: &str = "QUOKKA-STOP-MARKER";
const PROMPT_MARKER: &str = "ZYXWVUTSRQ";

struct Ports {
    n0: u16,
    n1: u16,
    gateway: u16,
}

/// A two-node topology (gateway and router on n0, the test executor's worker on n1) as node
/// `view` sees it: `others` gives the control port each node has in this file.
fn topology(ports: &Ports, n1_control: &str, certs: Option<&Path>) -> String {
    let certs = certs.map(|d| format!("[transport]\ncerts = {:?}\n", d.to_str().unwrap())).unwrap_or_default();
    format!(
        r#"[cluster]
name = "security"
cookie = "a-cookie-for-the-tests"
heartbeat_interval = "250ms"
lease_timeout = "2s"
join_timeout = "3s"
handshake_timeout = "1s"

[model]
source = "test"

{certs}
[[nodes]]
name = "n0"
control = "127.0.0.1:{}"
gateway = "127.0.0.1:{}"
roles = ["gateway", "router"]

[[nodes]]
name = "n1"
control = "{n1_control}"
workers = [{{ device = "cpu", role = "aggregated", kv_blocks = 256 }}]
"#,
        ports.n0, ports.gateway
    )
}

fn ports() -> Ports {
    Ports { n0: free_port(), n1: free_port(), gateway: free_port() }
}

fn node(name: &str, config: &Path, dir: &Path) -> Proc {
    let log = dir.join(format!("{name}-{}.log", free_port()));
    Proc::spawn(&["node", "--name", name, "--config", config.to_str().unwrap()], log)
}

fn served_by_n1(port: u16) -> bool {
    let (status, _, body) = http("GET", port, "/health", None);
    status == 200 && json(&body)["workers"] == serde_json::json!(["n1/cpu"])
}

fn complete(port: u16) -> serde_json::Value {
    let body = serde_json::json!({
        "model": "armature-test", "prompt": format!("Repeat after me: {PROMPT_MARKER} {PROMPT_MARKER}"),
        "max_tokens": 8, "temperature": 0, "stop": [STOP_MARKER],
    });
    let (status, _, text) = http("POST", port, "/v1/completions", Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    json(&text)
}

/// Forwards `listen` to `to` in both directions and keeps every byte that passed.
fn recording_proxy(listen: u16, to: u16) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind(("127.0.0.1", listen)).unwrap();
    let record = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else { continue };
            for (mut from, mut into) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = into.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    seen
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What of the request a capture shows: the prompt's text or its token ids (the test tokenizer
/// gives one id per byte; as u32 either way round, or as decimal text, which the control plane's
/// JSON payloads use), the stop string, the generated text.
fn visible(capture: &[u8], generated: &str) -> Vec<&'static str> {
    let ids = |f: fn(u32) -> [u8; 4]| PROMPT_MARKER.bytes().flat_map(|b| f(u32::from(b))).collect::<Vec<u8>>();
    let decimal = PROMPT_MARKER.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join(",");
    let mut seen = Vec::new();
    if contains(capture, PROMPT_MARKER.as_bytes()) {
        seen.push("prompt text");
    }
    let as_ids = [ids(u32::to_be_bytes), ids(u32::to_le_bytes), decimal.into_bytes()];
    if as_ids.iter().any(|encoded| contains(capture, encoded)) {
        seen.push("prompt token ids");
    }
    if contains(capture, STOP_MARKER.as_bytes()) {
        seen.push("stop string");
    }
    if generated.len() >= 4 && contains(capture, generated.trim().as_bytes()) {
        seen.push("generated text");
    }
    seen
}

/// n0 and n1, each reaching the other only through a recording proxy. Returns what the proxies saw
/// of one request and its generated text.
fn capture(certs: Option<&Path>, dir: &Path, tag: &str) -> (Vec<u8>, String) {
    let (real, via) = (ports(), ports());
    let n0_sees = dir.join(format!("{tag}-n0.toml"));
    let n1_sees = dir.join(format!("{tag}-n1.toml"));
    // n0's file puts n1 behind a proxy; n1's file puts n0 behind one (each node's own entry is real).
    std::fs::write(&n0_sees, topology(&real, &format!("127.0.0.1:{}", via.n1), certs)).unwrap();
    let n1_view = Ports { n0: via.n0, ..real };
    std::fs::write(&n1_sees, topology(&n1_view, &format!("127.0.0.1:{}", real.n1), certs)).unwrap();
    let to_n1 = recording_proxy(via.n1, real.n1);
    let to_n0 = recording_proxy(via.n0, real.n0);
    let _n1 = node("n1", &n1_sees, dir);
    let _n0 = node("n0", &n0_sees, dir);
    assert!(wait_until(Duration::from_secs(60), || served_by_n1(real.gateway)), "{tag}: the cluster did not start");
    let generated = complete(real.gateway)["choices"][0]["text"].as_str().unwrap().to_string();
    let mut all = to_n1.lock().unwrap().clone();
    all.extend(to_n0.lock().unwrap().iter());
    (all, generated)
}

#[test]
fn with_certificates_the_control_plane_shows_nothing_of_a_request() {
    let dir = temp_dir("control-capture");
    // Without certificates the same capture sees the request: the check can fail.
    let (plain, generated) = capture(None, &dir, "plain");
    let shown = visible(&plain, &generated);
    assert!(shown.contains(&"stop string") && shown.contains(&"prompt token ids"), "plaintext shows {shown:?}");

    let certs = dir.join("certs");
    let for_certs = dir.join("certs.toml");
    std::fs::write(&for_certs, topology(&ports(), "127.0.0.1:1", Some(&certs))).unwrap();
    cert_init(&for_certs);
    let (tls, generated) = capture(Some(&certs), &dir, "tls");
    assert!(tls.len() > 4096, "the proxies carried the cluster's traffic ({} bytes)", tls.len());
    assert_eq!(visible(&tls, &generated), Vec::<&str>::new());
    // TLS application-data records (type 23, version 3.3) are what crossed.
    assert!(contains(&tls, &[23, 3, 3]), "not TLS records");
}

/// Write a certificate directory holding the CA and `pair`'s files under the name `as_node`.
fn cert_dir_as(dir: &Path, certs: &Path, pair: &str, as_node: &str) -> std::path::PathBuf {
    let out = dir.join(format!("{pair}-as-{as_node}"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(certs.join("ca.pem"), out.join("ca.pem")).unwrap();
    std::fs::copy(certs.join(format!("{pair}.pem")), out.join(format!("{as_node}.pem"))).unwrap();
    std::fs::copy(certs.join(format!("{pair}.key")), out.join(format!("{as_node}.key"))).unwrap();
    out
}

#[test]
fn impostors_and_plaintext_peers_are_refused_and_the_real_node_keeps_serving() {
    let dir = temp_dir("control-impostors");
    let p = ports();
    let certs = dir.join("certs");
    // Certificates for n0, n1 and a third member n2 (a node of another topology that holds a
    // certificate of the same CA).
    let three = topology(&p, &format!("127.0.0.1:{}", p.n1), Some(&certs))
        + "\n[[nodes]]\nname = \"n2\"\ncontrol = \"127.0.0.1:1\"\nworkers = [{ device = \"cpu\" }]\n";
    std::fs::write(dir.join("certs.toml"), three).unwrap();
    cert_init(&dir.join("certs.toml"));
    let config = dir.join("cluster.toml");
    std::fs::write(&config, topology(&p, &format!("127.0.0.1:{}", p.n1), Some(&certs))).unwrap();
    let _n0 = node("n0", &config, &dir);
    let _n1 = node("n1", &config, &dir);
    assert!(wait_until(Duration::from_secs(60), || served_by_n1(p.gateway)), "the cluster did not start");
    let refused = |reason: &str| metric(p.gateway, &format!("armature_control_refused_total{{reason=\"{reason}\"}}"));

    // A second connection within 2 s of a session's start counts as a simultaneous dial (refused
    // as `duplicate`, quietly); these impostors come later.
    std::thread::sleep(Duration::from_millis(2500));
    // Each claims to be n1 from another port: with n2's certificate; with n1's own (a second
    // claimant while n1 holds its lease); with n1's own from another address; and in plaintext.
    let impostors = [
        ("certificate_name", "127.0.0.1", Some(cert_dir_as(&dir, &certs, "n2", "n1"))),
        ("name_in_use", "127.0.0.1", Some(cert_dir_as(&dir, &certs, "n1", "n1"))),
        ("wrong_address", "127.0.0.2", Some(cert_dir_as(&dir, &certs, "n1", "n1"))),
        ("tls", "127.0.0.1", None),
    ];
    let mut procs = Vec::new();
    for (reason, ip, their_certs) in &impostors {
        let file = dir.join(format!("impostor-{reason}.toml"));
        std::fs::write(&file, topology(&p, &format!("{ip}:{}", free_port()), their_certs.as_deref())).unwrap();
        procs.push((*reason, node("n1", &file, &dir)));
    }
    for (reason, proc) in &mut procs {
        let status = proc.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("impostor {reason} still runs"));
        assert_eq!(status.code(), Some(2), "impostor {reason}: {}", proc.log_text());
        assert!(proc.log_text().contains("cannot join seed"), "impostor {reason}: {}", proc.log_text());
        assert!(refused(reason) >= 1.0, "no refusal counted for {reason}");
    }
    // The real n1 kept its session and its traffic all along.
    assert!(served_by_n1(p.gateway));
    for _ in 0..3 {
        assert_eq!(complete(p.gateway)["usage"]["completion_tokens"], 8);
    }

    // A half TLS handshake (a record header and a few bytes, then silence) is closed at the deadline.
    let mut half = TcpStream::connect(("127.0.0.1", p.n0)).unwrap();
    half.write_all(&[22, 3, 1, 0, 200, 1, 0, 0]).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut sink = [0u8; 64];
    let closed = loop {
        match half.read(&mut sink) {
            Ok(0) => break true,
            Err(e) => break !timed_out(&e),
            Ok(_) if start.elapsed() < Duration::from_secs(10) => continue,
            Ok(_) => break false,
        }
    };
    assert!(closed && start.elapsed() < Duration::from_secs(8), "half handshake held {:?}", start.elapsed());
    assert!(wait_until(Duration::from_secs(5), || refused("deadline") >= 1.0));
}

/// A read that gave up waiting (the connection is still open).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn unauthenticated_connections_cannot_grow_a_node_and_silent_ones_are_closed() {
    let dir = temp_dir("control-preauth");
    let p = ports();
    let config = dir.join("cluster.toml");
    // Plaintext: the cookie handshake is all that stands before ractor_cluster's frames.
    std::fs::write(&config, topology(&p, &format!("127.0.0.1:{}", p.n1), None)).unwrap();
    let n0 = node("n0", &config, &dir);
    let _n1 = node("n1", &config, &dir);
    assert!(wait_until(Duration::from_secs(60), || served_by_n1(p.gateway)), "the cluster did not start");
    let before = rss_kib(n0.pid());

    // 100 connections that each declare a 16 MiB frame and try to send it.
    let senders: Vec<_> = (0..100)
        .map(|_| {
            let port = p.n0;
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return };
                let _ = s.set_write_timeout(Some(Duration::from_secs(20)));
                let chunk = vec![0u8; 64 * 1024];
                if s.write_all(&(16u64 << 20).to_be_bytes()).is_err() {
                    return;
                }
                for _ in 0..256 {
                    if s.write_all(&chunk).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown_mib = rss_kib(n0.pid()).saturating_sub(before) / 1024;
    assert!(grown_mib < 64, "RSS grew by {grown_mib} MiB");
    let refused = |reason: &str| metric(p.gateway, &format!("armature_control_refused_total{{reason=\"{reason}\"}}"));
    assert!(refused("frame_too_large") >= 1.0);

    // 20 connections that say nothing: closed after the 1 s handshake deadline.
    let silent: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(("127.0.0.1", p.n0)).unwrap()).collect();
    let start = Instant::now();
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sink = [0u8; 8];
        match s.read(&mut sink) {
            Ok(0) => {}
            Err(e) => assert!(!timed_out(&e), "a silent connection was held open"),
            Ok(n) => panic!("a silent connection was answered with {n} bytes"),
        }
    }
    assert!(start.elapsed() < Duration::from_secs(8), "silent connections held {:?}", start.elapsed());
    assert!(wait_until(Duration::from_secs(5), || refused("deadline") >= 20.0));
    // And the cluster still serves.
    assert!(served_by_n1(p.gateway));
    assert_eq!(complete(p.gateway)["usage"]["completion_tokens"], 8);
}

#[test]
fn a_worker_serving_another_model_is_not_placed_on() {
    let dir = temp_dir("control-model-check");
    let p = ports();
    let n2 = free_port();
    let three = topology(&p, &format!("127.0.0.1:{}", p.n1), None)
        + &format!("\n[[nodes]]\nname = \"n2\"\ncontrol = \"127.0.0.1:{n2}\"\nworkers = [{{ device = \"cpu\" }}]\n");
    let config = dir.join("cluster.toml");
    std::fs::write(&config, &three).unwrap();
    // n2 runs the same topology with another model (its own file says so).
    let other = dir.join("other-model.toml");
    std::fs::write(&other, three.replace("source = \"test\"", "source = \"test\"\nname = \"another-model\"")).unwrap();
    let _n0 = node("n0", &config, &dir);
    let _n1 = node("n1", &config, &dir);
    let n2_proc = node("n2", &other, &dir);
    let seen = wait_until(Duration::from_secs(60), || {
        let (status, _, body) = http("GET", p.gateway, "/health", None);
        status == 200 && json(&body)["wrong_model"] == serde_json::json!(["n2/cpu"])
    });
    assert!(seen, "health does not list n2 apart: {}", http("GET", p.gateway, "/health", None).2);
    let (_, _, health) = http("GET", p.gateway, "/health", None);
    assert_eq!(json(&health)["workers"], serde_json::json!(["n1/cpu"]));
    for _ in 0..12 {
        assert_eq!(complete(p.gateway)["usage"]["completion_tokens"], 8);
    }
    let (_, _, router) = http("GET", p.gateway, "/debug/router", None);
    let chosen: Vec<String> =
        json(&router)["recent"].as_array().unwrap().iter().map(|d| d["worker"].as_str().unwrap().to_string()).collect();
    assert_eq!(chosen.len(), 12, "{router}");
    assert!(chosen.iter().all(|w| w == "n1/cpu"), "placed on {chosen:?}");
    assert_eq!(metric(p.gateway, "armature_router_wrong_model_workers"), 1.0);
    assert!(n2_proc.log_text().contains("worker started"), "n2 ran its worker");
}
