//! The pure planner: `plan(spec, observed, now) -> Plan`.
//!
//! No I/O and no clock: the observed model and the time come in, a DAG of typed actions and
//! typed blocked reasons come out. Safety rules of DOMAIN.md are checks here; when one fires,
//! the plan carries a [`Blocked`] and `apply` refuses to run it (exit 3).

mod action;
mod blocked;
pub mod effect;
mod graph;
pub mod render;

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use action::{Action, ActionKind, Effect, Target};
pub use blocked::Blocked;
pub use graph::{CycleError, Plan};

use crate::jail::{self, RuntimeVerb};
use crate::observed::{Dataset, NodeObservation, Observation, RunState};
use crate::spec::{NodeName, Spec};
use crate::zfs;

/// The dataset property naming the nodes to resync after a failover (durable, on the new
/// active's dataset, where any controller sees it).
pub const RESYNC_PROPERTY: &str = "spoolkeeper:resync";

/// Where a node named in `spoolkeeper:resync` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResyncPhase {
    /// Returned or not: its writes must be preserved and its copy rolled back.
    Pending,
    /// Resynced; its queued mail must still be replayed.
    Synced,
}

fn resync_marks(d: Option<&Dataset>) -> BTreeMap<String, ResyncPhase> {
    d.and_then(|d| d.user_properties.get(RESYNC_PROPERTY))
        .map(|v| {
            v.split(',')
                .filter(|e| !e.is_empty())
                .map(|e| match e.split_once('=') {
                    Some((n, "synced")) => (n.to_string(), ResyncPhase::Synced),
                    Some((n, _)) => (n.to_string(), ResyncPhase::Pending),
                    None => (e.to_string(), ResyncPhase::Pending),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn encode_marks(m: &BTreeMap<String, ResyncPhase>) -> String {
    m.iter()
        .map(|(n, p)| match p {
            ResyncPhase::Pending => n.clone(),
            ResyncPhase::Synced => format!("{n}=synced"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The version of the JSON plan format (`plan --output json`, `plan --out FILE`).
pub const FORMAT_VERSION: u32 = 1;

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

/// The fingerprint of an observation: what `apply --plan` compares to refuse a stale plan.
/// Times of the observation itself and clock measurements are left out (they change on
/// every run without changing the world); everything else counts.
pub fn fingerprint(obs: &Observation) -> String {
    let mut o = obs.clone();
    o.observed_at = Timestamp::UNIX_EPOCH;
    for n in o.nodes.values_mut() {
        n.capabilities.clock_offset_ms = None;
        n.capabilities.clock_uncertainty_ms = None;
    }
    if let Some(a) = o.archive.as_mut() {
        a.capabilities.clock_offset_ms = None;
        a.capabilities.clock_uncertainty_ms = None;
    }
    let json = serde_json::to_vec(&o).unwrap_or_default();
    let digest = Sha256::digest(&json);
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Options that change what the planner may do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Context {
    /// Nodes proven fenced by a fencing command that succeeded (from the journal).
    pub fenced_by_command: BTreeSet<String>,
    /// Snapshots carrying spoolkeeper's hold, as `node dataset@snapshot` (from the journal:
    /// the holds this controller put and has not released). Only these are ever released.
    pub held: BTreeSet<String>,
    /// The spool backlog recorded when each snapshot was taken (`dataset@snapshot`), which
    /// the archive watermark needs; unknown snapshots are never used to purge.
    pub backlogs: BTreeMap<String, crate::archive::SpoolBacklog>,
}

impl Context {
    /// The key of a hold in [`Context::held`].
    pub fn hold_key(node: &str, dataset: &str, snapshot: &str) -> String {
        format!("{node} {dataset}@{snapshot}")
    }

    /// What a completed action teaches the next plan (the journal is folded through this).
    pub fn learn(&mut self, a: &Action) {
        if let ActionKind::Fence { node } = &a.kind {
            self.fenced_by_command.insert(node.clone());
        }
        if let ActionKind::ForgetFence { node } = &a.kind {
            self.fenced_by_command.remove(node);
        }
        if let ActionKind::Snapshot {
            dataset,
            name,
            backlog,
        } = &a.kind
        {
            self.backlogs.insert(format!("{dataset}@{name}"), *backlog);
        }
        let Target::Node(node) = &a.host else { return };
        match &a.kind {
            ActionKind::Hold { dataset, snapshot } => {
                self.held.insert(Self::hold_key(node, dataset, snapshot));
            }
            ActionKind::Release { dataset, snapshot } => {
                self.held.remove(&Self::hold_key(node, dataset, snapshot));
            }
            ActionKind::DestroySnapshots {
                dataset, snapshots, ..
            } => {
                for sn in snapshots {
                    self.held.remove(&Self::hold_key(node, dataset, sn));
                }
            }
            _ => {}
        }
    }
}

/// Plan the convergence of one cluster.
pub fn plan(spec: &Spec, obs: &Observation, now: Timestamp, ctx: &Context) -> Plan {
    let mut p = Planner {
        spec,
        obs,
        ctx,
        now,
        plan: Plan::new(spec.name.as_str(), fingerprint(obs)),
        moving: BTreeSet::new(),
    };
    p.run();
    p.plan
}

struct Planner<'a> {
    spec: &'a Spec,
    obs: &'a Observation,
    ctx: &'a Context,
    now: Timestamp,
    plan: Plan,
    /// Instances moved by a switchover this run: replication waits for the next run.
    moving: BTreeSet<String>,
}

impl<'a> Planner<'a> {
    fn node(&self, n: &NodeName) -> Option<&'a NodeObservation> {
        let obs: &'a Observation = self.obs;
        obs.nodes.get(n.as_str())
    }

    fn reachable(&self, n: &NodeName) -> bool {
        self.node(n).is_some_and(|o| o.reachability.is_reachable())
    }

    fn why_unreachable(&self, n: &NodeName) -> String {
        match self.node(n).map(|o| &o.reachability) {
            Some(crate::observed::Reachability::Unreachable { kind, message }) => {
                format!("{kind:?}: {message}").to_lowercase()
            }
            Some(_) => "reachable".into(),
            None => "not observed".into(),
        }
    }

    fn is_fenced(&self, n: &NodeName) -> bool {
        self.spec.spec.fenced.contains(n) || self.ctx.fenced_by_command.contains(n.as_str())
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
            self.instance(&here, name.as_str(), inst);
            self.protect(&here, name.as_str(), inst);
            serving.insert(name.to_string(), here);
        }
        if self.spec.spec.archive.is_some() {
            self.archive(&serving);
        }
    }

    /// The node that serves an instance this run: the spec's active node, unless that node
    /// came back from a failover and must first be resynced from the node that took over
    /// (named in its `spoolkeeper:resync`). Then the other node keeps serving this run, the
    /// resync runs, and the next apply moves the service (a switchover).
    fn serving_node(
        &mut self,
        active: &NodeName,
        name: &str,
        inst: &crate::spec::Instance,
    ) -> NodeName {
        let spec: &'a Spec = self.spec;
        for other in spec
            .spec
            .nodes
            .keys()
            .filter(|n| *n != active && self.reachable(n))
        {
            let d = dataset_name(spec, other, inst.dataset.as_str())
                .and_then(|d| self.node(other).and_then(|o| o.dataset(&d)));
            if resync_marks(d).contains_key(active.as_str()) {
                self.plan.note(format!(
                    "{active} must be resynced from {other} before it serves {name}: {other} keeps serving this run; apply again to move {name} to {active}"
                ));
                return other.clone();
            }
        }
        active.clone()
    }

    /// PDMA = 0: the archive host holds what it receives; the active spool BCCs every
    /// recipient of the instances' domains to it before any instance starts; held copies
    /// proven to be in the replica are purged.
    fn archive(&mut self, serving: &BTreeMap<String, NodeName>) {
        let spec: &'a Spec = self.spec;
        let Some(arch) = &spec.spec.archive else {
            return;
        };
        let template = &arch.address;
        let mut archive_ready = Vec::new();

        // The archive host: hold everything for the archive domain.
        match self.obs.archive.as_ref() {
            Some(a) if a.reachability.is_reachable() => {
                if let Some(pf) = &a.postfix {
                    let dir = pf
                        .settings
                        .get("config_directory")
                        .cloned()
                        .unwrap_or_else(|| "/etc/postfix".into());
                    let path = format!("{dir}/{}", crate::archive::HOLD_MAP_FILE);
                    let table = crate::archive::hold_access_map(template.archive_domain());
                    let want = crate::archive::archive_host_settings(template.archive_domain(), &path);
                    archive_ready = self.postfix_config(
                        Target::Archive,
                        pf,
                        crate::archive::HOLD_MAP_FILE,
                        &path,
                        &table,
                        &want,
                        "the archive host must hold every copy it receives, never deliver it",
                    );
                }
            }
            _ => self.plan.note(
                "the archive host is unreachable: copies queue on the spool and reach it once it is back; no purge this run".into(),
            ),
        }

        // The serving spools: BCC every recipient of every instance's domains.
        let nodes: BTreeSet<&NodeName> = serving.values().collect();
        for active in nodes {
            let Some(a_obs) = self.node(active) else {
                continue;
            };
            if let Some(pf) = a_obs.postfix.as_ref() {
                let domains: Vec<String> = spec
                    .spec
                    .instances
                    .values()
                    .flat_map(|i| i.domains.iter().cloned())
                    .collect();
                match crate::archive::bcc_map(template, &domains) {
                    Ok(table) => {
                        let dir = pf
                            .settings
                            .get("config_directory")
                            .cloned()
                            .unwrap_or_else(|| "/etc/postfix".into());
                        let path = format!("{dir}/{}", crate::archive::BCC_MAP_FILE);
                        let want = crate::archive::spool_settings(&path);
                        let ids = self.postfix_config(
                            Target::Node(active.to_string()),
                            pf,
                            crate::archive::BCC_MAP_FILE,
                            &path,
                            &table,
                            &want,
                            "every message a spool accepts is BCC'd to the archive host (PDMA = 0)",
                        );
                        for id in &ids {
                            for r in &archive_ready {
                                self.plan.edge(*r, *id);
                            }
                            // No instance starts before its mail is archived.
                            for name in serving.iter().filter(|(_, n)| *n == active).map(|(i, _)| i)
                            {
                                if let Some(start) =
                                    self.plan.id_of(&format!("{active}:start_instance:{name}"))
                                {
                                    self.plan.edge(*id, start);
                                }
                            }
                        }
                    }
                    Err(e) => self
                        .plan
                        .note(format!("archive BCC map not generated: {e}")),
                }
            } else {
                self.plan.note(format!(
                    "no Postfix observed on {active}: the archive BCC cannot be checked"
                ));
            }
        }

        // Purge held copies covered by every replica.
        self.purge(serving);
    }

    /// Plan a Postfix table and settings on one host; returns the ids to wait for.
    #[allow(clippy::too_many_arguments)]
    fn postfix_config(
        &mut self,
        host: Target,
        pf: &crate::observed::PostfixObservation,
        file: &str,
        path: &str,
        table: &str,
        want: &BTreeMap<String, String>,
        why: &str,
    ) -> Vec<graph::Id> {
        let mut ids = Vec::new();
        let table_changed = pf.files.get(file).map(String::as_str) != Some(table);
        if table_changed {
            ids.push(self.plan.add(Action::new(
                host.clone(),
                ActionKind::WriteFile {
                    path: path.into(),
                    content: table.into(),
                },
                format!(
                    "{why}: {path} is {}",
                    if pf.files.contains_key(file) {
                        "out of date"
                    } else {
                        "missing"
                    }
                ),
            )));
        }
        let drift: BTreeMap<String, String> = want
            .iter()
            .filter(|(k, v)| pf.settings.get(*k).map(|s| s.trim()) != Some(v.trim()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if table_changed || !drift.is_empty() {
            let id = self.plan.add(Action::new(
                host,
                ActionKind::Postconf {
                    settings: drift.clone(),
                    reload: true,
                },
                if drift.is_empty() {
                    format!("{why}: Postfix must read the new {file}")
                } else {
                    format!(
                        "{why}: {} differ",
                        drift.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                },
            ));
            for i in &ids {
                self.plan.edge(*i, id);
            }
            ids.push(id);
        }
        ids
    }

    /// Delete held copies older than the watermark of the least advanced replica.
    fn purge(&mut self, serving: &BTreeMap<String, NodeName>) {
        let spec: &'a Spec = self.spec;
        let Some(arch) = &spec.spec.archive else {
            return;
        };
        let Some(a) = self
            .obs
            .archive
            .as_ref()
            .filter(|a| a.reachability.is_reachable())
        else {
            return;
        };
        let Some(pf) = &a.postfix else { return };
        let held: Vec<crate::observed::QueueEntry> = pf.held().cloned().collect();
        if held.is_empty() {
            return;
        }
        let margin = arch.margin.as_signed();
        for (name, inst) in &spec.spec.instances {
            let Some(active) = serving.get(name.as_str()) else {
                continue;
            };
            let Some(a_obs) = self.node(active) else {
                continue;
            };
            let Some(ds) = dataset_name(spec, active, inst.dataset.as_str()) else {
                continue;
            };
            let Some(src) = a_obs.dataset(&ds) else {
                continue;
            };
            // The newest snapshot every other node holds (the least advanced replica).
            let mut least: Option<crate::observed::Snapshot> = None;
            let mut all_seen = true;
            for other in spec.spec.nodes.keys().filter(|n| *n != active) {
                let base = self
                    .node(other)
                    .filter(|o| o.reachability.is_reachable())
                    .and_then(|o| {
                        dataset_name(spec, other, inst.dataset.as_str()).and_then(|d| o.dataset(&d))
                    })
                    .and_then(|t| crate::replication::common_base(&src.snapshots, &t.snapshots))
                    .cloned();
                match base {
                    Some(b) => {
                        if least
                            .as_ref()
                            .is_none_or(|l| crate::retention::age_order(&b, l).is_lt())
                        {
                            least = Some(b);
                        }
                    }
                    None => all_seen = false,
                }
            }
            if !all_seen {
                self.plan.note(format!(
                    "{name}: no purge of the archive: a replica is missing or unreachable"
                ));
                continue;
            }
            let backlog = least
                .as_ref()
                .and_then(|b| self.ctx.backlogs.get(&format!("{ds}@{}", b.name)).copied())
                .unwrap_or_default();
            match crate::archive::watermark(
                least.as_ref(),
                backlog,
                a_obs.capabilities.clock_offset_ms,
                a.capabilities.clock_offset_ms,
                margin,
            ) {
                Err(refusal) => self.plan.note(format!("{name}: {refusal}")),
                Ok(w) => {
                    let purge = crate::archive::purge_set(&w, &held, &inst.domains, &arch.address);
                    if !purge.is_empty() {
                        self.plan.add(Action::new(
                            Target::Archive,
                            ActionKind::PurgeArchive {
                                instance: name.to_string(),
                                queue_ids: purge.iter().map(|p| p.queue_id.clone()).collect(),
                                watermark: format!("watermark {} from {}", w.at, w.snapshot),
                            },
                            format!(
                                "{} held copie(s) arrived before the watermark minus the margin: {}",
                                purge.len(),
                                w.explain
                            ),
                        ));
                    }
                }
            }
        }
    }

    /// Snapshots on the active node, replication to every other node, the holds on the
    /// replication base, and retention on both sides.
    fn protect(&mut self, active: &NodeName, name: &str, inst: &crate::spec::Instance) {
        let spec: &'a Spec = self.spec;
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
        let mut source: Vec<crate::observed::Snapshot> =
            observed.map(|d| d.snapshots.clone()).unwrap_or_default();
        let host = Target::Node(active.to_string());

        // 1. A snapshot when one is due.
        let mut snap_id = None;
        if crate::retention::snapshot_due(prefix, snaps_spec.every.as_std(), &source, self.now) {
            let sname = crate::retention::snapshot_name(prefix, self.now);
            let id = self.plan.add(Action::new(
                host.clone(),
                ActionKind::Snapshot {
                    dataset: ds.clone(),
                    name: sname.clone(),
                    backlog: crate::archive::backlog_of(
                        a_obs.postfix.as_ref().map(|p| p.queue.as_slice()),
                        &inst.domains,
                    ),
                },
                match source
                    .iter()
                    .rev()
                    .find(|s| crate::retention::parse_owned(prefix, &s.name).is_some())
                {
                    Some(last) => format!(
                        "the last snapshot ({}) is older than snapshots.every {}",
                        last.name, snaps_spec.every
                    ),
                    None => format!("{ds} has no {prefix}_ snapshot yet"),
                },
            ));
            if let Some(c) = created {
                self.plan.edge(c, id);
            }
            snap_id = Some(id);
            let txg = source
                .iter()
                .filter_map(|s| s.createtxg)
                .max()
                .map(|t| t + 1);
            source.push(crate::observed::Snapshot {
                name: sname,
                guid: 0, // not known before it exists; matches nothing on a target
                creation: self.now,
                createtxg: txg,
                userrefs: 0,
                used: 0,
            });
        }
        let after_snapshot: Vec<graph::Id> = snap_id.into_iter().chain(created).collect();

        // 2. Replication to every other reachable node.
        let mut protected_on_active: Vec<crate::retention::SnapshotRef> = Vec::new();
        let mut prune_active = true;
        let mut before_prune_active: Vec<graph::Id> = after_snapshot.clone();
        for other in spec.spec.nodes.keys().filter(|n| *n != active) {
            if !self.reachable(other) {
                // Its base is unknown: pruning here could destroy it.
                prune_active = false;
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
            // A node that came back after a failover: preserve, roll back, resync.
            let marks = resync_marks(observed);
            match (marks.get(other.as_str()), t_ds) {
                (Some(ResyncPhase::Pending), Some(t)) => {
                    if let Some(id) = self.resync(
                        active,
                        other,
                        name,
                        &ds,
                        &source,
                        t,
                        &after_snapshot,
                        &marks,
                    ) {
                        before_prune_active.push(id);
                    }
                    prune_active = false;
                    continue;
                }
                (Some(ResyncPhase::Synced), Some(_)) => {
                    self.resync_drain(active, other, name, &ds, &marks);
                }
                _ => {}
            }
            let step = crate::replication::replication_step(&source, target_snaps, None);
            let observed_base = target_snaps
                .and_then(|t| crate::replication::common_base(&source, t))
                .cloned();
            if let Some(b) = &observed_base {
                protected_on_active.push(crate::retention::SnapshotRef::Guid(b.guid));
            }
            let (base, to) = match step {
                crate::replication::ReplicationStep::Conflict(
                    crate::replication::Conflict::SourceEmpty,
                ) => continue,
                crate::replication::ReplicationStep::Conflict(conflict) => {
                    prune_active = false;
                    self.plan.block(Blocked::Replication {
                        instance: name.into(),
                        node: other.to_string(),
                        conflict,
                    });
                    continue;
                }
                crate::replication::ReplicationStep::UpToDate { base } => (Some(base), None),
                crate::replication::ReplicationStep::Full { to } => (None, Some(to)),
                crate::replication::ReplicationStep::Incremental { base, to } => {
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
                protected_on_active.push(crate::retention::SnapshotRef::Name(to.name.clone()));
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

            // 3. Holds on the base, both sides: hold the new one before releasing the old.
            if let Some(nb) = &new_base {
                for (node, dset, snaps) in [
                    (active.as_str(), ds.as_str(), source.as_slice()),
                    (other.as_str(), tds.as_str(), target_snaps.unwrap_or(&[])),
                ] {
                    let held: Vec<crate::observed::Snapshot> = snaps
                        .iter()
                        .filter(|s| {
                            self.ctx
                                .held
                                .contains(&Context::hold_key(node, dset, &s.name))
                        })
                        .cloned()
                        .collect();
                    let mut moves = crate::replication::hold_moves(&held, Some(nb));
                    // A snapshot made this run has no guid yet: compare by name too. A base that
                    // already carries a hold (ours from a lost journal, or anyone's) is
                    // protected as it is: holding it again would fail.
                    let already_held = snaps
                        .iter()
                        .any(|s| (s.guid == nb.guid || s.name == nb.name) && s.userrefs > 0);
                    if held.iter().any(|s| s.name == nb.name) || already_held {
                        moves.hold = None;
                    }
                    let h = Target::Node(node.to_string());
                    let mut hold_id = None;
                    if let Some(hs) = &moves.hold {
                        let id = self.plan.add(Action::new(
                            h.clone(),
                            ActionKind::Hold {
                                dataset: dset.to_string(),
                                snapshot: hs.name.clone(),
                            },
                            "the replication base is held so that nothing can destroy it"
                                .to_string(),
                        ));
                        if let Some(r) = repl_id {
                            self.plan.edge(r, id);
                        } else if node == active.as_str() {
                            for d in &after_snapshot {
                                self.plan.edge(*d, id);
                            }
                        }
                        hold_id = Some(id);
                        if node == active.as_str() {
                            before_prune_active.push(id);
                        }
                    }
                    for r in moves.release.iter().filter(|r| r.name != nb.name) {
                        let id = self.plan.add(Action::new(
                            h.clone(),
                            ActionKind::Release {
                                dataset: dset.to_string(),
                                snapshot: r.name.clone(),
                            },
                            format!("the replication base moved to {}", nb.name),
                        ));
                        if let Some(hid) = hold_id.or(repl_id) {
                            self.plan.edge(hid, id);
                        }
                        if node == active.as_str() {
                            before_prune_active.push(id);
                        }
                    }
                }
            }

            // 4. Retention on the replica (its observed snapshots; new ones arrive later).
            if let Some(t) = t_ds {
                let keep = snaps_spec.keep_passive.unwrap_or(snaps_spec.keep);
                let mut protect: Vec<crate::retention::SnapshotRef> = Vec::new();
                for b in [&observed_base, &new_base].into_iter().flatten() {
                    protect.push(crate::retention::SnapshotRef::Guid(b.guid));
                    protect.push(crate::retention::SnapshotRef::Name(b.name.clone()));
                }
                let decision =
                    crate::retention::prune(&keep, prefix, &t.snapshots, &protect, self.now);
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

        // 5. Retention on the active node.
        if prune_active {
            let decision = crate::retention::prune(
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
                    host,
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

    /// Datasets and run state of one instance: writable and running on the active node,
    /// read-only, unmounted and stopped everywhere else.
    fn instance(&mut self, active: &NodeName, name: &str, inst: &crate::spec::Instance) {
        let spec: &'a Spec = self.spec;
        let mut stops = Vec::new();
        let mut may_start = true;
        let mut fences: Vec<graph::Id> = Vec::new();

        // Where is the live copy? When the active node only holds a read-only replica and a
        // reachable node holds a writable copy, runs the instance or has snapshots the replica
        // lacks, the mail is there: move it first (switchover).
        let a_copy = dataset_name(spec, active, inst.dataset.as_str())
            .and_then(|d| self.node(active).and_then(|o| o.dataset(&d)).cloned());
        if let Some(ad) = a_copy.as_ref().filter(|d| d.readonly != Some(true)) {
            // The active copy is writable: nobody else may be serving or ahead of it. A copy
            // merely left writable elsewhere is made read-only below.
            let have: BTreeSet<u64> = ad.snapshots.iter().map(|s| s.guid).collect();
            // Nodes recorded for resync after a failover are expected to be ahead: their
            // writes are preserved, then they are rolled back (see `resync`).
            let marks = resync_marks(Some(ad));
            let live: Vec<String> = spec
                .spec
                .nodes
                .keys()
                .filter(|n| *n != active && self.reachable(n))
                .filter(|n| !marks.contains_key(n.as_str()))
                .filter(|n| {
                    let Some(o) = self.node(n) else { return false };
                    dataset_name(spec, n, inst.dataset.as_str())
                        .and_then(|d| o.dataset(&d))
                        .is_some_and(|od| od.snapshots.iter().any(|s| !have.contains(&s.guid)))
                })
                .map(|n| n.to_string())
                .collect();
            if !live.is_empty() {
                let mut nodes = vec![active.to_string()];
                nodes.extend(live);
                self.plan.block(Blocked::SeveralLiveCopies {
                    instance: name.into(),
                    nodes,
                });
                return;
            }
        }
        if let Some(ad) = a_copy.as_ref().filter(|d| d.readonly == Some(true)) {
            let holders: Vec<NodeName> = spec
                .spec
                .nodes
                .keys()
                .filter(|n| *n != active && self.reachable(n))
                .filter(|n| {
                    let Some(o) = self.node(n) else { return false };
                    let running = o
                        .instances
                        .get(name)
                        .is_some_and(|s| s.state == RunState::Running);
                    let Some(od) =
                        dataset_name(spec, n, inst.dataset.as_str()).and_then(|d| o.dataset(&d))
                    else {
                        return running;
                    };
                    let have: BTreeSet<u64> = ad.snapshots.iter().map(|s| s.guid).collect();
                    let ahead = od.snapshots.iter().any(|s| !have.contains(&s.guid));
                    running || od.readonly == Some(false) || ahead
                })
                .cloned()
                .collect();
            match holders.as_slice() {
                [] => {}
                [old] => {
                    if self.switchover(active, old, name, inst, ad) {
                        self.moving.insert(name.to_owned());
                    }
                    return;
                }
                many => {
                    self.plan.block(Blocked::SeveralLiveCopies {
                        instance: name.into(),
                        nodes: many.iter().map(|n| n.to_string()).collect(),
                    });
                    return;
                }
            }
        }

        // Every other node first: the instance must be stopped there before it can run here.
        for other in spec.spec.nodes.keys().filter(|n| *n != active) {
            let Some(ds) = dataset_name(spec, other, inst.dataset.as_str()) else {
                continue;
            };
            if !self.reachable(other) {
                if !self.is_fenced(other) {
                    // Only a problem when something would have to start here.
                    let running_here = self
                        .node(active)
                        .and_then(|o| o.instances.get(name))
                        .is_some_and(|s| s.state == RunState::Running);
                    if !running_here && spec.spec.fencing.is_some() {
                        // Fence it (the operator's command), then go on: a fenced node
                        // cannot serve.
                        fences.push(self.plan.add(Action::new(
                            Target::Controller,
                            ActionKind::Fence {
                                node: other.to_string(),
                            },
                            format!(
                                "{other} is unreachable ({}) and may still run {name}: it must be fenced before {name} starts on {active}",
                                self.why_unreachable(other)
                            ),
                        )));
                    } else if !running_here {
                        may_start = false;
                        let why = self.why_unreachable(other);
                        self.plan.block(Blocked::OtherNodeNotFenced {
                            instance: name.into(),
                            node: other.to_string(),
                            why,
                        });
                    } else {
                        self.plan.note(format!(
                            "{other} is unreachable: its copy of {name} is not checked this run"
                        ));
                    }
                }
                continue;
            }
            let Some(o) = self.node(other) else { continue };
            let host = Target::Node(other.to_string());
            let state = o.instances.get(name).map(|s| (s.state, s.detail.clone()));
            let mut stop = None;
            match state {
                Some((RunState::Running, _)) => {
                    let a = self.plan.add(Action::new(
                        host.clone(),
                        ActionKind::StopInstance {
                            instance: name.into(),
                        },
                        format!("{other} is not the active node: {name} must run on {active} only"),
                    ));
                    stops.push(a);
                    stop = Some(a);
                }
                Some((RunState::Unknown, detail)) => {
                    may_start = false;
                    self.plan.block(Blocked::InstanceStateUnknown {
                        instance: name.into(),
                        node: other.to_string(),
                        detail: detail.unwrap_or_else(|| "no detail".into()),
                    });
                }
                Some((RunState::Stopped, _)) | None => {}
            }
            if let Some(d) = o.dataset(&ds).cloned() {
                // Other copies go read-only before this one serves (never two writable).
                stops.extend(self.passive_copy(&host, other, &d, stop));
            }
        }

        // The active node.
        let Some(ds) = dataset_name(spec, active, inst.dataset.as_str()) else {
            return;
        };
        let Some(o) = self.node(active) else { return };
        if !o.errors.is_empty() && o.dataset(&ds).is_none() && !o.missing_datasets.contains(&ds) {
            self.plan.block(Blocked::ObservationIncomplete {
                node: active.to_string(),
                errors: o.errors.clone(),
            });
            return;
        }
        let host = Target::Node(active.to_string());
        let want: BTreeMap<String, String> = inst
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        let mut ready = Vec::new();
        match o.dataset(&ds).cloned() {
            None => {
                // Is the mail somewhere else? Then creating an empty dataset here is wrong.
                let holder = spec.spec.nodes.keys().find(|n| {
                    *n != active
                        && dataset_name(spec, n, inst.dataset.as_str())
                            .and_then(|d| self.node(n).and_then(|o| o.dataset(&d)))
                            .is_some()
                });
                if let Some(holder) = holder {
                    self.plan.block(Blocked::DataOnOtherNode {
                        instance: name.into(),
                        active: active.to_string(),
                        holder: holder.to_string(),
                        dataset: ds.clone(),
                    });
                    return;
                }
                ready.push(self.plan.add(Action::new(
                    host.clone(),
                    ActionKind::CreateDataset {
                        dataset: ds.clone(),
                        properties: want.clone(),
                    },
                    format!("{name} is active on {active} and has no dataset yet"),
                )));
            }
            Some(d) => {
                let drift: BTreeMap<String, String> = want
                    .iter()
                    .filter(|(k, v)| {
                        !property_matches(k, v, d.other_properties.get(*k).map(String::as_str))
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !drift.is_empty() {
                    let was: Vec<String> = drift
                        .keys()
                        .map(|k| {
                            format!(
                                "{k} is {}",
                                d.other_properties.get(k).map_or("unset", String::as_str)
                            )
                        })
                        .collect();
                    ready.push(self.plan.add(Action::new(
                        host.clone(),
                        ActionKind::SetProperties {
                            dataset: ds.clone(),
                            properties: drift,
                        },
                        format!("properties drifted from the spec ({})", was.join(", ")),
                    )));
                }
                let mut rw = None;
                if d.readonly != Some(false) && may_start {
                    // Promoting a replica while a node is out of sight: failover.
                    let pre = self.failover_steps(active, name, &d);
                    // Writable only once the instance is stopped everywhere else.
                    let a = self.plan.add(Action::new(
                        host.clone(),
                        ActionKind::SetReadonly {
                            dataset: ds.clone(),
                            readonly: false,
                        },
                        format!("{active} is the active node: its copy of {name} must be writable"),
                    ));
                    for s in stops.iter().chain(&fences).chain(&pre) {
                        self.plan.edge(*s, a);
                    }
                    ready.push(a);
                    rw = Some(a);
                }
                if d.mounted != Some(true) && may_start {
                    let a = self.plan.add(Action::new(
                        host.clone(),
                        ActionKind::Mount {
                            dataset: ds.clone(),
                        },
                        format!("{name} serves mail from {ds}"),
                    ));
                    if let Some(rw) = rw {
                        self.plan.edge(rw, a);
                    }
                    ready.push(a);
                }
            }
        }

        let running = o.instances.get(name).map(|s| (s.state, s.detail.clone()));
        match running {
            Some((RunState::Running, _)) => {}
            Some((RunState::Unknown, detail)) => {
                self.plan.block(Blocked::InstanceStateUnknown {
                    instance: name.into(),
                    node: active.to_string(),
                    detail: detail.unwrap_or_else(|| "no detail".into()),
                });
            }
            Some((RunState::Stopped, _)) | None => {
                if may_start {
                    let start = self.plan.add(Action::new(
                        host,
                        ActionKind::StartInstance {
                            instance: name.into(),
                        },
                        format!("{active} is the active node of {name}"),
                    ));
                    for r in ready.iter().chain(stops.iter()).chain(fences.iter()) {
                        self.plan.edge(*r, start);
                    }
                    if self.failing_over(active) && spec.spec.archive.is_some() {
                        let restore = self.plan.add(Action::new(
                            Target::Controller,
                            ActionKind::ArchRestore {
                                instance: name.into(),
                            },
                            format!(
                                "mail {name} received after the last replication is only in the archive: replay it into {active}"
                            ),
                        ));
                        self.plan.edge(start, restore);
                    }
                }
            }
        }
    }

    /// Phase 1 of resyncing a returning node: its writes since the common base are saved
    /// to a stream file on it, then it is rolled back to the base and receives the active's
    /// snapshots incrementally. Returns the replication step's id.
    #[allow(clippy::too_many_arguments)]
    fn resync(
        &mut self,
        active: &NodeName,
        other: &NodeName,
        name: &str,
        ds: &str,
        source: &[crate::observed::Snapshot],
        t: &Dataset,
        after_snapshot: &[graph::Id],
        marks: &BTreeMap<String, ResyncPhase>,
    ) -> Option<graph::Id> {
        let Some(base) = crate::replication::common_base(source, &t.snapshots).cloned() else {
            self.plan.block(Blocked::Replication {
                instance: name.into(),
                node: other.to_string(),
                conflict: crate::replication::Conflict::NoCommonSnapshot {
                    source_newest: source.last().cloned()?,
                    target_snapshots: t.snapshots.clone(),
                },
            });
            return None;
        };
        let to = source.last().cloned()?;
        let host = Target::Node(other.to_string());
        let stamp = crate::retention::snapshot_name("x", self.now);
        let stamp = stamp.trim_start_matches("x_");
        let preserve_snap = format!("spoolkeeper-preserve-{stamp}");
        let file = format!(
            "/var/db/spoolkeeper/preserved/{}@{}-to-{preserve_snap}.zstream",
            t.name.replace('/', "_"),
            base.name
        );
        let stop = self.plan.id_of(&format!("{other}:stop_instance:{name}"));
        let preserve = self.plan.add(Action::new(
            host.clone(),
            ActionKind::PreserveDelta {
                dataset: t.name.clone(),
                base: base.name.clone(),
                snapshot: preserve_snap.clone(),
                file: file.clone(),
            },
            format!(
                "{other} was active until the failover: whatever it wrote after @{} is kept in {file} on {other} before anything is rolled back",
                base.name
            ),
        ));
        if let Some(s) = stop {
            self.plan.edge(s, preserve);
        }
        let rollback = self.plan.add(Action::new(
            host,
            ActionKind::Rollback {
                dataset: t.name.clone(),
                snapshot: base.name.clone(),
                destroy_later: true,
            },
            format!(
                "{other} resumes as a replica from the common base @{} (no full resend)",
                base.name
            ),
        ));
        self.plan.edge(preserve, rollback);
        let action = self.replicate_action(
            name,
            active,
            ds,
            other,
            &t.name,
            Some(&base.name),
            &to.name,
            (None, false),
            format!(
                "replication {active} -> {other} resumes incrementally from @{}",
                base.name
            ),
        );
        let repl = self.plan.add(action);
        self.plan.edge(rollback, repl);
        for d in after_snapshot {
            self.plan.edge(*d, repl);
        }
        let mut next = marks.clone();
        next.insert(other.to_string(), ResyncPhase::Synced);
        let mark = self.plan.add(Action::new(
            Target::Node(active.to_string()),
            ActionKind::SetUserProperty {
                dataset: ds.to_string(),
                property: RESYNC_PROPERTY.into(),
                value: Some(encode_marks(&next)),
            },
            format!("{other}'s replica is resynced; its queued mail is handed over next"),
        ));
        self.plan.edge(repl, mark);
        Some(repl)
    }

    /// Phase 2: the returning node's queue hands its archive copies over, then they are
    /// replayed into the active node exactly once, then the resync record is cleared.
    fn resync_drain(
        &mut self,
        active: &NodeName,
        other: &NodeName,
        name: &str,
        ds: &str,
        marks: &BTreeMap<String, ResyncPhase>,
    ) {
        let spec: &'a Spec = self.spec;
        let archive_domain = spec
            .spec
            .archive
            .as_ref()
            .map(|a| a.address.archive_domain().to_ascii_lowercase());
        let pending_copies = self.node(other).and_then(|o| o.postfix.as_ref()).map(|p| {
            p.queue
                .iter()
                .filter(|e| {
                    e.recipients.iter().any(|r| {
                        archive_domain.as_ref().is_some_and(|ad| {
                            r.address.to_ascii_lowercase().ends_with(&format!("@{ad}"))
                        })
                    })
                })
                .count()
        });
        match pending_copies {
            Some(n) if n > 0 => {
                self.plan.add(Action::new(
                    Target::Node(other.to_string()),
                    ActionKind::FlushQueue,
                    format!("{n} archive copie(s) accepted by {other} before the failover are still in its queue: hand them to the archive host"),
                ));
                self.plan.note(format!(
                    "{name}: waiting for {other}'s queue to reach the archive before replaying it into {active}"
                ));
            }
            None => self.plan.note(format!(
                "{name}: {other}'s Postfix queue was not observed: its mail is replayed once it is"
            )),
            Some(_) => {
                let mut last = None;
                if spec.spec.archive.is_some() {
                    last = Some(self.plan.add(Action::new(
                        Target::Controller,
                        ActionKind::ArchRestore {
                            instance: name.into(),
                        },
                        format!("mail {other} accepted before it failed reached the archive: replay what {active} lacks"),
                    )));
                }
                let mut next = marks.clone();
                next.remove(other.as_str());
                let clear = self.plan.add(Action::new(
                    Target::Node(active.to_string()),
                    ActionKind::SetUserProperty {
                        dataset: ds.to_string(),
                        property: RESYNC_PROPERTY.into(),
                        value: (!next.is_empty()).then(|| encode_marks(&next)),
                    },
                    format!("{other} is resynced and its mail replayed"),
                ));
                if let Some(l) = last {
                    self.plan.edge(l, clear);
                }
            }
        }
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
            },
            reason,
        )
    }

    /// Is any other node out of sight (so promoting a replica is a failover)?
    fn failing_over(&self, active: &NodeName) -> bool {
        self.spec
            .spec
            .nodes
            .keys()
            .any(|n| n != active && !self.reachable(n))
    }

    /// Before a replica is made writable in a failover: record durably which nodes must be
    /// resynced, discard an interrupted receive, and roll back to the newest complete
    /// snapshot (a replica has nothing after it; nothing is destroyed).
    fn failover_steps(&mut self, active: &NodeName, name: &str, d: &Dataset) -> Vec<graph::Id> {
        if !self.failing_over(active) {
            return Vec::new();
        }
        let host = Target::Node(active.to_string());
        let lost: Vec<String> = self
            .spec
            .spec
            .nodes
            .keys()
            .filter(|n| *n != active && !self.reachable(n))
            .map(|n| n.to_string())
            .collect();
        let mut ids = Vec::new();
        let mark = self.plan.add(Action::new(
            host.clone(),
            ActionKind::SetUserProperty {
                dataset: d.name.clone(),
                property: RESYNC_PROPERTY.into(),
                value: Some(lost.join(",")),
            },
            format!(
                "{} may hold writes {active} never received: recorded on the dataset so that any controller resyncs them safely when they return",
                lost.join(", ")
            ),
        ));
        ids.push(mark);
        let mut last = mark;
        if d.receive_resume_token.is_some() {
            let a = self.plan.add(Action::new(
                host.clone(),
                ActionKind::AbortReceive {
                    dataset: d.name.clone(),
                },
                "an interrupted receive is discarded: the replica serves its newest complete snapshot".to_string(),
            ));
            self.plan.edge(last, a);
            ids.push(a);
            last = a;
        }
        if let Some(newest) = d.snapshots.last() {
            let a = self.plan.add(Action::new(
                host,
                ActionKind::Rollback {
                    dataset: d.name.clone(),
                    snapshot: newest.name.clone(),
                    destroy_later: false,
                },
                format!("{name} starts from the newest complete replicated snapshot"),
            ));
            self.plan.edge(last, a);
            ids.push(a);
        }
        ids
    }

    /// Planned move of an instance from `old` (reachable, holding the live copy) to the
    /// spec's active node: stop → final snapshot → incremental send → verify the guid → old
    /// copy read-only → new copy writable and mounted → start. Returns false when blocked.
    fn switchover(
        &mut self,
        active: &NodeName,
        old: &NodeName,
        name: &str,
        inst: &crate::spec::Instance,
        replica: &Dataset,
    ) -> bool {
        let spec: &'a Spec = self.spec;
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
            crate::replication::common_base(&src.snapshots, &replica.snapshots).cloned()
        else {
            self.plan.block(Blocked::Replication {
                instance: name.into(),
                node: active.to_string(),
                conflict: crate::replication::Conflict::NoCommonSnapshot {
                    source_newest: src.snapshots.last().cloned().unwrap_or(
                        crate::observed::Snapshot {
                            name: "-".into(),
                            guid: 0,
                            creation: self.now,
                            createtxg: None,
                            userrefs: 0,
                            used: 0,
                        },
                    ),
                    target_snapshots: replica.snapshots.clone(),
                },
            });
            return false;
        };
        // The replica must not have moved on by itself.
        let have: BTreeSet<u64> = src.snapshots.iter().map(|s| s.guid).collect();
        let replica_only: Vec<crate::observed::Snapshot> = replica
            .snapshots
            .iter()
            .filter(|s| !have.contains(&s.guid))
            .cloned()
            .collect();
        if !replica_only.is_empty() {
            self.plan.block(Blocked::Replication {
                instance: name.into(),
                node: active.to_string(),
                conflict: crate::replication::Conflict::Diverged {
                    base,
                    target_only: replica_only,
                },
            });
            return false;
        }
        let prefix = spec.spec.snapshots.prefix.as_str();
        let from = Target::Node(old.to_string());
        let to_host = Target::Node(active.to_string());
        let mut last: Option<graph::Id> = None;
        let chain = |p: &mut Plan, last: &mut Option<graph::Id>, id: graph::Id| {
            if let Some(l) = *last {
                p.edge(l, id);
            }
            *last = Some(id);
        };
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
        let final_name = crate::retention::snapshot_name(prefix, self.now);
        let snap = self.plan.add(Action::new(
            from.clone(),
            ActionKind::Snapshot {
                dataset: src_name.clone(),
                name: final_name.clone(),
                backlog: crate::archive::backlog_of(
                    o.postfix.as_ref().map(|p| p.queue.as_slice()),
                    &inst.domains,
                ),
            },
            format!("final snapshot of {name} on {old}: everything it accepted is in it"),
        ));
        chain(&mut self.plan, &mut last, snap);
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
        let ro = self.plan.add(Action::new(
            from,
            ActionKind::SetReadonly {
                dataset: src_name.clone(),
                readonly: true,
            },
            format!(
                "{old} becomes passive: its copy must be read-only (never two writable copies)"
            ),
        ));
        chain(&mut self.plan, &mut last, ro);
        let rw = self.plan.add(Action::new(
            to_host.clone(),
            ActionKind::SetReadonly {
                dataset: replica.name.clone(),
                readonly: false,
            },
            format!("{active} is the active node: its copy of {name} must be writable"),
        ));
        chain(&mut self.plan, &mut last, rw);
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
        true
    }

    /// A non-active node's copy: read-only and unmounted, after the instance stopped there.
    fn passive_copy(
        &mut self,
        host: &Target,
        node: &NodeName,
        d: &Dataset,
        stop: Option<graph::Id>,
    ) -> Vec<graph::Id> {
        let mut ids = Vec::new();
        let mut last = stop;
        if d.mounted == Some(true) {
            let a = self.plan.add(Action::new(
                host.clone(),
                ActionKind::Unmount {
                    dataset: d.name.clone(),
                },
                format!("{node} is passive: its replica stays unmounted"),
            ));
            if let Some(s) = last {
                self.plan.edge(s, a);
            }
            last = Some(a);
            ids.push(a);
        }
        if d.readonly != Some(true) {
            let a = self.plan.add(Action::new(
                host.clone(),
                ActionKind::SetReadonly {
                    dataset: d.name.clone(),
                    readonly: true,
                },
                format!(
                    "{node} is passive: its replica must be read-only (never two writable copies)"
                ),
            ));
            if let Some(s) = last {
                self.plan.edge(s, a);
            }
            ids.push(a);
        }
        ids
    }
}

/// The argv lists one action runs, in order, and where. The same function feeds the
/// renderers (`plan` shows these commands) and the executor, so the plan is the truth.
pub fn commands(spec: &Spec, a: &Action) -> Result<Vec<Vec<String>>, String> {
    let node = match (&a.host, &a.kind) {
        (Target::Node(n), _) => n.as_str(),
        (Target::Controller, _) => "",
        (Target::Archive, _) => "",
    };
    let runtime = |instance: &str| {
        spec.spec
            .instances
            .iter()
            .find(|(n, _)| n.as_str() == instance)
            .map(|(_, i)| &i.runtime)
            .ok_or_else(|| format!("instance {instance} is not in the spec"))
    };
    Ok(match &a.kind {
        ActionKind::CreateDataset {
            dataset,
            properties,
        } => vec![zfs::create_argv(dataset, properties)],
        ActionKind::SetProperties {
            dataset,
            properties,
        } => properties
            .iter()
            .map(|(k, v)| zfs::set_argv(dataset, k, v))
            .collect(),
        ActionKind::SetReadonly { dataset, readonly } => vec![zfs::set_argv(
            dataset,
            "readonly",
            if *readonly { "on" } else { "off" },
        )],
        ActionKind::Mount { dataset } => vec![zfs::mount_argv(dataset)],
        ActionKind::Unmount { dataset } => vec![zfs::unmount_argv(dataset)],
        ActionKind::StartInstance { instance } => {
            vec![
                jail::runtime_argv(runtime(instance)?, RuntimeVerb::Start, instance, node)
                    .ok_or("no start command")?,
            ]
        }
        ActionKind::StopInstance { instance } => {
            vec![
                jail::runtime_argv(runtime(instance)?, RuntimeVerb::Stop, instance, node)
                    .ok_or("no stop command")?,
            ]
        }
        ActionKind::Snapshot { dataset, name, .. } => vec![zfs::snapshot_argv(dataset, name)],
        ActionKind::WriteFile { path, .. } => vec![vec![
            "sh".into(),
            "-c".into(),
            "umask 022 && cat > \"$1.sk-new\" && mv \"$1.sk-new\" \"$1\"".into(),
            "sh".into(),
            path.clone(),
        ]],
        ActionKind::Postconf { settings, reload } => {
            let mut v = Vec::new();
            if !settings.is_empty() {
                let mut argv: Vec<String> = vec!["postconf".into(), "-e".into()];
                argv.extend(settings.iter().map(|(k, val)| format!("{k}={val}")));
                v.push(argv);
            }
            if *reload {
                v.push(vec!["postfix".into(), "reload".into()]);
            }
            v
        }
        ActionKind::PurgeArchive { .. } => vec![crate::postfix_cmd::postsuper_delete_argv()],
        ActionKind::Fence { node: fenced } => {
            let f = spec
                .spec
                .fencing
                .as_ref()
                .ok_or("no fencing command in the spec")?;
            let host = spec
                .spec
                .nodes
                .iter()
                .find(|(n, _)| n.as_str() == fenced)
                .map(|(_, n)| n.ssh.host.clone())
                .unwrap_or_default();
            vec![
                f.command
                    .iter()
                    .map(|a| a.replace("{node}", fenced).replace("{host}", &host))
                    .collect(),
            ]
        }
        ActionKind::VerifyGuid {
            source_dataset,
            target_dataset,
            snapshot,
            ..
        } => vec![
            zfs::guid_argv(source_dataset, snapshot),
            zfs::guid_argv(target_dataset, snapshot),
        ],
        ActionKind::Rollback {
            dataset,
            snapshot,
            destroy_later,
        } => vec![zfs::rollback_argv(dataset, snapshot, *destroy_later)],
        ActionKind::AbortReceive { dataset } => vec![zfs::abort_receive_argv(dataset)],
        ActionKind::SetUserProperty {
            dataset,
            property,
            value,
        } => vec![match value {
            Some(v) => zfs::set_argv(dataset, property, v),
            None => zfs::inherit_argv(dataset, property),
        }],
        ActionKind::PreserveDelta {
            dataset,
            base,
            snapshot,
            file,
        } => vec![
            zfs::snapshot_argv(dataset, snapshot),
            zfs::send_to_file_argv(dataset, base, snapshot, file),
        ],
        ActionKind::ArchRestore { .. } | ActionKind::ForgetFence { .. } => Vec::new(),
        ActionKind::FlushQueue => vec![vec!["postqueue".into(), "-f".into()]],
        ActionKind::Hold { dataset, snapshot } => vec![zfs::hold_argv(dataset, snapshot)],
        ActionKind::Release { dataset, snapshot } => vec![zfs::release_argv(dataset, snapshot)],
        ActionKind::DestroySnapshots {
            dataset,
            snapshots,
            batch,
        } => {
            if *batch {
                zfs::destroy_argvs(dataset, snapshots, true)?
            } else {
                // the names go on stdin (`stdin_of`): one round trip for the whole list
                vec![zfs::destroy_each_argv()]
            }
        }
        ActionKind::Replicate {
            source_dataset,
            target,
            target_pool,
            base,
            to,
            relay,
            resume_token,
            resumable,
            ..
        } => {
            let send = zfs::send_argv(source_dataset, base.as_deref(), to, resume_token.as_deref());
            let recv = zfs::receive_argv(target_pool, *resumable);
            if *relay {
                // Run by the controller: send on the source, receive on the target.
                vec![send, recv]
            } else {
                let t = spec
                    .spec
                    .nodes
                    .iter()
                    .find(|(n, _)| n.as_str() == target)
                    .map(|(_, n)| &n.ssh)
                    .ok_or_else(|| format!("target node {target} is not in the spec"))?;
                let dt = zfs::DirectTarget {
                    host: t.host.clone(),
                    user: t.user.clone(),
                    port: t.port,
                    known_hosts: t.known_hosts.as_ref().map(|p| p.display().to_string()),
                    identity: t.identity.as_ref().map(|p| p.display().to_string()),
                };
                vec![zfs::direct_pipeline_argv(
                    &send,
                    &zfs::direct_ssh_argv(&dt, &recv),
                )]
            }
        }
    })
}

/// The bytes fed to the (single) command of an action on its stdin, for the actions that
/// take one: a file's content, the queue ids to delete, the snapshots to destroy one by one.
pub fn stdin_of(a: &Action) -> Result<Option<Vec<u8>>, String> {
    Ok(match &a.kind {
        ActionKind::WriteFile { content, .. } => Some(content.as_bytes().to_vec()),
        ActionKind::PurgeArchive { queue_ids, .. } => Some(
            crate::postfix_cmd::postsuper_stdin(queue_ids.iter().map(String::as_str))
                .map_err(|e| e.to_string())?,
        ),
        ActionKind::DestroySnapshots {
            dataset,
            snapshots,
            batch: false,
        } => Some(zfs::destroy_each_stdin(dataset, snapshots)?),
        _ => None,
    })
}

/// Plans serialised for `plan --out` and read back by `apply --plan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format_version: u32,
    pub cluster: String,
    pub fingerprint: String,
    pub actions: Vec<render::JsonAction>,
    pub blocked: Vec<render::JsonBlocked>,
}
#[cfg(test)]
mod tests;
