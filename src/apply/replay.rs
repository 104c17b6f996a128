//! `arch-restore`, the shell: dump the held copies on the archive host, read what the serving
//! node holds and is delivering, re-inject in one SMTP session, record each `250` in the
//! ledger. The decisions are `crate::decide::restore`.
//!
//! # The flow, and its round trips
//!
//! 1. observe (done by the caller): the active node's datasets and snapshots, the archive
//!    host's hold queue (`postqueue -j`) and both clock offsets;
//! 2. the archive host: `postcat -d -o -q ID…` of every held copy addressed to the instances'
//!    archive addresses, in chunks of [`POSTCAT_CHUNK`] ids (one call up to that many; the
//!    chunk keeps the SSH command line well under the protocol's packet size);
//! 3. the active node: `postqueue -j` (what its own Postfix is still delivering), then ONE
//!    batch of `postcat` of those messages (their Message-IDs) and `doveadm fetch
//!    hdr.message-id` per recipient (which Message-IDs each mailbox already holds);
//! 4. the active node: up to [`REPLAY_SESSIONS`] parallel `sendmail -bs` sessions (SSH
//!    channels of the one connection) sharing the re-injections, each recorded in the replay
//!    ledger right after its `250`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;

use crate::adapters::dovecot;
use crate::adapters::mail::{self, MailPlace};
use crate::adapters::postfix_cmd::{self, HeldMessage};
use crate::decide::archive;
use crate::decide::restore::*;
use crate::model::{Observation, QueueEntry};
use crate::observe::Connections;
use crate::spec::Spec;
use crate::state::ledger::{Ledger, LedgerEntry};
use crate::transport::Batch;
use crate::transport::host::Host;
use crate::transport::smtp;

/// Most queue ids per `postcat` call (about 40 KB of command line).
pub const POSTCAT_CHUNK: usize = 2000;

/// How long the SMTP session waits for one reply.
const SMTP_TIMEOUT: Duration = Duration::from_secs(120);

/// The queue id Postfix names in a `250 … queued as ID` reply.
pub fn queued_as(reply: &smtp::Reply) -> Option<String> {
    let last = reply.lines.last()?;
    let id = last.split_once("queued as ")?.1.trim();
    postfix_cmd::is_queue_id(id).then(|| id.to_owned())
}

/// `postcat` every id (chunked), asking again without an id that left the queue meanwhile.
/// Returns the dumped messages and warnings.
pub(crate) async fn dump_held(
    archive: &Host,
    ids: &[&str],
) -> Result<(Vec<HeldMessage>, Vec<String>), String> {
    let mut messages: Vec<HeldMessage> = Vec::new();
    let mut warnings = Vec::new();
    for chunk in ids.chunks(POSTCAT_CHUNK) {
        let mut todo: Vec<&str> = chunk.to_vec();
        // each retry removes at least one id: bounded by the chunk length
        for _ in 0..=chunk.len() {
            if todo.is_empty() {
                break;
            }
            let argv =
                postfix_cmd::postcat_argv(todo.iter().copied()).map_err(|e| e.to_string())?;
            let out = archive
                .run(&argv)
                .await
                .map_err(|e| format!("postcat on the archive host: {e}"))?;
            let dump = postfix_cmd::parse_postcat(&out.stdout)
                .map_err(|e| format!("postcat on the archive host: {e}"))?;
            if let Some(t) = &dump.truncated {
                warnings.push(format!(
                    "held copy {t}: postcat's dump was cut short; not replayed this time"
                ));
            }
            let got: BTreeSet<String> = dump.ids().into_iter().map(str::to_owned).collect();
            messages.extend(dump.messages);
            if out.success() {
                break;
            }
            let stderr = out.stderr_text();
            let Some(missing) = postfix_cmd::postcat_missing_id(&stderr) else {
                return Err(format!(
                    "postcat on the archive host exited {:?}: {}",
                    out.status,
                    stderr.trim()
                ));
            };
            warnings.push(format!(
                "held copy {missing} left the queue since it was listed (purged or released); not replayed"
            ));
            let before = todo.len();
            todo.retain(|id| *id != missing && !got.contains(*id));
            if todo.len() == before {
                return Err(format!(
                    "postcat on the archive host keeps failing: {}",
                    stderr.trim()
                ));
            }
        }
    }
    Ok((messages, warnings))
}

