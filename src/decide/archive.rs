//! The archive (PDMA = 0): which Postfix settings make the BCC copies, which held copies may be
//! purged, and which must be replayed after a loss. Pure decisions: data in, decision out, each
//! decision carrying the sentence that explains it in the plan. No I/O, no clock read.
//!
//! # Where the BCC map applies
//!
//! On the Postfix that delivers into the instance's spool (the MTA receiving the instance's
//! domains on the active node: the host's Postfix, or the jail's own if the instance runs one).
//! `recipient_bcc_maps` is applied by `cleanup(8)` when a message is queued, so the BCC copy and
//! the delivered copy are the same queue file: same bytes, same `Message-ID`. The map lists the
//! domains of the instances that Postfix serves; a domain belongs to one instance only.
//! `receive_override_options` must not contain `no_address_mappings` there (it disables BCC
//! maps); the planner should report it when observed.
//!
//! # The archive host and the hold queue
//!
//! The archive host relays only the archive domain, and `check_recipient_access` puts every
//! message for it on HOLD in `smtpd(8)`, before it is queued. Mail on hold "will sit until
//! someone either deletes it or releases it for delivery" (access(5), HOLD): `qmgr(8)` never
//! scans the hold queue, so `maximal_queue_lifetime` and `bounce_queue_lifetime` (which apply to
//! delivery retries after temporary failures, postconf(5)) never expire it. No setting is needed
//! to keep held mail, and none is emitted: raising `maximal_queue_lifetime` would not help (qmgr
//! refuses values above 100d: `fatal: invalid maximal_queue_lifetime: 31536000 (max 8640000)`,
//! seen on Postfix 3.7.11 here). What would lose copies is `postsuper -H`/`-r` (release) or
//! `postsuper -d ALL`: spoolkeeper never runs them (`postfix_cmd` refuses `ALL` as a queue id).
//! Long queue ids make ids unique over time (short ids are reused, postsuper(1)), so a purge by
//! id can never hit a later message that reused the id.
//!
//! # The watermark
//!
//! A held copy may be purged only when the replica provably holds the original: the copy
//! arrived on the archive host (archive clock, corrected) before the replicated snapshot was
//! created (active clock, corrected) minus `margin`, and no message for the instance was still
//! waiting in the spool's queue when the snapshot was taken (a message accepted before the
//! snapshot but delivered after it is not in the snapshot although it is older). The clocks are
//! corrected by the offsets observe measured; unknown offsets, or offsets above `margin / 2`,
//! refuse the purge. Never "everything older than now".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::model::{QueueEntry, QueueId, Snapshot};
use crate::spec::AddressTemplate;

/// A setting or table that cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    /// A domain that is not a plain DNS name (the spec validator should have refused it).
    #[error("`{0}` is not a domain name; the BCC map is built from plain domain names only")]
    BadDomain(String),
    /// The template holds a character a regexp table result line cannot carry.
    #[error(
        "the archive address `{0}` holds a control character; it cannot be written to a Postfix table"
    )]
    BadTemplate(String),
}

/// spoolkeeper's tables in Postfix's `config_directory`: the BCC map on the spools, the
/// hold table on the archive host (the planner writes them, observe reads them back).
pub const BCC_MAP_FILE: &str = "spoolkeeper-bcc.regexp";
pub const HOLD_MAP_FILE: &str = "spoolkeeper-hold.regexp";

/// Escapes every regexp metacharacter of `s` (POSIX ERE as used by Postfix regexp tables).
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if "\\^$.|?*+()[]{}/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `recipient_bcc_maps` table, regexp syntax (built into Debian's Postfix; pcre is a
/// separate package): one line per domain, `/^(.+)@(students\.lab)$/ ${1}=${2}@archive.lab`.
/// Regexp tables match case-insensitively by default, as Postfix matches domains. The result
/// is [`AddressTemplate::encode`] of the captured local part and domain, whatever the local part
/// holds; `$` in the template's literal text is written `$$`.
pub fn bcc_map(template: &AddressTemplate, domains: &[String]) -> Result<String, ArchiveError> {
    if template.as_str().chars().any(char::is_control) {
        return Err(ArchiveError::BadTemplate(template.as_str().to_owned()));
    }
    let result = template
        .encode("\u{1}L", "\u{1}D")
        .replace('$', "$$")
        .replace("\u{1}L", "${1}")
        .replace("\u{1}D", "${2}");
    let mut domains: Vec<String> = domains.iter().map(|d| d.to_ascii_lowercase()).collect();
    domains.sort();
    domains.dedup();
    let mut out = String::from(
        "# Generated by spoolkeeper: BCC of every recipient to its archive address.\n",
    );
    for d in &domains {
        if !crate::spec::is_domain(d) {
            return Err(ArchiveError::BadDomain(d.clone()));
        }
        out.push_str(&format!("/^(.+)@({})$/ {result}\n", regex_escape(d)));
    }
    Ok(out)
}

