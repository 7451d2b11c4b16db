//! The live dashboard: `GET /dashboard` is one self-contained page (`dashboard.html`, embedded in
//! the binary; no external assets, which its Content-Security-Policy also forbids), and
//! `GET /debug/status` the JSON it reads every two seconds, behind the admin key like the other
//! debug routes (the page itself holds no data; it sends the key it is given in its URL's
//! fragment, `#key=...`, which never reaches a server).
//!
//! The status is the health view, this node's leases on its peers, the router's view (workers, roles, KV pools, queues, tiers,
//! recent placements with their candidates' scores) and this gateway's history: every
//! `SAMPLE_EVERY` a sampler reads this process's metrics and keeps, for the last `KEEP` samples,
//! requests and tokens per second, the prefix cache's hit ratio, and TTFT, inter-token latency
//! and request duration p50/p90 over the interval, with events (restarts, planner flips, starts and stops, migrations,
//! expired leases) from the counters that moved. In a multi-node cluster the history is of the
//! gateway node's process: its requests, and the actors it runs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use runtime::scrape::{Scrape, Traffic};
use serde::Serialize;
use serde_json::json;

use super::Gateway;
use crate::protocol::RouterHandle;

/// How often the sampler reads the metrics.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: ten minutes.
const KEEP: usize = 300;
/// Events kept.
const KEEP_EVENTS: usize = 100;

const PAGE: &str = include_str!("dashboard.html");

/// One interval of the history.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Point {
    /// Unix time at the interval's end, seconds.
    pub t: f64,
    pub requests_per_s: f64,
    pub tokens_per_s: f64,
    #[serde(flatten)]
    pub traffic: Traffic,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Event {
    pub t: f64,
    pub what: String,
}

/// The sampler's memory.
#[derive(Default)]
pub struct History {
    points: VecDeque<Point>,
    events: VecDeque<Event>,
    last: Option<(Instant, Scrape)>,
}

/// Counters whose rise is an event worth listing, by the label that says which.
const EVENTS: [(&str, Option<&str>, &str); 6] = [
    ("armature_actor_restarts_total", Some("child"), "restarted"),
    ("armature_planner_flips_total", Some("to"), "planner flipped a worker to"),
    ("armature_planner_starts_total", None, "planner started a worker"),
    ("armature_planner_stops_total", None, "planner stopped a worker"),
    ("armature_request_migrations_total", None, "stream migrated to another worker"),
    ("armature_node_leases_expired_total", None, "node lease expired"),
];

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

impl History {
    /// Take one sample (`scrape` at `now`, unix time `t`).
    pub fn sample(&mut self, now: Instant, t: f64, scrape: Scrape) {
        if let Some((then, before)) = &self.last {
            let secs = (now - *then).as_secs_f64().max(1e-3);
            let traffic = Traffic::between(&scrape, Some(before));
            let (requests_per_s, tokens_per_s) = (traffic.requests / secs, traffic.tokens / secs);
            self.points.push_back(Point { t, requests_per_s, tokens_per_s, traffic });
            while self.points.len() > KEEP {
                self.points.pop_front();
            }
            for (name, label, what) in EVENTS {
                let (now_by, before_by) = match label {
                    Some(l) => (scrape.by_label(name, l), before.by_label(name, l)),
                    None => ([(String::new(), scrape.sum(name))].into(), [(String::new(), before.sum(name))].into()),
                };
                for (which, v) in now_by {
                    let rise = v - before_by.get(&which).copied().unwrap_or(0.0);
                    if rise > 0.0 {
                        let times = if rise > 1.0 { format!(" ({rise} times)") } else { String::new() };
                        let which = if which.is_empty() { String::new() } else { format!(" {which}") };
                        let what = match label {
                            Some("child") => format!("{} {what}{times}", which.trim_start()),
                            _ => format!("{what}{which}{times}"),
                        };
                        self.events.push_back(Event { t, what });
                    }
                }
            }
            while self.events.len() > KEEP_EVENTS {
                self.events.pop_front();
            }
        }
        self.last = Some((now, scrape));
    }
}

/// Sample this process's metrics every `SAMPLE_EVERY`, for as long as the task runs.
pub async fn sampler(history: Arc<Mutex<History>>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let scrape = Scrape::own();
        history.lock().unwrap_or_else(|p| p.into_inner()).sample(Instant::now(), unix_now(), scrape);
    }
}

/// `GET /dashboard`: the page.
pub async fn page() -> Response {
    let csp =
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:";
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /debug/status`: what the page shows.
pub async fn status(State(gw): State<Arc<Gateway>>) -> Response {
    let (_, health) = super::http::health_view(&gw).await;
    let router = match RouterHandle::local() {
        Some(r) => r.status(super::http::STATUS_TIMEOUT).await.ok(),
        None => None,
    };
    // The totals since start are the sampler's latest scrape's (at most `SAMPLE_EVERY` old).
    let (points, events, totals) = {
        let h = gw.history.lock().unwrap_or_else(|p| p.into_inner());
        let totals = h.last.as_ref().map(|(_, s)| Traffic::between(s, None)).unwrap_or_default();
        (h.points.iter().cloned().collect::<Vec<_>>(), h.events.iter().cloned().collect::<Vec<_>>(), totals)
    };
    let body = json!({
        "model": gw.model.name,
        "health": health,
        "peers": gw.node.view.leases(),
        "router": router,
        "totals": totals,
        "sample_seconds": SAMPLE_EVERY.as_secs_f64(),
        "history": points,
        "events": events,
    });
    axum::Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(requests: f64, ttft_fast: f64, restarts: f64) -> Scrape {
        Scrape::parse(&format!(
            "armature_request_duration_seconds_count {requests}\n\
             armature_generated_tokens_total {}\n\
             armature_prefix_cache_tokens_total 30\narmature_tokens_computed_total 70\n\
             armature_time_to_first_token_seconds_bucket{{le=\"0.01\"}} {ttft_fast}\n\
             armature_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {requests}\n\
             armature_actor_restarts_total{{child=\"worker n0/cpu\"}} {restarts}\n",
            requests * 4.0
        ))
    }

    #[test]
    fn samples_give_rates_quantiles_and_events_over_each_interval() {
        let mut h = History::default();
        let t0 = Instant::now();
        h.sample(t0, 100.0, scrape(10.0, 10.0, 0.0));
        assert!(h.points.is_empty(), "the first sample only sets the baseline");
        h.sample(t0 + Duration::from_secs(2), 102.0, scrape(14.0, 14.0, 1.0));
        let p = &h.points[0];
        assert_eq!((p.t, p.requests_per_s, p.tokens_per_s), (102.0, 2.0, 8.0));
        assert_eq!(p.traffic.hit_ratio, None, "no tokens needed in the interval");
        // Every request of the interval had its first token within 10 ms.
        assert!(p.traffic.ttft_p90.unwrap() <= 0.01);
        assert_eq!(h.events, vec![Event { t: 102.0, what: "worker n0/cpu restarted".into() }]);
        h.sample(t0 + Duration::from_secs(4), 104.0, scrape(14.0, 14.0, 1.0));
        assert_eq!((h.points[1].requests_per_s, h.points[1].traffic.ttft_p50), (0.0, None), "an idle interval");
        assert_eq!(h.events.len(), 1);
    }
}