/// What the active node holds or is delivering, read in ONE batch: `postcat` of each of its
/// queued messages for our domains (listed just before by `postqueue -j`), then `doveadm
/// fetch` of each user's Message-IDs. The order closes the race with normal delivery: a
/// message listed in the queue and gone when postcat runs was delivered before doveadm reads
/// the mailbox; a message accepted after the listing has its archive copy made after the
/// archive host was observed, so it is not among the held copies considered.
///
/// Returns (in mailboxes, in the queue, users that could not be checked with why).
#[allow(clippy::type_complexity)]
async fn spool_state(
    node: &Host,
    place: Option<&MailPlace>,
    pending: &[&QueueEntry],
    users: &BTreeSet<String>,
    since: &BTreeMap<String, Option<Timestamp>>,
    domains: &[String],
    delimiters: &str,
) -> Result<
    (
        BTreeSet<(String, String)>,
        BTreeSet<(String, String)>,
        BTreeMap<String, String>,
    ),
    String,
> {
    let mut present = BTreeSet::new();
    let mut broken = BTreeMap::new();
    let mut b = Batch::new();
    let mut queued_ids = Vec::new();
    for e in pending {
        match postfix_cmd::postcat_argv([e.queue_id.as_str()]) {
            Ok(a) => {
                queued_ids.push((*e, b.push(mail::wrap(place, a))));
            }
            Err(err) => {
                for r in e.recipients.iter() {
                    broken.insert(r.address.to_string(), err.to_string());
                }
            }
        }
    }
    let mut who = Vec::new();
    for u in users {
        // the mailbox Postfix delivers the address to (plus-addressing)
        let mailbox = mailbox_user(u, delimiters);
        match dovecot::fetch_message_ids_argv(&mailbox, since.get(u).copied().flatten()) {
            Ok(a) => {
                who.push((u.clone(), b.push(mail::wrap(place, a))));
            }
            Err(e) => {
                broken.insert(u.clone(), e.to_string());
            }
        }
    }
    if b.commands().is_empty() {
        return Ok((present, BTreeSet::new(), broken));
    }
    let outs = node
        .run_slots(&b)
        .await
        .map_err(|e| format!("postcat/doveadm on the active node: {e}"))?;
    let mut dumped = Vec::new();
    for (e, o) in queued_ids
        .iter()
        .filter_map(|(e, slot)| Some((e, outs.get(*slot)?)))
    {
        let parsed = postfix_cmd::parse_postcat(&o.stdout);
        match (o.success(), parsed) {
            (true, Ok(d)) if d.truncated.is_none() => dumped.extend(d.messages),
            // delivered (or bounced) between the listing and now: the mailbox check sees it
            (false, _) if postfix_cmd::postcat_missing_id(&o.stderr_text()).is_some() => {}
            (_, res) => {
                let why = match res {
                    Err(err) => err.to_string(),
                    Ok(_) => format!(
                        "postcat of spool message {} exited {:?}: {}",
                        e.queue_id,
                        o.status,
                        o.stderr_text().trim()
                    ),
                };
                for r in e.recipients.iter() {
                    broken.insert(r.address.to_string(), why.clone());
                }
            }
        }
    }
    let queued = pending_pairs(&dumped, domains);
    for (u, o) in who
        .into_iter()
        .filter_map(|(u, slot)| Some((u, outs.get(slot)?)))
    {
        let outcome = dovecot::fetch_outcome(o.status, &o.stdout_text(), &o.stderr_text());
        match mailbox_check(&u, delimiters, outcome) {
            Ok(pairs) => present.extend(pairs),
            Err(why) => {
                broken.insert(u, why);
            }
        }
    }
    Ok((present, queued, broken))
}

fn would_replay(messages: &[MessageReport]) -> Vec<usize> {
    messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.action == MessageAction::WouldReplay)
        .map(|(i, _)| i)
        .collect()
}

fn fail_all(messages: &mut [MessageReport], todo: &[usize], why: &str) {
    for &i in todo {
        messages[i].action = MessageAction::Failed;
        messages[i].reason = format!("not sent: {why}; the next run retries it");
    }
}

/// How many `sendmail -bs` sessions share a replay (each its own SSH channel on the one
/// connection). Postfix's `postdrop` commits every message with an fsync of its own: the
/// sessions overlap those and the round trips; the ledger (its own fsync per entry) is shared.
pub const REPLAY_SESSIONS: usize = 4;

/// The fewest messages worth a session of their own.
const PER_SESSION_MIN: usize = 16;

