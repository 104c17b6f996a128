//! What later plans learn from past applies: the journal's records (written by
//! `crate::state::journal`) folded into a [`Context`], and the fences a fresh observation
//! disproves. Pure.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::model::Observation;
use crate::plan::{Action, ActionKind, Context, Target};

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
