//! `armature launch`'s checks of a whole topology before it starts any node, so that a bad
//! configuration is one line and exit code 2, never a node restarted forever: certificates
//! (created for a loopback-only topology with `--dev-certs`), the API keys file, free ports, and
//! the model (the default one fetched once here, a GGUF file opened).

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;

use runtime::config::{ClusterConfig, ModelSource};

/// Every address a node of `config` binds, with the field that names it.
fn addresses(config: &ClusterConfig) -> Vec<(String, SocketAddr, bool)> {
    let mut out = Vec::new();
    for (i, n) in config.nodes.iter().enumerate() {
        out.push((format!("nodes[{i}].control"), n.control, false));
        if let Some(g) = n.gateway {
            out.push((format!("nodes[{i}].gateway"), g, false));
        }
        if let Some(d) = n.data {
            // The data plane is QUIC (UDP).
            out.push((format!("nodes[{i}].data"), d, true));
        }
    }
    out
}

/// The fields whose port is in this host's ephemeral range, one warning each. Nodes started
/// together bind loopback listeners and dial out from ports the kernel picks in that range, so
/// one of them may take a port another node has not bound yet, and that node then stops with
/// "address in use".
pub fn warnings(config: &ClusterConfig) -> Vec<String> {
    let Some((low, high)) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok().and_then(|s| {
        let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
        Some((it.next()??, it.next()??))
    }) else {
        return Vec::new();
    };
    addresses(config)
        .into_iter()
        .filter(|(_, a, _)| (low..=high).contains(&a.port()))
        .map(|(field, a, _)| {
            format!(
                "{field}: port {} is in this host's ephemeral range ({low}-{high}); the kernel may give it to \
                 another socket before the node binds it; a port below {low} is safer",
                a.port()
            )
        })
        .collect()
}

fn loopback_only(config: &ClusterConfig) -> bool {
    addresses(config).iter().all(|(_, a, _)| a.ip().is_loopback())
}

/// Check `config` as `armature launch --config CONFIG_PATH` would run it; `dev_certs` creates
/// missing certificates for a loopback-only topology. The error is one line.
pub fn check(config: &ClusterConfig, config_path: &Path, dev_certs: bool) -> Result<(), String> {
    certificates(config, config_path, dev_certs)?;
    if config.nodes.iter().any(|n| n.gateway.is_some()) {
        actors::gateway::Auth::load(&config.gateway).map_err(|e| e.to_string())?;
    }
    for (field, addr, udp) in addresses(config) {
        let free = if udp { UdpSocket::bind(addr).map(drop) } else { TcpListener::bind(addr).map(drop) };
        free.map_err(|e| format!("{field}: {addr} cannot be bound ({e}); is another node or server using it?"))?;
    }
    match &config.model.source {
        ModelSource::Test => {}
        ModelSource::Path(path) if !path.exists() => {
            return Err(format!("model.source: {} does not exist", path.display()));
        }
        // Fetched here once (the default model), and checked, so that no node finds out alone.
        _ => {
            let devices: Vec<_> = config.nodes.iter().flat_map(|n| n.workers.iter().map(|w| w.device)).collect();
            gpu::model::check(&config.model, &devices)
                .map_err(|e| format!("model.source: {}: {e}", config.model.source))?;
        }
    }
    Ok(())
}

fn certificates(config: &ClusterConfig, config_path: &Path, dev_certs: bool) -> Result<(), String> {
    let Some(dir) = &config.transport.certs else {
        if dev_certs {
            return Err("--dev-certs: set transport.certs in the topology to say where the certificates go".into());
        }
        return Ok(());
    };
    let missing = !dir.join("ca.pem").exists();
    if missing && dev_certs {
        if !loopback_only(config) {
            return Err("--dev-certs is for topologies whose nodes are all on loopback; make real certificates with \
                 `armature cert init --config FILE`"
                .into());
        }
        let nodes: Vec<(String, Vec<IpAddr>)> =
            config.nodes.iter().map(|n| (n.name.clone(), vec![n.control.ip()])).collect();
        transport::certs::init(dir, &nodes).map_err(|e| format!("transport.certs: {e}"))?;
        println!(
            "[launch] created a development CA and node certificates in {} (for this loopback cluster only; \
             use `armature cert init` for a real one)",
            dir.display()
        );
    }
    for n in &config.nodes {
        transport::Identity::load(dir, &n.name).map_err(|e| {
            format!(
                "transport.certs: node {}'s certificate: {e}; create them with `armature cert init --config {}`, \
                 or start with `armature launch --dev-certs` (loopback only)",
                n.name,
                config_path.display()
            )
        })?;
    }
    Ok(())
}
