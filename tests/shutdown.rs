//! SIGTERM drains a node: `/health` turns 503, new requests are refused, the request in flight
//! finishes, and the process exits 0.

mod support;

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::*;

#[test]
fn sigterm_drains_then_exits() {
    let (mut serve, port) = serve_test_executor("shutdown", "50ms");
    assert!(wait_health(port, 200, Duration::from_secs(30)));

    let body = r#"{"model":"armature-test","prompt":"drain me","max_tokens":24,"temperature":0,"stream":true}"#;
    let in_flight = std::thread::spawn(move || http("POST", port, "/v1/completions", Some(body)));
    assert!(wait_until(Duration::from_secs(5), || metric(port, "armature_generated_tokens_total") >= 1.0));

    kill(Pid::from_raw(serve.pid()), Signal::SIGTERM).unwrap();
    assert!(wait_health(port, 503, Duration::from_secs(2)), "health did not report draining");
    let (_, _, health) = http("GET", port, "/health", None);
    assert_eq!(json(&health)["status"], "draining");
    let (status, _, refused) =
        http("POST", port, "/v1/completions", Some(r#"{"model":"armature-test","prompt":"late"}"#));
    assert_eq!(status, 503, "{refused}");

    let (status, _, sse) = in_flight.join().unwrap();
    assert_eq!(status, 200);
    assert!(sse.contains("data: [DONE]"), "the in-flight stream was cut: {sse}");
    let exit = serve.wait_exit(Duration::from_secs(15)).expect("serve did not exit");
    assert!(exit.success(), "{exit}");
}
