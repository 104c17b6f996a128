//! What each action does to the model, with the failures the real tools report (a rollback
//! with later snapshots, an incremental receive onto a moved-on target, a held snapshot
//! destroyed, …). The checks that only make sense at the moment an action runs (a copy made
//! writable while another is writable, a purge of a copy no replica holds, a rollback that
//! discards writes nobody saved, a destroyed snapshot the prefix does not own) are recorded
//! as violations here.

use std::collections::BTreeSet;
use std::sync::Arc;

use spoolkeeper::plan::{Action, ActionKind, Target};
use spoolkeeper::spec::Spec;

use crate::world::{Copy, Flavour, Mail, Partial, Snap, World};

/// Per-action guarantee checks that failed.
#[derive(Debug, Default)]
pub struct Violations(pub Vec<String>);

impl Violations {
    pub fn push(&mut self, s: String) {
        self.0.push(s);
    }
}

fn node_host<'w>(w: &'w mut World, n: &str) -> Result<&'w mut crate::world::Node, String> {
    let node = w
        .nodes
        .get_mut(n)
        .ok_or_else(|| format!("{n} is not a node"))?;
    if !node.reachable() {
        return Err(format!("{n}: no answer within 5s"));
    }
    Ok(node)
}

fn copy<'w>(w: &'w mut World, n: &str, ds: &str) -> Result<&'w mut Copy, String> {
    node_host(w, n)?
        .copies
        .get_mut(ds)
        .ok_or_else(|| format!("cannot open '{ds}': dataset does not exist"))
}

/// Every (key) of `m` with at least one copy.
fn keys(m: &Mail) -> BTreeSet<crate::world::Key> {
    m.iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| k.clone())
        .collect()
}

/// Can another powered node write `instance` (its copy writable, or the instance running on a
/// writable copy)? The nodes named.
pub fn other_writers(w: &World, spec: &Spec, instance: &str, except: &str) -> Vec<String> {
    w.nodes
        .values()
        .filter(|n| n.up && n.name != except && !w.fenced.contains(&n.name))
        // the operator attested it is down: powering it on meanwhile is the operator's breach
        .filter(|n| !spec.spec.fenced.iter().any(|f| f.as_str() == n.name))
        .filter(|n| {
            w.copy_of(spec, &n.name, instance)
                .is_some_and(|c| c.writable())
        })
        .map(|n| n.name.clone())
        .collect()
}

fn instance_of_dataset(spec: &Spec, node: &str, ds: &str) -> Option<String> {
    spec.spec
        .instances
        .keys()
        .find(|i| World::dataset_of(spec, node, i.as_str()).as_deref() == Some(ds))
        .map(|i| i.to_string())
}

/// A snapshot of `content` on `c`.
fn take_snapshot(c: &mut Copy, name: &str, guid: u64, creation: jiff::Timestamp, txg: u64) {
    c.snaps.push(Snap {
        name: name.into(),
        guid,
        creation,
        txg,
        holds: BTreeSet::new(),
        content: Arc::new(c.live.clone()),
    });
    c.modified = false;
}

