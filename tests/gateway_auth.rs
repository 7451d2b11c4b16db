//! Gateway keys and limits against a real `armature serve`: a wrong, missing or revoked key gets
//! 401 in OpenAI's shape, a key over its request rate gets 429 with `retry-after`, the admin
//! route needs the admin key, a `text/plain` POST gets 415, CORS is off, and a keys file that does
//! not parse stops the server with the field named.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use support::*;

const USER: &str = "sk-user-0123456789abcdef";
const LIMITED: &str = "sk-limited-0123456789abcdef";
const ADMIN: &str = "sk-admin-0123456789abcdef";

fn keys(user_revoked: bool) -> String {
    format!(
        r#"
[[keys]]
id = "user"
key = "{USER}"
revoked = {user_revoked}

[[keys]]
id = "limited"
key = "{LIMITED}"
requests_per_second = 0.2

[[keys]]
id = "ops"
sha256 = "{admin_digest}"
admin = true
"#,
        admin_digest = sha256_hex(ADMIN)
    )
}

fn sha256_hex(s: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

fn config(port: u16, keys: &Path) -> String {
    format!(
        r#"
[cluster]
name = "auth"
cookie = "c"

[model]
source = "test"

[gateway]
api_keys_file = {keys:?}

[[nodes]]
name = "n0"
control = "127.0.0.1:{control}"
gateway = "127.0.0.1:{port}"
roles = ["gateway", "router"]
workers = [{{ device = "cpu" }}]
"#,
        control = free_port()
    )
}

const COMPLETION: &str = r#"{"model":"armature-test","prompt":"hello","max_tokens":2}"#;

fn complete_with(port: u16, key: &str) -> (u16, String, serde_json::Value) {
    let auth = format!("Bearer {key}");
    let (status, head, body) =
        http_with("POST", port, "/v1/completions", Some(COMPLETION), &[("Authorization", &auth)]);
    (status, head, if body.is_empty() { serde_json::Value::Null } else { json(&body) })
}

/// A request with whatever headers the test gives (no Content-Type added).
fn raw(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn keys_limits_admin_routes_and_media_types() {
    let port = free_port();
    let dir = temp_dir("gateway-auth");
    let keys_path = dir.join("keys.toml");
    std::fs::write(&keys_path, keys(false)).unwrap();
    let config_path = dir.join("cluster.toml");
    std::fs::write(&config_path, config(port, &keys_path)).unwrap();
    let _serve = Proc::spawn(&["serve", "--config", config_path.to_str().unwrap()], dir.join("serve.log"));
    assert!(wait_health(port, 200, Duration::from_secs(30)), "not healthy (health needs no key)");

    // No key, a wrong key: 401 in OpenAI's shape.
    let (status, _, body) = http("POST", port, "/v1/completions", Some(COMPLETION));
    assert_eq!(status, 401, "{body}");
    assert_eq!(json(&body)["error"]["code"], "invalid_api_key");
    assert!(json(&body)["error"]["message"].as_str().unwrap().contains("didn't provide an API key"));
    let (status, _, body) = complete_with(port, "sk-wrong-0123456789abcdef");
    assert_eq!(status, 401);
    assert_eq!(body["error"]["message"], "Incorrect API key provided.");
    assert_eq!(http("GET", port, "/v1/models", None).0, 401);

    // The right key works, as a bearer token or as `x-api-key`.
    let (status, _, body) = complete_with(port, USER);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 2);
    let (status, _, _) = http_with("GET", port, "/v1/models", None, &[("x-api-key", USER)]);
    assert_eq!(status, 200);

    // One request per five seconds: the second at once gets 429 with retry-after.
    assert_eq!(complete_with(port, LIMITED).0, 200);
    let (status, head, body) = complete_with(port, LIMITED);
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let retry: u64 = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("retry-after: ").map(str::to_string))
        .expect("retry-after header")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "retry-after {retry}");
    // Other keys are not limited by it.
    assert_eq!(complete_with(port, USER).0, 200);

    // The admin route: refused without a key and with a user's key, served with the admin key.
    let role = r#"{"worker":"n0/cpu","role":"aggregated"}"#;
    assert_eq!(http("POST", port, "/debug/role", Some(role)).0, 401);
    let user = format!("Bearer {USER}");
    let (status, _, body) = http_with("POST", port, "/debug/role", Some(role), &[("Authorization", &user)]);
    assert_eq!(status, 403, "{body}");
    let admin = format!("Bearer {ADMIN}");
    let (status, _, body) = http_with("GET", port, "/debug/router", None, &[("Authorization", &admin)]);
    assert_eq!(status, 200, "{body}");

    // A text/plain POST (what a cross-site form can send) gets 415, key or not.
    let plain = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {USER}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{COMPLETION}",
        COMPLETION.len()
    );
    let answer = raw(port, &plain);
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    assert!(answer.contains("unsupported_media_type"), "{answer}");
    // No CORS headers for an origin nobody configured.
    let (_, head, _) = http_with("GET", port, "/health", None, &[("Origin", "https://evil.example")]);
    assert!(!head.to_ascii_lowercase().contains("access-control-allow-origin"), "{head}");

    // Revoke the user's key: refused within a few seconds, while the others keep working.
    std::thread::sleep(Duration::from_millis(1100)); // a new modification time
    std::fs::write(&keys_path, keys(true)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || complete_with(port, USER).0 == 401), "the revoked key still works");
    let (status, _, body) = complete_with(port, USER);
    assert_eq!(body["error"]["code"], "invalid_api_key", "{status}");
    let (status, _, _) = http_with("GET", port, "/debug/router", None, &[("Authorization", &admin)]);
    assert_eq!(status, 200);

    // A keys file that no longer parses keeps the keys in force.
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(&keys_path, "[[keys]]\nid = \"x\"\n").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(http_with("GET", port, "/debug/router", None, &[("Authorization", &admin)]).0, 200);
}

#[test]
fn a_bad_keys_file_stops_the_server_naming_the_field() {
    let dir = temp_dir("gateway-auth-bad");
    let keys_path = dir.join("keys.toml");
    std::fs::write(&keys_path, "[[keys]]\nid = \"a\"\nkey = \"short\"\n").unwrap();
    let config_path = dir.join("cluster.toml");
    std::fs::write(&config_path, config(free_port(), &keys_path)).unwrap();
    let mut serve = Proc::spawn(&["serve", "--config", config_path.to_str().unwrap()], dir.join("serve.log"));
    let status = serve.wait_exit(Duration::from_secs(30)).expect("serve did not stop");
    assert_eq!(status.code(), Some(2));
    let log = serve.log_text();
    assert!(log.contains("keys[0].key") && log.contains("shorter than 16"), "{log}");
}
