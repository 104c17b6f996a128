//! `arch-restore`, the pure part: which archived copies of mail the active spool may have
//! lost are re-injected, exactly once (docs/DOMAIN.md guarantees 1 and 2). The shell that dumps
//! the held copies, checks the mailboxes and re-injects is `crate::apply::replay`; the replay
//! ledger is `crate::state::ledger`; the command is `crate::cli::arch_restore`.
//!
//! # The flow, and its round trips
//!
//! 1. observe (done by the caller): the active node's datasets and snapshots, the archive
//!    host's hold queue (`postqueue -j`) and both clock offsets;
//! 2. the archive host: `postcat -d -o -q ID…` of every held copy addressed to the instances'
//!    archive addresses, in chunks of `crate::apply::replay::POSTCAT_CHUNK` ids (one call up to that many; the
//!    chunk keeps the SSH command line well under the protocol's packet size);
//! 3. the active node: `postqueue -j` (what its own Postfix is still delivering), then ONE
//!    batch of `postcat` of those messages (their Message-IDs) and `doveadm fetch
//!    hdr.message-id` per recipient (which Message-IDs each mailbox already holds);
//! 4. the active node: ONE `sendmail -bs` session carrying every re-injection, each recorded in
//!    the replay ledger right after its `250`.
//!
//! # The window (watermark)
//!
//! The active node's dataset is what users read now. After a failover it is the replica, so
//! its newest snapshot is the newest replicated one, and everything the replica holds was in
//! it; in normal operation (the dataset rolled back, or a spool that lost recent mail), the
//! newest snapshot on the active node is equally the point before which the live spool held
//! everything when it was taken. So the watermark comes from the active node's newest snapshot
//! of the instance's dataset ([`newest_snapshot`]), corrected by the clock offsets.
//!
//! A snapshot alone does not prove that a message that arrived before it is in it: a message
//! accepted by the spool's Postfix before the snapshot but delivered after it is older and
//! absent. [`archive::watermark`] therefore needs the spool's queue backlog at snapshot time.
//! Nothing records it yet (the snapshot step would have to read the queue when it snapshots),
//! so `crate::apply::replay::run` passes [`SpoolBacklog::Unknown`]: the watermark is refused and the window is
//! every held copy of the instance. That only widens the replay; exactly-once rests on the
//! Message-ID check (the mailbox already holds it: skipped) and the replay ledger (replayed by
//! an earlier run: skipped). The cost of a wide window: a held copy older than the snapshot
//! whose message the user has deleted since is delivered again; in steady state the purge after
//! each replication removes those copies, so the window is in practice "since the last purge".
//! [`plan_instance`] takes the backlog as a parameter so that a recorded backlog narrows it.
//!
//! # Exactly once
//!
//! * mailbox check: a (Message-ID, recipient) already in the recipient's mailbox (any folder,
//!   from one day before the window) is skipped;
//! * spool queue check: a (Message-ID, recipient) still in the active node's Postfix queue is
//!   skipped: it is being delivered. This covers mail flowing normally while `arch-restore`
//!   runs (its archive copy can be held before its delivery ends) and a replay of an earlier
//!   run that is not delivered yet (`spool_state` documents the ordering that closes the race);
//! * replay ledger `<state_dir>/<cluster>/replayed.jsonl`: one JSON line per (archive queue id,
//!   recipient) accepted with `250` by the active node, fsync'd before the next message is
//!   sent. A crash replays at most the message in flight; the mailbox and spool queue checks
//!   catch it (it is in one of them once accepted).
//!
//! Known limit (in [`archive::restore_set`]): a (Message-ID, recipient) that the ledger says
//! was replayed is also skipped through any other held copy. If the spool loses the replayed
//! delivery AGAIN before a replication covers it (a second loss), the fresh archive copy that
//! the replay made is skipped as a duplicate and the message is not restored. This is kept on
//! purpose: without it, a rerun would deliver again a replayed message that the user has read
//! and deleted since (not idempotent). After a second loss, the operator moves the ledger
//! aside before running `arch-restore` again: the mailbox and spool queue checks still keep
//! what is present from being delivered twice.
//! * the same (Message-ID, recipient) held twice is replayed once ([`archive::restore_set`]).
//! * `arch-restore` takes the cluster lock (`crate::apply::ClusterLock`), so two `arch-restore` (or an apply)
//!   never replay concurrently. `crate::apply::replay::run` does not: the failover step calls it under apply's lock.
//!
//! The archived copies stay held: a later replication's purge removes them. The re-injected
//! message passes the active spool's `recipient_bcc_maps` again, so a second held copy appears
//! on the archive host; it is harmless (same Message-ID, skipped as present by later runs) and
//! it protects the replayed delivery until the next replication covers it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::adapters::postfix_cmd::HeldMessage;
use crate::decide::archive::{self, HeldCopy, RestorePlan, SpoolBacklog};
use crate::model::{Dataset, Observation, QueueEntry, Snapshot};
use crate::spec::{AddressTemplate, Spec};

