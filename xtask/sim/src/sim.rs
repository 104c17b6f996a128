//! One simulated run: a random spec, a model cluster bootstrapped by the real planner, then
//! `steps` events chosen by the seed (mail, deliveries, clocks, faults, operator edits,
//! applies whose interleaving and interruptions the seed also chooses), the guarantees
//! checked after every step, and finally every fault healed and convergence demanded.

use std::collections::{BTreeMap, HashMap};

use jiff::{SignedDuration, Timestamp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spoolkeeper::apply::walk::{Id, Walk};
use spoolkeeper::apply::{Limits, Outcome};
use spoolkeeper::plan::{self, Action, ActionKind, Plan, Target};
use spoolkeeper::spec::Spec;
use spoolkeeper::state::journal::{self, Phase, Record};

use crate::arch::{self, Ledger};
use crate::check;
use crate::exec::{self, Violations};
use crate::scenario::Params;
use crate::world::{Flavour, Upstream, World};

/// Counters of one run or of many.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub seeds: u64,
    pub steps: u64,
    pub applies: u64,
    pub actions: u64,
    pub actions_failed: u64,
    pub blocked_applies: u64,
    pub checks: u64,
    pub accepted: u64,
    pub faults: BTreeMap<&'static str, u64>,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.steps += o.steps;
        self.applies += o.applies;
        self.actions += o.actions;
        self.actions_failed += o.actions_failed;
        self.blocked_applies += o.blocked_applies;
        self.checks += o.checks;
        self.accepted += o.accepted;
        for (k, v) in &o.faults {
            *self.faults.entry(k).or_default() += v;
        }
    }
}

/// A broken guarantee, with what is needed to replay it.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub step: usize,
    pub message: String,
    pub scenario: String,
    pub trace: Vec<String>,
    /// What ran before it broke.
    pub stats: Stats,
}

enum ApplyEnd {
    Converged,
    Blocked(Vec<String>),
    Ran,
    Killed,
}

struct Running {
    /// Outcome forced by a fault while it ran (the effect may or may not have happened).
    forced: Option<String>,
}

pub struct Sim {
    rng: ChaCha8Rng,
    seed: u64,
    params: Params,
    active: String,
    fenced: Vec<String>,
    spec: Spec,
    w: World,
    journal: Vec<Record>,
    ledger: Ledger,
    runs: u64,
    txg: u64,
    stats: Stats,
    trace: Vec<String>,
    step: usize,
    verbose: bool,
    violations: Violations,
}

type R<T> = Result<T, String>;

