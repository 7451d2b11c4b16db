//! Logging (`RUST_LOG`, text or JSON lines), trace export (`trace`) and the process-wide
//! Prometheus registry.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, TelemetrySection};
use crate::trace::{TraceError, Tracing};

/// Install the log subscriber and the Prometheus recorder once, without trace export (for the
/// commands that serve nothing). See `init`.
pub fn init_logging(format: LogFormat) {
    let section = TelemetrySection { log_format: format, ..Default::default() };
    // Without an endpoint there is nothing that can fail.
    let _ = init(&section, "");
}

/// Install the subscriber and the Prometheus recorder once. Logs: `RUST_LOG` filters (default
/// `info`; ractor_cluster's per-session lines, duplicate dials included, only at `error`: the
/// node's gate and session log say what matters); `ARMATURE_LOG_FORMAT` (`text` or `json`)
/// overrides `log_format`; they go to stderr. Traces: with `otlp_endpoint`, the spans of target
/// `trace::TARGET` are exported (`trace`), named for `node`; they never reach the logs. Must run
/// inside the tokio runtime when it exports. A second call installs nothing and returns None.
pub fn init(section: &TelemetrySection, node: &str) -> Result<Option<Tracing>, TraceError> {
    let format = match std::env::var("ARMATURE_LOG_FORMAT").as_deref() {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        _ => section.log_format,
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,ractor_cluster=error"))
        .add_directive(format!("{}=off", crate::trace::TARGET).parse().expect("a valid directive"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    prometheus();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Json => Box::new(fmt.json().flatten_event(true).with_filter(filter)),
        LogFormat::Text => Box::new(fmt.with_target(false).with_filter(filter)),
    };
    let mut layers = vec![logs];
    let mut tracing = None;
    if let Some((layer, exporting)) = crate::trace::layer::<Registry>(section, node)? {
        let only_traces = Targets::new().with_target(crate::trace::TARGET, Level::TRACE);
        layers.push(Box::new(layer.with_filter(only_traces)));
        tracing = Some(exporting);
    }
    let installed = tracing_subscriber::registry().with(layers).try_init().is_ok();
    Ok(tracing.filter(|_| installed))
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