/// What happened (or would happen) to one held message for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageAction {
    /// Re-injected and accepted (`250`) by the active node; in the ledger.
    Replayed,
    /// `--dry-run`: would be re-injected.
    WouldReplay,
    /// The recipient's mailbox already holds its Message-ID.
    SkippedPresent,
    /// The active node's own Postfix queue holds its Message-ID for the recipient: it is
    /// being delivered (normal flow, or a replay of an earlier run still in flight).
    SkippedQueued,
    /// The replay ledger says an earlier run replayed it.
    SkippedReplayed,
    /// Older than the window: the replica holds it.
    SkippedBeforeWindow,
    /// The same Message-ID for the same recipient is replayed from another held copy.
    SkippedDuplicate,
    /// Not replayed: refused by the active node, session broken, or mailbox not checkable.
    Failed,
}

impl MessageAction {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageAction::Replayed => "replayed",
            MessageAction::WouldReplay => "would_replay",
            MessageAction::SkippedPresent => "skipped_present",
            MessageAction::SkippedQueued => "skipped_queued",
            MessageAction::SkippedReplayed => "skipped_replayed",
            MessageAction::SkippedBeforeWindow => "skipped_before_window",
            MessageAction::SkippedDuplicate => "skipped_duplicate",
            MessageAction::Failed => "failed",
        }
    }
}

/// One held message for one original recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageReport {
    /// The instance whose domain the recipient is at.
    pub instance: String,
    /// Queue id on the archive host (the copy stays held).
    pub queue_id: String,
    /// `Message-ID`, when present.
    pub message_id: Option<String>,
    /// The original recipient, decoded from the archive address.
    pub recipient: String,
    /// Envelope sender; empty for the null sender.
    pub sender: String,
    /// Arrival on the archive host (controller clock when the offset is known).
    pub arrival: Timestamp,
    /// What was done.
    pub action: MessageAction,
    /// Why.
    pub reason: String,
    /// The active node's reply to the message (`250 2.0.0 Ok: queued as …`), when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
}

/// The window and counts of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceReport {
    /// Instance name.
    pub instance: String,
    /// The node re-injected into.
    pub active: String,
    /// The snapshot the watermark would come from (newest on the active node).
    pub snapshot: Option<String>,
    /// Where the window starts (controller clock); `None`: every held copy.
    pub since: Option<Timestamp>,
    /// Why that window.
    pub window: String,
}

/// Messages per action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Every (held message, recipient) of the instances considered.
    pub total: usize,
    pub replayed: usize,
    pub would_replay: usize,
    pub skipped_present: usize,
    pub skipped_queued: usize,
    pub skipped_replayed: usize,
    pub skipped_before_window: usize,
    pub skipped_duplicate: usize,
    pub failed: usize,
}

impl Counts {
    /// Counts of a list of messages.
    pub fn of(messages: &[MessageReport]) -> Counts {
        let mut c = Counts {
            total: messages.len(),
            ..Counts::default()
        };
        for m in messages {
            *match m.action {
                MessageAction::Replayed => &mut c.replayed,
                MessageAction::WouldReplay => &mut c.would_replay,
                MessageAction::SkippedPresent => &mut c.skipped_present,
                MessageAction::SkippedQueued => &mut c.skipped_queued,
                MessageAction::SkippedReplayed => &mut c.skipped_replayed,
                MessageAction::SkippedBeforeWindow => &mut c.skipped_before_window,
                MessageAction::SkippedDuplicate => &mut c.skipped_duplicate,
                MessageAction::Failed => &mut c.failed,
            } += 1;
        }
        c
    }
}

/// What `arch-restore` did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Cluster name.
    pub cluster: String,
    /// Nothing was sent.
    pub dry_run: bool,
    /// Per instance: window.
    pub instances: Vec<InstanceReport>,
    /// Per (held message, recipient), in replay order.
    pub messages: Vec<MessageReport>,
    /// Per action.
    pub counts: Counts,
    /// Problems that make the run incomplete (exit 1); messages not replayed are retried by
    /// the next run.
    pub errors: Vec<String>,
    /// Notes that do not fail the run (held copies that left the queue meanwhile, …).
    pub warnings: Vec<String>,
    /// Seconds spent re-injecting (the SMTP session), when something was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_secs: Option<f64>,
}