/// Run `a` against the model. `Err` is what the command would have printed.
pub fn run(
    w: &mut World,
    spec: &Spec,
    a: &Action,
    txg: &mut u64,
    v: &mut Violations,
) -> Result<(), String> {
    let node = match &a.host {
        Target::Node(n) => n.clone(),
        Target::Archive => String::new(),
        Target::Controller => String::new(),
    };
    *txg += 1;
    let t = *txg;
    match &a.kind {
        ActionKind::CreateDataset {
            dataset,
            properties,
        } => {
            let instance = instance_of_dataset(spec, &node, dataset).unwrap_or_default();
            let guid = w.guid();
            let n = node_host(w, &node)?;
            if n.copies.contains_key(dataset) {
                return Err(format!("cannot create '{dataset}': dataset already exists"));
            }
            n.copies.insert(
                dataset.clone(),
                Copy {
                    name: dataset.clone(),
                    instance,
                    guid,
                    live: Mail::new(),
                    modified: false,
                    readonly: false,
                    mounted: true,
                    snaps: Vec::new(),
                    user: Default::default(),
                    props: properties.clone(),
                    partial: None,
                },
            );
            Ok(())
        }
        ActionKind::SetProperties {
            dataset,
            properties,
        } => {
            let c = copy(w, &node, dataset)?;
            c.props.extend(properties.clone());
            Ok(())
        }
        ActionKind::SetReadonly { dataset, readonly } => {
            if !readonly {
                let inst = instance_of_dataset(spec, &node, dataset).unwrap_or_default();
                let others = other_writers(w, spec, &inst, &node);
                if !others.is_empty() {
                    v.push(format!(
                        "two writable copies: {node} made {dataset} writable while {} can write {inst}",
                        others.join(", ")
                    ));
                }
            }
            copy(w, &node, dataset)?.readonly = *readonly;
            Ok(())
        }
        ActionKind::Mount { dataset } => {
            let c = copy(w, &node, dataset)?;
            if c.mounted {
                return Err(format!(
                    "cannot mount '{dataset}': filesystem already mounted"
                ));
            }
            c.mounted = true;
            if !c.readonly {
                let inst = c.instance.clone();
                let others = other_writers(w, spec, &inst, &node);
                if !others.is_empty() {
                    v.push(format!(
                        "two writable copies: {node} mounted writable {dataset} while {} can write {inst}",
                        others.join(", ")
                    ));
                }
            }
            Ok(())
        }
        ActionKind::Unmount { dataset } => {
            copy(w, &node, dataset)?.mounted = false;
            Ok(())
        }
        ActionKind::StartInstance { instance } => {
            let ds = World::dataset_of(spec, &node, instance).unwrap_or_default();
            let c = copy(w, &node, &ds)?;
            if !c.mounted {
                return Err(format!(
                    "svc: dataset of {instance} is not mounted on {node}; refusing to start"
                ));
            }
            let writable = c.writable();
            if writable {
                let others = other_writers(w, spec, instance, &node);
                if !others.is_empty() {
                    v.push(format!(
                        "two actives: {instance} started on {node} while {} can write it",
                        others.join(", ")
                    ));
                }
            }
            node_host(w, &node)?.running.insert(instance.clone());
            Ok(())
        }
        ActionKind::StopInstance { instance } => {
            node_host(w, &node)?.running.remove(instance);
            Ok(())
        }
        ActionKind::Snapshot { dataset, name, .. } => {
            let guid = w.guid();
            let creation = w.node_clock(&node);
            let c = copy(w, &node, dataset)?;
            if c.snap(name).is_some() {
                return Err(format!(
                    "cannot create snapshot '{dataset}@{name}': dataset already exists"
                ));
            }
            take_snapshot(c, name, guid, creation, t);
            Ok(())
        }
        ActionKind::WriteFile { path, content } => {
            let file = path.rsplit('/').next().unwrap_or(path).to_string();
            match &a.host {
                Target::Archive => {
                    if !w.archive.reachable() {
                        return Err("archive: no answer within 5s".into());
                    }
                    w.archive.files.insert(file, content.clone());
                }
                _ => {
                    node_host(w, &node)?.files.insert(file, content.clone());
                }
            }
            Ok(())
        }
        ActionKind::Postconf { settings, .. } => {
            match &a.host {
                Target::Archive => {
                    if !w.archive.reachable() {
                        return Err("archive: no answer within 5s".into());
                    }
                    w.archive.settings.extend(settings.clone());
                }
                _ => node_host(w, &node)?.settings.extend(settings.clone()),
            }
            Ok(())
        }
        ActionKind::Fence { node: fenced } => {
            // the fencing command reaches the node's power controller, not the node
            if let Some(n) = w.nodes.get_mut(fenced) {
                n.up = false;
                n.running.clear();
            }
            w.fenced.insert(fenced.clone());
            Ok(())
        }
        ActionKind::ForgetFence { .. } => Ok(()),
        ActionKind::VerifyGuid {
            source,
            source_dataset,
            target,
            target_dataset,
            snapshot,
        } => {
            let g1 = copy(w, source, source_dataset)?
                .snap(snapshot)
                .map(|s| s.guid);
            let g2 = copy(w, target, target_dataset)?
                .snap(snapshot)
                .map(|s| s.guid);
            if g1.is_some() && g1 == g2 {
                Ok(())
            } else {
                Err(format!("guid mismatch after the send: {g1:?} vs {g2:?}"))
            }
        }
        ActionKind::Rollback {
            dataset,
            snapshot,
            destroy_later,
        } => {
            let preserved: Vec<Arc<Mail>> = node_host(w, &node)?.preserved.clone();
            let c = copy(w, &node, dataset)?;
            let Some(i) = c.snaps.iter().position(|s| s.name == *snapshot) else {
                return Err(format!(
                    "cannot rollback to '{dataset}@{snapshot}': no such snapshot"
                ));
            };
            if i + 1 < c.snaps.len() && !destroy_later {
                return Err(format!(
                    "cannot rollback to '{dataset}@{snapshot}': more recent snapshots or bookmarks exist\nuse '-r' to force deletion of the following snapshots and bookmarks:\n{}",
                    c.snaps[i + 1..]
                        .iter()
                        .map(|s| format!("{dataset}@{}", s.name))
                        .collect::<Vec<_>>()
                        .join("\n")
                ));
            }
            if let Some(h) = c.snaps[i + 1..].iter().find(|s| !s.holds.is_empty()) {
                return Err(format!(
                    "cannot destroy '{dataset}@{}': snapshot is held",
                    h.name
                ));
            }
            let later: Vec<String> = c.snaps[i + 1..].iter().map(|s| s.name.clone()).collect();
            if let Some(x) = node_host(w, &node)?
                .scratch
                .iter()
                .find(|x| x.dataset == *dataset && later.contains(&x.snapshot))
            {
                return Err(format!(
                    "cannot destroy '{dataset}@{}': snapshot has dependent clones\nuse '-R' to destroy the following datasets:\n{}",
                    x.snapshot, x.name
                ));
            }
            let c = copy(w, &node, dataset)?;
            // What the rollback discards that nobody saved.
            let target = keys(&c.snaps[i].content);
            let mut discarded = keys(&c.live);
            for s in &c.snaps[i + 1..] {
                discarded.extend(keys(&s.content));
            }
            let saved: BTreeSet<_> = preserved.iter().flat_map(|p| keys(p)).collect();
            let lost: Vec<_> = discarded
                .iter()
                .filter(|k| !target.contains(*k) && !saved.contains(*k))
                .cloned()
                .collect();
            if !lost.is_empty() {
                v.push(format!(
                    "a rollback of {node}:{dataset} to @{snapshot} discarded writes nobody saved: {} message(s), e.g. {:?}",
                    lost.len(),
                    lost[0]
                ));
            }
            c.snaps.truncate(i + 1);
            c.live = (*c.snaps[i].content).clone();
            c.modified = false;
            Ok(())
        }
        ActionKind::RenameDataset { dataset, to } => {
            let n = node_host(w, &node)?;
            if n.copies.contains_key(to) {
                return Err(format!("cannot rename to '{to}': dataset already exists"));
            }
            let mut c = n
                .copies
                .remove(dataset)
                .ok_or_else(|| format!("cannot open '{dataset}': dataset does not exist"))?;
            for x in n.scratch.iter_mut().filter(|x| x.dataset == *dataset) {
                // a clone's origin follows the rename
                x.dataset = to.clone();
            }
            c.name = to.clone();
            c.instance = format!("{}-aside", c.instance);
            c.mounted = false;
            n.copies.insert(to.clone(), c);
            Ok(())
        }
        ActionKind::AbortReceive { dataset } => {
            let c = copy(w, &node, dataset)?;
            if c.partial.take().is_none() {
                return Err(format!(
                    "'{dataset}' does not have any resumable receive state to abort"
                ));
            }
            Ok(())
        }
        ActionKind::SetUserProperty {
            dataset,
            property,
            value,
        } => {
            let c = copy(w, &node, dataset)?;
            match value {
                Some(v) => {
                    c.user.insert(property.clone(), v.clone());
                }
                None => {
                    c.user.remove(property);
                }
            }
            Ok(())
        }
        ActionKind::PreserveDelta {
            dataset,
            base,
            snapshot,
            ..
        } => {
            let guid = w.guid();
            let creation = w.node_clock(&node);
            let c = copy(w, &node, dataset)?;
            if c.snap(base).is_none() {
                return Err(format!(
                    "cannot send '{dataset}': incremental source @{base} does not exist"
                ));
            }
            if c.snap(snapshot).is_none() {
                take_snapshot(c, snapshot, guid, creation, t);
            }
            let content = c
                .snap(snapshot)
                .map(|s| s.content.clone())
                .unwrap_or_default();
            node_host(w, &node)?.preserved.push(content);
            Ok(())
        }
        ActionKind::ArchRestore { .. } => {
            Err("arch-restore is run by the simulator's replay (a bug if reached)".into())
        }
        ActionKind::WaitDelivered { domains, .. } => {
            node_host(w, &node)?;
            // Postfix delivers what it can while spoolkeeper waits
            w.deliver(spec, &node, true, false);
            let at = |r: &str| {
                r.rsplit_once('@')
                    .is_some_and(|(_, d)| domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
            };
            let left = node_host(w, &node)?
                .queue
                .iter()
                .filter(|e| e.local.iter().any(|r| at(r)))
                .count();
            if left > 0 {
                return Err(format!("{left} message(s) still queued after 60s"));
            }
            Ok(())
        }
        ActionKind::DropQueued { queue_ids, .. } => {
            let n = node_host(w, &node)?;
            n.queue.retain(|e| !queue_ids.iter().any(|q| *q == e.qid));
            Ok(())
        }
        ActionKind::FlushQueue => {
            node_host(w, &node)?;
            w.deliver(spec, &node, false, true);
            Ok(())
        }
        ActionKind::WaitArchived { queue_ids, .. } => {
            node_host(w, &node)?;
            // Postfix keeps trying the archive host while spoolkeeper waits
            w.deliver(spec, &node, false, true);
            let left = node_host(w, &node)?
                .queue
                .iter()
                .filter(|e| queue_ids.iter().any(|q| *q == e.qid) && !e.archive.is_empty())
                .count();
            if left > 0 {
                return Err(format!("{left} archive copie(s) still queued after 60s"));
            }
            Ok(())
        }
        ActionKind::PurgeArchive { queue_ids, .. } => {
            if !w.archive.reachable() {
                return Err("archive: no answer within 5s".into());
            }
            let ids: BTreeSet<&str> = queue_ids.iter().map(|q| q.as_str()).collect();
            let purged: Vec<crate::world::Held> = w
                .archive
                .hold
                .iter()
                .filter(|h| ids.contains(h.qid.as_str()))
                .cloned()
                .collect();
            for h in &purged {
                // another held copy of the same message for the same recipient (a replay
                // makes one) keeps protecting it
                let other_copy =
                    w.archive.hold.iter().any(|x| {
                        !ids.contains(x.qid.as_str()) && x.mid == h.mid && x.rcpt == h.rcpt
                    }) || w.nodes.values().any(|n| {
                        n.queue
                            .iter()
                            .any(|e| e.mid == h.mid && e.archive.contains(&h.rcpt))
                    });
                if !other_copy && !proven_replicated(w, spec, h) {
                    v.push(format!(
                        "a purge deleted held copy {} ({} for {}) that no snapshot on every node holds",
                        h.qid, h.mid, h.rcpt
                    ));
                }
            }
            w.archive.hold.retain(|h| !ids.contains(h.qid.as_str()));
            Ok(())
        }
        ActionKind::Replicate {
            source,
            source_dataset,
            target,
            target_dataset,
            base,
            to,
            relay,
            resume_token,
            resumable,
            ..
        } => {
            // both ends must answer (direct: the source reaches the target itself; relay:
            // the controller reaches both)
            let _ = relay;
            node_host(w, source)?;
            node_host(w, target)?;
            let src = copy(w, source, source_dataset)?.clone();
            let Some(to_i) = src.snaps.iter().position(|s| s.name == *to) else {
                return Err(format!(
                    "cannot open '{source_dataset}@{to}': dataset does not exist"
                ));
            };
            let from_i = match base {
                Some(b) => Some(
                    src.snaps
                        .iter()
                        .position(|s| s.name == *b)
                        .ok_or_else(|| format!("incremental source @{b} does not exist"))?,
                ),
                None => None,
            };
            let flavour = w.nodes.get(target).map(|n| n.flavour);
            let tn = node_host(w, target)?;
            let exists = tn.copies.contains_key(target_dataset);
            match (from_i, exists) {
                (None, true) if resume_token.is_none() => {
                    return Err(format!(
                        "cannot receive new filesystem stream: destination '{target_dataset}' exists"
                    ));
                }
                (Some(_), false) => {
                    return Err(format!(
                        "cannot receive incremental stream: destination '{target_dataset}' does not exist"
                    ));
                }
                _ => {}
            }
            if let Some(fi) = from_i {
                let t = tn.copies.get(target_dataset).ok_or("no target")?;
                let base_guid = src.snaps[fi].guid;
                match t.snaps.last() {
                    Some(last) if last.guid == base_guid => {}
                    Some(_) if t.snaps.iter().any(|s| s.guid == base_guid) => {
                        return Err(format!(
                            "cannot receive incremental stream: destination {target_dataset} has been modified since most recent snapshot"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "cannot receive incremental stream: most recent snapshot of {target_dataset} does not match incremental source"
                        ));
                    }
                }
                if t.modified {
                    return Err(format!(
                        "cannot receive incremental stream: destination {target_dataset} has been modified since most recent snapshot"
                    ));
                }
            }
            let _ = (resumable, flavour);
            let start = from_i.map_or(0, |i| i + 1);
            let entry = tn
                .copies
                .entry(target_dataset.clone())
                .or_insert_with(|| Copy {
                    name: target_dataset.clone(),
                    instance: src.instance.clone(),
                    guid: src.guid ^ 0x55,
                    live: Mail::new(),
                    modified: false,
                    readonly: false,
                    mounted: false,
                    snaps: Vec::new(),
                    user: Default::default(),
                    props: src.props.clone(),
                    partial: None,
                });
            for s in &src.snaps[start..=to_i] {
                *txg += 1;
                entry.snaps.push(Snap {
                    txg: *txg,
                    holds: BTreeSet::new(),
                    ..s.clone()
                });
            }
            entry.live = (*src.snaps[to_i].content).clone();
            entry.modified = false;
            entry.partial = None;
            Ok(())
        }
        ActionKind::Hold { dataset, snapshot } => {
            let c = copy(w, &node, dataset)?;
            let s = c
                .snaps
                .iter_mut()
                .find(|s| s.name == *snapshot)
                .ok_or_else(|| {
                    format!("cannot hold snapshot '{dataset}@{snapshot}': dataset does not exist")
                })?;
            // "tag already exists" is success (the adapter's idempotency)
            s.holds.insert("spoolkeeper".into());
            Ok(())
        }
        ActionKind::Release { dataset, snapshot } => {
            let c = copy(w, &node, dataset)?;
            if let Some(s) = c.snaps.iter_mut().find(|s| s.name == *snapshot) {
                s.holds.remove("spoolkeeper");
            }
            Ok(())
        }
        ActionKind::TeardownScratch { clone, .. } => {
            // `zfs destroy` of the clone (gone already: done)
            node_host(w, &node)?.scratch.retain(|c| c.name != *clone);
            Ok(())
        }
        ActionKind::DestroySnapshots {
            dataset, snapshots, ..
        } => {
            let prefix = spec.spec.snapshots.prefix.to_string();
            let origins: Vec<String> = node_host(w, &node)?
                .scratch
                .iter()
                .filter(|x| x.dataset == *dataset)
                .map(|x| x.snapshot.clone())
                .collect();
            let c = copy(w, &node, dataset)?;
            for name in snapshots {
                if origins.contains(name) {
                    return Err(format!(
                        "cannot destroy snapshot {dataset}@{name}: snapshot has dependent clones"
                    ));
                }
                if spoolkeeper::decide::retention::parse_owned(&prefix, name).is_none() {
                    v.push(format!(
                        "destroyed {node}:{dataset}@{name}, which prefix {prefix} does not own"
                    ));
                }
                let Some(i) = c.snaps.iter().position(|s| s.name == *name) else {
                    continue;
                };
                if !c.snaps[i].holds.is_empty() {
                    return Err(format!(
                        "cannot destroy snapshot {dataset}@{name}: dataset is busy"
                    ));
                }
                c.snaps.remove(i);
            }
            Ok(())
        }
    }
}

/// The held copy's message is in a snapshot of every node's copy of its instance: what a
/// purge needs.
fn proven_replicated(w: &World, spec: &Spec, h: &crate::world::Held) -> bool {
    let Some(arch) = spec.spec.archive.as_ref() else {
        return false;
    };
    let Some((l, d)) = arch.address.decode(&h.rcpt) else {
        return false;
    };
    let key = (h.mid.clone(), format!("{l}@{}", d.to_ascii_lowercase()));
    let Some((inst, _)) = spec
        .spec
        .instances
        .iter()
        .find(|(_, i)| i.domains.iter().any(|x| x.eq_ignore_ascii_case(&d)))
    else {
        return false;
    };
    let copies: Vec<&Copy> = w
        .nodes
        .keys()
        .filter_map(|n| w.copy_of(spec, n, inst.as_str()))
        .collect();
    if copies.len() < spec.spec.nodes.len() {
        return false;
    }
    // every copy holds it in one of its snapshots (replicas may hold different bases)
    copies.iter().all(|c| {
        c.snaps
            .iter()
            .any(|s| s.content.get(&key).is_some_and(|v| !v.is_empty()))
    })
}

/// A transfer interrupted by a fault: a resumable receive leaves its state on the target.
pub fn interrupt_replication(w: &mut World, a: &Action) {
    if let ActionKind::Replicate {
        target,
        target_dataset,
        resumable,
        ..
    } = &a.kind
        && let Some(n) = w.nodes.get_mut(target)
        && n.flavour == Flavour::OpenZfs
        && *resumable
        && let Some(c) = n.copies.get_mut(target_dataset)
    {
        c.partial = Some(Partial {
            token: Some(format!("1-{}-sim", c.guid)),
        });
    }
}
