//! The plan as a DAG of actions, with a deterministic execution order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use super::{Action, Blocked};

/// A handle on an action inside a plan.
pub type Id = NodeIndex;

/// A cycle among actions: a planner bug, reported with the actions on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the plan has a dependency cycle (a planner bug, please report it): {}", .0.join(" -> "))]
pub struct CycleError(pub Vec<String>);

/// An ordered action graph plus the safety rules that blocked parts of it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub cluster: String,
    /// Fingerprint of the observation this plan was made from.
    pub fingerprint: String,
    pub graph: DiGraph<Action, ()>,
    pub blocked: Vec<Blocked>,
    /// Things the operator should know that do not block (an unreachable passive, …).
    pub notes: Vec<String>,
    by_id: HashMap<String, Id>,
}

impl Plan {
    pub fn new(cluster: &str, fingerprint: String) -> Self {
        Plan {
            cluster: cluster.to_owned(),
            fingerprint,
            graph: DiGraph::new(),
            blocked: Vec::new(),
            notes: Vec::new(),
            by_id: HashMap::new(),
        }
    }

    /// Add an action; adding the same id twice returns the first.
    pub fn add(&mut self, a: Action) -> Id {
        if let Some(id) = self.by_id.get(&a.id) {
            return *id;
        }
        let key = a.id.clone();
        let id = self.graph.add_node(a);
        self.by_id.insert(key, id);
        id
    }

    /// `before` must complete before `after` starts.
    pub fn edge(&mut self, before: Id, after: Id) {
        if before != after && self.graph.find_edge(before, after).is_none() {
            self.graph.add_edge(before, after, ());
        }
    }

    pub fn block(&mut self, b: Blocked) {
        if !self.blocked.contains(&b) {
            self.blocked.push(b);
        }
    }

    pub fn note(&mut self, n: String) {
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }

    pub fn id_of(&self, key: &str) -> Option<Id> {
        self.by_id.get(key).copied()
    }

    /// No action and nothing blocked: the cluster is converged.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0 && self.blocked.is_empty()
    }

    pub fn is_blocked(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// The ids an action waits for.
    pub fn depends_on(&self, id: Id) -> Vec<Id> {
        let mut v: Vec<Id> = self
            .graph
            .edges_directed(id, Direction::Incoming)
            .map(|e| e.source())
            .collect();
        v.sort();
        v
    }

    /// The execution order: a topological order that is stable (ties go to the action added
    /// first), so the same plan always prints and runs in the same order.
    pub fn order(&self) -> Result<Vec<Id>, CycleError> {
        let mut indegree: BTreeMap<Id, usize> = self
            .graph
            .node_indices()
            .map(|n| (n, self.graph.edges_directed(n, Direction::Incoming).count()))
            .collect();
        let mut ready: BinaryHeap<Reverse<Id>> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| Reverse(*n))
            .collect();
        let mut out = Vec::with_capacity(self.graph.node_count());
        while let Some(Reverse(n)) = ready.pop() {
            out.push(n);
            for m in self.graph.neighbors_directed(n, Direction::Outgoing) {
                if let Some(d) = indegree.get_mut(&m) {
                    *d -= 1;
                    if *d == 0 {
                        ready.push(Reverse(m));
                    }
                }
            }
        }
        if out.len() == self.graph.node_count() {
            return Ok(out);
        }
        let cycle = tarjan_scc(&self.graph)
            .into_iter()
            .find(|c| c.len() > 1)
            .unwrap_or_default();
        Err(CycleError(
            cycle.iter().map(|n| self.graph[*n].id.clone()).collect(),
        ))
    }

    /// The actions in execution order (empty when the graph has a cycle; `order` says why).
    pub fn actions(&self) -> Vec<&Action> {
        self.order()
            .unwrap_or_default()
            .into_iter()
            .map(|n| &self.graph[n])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ActionKind, Target};
    use super::*;

    fn act(n: &str) -> Action {
        Action::new(
            Target::Node("n".into()),
            ActionKind::StartInstance { instance: n.into() },
            "test",
        )
    }

    #[test]
    fn order_is_topological_and_stable() {
        let mut p = Plan::new("c", "f".into());
        let a = p.add(act("a"));
        let b = p.add(act("b"));
        let c = p.add(act("c"));
        p.edge(c, a);
        let ids: Vec<_> = p.order().unwrap();
        assert_eq!(ids, vec![b, c, a]);
    }

    #[test]
    fn a_cycle_is_reported_with_its_actions() {
        let mut p = Plan::new("c", "f".into());
        let a = p.add(act("a"));
        let b = p.add(act("b"));
        let _c = p.add(act("c"));
        p.edge(a, b);
        p.edge(b, a);
        let e = p.order().unwrap_err();
        assert_eq!(e.0.len(), 2);
        assert!(e.to_string().contains("n:start_instance:a"), "{e}");
        assert!(e.to_string().contains("n:start_instance:b"), "{e}");
    }
}