impl Report {
    /// Nothing failed.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.counts.failed == 0
    }

    /// The operator's view: windows, one line per message, counts, problems.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "arch-restore {}{}",
            self.cluster,
            if self.dry_run { " (dry run)" } else { "" }
        );
        for i in &self.instances {
            let _ = writeln!(
                s,
                "  {} -> {} (snapshot {}): {}",
                i.instance,
                i.active,
                i.snapshot.as_deref().unwrap_or("none"),
                i.window
            );
        }
        for m in &self.messages {
            let _ = writeln!(
                s,
                "  {:<21} {} {} -> {} from <{}> {}: {}{}",
                m.action.as_str(),
                m.queue_id,
                m.message_id.as_deref().unwrap_or("(no Message-ID)"),
                m.recipient,
                m.sender,
                m.arrival,
                m.reason,
                m.reply
                    .as_deref()
                    .map(|r| format!(" [{r}]"))
                    .unwrap_or_default()
            );
        }
        let c = &self.counts;
        let _ = writeln!(
            s,
            "{} held (message, recipient): {} replayed, {} would replay, {} already in the mailbox, {} queued on the spool, {} already replayed, {} before the window, {} duplicates, {} failed",
            c.total,
            c.replayed,
            c.would_replay,
            c.skipped_present,
            c.skipped_queued,
            c.skipped_replayed,
            c.skipped_before_window,
            c.skipped_duplicate,
            c.failed
        );
        if let Some(secs) = self.replay_secs {
            let rate = if secs > 0.0 {
                c.replayed as f64 / secs
            } else {
                0.0
            };
            let _ = writeln!(s, "re-injection: {secs:.2} s ({rate:.0} msgs/s)");
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        for e in &self.errors {
            let _ = writeln!(s, "error: {e}");
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------------

/// The newest snapshot of a dataset (by `createtxg` when listed, which orders snapshots taken
/// in the same second; by creation time otherwise; on a tie the last listed, as the listing
/// is oldest first).
pub fn newest_snapshot(ds: &Dataset) -> Option<&Snapshot> {
    ds.snapshots
        .iter()
        .max_by_key(|s| (s.createtxg.unwrap_or(0), s.creation))
}

/// The original recipient of an archive address if it is at one of `domains` (the same rule
/// as [`archive::restore_set`]: domain lower-cased, local part kept).
pub fn original_recipient(
    template: &AddressTemplate,
    domains: &[String],
    archived: &str,
) -> Option<String> {
    let (local, domain) = template.decode(archived)?;
    let domain = domain.to_ascii_lowercase();
    domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&domain))
        .then(|| format!("{local}@{domain}"))
}

/// The held entries with at least one recipient at one of `domains` (the ones to dump).
pub fn held_for<'a>(
    held: impl IntoIterator<Item = &'a QueueEntry>,
    template: &AddressTemplate,
    domains: &[String],
) -> Vec<&'a QueueEntry> {
    held.into_iter()
        .filter(|e| e.queue_name == "hold")
        .filter(|e| {
            e.recipients
                .iter()
                .any(|r| original_recipient(template, domains, &r.address).is_some())
        })
        .collect()
}

/// The spool's queue entries (any queue) with a recipient at one of `domains`: the messages
/// the active node is still delivering.
pub fn spool_pending<'a>(
    queue: impl IntoIterator<Item = &'a QueueEntry>,
    domains: &[String],
) -> Vec<&'a QueueEntry> {
    queue
        .into_iter()
        .filter(|e| e.recipients.iter().any(|r| at_domains(&r.address, domains)))
        .collect()
}

fn at_domains(addr: &str, domains: &[String]) -> bool {
    addr.rsplit_once('@')
        .is_some_and(|(_, d)| domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
}

/// `(Message-ID, recipient)` of the spool's pending messages (recipients at `domains`, domain
/// lower-cased as [`original_recipient`] writes it).
pub fn pending_pairs(dumped: &[HeldMessage], domains: &[String]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for m in dumped {
        let Some(id) = &m.message_id else { continue };
        for r in &m.recipients {
            if let Some((l, d)) = r.rsplit_once('@')
                && at_domains(r, domains)
            {
                out.insert((id.clone(), format!("{l}@{}", d.to_ascii_lowercase())));
            }
        }
    }
    out
}

/// The inputs of one instance's decision.
#[derive(Debug, Clone)]
pub struct InstanceInput<'a> {
    /// Instance name.
    pub instance: &'a str,
    /// Its domains.
    pub domains: &'a [String],
    /// Newest snapshot of its dataset on the active node.
    pub snapshot: Option<&'a Snapshot>,
    /// What waited in the spool's queue when it was taken.
    pub backlog: SpoolBacklog,
    /// Clock offsets (ms, host − controller).
    pub active_offset_ms: Option<i64>,
    pub archive_offset_ms: Option<i64>,
    /// The archive offset's uncertainty (ms): the window opens that much earlier.
    pub archive_uncertainty_ms: Option<i64>,
    /// `archive.margin`.
    pub margin: SignedDuration,
}

/// [`archive::restore_set`] for one instance, with the watermark from its newest snapshot
/// (refused, hence every held copy, when the backlog or an offset is unknown).
pub fn plan_instance(
    input: &InstanceInput<'_>,
    held: &[HeldCopy],
    template: &AddressTemplate,
    present: &BTreeSet<(String, String)>,
    replayed: &BTreeSet<(String, String)>,
) -> RestorePlan {
    let wm = archive::watermark_with(
        input.snapshot,
        input.backlog,
        input.active_offset_ms,
        input.archive_offset_ms,
        input.archive_uncertainty_ms,
        input.margin,
    );
    let mut plan = archive::restore_set(
        wm.as_ref().ok(),
        input.archive_offset_ms,
        held,
        input.domains,
        template,
        present,
        replayed,
    );
    if let Err(refusal) = &wm {
        plan.window = format!(
            "{} ({refusal}; the Message-ID check and the replay ledger keep it exactly-once)",
            plan.window
        );
    }
    plan
}

