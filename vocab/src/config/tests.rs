//! Unit tests of `config`.
use super::*;

const TWO_NODES: &str = include_str!("../../../examples/two-nodes.toml");

fn err(text: &str) -> ConfigError {
    ClusterConfig::parse(text, "t.toml").expect_err("config should be rejected")
}

#[test]
fn embedded_default_has_one_node_with_every_role() {
    let c = ClusterConfig::embedded_default();
    assert_eq!(c.nodes.len(), 1);
    assert_eq!(c.nodes[0].roles, vec![Role::Gateway, Role::Router]);
    assert_eq!(c.nodes[0].workers.len(), 1);
    assert_eq!(c.nodes[0].workers[0].device, Device::Cpu);
    assert_eq!(c.cluster.join_timeout.get(), std::time::Duration::from_secs(30));
    assert_eq!(c.model_name(), "SmolLM2-135M-Instruct");
}

#[test]
fn two_node_example_parses_and_seeds_point_at_the_other_node() {
    let c = ClusterConfig::parse(TWO_NODES, "two").unwrap();
    assert_eq!(c.seeds_for("n0"), vec![("nodes[1].control".to_string(), "127.0.0.1:7411".to_string())]);
    assert_eq!(c.seeds_for("n1"), vec![("nodes[0].control".to_string(), "127.0.0.1:7410".to_string())]);
    assert_eq!(c.cluster.lease_timeout.get(), std::time::Duration::from_secs(2));
}

#[test]
fn unknown_key_names_its_path() {
    let text = TWO_NODES.replace("kv_blocks = 2048", "kv_blocks = 2048, colour = \"red\"");
    let e = err(&text);
    assert_eq!(e.path, "nodes[1].workers[0].colour");
    assert!(e.message.contains("unknown field `colour`"), "{e}");
    assert_eq!(e.line, Some(22));
}

#[test]
fn wrong_type_names_its_path_and_value() {
    let e = err(&TWO_NODES.replace("kv_blocks = 2048", "kv_blocks = \"lots\""));
    assert_eq!(e.path, "nodes[1].workers[0].kv_blocks");
    assert!(e.message.contains("\"lots\""), "{e}");
    let e = err(&TWO_NODES.replace("lease_timeout = \"2s\"", "lease_timeout = \"2 fortnights\""));
    assert_eq!(e.path, "cluster.lease_timeout");
    assert!(e.message.contains("fortnights"), "{e}");
}

#[test]
fn kv_memory_takes_a_size() {
    let c = ClusterConfig::parse(&TWO_NODES.replace("kv_blocks = 2048", "kv_memory = \"512MiB\""), "t").unwrap();
    assert_eq!(c.nodes[1].workers[0].kv_memory, Some(ByteSize::mib(512)));
    let e = err(&TWO_NODES.replace("kv_blocks = 2048", "kv_memory = 0"));
    assert_eq!(e.path, "nodes[1].workers[0].kv_memory");
}

#[test]
fn duplicate_node_name_is_refused() {
    let e = err(&TWO_NODES.replace("name = \"n1\"", "name = \"n0\""));
    assert_eq!(e.path, "nodes[1].name");
    assert!(e.message.contains("duplicate node name \"n0\""), "{e}");
    assert_eq!(e.to_string().lines().count(), 1);
}

#[test]
fn cross_field_checks_name_the_field() {
    let cases = [
        ("control = \"127.0.0.1:7411\"", "control = \"127.0.0.1:7410\"", "nodes[1].control"),
        ("control = \"127.0.0.1:7411\"", "control = \"localhost\"", "nodes[1].control"),
        ("roles = [\"gateway\", \"router\"]", "roles = [\"gateway\"]", "nodes[0].roles"),
        ("device = \"cpu\"", "device = \"tpu\"", "nodes[1].workers[0].device"),
        ("role = \"aggregated\"", "role = \"prefill\"", "nodes[1].workers[0].role"),
        ("lease_timeout = \"2s\"", "lease_timeout = \"300ms\"", "cluster.lease_timeout"),
        ("source = \"default\"", "source = \"\"", "model.source"),
        ("cookie = \"change-me\"", "cookie = \"change-me\"\nseeds = [\"nocolon\"]", "cluster.seeds[0]"),
    ];
    for (from, to, path) in cases {
        let e = err(&TWO_NODES.replace(from, to));
        assert_eq!(e.path, path, "{to}: {e}");
    }
}

#[test]
fn toml_syntax_error_has_a_line() {
    let e = err("[cluster\nname = 1");
    assert_eq!(e.line, Some(1));
    assert_eq!(e.to_string().lines().count(), 1);
}

