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

    /// Order every two actions that touch the same object, one of them changing it: the one
    /// planned first goes first, unless one already depends on the other. Run once, after
    /// the planner's sections added their actions and explicit edges.
    pub fn order_by_objects(&mut self, spec: &crate::spec::Spec) {
        use super::action::{Access, Object};
        let mut by_object: BTreeMap<Object, Vec<(Id, Access)>> = BTreeMap::new();
        for id in self.graph.node_indices() {
            for (o, a) in self.graph[id].accesses(spec) {
                by_object.entry(o).or_default().push((id, a));
            }
        }
        for touches in by_object.values() {
            for (i, (x, ax)) in touches.iter().enumerate() {
                for (y, ay) in &touches[i + 1..] {
                    if *ax == Access::Read && *ay == Access::Read {
                        continue;
                    }
                    let (first, then) = if x < y { (*x, *y) } else { (*y, *x) };
                    if first == then
                        || petgraph::algo::has_path_connecting(&self.graph, first, then, None)
                        || petgraph::algo::has_path_connecting(&self.graph, then, first, None)
                    {
                        continue;
                    }
                    self.edge(first, then);
                }
            }
        }
    }

    /// The plan's invariants, as the sentences that describe each breach (none for a sound
    /// plan): no cycle; no two unordered actions on one object where one changes it; no copy
    /// made writable or instance started before every stop, read-only switch and fence of the
    /// same instance elsewhere in the plan.
    pub fn check(&self, spec: &crate::spec::Spec) -> Vec<String> {
        use super::action::{Access, Object};
        let mut out = Vec::new();
        if let Err(e) = self.order() {
            out.push(e.to_string());
            return out;
        }
        let reach = |a: Id, b: Id| petgraph::algo::has_path_connecting(&self.graph, a, b, None);
        let mut by_object: BTreeMap<Object, Vec<(Id, Access)>> = BTreeMap::new();
        for id in self.graph.node_indices() {
            for (o, a) in self.graph[id].accesses(spec) {
                by_object.entry(o).or_default().push((id, a));
            }
        }
        for (object, touches) in &by_object {
            for (i, (x, ax)) in touches.iter().enumerate() {
                for (y, ay) in &touches[i + 1..] {
                    if x == y || (*ax == Access::Read && *ay == Access::Read) {
                        continue;
                    }
                    if !reach(*x, *y) && !reach(*y, *x) {
                        out.push(format!(
                            "{} and {} both touch {object} and are not ordered",
                            self.graph[*x].id, self.graph[*y].id
                        ));
                    }
                }
            }
        }
        // Promotions after demotions, per instance.
        use super::ActionKind as K;
        let instance_of_dataset = |node: &str, ds: &str| {
            let pool = spec
                .spec
                .nodes
                .iter()
                .find(|(n, _)| n.as_str() == node)
                .map(|(_, n)| n.pool.to_string())?;
            let rel = ds.strip_prefix(&pool)?.strip_prefix('/')?;
            spec.spec
                .instances
                .iter()
                .find(|(_, i)| i.dataset.as_str() == rel)
                .map(|(n, _)| n.to_string())
        };
        let role = |id: Id| -> Option<(bool, String, String)> {
            // (promotion?, node, instance)
            let a = &self.graph[id];
            let node = match &a.host {
                super::Target::Node(n) => n.clone(),
                _ => String::new(),
            };
            match &a.kind {
                K::SetReadonly { dataset, readonly } => Some((
                    !readonly,
                    node.clone(),
                    instance_of_dataset(&node, dataset)?,
                )),
                K::Mount { dataset } => {
                    Some((true, node.clone(), instance_of_dataset(&node, dataset)?))
                }
                K::Unmount { dataset } => {
                    Some((false, node.clone(), instance_of_dataset(&node, dataset)?))
                }
                K::StartInstance { instance } => Some((true, node, instance.clone())),
                K::StopInstance { instance } => Some((false, node, instance.clone())),
                _ => None,
            }
        };
        let roles: Vec<(Id, (bool, String, String))> = self
            .graph
            .node_indices()
            .filter_map(|id| role(id).map(|r| (id, r)))
            .collect();
        for (p, (promo, pnode, pinst)) in &roles {
            if !promo {
                continue;
            }
            for (d, (dpromo, dnode, dinst)) in &roles {
                if *dpromo || dnode == pnode || dinst != pinst {
                    continue;
                }
                // A fresh replica made read-only after its full receive (`receive -u` leaves
                // it unmounted): never a writable copy.
                let after_receive = self
                    .graph
                    .neighbors_directed(*d, Direction::Incoming)
                    .any(|u| matches!(self.graph[u].kind, K::Replicate { .. }));
                if after_receive {
                    continue;
                }
                if !reach(*d, *p) {
                    out.push(format!(
                        "{} may run before {}: {pinst} could be writable on two nodes",
                        self.graph[*p].id, self.graph[*d].id
                    ));
                }
            }
            for f in self.graph.node_indices() {
                if matches!(self.graph[f].kind, K::Fence { .. }) && !reach(f, *p) {
                    out.push(format!(
                        "{} may run before {}: {pinst} could serve while a node is not fenced yet",
                        self.graph[*p].id, self.graph[f].id
                    ));
                }
            }
        }
        out
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
