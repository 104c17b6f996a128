//! The `arch_restore` action against the model: the same window and decision functions as
//! the real replay (`spoolkeeper::decide::restore::{instance_inputs, plan_instance, decide}`),
//! with the model standing in for postcat (held copies), doveadm (the mailbox, as an IMAP
//! `SINCE` search sees it), postqueue (the active node's queue) and `sendmail -bs`.

use std::collections::{BTreeMap, BTreeSet};

use jiff::SignedDuration;
use spoolkeeper::decide::archive::HeldCopy;
use spoolkeeper::decide::restore::{self, MessageAction};
use spoolkeeper::model::Observation;
use spoolkeeper::plan::Context;
use spoolkeeper::spec::Spec;

use crate::world::{QEntry, World};

/// How a replay ended.
pub enum Replay {
    Done {
        replayed: usize,
    },
    /// Killed after `sent` messages (the next one may or may not have been accepted).
    Killed,
}

/// The replay ledger: (archive queue id, original recipient, node replayed into).
pub type Ledger = BTreeSet<(String, String, String)>;

/// The replay target of an `arch_restore` action, as the executor reads it.
pub fn target_of(kind: &spoolkeeper::plan::ActionKind) -> restore::Target<'_> {
    use restore::{Target, Window};
    match kind {
        spoolkeeper::plan::ActionKind::ArchRestore { node, anchor, .. } => Target {
            node: node.as_deref(),
            window: match (node, anchor) {
                (_, Some(a)) => Window::Anchor(a),
                (Some(_), None) => Window::Everything,
                (None, None) => Window::Newest,
            },
        },
        _ => Target::ACTIVE,
    }
}

