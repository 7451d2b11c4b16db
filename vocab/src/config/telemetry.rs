//! `[telemetry]`: the log format, and where traces go (OpenTelemetry over OTLP/HTTP).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::HumanDuration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    /// `text` or `json` (one JSON object per line). `ARMATURE_LOG_FORMAT` overrides it.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Export request traces (OpenTelemetry spans) to this OTLP/HTTP receiver, e.g. an
    /// OpenTelemetry Collector at `http://127.0.0.1:4318`; None exports none.
    #[serde(default)]
    pub otlp_endpoint: Option<OtlpEndpoint>,
    /// `service.name` of the exported spans (each node adds its name as `service.instance.id`).
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of requests traced when the client sent no sampled `traceparent` (a client's
    /// sampling decision is followed), in [0, 1].
    #[serde(default)]
    pub sample_ratio: SampleRatio,
    /// Longest a finished span waits before it is sent (spans go in batches).
    #[serde(default = "default_export_interval")]
    pub otlp_export_interval: HumanDuration,
    /// Longest one export may take before it is given up (its spans are dropped).
    #[serde(default = "default_export_timeout")]
    pub otlp_timeout: HumanDuration,
}

fn default_service_name() -> String {
    "armature".into()
}

fn default_export_interval() -> HumanDuration {
    HumanDuration::from_secs(5)
}

fn default_export_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self {
            log_format: LogFormat::default(),
            otlp_endpoint: None,
            service_name: default_service_name(),
            sample_ratio: SampleRatio::default(),
            otlp_export_interval: default_export_interval(),
            otlp_timeout: default_export_timeout(),
        }
    }
}

/// An OTLP/HTTP receiver's address: `http://host:port`, to which `/v1/traces` is added, or a
/// full URL with its own path, used as written. Plain `http` only: spans go to a collector on
/// the node or its network, which forwards them on (over TLS where it must).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpEndpoint(String);

impl OtlpEndpoint {
    /// Where trace exports are posted.
    pub fn traces_url(&self) -> String {
        let rest = &self.0["http://".len()..];
        match rest.find('/') {
            Some(i) if rest[i..] != *"/" => self.0.clone(),
            _ => format!("{}/v1/traces", self.0.trim_end_matches('/')),
        }
    }
}

impl fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for OtlpEndpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with("https://") {
            return Err(format!(
                "\"{s}\": https is not supported; send to an OpenTelemetry Collector over http on this host or network"
            ));
        }
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("\"{s}\" is not an http URL (e.g. \"http://127.0.0.1:4318\")"))?;
        let authority = rest.split('/').next().unwrap_or("");
        // An IPv6 host is bracketed (`[::1]:4318`): its colons are not the port's.
        let host_end = if authority.starts_with('[') { authority.find(']').map_or(0, |i| i + 1) } else { 0 };
        let (host, port) = match authority[host_end..].rfind(':') {
            Some(i) => (&authority[..host_end + i], Some(&authority[host_end + i + 1..])),
            None => (authority, None),
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '@' || c == '?' || c == '#') {
            return Err(format!("\"{s}\" names no host"));
        }
        if let Some(p) = port
            && p.parse::<u16>().map_or(true, |p| p == 0)
        {
            return Err(format!("\"{s}\": port \"{p}\" is not a port number"));
        }
        if rest.contains(['?', '#', ' ']) {
            return Err(format!("\"{s}\": a query, fragment or space has no place in an OTLP endpoint"));
        }
        Ok(Self(s.to_string()))
    }
}

impl Serialize for OtlpEndpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OtlpEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A probability in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct SampleRatio(f64);

impl SampleRatio {
    pub fn get(self) -> f64 {
        self.0
    }
}

impl Default for SampleRatio {
    fn default() -> Self {
        Self(1.0)
    }
}

impl Serialize for SampleRatio {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for SampleRatio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=1.0).contains(&v) {
            return Err(serde::de::Error::custom(format!("{v} is not in [0, 1]")));
        }
        Ok(Self(v))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_unless_they_have_one() {
        let e = |s: &str| s.parse::<OtlpEndpoint>().map(|e| e.traces_url());
        assert_eq!(e("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(e("http://collector:4318/").unwrap(), "http://collector:4318/v1/traces");
        assert_eq!(e("http://collector/otlp/v1/traces").unwrap(), "http://collector/otlp/v1/traces");
        assert_eq!(e("http://[::1]:4318").unwrap(), "http://[::1]:4318/v1/traces");
        assert_eq!(e("http://[::1]").unwrap(), "http://[::1]/v1/traces");
    }

    #[test]
    fn bad_endpoints_say_what_is_wrong() {
        let e = |s: &str| s.parse::<OtlpEndpoint>().unwrap_err();
        assert!(e("https://collector:4318").contains("https is not supported"));
        assert!(e("collector:4318").contains("not an http URL"));
        assert!(e("http://:4318").contains("names no host"));
        assert!(e("http://collector:99999").contains("not a port number"));
        assert!(e("http://collector:4318/?a=b").contains("query"));
    }

    #[test]
    fn section_reads_with_defaults_and_refuses_bad_ratios() {
        let t: TelemetrySection = toml::from_str("otlp_endpoint = \"http://127.0.0.1:4318\"").unwrap();
        assert_eq!(t.service_name, "armature");
        assert_eq!(t.sample_ratio.get(), 1.0);
        assert_eq!(t.otlp_export_interval.get(), Duration::from_secs(5));
        assert!(toml::from_str::<TelemetrySection>("sample_ratio = 1.5").unwrap_err().to_string().contains("[0, 1]"));
        assert!(toml::from_str::<TelemetrySection>("otlp_endpont = \"x\"").is_err());
    }
}
