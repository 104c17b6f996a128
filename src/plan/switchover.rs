//! Planned move of an instance from the node holding its live copy to the spec's active
//! node: stop → every queued delivery of it done → final snapshot → old copy read-only →
//! incremental send → guid verified → old copy unmounted → new copy writable and mounted →
//! start. Once stopped (its service address gone) and its queue empty for the instance, the
//! old copy receives nothing more: the final snapshot holds everything it accepted. An
//! interruption anywhere leaves the old copy writable or ahead, so the next apply resumes the
//! switchover from it.

use super::{Action, ActionKind, Blocked, Plan, Planner, Target, dataset_name, graph};
use crate::model::{Dataset, RunState, Snapshot};
use crate::spec::{Instance, NodeName};

impl Planner<'_> {
    /// Returns false when blocked.
    pub(super) fn switchover(
        &mut self,
        active: &NodeName,
        old: &NodeName,
        name: &str,
        inst: &Instance,
        replica: &Dataset,
    ) -> bool {
        let spec = self.spec;
        let Some(o) = self.node(old) else {
            return false;
        };
        let Some(src_name) = dataset_name(spec, old, inst.dataset.as_str()) else {
            return false;
        };
        let Some(src) = o.dataset(&src_name) else {
            self.plan.block(Blocked::InstanceStateUnknown {
                instance: name.into(),
                node: old.to_string(),
                detail: "it runs the instance but has no dataset".into(),
            });
            return false;
        };
        // Other nodes out of sight must be fenced too (never two actives).
        for n in spec.spec.nodes.keys().filter(|n| *n != active && *n != old) {
            if !self.reachable(n) && !self.is_fenced(n) {
                self.plan.block(Blocked::OtherNodeNotFenced {
                    instance: name.into(),
                    node: n.to_string(),
                    why: self.why_unreachable(n),
                });
                return false;
            }
        }
        let Some(base) =
            crate::decide::replication::common_base(&src.snapshots, &replica.snapshots).cloned()
        else {
            self.plan.block(Blocked::Replication {
                instance: name.into(),
                node: active.to_string(),
                conflict: crate::decide::replication::Conflict::NoCommonSnapshot {
                    source_newest: src.snapshots.last().cloned().unwrap_or(Snapshot {
                        name: "-".into(),
                        guid: 0,
                        creation: self.now,
                        createtxg: None,
                        userrefs: 0,
                        used: 0,
                        written: None,
                    }),
                    target_snapshots: replica.snapshots.clone(),
                },
            });
            return false;
        };
        let from = Target::Node(old.to_string());
        let to_host = Target::Node(active.to_string());
        let mut last: Option<graph::Id> = None;
        let chain = |p: &mut Plan, last: &mut Option<graph::Id>, id: graph::Id| {
            if let Some(l) = *last {
                p.edge(l, id);
            }
            *last = Some(id);
        };
        // The replica must not have moved on by itself. Snapshots spoolkeeper took on it
        // while it held nothing new (ZFS says nothing was written since the common one) are
        // not a divergence: they go, with a rollback to the common snapshot.
        let replica_only: Vec<Snapshot> =
            crate::decide::replication::ahead(&src.snapshots, &replica.snapshots);
        if !replica_only.is_empty() {
            let prefix = spec.spec.snapshots.prefix.as_str();
            let never_served = replica_only.iter().all(|s| {
                crate::decide::retention::parse_owned(prefix, &s.name).is_some()
                    && s.written == Some(0)
                    && s.userrefs == 0
            }) && replica
                .other_properties
                .get("written")
                .is_some_and(|w| w == "0");
            if !never_served {
                self.plan.block(Blocked::Replication {
                    instance: name.into(),
                    node: active.to_string(),
                    conflict: crate::decide::replication::Conflict::Diverged {
                        base,
                        target_only: replica_only,
                    },
                });
                return false;
            }
            let id = self.plan.add(Action::new(
                to_host.clone(),
                ActionKind::Rollback {
                    dataset: replica.name.clone(),
                    snapshot: base.name.clone(),
                    destroy_later: true,
                },
                format!(
                    "{} on {active} hold nothing written after @{} (ZFS reports 0 bytes written): they go, so the replica takes the final snapshot",
                    replica_only
                        .iter()
                        .map(|s| format!("@{}", s.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                    base.name
                ),
            ));
            chain(&mut self.plan, &mut last, id);
        }
        let running = o
            .instances
            .get(name)
            .is_some_and(|s| s.state != RunState::Stopped);
        if running {
            let id = self.plan.add(Action::new(
                from.clone(),
                ActionKind::StopInstance {
                    instance: name.into(),
                },
                format!("switchover of {name} to {active}: the service pauses here, no message can arrive on {old} any more"),
            ));
            chain(&mut self.plan, &mut last, id);
        }
        if inst.mail.is_node() {
            let wait = self.plan.add(Action::new(
                from.clone(),
                ActionKind::WaitDelivered {
                    instance: name.into(),
                    domains: inst.domains.clone(),
                },
                format!("every message {old} accepted for {name} must be in its copy before the final snapshot"),
            ));
            chain(&mut self.plan, &mut last, wait);
        } else {
            // The instance's own Postfix stops with it: what it still queues either travels
            // with the final snapshot (a queue on the dataset, a jail's root) and is delivered
            // once on the new node, or stays on the old node, whose queued deliveries of the
            // instance are then dropped and replayed from the archive (the resync's hand-over).
            self.plan.note(format!(
                "{name}: no wait for {old}'s queue: the instance's own Postfix stops with it"
            ));
        }
        let final_name = self.fresh_snapshot_name(&src.snapshots);
        let snap = self.snapshot_action(
            old,
            inst,
            &src_name,
            &final_name,
            format!("final snapshot of {name} on {old}: everything it accepted is in it"),
        );
        chain(&mut self.plan, &mut last, snap);
        if src.readonly != Some(true) {
            let ro = self.plan.add(Action::new(
                from.clone(),
                ActionKind::SetReadonly {
                    dataset: src_name.clone(),
                    readonly: true,
                },
                format!(
                    "{old} becomes passive: its copy must be read-only (never two writable copies)"
                ),
            ));
            chain(&mut self.plan, &mut last, ro);
        }
        let action = self.replicate_action(
            name,
            old,
            &src_name,
            active,
            &replica.name,
            Some(&base.name),
            &final_name,
            (None, false),
            format!("bring {active}'s replica of {name} up to the final snapshot"),
        );
        let repl = self.plan.add(action);
        chain(&mut self.plan, &mut last, repl);
        let verify = self.plan.add(Action::new(
            Target::Controller,
            ActionKind::VerifyGuid {
                source: old.to_string(),
                source_dataset: src_name.clone(),
                target: active.to_string(),
                target_dataset: replica.name.clone(),
                snapshot: final_name.clone(),
            },
            "the new active must hold exactly what the old one had (zero loss by construction)"
                .to_string(),
        ));
        chain(&mut self.plan, &mut last, verify);
        if src.mounted == Some(true) {
            let id = self.plan.add(Action::new(
                from.clone(),
                ActionKind::Unmount {
                    dataset: src_name.clone(),
                },
                format!("{old} becomes passive: its copy stays unmounted"),
            ));
            chain(&mut self.plan, &mut last, id);
        }
        // The records travel with the service: nodes still to be resynced, a replay still
        // owed, are the new copy's business once it serves.
        // The new copy's record also carries the time of this promotion: a record on another
        // copy from an older one is then known to be stale.
        let mut moved = super::Marks::of(Some(src));
        moved.nodes.remove(active.as_str());
        let mut owed = super::marks::owed_replay(Some(src));
        let src_owed = owed.is_some();
        // A move from a replica while another copy is out of sight (fenced: checked above) is
        // a failover caught up through that replica: the copy out of sight may hold writes
        // neither received. It is recorded to be resynced, like any failover's lost node,
        // and the mail it accepted after the replica's newest snapshot is replayed.
        let lost: Vec<String> = spec
            .spec
            .nodes
            .keys()
            .filter(|n| *n != active && *n != old && !self.reachable(n))
            .map(|n| n.to_string())
            .collect();
        for n in &lost {
            moved.nodes.insert(n.clone(), super::ResyncPhase::Pending);
        }
        if !lost.is_empty() && owed.is_none() && spec.spec.archive.is_some() {
            owed = Some(
                src.snapshots
                    .iter()
                    .max_by(|a, b| crate::decide::retention::age_order(a, b))
                    .map(|s| s.name.clone())
                    .unwrap_or_default(),
            );
        }
        // Deliveries of the instance still queued on the node taking over were accepted when
        // it served an earlier incarnation of this copy (a replay into it, mail it took before
        // it lost a failover): the copy it receives may already hold them (replayed into the
        // other copy since). They are deleted before its copy is writable, and the replay
        // owed then covers every held copy, deduplicated against the mailbox, as in a
        // failover (`failover_steps`).
        let queued: Vec<crate::model::QueueId> = self
            .postfix_for(active, name)
            .filter(|_| spec.spec.archive.is_some())
            .map(|p| Self::local_deliveries(&p.queue, inst))
            .unwrap_or_default();
        if !queued.is_empty() {
            owed = Some(String::new());
        }
        let mut records = Vec::new();
        moved.epoch = moved
            .epoch
            .max(super::Marks::of(Some(replica)).epoch)
            .max(self.now.as_second());
        records.push((super::RESYNC_PROPERTY, moved.encode()));
        if let Some(a) = &owed {
            records.push((super::REPLAY_PROPERTY, Some(super::marks::encode_replay(a))));
        }
        for (property, value) in records {
            let id = self.plan.add(Action::new(
                to_host.clone(),
                ActionKind::SetUserProperty {
                    dataset: replica.name.clone(),
                    property: property.into(),
                    value,
                },
                format!("{name}'s record {property} moves from {old} with the service"),
            ));
            chain(&mut self.plan, &mut last, id);
        }
        if !queued.is_empty() {
            let drop = self.plan.add(Action::new(
                to_host.clone(),
                ActionKind::DropQueued {
                    instance: name.into(),
                    queue_ids: queued.clone(),
                },
                format!(
                    "{} delivery(ies) of {name} queued on {active} from when it served before: replayed from the archive instead, never delivered twice",
                    queued.len()
                ),
            ).in_mail(self.own_mail(name)));
            chain(&mut self.plan, &mut last, drop);
        }
        // Any other copy left writable (a node that lost a failover) goes read-only first.
        let others: Vec<(NodeName, Dataset)> = spec
            .spec
            .nodes
            .keys()
            .filter(|n| *n != active && *n != old && self.reachable(n))
            .filter_map(|n| self.copy(n, inst).map(|d| (n.clone(), d.clone())))
            .filter(|(_, d)| d.readonly != Some(true) || d.mounted == Some(true))
            .collect();
        let mut demoted = Vec::new();
        for (n, d) in others {
            let stop = self.plan.id_of(&format!("{n}:stop_instance:{name}"));
            demoted.extend(self.passive_copy(&Target::Node(n.to_string()), &n, &d, stop));
        }
        let rw = self.plan.add(Action::new(
            to_host.clone(),
            ActionKind::SetReadonly {
                dataset: replica.name.clone(),
                readonly: false,
            },
            format!("{active} is the active node: its copy of {name} must be writable"),
        ));
        chain(&mut self.plan, &mut last, rw);
        for d in demoted {
            self.plan.edge(d, rw);
        }
        if replica.mounted != Some(true) {
            let id = self.plan.add(Action::new(
                to_host.clone(),
                ActionKind::Mount {
                    dataset: replica.name.clone(),
                },
                format!("{name} serves mail from {}", replica.name),
            ));
            chain(&mut self.plan, &mut last, id);
        }
        let start = self.plan.add(Action::new(
            to_host,
            ActionKind::StartInstance {
                instance: name.into(),
            },
            format!("{active} is the active node of {name}: the service resumes here"),
        ));
        chain(&mut self.plan, &mut last, start);
        // a replay this move itself owes (a copy out of sight, deliveries dropped) runs now,
        // once the service is back; one the old copy owed already is the next run's
        if let Some(anchor) = owed.clone().filter(|_| !src_owed) {
            self.replay(active, name, &replica.name, anchor, &[start]);
        }
        for (property, had) in [
            (
                super::RESYNC_PROPERTY,
                !super::Marks::of(Some(src)).nodes.is_empty(),
            ),
            (super::REPLAY_PROPERTY, src_owed),
        ] {
            if had {
                let id = self.plan.add(Action::new(
                    from.clone(),
                    ActionKind::SetUserProperty {
                        dataset: src_name.clone(),
                        property: property.into(),
                        value: None,
                    },
                    format!(
                        "{old} no longer serves {name}: its {property} record moved to {active}"
                    ),
                ));
                self.plan.edge(start, id);
            }
        }
        true
    }
}
