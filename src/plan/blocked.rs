//! Safety rules that stop a plan, as typed values.
//!
//! A rule that fires produces a [`Blocked`] instead of actions: the operator's message, the
//! JSON plan and the exit code (3) all come from this one value (zrepl's typed conflicts).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::decide::replication::Conflict;

/// Why (part of) a plan cannot run, with what the operator can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Blocked {
    /// The spec's active node cannot be reached: nothing can be started or checked there.
    ActiveUnreachable { node: String, why: String },
    /// An instance would be started on the active node while another node that may still
    /// run it cannot be seen: an unreachable node is not a fenced node (never two actives).
    OtherNodeNotFenced {
        instance: String,
        node: String,
        why: String,
    },
    /// The instance's state on a node could not be read, so starting or stopping it
    /// elsewhere could make two actives.
    InstanceStateUnknown {
        instance: String,
        node: String,
        detail: String,
    },
    /// The active node has no dataset for the instance but another node has one: creating
    /// an empty dataset would start the instance without its mail.
    DataOnOtherNode {
        instance: String,
        active: String,
        holder: String,
        dataset: String,
    },
    /// More than one reachable node holds a live copy (writable, running or ahead): there
    /// were two actives, or a manual change; spoolkeeper does not pick one.
    SeveralLiveCopies {
        instance: String,
        nodes: Vec<String>,
    },
    /// The dataset could not be observed on a reachable node (a command failed).
    ObservationIncomplete { node: String, errors: Vec<String> },
    /// Replication of an instance is refused (diverged replica, no common snapshot, …).
    Replication {
        instance: String,
        node: String,
        conflict: Conflict,
    },
    /// The plan broke one of its own invariants (two unordered actions on one object, a copy
    /// made writable before another is read-only, …): a planner bug; nothing runs.
    Invariant { detail: String },
    /// The archive BCC table of a spool cannot be built from the spec: instances must not
    /// start without it (every message they accept would have no archive copy).
    ArchiveBcc { node: String, detail: String },
}

impl Blocked {
    /// A stable machine name for JSON and metrics.
    pub fn rule(&self) -> &'static str {
        match self {
            Blocked::ActiveUnreachable { .. } => "active_unreachable",
            Blocked::OtherNodeNotFenced { .. } => "other_node_not_fenced",
            Blocked::InstanceStateUnknown { .. } => "instance_state_unknown",
            Blocked::DataOnOtherNode { .. } => "data_on_other_node",
            Blocked::ObservationIncomplete { .. } => "observation_incomplete",
            Blocked::SeveralLiveCopies { .. } => "several_live_copies",
            Blocked::Replication { .. } => "replication_conflict",
            Blocked::Invariant { .. } => "plan_invariant",
            Blocked::ArchiveBcc { .. } => "archive_bcc_unbuildable",
        }
    }

    /// What the operator can do about it.
    pub fn remedy(&self) -> String {
        match self {
            Blocked::ActiveUnreachable { node, .. } => format!(
                "bring {node} back, or make another node active in the spec (failover) once {node} is fenced"
            ),
            Blocked::OtherNodeNotFenced { node, .. } => format!(
                "bring {node} back so spoolkeeper can stop the instance there, or fence it: configure `fencing.command`, or power it off and list it under `fenced: [{node}]`"
            ),
            Blocked::InstanceStateUnknown { node, instance, .. } => {
                format!("check the runtime of {instance} on {node} (status command) and run again")
            }
            Blocked::DataOnOtherNode { holder, .. } => format!(
                "the mail is on {holder}: set `active: {holder}` to serve it there, or move it with a switchover; spoolkeeper never starts an instance on an empty dataset while its data exists elsewhere"
            ),
            Blocked::ObservationIncomplete { node, .. } => {
                format!("fix the failing commands on {node} (see the errors) and run again")
            }
            Blocked::SeveralLiveCopies { nodes, instance } => format!(
                "stop {instance} everywhere but the node whose mail must be kept, make the other copies read-only (zfs set readonly=on) after saving what they hold, then run again; nodes: {}",
                nodes.join(", ")
            ),
            Blocked::Replication { conflict, .. } => conflict.operator_message(),
            Blocked::Invariant { .. } => "this is a bug in spoolkeeper's planner: nothing was run; please report it with `plan --output json` of this state".into(),
            Blocked::ArchiveBcc { .. } => "fix `archive.address` and the instances' `domains` (`spoolkeeper validate` names the problem), then run again; nothing starts without its archive copy".into(),
        }
    }
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::ActiveUnreachable { node, why } => {
                write!(f, "active node {node} is unreachable ({why})")
            }
            Blocked::OtherNodeNotFenced {
                instance,
                node,
                why,
            } => write!(
                f,
                "cannot start {instance}: {node} is unreachable ({why}) and not fenced, it may still run {instance}"
            ),
            Blocked::InstanceStateUnknown {
                instance,
                node,
                detail,
            } => write!(f, "state of {instance} on {node} is unknown ({detail})"),
            Blocked::DataOnOtherNode {
                instance,
                active,
                holder,
                dataset,
            } => write!(
                f,
                "{instance}: {active} has no {dataset} but {holder} has it"
            ),
            Blocked::SeveralLiveCopies { instance, nodes } => write!(
                f,
                "{instance} has live copies on several nodes: {}",
                nodes.join(", ")
            ),
            Blocked::ObservationIncomplete { node, errors } => {
                write!(
                    f,
                    "observation of {node} is incomplete: {}",
                    errors.join("; ")
                )
            }
            Blocked::Replication {
                instance,
                node,
                conflict,
            } => write!(
                f,
                "replication of {instance} to {node} refused: {}",
                conflict.kind()
            ),
            Blocked::Invariant { detail } => write!(f, "the plan breaks an invariant: {detail}"),
            Blocked::ArchiveBcc { node, detail } => {
                write!(
                    f,
                    "the archive BCC table of {node} cannot be built: {detail}"
                )
            }
        }
    }
}