/// The recipients whose mailboxes must be checked: every recipient the plan would replay with
/// a Message-ID.
pub fn users_to_check(plan: &RestorePlan) -> BTreeSet<String> {
    plan.replay
        .iter()
        .filter(|r| r.message_id.is_some())
        .map(|r| r.recipient.clone())
        .collect()
}

/// The mailbox user an address is delivered to under Postfix's `recipient_delimiter`
/// (`alice+lists@x` → `alice@x` with `+`; several delimiter characters allowed, the first
/// one in the local part splits it). Empty delimiters: the address itself.
pub fn mailbox_user(recipient: &str, delimiters: &str) -> String {
    let Some((local, domain)) = recipient.rsplit_once('@') else {
        return recipient.to_owned();
    };
    match local.find(|c| delimiters.contains(c)) {
        Some(0) | None => recipient.to_owned(),
        Some(i) => format!("{}@{domain}", &local[..i]),
    }
}

/// What the mailbox check of `recipient` found (its mailbox is [`mailbox_user`]): the
/// (Message-ID, recipient) pairs present, keyed by the recipient as the archive copy names it,
/// or why it cannot be told (those copies are not replayed). A recipient Dovecot does not
/// know (an alias, a list, a rewritten address) is such a case, never "holds nothing": a
/// replay Postfix expands could land in a mailbox that already holds the message.
pub fn mailbox_check(
    recipient: &str,
    delimiters: &str,
    outcome: crate::adapters::dovecot::FetchOutcome,
) -> Result<BTreeSet<(String, String)>, String> {
    use crate::adapters::dovecot::{FetchOutcome, present_pairs};
    match outcome {
        FetchOutcome::Holds(ids) => Ok(present_pairs(recipient, &ids)),
        FetchOutcome::NotAUser => Err(format!(
            "{} is not a Dovecot user (an alias, a list or a rewritten address): spoolkeeper cannot check whether its mailbox already holds the message, so it is not replayed; the replay stays owed (deliver it by hand with `postcat -q ID` on the archive host, or add the user)",
            mailbox_user(recipient, delimiters)
        )),
        FetchOutcome::Failed(e) => Err(e),
    }
}

fn correct(t: Timestamp, offset_ms: Option<i64>) -> Timestamp {
    match offset_ms {
        Some(o) => t.checked_sub(SignedDuration::from_millis(o)).unwrap_or(t),
        None => t,
    }
}

/// The report lines of a plan: replays as `would_replay` (the caller turns them into
/// `replayed`/`failed` as it sends), skips classified by the sets that caused them.
#[allow(clippy::too_many_arguments)]
pub fn classify(
    instance: &str,
    plan: &RestorePlan,
    held: &[HeldCopy],
    template: &AddressTemplate,
    domains: &[String],
    archive_offset_ms: Option<i64>,
    present: &BTreeSet<(String, String)>,
    queued: &BTreeSet<(String, String)>,
    replayed: &BTreeSet<(String, String)>,
) -> Vec<MessageReport> {
    let by_id: BTreeMap<&str, &HeldCopy> = held.iter().map(|h| (h.queue_id.as_str(), h)).collect();
    let mut out: Vec<MessageReport> = plan
        .replay
        .iter()
        .map(|r| MessageReport {
            instance: instance.to_owned(),
            queue_id: r.queue_id.clone(),
            message_id: r.message_id.clone(),
            recipient: r.recipient.clone(),
            sender: r.sender.clone(),
            arrival: r.arrival,
            action: MessageAction::WouldReplay,
            reason: r.reason.clone(),
            reply: None,
        })
        .collect();
    for s in &plan.skipped {
        let Some(h) = by_id.get(s.queue_id.as_str()) else {
            continue;
        };
        let arrival = correct(h.arrival_time, archive_offset_ms);
        let rcpt = original_recipient(template, domains, &s.recipient)
            .unwrap_or_else(|| s.recipient.clone());
        let key_q = (h.queue_id.clone(), rcpt.clone());
        let key_m = h.message_id.clone().map(|m| (m, rcpt.clone()));
        let action = if plan.since.is_some_and(|since| arrival < since) {
            MessageAction::SkippedBeforeWindow
        } else if replayed.contains(&key_q) {
            MessageAction::SkippedReplayed
        } else if key_m.as_ref().is_some_and(|k| present.contains(k)) {
            MessageAction::SkippedPresent
        } else if key_m.as_ref().is_some_and(|k| queued.contains(k)) {
            MessageAction::SkippedQueued
        } else {
            MessageAction::SkippedDuplicate
        };
        let reason = if action == MessageAction::SkippedQueued {
            format!(
                "{} for {rcpt} is in the active node's Postfix queue: it is being delivered",
                h.message_id.as_deref().unwrap_or_default()
            )
        } else {
            s.reason.clone()
        };
        out.push(MessageReport {
            instance: instance.to_owned(),
            queue_id: h.queue_id.clone(),
            message_id: h.message_id.clone(),
            recipient: rcpt,
            sender: h.sender.clone(),
            arrival,
            action,
            reason,
            reply: None,
        });
    }
    out
}

