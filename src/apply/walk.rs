//! The walk of a plan's DAG as a pure state machine (Terraform's `dag.Walker`): it knows
//! vertices, dependencies, limits and outcomes, nothing about what an action does.
//!
//! An action is *ready* when every action it depends on is done; when one fails, everything
//! downstream is skipped as "upstream failed" and independent branches go on. Parallelism is
//! bounded globally and per host. The async executor ([`super::execute`]) drives it greedily
//! (start every ready action the limits allow, in plan order); the simulator drives it with a
//! seed choosing which ready action starts and which running action ends, so every
//! interleaving the DAG allows is one a seed can pick.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::Direction;

use crate::plan::{CycleError, Plan, Target};

use super::{Limits, Outcome, Report};

/// A handle on an action of the plan being walked.
pub type Id = petgraph::graph::NodeIndex;

/// The walk of one plan.
pub struct Walk<'p> {
    plan: &'p Plan,
    order: Vec<Id>,
    limits: Limits,
    outcome: HashMap<Id, Outcome>,
    running: BTreeSet<Id>,
    per_host: BTreeMap<Target, usize>,
}

impl<'p> Walk<'p> {
    /// A walk over `plan`; a plan with a cycle cannot be walked.
    pub fn new(plan: &'p Plan, limits: Limits) -> Result<Walk<'p>, CycleError> {
        Ok(Walk {
            order: plan.order()?,
            plan,
            limits,
            outcome: HashMap::new(),
            running: BTreeSet::new(),
            per_host: BTreeMap::new(),
        })
    }

    /// The plan walked.
    pub fn plan(&self) -> &'p Plan {
        self.plan
    }

    fn deps(&self, id: Id) -> impl Iterator<Item = Id> + '_ {
        self.plan.graph.neighbors_directed(id, Direction::Incoming)
    }

    fn pending(&self, id: Id) -> bool {
        !self.outcome.contains_key(&id) && !self.running.contains(&id)
    }

    /// Settle every action whose dependencies are settled and one of them did not succeed:
    /// it is skipped, naming the root cause. Returns them in plan order (the caller journals
    /// them). Repeats until nothing more settles, so a chain is skipped in one call.
    pub fn skip_upstream_failed(&mut self) -> Vec<(Id, String)> {
        let mut out = Vec::new();
        loop {
            let mut changed = false;
            for &id in &self.order {
                if !self.pending(id) {
                    continue;
                }
                let deps: Vec<Id> = self.deps(id).collect();
                if deps.iter().any(|d| !self.outcome.contains_key(d)) {
                    continue;
                }
                let up = deps.iter().find_map(|d| match &self.outcome[d] {
                    Outcome::Done => None,
                    Outcome::Failed(_) => Some(self.plan.graph[*d].id.clone()),
                    Outcome::Skipped { upstream } => Some(upstream.clone()),
                });
                if let Some(up) = up {
                    self.outcome.insert(
                        id,
                        Outcome::Skipped {
                            upstream: up.clone(),
                        },
                    );
                    out.push((id, up));
                    changed = true;
                }
            }
            if !changed {
                return out;
            }
        }
    }

    /// The actions not started whose dependencies are all done, in plan order (limits not
    /// considered: see [`Walk::has_capacity`]).
    pub fn ready(&self) -> Vec<Id> {
        self.order
            .iter()
            .copied()
            .filter(|id| self.pending(*id))
            .filter(|id| {
                self.deps(*id)
                    .all(|d| matches!(self.outcome.get(&d), Some(Outcome::Done)))
            })
            .collect()
    }

    /// Whether starting `id` now stays within the global and per-host limits.
    pub fn has_capacity(&self, id: Id) -> bool {
        let host = &self.plan.graph[id].host;
        let busy = self.per_host.get(host).copied().unwrap_or(0);
        self.running.len() < self.limits.global.max(1) && busy < self.limits.per_host.max(1)
    }

    /// The ready actions that may start now, in plan order, as the greedy executor would
    /// start them (each one taking its slot before the next is considered).
    pub fn startable(&self) -> Vec<Id> {
        let mut running = self.running.len();
        let mut per_host = self.per_host.clone();
        let mut out = Vec::new();
        for id in self.ready() {
            let host = &self.plan.graph[id].host;
            let busy = per_host.get(host).copied().unwrap_or(0);
            if running < self.limits.global.max(1) && busy < self.limits.per_host.max(1) {
                running += 1;
                *per_host.entry(host.clone()).or_default() += 1;
                out.push(id);
            }
        }
        out
    }

    /// Mark `id` as running (it takes a slot).
    pub fn start(&mut self, id: Id) {
        if self.running.insert(id) {
            *self
                .per_host
                .entry(self.plan.graph[id].host.clone())
                .or_default() += 1;
        }
    }

    /// Settle `id` (running or not yet started) with its outcome; frees its slot.
    pub fn finish(&mut self, id: Id, outcome: Outcome) {
        if self.running.remove(&id)
            && let Some(n) = self.per_host.get_mut(&self.plan.graph[id].host)
        {
            *n = n.saturating_sub(1);
        }
        self.outcome.insert(id, outcome);
    }

    /// The actions running now.
    pub fn running(&self) -> Vec<Id> {
        self.running.iter().copied().collect()
    }

    /// Nothing runs and nothing more can start or be skipped.
    pub fn is_finished(&self) -> bool {
        self.running.is_empty() && self.ready().is_empty() && {
            // everything left is blocked behind something unsettled: only a bug leaves that
            self.order.iter().all(|id| !self.pending(*id))
        }
    }

    /// The outcome of each action, in plan order (never settled: "not run").
    pub fn report(&self) -> Report {
        Report {
            outcomes: self
                .order
                .iter()
                .map(|id| {
                    (
                        self.plan.graph[*id].id.clone(),
                        self.outcome
                            .get(id)
                            .cloned()
                            .unwrap_or(Outcome::Failed("not run".into())),
                    )
                })
                .collect(),
            timings: Vec::new(),
        }
    }
}

