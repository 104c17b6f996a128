//! The pure planner: `plan(spec, observed, now) -> Plan`.
//!
//! No I/O and no clock: the observed model and the time come in, a DAG of typed actions and
//! typed blocked reasons come out. Safety rules of docs/DOMAIN.md are checks here; when one fires,
//! the plan carries a [`Blocked`] and `apply` refuses to run it (exit 3).

mod action;
mod archiving;
mod blocked;
pub mod effect;
mod graph;
pub mod history;
mod instance;
mod marks;
mod protect;
pub mod render;
mod resync;
mod saved;
mod serving;
mod switchover;

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;

pub use action::{Access, Action, ActionKind, Effect, Object, Target};
pub use blocked::Blocked;
pub use graph::{CycleError, Plan};
pub use history::Context;
pub use saved::{FORMAT_VERSION, SavedPlan, fingerprint, spec_digest};

use crate::model::{Dataset, NodeObservation, Observation};
use crate::spec::{NodeName, Spec};

pub use marks::{
    EVERY_HELD_COPY, Marks, REPLAY_PROPERTY, RESYNC_PROPERTY, ResyncPhase, owed_replay,
};

/// Properties compared as sizes (`80T` equals `87960930222080`; `none` equals `0`).
use crate::spec::SIZE_PROPERTIES;

/// The full dataset name of an instance on a node: `pool/dataset`.
pub fn dataset_name(spec: &Spec, node: &NodeName, instance_dataset: &str) -> Option<String> {
    spec.spec
        .nodes
        .get(node)
        .map(|n| format!("{}/{}", n.pool, instance_dataset))
}

/// Does the observed value of a property equal the spec's?
pub fn property_matches(name: &str, want: &str, have: Option<&str>) -> bool {
    let Some(have) = have else { return false };
    if SIZE_PROPERTIES.contains(&name) {
        let bytes = |v: &str| {
            if v == "none" {
                Some(0)
            } else {
                v.parse::<crate::spec::Size>().ok().map(|s| s.bytes())
            }
        };
        return match (bytes(want), bytes(have)) {
            (Some(a), Some(b)) => a == b,
            _ => want == have,
        };
    }
    want == have
}

/// Plan the convergence of one cluster.
///
/// The sections (one file each) add actions and typed [`Blocked`] reasons; the graph builder
/// then orders every two actions that touch the same object ([`Action::accesses`]) and the
/// plan's invariants are checked ([`Plan::check`]): a plan that breaks one is blocked, never
/// run.
pub fn plan(spec: &Spec, obs: &Observation, now: Timestamp, ctx: &Context) -> Plan {
    let mut p = Planner {
        spec,
        obs,
        ctx,
        now,
        plan: Plan::new(spec.name.as_str(), fingerprint(obs)),
        moving: BTreeSet::new(),
        bases: BTreeMap::new(),
        planned_backlogs: BTreeMap::new(),
        replay_owed: BTreeSet::new(),
    };
    p.run();
    let mut plan = p.plan;
    plan.order_by_objects(spec);
    for v in plan.check(spec) {
        plan.block(Blocked::Invariant { detail: v });
    }
    plan
}

/// A scratch clone older than this is left over by a dead `restore` or `drill` run.
pub const SCRATCH_STALE: jiff::SignedDuration = jiff::SignedDuration::from_hours(6);

/// What a replica will hold after this plan: the purge needs the least advanced one.
#[derive(Debug, Clone)]
struct ReplicaBase {
    /// Its newest snapshot in common with the serving copy once this plan ran (`None`:
    /// unreachable, missing, conflicting: no purge).
    base: Option<crate::model::Snapshot>,
    /// The replication bringing it there this run, which the purge waits for.
    after: Option<graph::Id>,
}

