//! Typed actions: what a plan asks a host to do, with the reason why.
//!
//! An action names *what* in typed fields; the exact argv is built by the adapter that owns
//! the command (`zfs`, `jail`, …) when the executor runs it, and the renderers print the
//! same argv, so what the plan shows is what runs.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an action runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "name", rename_all = "snake_case")]
pub enum Target {
    /// A node of the spec.
    Node(String),
    /// The archive host.
    Archive,
    /// The controller itself (fencing commands, relay transfers).
    Controller,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(n) => f.write_str(n),
            Target::Archive => f.write_str("archive"),
            Target::Controller => f.write_str("controller"),
        }
    }
}

/// How an action changes the world, for the `+`/`~`/`-` markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Brings something into existence or into service.
    Create,
    /// Changes something in place.
    Change,
    /// Removes something or takes it out of service.
    Remove,
}

impl Effect {
    pub fn marker(self) -> char {
        match self {
            Effect::Create => '+',
            Effect::Change => '~',
            Effect::Remove => '-',
        }
    }
}

/// What to do. Each variant's fields are its arguments (JSON `args`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "args", rename_all = "snake_case")]
pub enum ActionKind {
    /// `zfs create -p` the instance dataset with its properties.
    CreateDataset {
        dataset: String,
        properties: BTreeMap<String, String>,
    },
    /// `zfs set` properties that drifted from the spec.
    SetProperties {
        dataset: String,
        properties: BTreeMap<String, String>,
    },
    /// `zfs set readonly=on|off`.
    SetReadonly { dataset: String, readonly: bool },
    /// `zfs mount`.
    Mount { dataset: String },
    /// `zfs unmount`.
    Unmount { dataset: String },
    /// Start the instance's jail (or exec service) on the target node.
    StartInstance { instance: String },
    /// Stop the instance's jail (or exec service) on the target node.
    StopInstance { instance: String },
}

impl ActionKind {
    /// The stable machine name (`create_dataset`, …).
    pub fn name(&self) -> &'static str {
        match self {
            ActionKind::CreateDataset { .. } => "create_dataset",
            ActionKind::SetProperties { .. } => "set_properties",
            ActionKind::SetReadonly { .. } => "set_readonly",
            ActionKind::Mount { .. } => "mount",
            ActionKind::Unmount { .. } => "unmount",
            ActionKind::StartInstance { .. } => "start_instance",
            ActionKind::StopInstance { .. } => "stop_instance",
        }
    }

    pub fn effect(&self) -> Effect {
        match self {
            ActionKind::CreateDataset { .. }
            | ActionKind::Mount { .. }
            | ActionKind::StartInstance { .. } => Effect::Create,
            ActionKind::SetProperties { .. } | ActionKind::SetReadonly { .. } => Effect::Change,
            ActionKind::Unmount { .. } | ActionKind::StopInstance { .. } => Effect::Remove,
        }
    }

    /// Does running it twice lose anything? Destructive actions are journaled and never
    /// repeated blindly after an interruption.
    pub fn destructive(&self) -> bool {
        false
    }

    /// One line for people: "create dataset zdata/imap/students (compression=lz4)".
    pub fn summary(&self) -> String {
        let props = |p: &BTreeMap<String, String>| {
            p.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            ActionKind::CreateDataset {
                dataset,
                properties,
            } if properties.is_empty() => format!("create dataset {dataset}"),
            ActionKind::CreateDataset {
                dataset,
                properties,
            } => format!("create dataset {dataset} ({})", props(properties)),
            ActionKind::SetProperties {
                dataset,
                properties,
            } => format!("set {} on {dataset}", props(properties)),
            ActionKind::SetReadonly { dataset, readonly } => format!(
                "set readonly={} on {dataset}",
                if *readonly { "on" } else { "off" }
            ),
            ActionKind::Mount { dataset } => format!("mount {dataset}"),
            ActionKind::Unmount { dataset } => format!("unmount {dataset}"),
            ActionKind::StartInstance { instance } => format!("start instance {instance}"),
            ActionKind::StopInstance { instance } => format!("stop instance {instance}"),
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Stable identity: the same step on the same object has the same id in every plan
    /// (`node-a:create_dataset:zdata/imap/students`). The journal is keyed by it.
    pub id: String,
    pub host: Target,
    #[serde(flatten)]
    pub kind: ActionKind,
    /// Why this step is needed, for the operator.
    pub reason: String,
}

impl Action {
    pub fn new(host: Target, kind: ActionKind, reason: impl Into<String>) -> Self {
        let object = match &kind {
            ActionKind::CreateDataset { dataset, .. }
            | ActionKind::SetProperties { dataset, .. }
            | ActionKind::SetReadonly { dataset, .. }
            | ActionKind::Mount { dataset }
            | ActionKind::Unmount { dataset } => dataset.clone(),
            ActionKind::StartInstance { instance } | ActionKind::StopInstance { instance } => {
                instance.clone()
            }
        };
        Action {
            id: format!("{host}:{}:{object}", kind.name()),
            host,
            kind,
            reason: reason.into(),
        }
    }
}