/// The spool Postfix's settings for the archive (`postconf -e` pairs), `map_path` being where
/// [`bcc_map`] is written:
/// * `recipient_bcc_maps = regexp:PATH`;
/// * `enable_long_queue_ids = yes` (ids never reused);
/// * `always_add_missing_headers = yes`: cleanup adds a `Message-ID` to mail that has none,
///   before the BCC copy is made, so both copies carry the same one and `arch-restore` can tell
///   whether the mailbox already holds a message (guarantee 2).
pub fn spool_settings(map_path: &str) -> BTreeMap<String, String> {
    [
        ("recipient_bcc_maps", format!("regexp:{map_path}")),
        ("enable_long_queue_ids", "yes".into()),
        ("always_add_missing_headers", "yes".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The archive host's access table: everything for the archive domain goes on HOLD.
pub fn hold_access_map(archive_domain: &str) -> String {
    format!(
        "# Generated by spoolkeeper: archived copies are held, never delivered.\n/@{}$/ HOLD archived copy\n",
        regex_escape(&archive_domain.to_ascii_lowercase())
    )
}

/// The archive host's settings: relays the archive domain only, holds it on arrival
/// (`check_recipient_access` with [`hold_access_map`] at `access_map_path`), makes no BCC
/// itself, long queue ids. Nothing about lifetimes: see the module docs (hold never expires).
pub fn archive_host_settings(
    archive_domain: &str,
    access_map_path: &str,
) -> BTreeMap<String, String> {
    [
        ("relay_domains", archive_domain.to_ascii_lowercase()),
        (
            "smtpd_recipient_restrictions",
            format!("check_recipient_access regexp:{access_map_path}, reject_unauth_destination"),
        ),
        ("recipient_bcc_maps", String::new()),
        ("enable_long_queue_ids", "yes".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// What was waiting in the active spool's queue for the instance when the snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SpoolBacklog {
    /// Nothing for the instance's domains was queued.
    Empty,
    /// The oldest queued message for the instance arrived then (active node's clock).
    OldestPending {
        /// Its `arrival_time`.
        arrival: Timestamp,
    },
    /// Not observed: no purge.
    #[default]
    Unknown,
    /// Every message the spool accepted before `at` (controller clock) was delivered into
    /// the dataset before the snapshot was taken: `at` is the observation the snapshot was
    /// planned from (the snapshot runs later), or earlier when a message for the instance
    /// was still queued then (its arrival, corrected to the controller's clock and moved back
    /// by the measurement's uncertainty). No node clock is needed to use it.
    Before {
        /// The instant, controller clock.
        at: Timestamp,
    },
}

/// The backlog of the instance's mail in a spool's queue, observed at `observed_at`
/// (controller clock), for a snapshot planned from that observation. A queued message's
/// arrival is in the spool's clock: corrected by `offset_ms` and moved back by
/// `uncertainty_ms`; with the offset unknown and something queued, the backlog is unknown.
pub fn backlog_at(
    queue: Option<&[QueueEntry]>,
    domains: &[String],
    observed_at: Timestamp,
    offset_ms: Option<i64>,
    uncertainty_ms: Option<i64>,
) -> SpoolBacklog {
    match backlog_of(queue, domains) {
        SpoolBacklog::Empty => SpoolBacklog::Before { at: observed_at },
        SpoolBacklog::OldestPending { arrival } => match offset_ms {
            Some(off) => {
                let unc = uncertainty_ms.unwrap_or(0).max(0);
                let corrected = correct(arrival, off)
                    .checked_sub(SignedDuration::from_millis(unc))
                    .unwrap_or(arrival);
                SpoolBacklog::Before {
                    at: corrected.min(observed_at),
                }
            }
            None => SpoolBacklog::Unknown,
        },
        other => other,
    }
}

/// The backlog of a spool queue for an instance's domains, as observed now (the snapshot
/// taken in the same apply sees the same queue, seconds later; anything that arrives in
/// between is newer than the observation and so inside the margin).
pub fn backlog_of(queue: Option<&[QueueEntry]>, domains: &[String]) -> SpoolBacklog {
    let Some(queue) = queue else {
        return SpoolBacklog::Unknown;
    };
    let domains = domain_set(domains);
    queue
        .iter()
        .filter(|e| {
            e.recipients.iter().any(|r| {
                r.address
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| domains.contains(&d.to_ascii_lowercase()))
            })
        })
        .map(|e| e.arrival_time)
        .min()
        .map_or(SpoolBacklog::Empty, |arrival| SpoolBacklog::OldestPending {
            arrival,
        })
}

/// The point in time (controller clock) before which the replica holds every message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Watermark {
    /// The instant.
    pub at: Timestamp,
    /// The snapshot it comes from.
    pub snapshot: String,
    /// The archive host's clock offset used to place held messages (ms, host − controller).
    pub archive_offset_ms: i64,
    /// The uncertainty of that offset (ms): held copies are placed that much later when
    /// deciding a purge and the replay window starts that much earlier.
    pub archive_uncertainty_ms: i64,
    /// The margin applied on both sides.
    #[serde(with = "signed_secs")]
    pub margin: SignedDuration,
    /// Why this instant, for the plan.
    pub explain: String,
}

mod signed_secs {
    use jiff::SignedDuration;
    use serde::Serializer;
    pub fn serialize<S: Serializer>(d: &SignedDuration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(d.as_secs())
    }
}

/// Which host a clock offset belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockOf {
    /// The active node (snapshot creation times).
    ActiveNode,
    /// The archive host (arrival times of held copies).
    ArchiveHost,
}

impl fmt::Display for ClockOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClockOf::ActiveNode => "the active node",
            ClockOf::ArchiveHost => "the archive host",
        })
    }
}