/// Re-inject every `would_replay` line of `messages` over up to [`REPLAY_SESSIONS`] parallel
/// `sendmail -bs` sessions on the active node, each message recorded in the ledger right after
/// its `250`, before its session sends the next. A crash leaves at most one accepted,
/// unrecorded message per session: the next run's Message-ID check catches it, as with one.
async fn replay_all(
    node: &Host,
    place: Option<&MailPlace>,
    messages: &mut [MessageReport],
    contents: &BTreeMap<String, HeldMessage>,
    ledger: &mut Ledger,
    errors: &mut Vec<String>,
) {
    let todo = would_replay(messages);
    if todo.is_empty() {
        return;
    }
    let k = todo
        .len()
        .div_ceil(PER_SESSION_MIN)
        .clamp(1, REPLAY_SESSIONS);
    // round robin: messages of one mailbox spread, each session's share in queue order
    let mut shares: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (n, &i) in todo.iter().enumerate() {
        shares[n % k].push(i);
    }
    let shared = std::sync::Mutex::new(std::mem::replace(ledger, Ledger::new(Path::new(""), "")));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut parts: Vec<(Vec<usize>, Vec<MessageReport>, Vec<String>)> = shares
        .into_iter()
        .map(|idx| {
            let reports = idx.iter().map(|&i| messages[i].clone()).collect();
            (idx, reports, Vec::new())
        })
        .collect();
    futures::future::join_all(parts.iter_mut().map(|(_, reports, errs)| {
        one_session(node, place, reports, contents, &shared, &stop, errs)
    }))
    .await;
    *ledger = shared
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (idx, reports, errs) in parts {
        for (i, r) in idx.into_iter().zip(reports) {
            messages[i] = r;
        }
        errors.extend(errs);
    }
}

/// One `sendmail -bs` session of [`replay_all`].
async fn one_session(
    node: &Host,
    place: Option<&MailPlace>,
    messages: &mut [MessageReport],
    contents: &BTreeMap<String, HeldMessage>,
    ledger: &std::sync::Mutex<Ledger>,
    stop: &std::sync::atomic::AtomicBool,
    errors: &mut Vec<String>,
) {
    let todo = would_replay(messages);
    let mut child = match node
        .spawn(&mail::wrap(place, postfix_cmd::sendmail_bs_argv()))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let why = format!("cannot start sendmail -bs on {}: {e}", node.label());
            fail_all(messages, &todo, &why);
            errors.push(why);
            return;
        }
    };
    let stdin = std::mem::replace(&mut child.stdin, Box::pin(tokio::io::sink()));
    let stdout = std::mem::replace(&mut child.stdout, Box::pin(tokio::io::empty()));
    let stream = tokio::io::join(stdout, stdin);
    let clean = replay_session_shared(
        stream,
        node.label(),
        messages,
        contents,
        ledger,
        stop,
        errors,
    )
    .await;
    match child.wait().await {
        Ok(o) if !o.success() => {
            let why = format!(
                "sendmail -bs on {} exited {:?}: {}",
                node.label(),
                o.status,
                o.stderr_text().trim()
            );
            if clean {
                tracing::warn!("{why}");
            } else {
                errors.push(why);
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(host = node.label(), "sendmail -bs: {e}"),
    }
}

/// [`replay_session_shared`] with a ledger of its own (one session, the tests).
#[cfg(test)]
async fn replay_session<S>(
    stream: S,
    label: &str,
    messages: &mut [MessageReport],
    contents: &BTreeMap<String, HeldMessage>,
    ledger: &mut Ledger,
    errors: &mut Vec<String>,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let shared = std::sync::Mutex::new(std::mem::replace(ledger, Ledger::new(Path::new(""), "")));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let clean =
        replay_session_shared(stream, label, messages, contents, &shared, &stop, errors).await;
    *ledger = shared
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    clean
}

/// The SMTP part of [`replay_all`], over any stream. Returns whether the session ended
/// cleanly (`QUIT`); when it did not, every message not accepted is `failed` and the reason
/// is in `errors`.
async fn replay_session_shared<S>(
    stream: S,
    label: &str,
    messages: &mut [MessageReport],
    contents: &BTreeMap<String, HeldMessage>,
    ledger: &std::sync::Mutex<Ledger>,
    stop: &std::sync::atomic::AtomicBool,
    errors: &mut Vec<String>,
) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use std::sync::atomic::Ordering;
    let todo = would_replay(messages);
    let mut client = match smtp::Client::start(stream, "spoolkeeper", SMTP_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => {
            let why = format!("sendmail -bs on {label}: {e}");
            fail_all(messages, &todo, &why);
            errors.push(why);
            return false;
        }
    };
    for (n, &i) in todo.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            // another session could not write the ledger: sending more would widen the gap
            fail_all(messages, &todo[n..], "the replay ledger cannot be written");
            break;
        }
        let m = &mut messages[i];
        let Some(held) = contents.get(&m.queue_id) else {
            m.action = MessageAction::Failed;
            m.reason = "its content was not dumped by postcat".into();
            continue;
        };
        let rcpts = [m.recipient.clone()];
        let sent = client
            .send(smtp::Message {
                sender: &m.sender,
                recipients: &rcpts,
                content: &held.content,
            })
            .await;
        match sent {
            Ok(smtp::Outcome::Accepted { reply, refused }) if refused.is_empty() => {
                let entry = LedgerEntry {
                    at: Timestamp::now(),
                    instance: m.instance.clone(),
                    queue_id: m.queue_id.clone(),
                    recipient: m.recipient.clone(),
                    message_id: m.message_id.clone(),
                    queued_as: queued_as(&reply),
                    node: None,
                };
                m.reply = Some(reply.text());
                m.action = MessageAction::Replayed;
                let recorded = {
                    let mut l = ledger
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let entry = LedgerEntry {
                        node: Some(l.scope_of(&entry.instance, label)),
                        ..entry
                    };
                    l.record(&entry).map_err(|e| (e, l.path.clone()))
                };
                if let Err((e, path)) = recorded {
                    stop.store(true, Ordering::SeqCst);
                    // Accepted but not recorded: stop here; the Message-ID check of the next
                    // run must catch this one, and sending more would widen the gap.
                    m.reason = format!(
                        "accepted, but the replay ledger could not record it ({e}); the next run relies on the Message-ID check for it"
                    );
                    errors.push(format!(
                        "replay ledger {}: {e}; stopped re-injecting",
                        path.display()
                    ));
                    fail_all(
                        messages,
                        &todo[n + 1..],
                        "the replay ledger cannot be written",
                    );
                    return false;
                }
            }
            Ok(smtp::Outcome::Accepted { reply, refused }) => {
                m.action = MessageAction::Failed;
                m.reply = Some(reply.text());
                m.reason = format!(
                    "recipient refused: {}",
                    refused
                        .iter()
                        .map(|(a, r)| format!("{a}: {}", r.text()))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            Ok(smtp::Outcome::Rejected { stage, reply }) => {
                m.action = MessageAction::Failed;
                m.reason = format!("refused at {stage}");
                m.reply = Some(reply.text());
            }
            Err(e) => {
                let why = format!("the SMTP session on {label} broke: {e}");
                m.action = MessageAction::Failed;
                m.reason = format!(
                    "in flight when {why}; the next run checks its Message-ID before sending again"
                );
                fail_all(messages, &todo[n + 1..], &why);
                errors.push(why);
                return false;
            }
        }
    }
    match client.quit().await {
        Ok(_) => true,
        Err(e) => {
            // every message already has its answer; a lost QUIT changes nothing
            tracing::warn!(host = label, "QUIT: {e}");
            true
        }
    }
}