/// Where a replay's window starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window<'a> {
    /// At the newest snapshot of the serving copy (the `arch-restore` command's default).
    Newest,
    /// At this snapshot of the serving copy: the one it was known to hold everything up to
    /// when the service moved (a failover's replay). When the copy no longer has it, every
    /// held copy.
    Anchor(&'a str),
    /// Every held copy (no snapshot known to hold anything).
    Everything,
}

/// The window inputs of each instance replayed into `node`, from the observation (its
/// dataset and both clock offsets) and what the journal learned (spool backlogs of
/// snapshots).
pub fn instance_inputs<'a>(
    spec: &'a Spec,
    obs: &'a Observation,
    instances: &[(&'a str, &'a crate::spec::Instance)],
    learned: &crate::plan::Context,
    node: &str,
    window: Window<'_>,
) -> Vec<InstanceInput<'a>> {
    let pool = spec
        .spec
        .nodes
        .iter()
        .find(|(n, _)| n.as_str() == node)
        .map(|(_, n)| n.pool.as_str())
        .unwrap_or_default();
    let node_obs = obs.nodes.get(node);
    let margin = spec
        .spec
        .archive
        .as_ref()
        .map(|a| a.margin.as_signed())
        .unwrap_or_default();
    instances
        .iter()
        .map(|(name, inst)| {
            let ds = format!("{pool}/{}", inst.dataset.as_str());
            let copy = node_obs.and_then(|o| o.dataset(&ds));
            // A replay owed to the copy (recorded by a failover) keeps its anchor, whoever runs it.
            let owed = crate::plan::owed_replay(copy);
            let window = match (window, owed.as_deref()) {
                (Window::Newest, Some("")) => Window::Everything,
                (Window::Newest, Some(a)) => Window::Anchor(a),
                (w, _) => w,
            };
            let snapshot = match window {
                Window::Newest => copy.and_then(newest_snapshot),
                Window::Anchor(a) => copy.and_then(|d| d.snapshots.iter().find(|s| s.name == a)),
                Window::Everything => None,
            };
            let backlog = snapshot
                .and_then(|s| learned.backlog(&ds, &s.name))
                .unwrap_or(SpoolBacklog::Unknown);
            InstanceInput {
                instance: name,
                domains: &inst.domains,
                snapshot,
                backlog,
                active_offset_ms: node_obs.and_then(|o| o.capabilities.clock_offset_ms),
                archive_offset_ms: obs
                    .archive
                    .as_ref()
                    .and_then(|a| a.capabilities.clock_offset_ms),
                archive_uncertainty_ms: obs
                    .archive
                    .as_ref()
                    .and_then(|a| a.capabilities.clock_uncertainty_ms),
                margin,
            }
        })
        .collect()
}

