//! The catalogue of every Prometheus metric family Armature exports: name, kind, labels and help.
//! `describe` gives each its `# HELP` line; `docs/metrics.md` lists the same table, and the tidy
//! test checks that every family the code records is here. `register_zeros` makes the families
//! exist from the start, at zero: every unlabelled one, and the series of `ZERO_SERIES` (labels
//! whose values are fixed). Families labelled by a worker, a tier or a supervised child get their
//! zero series when that one starts.

/// What kind of metric a family is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    /// Its labels, comma-separated (empty: none).
    pub labels: &'static str,
    pub help: &'static str,
}

/// Every family, by name.
pub const FAMILIES: &[Family] = &[
    Family {
        name: "armature_actor_failures_total",
        kind: Kind::Counter,
        labels: "child",
        help: "Supervised children that failed.",
    },
    Family {
        name: "armature_actor_restarts_total",
        kind: Kind::Counter,
        labels: "child",
        help: "Supervised children restarted after a failure.",
    },
    Family { name: "armature_cache_blocks", kind: Kind::Gauge, labels: "tier", help: "Blocks a cache tier holds." },
    Family {
        name: "armature_cache_budget_bytes",
        kind: Kind::Gauge,
        labels: "tier",
        help: "A cache tier's byte budget.",
    },
    Family {
        name: "armature_cache_bytes_in_total",
        kind: Kind::Counter,
        labels: "tier",
        help: "Bytes written into a cache tier.",
    },
    Family {
        name: "armature_cache_bytes_out_total",
        kind: Kind::Counter,
        labels: "tier",
        help: "Bytes a cache tier served.",
    },
    Family {
        name: "armature_cache_corrupt_blocks_total",
        kind: Kind::Counter,
        labels: "tier",
        help: "Blocks whose checksum failed on read: deleted, never served.",
    },
    Family {
        name: "armature_cache_demoted_blocks_total",
        kind: Kind::Counter,
        labels: "",
        help: "Blocks the host tier evicted into the disk tier.",
    },
    Family {
        name: "armature_cache_evictions_total",
        kind: Kind::Counter,
        labels: "tier",
        help: "Blocks a cache tier evicted to stay within its budget.",
    },
    Family {
        name: "armature_cache_hit_blocks_total",
        kind: Kind::Counter,
        labels: "tier",
        help: "Blocks looked up in a cache tier and found.",
    },
    Family {
        name: "armature_cache_lookup_blocks_total",
        kind: Kind::Counter,
        labels: "tier",
        help: "Blocks looked up in a cache tier.",
    },
    Family {
        name: "armature_cache_occupancy_bytes",
        kind: Kind::Gauge,
        labels: "tier",
        help: "Bytes a cache tier holds.",
    },
    Family {
        name: "armature_cache_offload_dropped_total",
        kind: Kind::Counter,
        labels: "",
        help: "Blocks a worker copied out that no tier took.",
    },
    Family {
        name: "armature_cache_offloaded_blocks_total",
        kind: Kind::Counter,
        labels: "",
        help: "Blocks a worker copied out of its pool into its node's tier.",
    },
    Family {
        name: "armature_cache_onboard_total",
        kind: Kind::Counter,
        labels: "tier, outcome",
        help: "Onboarding attempts: onboarded, skipped (not worth it) or failed.",
    },
    Family {
        name: "armature_cache_onboarded_blocks_total",
        kind: Kind::Counter,
        labels: "tier",
        help: "Blocks a worker onboarded from a tier (host, disk or remote).",
    },
    Family {
        name: "armature_cache_refused_total",
        kind: Kind::Counter,
        labels: "tier",
        help: "Blocks a cache tier refused (larger than its budget).",
    },
    Family {
        name: "armature_cache_write_errors_total",
        kind: Kind::Counter,
        labels: "tier",
        help: "Disk tier writes that failed.",
    },
    Family {
        name: "armature_control_handshakes",
        kind: Kind::Gauge,
        labels: "",
        help: "Control connections accepted that have not authenticated yet (at most cluster.max_handshakes).",
    },
    Family {
        name: "armature_control_refused_total",
        kind: Kind::Counter,
        labels: "reason",
        help: "Control connections the gate refused, by reason (tls, deadline, frame_too_large, certificate_name, ...).",
    },
    Family {
        name: "armature_control_sessions_closed_total",
        kind: Kind::Counter,
        labels: "",
        help: "Control-plane sessions that closed.",
    },
    Family {
        name: "armature_disagg_requests_total",
        kind: Kind::Counter,
        labels: "outcome",
        help: "Disaggregated requests on decode workers: transferred, fallback or cancelled.",
    },
    Family {
        name: "armature_engine_running",
        kind: Kind::Gauge,
        labels: "worker",
        help: "Sequences the worker's engine runs.",
    },
    Family {
        name: "armature_engine_waiting",
        kind: Kind::Gauge,
        labels: "worker",
        help: "Sequences waiting in the worker's engine.",
    },
    Family {
        name: "armature_generated_tokens_total",
        kind: Kind::Counter,
        labels: "",
        help: "Tokens generated for clients.",
    },
    Family {
        name: "armature_http_refused_total",
        kind: Kind::Counter,
        labels: "reason",
        help: "HTTP calls refused before any work: missing_key, invalid_key, admin, rate_requests, rate_tokens, media_type, header_size, cannot_fit.",
    },
    Family {
        name: "armature_http_requests_total",
        kind: Kind::Counter,
        labels: "path, status",
        help: "HTTP requests by route and status.",
    },
    Family {
        name: "armature_inter_token_seconds",
        kind: Kind::Histogram,
        labels: "",
        help: "Time between a stream's tokens as the gateway saw them (k tokens arriving together count as k gaps of a k-th each).",
    },
    Family {
        name: "armature_kv_blocks_active",
        kind: Kind::Gauge,
        labels: "worker",
        help: "KV pool blocks in use by running sequences.",
    },
    Family {
        name: "armature_kv_blocks_cached",
        kind: Kind::Gauge,
        labels: "worker",
        help: "KV pool blocks held by the prefix cache, evictable.",
    },
    Family { name: "armature_kv_blocks_free", kind: Kind::Gauge, labels: "worker", help: "Free KV pool blocks." },
    Family { name: "armature_kv_events_total", kind: Kind::Counter, labels: "", help: "KV events a worker published." },
    Family {
        name: "armature_kv_evictions_total",
        kind: Kind::Counter,
        labels: "worker",
        help: "KV pool blocks evicted from the prefix cache.",
    },
    Family {
        name: "armature_kv_transfer_blocks_sent_total",
        kind: Kind::Counter,
        labels: "",
        help: "KV blocks a prefill worker sent.",
    },
    Family {
        name: "armature_kv_transfer_blocks_skipped_total",
        kind: Kind::Counter,
        labels: "",
        help: "Prompt blocks a decode worker already held, not transferred.",
    },
    Family {
        name: "armature_kv_transfer_blocks_total",
        kind: Kind::Counter,
        labels: "",
        help: "KV blocks a decode worker received and imported.",
    },
    Family {
        name: "armature_kv_transfer_seconds",
        kind: Kind::Histogram,
        labels: "",
        help: "Time from asking a prefill worker to the last block landing.",
    },
    Family {
        name: "armature_node_leases_expired_total",
        kind: Kind::Counter,
        labels: "",
        help: "Peer leases that expired (a node declared dead).",
    },
    Family {
        name: "armature_peer_nodes_alive",
        kind: Kind::Gauge,
        labels: "",
        help: "Peer nodes holding their lease.",
    },
    Family {
        name: "armature_planner_flips_total",
        kind: Kind::Counter,
        labels: "to",
        help: "Role flips the planner made.",
    },
    Family {
        name: "armature_planner_pool_target",
        kind: Kind::Gauge,
        labels: "role",
        help: "The pool sizes the planner wants.",
    },
    Family {
        name: "armature_planner_starts_total",
        kind: Kind::Counter,
        labels: "",
        help: "Spare devices the planner started.",
    },
    Family {
        name: "armature_planner_stops_total",
        kind: Kind::Counter,
        labels: "",
        help: "Spare devices the planner stopped.",
    },
    Family {
        name: "armature_preemptions_total",
        kind: Kind::Counter,
        labels: "worker",
        help: "Sequences preempted for KV space.",
    },
    Family {
        name: "armature_prefill_remote_total",
        kind: Kind::Counter,
        labels: "outcome",
        help: "Prefills a prefill worker ran for another worker.",
    },
    Family {
        name: "armature_prefix_cache_tokens_total",
        kind: Kind::Counter,
        labels: "worker",
        help: "Prompt tokens served from the prefix cache.",
    },
    Family {
        name: "armature_request_attempt_failures_total",
        kind: Kind::Counter,
        labels: "",
        help: "Attempts that failed before the first token.",
    },
    Family {
        name: "armature_request_duration_seconds",
        kind: Kind::Histogram,
        labels: "",
        help: "Request duration, arrival to end.",
    },
    Family {
        name: "armature_request_migrations_total",
        kind: Kind::Counter,
        labels: "",
        help: "Requests moved to another worker after their first token.",
    },
    Family {
        name: "armature_request_retries_total",
        kind: Kind::Counter,
        labels: "",
        help: "Requests placed again after a failure before their first token.",
    },
    Family {
        name: "armature_request_stale_events_total",
        kind: Kind::Counter,
        labels: "",
        help: "Stream events of an earlier attempt, dropped.",
    },
    Family {
        name: "armature_requests_cancelled_total",
        kind: Kind::Counter,
        labels: "",
        help: "Requests a worker cancelled.",
    },
    Family {
        name: "armature_requests_client_gone_total",
        kind: Kind::Counter,
        labels: "",
        help: "Requests whose client went away.",
    },
    Family {
        name: "armature_router_decision_seconds",
        kind: Kind::Histogram,
        labels: "",
        help: "Time the router took to place a request.",
    },
    Family {
        name: "armature_router_decisions_total",
        kind: Kind::Counter,
        labels: "policy, outcome",
        help: "Placement decisions: placed or no_worker.",
    },
    Family {
        name: "armature_router_disagg_decisions_total",
        kind: Kind::Counter,
        labels: "outcome",
        help: "Disaggregation outcomes: remote, short, busy, no_prefill_worker.",
    },
    Family {
        name: "armature_router_event_lag_seconds",
        kind: Kind::Histogram,
        labels: "",
        help: "Time from a KV publication being sent to the router applying it.",
    },
    Family {
        name: "armature_router_in_flight",
        kind: Kind::Gauge,
        labels: "",
        help: "Requests counted in the router's predicted load.",
    },
    Family {
        name: "armature_router_index_blocks",
        kind: Kind::Gauge,
        labels: "",
        help: "Distinct blocks in the router's index.",
    },
    Family {
        name: "armature_router_kv_events_total",
        kind: Kind::Counter,
        labels: "outcome",
        help: "KV events the router applied or ignored as stale.",
    },
    Family { name: "armature_router_live_workers", kind: Kind::Gauge, labels: "", help: "Workers on live nodes." },
    Family {
        name: "armature_router_overlap_blocks_total",
        kind: Kind::Counter,
        labels: "",
        help: "Prompt blocks the chosen worker was believed to hold.",
    },
    Family {
        name: "armature_router_prompt_blocks_total",
        kind: Kind::Counter,
        labels: "",
        help: "Prompt blocks placed.",
    },
    Family {
        name: "armature_router_resyncs_total",
        kind: Kind::Counter,
        labels: "",
        help: "Dumps the router asked for after a gap.",
    },
    Family {
        name: "armature_router_silent_workers",
        kind: Kind::Gauge,
        labels: "",
        help: "Workers whose KV events stopped.",
    },
    Family {
        name: "armature_router_silent_workers_total",
        kind: Kind::Counter,
        labels: "",
        help: "Times a worker went silent.",
    },
    Family {
        name: "armature_router_tier_hints_total",
        kind: Kind::Counter,
        labels: "tier",
        help: "Placements that named a cache tier to onboard from.",
    },
    Family {
        name: "armature_router_wrong_model_workers",
        kind: Kind::Gauge,
        labels: "",
        help: "Workers the router passes over because they announce another model than the requests' gateway.",
    },
    Family { name: "armature_spare_starts_total", kind: Kind::Counter, labels: "", help: "Spare workers started." },
    Family { name: "armature_spare_stops_total", kind: Kind::Counter, labels: "", help: "Spare workers stopped." },
    Family {
        name: "armature_time_to_first_token_seconds",
        kind: Kind::Histogram,
        labels: "",
        help: "Time from arrival to the first token.",
    },
    Family {
        name: "armature_tokens_computed_total",
        kind: Kind::Counter,
        labels: "worker",
        help: "Prompt and generated tokens the worker's engine computed.",
    },
    Family {
        name: "armature_transfer_bytes_total",
        kind: Kind::Counter,
        labels: "direction, path",
        help: "KV bytes by direction and path: frames over tls, quic, shm or local (in-process), or device (copied between two workers' pools, no frame).",
    },
    Family {
        name: "armature_transfer_connections_total",
        kind: Kind::Counter,
        labels: "path, direction, records",
        help: "TLS-over-TCP data-plane connections opened (out) and accepted (in), by their records after the handshake (aegis-128x2 or tls).",
    },
    Family {
        name: "armature_transfer_frames_rejected_total",
        kind: Kind::Counter,
        labels: "reason",
        help: "KV frames that failed validation, by reason (magic, version, size, header, length, checksum, truncated, trailing, record).",
    },
    Family {
        name: "armature_transfer_frames_total",
        kind: Kind::Counter,
        labels: "direction, path",
        help: "KV frames by direction and path (tls, quic, shm, local).",
    },
    Family {
        name: "armature_transfer_frames_unexpected_total",
        kind: Kind::Counter,
        labels: "",
        help: "KV frames for a transfer nobody expects, dropped.",
    },
    Family {
        name: "armature_transfer_peers_refused_total",
        kind: Kind::Counter,
        labels: "",
        help: "Data-plane peers refused (certificate).",
    },
    Family {
        name: "armature_worker_overloaded_total",
        kind: Kind::Counter,
        labels: "",
        help: "Submissions refused because the worker's queue was full.",
    },
    Family {
        name: "armature_worker_role_changes_total",
        kind: Kind::Counter,
        labels: "",
        help: "Role changes a worker took.",
    },
];

