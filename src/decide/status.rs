//! `spoolkeeper status` and `spoolkeeper check`: what the cluster looks like now, and the
//! monitoring verdict on its recovery point.
//!
//! Pure core: [`status`] and [`check`] take the spec, one observation (and for `status` the
//! apply journal) and `now`, and return values; no host, no clock read. The commands that
//! observe and print are `crate::cli::status`.
//!
//! How `check` judges (Nagios convention, one line with perfdata):
//!
//! - Per instance and passive node, the age of the newest replicated snapshot (the newest
//!   snapshot present on both sides, matched by guid) against `replication.rpo`: OK up to
//!   `rpo`, WARNING past it, CRITICAL past 2×`rpo` (see [`crate::decide::rpo`]). Perfdata
//!   `<instance>_rpo_age` (`<instance>_<node>_rpo_age` when there are several passives).
//! - **Never replicated** (the passive has no dataset yet, or it exists without sharing a
//!   snapshot and without holding any): there is no replica to fail over to, so this is never
//!   OK. WARNING while the instance's first snapshot on the active is at most `rpo` old (the
//!   first full send is due), CRITICAL after that. The perfdata age is the time since that
//!   first snapshot: the window of mail that only the active holds.
//! - **Replication blocked** (the replica diverged, or holds snapshots none of which the
//!   active has): CRITICAL at once, since no run will fix it without the operator.
//! - The active's dataset missing: CRITICAL (nothing can be replicated; nothing is served).
//!   No snapshot on the active yet, or a listing that failed: UNKNOWN.
//! - Any node unreachable: CRITICAL, whatever the ages (the replica may be all we have).
//! - The archive host: perfdata `archive_held=N` (messages on hold). Unreachable, or its queue
//!   could not be read: WARNING (the replica's RPO is still known, but mail since the last
//!   replication may not be covered by the archive).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::decide::replication::{self, Conflict, ReplicationStep};
use crate::decide::retention::age_order;
use crate::decide::rpo::{CheckResult, CheckState, rpo_status_labeled};
use crate::model::{
    Dataset, InstanceState, NodeObservation, Observation, Reachability, RunState, Snapshot,
    UnreachableKind,
};
use crate::plan::history::{Phase, Record};
use crate::spec::{Instance, Spec};

/// A node's role for the instances, from the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Active,
    Passive,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Passive => "passive",
        }
    }
}

/// A snapshot as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRef {
    /// The part after `@`.
    pub name: String,
    pub creation: Timestamp,
}

impl From<&Snapshot> for SnapshotRef {
    fn from(s: &Snapshot) -> Self {
        SnapshotRef {
            name: s.name.clone(),
            creation: s.creation,
        }
    }
}

/// The whole status of one cluster. Stable JSON (`status --output json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub cluster: String,
    /// When the hosts were observed.
    pub observed_at: Timestamp,
    /// The instant ages are computed against.
    pub now: Timestamp,
    /// The spec's active node.
    pub active: String,
    /// `replication.rpo`, seconds.
    pub rpo_seconds: u64,
    pub nodes: Vec<NodeStatus>,
    pub instances: Vec<InstanceStatus>,
    /// The archive host, when the spec has one.
    pub archive: Option<ArchiveStatus>,
    /// The newest apply run in the journal, if any.
    pub last_apply: Option<LastApply>,
    /// The verdict `check` would print for this observation.
    pub check: CheckResult,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: Role,
    /// Listed under `fenced` in the spec.
    pub fenced: bool,
    /// Reachable, or why not.
    pub reachability: Reachability,
    /// Commands that failed while the node was reachable (the view is partial).
    pub errors: Vec<String>,
}

/// Whether an instance's dataset exists on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetPresence {
    Present,
    Missing,
    /// The node is unreachable, or its listing failed.
    Unknown,
}

/// One instance on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceOnNode {
    pub node: String,
    pub role: Role,
    /// The jail (or exec service) state; `None` when the node is unreachable.
    pub jail: Option<InstanceState>,
    /// The full dataset name on this node (`pool/path`).
    pub dataset: String,
    pub presence: DatasetPresence,
    pub readonly: Option<bool>,
    pub mounted: Option<bool>,
    /// Number of snapshots of the dataset (all prefixes).
    pub snapshots: usize,
    pub newest_snapshot: Option<SnapshotRef>,
}