/// Why no purge happens this time. Nothing is deleted; the archive keeps everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WatermarkRefusal {
    /// No snapshot is known to be on the passive node.
    #[error("no purge: no replicated snapshot yet, so no held copy is proven to be in the replica")]
    NoReplicatedSnapshot,
    /// A clock offset was not measured.
    #[error(
        "no purge: the clock offset of {host} is unknown, so arrival and snapshot times cannot be compared; check that `date` runs over SSH there"
    )]
    OffsetUnknown {
        /// Whose.
        host: ClockOf,
    },
    /// A clock is further off than half the margin.
    #[error(
        "no purge: the clock of {host} is {offset_ms} ms off the controller's, more than half the margin ({limit_ms} ms); fix NTP there or raise archive.margin"
    )]
    OffsetTooLarge {
        /// Whose.
        host: ClockOf,
        /// Measured offset, ms.
        offset_ms: i64,
        /// margin / 2, ms.
        limit_ms: i64,
    },
    /// A clock offset was measured too loosely to be trusted within the margin.
    #[error(
        "no purge: the clock offset of {host} is known only within ±{uncertainty_ms} ms, more than half the margin ({limit_ms} ms); the network to it is too slow to measure, or raise archive.margin"
    )]
    UncertaintyTooLarge {
        /// Whose.
        host: ClockOf,
        /// Half the measuring round trip, ms.
        uncertainty_ms: i64,
        /// margin / 2, ms.
        limit_ms: i64,
    },
    /// The spool's queue was not observed when the snapshot was taken.
    #[error(
        "no purge: the spool's queue was not observed when snapshot {snapshot} was taken, so a message accepted before it may have been delivered after it"
    )]
    BacklogUnknown {
        /// The snapshot.
        snapshot: String,
    },
}

fn correct(t: Timestamp, offset_ms: i64) -> Timestamp {
    t.checked_sub(SignedDuration::from_millis(offset_ms))
        .unwrap_or(t)
}

/// The watermark from the newest snapshot replicated to the passive node (its `creation` in the
/// active node's clock), the backlog of the spool's queue when it was taken, the two clock
/// offsets to the controller (ms, host − controller) and the margin. The archive clock's
/// uncertainty is taken as zero: see [`watermark_with`].
pub fn watermark(
    replicated: Option<&Snapshot>,
    backlog: SpoolBacklog,
    active_offset_ms: Option<i64>,
    archive_offset_ms: Option<i64>,
    margin: SignedDuration,
) -> Result<Watermark, WatermarkRefusal> {
    watermark_with(
        replicated,
        backlog,
        active_offset_ms,
        archive_offset_ms,
        Some(0),
        margin,
    )
}

/// [`watermark`] with the uncertainty of the archive clock's offset (ms): held copies are
/// then placed that much later for a purge, and the replay window opens that much earlier.
/// An uncertainty above half the margin refuses the watermark, like an offset above it. A
/// backlog recorded as [`SpoolBacklog::Before`] needs no node clock: the active node's offset
/// is then not used at all.
pub fn watermark_with(
    replicated: Option<&Snapshot>,
    backlog: SpoolBacklog,
    active_offset_ms: Option<i64>,
    archive_offset_ms: Option<i64>,
    archive_uncertainty_ms: Option<i64>,
    margin: SignedDuration,
) -> Result<Watermark, WatermarkRefusal> {
    let snap = replicated.ok_or(WatermarkRefusal::NoReplicatedSnapshot)?;
    let limit_ms = i64::try_from(margin.as_millis() / 2).unwrap_or(i64::MAX);
    let check = |host: ClockOf, off: Option<i64>| -> Result<i64, WatermarkRefusal> {
        let off = off.ok_or(WatermarkRefusal::OffsetUnknown { host })?;
        if off.unsigned_abs() > limit_ms.unsigned_abs() {
            return Err(WatermarkRefusal::OffsetTooLarge {
                host,
                offset_ms: off,
                limit_ms,
            });
        }
        Ok(off)
    };
    let archive_off = check(ClockOf::ArchiveHost, archive_offset_ms)?;
    let unc = archive_uncertainty_ms
        .unwrap_or(limit_ms.saturating_add(1))
        .max(0);
    if unc > limit_ms {
        return Err(WatermarkRefusal::UncertaintyTooLarge {
            host: ClockOf::ArchiveHost,
            uncertainty_ms: unc,
            limit_ms,
        });
    }
    let (at, why, active_off) = match backlog {
        SpoolBacklog::Unknown => {
            return Err(WatermarkRefusal::BacklogUnknown {
                snapshot: snap.name.clone(),
            });
        }
        SpoolBacklog::Before { at } => (
            at,
            format!(
                "everything the spool accepted before {at} (controller clock) was delivered before snapshot {} was taken",
                snap.name
            ),
            None,
        ),
        SpoolBacklog::Empty => {
            let off = check(ClockOf::ActiveNode, active_offset_ms)?;
            let created = correct(snap.creation, off);
            (
                created,
                format!(
                    "snapshot {} created {created} (controller clock)",
                    snap.name
                ),
                Some(off),
            )
        }
        SpoolBacklog::OldestPending { arrival } => {
            let off = check(ClockOf::ActiveNode, active_offset_ms)?;
            let created = correct(snap.creation, off);
            let pending = correct(arrival, off);
            if pending < created {
                (
                    pending,
                    format!(
                        "a message queued on the spool since {pending} was not yet delivered when snapshot {} was taken",
                        snap.name
                    ),
                    Some(off),
                )
            } else {
                (
                    created,
                    format!(
                        "snapshot {} created {created} (controller clock)",
                        snap.name
                    ),
                    Some(off),
                )
            }
        }
    };
    Ok(Watermark {
        at,
        snapshot: snap.name.clone(),
        archive_offset_ms: archive_off,
        archive_uncertainty_ms: unc,
        margin,
        explain: format!(
            "watermark {at}: {why}; {}archive clock {archive_off} ms off (±{unc} ms)",
            active_off
                .map(|o| format!("active clock {o} ms off, "))
                .unwrap_or_default()
        ),
    })
}

