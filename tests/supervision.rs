//! A worker actor that panics is restarted by its node's supervisor; the request that caused it
//! gets a clean error (after a retry) instead of hanging, the stream that was running moves to the
//! restarted worker and ends normally (migration), and later requests succeed.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[test]
fn panicking_worker_is_restarted_and_the_request_fails_cleanly() {
    // Slow steps (50 ms), so the long request is still running when the worker dies.
    let (_serve, port) = serve_test_executor("supervision", "50ms");
    assert!(wait_health(port, 200, Duration::from_secs(30)));

    // A request that is running on the worker while it panics: starts streaming, then the panic.
    let long = r#"{"model":"armature-test","prompt":"a long one","max_tokens":3000,"temperature":0,"stream":true}"#;
    let streaming = std::thread::spawn(move || http("POST", port, "/v1/completions", Some(long)));
    std::thread::sleep(Duration::from_millis(300));

    // The test executor panics on this prompt; the worker actor panics in turn.
    let started = Instant::now();
    let (status, _, body) = http(
        "POST",
        port,
        "/v1/completions",
        Some(r#"{"model":"armature-test","prompt":"<<armature-test-panic>>","max_tokens":4}"#),
    );
    assert!(started.elapsed() < Duration::from_secs(20), "the failed request hung");
    assert_eq!(status, 503, "{body}");
    let err = json(&body);
    assert_eq!(err["error"]["type"], "service_unavailable");
    assert!(err["error"]["message"].as_str().unwrap().contains("worker"), "{body}");

    // The stream that was running when the worker died goes on on the restarted worker, with the
    // tokens it had in its prompt, and ends normally: no error, no hang.
    let (status, _, sse) = streaming.join().unwrap();
    assert_eq!(status, 200);
    assert!(sse.contains("[DONE]") && !sse.contains("\"error\""), "{sse}");
    // Moved once per crash: the panicking request and its retry each took the worker down.
    assert_eq!(metric(port, "armature_request_migrations_total"), 2.0);

    // The supervisor restarted the worker; requests succeed again.
    assert!(wait_health(port, 200, Duration::from_secs(10)));
    let (status, _, body) = http(
        "POST",
        port,
        "/v1/completions",
        Some(r#"{"model":"armature-test","prompt":"after","max_tokens":3,"temperature":0}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["usage"]["completion_tokens"], 3);
    assert!(metric(port, "armature_actor_restarts_total{child=\"worker n0/cpu\"}") >= 1.0);
    assert!(metric(port, "armature_request_retries_total") >= 1.0);
}
