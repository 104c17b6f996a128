//! The expected effect of each action on the observed model, as a pure function.
//!
//! Used by the property tests (plan, apply the effects, plan again: nothing left to do) and
//! by the executor's dry-run bookkeeping. Each arm states what the action promises.

use jiff::Timestamp;

use crate::model::{Dataset, DatasetKind, InstanceState, Observation, RunState, Snapshot};

use super::{Action, ActionKind, Target};

/// Apply the promised effect of `a` to `obs`.
pub fn apply(obs: &mut Observation, a: &Action) {
    if let ActionKind::Replicate {
        source,
        source_dataset,
        target,
        target_dataset,
        to,
        ..
    } = &a.kind
    {
        replicate(obs, source, source_dataset, target, target_dataset, to);
        return;
    }
    if let Target::Archive = &a.host {
        if let Some(pf) = obs.archive.as_mut().and_then(|x| x.postfix.as_mut()) {
            postfix_effect(pf, &a.kind);
        }
        return;
    }
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
        ActionKind::Snapshot { dataset, name, .. } => {
            let at = obs_now(name);
            if let Some(d) = n.datasets.iter_mut().find(|d| d.name == *dataset) {
                let txg = d
                    .snapshots
                    .iter()
                    .filter_map(|s| s.createtxg)
                    .max()
                    .unwrap_or(0)
                    + 1;
                d.snapshots.push(Snapshot {
                    name: name.clone(),
                    guid: fake_guid(dataset, name),
                    creation: at,
                    createtxg: Some(txg),
                    userrefs: 0,
                    used: 0,
                    written: None,
                });
            }
        }
        ActionKind::Hold { dataset, snapshot } | ActionKind::Release { dataset, snapshot } => {
            let hold = matches!(a.kind, ActionKind::Hold { .. });
            if let Some(s) = n
                .datasets
                .iter_mut()
                .find(|d| d.name == *dataset)
                .and_then(|d| d.snapshots.iter_mut().find(|s| s.name == *snapshot))
            {
                if hold {
                    s.userrefs += 1;
                } else {
                    s.userrefs = s.userrefs.saturating_sub(1);
                }
            }
        }
        ActionKind::DestroySnapshots {
            dataset, snapshots, ..
        } => {
            if let Some(d) = n.datasets.iter_mut().find(|d| d.name == *dataset) {
                d.snapshots.retain(|s| !snapshots.contains(&s.name));
            }
        }
        ActionKind::TeardownScratch { clone, .. } => n.scratch.retain(|c| c.name != *clone),
        ActionKind::Replicate { .. }
        | ActionKind::Fence { .. }
        | ActionKind::ForgetFence { .. }
        | ActionKind::VerifyGuid { .. }
        | ActionKind::ArchRestore { .. }
        | ActionKind::FlushQueue
        | ActionKind::WaitArchived { .. } => {}
        ActionKind::Rollback {
            dataset, snapshot, ..
        } => {
            if let Some(d) = n.datasets.iter_mut().find(|d| d.name == *dataset)
                && let Some(i) = d.snapshots.iter().position(|s| s.name == *snapshot)
            {
                d.snapshots.truncate(i + 1);
            }
        }
        ActionKind::RenameDataset { dataset, to } => {
            if let Some(d) = n.datasets.iter_mut().find(|d| d.name == *dataset) {
                d.name = to.clone();
            }
            n.missing_datasets.push(dataset.clone());
        }
        ActionKind::AbortReceive { dataset } => {
            if let Some(d) = n.datasets.iter_mut().find(|d| d.name == *dataset) {
                d.receive_resume_token = None;
            }
        }
        ActionKind::SetUserProperty {
            dataset,
            property,
            value,
        } => {
            if let Some(d) = n.datasets.iter_mut().find(|d| d.name == *dataset) {
                match value {
                    Some(v) => {
                        d.user_properties.insert(property.clone(), v.clone());
                    }
                    None => {
                        d.user_properties.remove(property);
                    }
                }
            }
        }
        ActionKind::PreserveDelta {
            dataset, snapshot, ..
        } => {
            if let Some(d) = n.datasets.iter_mut().find(|d| d.name == *dataset) {
                let txg = d
                    .snapshots
                    .iter()
                    .filter_map(|s| s.createtxg)
                    .max()
                    .unwrap_or(0)
                    + 1;
                d.snapshots.push(Snapshot {
                    name: snapshot.clone(),
                    guid: fake_guid(dataset, snapshot),
                    creation: Timestamp::UNIX_EPOCH,
                    createtxg: Some(txg),
                    userrefs: 0,
                    used: 0,
                    written: None,
                });
            }
        }
        ActionKind::WaitDelivered { .. } => {}
        ActionKind::WriteFile { .. }
        | ActionKind::Postconf { .. }
        | ActionKind::PurgeArchive { .. }
        | ActionKind::DropQueued { .. } => {
            if let Some(pf) = n.postfix_of_mut(a.mail.as_deref()) {
                postfix_effect(pf, &a.kind);
            }
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

/// A snapshot's creation as the name we gave it says (names carry the controller's clock).
fn obs_now(name: &str) -> Timestamp {
    name.rsplit_once('_')
        .and_then(|(p, _)| crate::decide::retention::parse_owned(p, name))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A stable stand-in guid for a simulated snapshot.
fn fake_guid(dataset: &str, name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (dataset, name).hash(&mut h);
    h.finish() | 1
}

/// Copy every snapshot of the source after the target's newest common one, up to `to`, with
/// the same guids; create the target dataset (unmounted, as `receive -u` leaves it) if needed.
fn replicate(obs: &mut Observation, source: &str, sds: &str, target: &str, tds: &str, to: &str) {
    let Some(src) = obs.nodes.get(source).and_then(|n| n.dataset(sds)).cloned() else {
        return;
    };
    let Some(t) = obs.nodes.get_mut(target) else {
        return;
    };
    if t.dataset(tds).is_none() {
        t.missing_datasets.retain(|d| d != tds);
        t.datasets.push(Dataset {
            name: tds.into(),
            snapshots: Vec::new(),
            readonly: Some(false),
            mounted: Some(false),
            mountpoint: Some(format!("/{tds}")),
            other_properties: src.other_properties.clone(),
            user_properties: Default::default(),
            ..src.clone()
        });
    }
    let Some(d) = t.datasets.iter_mut().find(|d| d.name == tds) else {
        return;
    };
    let have: std::collections::HashSet<u64> = d.snapshots.iter().map(|s| s.guid).collect();
    let mut txg = d
        .snapshots
        .iter()
        .filter_map(|s| s.createtxg)
        .max()
        .unwrap_or(0);
    for s in &src.snapshots {
        if !have.contains(&s.guid) {
            txg += 1;
            d.snapshots.push(Snapshot {
                createtxg: Some(txg),
                userrefs: 0,
                ..s.clone()
            });
        }
        if s.name == to {
            break;
        }
    }
}

fn postfix_effect(pf: &mut crate::model::PostfixObservation, kind: &ActionKind) {
    match kind {
        ActionKind::WriteFile { path, content } => {
            let name = path.rsplit('/').next().unwrap_or(path);
            pf.files.insert(name.to_string(), content.clone());
        }
        ActionKind::Postconf { settings, .. } => {
            for (k, v) in settings {
                pf.settings.insert(k.clone(), v.clone());
            }
        }
        ActionKind::PurgeArchive { queue_ids, .. } | ActionKind::DropQueued { queue_ids, .. } => {
            pf.queue.retain(|e| !queue_ids.contains(&e.queue_id));
        }
        _ => {}
    }
}
