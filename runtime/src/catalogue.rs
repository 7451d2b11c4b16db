//! The catalogue of every Prometheus metric family Armature exports: name, kind, labels and help.
//! `describe` gives each its `# HELP` line; `docs/metrics.md` lists the same table, and the tidy
//! test checks that every family the code records is here.

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
    fn names_are_unique_and_sorted() {
        for pair in FAMILIES.windows(2) {
            assert!(pair[0].name < pair[1].name, "{} before {}", pair[0].name, pair[1].name);
        }
        assert!(FAMILIES.iter().all(|f| f.name.starts_with("armature_") && !f.help.is_empty()));
    }
}
