//! The expected effect of each action on the observed model, as a pure function.
//!
//! Used by the property tests (plan, apply the effects, plan again: nothing left to do) and
//! by the executor's dry-run bookkeeping. Each arm states what the action promises.

use crate::observed::{Dataset, DatasetKind, InstanceState, Observation, RunState};

use super::{Action, ActionKind, Target};

/// Apply the promised effect of `a` to `obs`.
pub fn apply(obs: &mut Observation, a: &Action) {
    let Target::Node(node) = &a.host else { return };
    let Some(n) = obs.nodes.get_mut(node) else {
        return;
    };
    match &a.kind {
        ActionKind::CreateDataset {
            dataset,
            properties,
        } => {
            n.missing_datasets.retain(|d| d != dataset);
            if n.dataset(dataset).is_none() {
                n.datasets.push(Dataset {
                    name: dataset.clone(),
                    kind: DatasetKind::Filesystem,
                    creation: None,
                    guid: None,
                    used: Some(0),
                    readonly: Some(false),
                    mounted: Some(true),
                    mountpoint: Some(format!("/{dataset}")),
                    createtxg: None,
                    receive_resume_token: None,
                    user_properties: Default::default(),
                    other_properties: properties.clone(),
                    snapshots: Vec::new(),
                });
            }
        }
        ActionKind::SetProperties {
            dataset,
            properties,
        } => {
            if let Some(d) = n.datasets.iter_mut().find(|d| d.name == *dataset) {
                for (k, v) in properties {
                    d.other_properties.insert(k.clone(), v.clone());
                }
            }
        }
        ActionKind::SetReadonly { dataset, readonly } => {
            if let Some(d) = n.datasets.iter_mut().find(|d| d.name == *dataset) {
                d.readonly = Some(*readonly);
            }
        }
        ActionKind::Mount { dataset } => {
            if let Some(d) = n.datasets.iter_mut().find(|d| d.name == *dataset) {
                d.mounted = Some(true);
            }
        }
        ActionKind::Unmount { dataset } => {
            if let Some(d) = n.datasets.iter_mut().find(|d| d.name == *dataset) {
                d.mounted = Some(false);
            }
        }
        ActionKind::StartInstance { instance } => {
            n.instances.insert(
                instance.clone(),
                InstanceState {
                    state: RunState::Running,
                    detail: None,
                    norun: None,
                },
            );
        }
        ActionKind::StopInstance { instance } => {
            n.instances.insert(
                instance.clone(),
                InstanceState {
                    state: RunState::Stopped,
                    detail: None,
                    norun: None,
                },
            );
        }
    }
}