impl Sim {
    pub fn new(seed: u64, verbose: bool) -> R<Sim> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let params = Params::random(&mut rng);
        let active = params.nodes[0].0.clone();
        let spec = params.spec(&active, &[])?;
        let margin_ms = (params.margin * 1000) as i64;
        let mut skews = BTreeMap::new();
        let mut flavours = BTreeMap::new();
        for (n, _) in &params.nodes {
            // mostly well inside the margin; sometimes beyond half of it
            let limit = if rng.random_bool(0.9) {
                margin_ms / 8
            } else {
                margin_ms
            };
            skews.insert(n.clone(), rng.random_range(-limit..=limit));
            flavours.insert(
                n.clone(),
                if rng.random_bool(0.5) {
                    Flavour::ZfsFuse
                } else {
                    Flavour::OpenZfs
                },
            );
        }
        let archive_skew = rng.random_range(-(margin_ms / 8)..=margin_ms / 8);
        let start: Timestamp = "2026-11-30T08:00:00Z".parse().map_err(|e| format!("{e}"))?;
        let w = World::new(&spec, start, &skews, &flavours, archive_skew);
        Ok(Sim {
            rng,
            seed,
            params,
            active,
            fenced: Vec::new(),
            spec,
            w,
            journal: Vec::new(),
            ledger: Ledger::new(),
            runs: 0,
            txg: 1,
            stats: Stats {
                seeds: 1,
                ..Stats::default()
            },
            trace: Vec::new(),
            step: 0,
            verbose,
            violations: Violations::default(),
        })
    }

    fn log(&mut self, s: String) {
        let s = match std::env::var("SK_SIM_TRACK") {
            Ok(mid) if !mid.is_empty() => {
                format!(
                    "{s}    [{mid}: {}]",
                    check::whereabouts(&self.w, &self.spec, &mid)
                )
            }
            _ => s,
        };
        if self.verbose {
            eprintln!("[{} {}] {s}", self.step, self.w.now);
        }
        self.trace
            .push(format!("[{} {}] {s}", self.step, self.w.now));
        if self.trace.len() > 400 {
            self.trace.drain(..100);
        }
    }

    fn fail(&self, message: String) -> Failure {
        Failure {
            seed: self.seed,
            step: self.step,
            message,
            scenario: format!(
                "{}; skews {:?}, archive {} ms; flavours {:?}",
                self.params.describe(),
                self.w
                    .nodes
                    .values()
                    .map(|n| (n.name.clone(), n.skew_ms))
                    .collect::<Vec<_>>(),
                self.w.archive.skew_ms,
                self.w
                    .nodes
                    .values()
                    .map(|n| (n.name.clone(), n.flavour))
                    .collect::<Vec<_>>()
            ),
            trace: self.trace.clone(),
            stats: self.stats.clone(),
        }
    }

    fn respec(&mut self) -> R<()> {
        self.spec = self.params.spec(&self.active, &self.fenced)?;
        Ok(())
    }

    fn fault(&mut self, kind: &'static str) {
        *self.stats.faults.entry(kind).or_default() += 1;
    }

    /// Every guarantee that holds at every moment.
    fn check(&mut self) -> R<()> {
        self.stats.checks += 1;
        if let Some(v) = self.violations.0.first() {
            return Err(v.clone());
        }
        check::one_server(&self.w, &self.spec)?;
        check::nothing_lost(&self.w, &self.spec)?;
        check::no_duplicate(&self.w)?;
        Ok(())
    }

    /// The observation a plan is made from: a fenced node it sees back is no longer counted
    /// as held down by the fence (spoolkeeper now knows it is up and plans for it).
    fn observe_for_plan(&mut self) -> spoolkeeper::model::Observation {
        let seen: Vec<String> = self
            .w
            .nodes
            .values()
            .filter(|n| n.reachable())
            .map(|n| n.name.clone())
            .collect();
        for n in seen {
            self.w.fenced.remove(&n);
        }
        self.observe()
    }

    /// An observation inside an action (the replay's): nothing is re-planned from it, so a
    /// fenced node powered back meanwhile stays the operator's breach of the fence.
    fn observe(&mut self) -> spoolkeeper::model::Observation {
        let margin_ms = (self.params.margin * 1000) as i64;
        let unc = if self.rng.random_bool(0.95) {
            self.rng.random_range(1..=20)
        } else {
            self.rng.random_range(1..=margin_ms.max(2))
        };
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        self.w
            .observe(&self.spec, move |u| rng.random_range(-u..=u), unc)
    }

    // ---------------------------------------------------------------------------------
    // the world's own events
    // ---------------------------------------------------------------------------------

    fn new_mail(&mut self) {
        let n = self.rng.random_range(1..=4);
        for _ in 0..n {
            let i = self.rng.random_range(0..self.params.instances.len());
            let (inst, _, domain) = self.params.instances[i].clone();
            let user = format!("u{}@{domain}", self.rng.random_range(1..=3));
            let mid = self.w.message_id();
            self.w.upstream.push(Upstream {
                key: (mid, user),
                instance: inst,
                sender: "sender@upstream.example".into(),
            });
        }
        self.upstream();
    }

    /// Upstream retries what it holds; accepted messages are logged.
    fn upstream(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.random());
        let before = self.w.accepted.len();
        let got = self
            .w
            .upstream_try(&self.spec, &mut |n| rng.random_range(0..n));
        self.stats.accepted += got as u64;
        if got > 0 {
            let list: Vec<String> = self.w.accepted[before..]
                .iter()
                .map(|a| format!("{}->{}", a.key.0, a.node))
                .collect();
            self.log(format!("accepted {}", list.join(" ")));
        }
    }

    fn deliver_some(&mut self) {
        let nodes: Vec<String> = self.w.nodes.keys().cloned().collect();
        let n = nodes[self.rng.random_range(0..nodes.len())].clone();
        let local = self.rng.random_bool(0.8);
        let relay = self.rng.random_bool(0.8);
        self.w.deliver(&self.spec, &n, local, relay);
    }

    fn advance(&mut self) {
        let secs = match self.rng.random_range(0..10) {
            0..=5 => self.rng.random_range(1..=self.params.snap_every.max(2)),
            6..=8 => self.rng.random_range(1..=30),
            _ => self
                .rng
                .random_range(1..=(2 * self.params.repl_every).max(2)),
        };
        self.w.now = self
            .w
            .now
            .checked_add(SignedDuration::from_secs(secs as i64))
            .unwrap_or(self.w.now);
    }

    fn world_event(&mut self, running: &mut HashMap<Id, Running>, plan: Option<&Plan>) -> R<()> {
        match self.rng.random_range(0..100) {
            0..=29 => self.new_mail(),
            30..=59 => self.deliver_some(),
            60..=79 => self.advance(),
            80..=89 => self.upstream(),
            _ => self.host_fault(running, plan)?,
        }
        Ok(())
    }

    fn hosts_of(a: &Action) -> Vec<String> {
        let mut h = Vec::new();
        match &a.host {
            Target::Node(n) => h.push(n.clone()),
            Target::Archive => h.push("archive".into()),
            Target::Controller => {}
        }
        match &a.kind {
            ActionKind::Replicate { source, target, .. }
            | ActionKind::VerifyGuid { source, target, .. } => {
                h.push(source.clone());
                h.push(target.clone());
            }
            ActionKind::ArchRestore { node, .. } => {
                h.push("archive".into());
                h.extend(node.clone());
            }
            _ => {}
        }
        h
    }

    /// A host fault while actions run: each action on that host either took effect just
    /// before it (its reply lost) or did not; either way it reports a failure.
    fn interrupt(&mut self, host: &str, running: &mut HashMap<Id, Running>, plan: Option<&Plan>) {
        let Some(plan) = plan else { return };
        let mut ids: Vec<Id> = running.keys().copied().collect();
        ids.sort();
        for id in ids {
            let a = &plan.graph[id];
            let active_host =
                matches!(a.kind, ActionKind::ArchRestore { .. }) && host == self.active;
            if !Self::hosts_of(a).iter().any(|h| h == host) && !active_host {
                continue;
            }
            let Some(r) = running.get_mut(&id) else {
                continue;
            };
            if r.forced.is_some() {
                continue;
            }
            if !matches!(a.kind, ActionKind::ArchRestore { .. }) && self.rng.random_bool(0.5) {
                let _ = exec::run(
                    &mut self.w,
                    &self.spec,
                    a,
                    &mut self.txg,
                    &mut self.violations,
                );
            } else {
                exec::interrupt_replication(&mut self.w, a);
            }
            r.forced = Some(format!("{host}: connection lost while it ran"));
            self.log(format!("  {} interrupted by a fault on {host}", a.id));
        }
    }

    fn host_fault(&mut self, running: &mut HashMap<Id, Running>, plan: Option<&Plan>) -> R<()> {
        let mut hosts: Vec<String> = self.w.nodes.keys().cloned().collect();
        hosts.push("archive".into());
        let h = hosts[self.rng.random_range(0..hosts.len())].clone();
        let kind = self.rng.random_range(0..4);
        if h == "archive" {
            match kind {
                0 if self.w.archive.up => {
                    self.fault("power loss");
                    self.log("archive: power loss".into());
                    self.interrupt("archive", running, plan);
                    self.w.archive.up = false;
                }
                1 if self.w.archive.link => {
                    self.fault("link cut");
                    self.log("archive: link cut".into());
                    self.interrupt("archive", running, plan);
                    self.w.archive.link = false;
                }
                _ => {
                    self.w.archive.up = true;
                    self.w.archive.link = true;
                }
            }
            return Ok(());
        }
        let (up, link) = {
            let n = &self.w.nodes[&h];
            (n.up, n.link)
        };
        match kind {
            0 if up => {
                self.fault("power loss");
                self.log(format!("{h}: power loss"));
                self.interrupt(&h, running, plan);
                if let Some(n) = self.w.nodes.get_mut(&h) {
                    n.up = false;
                    n.running.clear();
                }
            }
            1 if link => {
                self.fault("link cut");
                self.log(format!("{h}: link cut"));
                self.interrupt(&h, running, plan);
                if let Some(n) = self.w.nodes.get_mut(&h) {
                    n.link = false;
                }
            }
            2 if !up => self.boot(&h)?,
            _ if !link => {
                self.log(format!("{h}: link healed"));
                if let Some(n) = self.w.nodes.get_mut(&h) {
                    n.link = true;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Power back: daemons restart, the pool is imported (every dataset mounted), no
    /// instance starts; the operator stops attesting that the node is down.
    fn boot(&mut self, h: &str) -> R<()> {
        self.log(format!("{h}: boot"));
        if let Some(n) = self.w.nodes.get_mut(h) {
            // a machine powered back on is back on its network (a later cut is its own fault)
            n.up = true;
            n.link = true;
            n.running.clear();
            for c in n.copies.values_mut() {
                c.mounted = true;
            }
        }
        if self.fenced.iter().any(|f| f == h) {
            self.fenced.retain(|f| f != h);
            self.respec()?;
        }
        Ok(())
    }

    /// The operator: fails over when the active node is out of sight, switches over now and
    /// then, takes a manual snapshot, and brings powered-off nodes back.
    fn operator(&mut self) -> R<()> {
        let active_ok = self.w.nodes[&self.active].reachable();
        let candidates: Vec<String> = self
            .w
            .nodes
            .values()
            .filter(|n| n.name != self.active && n.reachable())
            .filter(|n| {
                self.spec
                    .spec
                    .instances
                    .keys()
                    .all(|i| self.w.copy_of(&self.spec, &n.name, i.as_str()).is_some())
            })
            .map(|n| n.name.clone())
            .collect();
        match self.rng.random_range(0..10) {
            0..=4 if !active_ok && !candidates.is_empty() => {
                let to = candidates[self.rng.random_range(0..candidates.len())].clone();
                let old = self.active.clone();
                let replica_only = self.spec.spec.instances.keys().all(|i| {
                    self.w
                        .copy_of(&self.spec, &to, i.as_str())
                        .is_some_and(|c| c.readonly)
                });
                if replica_only && self.rng.random_bool(0.2) {
                    // the old runbook: `onestart` the instances on the replica by hand
                    self.fault("manual start on the replica");
                    self.log(format!(
                        "operator: starts the instances on {to}'s replica by hand"
                    ));
                    let insts: Vec<String> = self
                        .spec
                        .spec
                        .instances
                        .keys()
                        .map(|i| i.to_string())
                        .collect();
                    for i in insts {
                        let ds = World::dataset_of(&self.spec, &to, &i).unwrap_or_default();
                        if let Some(n) = self.w.nodes.get_mut(&to) {
                            if let Some(c) = n.copies.get_mut(&ds) {
                                c.mounted = true;
                            }
                            n.running.insert(i);
                        }
                    }
                }
                let old_up = self.w.nodes[&old].up;
                if !self.params.fencing {
                    if old_up && self.rng.random_bool(0.6) {
                        // powered off by hand (BMC), then attested
                        self.fault("manual power off");
                        if let Some(n) = self.w.nodes.get_mut(&old) {
                            n.up = false;
                            n.running.clear();
                        }
                        self.fenced.push(old.clone());
                    } else if !old_up && self.rng.random_bool(0.8) {
                        self.fenced.push(old.clone());
                    }
                }
                self.fault("failover edit");
                self.log(format!(
                    "operator: active {old} -> {to} (fenced: {:?})",
                    self.fenced
                ));
                self.active = to;
                self.fenced.retain(|f| f != &self.active);
                self.respec()?;
            }
            5 if active_ok
                && !candidates.is_empty()
                && self.w.nodes.values().all(|n| n.reachable()) =>
            {
                let to = candidates[self.rng.random_range(0..candidates.len())].clone();
                self.fault("switchover edit");
                self.log(format!("operator: switchover {} -> {to}", self.active));
                self.active = to;
                self.respec()?;
            }
            6 => {
                let down: Vec<String> = self
                    .w
                    .nodes
                    .values()
                    .filter(|n| !n.up)
                    .map(|n| n.name.clone())
                    .collect();
                if let Some(h) = down.first().cloned() {
                    self.boot(&h)?;
                }
            }
            7 if active_ok => {
                // an operator's own snapshot: never spoolkeeper's to destroy
                let insts: Vec<String> = self
                    .spec
                    .spec
                    .instances
                    .keys()
                    .map(|i| i.to_string())
                    .collect();
                let i = insts[self.rng.random_range(0..insts.len())].clone();
                let ds = World::dataset_of(&self.spec, &self.active, &i).unwrap_or_default();
                let guid = self.w.guid();
                let creation = self.w.node_clock(&self.active);
                self.txg += 1;
                let name = format!("manual-{}", self.txg);
                let txg = self.txg;
                if let Some(c) = self
                    .w
                    .nodes
                    .get_mut(&self.active)
                    .and_then(|n| n.copies.get_mut(&ds))
                    && c.writable()
                {
                    c.snaps.push(crate::world::Snap {
                        name,
                        guid,
                        creation,
                        txg,
                        holds: Default::default(),
                        content: std::sync::Arc::new(c.live.clone()),
                    });
                    c.modified = false;
                    self.fault("manual snapshot");
                }
            }
            8 => {
                // a `restore` or `drill` clones a snapshot on a reachable node (a passive,
                // mostly): the snapshot cannot be destroyed nor rolled back over meanwhile
                let mut choices: Vec<(String, String, String)> = Vec::new();
                for n in self.w.nodes.values().filter(|n| n.reachable()) {
                    for (ds, c) in &n.copies {
                        for sn in &c.snaps {
                            choices.push((n.name.clone(), ds.clone(), sn.name.clone()));
                        }
                    }
                }
                if !choices.is_empty() {
                    let (node, ds, snap) = choices[self.rng.random_range(0..choices.len())].clone();
                    let purpose = if self.rng.random_bool(0.5) {
                        "drill"
                    } else {
                        "restore"
                    };
                    self.txg += 1;
                    let prefix = self.spec.spec.snapshots.prefix.to_string();
                    let name = format!("{ds}_{prefix}_{purpose}_{}", self.txg);
                    self.log(format!("a {purpose} clones {node}:{ds}@{snap} as {name}"));
                    let since = self.w.now;
                    if let Some(n) = self.w.nodes.get_mut(&node) {
                        n.scratch.push(crate::world::Scratch {
                            name,
                            purpose,
                            since,
                            dataset: ds,
                            snapshot: snap,
                        });
                    }
                    self.fault("scratch clone");
                }
            }
            9 => {
                // a restore or drill run ends and destroys its clone (one whose run died
                // stays until an apply finds it stale)
                let mut all: Vec<(String, String)> = Vec::new();
                for n in self.w.nodes.values().filter(|n| n.reachable()) {
                    for c in &n.scratch {
                        all.push((n.name.clone(), c.name.clone()));
                    }
                }
                if !all.is_empty() && self.rng.random_bool(0.7) {
                    let (node, name) = all[self.rng.random_range(0..all.len())].clone();
                    if let Some(n) = self.w.nodes.get_mut(&node) {
                        n.scratch.retain(|c| c.name != name);
                    }
                    self.fault("scratch run ends");
                }
            }
            _ => {}
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------
    // apply: the real planner and the real walk
    // ---------------------------------------------------------------------------------

    fn record(&mut self, run: &str, a: &Action, phase: Phase, detail: Option<String>) {
        self.journal.push(Record {
            at: self.w.now,
            run: run.to_owned(),
            action: a.id.clone(),
            phase,
            detail,
            done: (phase == Phase::Done).then(|| a.clone()),
        });
    }

    fn run_action(&mut self, spec: &Spec, a: &Action) -> R<()> {
        if let ActionKind::ArchRestore { instance, .. } = &a.kind {
            let obs = self.observe();
            let ctx = journal::context(&self.journal);
            return arch::run(
                &mut self.w,
                spec,
                &obs,
                instance,
                arch::target_of(&a.kind),
                &ctx,
                &mut self.ledger,
                None,
                false,
            )
            .map(|_| ());
        }
        exec::run(&mut self.w, spec, a, &mut self.txg, &mut self.violations)
    }

    /// The controller's scheduler sleeps until `next_wake`: on a converged observation, the
    /// plan must stay empty at every instant before it (else a due would be slept through).
    fn schedule_never_late(
        &mut self,
        spec: &Spec,
        obs: &spoolkeeper::model::Observation,
        ctx: &spoolkeeper::plan::Context,
    ) -> R<()> {
        use spoolkeeper::decide::schedule::next_wake;
        self.stats.checks += 1;
        let now = self.w.now;
        // a long resync, so that the analytic dues decide the wake, not the cap
        let wake = next_wake(spec, obs, now, std::time::Duration::from_secs(14 * 86_400));
        let span = wake.at.duration_since(now);
        if span <= jiff::SignedDuration::ZERO {
            return Ok(());
        }
        let mut probes = vec![wake.at - jiff::SignedDuration::from_secs(1)];
        // its own stream: the probes do not change the seed's trajectory
        let mut probe_rng = ChaCha8Rng::seed_from_u64(self.runs);
        for _ in 0..2 {
            let ns = probe_rng.random_range(0..span.as_nanos().max(1)) as i64;
            probes.push(now + jiff::SignedDuration::from_nanos(ns));
        }
        for t in probes.into_iter().filter(|t| *t >= now && *t < wake.at) {
            let p = plan::plan(spec, obs, t, ctx);
            if p.graph.node_count() > 0 {
                return Err(format!(
                    "schedule_never_late: the scheduler sleeps until {} ({}), but at {t} the plan has {}",
                    wake.at,
                    wake.due,
                    p.actions()
                        .iter()
                        .map(|a| a.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        Ok(())
    }

    fn apply(&mut self, faulty: bool) -> R<ApplyEnd> {
        self.stats.applies += 1;
        self.runs += 1;
        let run = format!("sim-{}", self.runs);
        let obs = self.observe_for_plan();
        let mut ctx = journal::context(&self.journal);
        // as `apply` does: fences seen back are journaled before planning
        for a in journal::fences_seen_back(&ctx, &obs) {
            self.record(&run, &a, Phase::Done, None);
            ctx.learn(&a);
        }
        let spec = self.spec.clone();
        let plan = plan::plan(&spec, &obs, self.w.now, &ctx);
        if let Some(b) = plan
            .blocked
            .iter()
            .find(|b| matches!(b, spoolkeeper::plan::Blocked::Invariant { .. }))
        {
            return Err(format!("{b}"));
        }
        if plan.is_blocked() {
            self.stats.blocked_applies += 1;
            let why: Vec<String> = plan.blocked.iter().map(|b| b.to_string()).collect();
            self.log(format!("apply {run}: blocked: {}", why.join("; ")));
            return Ok(ApplyEnd::Blocked(why));
        }
        if plan.graph.node_count() == 0 {
            self.schedule_never_late(&spec, &obs, &ctx)?;
            return Ok(ApplyEnd::Converged);
        }
        let limits = Limits {
            global: self.rng.random_range(1..=4),
            per_host: self.rng.random_range(1..=2),
        };
        let mut walk = Walk::new(&plan, limits).map_err(|e| e.to_string())?;
        for n in &plan.notes {
            self.log(format!("  note: {n}"));
        }
        self.log(format!(
            "apply {run}: {} action(s): {}",
            plan.graph.node_count(),
            plan.actions()
                .iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut running: HashMap<Id, Running> = HashMap::new();
        loop {
            for (id, up) in walk.skip_upstream_failed() {
                let a = plan.graph[id].clone();
                self.record(
                    &run,
                    &a,
                    Phase::Skipped,
                    Some(format!("upstream failed: {up}")),
                );
            }
            if faulty && self.rng.random_bool(0.2) {
                self.world_event(&mut running, Some(&plan))?;
                self.check()?;
            }
            if faulty && self.rng.random_bool(0.02) {
                self.fault("controller killed");
                self.log(format!("apply {run}: controller killed"));
                let mut ids: Vec<Id> = running.keys().copied().collect();
                ids.sort();
                for id in ids {
                    let a = plan.graph[id].clone();
                    if running[&id].forced.is_some() {
                        continue;
                    }
                    if let ActionKind::ArchRestore { instance, .. } = &a.kind {
                        let stop = self.rng.random_range(0..4);
                        let unrecorded = self.rng.random_bool(0.5);
                        let obs = self.observe();
                        let ctx = journal::context(&self.journal);
                        let _ = arch::run(
                            &mut self.w,
                            &spec,
                            &obs,
                            instance,
                            arch::target_of(&a.kind),
                            &ctx,
                            &mut self.ledger,
                            Some(stop),
                            unrecorded,
                        );
                    } else if self.rng.random_bool(0.5) {
                        let _ =
                            exec::run(&mut self.w, &spec, &a, &mut self.txg, &mut self.violations);
                    } else {
                        exec::interrupt_replication(&mut self.w, &a);
                    }
                }
                self.check()?;
                return Ok(ApplyEnd::Killed);
            }
            let startable = walk.startable();
            let run_ids = walk.running();
            if startable.is_empty() && run_ids.is_empty() {
                break;
            }
            let start = !startable.is_empty() && (run_ids.is_empty() || self.rng.random_bool(0.5));
            if start {
                let id = startable[self.rng.random_range(0..startable.len())];
                let a = plan.graph[id].clone();
                self.record(&run, &a, Phase::Start, None);
                walk.start(id);
                running.insert(id, Running { forced: None });
                continue;
            }
            let id = run_ids[self.rng.random_range(0..run_ids.len())];
            let a = plan.graph[id].clone();
            let r = running.remove(&id).and_then(|r| r.forced);
            let result = match r {
                Some(e) => Err(e),
                None if faulty && self.rng.random_bool(0.03) => {
                    self.fault("command failed");
                    Err("injected failure".to_string())
                }
                None => self.run_action(&spec, &a),
            };
            self.stats.actions += 1;
            match result {
                Ok(()) => {
                    self.log(format!("  done {}", a.id));
                    self.record(&run, &a, Phase::Done, None);
                    walk.finish(id, Outcome::Done);
                }
                Err(e) => {
                    self.stats.actions_failed += 1;
                    self.log(format!(
                        "  FAILED {}: {}",
                        a.id,
                        e.lines().next().unwrap_or("")
                    ));
                    self.record(&run, &a, Phase::Failed, Some(e.clone()));
                    walk.finish(id, Outcome::Failed(e.into()));
                }
            }
            self.check()?;
        }
        Ok(ApplyEnd::Ran)
    }

    fn drain_mail(&mut self) {
        for _ in 0..3 {
            self.upstream();
            let nodes: Vec<String> = self.w.nodes.keys().cloned().collect();
            for n in nodes {
                self.w.deliver(&self.spec, &n, true, true);
            }
        }
    }

    /// Apply (no faults) until nothing is left to do.
    fn converge(&mut self, what: &str, max: usize) -> R<()> {
        for _ in 0..max {
            self.drain_mail();
            match self.apply(false)? {
                ApplyEnd::Converged => {
                    self.drain_mail();
                    if matches!(self.apply(false)?, ApplyEnd::Converged) {
                        return Ok(());
                    }
                }
                ApplyEnd::Blocked(why) => {
                    return Err(format!(
                        "{what}: the plan is blocked although every fault healed (a state spoolkeeper must handle): {}",
                        why.join("; ")
                    ));
                }
                ApplyEnd::Ran | ApplyEnd::Killed => {}
            }
            self.check()?;
        }
        Err(format!("{what}: not converged after {max} applies"))
    }

    pub fn run(mut self, steps: usize) -> Result<Stats, Box<Failure>> {
        if let Err(e) = self.run_inner(steps) {
            if self.verbose {
                for n in self.w.nodes.values() {
                    for c in n.copies.values() {
                        eprintln!(
                            "  {}:{} ro={} mounted={} written={} running={:?} user={:?} snaps=[{}]",
                            n.name,
                            c.name,
                            c.readonly,
                            c.mounted,
                            c.modified,
                            n.running,
                            c.user,
                            c.snaps
                                .iter()
                                .map(|s| format!(
                                    "{}#{:x}{}",
                                    s.name,
                                    s.guid & 0xffff,
                                    if s.holds.is_empty() { "" } else { "(held)" }
                                ))
                                .collect::<Vec<_>>()
                                .join(" ")
                        );
                    }
                }
            }
            return Err(Box::new(self.fail(e)));
        }
        Ok(self.stats)
    }

    fn run_inner(&mut self, steps: usize) -> R<()> {
        self.log(format!("scenario: {}", self.params.describe()));
        self.converge("bootstrap", 8)?;
        for step in 0..steps {
            self.step = step + 1;
            self.stats.steps += 1;
            match self.rng.random_range(0..100) {
                0..=59 => {
                    let mut none = HashMap::new();
                    self.world_event(&mut none, None)?;
                }
                60..=69 => self.operator()?,
                _ => {
                    let faulty = self.rng.random_bool(0.7);
                    self.apply(faulty)?;
                }
            }
            self.check()?;
        }
        // Every fault heals; the operator points at a node that is up.
        self.step = steps + 1;
        self.log("heal everything".into());
        let names: Vec<String> = self.w.nodes.keys().cloned().collect();
        for n in &names {
            if !self.w.nodes[n].up {
                self.boot(n)?;
            }
            if let Some(node) = self.w.nodes.get_mut(n) {
                node.link = true;
            }
        }
        self.w.archive.up = true;
        self.w.archive.link = true;
        self.fenced.clear();
        self.respec()?;
        self.converge("after healing", 12)?;
        check::exactly_once(&self.w, &self.spec)?;
        self.stats.checks += 1;
        Ok(())
    }
}
