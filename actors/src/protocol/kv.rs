//! The KV publication protocol: what a pool (a worker's, or a cache tier's) sends every router's
//! `KvListener`, how often, and the publisher that keeps its event ids and heartbeats. Events are
//! best-effort; a router that sees a gap asks for a dump.

use std::time::Duration;

use ractor::{ActorRef, pg};
use ractor_cluster::RactorClusterMessage;
use runtime::discovery::KV_LISTENERS;
use runtime::ids::WorkerId;
use runtime::kv::{KvBatch, KvEventRecord, KvPublish, TierKind, WorkerLoad};

/// How often a pool publishes what happened since the last time.
pub const KV_PUBLISH_INTERVAL: Duration = Duration::from_millis(20);

#[derive(RactorClusterMessage)]
pub enum KvListenerMsg {
    Publish(KvPublish),
}

/// Longest a publisher stays quiet towards the routers: a heartbeat with its last event id.
const KV_HEARTBEAT: Duration = Duration::from_secs(1);

/// What one pool (a worker's, or a cache tier's) has told the routers: it publishes new events,
/// or a heartbeat when it has had none for a while, under an incarnation chosen at start.
#[derive(Debug)]
pub struct KvPublisher {
    source: WorkerId,
    tier: TierKind,
    incarnation: u64,
    last_event_id: u64,
    last_sent: Option<std::time::Instant>,
}

impl KvPublisher {
    pub fn new(source: WorkerId, tier: TierKind) -> Self {
        Self { source, tier, incarnation: rand::random(), last_event_id: 0, last_sent: None }
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Publish `records` (the pool's events since the last call), or a heartbeat when due, with
    /// how full the worker is (device workers).
    pub fn publish(&mut self, records: Vec<KvEventRecord>, load: Option<WorkerLoad>) {
        let batch = match records.last() {
            Some(last) => {
                self.last_event_id = last.id;
                KvBatch::Events(records)
            }
            None if self.last_sent.is_none_or(|t| t.elapsed() >= KV_HEARTBEAT) => {
                KvBatch::Heartbeat { last_event_id: self.last_event_id }
            }
            None => return,
        };
        self.last_sent = Some(std::time::Instant::now());
        publish(&KvPublish {
            worker: self.source.clone(),
            tier: self.tier,
            incarnation: self.incarnation,
            sent_unix_ms: runtime::kv::unix_ms(),
            batch,
            load,
        });
    }
}

/// Send `publication` to every router in the cluster.
pub fn publish(publication: &KvPublish) {
    for cell in pg::get_members(&KV_LISTENERS.to_string()) {
        let _ = ActorRef::<KvListenerMsg>::from(cell).cast(KvListenerMsg::Publish(publication.clone()));
    }
}