#[test]
fn router_section_defaults_and_checks() {
    let c = ClusterConfig::parse(TWO_NODES, "two").unwrap();
    assert_eq!(c.router.policy, RoutingPolicy::Kv);
    assert_eq!((c.router.prefill_weight, c.router.temperature), (1.0, 0.0));
    assert_eq!(c.router.assumed_ttl.get(), std::time::Duration::from_secs(120));
    assert!(c.nodes[1].workers[0].kv_events);
    let with = |router: &str| format!("{TWO_NODES}\n[router]\n{router}\n");
    let c = ClusterConfig::parse(&with("policy = \"round-robin\"\nassumed_ttl = \"30s\""), "t").unwrap();
    assert_eq!((c.router.policy, c.router.assumed_ttl.get().as_secs()), (RoutingPolicy::RoundRobin, 30));
    for (text, path) in [
        ("policy = \"smart\"", "router.policy"),
        ("prefill_weight = -1.0", "router.prefill_weight"),
        ("temperature = nan", "router.temperature"),
        ("event_silence = \"0s\"", "router.event_silence"),
        ("weight = 2", "router.weight"),
    ] {
        assert_eq!(err(&with(text)).path, path, "{text}");
    }
    assert_eq!("least-loaded".parse::<RoutingPolicy>(), Ok(RoutingPolicy::LeastLoaded));
    assert!("smart".parse::<RoutingPolicy>().unwrap_err().contains("kv, round-robin, least-loaded, random"));
}

#[test]
fn cache_tiers_parse_and_checks_name_the_field() {
    let c = ClusterConfig::parse(include_str!("../../../examples/tiers.toml"), "tiers").unwrap();
    assert_eq!(c.cache.offload, OffloadMode::WriteBack);
    assert_eq!(c.cache.disk_after_reuses, 1);
    assert_eq!(c.cache.host.latency.get(), std::time::Duration::from_micros(50));
    assert_eq!(c.cache.host.latency.to_string(), "50us");
    let n = &c.nodes[0].cache;
    assert_eq!((n.host, n.disk), (Some(ByteSize::mib(256)), Some(ByteSize::mib(2048))));
    assert_eq!(n.disk_dir.as_deref(), Some(std::path::Path::new("cache/kv/n0")));
    // Defaults: no tiers.
    assert_eq!(ClusterConfig::parse(TWO_NODES, "two").unwrap().nodes[0].cache, NodeCacheConfig::default());
    let base = include_str!("../../../examples/tiers.toml");
    let with = |extra: &str| format!("{base}\n{extra}\n");
    let c = ClusterConfig::parse(&base.replace("\"write-back\"", "\"write-through\""), "t").unwrap();
    assert_eq!(c.cache.offload, OffloadMode::WriteThrough);
    for (text, path) in [
        (base.replace("disk_dir = \"cache/kv/n0\"\n", ""), "nodes[0].cache.disk_dir"),
        (base.replace("disk = \"2GiB\"\n", ""), "nodes[0].cache.disk"),
        (base.replace("host = \"256MiB\"", "host = 0"), "nodes[0].cache.host"),
        (base.replace("host = \"256MiB\"", "host = \"lots\""), "nodes[0].cache.host"),
        (base.replace("offload = \"write-back\"", "offload = \"sometimes\""), "cache.offload"),
        (base.replace("prefill_tokens_per_s = 2000", "prefill_tokens_per_s = 0"), "cache.prefill_tokens_per_s"),
        (base.replace("[nodes.cache]", "[nodes.cache]\ncolour = 1"), "nodes[0].cache.colour"),
        (with("[cache.remote]\nbytes_per_s = 0\nlatency = \"1ms\""), "cache.remote.bytes_per_s"),
    ] {
        let e = err(&text);
        assert_eq!(e.path, path, "{e}");
    }
    // Tier credits of the router.
    let c =
        ClusterConfig::parse(&with("[router]\ntier_credit = { host = 0.9, disk = 0.4, remote = 0.2 }"), "t").unwrap();
    assert_eq!((c.router.tier_credit.host, c.router.tier_credit.remote), (0.9, 0.2));
    assert_eq!(ClusterConfig::parse(base, "t").unwrap().router.tier_credit.disk, 0.5);
    let e = err(&with("[router]\ntier_credit = { host = 1.5, disk = 0.4, remote = 0.2 }"));
    assert_eq!(e.path, "router.tier_credit.host");
    // Two nodes may not share a disk directory.
    let two = base.replace("[[nodes]]", "[[nodes]]\nname = \"n1\"\ncontrol = \"127.0.0.1:7431\"\n[nodes.cache]\ndisk = \"1GiB\"\ndisk_dir = \"cache/kv/n0\"\n\n[[nodes]]");
    assert_eq!(err(&two).path, "nodes[1].cache.disk_dir");
}