/// Walk `plan` one action at a time in plan order, calling `run` for each action that is
/// ready: the walk's semantics (skips, outcomes) without concurrency. For tests and for
/// callers that want a sequential apply.
pub fn walk_sequential(
    plan: &Plan,
    mut run: impl FnMut(&crate::plan::Action) -> Result<(), String>,
) -> Result<Report, CycleError> {
    let mut w = Walk::new(
        plan,
        Limits {
            global: 1,
            per_host: 1,
        },
    )?;
    loop {
        w.skip_upstream_failed();
        let Some(id) = w.startable().first().copied() else {
            break;
        };
        w.start(id);
        let outcome = match run(&plan.graph[id]) {
            Ok(()) => Outcome::Done,
            Err(e) => Outcome::Failed(super::ActionError::Other(e)),
        };
        w.finish(id, outcome);
    }
    Ok(w.report())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::ActionError;
    use crate::plan::{Action, ActionKind};

    fn act(host: &str, n: &str) -> Action {
        Action::new(
            Target::Node(host.into()),
            ActionKind::StartInstance { instance: n.into() },
            "test",
        )
    }

    /// a -> b -> c, a -> d, e (independent).
    fn diamond() -> (Plan, [Id; 5]) {
        let mut p = Plan::new("c", "f".into());
        let a = p.add(act("n1", "a"));
        let b = p.add(act("n1", "b"));
        let c = p.add(act("n2", "c"));
        let d = p.add(act("n2", "d"));
        let e = p.add(act("n3", "e"));
        p.edge(a, b);
        p.edge(b, c);
        p.edge(a, d);
        (p, [a, b, c, d, e])
    }

    #[test]
    fn a_failure_skips_everything_downstream_and_independent_branches_go_on() {
        let (p, _) = diamond();
        let mut ran = Vec::new();
        let r = walk_sequential(&p, |a| {
            ran.push(a.id.clone());
            if a.id.ends_with(":b") {
                Err("boom".into())
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(
            ran,
            [
                "n1:start_instance:a",
                "n1:start_instance:b",
                "n2:start_instance:d",
                "n3:start_instance:e"
            ]
        );
        let by_id: BTreeMap<&str, &Outcome> =
            r.outcomes.iter().map(|(i, o)| (i.as_str(), o)).collect();
        assert_eq!(
            by_id["n1:start_instance:b"],
            &Outcome::Failed("boom".into())
        );
        assert_eq!(
            by_id["n2:start_instance:c"],
            &Outcome::Skipped {
                upstream: "n1:start_instance:b".into()
            }
        );
        assert_eq!(by_id["n2:start_instance:d"], &Outcome::Done);
        assert_eq!(
            r.root_causes(),
            vec![("n1:start_instance:b", &ActionError::from("boom"))]
        );
        assert!(!r.ok());
    }

    #[test]
    fn the_root_cause_is_named_through_a_chain_of_skips() {
        let (p, _) = diamond();
        let r = walk_sequential(&p, |a| {
            if a.id.ends_with(":a") {
                Err("first".into())
            } else {
                Ok(())
            }
        })
        .unwrap();
        for (id, o) in &r.outcomes {
            match id.as_str() {
                "n1:start_instance:a" => assert_eq!(o, &Outcome::Failed("first".into())),
                "n3:start_instance:e" => assert_eq!(o, &Outcome::Done),
                _ => assert_eq!(
                    o,
                    &Outcome::Skipped {
                        upstream: "n1:start_instance:a".into()
                    },
                    "{id}"
                ),
            }
        }
    }

    #[test]
    fn limits_bound_what_starts_together() {
        let mut p = Plan::new("c", "f".into());
        for i in 0..6 {
            p.add(act(if i < 4 { "n1" } else { "n2" }, &format!("i{i}")));
        }
        let mut w = Walk::new(
            &p,
            Limits {
                global: 3,
                per_host: 2,
            },
        )
        .unwrap();
        let first = w.startable();
        // two on n1 (per-host limit), one on n2 (global limit of 3)
        assert_eq!(first.len(), 3);
        let hosts: Vec<String> = first.iter().map(|i| p.graph[*i].host.to_string()).collect();
        assert_eq!(hosts, ["n1", "n1", "n2"]);
        for id in &first {
            w.start(*id);
        }
        assert!(w.startable().is_empty());
        w.finish(first[0], Outcome::Done);
        let next = w.startable();
        assert_eq!(next.len(), 1);
        assert_eq!(p.graph[next[0]].host.to_string(), "n1");
        // and every action eventually runs
        let mut done = 1;
        w.start(next[0]);
        while !w.is_finished() {
            for id in w.running() {
                w.finish(id, Outcome::Done);
                done += 1;
            }
            for id in w.startable() {
                w.start(id);
            }
        }
        assert_eq!(done, 6);
        assert!(w.report().ok());
    }

    #[test]
    fn nothing_starts_before_its_dependencies_are_done() {
        let (p, [a, b, c, d, e]) = diamond();
        let mut w = Walk::new(
            &p,
            Limits {
                global: 10,
                per_host: 10,
            },
        )
        .unwrap();
        assert_eq!(w.startable(), vec![a, e]);
        w.start(a);
        w.start(e);
        assert!(w.startable().is_empty(), "b and d wait for a");
        w.finish(a, Outcome::Done);
        assert_eq!(w.startable(), vec![b, d]);
        w.start(b);
        w.finish(b, Outcome::Failed("x".into()));
        assert_eq!(w.skip_upstream_failed(), vec![(c, p.graph[b].id.clone())]);
        assert!(!w.is_finished(), "d and e still run");
        w.start(d);
        w.finish(d, Outcome::Done);
        w.finish(e, Outcome::Done);
        assert!(w.is_finished());
    }
}
