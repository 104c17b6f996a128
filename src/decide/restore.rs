//! `arch-restore`: re-inject the archived copies of mail the active spool may have lost, exactly
//! once (docs/DOMAIN.md guarantees 1 and 2).
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
//! so [`run`] passes [`SpoolBacklog::Unknown`]: the watermark is refused and the window is
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
//! * [`main`] takes the cluster lock on the active node, so two `arch-restore` (or an apply)
//!   never replay concurrently. [`run`] does not: the failover step calls it under apply's lock.
//!
//! The archived copies stay held: a later replication's purge removes them. The re-injected
//! message passes the active spool's `recipient_bcc_maps` again, so a second held copy appears
//! on the archive host; it is harmless (same Message-ID, skipped as present by later runs) and
//! it protects the replayed delivery until the next replication covers it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::adapters::dovecot;
use crate::adapters::postfix_cmd::{self, HeldMessage};
use crate::decide::archive::{self, HeldCopy, RestorePlan, SpoolBacklog};
use crate::model::{Dataset, Observation, QueueEntry, Snapshot};
use crate::observe::Connections;
use crate::spec::{AddressTemplate, Spec};
use crate::transport::host::Host;
use crate::transport::smtp;

/// The replay ledger's file name under `<state_dir>/<cluster>/`.
pub const LEDGER_FILE: &str = "replayed.jsonl";

/// Most queue ids per `postcat` call (about 40 KB of command line).
pub const POSTCAT_CHUNK: usize = 2000;

/// How long the SMTP session waits for one reply.
const SMTP_TIMEOUT: Duration = Duration::from_secs(120);

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
            let owed = copy.and_then(|d| d.user_properties.get(crate::plan::REPLAY_PROPERTY));
            let window = match (window, owed) {
                (Window::Newest, Some(a)) if a.is_empty() => Window::Everything,
                (Window::Newest, Some(a)) => Window::Anchor(a.as_str()),
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

/// The queue id Postfix names in a `250 … queued as ID` reply.
pub fn queued_as(reply: &smtp::Reply) -> Option<String> {
    let last = reply.lines.last()?;
    let id = last.split_once("queued as ")?.1.trim();
    postfix_cmd::is_queue_id(id).then(|| id.to_owned())
}

// ---------------------------------------------------------------------------------------------
// The replay ledger
// ---------------------------------------------------------------------------------------------

/// One ledger line: a (held copy, recipient) the active node accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// When the `250` came.
    pub at: Timestamp,
    /// Instance.
    pub instance: String,
    /// Queue id on the archive host.
    pub queue_id: String,
    /// The original recipient.
    pub recipient: String,
    /// Message-ID, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The active node's queue id for the re-injected message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_as: Option<String>,
    /// The node it was replayed into. A replay into another node (a later failover) does
    /// not count it: that copy may never have received it. Entries without one (older
    /// ledgers) count for every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
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

/// The ledger of one cluster: `<state_dir>/<cluster>/replayed.jsonl`.
pub struct Ledger {
    path: PathBuf,
    file: Option<File>,
    /// Instance → the [`replay_scope`] of the copy replayed into (recorded with each entry).
    scopes: BTreeMap<String, String>,
}

impl Ledger {
    /// Where the ledger of `cluster` lives.
    pub fn path(state_dir: &Path, cluster: &str) -> PathBuf {
        state_dir.join(cluster).join(LEDGER_FILE)
    }

    /// Every (queue id, recipient) replayed so far, and how many lines did not parse (a torn
    /// last line after a crash mid-write; a line that is not one of ours). A missing file is an
    /// empty ledger; an unreadable one is an error (replaying without it could duplicate).
    pub fn read(path: &Path) -> Result<(BTreeSet<(String, String)>, usize), String> {
        Self::read_for(path, None)
    }

    /// [`Ledger::read`], counting only what was replayed into `node` (and entries that name no
    /// node); `None`: everything.
    pub fn read_for(
        path: &Path,
        node: Option<&str>,
    ) -> Result<(BTreeSet<(String, String)>, usize), String> {
        Self::read_where(path, |e| match (node, e.node.as_deref()) {
            (Some(want), Some(n)) => want == n,
            _ => true,
        })
    }

    /// [`Ledger::read`], counting only the entries a replay into these copies must respect:
    /// per instance, those recorded for its copy's [`replay_scope`] (and entries that name no
    /// node, from older ledgers).
    pub fn read_scoped(
        path: &Path,
        scopes: &BTreeMap<String, String>,
    ) -> Result<(BTreeSet<(String, String)>, usize), String> {
        Self::read_where(path, |e| {
            match (scopes.get(&e.instance), e.node.as_deref()) {
                (Some(want), Some(n)) => want == n,
                _ => true,
            }
        })
    }

    fn read_where(
        path: &Path,
        keep: impl Fn(&LedgerEntry) -> bool,
    ) -> Result<(BTreeSet<(String, String)>, usize), String> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((BTreeSet::new(), 0));
            }
            Err(e) => {
                return Err(format!(
                    "cannot read the replay ledger {}: {e}",
                    path.display()
                ));
            }
        };
        let mut set = BTreeSet::new();
        let mut bad = 0;
        for line in BufReader::new(f).split(b'\n') {
            let line =
                line.map_err(|e| format!("cannot read the replay ledger {}: {e}", path.display()))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<LedgerEntry>(&line) {
                Ok(e) => {
                    if keep(&e) {
                        set.insert((e.queue_id, e.recipient));
                    }
                }
                Err(_) => bad += 1,
            }
        }
        Ok((set, bad))
    }

    /// The ledger of `cluster`, opened lazily on the first record (a dry run never creates it).
    pub fn new(state_dir: &Path, cluster: &str) -> Ledger {
        Ledger {
            path: Self::path(state_dir, cluster),
            file: None,
            scopes: BTreeMap::new(),
        }
    }

    /// The copies replayed into, per instance ([`replay_scope`]).
    pub fn with_scopes(mut self, scopes: BTreeMap<String, String>) -> Ledger {
        self.scopes = scopes;
        self
    }

    /// What an entry of `instance` replayed into `node` records as its node.
    pub fn scope_of(&self, instance: &str, node: &str) -> String {
        self.scopes
            .get(instance)
            .cloned()
            .unwrap_or_else(|| node.to_owned())
    }

    /// Append one entry and make it durable (data and, on creation, the directory entry)
    /// before returning.
    pub fn record(&mut self, e: &LedgerEntry) -> std::io::Result<()> {
        if self.file.is_none() {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir)?;
            let created = !self.path.exists();
            let f = crate::state::journal::open_append(&self.path)?;
            if created {
                // the new name must survive a crash too
                File::open(dir)?.sync_all()?;
            }
            self.file = Some(f);
        }
        let Some(f) = self.file.as_mut() else {
            return Err(std::io::Error::other("ledger not open"));
        };
        let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        f.write_all(&line)?;
        f.sync_data()
    }
}

