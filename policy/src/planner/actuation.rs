//! Planner actuation: from the pool's members and the pool sizes the planner wants, the actions
//! that get there: which worker flips its role, which spare device starts, which worker drains to
//! stop. Written once; the planner actor carries the actions out on a cluster (`WorkerMsg::SetRole`,
//! `SpareMsg`) and the pools simulator on its simulated workers.
//!
//! The rules, in order, repeated until the pools are the wanted size or nothing can move:
//!
//! - Neither pool is sized below one worker, and devices that cannot stop (they are not spares)
//!   stay on: when the wanted pools are smaller than those, the decode pool takes the rest (the
//!   prefill target is kept).
//! - One pool short and the other over: the over pool's least-loaded worker flips (ties: the last
//!   by key, so decisions are stable across ticks).
//! - A pool short and none over: a worker draining to stop is turned to the short pool (it is
//!   warm); else a stopped spare starts in it.
//! - A pool over and none short: its least-loaded spare drains and stops.
//!
//! A worker still starting is counted in the pool it starts for and never picked to move.

use std::fmt;

use vocab::config::WorkerRole;

use super::sizing::Pools;

/// Where a member of the pools is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Serving this role (prefill or decode).
    Serving(WorkerRole),
    /// A spare device loading its model, to serve this role.
    Starting(WorkerRole),
    /// Taking no new work; takes this role when idle (None: stops).
    Draining(Option<WorkerRole>),
    /// A spare device that is off.
    Stopped,
}

impl MemberState {
    /// The role the member is heading for (None: off).
    pub fn heading(self) -> Option<WorkerRole> {
        match self {
            Self::Serving(r) | Self::Starting(r) => Some(r),
            Self::Draining(to) => to,
            Self::Stopped => None,
        }
    }
}

/// One device of the pools, as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member<W> {
    pub worker: W,
    pub state: MemberState,
    /// Its load (sequences running and waiting), to move the least-loaded worker.
    pub load: usize,
    /// A spare device: the planner may stop and start it.
    pub spare: bool,
}

/// What to do to one worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<W> {
    /// Change its role (it drains the old kind of work first).
    Flip { worker: W, to: WorkerRole },
    /// Start a stopped spare device in `role`.
    Start { worker: W, role: WorkerRole },
    /// Drain it, then stop the device.
    Stop { worker: W },
}

impl<W> Action<W> {
    pub fn worker(&self) -> &W {
        match self {
            Self::Flip { worker, .. } | Self::Start { worker, .. } | Self::Stop { worker } => worker,
        }
    }
}

impl<W: fmt::Display> fmt::Display for Action<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flip { worker, to } => write!(f, "flip {worker} to {to:?}"),
            Self::Start { worker, role } => write!(f, "start {worker} as {role:?}"),
            Self::Stop { worker } => write!(f, "stop {worker}"),
        }
    }
}

fn size_of(pools: Pools, role: WorkerRole) -> usize {
    if role == WorkerRole::Prefill { pools.prefill } else { pools.decode }
}

/// The pools the members head for (starting and draining members count where they are going).
pub fn heading_pools<W>(members: &[Member<W>]) -> Pools {
    pools_of(members.iter().map(|m| m.state))
}

fn pools_of(states: impl IntoIterator<Item = MemberState>) -> Pools {
    let mut pools = Pools::default();
    for state in states {
        match state.heading() {
            Some(WorkerRole::Prefill) => pools.prefill += 1,
            Some(WorkerRole::Decode) => pools.decode += 1,
            _ => {}
        }
    }
    pools
}

