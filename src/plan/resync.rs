//! A node that comes back after a failover (named in the serving copy's
//! `spoolkeeper:resync`): its writes since the common snapshot are saved to a stream file on
//! it, it is rolled back to that snapshot and resynced incrementally (phase 1); then its
//! queued archive copies are handed to the archive host, what it accepted is replayed into
//! the serving node exactly once, and its queued deliveries of the instance, covered by the
//! replay, are deleted so that they are never delivered twice (phase 2).

use super::{Action, ActionKind, Marks, Planner, RESYNC_PROPERTY, ResyncPhase, Target, graph};
use crate::model::{Dataset, Snapshot};
use crate::spec::{Instance, NodeName};

impl Planner<'_> {
    /// Phase 1. Returns the replication step's id.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn resync(
        &mut self,
        active: &NodeName,
        other: &NodeName,
        name: &str,
        ds: &str,
        source: &[Snapshot],
        t: &Dataset,
        after_snapshot: &[graph::Id],
        update: &mut MarksUpdate,
    ) -> Option<graph::Id> {
        let Some(base) = crate::decide::replication::common_base(source, &t.snapshots).cloned()
        else {
            // Nothing in common any more (with three nodes, each replica prunes on its own):
            // the returning copy is set aside whole, and a full copy received in its place.
            return self.resync_full(active, other, name, ds, source, t, after_snapshot, update);
        };
        let to = source.last().cloned()?;
        let host = Target::Node(other.to_string());
        let stamp = crate::decide::retention::snapshot_name("x", self.now);
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
        // Its later snapshots go with the rollback; spoolkeeper's holds on them (an old
        // replication base) would stop it. Their content is in the saved delta.
        let mut releases = Vec::new();
        let base_pos = t.snapshots.iter().position(|s| s.guid == base.guid);
        for s in t
            .snapshots
            .iter()
            .enumerate()
            .filter(|(i, s)| base_pos.is_some_and(|b| *i > b) && s.userrefs > 0)
            .map(|(_, s)| s)
        {
            let id = self.plan.add(Action::new(
                host.clone(),
                ActionKind::Release {
                    dataset: t.name.clone(),
                    snapshot: s.name.clone(),
                },
                format!(
                    "@{} goes with the rollback of {other} to @{} (its data is in the saved delta)",
                    s.name, base.name
                ),
            ));
            self.plan.edge(preserve, id);
            releases.push(id);
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
        for r in releases {
            self.plan.edge(r, rollback);
        }
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
        update
            .next
            .nodes
            .insert(other.to_string(), ResyncPhase::Synced);
        update.after.push(repl);
        update.why.push(format!(
            "{other}'s replica is resynced; its queued mail is handed over next"
        ));
        Some(repl)
    }

    /// Phase 1 when the returning copy shares no snapshot with the serving one.
    #[allow(clippy::too_many_arguments)]
    fn resync_full(
        &mut self,
        active: &NodeName,
        other: &NodeName,
        name: &str,
        ds: &str,
        source: &[Snapshot],
        t: &Dataset,
        after_snapshot: &[graph::Id],
        update: &mut MarksUpdate,
    ) -> Option<graph::Id> {
        let to = source.last().cloned()?;
        let stamp = crate::decide::retention::snapshot_name("x", self.now);
        let aside = format!("{}_preserved_{}", t.name, stamp.trim_start_matches("x_"));
        let host = Target::Node(other.to_string());
        let stop = self.plan.id_of(&format!("{other}:stop_instance:{name}"));
        let rename = self.plan.add(Action::new(
            host.clone(),
            ActionKind::RenameDataset {
                dataset: t.name.clone(),
                to: aside.clone(),
            },
            format!(
                "{other}'s copy shares no snapshot with {active}'s any more: it is kept whole as {aside} and a full copy is received in its place"
            ),
        ));
        if let Some(s) = stop {
            self.plan.edge(s, rename);
        }
        let action = self.replicate_action(
            name,
            active,
            ds,
            other,
            &t.name,
            None,
            &to.name,
            (None, false),
            format!("{other} receives a full copy of {name} from {active}"),
        );
        let repl = self.plan.add(action);
        self.plan.edge(rename, repl);
        for d in after_snapshot {
            self.plan.edge(*d, repl);
        }
        let ro = self.plan.add(Action::new(
            host,
            ActionKind::SetReadonly {
                dataset: t.name.clone(),
                readonly: true,
            },
            format!(
                "{other} is passive: its replica must be read-only (never two writable copies)"
            ),
        ));
        self.plan.edge(repl, ro);
        update
            .next
            .nodes
            .insert(other.to_string(), ResyncPhase::Synced);
        update.after.push(ro);
        update.why.push(format!(
            "{other}'s replica is received anew; its queued mail is handed over next"
        ));
        Some(repl)
    }

    /// Phase 2: the returning node's queue hands its archive copies over, then they are
    /// replayed into the serving node exactly once, its queued deliveries of the instance are
    /// deleted, then the resync record is cleared.
    pub(super) fn resync_drain(
        &mut self,
        active: &NodeName,
        other: &NodeName,
        name: &str,
        inst: &Instance,
        update: &mut MarksUpdate,
    ) {
        if let Some(last) = self.hand_over_queue(active, other, name, inst, true) {
            update.next.nodes.remove(other.as_str());
            update.after.extend(last);
            update
                .why
                .push(format!("{other} is resynced and its mail replayed"));
        }
    }

    /// The queued messages whose every recipient is at the instance's domains (their archive
    /// copies already left): local deliveries of the instance.
    pub(super) fn local_deliveries(
        queue: &[crate::model::QueueEntry],
        inst: &Instance,
    ) -> Vec<crate::model::QueueId> {
        let at = |addr: &str, domain: &str| {
            addr.rsplit_once('@')
                .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
        };
        queue
            .iter()
            .filter(|e| {
                !e.recipients.is_empty()
                    && e.recipients
                        .iter()
                        .all(|r| inst.domains.iter().any(|d| at(&r.address, d)))
            })
            .map(|e| e.queue_id.clone())
            .collect()
    }

    /// Reachable nodes whose Postfix queue (the one that accepts `name`'s mail there) holds
    /// archive copies of `inst`'s mail not yet handed to the archive host, with their queue
    /// ids: the entries with a recipient that the archive address template decodes to one
    /// of the instance's domains.
    pub(super) fn queued_archive_copies(
        &self,
        name: &str,
        inst: &Instance,
    ) -> Vec<(NodeName, Vec<crate::model::QueueId>)> {
        let Some(archive) = self.spec.spec.archive.as_ref() else {
            return Vec::new();
        };
        let ours = |addr: &str| {
            archive
                .address
                .decode(addr)
                .is_some_and(|(_, d)| inst.domains.iter().any(|x| x.eq_ignore_ascii_case(&d)))
        };
        self.spec
            .spec
            .nodes
            .keys()
            .filter(|n| self.reachable(n))
            .filter_map(|n| {
                let p = self.postfix_for(n, name)?;
                let ids: Vec<crate::model::QueueId> = p
                    .queue
                    .iter()
                    .filter(|e| e.recipients.iter().any(|r| ours(&r.address)))
                    .map(|e| e.queue_id.clone())
                    .collect();
                (!ids.is_empty()).then(|| (n.clone(), ids))
            })
            .collect()
    }

    /// A node that does not serve the instance but still queues deliveries of it (it served
    /// before, or it was started by hand): its archive copies are handed to the archive host,
    /// the archive is replayed into the serving node, then those deliveries are deleted, so
    /// that they are never delivered when that node serves again. With `always`, the replay
    /// is planned even with nothing queued (a returning node's mail may already be on the
    /// archive). Returns the last step (`Some(None)`: nothing to do), `None` while waiting.
    pub(super) fn hand_over_queue(
        &mut self,
        active: &NodeName,
        other: &NodeName,
        name: &str,
        inst: &Instance,
        always: bool,
    ) -> Option<Option<graph::Id>> {
        let spec = self.spec;
        if always {
            // the returning node's mail is not replayed yet: no purge meanwhile
            self.replay_owed.insert(name.to_owned());
        }
        let archive_domain = spec
            .spec
            .archive
            .as_ref()
            .map(|a| a.address.archive_domain().to_ascii_lowercase());
        let at = |addr: &str, domain: &str| {
            addr.rsplit_once('@')
                .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
        };
        let queue = self.postfix_for(other, name).map(|p| p.queue.clone());
        let Some(queue) = queue else {
            self.plan.note(format!(
                "{name}: {other}'s Postfix queue was not observed: its mail is replayed once it is"
            ));
            return None;
        };
        let ours = |e: &crate::model::QueueEntry| {
            e.recipients
                .iter()
                .any(|r| inst.domains.iter().any(|d| at(&r.address, d)))
        };
        // Deliveries of the instance still queued there: never to be delivered on that node
        // any more (it is passive); the replay puts their messages into the serving copy.
        let stale = Self::local_deliveries(&queue, inst);
        if !always && stale.is_empty() {
            return Some(None);
        }
        // From here a replay is due: the held copies of those messages may be the only ones
        // (their deliveries are stale), so no purge until it is made (simulator seed 12965: a
        // purge ran while the replay waited for the queue, and the message was lost).
        self.replay_owed.insert(name.to_owned());
        let pending_copies = queue
            .iter()
            .filter(|e| always || ours(e))
            .filter(|e| {
                e.recipients
                    .iter()
                    .any(|r| archive_domain.as_ref().is_some_and(|ad| at(&r.address, ad)))
            })
            .count();
        if pending_copies > 0 {
            self.plan.add(Action::new(
                Target::Node(other.to_string()),
                ActionKind::FlushQueue,
                format!("{pending_copies} archive copie(s) accepted by {other} are still in its queue: hand them to the archive host"),
            ).in_mail(self.own_mail(name)));
            self.plan.note(format!(
                "{name}: waiting for {other}'s queue to reach the archive before replaying it into {active}"
            ));
            return None;
        }
        if spec.spec.archive.is_none() {
            return Some(None);
        }
        let id = self.plan.add(Action::new(
            Target::Controller,
            ActionKind::ArchRestore {
                instance: name.into(),
                node: Some(active.to_string()),
                anchor: None,
            },
            format!("mail {other} accepted for {name} is on the archive host: replay what {active} lacks"),
        ));
        // One replay per instance and run: when a failover's replay is planned too, it
        // takes the wider window (every held copy), which covers both.
        if let ActionKind::ArchRestore { anchor, .. } = &mut self.plan.graph[id].kind {
            *anchor = None;
        }
        let mut last = id;
        self.replay_owed.insert(name.to_owned());
        if !stale.is_empty() {
            let drop = self.plan.add(Action::new(
                Target::Node(other.to_string()),
                ActionKind::DropQueued {
                    instance: name.into(),
                    queue_ids: stale,
                },
                format!("{other} does not serve {name}: its queued deliveries of it are in {active}'s mailbox once replayed, and must never be delivered again"),
            ).in_mail(self.own_mail(name)));
            self.plan.edge(last, drop);
            last = drop;
        }
        Some(Some(last))
    }

    /// Write the resync record once for all the nodes this run moved on, after the steps
    /// that moved them (a failed step keeps its node's phase for the next run).
    pub(super) fn write_marks(
        &mut self,
        active: &NodeName,
        ds: &str,
        was: &Marks,
        update: MarksUpdate,
    ) {
        if update.next == *was {
            return;
        }
        // This run's failover rewrites the record already (before anything else): the
        // progress made here is recorded by the next run.
        if self
            .plan
            .id_of(&format!(
                "{active}:set_user_property:{ds}:{RESYNC_PROPERTY}"
            ))
            .is_some()
        {
            return;
        }
        let value = update.next.encode();
        let id = self.plan.add(Action::new(
            Target::Node(active.to_string()),
            ActionKind::SetUserProperty {
                dataset: ds.to_string(),
                property: RESYNC_PROPERTY.into(),
                value,
            },
            update.why.join("; "),
        ));
        for a in update.after {
            self.plan.edge(a, id);
        }
    }
}

/// The changes to a resync record planned this run.
pub(super) struct MarksUpdate {
    pub next: Marks,
    pub after: Vec<graph::Id>,
    pub why: Vec<String>,
}

impl MarksUpdate {
    pub fn new(marks: &Marks) -> MarksUpdate {
        MarksUpdate {
            next: marks.clone(),
            after: Vec::new(),
            why: Vec::new(),
        }
    }
}
