//! Snapshots on the serving copy, replication to every other node, the holds on the
//! replication base, and retention on both sides.

use super::{
    Action, ActionKind, Blocked, Context, Marks, Planner, ReplicaBase, ResyncPhase, Target,
    dataset_name, graph,
};
use crate::model::Snapshot;
use crate::spec::{Instance, NodeName};

impl Planner<'_> {
    pub(super) fn protect(&mut self, active: &NodeName, name: &str, inst: &Instance) {
        let spec = self.spec;
        if self.moving.contains(name) {
            self.plan.note(format!(
                "{name} moves this run: replication from {active} resumes on the next run"
            ));
            return;
        }
        let snaps_spec = &spec.spec.snapshots;
        let prefix = snaps_spec.prefix.as_str();
        let Some(ds) = dataset_name(spec, active, inst.dataset.as_str()) else {
            return;
        };
        let Some(a_obs) = self.node(active) else {
            return;
        };
        let created = self.plan.id_of(&format!("{active}:create_dataset:{ds}"));
        let observed = a_obs.dataset(&ds);
        if observed.is_none() && created.is_none() {
            return; // blocked or not observable: nothing to protect yet
        }
        // A read-only copy is a replica: snapshotting it would make it diverge from the copy
        // that serves. It is snapshotted once promoted, after the instance started on it.
        let promoted = self
            .plan
            .id_of(&format!("{active}:set_readonly:{ds}"))
            .filter(|id| {
                matches!(
                    self.plan.graph[*id].kind,
                    ActionKind::SetReadonly {
                        readonly: false,
                        ..
                    }
                )
            });
        if observed.is_some_and(|d| d.readonly != Some(false)) && promoted.is_none() {
            self.plan.note(format!(
                "{ds} on {active} is read-only and not promoted this run: no snapshot, replication or pruning of it"
            ));
            return;
        }
        let started = self.plan.id_of(&format!("{active}:start_instance:{name}"));
        let mut source: Vec<Snapshot> = observed.map(|d| d.snapshots.clone()).unwrap_or_default();

        // 1. A snapshot when one is due.
        let mut snap_id = None;
        if crate::decide::retention::snapshot_due(
            prefix,
            snaps_spec.every.as_std(),
            &source,
            self.now,
        ) {
            let sname = self.fresh_snapshot_name(&source);
            let reason = match source
                .iter()
                .rev()
                .find(|s| crate::decide::retention::parse_owned(prefix, &s.name).is_some())
            {
                Some(last) => format!(
                    "the last snapshot ({}) is older than snapshots.every {}",
                    last.name, snaps_spec.every
                ),
                None => format!("{ds} has no {prefix}_ snapshot yet"),
            };
            let id = self.snapshot_action(active, inst, &ds, &sname, reason);
            if let Some(c) = created {
                self.plan.edge(c, id);
            }
            if promoted.is_some()
                && let Some(s) = started
            {
                self.plan.edge(s, id);
            }
            snap_id = Some(id);
            let txg = source
                .iter()
                .filter_map(|s| s.createtxg)
                .max()
                .map(|t| t + 1);
            source.push(Snapshot {
                name: sname,
                guid: 0, // not known before it exists; matches nothing on a target
                creation: self.now,
                createtxg: txg,
                userrefs: 0,
                used: 0,
                written: None,
            });
        }
        let after_snapshot: Vec<graph::Id> = snap_id.into_iter().chain(created).collect();

        // 2. Replication to every other reachable node.
        let mut protected_on_active: Vec<crate::decide::retention::SnapshotRef> =
            self.scratch_origins(active, &ds);
        let mut prune_active = true;
        let mut before_prune_active: Vec<graph::Id> = after_snapshot.clone();
        let mut replicas: Vec<ReplicaBase> = Vec::new();
        let mut active_bases: Vec<(Snapshot, Vec<graph::Id>)> = Vec::new();
        let mut all_bases_known = true;
        // The record as it will be after this run's failover steps, if they rewrite it.
        let planned = self
            .plan
            .id_of(&format!(
                "{active}:set_user_property:{ds}:{}",
                super::RESYNC_PROPERTY
            ))
            .and_then(|id| match &self.plan.graph[id].kind {
                ActionKind::SetUserProperty { value: Some(v), .. } => Some(Marks::decode(v)),
                _ => None,
            });
        let marks = planned.unwrap_or_else(|| Marks::of(observed));
        let mut update = super::resync::MarksUpdate::new(&marks);
        for other in spec.spec.nodes.keys().filter(|n| *n != active) {
            if !self.reachable(other) {
                // Its base is unknown: pruning here could destroy it.
                prune_active = false;
                all_bases_known = false;
                replicas.push(ReplicaBase {
                    base: None,
                    after: None,
                });
                self.plan.note(format!(
                    "{other} is unreachable: no replication of {name} to it and no pruning of {ds} this run"
                ));
                continue;
            }
            let Some(t_obs) = self.node(other) else {
                continue;
            };
            let Some(tds) = dataset_name(spec, other, inst.dataset.as_str()) else {
                continue;
            };
            let t_ds = t_obs.dataset(&tds);
            let target_snaps = t_ds.map(|d| d.snapshots.as_slice());
            // A node that came back after a failover: preserve, roll back, resync; unless
            // the record is older than that node's own promotion (see `serving_node`).
            let valid = marks.holds_against(&Marks::of(t_ds), *active == spec.spec.active);
            match (marks.phase(other.as_str()).filter(|_| valid), t_ds) {
                (Some(ResyncPhase::Pending), Some(t)) => {
                    // its mail is replayed once it is resynced: no purge meanwhile
                    self.replay_owed.insert(name.to_owned());
                    if let Some(id) = self.resync(
                        active,
                        other,
                        name,
                        &ds,
                        &source,
                        t,
                        &after_snapshot,
                        &mut update,
                    ) {
                        before_prune_active.push(id);
                    }
                    prune_active = false;
                    all_bases_known = false;
                    replicas.push(ReplicaBase {
                        base: None,
                        after: None,
                    });
                    continue;
                }
                (Some(ResyncPhase::Synced), Some(_)) => {
                    self.resync_drain(active, other, name, inst, &mut update);
                }
                _ => {
                    // deliveries of the instance left in a passive node's queue
                    self.hand_over_queue(active, other, name, inst, false);
                }
            }
            let written = t_ds
                .and_then(|d| d.other_properties.get("written"))
                .and_then(|w| w.parse::<u64>().ok());
            let step = crate::decide::replication::replication_step(&source, target_snaps, written);
            let observed_base = target_snaps
                .and_then(|t| crate::decide::replication::common_base(&source, t))
                .cloned();
            if let Some(b) = &observed_base {
                protected_on_active.push(crate::decide::retention::SnapshotRef::Guid(b.guid));
            }
            let (base, to) = match step {
                crate::decide::replication::ReplicationStep::Conflict(
                    crate::decide::replication::Conflict::SourceEmpty,
                ) => {
                    replicas.push(ReplicaBase {
                        base: None,
                        after: None,
                    });
                    continue;
                }
                crate::decide::replication::ReplicationStep::Conflict(conflict) => {
                    prune_active = false;
                    all_bases_known = false;
                    self.plan.block(Blocked::Replication {
                        instance: name.into(),
                        node: other.to_string(),
                        conflict,
                    });
                    replicas.push(ReplicaBase {
                        base: None,
                        after: None,
                    });
                    continue;
                }
                crate::decide::replication::ReplicationStep::UpToDate { base } => {
                    (Some(base), None)
                }
                crate::decide::replication::ReplicationStep::Full { to } => (None, Some(to)),
                crate::decide::replication::ReplicationStep::Incremental { base, to } => {
                    (Some(base), Some(to))
                }
            };
            // Due when the replica has nothing yet, or its newest replicated snapshot is at
            // least replication.every old.
            let due = match &base {
                None => true,
                Some(b) => {
                    self.now.duration_since(b.creation) >= spec.spec.replication.every.as_signed()
                }
            };
            let mut new_base = base.clone();
            let mut repl_id = None;
            if let (Some(to), true) = (to.as_ref(), due) {
                let caps_t = t_obs.capabilities.zfs.as_ref();
                let caps_s = a_obs.capabilities.zfs.as_ref();
                let resumable = caps_t.is_some_and(|c| c.resume_tokens)
                    && caps_s.is_some_and(|c| c.resume_tokens);
                let resume_token = t_ds
                    .and_then(|d| d.receive_resume_token.clone())
                    .filter(|_| resumable);
                let reason = match &base {
                    None => format!("{other} holds no replica of {name} yet"),
                    Some(b) => format!(
                        "the newest replicated snapshot on {other} ({}) is older than replication.every {}",
                        b.name, spec.spec.replication.every
                    ),
                };
                let action = self.replicate_action(
                    name,
                    active,
                    &ds,
                    other,
                    &tds,
                    base.as_ref().map(|b| b.name.as_str()),
                    &to.name,
                    (resume_token, resumable),
                    reason,
                );
                let id = self.plan.add(action);
                for d in &after_snapshot {
                    self.plan.edge(*d, id);
                }
                repl_id = Some(id);
                new_base = Some(to.clone());
                before_prune_active.push(id);
                protected_on_active
                    .push(crate::decide::retention::SnapshotRef::Name(to.name.clone()));
                if t_ds.is_none() {
                    // A full receive leaves the new replica writable: make it read-only.
                    let ro = self.plan.add(Action::new(
                        Target::Node(other.to_string()),
                        ActionKind::SetReadonly {
                            dataset: tds.clone(),
                            readonly: true,
                        },
                        format!("{other} is passive: its replica must be read-only (never two writable copies)"),
                    ));
                    self.plan.edge(id, ro);
                }
            }
            replicas.push(ReplicaBase {
                base: new_base.clone(),
                after: repl_id,
            });

            // 3. Holds on the base: on the replica here, on the serving copy once every
            //    replica's base is known (it keeps one per replica).
            if let Some(nb) = &new_base {
                let after: Vec<graph::Id> = match repl_id {
                    Some(r) => vec![r],
                    None => after_snapshot.clone(),
                };
                active_bases.push((nb.clone(), after));
                let bases = [(nb.clone(), repl_id.into_iter().collect::<Vec<_>>())];
                self.holds(
                    other.as_str(),
                    &tds,
                    target_snaps.unwrap_or(&[]),
                    &bases,
                    true,
                );
            } else {
                all_bases_known = false;
            }

            // 4. Retention on the replica (its observed snapshots; new ones arrive later). With
            //    more than two nodes, the snapshot it shares with each other replica stays too
            //    (the base of a later resync or switchover between them); with one of them out
            //    of sight, nothing is pruned there.
            let mut third_known = true;
            let mut third_bases: Vec<Snapshot> = Vec::new();
            for x in spec
                .spec
                .nodes
                .keys()
                .filter(|x| *x != active && *x != other)
            {
                match (self.reachable(x), t_ds) {
                    (false, _) => third_known = false,
                    (true, Some(t)) => {
                        if let Some(xd) = self.copy(x, inst)
                            && let Some(b) =
                                crate::decide::replication::common_base(&t.snapshots, &xd.snapshots)
                        {
                            third_bases.push(b.clone());
                        }
                    }
                    _ => {}
                }
            }
            if let Some(t) = t_ds.filter(|_| third_known) {
                let keep = snaps_spec.keep_passive.unwrap_or(snaps_spec.keep);
                let mut protect: Vec<crate::decide::retention::SnapshotRef> =
                    self.scratch_origins(other, &tds);
                for b in [&observed_base, &new_base]
                    .into_iter()
                    .flatten()
                    .chain(third_bases.iter())
                {
                    protect.push(crate::decide::retention::SnapshotRef::Guid(b.guid));
                    protect.push(crate::decide::retention::SnapshotRef::Name(b.name.clone()));
                }
                let decision = crate::decide::retention::prune(
                    &keep,
                    prefix,
                    &t.snapshots,
                    &protect,
                    self.now,
                );
                if !decision.destroy.is_empty() {
                    let batch = t_obs
                        .capabilities
                        .zfs
                        .as_ref()
                        .is_some_and(|c| c.batch_destroy);
                    let id = self.plan.add(Action::new(
                        Target::Node(other.to_string()),
                        ActionKind::DestroySnapshots {
                            dataset: tds.clone(),
                            snapshots: decision.destroy_names(),
                            batch,
                        },
                        format!("retention (prefix {prefix}) keeps none of them; the replication base and held snapshots stay"),
                    ));
                    if let Some(r) = repl_id {
                        self.plan.edge(r, id);
                    }
                }
            }
        }
        self.bases.insert(name.to_owned(), replicas);
        if !active_bases.is_empty() {
            before_prune_active.extend(self.holds(
                active.as_str(),
                &ds,
                &source,
                &active_bases,
                all_bases_known,
            ));
        }
        self.write_marks(active, &ds, &marks, update);

        // 5. Retention on the serving copy.
        if prune_active {
            let decision = crate::decide::retention::prune(
                &snaps_spec.keep,
                prefix,
                &source,
                &protected_on_active,
                self.now,
            );
            // Only what exists can be destroyed (the snapshot planned this run is the newest).
            let destroy: Vec<String> = decision
                .destroy_names()
                .into_iter()
                .filter(|n| observed.is_some_and(|d| d.snapshots.iter().any(|s| s.name == *n)))
                .collect();
            if !destroy.is_empty() {
                let batch = a_obs
                    .capabilities
                    .zfs
                    .as_ref()
                    .is_some_and(|c| c.batch_destroy);
                let id = self.plan.add(Action::new(
                    Target::Node(active.to_string()),
                    ActionKind::DestroySnapshots {
                        dataset: ds.clone(),
                        snapshots: destroy,
                        batch,
                    },
                    format!("retention (prefix {prefix}) keeps none of them; the replication base and held snapshots stay"),
                ));
                for d in &before_prune_active {
                    self.plan.edge(*d, id);
                }
            }
        }
    }

    /// spoolkeeper's holds on one copy: every base in `bases` is held (after the steps that
    /// bring it there), then, when `release` says every base of this copy is known, every
    /// other snapshot it holds is released. A hold is only moved, never dropped: with an
    /// unknown base nothing is released. Returns the ids (retention waits for them).
    fn holds(
        &mut self,
        node: &str,
        dset: &str,
        snaps: &[Snapshot],
        bases: &[(Snapshot, Vec<graph::Id>)],
        release: bool,
    ) -> Vec<graph::Id> {
        let held: Vec<Snapshot> = snaps
            .iter()
            .filter(|s| {
                self.ctx
                    .held
                    .contains(&Context::hold_key(node, dset, &s.name))
            })
            .cloned()
            .collect();
        let is_base = |s: &Snapshot| {
            bases
                .iter()
                .any(|(b, _)| (b.guid != 0 && b.guid == s.guid) || b.name == s.name)
        };
        let host = Target::Node(node.to_string());
        let mut ids = Vec::new();
        let mut holds = Vec::new();
        for (b, after) in bases {
            // A snapshot made this run has no guid yet: compare by name too. A base that
            // already carries a hold (ours from a lost journal, or anyone's) is protected as
            // it is: holding it again would fail.
            let ours = held
                .iter()
                .any(|s| s.name == b.name || (b.guid != 0 && s.guid == b.guid));
            let anyone = snaps
                .iter()
                .any(|s| (s.name == b.name || (b.guid != 0 && s.guid == b.guid)) && s.userrefs > 0);
            if ours || anyone {
                continue;
            }
            let id = self.plan.add(Action::new(
                host.clone(),
                ActionKind::Hold {
                    dataset: dset.to_string(),
                    snapshot: b.name.clone(),
                },
                "the replication base is held so that nothing can destroy it".to_string(),
            ));
            for a in after {
                self.plan.edge(*a, id);
            }
            holds.push(id);
            ids.push(id);
        }
        if !release {
            return ids;
        }
        let names: Vec<String> = bases.iter().map(|(b, _)| b.name.clone()).collect();
        for r in held.iter().filter(|s| !is_base(s)) {
            let id = self.plan.add(Action::new(
                host.clone(),
                ActionKind::Release {
                    dataset: dset.to_string(),
                    snapshot: r.name.clone(),
                },
                format!("the replication base moved to {}", names.join(", ")),
            ));
            for h in &holds {
                self.plan.edge(*h, id);
            }
            for (_, after) in bases {
                for a in after {
                    self.plan.edge(*a, id);
                }
            }
            ids.push(id);
        }
        ids
    }
}