// ---------------------------------------------------------------------------------------------
// The shell
// ---------------------------------------------------------------------------------------------

/// `postcat` every id (chunked), asking again without an id that left the queue meanwhile.
/// Returns the dumped messages and warnings.
async fn dump_held(
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
    pending: &[&QueueEntry],
    users: &BTreeSet<String>,
    since: &BTreeMap<String, Option<Timestamp>>,
    domains: &[String],
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
    let mut cmds = Vec::new();
    let mut queued_ids = Vec::new();
    for e in pending {
        match postfix_cmd::postcat_argv([e.queue_id.as_str()]) {
            Ok(a) => {
                cmds.push(a);
                queued_ids.push(*e);
            }
            Err(err) => {
                for r in &e.recipients {
                    broken.insert(r.address.clone(), err.to_string());
                }
            }
        }
    }
    let mut who = Vec::new();
    for u in users {
        match dovecot::fetch_message_ids_argv(u, since.get(u).copied().flatten()) {
            Ok(a) => {
                cmds.push(a);
                who.push(u.clone());
            }
            Err(e) => {
                broken.insert(u.clone(), e.to_string());
            }
        }
    }
    if cmds.is_empty() {
        return Ok((present, BTreeSet::new(), broken));
    }
    let outs = node
        .run_batch(&cmds)
        .await
        .map_err(|e| format!("postcat/doveadm on the active node: {e}"))?;
    let (q_outs, d_outs) = outs.split_at(queued_ids.len().min(outs.len()));
    let mut dumped = Vec::new();
    for (e, o) in queued_ids.iter().zip(q_outs) {
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
                for r in &e.recipients {
                    broken.insert(r.address.clone(), why.clone());
                }
            }
        }
    }
    let queued = pending_pairs(&dumped, domains);
    for (u, o) in who.into_iter().zip(d_outs) {
        match o.status {
            Some(0) => match dovecot::parse_fetch_message_ids(&o.stdout_text()) {
                Ok(ids) => present.extend(dovecot::present_pairs(&u, &ids)),
                Err(e) => {
                    broken.insert(u, e.to_string());
                }
            },
            // EX_NOUSER: no such mailbox, so it holds nothing; Postfix decides on delivery
            Some(67) => {}
            s => {
                broken.insert(
                    u,
                    format!("doveadm fetch exited {s:?}: {}", o.stderr_text().trim()),
                );
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

/// Re-inject every `would_replay` line of `messages` over one `sendmail -bs` session on the
/// active node, recording each `250` in the ledger before the next message.
async fn replay_all(
    node: &Host,
    messages: &mut [MessageReport],
    contents: &BTreeMap<String, HeldMessage>,
    ledger: &mut Ledger,
    errors: &mut Vec<String>,
) {
    let todo = would_replay(messages);
    if todo.is_empty() {
        return;
    }
    let mut child = match node.spawn(&postfix_cmd::sendmail_bs_argv()).await {
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
    let clean = replay_session(stream, node.label(), messages, contents, ledger, errors).await;
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

/// The SMTP part of [`replay_all`], over any stream. Returns whether the session ended
/// cleanly (`QUIT`); when it did not, every message not accepted is `failed` and the reason
/// is in `errors`.
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
                    node: Some(ledger.scope_of(&m.instance, label)),
                };
                m.reply = Some(reply.text());
                m.action = MessageAction::Replayed;
                if let Err(e) = ledger.record(&entry) {
                    // Accepted but not recorded: stop here; the Message-ID check of the next
                    // run must catch this one, and sending more would widen the gap.
                    m.reason = format!(
                        "accepted, but the replay ledger could not record it ({e}); the next run relies on the Message-ID check for it"
                    );
                    errors.push(format!(
                        "replay ledger {}: {e}; stopped re-injecting",
                        ledger.path.display()
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
    let archive_spec =
        spec.spec.archive.as_ref().ok_or_else(|| {
            format!("cluster {cluster} has no `archive:`: nothing to restore from")
        })?;
    let template = &archive_spec.address;
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
        .run(&crate::adapters::postfix::postqueue_argv())
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
    let (mailboxes, queued, broken) =
        spool_state(node, &pending, &users, &since, &all_domains).await?;

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
        replay_all(node, &mut messages, &contents, &mut ledger, &mut errors).await;
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

/// `spoolkeeper arch-restore -f FILE [--instance I] [--dry-run] [--output json]
/// [--state-dir D]`: exit 0 when every message is replayed or skipped for a reason, 1 on any
/// error (bad spec, host unreachable, a message not replayed).
pub fn main(
    file: &Path,
    instance: Option<String>,
    dry_run: bool,
    json: bool,
    state_dir: Option<PathBuf>,
) -> u8 {
    let specs = match crate::spec::load(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("invalid spec: nothing was contacted");
            return 1;
        }
    };
    let state_dir = state_dir.unwrap_or_else(crate::state::journal::default_state_dir);
    let selected: Vec<&Spec> = specs
        .iter()
        .filter(|s| {
            instance
                .as_deref()
                .is_none_or(|i| s.spec.instances.keys().any(|n| n.as_str() == i))
        })
        .collect();
    if selected.is_empty() {
        eprintln!(
            "no cluster in {} has instance `{}`",
            file.display(),
            instance.as_deref().unwrap_or("")
        );
        return 1;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 1;
        }
    };
    let mut code = 0u8;
    let mut reports = Vec::new();
    for s in selected {
        let res = rt.block_on(run_locked(s, instance.as_deref(), dry_run, &state_dir));
        match res {
            Ok(r) => {
                if !r.ok() {
                    code = 1;
                }
                if json {
                    reports.push(r);
                } else {
                    print!("{}", r.text());
                }
            }
            Err(e) => {
                eprintln!("arch-restore {}: {e}", s.name);
                code = 1;
            }
        }
    }
    if json {
        let v = if reports.len() == 1 {
            serde_json::to_value(&reports[0])
        } else {
            serde_json::to_value(&reports)
        };
        match v.and_then(|v| serde_json::to_string_pretty(&v)) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("cannot render the report: {e}");
                code = 1;
            }
        }
    }
    code
}

/// Connect, take the cluster lock on the active node, observe, run, release.
async fn run_locked(
    s: &Spec,
    instance: Option<&str>,
    dry_run: bool,
    state_dir: &Path,
) -> Result<Report, String> {
    let conns = crate::observe::connect(s).await;
    let active = s.spec.active.as_str();
    let node = conns
        .node(active)
        .ok_or_else(|| format!("the active node {active} is not reachable: cannot re-inject"))?;
    // a dry run changes nothing: no lock, so it can run beside an apply
    if !dry_run {
        crate::apply::acquire_lock(node, s.name.as_str(), false)
            .await
            .map_err(|e| e.to_string())?;
    }
    let obs = crate::observe::observe(s, &conns).await;
    let res = run(
        s,
        &conns,
        &obs,
        instance,
        Target::ACTIVE,
        dry_run,
        state_dir,
    )
    .await;
    if !dry_run {
        crate::apply::release_lock(node, s.name.as_str()).await;
    }
    tracing::info!(cluster = %s.name, round_trips = ?conns.trips.snapshot(), "arch-restore");
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DatasetKind, QueueRecipient};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};

    fn tpl() -> AddressTemplate {
        "{local}={domain}@archive.lab".parse().unwrap()
    }
    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }
    fn snap(name: &str, at: i64, txg: Option<u64>) -> Snapshot {
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
    fn dataset(snaps: Vec<Snapshot>) -> Dataset {
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
    fn copy(id: &str, at: i64, mid: Option<&str>, rcpts: &[&str]) -> HeldCopy {
        HeldCopy {
            queue_id: id.into(),
            arrival_time: ts(at),
            sender: String::new(),
            recipients: rcpts.iter().map(|s| s.to_string()).collect(),
            message_id: mid.map(str::to_owned),
        }
    }
    fn students() -> Vec<String> {
        vec!["students.lab".into()]
    }
    fn input<'a>(
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
    fn set(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
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
            sender: String::new(),
            recipients: r
                .iter()
                .map(|a| QueueRecipient {
                    address: a.to_string(),
                    delay_reason: None,
                })
                .collect(),
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
            sender: String::new(),
            recipients: rcpts
                .iter()
                .map(|a| QueueRecipient {
                    address: a.to_string(),
                    delay_reason: None,
                })
                .collect(),
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

    #[test]
    fn the_ledger_is_durable_append_only_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = Ledger::path(dir.path(), "lab");
        assert_eq!(Ledger::read(&path).unwrap(), (BTreeSet::new(), 0));
        let entry = |q: &str, r: &str| LedgerEntry {
            at: ts(0),
            instance: "students".into(),
            queue_id: q.into(),
            recipient: r.into(),
            message_id: None,
            queued_as: Some("X1".into()),
            node: Some("node-a".into()),
        };
        let mut l = Ledger::new(dir.path(), "lab");
        l.record(&entry("Q1", "a@students.lab")).unwrap();
        drop(l);
        let mut l = Ledger::new(dir.path(), "lab");
        l.record(&entry("Q2", "b@students.lab")).unwrap();
        drop(l);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"at\":\"2027-").unwrap();
        drop(f);
        let (got, bad) = Ledger::read(&path).unwrap();
        assert_eq!(
            got,
            set(&[("Q1", "a@students.lab"), ("Q2", "b@students.lab")])
        );
        assert_eq!(bad, 1);
        // what was replayed into node-a does not count for a replay into node-b (a second
        // failover: node-b's copy never received it); entries naming no node count anywhere
        assert_eq!(Ledger::read_for(&path, Some("node-a")).unwrap().0, got,);
        assert!(
            Ledger::read_for(&path, Some("node-b"))
                .unwrap()
                .0
                .is_empty()
        );
        let mut legacy = entry("Q3", "c@students.lab");
        legacy.node = None;
        Ledger::new(dir.path(), "lab").record(&legacy).unwrap();
        assert_eq!(
            Ledger::read_for(&path, Some("node-b")).unwrap().0,
            set(&[("Q3", "c@students.lab")])
        );
        // an unreadable ledger (here: a directory) is an error, never an empty one
        std::fs::create_dir_all(dir.path().join("x").join(LEDGER_FILE)).unwrap();
        assert!(Ledger::read(&Ledger::path(dir.path(), "x")).is_err());
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

    fn report(q: &str, rcpt: &str, sender: &str) -> MessageReport {
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
