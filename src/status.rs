//! `armature status`: a running cluster at a glance, from its gateway. It reads `/health` (the
//! workers and dead nodes), `/debug/status` (the peer nodes' leases and the router's view: roles,
//! KV pool use, queues, cache tiers and the recent placements with their candidates' scores; the
//! admin key when the gateway has keys) and
//! `/metrics` (requests, tokens, the prefix cache's hit ratio, TTFT and request duration), and
//! prints them as tables. With `--watch`, again every interval, with rates and latencies over
//! that interval instead of since each node started.
//!
//! The scrape is read with `runtime::scrape`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use runtime::scrape::{Scrape, Traffic};
use serde_json::Value;

/// What `armature status` was asked.
pub struct StatusArgs {
    /// `http://host:port` of a gateway.
    pub url: String,
    /// An admin key, for `/debug/router` when the gateway has keys.
    pub key: Option<String>,
    pub watch: Option<Duration>,
    /// Recent placements to show.
    pub decisions: usize,
}

/// `host:port` of an `http://` URL.
fn authority(url: &str) -> anyhow::Result<&str> {
    let rest = url.strip_prefix("http://").context("the gateway URL must start with http://")?;
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        bail!("{url:?}: give the gateway as http://host:port");
    }
    Ok(host)
}

/// GET `path` from the gateway: (status, body).
async fn get(authority: &str, path: &str, key: Option<&str>) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(authority).await.with_context(|| format!("cannot reach {authority}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header(hyper::header::HOST, authority);
    if let Some(key) = key {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let resp = sender.send_request(req.body(Empty::<Bytes>::new())?).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn seconds(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| if s < 1.0 { format!("{:.0} ms", s * 1000.0) } else { format!("{s:.2} s") })
}

/// One table: a header row and rows, columns padded to their widest cell.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// What one look at the cluster found.
struct Look {
    health: Value,
    peers: Vec<Value>,
    router: Option<Value>,
    router_error: Option<String>,
    scrape: Scrape,
    at: Instant,
}

async fn look(authority: &str, key: Option<&str>) -> anyhow::Result<Look> {
    let (_, health) = get(authority, "/health", None).await?;
    let health: Value = serde_json::from_str(&health).context("/health did not answer JSON")?;
    let (status, body) = get(authority, "/debug/status", key).await?;
    let (view, router_error) = match (status, serde_json::from_str::<Value>(&body)) {
        (200, Ok(v)) => (v, None),
        (401 | 403, _) => {
            (Value::Null, Some("the router's view needs the admin key (--key or ARMATURE_API_KEY)".into()))
        }
        (_, Ok(v)) => {
            (Value::Null, Some(v["error"]["message"].as_str().unwrap_or("no status on this node").to_string()))
        }
        (s, Err(_)) => (Value::Null, Some(format!("/debug/status answered {s}"))),
    };
    let router = Some(view["router"].clone()).filter(|r| r.is_object());
    let router_error = router_error.or_else(|| router.is_none().then(|| "this node runs no router".to_string()));
    let peers = view["peers"].as_array().cloned().unwrap_or_default();
    let (_, metrics) = get(authority, "/metrics", key).await?;
    Ok(Look { health, peers, router, router_error, scrape: Scrape::parse(&metrics), at: Instant::now() })
}

/// The status as text; `before` is the previous look, for rates over the interval.
fn render(url: &str, now: &Look, before: Option<&Look>, decisions: usize) -> String {
    let mut out = String::new();
    let h = &now.health;
    let dead = h["dead_nodes"].as_array().map(|d| d.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "));
    let _ = writeln!(
        out,
        "armature status: {url}\ncluster: {}; dead nodes: {}",
        h["status"].as_str().unwrap_or("?"),
        dead.filter(|d| !d.is_empty()).unwrap_or_else(|| "none".into())
    );
    if !now.peers.is_empty() {
        let peers: Vec<String> = now
            .peers
            .iter()
            .map(|p| {
                let secs = |k: &str| p[k].as_f64().unwrap_or(0.0) / 1000.0;
                let state = if p["alive"].as_bool() == Some(true) { "alive" } else { "DEAD" };
                format!(
                    "{} {state} (heard {:.1} s ago, lease {:.1} s)",
                    p["node"].as_str().unwrap_or("?"),
                    secs("heard_ms_ago"),
                    secs("timeout_ms")
                )
            })
            .collect();
        let _ = writeln!(out, "peer nodes: {}", peers.join("; "));
    }
    match &now.router {
        Some(r) => render_router(&mut out, r, decisions),
        None => {
            let workers: Vec<Vec<String>> = h["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| Some(vec![w.as_str()?.to_string(), "live".into()]))
                .collect();
            let _ = writeln!(out, "\n{}", now.router_error.as_deref().unwrap_or(""));
            table(&mut out, &["WORKER", "STATE"], &workers);
        }
    }
    render_traffic(&mut out, now, before);
    out
}

fn render_router(out: &mut String, r: &Value, decisions: usize) {
    let roles: BTreeMap<&str, &str> = r["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p.get(0)?.as_str()?, p.get(1)?.as_str()?)))
        .collect();
    // Worker ids serialize as {"node", "device"}.
    let live: Vec<String> = r["live_workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| Some(format!("{}/{}", w["node"].as_str()?, w["device"].as_str()?)))
        .collect();
    let (mut workers, mut tiers) = (Vec::new(), Vec::new());
    for w in r["workers"].as_array().into_iter().flatten() {
        let name = w["worker"].as_str().unwrap_or("?");
        if w["tier_blocks"].as_u64().unwrap_or(0) > 0 || name.ends_with("/host") || name.ends_with("/disk") {
            tiers.push(vec![name.to_string(), w["tier_blocks"].to_string()]);
            continue;
        }
        let load = &w["load"];
        let (active, total) = (load["kv_active"].as_u64(), load["kv_total"].as_u64());
        let kv = match (active, total) {
            (Some(a), Some(t)) if t > 0 => format!("{a}/{t} ({:.0}%)", 100.0 * a as f64 / t as f64),
            _ => "-".into(),
        };
        let state = if w["silent"].as_bool() == Some(true) {
            "silent"
        } else if live.iter().any(|l| l == name) {
            "live"
        } else {
            "not live"
        };
        workers.push(vec![
            name.to_string(),
            roles.get(name).copied().unwrap_or("-").to_string(),
            kv,
            load["running"].as_u64().map_or("-".into(), |v| v.to_string()),
            load["waiting"].as_u64().map_or("-".into(), |v| v.to_string()),
            w["device_blocks"].to_string(),
            state.to_string(),
        ]);
    }
    let _ = writeln!(
        out,
        "router: policy {}, {} blocks indexed, {} requests in flight\n",
        r["policy"].as_str().unwrap_or("?"),
        r["index_blocks"],
        r["in_flight"]
    );
    table(out, &["WORKER", "ROLE", "KV IN USE", "RUNNING", "WAITING", "INDEXED BLOCKS", "STATE"], &workers);
    if !tiers.is_empty() {
        out.push('\n');
        table(out, &["CACHE TIER", "BLOCKS"], &tiers);
    }
    let recent: Vec<Vec<String>> = r["recent"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .take(decisions)
        .map(|d| {
            let prefill = d["prefill"].as_str().map(|p| format!(" (prefill {p})")).unwrap_or_default();
            vec![
                d["request"].as_str().unwrap_or("?").chars().take(12).collect(),
                format!("{}{prefill}", d["worker"].as_str().unwrap_or("?")),
                format!("{}/{}", d["overlap_blocks"], d["prompt_blocks"]),
                // One line: the candidates after the prompt's size.
                d["explanation"].as_str().unwrap_or("").lines().map(str::trim).collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    if !recent.is_empty() {
        out.push('\n');
        table(out, &["REQUEST", "PLACED ON", "CACHED/PROMPT BLOCKS", "CANDIDATES"], &recent);
    }
}

fn render_traffic(out: &mut String, now: &Look, before: Option<&Look>) {
    let m = &now.scrape;
    let delta = |name: &str| m.sum(name) - before.map_or(0.0, |b| b.scrape.sum(name));
    let t = Traffic::between(m, before.map(|b| &b.scrape));
    let hit = t.hit_ratio.map_or("-".into(), |h| format!("{:.0}%", 100.0 * h));
    let span = match before {
        Some(b) => {
            let secs = (now.at - b.at).as_secs_f64().max(1e-3);
            format!("last {secs:.0} s: {:.1} requests/s, {:.1} tokens/s", t.requests / secs, t.tokens / secs)
        }
        None => format!("since start: {} requests, {} tokens generated", t.requests, t.tokens),
    };
    let _ = writeln!(
        out,
        "\n{span}; prefix cache hit {hit}\nTTFT p50 {} p90 {}; between tokens p50 {} p90 {}; request duration p50 {} p90 {}",
        seconds(t.ttft_p50),
        seconds(t.ttft_p90),
        seconds(t.itl_p50),
        seconds(t.itl_p90),
        seconds(t.duration_p50),
        seconds(t.duration_p90)
    );
    let faults = [
        ("restarts", "armature_actor_restarts_total"),
        ("migrations", "armature_request_migrations_total"),
        ("retries", "armature_request_retries_total"),
        ("leases expired", "armature_node_leases_expired_total"),
        ("planner flips", "armature_planner_flips_total"),
    ];
    let events: Vec<String> = faults
        .iter()
        .filter_map(|(what, name)| Some(delta(name)).filter(|v| *v > 0.0).map(|v| format!("{what} {v}")))
        .collect();
    let _ = writeln!(out, "events: {}", if events.is_empty() { "none".to_string() } else { events.join(", ") });
}

/// Run `armature status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let authority = authority(&args.url)?.to_string();
    let mut before: Option<Look> = None;
    loop {
        let now = look(&authority, args.key.as_deref()).await?;
        let text = render(&args.url, &now, before.as_ref(), args.decisions);
        let Some(every) = args.watch else {
            print!("{text}");
            return Ok(());
        };
        // Clear the screen and start at its top.
        print!("\x1b[2J\x1b[H{text}");
        before = Some(now);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_gateways_are_taken() {
        assert_eq!(authority("http://127.0.0.1:8000/").unwrap(), "127.0.0.1:8000");
        assert!(authority("https://x:1").is_err());
        assert!(authority("http://x:1/v1").is_err());
    }

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let mut out = String::new();
        table(&mut out, &["A", "BB"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(out, "A     BB\nlong  x\n");
    }
}