/// Replay archived mail of `instance` into the node that serves it. `stop_after`: the controller
/// dies after that many messages were accepted; `last_unrecorded`: the message in flight
/// was accepted but not recorded.
#[allow(clippy::too_many_arguments)]
pub fn run(
    w: &mut World,
    spec: &Spec,
    obs: &Observation,
    instance: &str,
    target: restore::Target<'_>,
    ctx: &Context,
    ledger: &mut Ledger,
    stop_after: Option<usize>,
    last_unrecorded: bool,
) -> Result<Replay, String> {
    let arch = spec.spec.archive.as_ref().ok_or("no archive in the spec")?;
    let template = &arch.address;
    let active = target
        .node
        .map_or_else(|| spec.spec.active.to_string(), str::to_owned);
    if !w.nodes.get(&active).is_some_and(|n| n.reachable()) {
        return Err(format!("the active node {active} is not reachable"));
    }
    if !w.archive.reachable() {
        return Err("the archive host is not reachable".into());
    }
    let (iname, inst) = spec
        .spec
        .instances
        .iter()
        .find(|(n, _)| n.as_str() == instance)
        .ok_or("no such instance")?;
    let instances = [(iname.as_str(), inst)];
    let held: Vec<HeldCopy> = w
        .archive
        .hold
        .iter()
        .filter(|h| restore::original_recipient(template, &inst.domains, &h.rcpt).is_some())
        .map(|h| HeldCopy {
            queue_id: h.qid.clone(),
            arrival_time: h.arrival,
            sender: h.sender.clone(),
            recipients: vec![h.rcpt.clone()],
            message_id: Some(h.mid.clone()),
        })
        .collect();
    let inputs = restore::instance_inputs(spec, obs, &instances, ctx, &active, target.window);
    // what the ledger says was replayed into this copy (`Ledger::read_scoped`): the node and
    // its last promotion (`restore::replay_scope`)
    let epoch = w
        .copy_of(spec, &active, instance)
        .and_then(|c| c.user.get(spoolkeeper::plan::RESYNC_PROPERTY))
        .map_or(0, |v| spoolkeeper::plan::Marks::decode(v).epoch);
    let scope = if epoch == 0 {
        active.clone()
    } else {
        format!("{active}@{epoch}")
    };
    let replayed: BTreeSet<(String, String)> = ledger
        .iter()
        .filter(|(_, _, n)| *n == scope)
        .map(|(q, r, _)| (q.clone(), r.clone()))
        .collect();
    // users and the SINCE date doveadm is asked for, as the shell computes them
    let none = BTreeSet::new();
    let mut since = BTreeMap::new();
    for input in &inputs {
        let first = restore::plan_instance(input, &held, template, &none, &replayed);
        for u in restore::users_to_check(&first) {
            // as the shell asks doveadm: the whole mailbox
            let _ = first.since;
            since.insert(u, None::<jiff::Timestamp>);
        }
    }
    let copy = w.copy_of(spec, &active, instance);
    let mut mailboxes = BTreeSet::new();
    if let Some(c) = copy.filter(|c| c.mounted) {
        for ((mid, rcpt), saved) in &c.live {
            let Some(s) = since.get(rcpt) else { continue };
            let floor = s.map(|t| {
                t.checked_sub(SignedDuration::from_hours(24))
                    .unwrap_or(t)
                    .to_zoned(jiff::tz::TimeZone::UTC)
                    .date()
            });
            let visible = saved
                .iter()
                .any(|at| floor.is_none_or(|f| at.to_zoned(jiff::tz::TimeZone::UTC).date() >= f));
            if visible {
                mailboxes.insert((mid.clone(), rcpt.clone()));
            }
        }
    }
    let queued: BTreeSet<(String, String)> = w
        .nodes
        .get(&active)
        .map(|n| {
            n.queue
                .iter()
                .flat_map(|e| {
                    e.local
                        .iter()
                        .map(|r| (e.mid.clone(), r.to_ascii_lowercase()))
                })
                .collect()
        })
        .unwrap_or_default();
    let (_, messages, errors) = restore::decide(
        &active,
        &inputs,
        &held,
        template,
        &mailboxes,
        &queued,
        &replayed,
        &BTreeMap::new(),
    );
    if let Ok(t) = std::env::var("SK_SIM_TRACK") {
        for m in messages
            .iter()
            .filter(|m| m.message_id.as_deref() == Some(t.as_str()))
        {
            eprintln!(
                "    arch_restore into {active}: {} {:?} {} (mailbox visible: {}, since {:?}, copy mounted {:?}, saved {:?})",
                m.queue_id,
                m.action,
                m.reason,
                mailboxes.contains(&(t.clone(), m.recipient.clone())),
                since.get(&m.recipient),
                copy.map(|c| c.mounted),
                copy.and_then(|c| c.live.get(&(t.clone(), m.recipient.clone())))
            );
        }
    }
    let mut replayed = 0;
    for m in messages
        .iter()
        .filter(|m| m.action == MessageAction::WouldReplay)
    {
        if stop_after == Some(replayed) {
            if last_unrecorded {
                inject(
                    w,
                    spec,
                    &active,
                    &m.message_id.clone().unwrap_or_default(),
                    &m.recipient,
                    &m.sender,
                );
            }
            return Ok(Replay::Killed);
        }
        if !w.nodes.get(&active).is_some_and(|n| n.reachable()) {
            return Err(format!("the SMTP session on {active} broke"));
        }
        inject(
            w,
            spec,
            &active,
            &m.message_id.clone().unwrap_or_default(),
            &m.recipient,
            &m.sender,
        );
        ledger.insert((m.queue_id.clone(), m.recipient.clone(), scope.clone()));
        replayed += 1;
    }
    if let Some(e) = errors.first() {
        return Err(e.clone());
    }
    if let Some(f) = messages.iter().find(|m| m.action == MessageAction::Failed) {
        return Err(format!("{}: {}", f.queue_id, f.reason));
    }
    Ok(Replay::Done { replayed })
}

/// `sendmail -bs` on the active node: queued there like any accepted message (with its BCC
/// copy when the table is in place).
fn inject(w: &mut World, spec: &Spec, node: &str, mid: &str, rcpt: &str, sender: &str) {
    let (l, d) = rcpt.rsplit_once('@').unwrap_or((rcpt, ""));
    let arch = spec
        .spec
        .archive
        .as_ref()
        .filter(|_| w.bcc_configured(node, d))
        .map(|a| a.address.encode(l, d));
    let qid = w.qid();
    let arrival = w.node_clock(node);
    if let Some(n) = w.nodes.get_mut(node) {
        n.queue.push(QEntry {
            qid,
            mid: mid.into(),
            sender: sender.into(),
            local: vec![rcpt.into()],
            archive: arch.into_iter().collect(),
            arrival,
        });
    }
}
