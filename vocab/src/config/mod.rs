//! The `cluster.toml` schema: typed, unknown keys refused, errors that name the field path and value.

mod keys;
mod telemetry;
mod units;
mod validate;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use keys::{ApiKey, KeysFile, sha256};
pub use telemetry::{LogFormat, OtlpEndpoint, SampleRatio, TelemetrySection};
pub use units::{ByteSize, HumanDuration};
pub use values::{Device, HostPort, ModelSource, PlannerMode, UnknownName};

/// The default topology, embedded in the binary: one node, every role, one CPU worker.
pub const DEFAULT_CLUSTER_TOML: &str = include_str!("../../../cluster.toml");

/// A configuration error: where (file, field path, line) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Where the text came from (a file path or "embedded cluster.toml").
    pub origin: String,
    /// The field path, e.g. `nodes[1].workers[0].kv_blocks`; empty for the whole document.
    pub path: String,
    /// 1-based line in the source, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ConfigError {
    pub fn new(origin: &str, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { origin: origin.to_string(), path: path.into(), line: None, message: message.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub cluster: ClusterSection,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default)]
    pub router: RouterSection,
    #[serde(default)]
    pub supervision: SupervisionSection,
    #[serde(default)]
    pub telemetry: TelemetrySection,
    #[serde(default)]
    pub transport: TransportSection,
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub planner: PlannerSection,
    pub nodes: Vec<NodeConfig>,
}

/// The planner, on every node with a router: it sizes the prefill and decode pools by flipping
/// workers' roles (`[planner]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerSection {
    #[serde(default)]
    pub enabled: bool,
    /// `"load"` (a step at a time on SLO pressure) or `"throughput"` (pools sized from predicted
    /// token rates and the capacities below).
    #[serde(default)]
    pub mode: PlannerMode,
    #[serde(default = "default_planner_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_slo_ttft")]
    pub slo_ttft: HumanDuration,
    #[serde(default = "default_slo_itl")]
    pub slo_itl: HumanDuration,
    /// Intervals an SLO signal must last before a role flips.
    #[serde(default = "default_planner_hysteresis")]
    pub hysteresis: u32,
    /// Per-worker capacities (throughput mode), as `armature bench engine` measures them.
    #[serde(default = "default_planner_prefill_capacity")]
    pub prefill_tokens_per_s: f64,
    #[serde(default = "default_planner_decode_capacity")]
    pub decode_tokens_per_s: f64,
}

fn default_planner_interval() -> HumanDuration {
    HumanDuration::from_millis(10_000)
}
fn default_slo_ttft() -> HumanDuration {
    HumanDuration::from_millis(2_000)
}
fn default_slo_itl() -> HumanDuration {
    HumanDuration::from_millis(50)
}
fn default_planner_hysteresis() -> u32 {
    2
}
fn default_planner_prefill_capacity() -> f64 {
    1000.0
}
fn default_planner_decode_capacity() -> f64 {
    300.0
}

impl Default for PlannerSection {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: PlannerMode::default(),
            interval: default_planner_interval(),
            slo_ttft: default_slo_ttft(),
            slo_itl: default_slo_itl(),
            hysteresis: default_planner_hysteresis(),
            prefill_tokens_per_s: default_planner_prefill_capacity(),
            decode_tokens_per_s: default_planner_decode_capacity(),
        }
    }
}

/// When a worker copies its KV blocks to its node's cache tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OffloadMode {
    /// A block is copied out when the pool evicts it.
    #[default]
    WriteBack,
    /// A block is copied out as soon as it is registered (complete).
    WriteThrough,
    /// Never.
    Off,
}

/// How fast a tier moves blocks to a worker, for the onboard-or-recompute decision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLink {
    /// Bytes per second.
    pub bytes_per_s: ByteSize,
    /// Fixed cost of one fetch.
    pub latency: HumanDuration,
}