/// Replay archived mail into the active node for every instance of `spec` (or `instance`).
/// `conns` and `obs` come from [`crate::observe`]; no lock is taken (see the module docs).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    spec: &Spec,
    conns: &Connections,
    obs: &Observation,
    instance: Option<&str>,
    target: Target<'_>,
    dry_run: bool,
    state_dir: &Path,
) -> Result<Report, String> {
    let cluster = spec.name.as_str();
    if spec.spec.archive.is_none() {
        return Err(format!(
            "cluster {cluster} has no `archive:`: nothing to restore from"
        ));
    }
    let instances: Vec<(&str, &crate::spec::Instance)> = match instance {
        Some(want) => {
            let found = spec
                .spec
                .instances
                .iter()
                .find(|(n, _)| n.as_str() == want)
                .ok_or_else(|| format!("cluster {cluster} has no instance `{want}`"))?;
            vec![(found.0.as_str(), found.1)]
        }
        None => spec
            .spec
            .instances
            .iter()
            .map(|(n, i)| (n.as_str(), i))
            .collect(),
    };
    // One pass per mail system: the instances the node's Postfix serves together, then each
    // instance with its own (`mail.in: runtime`), whose queue and mailboxes are its own.
    type Group<'s> = (Option<MailPlace>, Vec<(&'s str, &'s crate::spec::Instance)>);
    let mut groups: Vec<Group<'_>> = Vec::new();
    let shared: Vec<_> = instances
        .iter()
        .copied()
        .filter(|(_, i)| i.mail.is_node())
        .collect();
    if !shared.is_empty() {
        groups.push((None, shared));
    }
    for (n, i) in instances.iter().copied().filter(|(_, i)| !i.mail.is_node()) {
        groups.push((MailPlace::of(spec, n), vec![(n, i)]));
    }
    let mut total: Option<Report> = None;
    for (place, group) in groups {
        let r = run_group(
            spec,
            conns,
            obs,
            group,
            place.as_ref(),
            target,
            dry_run,
            state_dir,
        )
        .await?;
        total = Some(match total {
            None => r,
            Some(mut t) => {
                t.instances.extend(r.instances);
                t.messages.extend(r.messages);
                t.counts = Counts::of(&t.messages);
                t.errors.extend(r.errors);
                t.warnings.extend(r.warnings);
                t.replay_secs = match (t.replay_secs, r.replay_secs) {
                    (Some(a), Some(b)) => Some(a + b),
                    (a, b) => a.or(b),
                };
                t
            }
        });
    }
    total.ok_or_else(|| format!("cluster {cluster} has no instance to replay"))
}

