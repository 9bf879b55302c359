//! Where this board sends each function's invocations: a table in memory, rebuilt whenever the
//! plan, the boards' records (their ready replicas) or the desired state change — never looked
//! up per request.
//!
//! For each placed function, in order:
//! - replicas placed on this board (or none placed anywhere and this board is its home, which
//!   wakes it from zero): this board answers ([`Route::Here`]);
//! - otherwise the boards that report a ready replica of it, alive ones first (a suspect board
//!   only when no alive one has one), taken in turn;
//! - none ready (starting, or scaled to zero): the first board it is placed on that is not dead,
//!   or its home — that board starts a replica and answers;
//! - unplaced, or waiting for dead boards: refused with the reason ([`Route::Refused`]).
//!
//! A function not in the plan yet (deployed a moment ago) is this board's to answer, as on a
//! single board.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bramble_gateway::provider::BoardAddr;

use crate::desired::Desired;
use crate::function_key::FunctionKey;
use crate::membership::{BoardState, BoardView, View};
use crate::placement::{FunctionPlan, Plan};

use super::DeploymentCheck;

/// Where one function's invocations go.
#[derive(Debug)]
pub enum Route {
    /// This board's replicas.
    Here,
    /// Other boards.
    Elsewhere(Remote),
    /// Nowhere, for this reason (a 503).
    Refused(String),
}

/// Other boards that answer a function.
#[derive(Debug)]
pub struct Remote {
    /// Boards with a ready replica, taken in turn.
    ready: Vec<BoardAddr>,
    /// Where to go when none is ready, in order: that board starts one.
    wake: Vec<BoardAddr>,
    /// How long to wait for the board's answer.
    pub timeout: Duration,
    /// The next of `ready` to take.
    next: AtomicUsize,
}

impl Remote {
    /// The board to send the next call to: the next ready one, else the first to wake it —
    /// skipping those `avoid` names (boards that just failed a call) while there are others;
    /// `None` when no board can take it.
    pub fn pick(&self, avoid: impl Fn(&BoardAddr) -> bool) -> Option<&BoardAddr> {
        let n = self.ready.len();
        let start = match n {
            0 | 1 => 0,
            n => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        let in_turn = (0..n).filter_map(|i| self.ready.get((start + i) % n));
        let mut candidates = in_turn.chain(&self.wake);
        let first = candidates.clone().next();
        candidates.find(|b| !avoid(b)).or(first)
    }
}

/// Every function's route, by namespace and name (looked up without allocating).
#[derive(Debug, Default)]
pub struct Routes {
    functions: HashMap<String, HashMap<String, Route>>,
    /// The functions whose schedules this board fires (see [`fires_schedules`]).
    schedules: BTreeSet<FunctionKey>,
    /// Built from a desired state that had every function the cluster stores (not one
    /// still being read at the board's start).
    current: bool,
}

impl Routes {
    /// True when built from the whole desired state: a function missing here does not exist.
    pub fn is_current(&self) -> bool {
        self.current
    }

    /// The functions whose schedules this board fires: one board per function does.
    pub fn schedules(&self) -> &BTreeSet<FunctionKey> {
        &self.schedules
    }

    /// The route of `name.namespace`; `None`: not in the plan (this board answers).
    pub fn find(&self, namespace: &str, name: &str) -> Option<&Route> {
        self.functions.get(namespace)?.get(name)
    }