/// The multi-tier KV cache: policy and link speeds, for every node (the tiers themselves and
/// their budgets are per node: `nodes[].cache`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    #[serde(default)]
    pub offload: OffloadMode,
    /// A block evicted from the host tier moves to the disk tier only once it was reused (served
    /// from the host tier) at least this many times; 0 moves every block.
    #[serde(default = "default_disk_after_reuses")]
    pub disk_after_reuses: u32,
    /// Prompt tokens per second a worker prefills, against which moving blocks is weighed.
    #[serde(default = "default_prefill_tokens_per_s")]
    pub prefill_tokens_per_s: f64,
    #[serde(default = "default_host_link")]
    pub host: TierLink,
    #[serde(default = "default_disk_link")]
    pub disk: TierLink,
    /// Another node's host or disk tier, over the data plane.
    #[serde(default = "default_remote_link")]
    pub remote: TierLink,
}

fn default_disk_after_reuses() -> u32 {
    1
}
fn default_prefill_tokens_per_s() -> f64 {
    2000.0
}
fn default_host_link() -> TierLink {
    TierLink { bytes_per_s: ByteSize(8 << 30), latency: HumanDuration::from_micros(50) }
}
fn default_disk_link() -> TierLink {
    TierLink { bytes_per_s: ByteSize(1 << 30), latency: HumanDuration::from_micros(500) }
}
fn default_remote_link() -> TierLink {
    TierLink { bytes_per_s: ByteSize(800 << 20), latency: HumanDuration::from_millis(1) }
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            offload: OffloadMode::default(),
            disk_after_reuses: default_disk_after_reuses(),
            prefill_tokens_per_s: default_prefill_tokens_per_s(),
            host: default_host_link(),
            disk: default_disk_link(),
            remote: default_remote_link(),
        }
    }
}

/// A node's cache tiers; a tier without a budget does not exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeCacheConfig {
    /// Host-RAM tier budget.
    #[serde(default)]
    pub host: Option<ByteSize>,
    /// Disk tier budget; needs `disk_dir`.
    #[serde(default)]
    pub disk: Option<ByteSize>,
    /// Directory of the disk tier (its index is rebuilt from it on start).
    #[serde(default)]
    pub disk_dir: Option<std::path::PathBuf>,
}

/// The KV data plane between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportSection {
    /// Directory with `ca.pem` and each node's `<name>.pem` / `<name>.key` (`armature cert
    /// init`); needed by every node with a `data` address.
    #[serde(default)]
    pub certs: Option<std::path::PathBuf>,
    /// Frames to a peer on this host go through shared memory.
    #[serde(default = "default_true")]
    pub shared_memory: bool,
    /// Between two workers of one process whose KV pools reach each other (CUDA devices with peer
    /// access, or one device), blocks are copied device to device instead of sent as frames.
    #[serde(default = "default_true")]
    pub device_copies: bool,
    /// Connections per peer (QUIC or TLS over TCP, whichever carries its frames).
    #[serde(default = "default_connections")]
    pub connections: u32,
    /// How frames cross to peers that shared memory does not reach.
    #[serde(default)]
    pub network: KvNetwork,
    /// Per-peer exceptions to `network`, by node name.
    #[serde(default)]
    pub network_by_peer: BTreeMap<String, KvNetwork>,
    /// Which library encrypts the data plane (QUIC packets, TLS records): by default the one
    /// that seals and opens faster on this CPU, measured when the node starts.
    #[serde(default)]
    pub crypto_library: CryptoLibrary,
    /// The cipher of the TLS-over-TCP path's records after its handshake. Both ends must offer
    /// AEGIS-128X2 for it to be used; otherwise the connection keeps TLS 1.3's own records.
    #[serde(default)]
    pub bulk_cipher: BulkCipher,
    /// A transfer that makes no progress this long is abandoned (the decode worker computes the
    /// prompt itself).
    #[serde(default = "default_transfer_timeout")]
    pub transfer_timeout: HumanDuration,
}

fn default_connections() -> u32 {
    4
}
fn default_transfer_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

impl Default for TransportSection {
    fn default() -> Self {
        Self {
            certs: None,
            shared_memory: true,
            device_copies: true,
            connections: default_connections(),
            network: KvNetwork::default(),
            network_by_peer: BTreeMap::new(),
            crypto_library: CryptoLibrary::default(),
            bulk_cipher: BulkCipher::default(),
            transfer_timeout: default_transfer_timeout(),
        }
    }
}