struct Planner<'a> {
    spec: &'a Spec,
    obs: &'a Observation,
    ctx: &'a Context,
    now: Timestamp,
    plan: Plan,
    /// Instances moved by a switchover this run: replication waits for the next run.
    moving: BTreeSet<String>,
    /// Per instance: what each replica holds after this plan.
    bases: BTreeMap<String, Vec<ReplicaBase>>,
    /// Backlogs of the snapshots planned this run ([`Context::backlog_key`]).
    planned_backlogs: BTreeMap<String, crate::decide::archive::SpoolBacklog>,
    /// Instances with a replay of the archive owed: no purge for them until it completed.
    replay_owed: BTreeSet<String>,
}

impl<'a> Planner<'a> {
    fn node(&self, n: &NodeName) -> Option<&'a NodeObservation> {
        let obs: &'a Observation = self.obs;
        obs.nodes.get(n.as_str())
    }

    /// `Some(instance)` when the instance's mail runs in its runtime (its own Postfix and
    /// Dovecot), `None` when the node's serve it: what [`Action::in_mail`] takes.
    fn own_mail(&self, instance: &str) -> Option<String> {
        self.spec
            .spec
            .instances
            .iter()
            .find(|(n, i)| n.as_str() == instance && !i.mail.is_node())
            .map(|_| instance.to_owned())
    }

    /// The Postfix that accepts `instance`'s mail on node `n`, as observed.
    fn postfix_for(
        &self,
        n: &NodeName,
        instance: &str,
    ) -> Option<&'a crate::model::PostfixObservation> {
        let mail = self.own_mail(instance);
        self.node(n).and_then(|o| o.postfix_of(mail.as_deref()))
    }

    fn reachable(&self, n: &NodeName) -> bool {
        self.node(n).is_some_and(|o| o.reachability.is_reachable())
    }

    fn why_unreachable(&self, n: &NodeName) -> String {
        match self.node(n).map(|o| &o.reachability) {
            Some(crate::model::Reachability::Unreachable { kind, message }) => {
                format!("{kind:?}: {message}").to_lowercase()
            }
            Some(_) => "reachable".into(),
            None => "not observed".into(),
        }
    }

    fn is_fenced(&self, n: &NodeName) -> bool {
        self.spec.spec.fenced.contains(n) || self.ctx.fenced_by_command.contains(n.as_str())
    }

    /// The observed copy of an instance on a node.
    fn copy(&self, n: &NodeName, inst: &crate::spec::Instance) -> Option<&'a Dataset> {
        let d = dataset_name(self.spec, n, inst.dataset.as_str())?;
        self.node(n)?.dataset(&d)
    }

    /// A snapshot name for `now` that the dataset does not have yet (names carry seconds:
    /// two snapshots in one second take the next free second).
    fn fresh_snapshot_name(&self, existing: &[crate::model::Snapshot]) -> String {
        let prefix = self.spec.spec.snapshots.prefix.as_str();
        let mut at = self.now;
        loop {
            let name = crate::decide::retention::snapshot_name(prefix, at);
            if !existing.iter().any(|s| s.name == name) {
                return name;
            }
            at = at
                .checked_add(jiff::SignedDuration::from_secs(1))
                .unwrap_or(at);
        }
    }

    /// The queue backlog of `inst` for a snapshot of `node`'s copy planned from this
    /// observation: the oldest delivery still queued for the instance on any reachable node
    /// (a message waiting in another node's queue is delivered into that node's copy once it
    /// serves, after this snapshot), or the observation time.
    fn backlog_for(
        &self,
        node: &NodeName,
        inst: &crate::spec::Instance,
    ) -> crate::decide::archive::SpoolBacklog {
        use crate::decide::archive::SpoolBacklog;
        let name = self
            .spec
            .spec
            .instances
            .iter()
            .find(|(_, i)| i.dataset == inst.dataset)
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        let at = |n: &NodeName| {
            let o = self.node(n);
            crate::decide::archive::backlog_at(
                self.postfix_for(n, &name).map(|p| p.queue.as_slice()),
                &inst.domains,
                self.obs.observed_at,
                o.and_then(|o| o.capabilities.clock_offset_ms),
                o.and_then(|o| o.capabilities.clock_uncertainty_ms),
            )
        };
        let mut out = at(node);
        for other in self
            .spec
            .spec
            .nodes
            .keys()
            .filter(|n| *n != node && self.reachable(n))
        {
            out = match (out, at(other)) {
                (SpoolBacklog::Before { at: a }, SpoolBacklog::Before { at: b }) => {
                    SpoolBacklog::Before { at: a.min(b) }
                }
                _ => SpoolBacklog::Unknown,
            };
        }
        out
    }

    /// A snapshot action, its backlog remembered for the purge of this run.
    fn snapshot_action(
        &mut self,
        node: &NodeName,
        inst: &crate::spec::Instance,
        dataset: &str,
        name: &str,
        reason: String,
    ) -> graph::Id {
        let backlog = self.backlog_for(node, inst);
        self.planned_backlogs
            .insert(Context::backlog_key(dataset, name), backlog);
        self.plan.add(Action::new(
            Target::Node(node.to_string()),
            ActionKind::Snapshot {
                dataset: dataset.to_owned(),
                name: name.to_owned(),
                backlog,
            },
            reason,
        ))
    }

    fn run(&mut self) {
        let active = self.spec.spec.active.clone();
        if !self.reachable(&active) {
            let why = self.why_unreachable(&active);
            self.plan.block(Blocked::ActiveUnreachable {
                node: active.to_string(),
                why,
            });
            return;
        }
        // A fence proves a node cannot serve only until it comes back.
        let back: Vec<String> = self
            .ctx
            .fenced_by_command
            .iter()
            .filter(|n| {
                self.obs
                    .nodes
                    .get(n.as_str())
                    .is_some_and(|o| o.reachability.is_reachable())
            })
            .cloned()
            .collect();
        for n in back {
            self.plan.add(Action::new(
                Target::Controller,
                ActionKind::ForgetFence { node: n.clone() },
                format!("{n} is reachable again: a later failover must fence it again"),
            ));
        }
        let instances: Vec<_> = self
            .spec
            .spec
            .instances
            .iter()
            .map(|(n, i)| (n.clone(), i.clone()))
            .collect();
        let mut serving: BTreeMap<String, NodeName> = BTreeMap::new();
        for (name, inst) in &instances {
            let here = self.serving_node(&active, name.as_str(), inst);
            serving.insert(name.to_string(), here);
        }
        // Scratch clones in the way of a moving service, or left by a dead run, first.
        self.scratch(&active);
        // The archive first: every instance start reads the BCC configuration it writes.
        if self.spec.spec.archive.is_some() {
            self.archive_config(&serving);
        }
        for (name, inst) in &instances {
            let here = serving[name.as_str()].clone();
            self.instance(&here, name.as_str(), inst);
            self.protect(&here, name.as_str(), inst);
        }
        if self.spec.spec.archive.is_some() {
            self.purge(&serving);
        }
        self.scratch_in_the_way();
    }

    /// One replication step from `source` to `target` (where it runs follows the spec's
    /// transport: the source node for `direct`, the controller for `relay`).
    #[allow(clippy::too_many_arguments)]
    fn replicate_action(
        &self,
        instance: &str,
        source: &NodeName,
        source_dataset: &str,
        target: &NodeName,
        target_dataset: &str,
        base: Option<&str>,
        to: &str,
        resume: (Option<String>, bool),
        reason: String,
    ) -> Action {
        let spec: &'a Spec = self.spec;
        let relay = spec.spec.replication.transport == crate::spec::Transport::Relay;
        let target_pool = spec
            .spec
            .nodes
            .get(target)
            .map(|n| n.pool.to_string())
            .unwrap_or_default();
        Action::new(
            if relay {
                Target::Controller
            } else {
                Target::Node(source.to_string())
            },
            ActionKind::Replicate {
                instance: instance.into(),
                source: source.to_string(),
                source_dataset: source_dataset.into(),
                target: target.to_string(),
                target_pool,
                target_dataset: target_dataset.into(),
                base: base.map(str::to_owned),
                to: to.into(),
                relay,
                resume_token: resume.0,
                resumable: resume.1,
                compress: self.compressor(source, target),
            },
            reason,
        )
    }

    /// The stream compressor of a replication from `source` to `target`: the spec's
    /// `replication.compress`, where both ends have the tool.
    fn compressor(
        &self,
        source: &NodeName,
        target: &NodeName,
    ) -> Option<crate::adapters::zfs::Compressor> {
        use crate::adapters::zfs::Compressor;
        use crate::spec::Compress;
        let caps = |n: &NodeName| {
            self.node(n)
                .map(|o| o.capabilities.compressors)
                .unwrap_or_default()
        };
        let (a, b) = (caps(source), caps(target));
        let zstd = a.zstd && b.zstd;
        let lz4 = a.lz4 && b.lz4;
        match self.spec.spec.replication.compress {
            Compress::None => None,
            Compress::Zstd => zstd.then_some(Compressor::Zstd),
            Compress::Lz4 => lz4.then_some(Compressor::Lz4),
            Compress::Auto if zstd => Some(Compressor::Zstd),
            Compress::Auto => lz4.then_some(Compressor::Lz4),
        }
    }

    /// Snapshots of `dataset` on `node` that a scratch clone depends on: retention keeps them
    /// (a destroy would fail, and with it the whole batch) until the clone is gone.
    fn scratch_origins(
        &self,
        node: &NodeName,
        dataset: &str,
    ) -> Vec<crate::decide::retention::SnapshotRef> {
        self.node(node)
            .map(|o| {
                o.scratch
                    .iter()
                    .filter(|c| c.origin_dataset == dataset)
                    .map(|c| crate::decide::retention::SnapshotRef::Name(c.origin_snapshot.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tear down the scratch clones (`restore`, `drill`) of an instance that does not run on
    /// the spec's active node (a start or promotion follows: a rehearsal never holds up the
    /// service, docs/DOMAIN.md), and any older than [`SCRATCH_STALE`] (its run died). The
    /// teardown writes the clone's origin dataset, so the promotion steps on that copy come
    /// after it.
    fn scratch(&mut self, active: &NodeName) {
        let spec: &'a Spec = self.spec;
        let obs: &'a Observation = self.obs;
        for (node, n_obs) in &obs.nodes {
            if !n_obs.reachability.is_reachable() {
                continue;
            }
            let pool = spec
                .spec
                .nodes
                .iter()
                .find(|(n, _)| n.as_str() == node)
                .map(|(_, n)| n.pool.to_string())
                .unwrap_or_default();
            for c in &n_obs.scratch {
                let inst = c
                    .origin_dataset
                    .strip_prefix(&format!("{pool}/"))
                    .and_then(|rel| {
                        spec.spec
                            .instances
                            .iter()
                            .find(|(_, i)| i.dataset.as_str() == rel)
                    });
                let moving = inst.is_some_and(|(name, _)| {
                    obs.nodes
                        .get(active.as_str())
                        .and_then(|o| o.instances.get(name.as_str()))
                        .map(|s| s.state)
                        != Some(crate::model::RunState::Running)
                });
                let age = c.since.map(|t| self.now.duration_since(t));
                let stale = age.is_none_or(|a: jiff::SignedDuration| a > SCRATCH_STALE);
                if !moving && !stale {
                    continue;
                }
                let reason = if moving {
                    format!(
                        "the service of {} is about to start on {active}: the {} clone goes first",
                        inst.map(|(n, _)| n.to_string()).unwrap_or_default(),
                        c.purpose
                    )
                } else {
                    format!(
                        "a {} clone older than {} h: the run that made it is gone",
                        c.purpose,
                        SCRATCH_STALE.as_hours()
                    )
                };
                self.plan.add(self.teardown(node, c, reason));
            }
        }
    }

    /// The `teardown_scratch` of clone `c` on `node`.
    fn teardown(&self, node: &str, c: &crate::model::ScratchClone, reason: String) -> Action {
        let pool = self
            .spec
            .spec
            .nodes
            .iter()
            .find(|(n, _)| n.as_str() == node)
            .map(|(_, n)| n.pool.to_string())
            .unwrap_or_default();
        let inst = c
            .origin_dataset
            .strip_prefix(&format!("{pool}/"))
            .and_then(|rel| {
                self.spec
                    .spec
                    .instances
                    .iter()
                    .find(|(_, i)| i.dataset.as_str() == rel)
            })
            .map(|(n, _)| n.to_string());
        Action::new(
            Target::Node(node.to_owned()),
            ActionKind::TeardownScratch {
                clone: c.name.clone(),
                origin_dataset: c.origin_dataset.clone(),
                drill: inst.filter(|_| c.purpose == "drill"),
            },
            reason,
        )
    }

    /// A scratch clone whose origin a planned rollback destroys (a returning node's copy rolled
    /// back over its later snapshots for its resync) is torn down before that rollback: found
    /// by the simulator, a rollback that failed on "snapshot has dependent clones".
    fn scratch_in_the_way(&mut self) {
        let obs: &'a Observation = self.obs;
        let rollbacks: Vec<(graph::Id, String, String, String)> = self
            .plan
            .graph
            .node_indices()
            .filter_map(
                |id| match (&self.plan.graph[id].host, &self.plan.graph[id].kind) {
                    (
                        Target::Node(n),
                        ActionKind::Rollback {
                            dataset,
                            snapshot,
                            destroy_later: true,
                        },
                    ) => Some((id, n.clone(), dataset.clone(), snapshot.clone())),
                    _ => None,
                },
            )
            .collect();
        for (rid, node, ds, target) in rollbacks {
            let Some(n_obs) = obs.nodes.get(&node) else {
                continue;
            };
            let Some(copy) = n_obs.dataset(&ds) else {
                continue;
            };
            let at = |name: &str| copy.snapshots.iter().position(|s| s.name == name);
            let Some(ti) = at(&target) else {
                continue;
            };
            for c in n_obs.scratch.iter().filter(|c| c.origin_dataset == ds) {
                if at(&c.origin_snapshot).is_some_and(|oi| oi > ti) {
                    let reason = format!(
                        "the rollback of {ds} to @{target} destroys @{}, which this {} clone depends on",
                        c.origin_snapshot, c.purpose
                    );
                    let t = self.plan.add(self.teardown(&node, c, reason));
                    self.plan.edge(t, rid);
                }
            }
        }
        // every teardown before every step on its origin copy (a teardown touches only its
        // clone and follows nothing, so these edges never close a cycle)
        let spec: &'a Spec = self.spec;
        let ids: Vec<graph::Id> = self.plan.graph.node_indices().collect();
        let teardowns: Vec<(graph::Id, String, String)> = ids
            .iter()
            .filter_map(
                |id| match (&self.plan.graph[*id].host, &self.plan.graph[*id].kind) {
                    (Target::Node(n), ActionKind::TeardownScratch { origin_dataset, .. }) => {
                        Some((*id, n.clone(), origin_dataset.clone()))
                    }
                    _ => None,
                },
            )
            .collect();
        for (t, node, ds) in teardowns {
            let origin = action::Object::Dataset {
                node: node.clone(),
                dataset: ds.clone(),
            };
            for id in &ids {
                if *id != t
                    && self.plan.graph[*id]
                        .accesses(spec)
                        .iter()
                        .any(|(o, _)| *o == origin)
                {
                    self.plan.edge(t, *id);
                }
            }
        }
    }

    /// Is any other node out of sight (so promoting a replica is a failover)?
    fn failing_over(&self, active: &NodeName) -> bool {
        self.spec
            .spec
            .nodes
            .keys()
            .any(|n| n != active && !self.reachable(n))
    }
}

#[cfg(test)]
mod tests;