/// Give every family its help text (call once the recorder is installed).
/// A label and every value it takes.
pub type LabelValues = (&'static str, &'static [&'static str]);

/// Label sets of labelled families whose values are fixed, registered at zero from the start:
/// (family, its labels with their values, crossed).
pub const ZERO_SERIES: &[(&str, &[LabelValues])] = &[
    ("armature_cache_onboard_total", &[("tier", TIERS), ("outcome", &["onboarded", "skipped", "failed"])]),
    (
        "armature_control_refused_total",
        &[(
            "reason",
            &[
                "handshake_slots",
                "tls",
                "deadline",
                "frame_too_large",
                "not_a_node",
                "unknown_node",
                "wrong_address",
                "certificate_name",
                "name_in_use",
                "duplicate",
                "name_changed",
            ],
        )],
    ),
    ("armature_disagg_requests_total", &[("outcome", &["transferred", "fallback", "cancelled"])]),
    (
        "armature_http_refused_total",
        &[(
            "reason",
            &[
                "missing_key",
                "invalid_key",
                "rate_requests",
                "rate_tokens",
                "admin",
                "header_size",
                "media_type",
                "cannot_fit",
            ],
        )],
    ),
    ("armature_planner_flips_total", &[("to", &["prefill", "decode"])]),
    ("armature_planner_pool_target", &[("role", &["prefill", "decode"])]),
    ("armature_prefill_remote_total", &[("outcome", &["sent", "failed"])]),
    (
        "armature_router_disagg_decisions_total",
        &[("outcome", &["remote", "short", "busy", "no_prefill_worker", "aggregated"])],
    ),
    ("armature_router_kv_events_total", &[("outcome", &["applied", "stale"])]),
    ("armature_router_tier_hints_total", &[("tier", TIERS)]),
    (
        "armature_transfer_bytes_total",
        &[("direction", &["in", "out"]), ("path", &["tls", "quic", "shm", "local", "device"])],
    ),
    (
        "armature_transfer_connections_total",
        &[("path", &["tls"]), ("direction", &["in", "out"]), ("records", &["aegis-128x2", "tls"])],
    ),
    ("armature_transfer_frames_total", &[("direction", &["in", "out"]), ("path", &["tls", "quic", "shm", "local"])]),
    (
        "armature_transfer_frames_rejected_total",
        &[("reason", &["magic", "version", "size", "header", "length", "checksum", "truncated", "trailing", "record"])],
    ),
];

/// The cache tiers' `tier` label values.
const TIERS: &[&str] = &["host", "disk"];

/// The families labelled by a cache tier alone, registered at zero when the tier starts.
pub const TIER_FAMILIES: &[&str] = &[
    "armature_cache_blocks",
    "armature_cache_budget_bytes",
    "armature_cache_bytes_in_total",
    "armature_cache_bytes_out_total",
    "armature_cache_corrupt_blocks_total",
    "armature_cache_evictions_total",
    "armature_cache_hit_blocks_total",
    "armature_cache_lookup_blocks_total",
    "armature_cache_occupancy_bytes",
    "armature_cache_onboarded_blocks_total",
    "armature_cache_refused_total",
    "armature_cache_write_errors_total",
];

/// Register `family` at zero under `labels` (a counter or gauge is left as it is if it exists; a
/// histogram is only registered).
pub fn register_zero(family: &Family, labels: &[(&'static str, String)]) {
    let labels: Vec<metrics::Label> = labels.iter().map(|(k, v)| metrics::Label::new(*k, v.clone())).collect();
    match family.kind {
        Kind::Counter => metrics::counter!(family.name, labels).increment(0),
        Kind::Gauge => metrics::gauge!(family.name, labels).increment(0.0),
        Kind::Histogram => drop(metrics::histogram!(family.name, labels)),
    }
}

/// The family called `name`.
pub fn family(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

/// Every unlabelled family and every series of `ZERO_SERIES`, at zero.
pub fn register_zeros() {
    for f in FAMILIES.iter().filter(|f| f.labels.is_empty()) {
        register_zero(f, &[]);
    }
    for (name, labels) in ZERO_SERIES {
        let Some(f) = family(name) else { continue };
        let mut sets: Vec<Vec<(&'static str, String)>> = vec![Vec::new()];
        for (label, values) in labels.iter() {
            sets = sets
                .into_iter()
                .flat_map(|set| {
                    values.iter().map(move |v| {
                        let mut s = set.clone();
                        s.push((*label, v.to_string()));
                        s
                    })
                })
                .collect();
        }
        for set in sets {
            register_zero(f, &set);
        }
    }
}

/// The series of `families` for one worker, tier or child (`label` = `value`), at zero.
pub fn register_zeros_for(families: &[&str], label: &'static str, value: &str) {
    for f in families.iter().filter_map(|n| family(n)) {
        register_zero(f, &[(label, value.to_string())]);
    }
}

pub fn describe() {
    for f in FAMILIES {
        match f.kind {
            Kind::Counter => metrics::describe_counter!(f.name, f.help),
            Kind::Gauge => metrics::describe_gauge!(f.name, f.help),
            Kind::Histogram => metrics::describe_histogram!(f.name, f.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_series_name_catalogued_families_by_their_own_labels() {
        for (name, labels) in ZERO_SERIES {
            let f = family(name).unwrap_or_else(|| panic!("{name} is not catalogued"));
            let given: Vec<&str> = labels.iter().map(|(l, _)| *l).collect();
            assert_eq!(given.join(", "), f.labels, "{name}");
        }
        for name in TIER_FAMILIES {
            assert_eq!(family(name).map(|f| f.labels), Some("tier"), "{name}");
        }
    }

    #[test]
    fn names_are_unique_and_sorted() {
        for pair in FAMILIES.windows(2) {
            assert!(pair[0].name < pair[1].name, "{} before {}", pair[0].name, pair[1].name);
        }
        assert!(FAMILIES.iter().all(|f| f.name.starts_with("armature_") && !f.help.is_empty()));
    }
}