/// [`run`] for the instances one mail system serves (`place`: `None` for the node's own).
#[allow(clippy::too_many_arguments)]
async fn run_group(
    spec: &Spec,
    conns: &Connections,
    obs: &Observation,
    instances: Vec<(&str, &crate::spec::Instance)>,
    place: Option<&MailPlace>,
    target: Target<'_>,
    dry_run: bool,
    state_dir: &Path,
) -> Result<Report, String> {
    let cluster = spec.name.as_str();
    let template = &spec
        .spec
        .archive
        .as_ref()
        .ok_or_else(|| format!("cluster {cluster} has no `archive:`: nothing to restore from"))?
        .address;
    let mail_of = instances
        .first()
        .filter(|(_, i)| !i.mail.is_node())
        .map(|(n, _)| *n);
    let active = target.node.unwrap_or(spec.spec.active.as_str());
    obs.nodes
        .get(active)
        .filter(|n| n.reachability.is_reachable())
        .ok_or_else(|| format!("the serving node {active} is not reachable: cannot re-inject"))?;
    let node = conns
        .node(active)
        .ok_or_else(|| format!("the serving node {active} is not connected"))?;
    let archive_obs = obs
        .archive
        .as_ref()
        .filter(|a| a.reachability.is_reachable())
        .ok_or_else(|| "the archive host is not reachable: nothing can be replayed".to_owned())?;
    let archive_host = conns
        .archive()
        .ok_or_else(|| "the archive host is not connected".to_owned())?;
    let queue = archive_obs.postfix.as_ref().ok_or_else(|| {
        "the archive host's queue was not observed (postqueue -j): nothing can be replayed"
            .to_owned()
    })?;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();

    // 1. dump the held copies of the instances (one postcat per chunk)
    let all_domains: Vec<String> = instances
        .iter()
        .flat_map(|(_, i)| i.domains.iter().cloned())
        .collect();
    let entries = held_for(queue.held(), template, &all_domains);
    let ids: Vec<&str> = entries.iter().map(|e| e.queue_id.as_str()).collect();
    let (dumped, w) = if ids.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        dump_held(archive_host, &ids).await?
    };
    warnings.extend(w);
    let owned: Vec<QueueEntry> = entries.into_iter().cloned().collect();
    let held = archive::join_held(&owned, &dumped);
    let contents: BTreeMap<String, HeldMessage> = dumped
        .into_iter()
        .map(|m| (m.queue_id.clone(), m))
        .collect();

    // 2. the replay ledger
    let ledger_path = Ledger::path(state_dir, cluster);
    let pool = spec
        .spec
        .nodes
        .iter()
        .find(|(n, _)| n.as_str() == active)
        .map(|(_, n)| n.pool.to_string())
        .unwrap_or_default();
    let scopes: BTreeMap<String, String> = instances
        .iter()
        .map(|(name, inst)| {
            let ds = format!("{pool}/{}", inst.dataset.as_str());
            let copy = obs.nodes.get(active).and_then(|o| o.dataset(&ds));
            (name.to_string(), replay_scope(active, copy))
        })
        .collect();
    let (replayed, bad) = Ledger::read_scoped(&ledger_path, &scopes)?;
    if bad > 0 {
        warnings.push(format!(
            "{bad} line(s) of {} did not parse (a torn last line after a crash is expected); ignored",
            ledger_path.display()
        ));
    }

    // 3. per instance: window and candidate recipients, then one mailbox batch for all
    // The spool backlog recorded when each snapshot was taken (the journal), which narrows
    // the window to what the snapshot may lack; unknown = every held copy.
    let learned =
        crate::state::journal::context(&crate::state::journal::Journal::read(state_dir, cluster));
    let inputs = instance_inputs(spec, obs, &instances, &learned, active, target.window);
    let none = BTreeSet::new();
    let mut users = BTreeSet::new();
    let mut since: BTreeMap<String, Option<Timestamp>> = BTreeMap::new();
    for input in &inputs {
        let first = plan_instance(input, &held, template, &none, &replayed);
        for u in users_to_check(&first) {
            // The whole mailbox, not `SINCE` the window: a message can have been delivered
            // long before its archive copy arrived (the copy waited in the spool's queue while
            // the archive host was away), and searching from the window would miss it and
            // deliver it twice (found by the simulator).
            since.insert(u.clone(), None);
            users.insert(u);
        }
    }
    // the spool's own queue, listed now (after the archive host was observed)
    let listing = node
        .run(&mail::wrap(
            place,
            crate::adapters::postfix::postqueue_argv(),
        ))
        .await
        .map_err(|e| format!("postqueue -j on {active}: {e}"))?;
    if !listing.success() {
        return Err(format!(
            "postqueue -j on {active} exited {:?}: {}",
            listing.status,
            listing.stderr_text().trim()
        ));
    }
    let spool_queue = crate::adapters::postfix::parse_postqueue(&listing.stdout_text())
        .map_err(|e| format!("postqueue -j on {active}: {e}"))?;
    let pending = spool_pending(&spool_queue, &all_domains);
    let delimiters = obs
        .nodes
        .get(active)
        .and_then(|n| n.postfix_of(mail_of))
        .and_then(|p| p.settings.get("recipient_delimiter"))
        .cloned()
        .unwrap_or_default();
    let (mailboxes, queued, broken) = spool_state(
        node,
        place,
        &pending,
        &users,
        &since,
        &all_domains,
        &delimiters,
    )
    .await?;

    // 4. decide
    let (instance_reports, messages, errs) = decide(
        active, &inputs, &held, template, &mailboxes, &queued, &replayed, &broken,
    );
    errors.extend(errs);
    let mut messages = messages;

    // 5. re-inject
    let mut replay_secs = None;
    if !dry_run {
        let mut ledger = Ledger::new(state_dir, cluster).with_scopes(scopes);
        let started = std::time::Instant::now();
        let any = messages
            .iter()
            .any(|m| m.action == MessageAction::WouldReplay);
        replay_all(
            node,
            place,
            &mut messages,
            &contents,
            &mut ledger,
            &mut errors,
        )
        .await;
        if any {
            replay_secs = Some(started.elapsed().as_secs_f64());
        }
    }
    let counts = Counts::of(&messages);
    Ok(Report {
        cluster: cluster.to_owned(),
        dry_run,
        instances: instance_reports,
        messages,
        counts,
        errors,
        warnings,
        replay_secs,
    })
}