/// The replica of one instance on one passive node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicaStatus {
    pub from: String,
    pub to: String,
    /// The newest snapshot on both sides (the replication base), when known.
    pub newest_replicated: Option<SnapshotRef>,
    /// Its age in seconds: the RPO actually achieved.
    pub age_seconds: Option<i64>,
    /// The RPO verdict for this replica alone (node reachability aside).
    pub state: CheckState,
    pub summary: String,
}

/// One instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceStatus {
    pub name: String,
    pub domains: Vec<String>,
    /// One entry per node of the spec, in name order.
    pub nodes: Vec<InstanceOnNode>,
    /// One entry per passive node.
    pub replicas: Vec<ReplicaStatus>,
    /// Held archive messages with a recipient at this instance's domains; `None` when the
    /// archive queue is not known (no archive, unreachable, not read).
    pub archive_held: Option<usize>,
    /// Held copies of this instance's mail newer than what every replica holds; `None` when
    /// the archive queue is not known.
    pub mail_at_risk: Option<AtRisk>,
}

/// Mail accepted since the newest snapshot every replica holds: only the archive protects
/// it (a failover now needs its replay). Arrivals are in the archive host's clock, snapshot
/// times in the active node's; the window opens `archive.margin` early so that a clock offset
/// within the margin never hides a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AtRisk {
    pub messages: usize,
    pub bytes: u64,
    /// The creation of the newest snapshot every replica holds (`None`: some replica holds
    /// nothing, so every held copy counts).
    pub since: Option<Timestamp>,
}

fn at_risk(
    s: &Spec,
    replicas: &[ReplicaStatus],
    held: Option<&[(Timestamp, u64)]>,
) -> Option<AtRisk> {
    let held = held?;
    let margin = s
        .spec
        .archive
        .as_ref()
        .map_or(jiff::SignedDuration::ZERO, |a| a.margin.as_signed());
    // the least advanced replica decides; one without a replicated snapshot means all
    let since = replicas
        .iter()
        .map(|r| r.newest_replicated.as_ref().map(|b| b.creation))
        .try_fold(None::<Timestamp>, |acc, b| {
            b.map(|b| Some(acc.map_or(b, |a: Timestamp| a.min(b))))
        })
        .flatten();
    let from = since.map(|t| t.checked_sub(margin).unwrap_or(Timestamp::MIN));
    let (messages, bytes) = held
        .iter()
        .filter(|(arrival, _)| from.is_none_or(|f| *arrival >= f))
        .fold((0usize, 0u64), |(n, b), (_, size)| {
            (n + 1, b.saturating_add(*size))
        });
    Some(AtRisk {
        messages,
        bytes,
        since,
    })
}

/// The archive host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchiveStatus {
    pub reachability: Reachability,
    /// Messages in the hold queue; `None` when the queue was not read.
    pub held: Option<usize>,
    /// Held messages none of whose recipients decode to an instance's domain.
    pub held_unmatched: Option<usize>,
    pub errors: Vec<String>,
}

/// How the newest apply run ended, from its journal records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyOutcome {
    /// Every started action is done.
    Succeeded,
    /// An action failed (and its dependents were skipped).
    Failed,
    /// An action started and has neither a done nor a failed record: the run was
    /// interrupted, or is still running.
    Incomplete,
}

/// The newest apply run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastApply {
    /// The newest journal record's time.
    pub at: Timestamp,
    /// The run id (start time, pid and a counter of the process).
    pub run: String,
    pub outcome: ApplyOutcome,
    pub done: usize,
    pub failed: usize,
    pub skipped: usize,
    /// The first failed action and its error, when one failed.
    pub first_failure: Option<String>,
}

/// Where an instance's dataset stands on one node.
enum Seen<'a> {
    Present(&'a Dataset),
    Missing,
    Unknown(String),
}

fn node_obs<'a>(o: &'a Observation, node: &str) -> Option<&'a NodeObservation> {
    o.nodes.get(node).filter(|n| n.reachability.is_reachable())
}