/// What to do with every held copy of every instance, given what the active node holds
/// (`mailboxes`: in a mailbox; `queued`: in its Postfix queue), what the ledger says was
/// replayed and which mailboxes could not be checked (`broken`, with why: their copies are
/// not replayed, to never deliver twice). Returns the windows, the messages in replay order
/// (arrival, queue id, recipient) and the errors that make the run incomplete.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    active: &str,
    inputs: &[InstanceInput<'_>],
    held: &[HeldCopy],
    template: &AddressTemplate,
    mailboxes: &BTreeSet<(String, String)>,
    queued: &BTreeSet<(String, String)>,
    replayed: &BTreeSet<(String, String)>,
    broken: &BTreeMap<String, String>,
) -> (Vec<InstanceReport>, Vec<MessageReport>, Vec<String>) {
    let present: BTreeSet<(String, String)> = mailboxes.union(queued).cloned().collect();
    let mut instance_reports = Vec::new();
    let mut messages = Vec::new();
    let mut errors = Vec::new();
    for input in inputs {
        let plan = plan_instance(input, held, template, &present, replayed);
        instance_reports.push(InstanceReport {
            instance: input.instance.to_owned(),
            active: active.to_owned(),
            snapshot: input.snapshot.map(|s| s.name.clone()),
            since: plan.since,
            window: plan.window.clone(),
        });
        messages.extend(classify(
            input.instance,
            &plan,
            held,
            template,
            input.domains,
            input.archive_offset_ms,
            mailboxes,
            queued,
            replayed,
        ));
    }
    for m in &mut messages {
        if m.action == MessageAction::WouldReplay
            && let Some(why) = broken.get(&m.recipient)
        {
            m.action = MessageAction::Failed;
            m.reason = format!(
                "the mailbox of {} could not be checked ({why}); not replayed, to never deliver twice",
                m.recipient
            );
        }
    }
    if !broken.is_empty() {
        errors.push(format!(
            "{} mailbox(es) could not be checked on {active}: {}",
            broken.len(),
            broken.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    // replay in arrival order across instances
    messages.sort_by(|a, b| {
        (a.arrival, &a.queue_id, &a.recipient).cmp(&(b.arrival, &b.queue_id, &b.recipient))
    });
    (instance_reports, messages, errors)
}

/// What the ledger's `node` names: the copy replayed into, as the node and the time it was
/// last promoted (the epoch of its `spoolkeeper:resync` record). A copy resynced (rolled back)
/// and promoted again is a new incarnation: what was replayed into the old one may be gone.
pub fn replay_scope(node: &str, copy: Option<&Dataset>) -> String {
    match crate::plan::Marks::of(copy).epoch {
        0 => node.to_owned(),
        e => format!("{node}@{e}"),
    }
}

/// Where to replay and from when: the node replayed into (`None`: the spec's active node)
/// and the window.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub node: Option<&'a str>,
    pub window: Window<'a>,
}

impl Target<'_> {
    /// The `arch-restore` command's default: into the active node, from its newest snapshot.
    pub const ACTIVE: Target<'static> = Target {
        node: None,
        window: Window::Newest,
    };
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{DatasetKind, QueueRecipient};

    pub(crate) fn tpl() -> AddressTemplate {
        "{local}={domain}@archive.lab".parse().unwrap()
    }
    pub(crate) fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }
    pub(crate) fn snap(name: &str, at: i64, txg: Option<u64>) -> Snapshot {
        Snapshot {
            name: name.into(),
            guid: 1,
            creation: ts(at),
            createtxg: txg,
            userrefs: 0,
            used: 0,
            written: None,
        }
    }
    pub(crate) fn dataset(snaps: Vec<Snapshot>) -> Dataset {
        Dataset {
            name: "zdata/imap/students".into(),
            kind: DatasetKind::Filesystem,
            creation: None,
            guid: None,
            used: None,
            readonly: None,
            mounted: None,
            mountpoint: None,
            createtxg: None,
            receive_resume_token: None,
            user_properties: BTreeMap::new(),
            other_properties: BTreeMap::new(),
            snapshots: snaps,
        }
    }
    pub(crate) fn copy(id: &str, at: i64, mid: Option<&str>, rcpts: &[&str]) -> HeldCopy {
        HeldCopy {
            queue_id: id.into(),
            arrival_time: ts(at),
            sender: String::new(),
            recipients: rcpts.iter().map(|s| s.to_string()).collect(),
            message_id: mid.map(str::to_owned),
        }
    }
    pub(crate) fn students() -> Vec<String> {
        vec!["students.lab".into()]
    }
    pub(crate) fn input<'a>(
        domains: &'a [String],
        snapshot: Option<&'a Snapshot>,
        backlog: SpoolBacklog,
    ) -> InstanceInput<'a> {
        InstanceInput {
            instance: "students",
            domains,
            snapshot,
            backlog,
            active_offset_ms: Some(0),
            archive_offset_ms: Some(0),
            archive_uncertainty_ms: Some(0),
            margin: SignedDuration::from_secs(60),
        }
    }
    pub(crate) fn set(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn newest_snapshot_by_txg_then_time_then_listing_order() {
        let d = dataset(vec![
            snap("a", 100, Some(5)),
            snap("b", 100, Some(7)),
            snap("c", 90, Some(6)),
        ]);
        assert_eq!(newest_snapshot(&d).map(|s| s.name.as_str()), Some("b"));
        // zfs-fuse without createtxg: same second, the later listed wins
        let d = dataset(vec![
            snap("a", 50, None),
            snap("b", 100, None),
            snap("c", 100, None),
        ]);
        assert_eq!(newest_snapshot(&d).map(|s| s.name.as_str()), Some("c"));
        assert!(newest_snapshot(&dataset(vec![])).is_none());
    }

    #[test]
    fn original_recipient_keeps_the_local_part_and_only_our_domains() {
        let t = tpl();
        let d = students();
        assert_eq!(
            original_recipient(&t, &d, "John.Doe+x=Students.LAB@ARCHIVE.lab").as_deref(),
            Some("John.Doe+x@students.lab")
        );
        assert_eq!(
            original_recipient(&t, &d, "a=b=students.lab@archive.lab").as_deref(),
            Some("a=b@students.lab")
        );
        assert_eq!(original_recipient(&t, &d, "a=staff.lab@archive.lab"), None);
        assert_eq!(original_recipient(&t, &d, "a@students.lab"), None);
    }

    #[test]
    fn held_for_keeps_held_entries_with_one_of_our_recipients() {
        let e = |q: &str, queue: &str, r: &[&str]| QueueEntry {
            queue_name: queue.into(),
            queue_id: q.into(),
            arrival_time: ts(0),
            message_size: 1,
            forced_expire: false,
            sender: "".into(),
            recipients: r.iter().map(|a| QueueRecipient::to(a)).collect(),
        };
        let all = [
            e("A", "hold", &["x=students.lab@archive.lab"]),
            e("B", "hold", &["x=staff.lab@archive.lab"]),
            e(
                "C",
                "hold",
                &["x=staff.lab@archive.lab", "y=students.lab@archive.lab"],
            ),
            e("D", "deferred", &["x=students.lab@archive.lab"]),
            e("E", "hold", &["someone@else.test"]),
        ];
        let ids: Vec<&str> = held_for(&all, &tpl(), &students())
            .iter()
            .map(|e| e.queue_id.as_str())
            .collect();
        assert_eq!(ids, ["A", "C"]);
    }

    #[test]
    fn an_unknown_backlog_widens_the_window_to_every_held_copy() {
        let d = students();
        let s = snap("sk_1", 1000, None);
        let held = vec![
            copy("OLD", 100, Some("<old@x>"), &["a=students.lab@archive.lab"]),
            copy(
                "NEW",
                2000,
                Some("<new@x>"),
                &["a=students.lab@archive.lab"],
            ),
        ];
        let none = BTreeSet::new();
        let p = plan_instance(
            &input(&d, Some(&s), SpoolBacklog::Unknown),
            &held,
            &tpl(),
            &none,
            &none,
        );
        assert_eq!(p.since, None);
        assert!(p.window.contains("was not observed"), "{}", p.window);
        assert_eq!(p.replay.len(), 2);
        // a recorded empty backlog narrows it to snapshot - margin
        let p = plan_instance(
            &input(&d, Some(&s), SpoolBacklog::Empty),
            &held,
            &tpl(),
            &none,
            &none,
        );
        assert_eq!(p.since, Some(ts(940)));
        let ids: Vec<&str> = p.replay.iter().map(|r| r.queue_id.as_str()).collect();
        assert_eq!(ids, ["NEW"]);
        // no snapshot at all: everything
        let p = plan_instance(
            &input(&d, None, SpoolBacklog::Empty),
            &held,
            &tpl(),
            &none,
            &none,
        );
        assert_eq!((p.since, p.replay.len()), (None, 2));
    }

    #[test]
    fn classify_names_why_each_copy_is_skipped() {
        let d = students();
        let s = snap("sk_1", 1000, None);
        let held = vec![
            copy("OLD", 100, Some("<old@x>"), &["a=students.lab@archive.lab"]),
            copy(
                "P",
                2000,
                Some("<p@x>"),
                &["a=students.lab@archive.lab", "b=staff.lab@archive.lab"],
            ),
            copy("R", 2001, Some("<r@x>"), &["a=students.lab@archive.lab"]),
            copy("N", 2002, Some("<n@x>"), &["B.C=students.lab@archive.lab"]),
            copy("N2", 2003, Some("<n@x>"), &["B.C=students.lab@archive.lab"]),
            copy("Q", 2004, Some("<q@x>"), &["a=students.lab@archive.lab"]),
        ];
        let mailbox = set(&[("<p@x>", "a@students.lab")]);
        let queued = set(&[("<q@x>", "a@students.lab")]);
        let present: BTreeSet<_> = mailbox.union(&queued).cloned().collect();
        let replayed = set(&[("R", "a@students.lab")]);
        let inp = input(&d, Some(&s), SpoolBacklog::Empty);
        let p = plan_instance(&inp, &held, &tpl(), &present, &replayed);
        let got: BTreeMap<(String, String), MessageAction> = classify(
            "students",
            &p,
            &held,
            &tpl(),
            &d,
            Some(0),
            &mailbox,
            &queued,
            &replayed,
        )
        .into_iter()
        .map(|m| ((m.queue_id, m.recipient), m.action))
        .collect();
        let want: BTreeMap<(String, String), MessageAction> = [
            ("OLD", MessageAction::SkippedBeforeWindow),
            ("P", MessageAction::SkippedPresent),
            ("R", MessageAction::SkippedReplayed),
            ("N", MessageAction::WouldReplay),
            ("N2", MessageAction::SkippedDuplicate),
            ("Q", MessageAction::SkippedQueued),
        ]
        .into_iter()
        .map(|(q, a)| {
            let r = if q.starts_with('N') {
                "B.C@students.lab"
            } else {
                "a@students.lab"
            };
            ((q.to_string(), r.to_string()), a)
        })
        .collect();
        assert_eq!(got, want);
        let c = Counts::of(&classify(
            "students",
            &p,
            &held,
            &tpl(),
            &d,
            Some(0),
            &mailbox,
            &queued,
            &replayed,
        ));
        assert_eq!(
            (
                c.total,
                c.would_replay,
                c.skipped_present,
                c.skipped_queued,
                c.skipped_replayed
            ),
            (6, 1, 1, 1, 1)
        );
        assert_eq!(
            users_to_check(&plan_instance(
                &inp,
                &held,
                &tpl(),
                &BTreeSet::new(),
                &BTreeSet::new()
            )),
            BTreeSet::from(["a@students.lab".to_string(), "B.C@students.lab".to_string()])
        );
    }

    #[test]
    fn the_spools_pending_messages_count_as_being_delivered() {
        let q = |id: &str, rcpts: &[&str]| QueueEntry {
            queue_name: "deferred".into(),
            queue_id: id.into(),
            arrival_time: ts(0),
            message_size: 1,
            forced_expire: false,
            sender: "".into(),
            recipients: rcpts.iter().map(|a| QueueRecipient::to(a)).collect(),
        };
        let queue = [
            q("A", &["x@Students.lab"]),
            q("B", &["x=students.lab@archive.lab"]),
            q("C", &["y@staff.lab", "z@students.lab"]),
        ];
        let ids: Vec<&str> = spool_pending(&queue, &students())
            .iter()
            .map(|e| e.queue_id.as_str())
            .collect();
        assert_eq!(ids, ["A", "C"]);
        let m = |id: &str, mid: Option<&str>, rcpts: &[&str]| HeldMessage {
            queue_name: "deferred".into(),
            queue_id: id.into(),
            sender: String::new(),
            recipients: rcpts.iter().map(|s| s.to_string()).collect(),
            content_size: None,
            content: vec![],
            message_id: mid.map(str::to_owned),
        };
        let got = pending_pairs(
            &[
                m("A", Some("<a@x>"), &["X.Y@Students.LAB"]),
                m("C", Some("<c@x>"), &["y@staff.lab", "z@students.lab"]),
                m("D", None, &["w@students.lab"]),
            ],
            &students(),
        );
        assert_eq!(
            got,
            set(&[("<a@x>", "X.Y@students.lab"), ("<c@x>", "z@students.lab")])
        );
    }

    pub(crate) fn report(q: &str, rcpt: &str, sender: &str) -> MessageReport {
        MessageReport {
            instance: "students".into(),
            queue_id: q.into(),
            message_id: Some(format!("<{q}@x>")),
            recipient: rcpt.into(),
            sender: sender.into(),
            arrival: ts(0),
            action: MessageAction::WouldReplay,
            reason: String::new(),
            reply: None,
        }
    }
    #[test]
    fn plus_addresses_are_checked_in_the_mailbox_postfix_delivers_them_to() {
        assert_eq!(
            mailbox_user("alice+lists@students.lab", "+"),
            "alice@students.lab"
        );
        assert_eq!(
            mailbox_user("alice-x+y@students.lab", "+-"),
            "alice@students.lab"
        );
        assert_eq!(
            mailbox_user("alice@students.lab", "+"),
            "alice@students.lab"
        );
        assert_eq!(
            mailbox_user("alice+x@students.lab", ""),
            "alice+x@students.lab"
        );
        assert_eq!(mailbox_user("+x@students.lab", "+"), "+x@students.lab");
        assert_eq!(mailbox_user("no-at-sign", "+"), "no-at-sign");
    }

    #[test]
    fn a_mailbox_check_keys_what_it_found_by_the_archived_recipient() {
        use crate::adapters::dovecot::FetchOutcome;
        let ids = BTreeSet::from(["<m1@x>".to_string()]);
        // alice+lists's copy is in alice's mailbox: present under the address the archive
        // copy names, so the copy is skipped, not replayed again
        assert_eq!(
            mailbox_check("alice+lists@students.lab", "+", FetchOutcome::Holds(ids)).unwrap(),
            set(&[("<m1@x>", "alice+lists@students.lab")])
        );
        let e = mailbox_check("list@students.lab", "+", FetchOutcome::NotAUser).unwrap_err();
        assert!(
            e.contains("not a Dovecot user") && e.contains("list@students.lab"),
            "{e}"
        );
        assert!(mailbox_check("a@b", "", FetchOutcome::Failed("boom".into())).is_err());
    }

    #[test]
    fn the_report_renders_every_message_and_the_counts() {
        let mut m = report("Q1", "a@students.lab", "");
        m.action = MessageAction::Replayed;
        m.reply = Some("250 2.0.0 Ok: queued as X".into());
        let messages = vec![m, report("Q2", "b@students.lab", "s@x.y")];
        let r = Report {
            cluster: "lab".into(),
            dry_run: false,
            instances: vec![],
            counts: Counts::of(&messages),
            messages,
            errors: vec![],
            warnings: vec![],
            replay_secs: Some(0.5),
        };
        let t = r.text();
        assert!(
            t.contains("replayed              Q1 <Q1@x> -> a@students.lab from <>"),
            "{t}"
        );
        assert!(t.contains("1 replayed, 1 would replay"), "{t}");
        assert!(t.contains("(2 msgs/s)"), "{t}");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["messages"][0]["action"], "replayed");
        assert_eq!(j["messages"][1]["action"], "would_replay");
        assert_eq!(j["counts"]["replayed"], 1);
        assert!(r.ok());
    }
}