/// One held copy to delete, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Purge {
    /// Queue id on the archive host.
    pub queue_id: QueueId,
    /// Arrival on the archive host, controller clock.
    pub arrival: Timestamp,
}

/// How an original recipient decodes for an instance.
fn instance_recipient(
    template: &AddressTemplate,
    domains: &BTreeSet<String>,
    archived: &str,
) -> Option<String> {
    let (local, domain) = template.decode(archived)?;
    let domain = domain.to_ascii_lowercase();
    domains
        .contains(&domain)
        .then(|| format!("{local}@{domain}"))
}

fn domain_set(domains: &[String]) -> BTreeSet<String> {
    domains.iter().map(|d| d.to_ascii_lowercase()).collect()
}

/// The held copies that may be deleted: in the hold queue, every recipient an archive address
/// of the instance's domains, and arrived (corrected) before `watermark.at - margin`. A message
/// that also holds recipients of other instances or foreign addresses is kept: it is purged by
/// the run whose watermark covers all of them (never deleted on a partial proof).
pub fn purge_set<'a>(
    watermark: &Watermark,
    held: impl IntoIterator<Item = &'a QueueEntry>,
    domains: &[String],
    template: &AddressTemplate,
) -> Vec<Purge> {
    let domains = domain_set(domains);
    let Some(cut) = watermark.at.checked_sub(watermark.margin).ok() else {
        return Vec::new();
    };
    let mut out: Vec<Purge> = held
        .into_iter()
        .filter(|e| e.queue_name == "hold")
        .filter(|e| {
            !e.recipients.is_empty()
                && e.recipients
                    .iter()
                    .all(|r| instance_recipient(template, &domains, &r.address).is_some())
        })
        .filter_map(|e| {
            let arrival = correct(e.arrival_time, watermark.archive_offset_ms);
            // the latest the copy may really have arrived
            let latest = arrival
                .checked_add(SignedDuration::from_millis(
                    watermark.archive_uncertainty_ms,
                ))
                .unwrap_or(arrival);
            (latest < cut).then(|| Purge {
                queue_id: e.queue_id.clone(),
                arrival,
            })
        })
        .collect();
    out.sort_by(|a, b| (a.arrival, &a.queue_id).cmp(&(b.arrival, &b.queue_id)));
    out
}

/// A held copy joined from `postqueue -j` (arrival time) and `postcat` (exact sender,
/// Message-ID). The sender comes from postcat: `postqueue -j` prints the null sender as
/// `MAILER-DAEMON`, which is also a possible real address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldCopy {
    /// Queue id on the archive host.
    pub queue_id: String,
    /// `arrival_time` (archive host clock, uncorrected).
    pub arrival_time: Timestamp,
    /// Envelope sender; empty for the null sender.
    pub sender: String,
    /// Archive addresses it is held for.
    pub recipients: Vec<String>,
    /// The `Message-ID` header, when the message has one.
    pub message_id: Option<String>,
}

