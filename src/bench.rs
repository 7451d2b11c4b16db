//! `armature bench`: the engine and the model executor without HTTP, and KV frames between two
//! data planes on this host.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The engine and the model executor directly (no HTTP): prefill tok/s for one long prompt,
    /// and decode tok/s at each concurrency (medians of --repeats runs).
    Engine {
        /// `default`, a path to a .gguf file, or `test`.
        #[arg(long, default_value = "default")]
        model: runtime::config::ModelSource,
        /// `cpu`, or `cuda:N` in a build with the `cuda` feature.
        #[arg(long, default_value = "cpu")]
        device: runtime::config::Device,
        #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 16)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 64)]
        max_tokens: u32,
        #[arg(long, default_value_t = 512)]
        prefill_tokens: usize,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// A JSON schema file: decode again with it constraining every sequence, and report the
        /// ratio to the free runs beside them.
        #[arg(long)]
        json_schema: Option<PathBuf>,
        /// Every sequence's temperature; 0 decodes greedily.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// Every sequence's top-p (with a temperature above 0).
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
    },
    /// KV frames between two data planes on this host, over QUIC and TLS on TCP (both mutual TLS)
    /// and shared memory, beside a plain TCP socket copy and memcpy (GB/s, medians of --repeats).
    Transfer {
        /// Frames of 1 MiB per repeat (other --frame-bytes move as many bytes).
        #[arg(long, default_value_t = 1024)]
        frames: usize,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Connections between the two planes, on either network path.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Bytes per frame (a multiple of 64).
        #[arg(long, default_value_t = 1 << 20)]
        frame_bytes: usize,
        /// Measure the network paths again for 1, 2, 4 and 8 connections, and for frames of 64 KiB
        /// to 4 MiB, each beside its own TCP baseline.
        #[arg(long)]
        sweep: bool,
        /// Only these paths (memcpy, tcp, quic, tls, shm), for profiling one; the others read 0.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// The AEAD library of both network paths: fastest (measured here), ring or aws-lc.
        #[arg(long, default_value = "fastest", value_parser = config_name::<transport::CryptoLibrary>)]
        crypto: transport::CryptoLibrary,
        /// The TLS-over-TCP path's records: aegis-128x2 or tls (TLS 1.3's own).
        #[arg(long, default_value = "aegis-128x2", value_parser = config_name::<transport::BulkCipher>)]
        bulk_cipher: transport::BulkCipher,
    },
}

/// `--crypto` and `--bulk-cipher`: a name as `transport.crypto_library` and
/// `transport.bulk_cipher` take it in the topology file.
fn config_name<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, serde_json::Error> {
    serde_json::from_value(serde_json::Value::String(name.into()))
}

/// Run one benchmark and print its report (a JSON line last).
pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Engine {
            model,
            device,
            concurrency,
            prompt_tokens,
            max_tokens,
            prefill_tokens,
            repeats,
            json_schema,
            temperature,
            top_p,
        } => {
            runtime::telemetry::init_logging(Default::default());
            let constraint = match json_schema {
                Some(path) => {
                    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                    serde_json::from_str::<serde_json::Value>(&text)
                        .with_context(|| format!("{} is not JSON", path.display()))?;
                    Some(runtime::request::Constraint::new(runtime::request::Grammar::JsonSchema(text)))
                }
                None => None,
            };
            let section = runtime::config::ModelSection { source: model, ..Default::default() };
            let bench = gpu::bench::EngineBench {
                concurrency,
                prompt_tokens,
                max_tokens,
                prefill_tokens,
                repeats: repeats.max(1),
                block_size: 16,
                constraint,
                temperature,
                top_p,
            };
            let mut load = |blocks: usize| {
                let m = gpu::model::LoadedModel::load(&section, device, gpu::model::KvBudget::Blocks(blocks), 16)?;
                Ok((m.executor, m.tokenizer))
            };
            let report = bench.run(&mut load).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("threads: {}", report.threads);
            println!("prefill {} tokens: {:.1} tok/s", report.prefill_tokens, report.prefill_tok_s);
            for d in &report.decode {
                println!(
                    "decode x{:<3} aggregate {:>8.1} tok/s   per stream {:>7.1} tok/s",
                    d.concurrency, d.aggregate_tok_s, d.per_stream_tok_s
                );
                if let (Some(with), Some(ratio), Some(mask)) = (d.constrained_tok_s, d.constrained_ratio, d.mask_us) {
                    println!(
                        "  with the JSON schema: {with:>8.1} tok/s, {ratio:.2}x of free, mask {mask:.0} us a sequence"
                    );
                }
            }
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Transfer { frames, repeats, connections, frame_bytes, sweep, only, crypto, bulk_cipher } => {
            runtime::telemetry::init_logging(Default::default());
            let bench = transport::bench::TransferBench {
                frames,
                repeats,
                connections,
                frame_bytes,
                sweep,
                only,
                crypto,
                bulk_cipher,
            };
            let r = bench.run().await.map_err(|e| anyhow::anyhow!("transfer benchmark: {e}"))?;
            let c = &r.copies_per_frame;
            println!(
                "frames of {} bytes, {} per run, {} connections, AEAD from {}, {} records on tcp",
                r.frame_bytes, r.frames, r.connections, r.crypto_library, r.bulk_cipher
            );
            println!("memcpy        {:6.2} GB/s", r.memcpy_gb_s);
            println!("tcp           {:6.2} GB/s", r.tcp_gb_s);
            let of_tcp = |v: f64| 100.0 * v / r.tcp_gb_s;
            println!(
                "quic (mTLS)   {:6.2} GB/s  ({:.0}% of tcp, {:.2} copies a body; smallest datagram {}, {} black holes)",
                r.quic_gb_s,
                of_tcp(r.quic_gb_s),
                c.quic,
                r.quic_mtu.iter().map(|m| m.0).min().unwrap_or(0),
                r.quic_mtu.last().map_or(0, |m| m.1),
            );
            println!(
                "tls over tcp  {:6.2} GB/s  ({:.0}% of tcp, {:.2} copies a body)",
                r.tls_gb_s,
                of_tcp(r.tls_gb_s),
                c.tls
            );
            println!(
                "shared memory {:6.2} GB/s  ({:.0}% of memcpy, {:.2} copies a body)",
                r.shm_gb_s,
                100.0 * r.shm_gb_s / r.memcpy_gb_s,
                c.shm
            );
            for p in &r.sweep {
                println!(
                    "sweep: {:>8} bytes x{} connections: tcp {:5.2}  quic {:5.2} ({:3.0}%)  tls {:5.2} ({:3.0}%) GB/s",
                    p.frame_bytes,
                    p.connections,
                    p.tcp_gb_s,
                    p.quic_gb_s,
                    100.0 * p.quic_gb_s / p.tcp_gb_s,
                    p.tls_gb_s,
                    100.0 * p.tls_gb_s / p.tcp_gb_s
                );
            }
            println!("{}", serde_json::to_string(&r)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
