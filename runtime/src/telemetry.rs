//! Logging (`RUST_LOG`, text or JSON lines) and the process-wide Prometheus registry.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the tracing subscriber and the Prometheus recorder once. `RUST_LOG` filters (default `info`; ractor_cluster's
/// per-session lines, duplicate dials included, only at `error`: the node's gate and session log say what matters); `ARMATURE_LOG_FORMAT`
/// (`text` or `json`) overrides `format`. Logs go to stderr.
pub fn init_logging(format: LogFormat) {
    let format = match std::env::var("ARMATURE_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        _ => format,
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ractor_cluster=error"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    prometheus();
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus handle, installing the recorder on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            .expect("static bucket list is valid")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests); then ours only renders what it sees.
        if metrics::set_global_recorder(recorder).is_ok() {
            crate::catalogue::describe();
            crate::catalogue::register_zeros();
        }
        handle
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_render_in_prometheus_text() {
        let handle = super::prometheus();
        metrics::counter!("armature_test_total", "kind" => "unit").increment(3);
        let text = handle.render();
        assert!(text.contains("armature_test_total{kind=\"unit\"} 3"), "{text}");
    }

    #[test]
    fn catalogued_families_render_with_their_help_text() {
        let handle = super::prometheus();
        metrics::counter!("armature_request_retries_total").increment(1);
        let text = handle.render();
        let help = crate::catalogue::FAMILIES.iter().find(|f| f.name == "armature_request_retries_total").unwrap().help;
        assert!(text.contains(&format!("# HELP armature_request_retries_total {help}")), "{text}");
    }
}
