//! `SpareActor`: a spare device, whose worker runs only while the planner wants it. It starts
//! stopped (no model loaded, nothing in device memory); `Start(role)` loads the model and starts
//! the worker in that role; `Stop` drains the worker (routers place nothing new there, what it
//! holds finishes, up to the grace) and then stops it, which frees its memory. The worker runs
//! under this actor, which starts it again if it fails while it is wanted.

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent, call_t};
use runtime::config::WorkerRole;
use runtime::discovery;

use super::actor::{WorkerActor, WorkerArgs};
use crate::protocol::{SpareMsg, WorkerMsg};

/// How often a stopping worker is asked how much it still holds.
const DRAIN_CHECK: Duration = Duration::from_millis(200);

pub struct SpareArgs {
    pub worker: WorkerArgs,
    /// Longest a stopping worker may take to finish what it holds.
    pub grace: Duration,
}

pub struct SpareActor;

pub struct SpareState {
    args: WorkerArgs,
    grace: Duration,
    /// The running worker and its role.
    running: Option<(ActorRef<WorkerMsg>, WorkerRole)>,
    stopping: bool,
}

impl SpareState {
    async fn start(&mut self, myself: &ActorRef<SpareMsg>, role: WorkerRole) -> Result<(), ActorProcessingErr> {
        let mut args = self.args.clone();
        args.config.role = role;
        let id = args.id.clone();
        let started = Instant::now();
        let (worker, _) =
            Actor::spawn_linked(Some(format!("worker {id}")), WorkerActor, args, myself.get_cell()).await?;
        tracing::info!(worker = %id, ?role, load_ms = started.elapsed().as_millis() as u64, "spare worker started");
        metrics::counter!("armature_spare_starts_total").increment(1);
        self.running = Some((worker, role));
        self.stopping = false;
        Ok(())
    }
}

impl Actor for SpareActor {
    type Msg = SpareMsg;
    type State = SpareState;
    type Arguments = SpareArgs;

    async fn pre_start(&self, myself: ActorRef<SpareMsg>, args: SpareArgs) -> Result<SpareState, ActorProcessingErr> {
        discovery::join_spare(&args.worker.id, myself.get_cell());
        tracing::info!(worker = %args.worker.id, "spare device ready (its worker stopped until the planner starts it)");
        Ok(SpareState { args: args.worker, grace: args.grace, running: None, stopping: false })
    }

    async fn handle(
        &self,
        myself: ActorRef<SpareMsg>,
        msg: SpareMsg,
        state: &mut SpareState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SpareMsg::Start(role) => {
                if state.running.is_none() {
                    state.start(&myself, role).await?;
                }
            }
            SpareMsg::Stop => {
                let Some((worker, _)) = &state.running else { return Ok(()) };
                if state.stopping {
                    return Ok(());
                }
                state.stopping = true;
                tracing::info!(worker = %state.args.id, "stopping the spare worker: draining first");
                let (worker, grace) = (worker.clone(), state.grace);
                tokio::spawn(async move {
                    let since = Instant::now();
                    // Drain answers with what the worker still holds; it takes nothing new.
                    while let Ok(open) = call_t!(worker, WorkerMsg::Drain, 2000)
                        && open > 0
                        && since.elapsed() < grace
                    {
                        tokio::time::sleep(DRAIN_CHECK).await;
                    }
                    let _ = myself.cast(SpareMsg::Drained);
                });
            }
            SpareMsg::Drained => {
                if let Some((worker, _)) = &state.running {
                    worker.stop(Some("stopped by the planner".into()));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SpareMsg>,
        event: SupervisionEvent,
        state: &mut SpareState,
    ) -> Result<(), ActorProcessingErr> {
        let ours = |cell: &ractor::ActorCell| state.running.as_ref().is_some_and(|(w, _)| w.get_id() == cell.get_id());
        match event {
            SupervisionEvent::ActorTerminated(cell, ..) if ours(&cell) => {
                tracing::info!(worker = %state.args.id, "spare worker stopped");
                metrics::counter!("armature_spare_stops_total").increment(1);
                (state.running, state.stopping) = (None, false);
            }
            SupervisionEvent::ActorFailed(cell, why) if ours(&cell) => {
                let role = state.running.take().map(|(_, r)| r);
                if state.stopping {
                    state.stopping = false;
                } else if let Some(role) = role {
                    tracing::warn!(worker = %state.args.id, "spare worker failed ({why}): starting it again");
                    state.start(&myself, role).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use gpu::executor::{TEST_PANIC_MARKER, TestTokenizer};
    use gpu::tokenizer::Tokenizer;
    use ractor::ActorCell;
    use runtime::config::{ModelSection, WorkerConfig};
    use runtime::ids::{RequestId, WorkerId};
    use runtime::request::{GenerateRequest, SamplingParams, Submission};

    use super::*;

    /// Poll `f` until it gives something (up to 20 s).
    async fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let since = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(since.elapsed() < Duration::from_secs(20), "waited in vain: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spare_starts_in_a_role_is_started_again_after_a_failure_and_stops() {
        let id = WorkerId::new("spare-test", "cpu");
        let config: WorkerConfig = serde_json::from_str(r#"{"device": "cpu", "spare": true}"#).unwrap();
        let model = ModelSection { source: runtime::config::ModelSource::Test, ..Default::default() };
        let worker = WorkerArgs { id: id.clone(), block_size: 16, config, model, disagg: None, tiers: None };
        let (spare, _) =
            Actor::spawn(None, SpareActor, SpareArgs { worker, grace: Duration::from_secs(5) }).await.unwrap();
        assert!(discovery::spares().iter().any(|(s, _)| *s == id));
        assert!(discovery::worker(&id).is_none(), "stopped until started");

        spare.cast(SpareMsg::Start(WorkerRole::Decode)).unwrap();
        let first: ActorCell = wait("the worker to start", || discovery::worker(&id)).await;
        assert_eq!(discovery::roles().get(&first.get_id()), Some(&WorkerRole::Decode));

        // The test executor panics on this prompt, and its worker with it: started again.
        let request = GenerateRequest {
            id: RequestId("boom".into()),
            tag: None,
            trace: None,
            prompt_tokens: TestTokenizer::default().encode(TEST_PANIC_MARKER),
            sampling: SamplingParams { max_tokens: 2, ..Default::default() },
        };
        let submission = Submission { request, prefill_from: None, onboard: None };
        let _ = call_t!(ActorRef::<WorkerMsg>::from(first.clone()), WorkerMsg::Submit, 2000, submission);
        let second =
            wait("the worker to start again", || discovery::worker(&id).filter(|c| c.get_id() != first.get_id())).await;
        assert_eq!(discovery::roles().get(&second.get_id()), Some(&WorkerRole::Decode), "in the same role");

        // Stopped: drained, then gone; a second Stop changes nothing.
        spare.cast(SpareMsg::Stop).unwrap();
        spare.cast(SpareMsg::Stop).unwrap();
        wait("the worker to stop", || discovery::worker(&id).is_none().then_some(())).await;
        // And it can start again, in another role.
        spare.cast(SpareMsg::Start(WorkerRole::Prefill)).unwrap();
        let third = wait("the worker to start in another role", || discovery::worker(&id)).await;
        assert_eq!(discovery::roles().get(&third.get_id()), Some(&WorkerRole::Prefill));
        spare.stop(None);
    }
}