/// Joins the queue listing with a postcat dump by queue id (held messages only; a message
/// missing from the dump is left out: it left the queue, or postcat could not read it).
pub fn join_held(
    queue: &[QueueEntry],
    dump: &[crate::adapters::postfix_cmd::HeldMessage],
) -> Vec<HeldCopy> {
    let by_id: BTreeMap<&str, &crate::adapters::postfix_cmd::HeldMessage> =
        dump.iter().map(|m| (m.queue_id.as_str(), m)).collect();
    queue
        .iter()
        .filter(|e| e.queue_name == "hold")
        .filter_map(|e| {
            let m = by_id.get(e.queue_id.as_str())?;
            Some(HeldCopy {
                queue_id: e.queue_id.to_string(),
                arrival_time: e.arrival_time,
                sender: m.sender.clone(),
                recipients: m.recipients.clone(),
                message_id: m.message_id.clone(),
            })
        })
        .collect()
}

/// One re-injection: a held message for one original recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replay {
    /// Queue id on the archive host (the copy stays held).
    pub queue_id: String,
    /// `Message-ID`, when present.
    pub message_id: Option<String>,
    /// The original recipient, decoded from the archive address.
    pub recipient: String,
    /// The archive address it was held for.
    pub archive_address: String,
    /// Envelope sender; empty for the null sender (sent as `MAIL FROM:<>`).
    pub sender: String,
    /// Arrival on the archive host (controller clock when the offset is known).
    pub arrival: Timestamp,
    /// The sentence for the plan.
    pub reason: String,
}

/// Why a held message/recipient is not replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skip {
    /// Queue id.
    pub queue_id: String,
    /// The recipient concerned (archive address when it did not decode).
    pub recipient: String,
    /// The sentence for the plan.
    pub reason: String,
}

/// What `arch-restore` does: replays in order, and what it leaves alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestorePlan {
    /// Where the window starts (controller clock); `None`: every held message.
    pub since: Option<Timestamp>,
    /// Why that window.
    pub window: String,
    /// Re-injections, ordered by (arrival, queue id, recipient).
    pub replay: Vec<Replay>,
    /// Left alone, with reasons (not this instance, older than the window, already there).
    pub skipped: Vec<Skip>,
}

