//! Datasets and run state of one instance: writable and running on the serving node,
//! read-only, unmounted and stopped everywhere else; the failover steps when a replica is
//! promoted while a node is out of sight; the replay of the archive a promotion owes.

use std::collections::BTreeMap;

use super::{
    Action, ActionKind, Blocked, Marks, Planner, REPLAY_PROPERTY, RESYNC_PROPERTY, Target,
    dataset_name, graph, marks, property_matches,
};
use crate::model::{Dataset, RunState};
use crate::spec::{Instance, NodeName};

impl Planner<'_> {
    pub(super) fn instance(&mut self, active: &NodeName, name: &str, inst: &Instance) {
        let spec = self.spec;
        let mut stops = Vec::new();
        let mut may_start = true;
        let mut fences: Vec<graph::Id> = Vec::new();

        // Where is the live copy? When the active node only holds a read-only replica and a
        // reachable node holds a writable copy, runs the instance or has snapshots the replica
        // lacks, the mail is there: move it first (switchover).
        let a_copy = self.copy(active, inst).cloned();
        if let Some(ad) = a_copy.as_ref().filter(|d| d.readonly != Some(true)) {
            // The active copy is writable: nobody else may be ahead of it. A copy merely left
            // writable elsewhere is made read-only below. Nodes recorded for resync after a
            // failover are expected to be ahead: their writes are preserved, then they are
            // rolled back (see `resync`).
            let live: Vec<String> = spec
                .spec
                .nodes
                .keys()
                .filter(|n| *n != active && self.reachable(n))
                .filter(|n| !self.superseded(n, inst))
                .filter(|n| {
                    self.copy(n, inst).is_some_and(|od| {
                        !crate::decide::replication::ahead(&ad.snapshots, &od.snapshots).is_empty()
                    })
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
            // Live: runs the instance, is writable, or was written after its newest snapshot.
            // Ahead: only holds snapshots the active replica lacks (a replica more up to date).
            let mut live: Vec<NodeName> = Vec::new();
            let mut ahead_only: Vec<(NodeName, Vec<crate::model::Snapshot>)> = Vec::new();
            for n in spec
                .spec
                .nodes
                .keys()
                .filter(|n| *n != active && self.reachable(n))
                // a node some copy's failover record names is resynced from it, whatever it
                // holds: not where the mail is
                .filter(|n| !self.superseded(n, inst))
            {
                let Some(o) = self.node(n) else { continue };
                let running = o
                    .instances
                    .get(name)
                    .is_some_and(|s| s.state == RunState::Running);
                let Some(od) = self.copy(n, inst) else {
                    if running {
                        live.push(n.clone());
                    }
                    continue;
                };
                // written after its newest snapshot (where ZFS says): mail the replica lacks
                let written = od.other_properties.get("written").is_some_and(|w| w != "0");
                if running || od.readonly == Some(false) || written {
                    live.push(n.clone());
                } else if !crate::decide::replication::ahead(&ad.snapshots, &od.snapshots)
                    .is_empty()
                {
                    ahead_only.push((n.clone(), od.snapshots.clone()));
                }
            }
            // With no live copy, the most advanced replica, when it holds what every other
            // one holds, is where the mail is.
            let from: Option<NodeName> = match live.as_slice() {
                [one] => Some(one.clone()),
                [] => ahead_only
                    .iter()
                    .find(|(_, most)| {
                        ahead_only.iter().all(|(_, other)| {
                            crate::decide::replication::ahead(most, other).is_empty()
                        })
                    })
                    .map(|(n, _)| n.clone()),
                _ => None,
            };
            match from {
                Some(old) => {
                    if self.switchover(active, &old, name, inst, ad) {
                        self.moving.insert(name.to_owned());
                    }
                    return;
                }
                None if !live.is_empty() || !ahead_only.is_empty() => {
                    let mut nodes: Vec<String> = live.iter().map(|n| n.to_string()).collect();
                    nodes.extend(ahead_only.iter().map(|(n, _)| n.to_string()));
                    self.plan.block(Blocked::SeveralLiveCopies {
                        instance: name.into(),
                        nodes,
                    });
                    return;
                }
                None => {}
            }
        }

        // Is anything to be promoted or started here? Then every node out of sight must be
        // proven unable to serve first (never two actives), whatever runs here already: an
        // instance started by hand on a read-only replica proves nothing about the old active.
        let running_here = self
            .node(active)
            .and_then(|o| o.instances.get(name))
            .is_some_and(|s| s.state == RunState::Running);
        let serving_already = running_here
            && a_copy
                .as_ref()
                .is_some_and(|d| d.readonly == Some(false) && d.mounted == Some(true));

        // Every other node first: the instance must be stopped there before it can run here.
        for other in spec.spec.nodes.keys().filter(|n| *n != active) {
            let Some(ds) = dataset_name(spec, other, inst.dataset.as_str()) else {
                continue;
            };
            if !self.reachable(other) {
                if self.is_fenced(other) {
                    continue;
                }
                if serving_already {
                    self.plan.note(format!(
                        "{other} is unreachable: its copy of {name} is not checked this run"
                    ));
                } else if spec.spec.fencing.is_some() {
                    // Fence it (the operator's command), then go on: a fenced node cannot
                    // serve.
                    fences.push(self.plan.add(Action::new(
                        Target::Controller,
                        ActionKind::Fence {
                            node: other.to_string(),
                        },
                        format!(
                            "{other} is unreachable ({}) and may still run {name}: it must be fenced before {name} serves on {active}",
                            self.why_unreachable(other)
                        ),
                    )));
                } else {
                    may_start = false;
                    let why = self.why_unreachable(other);
                    self.plan.block(Blocked::OtherNodeNotFenced {
                        instance: name.into(),
                        node: other.to_string(),
                        why,
                    });
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
        let mut owed = marks::owed_replay(a_copy.as_ref());
        // A replay still owed to another copy (it served, then lost the service before the
        // replay completed) is owed to this one now, with every held copy.
        let owed_elsewhere: Vec<(NodeName, String)> = spec
            .spec
            .nodes
            .keys()
            .filter(|n| *n != active && self.reachable(n))
            .filter_map(|n| {
                let d = self.copy(n, inst)?;
                marks::owed_replay(Some(d)).map(|_| (n.clone(), d.name.clone()))
            })
            .collect();
        if !owed_elsewhere.is_empty() {
            owed = Some(String::new());
        }
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
                // Promoting a copy, or starting the instance on it, while a node that may have
                // served it is out of sight: a failover (the copy may lack what that node
                // accepted since this copy's newest snapshot).
                let starting = !running_here;
                if (d.readonly != Some(false) || starting) && may_start {
                    let (pre, anchor) = self.failover_steps(active, name, &d);
                    if owed.is_none() {
                        owed = anchor;
                    }
                    ready.extend(pre);
                }
                if d.readonly != Some(false) && may_start {
                    // Writable only once the instance is stopped everywhere else.
                    let a = self.plan.add(Action::new(
                        host.clone(),
                        ActionKind::SetReadonly {
                            dataset: ds.clone(),
                            readonly: false,
                        },
                        format!("{active} is the active node: its copy of {name} must be writable"),
                    ));
                    for s in stops.iter().chain(&fences).chain(&ready) {
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
        let mut start = None;
        match running {
            Some((RunState::Running, _)) => {}
            Some((RunState::Unknown, detail)) => {
                may_start = false;
                self.plan.block(Blocked::InstanceStateUnknown {
                    instance: name.into(),
                    node: active.to_string(),
                    detail: detail.unwrap_or_else(|| "no detail".into()),
                });
            }
            Some((RunState::Stopped, _)) | None => {
                if may_start {
                    let id = self.plan.add(Action::new(
                        host,
                        ActionKind::StartInstance {
                            instance: name.into(),
                        },
                        format!("{active} is the active node of {name}"),
                    ));
                    for r in ready.iter().chain(stops.iter()).chain(fences.iter()) {
                        self.plan.edge(*r, id);
                    }
                    start = Some(id);
                }
            }
        }
        if let Some(anchor) = owed.filter(|_| may_start) {
            let after: Vec<graph::Id> = start.into_iter().chain(ready).collect();
            if let Some(restore) = self.replay(active, name, &ds, anchor, &after) {
                for (n, d) in owed_elsewhere {
                    let id = self.plan.add(Action::new(
                        Target::Node(n.to_string()),
                        ActionKind::SetUserProperty {
                            dataset: d,
                            property: REPLAY_PROPERTY.into(),
                            value: None,
                        },
                        format!("the replay {n} was owed was made into {active}"),
                    ));
                    self.plan.edge(restore, id);
                }
            }
        }
    }

    /// Does a copy's failover record (a reachable node's, or the active node's) name `n`, and
    /// hold against `n`'s own? Then `n` lost a failover: its writes are preserved and it is
    /// resynced; it is not where the mail is.
    fn superseded(&self, n: &NodeName, inst: &Instance) -> bool {
        let theirs = Marks::of(self.copy(n, inst));
        self.spec.spec.nodes.keys().filter(|m| *m != n).any(|m| {
            let mine = Marks::of(self.copy(m, inst));
            mine.phase(n.as_str()).is_some()
                && mine.holds_against(&theirs, *m == self.spec.spec.active)
        })
    }

    /// The replay of the archive owed to the serving copy (a failover promoted it, or an
    /// earlier replay did not complete): after the instance serves, then the record that it
    /// is owed is cleared — only once it completed, so an interrupted or failed replay is
    /// planned again by the next apply, with the same window.
    pub(super) fn replay(
        &mut self,
        active: &NodeName,
        name: &str,
        ds: &str,
        anchor: String,
        after: &[graph::Id],
    ) -> Option<graph::Id> {
        self.spec.spec.archive.as_ref()?;
        self.replay_owed.insert(name.to_owned());
        let restore = self.plan.add(Action::new(
            Target::Controller,
            ActionKind::ArchRestore {
                instance: name.into(),
                node: Some(active.to_string()),
                anchor: (!anchor.is_empty()).then(|| anchor.clone()),
            },
            if anchor.is_empty() {
                format!(
                    "{active} took over {name} without a snapshot known to hold everything: replay every held copy it lacks"
                )
            } else {
                format!(
                    "mail for {name} accepted after @{anchor} is only on the archive host: replay what {active} lacks"
                )
            },
        ));
        for a in after {
            self.plan.edge(*a, restore);
        }
        // Archive copies of the instance still in a reachable spool's queue (accepted while
        // the archive host was down or cut, by whichever copy served then) are not on the
        // archive yet: a replay that read it now would miss them, clear the debt, and their
        // originals (in a copy since rolled back) would be lost. Each such queue is flushed
        // and the replay waits until those copies left it; if they cannot (the archive host
        // is still away), the replay is not attempted and stays owed.
        // (With the archive host unreachable the replay fails at once and stays owed: no
        // wait is planned.)
        let archive_up = self
            .obs
            .archive
            .as_ref()
            .is_some_and(|a| a.reachability.is_reachable());
        let queued = self
            .spec
            .spec
            .instances
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .filter(|_| archive_up)
            .map(|(_, inst)| self.queued_archive_copies(name, inst))
            .unwrap_or_default();
        for (n, ids) in queued {
            let mail = self.own_mail(name);
            let flush_id = format!("{n}:flush_queue:queue");
            let flush = match self.plan.id_of(&flush_id) {
                Some(f) => f,
                None => self.plan.add(
                    Action::new(
                        Target::Node(n.to_string()),
                        ActionKind::FlushQueue,
                        format!(
                            "{} archive copie(s) of {name} wait in {n}'s queue: hand them to the archive host before the replay reads it",
                            ids.len()
                        ),
                    )
                    .in_mail(mail.clone()),
                ),
            };
            let wait = self.plan.add(
                Action::new(
                    Target::Node(n.to_string()),
                    ActionKind::WaitArchived {
                        instance: name.into(),
                        queue_ids: ids,
                    },
                    format!(
                        "the replay into {active} reads the archive host: the copies queued on {n} must be there first"
                    ),
                )
                .in_mail(mail),
            );
            self.plan.edge(flush, wait);
            self.plan.edge(wait, restore);
        }
        let clear = self.plan.add(Action::new(
            Target::Node(active.to_string()),
            ActionKind::SetUserProperty {
                dataset: ds.to_owned(),
                property: REPLAY_PROPERTY.into(),
                value: None,
            },
            format!("the replay into {active} completed"),
        ));
        self.plan.edge(restore, clear);
        Some(restore)
    }

    /// Before a replica is made writable in a failover: record durably which nodes must be
    /// resynced and from which snapshot (its newest) a replay is owed, and discard an
    /// interrupted receive. Returns the steps and the replay anchor (`None` when no failover).
    fn failover_steps(
        &mut self,
        active: &NodeName,
        name: &str,
        d: &Dataset,
    ) -> (Vec<graph::Id>, Option<String>) {
        if !self.failing_over(active) {
            return (Vec::new(), None);
        }
        let host = Target::Node(active.to_string());
        let mut next = Marks::of(Some(d));
        for n in self
            .spec
            .spec
            .nodes
            .keys()
            .filter(|n| *n != active && !self.reachable(n))
        {
            // pending even when an earlier resync of it completed: it may have written
            // since (it served, or an interrupted switchover left it writable)
            next.nodes
                .insert(n.to_string(), super::ResyncPhase::Pending);
        }
        next.epoch = next.epoch.max(self.now.as_second());
        let lost: Vec<String> = next.nodes.keys().cloned().collect();
        let mut ids = Vec::new();
        // The record carries the time of this promotion, rewritten on every run that
        // promotes: a record left by an earlier failover to this copy (another copy was
        // promoted since, out of sight now) must not date this promotion back to it. An
        // interrupted run of the same failover rewritten later only dates it later, still
        // after every other copy's promotion it knew of.
        let record = Marks::of(Some(d));
        let mut last = None;
        if record.nodes != next.nodes || record.epoch < next.epoch {
            let mark = self.plan.add(Action::new(
                host.clone(),
                ActionKind::SetUserProperty {
                    dataset: d.name.clone(),
                    property: RESYNC_PROPERTY.into(),
                    value: next.encode(),
                },
                format!(
                    "{} may hold writes {active} never received: recorded on the dataset so that any controller resyncs them safely when they return",
                    lost.join(", ")
                ),
            ));
            ids.push(mark);
            last = Some(mark);
        }
        let newest = d.snapshots.last().map(|s| s.name.clone());
        // Deliveries of the instance still queued on the node being promoted were accepted
        // when it served an earlier incarnation of this copy (or by an instance started by
        // hand): never delivered into this one (the mail may already be in it, replayed); they
        // are deleted, and the replay owed covers every held copy instead of the newest
        // snapshot's window, recorded before they are.
        let queued: Vec<crate::model::QueueId> = self
            .postfix_for(active, name)
            .filter(|_| self.spec.spec.archive.is_some())
            .map(|p| {
                self.spec
                    .spec
                    .instances
                    .iter()
                    .find(|(n, _)| n.as_str() == name)
                    .map(|(_, inst)| Self::local_deliveries(&p.queue, inst))
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let widen = !queued.is_empty() && marks::owed_replay(Some(d)).as_deref() != Some("");
        let anchor = match marks::owed_replay(Some(d)) {
            Some(a) if !widen => Some(a),
            _ if self.spec.spec.archive.is_some() => {
                let value = if widen {
                    String::new()
                } else {
                    newest.clone().unwrap_or_default()
                };
                let owe = self.plan.add(Action::new(
                    host.clone(),
                    ActionKind::SetUserProperty {
                        dataset: d.name.clone(),
                        property: REPLAY_PROPERTY.into(),
                        value: Some(marks::encode_replay(&value)),
                    },
                    format!(
                        "{name} resumes from {}: a replay of the archive is owed from there, recorded before anything changes",
                        newest.as_deref().map_or("no snapshot".to_string(), |n| format!("@{n}"))
                    ),
                ));
                if let Some(l) = last {
                    self.plan.edge(l, owe);
                }
                ids.push(owe);
                last = Some(owe);
                Some(value)
            }
            _ => None,
        };
        if !queued.is_empty() {
            let drop = self.plan.add(Action::new(
                host.clone(),
                ActionKind::DropQueued {
                    instance: name.into(),
                    queue_ids: queued.clone(),
                },
                format!(
                    "{} delivery(ies) of {name} queued on {active} from before it was a replica: replayed from the archive instead, never delivered twice",
                    queued.len()
                ),
            ).in_mail(self.own_mail(name)));
            if let Some(l) = last {
                self.plan.edge(l, drop);
            }
            ids.push(drop);
            last = Some(drop);
        }
        if d.receive_resume_token.is_some() {
            let a = self.plan.add(Action::new(
                host,
                ActionKind::AbortReceive {
                    dataset: d.name.clone(),
                },
                "an interrupted receive is discarded: the replica serves its newest complete snapshot".to_string(),
            ));
            if let Some(l) = last {
                self.plan.edge(l, a);
            }
            ids.push(a);
        }
        // No rollback: a replica holds nothing after its newest snapshot, and whatever a copy
        // holds after it (an interrupted switchover's old active) is mail, kept; the replay
        // from the anchor finds it present and does not deliver it again.
        (ids, anchor)
    }

    /// A non-active node's copy: read-only and unmounted, after the instance stopped there.
    pub(super) fn passive_copy(
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
