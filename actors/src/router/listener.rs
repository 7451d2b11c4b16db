//! `KvListener`: a router's inbox for KV publications, reachable from every node. It joins the
//! `kv-listeners` process group, which every worker publishes to, and hands what arrives to its
//! router (whose own messages carry local actor references and cannot cross nodes).

use ractor::{Actor, ActorProcessingErr, ActorRef, pg};
use ractor_cluster::RactorClusterMessage;
use runtime::discovery::KV_LISTENERS;
use runtime::ids::WorkerId;
use runtime::kv::{KvBatch, KvEventRecord, KvPublish, TierKind, WorkerLoad};

use super::actor::RouterMsg;

#[derive(RactorClusterMessage)]
pub enum KvListenerMsg {
    Publish(KvPublish),
}

pub struct KvListener;

impl Actor for KvListener {
    type Msg = KvListenerMsg;
    type State = ActorRef<RouterMsg>;
    type Arguments = ActorRef<RouterMsg>;

    async fn pre_start(
        &self,
        myself: ActorRef<KvListenerMsg>,
        router: ActorRef<RouterMsg>,
    ) -> Result<ActorRef<RouterMsg>, ActorProcessingErr> {
        pg::join(KV_LISTENERS.to_string(), vec![myself.get_cell()]);
        Ok(router)
    }

    async fn handle(
        &self,
        _: ActorRef<KvListenerMsg>,
        msg: KvListenerMsg,
        router: &mut ActorRef<RouterMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let KvListenerMsg::Publish(p) = msg;
        router.cast(RouterMsg::Kv(p))?;
        Ok(())
    }
}

/// Longest a publisher stays quiet towards the routers: a heartbeat with its last event id.
const KV_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

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
