//! Checks across fields that serde cannot express: unique names and addresses, roles that need each other.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{ClusterConfig, Role, WorkerRole};

/// A failed check: (field path, message).
type Invalid = (String, String);

impl ClusterConfig {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        let c = &self.cluster;
        if c.name.trim().is_empty() {
            return Err(("cluster.name".into(), "must not be empty".into()));
        }
        if c.cookie.is_empty() {
            return Err(("cluster.cookie".into(), "must not be empty".into()));
        }
        if c.block_size == 0 || !c.block_size.is_power_of_two() || c.block_size > 4096 {
            return Err(("cluster.block_size".into(), format!("{} is not a power of two in 1..=4096", c.block_size)));
        }
        if c.heartbeat_interval.get().is_zero() {
            return Err(("cluster.heartbeat_interval".into(), "must be above zero".into()));
        }
        if c.lease_timeout.get() < c.heartbeat_interval.get() * 2 {
            return Err((
                "cluster.lease_timeout".into(),
                format!(
                    "{} must be at least twice cluster.heartbeat_interval ({})",
                    c.lease_timeout, c.heartbeat_interval
                ),
            ));
        }
        if c.handshake_timeout.get().is_zero() {
            return Err(("cluster.handshake_timeout".into(), "must be above zero".into()));
        }
        if c.max_handshakes == 0 {
            return Err(("cluster.max_handshakes".into(), "must be at least 1".into()));
        }
        // A folder is a Hugging Face model; a file must be a GGUF. Whether either is there, and
        // loads, is for the loader to say (it names what is missing).
        if let super::ModelSource::Path(path) = &self.model.source
            && path.is_file()
            && path.extension().is_none_or(|e| e != "gguf")
        {
            return Err((
                "model.source".into(),
                format!(
                    "\"{}\" is not a model source: use \"default\", a .gguf file, a Hugging Face folder (config.json, safetensors, tokenizer.json), or \"test\"",
                    path.display()
                ),
            ));
        }
        let d = &self.model.sampling;
        let checks = [
            ("model.sampling.temperature", d.temperature, 0.0, 2.0),
            ("model.sampling.top_p", d.top_p, f32::MIN_POSITIVE, 1.0),
            ("model.sampling.min_p", d.min_p, 0.0, 1.0),
            ("model.sampling.repetition_penalty", d.repetition_penalty, f32::MIN_POSITIVE, 10.0),
        ];
        for (field, value, lo, hi) in checks {
            if let Some(v) = value
                && !(v.is_finite() && (lo..=hi).contains(&v))
            {
                return Err((field.into(), format!("{v} is outside [{lo}, {hi}]")));
            }
        }
        if self.model.context_length == Some(0) {
            return Err(("model.context_length".into(), "must be above zero".into()));
        }
        let s = &self.supervision;
        if s.backoff_initial.get() > s.backoff_max.get() {
            return Err((
                "supervision.backoff_initial".into(),
                format!("{} exceeds supervision.backoff_max ({})", s.backoff_initial, s.backoff_max),
            ));
        }
        let r = &self.router;
        if !(r.prefill_weight.is_finite() && r.prefill_weight >= 0.0) {
            return Err(("router.prefill_weight".into(), format!("{} is not a finite number >= 0", r.prefill_weight)));
        }
        if !(r.temperature.is_finite() && r.temperature >= 0.0) {
            return Err(("router.temperature".into(), format!("{} is not a finite number >= 0", r.temperature)));
        }
        let c = r.tier_credit;
        for (name, v) in [("host", c.host), ("disk", c.disk), ("remote", c.remote)] {
            if !(0.0..=1.0).contains(&v) {
                return Err((format!("router.tier_credit.{name}"), format!("{v} is not between 0 and 1")));
            }
        }
        if r.event_silence.get().is_zero() {
            return Err(("router.event_silence".into(), "must be above zero".into()));
        }
        let cache = &self.cache;
        if !(cache.prefill_tokens_per_s.is_finite() && cache.prefill_tokens_per_s > 0.0) {
            return Err((
                "cache.prefill_tokens_per_s".into(),
                format!("{} is not a finite number above 0", cache.prefill_tokens_per_s),
            ));
        }
        for (name, link) in [("host", cache.host), ("disk", cache.disk), ("remote", cache.remote)] {
            if link.bytes_per_s.bytes() == 0 {
                return Err((format!("cache.{name}.bytes_per_s"), "must be above zero".into()));
            }
        }
        let pl = &self.planner;
        for (name, d) in [("interval", pl.interval), ("slo_ttft", pl.slo_ttft), ("slo_itl", pl.slo_itl)] {
            if d.get().is_zero() {
                return Err((format!("planner.{name}"), "must be above zero".into()));
            }
        }
        for (name, v) in
            [("prefill_tokens_per_s", pl.prefill_tokens_per_s), ("decode_tokens_per_s", pl.decode_tokens_per_s)]
        {
            if !(v.is_finite() && v > 0.0) {
                return Err((format!("planner.{name}"), format!("{v} is not a finite number above 0")));
            }
        }
        let mut dirs: HashMap<&std::path::Path, usize> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let c = &node.cache;
            if c.host.is_some_and(|b| b.bytes() == 0) {
                return Err((
                    format!("nodes[{i}].cache.host"),
                    "must be above zero (leave it out for no host tier)".into(),
                ));
            }
            match (&c.disk, &c.disk_dir) {
                (Some(b), _) if b.bytes() == 0 => {
                    return Err((
                        format!("nodes[{i}].cache.disk"),
                        "must be above zero (leave it out for no disk tier)".into(),
                    ));
                }
                (Some(_), None) => {
                    return Err((format!("nodes[{i}].cache.disk_dir"), "a disk tier needs a directory".into()));
                }
                (None, Some(_)) => {
                    return Err((
                        format!("nodes[{i}].cache.disk"),
                        "disk_dir is set but the disk tier has no budget".into(),
                    ));
                }
                (Some(_), Some(dir)) => {
                    if let Some(j) = dirs.insert(dir.as_path(), i) {
                        return Err((
                            format!("nodes[{i}].cache.disk_dir"),
                            format!("{} is also nodes[{j}].cache.disk_dir", dir.display()),
                        ));
                    }
                }
                (None, None) => {}
            }
        }
        if self.nodes.is_empty() {
            return Err(("nodes".into(), "at least one node is needed".into()));
        }
        self.validate_nodes()
    }

    fn validate_nodes(&self) -> Result<(), Invalid> {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        let mut workers = 0usize;
        let mut gateways = 0usize;
        for (i, node) in self.nodes.iter().enumerate() {
            let at = |field: &str| format!("nodes[{i}].{field}");
            if node.name.is_empty() || !node.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                return Err((at("name"), format!("\"{}\" must be non-empty letters, digits, '-' or '_'", node.name)));
            }
            if let Some(first) = names.insert(&node.name, i) {
                return Err((at("name"), format!("duplicate node name \"{}\" (also nodes[{first}].name)", node.name)));
            }
            let mut listen = vec![(at("control"), node.control)];
            if let Some(g) = node.gateway {
                listen.push((at("gateway"), g));
            }
            if let Some(d) = node.data {
                listen.push((at("data"), d));
                if self.transport.certs.is_none() {
                    return Err((
                        "transport.certs".into(),
                        format!(
                            "nodes[{i}] has a data address, so the data plane needs certificates: run `armature cert init` and set this to their directory"
                        ),
                    ));
                }
            }
            for (path, addr) in listen {
                if let Some(other) = addrs.insert(addr, path.clone()) {
                    return Err((path, format!("address \"{addr}\" is already used by {other}")));
                }
            }
            let has = |r: Role| node.roles.contains(&r);
            if has(Role::Gateway) {
                gateways += 1;
                if node.gateway.is_none() {
                    return Err((
                        at("gateway"),
                        "a node with the gateway role needs a gateway address, e.g. \"127.0.0.1:8000\"".into(),
                    ));
                }
                if !has(Role::Router) {
                    return Err((at("roles"), "the gateway role needs the router role on the same node".into()));
                }
            } else if node.gateway.is_some() {
                return Err((at("gateway"), "set only on a node with the gateway role".into()));
            }
            for (w, worker) in node.workers.iter().enumerate() {
                let wat = |field: &str| format!("nodes[{i}].workers[{w}].{field}");
                check_device(worker.device, &self.model.source).map_err(|m| (wat("device"), m))?;
                if worker.spare && !self.planner.enabled {
                    return Err((wat("spare"), "only the planner starts spare workers: set planner.enabled".into()));
                }
                if node.workers[..w].iter().any(|o| o.device == worker.device) {
                    return Err((
                        wat("device"),
                        format!("device \"{}\" is already used by another worker on this node", worker.device),
                    ));
                }
                if worker.role != WorkerRole::Aggregated && node.data.is_none() {
                    return Err((
                        wat("role"),
                        format!(
                            "a {} worker moves KV blocks: give nodes[{i}] a data address, e.g. data = \"127.0.0.1:7500\"",
                            format!("{:?}", worker.role).to_lowercase()
                        ),
                    ));
                }
                if worker.kv_memory.is_some_and(|m| m.bytes() == 0) {
                    return Err((wat("kv_memory"), "must be above zero".into()));
                }
                if worker.kv_blocks == 0 {
                    return Err((wat("kv_blocks"), "must be above zero".into()));
                }
                if worker.max_batch_tokens == 0 {
                    return Err((wat("max_batch_tokens"), "must be above zero".into()));
                }
                if worker.max_batch == 0 {
                    return Err((wat("max_batch"), "must be above zero".into()));
                }
                workers += 1;
            }
        }
        for peer in self.transport.network_by_peer.keys() {
            if !self.nodes.iter().any(|n| &n.name == peer) {
                return Err((format!("transport.network_by_peer.{peer}"), format!("no node is named \"{peer}\"")));
            }
        }
        if gateways == 0 {
            return Err(("nodes".into(), "no node has the gateway role".into()));
        }
        if workers == 0 {
            return Err(("nodes".into(), "no node has a worker".into()));
        }
        Ok(())
    }
}

/// A CUDA device needs the CUDA backend in the build, except under the test executor, which stands
/// in for any device (so topologies of GPU workers run in tests without one).
fn check_device(device: super::Device, source: &super::ModelSource) -> Result<(), String> {
    match device {
        super::Device::Cuda(_) if !cfg!(feature = "cuda") && *source != super::ModelSource::Test => Err(format!(
            "\"{device}\": the CUDA backend is not in this build (build with `--features cuda`); use \"cpu\""
        )),
        _ => Ok(()),
    }
}