/// The network path of KV frames between nodes. Both are mutual TLS 1.3 against the cluster CA,
/// carry the same validated frames, and are always accepted; this picks what a node sends with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvNetwork {
    /// TLS over TCP connections: the kernel's TCP does segmentation and acknowledgement.
    #[default]
    Tls,
    /// QUIC (quinn): one stream per frame, so a bad frame costs only its stream.
    Quic,
}

/// The library behind the data plane's AEAD. Which is faster depends on the CPU: aws-lc-rs where
/// AES-GCM can use AVX-512, ring where there is AVX2 with VAES but no AVX-512
/// (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CryptoLibrary {
    /// Whichever seals and opens 16 KiB records faster here, measured once per process.
    #[default]
    Fastest,
    Ring,
    AwsLc,
}

/// What seals the TLS-over-TCP path's frames once mutual TLS 1.3 has authenticated the peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BulkCipher {
    /// AEGIS-128X2 (RFC 10032) records, keyed from the handshake's exporter: three to four times
    /// AES-GCM's speed on CPUs with AES instructions (docs/benchmarks.md). Offered first; a peer
    /// that does not offer it gets TLS records.
    #[default]
    #[serde(rename = "aegis-128x2")]
    Aegis128X2,
    /// TLS 1.3's own records, with the cipher suite the handshake agreed (AES-128-GCM first).
    Tls,
}

impl BulkCipher {
    /// The name the configuration takes.
    pub fn label(self) -> &'static str {
        match self {
            BulkCipher::Aegis128X2 => "aegis-128x2",
            BulkCipher::Tls => "tls",
        }
    }
}

impl KvNetwork {
    /// The label of this path in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            KvNetwork::Tls => "tls",
            KvNetwork::Quic => "quic",
        }
    }
}

/// The cookie the shipped `cluster.toml` and examples carry; a node started with it warns.
pub const DEFAULT_COOKIE: &str = "change-me";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub name: String,
    /// Control-plane cookie; `ARMATURE_COOKIE` overrides it.
    pub cookie: String,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Control addresses to join; empty means every other node's `control` address.
    #[serde(default)]
    pub seeds: Vec<HostPort>,
    /// How long a starting node waits for its first seed before giving up.
    #[serde(default = "default_join_timeout")]
    pub join_timeout: HumanDuration,
    /// How often a node tells its peers it is alive.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: HumanDuration,
    /// A peer not heard from for this long is marked dead.
    #[serde(default = "ClusterSection::default_lease_timeout")]
    pub lease_timeout: HumanDuration,
    /// On SIGTERM, how long in-flight work may run before the node stops.
    #[serde(default = "default_grace")]
    pub shutdown_grace: HumanDuration,
    /// How long a control connection may take to authenticate (TLS and cookie) before it is closed.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
    /// How many control connections may be authenticating at once; more are closed at accept.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: u32,
}

fn default_block_size() -> u32 {
    16
}
fn default_join_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_heartbeat() -> HumanDuration {
    HumanDuration::from_millis(500)
}
impl ClusterSection {
    /// `cluster.lease_timeout` when the file sets none.
    pub fn default_lease_timeout() -> HumanDuration {
        HumanDuration::from_secs(3)
    }
}
fn default_grace() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_handshake_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_max_handshakes() -> u32 {
    64
}

impl ModelSection {
    /// The id clients send as `model`: `name`, else the source's own name.
    pub fn served_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| match &self.source {
            ModelSource::Test => "armature-test".to_string(),
            ModelSource::Default => "SmolLM2-135M-Instruct".to_string(),
            ModelSource::Path(path) => {
                path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned())
            }
        })
    }
}

/// Which model the workers run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// `default` (SmolLM2-135M-Instruct, fetched on first use), a path to a `.gguf` file, or `test`
    /// (the deterministic test executor, no weights).
    pub source: ModelSource,
    /// The id clients send as `model`; defaults to the source's own name.
    #[serde(default)]
    pub name: Option<String>,
    /// Largest prompt + completion, in tokens; defaults to the model's own.
    #[serde(default)]
    pub context_length: Option<u32>,
    /// Completion length when a request gives no `max_tokens`.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u32,
    /// Settings of the test executor.
    #[serde(default)]
    pub test: TestExecutorSection,
    /// Sampling defaults for requests that leave a field out (before a Hugging Face folder's
    /// `generation_config.json`, and OpenAI's own defaults).
    #[serde(default)]
    pub sampling: SamplingDefaults,
    /// How tool calls are read from the model's output; by default, from the chat template
    /// (`<tool_call>` tags: `hermes`; `[TOOL_CALLS]`: `mistral`; `<|python_tag|>`: `llama3`),
    /// and `hermes` for a template that knows no tools (the server then describes them).
    #[serde(default)]
    pub tool_parser: Option<ToolParser>,
}

