//! `NodeSupervisor`: starts a node's children, restarts each one that fails (one-for-one) with
//! backoff, and stops itself, reporting why, when a child keeps failing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use ractor_cluster::RactorMessage;
use tokio::sync::watch;

use super::policy::{RestartDecision, RestartPolicy, RestartTracker};

/// Starts one child, linked to the supervisor cell it is given.
pub type StartFn = Arc<dyn Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// A child: a stable name (for logs, metrics and the restart history) and how to start it.
#[derive(Clone)]
pub struct ChildSpec {
    pub name: String,
    pub start: StartFn,
}

impl ChildSpec {
    pub fn new<F>(name: impl Into<String>, start: F) -> Self
    where
        F: Fn(ActorCell) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync + 'static,
    {
        Self { name: name.into(), start: Arc::new(start) }
    }
}

/// Why the supervisor is no longer running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorExit {
    Running,
    Stopped,
    /// A child failed more often than the policy allows.
    Escalated {
        child: String,
        reason: String,
    },
}

pub struct SupervisorArgs {
    pub children: Vec<ChildSpec>,
    pub policy: RestartPolicy,
    pub exit: watch::Sender<SupervisorExit>,
}

#[derive(RactorMessage)]
pub enum SupervisorMsg {
    /// Start a child again (sent to itself after the backoff delay).
    Restart(String),
}

pub struct NodeSupervisor;

pub struct SupervisorState {
    specs: HashMap<String, ChildSpec>,
    running: HashMap<ActorId, (String, ActorCell)>,
    tracker: RestartTracker,
    epoch: Instant,
    exit: watch::Sender<SupervisorExit>,
}

impl SupervisorState {
    fn child_exited(&mut self, myself: &ActorRef<SupervisorMsg>, id: ActorId, reason: String) {
        let Some((name, _)) = self.running.remove(&id) else {
            return;
        };
        self.schedule_restart(myself, name, reason);
    }

    fn schedule_restart(&mut self, myself: &ActorRef<SupervisorMsg>, name: String, reason: String) {
        metrics::counter!("armature_actor_failures_total", "child" => name.clone()).increment(1);
        match self.tracker.on_failure(&name, self.epoch.elapsed()) {
            RestartDecision::Restart { after, failures_in_window } => {
                tracing::warn!(child = %name, %reason, failures_in_window, after_ms = after.as_millis() as u64, "child failed; restarting");
                myself.send_after(after, move || SupervisorMsg::Restart(name));
            }
            RestartDecision::Escalate { failures_in_window } => {
                tracing::error!(child = %name, %reason, failures_in_window, "child keeps failing; escalating: the node stops");
                self.exit.send_replace(SupervisorExit::Escalated { child: name, reason });
                myself.stop(Some("escalated".into()));
            }
        }
    }

    async fn start(&mut self, myself: &ActorRef<SupervisorMsg>, name: &str) -> Result<(), SpawnErr> {
        crate::catalogue::register_zeros_for(
            &["armature_actor_failures_total", "armature_actor_restarts_total"],
            "child",
            name,
        );
        let spec = self.specs.get(name).expect("restart of a known child").clone();
        let cell = (spec.start)(myself.get_cell()).await?;
        self.running.insert(cell.get_id(), (name.to_string(), cell));
        Ok(())
    }
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let order: Vec<String> = args.children.iter().map(|c| c.name.clone()).collect();
        let mut state = SupervisorState {
            specs: args.children.into_iter().map(|c| (c.name.clone(), c)).collect(),
            running: HashMap::new(),
            tracker: RestartTracker::new(args.policy),
            epoch: Instant::now(),
            exit: args.exit,
        };
        for name in order {
            state.start(&myself, &name).await.map_err(|e| format!("starting {name}: {e}"))?;
        }
        Ok(state)
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        for (_, (name, cell)) in state.running.drain() {
            if let Err(e) = cell.stop_and_wait(Some("node stopping".into()), Some(Duration::from_secs(5))).await {
                tracing::warn!(child = %name, "child did not stop cleanly: {e}");
            }
        }
        state.exit.send_if_modified(|e| {
            let running = *e == SupervisorExit::Running;
            if running {
                *e = SupervisorExit::Stopped;
            }
            running
        });
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Restart(name) => {
                if let Err(e) = state.start(&myself, &name).await {
                    state.schedule_restart(&myself, name, format!("restart failed: {e}"));
                } else {
                    metrics::counter!("armature_actor_restarts_total", "child" => name.clone()).increment(1);
                    tracing::info!(child = %name, "child restarted");
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                state.child_exited(&myself, cell.get_id(), format!("failed: {err}"))
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => state.child_exited(
                &myself,
                cell.get_id(),
                format!("terminated: {}", reason.unwrap_or_else(|| "no reason".into())),
            ),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    struct Flaky;

    #[derive(RactorMessage)]
    enum FlakyMsg {
        Crash,
    }

    impl Actor for Flaky {
        type Msg = FlakyMsg;
        type State = ();
        type Arguments = Arc<AtomicU32>;
        async fn pre_start(&self, _: ActorRef<FlakyMsg>, starts: Arc<AtomicU32>) -> Result<(), ActorProcessingErr> {
            starts.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn handle(&self, _: ActorRef<FlakyMsg>, _: FlakyMsg, _: &mut ()) -> Result<(), ActorProcessingErr> {
            panic!("flaky child crashes on purpose");
        }
    }

    fn flaky_spec(starts: Arc<AtomicU32>) -> ChildSpec {
        ChildSpec::new("flaky", move |sup| {
            let starts = starts.clone();
            Box::pin(async move {
                let (r, _) = Actor::spawn_linked(Some("flaky-test-child".into()), Flaky, starts, sup).await?;
                Ok(r.get_cell())
            })
        })
    }

    async fn wait_for(cond: impl Fn() -> bool) {
        for _ in 0..200 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached in 2 s");
    }

    #[tokio::test]
    async fn panicking_child_is_restarted_then_escalates() {
        let starts = Arc::new(AtomicU32::new(0));
        let (tx, rx) = watch::channel(SupervisorExit::Running);
        let policy = RestartPolicy {
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            max_restarts: 2,
            window: Duration::from_secs(60),
        };
        let (sup, handle) = Actor::spawn(
            None,
            NodeSupervisor,
            SupervisorArgs { children: vec![flaky_spec(starts.clone())], policy, exit: tx },
        )
        .await
        .unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        for round in 2..=3 {
            ActorRef::<FlakyMsg>::where_is("flaky-test-child").unwrap().cast(FlakyMsg::Crash).unwrap();
            wait_for(|| starts.load(Ordering::SeqCst) == round).await;
            wait_for(|| ActorRef::<FlakyMsg>::where_is("flaky-test-child").is_some()).await;
        }
        // The third failure in the window exceeds max_restarts = 2: the supervisor stops.
        ActorRef::<FlakyMsg>::where_is("flaky-test-child").unwrap().cast(FlakyMsg::Crash).unwrap();
        handle.await.unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert!(matches!(&*rx.borrow(), SupervisorExit::Escalated { child, .. } if child == "flaky"));
        drop(sup);
    }
}