/// Connect, take the cluster lock (every reachable host), observe, run, release.
pub async fn run_locked(
    s: &Spec,
    instance: Option<&str>,
    dry_run: bool,
    state_dir: &Path,
) -> Result<Report, String> {
    let conns = crate::observe::connect(s).await;
    let active = s.spec.active.as_str();
    if conns.node(active).is_none() {
        return Err(format!(
            "the active node {active} is not reachable: cannot re-inject"
        ));
    }
    // a dry run changes nothing: no lock, so it can run beside an apply
    let lock = if dry_run {
        None
    } else {
        Some(
            crate::apply::ClusterLock::acquire(&conns, s, false)
                .await
                .map_err(|e| e.to_string())?,
        )
    };
    let work = async {
        let obs = crate::observe::observe(s, &conns).await;
        run(
            s,
            &conns,
            &obs,
            instance,
            Target::ACTIVE,
            dry_run,
            state_dir,
        )
        .await
    };
    let res = match &lock {
        Some(l) => {
            let r = l.hold_while(work).await;
            l.release().await;
            r
        }
        None => work.await,
    };
    tracing::info!(cluster = %s.name, round_trips = ?conns.trips.snapshot(), "arch-restore");
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::restore::tests::{report, set};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};

    #[test]
    fn queued_as_reads_postfix_replies_only() {
        let r = |t: &str| smtp::Reply {
            code: 250,
            lines: vec![t.into()],
        };
        assert_eq!(
            queued_as(&r("2.0.0 Ok: queued as 4dHw2x0Zq1z9tW")).as_deref(),
            Some("4dHw2x0Zq1z9tW")
        );
        assert_eq!(queued_as(&r("2.0.0 Ok: queued as ALL")), None);
        assert_eq!(queued_as(&r("2.0.0 Ok")), None);
    }

    /// A scripted SMTP server: refuses RCPT for `refuse`, drops the connection when asked for
    /// the `drop_at`-th message's DATA end (1-based), records the envelopes it queued.
    async fn fake_server(
        io: tokio::io::DuplexStream,
        refuse: &'static str,
        drop_at: Option<usize>,
    ) -> Vec<(String, String, String)> {
        let (r, mut w) = tokio::io::split(io);
        let mut r = TokioBufReader::new(r);
        let mut queued = Vec::new();
        let (mut from, mut to, mut body, mut in_data, mut n) =
            (String::new(), String::new(), String::new(), false, 0usize);
        w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap() == 0 {
                return queued;
            }
            if in_data {
                if line == ".\r\n" {
                    in_data = false;
                    n += 1;
                    if Some(n) == drop_at {
                        return queued;
                    }
                    queued.push((from.clone(), to.clone(), body.clone()));
                    body.clear();
                    w.write_all(format!("250 2.0.0 Ok: queued as Q{n}\r\n").as_bytes())
                        .await
                        .unwrap();
                } else {
                    body.push_str(&line);
                }
                continue;
            }
            let cmd = line.trim_end().to_string();
            let reply = if cmd.starts_with("EHLO") {
                "250 fake".to_string()
            } else if let Some(a) = cmd.strip_prefix("MAIL FROM:") {
                from = a.to_string();
                "250 2.1.0 Ok".into()
            } else if let Some(a) = cmd.strip_prefix("RCPT TO:") {
                to = a.to_string();
                if a.contains(refuse) {
                    "550 5.1.1 no such user".into()
                } else {
                    "250 2.1.5 Ok".into()
                }
            } else if cmd == "DATA" {
                in_data = true;
                "354 go".into()
            } else if cmd == "QUIT" {
                w.write_all(b"221 bye\r\n").await.unwrap();
                return queued;
            } else {
                "250 Ok".into()
            };
            w.write_all(format!("{reply}\r\n").as_bytes())
                .await
                .unwrap();
        }
    }

    fn contents(ids: &[&str]) -> BTreeMap<String, HeldMessage> {
        ids.iter()
            .map(|q| {
                (
                    q.to_string(),
                    HeldMessage {
                        queue_name: "hold".into(),
                        queue_id: q.to_string(),
                        sender: String::new(),
                        recipients: vec![],
                        content_size: None,
                        content: format!("Message-ID: <{q}@x>\n\n.dot line\nbody {q}\n")
                            .into_bytes(),
                        message_id: Some(format!("<{q}@x>")),
                    },
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn one_session_replays_records_each_250_and_keeps_refusals_out_of_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(fake_server(b, "nobody@", None));
        let mut msgs = vec![
            report("Q1", "a@students.lab", ""),
            report("Q2", "nobody@students.lab", "x@y.z"),
            report("Q3", "c@students.lab", "x@y.z"),
        ];
        msgs[1].action = MessageAction::WouldReplay;
        let mut skipped = report("Q4", "d@students.lab", "");
        skipped.action = MessageAction::SkippedPresent;
        msgs.push(skipped);
        let mut ledger = Ledger::new(dir.path(), "lab");
        let mut errors = Vec::new();
        let clean = replay_session(
            a,
            "node-a",
            &mut msgs,
            &contents(&["Q1", "Q2", "Q3", "Q4"]),
            &mut ledger,
            &mut errors,
        )
        .await;
        assert!(clean, "{errors:?}");
        let queued = server.await.unwrap();
        assert_eq!(
            queued
                .iter()
                .map(|(f, t, _)| (f.as_str(), t.as_str()))
                .collect::<Vec<_>>(),
            [("<>", "<a@students.lab>"), ("<x@y.z>", "<c@students.lab>")]
        );
        assert!(
            queued[0].2.contains("\r\n..dot line\r\n"),
            "{:?}",
            queued[0].2
        );
        let actions: Vec<MessageAction> = msgs.iter().map(|m| m.action).collect();
        assert_eq!(
            actions,
            [
                MessageAction::Replayed,
                MessageAction::Failed,
                MessageAction::Replayed,
                MessageAction::SkippedPresent
            ]
        );
        assert!(
            msgs[1].reason.contains("refused at rcpt"),
            "{}",
            msgs[1].reason
        );
        let (got, _) = Ledger::read(&Ledger::path(dir.path(), "lab")).unwrap();
        assert_eq!(
            got,
            set(&[("Q1", "a@students.lab"), ("Q3", "c@students.lab")])
        );
    }

    #[tokio::test]
    async fn a_broken_session_leaves_the_in_flight_message_to_the_message_id_check() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        // the server queues Q1, then dies before answering Q2's final dot
        let server = tokio::spawn(fake_server(b, "-", Some(2)));
        let mut msgs = vec![
            report("Q1", "a@students.lab", ""),
            report("Q2", "b@students.lab", ""),
            report("Q3", "c@students.lab", ""),
        ];
        let mut ledger = Ledger::new(dir.path(), "lab");
        let mut errors = Vec::new();
        let clean = replay_session(
            a,
            "node-a",
            &mut msgs,
            &contents(&["Q1", "Q2", "Q3"]),
            &mut ledger,
            &mut errors,
        )
        .await;
        assert!(!clean);
        assert_eq!(server.await.unwrap().len(), 1);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let actions: Vec<MessageAction> = msgs.iter().map(|m| m.action).collect();
        assert_eq!(
            actions,
            [
                MessageAction::Replayed,
                MessageAction::Failed,
                MessageAction::Failed
            ]
        );
        assert!(msgs[1].reason.contains("in flight"), "{}", msgs[1].reason);
        assert!(msgs[2].reason.contains("not sent"), "{}", msgs[2].reason);
        let (got, _) = Ledger::read(&Ledger::path(dir.path(), "lab")).unwrap();
        assert_eq!(got, set(&[("Q1", "a@students.lab")]));
    }

    #[tokio::test]
    async fn parallel_sessions_share_one_ledger_and_a_ledger_failure_stops_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = (1..=8).map(|i| format!("Q{i}")).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let held = contents(&id_refs);
        let mut shares: Vec<Vec<MessageReport>> = vec![Vec::new(), Vec::new()];
        for (n, q) in ids.iter().enumerate() {
            shares[n % 2].push(report(q, &format!("u{n}@students.lab"), ""));
        }
        let ledger = std::sync::Mutex::new(Ledger::new(dir.path(), "lab"));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut servers = Vec::new();
        let mut streams = Vec::new();
        for _ in 0..2 {
            let (a, b) = tokio::io::duplex(1 << 16);
            servers.push(tokio::spawn(fake_server(b, "nobody@", None)));
            streams.push(a);
        }
        let mut errs = vec![Vec::new(), Vec::new()];
        let [s0, s1] = <[_; 2]>::try_from(streams).unwrap();
        let (m0, m1) = shares.split_at_mut(1);
        let (e0, e1) = errs.split_at_mut(1);
        let (c0, c1) = tokio::join!(
            replay_session_shared(s0, "node-a", &mut m0[0], &held, &ledger, &stop, &mut e0[0]),
            replay_session_shared(s1, "node-a", &mut m1[0], &held, &ledger, &stop, &mut e1[0]),
        );
        assert!(c0 && c1, "{errs:?}");
        let mut sent = 0;
        for s in servers {
            sent += s.await.unwrap().len();
        }
        assert_eq!(sent, 8);
        let (got, _) = Ledger::read(&Ledger::path(dir.path(), "lab")).unwrap();
        assert_eq!(got.len(), 8, "{got:?}");

        // a ledger that cannot be written: the session that finds it stops the others
        let blocked = dir.path().join("not-a-dir");
        std::fs::write(&blocked, b"").unwrap();
        let ledger = std::sync::Mutex::new(Ledger::new(&blocked, "lab"));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(fake_server(b, "nobody@", None));
        let mut msgs: Vec<MessageReport> = ids[..3]
            .iter()
            .map(|q| report(q, "a@students.lab", ""))
            .collect();
        let mut errors = Vec::new();
        let clean =
            replay_session_shared(a, "node-a", &mut msgs, &held, &ledger, &stop, &mut errors).await;
        assert!(!clean);
        assert!(stop.load(std::sync::atomic::Ordering::SeqCst));
        drop(server);
        // a second session sharing that ledger sends nothing once stopped
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(fake_server(b, "nobody@", None));
        let mut more: Vec<MessageReport> = ids[3..5]
            .iter()
            .map(|q| report(q, "b@students.lab", ""))
            .collect();
        let mut errors = Vec::new();
        replay_session_shared(a, "node-a", &mut more, &held, &ledger, &stop, &mut errors).await;
        assert!(server.await.unwrap().is_empty());
        assert!(more.iter().all(|m| m.action == MessageAction::Failed));
    }
}