/// A model family's way of writing tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolParser {
    /// Hermes and Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one per call.
    Hermes,
    /// Llama 3.x: a JSON object `{"name": ..., "parameters": {...}}` (after `<|python_tag|>` or
    /// alone), several separated by `;`.
    Llama3,
    /// Mistral: `[TOOL_CALLS]` and a JSON list of `{"name", "arguments"}`.
    Mistral,
}

/// `[model.sampling]`: what a request that leaves a field out samples with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingDefaults {
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<u32>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
}

impl SamplingDefaults {
    /// These defaults, with `other`'s where these have none.
    pub fn or(self, other: SamplingDefaults) -> SamplingDefaults {
        SamplingDefaults {
            temperature: self.temperature.or(other.temperature),
            top_p: self.top_p.or(other.top_p),
            top_k: self.top_k.or(other.top_k),
            min_p: self.min_p.or(other.min_p),
            repetition_penalty: self.repetition_penalty.or(other.repetition_penalty),
        }
    }
}

fn default_max_tokens() -> u32 {
    256
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            source: ModelSource::Default,
            name: None,
            context_length: None,
            default_max_tokens: default_max_tokens(),
            test: TestExecutorSection::default(),
            sampling: SamplingDefaults::default(),
            tool_parser: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestExecutorSection {
    /// Simulated time of one decode step (one token for every running sequence).
    #[serde(default = "default_step_delay")]
    pub step_delay: HumanDuration,
}

fn default_step_delay() -> HumanDuration {
    HumanDuration::from_millis(2)
}

impl Default for TestExecutorSection {
    fn default() -> Self {
        Self { step_delay: default_step_delay() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Largest request body accepted; larger bodies get 413.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// How many times a request that failed before its first token is placed again.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// How many times a request whose worker dies mid-stream is moved to another worker (with its
    /// prompt and the tokens generated so far); past this the client gets an error.
    #[serde(default = "default_migrations")]
    pub migrations: u32,
    /// Longest a worker may stay silent about a running request before the gateway gives up.
    #[serde(default = "default_worker_timeout")]
    pub worker_timeout: HumanDuration,
    /// A connection's time to send a request's headers, from when it opened or its last response
    /// ended (so also how long a kept-alive connection may sit idle).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: HumanDuration,
    /// A request's time to send its whole body once its headers are in; past it, 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: HumanDuration,
    /// How long a request a worker took may go without its first token (queue wait and prefill);
    /// past it the client is told so (a 503, or an error event on a stream that already started).
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout: HumanDuration,
    /// The API keys (see `KeysFile`); `ARMATURE_API_KEYS_FILE` overrides it. Without keys the API
    /// is open and the admin routes answer loopback clients only.
    #[serde(default)]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Browser origins allowed to call the API (CORS); none by default.
    #[serde(default)]
    pub cors_origins: Vec<String>,
}

fn default_max_body() -> ByteSize {
    ByteSize::mib(4)
}
fn default_migrations() -> u32 {
    2
}
fn default_retries() -> u32 {
    1
}
fn default_worker_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_body_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_queue_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            max_body: default_max_body(),
            retries: default_retries(),
            migrations: default_migrations(),
            worker_timeout: default_worker_timeout(),
            header_timeout: default_header_timeout(),
            body_timeout: default_body_timeout(),
            queue_timeout: default_queue_timeout(),
            api_keys_file: None,
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingPolicy {
    /// Least recomputation plus load: the cost of docs/design.md#routing-cost over the workers' KV events.
    #[default]
    Kv,
    RoundRobin,
    LeastLoaded,
    Random,
}

impl RoutingPolicy {
    pub const ALL: [RoutingPolicy; 4] =
        [RoutingPolicy::Kv, RoutingPolicy::RoundRobin, RoutingPolicy::LeastLoaded, RoutingPolicy::Random];

    /// The name `cluster.toml` and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            RoutingPolicy::Kv => "kv",
            RoutingPolicy::RoundRobin => "round-robin",
            RoutingPolicy::LeastLoaded => "least-loaded",
            RoutingPolicy::Random => "random",
        }
    }
}

impl fmt::Display for RoutingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RoutingPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
            format!("unknown policy {s:?} ({})", names.join(", "))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    #[serde(default)]
    pub policy: RoutingPolicy,
    /// `kv`: what prefilling one uncached prompt block costs, against one block of predicted load.
    #[serde(default = "default_prefill_weight")]
    pub prefill_weight: f64,
    /// `kv`: 0 places on the lowest cost; above 0 samples a softmax over −cost / temperature.
    #[serde(default)]
    pub temperature: f64,
    /// `kv`, for workers that publish no KV events: how long the router assumes a prompt it
    /// placed stays cached there.
    #[serde(default = "default_assumed_ttl")]
    pub assumed_ttl: HumanDuration,
    /// A worker whose KV events (or heartbeats) stop for this long is reported, loudly.
    #[serde(default = "default_event_silence")]
    pub event_silence: HumanDuration,
    /// Disaggregation: a decode worker's prompt is prefilled on a prefill worker only when at
    /// least this many of its blocks are not cached on the decode worker.
    #[serde(default = "default_disagg_min_blocks")]
    pub disagg_min_blocks: u32,
    /// Disaggregation: the prefill pool is busy (prompts stay on their decode worker) when its
    /// least-loaded worker already has this many predicted blocks of prefill.
    #[serde(default = "default_prefill_busy_blocks")]
    pub prefill_busy_blocks: u64,
    /// `kv`: how much of a block's prefill a copy in a cache tier saves (0 to 1): the worker's own
    /// node's host tier, its disk tier, and another node's tier.
    #[serde(default = "default_tier_credit")]
    pub tier_credit: TierCredit,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierCredit {
    pub host: f64,
    pub disk: f64,
    pub remote: f64,
}

fn default_tier_credit() -> TierCredit {
    TierCredit { host: 0.8, disk: 0.5, remote: 0.3 }
}

fn default_disagg_min_blocks() -> u32 {
    8
}
fn default_prefill_busy_blocks() -> u64 {
    1024
}

fn default_prefill_weight() -> f64 {
    1.0
}
fn default_assumed_ttl() -> HumanDuration {
    HumanDuration::from_secs(120)
}
fn default_event_silence() -> HumanDuration {
    HumanDuration::from_secs(10)
}

impl Default for RouterSection {
    fn default() -> Self {
        Self {
            policy: RoutingPolicy::default(),
            prefill_weight: default_prefill_weight(),
            temperature: 0.0,
            assumed_ttl: default_assumed_ttl(),
            event_silence: default_event_silence(),
            disagg_min_blocks: default_disagg_min_blocks(),
            prefill_busy_blocks: default_prefill_busy_blocks(),
            tier_credit: default_tier_credit(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionSection {
    /// First restart delay; doubles with each failure in the window.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial: HumanDuration,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: HumanDuration,
    /// More failures than this within `restart_window` escalate: the node stops.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "default_restart_window")]
    pub restart_window: HumanDuration,
}

fn default_backoff_initial() -> HumanDuration {
    HumanDuration::from_millis(100)
}
fn default_backoff_max() -> HumanDuration {
    HumanDuration::from_secs(5)
}
fn default_max_restarts() -> u32 {
    5
}
fn default_restart_window() -> HumanDuration {
    HumanDuration::from_secs(60)
}

impl Default for SupervisionSection {
    fn default() -> Self {
        Self {
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            max_restarts: default_max_restarts(),
            restart_window: default_restart_window(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Gateway,
    Router,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// Control-plane (ractor_cluster) listen address, `ip:port`.
    #[serde(deserialize_with = "units::listen_addr")]
    pub control: SocketAddr,
    /// HTTP listen address of the gateway, when the node has the gateway role.
    #[serde(default, deserialize_with = "units::optional_listen_addr")]
    pub gateway: Option<SocketAddr>,
    /// KV data-plane (QUIC) listen address, `ip:port`; needed by nodes with prefill or decode
    /// workers.
    #[serde(default, deserialize_with = "units::optional_listen_addr")]
    pub data: Option<SocketAddr>,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub workers: Vec<WorkerConfig>,
    /// This node's KV cache tiers (host RAM, disk).
    #[serde(default)]
    pub cache: NodeCacheConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WorkerRole {
    #[default]
    Aggregated,
    Prefill,
    Decode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// `cpu` or `cuda:N`.
    pub device: Device,
    #[serde(default)]
    pub role: WorkerRole,
    /// KV blocks in this worker's pool.
    #[serde(default = "default_kv_blocks")]
    pub kv_blocks: u32,
    /// The pool's size in bytes instead (K and V of every layer); overrides `kv_blocks`.
    #[serde(default)]
    pub kv_memory: Option<ByteSize>,
    /// Most sequences decoded together.
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
    /// Most requests waiting for a batch slot; more are refused with 429.
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    /// Most tokens computed in one engine step (decodes plus prefill chunks).
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: u32,
    /// Publish the pool's KV events to the routers. Without them a `kv` router assumes what it
    /// placed here stays cached for `router.assumed_ttl` (approximate mode).
    #[serde(default = "default_true")]
    pub kv_events: bool,
    /// A spare device: the worker starts stopped (no model loaded), and the planner starts it
    /// (in the role it needs) and stops it again as the load asks.
    #[serde(default)]
    pub spare: bool,
}

fn default_true() -> bool {
    true
}

fn default_max_batch_tokens() -> u32 {
    512
}

fn default_kv_blocks() -> u32 {
    2048
}
/// 32: at 16 concurrent streams on a 2-core CPU, 8 left half of them queued (TTFT p50 2.1 s) and
/// gave 0.8x the aggregate tok/s of a batch that holds them all, in two runs back to back
/// (docs/benchmarks.md#served-speed).
fn default_max_batch() -> u32 {
    32
}
fn default_max_queue() -> u32 {
    64
}

impl ClusterConfig {
    /// Parse and validate TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: ClusterConfig = parse_toml(text, origin)?;
        config.validate().map_err(|(path, message)| ConfigError::new(origin, path, message))?;
        Ok(config)
    }

    /// Read, parse and validate a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::new(&origin, "", format!("cannot read: {e}")))?;
        Self::parse(&text, &origin)
    }

    /// The embedded default topology.
    pub fn embedded_default() -> Self {
        Self::parse(DEFAULT_CLUSTER_TOML, "embedded cluster.toml").expect("the embedded cluster.toml is valid")
    }

    /// The cookie, with `ARMATURE_COOKIE` taking precedence.
    pub fn cookie(&self) -> String {
        std::env::var("ARMATURE_COOKIE").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| self.cluster.cookie.clone())
    }

    /// Whether `cookie` is the example files' own, which anyone who read them knows.
    pub fn is_default_cookie(cookie: &str) -> bool {
        cookie == DEFAULT_COOKIE
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The model id clients use.
    pub fn model_name(&self) -> String {
        self.model.served_name()
    }

    /// The seed addresses `node` joins, each with the field path that named it (for errors).
    pub fn seeds_for(&self, node: &str) -> Vec<(String, String)> {
        if !self.cluster.seeds.is_empty() {
            return self
                .cluster
                .seeds
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("cluster.seeds[{i}]"), s.to_string()))
                .filter(|(_, s)| self.node(node).is_none_or(|n| n.control.to_string() != *s))
                .collect();
        }
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.name != node)
            .map(|(i, n)| (format!("nodes[{i}].control"), n.control.to_string()))
            .collect()
    }

    /// Worker count by node name, for summaries.
    pub fn workers_by_node(&self) -> BTreeMap<String, usize> {
        self.nodes.iter().map(|n| (n.name.clone(), n.workers.len())).collect()
    }
}

/// Deserialize TOML text, naming the field and line of the first problem.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        origin: origin.into(),
        path: String::new(),
        line: e.span().map(|s| line_of(s.start)),
        message: first_line(e.message()),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ConfigError {
            origin: origin.into(),
            path: if path == "." { String::new() } else { path },
            line: inner.span().map(|s| line_of(s.start)),
            message: first_line(inner.message()),
        }
    })
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests;
