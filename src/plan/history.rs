//! What later plans learn from past applies: the journal's records (written by
//! `crate::state::journal`) folded into a [`Context`], and the fences a fresh observation
//! disproves. Pure.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::model::Observation;
use crate::plan::{Action, ActionKind, Target};

/// Options that change what the planner may do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Context {
    /// Nodes proven fenced by a fencing command that succeeded (from the journal).
    pub fenced_by_command: BTreeSet<String>,
    /// Snapshots carrying spoolkeeper's hold, as `node dataset@snapshot` (from the journal:
    /// the holds this controller put and has not released). Only these are ever released.
    pub held: BTreeSet<String>,
    /// The spool backlog recorded when each snapshot was taken, keyed by
    /// [`Context::backlog_key`] (the dataset without its pool: a snapshot keeps its name and
    /// its meaning on every node it is replicated to), which the archive watermark needs;
    /// unknown snapshots are never used to purge.
    pub backlogs: BTreeMap<String, crate::decide::archive::SpoolBacklog>,
}

impl Context {
    /// The key of a backlog in [`Context::backlogs`]: `imap/students@sk_…` for the snapshot
    /// `zdata/imap/students@sk_…` (on any pool).
    pub fn backlog_key(dataset: &str, snapshot: &str) -> String {
        let rel = dataset.split_once('/').map_or(dataset, |(_, r)| r);
        format!("{rel}@{snapshot}")
    }

    /// The backlog recorded for a snapshot of `dataset` (full name, any node).
    pub fn backlog(
        &self,
        dataset: &str,
        snapshot: &str,
    ) -> Option<crate::decide::archive::SpoolBacklog> {
        self.backlogs
            .get(&Self::backlog_key(dataset, snapshot))
            .copied()
    }

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
            self.backlogs
                .insert(Self::backlog_key(dataset, name), *backlog);
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

/// One journal line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub at: Timestamp,
    /// The apply run (controller pid and start time).
    pub run: String,
    /// The action id (`node-a:start_instance:students`), or `apply` for run records.
    pub action: String,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The whole action, on `done` records: what later plans learn from (holds put,
    /// fencing that succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<Action>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Start,
    Done,
    Failed,
    Skipped,
}

/// The fences that a fresh observation disproves: nodes proven fenced by a fencing command
/// that are reachable now. A fence proves a node cannot serve only until it comes back; that
/// it came back must be remembered even when the plan of this run is blocked and not run (a
/// node seen up, then cut again, is not fenced any more), so `apply` journals these before
/// it plans, as completed `forget_fence` actions.
pub fn fences_seen_back(ctx: &Context, obs: &Observation) -> Vec<Action> {
    ctx.fenced_by_command
        .iter()
        .filter(|n| {
            obs.nodes
                .get(n.as_str())
                .is_some_and(|o| o.reachability.is_reachable())
        })
        .map(|n| {
            Action::new(
                Target::Controller,
                ActionKind::ForgetFence { node: n.clone() },
                format!("{n} is reachable again: a later failover must fence it again"),
            )
        })
        .collect()
}

/// What the planner must know from past applies: the journal folded through
/// [`crate::plan::Context::learn`].
pub fn context(records: &[Record]) -> Context {
    let mut ctx = Context::default();
    for r in records {
        if let (Phase::Done, Some(a)) = (r.phase, &r.done) {
            ctx.learn(a);
        }
    }
    ctx
}