fn dataset_name(s: &Spec, node: &str, inst: &Instance) -> Option<String> {
    s.spec
        .nodes
        .iter()
        .find(|(n, _)| n.as_str() == node)
        .map(|(_, n)| format!("{}/{}", n.pool, inst.dataset))
}

fn seen<'a>(s: &Spec, o: &'a Observation, node: &str, inst: &Instance) -> Seen<'a> {
    let Some(n) = o.nodes.get(node) else {
        return Seen::Unknown(format!("{node} was not observed"));
    };
    if let Reachability::Unreachable { kind, .. } = &n.reachability {
        return Seen::Unknown(format!("{node} is unreachable ({})", kind_text(*kind)));
    }
    let Some(name) = dataset_name(s, node, inst) else {
        return Seen::Unknown(format!("{node} is not in the spec"));
    };
    if let Some(d) = n.dataset(&name) {
        return Seen::Present(d);
    }
    if n.missing_datasets.contains(&name) || n.errors.is_empty() {
        // Not listed and the listing did not fail: it does not exist.
        return Seen::Missing;
    }
    Seen::Unknown(format!(
        "{name} not listed on {node} ({})",
        n.errors.join("; ")
    ))
}

fn kind_text(k: UnreachableKind) -> &'static str {
    match k {
        UnreachableKind::Timeout => "timeout",
        UnreachableKind::Refused => "connection refused",
        UnreachableKind::Auth => "authentication refused",
        UnreachableKind::HostKey => "host key rejected",
        UnreachableKind::Resolve => "name not resolved",
        UnreachableKind::Other => "error",
    }
}

fn newest(snaps: &[Snapshot]) -> Option<&Snapshot> {
    snaps.iter().max_by(|a, b| age_order(a, b))
}

fn oldest(snaps: &[Snapshot]) -> Option<&Snapshot> {
    snaps.iter().min_by(|a, b| age_order(a, b))
}

fn age_text(secs: i64) -> String {
    humantime::format_duration(Duration::from_secs(u64::try_from(secs).unwrap_or(0))).to_string()
}

/// The perfdata label of one replica's age.
fn rpo_label(prefix: &str, instance: &str, passive: &str, passives: usize) -> String {
    if passives > 1 {
        format!("{prefix}{instance}_{passive}_rpo_age")
    } else {
        format!("{prefix}{instance}_rpo_age")
    }
}

/// The RPO verdict of one instance's replica on one passive, node reachability aside (the
/// caller applies the unreachable rule once). See the module documentation for the rules.
fn replica_check(
    s: &Spec,
    o: &Observation,
    inst_name: &str,
    inst: &Instance,
    passive: &str,
    label: &str,
    now: Timestamp,
) -> (CheckResult, Option<SnapshotRef>) {
    let rpo = s.spec.replication.rpo.as_std();
    let warn_s = s.spec.replication.rpo.as_secs();
    let crit_s = warn_s.saturating_mul(2);
    let active = s.spec.active.as_str();
    let who = format!("{inst_name} on {passive}");
    let mk = |state, summary: String, age: Option<i64>| CheckResult {
        state,
        summary: format!("{who}: {summary}"),
        perfdata: format!(
            "{label}={};{warn_s};{crit_s};0;",
            age.map_or("U".to_owned(), |a| format!("{a}s"))
        ),
        age_seconds: age,
    };
    let source = match seen(s, o, active, inst) {
        Seen::Present(d) => d,
        Seen::Missing => {
            let name = dataset_name(s, active, inst).unwrap_or_default();
            return (
                mk(
                    CheckState::Critical,
                    format!("dataset {name} is missing on the active node {active}"),
                    None,
                ),
                None,
            );
        }
        Seen::Unknown(why) => {
            return (
                mk(CheckState::Unknown, format!("cannot tell: {why}"), None),
                None,
            );
        }
    };
    let target = match seen(s, o, passive, inst) {
        Seen::Present(d) => Some(d.snapshots.as_slice()),
        Seen::Missing => None,
        Seen::Unknown(why) => {
            return (
                mk(CheckState::Unknown, format!("cannot tell: {why}"), None),
                None,
            );
        }
    };
    let Some(first) = oldest(&source.snapshots) else {
        return (
            mk(
                CheckState::Unknown,
                format!("no snapshot on the active node {active} yet"),
                None,
            ),
            None,
        );
    };
    match replication::replication_step(&source.snapshots, target, None) {
        ReplicationStep::Conflict(Conflict::NoCommonSnapshot {
            target_snapshots, ..
        }) if target_snapshots.is_empty() => {}
        ReplicationStep::Full { .. } => {}
        ReplicationStep::Conflict(c) => {
            let base = replication::common_base(&source.snapshots, target.unwrap_or(&[]));
            let age = base
                .map(|b| now.duration_since(b.creation).as_secs())
                .filter(|a| *a >= 0);
            return (
                mk(
                    CheckState::Critical,
                    format!(
                        "replication blocked ({}): {}",
                        c.kind(),
                        c.operator_message()
                    ),
                    age,
                ),
                base.map(SnapshotRef::from),
            );
        }
        ReplicationStep::UpToDate { base } | ReplicationStep::Incremental { base, .. } => {
            let mut r = rpo_status_labeled(label, Some(base.creation), rpo, now, false);
            r.summary = format!("{who}: {}", r.summary);
            return (r, Some(SnapshotRef::from(&base)));
        }
    }
    // Never replicated: no replica at all.
    let age = now.duration_since(first.creation).as_secs();
    if age < 0 {
        return (
            mk(
                CheckState::Unknown,
                format!(
                    "never replicated, and the first snapshot {} is dated after now: clocks \
                     disagree",
                    first.name
                ),
                None,
            ),
            None,
        );
    }
    let state = if u64::try_from(age).unwrap_or(0) > warn_s {
        CheckState::Critical
    } else {
        CheckState::Warning
    };
    (
        mk(
            state,
            format!(
                "never replicated; the first snapshot {} is {} old (RPO {})",
                first.name,
                age_text(age),
                humantime::format_duration(rpo)
            ),
            Some(age),
        ),
        None,
    )
}

