//! Which node serves an instance this run.

use super::{Action, ActionKind, Marks, Planner, RESYNC_PROPERTY, Target};
use crate::spec::{Instance, NodeName};

impl Planner<'_> {
    /// The node that serves an instance this run: the spec's active node, unless that node
    /// came back from a failover and must first be resynced from the node that took over
    /// (named in that node's `spoolkeeper:resync`). Then the other node keeps serving this
    /// run, the resync runs, and the next apply moves the service (a switchover).
    ///
    /// A record is believed only against a copy promoted earlier: after a failover and a
    /// failover back, both copies name each other and the newer promotion is the truth; the
    /// stale entry is cleared.
    pub(super) fn serving_node(
        &mut self,
        active: &NodeName,
        name: &str,
        inst: &Instance,
    ) -> NodeName {
        let mine = Marks::of(self.copy(active, inst));
        let others: Vec<NodeName> = self
            .spec
            .spec
            .nodes
            .keys()
            .filter(|n| *n != active && self.reachable(n))
            .cloned()
            .collect();
        for other in others {
            let Some(d) = self.copy(&other, inst) else {
                continue;
            };
            let theirs = Marks::of(Some(d));
            if theirs.phase(active.as_str()).is_none() {
                continue;
            }
            if theirs.holds_against(&mine, false) {
                self.plan.note(format!(
                    "{active} must be resynced from {other} before it serves {name}: {other} keeps serving this run; apply again to move {name} to {active}"
                ));
                return other;
            }
            // {other}'s record predates {active}'s own promotion: stale.
            let mut next = theirs.clone();
            next.nodes.remove(active.as_str());
            self.plan.add(Action::new(
                Target::Node(other.to_string()),
                ActionKind::SetUserProperty {
                    dataset: d.name.clone(),
                    property: RESYNC_PROPERTY.into(),
                    value: next.encode(),
                },
                format!(
                    "{other}'s record that {active} must be resynced from it predates {active}'s own promotion: {active} holds the newer copy"
                ),
            ));
        }
        active.clone()
    }
}
