//! The live dashboard in headless Chromium (Debian's `chromium`; `.ci/run` installs it and sets
//! `ARMATURE_DASHBOARD_REQUIRED=1`, elsewhere the test says it skipped): `armature serve` with keys
//! serves some requests; `/dashboard#key=ADMIN` then renders the worker, a non-zero request count
//! and latency plots, read back from the DOM; without the key the page shows nothing of the
//! cluster and `/debug/status` is 401. A screenshot is saved beside the test's temporary folders
//! (`target/tmp/dashboard.png`).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const USER: &str = "sk-user-0123456789abcdef";
const ADMIN: &str = "sk-admin-0123456789abcdef";

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// Chromium's headless run of `url` with `what` (`--dump-dom`, or `--screenshot=PATH`).
fn headless(chromium: &str, profile: &Path, url: &str, what: &[&str]) -> String {
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Lets the page's script fetch and render before the DOM is read.
        .args(["--virtual-time-budget=5000", "--window-size=1280,1500"])
        .args(what)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The markup of the element with `id`, up to its closing `tag`.
fn element<'a>(dom: &'a str, id: &str, tag: &str) -> &'a str {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id}: {dom}"));
    let end = dom[start..].find(&format!("</{tag}>")).map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

#[test]
fn the_dashboard_renders_the_cluster_in_a_browser() {
    let Some(chromium) = chromium() else {
        assert!(std::env::var("ARMATURE_DASHBOARD_REQUIRED").is_err(), "ARMATURE_DASHBOARD_REQUIRED=1 but no chromium");
        eprintln!("SKIPPED: no chromium on this machine (apt-get install chromium)");
        return;
    };
    let (_serve, port, dir) = serve_with_keys("dashboard", USER, ADMIN);

    // Requests spread over three of the sampler's two-second intervals, so the plots have points.
    let auth = format!("Bearer {USER}");
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(6) {
        let body =
            format!(r#"{{"model":"armature-test","prompt":"a prompt of a few blocks, number {sent}","max_tokens":6}}"#);
        let (code, _, text) = http_with("POST", port, "/v1/completions", Some(&body), &[("Authorization", &auth)]);
        assert_eq!(code, 200, "{text}");
        sent += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_millis(2500));

    let url = format!("http://127.0.0.1:{port}/dashboard#key={ADMIN}");
    let dom = headless(chromium, &dir.join("profile"), &url, &["--dump-dom"]);
    assert!(dom.contains("data-worker=\"n0/cpu\""), "the worker's row: {dom}");
    let workers = element(&dom, "workers", "table");
    assert!(workers.contains(">aggregated<") && workers.contains(">live<"), "{workers}");
    let requests = element(&dom, "requests-total", "div");
    let count: u64 = requests.rsplit('>').next().unwrap().trim().replace(',', "").parse().unwrap();
    assert!(count >= sent, "{count} requests shown, {sent} sent");
    let ttft = element(&dom, "plot-ttft", "svg");
    let points = ttft.split("points=\"").nth(1).unwrap_or_else(|| panic!("no latency line: {ttft}"));
    let pairs = points.split('"').next().unwrap().split(' ').filter(|p| p.contains(',')).count();
    assert!(pairs >= 2, "a latency plot of at least two points: {ttft}");
    let itl = element(&dom, "plot-itl", "svg");
    assert!(itl.contains("<polyline"), "a plot of the time between tokens: {itl}");
    assert!(element(&dom, "tiers", "table").contains("n0/host"));

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    headless(chromium, &dir.join("profile"), &url, &[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());

    // Without the key: the page holds nothing, and its data route is refused.
    let bare = headless(chromium, &dir.join("bare"), &format!("http://127.0.0.1:{port}/dashboard"), &["--dump-dom"]);
    assert!(bare.contains("needs its admin key") && !bare.contains("data-worker"), "{bare}");
    assert_eq!(http("GET", port, "/debug/status", None).0, 401);
    let (code, _, _) = http_with("GET", port, "/debug/status", None, &[("Authorization", &auth)]);
    assert_eq!(code, 403, "a user's key is not the admin's");
}