/// Held messages on the archive, counted per instance (a message counts for an instance
/// when one of its recipients decodes to one of the instance's domains), plus the unmatched.
/// Held copies of one instance: (arrival on the archive host, bytes).
type HeldOf = BTreeMap<String, Vec<(Timestamp, u64)>>;

fn archive_counts(s: &Spec, o: &Observation) -> Option<(usize, HeldOf, usize)> {
    let a = s.spec.archive.as_ref()?;
    let ao = o.archive.as_ref()?;
    if !ao.reachability.is_reachable() {
        return None;
    }
    let pf = ao.postfix.as_ref()?;
    let domains: Vec<(String, Vec<String>)> = s
        .spec
        .instances
        .iter()
        .map(|(n, i)| {
            (
                n.to_string(),
                i.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            )
        })
        .collect();
    let mut per: HeldOf = domains
        .iter()
        .map(|(n, _)| (n.clone(), Vec::new()))
        .collect();
    let mut total = 0;
    let mut unmatched = 0;
    for m in pf.held() {
        total += 1;
        let rcpt_domains: Vec<String> = m
            .recipients
            .iter()
            .filter_map(|r| a.address.decode(&r.address))
            .map(|(_, d)| d.to_ascii_lowercase())
            .collect();
        let mut matched = false;
        for (name, ds) in &domains {
            if rcpt_domains.iter().any(|d| ds.contains(d)) {
                matched = true;
                per.entry(name.clone())
                    .or_default()
                    .push((m.arrival_time, m.message_size));
            }
        }
        if !matched {
            unmatched += 1;
        }
    }
    Some((total, per, unmatched))
}

/// The Nagios verdict for one cluster: see the module documentation.
pub fn check(s: &Spec, o: &Observation, now: Timestamp) -> CheckResult {
    check_labeled(s, o, now, "")
}