/// The actions that move `members` towards `want`, in the order to carry them out.
pub fn actuate<W: Clone + Ord>(members: &[Member<W>], want: Pools) -> Vec<Action<W>> {
    let mut want = Pools { prefill: want.prefill.max(1), decode: want.decode.max(1) };
    let staying = members.iter().filter(|m| m.state.heading().is_some() && !m.spare).count();
    want.decode += staying.saturating_sub(want.total());
    let mut states: Vec<MemberState> = members.iter().map(|m| m.state).collect();
    let mut actions = Vec::new();
    // The least-loaded member heading for `role` that `ok` allows; ties to the last by key.
    let pick = |states: &[MemberState], role: Option<WorkerRole>, ok: &dyn Fn(usize) -> bool| {
        (0..members.len())
            .filter(|&i| states[i].heading() == role && ok(i))
            .min_by(|&a, &b| members[a].load.cmp(&members[b].load).then(members[b].worker.cmp(&members[a].worker)))
    };
    let movable = |states: &[MemberState], i: usize| !matches!(states[i], MemberState::Starting(_));
    loop {
        let have = pools_of(states.iter().copied());
        if have == want {
            break;
        }
        let roles = [WorkerRole::Prefill, WorkerRole::Decode];
        let short = roles.into_iter().find(|&r| size_of(have, r) < size_of(want, r));
        let over = roles.into_iter().find(|&r| size_of(have, r) > size_of(want, r));
        match (short, over) {
            (Some(to), Some(from)) => {
                let Some(i) = pick(&states, Some(from), &|i| movable(&states, i)) else { break };
                states[i] = MemberState::Draining(Some(to));
                actions.push(Action::Flip { worker: members[i].worker.clone(), to });
            }
            (Some(to), None) => {
                if let Some(i) = pick(&states, None, &|i| matches!(states[i], MemberState::Draining(None))) {
                    states[i] = MemberState::Draining(Some(to));
                    actions.push(Action::Flip { worker: members[i].worker.clone(), to });
                } else if let Some(i) = pick(&states, None, &|i| states[i] == MemberState::Stopped && members[i].spare)
                {
                    states[i] = MemberState::Starting(to);
                    actions.push(Action::Start { worker: members[i].worker.clone(), role: to });
                } else {
                    break;
                }
            }
            (None, Some(from)) => {
                let Some(i) = pick(&states, Some(from), &|i| movable(&states, i) && members[i].spare) else { break };
                states[i] = MemberState::Draining(None);
                actions.push(Action::Stop { worker: members[i].worker.clone() });
            }
            (None, None) => break,
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: WorkerRole = WorkerRole::Prefill;
    const D: WorkerRole = WorkerRole::Decode;

    fn member(worker: &'static str, state: MemberState, load: usize, spare: bool) -> Member<&'static str> {
        Member { worker, state, load, spare }
    }

    fn pools(prefill: usize, decode: usize) -> Pools {
        Pools { prefill, decode }
    }

    #[test]
    fn the_least_loaded_worker_of_the_over_pool_flips() {
        let m = [
            member("a", MemberState::Serving(P), 3, false),
            member("b", MemberState::Serving(D), 9, false),
            member("c", MemberState::Serving(D), 2, false),
            member("d", MemberState::Serving(D), 5, false),
        ];
        assert_eq!(actuate(&m, pools(2, 2)), vec![Action::Flip { worker: "c", to: P }]);
        assert_eq!(
            actuate(&m, pools(3, 1)),
            vec![Action::Flip { worker: "c", to: P }, Action::Flip { worker: "d", to: P }]
        );
        assert_eq!(actuate(&m, pools(1, 3)), vec![]);
        // Ties go to the last by key.
        let tied = [member("a", MemberState::Serving(P), 1, false), member("b", MemberState::Serving(P), 1, false)];
        assert_eq!(actuate(&tied, pools(1, 1)), vec![Action::Flip { worker: "b", to: D }]);
    }

    #[test]
    fn no_pool_goes_below_one_and_only_spares_stop() {
        let m = [
            member("a", MemberState::Serving(P), 0, true),
            member("b", MemberState::Serving(D), 0, false),
            member("c", MemberState::Serving(D), 0, true),
        ];
        assert_eq!(actuate(&m, pools(0, 3)), vec![], "the last prefill worker stays");
        assert_eq!(actuate(&m, pools(1, 1)), vec![Action::Stop { worker: "c" }]);
        let fixed = [member("a", MemberState::Serving(P), 0, false), member("b", MemberState::Serving(D), 0, false)];
        assert_eq!(actuate(&fixed, pools(1, 0)), vec![]);
        let two = [
            member("a", MemberState::Serving(P), 0, false),
            member("b", MemberState::Serving(D), 0, false),
            member("c", MemberState::Serving(D), 0, false),
        ];
        assert_eq!(actuate(&two, pools(1, 1)), vec![], "no spare to stop");
        // Fewer wanted than can stop: the prefill target holds and the decode pool takes the rest.
        let fixed3 = [
            member("a", MemberState::Serving(P), 0, false),
            member("b", MemberState::Serving(D), 0, false),
            member("c", MemberState::Serving(P), 0, false),
        ];
        assert_eq!(actuate(&fixed3, pools(1, 1)), vec![Action::Flip { worker: "c", to: D }]);
    }

    #[test]
    fn a_draining_worker_is_turned_before_a_stopped_one_starts() {
        let m = [
            member("a", MemberState::Serving(P), 0, false),
            member("b", MemberState::Serving(D), 0, false),
            member("c", MemberState::Stopped, 0, true),
            member("d", MemberState::Draining(None), 4, true),
        ];
        assert_eq!(actuate(&m, pools(2, 1)), vec![Action::Flip { worker: "d", to: P }]);
        assert_eq!(
            actuate(&m, pools(2, 2)),
            vec![Action::Flip { worker: "d", to: P }, Action::Start { worker: "c", role: D }]
        );
        // Nothing left to start: as far as it goes.
        assert_eq!(actuate(&m, pools(4, 1)).len(), 2);
    }

    #[test]
    fn starting_members_count_where_they_go_and_do_not_move() {
        let m = [
            member("a", MemberState::Serving(P), 0, false),
            member("b", MemberState::Starting(P), 0, true),
            member("c", MemberState::Serving(D), 0, false),
        ];
        assert_eq!(heading_pools(&m), pools(2, 1));
        assert_eq!(actuate(&m, pools(2, 1)), vec![]);
        // Prefill over by one: a flips, never the starting b.
        assert_eq!(actuate(&m, pools(1, 2)), vec![Action::Flip { worker: "a", to: D }]);
        assert_eq!(Action::Flip { worker: "a", to: D }.to_string(), "flip a to Decode");
    }
}
