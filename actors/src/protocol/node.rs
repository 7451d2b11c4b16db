//! What a node's actors share: the registered names they find each other by, and `NodeState`
//! (draining, the in-flight count, the liveness view, the planes, the planner's window).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use runtime::node::{ClusterView, ControlPlane};

/// The registered name of a node's router (gateways find it by name).
pub const ROUTER_NAME: &str = "router";

/// State shared by the actors of one node.
pub struct NodeState {
    draining: AtomicBool,
    inflight: AtomicUsize,
    pub view: Arc<ClusterView>,
    pub started_unix: u64,
    /// The control plane, when this node is part of a multi-node cluster.
    pub control: Option<ControlPlane>,
    /// The KV data plane, when the node has a `data` address.
    pub data_plane: Option<Arc<transport::DataPlane>>,
    /// What this node's gateway saw since the planner last looked.
    pub latency: policy::planner::LatencyWindow,
}

/// Counts a request as in flight until dropped.
pub struct InflightGuard<'a>(&'a AtomicUsize);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl NodeState {
    pub fn new(control: Option<ControlPlane>, data_plane: Option<Arc<transport::DataPlane>>) -> Self {
        Self {
            control,
            data_plane,
            draining: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            latency: Default::default(),
            view: Arc::default(),
            started_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Take no new requests; `/health` answers 503.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    pub fn inflight_guard(&self) -> InflightGuard<'_> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(&self.inflight)
    }
}