/// [`check`] with every perfdata label prefixed (`<cluster>_` when one probe checks several
/// clusters, so labels stay unique).
pub fn check_labeled(s: &Spec, o: &Observation, now: Timestamp, prefix: &str) -> CheckResult {
    let active = s.spec.active.as_str();
    let passives: Vec<&str> = s
        .spec
        .nodes
        .keys()
        .map(|n| n.as_str())
        .filter(|n| *n != active)
        .collect();
    let mut results = Vec::new();
    for (iname, inst) in &s.spec.instances {
        for p in &passives {
            let label = rpo_label(prefix, iname.as_str(), p, passives.len());
            results.push(replica_check(s, o, iname.as_str(), inst, p, &label, now).0);
        }
    }
    if s.spec.archive.is_some() {
        let label = format!("{prefix}archive_held");
        results.push(match archive_counts(s, o) {
            Some((total, _, _)) => CheckResult {
                state: CheckState::Ok,
                summary: format!("archive holds {total} message(s)"),
                perfdata: format!("{label}={total};;;0;"),
                age_seconds: None,
            },
            None => CheckResult {
                state: CheckState::Warning,
                summary: format!("archive queue unknown: {}", archive_problem(o)),
                perfdata: format!("{label}=U;;;0;"),
                age_seconds: None,
            },
        });
    }
    let mut c = CheckResult::combine(&results);
    let down: Vec<String> = s
        .spec
        .nodes
        .keys()
        .filter_map(|n| match o.nodes.get(n.as_str()).map(|x| &x.reachability) {
            Some(Reachability::Reachable) => None,
            Some(Reachability::Unreachable { kind, .. }) => {
                Some(format!("{n} unreachable ({})", kind_text(*kind)))
            }
            None => Some(format!("{n} not observed")),
        })
        .collect();
    if !down.is_empty() {
        c.state = CheckState::Critical;
        c.summary = format!("{}; {}", down.join(", "), c.summary);
    }
    c
}

fn archive_problem(o: &Observation) -> String {
    match &o.archive {
        None => "the archive host was not observed".to_owned(),
        Some(a) => match &a.reachability {
            Reachability::Unreachable { kind, .. } => {
                format!("archive host unreachable ({})", kind_text(*kind))
            }
            Reachability::Reachable if a.errors.is_empty() => "no Postfix queue read".to_owned(),
            Reachability::Reachable => a.errors.join("; "),
        },
    }
}

/// The newest apply run in the journal: its records are those with the newest record's `run`.
pub fn last_apply(records: &[Record]) -> Option<LastApply> {
    let newest = records.iter().max_by_key(|r| r.at)?;
    let run: Vec<&Record> = records.iter().filter(|r| r.run == newest.run).collect();
    let mut last_phase: BTreeMap<&str, Phase> = BTreeMap::new();
    for r in run.iter() {
        last_phase.insert(r.action.as_str(), r.phase);
    }
    let count = |p: Phase| last_phase.values().filter(|x| **x == p).count();
    let (done, failed, skipped) = (
        count(Phase::Done),
        count(Phase::Failed),
        count(Phase::Skipped),
    );
    let outcome = if failed > 0 || skipped > 0 {
        ApplyOutcome::Failed
    } else if count(Phase::Start) > 0 {
        ApplyOutcome::Incomplete
    } else {
        ApplyOutcome::Succeeded
    };
    let first_failure = run.iter().find(|r| r.phase == Phase::Failed).map(|r| {
        format!(
            "{}: {}",
            r.action,
            r.detail.as_deref().unwrap_or("no detail recorded")
        )
    });
    Some(LastApply {
        at: newest.at,
        run: newest.run.clone(),
        outcome,
        done,
        failed,
        skipped,
        first_failure,
    })
}

