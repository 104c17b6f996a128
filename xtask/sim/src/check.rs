//! The guarantees as checks on the model, run after every step and at quiescence.

use std::collections::BTreeSet;

use spoolkeeper::spec::Spec;

use crate::world::{Key, World};

/// Never two serving copies: at most one powered node runs an instance on a writable copy.
pub fn one_server(w: &World, spec: &Spec) -> Result<(), String> {
    for inst in spec.spec.instances.keys() {
        let serving: Vec<&str> = w
            .nodes
            .values()
            .filter(|n| n.up && n.running.contains(inst.as_str()))
            .filter(|n| {
                w.copy_of(spec, &n.name, inst.as_str())
                    .is_some_and(|c| c.writable())
            })
            .map(|n| n.name.as_str())
            .collect();
        if serving.len() > 1 {
            return Err(format!(
                "two actives: {inst} serves from writable copies on {}",
                serving.join(" and ")
            ));
        }
    }
    Ok(())
}

/// Where an accepted message is kept at this moment, if anywhere.
fn kept(w: &World, spec: &Spec, key: &Key) -> bool {
    let (mid, rcpt) = key;
    let archived = spec.spec.archive.as_ref().and_then(|a| {
        let (l, d) = rcpt.rsplit_once('@')?;
        Some(a.address.encode(l, d))
    });
    let in_queue = w.nodes.values().any(|n| {
        n.queue.iter().any(|e| {
            e.mid == *mid
                && (e.local.iter().any(|r| r == rcpt)
                    || archived.as_ref().is_some_and(|x| e.archive.contains(x)))
        })
    });
    if in_queue {
        return true;
    }
    if archived
        .as_ref()
        .is_some_and(|x| w.archive.hold.iter().any(|h| h.mid == *mid && h.rcpt == *x))
    {
        return true;
    }
    let has = |m: &crate::world::Mail| m.get(key).is_some_and(|v| !v.is_empty());
    w.nodes.values().any(|n| {
        n.preserved.iter().any(|p| has(p))
            || n.copies
                .values()
                .any(|c| has(&c.live) || c.snaps.iter().any(|s| has(&s.content)))
    })
}

/// No mail lost: every accepted message is, at every moment, in a copy (live, snapshot or
/// saved delta), held on the archive, or in a queue that will deliver it.
pub fn nothing_lost(w: &World, spec: &Spec) -> Result<(), String> {
    for a in &w.accepted {
        if !kept(w, spec, &a.key) {
            return Err(format!(
                "mail lost: {} for {} (accepted by {} at {}) is in no copy, queue or archive",
                a.key.0, a.key.1, a.node, a.at
            ));
        }
    }
    Ok(())
}

/// None delivered twice: no mailbox holds a message twice.
pub fn no_duplicate(w: &World) -> Result<(), String> {
    for n in w.nodes.values() {
        for c in n.copies.values() {
            if let Some((k, v)) = c.live.iter().find(|(_, v)| v.len() > 1) {
                return Err(format!(
                    "delivered twice: {} for {} is {} times in {}:{}",
                    k.0,
                    k.1,
                    v.len(),
                    n.name,
                    c.name
                ));
            }
        }
    }
    Ok(())
}

/// After convergence: every accepted message is in the active node's copy exactly once, and
/// the instance runs there only.
pub fn exactly_once(w: &World, spec: &Spec) -> Result<(), String> {
    let active = spec.spec.active.as_str();
    for inst in spec.spec.instances.keys() {
        let runners: Vec<&str> = w
            .nodes
            .values()
            .filter(|n| n.up && n.running.contains(inst.as_str()))
            .map(|n| n.name.as_str())
            .collect();
        if runners != [active] {
            return Err(format!(
                "after convergence {inst} runs on [{}], not on the active node {active} only",
                runners.join(", ")
            ));
        }
    }
    let mut missing: Vec<&Key> = Vec::new();
    let mut seen = BTreeSet::new();
    for a in &w.accepted {
        if !seen.insert(a.key.clone()) {
            continue;
        }
        let n = w
            .copy_of(spec, active, &a.instance)
            .and_then(|c| c.live.get(&a.key))
            .map_or(0, Vec::len);
        match n {
            1 => {}
            0 => missing.push(&a.key),
            k => {
                return Err(format!(
                    "after convergence {} for {} is {k} times in {active}'s mailbox",
                    a.key.0, a.key.1
                ));
            }
        }
    }
    if let Some(k) = missing.first() {
        return Err(format!(
            "after convergence {} accepted message(s) are not in {active}'s mailbox, e.g. {} for {}",
            missing.len(),
            k.0,
            k.1
        ));
    }
    Ok(())
}

/// Where a message is, for tracing (`SK_SIM_TRACK=<m3@sim>`).
pub fn whereabouts(w: &World, spec: &Spec, mid: &str) -> String {
    let mut out = Vec::new();
    for n in w.nodes.values() {
        for e in n.queue.iter().filter(|e| e.mid == mid) {
            out.push(format!(
                "{}:queue(local {:?}, archive {:?})",
                n.name, e.local, e.archive
            ));
        }
        for c in n.copies.values() {
            if c.live.keys().any(|k| k.0 == mid) {
                out.push(format!("{}:{}:live", n.name, c.name));
            }
            let snaps: Vec<&str> = c
                .snaps
                .iter()
                .filter(|s| s.content.keys().any(|k| k.0 == mid))
                .map(|s| s.name.as_str())
                .collect();
            if !snaps.is_empty() {
                out.push(format!("{}:{}@[{}]", n.name, c.name, snaps.join(" ")));
            }
        }
        if n.preserved.iter().any(|p| p.keys().any(|k| k.0 == mid)) {
            out.push(format!("{}:preserved", n.name));
        }
    }
    for h in w.archive.hold.iter().filter(|h| h.mid == mid) {
        out.push(format!("archive:{} (arrived {})", h.qid, h.arrival));
    }
    let _ = spec;
    out.join(", ")
}