#[test]
fn planner_section_defaults_and_checks() {
    let c = ClusterConfig::parse(TWO_NODES, "two").unwrap();
    assert!(!c.planner.enabled);
    assert_eq!((c.planner.mode, c.planner.interval.get().as_secs()), (PlannerMode::Load, 10));
    let with = |planner: &str| format!("{TWO_NODES}\n[planner]\n{planner}\n");
    let c = ClusterConfig::parse(&with("enabled = true\nmode = \"throughput\"\nslo_ttft = \"800ms\""), "t").unwrap();
    assert!(c.planner.enabled && c.planner.mode == PlannerMode::Throughput);
    assert_eq!(c.planner.slo_ttft.get().as_millis(), 800);
    for (text, path) in [
        ("mode = \"fast\"", "planner.mode"),
        ("interval = \"0s\"", "planner.interval"),
        ("decode_tokens_per_s = 0.0", "planner.decode_tokens_per_s"),
        ("slo_itl = 5", "planner.slo_itl"),
        ("goal = 1", "planner.goal"),
    ] {
        let e = err(&with(text));
        assert_eq!(e.path, path, "{text}: {e}");
    }
    // A spare worker is the planner's to start: without it, refused naming the field.
    let spare = TWO_NODES.replacen("device = \"cpu\"", "device = \"cpu\", spare = true", 1);
    assert_ne!(spare, TWO_NODES);
    let e = err(&spare);
    assert!(e.path.ends_with(".spare") && e.to_string().contains("planner.enabled"), "{e}");
    let c = ClusterConfig::parse(&format!("{spare}\n[planner]\nenabled = true\n"), "t").unwrap();
    assert_eq!(c.nodes.iter().flat_map(|n| &n.workers).filter(|w| w.spare).count(), 1);
}

#[test]
fn the_example_cookie_is_known_for_what_it_is() {
    let c = ClusterConfig::parse(TWO_NODES, "two").unwrap();
    assert_eq!(c.cluster.cookie, DEFAULT_COOKIE, "the example topology carries the example cookie");
    assert!(ClusterConfig::is_default_cookie(DEFAULT_COOKIE));
    assert!(!ClusterConfig::is_default_cookie("s3cret-from-a-vault"));
}

#[test]
fn the_kv_network_is_tls_unless_told_quic_and_exceptions_name_nodes() {
    let c = ClusterConfig::parse(TWO_NODES, "t").unwrap();
    assert_eq!(c.transport.network, KvNetwork::Tls);
    let text = format!("{TWO_NODES}\n[transport.network_by_peer]\nn1 = \"quic\"\n");
    let c = ClusterConfig::parse(&text, "t").unwrap();
    assert_eq!(c.transport.network_by_peer.get("n1"), Some(&KvNetwork::Quic));
    let e = err(&format!("{TWO_NODES}\n[transport.network_by_peer]\nn7 = \"quic\"\n"));
    assert_eq!(e.path, "transport.network_by_peer.n7");
    assert!(e.message.contains("no node is named \"n7\""), "{e}");
    let e = err(&format!("{TWO_NODES}\n[transport.network_by_peer]\nn1 = \"udp\"\n"));
    assert_eq!(e.path, "transport.network_by_peer.n1");
    assert!(e.message.contains("udp"), "{e}");
}

#[test]
fn the_crypto_library_is_measured_unless_named() {
    let c = ClusterConfig::parse(TWO_NODES, "t").unwrap();
    assert_eq!(c.transport.crypto_library, CryptoLibrary::Fastest);
    for (text, library) in [("ring", CryptoLibrary::Ring), ("aws-lc", CryptoLibrary::AwsLc)] {
        let c = ClusterConfig::parse(&format!("{TWO_NODES}\n[transport]\ncrypto_library = \"{text}\"\n"), "t").unwrap();
        assert_eq!(c.transport.crypto_library, library);
    }
    let e = err(&format!("{TWO_NODES}\n[transport]\ncrypto_library = \"openssl\"\n"));
    assert_eq!(e.path, "transport.crypto_library");
    assert!(e.message.contains("openssl") && e.message.contains("aws-lc"), "{e}");
}

#[test]
fn the_bulk_cipher_is_aegis_unless_tls_is_named() {
    let c = ClusterConfig::parse(TWO_NODES, "t").unwrap();
    assert_eq!(c.transport.bulk_cipher, BulkCipher::Aegis128X2);
    for cipher in [BulkCipher::Aegis128X2, BulkCipher::Tls] {
        let text = format!("{TWO_NODES}\n[transport]\nbulk_cipher = \"{}\"\n", cipher.label());
        assert_eq!(ClusterConfig::parse(&text, "t").unwrap().transport.bulk_cipher, cipher);
    }
    let e = err(&format!("{TWO_NODES}\n[transport]\nbulk_cipher = \"aes-gcm\"\n"));
    assert_eq!(e.path, "transport.bulk_cipher");
    assert!(e.message.contains("aes-gcm") && e.message.contains("aegis-128x2"), "{e}");
}

#[test]
fn cuda_devices_need_the_backend_unless_the_test_executor_stands_in() {
    let gpus = TWO_NODES.replace("{ device = \"cpu\"", "{ device = \"cuda:0\"");
    if cfg!(feature = "cuda") {
        assert!(ClusterConfig::parse(&gpus, "t").is_ok());
    } else {
        let e = err(&gpus);
        assert_eq!(e.path, "nodes[1].workers[0].device");
        assert!(e.message.contains("--features cuda"), "{e}");
    }
    let test = gpus.replace("source = \"default\"", "source = \"test\"");
    let c = ClusterConfig::parse(&test, "t").unwrap();
    assert_eq!(c.nodes[1].workers[0].device, Device::Cuda(0));
    assert!(c.transport.device_copies, "on by default");
}