    /// The routes of board `me` from the plan, the boards as it sees them and the desired state.
    pub fn build(
        me: &str,
        plan: &Plan,
        view: &View,
        desired: &Desired,
        check: &dyn DeploymentCheck,
    ) -> Routes {
        let mut functions: HashMap<String, HashMap<String, Route>> = HashMap::new();
        let mut add = |namespace: &str, name: &str, route: Route| {
            functions
                .entry(namespace.to_owned())
                .or_default()
                .insert(name.to_owned(), route);
        };
        let mut schedules = BTreeSet::new();
        for f in &plan.functions {
            if fires_schedules(me, f, view) {
                schedules.insert(f.key.clone());
            }
            let timeout = desired
                .functions
                .get(&f.key)
                .map(|r| check.remote_timeout(&r.value.deployment))
                .unwrap_or(DEFAULT_TIMEOUT);
            add(&f.key.namespace, &f.key.name, route(me, f, view, timeout));
        }
        for u in &plan.unplaced {
            let message = format!("function {} cannot be placed: {}", u.key.name, u.reason);
            add(&u.key.namespace, &u.key.name, Route::Refused(message));
        }
        for w in &plan.waiting {
            let boards: Vec<&str> = w.boards.keys().map(String::as_str).collect();
            let message = format!(
                "function {} is waiting for {} (the only boards it can run on)",
                w.key.name,
                boards.join(", ")
            );
            add(&w.key.namespace, &w.key.name, Route::Refused(message));
        }
        Routes {
            functions,
            schedules,
            current: desired.is_current(),
        }
    }
}

/// Whether board `me` fires the schedules of `f`: the first, by name, of the boards it is
/// placed on (its home when scaled to zero) that are not dead. One board of the cluster fires
/// a schedule; when that board dies, the next one does (once the cluster sees it dead).
fn fires_schedules(me: &str, f: &FunctionPlan, view: &View) -> bool {
    let not_dead = |b: &str| {
        view.boards
            .get(b)
            .is_some_and(|v| v.state != BoardState::Dead)
    };
    let first = if f.placed() == 0 {
        Some(f.home.as_str()).filter(|b| not_dead(b))
    } else {
        f.boards
            .iter()
            .filter(|(b, n)| **n > 0 && not_dead(b))
            .map(|(b, _)| b.as_str())
            .next()
    };
    first == Some(me)
}

/// The remote timeout of a function the desired state does not show yet.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

fn route(me: &str, f: &FunctionPlan, view: &View, timeout: Duration) -> Route {
    let placed_here = f.boards.get(me).is_some_and(|n| *n > 0);
    if placed_here || (f.placed() == 0 && f.home == me) {
        return Route::Here;
    }
    let id = f.key.to_string();
    let mut alive = Vec::new();
    let mut suspect = Vec::new();
    for (board, _) in f.boards.iter().filter(|(b, n)| **n > 0 && *b != me) {
        let Some((view, addr)) = reachable(view, board) else {
            continue;
        };
        if view
            .info
            .as_ref()
            .and_then(|i| i.ready.get(&id))
            .copied()
            .unwrap_or(0)
            == 0
        {
            continue;
        }
        match view.state {
            BoardState::Alive => alive.push(addr),
            _ => suspect.push(addr),
        }
    }
    let ready = if alive.is_empty() { suspect } else { alive };
    let mut wake: Vec<BoardAddr> = Vec::new();
    let placed = f.boards.iter().filter(|(_, n)| **n > 0).map(|(b, _)| b);
    for b in placed.chain(std::iter::once(&f.home)).filter(|b| *b != me) {
        if let Some((_, addr)) = reachable(view, b)
            && !wake.contains(&addr)
        {
            wake.push(addr);
        }
    }
    if ready.is_empty() && wake.is_empty() {
        return Route::Refused(format!(
            "function {} runs on {}, which {} not reachable now",
            f.key.name,
            f.boards.keys().cloned().collect::<Vec<_>>().join(", "),
            if f.boards.len() > 1 { "are" } else { "is" },
        ));
    }
    Route::Elsewhere(Remote {
        ready,
        wake,
        timeout,
        next: AtomicUsize::new(0),
    })
}

/// A board that is not dead and whose record says where its board listener is.
fn reachable<'a>(view: &'a View, board: &str) -> Option<(&'a BoardView, BoardAddr)> {
    let b = view.boards.get(board)?;
    if b.state == BoardState::Dead {
        return None;
    }
    let info = b.info.as_ref()?;
    if info.board_port == 0 {
        return None;
    }
    Some((
        b,
        BoardAddr {
            name: Arc::from(board),
            addr: SocketAddr::new(info.address, info.board_port),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{board, placed, view};
    use bramble_gateway::types::FunctionDeployment;

    struct Timeouts;
    impl DeploymentCheck for Timeouts {
        fn check(&self, _: &FunctionDeployment) -> bramble_gateway::provider::ProviderResult<u64> {
            Ok(1)
        }
        fn remote_timeout(&self, _: &FunctionDeployment) -> Duration {
            Duration::from_secs(61)
        }
    }

    /// The routes of `me`; the desired state has every function but `late`.
    fn routes(me: &str, functions: Vec<FunctionPlan>, v: &View) -> Routes {
        let mut desired = Desired::default();
        for f in functions.iter().filter(|f| f.key.name != "late") {
            let record = crate::desired::Versioned {
                value: crate::fixtures::record(1, &[]),
                revision: 1,
            };
            desired.functions.insert(f.key.clone(), record);
        }
        let plan = Plan {
            functions,
            ..Plan::default()
        };
        Routes::build(me, &plan, v, &desired, &Timeouts)
    }

    fn picks(route: Option<&Route>, n: usize) -> Vec<String> {
        picks_avoiding(route, n, &[])
    }

    fn picks_avoiding(route: Option<&Route>, n: usize, avoid: &[&str]) -> Vec<String> {
        let Some(Route::Elsewhere(remote)) = route else {
            panic!("not elsewhere: {route:?}");
        };
        (0..n)
            .map(|_| {
                remote
                    .pick(|b| avoid.contains(&&*b.name))
                    .map(|b| b.name.to_string())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn one_board_fires_a_schedule_the_first_not_dead_of_those_running_it() {
        let f = || placed("f", &[("b1", 1), ("b2", 1)], "b1");
        let zero = || placed("z", &[], "b2");
        let fired_by = |states: [BoardState; 3]| -> Vec<(String, Vec<String>)> {
            let v = view(
                ["b0", "b1", "b2"]
                    .into_iter()
                    .zip(states)
                    .map(|(b, s)| board(b, s, &[]))
                    .collect(),
            );
            ["b0", "b1", "b2"]
                .into_iter()
                .map(|me| {
                    let r = routes(me, vec![f(), zero()], &v);
                    let names = r.schedules().iter().map(|k| k.name.clone()).collect();
                    (me.to_owned(), names)
                })
                .filter(|(_, names): &(String, Vec<String>)| !names.is_empty())
                .collect()
        };
        use BoardState::{Alive, Dead, Suspect};
        // f: b1 (first of b1, b2); z, scaled to zero: its home b2.
        assert_eq!(
            fired_by([Alive, Alive, Alive]),
            [
                ("b1".into(), vec!["f".into()]),
                ("b2".into(), vec!["z".into()])
            ]
        );
        // A suspect board still fires (it may only be slow); a dead one hands over.
        assert_eq!(fired_by([Alive, Suspect, Alive])[0].0, "b1");
        assert_eq!(
            fired_by([Alive, Dead, Alive]),
            [("b2".into(), vec!["f".into(), "z".into()])]
        );
        // Every board running it dead: nobody fires it.
        assert_eq!(
            fired_by([Alive, Dead, Dead]),
            Vec::<(String, Vec<String>)>::new()
        );
    }

    #[test]
    fn a_board_with_replicas_answers_itself() {
        let v = view(vec![
            board("b0", BoardState::Alive, &[("f.openfaas-fn", 1)]),
            board("b1", BoardState::Alive, &[("f.openfaas-fn", 1)]),
        ]);
        let r = routes("b0", vec![placed("f", &[("b0", 1), ("b1", 1)], "b0")], &v);
        assert!(matches!(r.find("openfaas-fn", "f"), Some(Route::Here)));
        assert!(r.find("openfaas-fn", "g").is_none());
        assert!(r.find("other", "f").is_none());
    }

    #[test]
    fn other_boards_with_ready_replicas_are_taken_in_turn_alive_ones_first() {
        let v = view(vec![
            board("b0", BoardState::Alive, &[]),
            board("b1", BoardState::Alive, &[("f.openfaas-fn", 2)]),
            board("b2", BoardState::Alive, &[("f.openfaas-fn", 1)]),
            board("b3", BoardState::Suspect, &[("f.openfaas-fn", 1)]),
            board("b4", BoardState::Alive, &[]),
        ]);
        let f = placed("f", &[("b1", 2), ("b2", 1), ("b3", 1), ("b4", 1)], "b1");
        let r = routes("b0", vec![f], &v);
        assert_eq!(
            picks(r.find("openfaas-fn", "f"), 4),
            ["b1", "b2", "b1", "b2"]
        );
        let Some(Route::Elsewhere(remote)) = r.find("openfaas-fn", "f") else {
            panic!()
        };
        assert_eq!(remote.timeout, Duration::from_secs(61));
        // A function the desired state does not show yet: a timeout generous enough.
        let r = routes("b0", vec![placed("late", &[("b1", 1)], "b1")], &v);
        let Some(Route::Elsewhere(remote)) = r.find("openfaas-fn", "late") else {
            panic!()
        };
        assert_eq!(remote.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            remote.pick(|_| false).map(|b| b.addr),
            Some("10.0.0.1:8443".parse().unwrap())
        );
    }

    #[test]
    fn a_board_that_failed_a_call_is_skipped_while_there_are_others() {
        let v = view(vec![
            board("b1", BoardState::Alive, &[("f.openfaas-fn", 1)]),
            board("b2", BoardState::Alive, &[("f.openfaas-fn", 1)]),
            board("b3", BoardState::Alive, &[]),
        ]);
        let f = placed("f", &[("b1", 1), ("b2", 1), ("b3", 1)], "b1");
        let r = routes("b0", vec![f], &v);
        let f = r.find("openfaas-fn", "f");
        assert_eq!(picks_avoiding(f, 3, &["b1"]), ["b2", "b2", "b2"]);
        // Both ready boards failed: the next that wakes it (b3 starts a replica).
        assert_eq!(picks_avoiding(f, 2, &["b1", "b2"]), ["b3", "b3"]);
        // All of them failed: one anyway (it may be back), rather than no answer.
        let last = picks_avoiding(f, 1, &["b1", "b2", "b3"]);
        assert!(["b1", "b2"].contains(&last[0].as_str()), "{last:?}");
    }

    #[test]
    fn a_suspect_board_is_used_only_when_no_alive_one_is_ready() {
        let v = view(vec![
            board("b1", BoardState::Suspect, &[("f.openfaas-fn", 1)]),
            board("b2", BoardState::Alive, &[]),
        ]);
        let r = routes("b0", vec![placed("f", &[("b1", 1), ("b2", 1)], "b1")], &v);
        assert_eq!(picks(r.find("openfaas-fn", "f"), 2), ["b1", "b1"]);
    }

    #[test]
    fn with_none_ready_the_first_placed_board_that_is_not_dead_starts_one() {
        let v = view(vec![
            board("b1", BoardState::Dead, &[]),
            board("b2", BoardState::Alive, &[]),
        ]);
        let r = routes("b0", vec![placed("f", &[("b1", 1), ("b2", 1)], "b1")], &v);
        assert_eq!(picks(r.find("openfaas-fn", "f"), 1), ["b2"]);
    }

    #[test]
    fn scaled_to_zero_it_wakes_on_its_home_board() {
        let v = view(vec![
            board("b0", BoardState::Alive, &[]),
            board("b1", BoardState::Alive, &[]),
        ]);
        let r = routes("b0", vec![placed("f", &[], "b1")], &v);
        assert_eq!(picks(r.find("openfaas-fn", "f"), 1), ["b1"]);
        let r = routes("b1", vec![placed("f", &[], "b1")], &v);
        assert!(matches!(r.find("openfaas-fn", "f"), Some(Route::Here)));
    }

    #[test]
    fn no_board_reachable_is_a_refusal_naming_them() {
        let v = view(vec![board("b1", BoardState::Dead, &[("f.openfaas-fn", 1)])]);
        let r = routes("b0", vec![placed("f", &[("b1", 1)], "b1")], &v);
        let Some(Route::Refused(message)) = r.find("openfaas-fn", "f") else {
            panic!()
        };
        assert_eq!(message, "function f runs on b1, which is not reachable now");
    }
}