/// The held messages to replay for an instance: newer than `watermark - margin` (all of them
/// without a watermark, or when the archive clock offset is unknown: the window only gets
/// wider, never narrower, and the checks below keep it exactly-once), one per original
/// recipient at the instance's domains, minus those whose Message-ID the recipient's mailbox
/// already holds (`already_present`: (Message-ID, recipient)), those already replayed
/// (`already_replayed`: (queue id, recipient)), and repeats of the same (Message-ID, recipient)
/// held twice. A message without Message-ID cannot be found in a mailbox: it is replayed unless
/// the ledger says it was, and the reason says so.
#[allow(clippy::too_many_arguments)]
pub fn restore_set(
    watermark: Option<&Watermark>,
    archive_offset_ms: Option<i64>,
    held: &[HeldCopy],
    domains: &[String],
    template: &AddressTemplate,
    already_present: &BTreeSet<(String, String)>,
    already_replayed: &BTreeSet<(String, String)>,
) -> RestorePlan {
    let domains = domain_set(domains);
    let (since, window) = match (watermark, archive_offset_ms) {
        (Some(w), Some(_)) => match w
            .at
            .checked_sub(w.margin)
            .and_then(|t| t.checked_sub(SignedDuration::from_millis(w.archive_uncertainty_ms)))
        {
            Ok(s) => (
                Some(s),
                format!(
                    "held copies that arrived from {s} on ({}, minus margin {}s)",
                    w.explain,
                    w.margin.as_secs()
                ),
            ),
            Err(_) => (None, "every held copy (watermark out of range)".to_owned()),
        },
        (Some(_), None) => (
            None,
            "every held copy: the archive host's clock offset is unknown, so the window cannot be placed; mailbox checks keep the replay exactly-once".to_owned(),
        ),
        (None, _) => (
            None,
            "every held copy: no replicated snapshot is known".to_owned(),
        ),
    };
    let mut sorted: Vec<(Timestamp, &HeldCopy)> = held
        .iter()
        .map(|h| {
            (
                archive_offset_ms.map_or(h.arrival_time, |o| correct(h.arrival_time, o)),
                h,
            )
        })
        .collect();
    sorted.sort_by(|a, b| (a.0, &a.1.queue_id).cmp(&(b.0, &b.1.queue_id)));
    let mut plan = RestorePlan {
        since,
        window,
        ..RestorePlan::default()
    };
    let mut planned: BTreeSet<(String, String)> = BTreeSet::new();
    for (arrival, h) in sorted {
        for archived in &h.recipients {
            let skip = |reason: String| Skip {
                queue_id: h.queue_id.clone(),
                recipient: archived.clone(),
                reason,
            };
            let Some(rcpt) = instance_recipient(template, &domains, archived) else {
                // Another instance's, or not an archive address: not ours to judge.
                continue;
            };
            if since.is_some_and(|s| arrival < s) {
                plan.skipped.push(skip(format!(
                    "arrived {arrival}, before the window: the replica holds it"
                )));
                continue;
            }
            if already_replayed.contains(&(h.queue_id.clone(), rcpt.clone())) {
                // the same message held twice must not come back through the other copy
                if let Some(id) = &h.message_id {
                    planned.insert((id.clone(), rcpt.clone()));
                }
                plan.skipped
                    .push(skip(format!("already replayed to {rcpt} (replay ledger)")));
                continue;
            }
            let reason = match &h.message_id {
                Some(id) => {
                    if already_present.contains(&(id.clone(), rcpt.clone())) {
                        plan.skipped
                            .push(skip(format!("{rcpt}'s mailbox already holds {id}")));
                        continue;
                    }
                    if !planned.insert((id.clone(), rcpt.clone())) {
                        plan.skipped.push(skip(format!(
                            "{id} for {rcpt} is already replayed from an earlier held copy"
                        )));
                        continue;
                    }
                    format!("arrived {arrival}, in the window; {id} is not in {rcpt}'s mailbox")
                }
                None => format!(
                    "arrived {arrival}, in the window; no Message-ID, so the mailbox cannot be checked: replayed once by the ledger"
                ),
            };
            plan.replay.push(Replay {
                queue_id: h.queue_id.clone(),
                message_id: h.message_id.clone(),
                recipient: rcpt,
                archive_address: archived.clone(),
                sender: h.sender.clone(),
                arrival,
                reason,
            });
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::QueueRecipient;
    use std::process::Command;

    fn tpl() -> AddressTemplate {
        "{local}={domain}@archive.lab".parse().unwrap()
    }
    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }
    fn snap(at: i64) -> Snapshot {
        Snapshot {
            name: "sk_x".into(),
            guid: 1,
            creation: ts(at),
            createtxg: None,
            userrefs: 0,
            used: 0,
            written: None,
        }
    }
    fn entry(id: &str, at: i64, rcpts: &[&str]) -> QueueEntry {
        QueueEntry {
            queue_name: "hold".into(),
            queue_id: id.into(),
            arrival_time: ts(at),
            message_size: 1,
            forced_expire: false,
            sender: "a@b.c".into(),
            recipients: rcpts.iter().map(|r| QueueRecipient::to(r)).collect(),
        }
    }
    const M10: SignedDuration = SignedDuration::from_secs(600);

    #[test]
    fn bcc_map_text() {
        let t = tpl();
        let m = bcc_map(&t, &["students.lab".into(), "a-b.staff.lab".into()]).unwrap();
        assert_eq!(
            m.lines().skip(1).collect::<Vec<_>>(),
            [
                r"/^(.+)@(a-b\.staff\.lab)$/ ${1}=${2}@archive.lab",
                r"/^(.+)@(students\.lab)$/ ${1}=${2}@archive.lab",
            ]
        );
        let t: AddressTemplate = "arch$+{domain}={local}@archive.lab".parse().unwrap();
        assert_eq!(
            bcc_map(&t, &["x.lab".into()]).unwrap().lines().nth(1),
            Some(r"/^(.+)@(x\.lab)$/ arch$$+${2}=${1}@archive.lab")
        );
        assert!(bcc_map(&tpl(), &["bad domain".into()]).is_err());
    }

    /// Every awkward local part, looked up by the real `postmap -q` in the generated table,
    /// gives exactly `encode`, and decodes back. Needs Postfix's `postmap`: `cargo xtask ci`
    /// installs it (with the lab's packages) before it runs the ignored tests. `postmap` runs
    /// with a private, empty configuration directory: the machine's Postfix may be installed
    /// but not configured (no `/etc/postfix/main.cf`), and it is never read or changed.
    #[test]
    #[ignore = "needs Postfix's postmap: cargo xtask ci installs it and runs the ignored tests"]
    fn bcc_map_matches_encode_under_real_postmap() {
        if Command::new("postmap").arg("-h").output().is_err() {
            panic!("postmap is not installed; this test checks the table against real Postfix");
        }
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(conf.path().join("main.cf"), "").unwrap();
        let conf = conf.path().display().to_string();
        for tpl_text in [
            "{local}={domain}@archive.lab",
            "{domain}={local}@archive.lab",
            "ar$ch+{local}=at={domain}@archive.lab",
        ] {
            let t: AddressTemplate = tpl_text.parse().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("bcc");
            let domains = vec!["students.lab".to_string(), "staff.lab".to_string()];
            std::fs::write(&path, bcc_map(&t, &domains).unwrap()).unwrap();
            let table = format!("regexp:{}", path.display());
            for local in [
                "a=b+c",
                "john.doe",
                "a-b",
                "a_b",
                "x+tag",
                "==",
                "UPPER.Case",
                "\"q u\"",
                "a$1b",
                "${2}",
                "x@y",
            ] {
                for domain in ["students.lab", "STAFF.Lab"] {
                    let addr = format!("{local}@{domain}");
                    let out = Command::new("postmap")
                        .args(["-c", &conf, "-q", &addr, &table])
                        .output()
                        .unwrap();
                    let got = String::from_utf8(out.stdout).unwrap();
                    assert_eq!(
                        got.trim_end_matches('\n'),
                        t.encode(local, domain),
                        "{tpl_text} {addr}"
                    );
                    let (l, d) = t.decode(got.trim_end()).unwrap();
                    assert_eq!((l.as_str(), d.as_str()), (local, domain));
                }
            }
            // other domains get no BCC
            let out = Command::new("postmap")
                .args(["-c", &conf, "-q", "a@other.lab", &table])
                .output()
                .unwrap();
            assert!(out.stdout.is_empty());
            let out = Command::new("postmap")
                .args(["-c", &conf, "-q", "a@xstudents.lab", &table])
                .output()
                .unwrap();
            assert!(out.stdout.is_empty(), "the dot must be literal");
        }
    }

    #[test]
    fn hold_map_and_settings() {
        assert_eq!(
            hold_access_map("Archive.lab").lines().nth(1),
            Some(r"/@archive\.lab$/ HOLD archived copy")
        );
        let s = archive_host_settings("archive.lab", "/etc/postfix/archive_hold");
        assert_eq!(s["recipient_bcc_maps"], "");
        assert_eq!(s["relay_domains"], "archive.lab");
        assert!(
            s["smtpd_recipient_restrictions"]
                .starts_with("check_recipient_access regexp:/etc/postfix/archive_hold")
        );
        assert!(!s.contains_key("maximal_queue_lifetime"));
        let s = spool_settings("/etc/postfix/sk_bcc");
        assert_eq!(s["recipient_bcc_maps"], "regexp:/etc/postfix/sk_bcc");
        assert_eq!(s["enable_long_queue_ids"], "yes");
    }

    #[test]
    fn watermark_refusals() {
        let s = snap(0);
        assert_eq!(
            watermark(None, SpoolBacklog::Empty, Some(0), Some(0), M10),
            Err(WatermarkRefusal::NoReplicatedSnapshot)
        );
        assert_eq!(
            watermark(Some(&s), SpoolBacklog::Empty, None, Some(0), M10),
            Err(WatermarkRefusal::OffsetUnknown {
                host: ClockOf::ActiveNode
            })
        );
        assert_eq!(
            watermark(Some(&s), SpoolBacklog::Empty, Some(0), None, M10),
            Err(WatermarkRefusal::OffsetUnknown {
                host: ClockOf::ArchiveHost
            })
        );
        assert_eq!(
            watermark(Some(&s), SpoolBacklog::Empty, Some(0), Some(-300_001), M10),
            Err(WatermarkRefusal::OffsetTooLarge {
                host: ClockOf::ArchiveHost,
                offset_ms: -300_001,
                limit_ms: 300_000
            })
        );
        assert!(watermark(Some(&s), SpoolBacklog::Empty, Some(300_000), Some(0), M10).is_ok());
        assert!(matches!(
            watermark(Some(&s), SpoolBacklog::Unknown, Some(0), Some(0), M10),
            Err(WatermarkRefusal::BacklogUnknown { .. })
        ));
    }

    #[test]
    fn watermark_corrects_the_active_clock_and_respects_the_backlog() {
        // active clock 2 min ahead: creation 1000 on its clock is 880 on ours
        let w = watermark(
            Some(&snap(1000)),
            SpoolBacklog::Empty,
            Some(120_000),
            Some(0),
            M10,
        )
        .unwrap();
        assert_eq!(w.at, ts(880));
        let w = watermark(
            Some(&snap(1000)),
            SpoolBacklog::OldestPending { arrival: ts(500) },
            Some(120_000),
            Some(0),
            M10,
        )
        .unwrap();
        assert_eq!(w.at, ts(380));
        assert!(w.explain.contains("not yet delivered"), "{}", w.explain);
    }

    #[test]
    fn purge_only_before_watermark_minus_margin_and_only_this_instance() {
        // archive clock 60 s behind: arrival 1339 there is 1399 here
        let w = watermark(
            Some(&snap(2000)),
            SpoolBacklog::Empty,
            Some(0),
            Some(-60_000),
            M10,
        )
        .unwrap();
        let held = vec![
            entry("OLD1", 100, &["a=students.lab@archive.lab"]),
            entry("EDGE", 1339, &["b=students.lab@archive.lab"]), // 1399 < 1400: purge
            entry("AT", 1340, &["b=students.lab@archive.lab"]),   // 1400: kept
            entry("NEW", 1990, &["c=students.lab@archive.lab"]),
            entry("STAFF", 100, &["d=staff.lab@archive.lab"]),
            entry(
                "MIXED",
                100,
                &["e=students.lab@archive.lab", "f=staff.lab@archive.lab"],
            ),
            entry("FOREIGN", 100, &["someone@example.org"]),
            entry("UPPER", 100, &["G=Students.LAB@ARCHIVE.lab"]),
        ];
        let mut deferred = entry("DEF", 100, &["h=students.lab@archive.lab"]);
        deferred.queue_name = "deferred".into();
        let mut all = held.clone();
        all.push(deferred);
        let p = purge_set(&w, &all, &["students.lab".into()], &tpl());
        let ids: Vec<&str> = p.iter().map(|p| p.queue_id.as_str()).collect();
        assert_eq!(ids, ["OLD1", "UPPER", "EDGE"]);
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

    #[test]
    fn restore_replays_the_complement_per_recipient_exactly_once() {
        let w = watermark(
            Some(&snap(2000)),
            SpoolBacklog::Empty,
            Some(0),
            Some(0),
            M10,
        )
        .unwrap();
        let held = vec![
            copy("Q3", 1500, Some("<m3@x>"), &["a=students.lab@archive.lab"]),
            copy("Q1", 100, Some("<m1@x>"), &["a=students.lab@archive.lab"]),
            copy(
                "Q2",
                1500,
                Some("<m2@x>"),
                &[
                    "b=students.lab@archive.lab",
                    "c=staff.lab@archive.lab",
                    "C.D=Students.lab@archive.lab",
                ],
            ),
            copy("Q4", 1600, Some("<m3@x>"), &["a=students.lab@archive.lab"]),
            copy("Q5", 1700, None, &["n=students.lab@archive.lab"]),
            copy("Q6", 1800, Some("<m6@x>"), &["p=students.lab@archive.lab"]),
            copy("Q7", 1900, Some("<m7@x>"), &["r=students.lab@archive.lab"]),
        ];
        let present = BTreeSet::from([("<m6@x>".to_string(), "p@students.lab".to_string())]);
        let replayed = BTreeSet::from([("Q7".to_string(), "r@students.lab".to_string())]);
        let plan = restore_set(
            Some(&w),
            Some(0),
            &held,
            &["students.lab".into()],
            &tpl(),
            &present,
            &replayed,
        );
        let got: Vec<(&str, &str)> = plan
            .replay
            .iter()
            .map(|r| (r.queue_id.as_str(), r.recipient.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("Q2", "b@students.lab"),
                ("Q2", "C.D@students.lab"),
                ("Q3", "a@students.lab"),
                ("Q5", "n@students.lab"),
            ]
        );
        assert_eq!(plan.since, Some(ts(1400)));
        let skipped: Vec<&str> = plan.skipped.iter().map(|s| s.queue_id.as_str()).collect();
        assert_eq!(skipped, ["Q1", "Q4", "Q6", "Q7"]);
        assert!(plan.replay[3].reason.contains("no Message-ID"));
        assert_eq!(plan.replay[0].sender, "");
        // a rerun with the ledger of the first run replays nothing
        let ledger: BTreeSet<(String, String)> = plan
            .replay
            .iter()
            .map(|r| (r.queue_id.clone(), r.recipient.clone()))
            .chain(replayed.iter().cloned())
            .collect();
        let again = restore_set(
            Some(&w),
            Some(0),
            &held,
            &["students.lab".into()],
            &tpl(),
            &present,
            &ledger,
        );
        assert!(again.replay.is_empty(), "{:?}", again.replay);
    }

    #[test]
    fn restore_without_watermark_or_offset_takes_every_held_copy() {
        let w = watermark(
            Some(&snap(2000)),
            SpoolBacklog::Empty,
            Some(0),
            Some(0),
            M10,
        )
        .unwrap();
        let held = vec![copy(
            "Q1",
            100,
            Some("<m1@x>"),
            &["a=students.lab@archive.lab"],
        )];
        let none = BTreeSet::new();
        for (wm, off) in [(None, Some(0)), (Some(&w), None)] {
            let plan = restore_set(
                wm,
                off,
                &held,
                &["students.lab".into()],
                &tpl(),
                &none,
                &none,
            );
            assert_eq!(plan.since, None);
            assert_eq!(plan.replay.len(), 1);
        }
    }

    proptest::proptest! {
        /// Purge and restore split the held copies of an instance with nothing in between and
        /// nothing in both (guarantee 1: what is not purged is replayable).
        #[test]
        fn purge_and_restore_partition(arrivals in proptest::collection::vec(0i64..4000, 1..40), snap_at in 0i64..4000, off in -300_000i64..300_000) {
            let w = watermark(Some(&snap(snap_at)), SpoolBacklog::Empty, Some(0), Some(off), M10).unwrap();
            let entries: Vec<QueueEntry> = arrivals.iter().enumerate()
                .map(|(i, a)| entry(&format!("Q{i}"), *a, &["a=students.lab@archive.lab"])).collect();
            let copies: Vec<HeldCopy> = arrivals.iter().enumerate()
                .map(|(i, a)| copy(&format!("Q{i}"), *a, Some(&format!("<{i}@x>")), &["a=students.lab@archive.lab"])).collect();
            let purged: BTreeSet<String> = purge_set(&w, &entries, &["students.lab".into()], &tpl()).into_iter().map(|p| p.queue_id.to_string()).collect();
            let none = BTreeSet::new();
            let replayed: BTreeSet<String> = restore_set(Some(&w), Some(off), &copies, &["students.lab".into()], &tpl(), &none, &none)
                .replay.into_iter().map(|r| r.queue_id).collect();
            proptest::prop_assert!(purged.is_disjoint(&replayed));
            proptest::prop_assert_eq!(purged.len() + replayed.len(), arrivals.len());
        }
    }
}