/// The status of one cluster from one observation and its journal.
pub fn status(s: &Spec, o: &Observation, journal: &[Record], now: Timestamp) -> Status {
    let active = s.spec.active.as_str();
    let role = |n: &str| {
        if n == active {
            Role::Active
        } else {
            Role::Passive
        }
    };
    let nodes = s
        .spec
        .nodes
        .keys()
        .map(|n| {
            let obs = o.nodes.get(n.as_str());
            NodeStatus {
                name: n.to_string(),
                role: role(n.as_str()),
                fenced: s.spec.fenced.contains(n),
                reachability: obs.map_or_else(
                    || Reachability::Unreachable {
                        kind: UnreachableKind::Other,
                        message: "not observed".to_owned(),
                    },
                    |x| x.reachability.clone(),
                ),
                errors: obs.map(|x| x.errors.clone()).unwrap_or_default(),
            }
        })
        .collect();
    let passives: Vec<&str> = s
        .spec
        .nodes
        .keys()
        .map(|n| n.as_str())
        .filter(|n| *n != active)
        .collect();
    let counts = archive_counts(s, o);
    let instances = s
        .spec
        .instances
        .iter()
        .map(|(iname, inst)| {
            let per_node = s
                .spec
                .nodes
                .keys()
                .map(|n| {
                    let n = n.as_str();
                    let (presence, ds) = match seen(s, o, n, inst) {
                        Seen::Present(d) => (DatasetPresence::Present, Some(d)),
                        Seen::Missing => (DatasetPresence::Missing, None),
                        Seen::Unknown(_) => (DatasetPresence::Unknown, None),
                    };
                    InstanceOnNode {
                        node: n.to_owned(),
                        role: role(n),
                        jail: node_obs(o, n).and_then(|x| x.instances.get(iname.as_str()).cloned()),
                        dataset: dataset_name(s, n, inst).unwrap_or_default(),
                        presence,
                        readonly: ds.and_then(|d| d.readonly),
                        mounted: ds.and_then(|d| d.mounted),
                        snapshots: ds.map_or(0, |d| d.snapshots.len()),
                        newest_snapshot: ds
                            .and_then(|d| newest(&d.snapshots))
                            .map(SnapshotRef::from),
                    }
                })
                .collect();
            let replicas: Vec<ReplicaStatus> = passives
                .iter()
                .map(|p| {
                    let label = rpo_label("", iname.as_str(), p, passives.len());
                    let (r, base) = replica_check(s, o, iname.as_str(), inst, p, &label, now);
                    ReplicaStatus {
                        from: active.to_owned(),
                        to: (*p).to_owned(),
                        newest_replicated: base,
                        age_seconds: r.age_seconds,
                        state: r.state,
                        summary: r.summary,
                    }
                })
                .collect();
            InstanceStatus {
                name: iname.to_string(),
                domains: inst.domains.clone(),
                nodes: per_node,
                archive_held: counts
                    .as_ref()
                    .and_then(|(_, per, _)| per.get(iname.as_str()).map(Vec::len)),
                mail_at_risk: counts.as_ref().and_then(|(_, per, _)| {
                    at_risk(s, &replicas, per.get(iname.as_str()).map(Vec::as_slice))
                }),
                replicas,
            }
        })
        .collect();
    let archive = o
        .archive
        .as_ref()
        .filter(|_| s.spec.archive.is_some())
        .map(|a| ArchiveStatus {
            reachability: a.reachability.clone(),
            held: counts.as_ref().map(|(t, _, _)| *t),
            held_unmatched: counts.as_ref().map(|(_, _, u)| *u),
            errors: a.errors.clone(),
        });
    Status {
        cluster: s.name.to_string(),
        observed_at: o.observed_at,
        now,
        active: active.to_owned(),
        rpo_seconds: s.spec.replication.rpo.as_secs(),
        nodes,
        instances,
        archive,
        last_apply: last_apply(journal),
        check: check(s, o, now),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|x| x.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let pad = widths[c].saturating_sub(cell.chars().count()) + 2;
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn yes_no(b: Option<bool>) -> String {
    match b {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => "-".to_owned(),
    }
}

fn ago(now: Timestamp, t: Timestamp) -> String {
    let s = now.duration_since(t).as_secs();
    if s < 0 {
        "in the future".to_owned()
    } else {
        format!("{} ago", age_text(s))
    }
}

/// The operator's view: nodes, instances per node, replicas, archive, last apply, verdict.
pub fn text(st: &Status) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "cluster {}  active {}  rpo {}  observed {}",
        st.cluster,
        st.active,
        age_text(i64::try_from(st.rpo_seconds).unwrap_or(i64::MAX)),
        st.observed_at
    );
    let _ = writeln!(t);
    let mut rows = vec![vec!["NODE".into(), "ROLE".into(), "REACHABLE".into()]];
    for n in &st.nodes {
        let mut role = n.role.as_str().to_owned();
        if n.fenced {
            role.push_str(", fenced");
        }
        let reach = match &n.reachability {
            Reachability::Reachable if n.errors.is_empty() => "yes".to_owned(),
            Reachability::Reachable => format!("yes, partial: {}", n.errors.join("; ")),
            Reachability::Unreachable { kind, message } => {
                format!("NO ({}): {message}", kind_text(*kind))
            }
        };
        rows.push(vec![n.name.clone(), role, reach]);
    }
    t.push_str(&table(&rows));
    let _ = writeln!(t);
    let mut rows = vec![
        [
            "INSTANCE",
            "NODE",
            "ROLE",
            "JAIL",
            "DATASET",
            "RO",
            "MOUNTED",
            "SNAPS",
            "NEWEST SNAPSHOT",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect::<Vec<String>>(),
    ];
    for i in &st.instances {
        for n in &i.nodes {
            let jail = match &n.jail {
                None => "?".to_owned(),
                Some(j) => match j.state {
                    RunState::Running => "running".to_owned(),
                    RunState::Stopped => "stopped".to_owned(),
                    RunState::Unknown => "unknown".to_owned(),
                },
            };
            let ds = match n.presence {
                DatasetPresence::Present => n.dataset.clone(),
                DatasetPresence::Missing => format!("{} (missing)", n.dataset),
                DatasetPresence::Unknown => format!("{} (?)", n.dataset),
            };
            let newest = n.newest_snapshot.as_ref().map_or("-".to_owned(), |s| {
                format!("{} ({})", s.name, ago(st.now, s.creation))
            });
            rows.push(vec![
                i.name.clone(),
                n.node.clone(),
                n.role.as_str().to_owned(),
                jail,
                ds,
                yes_no(n.readonly),
                yes_no(n.mounted),
                if n.presence == DatasetPresence::Present {
                    n.snapshots.to_string()
                } else {
                    "-".to_owned()
                },
                newest,
            ]);
        }
    }
    t.push_str(&table(&rows));
    let _ = writeln!(t);
    let mut rows = vec![
        [
            "INSTANCE",
            "REPLICA",
            "NEWEST REPLICATED",
            "AGE (RPO)",
            "STATE",
            "ARCHIVE HELD",
            "AT RISK",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect::<Vec<String>>(),
    ];
    for i in &st.instances {
        for r in &i.replicas {
            rows.push(vec![
                i.name.clone(),
                format!("{} -> {}", r.from, r.to),
                r.newest_replicated
                    .as_ref()
                    .map_or("-".to_owned(), |s| s.name.clone()),
                r.age_seconds.map_or("-".to_owned(), age_text),
                r.state.to_string(),
                i.archive_held.map_or("?".to_owned(), |n| n.to_string()),
                i.mail_at_risk.map_or("?".to_owned(), |r| {
                    format!("{} msg, {} B", r.messages, r.bytes)
                }),
            ]);
        }
    }
    t.push_str(&table(&rows));
    let _ = writeln!(t);
    match &st.archive {
        None => {}
        Some(a) => {
            let _ = match (&a.reachability, a.held) {
                (Reachability::Unreachable { kind, message }, _) => {
                    writeln!(t, "archive: UNREACHABLE ({}): {message}", kind_text(*kind))
                }
                (Reachability::Reachable, Some(h)) => writeln!(
                    t,
                    "archive: {h} message(s) on hold ({} not matching any instance)",
                    a.held_unmatched.unwrap_or(0)
                ),
                (Reachability::Reachable, None) => {
                    writeln!(t, "archive: queue not read: {}", a.errors.join("; "))
                }
            };
        }
    }
    let _ = match &st.last_apply {
        None => writeln!(t, "last apply: none recorded"),
        Some(l) => {
            let outcome = match l.outcome {
                ApplyOutcome::Succeeded => "succeeded",
                ApplyOutcome::Failed => "FAILED",
                ApplyOutcome::Incomplete => "incomplete (interrupted or running)",
            };
            let mut line = format!(
                "last apply: {} ({}), {outcome}: {} done, {} failed, {} skipped",
                l.at,
                ago(st.now, l.at),
                l.done,
                l.failed,
                l.skipped
            );
            if let Some(f) = &l.first_failure {
                let _ = write!(line, "; first failure {f}");
            }
            writeln!(t, "{line}")
        }
    };
    let _ = writeln!(t, "{}", st.check.line());
    t
}

#[cfg(test)]
mod tests;
