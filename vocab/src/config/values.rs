//! Settings that TOML writes as strings but the code holds as types: devices, model sources,
//! addresses to connect to, the planner's mode. Each parses once, where the config is read, and
//! names what it expected when it cannot.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An address to connect to, `host:port`, where the host may be a name (`cluster.seeds`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl std::str::FromStr for HostPort {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
                Ok(port) => Ok(Self { host: host.to_string(), port }),
                Err(_) => Err(UnknownName { given: s.to_string(), expected: "host:port" }),
            },
            _ => Err(UnknownName { given: s.to_string(), expected: "host:port" }),
        }
    }
}

/// Which weights the workers run (`model.source`): `default`, `test`, or a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModelSource {
    /// SmolLM2-135M-Instruct, fetched and checked on first use.
    Default,
    /// The deterministic test executor, no weights.
    Test,
    /// A `.gguf` file (or, outside the config file, a Hugging Face folder).
    Path(std::path::PathBuf),
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::Test => f.write_str("test"),
            Self::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

impl std::str::FromStr for ModelSource {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s {
            "" => Err(UnknownName {
                given: String::new(),
                expected: "a model source: \"default\", a path to a .gguf file, or \"test\"",
            }),
            "default" => Ok(Self::Default),
            "test" => Ok(Self::Test),
            path => Ok(Self::Path(path.into())),
        }
    }
}

/// A worker's device: the CPU, or CUDA GPU number N. Written `cpu` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    Cpu,
    Cuda(u32),
}

impl Device {
    /// The CUDA ordinal, for a GPU.
    pub fn cuda_ordinal(self) -> Option<u32> {
        match self {
            Self::Cpu => None,
            Self::Cuda(n) => Some(n),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        if s == "cpu" {
            return Ok(Self::Cpu);
        }
        match s.strip_prefix("cuda:").map(str::parse::<u32>) {
            Some(Ok(n)) => Ok(Self::Cuda(n)),
            _ => Err(UnknownName { given: s.to_string(), expected: "a device: \"cpu\" or \"cuda:N\"" }),
        }
    }
}

/// How the planner sizes the pools (`planner.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlannerMode {
    /// A step at a time on SLO pressure that lasts.
    #[default]
    Load,
    /// Pools sized from predicted token rates and per-worker capacities.
    Throughput,
}

impl std::str::FromStr for PlannerMode {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s {
            "load" => Ok(Self::Load),
            "throughput" => Ok(Self::Throughput),
            other => Err(UnknownName { given: other.to_string(), expected: "load or throughput" }),
        }
    }
}

/// `TryFrom<String>` and `From<T> for String`, through `FromStr` and `Display`, for config types
/// that TOML writes as strings (serde's `try_from` and `into`).
macro_rules! written_as_string {
    ($($t:ty),+ $(,)?) => {$(
        impl TryFrom<String> for $t {
            type Error = UnknownName;

            fn try_from(s: String) -> Result<Self, UnknownName> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    )+};
}

written_as_string!(Device, ModelSource, HostPort);

/// A name that is none of the ones a setting takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not {expected}")]
pub struct UnknownName {
    pub given: String,
    pub expected: &'static str,
}
